//! The test model's directory and its int8 artifact, shared by the GPU checks of MiniLM:
//! models/examples/gpu_minilm.rs (on a GPU) and models/tests/gpu_emulator.rs (on the emulator).

use std::path::{Path, PathBuf};

use qtier_quantize::{LayerSelection, QuantizeOptions, quantize_checkpoint};

/// Where `qtier test-model` puts all-MiniLM-L6-v2: `$QTIER_CACHE/models/all-MiniLM-L6-v2`, else
/// `~/.cache/qtier/models/all-MiniLM-L6-v2`.
pub fn default_model_dir() -> PathBuf {
    let cache = std::env::var_os("QTIER_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache").join("qtier"));
    cache.join("models").join("all-MiniLM-L6-v2")
}

/// Quantizes `model` with `qtier quantize`'s defaults into `output`.
pub fn quantize_default(model: &Path, output: &Path) -> qtier_quantize::Result<()> {
    let options = QuantizeOptions {
        input: model.to_path_buf(),
        output: output.to_path_buf(),
        selection: LayerSelection::default(),
        allow_nonfinite: false,
        force: false,
        durable: false,
    };
    quantize_checkpoint(&options, &|_| {}).map(drop)
}

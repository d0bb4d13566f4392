//! Helpers shared by the CLI tests: running the binary, the test model, writing safetensors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// A `qtier` command, with the cache shared by all tests. The EC2 metadata query is off: tests
/// never send anything beyond loopback, even on an EC2 runner.
pub fn qtier() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qtier"));
    command.env("AWS_EC2_METADATA_DISABLED", "true");
    command
}

/// Runs `qtier args...` and returns its output.
pub fn run(args: &[&str]) -> Output {
    qtier().args(args).output().expect("the qtier binary runs")
}

/// Runs `qtier args...`, asserting success, and returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "qtier {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("stdout is UTF-8")
}

/// Runs `qtier args...`, asserting failure with status 1, and returns stderr.
pub fn run_err(args: &[&str]) -> String {
    let output = run(args);
    assert_eq!(
        output.status.code(),
        Some(1),
        "qtier {args:?} should fail with status 1:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stderr).expect("stderr is UTF-8")
}

/// The test model's directory (fetched and verified once per test process).
pub fn test_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| PathBuf::from(run_ok(&["test-model"]).trim()))
}

/// Path as a `&str` for command arguments.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// One tensor to write: name, safetensors dtype name, shape, little-endian data.
pub struct RawTensor {
    /// The tensor's name.
    pub name: String,
    /// Its safetensors dtype (`"F32"`, `"F16"`, ...).
    pub dtype: &'static str,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl RawTensor {
    /// An F32 tensor.
    pub fn f32(name: &str, shape: &[usize], values: &[f32]) -> RawTensor {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        RawTensor {
            name: name.into(),
            dtype: "F32",
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// An F16 tensor (values rounded to f16).
    pub fn f16(name: &str, shape: &[usize], values: &[f32]) -> RawTensor {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        RawTensor {
            name: name.into(),
            dtype: "F16",
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        }
    }
}

/// Writes a valid safetensors file with the tensors in the given order.
pub fn write_safetensors(path: &Path, tensors: &[RawTensor]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0;
    for tensor in tensors {
        header.insert(
            tensor.name.clone(),
            serde_json::json!({"dtype": tensor.dtype, "shape": tensor.shape, "data_offsets": [offset, offset + tensor.data.len()]}),
        );
        offset += tensor.data.len();
    }
    let data: Vec<u8> = tensors.iter().flat_map(|t| t.data.iter().copied()).collect();
    write_raw_safetensors(path, &serde_json::to_string(&header).unwrap(), &data);
}

/// Writes a safetensors file from a header text (not checked) and a data section.
pub fn write_raw_safetensors(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Deterministic pseudo-random values in [-1, 1) (a 64-bit LCG; tests need variety, not quality).
pub fn pseudo_random(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..count)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A small BERT-like model directory: two Linear layers, an embedding, a LayerNorm, biases and a
/// `config.json`, in F32.
pub fn write_small_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    write_safetensors(
        &dir.join("model.safetensors"),
        &[
            RawTensor::f32("embeddings.word_embeddings.weight", &[10, 8], &pseudo_random(80, 1)),
            RawTensor::f32("encoder.layer.0.attention.self.query.weight", &[8, 8], &pseudo_random(64, 2)),
            RawTensor::f32("encoder.layer.0.attention.self.query.bias", &[8], &pseudo_random(8, 3)),
            RawTensor::f32("encoder.layer.0.output.LayerNorm.weight", &[8], &pseudo_random(8, 4)),
            RawTensor::f32("encoder.layer.0.intermediate.dense.weight", &[16, 8], &pseudo_random(128, 5)),
        ],
    );
    std::fs::write(dir.join("config.json"), r#"{"model_type": "bert", "hidden_size": 8}"#).unwrap();
}

/// Names in `dir` (not recursive), sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Asserts that `output` does not exist and that no staging directory is left beside it.
pub fn assert_nothing_written(output: &Path) {
    assert!(!output.exists(), "{} must not exist", output.display());
    let parent = output.parent().unwrap();
    let leftovers: Vec<String> = entries(parent).into_iter().filter(|name| name.contains(".qtier-")).collect();
    assert!(leftovers.is_empty(), "staging left behind in {}: {leftovers:?}", parent.display());
}

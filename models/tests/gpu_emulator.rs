//! The GPU sentence encoder ([`GpuEncoder`]) on qtier-kernels' CPU emulator of the CUDA kernels
//! (`--features cuda` with the libcuda shim on `LD_LIBRARY_PATH`, as `scripts/test.sh` runs it,
//! through the driver backend): all-MiniLM-L6-v2's whole GPU forward (embeddings, the fused
//! LayerNorm -> quantization with its outlier lists, the int8 and fp32 GEMMs, the outlier epilogue,
//! attention, pooling) against the CPU encoder: short texts one at a time (at most 8 token rows:
//! the dp4a kernel), and the development sentences in batches (the tensor-core kernels): all 20
//! int8 on the emulated sm_86 (mma.m16n8k32: what an A10G or an H200 runs; `scripts/gpu-check.sh`'s
//! MiniLM check, on the CPU), the first [`SHORT_SET`] int8 on sm_75 (mma.m8n8k16) and in fp32 (the
//! emulator takes seconds per sentence). Needs the test model (`qtier test-model`, which
//! `scripts/test.sh` runs first).
#![cfg(feature = "cuda")]

use std::path::PathBuf;

use qtier_models::eval::{DEV_SENTENCES, cosine, lines};
use qtier_models::gpu::GpuEncoder;
use qtier_models::{Int8Options, SentenceEncoder};

#[path = "support/minilm.rs"]
mod minilm;

/// Texts of at most 8 tokens with [CLS] and [SEP] (checked below), embedded one at a time.
const TEXTS: [&str; 4] = ["the cat sat on the mat", "a quick test", "hello world", "GPUs run int8 fast"];

/// Development sentences run on the emulated sm_75 and in fp32.
const SHORT_SET: usize = 6;
/// Issue 9's bar: the GPU's embeddings against the CPU's fp32 ones, at the minimum.
const MIN_COSINE: f64 = 0.995;
/// The same weights and runtime on both devices: float rounding only (the emulator's order of
/// reductions differs from candle's).
const FLOAT_MATCH_COSINE: f64 = 0.99999;
/// The same int8 runtime on both devices: float rounding, and the rare activation it tips across
/// a quantization step or an outlier threshold.
const INT8_MATCH_COSINE: f64 = 0.999;
/// Plain per-token W8A8 on both devices. Looser: a [CLS] or [SEP] token's scale is set by its
/// outlier channel (~30x its median), so most of its values sit a few coarse steps from zero and
/// a last-bit difference in a LayerNorm output moves one by a whole step. Measured here: 0.9961
/// at the minimum, while each device's plain W8A8 is as close to fp32 as the other's (see the
/// test).
const PLAIN_MATCH_COSINE: f64 = 0.99;
/// How much further from fp32 the GPU's plain W8A8 may be than the CPU's, at the minimum.
const PLAIN_QUALITY_SLACK: f64 = 0.002;

fn model_dir() -> PathBuf {
    let dir = minilm::default_model_dir();
    assert!(
        dir.join("config.json").is_file(),
        "{}: no test model; run `qtier test-model` (scripts/test.sh does)",
        dir.display()
    );
    dir
}

fn min_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| cosine(x, y)).fold(f64::INFINITY, f64::min)
}

fn quantized(model: &std::path::Path, scratch: &tempfile::TempDir) -> PathBuf {
    let artifact = scratch.path().join("artifact");
    minilm::quantize_default(model, &artifact).unwrap();
    artifact
}

fn embed_gpu(encoder: &GpuEncoder) -> Vec<Vec<f32>> {
    TEXTS.iter().map(|text| encoder.embed_texts(&[text]).unwrap().remove(0)).collect()
}

/// Both devices are the emulator's (with `--features cuda`, the libcuda shim's): these checks
/// take device 0 as an sm_75 and device 1 as an sm_86; a real GPU's check is `scripts/gpu-check.sh`.
fn assert_emulated() {
    for ordinal in [0, 1] {
        let dev = qtier_kernels::cuda::CudaDevice::new(ordinal).unwrap_or_else(|e| {
            panic!("emulated device {ordinal}: {e} (with --features cuda these tests need the libcuda shim: scripts/test.sh)")
        });
        assert!(dev.name().starts_with("qtier CUDA emulator"), "{} is not the emulator", dev.name());
    }
}

#[test]
fn the_gpu_encoder_matches_the_cpu_encoder_float_and_int8() {
    assert_emulated();
    let model = model_dir();
    let scratch = tempfile::tempdir().unwrap();
    let artifact = quantized(&model, &scratch);
    let plain = Int8Options { outlier_decomposition: false };

    let gpu_fp32 = GpuEncoder::load(&model, 0).unwrap();
    for text in TEXTS {
        let tokens = gpu_fp32.tokenizer().encode_batch(&[text]).unwrap();
        assert!(tokens.seq <= 8, "{text:?}: {} tokens, the dp4a kernel takes at most 8 rows", tokens.seq);
    }
    let cpu_fp32 = SentenceEncoder::load(&model).unwrap().embed(&TEXTS).unwrap();
    let min = min_cosine(&embed_gpu(&gpu_fp32), &cpu_fp32);
    assert!(min >= FLOAT_MATCH_COSINE, "fp32: {min}");

    let gpu_int8 = GpuEncoder::load(&artifact, 0).unwrap();
    assert!(gpu_int8.outlier_rule().is_some());
    let gpu_plain = GpuEncoder::load_with(&artifact, 0, plain).unwrap();
    assert!(gpu_plain.outlier_rule().is_none());
    let (int8, plain_w8a8) = (embed_gpu(&gpu_int8), embed_gpu(&gpu_plain));
    let cpu_int8 = SentenceEncoder::load(&artifact).unwrap().embed(&TEXTS).unwrap();
    let cpu_plain = SentenceEncoder::load_with(&artifact, plain).unwrap().embed(&TEXTS).unwrap();
    let min = min_cosine(&int8, &cpu_int8);
    assert!(min >= INT8_MATCH_COSINE, "int8: {min}");
    let min = min_cosine(&plain_w8a8, &cpu_plain);
    assert!(min >= PLAIN_MATCH_COSINE, "int8 plain W8A8: {min}");
    let (gpu_plain_quality, cpu_plain_quality) =
        (min_cosine(&plain_w8a8, &cpu_fp32), min_cosine(&cpu_plain, &cpu_fp32));
    assert!(
        gpu_plain_quality >= cpu_plain_quality - PLAIN_QUALITY_SLACK,
        "plain W8A8 vs fp32: GPU {gpu_plain_quality}, CPU {cpu_plain_quality}"
    );
    // The decomposition is what brings int8 close to fp32 ([CLS] and [SEP] carry outliers).
    let decomposed = min_cosine(&int8, &cpu_fp32);
    assert!(
        decomposed > gpu_plain_quality,
        "int8 vs fp32: {decomposed} with the decomposition, {gpu_plain_quality} without"
    );
    eprintln!(
        "min cosine to CPU fp32: int8 {decomposed:.6}, plain W8A8 {gpu_plain_quality:.6} (CPU {cpu_plain_quality:.6})"
    );
}

#[test]
fn minilm_on_the_development_sentences_meets_the_bar_on_both_architectures() {
    assert_emulated();
    let model = model_dir();
    let scratch = tempfile::tempdir().unwrap();
    let artifact = quantized(&model, &scratch);
    let texts = lines(DEV_SENTENCES);
    let cpu_fp32 = SentenceEncoder::load(&model).unwrap().embed(&texts).unwrap();
    let cpu_int8 = SentenceEncoder::load(&artifact).unwrap().embed(&texts).unwrap();
    // The fp32 forward runs the same kernels on both architectures: once.
    let short = &texts[..SHORT_SET];
    let gpu_fp32 = GpuEncoder::load(&model, 0).unwrap().embed_texts(short).unwrap();
    let fp32_min = min_cosine(&gpu_fp32, &cpu_fp32[..SHORT_SET]);
    eprintln!("min cosine of gpu fp32 to CPU fp32 ({SHORT_SET} sentences): {fp32_min:.6}");
    assert!(fp32_min >= FLOAT_MATCH_COSINE, "fp32 {fp32_min}");
    for (ordinal, count) in [(0, SHORT_SET), (1, texts.len())] {
        let gpu_int8 = GpuEncoder::load(&artifact, ordinal).unwrap();
        let batch = gpu_int8.tokenizer().encode_batch(&texts[..count]).unwrap();
        let kernels = gpu_int8.kernel_variant(batch.batch * batch.seq);
        let device = gpu_int8.device().name().to_string();
        let int8 = gpu_int8.embed_texts(&texts[..count]).unwrap();
        let (int8_min, int8_match) = (min_cosine(&int8, &cpu_fp32[..count]), min_cosine(&int8, &cpu_int8[..count]));
        eprintln!(
            "{device} ({kernels}, {count} sentences): min cosine of gpu int8 to CPU fp32 {int8_min:.6}, to CPU \
             int8 {int8_match:.6}"
        );
        assert!(int8_min >= MIN_COSINE, "{device}: int8 vs fp32 {int8_min}");
        assert!(int8_match >= INT8_MATCH_COSINE, "{device}: int8 vs CPU int8 {int8_match}");
        assert!(kernels.contains("mma"), "{device}: {kernels}");
    }
}

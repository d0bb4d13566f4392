//! GPU check of the whole sentence-encoder forward (run by `scripts/gpu-check.sh` on a machine
//! with an NVIDIA GPU; needs the `cuda` feature, the driver, and libnvrtc on `LD_LIBRARY_PATH`).
//!
//! Embeds the 20 development sentences (`qtier eval`'s default set) with all-MiniLM-L6-v2 on the
//! CPU in fp32 (the reference) and on the GPU ([`GpuEncoder`]) from the float checkpoint and from
//! its int8 artifact, and prints per case the minimum and mean cosine to the reference:
//!
//! - `gpu fp32 vs cpu fp32` and `gpu int8 vs cpu fp32` (int8 with the outlier decomposition, the
//!   default on both devices) must reach [`MIN_COSINE`] (issue 9's bar) at their minimum (on the
//!   CPU the decomposition reaches about 0.997 on these sentences, README);
//! - `gpu int8 vs cpu int8` must reach [`INT8_MATCH_COSINE`] and `gpu int8 plain w8a8 vs cpu
//!   int8 plain w8a8` [`PLAIN_MATCH_COSINE`]: the same int8 runtime on both devices, so each is
//!   the other's peer (the plain pair isolates the GEMM path from the decomposition);
//! - `gpu int8 plain w8a8 vs cpu fp32` is reported against [`MIN_COSINE`] as information: plain
//!   W8A8 reaches a minimum of about 0.982 on these sentences on the CPU (`qtier eval
//!   --plain-w8a8`).
//!
//! Then times the batch-1 x 128-token forward (tokenized input ready; upload of the ids, the
//! forward and the download of the embedding included) on the GPU for the float checkpoint and
//! the int8 artifact (with and without the decomposition), as the median over repeated batches
//! of calls, with the CPU fp32 forward for scale.
//!
//! Prints one JSON object per line; `--out FILE` also writes them there. Exit status 1 when a
//! gated check fails.
//! Usage: `gpu_minilm [--model DIR] [--artifact DIR] [--out FILE] [--quick]`. `--model` is a
//! float checkpoint (F32, F16 or BF16; default `$QTIER_CACHE/models/all-MiniLM-L6-v2`, else
//! `~/.cache/qtier/models/all-MiniLM-L6-v2`); `--artifact` its int8 artifact (default: quantized
//! from `--model` into a temporary directory with `qtier quantize`'s defaults).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use qtier_models::eval::{DEV_SENTENCES, cosine, lines};
use qtier_models::gpu::GpuEncoder;
use qtier_models::{Int8Options, SentenceEncoder, TokenBatch};

#[path = "../tests/support/minilm.rs"]
mod minilm;

use minilm::{default_model_dir, quantize_default};

/// One embedding per sentence.
type Embeddings = [Vec<f32>];
/// One timed forward.
type Forward<'a> = dyn Fn() -> qtier_models::Result<Vec<Vec<f32>>> + 'a;

/// Issue 9's bar: the GPU's embeddings against the CPU's fp32 ones, minimum over the sentences.
const MIN_COSINE: f64 = 0.995;
/// The GPU's int8 embeddings against the CPU's with the same int8 options: the same quantized
/// weights, per-token activation quantization and outlier rule, so only float rounding
/// (LayerNorm, attention, GEMM epilogue order, the RMS behind an outlier decision) and the rare
/// activation or outlier decision that it tips across a boundary differ.
const INT8_MATCH_COSINE: f64 = 0.999;
/// The GPU's plain W8A8 embeddings against the CPU's. Looser than [`INT8_MATCH_COSINE`]: a [CLS]
/// or [SEP] token's scale is set by its outlier channel (~30x its median), so a last-bit
/// difference in a LayerNorm output moves a value by a whole coarse step. On qtier's CUDA
/// emulator (the same kernels on the CPU through the libcuda shim, `scripts/test.sh`)
/// the minimum over 4 short texts was 0.9961, each device's plain W8A8 as close to fp32 as the
/// other's.
const PLAIN_MATCH_COSINE: f64 = 0.99;
/// Tokens per sequence of the timed forward.
const TIMED_SEQ: usize = 128;
/// Minimum wall time of one timed batch of calls (so launch jitter and timer resolution stay
/// under 1%).
const BATCH_SECONDS: f64 = 0.05;

fn emit(out: &mut Option<std::fs::File>, line: String) {
    println!("{line}");
    if let Some(f) = out {
        let _ = writeln!(f, "{line}");
    }
}

/// (min, mean) cosine of paired embeddings; the minimum is NaN when any cosine is (a NaN
/// embedding), so that the threshold check fails (`f64::min` would skip it).
fn cosines(reference: &[Vec<f32>], candidate: &[Vec<f32>]) -> (f64, f64) {
    let values: Vec<f64> = reference.iter().zip(candidate).map(|(a, b)| cosine(a, b)).collect();
    let min =
        values.iter().copied().fold(f64::INFINITY, |m, v| if m.is_nan() || v.is_nan() { f64::NAN } else { m.min(v) });
    (min, values.iter().sum::<f64>() / values.len().max(1) as f64)
}

/// `[CLS]`, the development sentences' tokens cycled, `[SEP]`: `seq` real tokens (as
/// `qtier bench model` builds its input).
fn timed_batch(encoder: &SentenceEncoder, seq: usize) -> Result<TokenBatch, Box<dyn std::error::Error>> {
    let text = lines(DEV_SENTENCES).join(" ");
    let ids = encoder.tokenizer().encode_batch(&[&text])?.ids_of(0);
    let (cls, sep, body) = (ids[0], ids[ids.len() - 1], &ids[1..ids.len() - 1]);
    let mut sequence = vec![cls];
    sequence.extend(body.iter().cycle().take(seq - 2));
    sequence.push(sep);
    Ok(TokenBatch::repeated(&sequence, 1))
}

/// Median seconds per call of `f` over `repeats` batches, each at least [`BATCH_SECONDS`].
fn time_calls<E>(repeats: usize, mut f: impl FnMut() -> Result<(), E>) -> Result<f64, E> {
    for _ in 0..3 {
        f()?;
    }
    let mut calls = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..calls {
            f()?;
        }
        if t.elapsed().as_secs_f64() >= BATCH_SECONDS || calls >= 1 << 14 {
            break;
        }
        calls *= 2;
    }
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        for _ in 0..calls {
            f()?;
        }
        samples.push(t.elapsed().as_secs_f64() / calls as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let mut out = value("--out").map(std::fs::File::create).transpose()?;
    let repeats = if args.iter().any(|a| a == "--quick") { 5 } else { 11 };
    let model = value("--model").map_or_else(default_model_dir, PathBuf::from);
    if !model.join("config.json").is_file() {
        let hint = "pass --model DIR (`qtier test-model` fetches all-MiniLM-L6-v2 and prints its directory)";
        return Err(format!("{}: not a model directory (no config.json); {hint}", model.display()).into());
    }
    // The GPU first: without one the check ends here, before the CPU work.
    let t = Instant::now();
    let gpu_fp32 = GpuEncoder::load(&model, 0)?;
    let load_s = t.elapsed().as_secs_f64();
    let quantized_dir = tempfile::tempdir()?;
    let artifact = match value("--artifact") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let output = quantized_dir.path().join("artifact");
            quantize_default(&model, &output)?;
            output
        }
    };

    let texts = lines(DEV_SENTENCES);
    let cpu_fp32 = SentenceEncoder::load(&model)?;
    let plain = Int8Options { outlier_decomposition: false };
    let cpu_int8 = SentenceEncoder::load(&artifact)?;
    let cpu_int8_plain = SentenceEncoder::load_with(&artifact, plain)?;
    let reference = cpu_fp32.embed(&texts)?;
    let reference_int8 = cpu_int8.embed(&texts)?;
    let reference_int8_plain = cpu_int8_plain.embed(&texts)?;

    let gpu_int8 = GpuEncoder::load(&artifact, 0)?;
    let gpu_int8_plain = GpuEncoder::load_with(&artifact, 0, plain)?;
    let dev = gpu_fp32.device();
    let (major, minor) = dev.driver_cuda_version();
    emit(
        &mut out,
        format!(
            "{{\"device\":{:?},\"arch\":\"{}\",\"sm_count\":{},\"memory_bytes\":{},\"driver_cuda\":\"{major}.{minor}\",\"model\":{:?},\"artifact\":{:?},\"load_s\":{load_s:.3}}}",
            dev.name(),
            dev.arch(),
            dev.sm_count(),
            dev.memory_bytes(),
            model.display().to_string(),
            artifact.display().to_string()
        ),
    );

    let mut failures = Vec::new();
    let gpu_fp32_embeddings = gpu_fp32.embed_texts(&texts)?;
    let gpu_int8_embeddings = gpu_int8.embed_texts(&texts)?;
    let gpu_int8_plain_embeddings = gpu_int8_plain.embed_texts(&texts)?;
    // (name, reference, GPU embeddings, threshold, whether a miss fails the check)
    let checks: [(&str, &Embeddings, &Embeddings, f64, bool); 5] = [
        ("gpu fp32 vs cpu fp32", &reference, &gpu_fp32_embeddings, MIN_COSINE, true),
        ("gpu int8 vs cpu fp32", &reference, &gpu_int8_embeddings, MIN_COSINE, true),
        ("gpu int8 vs cpu int8", &reference_int8, &gpu_int8_embeddings, INT8_MATCH_COSINE, true),
        (
            "gpu int8 plain w8a8 vs cpu int8 plain w8a8",
            &reference_int8_plain,
            &gpu_int8_plain_embeddings,
            PLAIN_MATCH_COSINE,
            true,
        ),
        ("gpu int8 plain w8a8 vs cpu fp32", &reference, &gpu_int8_plain_embeddings, MIN_COSINE, false),
    ];
    for (name, expected, found, threshold, gated) in checks {
        let (min, mean) = cosines(expected, found);
        let ok = found.len() == expected.len() && min >= threshold;
        emit(
            &mut out,
            format!(
                "{{\"check\":{name:?},\"sentences\":{},\"min_cosine\":{min:.6},\"mean_cosine\":{mean:.6},\"threshold\":{threshold},\"ok\":{ok},\"gated\":{gated}}}",
                found.len()
            ),
        );
        if gated && !ok {
            failures.push(format!("{name}: min cosine {min:.6} < {threshold}"));
        }
    }

    let batch = timed_batch(&cpu_fp32, TIMED_SEQ)?;
    let cases: [(&str, &Forward, String); 4] = [
        ("gpu fp32", &|| gpu_fp32.embed(&batch), gpu_fp32.kernel_variant(TIMED_SEQ)),
        ("gpu int8", &|| gpu_int8.embed(&batch), gpu_int8.kernel_variant(TIMED_SEQ)),
        ("gpu int8 plain w8a8", &|| gpu_int8_plain.embed(&batch), gpu_int8_plain.kernel_variant(TIMED_SEQ)),
        ("cpu fp32", &|| cpu_fp32.embed_tokens(&batch), "candle f32".to_string()),
    ];
    for (name, run, kernels) in cases {
        let seconds = time_calls(repeats, || run().map(drop))?;
        emit(
            &mut out,
            format!(
                "{{\"bench\":\"{name} b1xs{TIMED_SEQ}\",\"kernels\":{kernels:?},\"median_ms\":{:.3}}}",
                seconds * 1e3
            ),
        );
    }

    if failures.is_empty() {
        emit(&mut out, "{\"result\":\"pass\"}".to_owned());
        Ok(())
    } else {
        emit(&mut out, format!("{{\"result\":\"fail\",\"failures\":{failures:?}}}"));
        Err(format!("{} GPU checks failed", failures.len()).into())
    }
}

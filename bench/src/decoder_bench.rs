//! `qtier bench model` on a Llama-family decoder: time to first token (TTFT, the prompt's
//! forward and the first token's choice) and time per output token (TPOT, each later greedy step
//! over the KV cache), at batch 1, as samples with the encoder workloads' statistics, in the same
//! [`ModelBenchReport`].
//!
//! One run is a greedy generation of `gen_len` tokens after a `prompt_len`-token prompt: it gives
//! one TTFT sample and `gen_len - 1` TPOT samples. The first run is warm-up (weights paged in,
//! caches and thread pools settled) and is discarded; runs repeat until the minimum duration has
//! passed and the TPOT sample has the tail percentile's minimum count, or until the time limit.
//! TTFT samples are one per run, so their tail has no early-stopping bound unless the run is long.
//!
//! At batch 1 a decoding step reads every weight once, so `weight bytes / read bandwidth` bounds
//! TPOT from below; the report records that bound, the bandwidth it used (measured here with
//! [`qtier_kernels::limits::read_bandwidth`] on the benchmark's threads) and the measured median
//! as a percentage of it.

use std::path::Path;
use std::time::{Duration, Instant};

use qtier_models::Int8Options;
use qtier_models::llama::LlamaModel;
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::model_bench::{BOOTSTRAP_SEED, MODEL_REPORT_SCHEMA_VERSION, ModelBenchReport, ModelWorkload};
use crate::stats::{EARLY_STOPPING_CONFIDENCE, Sample, Summary, min_samples_for_percentile};

/// Largest buffer the bandwidth measurement reads: a weight set larger than this is read from
/// main memory just the same (the last-level cache holds 48-64 MiB), and a copy of a multi-GB
/// model would double the benchmark's memory for nothing.
pub const MAX_BANDWIDTH_PROBE_BYTES: usize = 1 << 30;
/// First token ids of the benchmark prompt cycle through this many ids above [`PROMPT_ID_BASE`]
/// (weights are what is measured; the ids only need to be valid and varied).
const PROMPT_ID_SPAN: u32 = 997;
/// Smallest id of the benchmark prompt (above the usual special tokens).
const PROMPT_ID_BASE: u32 = 3;

/// What to run.
#[derive(Debug, Clone)]
pub struct DecoderBenchConfig {
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Tokens generated per run (the first is the TTFT sample, the others TPOT samples).
    pub gen_len: usize,
    /// The tail percentile reported (e.g. 99).
    pub tail_percentile: f64,
    /// Measure at least this long (after the warm-up run).
    pub min_duration: Duration,
    /// Start no run after this long.
    pub max_duration: Duration,
    /// How int8 layers run.
    pub int8: Int8Options,
    /// Threads of the pool the model runs on.
    pub threads: usize,
}

/// Which decoder latency a workload measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderMetric {
    /// Time to first token.
    Ttft,
    /// Time per output token.
    Tpot,
}

/// Decoder facts of a report: the generation shape, the weights and TPOT's memory bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderBenchInfo {
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Tokens generated per run.
    pub gen_len: usize,
    /// Runs measured (after the warm-up run).
    pub runs: usize,
    /// The weights' types as they ran (`f32`, `int8 (lm_head f32)`).
    pub weight_dtype: String,
    /// Bytes of weights one decoding step reads.
    pub weight_bytes_per_token: u64,
    /// Parameters of the Linear layers without `lm_head` (for projections of the prefill).
    pub linear_params: u64,
    /// Vocabulary size (`lm_head` is `hidden x vocab`).
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Read bandwidth used for the bound, GB/s.
    pub read_gb_per_s: f64,
    /// Bytes of the buffer the bandwidth was measured on.
    pub read_probe_bytes: usize,
    /// `weight_bytes_per_token / read bandwidth`, ms: the fastest a step can be.
    pub tpot_bound_ms: f64,
    /// Measured TPOT median, ms.
    pub tpot_p50_ms: f64,
    /// `tpot_bound_ms / tpot_p50_ms`, percent: the fraction of the bandwidth the steps reach.
    pub tpot_percent_of_bound: f64,
}

impl DecoderBenchInfo {
    /// Time of one request (`ttft + (gen_len - 1) tpot`), ms, from per-metric values.
    pub fn request_ms(&self, ttft_ms: f64, tpot_ms: f64) -> f64 {
        ttft_ms + self.gen_len.saturating_sub(1) as f64 * tpot_ms
    }
}

/// The benchmark prompt: `prompt_len` varied token ids below `vocab`.
fn prompt_ids(prompt_len: usize, vocab: usize) -> Vec<u32> {
    let span = PROMPT_ID_SPAN.min(u32::try_from(vocab).unwrap_or(u32::MAX).saturating_sub(PROMPT_ID_BASE)).max(1);
    (0..prompt_len as u32).map(|i| PROMPT_ID_BASE + (i * 31) % span).collect()
}

fn model_error(error: qtier_models::ModelError) -> BenchError {
    BenchError::Model(error.to_string())
}

/// Runs the decoder benchmark on `dir`.
pub fn run_decoder_bench(
    dir: &Path,
    config: &DecoderBenchConfig,
    provenance: crate::Provenance,
    hardware: crate::hardware::Hardware,
    progress: &dyn Fn(&str),
) -> Result<ModelBenchReport> {
    let invalid =
        |problem: &str| BenchError::InvalidWorkload { text: dir.display().to_string(), problem: problem.into() };
    if config.prompt_len == 0 || config.gen_len < 2 {
        return Err(invalid("--prompt-len must be at least 1 and --gen-len at least 2"));
    }
    progress("loading the model");
    let model = LlamaModel::load_with(dir, config.int8).map_err(model_error)?;
    let prompt = prompt_ids(config.prompt_len, model.config().vocab_size);
    let mut cache = model.new_cache(config.prompt_len + config.gen_len - 1).map_err(model_error)?;
    let min_tpot = min_samples_for_percentile(config.tail_percentile, EARLY_STOPPING_CONFIDENCE)?;
    progress("warm-up run");
    model.generate(&prompt, config.gen_len, &mut cache).map_err(model_error)?;
    let (mut ttft, mut tpot) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let mut stopped_by_time_limit = false;
    loop {
        progress(&format!("run {} (prompt {}, {} tokens)", ttft.len() + 1, config.prompt_len, config.gen_len));
        let generation = model.generate(&prompt, config.gen_len, &mut cache).map_err(model_error)?;
        ttft.push(generation.ttft_ns);
        tpot.extend(generation.token_ns);
        let elapsed = started.elapsed();
        if elapsed >= config.min_duration && tpot.len() >= min_tpot {
            break;
        }
        if elapsed >= config.max_duration {
            stopped_by_time_limit = tpot.len() < min_tpot;
            break;
        }
    }
    progress("measuring read bandwidth");
    let weight_bytes = model.weight_bytes_per_token();
    let probe = usize::try_from(weight_bytes).unwrap_or(usize::MAX).min(MAX_BANDWIDTH_PROBE_BYTES);
    let bandwidth = qtier_kernels::limits::read_bandwidth(probe, config.threads)
        .map_err(|e| BenchError::Model(format!("measuring read bandwidth: {e}")))?;
    let workload = |metric: DecoderMetric, samples: Vec<f64>, name: String| -> Result<ModelWorkload> {
        let sample = Sample::new(samples.clone())?;
        Ok(ModelWorkload {
            name,
            batch: 1,
            seq: config.prompt_len,
            warmup_calls: 1,
            stopped_by_time_limit,
            stats: Summary::compute(&sample, config.tail_percentile, BOOTSTRAP_SEED)?,
            open_loop: None,
            max_qps: None,
            decoder_metric: Some(metric),
            samples_ns: samples,
            run_medians_ns: Vec::new(),
        })
    };
    let runs = ttft.len();
    let ttft = workload(DecoderMetric::Ttft, ttft, format!("ttft_p{}", config.prompt_len))?;
    let tpot = workload(DecoderMetric::Tpot, tpot, format!("tpot_p{}_g{}", config.prompt_len, config.gen_len))?;
    let tpot_bound_ms = weight_bytes as f64 / (bandwidth.gb_per_s * 1e9) * 1e3;
    let tpot_p50_ms = tpot.stats.p50 / 1e6;
    let kernel = model.linears().find_map(|l| l.kernel()).map(|k| k.name().to_string());
    let c = model.config();
    Ok(ModelBenchReport {
        schema_version: MODEL_REPORT_SCHEMA_VERSION,
        provenance,
        hardware,
        model: dir.display().to_string(),
        model_name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        weights_sha256: crate::model_bench::weights_sha256(dir)?,
        int8: model.is_int8(),
        kernel,
        threads: config.threads,
        merged_runs: 1,
        injected_slowdown: None,
        decoder: Some(DecoderBenchInfo {
            prompt_len: config.prompt_len,
            gen_len: config.gen_len,
            runs,
            weight_dtype: model.weight_dtype(),
            weight_bytes_per_token: weight_bytes,
            linear_params: c.linear_params(),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            read_gb_per_s: bandwidth.gb_per_s,
            read_probe_bytes: bandwidth.bytes,
            tpot_bound_ms,
            tpot_p50_ms,
            tpot_percent_of_bound: tpot_bound_ms / tpot_p50_ms * 100.0,
        }),
        workloads: vec![ttft, tpot],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_ids_stay_inside_small_vocabularies() {
        assert!(prompt_ids(512, 1024).iter().all(|&id| (PROMPT_ID_BASE..1024).contains(&id)));
        assert!(prompt_ids(64, 8).iter().all(|&id| id < 8));
        assert_eq!(prompt_ids(3, 128_256).len(), 3);
    }
}

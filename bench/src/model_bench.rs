//! `qtier bench model`: end-to-end latency of a sentence-embedding model (tokenized input ready,
//! encoder forward plus pooling timed), per batch size, float or int8 as the directory holds.
//!
//! Inputs are real token ids from the model's own tokenizer (the development sentences, joined
//! and cut to the requested length between `[CLS]` and `[SEP]`), prepared outside the timed
//! region; every sequence of the batch is the same length, all real tokens.
//!
//! `--device cuda[:N]` ([`run_model_bench_on`]) times the same workloads on the GPU encoder
//! ([`qtier_models::gpu::GpuEncoder`]: the whole forward on the device, the embeddings copied
//! back inside the timed call) and records the GPU in the report's hardware; int8 layers run
//! there with the outlier decomposition as the [`Int8Options`] say, as on the CPU.

use std::path::Path;

use qtier_models::eval::{DEV_SENTENCES, lines};
use qtier_models::gpu::{ComputeDevice, GpuEncoder};
use qtier_models::{Int8Options, SentenceEncoder, TextTokenizer, TokenBatch};
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::load::{LoadRun, MaxQps, find_max_qps, run_open_loop};
use crate::stats::{EARLY_STOPPING_CONFIDENCE, Sample, Summary, min_samples_for_percentile};
use crate::timing::{TimingConfig, measure};

/// Version of [`ModelBenchReport`]'s layout.
pub const MODEL_REPORT_SCHEMA_VERSION: u32 = 1;
/// Seed of the bootstrap, fixed so a report can be recomputed exactly from its samples.
pub const BOOTSTRAP_SEED: u64 = 0x0071_7469_6572;

/// What to run.
#[derive(Debug, Clone)]
pub struct ModelBenchConfig {
    /// Batch sizes, one workload each.
    pub batches: Vec<usize>,
    /// Tokens per sequence.
    pub seq: usize,
    /// The tail percentile reported and used to size the sample (e.g. 99).
    pub tail_percentile: f64,
    /// Minimum duration and time limit; the minimum sample count is raised to what the tail
    /// percentile needs.
    pub timing: TimingConfig,
    /// How int8 layers run.
    pub int8: Int8Options,
    /// Threads of the pool the model runs on (recorded in the report).
    pub threads: usize,
    /// Test-only: stretch every timed call by this fraction of its own duration (busy work), to
    /// check that `qtier compare` catches a regression of known size. Recorded in the report.
    pub injected_slowdown: Option<f64>,
    /// Open-loop load after the closed-loop measurement, if any.
    pub load: Option<LoadMode>,
}

/// Open-loop load to apply to each workload after its closed-loop measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadMode {
    /// Poisson arrivals at `qps` for `duration`.
    FixedRate {
        /// Requests per second.
        qps: f64,
        /// How long.
        duration: std::time::Duration,
    },
    /// Search the highest rate whose tail (the config's tail percentile) stays within `sla_ns`.
    FindMax {
        /// The latency bound, ns.
        sla_ns: f64,
        /// Duration of each search step.
        step_duration: std::time::Duration,
    },
}

/// The environment variable that sets [`ModelBenchConfig::injected_slowdown`] (test-only).
pub const INJECT_SLOWDOWN_ENV: &str = "QTIER_BENCH_INJECT_SLOWDOWN";

/// One workload's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelWorkload {
    /// `b{batch}xs{seq}`.
    pub name: String,
    /// Sequences per call.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Calls made during warm-up.
    pub warmup_calls: usize,
    /// True when the time limit ended the run before the tail percentile's minimum count.
    pub stopped_by_time_limit: bool,
    /// Statistics of `samples_ns`.
    pub stats: Summary,
    /// The open-loop run at a fixed rate, when asked for (`--qps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_loop: Option<LoadRun>,
    /// The highest rate meeting the SLA, when asked for (`--find-max-qps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_qps: Option<MaxQps>,
    /// For a decoder, which latency the samples are (time to first token or per output token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_metric: Option<crate::decoder_bench::DecoderMetric>,
    /// Every sample, ns, in order.
    pub samples_ns: Vec<f64>,
    /// For a merged report ([`merge_reports`]): each pooled run's median, ns, in run order. The
    /// runs, not the samples, are the independent units a regression gate compares (samples of
    /// one run share that run's machine state).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_medians_ns: Vec<f64>,
}

impl ModelWorkload {
    /// The medians of the runs behind this workload: [`run_medians_ns`](Self::run_medians_ns)
    /// for a merged report, else this run's median.
    pub fn run_medians(&self) -> Vec<f64> {
        if self.run_medians_ns.is_empty() { vec![self.stats.p50] } else { self.run_medians_ns.clone() }
    }
}

/// The result of `qtier bench model`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelBenchReport {
    /// Layout version.
    pub schema_version: u32,
    /// Which qtier produced it and how it was run.
    pub provenance: crate::Provenance,
    /// The machine it ran on.
    pub hardware: crate::hardware::Hardware,
    /// The model directory.
    pub model: String,
    /// The model's name (its directory's name).
    #[serde(default)]
    pub model_name: String,
    /// sha256 of each safetensors file of the model, by file name: which weights were measured.
    #[serde(default)]
    pub weights_sha256: std::collections::BTreeMap<String, String>,
    /// True when any Linear layer ran on the int8 kernels.
    pub int8: bool,
    /// The int8 kernel variant, when int8.
    pub kernel: Option<String>,
    /// Threads of the pool the model ran on.
    pub threads: usize,
    /// How many runs this report pools ([`merge_reports`]); 1 for a single run.
    #[serde(default = "one_run")]
    pub merged_runs: usize,
    /// Test-only slowdown that was injected, if any (see [`INJECT_SLOWDOWN_ENV`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_slowdown: Option<f64>,
    /// For a decoder: the generation shape, weights and TPOT's memory bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder: Option<crate::decoder_bench::DecoderBenchInfo>,
    /// One entry per batch size (encoders), or TTFT and TPOT (decoders).
    pub workloads: Vec<ModelWorkload>,
}

fn one_run() -> usize {
    1
}

/// The token ids of one benchmark sequence of `seq` tokens: `[CLS]`, text tokens, `[SEP]`.
pub fn benchmark_ids(tokenizer: &TextTokenizer, seq: usize) -> Result<Vec<u32>> {
    if seq < 2 {
        return Err(BenchError::InvalidWorkload { text: seq.to_string(), problem: "--seq must be at least 2".into() });
    }
    let text = lines(DEV_SENTENCES).join(" ");
    let tokens = tokenizer.encode_batch(&[&text]).map_err(model_error)?;
    let ids = tokens.ids_of(0);
    let (cls, sep, body) = (ids[0], ids[ids.len() - 1], &ids[1..ids.len() - 1]);
    let mut sequence = vec![cls];
    sequence.extend(body.iter().cycle().take(seq - 2));
    sequence.push(sep);
    Ok(sequence)
}

/// sha256 of every `*.safetensors` file directly in `dir`.
pub(crate) fn weights_sha256(dir: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let io_error = |path: &Path, e: std::io::Error| BenchError::Model(format!("{}: {e}", path.display()));
    let mut digests = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        if !name.ends_with(".safetensors") {
            continue;
        }
        let mut file = std::fs::File::open(&path).map_err(|e| io_error(&path, e))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = file.read(&mut buffer).map_err(|e| io_error(&path, e))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        digests.insert(name, hasher.finalize().iter().map(|b| format!("{b:02x}")).collect());
    }
    Ok(digests)
}

fn model_error(error: qtier_models::ModelError) -> BenchError {
    BenchError::Model(error.to_string())
}

/// The encoder a model benchmark times.
enum BenchEncoder {
    Cpu(Box<SentenceEncoder>),
    Cuda(Box<GpuEncoder>),
}

impl BenchEncoder {
    fn load(dir: &Path, device: ComputeDevice, int8: Int8Options) -> Result<BenchEncoder> {
        Ok(match device {
            ComputeDevice::Cpu => {
                BenchEncoder::Cpu(Box::new(SentenceEncoder::load_with(dir, int8).map_err(model_error)?))
            }
            ComputeDevice::Cuda { ordinal } => {
                BenchEncoder::Cuda(Box::new(GpuEncoder::load_with(dir, ordinal, int8).map_err(model_error)?))
            }
        })
    }

    fn tokenizer(&self) -> &TextTokenizer {
        match self {
            BenchEncoder::Cpu(encoder) => encoder.tokenizer(),
            BenchEncoder::Cuda(encoder) => encoder.tokenizer(),
        }
    }

    fn max_positions(&self) -> usize {
        match self {
            BenchEncoder::Cpu(encoder) => encoder.model().config().max_position_embeddings,
            BenchEncoder::Cuda(encoder) => encoder.config().max_position_embeddings,
        }
    }

    fn is_int8(&self) -> bool {
        match self {
            BenchEncoder::Cpu(encoder) => encoder.is_int8(),
            BenchEncoder::Cuda(encoder) => encoder.is_int8(),
        }
    }

    fn embed_tokens(&self, tokens: &TokenBatch) -> qtier_models::Result<()> {
        match self {
            BenchEncoder::Cpu(encoder) => encoder.embed_tokens(tokens).map(drop),
            BenchEncoder::Cuda(encoder) => encoder.embed(tokens).map(drop),
        }
    }
}

/// The GPU of a `--device cuda` run, with the GEMM kernels its workloads (`rows` token rows
/// each) ran, distinct, in order.
pub fn gpu_hardware(encoder: &GpuEncoder, rows: &[usize]) -> crate::hardware::GpuHardware {
    let dev = encoder.device();
    let mut variants: Vec<String> = Vec::new();
    for variant in
        rows.iter().flat_map(|&r| encoder.kernel_variant(r).split(", ").map(str::to_string).collect::<Vec<_>>())
    {
        if !variants.contains(&variant) {
            variants.push(variant);
        }
    }
    let (major, minor) = dev.driver_cuda_version();
    crate::hardware::GpuHardware {
        name: dev.name().to_string(),
        compute_capability: format!("{}.{}", dev.arch().major, dev.arch().minor),
        memory_bytes: dev.memory_bytes(),
        driver_version: crate::hardware::nvidia_driver_version(),
        driver_cuda_version: format!("{major}.{minor}"),
        kernel_variant: variants.join(", "),
    }
}

/// Runs the model benchmark on `dir` on the CPU.
pub fn run_model_bench(
    dir: &Path,
    config: &ModelBenchConfig,
    provenance: crate::Provenance,
    hardware: crate::hardware::Hardware,
    progress: &dyn Fn(&str),
) -> Result<ModelBenchReport> {
    run_model_bench_on(dir, config, ComputeDevice::Cpu, provenance, hardware, progress)
}

/// Runs the model benchmark on `dir` on `device`; a GPU run records the GPU in
/// `hardware.gpu`.
pub fn run_model_bench_on(
    dir: &Path,
    config: &ModelBenchConfig,
    device: ComputeDevice,
    provenance: crate::Provenance,
    mut hardware: crate::hardware::Hardware,
    progress: &dyn Fn(&str),
) -> Result<ModelBenchReport> {
    if let ComputeDevice::Cuda { ordinal } = device {
        progress(&format!("loading the model onto GPU {ordinal}"));
    }
    let encoder = BenchEncoder::load(dir, device, config.int8)?;
    let max_positions = encoder.max_positions();
    if config.seq > max_positions {
        return Err(BenchError::InvalidWorkload {
            text: config.seq.to_string(),
            problem: format!("--seq exceeds the model's {max_positions} positions"),
        });
    }
    let ids = benchmark_ids(encoder.tokenizer(), config.seq)?;
    let min_samples =
        min_samples_for_percentile(config.tail_percentile, EARLY_STOPPING_CONFIDENCE)?.max(config.timing.min_samples);
    let timing = TimingConfig { min_samples, ..config.timing };
    let mut workloads = Vec::with_capacity(config.batches.len());
    for &batch in &config.batches {
        if batch == 0 {
            return Err(BenchError::InvalidWorkload {
                text: "0".into(),
                problem: "batch sizes must be positive".into(),
            });
        }
        let name = format!("b{batch}xs{}", config.seq);
        progress(&format!("timing {name}"));
        let tokens = TokenBatch::repeated(&ids, batch);
        let timings = measure(&timing, || {
            let start = std::time::Instant::now();
            encoder.embed_tokens(&tokens)?;
            if let Some(fraction) = config.injected_slowdown {
                let target = start.elapsed().mul_f64(1.0 + fraction);
                while start.elapsed() < target {
                    std::hint::spin_loop();
                }
            }
            Ok(())
        })
        .map_err(model_error)?;
        let sample = Sample::new(timings.samples_ns.clone())?;
        let serve = || encoder.embed_tokens(&tokens);
        let (open_loop, max_qps) = match config.load {
            None => (None, None),
            Some(LoadMode::FixedRate { qps, duration }) => {
                progress(&format!("{name}: open loop at {qps} requests/s"));
                let run =
                    run_open_loop(qps, duration, config.tail_percentile, BOOTSTRAP_SEED, serve).map_err(model_error)?;
                (Some(run), None)
            }
            Some(LoadMode::FindMax { sla_ns, step_duration }) => {
                progress(&format!("{name}: searching the highest rate within the SLA"));
                let single_stream_qps = 1e9 / sample.median();
                let found = find_max_qps(
                    single_stream_qps,
                    sla_ns,
                    config.tail_percentile,
                    step_duration,
                    BOOTSTRAP_SEED,
                    serve,
                )
                .map_err(model_error)?;
                (None, Some(found))
            }
        };
        workloads.push(ModelWorkload {
            open_loop,
            max_qps,
            name,
            batch,
            seq: config.seq,
            warmup_calls: timings.warmup_calls,
            stopped_by_time_limit: timings.stopped_by_time_limit,
            stats: Summary::compute(&sample, config.tail_percentile, BOOTSTRAP_SEED)?,
            decoder_metric: None,
            samples_ns: timings.samples_ns,
            run_medians_ns: Vec::new(),
        });
    }
    let kernel = match &encoder {
        BenchEncoder::Cpu(encoder) => encoder.model().linears().find_map(|l| l.kernel()).map(|k| k.name().to_string()),
        BenchEncoder::Cuda(gpu) => {
            let rows: Vec<usize> = config.batches.iter().map(|b| b * config.seq).collect();
            let found = gpu_hardware(gpu, &rows);
            let kernel = gpu.is_int8().then(|| format!("cuda {}", found.kernel_variant));
            hardware.gpu = Some(found);
            kernel
        }
    };
    Ok(ModelBenchReport {
        schema_version: MODEL_REPORT_SCHEMA_VERSION,
        provenance,
        hardware,
        model: dir.display().to_string(),
        model_name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        weights_sha256: weights_sha256(dir)?,
        int8: encoder.is_int8(),
        kernel,
        threads: config.threads,
        merged_runs: 1,
        injected_slowdown: config.injected_slowdown,
        decoder: None,
        workloads,
    })
}

/// Merges reports of the same model measured in several runs (e.g. interleaved A B A B runs, so
/// that slow drift of the machine affects both sides alike): per workload name, the samples are
/// concatenated in report order and the statistics recomputed; the first report's provenance,
/// hardware and settings are kept. Reports must name the same model weights and workloads.
pub fn merge_reports(reports: &[ModelBenchReport]) -> Result<ModelBenchReport> {
    let (first, rest) = reports
        .split_first()
        .ok_or_else(|| BenchError::InvalidWorkload { text: "merge".into(), problem: "no reports to merge".into() })?;
    let mut merged = first.clone();
    for workload in &mut merged.workloads {
        workload.run_medians_ns = workload.run_medians();
    }
    for report in rest {
        if report.weights_sha256 != first.weights_sha256 || report.int8 != first.int8 {
            return Err(BenchError::InvalidWorkload {
                text: report.model.clone(),
                problem: format!("measures other weights than {}", first.model),
            });
        }
        for workload in &report.workloads {
            let target = merged.workloads.iter_mut().find(|w| w.name == workload.name).ok_or_else(|| {
                BenchError::InvalidWorkload {
                    text: workload.name.clone(),
                    problem: format!("workload missing from {}", first.model),
                }
            })?;
            target.samples_ns.extend_from_slice(&workload.samples_ns);
            target.run_medians_ns.extend(workload.run_medians());
            target.warmup_calls += workload.warmup_calls;
            target.stopped_by_time_limit |= workload.stopped_by_time_limit;
        }
    }
    for workload in &mut merged.workloads {
        let sample = Sample::new(workload.samples_ns.clone())?;
        workload.stats = Summary::compute(&sample, workload.stats.tail_percentile, BOOTSTRAP_SEED)?;
        workload.open_loop = None;
        workload.max_qps = None;
    }
    merged.merged_runs = reports.len();
    Ok(merged)
}

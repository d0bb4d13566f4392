//! `qtier bench kernels` and `qtier bench limits`.

use std::time::Duration;

use anyhow::{Context, bail};
use qtier_bench::Provenance;
use qtier_bench::compare::{compare, to_markdown};
use qtier_bench::export::{Emf, Exporter, Html, Markdown};
use qtier_bench::hardware::detect;
use qtier_bench::kernel_bench::{KernelBenchConfig, KernelBenchReport, LinearShape, run_kernel_bench};
use qtier_bench::model_bench::{INJECT_SLOWDOWN_ENV, LoadMode, ModelBenchConfig, merge_reports, run_model_bench_on};
use qtier_bench::timing::TimingConfig;
use qtier_kernels::{KernelKind, limits};
use qtier_models::Int8Options;
use qtier_models::gpu::ComputeDevice;

use crate::cli::{BenchCommand, BenchKernelsArgs, BenchLimitsArgs, BenchModelArgs};
use crate::commands::compare::{fail_on_regression, parse_threshold, read_report, report_comparison};
use crate::commands::write_new_file;
use crate::progress::spinner;

/// Samples per shape at least, whatever `--seconds` says: enough for a stable median and p10/p90.
const MIN_KERNEL_SAMPLES: usize = 100;
/// Warm-up bound per shape.
const KERNEL_WARMUP: Duration = Duration::from_millis(500);

/// Provenance of a report produced by this process.
pub fn provenance() -> Provenance {
    Provenance {
        qtier_version: env!("CARGO_PKG_VERSION").to_string(),
        git_revision: env!("QTIER_GIT_REVISION").to_string(),
        command: std::env::args().collect(),
        started_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// Runs `qtier bench ...`. Kernels, limits and models run on the kernels' pool, whose size
/// (`--threads`, else one thread per core) is the thread count they record.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Kernels(args) => kernels(args, qtier_kernels::parallelism()),
        BenchCommand::Limits(args) => machine_limits(args, qtier_kernels::parallelism()),
        BenchCommand::Model(args) => model(args, qtier_kernels::parallelism()),
        BenchCommand::Server(args) => crate::commands::bench_server::run(args),
        BenchCommand::Merge(args) => {
            let reports = args.reports.iter().map(|path| read_report(path)).collect::<anyhow::Result<Vec<_>>>()?;
            let merged = merge_reports(&reports).context("merging reports")?;
            outln!("{}", serde_json::to_string_pretty(&merged)?);
            Ok(())
        }
    }
}

/// Warm-up bound per model workload.
pub const MODEL_WARMUP: Duration = Duration::from_secs(5);

fn model(args: BenchModelArgs, threads: usize) -> anyhow::Result<()> {
    for (flag, value) in [("--min-seconds", args.min_seconds), ("--max-seconds", args.max_seconds)] {
        if !(value.is_finite() && value > 0.0) {
            bail!("{flag} must be a positive number of seconds, got {value}");
        }
    }
    let batches = args
        .batch
        .split(',')
        .map(|b| b.trim().parse::<usize>().with_context(|| format!("--batch: `{b}` is not a batch size")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tail = match args.sla.as_deref().map(parse_sla).transpose()? {
        Some((percentile, _)) => percentile,
        None => args.tail,
    };
    let config = ModelBenchConfig {
        batches,
        seq: args.seq,
        tail_percentile: tail,
        timing: TimingConfig {
            max_warmup: MODEL_WARMUP,
            min_duration: Duration::from_secs_f64(args.min_seconds),
            min_samples: 1,
            max_duration: Duration::from_secs_f64(args.max_seconds.max(args.min_seconds)),
        },
        int8: Int8Options { outlier_decomposition: !args.plain_w8a8 },
        threads,
        injected_slowdown: injected_slowdown()?,
        load: load_mode(&args)?,
    };
    let baseline = args.baseline.as_deref().map(read_report).transpose()?;
    let max_regression = parse_threshold(&args.max_regression)?;
    let bar = spinner(args.json || args.markdown || args.emf);
    let hardware = detect(threads, args.instance_type.as_deref());
    let report = match decoder_config(&args, &config)? {
        Some(_) if args.device != ComputeDevice::Cpu => {
            bail!("--device {}: {} is a decoder; the GPU path runs encoders only", args.device, args.model.display())
        }
        Some(decoder) => {
            qtier_bench::decoder_bench::run_decoder_bench(&args.model, &decoder, provenance(), hardware, &|step| {
                bar.set_message(step.to_string())
            })
        }
        None => run_model_bench_on(&args.model, &config, args.device, provenance(), hardware, &|step| {
            bar.set_message(step.to_string())
        }),
    }
    .with_context(|| format!("benchmarking {}", args.model.display()))?;
    bar.finish_and_clear();
    if let Some(path) = &args.html {
        write_new_file(path, Html.export(&report), args.force)?;
    }
    let machine_readable = args.json || args.emf || args.markdown;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.markdown {
        out!("{}", Markdown.export(&report));
    } else if args.emf {
        out!("{}", Emf.export(&report));
    } else {
        print_model_report(&report);
    }
    match baseline {
        Some(baseline) => {
            let comparison = compare(&baseline, &report, max_regression);
            if machine_readable {
                eprintln!("{}", to_markdown(&comparison));
                fail_on_regression(&comparison)
            } else {
                report_comparison(&comparison, false, false)
            }
        }
        None => Ok(()),
    }
}

/// Default prompt tokens of a decoder's time-to-first-token workload.
const DEFAULT_PROMPT_LEN: usize = 512;

/// The decoder benchmark's settings when the model directory holds a Llama-family decoder (or
/// `--prompt-len` is given); `None` for encoders.
fn decoder_config(
    args: &BenchModelArgs,
    config: &ModelBenchConfig,
) -> anyhow::Result<Option<qtier_bench::decoder_bench::DecoderBenchConfig>> {
    let config_path = args.model.join("config.json");
    let is_decoder = config_path.is_file()
        && qtier_models::llama::config::DECODER_MODEL_TYPES
            .contains(&qtier_models::config::model_type(&config_path)?.as_str());
    if !is_decoder && args.prompt_len.is_none() {
        return Ok(None);
    }
    if args.qps.is_some() || args.find_max_qps {
        bail!("--qps and --find-max-qps measure encoders; decoders are measured by TTFT and TPOT");
    }
    Ok(Some(qtier_bench::decoder_bench::DecoderBenchConfig {
        prompt_len: args.prompt_len.unwrap_or(DEFAULT_PROMPT_LEN),
        gen_len: args.gen_len,
        tail_percentile: config.tail_percentile,
        min_duration: config.timing.min_duration,
        max_duration: config.timing.max_duration,
        int8: config.int8,
        threads: config.threads,
    }))
}

/// The open-loop mode asked for by `--qps` or `--find-max-qps --sla`.
fn load_mode(args: &BenchModelArgs) -> anyhow::Result<Option<LoadMode>> {
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be a positive number of seconds, got {}", args.duration);
    }
    let duration = Duration::from_secs_f64(args.duration);
    if let Some(qps) = args.qps {
        if !(qps.is_finite() && qps > 0.0) {
            bail!("--qps must be a positive rate, got {qps}");
        }
        return Ok(Some(LoadMode::FixedRate { qps, duration }));
    }
    if args.find_max_qps {
        let (_, sla_ns) = parse_sla(args.sla.as_deref().unwrap_or_default())?;
        return Ok(Some(LoadMode::FindMax { sla_ns, step_duration: duration }));
    }
    Ok(None)
}

/// Parses `p99=16ms` into (99, 16e6 ns).
fn parse_sla(text: &str) -> anyhow::Result<(f64, f64)> {
    let bad = || format!("--sla `{text}`: expected PCT=LATENCY such as p99=16ms");
    let (percentile, latency) = text.split_once('=').with_context(bad)?;
    let percentile: f64 = percentile.trim().strip_prefix('p').with_context(bad)?.parse().with_context(bad)?;
    let latency = latency.trim();
    let (number, unit_ns) = if let Some(v) = latency.strip_suffix("ms") {
        (v, 1e6)
    } else if let Some(v) = latency.strip_suffix("us") {
        (v, 1e3)
    } else if let Some(v) = latency.strip_suffix('s') {
        (v, 1e9)
    } else {
        bail!(bad());
    };
    let value: f64 = number.trim().parse().with_context(bad)?;
    if !(percentile > 0.0 && percentile < 100.0 && value.is_finite() && value > 0.0) {
        bail!(bad());
    }
    Ok((percentile, value * unit_ns))
}

/// The test-only slowdown from [`INJECT_SLOWDOWN_ENV`], if set.
fn injected_slowdown() -> anyhow::Result<Option<f64>> {
    match std::env::var(INJECT_SLOWDOWN_ENV) {
        Ok(text) => {
            let fraction: f64 =
                text.parse().with_context(|| format!("{INJECT_SLOWDOWN_ENV}: `{text}` is not a fraction"))?;
            if !(fraction.is_finite() && fraction >= 0.0) {
                bail!("{INJECT_SLOWDOWN_ENV} must be a non-negative fraction, got {text}");
            }
            eprintln!("warning: {INJECT_SLOWDOWN_ENV}={fraction}: every timed call is stretched (test-only knob)");
            Ok(Some(fraction))
        }
        Err(_) => Ok(None),
    }
}

fn print_model_report(report: &qtier_bench::model_bench::ModelBenchReport) {
    let hw = &report.hardware;
    outln!(
        "{} ({} cores), flags {}, instance type {} ({})",
        hw.cpu_model,
        hw.logical_cores,
        hw.cpu_flags.join(" "),
        hw.instance_type,
        hw.instance_type_source
    );
    if let Some(gpu) = &hw.gpu {
        outln!(
            "GPU {} (compute capability {}, {:.1} GiB), driver {} (CUDA {}), kernels {}",
            gpu.name,
            gpu.compute_capability,
            gpu.memory_bytes as f64 / f64::from(1u32 << 30),
            gpu.driver_version,
            gpu.driver_cuda_version,
            gpu.kernel_variant
        );
    }
    outln!(
        "{} ({}{}), {} threads",
        report.model,
        if report.int8 { "int8" } else { "float" },
        report.kernel.as_deref().map(|k| format!(", kernel {k}")).unwrap_or_default(),
        report.threads
    );
    outln!(
        "{:>12} {:>8} {:>10} {:>20} {:>10} {:>10} {:>10} {:>9}",
        "workload",
        "samples",
        "p50 ms",
        "p50 95% CI ms",
        "p90 ms",
        "p99 ms",
        "p99 bound",
        "outliers"
    );
    if let Some(decoder) = &report.decoder {
        outln!(
            "decoder: prompt {} tokens, {} generated per run, {} runs; weights {} ({:.3} GB read per token)",
            decoder.prompt_len,
            decoder.gen_len,
            decoder.runs,
            decoder.weight_dtype,
            decoder.weight_bytes_per_token as f64 / 1e9
        );
        outln!(
            "TPOT median {:.2} ms; memory bound {:.2} ms (read {:.1} GB/s on {} threads, {} MB probe): {:.0}% of bound",
            decoder.tpot_p50_ms,
            decoder.tpot_bound_ms,
            decoder.read_gb_per_s,
            report.threads,
            decoder.read_probe_bytes >> 20,
            decoder.tpot_percent_of_bound
        );
    }
    for w in &report.workloads {
        let s = &w.stats;
        outln!(
            "{:>12} {:>8} {:>10.3} {:>9.3} - {:<8.3} {:>10.3} {:>10.3} {:>10} {:>9}",
            w.name,
            s.count,
            s.p50 / 1e6,
            s.median_ci95.low / 1e6,
            s.median_ci95.high / 1e6,
            s.p90 / 1e6,
            s.p99 / 1e6,
            s.tail_upper_bound.map_or("-".to_string(), |b| format!("{:.3}", b / 1e6)),
            s.outliers.indices.len()
        );
        if let Some(run) = &w.open_loop {
            let tail = run.stats.as_ref().map_or("-".to_string(), |s| format!("{:.3}", s.p99 / 1e6));
            outln!(
                "{:>12}  open loop: offered {:.1}/s, achieved {:.1}/s, {} requests, p99 {} ms{}",
                "",
                run.target_qps,
                run.achieved_qps,
                run.completed,
                tail,
                if run.overloaded { " (overloaded: queue grew without bound)" } else { "" }
            );
        }
        if let Some(found) = &w.max_qps {
            outln!(
                "{:>12}  max rate with p{} <= {:.3} ms: {:.1} requests/s ({} steps)",
                "",
                found.tail_percentile,
                found.sla_ns / 1e6,
                found.max_qps,
                found.steps.len()
            );
        }
    }
}

fn kernels(args: BenchKernelsArgs, threads: usize) -> anyhow::Result<()> {
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        bail!("--seconds must be a positive number of seconds, got {}", args.seconds);
    }
    let seconds = Duration::from_secs_f64(args.seconds);
    let config = KernelBenchConfig {
        shapes: LinearShape::parse_list(&args.shapes)?,
        threads,
        timing: TimingConfig {
            max_warmup: KERNEL_WARMUP,
            min_duration: seconds,
            min_samples: MIN_KERNEL_SAMPLES,
            max_duration: seconds * 4,
        },
        peers: !args.no_peers,
    };
    let bar = spinner(args.json);
    let hardware = detect(threads, args.instance_type.as_deref());
    let report = run_kernel_bench(&config, provenance(), hardware, &|step| bar.set_message(step.to_string()))
        .context("running the kernel benchmark")?;
    bar.finish_and_clear();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_kernel_table(&report);
    }
    Ok(())
}

fn print_kernel_table(report: &KernelBenchReport) {
    outln!(
        "int8 Linear, kernel {}, {} threads; limits: int8 peak {:.0} GOP/s ({}); clock's cost {:.0} ns per \
         sample (subtracted)",
        report.kernel,
        report.threads,
        report.limits.int8_gops,
        report.limits.int8_kernel,
        report.clock_overhead_ns
    );
    outln!(
        "{:>15} {:>10} {:>10} {:>10} {:>8} {:>8} {:>7} {:>12} {:>12}",
        "shape",
        "median µs",
        "p10 µs",
        "p90 µs",
        "GOP/s",
        "% limit",
        "bound",
        "candle f32",
        "candle Q8_0"
    );
    for row in &report.rows {
        let (f32_us, q8_us) = row.peers.as_ref().map_or((String::from("-"), String::from("-")), |p| {
            (
                format!("{:.1}", p.candle_f32_median_us),
                p.candle_q8_0_median_us.map_or_else(|| "n/a".to_string(), |us| format!("{us:.1}")),
            )
        });
        outln!(
            "{:>15} {:>10.1} {:>10.1} {:>10.1} {:>8.0} {:>7.0}% {:>7} {:>12} {:>12}",
            row.shape,
            row.median_us,
            row.p10_us,
            row.p90_us,
            row.gops,
            row.percent_of_limit,
            row.bound,
            f32_us,
            q8_us
        );
    }
}

fn machine_limits(args: BenchLimitsArgs, threads: usize) -> anyhow::Result<()> {
    let kind =
        if KernelKind::Avx512Vnni.is_supported() { KernelKind::Avx512Vnni } else { KernelKind::best_supported() };
    let peak = limits::int8_peak(kind, threads)?;
    let mut bandwidths = Vec::new();
    for size in args.bytes.split(',').filter(|s| !s.trim().is_empty()) {
        let bytes: usize = size.trim().parse().with_context(|| format!("--bytes: `{size}` is not a byte count"))?;
        bandwidths.push(limits::read_bandwidth(bytes, threads)?);
    }
    if args.json {
        let json = serde_json::json!({
            "threads": threads,
            "int8_kernel": peak.kernel.name(),
            "int8_gops": peak.gops,
            "read_gbps_by_bytes": bandwidths.iter().map(|b| (b.bytes.to_string(), serde_json::Value::from(b.gb_per_s))).collect::<serde_json::Map<_, _>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        outln!("{threads} threads: int8 peak {:.0} GOP/s ({})", peak.gops, peak.kernel.name());
        for bandwidth in &bandwidths {
            outln!("  read {:>12} bytes: {:.1} GB/s", bandwidth.bytes, bandwidth.gb_per_s);
        }
    }
    Ok(())
}

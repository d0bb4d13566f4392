//! `qtier run`: quantize -> eval -> bench (this host) -> recommend -> publish, every intermediate
//! file in a work directory, stopping at the first failed gate with its reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use qtier_bench::export::{Exporter, Html};
use qtier_bench::hardware::detect;
use qtier_bench::model_bench::{ModelBenchConfig, ModelBenchReport, run_model_bench};
use qtier_bench::timing::TimingConfig;
use qtier_models::eval::{DEV_SENTENCES, EvalReport, evaluate, lines};
use qtier_models::{Int8Options, SentenceEncoder};
use qtier_profiles::Recommendation;
use qtier_publish::manifest::TierOutcome;
use qtier_publish::publish::PublishOutcome;
use qtier_publish::{GatePolicy, PublishRequest};
use qtier_quantize::{LayerSelection, QuantizeOptions};
use serde::Serialize;

use crate::commands::bench::{MODEL_WARMUP, provenance};
use crate::commands::publish::{UploadArgs, print_publish, publish_artifact};
use crate::commands::recommend::{RecommendArgs, compute, write_exports};
use crate::commands::write_new_file;
use crate::progress::spinner;

/// The file in a work directory that marks it as qtier's (and holds the run's summary).
pub const RUN_SUMMARY_FILE: &str = "run-summary.json";

/// `qtier run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The float model directory (safetensors checkpoint with config.json and tokenizer).
    pub model: PathBuf,
    /// Where to publish: s3://bucket/prefix, file:///dir or a directory.
    #[arg(long, value_name = "URI")]
    pub publish_to: String,
    /// The work directory for every intermediate file (default: `qtier-work/<model name>`).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// The model's name in the store (default: the model directory's name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Replace an existing work directory that is not from an earlier `qtier run`.
    #[arg(long)]
    pub force: bool,
    /// How the bench measures and the recommendation is sized.
    #[command(flatten)]
    pub flow: FlowArgs,
    /// How to reach S3 and upload.
    #[command(flatten)]
    pub upload: UploadArgs,
    /// Print the summary as JSON (and no progress).
    #[arg(long)]
    pub json: bool,
}

/// The flow's settings (shared with `qtier demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct FlowArgs {
    /// The accuracy gate: the eval's minimum embedding cosine must reach this.
    #[arg(long, value_name = "COSINE", default_value_t = qtier_publish::gates::DEFAULT_MIN_COSINE)]
    pub min_cosine: f64,
    /// Tokens per sequence of the benchmark and the recommendation.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Sequences per request.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Minimum seconds of measurement (the run also continues until the tail percentile has
    /// enough samples: 662 for p99).
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub bench_seconds: f64,
    /// The tail percentile measured (and used to size the sample).
    #[arg(long, default_value_t = 99.0)]
    pub tail: f64,
    /// The EC2 instance type this host is (default: asked from the instance metadata service on
    /// EC2, else unknown, and the recommendation can only project onto catalog instances).
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// Let projected (not measured) figures meet a tier.
    #[arg(long)]
    pub allow_projected: bool,
    /// Continue past failed gates and publish anyway, recording this reason in the manifest.
    #[arg(long, value_name = "TEXT")]
    pub override_gates: Option<String>,
}

/// What a run produced, step by step (written to [`RUN_SUMMARY_FILE`]).
#[derive(Debug, Serialize)]
pub struct RunSummary {
    /// The float model.
    pub model: String,
    /// The work directory.
    pub work_dir: String,
    /// The quantized artifact directory.
    pub artifact: String,
    /// Linear layers quantized.
    pub layers_quantized: usize,
    /// Lowest weight SQNR, dB.
    pub min_weight_sqnr_db: Option<f64>,
    /// Eval: minimum and mean embedding cosine.
    pub eval_cosine_min: f64,
    /// Eval: mean embedding cosine.
    pub eval_cosine_mean: f64,
    /// Bench: p50 and tail latency of the first workload, ms.
    pub bench_p50_ms: f64,
    /// Bench: tail latency, ms.
    pub bench_tail_ms: f64,
    /// The tail percentile.
    pub bench_tail_percentile: f64,
    /// Per tier, the chosen instance (None when none meets it).
    pub tiers: Vec<TierOutcome>,
    /// The HTML reports.
    pub html_reports: Vec<String>,
    /// The publish outcome.
    pub publish: PublishOutcome,
}

/// Runs `qtier run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .model
            .canonicalize()
            .with_context(|| format!("{}: cannot open the model directory", args.model.display()))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
    };
    let work_dir = args.work_dir.clone().unwrap_or_else(|| Path::new("qtier-work").join(&name));
    let summary =
        run_flow(&args.model, &name, &work_dir, &args.publish_to, &args.flow, &args.upload, args.force, args.json)?;
    print_summary(&summary, args.json)
}

/// The whole flow; shared by `qtier run` and `qtier demo`.
#[allow(clippy::too_many_arguments)]
pub fn run_flow(
    model: &Path,
    name: &str,
    work_dir: &Path,
    publish_to: &str,
    flow: &FlowArgs,
    upload: &UploadArgs,
    force: bool,
    quiet: bool,
) -> anyhow::Result<RunSummary> {
    if !(-1.0..=1.0).contains(&flow.min_cosine) {
        bail!("--min-cosine must lie in [-1, 1], got {}", flow.min_cosine);
    }
    if !(flow.bench_seconds.is_finite() && flow.bench_seconds > 0.0) {
        bail!("--bench-seconds must be a positive number, got {}", flow.bench_seconds);
    }
    if flow.override_gates.as_deref().is_some_and(|r| r.trim().is_empty()) {
        bail!("--override-gates must say why");
    }
    prepare_work_dir(work_dir, force)?;
    let artifact = work_dir.join("artifact");
    let reports = work_dir.join("reports");
    std::fs::create_dir_all(reports.join("bench")).with_context(|| format!("creating {}", reports.display()))?;
    let status = |step: &str| {
        if !quiet {
            eprintln!("qtier run: {step}");
        }
    };

    status("quantize");
    let quantized = crate::commands::quantize::quantize_with_progress(
        &QuantizeOptions {
            input: model.to_path_buf(),
            output: artifact.clone(),
            selection: LayerSelection::default(),
            allow_nonfinite: false,
            force: true,
            durable: false,
        },
        quiet,
    )?;

    status("eval");
    let eval = run_eval(model, &artifact, &reports)?;
    if eval.cosine.min_below(flow.min_cosine) {
        let failure = format!("eval: minimum embedding cosine {:.6} is below {}", eval.cosine.min, flow.min_cosine);
        gate(&failure, flow)?;
    }

    status("bench");
    let bench = run_bench(&artifact, flow, quiet)?;
    let bench_json = reports.join("bench").join("this-host.json");
    write_new_file(&bench_json, serde_json::to_string_pretty(&bench)?, true)?;
    let bench_html = reports.join("bench").join("this-host.html");
    write_new_file(&bench_html, Html.export(&bench), true)?;

    status("recommend");
    let recommendation = run_recommend(&bench_json, &artifact, flow)?;
    write_exports(&reports, &recommendation, true)?;
    if !recommendation.tiers.iter().any(|t| t.chosen.is_some()) {
        let failure = if flow.allow_projected {
            "recommendation: no service tier is met".to_owned()
        } else {
            "recommendation: no service tier is met by measured figures (this host is not a catalog instance; \
             pass --allow-projected, or run on the instance types you want and `qtier recommend` their reports)"
                .to_owned()
        };
        gate(&failure, flow)?;
    }

    status("publish");
    let request = PublishRequest {
        artifact: artifact.clone(),
        eval_report: Some(reports.join("eval.json")),
        recommendation: Some(reports.join("recommendation.json")),
        bench_reports: vec![bench_json],
        model_name: Some(name.to_owned()),
        version: None,
        policy: GatePolicy { min_cosine: flow.min_cosine },
        force_reason: flow.override_gates.clone(),
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        tool_git_revision: env!("QTIER_GIT_REVISION").to_owned(),
    };
    let published = publish_artifact(&request, publish_to, &upload.options(), quiet)?;

    let workload = bench.workloads.first().context("the bench measured no workload")?;
    let summary = RunSummary {
        model: model.display().to_string(),
        work_dir: work_dir.display().to_string(),
        artifact: artifact.display().to_string(),
        layers_quantized: quantized.totals.layers_quantized,
        min_weight_sqnr_db: quantized.totals.min_sqnr_db,
        eval_cosine_min: eval.cosine.min,
        eval_cosine_mean: eval.cosine.mean,
        bench_p50_ms: workload.stats.p50 / 1e6,
        bench_tail_ms: workload.stats.tail() / 1e6,
        bench_tail_percentile: workload.stats.tail_percentile,
        tiers: recommendation
            .tiers
            .iter()
            .map(|t| TierOutcome { tier: t.tier.name.to_string(), instance_type: t.chosen.clone() })
            .collect(),
        html_reports: [bench_html, reports.join("recommendation.html")]
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        publish: published,
    };
    write_new_file(&work_dir.join(RUN_SUMMARY_FILE), serde_json::to_string_pretty(&summary)?, true)?;
    Ok(summary)
}

/// A failed gate stops the run, unless `--override-gates` gave a reason (then the run warns, and
/// the publish records the overridden gates with the reason in the manifest).
fn gate(failure: &str, flow: &FlowArgs) -> anyhow::Result<()> {
    if flow.override_gates.is_none() {
        bail!("stopped at a gate: {failure} (pass --override-gates \"<reason>\" to publish anyway)");
    }
    eprintln!("warning: gate overridden: {failure}");
    Ok(())
}

/// Refuses a non-empty work directory that an earlier run did not create, unless `force`.
fn prepare_work_dir(work_dir: &Path, force: bool) -> anyhow::Result<()> {
    let is_empty = std::fs::read_dir(work_dir).map(|mut d| d.next().is_none()).unwrap_or(true);
    let is_previous_run = work_dir.join(RUN_SUMMARY_FILE).is_file() || work_dir.join("artifact").is_dir();
    if work_dir.exists() && !is_empty && !is_previous_run && !force {
        bail!("{}: exists and is not a qtier work directory; pass --force to use it", work_dir.display());
    }
    std::fs::create_dir_all(work_dir).with_context(|| format!("creating {}", work_dir.display()))
}

/// Evaluates the artifact against the float model on the development sentences; writes
/// eval.json and eval.md.
fn run_eval(model: &Path, artifact: &Path, reports: &Path) -> anyhow::Result<EvalReport> {
    let reference = SentenceEncoder::load(model).with_context(|| format!("loading {}", model.display()))?;
    let candidate = SentenceEncoder::load(artifact).with_context(|| format!("loading {}", artifact.display()))?;
    let eval = evaluate(&reference, &candidate, &lines(DEV_SENTENCES))?;
    write_new_file(&reports.join("eval.json"), serde_json::to_string_pretty(&eval)?, true)?;
    write_new_file(&reports.join("eval.md"), crate::commands::eval::markdown(&eval), true)?;
    Ok(eval)
}

/// Benchmarks the artifact on this host.
fn run_bench(artifact: &Path, flow: &FlowArgs, quiet: bool) -> anyhow::Result<ModelBenchReport> {
    let threads = qtier_kernels::parallelism();
    let config = ModelBenchConfig {
        batches: vec![flow.batch],
        seq: flow.seq,
        tail_percentile: flow.tail,
        timing: TimingConfig {
            max_warmup: MODEL_WARMUP,
            min_duration: Duration::from_secs_f64(flow.bench_seconds),
            min_samples: 1,
            max_duration: Duration::from_secs_f64(flow.bench_seconds.max(300.0)),
        },
        int8: Int8Options::default(),
        threads,
        injected_slowdown: None,
        load: None,
    };
    let bar = spinner(quiet);
    let hardware = detect(threads, flow.instance_type.as_deref());
    let report = run_model_bench(artifact, &config, provenance(), hardware, &|step| bar.set_message(step.to_string()))
        .with_context(|| format!("benchmarking {}", artifact.display()));
    bar.finish_and_clear();
    report
}

/// The recommendation from this host's report.
fn run_recommend(bench_json: &Path, artifact: &Path, flow: &FlowArgs) -> anyhow::Result<Recommendation> {
    compute(&RecommendArgs {
        reports: vec![bench_json.to_path_buf()],
        s3: crate::commands::publish::S3Args {
            region: None,
            endpoint_url: None,
            path_style: false,
            allow_http: false,
            attempts: 1,
        },
        catalog: None,
        tiers: None,
        qps: None,
        allow_spot: false,
        allow_projected: flow.allow_projected,
        model_config: Some(artifact.to_path_buf()),
        batch: Some(flow.batch),
        seq: Some(flow.seq),
        json: false,
        out: None,
        force: false,
    })
}

/// Prints the summary (JSON or for people).
pub fn print_summary(summary: &RunSummary, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    outln!("qtier run: {} (work directory {})", summary.model, summary.work_dir);
    outln!(
        "  quantize   {} Linear layers to int8, lowest weight SQNR {}",
        summary.layers_quantized,
        summary.min_weight_sqnr_db.map_or("-".into(), |db| format!("{db:.2} dB"))
    );
    outln!("  eval       embedding cosine min {:.6}, mean {:.6}", summary.eval_cosine_min, summary.eval_cosine_mean);
    outln!(
        "  bench      p50 {:.2} ms, p{} {:.2} ms on this host",
        summary.bench_p50_ms,
        summary.bench_tail_percentile,
        summary.bench_tail_ms
    );
    let tiers: Vec<String> =
        summary.tiers.iter().map(|t| format!("{}: {}", t.tier, t.instance_type.as_deref().unwrap_or("none"))).collect();
    outln!("  recommend  {}", tiers.join(", "));
    print_publish(&summary.publish);
    outln!("HTML reports:");
    for report in &summary.html_reports {
        outln!("  {report}");
    }
    Ok(())
}

//! `qtier recommend`: the cheapest instance that meets each service tier, from bench reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use qtier_bench::model_bench::ModelBenchReport;
use qtier_profiles::export::{RecommendationExport, all_exports};
use qtier_profiles::recommend::{Candidate, Purchase, TierRecommendation, Verdict};
use qtier_profiles::workload::EncoderShape;
use qtier_profiles::{InstanceCatalog, LabelledReport, RecommendOptions, Recommendation, Tiers, recommend};

/// `qtier recommend`.
#[derive(Debug, clap::Args)]
pub struct RecommendArgs {
    /// Bench reports (`qtier bench model --json` output), one or more, of one model; or an
    /// `s3://bucket/prefix` (or `file:///dir`) whose `.json` objects are reports, as
    /// `qtier k8s bench-jobs` collects them.
    #[arg(required = true, value_name = "REPORT")]
    pub reports: Vec<PathBuf>,
    /// How to reach S3 for report prefixes.
    #[command(flatten)]
    pub s3: crate::commands::publish::S3Args,
    /// An instance catalog (TOML) replacing the built-in one.
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// Service tiers (TOML) replacing the built-in gold, silver and bronze.
    #[arg(long, value_name = "FILE")]
    pub tiers: Option<PathBuf>,
    /// Required throughput per tier, requests per second: `gold=200,silver=50`.
    #[arg(long, value_name = "LIST")]
    pub qps: Option<String>,
    /// Also consider spot capacity for the tiers that take it only on request (built in: silver;
    /// bronze always may use spot, gold never).
    #[arg(long)]
    pub allow_spot: bool,
    /// Let projected (not measured) figures meet a tier.
    #[arg(long)]
    pub allow_projected: bool,
    /// The model's config.json, or its directory, for projections (default: config.json in the
    /// model directory a report names, when it exists).
    #[arg(long, value_name = "PATH")]
    pub model_config: Option<PathBuf>,
    /// Sequences per request.
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Tokens per sequence (default: the one length the reports measured).
    #[arg(long, value_name = "N")]
    pub seq: Option<usize>,
    /// Print the recommendation as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write recommendation.json, recommendation.md and recommendation.html into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace existing files in --out.
    #[arg(long)]
    pub force: bool,
}

/// Runs `qtier recommend`.
pub fn run(args: RecommendArgs) -> anyhow::Result<()> {
    let recommendation = compute(&args)?;
    let written = match &args.out {
        Some(dir) => write_exports(dir, &recommendation, args.force)?,
        None => Vec::new(),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&recommendation)?);
        return Ok(());
    }
    print_recommendation(&recommendation);
    for path in written {
        outln!("wrote {}", path.display());
    }
    Ok(())
}

/// The recommendation `args` ask for (nothing printed or written).
pub fn compute(args: &RecommendArgs) -> anyhow::Result<Recommendation> {
    let catalog = match &args.catalog {
        Some(path) => InstanceCatalog::parse(&read(path, "catalog")?, &path.display().to_string())?,
        None => InstanceCatalog::builtin()?,
    };
    let mut tiers = match &args.tiers {
        Some(path) => Tiers::parse(&read(path, "tiers")?, &path.display().to_string())?,
        None => Tiers::builtin()?,
    };
    if let Some(qps) = &args.qps {
        tiers.apply_qps(qps)?;
    }
    let reports = read_reports(&fetch_reports(&args.reports, &args.s3)?)?;
    let (model_shape, model_shape_source) = model_shape(args.model_config.as_deref(), &reports)?;
    let options = RecommendOptions {
        batch: args.batch,
        seq: args.seq,
        allow_spot: args.allow_spot,
        allow_projected: args.allow_projected,
        model_shape,
        model_shape_source,
    };
    Ok(recommend(&reports, &catalog, &tiers, &options)?)
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Where a bench report comes from.
enum ReportSource {
    /// A local file.
    File(PathBuf),
    /// An object below a store prefix, already downloaded.
    Object {
        /// Its location (`s3://...`).
        location: String,
        /// Its bytes.
        bytes: Vec<u8>,
    },
}

impl ReportSource {
    /// The file or object name.
    fn name(&self) -> String {
        match self {
            ReportSource::File(path) => file_name(path),
            ReportSource::Object { location, .. } => location.rsplit('/').next().unwrap_or_default().to_owned(),
        }
    }

    /// The full path or location.
    fn full_name(&self) -> String {
        match self {
            ReportSource::File(path) => path.display().to_string(),
            ReportSource::Object { location, .. } => location.clone(),
        }
    }

    /// The report's text.
    fn text(&self) -> anyhow::Result<String> {
        match self {
            ReportSource::File(path) => read(path, "bench report"),
            ReportSource::Object { location, bytes } => {
                String::from_utf8(bytes.clone()).with_context(|| format!("{location}: not UTF-8 text"))
            }
        }
    }
}

/// Report sources: local paths as given, and for each `s3://` or `file://` prefix every `.json`
/// object below it, downloaded.
fn fetch_reports(sources: &[PathBuf], s3: &crate::commands::publish::S3Args) -> anyhow::Result<Vec<ReportSource>> {
    let mut reports = Vec::new();
    for source in sources {
        let text = source.to_string_lossy();
        if !(text.starts_with("s3://") || text.starts_with("file://")) {
            reports.push(ReportSource::File(source.clone()));
            continue;
        }
        let location = qtier_publish::Location::parse(&text)?;
        let found = crate::commands::publish::runtime()?.block_on(async {
            let store = qtier_publish::Store::open(&location, &s3.options()).await?;
            let mut found = Vec::new();
            for key in store.list("").await?.into_iter().filter(|k| k.ends_with(".json")) {
                if let Some(bytes) = store.read_document(&key).await? {
                    found.push(ReportSource::Object { location: store.describe(&key), bytes });
                }
            }
            anyhow::Ok(found)
        })?;
        if found.is_empty() {
            bail!("{text}: no .json reports below this prefix");
        }
        reports.extend(found);
    }
    Ok(reports)
}

/// Reads each report, labelled by its file name (by its path when two names collide).
fn read_reports(sources: &[ReportSource]) -> anyhow::Result<Vec<LabelledReport>> {
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for source in sources {
        *names.entry(source.name()).or_default() += 1;
    }
    sources
        .iter()
        .map(|source| {
            let full_name = source.full_name();
            let report: ModelBenchReport = serde_json::from_str(&source.text()?)
                .with_context(|| format!("{full_name}: not a `qtier bench model --json` report"))?;
            let name = source.name();
            let label = if names[&name] > 1 { full_name } else { name };
            Ok(LabelledReport { label, report })
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The model's dimensions: from `--model-config` (a file or a directory holding config.json),
/// else from the first report whose model directory still holds a config.json. None when
/// neither exists: then nothing can be projected, and the recommendation says so.
fn model_shape(
    given: Option<&Path>,
    reports: &[LabelledReport],
) -> anyhow::Result<(Option<EncoderShape>, Option<String>)> {
    let from_file = |path: &Path| -> anyhow::Result<(Option<EncoderShape>, Option<String>)> {
        let text = read(path, "model config")?;
        let name = path.display().to_string();
        Ok((Some(EncoderShape::from_config_json(&text, &name)?), Some(name)))
    };
    if let Some(path) = given {
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        return from_file(&file);
    }
    for report in reports {
        let file = Path::new(&report.report.model).join("config.json");
        if file.is_file() {
            return from_file(&file);
        }
    }
    Ok((None, None))
}

/// Writes every export into `dir` (created if missing), each through a temporary file renamed
/// into place. Existing files are refused, before anything is written, unless `force`.
pub fn write_exports(dir: &Path, recommendation: &Recommendation, force: bool) -> anyhow::Result<Vec<PathBuf>> {
    let exports = all_exports();
    let targets: Vec<PathBuf> = exports.iter().map(|e| dir.join(e.file_name())).collect();
    if !force && let Some(existing) = targets.iter().find(|t| t.exists()) {
        bail!("{}: already exists; pass --force to replace it", existing.display());
    }
    let documents =
        exports.iter().map(|e: &&dyn RecommendationExport| e.render(recommendation)).collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (target, document) in targets.iter().zip(documents) {
        // Existing files were refused above, before anything was written.
        crate::commands::write_new_file(target, document, true)?;
    }
    Ok(targets)
}

fn print_recommendation(r: &Recommendation) {
    outln!(
        "{} ({}), request {}; catalog: {}; tiers: {}",
        r.model.paths.join(", "),
        if r.model.int8 { "int8" } else { "float" },
        r.request,
        r.catalog.source,
        r.tiers_source
    );
    for calibration in &r.calibrations {
        outln!(
            "calibration: {} on {} ({} cores, {}): {:.1}% of roofline at {}, p99/p50 {:.2}",
            calibration.report,
            calibration.host.model,
            calibration.host.cores,
            calibration.class.name(),
            calibration.efficiency * 100.0,
            calibration.measured.shape,
            calibration.tail_ratio
        );
    }
    if r.latencies.iter().any(|l| l.basis == "projected") {
        outln!(
            "PROJECTED rows are not measurements: roofline time / calibrated efficiency, range x{}-x{}; \
             they meet a tier {} by the high end of the range.",
            r.options.projection_range[0],
            r.options.projection_range[1],
            if r.options.allow_projected { "(--allow-projected)" } else { "only with --allow-projected," }
        );
    }
    for tier in &r.tiers {
        outln!();
        print_tier(tier);
    }
    outln!();
    for note in &r.notes {
        outln!("note: {note}");
    }
}

fn print_tier(tier: &TierRecommendation) {
    let limits: Vec<String> =
        tier.tier.limit.iter().map(|l| format!("{} <= {} ms", l.metric, l.max_ms.get())).collect();
    outln!(
        "{} ({}): {}; {}{}{}",
        tier.tier.name,
        tier.tier.kind,
        limits.join(", "),
        if tier.spot_permitted { "spot allowed" } else { "on-demand" },
        if tier.tier.int8_required { "; int8 required" } else { "" },
        tier.required_qps.map_or_else(String::new, |q| format!("; {q} requests/s required"))
    );
    match tier.chosen_candidate() {
        Some(c) => outln!(
            "  => {} ({}{}), {} instance{}, ${:.4}/h, ${:.4} per million requests",
            c.instance,
            if c.basis == "projected" { "PROJECTED" } else { "measured" },
            if c.purchase == Purchase::Spot { ", spot" } else { ", on-demand" },
            c.instances.unwrap_or(1),
            if c.instances == Some(1) { "" } else { "s" },
            c.cost_usd_per_hour.unwrap_or(f64::NAN),
            c.usd_per_million.unwrap_or(f64::NAN)
        ),
        None => outln!("  => {}", tier.summary),
    }
    let header_metrics: Vec<String> = tier.tier.limit.iter().map(|l| format!("{} ms", l.metric)).collect();
    let evaluated: Vec<&Candidate> = tier.candidates.iter().filter(|c| c.basis != "none").collect();
    for (basis, title) in [("measured", "measured"), ("projected", "PROJECTED (not measured)")] {
        let rows: Vec<&&Candidate> = evaluated.iter().filter(|c| c.basis == basis).collect();
        if rows.is_empty() {
            continue;
        }
        outln!("  {title}:");
        outln!(
            "    {:<16} {:<9} {:<9} {:>38} {:>5} {:>10} {:>10}  reason",
            "instance",
            "verdict",
            "purchase",
            header_metrics.join(" / "),
            "inst",
            "$/h",
            "$/M req"
        );
        for c in rows {
            let values: Vec<String> = c
                .checks
                .iter()
                .map(|check| match (check.value_ms, check.range_ms) {
                    (Some(v), Some([low, high])) => format!("{v:.2} ({low:.1}-{high:.1})"),
                    (Some(v), None) => format!("{v:.2}"),
                    _ => "-".into(),
                })
                .collect();
            outln!(
                "    {:<16} {:<9} {:<9} {:>38} {:>5} {:>10} {:>10}  {}",
                c.instance,
                match c.verdict {
                    Verdict::Chosen => "CHOSEN",
                    Verdict::Feasible => "meets",
                    Verdict::Rejected => "rejected",
                },
                if c.purchase == Purchase::Spot { "spot" } else { "on-demand" },
                values.join(" / "),
                c.instances.map_or_else(|| "-".into(), |n| n.to_string()),
                c.cost_usd_per_hour.map_or_else(|| "-".into(), |v| format!("{v:.4}")),
                c.usd_per_million.map_or_else(|| "-".into(), |v| format!("{v:.4}")),
                c.reasons.join("; ")
            );
        }
    }
    let mut unavailable: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in tier.candidates.iter().filter(|c| c.basis == "none") {
        unavailable.entry(c.reasons.first().map_or("", String::as_str)).or_default().push(&c.instance);
    }
    for (reason, names) in unavailable {
        outln!("  not evaluated ({}): {reason}", names.join(", "));
    }
}

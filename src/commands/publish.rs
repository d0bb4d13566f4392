//! `qtier publish`, `qtier pull` and `qtier publish-report`: artifacts to and from S3 or a local
//! store.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use qtier_publish::publish::{FileOutcome, PublishOutcome};
use qtier_publish::{GatePolicy, Location, PublishRequest, PullOutcome, S3Options, Store, TransferProgress};

/// How to reach S3 (shared by the commands that talk to a store).
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// AWS region (default: the standard chain: AWS_REGION, the profile, instance metadata).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's, or
    /// AWS itself).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Path-style addressing (endpoint/bucket/key), which most S3-compatible servers need.
    #[arg(long)]
    pub path_style: bool,
    /// Allow a plain-http endpoint that is not loopback (objects then cross the network
    /// unencrypted).
    #[arg(long)]
    pub allow_http: bool,
    /// Attempts per request, the first included (throttling, 5xx, timeouts and broken
    /// connections are retried with exponential backoff).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub attempts: u32,
}

impl S3Args {
    /// The library's options, with default upload settings.
    pub fn options(&self) -> S3Options {
        S3Options {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            path_style: self.path_style,
            allow_http: self.allow_http,
            max_attempts: self.attempts,
            ..S3Options::default()
        }
    }
}

/// How to upload (publishing commands).
#[derive(Debug, Clone, clap::Args)]
pub struct UploadArgs {
    /// How to reach S3.
    #[command(flatten)]
    pub s3: S3Args,
    /// Files above this size are uploaded, or copied within the store, in parts (bytes; K, M, G,
    /// KiB, MiB, GiB suffixes).
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub multipart_threshold: u64,
    /// Part size of multipart uploads and copies (at least 5 MiB, S3's minimum).
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub part_size: u64,
    /// Parts uploaded or copied at once.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
}

impl UploadArgs {
    /// The library's options.
    pub fn options(&self) -> S3Options {
        S3Options {
            multipart_threshold: self.multipart_threshold,
            part_size: self.part_size,
            concurrency: usize::from(self.concurrency),
            ..self.s3.options()
        }
    }
}

/// How to download (`qtier pull`).
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// How to reach S3.
    #[command(flatten)]
    pub s3: S3Args,
    /// Files larger than this are fetched from S3 in ranges of this size, in parallel (at least
    /// 5 MiB; bytes, or K, M, G, KiB, MiB, GiB suffixes).
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub part_size: u64,
    /// Ranges fetched at once (one S3 connection typically carries no more than about 100 MB/s).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
}

impl DownloadArgs {
    /// The library's options.
    pub fn options(&self) -> S3Options {
        S3Options {
            multipart_threshold: self.part_size,
            part_size: self.part_size,
            concurrency: usize::from(self.concurrency),
            ..self.s3.options()
        }
    }
}

/// `qtier publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The artifact directory (from `qtier quantize`; may already hold reports/).
    pub artifact: PathBuf,
    /// Destination: s3://bucket/prefix, file:///dir or a directory. The artifact goes to
    /// `<destination>/<model>/<version>/`.
    #[arg(long, value_name = "URI")]
    pub to: String,
    /// The eval report (`qtier eval --json`), published as reports/eval.json.
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
    /// The recommendation (`qtier recommend --json`), published as reports/recommendation.json.
    #[arg(long, value_name = "FILE")]
    pub recommendation: Option<PathBuf>,
    /// Bench reports, published under reports/bench/. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub bench: Vec<PathBuf>,
    /// The model's name in the store (default: the artifact directory's name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The version (default: the first 12 hex digits of the artifact's content hash).
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    /// The accuracy gate: the eval's minimum embedding cosine must reach this.
    #[arg(long, value_name = "COSINE", default_value_t = qtier_publish::gates::DEFAULT_MIN_COSINE)]
    pub min_cosine: f64,
    /// Publish even when a gate fails (needs --reason, which the manifest records).
    #[arg(long, requires = "reason")]
    pub force: bool,
    /// Why the gates are overridden.
    #[arg(long, value_name = "TEXT", requires = "force")]
    pub reason: Option<String>,
    /// How to reach S3 and upload.
    #[command(flatten)]
    pub upload: UploadArgs,
    /// Print the outcome as JSON (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// `qtier pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The artifact: a version (`…/<model>/<version>`) or a model (`…/<model>`, its latest version);
    /// s3://bucket/prefix, file:///dir or a directory.
    pub uri: String,
    /// The directory to create with the verified artifact.
    pub target: PathBuf,
    /// Replace the target directory if it exists.
    #[arg(long)]
    pub force: bool,
    /// How to reach S3 and download.
    #[command(flatten)]
    pub download: DownloadArgs,
    /// Print the outcome as JSON (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// `qtier publish-report`.
#[derive(Debug, clap::Args)]
pub struct PublishReportArgs {
    /// The report file (any JSON document qtier wrote, e.g. `qtier bench model --json` output).
    pub report: PathBuf,
    /// Where to put it: s3://bucket/key.json, file:///path.json or a path. Replaces an existing
    /// object.
    pub uri: String,
    /// How to reach S3.
    #[command(flatten)]
    pub s3: S3Args,
}

/// Runs `qtier publish`.
pub fn run_publish(args: PublishArgs) -> anyhow::Result<()> {
    let min_cosine = args.min_cosine;
    if !(-1.0..=1.0).contains(&min_cosine) {
        bail!("--min-cosine must lie in [-1, 1], got {min_cosine}");
    }
    if args.reason.as_deref().is_some_and(|r| r.trim().is_empty()) {
        bail!("--reason must say why the gates are overridden");
    }
    let request = PublishRequest {
        artifact: args.artifact.clone(),
        eval_report: args.eval.clone(),
        recommendation: args.recommendation.clone(),
        bench_reports: args.bench.clone(),
        model_name: args.name.clone(),
        version: args.version.clone(),
        policy: GatePolicy { min_cosine },
        force_reason: args.reason.clone(),
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        tool_git_revision: env!("QTIER_GIT_REVISION").to_owned(),
    };
    let outcome = publish_artifact(&request, &args.to, &args.upload.options(), args.json)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        print_publish(&outcome);
    }
    Ok(())
}

/// Applies the gates to the artifact `request` describes and publishes it to `to`, with a
/// progress bar unless `quiet`.
pub fn publish_artifact(
    request: &PublishRequest,
    to: &str,
    options: &S3Options,
    quiet: bool,
) -> anyhow::Result<PublishOutcome> {
    let location = Location::parse(to)?;
    let prepared = qtier_publish::publish::prepare(request)?;
    let bar = crate::progress::byte_bar("publish", quiet);
    let outcome = runtime()?.block_on(async {
        let store = Store::open(&location, options).await?;
        qtier_publish::publish::publish(&prepared, &store, Arc::new(BarProgress(bar.clone()))).await
    });
    bar.finish_and_clear();
    outcome.with_context(|| format!("publishing {} to {to}", request.artifact.display()))
}

/// Prints a publish outcome for people.
pub fn print_publish(outcome: &PublishOutcome) {
    let count = |kind: FileOutcome| outcome.files.iter().filter(|(_, o)| *o == kind).count();
    if outcome.already_published {
        outln!("{} version {} was already published at {}", outcome.model_name, outcome.version, outcome.location);
    } else {
        outln!("published {} version {} to {}", outcome.model_name, outcome.version, outcome.location);
    }
    let mut uploaded = Vec::new();
    for (kind, words) in [
        (FileOutcome::UploadedVerifiedByStore, "verified by the store's sha256"),
        (FileOutcome::UploadedVerifiedByReadBack, "read back and verified"),
        (FileOutcome::Copied, "copied and verified"),
    ] {
        let n = count(kind);
        if n > 0 {
            uploaded.push(format!("{n} {words}"));
        }
    }
    let reused = match count(FileOutcome::Reused) {
        0 => String::new(),
        n => format!(
            ", {n} reused from version{} {} ({:.1} MB not sent: copied within the store)",
            if outcome.reused_from.len() > 1 { "s" } else { "" },
            outcome.reused_from.join(", "),
            outcome.reused_bytes as f64 / 1e6
        ),
    };
    outln!(
        "  {} files, {:.1} MB: {} uploaded ({:.1} MB{}){reused}, {} already in place",
        outcome.files.len(),
        outcome.total_bytes as f64 / 1e6,
        outcome.files.len() - count(FileOutcome::Skipped) - count(FileOutcome::Reused),
        outcome.uploaded_bytes as f64 / 1e6,
        if uploaded.is_empty() { String::new() } else { format!("; {}", uploaded.join(", ")) },
        count(FileOutcome::Skipped),
    );
    for reason in &outcome.not_reused {
        outln!("  not reused: {reason}");
    }
    outln!("  manifest: {}", outcome.manifest_location);
    outln!("  latest:   {} -> {}", outcome.latest_location, outcome.version);
    if let Some(forced) = &outcome.forced {
        outln!("  FORCED: {}", forced.reason);
        for gate in &forced.overridden {
            outln!("    overridden: {gate}");
        }
    }
}

/// Runs `qtier pull`.
pub fn run_pull(args: PullArgs) -> anyhow::Result<()> {
    let location = Location::parse(&args.uri)?;
    let bar = crate::progress::byte_bar("pull", args.json);
    let outcome: anyhow::Result<PullOutcome> = runtime()?.block_on(async {
        let store = Store::open(&location, &args.download.options()).await?;
        Ok(qtier_publish::pull::pull(&store, &args.target, args.force, Arc::new(BarProgress(bar.clone()))).await?)
    });
    bar.finish_and_clear();
    let outcome = outcome.with_context(|| format!("pulling {} into {}", args.uri, args.target.display()))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        outln!(
            "pulled {} version {} ({} files, {:.1} MB, every sha256 verified) into {}",
            outcome.model_name,
            outcome.version,
            outcome.files,
            outcome.bytes as f64 / 1e6,
            args.target.display()
        );
    }
    Ok(())
}

/// Runs `qtier publish-report`.
pub fn run_publish_report(args: PublishReportArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.report).with_context(|| format!("reading {}", args.report.display()))?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .with_context(|| format!("{}: not a JSON report", args.report.display()))?;
    let (parent, name) = args
        .uri
        .trim_end_matches('/')
        .rsplit_once('/')
        .filter(|(_, name)| !name.is_empty() && *name != "." && *name != "..")
        .with_context(|| format!("{}: name the object to write (…/<name>.json)", args.uri))?;
    let location = Location::parse(parent)?;
    runtime()?.block_on(async {
        let store = Store::open(&location, &args.s3.options()).await?;
        store.write_document(name, bytes, false).await?;
        anyhow::Ok(())
    })?;
    outln!("wrote {}", location.describe(name));
    Ok(())
}

/// The async runtime for store I/O.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// Transfers shown on a progress bar.
struct BarProgress(ProgressBar);

impl TransferProgress for BarProgress {
    fn start(&self, total_bytes: u64) {
        self.0.set_length(total_bytes);
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

/// Parses `16MiB`, `8M`, `5242880`: decimal (K, M, G) and binary (KiB, MiB, GiB) suffixes.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size (e.g. 16MiB, 8M, 5242880)"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G, KiB, MiB or GiB)")),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("8M"), Ok(8_000_000));
        assert_eq!(parse_size("5242880"), Ok(5_242_880));
        assert!(parse_size("16 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}

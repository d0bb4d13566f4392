//! `qtier serve`: the HTTP inference server (see [`crate::serve`]).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use qtier_models::gpu::ComputeDevice;

use crate::serve::{BatchPolicy, LOAD_DELAY_ENV, RequestLimits, ServeConfig, serve, shutdown_signal};

/// Threads of the async runtime: they only parse HTTP and JSON, which is small next to the
/// model's forward pass; the cores belong to the model's worker threads (`--threads`).
const HTTP_THREADS: usize = 2;

/// Default `--max-request-bytes`: 2048 texts (OpenAI's per-request limit) of about 1000 bytes.
const DEFAULT_MAX_REQUEST_BYTES: usize = 2 << 20;

/// `qtier serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A model or int8 artifact directory (sentence-transformers layout), or a published
    /// artifact (`s3://...`, `file:///...` as `qtier pull` takes it), pulled and verified first.
    pub model: PathBuf,
    /// Where a published artifact is pulled to (default: a directory under the system's temporary
    /// directory, removed at exit).
    #[arg(long, value_name = "DIR")]
    pub pull_to: Option<PathBuf>,
    /// How to reach S3 for a published artifact.
    #[command(flatten)]
    pub s3: crate::commands::publish::S3Args,
    /// The TCP port (0: any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Texts per batched encode at most.
    #[arg(long, value_name = "N", default_value = "32")]
    pub max_batch: NonZeroUsize,
    /// How long the batching worker waits for more requests after the first of a batch arrived,
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2)]
    pub max_wait_ms: u64,
    /// Requests that may wait for the model; beyond that requests are answered 503 at once.
    #[arg(long, value_name = "N", default_value = "256")]
    pub queue: NonZeroUsize,
    /// Largest request body, bytes (larger: 413).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Most texts in one request (more: 413).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub max_inputs: usize,
    /// The model name responses carry (default: the directory's name).
    #[arg(long, value_name = "NAME")]
    pub model_name: Option<String>,
    /// Where the model runs: `cpu`, or `cuda` / `cuda:N` (GPU N: the whole forward on the GPU,
    /// int8 layers with the same outlier decomposition as on the CPU; needs a qtier built with
    /// `--features cuda`, the NVIDIA driver and libnvrtc). The GPU is checked before the port is
    /// bound.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: qtier_models::gpu::ComputeDevice,
}

/// Runs `qtier serve` until SIGTERM or Ctrl-C.
pub fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    let uri = args.model.to_string_lossy().into_owned();
    let pulled_temporary = if uri.starts_with("s3://") || uri.starts_with("file://") {
        let temporary = args.pull_to.is_none();
        let target = args
            .pull_to
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("qtier-serve-{}", std::process::id())));
        let location = qtier_publish::Location::parse(&uri)?;
        let outcome = crate::commands::publish::runtime()?.block_on(async {
            let store = qtier_publish::Store::open(&location, &args.s3.options()).await?;
            qtier_publish::pull::pull(&store, &target, true, std::sync::Arc::new(qtier_publish::store::NoProgress))
                .await
        });
        let outcome = outcome.with_context(|| format!("pulling {uri} into {}", target.display()))?;
        eprintln!(
            "pulled {} version {} into {} (every sha256 verified)",
            outcome.model_name,
            outcome.version,
            target.display()
        );
        args.model_name.get_or_insert(outcome.model_name);
        args.model = target.clone();
        temporary.then_some(target)
    } else {
        None
    };
    let result = serve_dir(&args);
    if let Some(dir) = pulled_temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// Serves the model directory `args.model` until SIGTERM or Ctrl-C.
fn serve_dir(args: &ServeArgs) -> anyhow::Result<()> {
    let config = config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(HTTP_THREADS)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        eprintln!("listening on http://{}", listener.local_addr()?);
        serve(listener, config, shutdown_signal()).await
    });
    // Everything a request needs has finished; a model load still running at shutdown is dropped.
    runtime.shutdown_background();
    result
}

/// Validates the arguments into the server's configuration.
fn config(args: &ServeArgs) -> anyhow::Result<ServeConfig> {
    if !args.model.join("config.json").is_file() {
        bail!("{}: not a model directory (no config.json)", args.model.display());
    }
    if args.max_inputs == 0 {
        bail!("--max-inputs must be at least 1");
    }
    if let ComputeDevice::Cuda { ordinal } = args.device {
        let name = qtier_models::gpu::check_device(ordinal)?;
        eprintln!("serving on GPU {ordinal} ({name})");
    }
    let model_name = match &args.model_name {
        Some(name) => name.clone(),
        None => std::fs::canonicalize(&args.model)
            .ok()
            .and_then(|dir| dir.file_name().map(|name| name.to_string_lossy().into_owned()))
            .unwrap_or_else(|| args.model.display().to_string()),
    };
    Ok(ServeConfig {
        model_dir: args.model.clone(),
        model_name,
        batching: BatchPolicy { max_batch: args.max_batch, max_wait: Duration::from_millis(args.max_wait_ms) },
        queue: args.queue,
        limits: RequestLimits { max_body_bytes: args.max_request_bytes, max_inputs: args.max_inputs },
        load_delay: load_delay()?,
        device: args.device,
    })
}

/// The test-only delay from [`LOAD_DELAY_ENV`], if set.
fn load_delay() -> anyhow::Result<Duration> {
    match std::env::var(LOAD_DELAY_ENV) {
        Ok(text) => {
            let ms: u64 = text.parse().with_context(|| format!("{LOAD_DELAY_ENV}: `{text}` is not milliseconds"))?;
            eprintln!("warning: {LOAD_DELAY_ENV}={ms}: the model loads {ms} ms late (test-only knob)");
            Ok(Duration::from_millis(ms))
        }
        Err(_) => Ok(Duration::ZERO),
    }
}

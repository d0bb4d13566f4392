//! Command-line types. Nothing outside `main` and `commands` sees them.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Take a model checkpoint to production: int8 quantization, fused kernels, honest benchmarks,
/// instance recommendation and verified publishing.
#[derive(Debug, Parser)]
#[command(name = "qtier", version, about, max_term_width = 100)]
pub struct Cli {
    /// Worker threads for parallel work (default: one per core).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<NonZeroUsize>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Quantize the Linear layers of a safetensors checkpoint to int8 (compressed-tensors
    /// int-quantized, W8A8) and write a per-layer quality report.
    Quantize(QuantizeArgs),
    /// Print the format, quantization config, layers and sizes of a checkpoint or artifact.
    Inspect(InspectArgs),
    /// Print sentence embeddings of texts (one per line of a file) from a model or artifact.
    Embed(EmbedArgs),
    /// Compare an int8 artifact with its float model on real text: embedding cosine,
    /// nearest-neighbour agreement and per-layer output SQNR.
    Eval(EvalArgs),
    /// Measure latency: the int8 kernels against this machine's limits, a model end to end (CPU or
    /// GPU), or a running server under load; merge reports of interleaved runs.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Compare two `qtier bench model` reports: per workload the change in median and tail and
    /// whether it is a significant regression (exit status 3).
    Compare(CompareArgs),
    /// Choose the cheapest instance that meets each service tier, from bench reports (measured,
    /// or projected onto unmeasured types).
    Recommend(crate::commands::recommend::RecommendArgs),
    /// Maintain the instance catalog (import prices from an AWS Price List offer file).
    #[command(subcommand)]
    Profiles(crate::commands::profiles::ProfilesCommand),
    /// Publish a verified artifact (gates: eval accuracy, a service tier met) to S3 or a local
    /// store, with a sha256 manifest written last.
    Publish(crate::commands::publish::PublishArgs),
    /// Download a published artifact, verify every file against its manifest, and rename it into
    /// place (for init containers).
    Pull(crate::commands::publish::PullArgs),
    /// Upload one report file to S3 or a local store (bench jobs use it to collect results).
    PublishReport(crate::commands::publish::PublishReportArgs),
    /// The whole flow: quantize -> eval -> bench (this host) -> recommend -> publish, with every
    /// intermediate file in a work directory; stops at the first failed gate.
    Run(crate::commands::run::RunArgs),
    /// Run the flow on the bundled test model (all-MiniLM-L6-v2) with local defaults.
    Demo(DemoArgs),
    /// Fetch and verify the test model (all-MiniLM-L6-v2) into the cache and print its directory.
    TestModel(TestModelArgs),
    /// Print Kubernetes manifests (YAML) for EKS: serve an artifact on a tier's instance type, or
    /// benchmark it on several instance types.
    #[command(subcommand)]
    K8s(crate::commands::k8s::K8sCommand),
    /// Serve a model over HTTP: OpenAI-compatible /v1/embeddings with dynamic batching, health and
    /// readiness probes and Prometheus metrics.
    Serve(crate::commands::serve::ServeArgs),
    /// Greedy decoding with a Llama-family decoder (float or int8 artifact): tokens, prefill
    /// time and time per output token.
    Generate(crate::commands::generate::GenerateArgs),
    /// Write a random-weight checkpoint with the real shapes of a published model size
    /// (`--arch llama --preset 1b|3b|8b`), for benchmarks.
    Synth(crate::commands::synth::SynthArgs),
}

/// `qtier quantize`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// A model directory (model.safetensors, or shards with an index) or one .safetensors file.
    pub input: PathBuf,
    /// The artifact directory to create.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Quantize only these modules: `Linear` (all, the default), an exact module name, a glob
    /// (`encoder.layer.*.attention.*`) or `re:<regex>`. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub targets: Vec<String>,
    /// Keep these modules in float (same pattern forms as --targets). Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub ignore: Vec<String>,
    /// Keep layers whose weights hold NaN or infinity in float instead of failing.
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Replace the output directory if it exists.
    #[arg(long)]
    pub force: bool,
    /// Flush the artifact to disk before renaming it into place (survives a power loss; slower,
    /// bounded by the disk's write speed).
    #[arg(long)]
    pub sync: bool,
    /// Print the report as JSON on stdout (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// `qtier inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A model or artifact directory, or one .safetensors file.
    pub path: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// List every quantized layer (default: the first few).
    #[arg(long)]
    pub all: bool,
}

/// `qtier demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The local store the demo publishes to (a directory; also file:///dir or s3://bucket/prefix).
    #[arg(long, value_name = "DIR", default_value = "qtier-artifacts")]
    pub out: std::path::PathBuf,
    /// The work directory for intermediate files (default: qtier-work/all-MiniLM-L6-v2-w8a8).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Use a work directory that an earlier run did not create.
    #[arg(long)]
    pub force: bool,
    /// How the bench measures and the recommendation is sized.
    #[command(flatten)]
    pub flow: crate::commands::run::FlowArgs,
    /// How to reach S3 and upload (when --out is an s3:// URI).
    #[command(flatten)]
    pub upload: crate::commands::publish::UploadArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `qtier test-model`.
#[derive(Debug, Args)]
pub struct TestModelArgs {
    /// Print `{"path": ...}` as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `qtier embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// A model or int8 artifact directory (sentence-transformers layout).
    pub model: PathBuf,
    /// A text file with one text per line.
    #[arg(long, value_name = "FILE")]
    pub texts: PathBuf,
    /// Print as JSON (`{"model", "dimensions", "embeddings": [[...], ...]}`).
    #[arg(long)]
    pub json: bool,
}

/// `qtier eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The float model directory (the reference).
    pub reference: PathBuf,
    /// The int8 artifact directory.
    pub candidate: PathBuf,
    /// A text file with one text per line (default: the built-in development sentences).
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
    /// Run the int8 layers as plain per-token W8A8, as vLLM's kernels do, without qtier's
    /// outlier decomposition.
    #[arg(long)]
    pub plain_w8a8: bool,
    /// Exit with status 1 when the minimum embedding cosine is below this.
    #[arg(long, value_name = "COSINE")]
    pub min_cosine: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the report as Markdown.
    #[arg(long, conflicts_with = "json")]
    pub markdown: bool,
}

/// `qtier bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The fused int8 Linear on fixed shapes (hot weights), against this machine's limits and
    /// candle's f32 and Q8_0 matmuls in the same process.
    Kernels(BenchKernelsArgs),
    /// This machine's int8 peak and read bandwidth (the limits `bench kernels` compares with).
    Limits(BenchLimitsArgs),
    /// End-to-end latency of a model directory (float or int8, whatever it holds).
    Model(BenchModelArgs),
    /// Pool several `bench model` reports of the same model into one (e.g. interleaved runs,
    /// see scripts/bench-ab.sh), recomputing the statistics; prints JSON.
    Merge(BenchMergeArgs),
    /// Load a running server's /v1/embeddings over HTTP (open-loop Poisson arrivals or closed-loop
    /// clients) and report its latency and throughput.
    Server(crate::commands::bench_server::BenchServerArgs),
}

/// `qtier bench merge`.
#[derive(Debug, Args)]
pub struct BenchMergeArgs {
    /// The reports, in run order.
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
}

/// `qtier bench model`.
#[derive(Debug, Args)]
pub struct BenchModelArgs {
    /// The EC2 instance type to record (default: asked from the instance metadata service when
    /// running on EC2, else `unknown`).
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// A model or int8 artifact directory.
    pub model: PathBuf,
    /// Batch sizes, comma-separated; one workload each.
    #[arg(long, value_name = "LIST", default_value = "1")]
    pub batch: String,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Decoders: prompt tokens of the time-to-first-token workload (default 512 for a Llama-family
    /// model directory).
    #[arg(long, value_name = "N")]
    pub prompt_len: Option<usize>,
    /// Decoders: tokens generated per run; all but the first are time-per-output-token samples.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub gen_len: usize,
    /// Minimum seconds of measurement per workload (the run also continues until the tail
    /// percentile has enough samples: 662 for p99).
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub min_seconds: f64,
    /// Stop a workload after this many seconds even if it has too few samples for the tail.
    #[arg(long, value_name = "S", default_value_t = 300.0)]
    pub max_seconds: f64,
    /// The tail percentile reported (and used to size the sample).
    #[arg(long, default_value_t = 99.0)]
    pub tail: f64,
    /// Run int8 layers as plain per-token W8A8, without outlier decomposition.
    #[arg(long)]
    pub plain_w8a8: bool,
    /// Where an encoder runs: `cpu`, or `cuda` / `cuda:N` (GPU N: the whole forward on the GPU,
    /// int8 layers with the same outlier decomposition as on the CPU; needs a qtier built with
    /// `--features cuda`, the NVIDIA driver and libnvrtc). A GPU run records the GPU in the
    /// report's hardware.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: qtier_models::gpu::ComputeDevice,
    /// After the closed-loop measurement, offer this many requests per second (Poisson arrivals)
    /// and measure latency including queueing.
    #[arg(long, value_name = "R", conflicts_with = "find_max_qps")]
    pub qps: Option<f64>,
    /// Seconds of the open-loop run (or of each step of --find-max-qps).
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub duration: f64,
    /// Search the highest request rate that meets --sla.
    #[arg(long, requires = "sla")]
    pub find_max_qps: bool,
    /// The latency SLA for --find-max-qps, e.g. `p99=16ms` (also p90, p95; ms, us or s).
    #[arg(long, value_name = "PCT=LATENCY")]
    pub sla: Option<String>,
    /// Compare with this earlier report and exit with status 3 on a significant regression.
    #[arg(long, value_name = "REPORT")]
    pub baseline: Option<PathBuf>,
    /// Allowed median growth against --baseline before a significant change fails (e.g. 5%).
    #[arg(long, value_name = "PERCENT", default_value = "5%")]
    pub max_regression: String,
    /// Print the report as JSON.
    #[arg(long, conflicts_with_all = ["markdown", "emf"])]
    pub json: bool,
    /// Print the report as Markdown.
    #[arg(long, conflicts_with = "emf")]
    pub markdown: bool,
    /// Print CloudWatch Embedded Metric Format lines (latencies, <= 100 per record).
    #[arg(long)]
    pub emf: bool,
    /// Also write a self-contained HTML page with latency CDF and histogram plots to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Replace an existing --html file.
    #[arg(long)]
    pub force: bool,
}

/// `qtier bench kernels`.
#[derive(Debug, Args)]
pub struct BenchKernelsArgs {
    /// The EC2 instance type to record (default: asked from the instance metadata service when
    /// running on EC2, else `unknown`).
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// Shapes as MxKxN (tokens x in_features -> out_features), comma-separated.
    #[arg(long, value_name = "LIST", default_value = qtier_bench::kernel_bench::REFERENCE_SHAPES)]
    pub shapes: String,
    /// Seconds of measurement per shape (after warm-up).
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub seconds: f64,
    /// Skip the candle peers.
    #[arg(long)]
    pub no_peers: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `qtier bench limits`.
#[derive(Debug, Args)]
pub struct BenchLimitsArgs {
    /// Buffer sizes for the read bandwidth, in bytes, comma-separated.
    #[arg(long, value_name = "LIST", default_value = "589824,16777216,45088768,268435456")]
    pub bytes: String,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `qtier compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline report.
    pub old: PathBuf,
    /// The new report.
    pub new: PathBuf,
    /// Allowed median growth before a significant change counts as a regression (e.g. 5%).
    #[arg(long, value_name = "PERCENT", default_value = "5%")]
    pub max_regression: String,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the comparison as a Markdown table (for pull-request comments).
    #[arg(long, conflicts_with = "json")]
    pub markdown: bool,
}

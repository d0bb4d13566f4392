//! `qtier synth`: a random-weight checkpoint with the real shapes of a published model size.

use std::path::PathBuf;

use anyhow::{Context, bail};
use qtier_models::llama::synth::{SynthPreset, write_synthetic};

/// `qtier synth`.
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// The architecture (only `llama`).
    #[arg(long, default_value = "llama")]
    pub arch: String,
    /// The size: `1b` (Llama 3.2 1B), `3b` (Llama 3.2 3B), `8b` (Llama 3.1 8B), or `tiny` (4
    /// layers, hidden 128, for tests).
    #[arg(long, value_name = "SIZE")]
    pub preset: String,
    /// The checkpoint directory to create.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Replace an existing output directory.
    #[arg(long)]
    pub force: bool,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `qtier synth`.
pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    if args.arch != "llama" {
        bail!("--arch `{}`: only `llama` is supported", args.arch);
    }
    let Some(preset) = SynthPreset::parse(&args.preset) else {
        bail!("--preset `{}`: expected 1b, 3b, 8b or tiny", args.preset);
    };
    let started = std::time::Instant::now();
    let summary = write_synthetic(preset, &args.output, args.force)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let json = serde_json::json!({
            "dir": summary.dir.display().to_string(),
            "parameters": summary.parameters,
            "file_bytes": summary.file_bytes,
            "seconds": seconds,
        });
        outln!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        outln!(
            "{}: {} parameters, {:.2} GB of BF16 in {seconds:.1} s",
            summary.dir.display(),
            summary.parameters,
            summary.file_bytes as f64 / 1e9
        );
    }
    Ok(())
}

//! `qtier eval`.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use qtier_models::eval::{DEV_SENTENCES, EvalReport, evaluate, lines};
use qtier_models::{Int8Options, SentenceEncoder};

use crate::cli::EvalArgs;

/// Layers listed in the terminal summary, lowest output SQNR first.
const WORST_LAYERS_SHOWN: usize = 6;

/// Runs `qtier eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let owned_text;
    let texts = match &args.texts {
        Some(path) => {
            owned_text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            lines(&owned_text)
        }
        None => lines(DEV_SENTENCES),
    };
    if let Some(min) = args.min_cosine
        && !(-1.0..=1.0).contains(&min)
    {
        bail!("--min-cosine must lie in [-1, 1], got {min}");
    }
    let reference =
        SentenceEncoder::load(&args.reference).with_context(|| format!("loading {}", args.reference.display()))?;
    let int8 = Int8Options { outlier_decomposition: !args.plain_w8a8 };
    let candidate = SentenceEncoder::load_with(&args.candidate, int8)
        .with_context(|| format!("loading {}", args.candidate.display()))?;
    let report = evaluate(&reference, &candidate, &texts)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.markdown {
        out!("{}", markdown(&report));
    } else {
        print_summary(&report);
    }
    if let Some(min) = args.min_cosine
        && report.cosine.min_below(min)
    {
        bail!("minimum embedding cosine {:.6} is below --min-cosine {min}", report.cosine.min);
    }
    Ok(())
}

/// Prints an eval report for people.
pub fn print_summary(report: &EvalReport) {
    outln!("eval {} vs {} on {} texts", report.candidate, report.reference, report.texts);
    outln!(
        "  embedding cosine: mean {:.6}, min {:.6}, p1 {:.6}",
        report.cosine.mean,
        report.cosine.min,
        report.cosine.p1
    );
    outln!("  nearest-neighbour agreement: {:.1}%", report.nearest_neighbour_agreement * 100.0);
    let mut layers: Vec<_> = report.layers.iter().collect();
    layers.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db));
    if !layers.is_empty() {
        outln!("  lowest output SQNR of {} int8 layers:", layers.len());
        for layer in layers.iter().take(WORST_LAYERS_SHOWN) {
            outln!("    {:>7.2} dB  {}", layer.sqnr_db, layer.name);
        }
    }
}

/// The report as Markdown (for PR comments and release notes).
pub fn markdown(report: &EvalReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## qtier eval: `{}` vs `{}`\n", report.candidate, report.reference);
    let _ = writeln!(md, "| texts | cosine mean | cosine min | cosine p1 | nearest-neighbour agreement |");
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        md,
        "| {} | {:.6} | {:.6} | {:.6} | {:.1}% |\n",
        report.texts,
        report.cosine.mean,
        report.cosine.min,
        report.cosine.p1,
        report.nearest_neighbour_agreement * 100.0
    );
    let _ = writeln!(md, "| layer | output SQNR dB |\n|---|---:|");
    for layer in &report.layers {
        let _ = writeln!(md, "| `{}` | {:.2} |", layer.name, layer.sqnr_db);
    }
    md
}

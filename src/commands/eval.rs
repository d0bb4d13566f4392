//! `qtier eval`.

use anyhow::Context;
use qtier_models::SentenceEncoder;
use qtier_models::eval::{DEV_SENTENCES, EvalReport, evaluate, lines};

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
    let reference =
        SentenceEncoder::load(&args.reference).with_context(|| format!("loading {}", args.reference.display()))?;
    let candidate =
        SentenceEncoder::load(&args.candidate).with_context(|| format!("loading {}", args.candidate.display()))?;
    let report = evaluate(&reference, &candidate, &texts)?;
    print_eval(&report, args.json)
}

/// Prints an eval report as JSON or as a summary for people.
pub fn print_eval(report: &EvalReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!("eval {} vs {} on {} texts", report.candidate, report.reference, report.texts);
    println!(
        "  embedding cosine: mean {:.6}, min {:.6}, p1 {:.6}",
        report.cosine.mean, report.cosine.min, report.cosine.p1
    );
    println!("  nearest-neighbour agreement: {:.1}%", report.nearest_neighbour_agreement * 100.0);
    let mut layers: Vec<_> = report.layers.iter().collect();
    layers.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db));
    if !layers.is_empty() {
        println!("  lowest output SQNR of {} int8 layers:", layers.len());
        for layer in layers.iter().take(WORST_LAYERS_SHOWN) {
            println!("    {:>7.2} dB  {}", layer.sqnr_db, layer.name);
        }
    }
    Ok(())
}

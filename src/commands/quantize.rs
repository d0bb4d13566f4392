//! `qtier quantize`.

use anyhow::Context;
use qtier_quantize::report::format_db;
use qtier_quantize::{LayerSelection, QuantReport, QuantizeOptions, QuantizeProgress, quantize_checkpoint};

use crate::cli::QuantizeArgs;
use crate::progress::byte_bar;

/// Layers listed in the terminal summary, worst SQNR first; the full table is in the report.
const WORST_LAYERS_SHOWN: usize = 5;

/// Runs `qtier quantize`.
pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let options = QuantizeOptions {
        selection: LayerSelection::new(&args.targets, &args.ignore)?,
        input: args.input,
        output: args.output,
        allow_nonfinite: args.allow_nonfinite,
        force: args.force,
        durable: args.sync,
    };
    let report = quantize_with_progress(&options, args.json)?;
    print_report(&report, args.json)
}

/// Quantizes with a progress bar on a terminal.
pub fn quantize_with_progress(options: &QuantizeOptions, quiet: bool) -> anyhow::Result<QuantReport> {
    let bar = byte_bar("quantize", quiet);
    let report = quantize_checkpoint(options, &|event| match event {
        QuantizeProgress::Started { total_bytes } => bar.set_length(total_bytes),
        QuantizeProgress::Advanced { bytes } => bar.inc(bytes),
    })
    .with_context(|| format!("quantizing {}", options.input.display()))?;
    bar.finish_and_clear();
    Ok(report)
}

/// Prints the report as JSON, or as a short summary for people.
pub fn print_report(report: &QuantReport, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let t = &report.totals;
    outln!("quantized {} -> {}", report.input, report.output);
    outln!(
        "  {} Linear layers, {} of {} parameters, {} ({})",
        t.layers_quantized,
        t.parameters_quantized,
        t.parameters_total,
        report.scheme.name,
        report.scheme.weights
    );
    outln!(
        "  tensor bytes {} -> {} ({:.2}x smaller)",
        t.tensor_bytes_before,
        t.tensor_bytes_after,
        t.compression_ratio
    );
    outln!(
        "  SQNR min {} dB ({}), median {} dB",
        format_db(t.min_sqnr_db),
        t.min_sqnr_layer.as_deref().unwrap_or("-"),
        format_db(t.median_sqnr_db)
    );
    outln!("  {} tensors kept unchanged; {:.2} s, {:.2} GB/s", report.kept.len(), t.seconds, t.input_gb_per_s);
    let mut worst: Vec<_> = report.layers.iter().collect();
    worst.sort_by(|a, b| a.sqnr_db.unwrap_or(f64::INFINITY).total_cmp(&b.sqnr_db.unwrap_or(f64::INFINITY)));
    if !worst.is_empty() {
        outln!("  lowest SQNR:");
        for layer in worst.iter().take(WORST_LAYERS_SHOWN) {
            outln!(
                "    {:>8} dB  rel.RMSE {:.5}  cos {:.6}  {}",
                format_db(layer.sqnr_db),
                layer.relative_rmse,
                layer.cosine,
                layer.name
            );
        }
    }
    outln!("  report: {}/{}", report.output, qtier_quantize::report::REPORT_MARKDOWN);
    Ok(())
}

//! `qtier compare`, and the baseline check of `qtier bench model --baseline`.

use std::path::Path;

use anyhow::{Context, bail};
use qtier_bench::compare::{Comparison, compare, to_markdown};
use qtier_bench::model_bench::ModelBenchReport;

use crate::cli::CompareArgs;

/// Exit status when a comparison finds a significant regression (CI fails on it; 1 stays for
/// errors).
pub const EXIT_REGRESSION: u8 = 3;

/// The error that makes `main` exit with [`EXIT_REGRESSION`].
#[derive(Debug)]
pub struct RegressionDetected(pub Vec<String>);

impl std::fmt::Display for RegressionDetected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "regression: {}", self.0.join(", "))
    }
}

impl std::error::Error for RegressionDetected {}

/// Parses `5%` or `0.05` into a fraction.
pub fn parse_threshold(text: &str) -> anyhow::Result<f64> {
    let value = match text.trim().strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
        None => text.trim().parse::<f64>(),
    }
    .with_context(|| format!("--max-regression: `{text}` is not a percentage like 5%"))?;
    if !(value.is_finite() && value >= 0.0) {
        bail!("--max-regression must be a non-negative percentage, got `{text}`");
    }
    Ok(value)
}

/// Reads a `qtier bench model --json` report.
pub fn read_report(path: &Path) -> anyhow::Result<ModelBenchReport> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{}: not a qtier bench model report", path.display()))
}

/// Prints a comparison and turns a regression into [`RegressionDetected`].
pub fn report_comparison(comparison: &Comparison, json: bool, markdown: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(comparison)?);
    } else if markdown {
        out!("{}", to_markdown(comparison));
    } else {
        for w in &comparison.workloads {
            let verdict = if w.regression { "REGRESSION" } else { w.verdict() };
            outln!(
                "{:>12}: median {:.3} -> {:.3} ms ({:+.1}%), tail {:.3} -> {:.3} ms ({:+.1}%), p = {:.2e}: {verdict}",
                w.name,
                w.old_median_ns / 1e6,
                w.new_median_ns / 1e6,
                w.median_change * 100.0,
                w.old_tail_ns / 1e6,
                w.new_tail_ns / 1e6,
                w.tail_change * 100.0,
                w.p_value
            );
        }
    }
    fail_on_regression(comparison)
}

/// [`RegressionDetected`] naming the regressed workloads, if any.
pub fn fail_on_regression(comparison: &Comparison) -> anyhow::Result<()> {
    if comparison.regressed {
        let names = comparison.workloads.iter().filter(|w| w.regression).map(|w| w.name.clone()).collect();
        return Err(RegressionDetected(names).into());
    }
    Ok(())
}

/// Runs `qtier compare`.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let max_regression = parse_threshold(&args.max_regression)?;
    let old = read_report(&args.old)?;
    let new = read_report(&args.new)?;
    let comparison = compare(&old, &new, max_regression);
    if comparison.workloads.is_empty() {
        bail!("{} and {} have no workload in common", args.old.display(), args.new.display());
    }
    report_comparison(&comparison, args.json, args.markdown)
}

//! Markdown: a summary table for pull requests and release notes.

use std::fmt::Write as _;

use super::{Exporter, model_name, ms};
use crate::model_bench::ModelBenchReport;

/// Markdown exporter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Markdown;

impl Exporter for Markdown {
    fn export(&self, report: &ModelBenchReport) -> String {
        let hw = &report.hardware;
        let mut md = String::new();
        let _ = writeln!(md, "## qtier bench: `{}`\n", model_name(report));
        let _ = writeln!(
            md,
            "{} ({}), kernel {}, {} threads; {} ({} cores, {}); instance type {} ({}); qtier {} ({})\n",
            if report.int8 { "int8" } else { "float" },
            report.model,
            report.kernel.as_deref().unwrap_or("-"),
            report.threads,
            hw.cpu_model,
            hw.logical_cores,
            hw.cpu_flags.join(" "),
            hw.instance_type,
            hw.instance_type_source,
            report.provenance.qtier_version,
            report.provenance.git_revision
        );
        let _ = writeln!(
            md,
            "| workload | samples | p50 ms (95% CI) | p90 ms | p95 ms | p99 ms | tail bound ms | outliers |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for w in &report.workloads {
            let s = &w.stats;
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} ({:.3}-{:.3}) | {:.3} | {:.3} | {:.3} | {} | {} |",
                w.name,
                s.count,
                ms(s.p50),
                ms(s.median_ci95.low),
                ms(s.median_ci95.high),
                ms(s.p90),
                ms(s.p95),
                ms(s.p99),
                s.tail_upper_bound
                    .map_or_else(|| "-".to_string(), |b| format!("{:.3} (p{})", ms(b), s.tail_percentile)),
                s.outliers.indices.len()
            );
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_report::report;

    #[test]
    fn markdown_snapshot() {
        insta::assert_snapshot!(Markdown.export(&report()));
    }
}

//! CloudWatch Embedded Metric Format: one JSON line per batch of at most
//! [`EMF_MAX_VALUES`] latencies per workload, for users who ship logs to CloudWatch
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>).

use serde_json::json;

use super::{Exporter, model_name, ms};
use crate::model_bench::ModelBenchReport;

/// The EMF specification's limit of values in one metric array.
pub const EMF_MAX_VALUES: usize = 100;
/// The CloudWatch namespace qtier's metrics go to.
pub const EMF_NAMESPACE: &str = "qtier";

/// EMF exporter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Emf;

impl Exporter for Emf {
    fn export(&self, report: &ModelBenchReport) -> String {
        let mut lines = String::new();
        for workload in &report.workloads {
            for chunk in workload.samples_ns.chunks(EMF_MAX_VALUES) {
                let latencies: Vec<f64> = chunk.iter().map(|ns| (ms(*ns) * 1e3).round() / 1e3).collect();
                let record = json!({
                    "_aws": {
                        "Timestamp": report.provenance.started_unix_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": EMF_NAMESPACE,
                            "Dimensions": [["InstanceType", "Model", "Workload"]],
                            "Metrics": [{"Name": "Latency", "Unit": "Milliseconds"}]
                        }]
                    },
                    "InstanceType": report.hardware.instance_type,
                    "Model": model_name(report),
                    "Workload": workload.name,
                    "Int8": report.int8,
                    "GitRevision": report.provenance.git_revision,
                    "Latency": latencies,
                });
                lines.push_str(&record.to_string());
                lines.push('\n');
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_report::report;

    #[test]
    fn emf_lines_hold_at_most_100_values_and_match_the_snapshot() {
        let text = Emf.export(&report());
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 6, "240 samples per workload in chunks of 100, two workloads");
        assert!(lines.iter().all(|l| l["Latency"].as_array().unwrap().len() <= EMF_MAX_VALUES));
        let first_two: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        insta::assert_snapshot!(first_two);
    }
}

//! Exporters of [`ModelBenchReport`]: one trait, one file per format (Markdown, a self-contained
//! HTML page with SVG plots, CloudWatch Embedded Metric Format). The terminal table and JSON are
//! printed by the CLI.

mod emf;
mod html;
mod markdown;

pub use emf::Emf;
pub use html::Html;
pub use markdown::Markdown;

use crate::model_bench::ModelBenchReport;

/// A format a bench report can be written in.
pub trait Exporter {
    /// The report in this format.
    fn export(&self, report: &ModelBenchReport) -> String;
}

/// Milliseconds from nanoseconds, for people.
fn ms(ns: f64) -> f64 {
    ns / 1e6
}

/// The model's directory name, for titles and dimensions.
fn model_name(report: &ModelBenchReport) -> &str {
    std::path::Path::new(&report.model).file_name().and_then(|n| n.to_str()).unwrap_or(&report.model)
}

#[cfg(test)]
pub(crate) mod test_report {
    use crate::Provenance;
    use crate::hardware::Hardware;
    use crate::model_bench::{MODEL_REPORT_SCHEMA_VERSION, ModelBenchReport, ModelWorkload};
    use crate::stats::{Sample, Summary};

    /// A single-run workload of `samples` (seq 128, p90 tail).
    pub fn workload(name: &str, batch: usize, samples: Vec<f64>) -> ModelWorkload {
        let stats = Summary::compute(&Sample::new(samples.clone()).unwrap(), 90.0, 1).unwrap();
        ModelWorkload {
            name: name.into(),
            batch,
            seq: 128,
            warmup_calls: 16,
            stopped_by_time_limit: false,
            stats,
            open_loop: None,
            max_qps: None,
            decoder_metric: None,
            samples_ns: samples,
            run_medians_ns: Vec::new(),
        }
    }

    /// A fixed report with deterministic samples, for snapshot tests.
    pub fn report() -> ModelBenchReport {
        let workload = |name: &str, batch: usize, base: f64| {
            let samples: Vec<f64> = (0..240)
                .map(|i| base * (1.0 + ((i * 37 % 101) as f64) / 400.0 + if i % 60 == 0 { 0.5 } else { 0.0 }))
                .collect();
            workload(name, batch, samples)
        };
        ModelBenchReport {
            schema_version: MODEL_REPORT_SCHEMA_VERSION,
            provenance: Provenance {
                qtier_version: "0.1.0".into(),
                git_revision: "0123456789ab".into(),
                command: vec!["qtier".into(), "bench".into(), "model".into(), "minilm-w8a8".into()],
                started_unix_ms: 1_790_000_000_000,
            },
            hardware: Hardware {
                cpu_model: "Test CPU".into(),
                cpu_vendor: "GenuineIntel".into(),
                logical_cores: 2,
                physical_cores: Some(1),
                cpu_flags: vec!["avx2".into(), "avx512_vnni".into()],
                memory_bytes: Some(8 << 30),
                kernel: "avx512vnni".into(),
                threads: 2,
                instance_type: "c6i.large".into(),
                instance_type_source: "flag".into(),
                os: "linux x86_64".into(),
                gpu: None,
            },
            model: "/models/minilm-w8a8".into(),
            model_name: "minilm-w8a8".into(),
            weights_sha256: [("model.safetensors".to_string(), "ab".repeat(32))].into_iter().collect(),
            int8: true,
            kernel: Some("avx512vnni".into()),
            threads: 2,
            merged_runs: 1,
            injected_slowdown: None,
            decoder: None,
            workloads: vec![workload("b1xs128", 1, 11e6), workload("b32xs128", 32, 300e6)],
        }
    }
}

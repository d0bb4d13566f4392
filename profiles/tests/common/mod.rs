//! Helpers shared by the profiles tests: synthetic bench reports with known latencies, small
//! catalogs, and the measured fixtures of the development host.
#![allow(dead_code)]

use std::path::Path;

use qtier_bench::Provenance;
use qtier_bench::hardware::Hardware;
use qtier_bench::model_bench::{ModelBenchReport, ModelWorkload};
use qtier_bench::stats::{Sample, Summary};
use qtier_profiles::LabelledReport;
use qtier_profiles::workload::EncoderShape;

/// CPU flags of a host with AVX-512 VNNI.
pub const VNNI_FLAGS: [&str; 5] = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"];

/// Samples whose median is `p50_ms` and whose p99 (and its early-stopping upper bound) is
/// `p99_ms`: 950 at the median, 50 at the tail.
pub fn workload(batch: usize, seq: usize, p50_ms: f64, p99_ms: f64) -> ModelWorkload {
    let mut samples = vec![p50_ms * 1e6; 950];
    samples.extend(std::iter::repeat_n(p99_ms * 1e6, 50));
    let stats = Summary::compute(&Sample::new(samples.clone()).unwrap(), 99.0, 7).unwrap();
    ModelWorkload {
        name: format!("b{batch}xs{seq}"),
        batch,
        seq,
        warmup_calls: 10,
        stopped_by_time_limit: false,
        stats,
        open_loop: None,
        max_qps: None,
        decoder_metric: None,
        samples_ns: samples,
        run_medians_ns: Vec::new(),
    }
}

/// A report measured with `threads` threads on a host with `flags` and `cores` physical cores;
/// `instance_type` given by `--instance-type` (source `flag`), or unknown.
pub fn report(
    instance_type: Option<&str>,
    flags: &[&str],
    cores: usize,
    workloads: Vec<ModelWorkload>,
) -> ModelBenchReport {
    let (instance_type, instance_type_source) = match instance_type {
        Some(t) => (t.to_string(), "flag".to_string()),
        None => ("unknown".to_string(), "imds-disabled".to_string()),
    };
    let kernel = if flags.contains(&"avx512_vnni") { "avx512vnni" } else { "avx2" };
    ModelBenchReport {
        schema_version: 1,
        provenance: Provenance {
            qtier_version: "0.1.0".into(),
            git_revision: "test".into(),
            command: vec!["qtier".into()],
            started_unix_ms: 0,
        },
        hardware: Hardware {
            cpu_model: "Test Xeon".into(),
            cpu_vendor: "GenuineIntel".into(),
            logical_cores: cores * 2,
            physical_cores: Some(cores),
            cpu_flags: flags.iter().map(|f| f.to_string()).collect(),
            memory_bytes: None,
            kernel: kernel.into(),
            threads: cores,
            instance_type,
            instance_type_source,
            os: "linux x86_64".into(),
            gpu: None,
        },
        model: "/models/test-int8".into(),
        model_name: "test-int8".into(),
        weights_sha256: Default::default(),
        int8: true,
        kernel: Some(kernel.into()),
        threads: cores,
        merged_runs: 1,
        injected_slowdown: None,
        decoder: None,
        workloads,
    }
}

/// A labelled report measured on `instance_type` at b1xs32 with the given latencies.
pub fn measured(instance_type: &str, p50_ms: f64, p99_ms: f64) -> LabelledReport {
    LabelledReport {
        label: format!("{instance_type}.json"),
        report: report(Some(instance_type), &VNNI_FLAGS, 2, vec![workload(1, 32, p50_ms, p99_ms)]),
    }
}

/// A small catalog of `(name, on-demand $/h)`; families c6i and c7i have spot estimates of 0.5
/// and 0.6 off, family m7i has none.
pub fn catalog(instances: &[(&str, f64)]) -> qtier_profiles::InstanceCatalog {
    let mut text = String::from("[catalog]\nregion = \"us-east-1\"\ncurrency = \"USD\"\nnote = \"test\"\n");
    let families: std::collections::BTreeSet<&str> =
        instances.iter().map(|(n, _)| n.rsplit_once('.').unwrap().0).collect();
    for (family, discount) in [("c6i", 0.5), ("c7i", 0.6)] {
        if families.contains(family) {
            text.push_str(&format!(
                "[[spot]]\nfamily = \"{family}\"\ndiscount = {discount}\nsource = \"test\"\nas_of = \"2026-11-30\"\nnote = \"spot prices vary\"\n"
            ));
        }
    }
    for (name, price) in instances {
        let family = name.rsplit_once('.').unwrap().0;
        let vcpu = if name.ends_with(".large") { 2 } else { 4 };
        text.push_str(&format!(
            "[[instance]]\nname = \"{name}\"\nservice = \"ec2\"\nfamily = \"{family}\"\nvcpu = {vcpu}\nmemory_gib = 8\n\
             [instance.cpu]\nmodel = \"Test Xeon\"\navx512 = true\nvnni = \"yes\"\nall_core_turbo_ghz = 3.0\n\
             memory_bandwidth_gbps = 20\nsource = \"test\"\n\
             [instance.price]\non_demand_usd_per_hour = {price}\nsource = \"test\"\nas_of = \"2026-11-30\"\n"
        ));
    }
    qtier_profiles::InstanceCatalog::parse(&text, "test catalog").unwrap()
}

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

/// A measured report of the development host (`seq` 32 or 128; batches 1 and 4).
pub fn host_report(seq: usize) -> LabelledReport {
    let name = format!("host-minilm-int8-s{seq}.json");
    let text = std::fs::read_to_string(fixtures().join(&name)).unwrap();
    LabelledReport { label: name, report: serde_json::from_str(&text).unwrap() }
}

/// all-MiniLM-L6-v2's dimensions, from the fixture config.json.
pub fn minilm() -> EncoderShape {
    let text = std::fs::read_to_string(fixtures().join("minilm-config.json")).unwrap();
    EncoderShape::from_config_json(&text, "minilm-config.json").unwrap()
}

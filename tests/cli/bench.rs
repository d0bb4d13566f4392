//! `qtier bench`: reports whose statistics can be recomputed from their raw samples.

use serde_json::Value;

use crate::common::*;

/// Held by every test here that times something: when the runner has no per-test machine
/// reservation (plain `cargo test` runs a binary's tests on parallel threads), timing tests still
/// run one at a time. Under nextest, `.config/nextest.toml` gives them the whole machine.
static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn timing_lock() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Type 7 percentile (linear interpolation between closest ranks), recomputed independently.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * p / 100.0;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (h - h.floor()) * (sorted[hi] - sorted[lo])
}

#[test]
fn model_bench_reports_p99_from_enough_samples_with_recomputable_statistics() {
    let _timing = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let int8 = dir.path().join("int8");
    run_ok(&["quantize", arg(test_model()), "-o", arg(&int8)]);
    let stdout = qtier()
        .args([
            "--threads",
            "2",
            "bench",
            "model",
            arg(&int8),
            "--batch",
            "1",
            "--seq",
            "16",
            "--min-seconds",
            "0.2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(stdout.status.success(), "{}", String::from_utf8_lossy(&stdout.stderr));
    let report: Value = serde_json::from_slice(&stdout.stdout).unwrap();
    assert_eq!(report["hardware"]["instance_type"], "unknown");
    assert_eq!(report["hardware"]["instance_type_source"], "imds-disabled");
    assert!(report["hardware"]["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(report["hardware"]["cpu_flags"].is_array());
    assert_eq!(report["int8"], true);
    assert_eq!(report["model_name"], "int8");
    let digest = report["weights_sha256"]["model.safetensors"].as_str().unwrap();
    assert_eq!(digest.len(), 64, "sha256 of the measured weights");
    let command: Vec<&str> =
        report["provenance"]["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(command.contains(&"model"));

    let workload = &report["workloads"][0];
    let stats = &workload["stats"];
    let mut samples: Vec<f64> =
        workload["samples_ns"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(samples.len() >= 662, "p99 needs at least 662 samples, got {}", samples.len());
    assert_eq!(stats["count"], samples.len());
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    samples.sort_by(f64::total_cmp);
    let close = |key: &str, expected: f64| {
        let reported = stats[key].as_f64().unwrap();
        assert!(
            (reported - expected).abs() <= 1e-9 * expected.abs(),
            "{key}: reported {reported}, recomputed {expected}"
        );
    };
    close("mean", mean);
    close("min", samples[0]);
    close("max", samples[samples.len() - 1]);
    for (key, p) in [("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0)] {
        close(key, percentile(&samples, p));
    }
    let ci = &stats["median_ci95"];
    assert!(ci["low"].as_f64().unwrap() <= stats["p50"].as_f64().unwrap());
    assert!(stats["p50"].as_f64().unwrap() <= ci["high"].as_f64().unwrap());
    let bound = stats["tail_upper_bound"].as_f64().expect("662+ samples give an early-stopping bound");
    assert!(bound >= stats["p99"].as_f64().unwrap());
}

#[test]
fn kernel_bench_reports_the_issue_fields() {
    let _timing = timing_lock();
    let stdout = qtier()
        .args(["--threads", "1", "bench", "kernels", "--shapes", "3x70x33", "--seconds", "0.05", "--json"])
        .output()
        .unwrap();
    assert!(stdout.status.success(), "{}", String::from_utf8_lossy(&stdout.stderr));
    let report: Value = serde_json::from_slice(&stdout.stdout).unwrap();
    assert_eq!(report["threads"], 1);
    assert!(report["limits"]["int8_gops"].as_f64().unwrap() > 0.0);
    assert!(report["limits"]["read_gbps_by_bytes"].as_object().unwrap().len() == 1);
    let row = &report["rows"][0];
    assert_eq!((row["m"].as_u64(), row["k"].as_u64(), row["n"].as_u64()), (Some(3), Some(70), Some(33)));
    for key in ["median_us", "p10_us", "p90_us", "gops", "percent_of_limit"] {
        assert!(row[key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(row["peers"]["candle_f32_median_us"].as_f64().unwrap() > 0.0);
    // The statistics exclude the clock's cost, the samples keep it.
    let clock_ns = report["clock_overhead_ns"].as_f64().unwrap();
    assert!((0.0..1_000.0).contains(&clock_ns), "clock overhead {clock_ns} ns");
    let mut samples: Vec<f64> = row["samples_ns"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    samples.sort_by(f64::total_cmp);
    let middle = samples.len() / 2;
    let sample_median =
        if samples.len() % 2 == 1 { samples[middle] } else { (samples[middle - 1] + samples[middle]) / 2.0 };
    let median_us = row["median_us"].as_f64().unwrap();
    assert!((median_us * 1e3 + clock_ns - sample_median).abs() < 1e-6 * sample_median, "{median_us} us, {clock_ns} ns");
}

#[test]
fn threads_sizes_the_pool_the_kernels_run_on_and_the_report_records_it() {
    let _timing = timing_lock();
    // More threads than the machine has cores: the pool's default (one per core) differs.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    let stdout = qtier()
        .args(["--threads", &threads.to_string(), "bench", "kernels", "--shapes", "1x64x64", "--seconds", "0.02"])
        .args(["--no-peers", "--json"])
        .output()
        .unwrap();
    assert!(stdout.status.success(), "{}", String::from_utf8_lossy(&stdout.stderr));
    let report: Value = serde_json::from_slice(&stdout.stdout).unwrap();
    assert_eq!(report["threads"], threads);
}

/// Fresh old/new pairs the injected-regression test may measure before it fails.
const REGRESSION_PAIR_ATTEMPTS: usize = 3;

/// Runs `qtier bench model` on a small workload and returns the report's path.
fn bench_report(model: &std::path::Path, out: &std::path::Path, slowdown: Option<&str>) -> std::path::PathBuf {
    let mut command = qtier();
    command
        .args(["--threads", "2", "bench", "model", arg(model), "--batch", "1", "--seq", "16", "--tail", "90"])
        .args(["--min-seconds", "0.5", "--json"]);
    if let Some(fraction) = slowdown {
        command.env("QTIER_BENCH_INJECT_SLOWDOWN", fraction);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    std::fs::write(out, &output.stdout).unwrap();
    out.to_path_buf()
}

#[test]
fn compare_flags_an_injected_20_percent_regression_with_status_3() {
    let _timing = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let int8 = dir.path().join("int8");
    run_ok(&["quantize", arg(test_model()), "-o", arg(&int8)]);
    let (old, new) = (dir.path().join("old.json"), dir.path().join("new.json"));
    // Up to 3 fresh pairs: this shared machine sometimes switches between speed regimes that
    // differ by more than 20%, and a switch between the two runs of a pair hides the slowdown (seen
    // once in CI: the slowed run measured 1.9% faster). A gate that cannot flag it fails all 3.
    let mut missed = Vec::new();
    let detected = (0..REGRESSION_PAIR_ATTEMPTS).any(|_| {
        bench_report(&int8, &old, None);
        bench_report(&int8, &new, Some("0.2"));
        let flagged = run(&["compare", arg(&old), arg(&new), "--max-regression", "5%", "--markdown"]);
        let stdout = String::from_utf8_lossy(&flagged.stdout);
        if flagged.status.code() != Some(3) {
            missed.push(format!(
                "status {:?}\n{stdout}{}",
                flagged.status.code(),
                String::from_utf8_lossy(&flagged.stderr)
            ));
            return false;
        }
        assert!(stdout.contains("**regression**") && stdout.contains("| b1xs16 |"), "{stdout}");
        true
    });
    assert!(detected, "no pair flagged the slowdown:\n{}", missed.join("\n"));
    let slow: Value = serde_json::from_slice(&std::fs::read(&new).unwrap()).unwrap();
    assert_eq!(slow["injected_slowdown"], 0.2, "the knob is recorded in the report");

    // A report compared with itself is never a regression, and the reverse direction is an
    // improvement, not a failure.
    assert!(run(&["compare", arg(&old), arg(&old)]).status.success());
    let reverse = run(&["compare", arg(&new), arg(&old), "--json"]);
    assert!(reverse.status.success());
    let comparison: Value = serde_json::from_slice(&reverse.stdout).unwrap();
    assert_eq!(comparison["workloads"][0]["improvement"], true);

    // The same check from `bench model --baseline`.
    let baseline = run(&[
        "bench",
        "model",
        arg(&int8),
        "--batch",
        "1",
        "--seq",
        "16",
        "--tail",
        "90",
        "--min-seconds",
        "0.3",
        "--baseline",
        arg(&new),
        // Wide: this run is compared with the slowed one, across any regime switch since.
        "--max-regression",
        "50%",
    ]);
    assert!(baseline.status.success(), "{}", String::from_utf8_lossy(&baseline.stderr));
}

#[test]
fn compare_rejects_a_file_that_is_not_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.json");
    std::fs::write(&bogus, "{}").unwrap();
    let stderr = run_err(&["compare", arg(&bogus), arg(&bogus)]);
    assert!(stderr.contains("bogus.json") && stderr.contains("not a qtier bench model report"), "{stderr}");
}

#[test]
fn open_loop_and_max_qps_search_run_on_the_int8_model() {
    let _timing = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let int8 = dir.path().join("int8");
    run_ok(&["quantize", arg(test_model()), "-o", arg(&int8)]);
    let common = [
        "bench",
        "model",
        arg(&int8),
        "--batch",
        "1",
        "--seq",
        "8",
        "--tail",
        "90",
        "--min-seconds",
        "0.1",
        "--duration",
        "0.5",
        "--json",
    ];
    let fixed: Value = serde_json::from_str(&run_ok(&[&common[..], &["--qps", "20"]].concat())).unwrap();
    let run = &fixed["workloads"][0]["open_loop"];
    assert_eq!(run["target_qps"], 20.0);
    assert!(run["completed"].as_u64().unwrap() >= 1);
    let latencies = run["samples_ns"].as_array().unwrap();
    assert_eq!(latencies.len() as u64, run["completed"].as_u64().unwrap());

    let search: Value =
        serde_json::from_str(&run_ok(&[&common[..], &["--find-max-qps", "--sla", "p90=1s"]].concat())).unwrap();
    let found = &search["workloads"][0]["max_qps"];
    assert_eq!(found["sla_ns"], 1e9);
    assert!(found["max_qps"].as_f64().unwrap() > 0.0, "{found}");
    assert!(!found["steps"].as_array().unwrap().is_empty());

    let stderr = run_err(&[&common[..], &["--find-max-qps", "--sla", "p99=fast"]].concat());
    assert!(stderr.contains("--sla"), "{stderr}");
}

#[test]
fn model_bench_writes_html_markdown_and_emf() {
    let _timing = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let int8 = dir.path().join("int8");
    run_ok(&["quantize", arg(test_model()), "-o", arg(&int8)]);
    let html = dir.path().join("report.html");
    let common = ["bench", "model", arg(&int8), "--batch", "1,2", "--seq", "8", "--tail", "90", "--min-seconds", "0.1"];
    let markdown = run_ok(&[&common[..], &["--markdown", "--html", arg(&html)]].concat());
    assert!(markdown.contains("| b1xs8 |") && markdown.contains("| b2xs8 |"), "{markdown}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.matches("<svg ").count() == 4);
    let refused = run_err(&[&common[..], &["--html", arg(&html)]].concat());
    assert!(refused.contains("already exists"), "{refused}");
    let emf = run_ok(&[&common[..], &["--emf"]].concat());
    for line in emf.lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["_aws"]["CloudWatchMetrics"][0]["Namespace"], "qtier");
        assert!(record["Latency"].as_array().unwrap().len() <= 100);
        assert_eq!(record["InstanceType"], "unknown");
    }
}

#[test]
fn merge_pools_runs_and_recomputes_the_statistics() {
    let _timing = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let int8 = dir.path().join("int8");
    run_ok(&["quantize", arg(test_model()), "-o", arg(&int8)]);
    let first = bench_report(&int8, &dir.path().join("1.json"), None);
    let second = bench_report(&int8, &dir.path().join("2.json"), None);
    let merged: Value = serde_json::from_str(&run_ok(&["bench", "merge", arg(&first), arg(&second)])).unwrap();
    let count = |path: &std::path::Path| -> usize {
        let report: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        report["workloads"][0]["samples_ns"].as_array().unwrap().len()
    };
    let samples = merged["workloads"][0]["samples_ns"].as_array().unwrap();
    assert_eq!(samples.len(), count(&first) + count(&second));
    assert_eq!(merged["workloads"][0]["stats"]["count"], samples.len());
    assert_eq!(merged["merged_runs"], 2);
    // Each run's median is kept for the run-level regression test.
    let median = |path: &std::path::Path| -> Value {
        let report: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        report["workloads"][0]["stats"]["p50"].clone()
    };
    assert_eq!(merged["workloads"][0]["run_medians_ns"], serde_json::json!([median(&first), median(&second)]));

    let stderr = run_err(&["bench", "merge", arg(&first), arg(&dir.path().join("missing.json"))]);
    assert!(stderr.contains("missing.json"), "{stderr}");
}

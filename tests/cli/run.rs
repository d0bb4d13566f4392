//! `qtier run` and `qtier demo`: the whole flow, its gates, and reports collected from a store.

use std::path::Path;

use crate::common::{arg, qtier, test_model};
use crate::s3_server::S3Server;

/// Flags that keep the flow's benchmark short (the tests check the flow, not the latency).
const QUICK_BENCH: [&str; 6] = ["--bench-seconds", "1", "--tail", "90", "--seq", "32"];

fn run_in(dir: &Path, args: &[&str]) -> std::process::Output {
    qtier().current_dir(dir).args(args).output().expect("the qtier binary runs")
}

fn describe(output: &std::process::Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn demo_on_a_fresh_directory_publishes_an_artifact_that_pull_verifies() {
    let cwd = tempfile::tempdir().unwrap();
    let mut args = vec!["demo"];
    args.extend(QUICK_BENCH);
    let output = run_in(cwd.path(), &args);
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in ["quantize", "eval", "bench", "recommend", "published", "HTML reports:"] {
        assert!(stdout.contains(line), "the summary has {line}:\n{stdout}");
    }
    let work = cwd.path().join("qtier-work/all-MiniLM-L6-v2-w8a8");
    for file in ["reports/bench/this-host.html", "reports/recommendation.html", "reports/eval.md", "run-summary.json"] {
        assert!(work.join(file).is_file(), "{file} is in the work directory");
    }
    // The published artifact (through the latest pointer) verifies.
    let pulled = cwd.path().join("pulled");
    let output = run_in(cwd.path(), &["pull", "qtier-artifacts/all-MiniLM-L6-v2-w8a8", arg(&pulled)]);
    assert!(output.status.success(), "{}", describe(&output));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pulled.join("qtier-manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model_name"], "all-MiniLM-L6-v2-w8a8");
    assert!(manifest["eval"]["cosine_min"].as_f64().unwrap() >= 0.99);
    assert!(pulled.join("model.safetensors").is_file() && pulled.join("reports/eval.json").is_file());

    // A second demo in the same place reuses its work directory and publishes again.
    let output = run_in(cwd.path(), &args);
    assert!(output.status.success(), "{}", describe(&output));
}

#[test]
fn run_stops_at_the_eval_gate_before_benchmarking() {
    let cwd = tempfile::tempdir().unwrap();
    let mut args = vec!["run", arg(test_model()), "--publish-to", "store", "--min-cosine", "0.99999"];
    args.extend(QUICK_BENCH);
    let output = run_in(cwd.path(), &args);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stopped at a gate: eval") && stderr.contains("0.99999"), "{stderr}");
    assert!(!cwd.path().join("store").exists(), "nothing published");
    let work = cwd.path().join("qtier-work/all-MiniLM-L6-v2");
    assert!(work.join("reports/eval.json").is_file(), "the eval report is kept for inspection");
    assert!(!work.join("reports/bench/this-host.json").exists(), "stopped before the bench");
}

#[test]
fn run_stops_when_no_tier_is_met_by_measured_figures() {
    let cwd = tempfile::tempdir().unwrap();
    let mut args = vec!["run", arg(test_model()), "--publish-to", "store"];
    args.extend(QUICK_BENCH);
    let output = run_in(cwd.path(), &args);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no service tier is met") && stderr.contains("--allow-projected"), "{stderr}");
    assert!(!cwd.path().join("store").exists(), "nothing published");

    // Overriding the gate publishes, and the manifest says why.
    let mut forced = args.clone();
    forced.extend(["--override-gates", "measured on the build host only"]);
    let output = run_in(cwd.path(), &forced);
    assert!(output.status.success(), "{}", describe(&output));
    let pulled = cwd.path().join("pulled");
    let output = run_in(cwd.path(), &["pull", "store/all-MiniLM-L6-v2", arg(&pulled)]);
    assert!(output.status.success(), "{}", describe(&output));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pulled.join("qtier-manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["forced"]["reason"], "measured on the build host only");
    assert!(manifest["forced"]["overridden"][0].as_str().unwrap().contains("no service tier"));
}

#[test]
fn recommend_reads_bench_reports_from_an_s3_prefix() {
    let server = S3Server::start();
    let scratch = tempfile::tempdir().unwrap();
    let artifact = scratch.path().join("artifact");
    crate::common::run_ok(&["quantize", arg(test_model()), "-o", arg(&artifact), "--json"]);
    let report = scratch.path().join("report.json");
    let bench = crate::common::run_ok(&[
        "bench",
        "model",
        arg(&artifact),
        "--seq",
        "32",
        "--min-seconds",
        "1",
        "--tail",
        "90",
        "--instance-type",
        "c6i.large",
        "--json",
    ]);
    std::fs::write(&report, bench).unwrap();
    // As a bench job does: upload the report under the results prefix.
    let mut upload = server.qtier();
    upload.args(["publish-report", arg(&report), &server.uri("results/run-1/c6i.large.json")]);
    upload.args(["--endpoint-url", &server.endpoint, "--path-style"]);
    let output = upload.output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));

    let mut recommend = server.qtier();
    recommend.args(["recommend", &server.uri("results/run-1"), "--model-config", arg(&artifact), "--json"]);
    recommend.args(["--endpoint-url", &server.endpoint, "--path-style"]);
    let output = recommend.output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let recommendation: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(recommendation["reports"][0]["report"], "c6i.large.json");
    assert_eq!(recommendation["reports"][0]["instance_type"], "c6i.large");

    let mut empty = server.qtier();
    empty.args(["recommend", &server.uri("results/none"), "--endpoint-url", &server.endpoint, "--path-style"]);
    let output = empty.output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no .json reports"));
}

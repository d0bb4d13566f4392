//! `--device` on `qtier bench model` and `qtier serve`: a malformed device is a usage error
//! (status 2); `--device cuda` in a build without the `cuda` feature, or on a machine without a
//! usable GPU, exits with status 1 and an error naming `--device cuda` and the reason, before a
//! server binds its port. On a GPU host with a CUDA build the same commands run on the GPU, and
//! the tests check that instead (saying so on stderr).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Bound on the wait for `qtier serve` to fail or to listen, on a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(180);

/// A short `bench model` run of the test model on `device`.
fn bench_on(device: &str) -> std::process::Output {
    let model = test_model();
    let args = ["bench", "model", arg(model), "--device", device, "--batch", "1", "--seq", "16"];
    let quick = ["--min-seconds", "0.05", "--max-seconds", "1", "--tail", "50", "--json"];
    qtier().args(args).args(quick).output().expect("the qtier binary runs")
}

/// The error of a `--device cuda` run that cannot get a GPU: names the flag and the reason,
/// never a panic.
fn assert_clear_gpu_error(stderr: &str) {
    assert!(stderr.contains("--device cuda: "), "{stderr}");
    let reasons = ["built without CUDA support", "no NVIDIA driver", "cannot open GPU"];
    assert!(reasons.iter().any(|reason| stderr.contains(reason)), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bench_model_on_cuda_without_a_gpu_is_a_clear_error() {
    let output = bench_on("cuda");
    if output.status.success() {
        let report: Value = serde_json::from_slice(&output.stdout).expect("the report is JSON");
        let gpu = &report["hardware"]["gpu"];
        assert!(gpu["compute_capability"].as_str().is_some_and(|c| c.contains('.')), "{gpu}");
        assert!(gpu["kernel_variant"].as_str().is_some_and(|k| !k.is_empty()), "{gpu}");
        eprintln!("a GPU is present: bench model ran on {}", gpu["name"]);
        return;
    }
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    assert_clear_gpu_error(&String::from_utf8_lossy(&output.stderr));
}

#[test]
fn bench_model_on_the_cpu_records_no_gpu() {
    let output = bench_on("cpu");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).expect("the report is JSON");
    assert!(report["hardware"].get("gpu").is_none(), "{}", report["hardware"]);
}

#[test]
fn a_malformed_device_is_a_usage_error() {
    for bad in ["tpu", "cuda:x", "cuda:"] {
        for command in [&["bench", "model", "no-such-model"][..], &["serve", "no-such-model"]] {
            let output = qtier().args(command).args(["--device", bad]).output().expect("the qtier binary runs");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{command:?} --device {bad}: {stderr}");
            assert!(stderr.contains("expected cpu, cuda or cuda:N"), "{stderr}");
        }
    }
}

#[test]
fn serve_on_cuda_without_a_gpu_fails_before_listening() {
    let mut child = qtier()
        .args(["serve", arg(test_model()), "--device", "cuda", "--host", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qtier serve starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut log = Vec::new();
    // Lines until stderr closes (the process ended) or the server listens (a GPU host).
    loop {
        match received.recv_timeout(PATIENCE) {
            Ok(line) if line.starts_with("listening on http://") => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("a GPU is present: serve --device cuda started ({log:?})");
                return;
            }
            Ok(line) => log.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("qtier serve --device cuda neither failed nor listened within {PATIENCE:?}: {log:?}");
            }
        }
    }
    let status = child.wait().expect("qtier serve ends");
    let stderr = log.join("\n");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_clear_gpu_error(&stderr);
}

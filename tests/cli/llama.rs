//! `qtier synth`, `qtier generate` and `qtier bench model` on a Llama-family decoder, and
//! `qtier recommend` on the decoder report.

use std::path::Path;

use crate::common::{run_err, run_ok};

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures/tiny-llama").display().to_string()
}

#[test]
fn generate_prints_the_reference_greedy_tokens() {
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&fixture()).join("reference.json")).unwrap()).unwrap();
    let expected: Vec<String> =
        reference["greedy_16"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap().to_string()).collect();
    let output = run_ok(&["generate", &fixture(), "--prompt-ids", "1,17,256,999,42,7,511,300,128,64,900,3", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&output).unwrap();
    let tokens: Vec<String> = json["tokens"].as_array().unwrap().iter().map(ToString::to_string).collect();
    assert_eq!(tokens, expected);
    assert!(json["prefill_ms"].as_f64().unwrap() > 0.0 && json["ms_per_output_token"].as_f64().unwrap() > 0.0);
    assert!(run_err(&["generate", &fixture(), "--prompt-ids", "1,x"]).contains("not a token id"));
}

#[test]
fn synth_refuses_existing_output_and_bench_reports_ttft_tpot_and_recommend_judges_them() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let model_arg = model.display().to_string();
    run_ok(&["synth", "--arch", "llama", "--preset", "tiny", "-o", &model_arg]);
    assert!(run_err(&["synth", "--arch", "llama", "--preset", "tiny", "-o", &model_arg]).contains("--force"));
    run_ok(&["synth", "--arch", "llama", "--preset", "tiny", "-o", &model_arg, "--force"]);
    let report = run_ok(&[
        "--threads",
        "2",
        "bench",
        "model",
        &model_arg,
        "--prompt-len",
        "16",
        "--gen-len",
        "8",
        "--min-seconds",
        "0.1",
        "--max-seconds",
        "0.5",
        "--instance-type",
        "c6i.large",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&report).unwrap();
    let metrics: Vec<&str> =
        json["workloads"].as_array().unwrap().iter().map(|w| w["decoder_metric"].as_str().unwrap()).collect();
    assert_eq!(metrics, ["ttft", "tpot"]);
    assert!(json["decoder"]["tpot_bound_ms"].as_f64().unwrap() > 0.0);
    let path = dir.path().join("report.json");
    std::fs::write(&path, &report).unwrap();
    let recommendation = run_ok(&["recommend", &path.display().to_string(), "--json"]);
    let json: serde_json::Value = serde_json::from_str(&recommendation).unwrap();
    let gold = &json["tiers"][0];
    let metrics: Vec<&str> =
        gold["tier"]["limit"].as_array().unwrap().iter().map(|l| l["metric"].as_str().unwrap()).collect();
    assert_eq!(metrics, ["tpot_p99"]);
    let measured = gold["candidates"].as_array().unwrap().iter().find(|c| c["instance"] == "c6i.large").unwrap();
    assert_eq!(measured["basis"], "measured");
    assert!(measured["checks"][0]["value_ms"].as_f64().unwrap() > 0.0);
}

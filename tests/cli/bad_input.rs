//! Bad input: each case fails with a message naming the file and the problem, and leaves nothing behind.

use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::common::{
    RawTensor, arg, assert_nothing_written, entries, pseudo_random, run, run_err, run_ok, write_raw_safetensors,
    write_safetensors, write_small_model,
};

/// The quantized Linear weight of the small model that the non-finite tests poison.
const QUERY: &str = "encoder.layer.0.attention.self.query";
/// The other quantized Linear weight of the small model.
const DENSE: &str = "encoder.layer.0.intermediate.dense";

/// Runs `qtier quantize <input> -o <output> <extra...>`, asserts exit status 1, an `error:`
/// message and nothing left at or beside `output`, and returns stderr.
fn quantize_err(input: &Path, output: &Path, extra: &[&str]) -> String {
    let mut args = vec!["quantize", arg(input), "-o", arg(output)];
    args.extend_from_slice(extra);
    let stderr = run_err(&args);
    assert!(stderr.starts_with("error: "), "stderr should start with `error: `:\n{stderr}");
    assert_nothing_written(output);
    stderr
}

/// Asserts that `stderr` contains every one of `needles`.
fn assert_mentions(stderr: &str, needles: &[&str]) {
    for needle in needles {
        assert!(stderr.contains(needle), "stderr should mention {needle:?}:\n{stderr}");
    }
}

/// A model directory `<root>/model` holding `model.safetensors` with the given header text and
/// data section; returns the directory and the file.
fn raw_model(root: &Path, header: &Value, data: &[u8]) -> (PathBuf, PathBuf) {
    let dir = root.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("model.safetensors");
    write_raw_safetensors(&file, &header.to_string(), data);
    (dir, file)
}

/// The tensors of the small model (as `write_small_model` writes them), the query weight's data
/// replaced by `query` (64 F32 values, as raw little-endian bytes so NaN payloads survive).
fn small_model_tensors(query: Vec<u8>) -> Vec<RawTensor> {
    assert_eq!(query.len(), 64 * 4);
    let mut query_tensor = RawTensor::f32(&format!("{QUERY}.weight"), &[8, 8], &pseudo_random(64, 2));
    query_tensor.data = query;
    vec![
        RawTensor::f32("embeddings.word_embeddings.weight", &[10, 8], &pseudo_random(80, 1)),
        query_tensor,
        RawTensor::f32(&format!("{QUERY}.bias"), &[8], &pseudo_random(8, 3)),
        RawTensor::f32("encoder.layer.0.output.LayerNorm.weight", &[8], &pseudo_random(8, 4)),
        RawTensor::f32(&format!("{DENSE}.weight"), &[16, 8], &pseudo_random(128, 5)),
    ]
}

/// The small model's query weight as little-endian bytes, with `bits` at `(row, column)`.
fn query_bytes_with(row: usize, column: usize, bits: u32) -> Vec<u8> {
    let mut values: Vec<u32> = pseudo_random(64, 2).iter().map(|v| v.to_bits()).collect();
    values[row * 8 + column] = bits;
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Reads a safetensors file: its header and its data section.
fn read_safetensors(path: &Path) -> (Map<String, Value>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    (header, bytes[8 + header_len..].to_vec())
}

/// The bytes of tensor `name` of a file read with [`read_safetensors`].
fn tensor_data<'a>(header: &Map<String, Value>, data: &'a [u8], name: &str) -> &'a [u8] {
    let offsets = &header[name]["data_offsets"];
    let (begin, end) = (offsets[0].as_u64().unwrap() as usize, offsets[1].as_u64().unwrap() as usize);
    &data[begin..end]
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn file_shorter_than_the_length_prefix_is_reported_as_truncated() {
    for length in [0usize, 3, 7] {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let file = model.join("model.safetensors");
        std::fs::write(&file, vec![1u8; length]).unwrap();
        let stderr = quantize_err(&model, &dir.path().join("out"), &[]);
        assert_mentions(&stderr, &[arg(&file), "truncated", &format!("{length} bytes")]);
    }
}

#[test]
fn file_cut_short_in_its_data_names_the_tensor_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_small_model(&model);
    let file = model.join("model.safetensors");
    let length = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(length - 100).unwrap();
    let stderr = quantize_err(&model, &dir.path().join("out"), &[]);
    // The last tensor in the data section is the intermediate dense weight.
    assert_mentions(&stderr, &[arg(&file), &format!("tensor `{DENSE}.weight`"), "outside", "truncated"]);
}

#[test]
fn header_length_larger_than_the_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let file = model.join("model.safetensors");
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&file, bytes).unwrap();
    let stderr = quantize_err(&model, &dir.path().join("out"), &[]);
    assert_mentions(&stderr, &[arg(&file), "header length 1000 is larger than the 2 bytes"]);
}

#[test]
fn header_that_is_not_json_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let file = model.join("model.safetensors");
    write_raw_safetensors(&file, "this is not JSON", &[0; 16]);
    // Given the file itself rather than its directory, the message is the same.
    let stderr = quantize_err(&file, &dir.path().join("out"), &[]);
    assert_mentions(&stderr, &[arg(&file), "header is not a JSON object"]);
}

#[test]
fn data_offsets_beyond_the_data_section_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let header = json!({
        "a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 32]},
    });
    let (model, file) = raw_model(dir.path(), &header, &[0; 24]);
    let stderr = quantize_err(&model, &dir.path().join("out"), &[]);
    assert_mentions(&stderr, &[arg(&file), "tensor `b.weight`", "[16, 32]", "outside the 24-byte data section"]);
}

#[test]
fn overlapping_data_offsets_name_both_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let header = json!({
        "first.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "second.weight": {"dtype": "F32", "shape": [1, 2], "data_offsets": [8, 16]},
    });
    let (model, file) = raw_model(dir.path(), &header, &[0; 16]);
    let stderr = quantize_err(&model, &dir.path().join("out"), &[]);
    assert_mentions(&stderr, &[arg(&file), "tensor `second.weight`", "overlap", "tensor `first.weight`"]);
}

#[test]
fn data_offsets_not_matching_dtype_and_shape_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let header = json!({"proj.weight": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 32]}});
    let (model, file) = raw_model(dir.path(), &header, &[0; 32]);
    let stderr = quantize_err(&model, &dir.path().join("out"), &[]);
    assert_mentions(&stderr, &[arg(&file), "tensor `proj.weight`", "span 32 bytes", "F32", "[3, 3]", "needs 36"]);
}

#[test]
fn unknown_dtype_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let header = json!({
        "ok.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "odd.weight": {"dtype": "F17", "shape": [1], "data_offsets": [4, 8]},
    });
    let (model, file) = raw_model(dir.path(), &header, &[0; 8]);
    let stderr = quantize_err(&model, &dir.path().join("out"), &[]);
    assert_mentions(&stderr, &[arg(&file), "tensor `odd.weight`", "unknown dtype `F17`"]);
}

#[test]
fn nan_weight_fails_naming_tensor_position_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_small_model(&model);
    let file = model.join("model.safetensors");
    write_safetensors(&file, &small_model_tensors(query_bytes_with(2, 5, f32::NAN.to_bits())));
    let stderr = quantize_err(&model, &dir.path().join("out"), &[]);
    assert_mentions(
        &stderr,
        &[arg(&file), &format!("tensor `{QUERY}.weight`"), "NaN", "row 2, column 5", "--allow-nonfinite"],
    );
}

#[test]
fn infinite_weight_fails_naming_tensor_position_and_the_flag() {
    // F32 infinities, and an F16 one (70000 overflows half precision).
    for (value, text, half) in
        [(f32::INFINITY, "(inf)", false), (f32::NEG_INFINITY, "(-inf)", false), (7e4, "(inf)", true)]
    {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        write_small_model(&model);
        let file = model.join("model.safetensors");
        // The query weight unchanged (its first value written back); the dense weight poisoned.
        let mut tensors = small_model_tensors(query_bytes_with(0, 0, pseudo_random(1, 2)[0].to_bits()));
        let mut dense = pseudo_random(128, 5);
        dense[7 * 8 + 6] = value;
        let make = if half { RawTensor::f16 } else { RawTensor::f32 };
        tensors[4] = make(&format!("{DENSE}.weight"), &[16, 8], &dense);
        write_safetensors(&file, &tensors);
        let stderr = quantize_err(&model, &dir.path().join("out"), &[]);
        assert_mentions(
            &stderr,
            &[arg(&file), &format!("tensor `{DENSE}.weight`"), text, "row 7, column 6", "--allow-nonfinite"],
        );
    }
}

#[test]
fn allow_nonfinite_keeps_the_layer_in_float_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_small_model(&model);
    // A quiet NaN with a payload: a conversion through f32 arithmetic could change it.
    let query = query_bytes_with(2, 5, 0x7fc0_1234);
    write_safetensors(&model.join("model.safetensors"), &small_model_tensors(query.clone()));
    let out = dir.path().join("out");
    run_ok(&["quantize", arg(&model), "-o", arg(&out), "--allow-nonfinite", "--json"]);

    let (header, data) = read_safetensors(&out.join("model.safetensors"));
    let weight = format!("{QUERY}.weight");
    assert_eq!(header[&weight]["dtype"], "F32");
    assert_eq!(header[&weight]["shape"], json!([8, 8]));
    assert_eq!(tensor_data(&header, &data, &weight), &query[..], "the NaN layer is copied byte for byte");
    assert!(!header.contains_key(&format!("{QUERY}.weight_scale")), "no scale for a layer kept in float");
    // The finite layer is still quantized.
    assert_eq!(header[&format!("{DENSE}.weight")]["dtype"], "I8");
    assert!(header.contains_key(&format!("{DENSE}.weight_scale")));

    let config = read_json(&out.join("config.json"));
    assert_eq!(config["quantization_config"]["ignore"], json!([QUERY]));

    let report = read_json(&out.join("qtier-quant-report.json"));
    let kept: Vec<&Value> = report["kept"].as_array().unwrap().iter().filter(|k| k["name"] == weight).collect();
    assert_eq!(kept.len(), 1, "the NaN layer is listed once under `kept`: {report:#}");
    assert_eq!(kept[0]["reason"], "non_finite");
    assert_eq!(kept[0]["detail"], "row 2, column 5");
    let layers: Vec<&str> = report["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(layers, [DENSE]);
    assert!(entries(dir.path()).iter().all(|name| !name.contains(".qtier-")));
}

#[test]
fn index_naming_a_missing_shard_names_index_and_shard() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let present = "model-00001-of-00002.safetensors";
    let missing = "model-00002-of-00002.safetensors";
    write_safetensors(&model.join(present), &[RawTensor::f32("a.weight", &[2, 2], &pseudo_random(4, 1))]);
    let index = model.join("model.safetensors.index.json");
    let index_json = json!({
        "metadata": {"total_size": 32},
        "weight_map": {"a.weight": present, "b.weight": missing},
    });
    std::fs::write(&index, index_json.to_string()).unwrap();
    std::fs::write(model.join("config.json"), "{}").unwrap();
    let stderr = quantize_err(&model, &dir.path().join("out"), &[]);
    assert_mentions(&stderr, &[arg(&index), missing, "missing"]);
}

#[test]
fn existing_output_is_refused_without_force_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_small_model(&model);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("precious.txt"), "keep me").unwrap();

    let stderr = run_err(&["quantize", arg(&model), "-o", arg(&out)]);
    assert_mentions(&stderr, &[arg(&out), "already exists", "--force"]);
    assert_eq!(entries(&out), ["precious.txt"]);
    assert_eq!(std::fs::read_to_string(out.join("precious.txt")).unwrap(), "keep me");
    assert_eq!(entries(dir.path()), ["model", "out"], "no staging directory is left");
}

#[test]
fn existing_output_is_replaced_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_small_model(&model);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("stale.txt"), "old").unwrap();

    run_ok(&["quantize", arg(&model), "-o", arg(&out), "--force", "--json"]);
    let files = entries(&out);
    assert!(!files.contains(&"stale.txt".to_string()), "the old output is gone: {files:?}");
    for expected in ["config.json", "model.safetensors", "qtier-quant-report.json"] {
        assert!(files.contains(&expected.to_string()), "{expected} missing from {files:?}");
    }
    assert_eq!(entries(dir.path()), ["model", "out"], "no staging or replaced directory is left");
}

/// Writes a checkpoint of `count` F32 `[1024, 1024]` Linear weights (4 MiB each) into `dir`,
/// streaming one block of data repeatedly.
fn write_big_model(dir: &Path, count: usize) {
    const SIDE: usize = 1024;
    let tensor_bytes = SIDE * SIDE * 4;
    std::fs::create_dir_all(dir).unwrap();
    let mut header = Map::new();
    for layer in 0..count {
        header.insert(
            format!("layers.{layer}.mlp.weight"),
            json!({"dtype": "F32", "shape": [SIDE, SIDE], "data_offsets": [layer * tensor_bytes, (layer + 1) * tensor_bytes]}),
        );
    }
    let header = serde_json::to_string(&header).unwrap();
    let block: Vec<u8> = pseudo_random(SIDE * SIDE, 11).iter().flat_map(|v| v.to_le_bytes()).collect();
    let file = std::fs::File::create(dir.join("model.safetensors")).unwrap();
    let mut writer = std::io::BufWriter::new(file);
    writer.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    writer.write_all(header.as_bytes()).unwrap();
    for _ in 0..count {
        writer.write_all(&block).unwrap();
    }
    writer.into_inner().unwrap().sync_all().unwrap();
}

#[test]
fn killed_run_leaves_no_output_and_the_next_run_removes_its_staging() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_big_model(&model, 48);
    let out = dir.path().join("out");

    let mut child = crate::common::qtier()
        .args(["quantize", arg(&model), "-o", arg(&out), "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the qtier binary starts");
    let staging = dir.path().join(format!(".out.qtier-partial-{}", child.id()));
    let started = Instant::now();
    while !staging.join("model.safetensors").exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!(
                "qtier exited ({status}) before its staging directory {} held model.safetensors; \
                 stderr: {stderr}",
                staging.display()
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{} did not appear within 60 s", staging.join("model.safetensors").display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "qtier had already exited ({status}) before it was killed: the checkpoint is too small to catch it mid-run"
    );
    assert!(!out.exists(), "a killed run must not leave {}", out.display());
    assert!(staging.is_dir(), "a killed run leaves its staging directory behind for the next run");

    run_ok(&["quantize", arg(&model), "-o", arg(&out), "--json"]);
    assert!(out.join("model.safetensors").is_file());
    let left = entries(dir.path());
    assert!(left == ["model", "out"], "the killed run's staging directory should be removed: {left:?}");
}

#[test]
fn missing_input_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model");
    let stderr = quantize_err(&missing, &dir.path().join("out"), &[]);
    assert_mentions(&stderr, &[arg(&missing), "No such file or directory"]);
}

#[test]
fn directory_without_safetensors_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("config.json"), "{}").unwrap();
    std::fs::write(model.join("pytorch_model.bin"), "not safetensors").unwrap();
    let stderr = quantize_err(&model, &dir.path().join("out"), &[]);
    assert_mentions(&stderr, &[arg(&model), "no *.safetensors file"]);
}

#[test]
fn config_that_is_not_json_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_small_model(&model);
    let config = model.join("config.json");
    std::fs::write(&config, "{\"model_type\": \"bert\",").unwrap();
    let stderr = quantize_err(&model, &dir.path().join("out"), &[]);
    assert_mentions(&stderr, &[arg(&config), "not valid JSON"]);
}

#[test]
fn already_quantized_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_small_model(&model);
    let first = dir.path().join("first");
    run_ok(&["quantize", arg(&model), "-o", arg(&first), "--json"]);
    let stderr = quantize_err(&first, &dir.path().join("second"), &[]);
    assert_mentions(&stderr, &[arg(&first.join("config.json")), "already quantized"]);
}

#[test]
fn invalid_ignore_pattern_names_the_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_small_model(&model);
    let stderr = quantize_err(&model, &dir.path().join("out"), &["--ignore", "re:("]);
    assert_mentions(&stderr, &["invalid layer pattern `re:(`"]);
}

#[test]
fn zero_threads_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_small_model(&model);
    let out = dir.path().join("out");
    let output = run(&["quantize", arg(&model), "-o", arg(&out), "--threads", "0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "--threads 0 is a usage error:\n{stderr}");
    assert_mentions(&stderr, &["--threads", "0"]);
    assert_nothing_written(&out);
}

#[test]
fn artifact_without_its_config_is_refused_as_already_quantized() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_small_model(&model);
    let first = dir.path().join("first");
    run_ok(&["quantize", arg(&model), "-o", arg(&first)]);
    let second = dir.path().join("second");
    let stderr = run_err(&["quantize", arg(&first.join("model.safetensors")), "-o", arg(&second)]);
    assert!(stderr.contains("already quantized") && stderr.contains(".weight_scale"), "{stderr}");
    assert!(stderr.contains("model.safetensors"), "{stderr}");
    assert_nothing_written(&second);
}

#[test]
fn force_onto_a_regular_file_is_refused_and_the_file_kept() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_small_model(&model);
    let target = dir.path().join("target-file");
    std::fs::write(&target, "keep me").unwrap();
    let stderr = run_err(&["quantize", arg(&model), "-o", arg(&target), "--force"]);
    assert!(stderr.contains("not a directory"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    assert!(entries(dir.path()).iter().all(|name| !name.contains(".qtier-")));
}

#[test]
fn io_errors_state_their_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = run_err(&["quantize", arg(&dir.path().join("nosuch")), "-o", arg(&dir.path().join("out"))]);
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
}

#[test]
fn failed_run_does_not_create_the_output_parent() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"short").unwrap();
    run_err(&["quantize", arg(&bad), "-o", arg(&dir.path().join("x/y/out"))]);
    assert!(!dir.path().join("x").exists());
}

#[test]
fn closed_stdout_pipe_ends_quietly_instead_of_panicking() {
    use std::process::Stdio;
    let mut child = crate::common::qtier()
        .args(["inspect", "--json", arg(crate::common::test_model())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{stderr}");
}

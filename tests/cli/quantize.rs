//! `qtier quantize` on the test model and on synthetic checkpoints.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::common::*;

/// An independently decoded safetensors tensor.
struct Decoded {
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Decodes a safetensors file from its raw bytes, without qtier's reader: 8-byte length, JSON
/// header, data section.
fn decode(path: &Path) -> BTreeMap<String, Decoded> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let data = &bytes[8 + header_len..];
    header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, entry)| {
            let offsets: Vec<usize> =
                entry["data_offsets"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let decoded = Decoded {
                dtype: entry["dtype"].as_str().unwrap().to_string(),
                shape: entry["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect(),
                data: data[offsets[0]..offsets[1]].to_vec(),
            };
            (name, decoded)
        })
        .collect()
}

/// Decodes all shards of a directory into one map.
fn decode_dir(dir: &Path) -> BTreeMap<String, Decoded> {
    entries(dir).iter().filter(|name| name.ends_with(".safetensors")).flat_map(|name| decode(&dir.join(name))).collect()
}

fn as_f32(tensor: &Decoded) -> Vec<f32> {
    match tensor.dtype.as_str() {
        "F32" => tensor.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        "F16" => {
            tensor.data.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect()
        }
        "BF16" => {
            tensor.data.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect()
        }
        other => panic!("not a float dtype: {other}"),
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The 37 Linear modules of all-MiniLM-L6-v2.
fn minilm_linear_modules() -> Vec<String> {
    let mut modules: Vec<String> = (0..6)
        .flat_map(|layer| {
            ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]
                .into_iter()
                .chain(["intermediate.dense", "output.dense"])
                .map(move |m| format!("encoder.layer.{layer}.{m}"))
        })
        .collect();
    modules.push("pooler.dense".into());
    modules.sort();
    modules
}

/// Quantizes the test model into a fresh temporary directory.
fn quantize_test_model() -> (tempfile::TempDir, std::path::PathBuf, Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("minilm-w8a8");
    let stdout = run_ok(&["quantize", arg(test_model()), "-o", arg(&out), "--json"]);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    (dir, out, report)
}

#[test]
fn minilm_quantizes_exactly_the_37_linear_layers_in_compressed_tensors_format() {
    let (_dir, out, report) = quantize_test_model();
    let input = decode(&test_model().join("model.safetensors"));
    let output = decode(&out.join("model.safetensors"));

    let mut quantized: Vec<String> =
        report["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap().to_string()).collect();
    quantized.sort();
    assert_eq!(quantized, minilm_linear_modules());
    assert_eq!(report["totals"]["layers_quantized"], 37);

    for (name, original) in &input {
        let module = name.strip_suffix(".weight");
        if let Some(module) = module.filter(|m| quantized.iter().any(|q| q == m)) {
            let weight = &output[name];
            let scale = &output[&format!("{module}.weight_scale")];
            assert_eq!((weight.dtype.as_str(), &weight.shape), ("I8", &original.shape), "{name}");
            assert_eq!((scale.dtype.as_str(), &scale.shape), ("F32", &vec![original.shape[0], 1]), "{name}");
            assert!(weight.data.iter().all(|b| *b as i8 != i8::MIN), "{name}: -128 must never be produced");
        } else {
            let copy = &output[name];
            assert_eq!((&copy.dtype, &copy.shape), (&original.dtype, &original.shape), "{name}");
            assert!(copy.data == original.data, "{name} must be bit-identical to the input");
        }
    }
    assert_eq!(output.len(), input.len() + 37, "one weight_scale per quantized layer and nothing else");
    for kept in
        ["embeddings.word_embeddings.weight", "embeddings.LayerNorm.weight", "encoder.layer.3.output.LayerNorm.bias"]
    {
        assert!(output[kept].data == input[kept].data, "{kept}");
    }

    let config = read_json(&out.join("config.json"));
    let q = &config["quantization_config"];
    assert_eq!(q["quant_method"], "compressed-tensors");
    assert_eq!(q["format"], "int-quantized");
    assert_eq!(q["quantization_status"], "compressed");
    assert_eq!(q["ignore"], serde_json::json!([]));
    let group = &q["config_groups"]["group_0"];
    assert_eq!(group["targets"], serde_json::json!(["Linear"]));
    let weights = &group["weights"];
    assert_eq!(
        (&weights["num_bits"], &weights["type"], &weights["symmetric"], &weights["strategy"], &weights["dynamic"]),
        (&8.into(), &"int".into(), &true.into(), &"channel".into(), &false.into())
    );
    let acts = &group["input_activations"];
    assert_eq!(
        (&acts["num_bits"], &acts["type"], &acts["symmetric"], &acts["strategy"], &acts["dynamic"]),
        (&8.into(), &"int".into(), &true.into(), &"token".into(), &true.into())
    );
    let original_config = read_json(&test_model().join("config.json"));
    for (key, value) in original_config.as_object().unwrap() {
        assert_eq!(&config[key], value, "config.json keeps `{key}`");
    }
    for file in ["tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json", "sentence_bert_config.json"] {
        assert_eq!(std::fs::read(out.join(file)).unwrap(), std::fs::read(test_model().join(file)).unwrap(), "{file}");
    }
    assert!(!out.join(".qtier-verified").exists(), "cache bookkeeping is not part of the artifact");
}

/// The report's sums run in f32 lanes per row (then f64); this test's in f64 throughout. Over
/// rows of at most 1536 values the f32 rounding stays far below these bounds.
const SQNR_TOLERANCE_DB: f64 = 1e-3;
/// Tolerance on relative RMSE and cosine (dimensionless ratios).
const RATIO_TOLERANCE: f64 = 1e-6;
/// Tolerance on the largest absolute error: one f32 rounding of a reconstruction near 1.
const MAX_ERROR_TOLERANCE: f64 = 1e-7;

#[test]
fn artifact_decoded_independently_matches_the_report_metrics() {
    let (_dir, out, report) = quantize_test_model();
    let input = decode(&test_model().join("model.safetensors"));
    let output = decode(&out.join("model.safetensors"));
    // The official reader accepts the artifact too (contiguous, aligned, well-formed header).
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let official = safetensors::SafeTensors::deserialize(&bytes).expect("the safetensors crate reads the artifact");
    assert_eq!(official.len(), output.len());

    let mut sqnrs = Vec::new();
    for layer in report["layers"].as_array().unwrap() {
        let module = layer["name"].as_str().unwrap();
        let original = as_f32(&input[&format!("{module}.weight")]);
        let q = &output[&format!("{module}.weight")];
        let scales = as_f32(&output[&format!("{module}.weight_scale")]);
        let columns = q.shape[1];
        let (mut signal, mut noise, mut max_error, mut cross, mut recon_energy) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for (index, (w, q)) in original.iter().zip(&q.data).enumerate() {
            let scale = scales[index / columns];
            assert!(scale > 0.0 && scale.is_finite());
            let reconstruction = f64::from(*q as i8) * f64::from(scale);
            let error = f64::from(*w) - reconstruction;
            signal += f64::from(*w).powi(2);
            noise += error * error;
            cross += f64::from(*w) * reconstruction;
            recon_energy += reconstruction * reconstruction;
            max_error = max_error.max(error.abs());
        }
        let sqnr = 10.0 * (signal / noise).log10();
        let close = |reported: &Value, expected: f64, tolerance: f64| {
            let reported = reported.as_f64().unwrap();
            assert!((reported - expected).abs() <= tolerance, "{module}: reported {reported}, decoded {expected}");
        };
        close(&layer["sqnr_db"], sqnr, SQNR_TOLERANCE_DB);
        close(&layer["relative_rmse"], (noise / signal).sqrt(), RATIO_TOLERANCE);
        close(&layer["max_abs_error"], max_error, MAX_ERROR_TOLERANCE);
        close(&layer["cosine"], cross / (signal * recon_energy).sqrt(), RATIO_TOLERANCE);
        sqnrs.push(sqnr);
    }
    sqnrs.sort_by(f64::total_cmp);
    assert!(sqnrs[0] >= 33.0, "minimum SQNR {} dB is below the 33 dB floor", sqnrs[0]);
    assert_eq!(report["totals"]["min_sqnr_layer"], "encoder.layer.0.output.dense");
    let median = report["totals"]["median_sqnr_db"].as_f64().unwrap();
    assert!((41.0..44.0).contains(&median), "median SQNR {median} dB, plain per-channel RTN gives about 42");
}

#[test]
fn sharded_input_gives_a_sharded_artifact_equal_to_the_unsharded_one() {
    let dir = tempfile::tempdir().unwrap();
    let sharded = dir.path().join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    let input = decode(&test_model().join("model.safetensors"));
    let names: Vec<&String> = input.keys().collect();
    let mut weight_map = serde_json::Map::new();
    for (shard_number, chunk) in names.chunks(names.len().div_ceil(3)).enumerate() {
        let file = format!("model-{:05}-of-00003.safetensors", shard_number + 1);
        let tensors: Vec<RawTensor> = chunk
            .iter()
            .map(|name| {
                let t = &input[name.as_str()];
                let dtype = if t.dtype == "F32" { "F32" } else { "I64" };
                RawTensor { name: name.to_string(), dtype, shape: t.shape.clone(), data: t.data.clone() }
            })
            .collect();
        write_safetensors(&sharded.join(&file), &tensors);
        for name in chunk {
            weight_map.insert(name.to_string(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 90856960}, "weight_map": weight_map});
    std::fs::write(sharded.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::copy(test_model().join("config.json"), sharded.join("config.json")).unwrap();

    let (_unsharded_dir, unsharded_out, _) = quantize_test_model();
    let sharded_out = dir.path().join("sharded-w8a8");
    run_ok(&["quantize", arg(&sharded), "-o", arg(&sharded_out)]);

    let shard_files: Vec<String> = entries(&sharded_out).into_iter().filter(|n| n.ends_with(".safetensors")).collect();
    assert_eq!(shard_files.len(), 3, "{shard_files:?}");
    let expected = decode(&unsharded_out.join("model.safetensors"));
    let actual = decode_dir(&sharded_out);
    assert_eq!(actual.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (name, tensor) in &expected {
        let other = &actual[name];
        assert_eq!((&other.dtype, &other.shape), (&tensor.dtype, &tensor.shape), "{name}");
        assert!(other.data == tensor.data, "{name} differs between sharded and unsharded artifacts");
    }
    let out_index = read_json(&sharded_out.join("model.safetensors.index.json"));
    let out_map = out_index["weight_map"].as_object().unwrap();
    assert_eq!(out_map.len(), actual.len());
    for (name, file) in out_map {
        let tensors = decode(&sharded_out.join(file.as_str().unwrap()));
        assert!(tensors.contains_key(name), "index puts {name} in {file}, which lacks it");
    }
    let total: usize = actual.values().map(|t| t.data.len()).sum();
    assert_eq!(out_index["metadata"]["total_size"], total);
}

#[test]
fn f16_and_bf16_weights_get_scales_in_their_own_dtype() {
    for dtype in ["F16", "BF16"] {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let values = pseudo_random(64 * 48, 7);
        let mut zero_row = values.clone();
        zero_row[..48].fill(0.0);
        let encode = |v: &f32| match dtype {
            "F16" => half::f16::from_f32(*v).to_le_bytes(),
            _ => half::bf16::from_f32(*v).to_le_bytes(),
        };
        let tensors = [
            RawTensor {
                name: "mlp.up_proj.weight".into(),
                dtype: dtype_name(dtype),
                shape: vec![64, 48],
                data: zero_row.iter().flat_map(encode).collect(),
            },
            RawTensor {
                name: "lm_head.weight".into(),
                dtype: dtype_name(dtype),
                shape: vec![10, 64],
                data: pseudo_random(640, 8).iter().flat_map(encode).collect(),
            },
        ];
        write_safetensors(&model.join("model.safetensors"), &tensors);
        let out = dir.path().join("out");
        run_ok(&["quantize", arg(&model), "-o", arg(&out)]);
        let output = decode(&out.join("model.safetensors"));
        let scale = &output["mlp.up_proj.weight_scale"];
        assert_eq!((scale.dtype.as_str(), &scale.shape), (dtype, &vec![64, 1]));
        let scales = as_f32(scale);
        let q = &output["mlp.up_proj.weight"];
        assert!(q.data[..48].iter().all(|b| *b == 0), "an all-zero row quantizes to zeros");
        assert!(scales.iter().all(|s| *s > 0.0 && s.is_finite()));
        // q * stored scale reconstructs within half a step (plus the scale's own rounding).
        let original = as_f32(&Decoded { dtype: dtype.into(), shape: vec![64, 48], data: tensors[0].data.clone() });
        for (index, (w, q)) in original.iter().zip(&q.data).enumerate() {
            let step = scales[index / 48];
            assert!((w - f32::from(*q as i8) * step).abs() <= step * 0.5 + w.abs() * 8e-3, "{dtype} element {index}");
        }
        assert_eq!(output["lm_head.weight"].dtype, dtype, "lm_head stays in float");
        let config = read_json(&out.join("config.json"));
        assert_eq!(config["quantization_config"]["ignore"], serde_json::json!(["lm_head"]));
    }
}

fn dtype_name(dtype: &str) -> &'static str {
    match dtype {
        "F16" => "F16",
        _ => "BF16",
    }
}

#[test]
fn ignore_and_targets_patterns_choose_layers_and_fill_the_ignore_list() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stdout = run_ok(&[
        "quantize",
        arg(test_model()),
        "-o",
        arg(&out),
        "--json",
        "--targets",
        "re:encoder\\.layer\\.[0-2]\\..*",
        "--ignore",
        "encoder.layer.*.output.dense",
    ]);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let layers: Vec<&str> = report["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(layers.len(), 3 * 4, "{layers:?}");
    assert!(layers.iter().all(|l| !l.ends_with("output.dense") || l.contains("attention")));
    let ignore = read_json(&out.join("config.json"))["quantization_config"]["ignore"].clone();
    let ignore: Vec<&str> = ignore.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(ignore.len(), 37 - 12, "every Linear kept in float is listed: {ignore:?}");
    assert!(ignore.contains(&"pooler.dense") && ignore.contains(&"encoder.layer.0.output.dense"));
    let kept = report["kept"].as_array().unwrap();
    let reason = |name: &str| kept.iter().find(|k| k["name"] == name).map(|k| k["reason"].clone());
    assert_eq!(reason("encoder.layer.0.output.dense.weight"), Some("ignored".into()));
    assert_eq!(reason("encoder.layer.4.attention.self.query.weight"), Some("not_targeted".into()));
    assert_eq!(reason("embeddings.word_embeddings.weight"), Some("embedding".into()));
    assert_eq!(reason("encoder.layer.0.output.LayerNorm.weight"), Some("norm".into()));
    assert_eq!(reason("encoder.layer.0.output.dense.bias"), Some("not_a_weight".into()));
}

#[test]
fn report_files_and_inspect_describe_the_artifact() {
    let (_dir, out, report) = quantize_test_model();
    let on_disk = read_json(&out.join("qtier-quant-report.json"));
    assert_eq!(on_disk["layers"], report["layers"]);
    assert_eq!(report["kept"].as_array().unwrap().len() + 37, 105 - 1, "every input tensor is accounted for");
    let markdown = std::fs::read_to_string(out.join("qtier-quant-report.md")).unwrap();
    assert!(markdown.contains("| `encoder.layer.0.output.dense` |"));
    assert!(markdown.contains("embeddings.word_embeddings.weight"));

    let text = run_ok(&["inspect", arg(&out)]);
    assert!(text.contains("format: compressed-tensors/int-quantized"), "{text}");
    assert!(text.contains("int8 layers: 37"), "{text}");
    let json: Value = serde_json::from_str(&run_ok(&["inspect", arg(&out), "--json"])).unwrap();
    assert_eq!(json["quantized_layers"].as_array().unwrap().len(), 37);
    assert_eq!(json["quantization_config"]["format"], "int-quantized");
    let original: Value = serde_json::from_str(&run_ok(&["inspect", arg(test_model()), "--json"])).unwrap();
    assert_eq!(original["format"], "float");
    let scale_elements: u64 =
        report["layers"].as_array().unwrap().iter().map(|l| l["shape"][0].as_u64().unwrap()).sum();
    assert_eq!(json["parameters"].as_u64().unwrap(), original["parameters"].as_u64().unwrap() + scale_elements);
}

#[test]
fn demo_reports_the_whole_flow_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let quick_bench = ["--bench-seconds", "1", "--tail", "90", "--seq", "32"];
    let output = qtier().args(["demo", "--json"]).args(quick_bench).current_dir(dir.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["layers_quantized"], 37);
    assert!(summary["eval_cosine_min"].as_f64().unwrap() >= 0.996);
    assert_eq!(summary["bench_tail_percentile"], 90.0);
    assert_eq!(summary["publish"]["model_name"], "all-MiniLM-L6-v2-w8a8");
    let version = summary["publish"]["version"].as_str().unwrap();
    let manifest = dir.path().join("qtier-artifacts/all-MiniLM-L6-v2-w8a8").join(version).join("qtier-manifest.json");
    assert!(manifest.is_file(), "{} is published", manifest.display());
}

//! The `quantization_config` that compressed-tensors (and so vLLM) reads from `config.json`.
//!
//! qtier writes the `int-quantized` format with the W8A8 scheme: per quantized Linear module
//! `<m>.weight` as I8 `[out, in]` and `<m>.weight_scale` `[out, 1]` in the model's float dtype,
//! no zero points (symmetric), and activations quantized dynamically per token at run time.

use serde_json::{Value, json};

/// `quant_method` of compressed-tensors checkpoints.
pub const QUANT_METHOD: &str = "compressed-tensors";
/// The storage format qtier writes: int8 values plus scales.
pub const FORMAT_INT_QUANTIZED: &str = "int-quantized";
/// Suffix of the per-channel scale tensor written beside each quantized weight.
pub const WEIGHT_SCALE_SUFFIX: &str = ".weight_scale";

/// Builds the `quantization_config` object for the W8A8 scheme with `ignore` naming the Linear
/// modules that stay in float.
pub fn quantization_config(ignore: &[String]) -> Value {
    json!({
        "quant_method": QUANT_METHOD,
        "format": FORMAT_INT_QUANTIZED,
        "quantization_status": "compressed",
        "ignore": ignore,
        "kv_cache_scheme": null,
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {
                    "num_bits": 8,
                    "type": "int",
                    "symmetric": true,
                    "strategy": "channel",
                    "dynamic": false,
                    "group_size": null,
                    "block_structure": null,
                    "actorder": null,
                    "observer": "minmax",
                    "observer_kwargs": {}
                },
                "input_activations": {
                    "num_bits": 8,
                    "type": "int",
                    "symmetric": true,
                    "strategy": "token",
                    "dynamic": true,
                    "group_size": null,
                    "block_structure": null,
                    "actorder": null,
                    "observer": null,
                    "observer_kwargs": {}
                },
                "output_activations": null
            }
        }
    })
}

/// True when `config` (a model's `config.json`) describes a compressed-tensors `int-quantized`
/// checkpoint.
pub fn is_int_quantized(config: &serde_json::Map<String, Value>) -> bool {
    config.get("quantization_config").is_some_and(|q| {
        q.get("quant_method").and_then(Value::as_str) == Some(QUANT_METHOD)
            && q.get("format").and_then(Value::as_str) == Some(FORMAT_INT_QUANTIZED)
    })
}

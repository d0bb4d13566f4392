//! A Llama-family `config.json`: sizes, grouped-query heads, RMSNorm epsilon and RoPE, in both
//! the published Llama 3 layout (`rope_theta` and `rope_scaling` at the top level) and the
//! transformers 5 layout (`rope_parameters` holding `rope_theta`, `rope_type` and its factors).

use std::path::Path;

use serde_json::{Map, Value};

use crate::config::read_json;
use crate::error::{ModelError, Result};

/// The `model_type`s this decoder runs (Qwen2 is Llama with q/k/v biases).
pub const DECODER_MODEL_TYPES: [&str; 2] = ["llama", "qwen2"];
/// transformers' default `rope_theta` when a config names none.
const DEFAULT_ROPE_THETA: f64 = 10_000.0;
/// transformers' default `rms_norm_eps`.
const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE (`rope_type` `default`, or no scaling).
    None,
    /// Position interpolation: every frequency divided by `factor` (`rope_type` `linear`).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's scaling (`rope_type` `llama3`): low frequencies divided by `factor`, high
    /// ones kept, a smooth blend between (transformers' `_compute_llama3_parameters`).
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pretrained with.
        original_max_position_embeddings: f64,
    },
}

/// The fields of a Llama-family `config.json` the decoder honours.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `llama` or `qwen2`.
    pub model_type: String,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of the SwiGLU block.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    pub num_attention_heads: usize,
    /// Key and value heads per layer (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Positions the model was trained for.
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// True when `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
}

impl LlamaConfig {
    /// Reads and validates `config.json` at `path`.
    pub fn read(path: &Path) -> Result<LlamaConfig> {
        let value: Value = read_json(path)?;
        Self::from_value(&value, path)
    }

    /// Parses a config object; `path` names it in errors.
    pub fn from_value(value: &Value, path: &Path) -> Result<LlamaConfig> {
        let bad = |problem: String| ModelError::InvalidConfig { path: path.to_path_buf(), problem };
        let object = value.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
        let model_type = object.get("model_type").and_then(Value::as_str).unwrap_or_default().to_string();
        if !DECODER_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                model_type,
                supported: "llama, qwen2",
            });
        }
        if let Some(act) = object.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(bad(format!("hidden_act `{act}`: the Llama decoder runs SwiGLU (`silu`) only")));
        }
        let size = |name: &str| -> Result<usize> {
            object
                .get(name)
                .and_then(Value::as_u64)
                .filter(|&n| n > 0)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("`{name}` is missing or not a positive integer")))
        };
        let hidden_size = size("hidden_size")?;
        let num_attention_heads = size("num_attention_heads")?;
        let num_key_value_heads = if object.get("num_key_value_heads").is_some_and(|v| !v.is_null()) {
            size("num_key_value_heads")?
        } else {
            num_attention_heads
        };
        let head_dim = if object.get("head_dim").is_some_and(|v| !v.is_null()) {
            size("head_dim")?
        } else {
            if !hidden_size.is_multiple_of(num_attention_heads) {
                return Err(bad(format!(
                    "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
                )));
            }
            hidden_size / num_attention_heads
        };
        if !num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(bad(format!(
                "num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
            )));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(bad(format!("head_dim {head_dim} is odd; RoPE rotates pairs")));
        }
        let number = |map: &Map<String, Value>, name: &str| map.get(name).and_then(Value::as_f64);
        // transformers 5 keeps rope_theta and the scaling in `rope_parameters`; older configs keep
        // `rope_theta` and `rope_scaling` at the top level.
        let (rope_theta, scaling) = match object.get("rope_parameters").and_then(Value::as_object) {
            Some(parameters) => (number(parameters, "rope_theta"), Some(parameters)),
            None => (number(object, "rope_theta"), object.get("rope_scaling").and_then(Value::as_object)),
        };
        let rope_theta = rope_theta.unwrap_or(DEFAULT_ROPE_THETA);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(bad(format!("rope_theta {rope_theta} must be a number above 1")));
        }
        let rope_scaling = match scaling {
            None => RopeScaling::None,
            Some(map) => {
                let kind =
                    map.get("rope_type").or_else(|| map.get("type")).and_then(Value::as_str).unwrap_or("default");
                let factor = |name: &str| -> Result<f64> {
                    number(map, name)
                        .filter(|v| v.is_finite() && *v > 0.0)
                        .ok_or_else(|| bad(format!("rope scaling `{kind}` needs a positive `{name}`")))
                };
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: factor("factor")? },
                    "llama3" => {
                        let scaling = RopeScaling::Llama3 {
                            factor: factor("factor")?,
                            low_freq_factor: factor("low_freq_factor")?,
                            high_freq_factor: factor("high_freq_factor")?,
                            original_max_position_embeddings: factor("original_max_position_embeddings")?,
                        };
                        if let RopeScaling::Llama3 { low_freq_factor, high_freq_factor, .. } = scaling
                            && high_freq_factor <= low_freq_factor
                        {
                            return Err(bad("rope scaling llama3 needs high_freq_factor > low_freq_factor".into()));
                        }
                        scaling
                    }
                    other => {
                        return Err(bad(format!(
                            "rope_type `{other}` is not supported (supported: default, linear, llama3)"
                        )));
                    }
                }
            }
        };
        let rms_norm_eps = number(object, "rms_norm_eps").unwrap_or(DEFAULT_RMS_NORM_EPS);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(bad(format!("rms_norm_eps {rms_norm_eps} must be positive")));
        }
        Ok(LlamaConfig {
            model_type,
            hidden_size,
            intermediate_size: size("intermediate_size")?,
            num_hidden_layers: size("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: size("vocab_size")?,
            max_position_embeddings: size("max_position_embeddings")?,
            rms_norm_eps,
            tie_word_embeddings: object.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            rope_theta,
            rope_scaling,
        })
    }

    /// The RoPE inverse frequencies, `head_dim / 2` of them, in f32 as transformers computes
    /// them (so rotations match its float32 forward), with the configured scaling applied.
    pub fn inverse_frequencies(&self) -> Vec<f32> {
        let dim = self.head_dim;
        let base = self.rope_theta as f32;
        (0..dim / 2)
            .map(|i| {
                let inv = 1.0 / base.powf((2 * i) as f32 / dim as f32);
                match self.rope_scaling {
                    RopeScaling::None => inv,
                    RopeScaling::Linear { factor } => inv / factor as f32,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    } => {
                        let (factor, low, high, old) = (
                            factor as f32,
                            low_freq_factor as f32,
                            high_freq_factor as f32,
                            original_max_position_embeddings as f32,
                        );
                        let wavelength = 2.0 * std::f32::consts::PI / inv;
                        if wavelength < old / high {
                            inv
                        } else if wavelength > old / low {
                            inv / factor
                        } else {
                            let smooth = (old / wavelength - low) / (high - low);
                            (1.0 - smooth) * inv / factor + smooth * inv
                        }
                    }
                }
            })
            .collect()
    }

    /// Parameters of the decoder's Linear layers (attention and SwiGLU, all layers), without
    /// embeddings and `lm_head`.
    pub fn linear_params(&self) -> u64 {
        let (h, i, d) = (self.hidden_size as u64, self.intermediate_size as u64, self.head_dim as u64);
        let (q, kv) = (self.num_attention_heads as u64 * d, self.num_key_value_heads as u64 * d);
        self.num_hidden_layers as u64 * (h * q + 2 * h * kv + q * h + 3 * h * i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
            "max_position_embeddings": 512, "rms_norm_eps": 1e-5
        })
    }

    #[test]
    fn both_rope_layouts_give_the_same_config() {
        let scaling = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let mut old = base();
        old["rope_theta"] = 500000.0.into();
        old["rope_scaling"] = scaling.clone();
        let mut new = base();
        let mut parameters = scaling;
        parameters["rope_theta"] = 500000.0.into();
        new["rope_parameters"] = parameters;
        let path = Path::new("config.json");
        let (old, new) = (LlamaConfig::from_value(&old, path).unwrap(), LlamaConfig::from_value(&new, path).unwrap());
        assert_eq!(old, new);
        assert_eq!(old.head_dim, 16);
        assert!(matches!(old.rope_scaling, RopeScaling::Llama3 { .. }));
        // The highest frequency is kept, the lowest divided by the factor.
        let plain = LlamaConfig { rope_scaling: RopeScaling::None, ..old.clone() }.inverse_frequencies();
        let scaled = old.inverse_frequencies();
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[7] - plain[7] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let path = Path::new("c.json");
        let mut yarn = base();
        yarn["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        assert!(LlamaConfig::from_value(&yarn, path).unwrap_err().to_string().contains("yarn"));
        let mut heads = base();
        heads["num_key_value_heads"] = 3.into();
        assert!(LlamaConfig::from_value(&heads, path).unwrap_err().to_string().contains("num_key_value_heads"));
        let mut bert = base();
        bert["model_type"] = "bert".into();
        assert!(matches!(LlamaConfig::from_value(&bert, path), Err(ModelError::UnsupportedArchitecture { .. })));
    }
}

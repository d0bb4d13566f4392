//! The roofline model of a BERT-family encoder forward: the FLOPs and bytes of each operation for
//! a request shape, and the time a device with given peaks needs at best.
//!
//! Per layer and token (hidden size `h`, feed-forward width `i`, sequence length `s`): the Linear
//! layers do `2 (4 h^2 + 2 h i)` operations (query, key, value and attention output are `h x h`,
//! the feed-forward pair `h x i` and `i x h`; a multiply and an add count as two), and attention
//! does `2 * 2 s h` (scores `Q K^T` and context `P V`, each `s h` multiply-adds per token).
//! Bytes are the weights read once per call (1 byte per parameter for int8 Linear, 4 for f32,
//! plus a 4-byte scale and bias per output channel) and the activations each operation reads and
//! writes in f32. Element-wise work (LayerNorm, GELU, residual adds, softmax) is counted as bytes
//! only. The time of an operation is `max(flops / compute peak, bytes / bandwidth)`; the forward's
//! is the sum. It is a lower bound: real kernels reach a fraction of it, which
//! [`crate::projection`] calibrates on measured reports.

use serde::{Deserialize, Serialize};

use crate::error::{ProfilesError, Result};

/// Bytes of an f32.
const F32_BYTES: f64 = 4.0;

/// The dimensions of a BERT-family encoder, from its `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderShape {
    /// Width of the hidden states (`h`).
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Width of the feed-forward block (`i`).
    pub intermediate_size: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Vocabulary size (the embedding table's rows).
    pub vocab_size: usize,
}

impl EncoderShape {
    /// Reads the fields from a Hugging Face `config.json`; `file` names it in errors.
    pub fn from_config_json(text: &str, file: &str) -> Result<Self> {
        let error = |problem: String| ProfilesError::ModelConfig { file: file.into(), problem };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| error(format!("not JSON: {e}")))?;
        let field = |name: &str| -> Result<usize> {
            let number = value.get(name).and_then(serde_json::Value::as_u64).filter(|&n| n > 0);
            number
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| error(format!("`{name}` is missing or not a positive integer")))
        };
        let shape = Self {
            hidden_size: field("hidden_size")?,
            num_hidden_layers: field("num_hidden_layers")?,
            intermediate_size: field("intermediate_size")?,
            num_attention_heads: field("num_attention_heads")?,
            vocab_size: field("vocab_size")?,
        };
        if !shape.hidden_size.is_multiple_of(shape.num_attention_heads) {
            return Err(error(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                shape.hidden_size, shape.num_attention_heads
            )));
        }
        Ok(shape)
    }

    /// Parameters of the encoder's Linear layers (weights only).
    pub fn linear_params(&self) -> f64 {
        let (h, i) = (self.hidden_size as f64, self.intermediate_size as f64);
        self.num_hidden_layers as f64 * (4.0 * h * h + 2.0 * h * i)
    }

    /// Operations (2 per multiply-add) of one forward over `batch` sequences of `seq` tokens.
    pub fn flops(&self, request: RequestShape) -> f64 {
        encoder_ops(self, request, true).iter().map(|op| op.flops).sum()
    }
}

/// The shape of one call: `batch` sequences of `seq` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestShape {
    /// Sequences per call.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
}

impl RequestShape {
    /// Tokens per call.
    pub fn tokens(self) -> usize {
        self.batch * self.seq
    }
}

impl std::fmt::Display for RequestShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b{}xs{}", self.batch, self.seq)
    }
}

/// Which compute peak an operation runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// A Linear layer on int8 weights and activations.
    Int8Linear,
    /// A Linear layer in float.
    FloatLinear,
    /// The attention matmuls (float on every qtier backend).
    AttentionMatmul,
    /// Memory traffic only.
    Elementwise,
}

/// One operation (summed over layers) of the forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// What it is (`ffn_up`).
    pub name: &'static str,
    /// Which peak bounds it.
    pub kind: OpKind,
    /// Operations, 2 per multiply-add.
    pub flops: f64,
    /// Bytes read and written.
    pub bytes: f64,
}

/// The operations of one encoder forward over `request`, summed over layers.
pub fn encoder_ops(shape: &EncoderShape, request: RequestShape, int8: bool) -> Vec<Op> {
    let layers = shape.num_hidden_layers as f64;
    let (h, i) = (shape.hidden_size as f64, shape.intermediate_size as f64);
    let heads = shape.num_attention_heads as f64;
    let (b, s) = (request.batch as f64, request.seq as f64);
    let t = b * s;
    let (kind, weight_bytes) = if int8 { (OpKind::Int8Linear, 1.0) } else { (OpKind::FloatLinear, F32_BYTES) };
    // A Linear `inp -> out` over t tokens: weights (+ scale and bias per output channel), the
    // f32 input read, the int8 copy of it when quantized, and the f32 output written.
    let linear = |name: &'static str, inp: f64, out: f64, count: f64| Op {
        name,
        kind,
        flops: layers * count * 2.0 * t * inp * out,
        bytes: layers
            * count
            * (inp * out * weight_bytes
                + out * F32_BYTES * if int8 { 2.0 } else { 1.0 }
                + t * inp * F32_BYTES
                + if int8 { 2.0 * t * inp } else { 0.0 }
                + t * out * F32_BYTES),
    };
    let scores_bytes = b * heads * s * s * F32_BYTES;
    vec![
        Op { name: "embeddings", kind: OpKind::Elementwise, flops: 0.0, bytes: 4.0 * t * h * F32_BYTES },
        linear("qkv", h, h, 3.0),
        Op {
            name: "attention_scores",
            kind: OpKind::AttentionMatmul,
            flops: layers * 2.0 * b * s * s * h,
            bytes: layers * (2.0 * t * h * F32_BYTES + scores_bytes),
        },
        Op { name: "softmax", kind: OpKind::Elementwise, flops: 0.0, bytes: layers * 2.0 * scores_bytes },
        Op {
            name: "attention_context",
            kind: OpKind::AttentionMatmul,
            flops: layers * 2.0 * b * s * s * h,
            bytes: layers * (scores_bytes + 2.0 * t * h * F32_BYTES),
        },
        linear("attention_output", h, h, 1.0),
        linear("ffn_up", h, i, 1.0),
        linear("ffn_down", i, h, 1.0),
        // Two LayerNorms with their residual adds (read two, write one; read, write), and GELU.
        Op {
            name: "layernorm_gelu_residual",
            kind: OpKind::Elementwise,
            flops: 0.0,
            bytes: layers * t * (2.0 * 5.0 * h + 2.0 * i) * F32_BYTES,
        },
    ]
}

/// What a device can do at best, per second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Peaks {
    /// int8 operations per second.
    pub int8_ops: f64,
    /// Float operations per second (f32 on CPUs, fp16 tensor on GPUs).
    pub float_ops: f64,
    /// Memory bytes per second.
    pub bytes: f64,
}

impl Peaks {
    /// One GPU's peaks from its datasheet figures: the dense int8 tensor peak (TOPS) for int8
    /// Linear layers, the dense fp16 tensor peak (TFLOPS) for the rest, and its memory bandwidth
    /// (GB/s).
    pub fn of_gpu(int8_tops: f64, fp16_tflops: f64, memory_bandwidth_gbps: f64) -> Peaks {
        Peaks { int8_ops: int8_tops * 1e12, float_ops: fp16_tflops * 1e12, bytes: memory_bandwidth_gbps * 1e9 }
    }
}

/// The roofline time of `ops` on a device with `peaks`, seconds.
pub fn roofline_seconds(ops: &[Op], peaks: &Peaks) -> f64 {
    ops.iter()
        .map(|op| {
            let compute = match op.kind {
                OpKind::Int8Linear => op.flops / peaks.int8_ops,
                OpKind::FloatLinear | OpKind::AttentionMatmul => op.flops / peaks.float_ops,
                OpKind::Elementwise => 0.0,
            };
            compute.max(op.bytes / peaks.bytes)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MINILM: EncoderShape = EncoderShape {
        hidden_size: 384,
        num_hidden_layers: 6,
        intermediate_size: 1536,
        num_attention_heads: 12,
        vocab_size: 30522,
    };

    #[test]
    fn flops_follow_the_issue_formula() {
        let (h, i, layers) = (384.0, 1536.0, 6.0);
        for (batch, seq) in [(1, 128), (4, 32), (32, 128)] {
            let request = RequestShape { batch, seq };
            let s = seq as f64;
            let per_token = layers * (2.0 * (4.0 * h * h + 2.0 * h * i) + 2.0 * 2.0 * s * h);
            let expected = per_token * request.tokens() as f64;
            let got = MINILM.flops(request);
            assert!((got - expected).abs() <= 1e-9 * expected, "{request}: {got} vs {expected}");
        }
        assert_eq!(MINILM.linear_params(), 6.0 * (4.0 * 384.0 * 384.0 + 2.0 * 384.0 * 1536.0));
    }

    #[test]
    fn int8_weights_are_a_quarter_of_f32_weights() {
        let request = RequestShape { batch: 1, seq: 1 };
        let weight_bytes = |int8| -> f64 {
            encoder_ops(&MINILM, request, int8)
                .iter()
                .filter(|op| matches!(op.kind, OpKind::Int8Linear | OpKind::FloatLinear))
                .map(|op| op.bytes)
                .sum()
        };
        let ratio = weight_bytes(true) / weight_bytes(false);
        // One token: weights dominate; per-channel scales and activations add a little.
        assert!((0.25..0.27).contains(&ratio), "{ratio}");
    }

    #[test]
    fn the_roofline_takes_the_slower_of_compute_and_memory() {
        let ops = [Op { name: "x", kind: OpKind::Int8Linear, flops: 1e9, bytes: 1e6 }];
        let fast_memory = Peaks { int8_ops: 1e12, float_ops: 1e11, bytes: 1e10 };
        assert!((roofline_seconds(&ops, &fast_memory) - 1e-3).abs() < 1e-12);
        let slow_memory = Peaks { bytes: 1e8, ..fast_memory };
        assert!((roofline_seconds(&ops, &slow_memory) - 1e-2).abs() < 1e-12);
    }

    #[test]
    fn config_json_fields_are_read_and_checked() {
        let text = r#"{"hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536,
                       "num_attention_heads": 12, "vocab_size": 30522, "model_type": "bert"}"#;
        assert_eq!(EncoderShape::from_config_json(text, "c.json").unwrap(), MINILM);
        let error = EncoderShape::from_config_json(&text.replace("\"vocab_size\"", "\"vocab\""), "c.json").unwrap_err();
        assert!(error.to_string().contains("vocab_size"), "{error}");
        let error = EncoderShape::from_config_json(&text.replace("384", "385"), "c.json").unwrap_err();
        assert!(error.to_string().contains("multiple"), "{error}");
    }
}

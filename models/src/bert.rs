//! The BERT-family encoder: embeddings + LayerNorm, then layers of self-attention and a GELU
//! feed-forward block, each followed by a residual add and LayerNorm (post-norm, as BERT).
//!
//! The same code runs a float checkpoint and a qtier int8 artifact: every Linear is a
//! [`Linear`], float or int8 as the checkpoint stores it, with the feed-forward activation and the
//! residual adds fused into the int8 kernel's epilogue.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use qtier_kernels::Activation;

use crate::config::{BertConfig, read_json};
use crate::error::{ModelError, Result};
use crate::linear::{Int8Options, Linear};
use crate::tokenize::TokenBatch;
use crate::weights::ModelWeights;

/// The name part of attention's fused input projection (`encoder.layer.N.attention.self.query+key+value`).
pub const FUSED_QKV: &str = "query+key+value";

/// Added to attention scores of padding positions before the softmax: large enough that their
/// weight underflows to exactly zero, small enough that no sum overflows.
const MASKED_SCORE: f32 = -1e9;

/// Called with each Linear layer's name and input during a forward pass (for per-layer error
/// measurements on real activations).
pub type LinearTap<'a> = dyn FnMut(&Linear, &Tensor) -> Result<()> + 'a;

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(weights: &ModelWeights, prefix: &str, size: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: weights.tensor(&format!("{prefix}.weight"), &[size])?,
            bias: weights.tensor(&format!("{prefix}.bias"), &[size])?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}

/// Attention's input projections: one fused layer when query, key and value are stored alike
/// (all int8 or all float), else three.
enum AttentionInput {
    Fused(Linear),
    Separate { query: Linear, key: Linear, value: Linear },
}

struct EncoderLayer {
    attention_input: AttentionInput,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A BERT-family encoder.
pub struct BertModel {
    config: BertConfig,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
}

impl std::fmt::Debug for BertModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertModel").field("config", &self.config).finish_non_exhaustive()
    }
}

impl BertModel {
    /// Loads the encoder of `dir` (`config.json` and its safetensors), float or int8.
    pub fn load(dir: &Path) -> Result<BertModel> {
        Self::load_with(dir, Int8Options::default())
    }

    /// [`load`](Self::load) with a choice of how int8 layers run.
    pub fn load_with(dir: &Path, int8: Int8Options) -> Result<BertModel> {
        let config_path = dir.join("config.json");
        let config: BertConfig = read_json(&config_path)?;
        config.validate(&config_path)?;
        let weights = ModelWeights::open(dir)?
            .with_prefix_if_present("bert.", "embeddings.word_embeddings.weight")
            .with_int8_options(int8);
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let eps = config.layer_norm_eps;
        let act = config.hidden_act.kernel_activation();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for n in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{n}");
            let [query, key, value] = ["query", "key", "value"].map(|part| format!("{p}.attention.self.{part}"));
            let fused_name = format!("{p}.attention.self.{FUSED_QKV}");
            let attention_input = match weights.fused_linear(&fused_name, &[&query, &key, &value], h, h)? {
                Some(fused) => AttentionInput::Fused(fused),
                None => AttentionInput::Separate {
                    query: weights.linear(&query, h, h, Activation::None)?,
                    key: weights.linear(&key, h, h, Activation::None)?,
                    value: weights.linear(&value, h, h, Activation::None)?,
                },
            };
            layers.push(EncoderLayer {
                attention_input,
                attention_output: weights.linear(&format!("{p}.attention.output.dense"), h, h, Activation::None)?,
                attention_norm: LayerNorm::load(&weights, &format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: weights.linear(&format!("{p}.intermediate.dense"), i, h, act)?,
                output: weights.linear(&format!("{p}.output.dense"), h, i, Activation::None)?,
                output_norm: LayerNorm::load(&weights, &format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        Ok(BertModel {
            word_embeddings: weights.tensor("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position_embeddings: weights
                .tensor("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
            token_type_embeddings: weights
                .tensor("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?,
            embedding_norm: LayerNorm::load(&weights, "embeddings.LayerNorm", h, eps)?,
            layers,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Every Linear layer, in execution order (query, key and value as one fused layer named
    /// `...attention.self.query+key+value` where they are stored alike).
    pub fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.layers.iter().flat_map(|l| {
            let inputs: Vec<&Linear> = match &l.attention_input {
                AttentionInput::Fused(fused) => vec![fused],
                AttentionInput::Separate { query, key, value } => vec![query, key, value],
            };
            inputs.into_iter().chain([&l.attention_output, &l.intermediate, &l.output])
        })
    }

    /// Token hidden states `[batch, seq, hidden]` for a tokenized batch.
    pub fn forward(&self, batch: &TokenBatch) -> Result<Tensor> {
        self.forward_with_tap(batch, &mut |_, _| Ok(()))
    }

    /// [`forward`](Self::forward), calling `tap` with each Linear layer and its input.
    pub fn forward_with_tap(&self, batch: &TokenBatch, tap: &mut LinearTap<'_>) -> Result<Tensor> {
        let (b, s, h) = (batch.batch, batch.seq, self.config.hidden_size);
        if b == 0 || s == 0 {
            return Err(ModelError::InvalidInput("empty batch".into()));
        }
        if s > self.config.max_position_embeddings {
            return Err(ModelError::InvalidInput(format!(
                "sequence of {s} tokens is longer than the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        if let Some(bad) = batch.ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(ModelError::InvalidInput(format!("token id {bad} is outside the vocabulary")));
        }
        let device = Device::Cpu;
        let ids = Tensor::from_slice(&batch.ids, b * s, &device)?;
        let type_ids = Tensor::from_slice(&batch.type_ids, b * s, &device)?;
        let positions: Vec<u32> = (0..b).flat_map(|_| 0..s as u32).collect();
        let positions = Tensor::from_vec(positions, b * s, &device)?;
        let embeddings = (self.word_embeddings.index_select(&ids, 0)?
            + self.position_embeddings.index_select(&positions, 0)?)?
        .add(&self.token_type_embeddings.index_select(&type_ids, 0)?)?;
        let mut hidden = self.embedding_norm.forward(&embeddings)?;

        // [b, 1, 1, s]: 0 for real tokens, MASKED_SCORE for padding.
        let mask = Tensor::from_slice(&batch.attention_mask, (b, 1, 1, s), &device)?.to_dtype(DType::F32)?;
        let mask_bias = ((1.0 - mask)? * f64::from(MASKED_SCORE))?;
        let heads = self.config.num_attention_heads;
        let head_dim = self.config.head_dim();
        let scale = 1.0 / (head_dim as f64).sqrt();
        for layer in &self.layers {
            let split_heads = |t: Tensor| -> Result<Tensor> {
                Ok(t.reshape((b, s, heads, head_dim))?.transpose(1, 2)?.contiguous()?)
            };
            let mut run = |linear: &Linear, input: &Tensor, residual: Option<&Tensor>| -> Result<Tensor> {
                tap(linear, input)?;
                linear.forward(input, residual)
            };
            let (q, k, v) = match &layer.attention_input {
                AttentionInput::Fused(fused) => {
                    let qkv = run(fused, &hidden, None)?;
                    (qkv.narrow(1, 0, h)?, qkv.narrow(1, h, h)?, qkv.narrow(1, 2 * h, h)?)
                }
                AttentionInput::Separate { query, key, value } => {
                    (run(query, &hidden, None)?, run(key, &hidden, None)?, run(value, &hidden, None)?)
                }
            };
            let (q, k, v) = (split_heads(q)?, split_heads(k)?, split_heads(v)?);
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&mask_bias)?;
            let probabilities = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probabilities.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b * s, h))?;
            let attended = run(&layer.attention_output, &context, Some(&hidden))?;
            let attended = layer.attention_norm.forward(&attended)?;
            let intermediate = run(&layer.intermediate, &attended, None)?;
            let output = run(&layer.output, &intermediate, Some(&attended))?;
            hidden = layer.output_norm.forward(&output)?;
        }
        Ok(hidden.reshape((b, s, h))?)
    }
}

/// Mean of `hidden` `[b, s, h]` over the positions `mask` keeps, `[b, h]`.
pub(crate) fn mean_pool(hidden: &Tensor, attention_mask: &[u32]) -> Result<Tensor> {
    let (b, s, _) = hidden.dims3()?;
    let mask = Tensor::from_slice(attention_mask, (b, s, 1), hidden.device())?.to_dtype(DType::F32)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    Ok(summed.broadcast_div(&counts)?)
}

/// L2-normalizes each row of `x` `[b, h]`.
pub(crate) fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norms = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norms)?)
}

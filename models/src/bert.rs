//! The BERT-family encoder: embeddings + LayerNorm, then layers of self-attention and a GELU
//! feed-forward block, each followed by a residual add and LayerNorm (post-norm, as BERT).
//!
//! The same code runs a float checkpoint and a qtier int8 artifact: every Linear is a
//! [`Linear`], float or int8 as the checkpoint stores it, with the feed-forward activation and the
//! residual adds fused into the int8 kernel's epilogue.

use std::path::Path;

use candle_core::{Device, Tensor};
use qtier_kernels::Activation;

use crate::attention::{AttentionShape, QkvLayout, attention};
use crate::config::{BertConfig, read_json};
use crate::error::{ModelError, Result};
use crate::linear::{Int8Options, Linear};
use crate::rows::{for_row_chunks, row_parts};
use crate::simd::Isa;
use crate::tokenize::TokenBatch;
use crate::weights::ModelWeights;

/// The name part of attention's fused input projection (`encoder.layer.N.attention.self.query+key+value`).
pub const FUSED_QKV: &str = "query+key+value";

/// Called with each Linear layer's name and input during a forward pass (for per-layer error
/// measurements on real activations).
pub type LinearTap<'a> = dyn FnMut(&Linear, &Tensor) -> Result<()> + 'a;

struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn load(weights: &ModelWeights, prefix: &str, size: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: weights.tensor(&format!("{prefix}.weight"), &[size])?.to_vec1()?,
            bias: weights.tensor(&format!("{prefix}.bias"), &[size])?.to_vec1()?,
            eps: eps as f32,
        })
    }

    /// Normalizes each row of `x` (`[rows, size]`) in place, rows split over the kernels' pool
    /// when there are enough (each row's arithmetic is the same either way).
    fn forward_in_place(&self, isa: Isa, x: &mut [f32]) {
        let size = self.weight.len();
        let parts = row_parts(x.len() / size.max(1), size);
        for_row_chunks(x, size, parts, |_, rows| {
            isa.run(
                #[inline(always)]
                |_| {
                    for row in rows.chunks_exact_mut(size) {
                        self.normalize_row(row);
                    }
                },
            );
        });
    }

    /// candle's LayerNorm arithmetic, operation for operation: one pass of sequential sums of `x`
    /// and `x^2`, the variance as `E[x^2] - mean^2`, then `(x - mean) * inv_std * w + b`. A two-pass
    /// variance in vectorized partial sums was closer to PyTorch in fp32 but moved the int8
    /// eval's mean embedding cosine by 1.3e-5 (rounding that flips per-token int8 decisions);
    /// keeping these roundings kept it within 1e-7. The sums are two dependency chains of `hidden`
    /// adds per row, a few hundred nanoseconds.
    #[inline(always)]
    fn normalize_row(&self, row: &mut [f32]) {
        let size = row.len() as f32;
        let (mut sum, mut sum_squares) = (0f32, 0f32);
        for x in row.iter() {
            sum += x;
            sum_squares += x * x;
        }
        let mean = sum / size;
        let variance = sum_squares / size - mean * mean;
        let inverse = (variance + self.eps).sqrt().recip();
        for ((x, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
            *x = (*x - mean) * inverse * w + b;
        }
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
    /// `[vocab, hidden]`, row-major.
    word_embeddings: Vec<f32>,
    /// `[max positions, hidden]`.
    position_embeddings: Vec<f32>,
    /// `[token types, hidden]`.
    token_type_embeddings: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
}

impl std::fmt::Debug for BertModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertModel").field("config", &self.config).finish_non_exhaustive()
    }
}

/// A BERT checkpoint's weights, names with or without the `bert.` prefix of `BertForMaskedLM`
/// checkpoints (probed on the word embeddings).
pub(crate) fn open_weights(dir: &Path) -> Result<ModelWeights> {
    Ok(ModelWeights::open(dir)?.with_prefix_if_present("bert.", "embeddings.word_embeddings.weight"))
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
        let weights = open_weights(dir)?.with_int8_options(int8);
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
        let table = |name: &str, rows: usize| -> Result<Vec<f32>> {
            Ok(weights.tensor(name, &[rows, h])?.flatten_all()?.to_vec1()?)
        };
        Ok(BertModel {
            word_embeddings: table("embeddings.word_embeddings.weight", config.vocab_size)?,
            position_embeddings: table("embeddings.position_embeddings.weight", config.max_position_embeddings)?,
            token_type_embeddings: table("embeddings.token_type_embeddings.weight", config.type_vocab_size)?,
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
        let hidden = self.hidden_states(batch, None)?;
        Ok(Tensor::from_vec(hidden, (batch.batch, batch.seq, self.config.hidden_size), &Device::Cpu)?)
    }

    /// [`forward`](Self::forward), calling `tap` with each Linear layer and its input.
    pub fn forward_with_tap(&self, batch: &TokenBatch, tap: &mut LinearTap<'_>) -> Result<Tensor> {
        let hidden = self.hidden_states(batch, Some(tap))?;
        Ok(Tensor::from_vec(hidden, (batch.batch, batch.seq, self.config.hidden_size), &Device::Cpu)?)
    }

    /// Token hidden states `[batch * seq, hidden]`, row-major. The whole pass works on plain
    /// buffers, allocated once per call and reused by every layer: the int8 kernels and the
    /// attention read and write them in place, and a [`Tensor`] is built only for a tap.
    pub(crate) fn hidden_states(&self, batch: &TokenBatch, mut tap: Option<&mut LinearTap<'_>>) -> Result<Vec<f32>> {
        let (b, s, h) = (batch.batch, batch.seq, self.config.hidden_size);
        self.validate(batch)?;
        let isa = Isa::selected();
        let rows = b * s;
        let mut hidden = vec![0.0f32; rows * h];
        for (t, row) in hidden.chunks_exact_mut(h).enumerate() {
            let word = &self.word_embeddings[batch.ids[t] as usize * h..][..h];
            let position = &self.position_embeddings[t % s * h..][..h];
            let token_type = &self.token_type_embeddings[batch.type_ids[t] as usize * h..][..h];
            for (((x, w), p), y) in row.iter_mut().zip(word).zip(position).zip(token_type) {
                *x = w + p + y;
            }
        }
        self.embedding_norm.forward_in_place(isa, &mut hidden);

        let shape = AttentionShape {
            batch: b,
            seq: s,
            heads: self.config.num_attention_heads,
            head_dim: self.config.head_dim(),
        };
        let layout = QkvLayout { row_stride: 3 * h, query: 0, key: h, value: 2 * h };
        let mut qkv = vec![0.0f32; rows * 3 * h];
        let mut context = vec![0.0f32; rows * h];
        let mut attended = vec![0.0f32; rows * h];
        let mut intermediate = vec![0.0f32; rows * self.config.intermediate_size];
        for layer in &self.layers {
            let mut run =
                |linear: &Linear, input: &mut [f32], residual: Option<&[f32]>, out: &mut [f32]| -> Result<()> {
                    if let Some(tap) = tap.as_mut() {
                        tap(linear, &Tensor::from_slice(input, (rows, input.len() / rows), &Device::Cpu)?)?;
                    }
                    linear.forward_into_reusing_input(input, rows, residual, out)
                };
            match &layer.attention_input {
                AttentionInput::Fused(fused) => run(fused, &mut hidden, None, &mut qkv)?,
                AttentionInput::Separate { query, key, value } => {
                    let mut part = vec![0.0f32; rows * h];
                    for (index, linear) in [query, key, value].into_iter().enumerate() {
                        run(linear, &mut hidden, None, &mut part)?;
                        for (to, from) in qkv.chunks_exact_mut(3 * h).zip(part.chunks_exact(h)) {
                            to[index * h..(index + 1) * h].copy_from_slice(from);
                        }
                    }
                }
            }
            attention(isa, &qkv, layout, &batch.attention_mask, shape, &mut context);
            run(&layer.attention_output, &mut context, Some(&hidden), &mut attended)?;
            layer.attention_norm.forward_in_place(isa, &mut attended);
            run(&layer.intermediate, &mut attended, None, &mut intermediate)?;
            run(&layer.output, &mut intermediate, Some(&attended), &mut hidden)?;
            layer.output_norm.forward_in_place(isa, &mut hidden);
        }
        Ok(hidden)
    }

    /// Checks a batch's shape and ids against the model.
    fn validate(&self, batch: &TokenBatch) -> Result<()> {
        let (b, s) = (batch.batch, batch.seq);
        if b == 0 || s == 0 {
            return Err(ModelError::InvalidInput("empty batch".into()));
        }
        if s > self.config.max_position_embeddings {
            return Err(ModelError::InvalidInput(format!(
                "sequence of {s} tokens is longer than the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let tokens = b * s;
        if [&batch.ids, &batch.type_ids, &batch.attention_mask].iter().any(|v| v.len() != tokens) {
            return Err(ModelError::InvalidInput(format!(
                "a batch of {b} x {s} tokens needs {tokens} ids, types and mask values"
            )));
        }
        if let Some(bad) = batch.ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(ModelError::InvalidInput(format!("token id {bad} is outside the vocabulary")));
        }
        if let Some(bad) = batch.type_ids.iter().find(|&&id| id as usize >= self.config.type_vocab_size) {
            return Err(ModelError::InvalidInput(format!("token type {bad} is outside the model's types")));
        }
        Ok(())
    }
}

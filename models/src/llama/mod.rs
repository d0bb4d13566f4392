//! The Llama-family decoder (Llama 2/3, Qwen2): token embeddings, then layers of RMSNorm,
//! grouped-query self-attention with rotary position embeddings and a SwiGLU block, each with a
//! residual add (pre-norm), then a final RMSNorm and `lm_head`.
//!
//! The same code runs a float checkpoint (F32, F16 or BF16 on disk, computed in f32) and a qtier
//! int8 artifact: every Linear is a [`Linear`], int8 where the checkpoint stores a
//! `weight_scale` (weights per channel, activations quantized per token on the fly). Query, key
//! and value run as one GEMM, and so do gate and up (SiLU-multiply follows on the fused output);
//! the attention output and down projections add the residual in their epilogue. `lm_head` and
//! the embeddings stay in float, as `qtier quantize` keeps them.
//!
//! Keys and values go to a [`KvCache`] preallocated for `max_seq` positions, so decoding one
//! token attends over the cache without recomputing the prompt.

pub mod config;
pub mod synth;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use qtier_kernels::{Activation, QuantizedLinear};
use qtier_quantize::Checkpoint;
use qtier_quantize::artifact::read_quantized_weight;

pub use config::{LlamaConfig, RopeScaling};

use crate::error::{ModelError, Result};
use crate::linear::{Int8Options, Linear};
use crate::weights::ModelWeights;

/// Bytes of an f32 value.
const F32_BYTES: u64 = 4;

/// A Linear layer and the bytes of weights one forward reads (its weights, scales and bias).
struct Projection {
    linear: Linear,
    weight_bytes: u64,
}

struct DecoderLayer {
    input_norm: Tensor,
    /// Query, key and value side by side.
    qkv: Projection,
    o_proj: Projection,
    post_attention_norm: Tensor,
    /// Gate and up side by side.
    gate_up: Projection,
    down: Projection,
}

/// Keys and values of every layer for up to `max_seq` positions, allocated once.
#[derive(Debug)]
pub struct KvCache {
    /// Per layer `[kv_heads, max_seq, head_dim]`.
    keys: Vec<Tensor>,
    /// Per layer `[kv_heads, max_seq, head_dim]`.
    values: Vec<Tensor>,
    len: usize,
    max_seq: usize,
}

impl KvCache {
    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it holds at most.
    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    /// Forgets every position (keeps the memory).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// The result of greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated tokens (the prompt not included).
    pub tokens: Vec<u32>,
    /// Time to first token: the prompt's forward and the choice of the first token, ns.
    pub ttft_ns: f64,
    /// Time of each later token (one forward over the cache and the choice), ns.
    pub token_ns: Vec<f64>,
}

/// A Llama-family decoder.
pub struct LlamaModel {
    config: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: Projection,
    inverse_frequencies: Vec<f32>,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Loads projections from the checkpoint of one model directory.
struct Loader<'a> {
    weights: &'a ModelWeights,
    checkpoint: &'a Checkpoint,
    int8: Int8Options,
}

impl Loader<'_> {
    /// The Linear modules `modules` (`outs[i] x in_features` each, bias when the checkpoint has
    /// `<module>.bias`) run as one layer whose output is theirs side by side: int8 when all are
    /// stored int8, else float (an int8 module among float ones is dequantized).
    fn projection(&self, name: &str, modules: &[String], outs: &[usize], in_features: usize) -> Result<Projection> {
        let total: usize = outs.iter().sum();
        let has_bias = modules.iter().any(|m| self.checkpoint.tensor(&format!("{m}.bias")).is_some());
        let bias = if has_bias {
            let mut bias = Vec::with_capacity(total);
            for (module, &out) in modules.iter().zip(outs) {
                bias.extend(self.weights.tensor(&format!("{module}.bias"), &[out])?.to_vec1::<f32>()?);
            }
            Some(bias)
        } else {
            None
        };
        let bias_bytes = if has_bias { total as u64 * F32_BYTES } else { 0 };
        if modules.iter().all(|m| self.weights.is_quantized(m)) {
            let mut values = Vec::with_capacity(total * in_features);
            let mut scales = Vec::with_capacity(total);
            for (module, &out) in modules.iter().zip(outs) {
                let weight = read_quantized_weight(self.checkpoint, module)?;
                if (weight.out_features, weight.in_features) != (out, in_features) {
                    return Err(ModelError::InvalidWeight {
                        path: self.weights.dir().to_path_buf(),
                        tensor: format!("{module}.weight"),
                        problem: format!(
                            "shape [{}, {}], expected [{out}, {in_features}]",
                            weight.out_features, weight.in_features
                        ),
                    });
                }
                values.extend_from_slice(&weight.values);
                scales.extend_from_slice(&weight.scales);
            }
            let layer = QuantizedLinear::new(&values, &scales, bias.as_deref(), total, in_features)?;
            let weight_bytes = (total * in_features) as u64 + total as u64 * F32_BYTES + bias_bytes;
            return Ok(Projection { linear: Linear::int8(name, layer, &values, &scales, self.int8), weight_bytes });
        }
        let mut parts = Vec::with_capacity(modules.len());
        for (module, &out) in modules.iter().zip(outs) {
            parts.push(if self.weights.is_quantized(module) {
                let weight = read_quantized_weight(self.checkpoint, module)?;
                let dequantized: Vec<f32> = weight
                    .values
                    .chunks_exact(in_features)
                    .zip(&weight.scales)
                    .flat_map(|(row, scale)| row.iter().map(move |&q| f32::from(q) * scale))
                    .collect();
                Tensor::from_vec(dequantized, (out, in_features), &Device::Cpu)?
            } else {
                self.weights.tensor(&format!("{module}.weight"), &[out, in_features])?
            });
        }
        let weight = if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 0)? };
        let bias = Tensor::from_vec(bias.unwrap_or_else(|| vec![0.0; total]), total, &Device::Cpu)?;
        let weight_bytes = (total * in_features) as u64 * F32_BYTES + bias_bytes;
        Ok(Projection { linear: Linear::float(name, &weight, bias, Activation::None)?, weight_bytes })
    }
}

impl LlamaModel {
    /// Loads the decoder of `dir` (`config.json` and its safetensors), float or int8.
    pub fn load(dir: &Path) -> Result<LlamaModel> {
        Self::load_with(dir, Int8Options::default())
    }

    /// [`load`](Self::load) with a choice of how int8 layers run.
    pub fn load_with(dir: &Path, int8: Int8Options) -> Result<LlamaModel> {
        let config = LlamaConfig::read(&dir.join("config.json"))?;
        let weights = ModelWeights::open(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let loader = Loader { weights: &weights, checkpoint: &checkpoint, int8 };
        let (h, i, d) = (config.hidden_size, config.intermediate_size, config.head_dim);
        let (q_out, kv_out) = (config.num_attention_heads * d, config.num_key_value_heads * d);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for n in 0..config.num_hidden_layers {
            let p = format!("model.layers.{n}");
            let attention = |part: &str| format!("{p}.self_attn.{part}");
            let mlp = |part: &str| format!("{p}.mlp.{part}");
            layers.push(DecoderLayer {
                input_norm: weights.tensor(&format!("{p}.input_layernorm.weight"), &[h])?,
                qkv: loader.projection(
                    &attention("q_proj+k_proj+v_proj"),
                    &[attention("q_proj"), attention("k_proj"), attention("v_proj")],
                    &[q_out, kv_out, kv_out],
                    h,
                )?,
                o_proj: loader.projection(&attention("o_proj"), &[attention("o_proj")], &[h], q_out)?,
                post_attention_norm: weights.tensor(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_up: loader.projection(
                    &mlp("gate_proj+up_proj"),
                    &[mlp("gate_proj"), mlp("up_proj")],
                    &[i, i],
                    h,
                )?,
                down: loader.projection(&mlp("down_proj"), &[mlp("down_proj")], &[h], i)?,
            });
        }
        let embed_tokens = weights.tensor("model.embed_tokens.weight", &[config.vocab_size, h])?;
        let lm_head = if config.tie_word_embeddings && checkpoint.tensor("lm_head.weight").is_none() {
            let bias = Tensor::zeros(config.vocab_size, DType::F32, &Device::Cpu)?;
            Projection {
                linear: Linear::float("lm_head", &embed_tokens, bias, Activation::None)?,
                weight_bytes: (config.vocab_size * h) as u64 * F32_BYTES,
            }
        } else {
            loader.projection("lm_head", &["lm_head".to_string()], &[config.vocab_size], h)?
        };
        Ok(LlamaModel {
            norm: weights.tensor("model.norm.weight", &[h])?,
            inverse_frequencies: config.inverse_frequencies(),
            embed_tokens,
            layers,
            lm_head,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Every Linear layer in execution order (query, key and value as one layer, gate and up as
    /// one), `lm_head` last.
    pub fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.layers
            .iter()
            .flat_map(|l| [&l.qkv.linear, &l.o_proj.linear, &l.gate_up.linear, &l.down.linear])
            .chain([&self.lm_head.linear])
    }

    /// True when any Linear layer runs on the int8 kernels.
    pub fn is_int8(&self) -> bool {
        self.linears().any(Linear::is_int8)
    }

    /// Bytes of weights one decoding step reads: every Linear's weights (with scales and biases)
    /// and `lm_head`; the embedding lookup reads one row and the norms are negligible. At batch
    /// 1 each is read once per token, so this over the memory bandwidth bounds the time per token.
    pub fn weight_bytes_per_token(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| l.qkv.weight_bytes + l.o_proj.weight_bytes + l.gate_up.weight_bytes + l.down.weight_bytes)
            .sum();
        layers + self.lm_head.weight_bytes
    }

    /// The weights' types as they run: `f32`, or `int8 (lm_head f32)` for an artifact.
    pub fn weight_dtype(&self) -> String {
        match (self.layers.iter().any(|l| l.qkv.linear.is_int8()), self.lm_head.linear.is_int8()) {
            (false, false) => "f32".into(),
            (true, false) => "int8 (lm_head f32)".into(),
            (_, true) => "int8".into(),
        }
    }

    /// A cache for up to `max_seq` positions (prompt and generated tokens together).
    pub fn new_cache(&self, max_seq: usize) -> Result<KvCache> {
        if max_seq == 0 || max_seq > self.config.max_position_embeddings {
            return Err(ModelError::InvalidInput(format!(
                "a cache of {max_seq} positions: must be between 1 and the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let shape = (self.config.num_key_value_heads, max_seq, self.config.head_dim);
        let zeros = || Tensor::zeros(shape, DType::F32, &Device::Cpu);
        Ok(KvCache {
            keys: (0..self.layers.len()).map(|_| zeros()).collect::<candle_core::Result<_>>()?,
            values: (0..self.layers.len()).map(|_| zeros()).collect::<candle_core::Result<_>>()?,
            len: 0,
            max_seq,
        })
    }

    /// Runs `tokens` after the cache's positions, appending their keys and values; returns the
    /// logits of the last token, `[vocab]`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        Ok(self.forward_hidden(tokens, cache, true)?.flatten_all()?.to_vec1()?)
    }

    /// Like [`forward`](Self::forward), returning the logits of every token, `[tokens, vocab]`
    /// row-major.
    pub fn forward_all(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        Ok(self.forward_hidden(tokens, cache, false)?.flatten_all()?.to_vec1()?)
    }

    /// Greedy decoding: `max_new` tokens after `prompt`, timed. `cache` is cleared first and
    /// must hold `prompt.len() + max_new - 1` positions.
    pub fn generate(&self, prompt: &[u32], max_new: usize, cache: &mut KvCache) -> Result<Generation> {
        if max_new == 0 {
            return Err(ModelError::InvalidInput("generate at least one token".into()));
        }
        cache.clear();
        let start = Instant::now();
        let mut token = argmax(&self.forward(prompt, cache)?);
        let ttft_ns = start.elapsed().as_nanos() as f64;
        let mut tokens = vec![token];
        let mut token_ns = Vec::with_capacity(max_new - 1);
        for _ in 1..max_new {
            let start = Instant::now();
            token = argmax(&self.forward(&[token], cache)?);
            token_ns.push(start.elapsed().as_nanos() as f64);
            tokens.push(token);
        }
        Ok(Generation { tokens, ttft_ns, token_ns })
    }

    /// Logits `[rows, vocab]` of the last token (`last_only`) or of every token.
    fn forward_hidden(&self, tokens: &[u32], cache: &mut KvCache, last_only: bool) -> Result<Tensor> {
        let c = &self.config;
        let s = tokens.len();
        if s == 0 {
            return Err(ModelError::InvalidInput("no tokens".into()));
        }
        if cache.len + s > cache.max_seq {
            return Err(ModelError::InvalidInput(format!(
                "{} cached + {s} new positions exceed the cache's {}",
                cache.len, cache.max_seq
            )));
        }
        if cache.keys.len() != self.layers.len() {
            return Err(ModelError::InvalidInput("the cache was made for another model".into()));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let device = Device::Cpu;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let group = heads / kv_heads;
        let start = cache.len;
        let total = start + s;
        let eps = c.rms_norm_eps as f32;
        let (cos, sin) = self.rope_tables(start, s);
        // [s, total]: 0 where a token may attend (itself and earlier positions), -inf elsewhere.
        let mask = (s > 1)
            .then(|| {
                let values: Vec<f32> = (0..s)
                    .flat_map(|i| (0..total).map(move |j| if j <= start + i { 0.0 } else { f32::NEG_INFINITY }))
                    .collect();
                Tensor::from_vec(values, (s, total), &device)
            })
            .transpose()?;
        let scale = 1.0 / (d as f64).sqrt();
        let ids = Tensor::from_slice(tokens, s, &device)?;
        let mut hidden = self.embed_tokens.index_select(&ids, 0)?;
        for (n, layer) in self.layers.iter().enumerate() {
            let x = candle_nn::ops::rms_norm(&hidden, &layer.input_norm, eps)?;
            let qkv = layer.qkv.linear.forward(&x, None)?.flatten_all()?.to_vec1::<f32>()?;
            let width = (heads + 2 * kv_heads) * d;
            let (mut q, mut k, mut v) = (
                Vec::with_capacity(s * heads * d),
                Vec::with_capacity(s * kv_heads * d),
                Vec::with_capacity(s * kv_heads * d),
            );
            for row in qkv.chunks_exact(width) {
                q.extend_from_slice(&row[..heads * d]);
                k.extend_from_slice(&row[heads * d..(heads + kv_heads) * d]);
                v.extend_from_slice(&row[(heads + kv_heads) * d..]);
            }
            apply_rope(&mut q, heads, d, &cos, &sin);
            apply_rope(&mut k, kv_heads, d, &cos, &sin);
            // Heads first: [kv_heads, group * s, d] for queries (a kv head's group of query heads
            // stacked, as transformers' repeat_kv pairs them), [kv_heads, s, d] for keys, values.
            let q = Tensor::from_vec(q, (s, heads, d), &device)?.transpose(0, 1)?.contiguous()?.reshape((
                kv_heads,
                group * s,
                d,
            ))?;
            let k = Tensor::from_vec(k, (s, kv_heads, d), &device)?.transpose(0, 1)?.contiguous()?;
            let v = Tensor::from_vec(v, (s, kv_heads, d), &device)?.transpose(0, 1)?.contiguous()?;
            cache.keys[n].slice_set(&k, 1, start)?;
            cache.values[n].slice_set(&v, 1, start)?;
            let keys = cache.keys[n].narrow(1, 0, total)?;
            let values = cache.values[n].narrow(1, 0, total)?;
            let mut scores = (q.matmul(&keys.t()?)? * scale)?;
            if let Some(mask) = &mask {
                scores = scores.reshape((kv_heads, group, s, total))?.broadcast_add(mask)?.reshape((
                    kv_heads,
                    group * s,
                    total,
                ))?;
            }
            let probabilities = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probabilities
                .matmul(&values)?
                .reshape((heads, s, d))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((s, heads * d))?;
            hidden = layer.o_proj.linear.forward(&context, Some(&hidden))?;
            let x = candle_nn::ops::rms_norm(&hidden, &layer.post_attention_norm, eps)?;
            let gate_up = layer.gate_up.linear.forward(&x, None)?;
            let i = c.intermediate_size;
            let activated = (gate_up.narrow(1, 0, i)?.silu()? * gate_up.narrow(1, i, i)?)?;
            hidden = layer.down.linear.forward(&activated, Some(&hidden))?;
        }
        cache.len = total;
        let hidden = if last_only { hidden.narrow(0, s - 1, 1)? } else { hidden };
        let x = candle_nn::ops::rms_norm(&hidden, &self.norm, eps)?;
        self.lm_head.linear.forward(&x, None)
    }

    /// cos and sin of every position's rotation angles, `[s, head_dim / 2]` each, for positions
    /// `start..start + s` (angles in f32, as transformers computes them).
    fn rope_tables(&self, start: usize, s: usize) -> (Vec<f32>, Vec<f32>) {
        let half = self.inverse_frequencies.len();
        let mut cos = Vec::with_capacity(s * half);
        let mut sin = Vec::with_capacity(s * half);
        for position in start..start + s {
            for &frequency in &self.inverse_frequencies {
                let angle = position as f32 * frequency;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        (cos, sin)
    }
}

/// Rotates each head of `x` (`[s, heads, d]` row-major) by its position's angles, pairing
/// element `i` with `i + d/2` (transformers' `rotate_half` layout).
fn apply_rope(x: &mut [f32], heads: usize, d: usize, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    for (row, (cos, sin)) in x.chunks_exact_mut(heads * d).zip(cos.chunks_exact(half).zip(sin.chunks_exact(half))) {
        for head in row.chunks_exact_mut(d) {
            let (first, second) = head.split_at_mut(half);
            for (((a, b), c), s) in first.iter_mut().zip(second.iter_mut()).zip(cos).zip(sin) {
                let (x1, x2) = (*a, *b);
                *a = x1 * c - x2 * s;
                *b = x2 * c + x1 * s;
            }
        }
    }
}

/// The index of the largest value (the first of equal ones).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

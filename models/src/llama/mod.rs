//! The Llama-family decoder (Llama 2/3, Qwen2): token embeddings, then layers of RMSNorm,
//! grouped-query self-attention with rotary position embeddings and a SwiGLU block, each with a
//! residual add (pre-norm), then a final RMSNorm and `lm_head`.
//!
//! The same code runs a float checkpoint (F32, F16 or BF16 on disk, computed in f32) and a qtier
//! int8 artifact: every Linear is a [`Linear`], int8 where the checkpoint stores a
//! `weight_scale` (weights per channel, activations quantized per token on the fly). Query, key
//! and value run as one GEMM, and so do gate and up (SiLU-multiply follows on the fused output);
//! the attention output and down projections add the residual in their epilogue. `lm_head` and
//! the embeddings stay in float, as `qtier quantize` keeps them; in an int8 artifact that stores
//! them as BF16 or F16 they also run from those 16-bit weights ([`HalfLinear`]: f32 arithmetic on
//! the exactly widened values), which halves the largest single read of a decoding step.
//!
//! Keys and values go to a [`KvCache`] preallocated for `max_seq` positions, so decoding one
//! token attends over the cache without recomputing the prompt.

pub mod config;
pub mod synth;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use qtier_kernels::{Activation, HalfLinear, HalfType, QuantizedLinear};
use qtier_quantize::Checkpoint;
use qtier_quantize::artifact::read_quantized_weight;
use qtier_quantize::dtype::Dtype;

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

/// The output projection to the vocabulary.
enum LmHead {
    /// f32 (or, in an artifact that quantized it, int8) through [`Linear`].
    Linear(Projection),
    /// The stored BF16/F16 weights of an int8 artifact (shared with the embeddings when tied).
    Half(Arc<HalfLinear>),
}

/// The token embedding table.
enum Embeddings {
    /// `[vocab, hidden]` in f32.
    F32(Tensor),
    /// The stored BF16/F16 rows, widened per lookup.
    Half(Arc<HalfLinear>),
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
    embed_tokens: Embeddings,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: LmHead,
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
    /// Tensor `name` as a [`HalfLinear`] `[n, k]`, when the checkpoint stores it as BF16 or F16.
    fn half(&self, name: &str, n: usize, k: usize) -> Result<Option<Arc<HalfLinear>>> {
        let Some(tensor) = self.checkpoint.tensor(name) else {
            return Ok(None);
        };
        let dtype = match tensor.entry.dtype {
            Dtype::BF16 => HalfType::Bf16,
            Dtype::F16 => HalfType::F16,
            _ => return Ok(None),
        };
        if tensor.entry.shape != [n, k] {
            return Err(ModelError::InvalidWeight {
                path: tensor.shard.path().to_path_buf(),
                tensor: name.to_string(),
                problem: format!("shape {:?}, expected [{n}, {k}]", tensor.entry.shape),
            });
        }
        let bits: Vec<u16> =
            tensor.shard.bytes(tensor.entry).chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        tensor.shard.release(tensor.entry.file_range.clone());
        let layer = HalfLinear::new(bits, dtype, n, k).map_err(|e| ModelError::InvalidWeight {
            path: tensor.shard.path().to_path_buf(),
            tensor: name.to_string(),
            problem: e.to_string(),
        })?;
        Ok(Some(Arc::new(layer)))
    }

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
        let vocab = config.vocab_size;
        let tied = config.tie_word_embeddings && checkpoint.tensor("lm_head.weight").is_none();
        let head_name = if tied { "model.embed_tokens.weight" } else { "lm_head.weight" };
        // An int8 artifact's float layers run from their stored 16-bit weights; a float checkpoint
        // is the f32 reference path throughout.
        let artifact = layers.iter().any(|l| l.qkv.linear.is_int8());
        let half_head =
            if artifact && !weights.is_quantized("lm_head") { loader.half(head_name, vocab, h)? } else { None };
        let half_embeddings = match (&half_head, tied, artifact) {
            (Some(head), true, _) => Some(Arc::clone(head)),
            (_, false, true) => loader.half("model.embed_tokens.weight", vocab, h)?,
            _ => None,
        };
        let embed_tokens = match half_embeddings {
            Some(table) => Embeddings::Half(table),
            None => Embeddings::F32(weights.tensor("model.embed_tokens.weight", &[vocab, h])?),
        };
        // Tied without a 16-bit head means the table is f32 (see half_embeddings).
        let lm_head = match (half_head, &embed_tokens) {
            (Some(head), _) => LmHead::Half(head),
            (None, Embeddings::F32(table)) if tied => LmHead::Linear(Projection {
                linear: Linear::float(
                    "lm_head",
                    table,
                    Tensor::zeros(vocab, DType::F32, &Device::Cpu)?,
                    Activation::None,
                )?,
                weight_bytes: (vocab * h) as u64 * F32_BYTES,
            }),
            _ => LmHead::Linear(loader.projection("lm_head", &["lm_head".to_string()], &[vocab], h)?),
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

    /// Every [`Linear`] layer in execution order (query, key and value as one layer, gate and up
    /// as one), `lm_head` last unless it runs from 16-bit weights (see [`lm_head_dtype`](Self::lm_head_dtype)).
    pub fn linears(&self) -> impl Iterator<Item = &Linear> {
        let head = match &self.lm_head {
            LmHead::Linear(projection) => Some(&projection.linear),
            LmHead::Half(_) => None,
        };
        self.layers
            .iter()
            .flat_map(|l| [&l.qkv.linear, &l.o_proj.linear, &l.gate_up.linear, &l.down.linear])
            .chain(head)
    }

    /// The type of `lm_head`'s weights as it runs: `f32`, `int8`, or the stored `bf16`/`f16`.
    pub fn lm_head_dtype(&self) -> &'static str {
        match &self.lm_head {
            LmHead::Linear(projection) if projection.linear.is_int8() => "int8",
            LmHead::Linear(_) => "f32",
            LmHead::Half(head) => match head.dtype() {
                HalfType::Bf16 => "bf16",
                HalfType::F16 => "f16",
            },
        }
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
        let head = match &self.lm_head {
            LmHead::Linear(projection) => projection.weight_bytes,
            LmHead::Half(head) => head.weight_bytes() as u64,
        };
        layers + head
    }

    /// The weights' types as they run: `f32`, or e.g. `int8 (lm_head bf16)` for an artifact.
    pub fn weight_dtype(&self) -> String {
        let head = self.lm_head_dtype();
        match (self.layers.iter().any(|l| l.qkv.linear.is_int8()), head) {
            (false, _) => head.into(),
            (true, "int8") => "int8".into(),
            (true, _) => format!("int8 (lm_head {head})"),
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
        let mut hidden = match &self.embed_tokens {
            Embeddings::F32(table) => table.index_select(&Tensor::from_slice(tokens, s, &device)?, 0)?,
            Embeddings::Half(table) => {
                let h = c.hidden_size;
                let mut rows = vec![0f32; s * h];
                for (row, &token) in rows.chunks_exact_mut(h).zip(tokens) {
                    table.row_into(token as usize, row)?;
                }
                Tensor::from_vec(rows, (s, h), &device)?
            }
        };
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
        match &self.lm_head {
            LmHead::Linear(projection) => projection.linear.forward(&x, None),
            LmHead::Half(head) => {
                let rows = x.dim(0)?;
                let input = x.flatten_all()?.to_vec1::<f32>()?;
                let mut logits = vec![0f32; rows * c.vocab_size];
                head.forward_into(&input, rows, &mut logits)?;
                Ok(Tensor::from_vec(logits, (rows, c.vocab_size), &device)?)
            }
        }
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

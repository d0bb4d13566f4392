//! Encoder ops on the GPU for a BERT-family forward (MiniLM, BERT): embeddings + LayerNorm,
//! LayerNorm (optionally fused with the next Linear's activation quantization), fused masked
//! attention, GELU, residual add and mean pooling. Row-major f32 tensors; token rows are
//! `batch * seq`, sequence-major within a batch entry.

use super::device::{Arg, CudaDevice, DeviceBuffer};
use super::error::{CudaError, checked_product, int_arg};
use super::launch::{self, ATTENTION_MAX_HEAD_DIM, ATTENTION_MAX_SEQ};
use super::linear::{NO_OUTLIER_ARGS, QuantizedActivations};
use super::source;
use crate::error::KernelError;

fn host_len(what: &'static str, v: &[f32], expected: usize) -> Result<(), CudaError> {
    if v.len() != expected {
        return Err(KernelError::ShapeMismatch { what, expected, found: v.len() }.into());
    }
    Ok(())
}

/// A LayerNorm's parameters on the device.
#[derive(Debug)]
pub struct LayerNormParams {
    gamma: DeviceBuffer<f32>,
    beta: DeviceBuffer<f32>,
    hidden: usize,
    eps: f32,
}

impl LayerNormParams {
    /// Uploads `gamma` and `beta` (`hidden` each); `eps` as in the checkpoint (BERT: 1e-12).
    pub fn new(dev: &CudaDevice, gamma: &[f32], beta: &[f32], eps: f32) -> Result<Self, CudaError> {
        let hidden = gamma.len();
        host_len("beta", beta, hidden)?;
        if hidden == 0 {
            return Err(CudaError::InvalidArgument { what: "hidden", value: 0, reason: "must be at least 1" });
        }
        Ok(LayerNormParams { gamma: dev.upload(gamma)?, beta: dev.upload(beta)?, hidden, eps })
    }

    /// Features per row.
    pub fn hidden(&self) -> usize {
        self.hidden
    }
}

/// BERT's embedding tables and their LayerNorm on the device.
#[derive(Debug)]
pub struct EmbeddingTables {
    word: DeviceBuffer<f32>,
    vocab: usize,
    position: DeviceBuffer<f32>,
    max_positions: usize,
    token_type: DeviceBuffer<f32>,
    type_vocab: usize,
    norm: LayerNormParams,
}

impl EmbeddingTables {
    /// Uploads `word` (`vocab x hidden`), `position` (`max_positions x hidden`) and
    /// `token_type` (`type_vocab x hidden`) tables; `hidden` is `norm.hidden()`.
    pub fn new(
        dev: &CudaDevice,
        word: &[f32],
        position: &[f32],
        token_type: &[f32],
        norm: LayerNormParams,
    ) -> Result<Self, CudaError> {
        let h = norm.hidden;
        let rows = |what: &'static str, t: &[f32]| -> Result<usize, CudaError> {
            if t.is_empty() || !t.len().is_multiple_of(h) {
                return Err(
                    KernelError::ShapeMismatch { what, expected: h * (t.len() / h).max(1), found: t.len() }.into()
                );
            }
            Ok(t.len() / h)
        };
        let (vocab, max_positions, type_vocab) =
            (rows("word", word)?, rows("position", position)?, rows("token_type", token_type)?);
        Ok(EmbeddingTables {
            word: dev.upload(word)?,
            vocab,
            position: dev.upload(position)?,
            max_positions,
            token_type: dev.upload(token_type)?,
            type_vocab,
            norm,
        })
    }
}

/// `out[r] = LayerNorm(word[ids[r]] + position[r % seq] + token_type[type_ids[r]])` for the
/// `batch * seq` token rows (`type_ids` absent = all 0). Ids past a table are clamped to its
/// last row.
pub fn embedding_layernorm(
    dev: &CudaDevice,
    tables: &EmbeddingTables,
    ids: &DeviceBuffer<u32>,
    type_ids: Option<&DeviceBuffer<u32>>,
    batch: usize,
    seq: usize,
    out: &mut DeviceBuffer<f32>,
) -> Result<(), CudaError> {
    if seq == 0 || seq > tables.max_positions {
        return Err(CudaError::InvalidArgument { what: "seq", value: seq, reason: "must be in 1..=max positions" });
    }
    let rows = checked_product("batch", batch, seq)?;
    let h = tables.norm.hidden;
    dev.check("ids", ids, rows)?;
    if let Some(t) = type_ids {
        dev.check("type_ids", t, rows)?;
    }
    dev.check("out", out, checked_product("rows", rows, h)?)?;
    let n = &tables.norm;
    dev.launch(
        source::EMBEDDING_LAYERNORM,
        launch::row_dims(rows)?,
        &[
            ids.arg(),
            type_ids.map_or(Arg::Ptr(0), DeviceBuffer::arg),
            Arg::I32(int_arg("seq", seq)?),
            tables.word.arg(),
            Arg::I32(int_arg("vocab", tables.vocab)?),
            tables.position.arg(),
            tables.token_type.arg(),
            Arg::I32(int_arg("type_vocab", tables.type_vocab)?),
            n.gamma.arg(),
            n.beta.arg(),
            Arg::F32(n.eps),
            Arg::I32(int_arg("hidden", h)?),
            out.arg(),
        ],
    )
}

/// `LayerNorm(x + residual)` over `rows` rows of `norm.hidden()` features, written to `out`
/// (f32) and/or quantized per token into `quantized` (the next Linear's input, sized for
/// `rows x hidden`): the fused LayerNorm -> quantization of a BERT block. At least one output.
pub fn layernorm(
    dev: &CudaDevice,
    x: &DeviceBuffer<f32>,
    residual: Option<&DeviceBuffer<f32>>,
    norm: &LayerNormParams,
    rows: usize,
    out: Option<&mut DeviceBuffer<f32>>,
    quantized: Option<&mut QuantizedActivations>,
) -> Result<(), CudaError> {
    let h = norm.hidden;
    let len = checked_product("rows", rows, h)?;
    dev.check("x", x, len)?;
    if let Some(r) = residual {
        dev.check("residual", r, len)?;
    }
    if out.is_none() && quantized.is_none() {
        return Err(CudaError::InvalidArgument {
            what: "outputs",
            value: 0,
            reason: "layernorm needs out or quantized",
        });
    }
    let y = match out {
        Some(o) => {
            dev.check("out", o, len)?;
            o.arg()
        }
        None => Arg::Ptr(0),
    };
    let (q, scales, kp, outlier_args) = match quantized {
        Some(qa) => {
            if qa.k() != h || qa.rows() < rows {
                return Err(
                    KernelError::ShapeMismatch { what: "quantized", expected: len, found: qa.rows() * qa.k() }.into()
                );
            }
            qa.check(dev)?;
            let kp = qa.k_padded();
            let (q, s) = qa.args_mut();
            (q, s, kp, qa.outlier_args_mut())
        }
        None => (Arg::Ptr(0), Arg::Ptr(0), h, NO_OUTLIER_ARGS),
    };
    let args = [
        x.arg(),
        residual.map_or(Arg::Ptr(0), DeviceBuffer::arg),
        norm.gamma.arg(),
        norm.beta.arg(),
        Arg::F32(norm.eps),
        Arg::I32(int_arg("hidden", h)?),
        y,
        q,
        Arg::I32(int_arg("k_padded", kp)?),
        scales,
    ];
    let args: Vec<Arg> = args.into_iter().chain(outlier_args).collect();
    dev.launch(source::LAYERNORM_ROWS, launch::row_dims(rows)?, &args)
}

/// Shape of a multi-head attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence (at most [`ATTENTION_MAX_SEQ`]).
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Features per head (a multiple of 4, at most [`ATTENTION_MAX_HEAD_DIM`]).
    pub head_dim: usize,
}

impl AttentionShape {
    /// Checks the limits of the fused kernel.
    pub fn validate(&self) -> Result<(), CudaError> {
        let bad = |what, value, reason| Err(CudaError::InvalidArgument { what, value, reason });
        if self.seq == 0 || self.seq > ATTENTION_MAX_SEQ {
            return bad("seq", self.seq, "the fused attention kernel handles 1..=512 tokens");
        }
        if self.head_dim == 0 || self.head_dim > ATTENTION_MAX_HEAD_DIM || !self.head_dim.is_multiple_of(4) {
            return bad("head_dim", self.head_dim, "must be a multiple of 4 in 4..=128");
        }
        if self.batch == 0 || self.heads == 0 {
            return bad("batch/heads", 0, "must be at least 1");
        }
        Ok(())
    }

    /// Token rows (`batch * seq`).
    pub fn rows(&self) -> usize {
        self.batch * self.seq
    }

    /// `heads * head_dim`.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// `out = softmax(Q K^T / sqrt(head_dim) + mask) V` per head, fused (scores never leave the
/// SM). `qkv`: `rows x 3 hidden` (q | k | v, the fused QKV projection); `mask`: `batch x seq`,
/// nonzero = attend (absent: attend everywhere); `out`: `rows x hidden`. A query whose keys
/// are all masked gets zeros.
pub fn attention(
    dev: &CudaDevice,
    qkv: &DeviceBuffer<f32>,
    mask: Option<&DeviceBuffer<i32>>,
    shape: AttentionShape,
    out: &mut DeviceBuffer<f32>,
) -> Result<(), CudaError> {
    shape.validate()?;
    let rows = checked_product("batch", shape.batch, shape.seq)?;
    let hidden = checked_product("heads", shape.heads, shape.head_dim)?;
    dev.check("qkv", qkv, checked_product("rows", rows, 3 * hidden)?)?;
    if let Some(m) = mask {
        dev.check("mask", m, rows)?;
    }
    dev.check("out", out, checked_product("rows", rows, hidden)?)?;
    int_arg("rows x 3 hidden", rows * 3 * hidden)?;
    dev.launch(
        source::ATTENTION,
        launch::attention_dims(shape.batch, shape.seq, shape.heads)?,
        &[
            qkv.arg(),
            mask.map_or(Arg::Ptr(0), DeviceBuffer::arg),
            Arg::I32(int_arg("seq", shape.seq)?),
            Arg::I32(int_arg("heads", shape.heads)?),
            Arg::I32(int_arg("head_dim", shape.head_dim)?),
            Arg::F32(1.0 / (shape.head_dim as f32).sqrt()),
            out.arg(),
        ],
    )
}

/// `x[..len] = gelu_erf(x[..len])` in place.
pub fn gelu_erf_in_place(dev: &CudaDevice, x: &mut DeviceBuffer<f32>, len: usize) -> Result<(), CudaError> {
    dev.check("x", x, len)?;
    if len == 0 {
        return Ok(());
    }
    dev.launch(source::GELU_ERF, launch::elementwise_dims(len)?, &[x.arg(), Arg::I64(len as i64)])
}

/// `x[..len] += r[..len]` in place.
pub fn residual_add_in_place(
    dev: &CudaDevice,
    x: &mut DeviceBuffer<f32>,
    r: &DeviceBuffer<f32>,
    len: usize,
) -> Result<(), CudaError> {
    dev.check("x", x, len)?;
    dev.check("residual", r, len)?;
    if len == 0 {
        return Ok(());
    }
    dev.launch(source::RESIDUAL_ADD, launch::elementwise_dims(len)?, &[x.arg(), r.arg(), Arg::I64(len as i64)])
}

/// Sentence embeddings: `out[b] = sum_s mask[b][s] x[b][s] / max(sum_s mask[b][s], 1e-9)`
/// (sentence-transformers' mean pooling) for `x` of `batch x seq x hidden`; `out`:
/// `batch x hidden`.
pub fn mean_pool(
    dev: &CudaDevice,
    x: &DeviceBuffer<f32>,
    mask: Option<&DeviceBuffer<i32>>,
    batch: usize,
    seq: usize,
    hidden: usize,
    out: &mut DeviceBuffer<f32>,
) -> Result<(), CudaError> {
    let rows = checked_product("batch", batch, seq)?;
    dev.check("x", x, checked_product("rows", rows, hidden)?)?;
    if let Some(m) = mask {
        dev.check("mask", m, rows)?;
    }
    dev.check("out", out, checked_product("batch", batch, hidden)?)?;
    dev.launch(
        source::MEAN_POOL,
        launch::mean_pool_dims(batch, hidden)?,
        &[
            x.arg(),
            mask.map_or(Arg::Ptr(0), DeviceBuffer::arg),
            Arg::I32(int_arg("seq", seq)?),
            Arg::I32(int_arg("hidden", hidden)?),
            out.arg(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_shape_limits() {
        let ok = AttentionShape { batch: 2, seq: 128, heads: 12, head_dim: 32 };
        assert!(ok.validate().is_ok());
        assert_eq!((ok.rows(), ok.hidden()), (256, 384));
        assert!(AttentionShape { seq: 513, ..ok }.validate().is_err());
        assert!(AttentionShape { seq: 0, ..ok }.validate().is_err());
        assert!(AttentionShape { head_dim: 30, ..ok }.validate().is_err());
        assert!(AttentionShape { head_dim: 132, ..ok }.validate().is_err());
        assert!(AttentionShape { heads: 0, ..ok }.validate().is_err());
    }
}

//! One Linear layer, float (candle matmul) or int8 (qtier's fused kernel), with the same epilogue:
//! bias, activation, optional residual.

use candle_core::{Device, Tensor};
use qtier_kernels::{Activation, QuantizedLinear};

use crate::error::Result;

/// How int8 layers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int8Options {
    /// Take a token's outlier values (magnitude above [`OUTLIER_RATIO`] times the token's RMS)
    /// out of the int8 GEMM and add their contribution in float from the dequantized weights,
    /// as LLM.int8() (Dettmers et al., 2022) does for outlier features. The artifact is
    /// unchanged; only qtier's runtime is more accurate than plain per-token W8A8. On
    /// all-MiniLM-L6-v2 it lifts the minimum embedding cosine to fp32 on the development
    /// sentences from 0.9818 to 0.9970 (the [CLS] token carries one channel ~30x larger than its
    /// median, which plain per-token quantization lets swamp every other channel).
    pub outlier_decomposition: bool,
}

impl Default for Int8Options {
    fn default() -> Self {
        Int8Options { outlier_decomposition: true }
    }
}

/// The weights behind a [`Linear`].
#[derive(Debug, Clone)]
enum LinearKind {
    /// `x @ weight^T + bias` in f32; `weight` is `[out, in]`, contiguous, as checkpoints store
    /// it. The matmul reads it through a transposed view: measured with candle 0.11 on 2 threads,
    /// that is 20-35% faster than a contiguous `[in, out]` copy at one row (1x2048 @ 128256 lm_head:
    /// 30.1 vs 38.4 ms; 1x2048 @ 8192: 1.7 vs 2.6 ms) and within noise at 128 to 4096 rows.
    Float { weight: Tensor, bias: Tensor },
    /// The fused int8 kernel (bias and activation inside).
    Int8(Box<Int8Weights>),
}

/// An int8 layer: the fused kernel, plus what the outlier decomposition needs.
#[derive(Debug, Clone)]
struct Int8Weights {
    /// The kernel with the layer's activation fused.
    fused: QuantizedLinear,
    /// `[in, out]`: the int8 weight transposed, so an outlier input channel `j` reads one
    /// contiguous row (one byte per weight, not four).
    weights_t: Vec<i8>,
    /// Per output channel scales.
    scales: Vec<f32>,
}

/// A Linear layer `act(x W^T + b)`, optionally plus a residual.
#[derive(Debug, Clone)]
pub struct Linear {
    name: String,
    kind: LinearKind,
    activation: Activation,
    out_features: usize,
    outlier_decomposition: bool,
}

impl Linear {
    /// A float layer from `weight` `[out, in]` and `bias` `[out]`.
    pub fn float(name: &str, weight: &Tensor, bias: Tensor, activation: Activation) -> Result<Linear> {
        let out_features = weight.dim(0)?;
        let weight = weight.contiguous()?;
        Ok(Linear {
            name: name.to_string(),
            kind: LinearKind::Float { weight, bias },
            activation,
            out_features,
            outlier_decomposition: false,
        })
    }

    /// An int8 layer from the kernel (activation fused) and its int8 weights `[out, in]` and
    /// per-row scales; `outlier_decomposition` as in [`Int8Options`].
    pub fn int8(name: &str, layer: QuantizedLinear, weights: &[i8], scales: &[f32], options: Int8Options) -> Linear {
        let (n, k) = (layer.n(), layer.k());
        let mut weights_t = vec![0i8; n * k];
        for (row, values) in weights.chunks_exact(k).enumerate() {
            for (column, value) in values.iter().enumerate() {
                weights_t[column * n + row] = *value;
            }
        }
        Linear {
            name: name.to_string(),
            activation: layer.activation(),
            out_features: n,
            outlier_decomposition: options.outlier_decomposition,
            kind: LinearKind::Int8(Box::new(Int8Weights { fused: layer, weights_t, scales: scales.to_vec() })),
        }
    }

    /// The module's name in the checkpoint.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when the layer runs on the int8 kernel.
    pub fn is_int8(&self) -> bool {
        matches!(self.kind, LinearKind::Int8(_))
    }

    /// The int8 kernel variant, for an int8 layer.
    pub fn kernel(&self) -> Option<qtier_kernels::KernelKind> {
        match &self.kind {
            LinearKind::Int8(layer) => Some(layer.fused.kernel()),
            LinearKind::Float { .. } => None,
        }
    }

    /// `act(x W^T + b) (+ residual)` for `x` `[rows, in]`; returns `[rows, out]`.
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        match &self.kind {
            LinearKind::Float { weight, bias } => {
                let y = x.matmul(&weight.t()?)?.broadcast_add(bias)?;
                let y = match self.activation {
                    Activation::GeluErf => y.gelu_erf()?,
                    Activation::GeluTanh => y.gelu()?,
                    Activation::Relu => y.relu()?,
                    Activation::Silu => y.silu()?,
                    _ => y,
                };
                Ok(match residual {
                    Some(residual) => (y + residual)?,
                    None => y,
                })
            }
            LinearKind::Int8(layer) => {
                let rows = x.dim(0)?;
                let x = x.contiguous()?;
                let residual = residual.map(Tensor::contiguous).transpose()?;
                let output = with_f32_slice(&x, |input| match &residual {
                    Some(residual) => {
                        with_f32_slice(residual, |residual| self.forward_int8(layer, input, rows, Some(residual)))
                    }
                    None => self.forward_int8(layer, input, rows, None),
                })?;
                Ok(Tensor::from_vec(output, (rows, self.out_features), &Device::Cpu)?)
            }
        }
    }

    /// The int8 path with outlier decomposition. Each token's outlier values are zeroed before
    /// the int8 GEMM (so its per-token scale is set by the ordinary values) and their
    /// contribution, `value * dequantized weight column`, is added in float. Without an
    /// activation that contribution can be added after the fused kernel (bias and residual
    /// commute with it); with one, the tokens that have outliers run without the fused
    /// activation, get the contribution, and then the activation.
    fn forward_int8(
        &self,
        layer: &Int8Weights,
        input: &[f32],
        rows: usize,
        residual: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let (n, k) = (self.out_features, layer.fused.k());
        let mut output = vec![0.0f32; rows * n];
        // Per token, the outliers taken out: (row, channel, value).
        let mut outliers: Vec<(usize, usize, f32)> = Vec::new();
        if self.outlier_decomposition {
            for (m, row) in input.chunks_exact(k).enumerate() {
                outliers.extend(outlier_channels(row).into_iter().map(|j| (m, j, row[j])));
            }
        }
        // The input with the outliers zeroed; copied only when there are some.
        let zeroed: Option<Vec<f32>> = (!outliers.is_empty()).then(|| {
            let mut copy = input.to_vec();
            for &(m, j, _) in &outliers {
                copy[m * k + j] = 0.0;
            }
            copy
        });
        let input = zeroed.as_deref().unwrap_or(input);
        let add_outliers = |output: &mut [f32], row_of: &dyn Fn(usize) -> usize| {
            for &(m, j, value) in &outliers {
                let start = row_of(m) * n;
                let column = &layer.weights_t[j * n..(j + 1) * n];
                for ((y, q), scale) in output[start..start + n].iter_mut().zip(column).zip(&layer.scales) {
                    *y += value * (f32::from(*q) * scale);
                }
            }
        };
        if outliers.is_empty() || self.activation == Activation::None {
            layer.fused.forward_into(input, rows, &mut output, residual)?;
            add_outliers(&mut output, &|m| m);
            return Ok(output);
        }

        let mut dirty = vec![false; rows];
        for &(m, _, _) in &outliers {
            dirty[m] = true;
        }
        let dirty_rows: Vec<usize> = (0..rows).filter(|&m| dirty[m]).collect();
        let clean_rows: Vec<usize> = (0..rows).filter(|&m| !dirty[m]).collect();
        let gather = |values: &[f32], width: usize, rows: &[usize]| -> Vec<f32> {
            let mut gathered = Vec::with_capacity(rows.len() * width);
            for &m in rows {
                gathered.extend_from_slice(&values[m * width..(m + 1) * width]);
            }
            gathered
        };
        if !clean_rows.is_empty() {
            let clean_residual = residual.map(|r| gather(r, n, &clean_rows));
            let mut clean_output = vec![0.0f32; clean_rows.len() * n];
            layer.fused.forward_into(
                &gather(input, k, &clean_rows),
                clean_rows.len(),
                &mut clean_output,
                clean_residual.as_deref(),
            )?;
            for (row, &m) in clean_output.chunks_exact(n).zip(&clean_rows) {
                output[m * n..(m + 1) * n].copy_from_slice(row);
            }
        }
        let mut dirty_output = vec![0.0f32; dirty_rows.len() * n];
        layer.fused.forward_into_with_activation(
            &gather(input, k, &dirty_rows),
            dirty_rows.len(),
            &mut dirty_output,
            None,
            Activation::None,
        )?;
        let mut position = vec![0usize; rows];
        for (index, &m) in dirty_rows.iter().enumerate() {
            position[m] = index;
        }
        add_outliers(&mut dirty_output, &|m| position[m]);
        qtier_kernels::activation::apply_in_place(self.activation, &mut dirty_output);
        for (row, &m) in dirty_output.chunks_exact(n).zip(&dirty_rows) {
            let out_row = &mut output[m * n..(m + 1) * n];
            out_row.copy_from_slice(row);
            if let Some(residual) = residual {
                for (y, r) in out_row.iter_mut().zip(&residual[m * n..(m + 1) * n]) {
                    *y += r;
                }
            }
        }
        Ok(output)
    }
}

/// Calls `f` with the f32 values of a contiguous CPU tensor, without copying them.
fn with_f32_slice<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg("int8 layers run on CPU tensors".into()).into());
    };
    let values = cpu.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("int8 layer input is not contiguous".into()))?;
    f(&values[start..end])
}

/// A value is an outlier of its token when its magnitude exceeds this multiple of the token's
/// root-mean-square value. Measured on all-MiniLM-L6-v2 (dev / held-out sentences, min cosine):
/// 8 -> 0.9955 / 0.9991, 6 -> 0.9953 / 0.9992, 4 -> 0.9961 / 0.9992, 3 -> 0.9968 / 0.9993.
pub const OUTLIER_RATIO: f32 = 3.0;
/// Only tokens whose largest magnitude exceeds this multiple of their RMS get the decomposition
/// (BERT's [CLS] and [SEP] tokens, ~18x): ordinary tokens, whose maximum is a few RMS, lose little
/// to per-token quantization and skip the float work. Measured on all-MiniLM-L6-v2 (dev / held-out
/// min cosine, with OUTLIER_RATIO 3): trigger 6 -> 0.99664 / 0.99927, 8 -> 0.99695 / 0.99923,
/// 10 -> 0.99613 / 0.99901; at batch 32 x 128 the int8 forward took 534 ms without a trigger
/// and about 415 ms with trigger 8.
pub const OUTLIER_TRIGGER_RATIO: f32 = 8.0;
/// At most this many outlier channels per token are taken out of the int8 GEMM (bounds the float
/// work; BERT's outliers are a handful of fixed channels).
pub const MAX_OUTLIER_CHANNELS: usize = 16;

/// Lanes of the per-token reductions below, so they vectorize.
const LANES: usize = 8;

/// Channels of one token `row` whose magnitude exceeds OUTLIER_RATIO times the row's RMS,
/// largest first, at most MAX_OUTLIER_CHANNELS. Most tokens have none: two vectorized passes
/// (sum of squares, maximum) decide that without allocating.
fn outlier_channels(row: &[f32]) -> Vec<usize> {
    let mut squares = [0.0f32; LANES];
    let mut peaks = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    for (lane, value) in chunks.remainder().iter().enumerate() {
        squares[lane] += value * value;
        peaks[lane] = peaks[lane].max(value.abs());
    }
    for chunk in chunks {
        for lane in 0..LANES {
            squares[lane] += chunk[lane] * chunk[lane];
            peaks[lane] = peaks[lane].max(chunk[lane].abs());
        }
    }
    let mean_square = squares.iter().sum::<f32>() / row.len().max(1) as f32;
    let rms = mean_square.sqrt();
    if peaks.iter().all(|peak| *peak <= rms * OUTLIER_TRIGGER_RATIO) {
        return Vec::new();
    }
    let threshold = rms * OUTLIER_RATIO;
    let mut channels: Vec<usize> = (0..row.len()).filter(|&j| row[j].abs() > threshold).collect();
    channels.sort_by(|a, b| row[*b].abs().total_cmp(&row[*a].abs()));
    channels.truncate(MAX_OUTLIER_CHANNELS);
    channels
}

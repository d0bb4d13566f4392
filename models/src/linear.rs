//! One Linear layer, float (candle matmul) or int8 (qtier's fused kernel), with the same epilogue:
//! bias, activation, optional residual.

use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use qtier_kernels::{Activation, QuantizedLinear};

use crate::error::Result;
use crate::rows::{for_row_chunks, map_row_ranges, row_parts};
use crate::simd::Isa;

/// How int8 layers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int8Options {
    /// Take a token's outlier values (magnitude above [`OUTLIER_RATIO`] times the token's RMS)
    /// out of the int8 GEMM and add their contribution in float from the dequantized weights,
    /// as LLM.int8() (Dettmers et al., 2022) does for outlier features. The artifact is
    /// unchanged; only qtier's runtime is more accurate than plain per-token W8A8. On
    /// all-MiniLM-L6-v2 it lifts the minimum embedding cosine to fp32 on the development
    /// sentences from 0.9818 to 0.9970 (the `[CLS]` token carries one channel ~30x larger than its
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
    /// Per input channel, its int8 weights of every output (one column of `[out, in]`), read back
    /// exactly from the kernel's packed copy the first time the channel holds an outlier, so the
    /// decomposition reads one contiguous run per channel (one byte per weight, not four). Only
    /// the few channels that ever hold outliers (BERT's are a handful of fixed channels) cost
    /// memory, where a transposed copy of the whole matrix doubled the layer's.
    columns: Vec<OnceLock<Box<[i8]>>>,
    /// Per output channel scales.
    scales: Vec<f32>,
}

impl Int8Weights {
    /// The weights of input channel `j` for every output, `[out]`.
    fn column(&self, j: usize) -> &[i8] {
        self.columns[j].get_or_init(|| {
            let packed = self.fused.packed();
            (0..packed.n()).map(|o| packed.get(o, j).unwrap_or(0)).collect()
        })
    }
}

/// An int8 layer's input: shared, so the decomposition works on a copy, or scratch, whose outlier
/// values the decomposition zeroes in place and writes back.
enum Int8Input<'a> {
    Shared(&'a [f32]),
    Scratch(&'a mut [f32]),
}

impl Int8Input<'_> {
    fn values(&self) -> &[f32] {
        match self {
            Int8Input::Shared(x) => x,
            Int8Input::Scratch(x) => x,
        }
    }
}

/// The rows that hold `outliers` (sorted by row), each once.
fn rows_with_outliers(outliers: &[Outlier]) -> Vec<usize> {
    let mut rows: Vec<usize> = outliers.iter().map(|o| o.row).collect();
    rows.dedup();
    rows
}

/// One outlier value taken out of the int8 GEMM.
#[derive(Debug, Clone, Copy)]
struct Outlier {
    row: usize,
    channel: usize,
    value: f32,
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

    /// An int8 layer from the kernel (activation fused), the int8 weights `[out, in]` it was
    /// packed from and their per-row scales; `outlier_decomposition` as in [`Int8Options`]. The
    /// decomposition reads the weights it needs back from the kernel's packed copy, so `weights`
    /// is only checked against the kernel's shape (panics when it differs).
    pub fn int8(name: &str, layer: QuantizedLinear, weights: &[i8], scales: &[f32], options: Int8Options) -> Linear {
        let (n, k) = (layer.n(), layer.k());
        assert!(weights.len() == n * k && scales.len() == n, "{name}: weights or scales do not match {n} x {k}");
        let columns = (0..k).map(|_| OnceLock::new()).collect();
        Linear {
            name: name.to_string(),
            activation: layer.activation(),
            out_features: n,
            outlier_decomposition: options.outlier_decomposition,
            kind: LinearKind::Int8(Box::new(Int8Weights { fused: layer, columns, scales: scales.to_vec() })),
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
                let mut output = vec![0.0f32; rows * self.out_features];
                with_f32_slice(&x, |input| match &residual {
                    Some(residual) => with_f32_slice(residual, |residual| {
                        self.forward_int8(layer, Int8Input::Shared(input), rows, Some(residual), &mut output)
                    }),
                    None => self.forward_int8(layer, Int8Input::Shared(input), rows, None, &mut output),
                })?;
                Ok(Tensor::from_vec(output, (rows, self.out_features), &Device::Cpu)?)
            }
        }
    }

    /// [`forward`](Self::forward) on plain buffers: `x` `[rows, in]` and `residual`
    /// `[rows, out]`, row-major, into `out[..rows * out]`. A float layer goes through candle.
    pub fn forward_into(&self, x: &[f32], rows: usize, residual: Option<&[f32]>, out: &mut [f32]) -> Result<()> {
        self.check_buffers(x.len(), rows, residual, out)?;
        match &self.kind {
            LinearKind::Float { .. } => self.forward_float_into(x, rows, residual, out),
            LinearKind::Int8(layer) => self.forward_int8(layer, Int8Input::Shared(x), rows, residual, out),
        }
    }

    /// [`forward_into`](Self::forward_into) that may use `x` as scratch: the outlier
    /// decomposition zeroes the outlier values in place instead of copying the input, and writes
    /// them back before returning, so `x` is unchanged afterwards.
    pub(crate) fn forward_into_reusing_input(
        &self,
        x: &mut [f32],
        rows: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()> {
        self.check_buffers(x.len(), rows, residual, out)?;
        match &self.kind {
            LinearKind::Float { .. } => self.forward_float_into(x, rows, residual, out),
            LinearKind::Int8(layer) => self.forward_int8(layer, Int8Input::Scratch(x), rows, residual, out),
        }
    }

    fn check_buffers(&self, x_len: usize, rows: usize, residual: Option<&[f32]>, out: &[f32]) -> Result<()> {
        let n = self.out_features;
        if rows == 0
            || !x_len.is_multiple_of(rows)
            || out.len() < rows * n
            || residual.is_some_and(|r| r.len() != rows * n)
        {
            return Err(candle_core::Error::Msg(format!(
                "{}: {x_len} inputs, {} outputs or a residual that is not {rows} x {n}",
                self.name,
                out.len()
            ))
            .into());
        }
        Ok(())
    }

    fn forward_float_into(&self, x: &[f32], rows: usize, residual: Option<&[f32]>, out: &mut [f32]) -> Result<()> {
        let n = self.out_features;
        let device = &Device::Cpu;
        let x = Tensor::from_slice(x, (rows, x.len() / rows), device)?;
        let residual = residual.map(|r| Tensor::from_slice(r, (rows, n), device)).transpose()?;
        let y = self.forward(&x, residual.as_ref())?.flatten_all()?.to_vec1::<f32>()?;
        out[..rows * n].copy_from_slice(&y);
        Ok(())
    }

    /// The int8 path: straight to the kernel when no token has outliers; else, for a layer with an
    /// activation and few rows with outliers, recomputing only those rows
    /// ([`forward_decomposed_rows`](Self::forward_decomposed_rows)); else the whole-matrix
    /// decomposition, on the input itself when it is scratch, on a copy when it is shared.
    fn forward_int8(
        &self,
        layer: &Int8Weights,
        input: Int8Input<'_>,
        rows: usize,
        residual: Option<&[f32]>,
        output: &mut [f32],
    ) -> Result<()> {
        let len = rows * layer.fused.k();
        let outliers = self.outliers(layer, &input.values()[..len], rows);
        if outliers.is_empty() {
            return Ok(layer.fused.forward_into(&input.values()[..len], rows, output, residual)?);
        }
        let picked = rows_with_outliers(&outliers);
        if self.decompose_few_rows(&picked, rows) {
            let input = &input.values()[..len];
            return self.forward_decomposed_rows(layer, input, rows, residual, output, &outliers, &picked);
        }
        match input {
            Int8Input::Shared(x) => {
                self.forward_decomposed(layer, &mut x[..len].to_vec(), rows, residual, output, &outliers)
            }
            Int8Input::Scratch(x) => self.forward_decomposed(layer, &mut x[..len], rows, residual, output, &outliers),
        }
    }

    /// Whether the decomposition should recompute only the rows with outliers (`picked`)
    /// ([`forward_decomposed_rows`](Self::forward_decomposed_rows)): for a layer with an
    /// activation, when at most half the rows have outliers (BERT's LayerNorm outputs: the
    /// [CLS] and [SEP] tokens). The whole-matrix path must apply the activation outside the
    /// kernel to every row, which cost MiniLM about 0.5 ms per forward at batch 1 x 128 tokens.
    fn decompose_few_rows(&self, picked: &[usize], rows: usize) -> bool {
        self.activation != Activation::None && 2 * picked.len() <= rows
    }

    /// Every token's outlier values (none without the decomposition), by row, largest first. Rows
    /// are split over the kernels' thread pool when there are enough of them.
    fn outliers(&self, layer: &Int8Weights, input: &[f32], rows: usize) -> Vec<Outlier> {
        if !self.outlier_decomposition {
            return Vec::new();
        }
        let k = layer.fused.k();
        let found = map_row_ranges(rows, row_parts(rows, k), |range| {
            let mut found = Vec::new();
            Isa::selected().run(
                #[inline(always)]
                |_| {
                    for row in range {
                        let values = &input[row * k..(row + 1) * k];
                        for channel in outlier_channels(values) {
                            found.push(Outlier { row, channel, value: values[channel] });
                        }
                    }
                },
            );
            found
        });
        found.concat()
    }

    /// The outlier decomposition. Each token's outlier values are zeroed before the int8 GEMM (so
    /// its per-token scale is set by the ordinary values) and their contribution,
    /// `value * dequantized weight column`, is added in float. Without an activation that
    /// contribution is added after the fused kernel (bias and residual commute with it); with
    /// one, the GEMM runs without it, the contribution is added, then the activation (the
    /// kernel's own epilogue loop, so rows without outliers get exactly what the fused kernel
    /// gives) and the residual. `input` gets its outlier values back before this returns.
    fn forward_decomposed(
        &self,
        layer: &Int8Weights,
        input: &mut [f32],
        rows: usize,
        residual: Option<&[f32]>,
        output: &mut [f32],
        outliers: &[Outlier],
    ) -> Result<()> {
        let (n, k) = (self.out_features, layer.fused.k());
        let (input, output) = (&mut input[..rows * k], &mut output[..rows * n]);
        for outlier in outliers {
            input[outlier.row * k + outlier.channel] = 0.0;
        }
        let gemm = if self.activation == Activation::None {
            layer.fused.forward_into(input, rows, output, residual)
        } else {
            layer.fused.forward_into_with_activation(input, rows, output, None, Activation::None)
        };
        for outlier in outliers {
            input[outlier.row * k + outlier.channel] = outlier.value;
        }
        gemm?;
        let activation = self.activation;
        for_row_chunks(output, n, row_parts(rows, n), |range, chunk| {
            let first = range.start;
            let mine = outliers_of_rows(outliers, range.clone());
            layer.add_contributions(mine, chunk, n, first);
            if activation != Activation::None {
                qtier_kernels::activation::apply_in_place(activation, chunk);
                if let Some(residual) = residual {
                    for (y, r) in chunk.iter_mut().zip(&residual[first * n..range.end * n]) {
                        *y += r;
                    }
                }
            }
        });
        Ok(())
    }

    /// The decomposition for a layer with an activation when few rows have outliers: the fused
    /// kernel (activation and residual inside) on every row of the unchanged input, then the rows
    /// with outliers again, gathered, as [`forward_decomposed`](Self::forward_decomposed) does
    /// them (outliers zeroed, GEMM without the activation, contributions added, activation,
    /// residual), written over their first results. Each row's per-token quantization depends
    /// on that row only, so every output is bit for bit what the whole-matrix path gives.
    #[allow(clippy::too_many_arguments)]
    fn forward_decomposed_rows(
        &self,
        layer: &Int8Weights,
        input: &[f32],
        rows: usize,
        residual: Option<&[f32]>,
        output: &mut [f32],
        outliers: &[Outlier],
        picked: &[usize],
    ) -> Result<()> {
        let (n, k) = (self.out_features, layer.fused.k());
        layer.fused.forward_into(&input[..rows * k], rows, &mut output[..rows * n], residual)?;
        let mut gathered = Vec::with_capacity(picked.len() * k);
        for &row in picked {
            gathered.extend_from_slice(&input[row * k..(row + 1) * k]);
        }
        let mut renumbered = Vec::with_capacity(outliers.len());
        for outlier in outliers {
            let index = picked.partition_point(|&row| row < outlier.row);
            gathered[index * k + outlier.channel] = 0.0;
            renumbered.push(Outlier { row: index, ..*outlier });
        }
        let mut recomputed = vec![0.0f32; picked.len() * n];
        layer.fused.forward_into_with_activation(&gathered, picked.len(), &mut recomputed, None, Activation::None)?;
        layer.add_contributions(&renumbered, &mut recomputed, n, 0);
        qtier_kernels::activation::apply_in_place(self.activation, &mut recomputed);
        for (index, &row) in picked.iter().enumerate() {
            let out_row = &mut output[row * n..(row + 1) * n];
            out_row.copy_from_slice(&recomputed[index * n..(index + 1) * n]);
            if let Some(residual) = residual {
                for (y, r) in out_row.iter_mut().zip(&residual[row * n..(row + 1) * n]) {
                    *y += r;
                }
            }
        }
        Ok(())
    }
}

impl Int8Weights {
    /// Adds each outlier's `value * dequantized weight column` to its output row: `output` holds
    /// rows `first..` (`n` outputs each) and every outlier's row is among them.
    fn add_contributions(&self, outliers: &[Outlier], output: &mut [f32], n: usize, first: usize) {
        Isa::selected().run(
            #[inline(always)]
            |_| {
                for outlier in outliers {
                    let row = outlier.row - first;
                    let out_row = &mut output[row * n..(row + 1) * n];
                    let column = self.column(outlier.channel);
                    // Multiply and add kept separate (no FMA): the same rounding on every CPU.
                    for ((y, q), scale) in out_row.iter_mut().zip(column).zip(&self.scales) {
                        *y += outlier.value * (f32::from(*q) * scale);
                    }
                }
            },
        );
    }
}

/// The outliers of rows `range` in `outliers` (sorted by row).
fn outliers_of_rows(outliers: &[Outlier], range: std::ops::Range<usize>) -> &[Outlier] {
    let start = outliers.partition_point(|o| o.row < range.start);
    let end = outliers.partition_point(|o| o.row < range.end);
    &outliers[start..end]
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
/// (BERT's `[CLS]` and `[SEP]` tokens, ~18x): ordinary tokens, whose maximum is a few RMS, lose little
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
#[inline(always)]
fn outlier_channels(row: &[f32]) -> Vec<usize> {
    let mut squares = [0.0f32; LANES];
    let mut peaks = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    for ((square, peak), value) in squares.iter_mut().zip(&mut peaks).zip(chunks.remainder()) {
        *square += value * value;
        *peak = if value.abs() > *peak { value.abs() } else { *peak };
    }
    for chunk in chunks {
        for ((square, peak), value) in squares.iter_mut().zip(&mut peaks).zip(chunk) {
            *square += value * value;
            // The same as `peak.max(|value|)` (a NaN never wins either way), but `f32::max`'s
            // NaN rule kept this loop scalar.
            *peak = if value.abs() > *peak { value.abs() } else { *peak };
        }
    }
    let mean_square = squares.iter().sum::<f32>() / row.len().max(1) as f32;
    let rms = mean_square.sqrt();
    if peaks.iter().all(|peak| *peak <= rms * OUTLIER_TRIGGER_RATIO) {
        return Vec::new();
    }
    let threshold = rms * OUTLIER_RATIO;
    // Every value above the threshold (blocks compared into a bit mask: vectorized compares, no
    // branch per channel; GELU outputs put a hundred channels of most tokens above it), then the
    // largest MAX_OUTLIER_CHANNELS by a linear-time selection, sorted largest first with ties in
    // channel order. Keeping a sorted list while scanning cost MiniLM's FFN output layer about
    // 0.1 ms per call at 128 tokens.
    let mut candidates: Vec<(f32, usize)> = Vec::new();
    for (block, values) in row.chunks(u64::BITS as usize).enumerate() {
        let mut bits = 0u64;
        for (bit, value) in values.iter().enumerate() {
            bits |= u64::from(value.abs() > threshold) << bit;
        }
        while bits != 0 {
            let channel = block * u64::BITS as usize + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            candidates.push((row[channel].abs(), channel));
        }
    }
    let largest_first = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if candidates.len() > MAX_OUTLIER_CHANNELS {
        candidates.select_nth_unstable_by(MAX_OUTLIER_CHANNELS - 1, largest_first);
        candidates.truncate(MAX_OUTLIER_CHANNELS);
    }
    candidates.sort_unstable_by(largest_first);
    candidates.into_iter().map(|(_, channel)| channel).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The selection as first written: every channel above the threshold, stable-sorted by
    /// magnitude (largest first), truncated.
    fn channels_by_sorting(row: &[f32]) -> Vec<usize> {
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32).sqrt();
        let threshold = rms * OUTLIER_RATIO;
        let mut channels: Vec<usize> = (0..row.len()).filter(|&j| row[j].abs() > threshold).collect();
        channels.sort_by(|a, b| row[*b].abs().total_cmp(&row[*a].abs()));
        channels.truncate(MAX_OUTLIER_CHANNELS);
        channels
    }

    /// A deterministic pseudo-random generator (xorshift).
    fn values(seed: u64, len: usize) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn outlier_selection_keeps_the_largest_in_order_with_ties_by_channel() {
        for (seed, len) in [(1u64, 384usize), (2, 1536), (3, 100), (4, 65)] {
            let mut row = values(seed, len);
            // A spike that triggers the decomposition, many values above the threshold, and ties.
            row[len / 2] = 400.0;
            for j in (0..len).step_by(3) {
                row[j] *= 8.0;
            }
            row[1] = -24.0;
            row[4] = 24.0;
            let selected = outlier_channels(&row);
            assert!(!selected.is_empty());
            assert_eq!(selected, channels_by_sorting(&row), "seed {seed}");
        }
        // Without a spike above OUTLIER_TRIGGER_RATIO times the RMS, nothing is taken out.
        assert!(outlier_channels(&values(5, 384)).is_empty());
    }

    /// The GPU's outlier selection and zeroing (`qtier_quantize_row_with_outliers` in
    /// kernels/cuda/quant.cu), transcribed for a block of 256 threads: each round every thread
    /// keeps its first candidate of its strided channels (above the threshold, after the last
    /// channel taken, in the order magnitude descending, channel ascending), the block keeps the
    /// first of those, until none is left or MAX_OUTLIER_CHANNELS are taken; then a value is
    /// zeroed when it is at or before the last channel taken in that order. Returns the channels
    /// taken and the row the GPU quantizes.
    fn gpu_selection(row: &[f32]) -> (Vec<usize>, Vec<f32>) {
        const THREADS: usize = 256;
        const NONE: i64 = i64::MAX;
        let first = |a: (f32, i64), b: (f32, i64)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32).sqrt();
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mut taken = Vec::new();
        let mut last = (f32::INFINITY, -1i64);
        if max > rms * OUTLIER_TRIGGER_RATIO {
            let threshold = rms * OUTLIER_RATIO;
            while taken.len() < MAX_OUTLIER_CHANNELS {
                let mut block = (-1.0f32, NONE);
                for thread in 0..THREADS {
                    let mut mine = (-1.0f32, NONE);
                    for i in (thread..row.len()).step_by(THREADS) {
                        let pair = (row[i].abs(), i as i64);
                        if pair.0 > threshold && first(last, pair) && first(pair, mine) {
                            mine = pair;
                        }
                    }
                    if first(mine, block) {
                        block = mine;
                    }
                }
                if block.1 == NONE {
                    break;
                }
                taken.push(block.1 as usize);
                last = block;
            }
        }
        if taken.is_empty() {
            return (taken, row.to_vec());
        }
        let kept = row
            .iter()
            .enumerate()
            .map(|(i, &v)| if v.abs() > last.0 || (v.abs() == last.0 && i as i64 <= last.1) { 0.0 } else { v })
            .collect();
        (taken, kept)
    }

    #[test]
    fn the_gpu_selection_takes_what_the_cpu_takes() {
        let mut rows = Vec::new();
        // One spike (none taken from 5 values: the spike is their RMS).
        for (seed, len) in [(21u64, 384usize), (22, 1536), (23, 100), (24, 5)] {
            let mut row = values(seed, len);
            row[len / 2] = 400.0;
            rows.push(row);
        }
        // A spike and 40 candidates in pairs of equal magnitude and opposite sign (ties), on
        // channels of different threads and of one thread (256 apart): 16 taken from the long
        // rows, a few from the short one, whose RMS the candidates raise.
        for (seed, len) in [(25u64, 4096usize), (26, 1536), (27, 300)] {
            let mut row = values(seed, len);
            row[len / 2] = 100.0;
            for j in 0..40 {
                let magnitude = 10.0 + (j / 2) as f32;
                let channel = if j % 4 == 3 { (j * 37 + 256) % len } else { (j * 37) % len };
                row[channel] = if j % 2 == 0 { magnitude } else { -magnitude };
            }
            rows.push(row);
        }
        // 20 spikes of one magnitude: the first 16 by channel.
        let mut spikes = vec![0.5f32; 4096];
        for j in 0..20 {
            spikes[j * 197] = if j % 2 == 0 { 60.0 } else { -60.0 };
        }
        rows.push(spikes);
        // Nothing taken: no spike, zeros, a NaN, an infinity.
        rows.push(values(28, 384));
        rows.push(vec![0.0; 384]);
        let mut nan = values(29, 384);
        nan[7] = 400.0;
        nan[9] = f32::NAN;
        rows.push(nan);
        let mut infinite = values(30, 384);
        infinite[7] = f32::INFINITY;
        rows.push(infinite);
        let mut taken_per_row = Vec::new();
        let mut ties_taken = 0;
        for (index, row) in rows.iter().enumerate() {
            let expected = outlier_channels(row);
            let (taken, kept) = gpu_selection(row);
            assert_eq!(taken, expected, "row {index}");
            let mut zeroed = row.clone();
            for &channel in &expected {
                zeroed[channel] = 0.0;
            }
            let same = |a: &f32, b: &f32| a.to_bits() == b.to_bits();
            assert!(kept.iter().zip(&zeroed).all(|(a, b)| same(a, b)), "row {index}");
            ties_taken += expected.windows(2).filter(|p| row[p[0]].abs() == row[p[1]].abs()).count();
            taken_per_row.push(expected.len());
        }
        assert_eq!(taken_per_row[..4], [1, 1, 1, 0]);
        assert_eq!(taken_per_row[4..6], [16, 16]);
        assert!((2..16).contains(&taken_per_row[6]), "{taken_per_row:?}");
        assert_eq!(taken_per_row[7..], [16, 0, 0, 0, 0]);
        assert!(ties_taken >= 15, "{ties_taken} ties taken");
    }

    #[test]
    fn reusing_the_input_gives_the_same_output_and_restores_it() {
        let (n, k, rows) = (70, 96, 5);
        let weights: Vec<i8> = values(6, n * k).iter().map(|v| (v * 127.0) as i8).collect();
        let scales: Vec<f32> = values(7, n).iter().map(|v| 0.01 + v.abs() * 0.01).collect();
        let bias = values(8, n);
        let mut x = values(9, rows * k);
        x[k + 3] = 60.0;
        x[3 * k + 17] = -45.0;
        x[3 * k + 18] = 30.0;
        let residual = values(10, rows * n);
        for activation in [Activation::None, Activation::GeluErf] {
            let kernel =
                QuantizedLinear::new(&weights, &scales, Some(&bias), n, k).unwrap().with_activation(activation);
            let layer = Linear::int8("l", kernel, &weights, &scales, Int8Options::default());
            let (mut shared, mut reused) = (vec![0.0; rows * n], vec![0.0; rows * n]);
            layer.forward_into(&x, rows, Some(&residual), &mut shared).unwrap();
            let mut scratch = x.clone();
            layer.forward_into_reusing_input(&mut scratch, rows, Some(&residual), &mut reused).unwrap();
            assert_eq!(shared, reused);
            assert_eq!(scratch, x);
            // The decomposition against float math on the dequantized weights: the outlier
            // values' contribution is exact, so the error stays within what per-token int8 of
            // the ordinary values (all within [-1, 1]) allows: half a step of 1/127 per term.
            for (m, out_row) in shared.chunks_exact(n).enumerate() {
                for (o, y) in out_row.iter().enumerate() {
                    let w = |j: usize| f32::from(weights[o * k + j]) * scales[o];
                    let dot: f32 = (0..k).map(|j| x[m * k + j] * w(j)).sum::<f32>() + bias[o];
                    let bound: f32 = (0..k).map(|j| w(j).abs()).sum::<f32>() / 127.0 * 0.5 + 1e-4;
                    let expected = activation.apply(dot) + residual[m * n + o];
                    assert!((y - expected).abs() <= bound, "{activation:?} row {m} out {o}: {y} vs {expected}");
                }
            }
        }
    }

    /// An int8 layer of random weights with `activation`, and its int8 weights.
    fn random_layer(n: usize, k: usize, activation: Activation) -> (Linear, Int8Weights) {
        let weights: Vec<i8> = values(11, n * k).iter().map(|v| (v * 127.0) as i8).collect();
        let scales: Vec<f32> = values(12, n).iter().map(|v| 0.01 + v.abs() * 0.01).collect();
        let kernel =
            QuantizedLinear::new(&weights, &scales, Some(&values(13, n)), n, k).unwrap().with_activation(activation);
        let layer = Linear::int8("l", kernel, &weights, &scales, Int8Options::default());
        let LinearKind::Int8(int8) = &layer.kind else { unreachable!() };
        let int8 = (**int8).clone();
        (layer, int8)
    }

    #[test]
    fn recomputing_only_the_rows_with_outliers_is_bit_identical_to_the_whole_matrix_path() {
        // Small and large (split over the pool) shapes; outliers in a few rows.
        for (rows, n, k) in [(5, 70, 96), (128, 384, 384), (37, 1536, 384)] {
            let mut x = values(14, rows * k);
            for (row, channel, value) in
                [(0, 3, 60.0), (rows / 2, k - 1, -45.0), (rows / 2, 17, 30.0), (rows - 1, 5, 80.0)]
            {
                x[row * k + channel] = value;
            }
            let residual = values(15, rows * n);
            for activation in [Activation::GeluErf, Activation::Relu, Activation::Silu] {
                let (layer, int8) = random_layer(n, k, activation);
                let outliers = layer.outliers(&int8, &x, rows);
                let picked = rows_with_outliers(&outliers);
                assert_eq!(layer.decompose_few_rows(&picked, rows), rows > 5, "{rows} rows");
                for residual in [None, Some(residual.as_slice())] {
                    let mut whole = vec![f32::NAN; rows * n];
                    layer.forward_decomposed(&int8, &mut x.clone(), rows, residual, &mut whole, &outliers).unwrap();
                    let mut few = vec![f32::NAN; rows * n];
                    layer.forward_decomposed_rows(&int8, &x, rows, residual, &mut few, &outliers, &picked).unwrap();
                    assert_eq!(few, whole, "{rows} x {n} x {k}, {activation:?}, residual {}", residual.is_some());
                }
            }
        }
    }
}

//! Multi-head self-attention on f32 slices, fused per head: the scores `q k^T / sqrt(head_dim)`
//! of a few query rows at a time, their softmax over the sequence's real tokens, and the weighted
//! sum of the values, straight from the projection's output into the context rows. Nothing of
//! size `[heads, seq, seq]` is materialized, and no tensor is reshaped or copied between steps.
//!
//! Both products run on one register-tiled micro-kernel ([`tile`]): `ROWS` rows of the left
//! operand times `VECS` vectors of `LANES` columns of the right one, accumulated in registers.
//! Per head, the keys are gathered transposed (`[head_dim, seq]`) and the values contiguous
//! (`[seq, head_dim]`), both zero-padded to whole vectors, so every right operand row is a
//! contiguous run.

use qtier_kernels::activation::exp_approx;
use rayon::prelude::*;

use crate::simd::{Isa, Lanes};

/// Floats per vector of the micro-kernel: one zmm register (two ymm).
const LANES: usize = 16;
/// Query rows per tile; with [`VECS`] vectors, 16 zmm accumulators.
const ROWS: usize = 4;
/// Vectors per tile, the widest of the micro-kernel.
const VECS: usize = 4;

/// Where queries, keys and values are in one buffer: token `t` of the batch (sequence-major)
/// starts at `t * row_stride`, and head `h`'s `head_dim` values of each start at column
/// `query + h * head_dim`, `key + h * head_dim` and `value + h * head_dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QkvLayout {
    /// Floats from one token's row to the next.
    pub row_stride: usize,
    /// Column of the first query value.
    pub query: usize,
    /// Column of the first key value.
    pub key: usize,
    /// Column of the first value value.
    pub value: usize,
}

/// The dimensions of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Attention heads.
    pub heads: usize,
    /// Values per head.
    pub head_dim: usize,
}

impl AttentionShape {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Self-attention of every sequence and head into `out` `[batch * seq, heads * head_dim]`
/// (row-major, heads side by side): `softmax(q k^T / sqrt(head_dim)) v`, where keys whose `mask`
/// entry (`[batch, seq]`) is 0 get weight exactly 0. A sequence without any real token attends
/// to all its tokens equally, as a large negative bias on every score would make it.
///
/// Sequences run in parallel on rayon's pool. Panics when a slice is shorter than the shape says.
pub(crate) fn attention(
    isa: Isa,
    qkv: &[f32],
    layout: QkvLayout,
    mask: &[u32],
    shape: AttentionShape,
    out: &mut [f32],
) {
    let AttentionShape { batch, seq, .. } = shape;
    let hidden = shape.hidden();
    assert!(out.len() >= batch * seq * hidden && mask.len() >= batch * seq, "attention buffers too short");
    if batch == 0 || seq == 0 || hidden == 0 {
        return;
    }
    let last = (batch * seq - 1) * layout.row_stride;
    let widest = layout.query.max(layout.key).max(layout.value) + hidden;
    assert!(widest <= layout.row_stride && qkv.len() >= last + widest, "attention input too short");

    let run = |(sequence, out): (usize, &mut [f32])| {
        let mask = &mask[sequence * seq..(sequence + 1) * seq];
        let qkv = &qkv[sequence * seq * layout.row_stride..];
        isa.run(
            #[inline(always)]
            |lanes| attend(lanes, qkv, layout, mask, shape, out),
        );
    };
    let out = &mut out[..batch * seq * hidden];
    if batch == 1 {
        // One sequence runs on the calling thread: splitting its query rows over 2 threads
        // measured slower (511-536 us vs 465 us per MiniLM layer at 128 tokens), as the int8
        // GEMM pool's worker still spins on the other core after the projection.
        run((0, out));
    } else {
        out.par_chunks_mut(seq * hidden).enumerate().for_each(run);
    }
}

/// Attention of one sequence (`qkv` starts at its first token, `mask` is its mask) into `out`
/// (its context, `[seq, heads * head_dim]`).
#[inline(always)]
fn attend(lanes: Lanes, qkv: &[f32], layout: QkvLayout, mask: &[u32], shape: AttentionShape, out: &mut [f32]) {
    let AttentionShape { seq, heads, head_dim, .. } = shape;
    let hidden = shape.hidden();
    let stride = layout.row_stride;
    let seq_padded = seq.next_multiple_of(LANES);
    let dim_padded = head_dim.next_multiple_of(LANES);
    let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
    let any_real = mask.iter().any(|&m| m != 0);
    let keep: Vec<f32> =
        (0..seq_padded).map(|j| if j < seq && (!any_real || mask[j] != 0) { 1.0 } else { 0.0 }).collect();

    // Padding rows and columns stay zero: gathers only write the real ones.
    let mut keys_t = vec![0.0f32; head_dim * seq_padded];
    let mut values = vec![0.0f32; seq_padded * dim_padded];
    let mut probabilities = vec![0.0f32; ROWS * seq_padded];
    let mut context = vec![0.0f32; ROWS * dim_padded];
    for head in 0..heads {
        let (key, value) = (layout.key + head * head_dim, layout.value + head * head_dim);
        for j in 0..seq {
            let row = &qkv[j * stride..];
            for (d, k) in row[key..key + head_dim].iter().enumerate() {
                keys_t[d * seq_padded + j] = *k;
            }
            values[j * dim_padded..j * dim_padded + head_dim].copy_from_slice(&row[value..value + head_dim]);
        }
        let query = layout.query + head * head_dim;
        let mut i = 0;
        while i < seq {
            let block = (seq - i).min(ROWS);
            let queries = &qkv[i * stride + query..];
            if block == ROWS {
                product::<ROWS>(lanes, queries, stride, &keys_t, seq_padded, head_dim, &mut probabilities, seq_padded);
            } else {
                for r in 0..block {
                    let out_row = &mut probabilities[r * seq_padded..];
                    product::<1>(lanes, &queries[r * stride..], stride, &keys_t, seq_padded, head_dim, out_row, 0);
                }
            }
            let mut inverse_sums = [0.0f32; ROWS];
            for (r, inverse_sum) in inverse_sums.iter_mut().enumerate().take(block) {
                let scores = &mut probabilities[r * seq_padded..(r + 1) * seq_padded];
                *inverse_sum = softmax_unnormalized(scores, &keep, scale);
            }
            if block == ROWS {
                product::<ROWS>(lanes, &probabilities, seq_padded, &values, dim_padded, seq, &mut context, dim_padded);
            } else {
                for r in 0..block {
                    let (p, c) = (&probabilities[r * seq_padded..], &mut context[r * dim_padded..]);
                    product::<1>(lanes, p, seq_padded, &values, dim_padded, seq, c, 0);
                }
            }
            for r in 0..block {
                let out_row = &mut out[(i + r) * hidden + head * head_dim..][..head_dim];
                for (o, c) in out_row.iter_mut().zip(&context[r * dim_padded..]) {
                    *o = c * inverse_sums[r];
                }
            }
            i += block;
        }
    }
}

/// Replaces each score (a dot product) by `exp(score * scale - max)` where `keep` is 1 and by
/// 0 where it is 0 (masked keys and the padding up to a whole vector); returns `1 / sum`.
#[inline(always)]
fn softmax_unnormalized(scores: &mut [f32], keep: &[f32], scale: f32) -> f32 {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    for (scores, keep) in scores.chunks_exact_mut(LANES).zip(keep.chunks_exact(LANES)) {
        for ((max, s), k) in maxes.iter_mut().zip(scores.iter_mut()).zip(keep) {
            *s *= scale;
            *max = max.max(if *k != 0.0 { *s } else { f32::NEG_INFINITY });
        }
    }
    let max = maxes.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
    let mut sums = [0.0f32; LANES];
    for (scores, keep) in scores.chunks_exact_mut(LANES).zip(keep.chunks_exact(LANES)) {
        for ((sum, s), k) in sums.iter_mut().zip(scores.iter_mut()).zip(keep) {
            // exp_approx clamps its argument, so a masked score far above `max` gives a finite
            // value, which the 0 of `keep` then zeroes.
            *s = exp_approx(*s - max) * k;
            *sum += *s;
        }
    }
    1.0 / sums.iter().sum::<f32>()
}

/// `out[r][c] = sum_kk a[r * lda + kk] * b[kk * ldb + c]` for `r < MR` and `c < ldb` (a whole
/// number of vectors), `out` rows `ldo` apart.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn product<const MR: usize>(
    lanes: Lanes,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    k: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let vectors = ldb / LANES;
    let mut v = 0;
    while v < vectors {
        let column = v * LANES;
        if vectors - v >= VECS {
            store(tile::<MR, VECS>(lanes, a, lda, &b[column..], ldb, k), out, ldo, column);
            v += VECS;
        } else if vectors - v >= 2 {
            store(tile::<MR, 2>(lanes, a, lda, &b[column..], ldb, k), out, ldo, column);
            v += 2;
        } else {
            store(tile::<MR, 1>(lanes, a, lda, &b[column..], ldb, k), out, ldo, column);
            v += 1;
        }
    }
}

/// Writes a tile into `out` at column `column`, rows `ldo` apart.
#[inline(always)]
fn store<const MR: usize, const NV: usize>(tile: [[[f32; LANES]; NV]; MR], out: &mut [f32], ldo: usize, column: usize) {
    for (r, row) in tile.iter().enumerate() {
        let out = &mut out[r * ldo + column..][..NV * LANES];
        for (chunk, vector) in out.chunks_exact_mut(LANES).zip(row) {
            chunk.copy_from_slice(vector);
        }
    }
}

/// The micro-kernel: `MR x (NV * LANES)` of `a b`, where row `r` of `a` starts at `r * lda`
/// and row `kk` of `b` at `kk * ldb`, summed over `kk < k`, in registers.
#[inline(always)]
fn tile<const MR: usize, const NV: usize>(
    lanes: Lanes,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    k: usize,
) -> [[[f32; LANES]; NV]; MR] {
    let mut acc = [[[0.0f32; LANES]; NV]; MR];
    if k == 0 {
        return acc;
    }
    // One bounds check for the whole tile instead of one per element.
    let (a, b) = (&a[..(MR - 1) * lda + k], &b[..(k - 1) * ldb + NV * LANES]);
    for kk in 0..k {
        let b_row = &b[kk * ldb..kk * ldb + NV * LANES];
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let x = a[r * lda + kk];
            for (acc_vector, b_vector) in acc_row.iter_mut().zip(b_row.chunks_exact(LANES)) {
                for (y, w) in acc_vector.iter_mut().zip(b_vector) {
                    *y = lanes.mul_add(x, *w, *y);
                }
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention in f64, straight from the definition (scores, masked softmax, weighted sum).
    fn reference(qkv: &[f32], layout: QkvLayout, mask: &[u32], shape: AttentionShape) -> Vec<f64> {
        let AttentionShape { batch, seq, heads, head_dim } = shape;
        let hidden = heads * head_dim;
        let mut out = vec![0.0f64; batch * seq * hidden];
        let at = |t: usize, column: usize| f64::from(qkv[t * layout.row_stride + column]);
        for b in 0..batch {
            let mask = &mask[b * seq..(b + 1) * seq];
            let any_real = mask.iter().any(|&m| m != 0);
            for h in 0..heads {
                for i in 0..seq {
                    let scores: Vec<f64> = (0..seq)
                        .map(|j| {
                            let dot: f64 = (0..head_dim)
                                .map(|d| {
                                    at(b * seq + i, layout.query + h * head_dim + d)
                                        * at(b * seq + j, layout.key + h * head_dim + d)
                                })
                                .sum();
                            dot / (head_dim as f64).sqrt()
                        })
                        .collect();
                    let kept = |j: usize| !any_real || mask[j] != 0;
                    let max = (0..seq).filter(|&j| kept(j)).map(|j| scores[j]).fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> =
                        (0..seq).map(|j| if kept(j) { (scores[j] - max).exp() } else { 0.0 }).collect();
                    let sum: f64 = weights.iter().sum();
                    for d in 0..head_dim {
                        let value: f64 =
                            (0..seq).map(|j| weights[j] * at(b * seq + j, layout.value + h * head_dim + d)).sum();
                        out[(b * seq + i) * hidden + h * head_dim + d] = value / sum;
                    }
                }
            }
        }
        out
    }

    /// A deterministic pseudo-random generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// Largest absolute difference to the f64 reference, relative to the largest value magnitude:
    /// f32 dot products of a few hundred terms and a polynomial exp stay well inside it.
    const TOLERANCE: f64 = 2e-5;

    fn check(shape: AttentionShape, layout: QkvLayout, mask: &[u32], seed: u64, magnitude: f32) {
        let mut rng = Rng(seed);
        let tokens = shape.batch * shape.seq;
        let qkv: Vec<f32> = (0..tokens * layout.row_stride).map(|_| rng.next() * magnitude).collect();
        let expected = reference(&qkv, layout, mask, shape);
        let largest = qkv.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
        for isa in [Isa::Avx2, Isa::Avx512].into_iter().filter(|isa| !isa.is_supported()) {
            eprintln!("skipped {isa:?}: this CPU lacks it");
        }
        for isa in Isa::supported() {
            let mut out = vec![f32::NAN; tokens * shape.hidden()];
            attention(isa, &qkv, layout, mask, shape, &mut out);
            for (index, (y, e)) in out.iter().zip(&expected).enumerate() {
                let error = (f64::from(*y) - e).abs();
                assert!(
                    error <= TOLERANCE * largest,
                    "{isa:?} {shape:?} seed {seed}: out[{index}] = {y}, expected {e} (error {error})"
                );
            }
        }
    }

    fn fused(shape: AttentionShape) -> QkvLayout {
        let hidden = shape.hidden();
        QkvLayout { row_stride: 3 * hidden, query: 0, key: hidden, value: 2 * hidden }
    }

    #[test]
    fn matches_the_f64_reference_on_odd_shapes_and_masks() {
        let mut seed = 1;
        for (batch, seq, heads, head_dim) in [
            (1, 1, 1, 1),
            (1, 7, 2, 3),
            (2, 13, 3, 5),
            (3, 17, 2, 16),
            (1, 33, 1, 32),
            (2, 65, 4, 24),
            (1, 128, 12, 32),
        ] {
            let shape = AttentionShape { batch, seq, heads, head_dim };
            let all = vec![1u32; batch * seq];
            // Trailing padding of a different length per sequence, and holes in the middle.
            let padded: Vec<u32> = (0..batch * seq).map(|t| u32::from(t % seq < seq - (t / seq) % seq)).collect();
            let holes: Vec<u32> = (0..batch * seq).map(|t| u32::from(t % seq % 3 != 1)).collect();
            for mask in [&all, &padded, &holes] {
                check(shape, fused(shape), mask, seed, 1.0);
                seed += 1;
            }
        }
    }

    #[test]
    fn large_scores_stay_finite_and_exact() {
        // Scores of several hundred: a softmax without the max subtraction would overflow.
        let shape = AttentionShape { batch: 2, seq: 19, heads: 2, head_dim: 8 };
        check(shape, fused(shape), &[1; 38], 7, 12.0);
    }

    #[test]
    fn separate_layout_with_gaps_between_query_key_and_value() {
        let shape = AttentionShape { batch: 2, seq: 9, heads: 3, head_dim: 4 };
        let layout = QkvLayout { row_stride: 50, query: 30, key: 1, value: 14 };
        check(shape, layout, &[1; 18], 11, 1.0);
    }

    #[test]
    fn a_sequence_without_real_tokens_attends_to_all_equally() {
        let shape = AttentionShape { batch: 2, seq: 5, heads: 1, head_dim: 4 };
        let mut mask = vec![1u32; 10];
        mask[5..].fill(0);
        check(shape, fused(shape), &mask, 3, 1.0);
    }

    #[test]
    fn padded_keys_get_exactly_zero_weight() {
        // Changing a padded token's key and value must not change any output bit.
        let shape = AttentionShape { batch: 1, seq: 6, heads: 2, head_dim: 4 };
        let layout = fused(shape);
        let mask = [1, 1, 1, 1, 0, 0];
        let mut rng = Rng(5);
        let mut qkv: Vec<f32> = (0..6 * layout.row_stride).map(|_| rng.next()).collect();
        let mut first = vec![0.0; 6 * 8];
        attention(Isa::selected(), &qkv, layout, &mask, shape, &mut first);
        for v in &mut qkv[5 * layout.row_stride + 8..] {
            *v *= 1000.0;
        }
        let mut second = vec![0.0; 6 * 8];
        attention(Isa::selected(), &qkv, layout, &mask, shape, &mut second);
        assert_eq!(first[..5 * 8], second[..5 * 8]);
    }
}

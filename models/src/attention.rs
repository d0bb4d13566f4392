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
//!
//! The work runs on the int8 kernels' spinning pool ([`qtier_kernels::run_parts`]), the cores the
//! GEMMs before and after it use: one part per sequence, or, for a single sequence long enough,
//! one part per range of its query rows (see [`attention`]). Every output element is computed by
//! the same operations in the same order however the work is split, so the result does not
//! depend on the number of cores.

use std::ops::Range;

use qtier_kernels::activation::exp_approx;

use crate::rows::{for_row_chunks, for_row_ranges};
use crate::simd::{Isa, Lanes};

/// Floats per vector of the micro-kernel: one zmm register (two ymm).
const LANES: usize = 16;
/// Query rows per tile; with [`VECS`] vectors, 16 zmm accumulators.
const ROWS: usize = 4;
/// Vectors per tile, the widest of the micro-kernel.
const VECS: usize = 4;

/// Whole `ROWS` blocks of query rows each part of a split sequence gets at least: a single
/// sequence of fewer than `2 * MIN_BLOCKS_PER_PART` blocks (16 tokens on 2 cores) runs on the
/// calling thread alone. MiniLM (12 x 32 heads), one layer, 2 cores, p50 of 3000 calls: at 16
/// tokens 2 parts take 8.3-8.5 us against 13.5-14.0 us on the caller alone. At 8 tokens (one
/// block per part) they took 4.7 against 7.0 us, but a gain of 2 us is less than `run_parts` can
/// lose when another thread holds the pool and it falls back to rayon, whose threads may first
/// have to wake up; so shorter sequences stay on the caller.
const MIN_BLOCKS_PER_PART: usize = 2;

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

    /// Tokens per sequence, rounded up to whole vectors.
    fn seq_padded(&self) -> usize {
        self.seq.next_multiple_of(LANES)
    }

    /// Values per head, rounded up to whole vectors.
    fn dim_padded(&self) -> usize {
        self.head_dim.next_multiple_of(LANES)
    }
}

/// Self-attention of every sequence and head into `out` `[batch * seq, heads * head_dim]`
/// (row-major, heads side by side): `softmax(q k^T / sqrt(head_dim)) v`, where keys whose `mask`
/// entry (`[batch, seq]`) is 0 get weight exactly 0. A sequence without any real token attends
/// to all its tokens equally, as a large negative bias on every score would make it.
///
/// Runs on the int8 kernels' pool ([`qtier_kernels::run_parts`]), whose worker is still spinning
/// after the QKV projection: several sequences run one per part; a single sequence of at least
/// 16 tokens (see [`MIN_BLOCKS_PER_PART`]) has its query rows split into
/// [`qtier_kernels::parallelism`] balanced ranges of whole `ROWS` blocks, each part computing all
/// heads of its rows. MiniLM, one layer, AVX-512, this 2-core machine, p50 of 3000 calls each,
/// alternating with the previous code: 1 x 128 tokens 176-180 us against 322-331 us on the
/// calling thread alone (end to end, `qtier bench model` b1 x s128 int8: p50 3.97-4.10 ms against
/// 4.76-5.00 ms); 3 x 20 tokens 38 us against 68 us, and 4 x 128 tokens 652-664 us against
/// 1155-1180 us on rayon's pool, hardly faster than one thread (1265-1300 us): rayon's threads
/// compete for the cores with the GEMM pool's spinning worker. For the same reason a single
/// sequence used to run on the caller alone (its rows split over rayon measured 511-536 us against
/// 465 us). Every output element is computed the same way however the work is split, so the
/// result is bit-identical.
///
/// Panics when a slice is shorter than the shape says.
pub(crate) fn attention(
    isa: Isa,
    qkv: &[f32],
    layout: QkvLayout,
    mask: &[u32],
    shape: AttentionShape,
    out: &mut [f32],
) {
    attention_on(isa, qkv, layout, mask, shape, out, qtier_kernels::parallelism());
}

/// [`attention`] with `parallelism` in place of the pool's: 1 runs everything on the calling
/// thread, as the tests compare against.
fn attention_on(
    isa: Isa,
    qkv: &[f32],
    layout: QkvLayout,
    mask: &[u32],
    shape: AttentionShape,
    out: &mut [f32],
    parallelism: usize,
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

    let out = &mut out[..batch * seq * hidden];
    if batch == 1 {
        let parts = row_parts(seq, parallelism);
        if parts > 1 {
            attend_split(isa, qkv, layout, mask, shape, out, parts);
            return;
        }
    }
    let sequence = |sequence: usize, out: &mut [f32]| {
        let mask = &mask[sequence * seq..(sequence + 1) * seq];
        let qkv = &qkv[sequence * seq * layout.row_stride..];
        isa.run(
            #[inline(always)]
            |lanes| attend(lanes, qkv, layout, mask, shape, 0..seq, out),
        );
    };
    // One part per sequence: the pool hands the parts past one per thread to whichever thread
    // finishes first.
    let parts = if parallelism <= 1 { 1 } else { batch };
    for_row_chunks(out, seq * hidden, parts, |sequences, out| {
        for (index, out) in sequences.zip(out.chunks_mut(seq * hidden)) {
            sequence(index, out);
        }
    });
}

/// Parts to split the query rows of a single sequence of `seq` tokens into: `parallelism`, as
/// long as each part gets [`MIN_BLOCKS_PER_PART`] whole blocks; otherwise 1.
fn row_parts(seq: usize, parallelism: usize) -> usize {
    parallelism.min(seq / ROWS / MIN_BLOCKS_PER_PART).max(1)
}

/// Query rows of part `part` of `parts`: balanced ranges of whole `ROWS` blocks (the last
/// block short when `seq` is not a multiple of `ROWS`), so that every part but the last runs
/// only the 4-row tile.
fn row_range(seq: usize, parts: usize, part: usize) -> Range<usize> {
    let blocks = crate::rows::row_range(seq.div_ceil(ROWS), parts, part);
    (blocks.start * ROWS).min(seq)..(blocks.end * ROWS).min(seq)
}

/// One head's keys, transposed (`[head_dim, seq_padded]`), and values (`[seq_padded,
/// dim_padded]`), zero-padded.
struct Gathered {
    keys_t: Vec<f32>,
    values: Vec<f32>,
}

impl Gathered {
    /// Zeroed buffers: the padding rows and columns stay zero, as [`Gathered::gather`] writes only
    /// the real ones.
    fn new(shape: AttentionShape) -> Self {
        Gathered {
            keys_t: vec![0.0; shape.head_dim * shape.seq_padded()],
            values: vec![0.0; shape.seq_padded() * shape.dim_padded()],
        }
    }

    /// Gathers head `head` of the sequence starting at `qkv`'s first row.
    #[inline(always)]
    fn gather(&mut self, qkv: &[f32], layout: QkvLayout, shape: AttentionShape, head: usize) {
        let AttentionShape { seq, head_dim, .. } = shape;
        let (seq_padded, dim_padded) = (shape.seq_padded(), shape.dim_padded());
        let (key, value) = (layout.key + head * head_dim, layout.value + head * head_dim);
        for j in 0..seq {
            let row = &qkv[j * layout.row_stride..];
            for (d, k) in row[key..key + head_dim].iter().enumerate() {
                self.keys_t[d * seq_padded + j] = *k;
            }
            self.values[j * dim_padded..j * dim_padded + head_dim].copy_from_slice(&row[value..value + head_dim]);
        }
    }
}

/// The per-part working rows of [`attend_head`]: scores turned probabilities, and their
/// weighted sums of the values.
struct Scratch {
    probabilities: Vec<f32>,
    context: Vec<f32>,
}

impl Scratch {
    fn new(shape: AttentionShape) -> Self {
        Scratch { probabilities: vec![0.0; ROWS * shape.seq_padded()], context: vec![0.0; ROWS * shape.dim_padded()] }
    }
}

/// `keep[j]`: 1.0 where key `j` of a sequence with this `mask` takes part in the softmax (a
/// real token, or any token when none is real), 0.0 elsewhere and on the padding.
fn keep_of(mask: &[u32], shape: AttentionShape) -> Vec<f32> {
    let seq = shape.seq;
    let any_real = mask.iter().any(|&m| m != 0);
    (0..shape.seq_padded()).map(|j| if j < seq && (!any_real || mask[j] != 0) { 1.0 } else { 0.0 }).collect()
}

/// Attention of query rows `rows` of one sequence (`qkv` starts at its first token, `mask` is
/// its mask) into `out` (their context, `[rows.len(), heads * head_dim]`), one head at a time:
/// the head's keys and values are gathered into the same small buffers, which then stay in L1
/// for all the rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend(
    lanes: Lanes,
    qkv: &[f32],
    layout: QkvLayout,
    mask: &[u32],
    shape: AttentionShape,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let keep = keep_of(mask, shape);
    let mut gathered = Gathered::new(shape);
    let mut scratch = Scratch::new(shape);
    for head in 0..shape.heads {
        gathered.gather(qkv, layout, shape, head);
        attend_head(lanes, qkv, layout, &keep, shape, head, &gathered, rows.clone(), &mut scratch, out);
    }
}

/// Attention of a single sequence (batch 1) in `parts` parts on the kernels' pool: part `i`
/// computes every head of query rows [`row_range`]`(seq, parts, i)` into its own rows of `out`.
/// Each part gathers every head's keys and values itself (O(seq * hidden) per part, next to the
/// O(rows * seq * hidden) products): gathering them once into buffers shared by the parts
/// measured slower, 204 us against 178-180 us for MiniLM at 128 tokens (p50, 2 parts): it takes a
/// second hand-off, and each part then reads half the heads from the other core's cache instead
/// of gathering each into buffers in its own L1.
fn attend_split(
    isa: Isa,
    qkv: &[f32],
    layout: QkvLayout,
    mask: &[u32],
    shape: AttentionShape,
    out: &mut [f32],
    parts: usize,
) {
    let AttentionShape { seq, .. } = shape;
    let hidden = shape.hidden();
    let mask = &mask[..seq];
    for_row_ranges(
        out,
        hidden,
        parts,
        |part| row_range(seq, parts, part),
        |rows, out| {
            isa.run(
                #[inline(always)]
                |lanes| attend(lanes, qkv, layout, mask, shape, rows, out),
            );
        },
    );
}

/// Head `head` of query rows `rows` of one sequence (`qkv` starts at its first token) into
/// `out`, whose first row is row `rows.start`'s context, from the head's `gathered` keys and
/// values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_head(
    lanes: Lanes,
    qkv: &[f32],
    layout: QkvLayout,
    keep: &[f32],
    shape: AttentionShape,
    head: usize,
    gathered: &Gathered,
    rows: Range<usize>,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let AttentionShape { head_dim, .. } = shape;
    let hidden = shape.hidden();
    let stride = layout.row_stride;
    let (seq, seq_padded, dim_padded) = (shape.seq, shape.seq_padded(), shape.dim_padded());
    let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
    let (keys_t, values) = (&gathered.keys_t[..], &gathered.values[..]);
    let Scratch { probabilities, context } = scratch;
    let query = layout.query + head * head_dim;
    let mut i = rows.start;
    while i < rows.end {
        let block = (rows.end - i).min(ROWS);
        let queries = &qkv[i * stride + query..];
        if block == ROWS {
            product::<ROWS>(lanes, queries, stride, keys_t, seq_padded, head_dim, probabilities, seq_padded);
        } else {
            for r in 0..block {
                let out_row = &mut probabilities[r * seq_padded..];
                product::<1>(lanes, &queries[r * stride..], stride, keys_t, seq_padded, head_dim, out_row, 0);
            }
        }
        let mut inverse_sums = [0.0f32; ROWS];
        for (r, inverse_sum) in inverse_sums.iter_mut().enumerate().take(block) {
            let scores = &mut probabilities[r * seq_padded..(r + 1) * seq_padded];
            *inverse_sum = softmax_unnormalized(scores, keep, scale);
        }
        if block == ROWS {
            product::<ROWS>(lanes, probabilities, seq_padded, values, dim_padded, seq, context, dim_padded);
        } else {
            for r in 0..block {
                let (p, c) = (&probabilities[r * seq_padded..], &mut context[r * dim_padded..]);
                product::<1>(lanes, p, seq_padded, values, dim_padded, seq, c, 0);
            }
        }
        for r in 0..block {
            let out_row = &mut out[(i - rows.start + r) * hidden + head * head_dim..][..head_dim];
            for (o, c) in out_row.iter_mut().zip(&context[r * dim_padded..]) {
                *o = c * inverse_sums[r];
            }
        }
        i += block;
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

    /// Runs [`attention_on`] with `parallelism` into a NaN-filled output.
    fn run_on(isa: Isa, qkv: &[f32], mask: &[u32], shape: AttentionShape, parallelism: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; shape.batch * shape.seq * shape.hidden()];
        attention_on(isa, qkv, fused(shape), mask, shape, &mut out, parallelism);
        out
    }

    /// The split over the pool against the calling thread alone, bit for bit, for every
    /// instruction set and several part counts (more parts than the pool's threads included).
    fn check_split_is_bit_identical(shape: AttentionShape, mask: &[u32], seed: u64) {
        let mut rng = Rng(seed);
        let qkv: Vec<f32> = (0..shape.batch * shape.seq * 3 * shape.hidden()).map(|_| rng.next() * 3.0).collect();
        for isa in Isa::supported() {
            let alone = run_on(isa, &qkv, mask, shape, 1);
            assert!(alone.iter().all(|v| v.is_finite()), "{isa:?} {shape:?}: a non-finite output");
            for parallelism in [2, 3, 4, qtier_kernels::parallelism()] {
                let split = run_on(isa, &qkv, mask, shape, parallelism);
                for (index, (a, b)) in alone.iter().zip(&split).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "{isa:?} {shape:?} parallelism {parallelism}: out[{index}] = {b}, alone {a}"
                    );
                }
            }
            let mut public = vec![f32::NAN; alone.len()];
            attention(isa, &qkv, fused(shape), mask, shape, &mut public);
            assert!(alone.iter().zip(&public).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?} {shape:?}");
        }
    }

    /// Trailing padding of a different length per sequence: 1 token, then none, then a third,
    /// and so on (a 1-token sequence 0 has no real token at all).
    fn padded_mask(batch: usize, seq: usize) -> Vec<u32> {
        let padding = |sequence: usize| [1, 0, seq / 3][sequence % 3].min(seq);
        (0..batch * seq).map(|t| u32::from(t % seq < seq - padding(t / seq))).collect()
    }

    #[test]
    fn splitting_one_sequence_over_the_pool_is_bit_identical() {
        for (seq, seed) in [(128, 21), (37, 22), (16, 23), (15, 24), (4, 25), (1, 26)] {
            let shape = AttentionShape { batch: 1, seq, heads: 12, head_dim: 32 };
            check_split_is_bit_identical(shape, &padded_mask(1, seq), seed);
            check_split_is_bit_identical(shape, &vec![1; seq], seed + 100);
        }
        // A head size that is not a whole number of vectors, fewer heads than parts.
        let shape = AttentionShape { batch: 1, seq: 45, heads: 1, head_dim: 24 };
        check_split_is_bit_identical(shape, &padded_mask(1, 45), 27);
    }

    #[test]
    fn sequences_over_the_pool_are_bit_identical() {
        for (batch, seq, seed) in [(3, 20, 31), (2, 128, 32), (5, 9, 33)] {
            let shape = AttentionShape { batch, seq, heads: 12, head_dim: 32 };
            check_split_is_bit_identical(shape, &padded_mask(batch, seq), seed);
        }
    }

    #[test]
    fn split_rows_are_balanced_whole_blocks_covering_the_sequence() {
        assert_eq!(row_parts(128, 2), 2);
        assert_eq!(row_parts(15, 2), 1);
        assert_eq!(row_parts(16, 2), 2);
        assert_eq!(row_parts(16, 4), 2);
        assert_eq!(row_parts(1000, 1), 1);
        for seq in 1..200 {
            for parts in 1..=6 {
                let ranges: Vec<_> = (0..parts).map(|part| row_range(seq, parts, part)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[parts - 1].end, seq);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                    assert!(pair[0].end % ROWS == 0 || pair[0].end == seq, "{seq} {parts} {ranges:?}");
                }
                let blocks: Vec<usize> = ranges.iter().map(|r| r.len().div_ceil(ROWS)).collect();
                assert!(blocks.iter().max().unwrap() - blocks.iter().min().unwrap() <= 1, "{seq} {parts} {ranges:?}");
            }
        }
    }
}

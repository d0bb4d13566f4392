//! [`HalfLinear`]: `x W^T` with f32 activations and bf16 or f16 weights, computed in f32.
//!
//! For the layers an int8 artifact keeps in float (a decoder's `lm_head`, 128256 x 2048 on a
//! Llama 3.2 1B, more than half the bytes a decoding step reads): at batch 1 a step reads every
//! weight once, so it costs weight bytes over memory bandwidth, and reading the stored 16-bit
//! weights instead of an f32 copy halves it. Each weight is widened to f32 exactly (bf16 is the
//! top half of an f32; f16 converts without rounding) and multiplied with f32 fused multiply-adds,
//! so the result is an f32 computation of the checkpoint's own weights; only the summation order
//! differs from a plain f32 matmul.
//!
//! The kernel reads `W` row-major as stored (`[n, k]`, a dot product per output over contiguous
//! k), one weight row at a time against up to four activation rows (each weight vector loaded
//! once per four activation rows), with four accumulators per activation row. The output rows are split over the
//! GEMM pool's threads in contiguous ranges, so each thread streams its own share of the weights.

use std::num::NonZeroUsize;

use crate::dispatch::{KernelKind, selected_kernel};
use crate::error::KernelError;
use crate::linear::{SendPtr, check_input_len, check_output_len, task_count, tasks_or_default};

/// Which 16-bit float format the weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfType {
    /// bfloat16: 8 exponent bits, 7 mantissa bits (the top half of an f32).
    Bf16,
    /// IEEE 754 binary16: 5 exponent bits, 10 mantissa bits.
    F16,
}

impl HalfType {
    /// The safetensors name of the type (`BF16`, `F16`).
    pub fn name(self) -> &'static str {
        match self {
            HalfType::Bf16 => "BF16",
            HalfType::F16 => "F16",
        }
    }

    /// The exact f32 value of one stored element.
    pub fn to_f32(self, bits: u16) -> f32 {
        match self {
            HalfType::Bf16 => f32::from_bits(u32::from(bits) << 16),
            HalfType::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }
}

/// Weight rows per pass of the kernels.
const WEIGHT_ROWS: usize = 4;
/// Activation rows per pass of the kernels.
const ACT_ROWS: usize = 4;
/// Below this many weight bytes a call runs on the calling thread.
const PAR_MIN_BYTES: usize = 256 * 1024;

/// A float Linear layer without bias, `y = x W^T`, whose `[n, k]` weights stay in their stored
/// 16-bit format.
#[derive(Debug, Clone)]
pub struct HalfLinear {
    bits: Vec<u16>,
    dtype: HalfType,
    n: usize,
    k: usize,
    kernel: KernelKind,
    threads: Option<NonZeroUsize>,
}

impl HalfLinear {
    /// A layer from row-major `[n, k]` weights of type `dtype` (the raw 16-bit patterns). Weights
    /// that are NaN or infinite are refused with their index.
    pub fn new(bits: Vec<u16>, dtype: HalfType, n: usize, k: usize) -> Result<Self, KernelError> {
        if n == 0 || k == 0 {
            let (what, value) = if n == 0 { ("n", n) } else { ("k", k) };
            return Err(KernelError::InvalidDimension { what, value, reason: "must be at least 1" });
        }
        let expected = n.checked_mul(k).ok_or(KernelError::InvalidDimension {
            what: "n",
            value: n,
            reason: "n * k overflows usize",
        })?;
        if bits.len() != expected {
            return Err(KernelError::ShapeMismatch { what: "weights", expected, found: bits.len() });
        }
        if let Some(index) = bits.iter().position(|&b| !dtype.to_f32(b).is_finite()) {
            return Err(KernelError::NonFinite { what: "weights", index });
        }
        Ok(HalfLinear { bits, dtype, n, k, kernel: selected_kernel()?, threads: None })
    }

    /// Uses `threads` threads (default: the threads of this crate's pool, as [`crate::QuantizedLinear`]).
    pub fn with_threads(mut self, threads: usize) -> Result<Self, KernelError> {
        self.threads = Some(task_count(threads)?);
        Ok(self)
    }

    /// Forces a kernel variant (it must be supported by this CPU).
    pub fn with_kernel(mut self, kind: KernelKind) -> Result<Self, KernelError> {
        self.kernel = kind.check_supported()?;
        Ok(self)
    }

    /// Output features.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The stored weight format.
    pub fn dtype(&self) -> HalfType {
        self.dtype
    }

    /// The kernel variant in use.
    pub fn kernel(&self) -> KernelKind {
        self.kernel
    }

    /// Bytes of weights one forward reads.
    pub fn weight_bytes(&self) -> usize {
        self.bits.len() * 2
    }

    /// Threads a call may use.
    pub fn threads(&self) -> usize {
        tasks_or_default(self.threads)
    }

    /// Writes weight row `row` (output feature `row`, `k` values) widened to f32 into `out`:
    /// an embedding lookup when the matrix is a tied embedding table.
    pub fn row_into(&self, row: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if row >= self.n {
            return Err(KernelError::InvalidDimension { what: "row", value: row, reason: "is not below n" });
        }
        if out.len() != self.k {
            return Err(KernelError::ShapeMismatch { what: "row output", expected: self.k, found: out.len() });
        }
        for (o, &b) in out.iter_mut().zip(&self.bits[row * self.k..(row + 1) * self.k]) {
            *o = self.dtype.to_f32(b);
        }
        Ok(())
    }

    /// `out = x W^T` for `x` `[m, k]` row-major; `out` is `[m, n]` row-major.
    pub fn forward_into(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), KernelError> {
        let (n, k) = (self.n, self.k);
        check_input_len(m, k, "x", x.len())?;
        check_output_len(m, n, out.len())?;
        if m == 0 {
            return Ok(());
        }
        let parts = if self.weight_bytes() < PAR_MIN_BYTES { 1 } else { self.threads().min(n.div_ceil(WEIGHT_ROWS)) };
        let out_ptr = SendPtr(out.as_mut_ptr());
        let run_part = |part: usize| {
            // Whole groups of WEIGHT_ROWS per part, so only the last part has a short group.
            let groups = n.div_ceil(WEIGHT_ROWS);
            let (j0, j1) =
                ((groups * part / parts) * WEIGHT_ROWS, ((groups * (part + 1) / parts) * WEIGHT_ROWS).min(n));
            let out_ptr = &out_ptr;
            for r0 in (0..m).step_by(ACT_ROWS) {
                let rows = ACT_ROWS.min(m - r0);
                for j in (j0..j1).step_by(WEIGHT_ROWS) {
                    let wrows = WEIGHT_ROWS.min(j1 - j);
                    let mut acc = [[0f32; WEIGHT_ROWS]; ACT_ROWS];
                    let block =
                        Block { x: &x[r0 * k..(r0 + rows) * k], rows, w: &self.bits[j * k..(j + wrows) * k], wrows, k };
                    self.dot_block(&block, &mut acc);
                    for (r, acc_r) in acc.iter().enumerate().take(rows) {
                        for (c, &v) in acc_r.iter().enumerate().take(wrows) {
                            // SAFETY: (r0 + r) < m and j + c < n, so the index is below m * n <=
                            // out.len(); parts own disjoint column ranges j0..j1.
                            unsafe { *out_ptr.0.add((r0 + r) * n + j + c) = v };
                        }
                    }
                }
            }
        };
        if parts == 1 {
            run_part(0);
        } else {
            crate::pool::global().run(parts, &run_part);
        }
        Ok(())
    }

    /// Dot products of `block.rows` activation rows with `block.wrows` weight rows.
    fn dot_block(&self, block: &Block<'_>, acc: &mut [[f32; WEIGHT_ROWS]; ACT_ROWS]) {
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Avx512Vnni is only selected when avx512f/bw/vl, avx2 and fma were detected.
            KernelKind::Avx512Vnni => unsafe { simd::dot_block_avx512(block, self.dtype, acc) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Avx2 and AvxVnni are only selected when avx2 and fma were detected; F16C
            // comes with every AVX2 CPU and is checked again here.
            KernelKind::Avx2 | KernelKind::AvxVnni if std::arch::is_x86_feature_detected!("f16c") => unsafe {
                simd::dot_block_avx2(block, self.dtype, acc)
            },
            _ => dot_block_scalar(block, self.dtype, acc),
        }
    }
}

/// One pass of a kernel: `rows` activation rows of `x` against `wrows` weight rows of `w`.
struct Block<'a> {
    /// `rows * k` activations.
    x: &'a [f32],
    rows: usize,
    /// `wrows * k` weights.
    w: &'a [u16],
    wrows: usize,
    k: usize,
}

/// The portable reference: one f32 fused multiply-add per weight, in k order.
fn dot_block_scalar(block: &Block<'_>, dtype: HalfType, acc: &mut [[f32; WEIGHT_ROWS]; ACT_ROWS]) {
    let k = block.k;
    for (c, w) in block.w.chunks_exact(k).enumerate() {
        for (r, x) in block.x.chunks_exact(k).enumerate() {
            acc[r][c] = x.iter().zip(w).fold(0f32, |s, (&xv, &wb)| xv.mul_add(dtype.to_f32(wb), s));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    #![allow(unsafe_op_in_unsafe_fn)]
    // Register arrays indexed by row read closer to the instruction stream than iterator chains.
    #![allow(clippy::needless_range_loop)]

    use std::arch::x86_64::*;

    use super::{ACT_ROWS, Block, HalfType, WEIGHT_ROWS};

    /// 16 weights at `p` (`lanes` of them valid, the rest read as zero) widened to f32.
    #[inline(always)]
    unsafe fn load16(p: *const u16, lanes: usize, dtype: HalfType) -> __m512 {
        let raw = if lanes >= 16 {
            _mm256_loadu_si256(p.cast())
        } else {
            _mm256_maskz_loadu_epi16(((1u32 << lanes) - 1) as __mmask16, p.cast())
        };
        match dtype {
            HalfType::Bf16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw))),
            HalfType::F16 => _mm512_cvtph_ps(raw),
        }
    }

    #[inline(always)]
    unsafe fn load16_f32(p: *const f32, lanes: usize) -> __m512 {
        if lanes >= 16 { _mm512_loadu_ps(p) } else { _mm512_maskz_loadu_ps(((1u32 << lanes) - 1) as __mmask16, p) }
    }

    /// `R` activation rows against each weight row of the block in turn, so the weights stream
    /// strictly sequentially (four rows side by side were four streams, each one 4 KiB page at
    /// K = 2048, which the hardware prefetchers restart at every page: half the bandwidth).
    /// Four accumulators per activation row over consecutive 16-lane k chunks.
    #[inline(always)]
    unsafe fn block_avx512<const R: usize>(
        block: &Block<'_>,
        dtype: HalfType,
        acc: &mut [[f32; WEIGHT_ROWS]; ACT_ROWS],
    ) {
        let k = block.k;
        let (x, w) = (block.x.as_ptr(), block.w.as_ptr());
        let body = k - k % UNROLL_512;
        for c in 0..block.wrows {
            let wc = w.add(c * k);
            let mut sums = [[_mm512_setzero_ps(); 4]; R];
            let mut k0 = 0;
            while k0 < body {
                for u in 0..4 {
                    let wv = load16(wc.add(k0 + 16 * u), 16, dtype);
                    for r in 0..R {
                        let xv = _mm512_loadu_ps(x.add(r * k + k0 + 16 * u));
                        sums[r][u] = _mm512_fmadd_ps(xv, wv, sums[r][u]);
                    }
                }
                k0 += UNROLL_512;
            }
            while k0 < k {
                let lanes = (k - k0).min(16);
                let wv = load16(wc.add(k0), lanes, dtype);
                for r in 0..R {
                    let xv = load16_f32(x.add(r * k + k0), lanes);
                    sums[r][0] = _mm512_fmadd_ps(xv, wv, sums[r][0]);
                }
                k0 += 16;
            }
            for r in 0..R {
                let [a, b, c2, d] = sums[r];
                acc[r][c] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c2, d)));
            }
        }
    }

    /// k per unrolled step of the AVX-512 kernel.
    const UNROLL_512: usize = 64;

    /// The AVX-512 kernel (16 lanes; masked loads for the k tail).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn dot_block_avx512(
        block: &Block<'_>,
        dtype: HalfType,
        acc: &mut [[f32; WEIGHT_ROWS]; ACT_ROWS],
    ) {
        match block.rows {
            1 => block_avx512::<1>(block, dtype, acc),
            2 => block_avx512::<2>(block, dtype, acc),
            3 => block_avx512::<3>(block, dtype, acc),
            _ => block_avx512::<4>(block, dtype, acc),
        }
    }

    /// 8 weights at `p` widened to f32.
    #[inline(always)]
    unsafe fn load8(p: *const u16, dtype: HalfType) -> __m256 {
        let raw = _mm_loadu_si128(p.cast());
        match dtype {
            HalfType::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw))),
            HalfType::F16 => _mm256_cvtph_ps(raw),
        }
    }

    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// As [`block_avx512`] with 8 lanes; the k tail in scalar.
    #[inline(always)]
    unsafe fn block_avx2<const R: usize>(block: &Block<'_>, dtype: HalfType, acc: &mut [[f32; WEIGHT_ROWS]; ACT_ROWS]) {
        let k = block.k;
        let (x, w) = (block.x.as_ptr(), block.w.as_ptr());
        let body = k - k % UNROLL_256;
        let vectors = k - k % 8;
        for c in 0..block.wrows {
            let wc = w.add(c * k);
            let mut sums = [[_mm256_setzero_ps(); 4]; R];
            let mut k0 = 0;
            while k0 < body {
                for u in 0..4 {
                    let wv = load8(wc.add(k0 + 8 * u), dtype);
                    for r in 0..R {
                        let xv = _mm256_loadu_ps(x.add(r * k + k0 + 8 * u));
                        sums[r][u] = _mm256_fmadd_ps(xv, wv, sums[r][u]);
                    }
                }
                k0 += UNROLL_256;
            }
            while k0 < vectors {
                let wv = load8(wc.add(k0), dtype);
                for r in 0..R {
                    let xv = _mm256_loadu_ps(x.add(r * k + k0));
                    sums[r][0] = _mm256_fmadd_ps(xv, wv, sums[r][0]);
                }
                k0 += 8;
            }
            for r in 0..R {
                let [a, b, c2, d] = sums[r];
                let mut sum = hsum256(_mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c2, d)));
                for kk in vectors..k {
                    sum = (*x.add(r * k + kk)).mul_add(dtype.to_f32(*wc.add(kk)), sum);
                }
                acc[r][c] = sum;
            }
        }
    }

    /// k per unrolled step of the AVX2 kernel.
    const UNROLL_256: usize = 32;

    /// The AVX2 kernel (8 lanes; the k tail in scalar).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_block_avx2(block: &Block<'_>, dtype: HalfType, acc: &mut [[f32; WEIGHT_ROWS]; ACT_ROWS]) {
        match block.rows {
            1 => block_avx2::<1>(block, dtype, acc),
            2 => block_avx2::<2>(block, dtype, acc),
            3 => block_avx2::<3>(block, dtype, acc),
            _ => block_avx2::<4>(block, dtype, acc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn encode(v: f32, dtype: HalfType) -> u16 {
        match dtype {
            HalfType::Bf16 => half::bf16::from_f32(v).to_bits(),
            HalfType::F16 => half::f16::from_f32(v).to_bits(),
        }
    }

    /// Every kernel against an f64 computation of the same (widened) weights, on odd shapes:
    /// k not a multiple of 8 or 16, n not a multiple of 4, m across the row-block sizes.
    #[test]
    fn every_kernel_matches_an_f64_reference() {
        let mut seed = 7;
        for dtype in [HalfType::Bf16, HalfType::F16] {
            for &(m, k, n) in
                &[(1, 1, 1), (1, 17, 5), (3, 33, 9), (4, 64, 8), (5, 100, 13), (9, 257, 31), (1, 2048, 130)]
            {
                let bits: Vec<u16> = (0..n * k).map(|_| encode(lcg(&mut seed), dtype)).collect();
                let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed) * 3.0).collect();
                for kind in KernelKind::ALL {
                    if !kind.is_supported() {
                        continue;
                    }
                    let layer = HalfLinear::new(bits.clone(), dtype, n, k).unwrap().with_kernel(kind).unwrap();
                    let mut out = vec![f32::NAN; m * n];
                    layer.forward_into(&x, m, &mut out).unwrap();
                    for r in 0..m {
                        for j in 0..n {
                            let (mut exact, mut magnitude) = (0f64, 0f64);
                            for kk in 0..k {
                                let p = f64::from(x[r * k + kk]) * f64::from(dtype.to_f32(bits[j * k + kk]));
                                exact += p;
                                magnitude += p.abs();
                            }
                            // f32 accumulation: each of the k additions rounds by at most one
                            // ulp of the running magnitude.
                            let tolerance = magnitude * k as f64 * f64::from(f32::EPSILON) + 1e-30;
                            let got = f64::from(out[r * n + j]);
                            assert!(
                                (got - exact).abs() <= tolerance,
                                "{kind:?} {dtype:?} {m}x{k}x{n} [{r},{j}]: {got} vs {exact} (tolerance {tolerance})"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn threads_split_gives_identical_results() {
        let (m, k, n) = (2, 1000, 300);
        let mut seed = 3;
        let bits: Vec<u16> = (0..n * k).map(|_| encode(lcg(&mut seed), HalfType::Bf16)).collect();
        let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
        let run = |threads| {
            let layer = HalfLinear::new(bits.clone(), HalfType::Bf16, n, k).unwrap().with_threads(threads).unwrap();
            let mut out = vec![0.0; m * n];
            layer.forward_into(&x, m, &mut out).unwrap();
            out
        };
        assert_eq!(run(1), run(2));
    }

    #[test]
    fn rows_widen_exactly_and_bad_input_is_refused() {
        let bits = vec![encode(1.5, HalfType::F16), encode(-2.0, HalfType::F16), 0, 0x3c00];
        let layer = HalfLinear::new(bits, HalfType::F16, 2, 2).unwrap();
        let mut row = [0.0; 2];
        layer.row_into(0, &mut row).unwrap();
        assert_eq!(row, [1.5, -2.0]);
        layer.row_into(1, &mut row).unwrap();
        assert_eq!(row, [0.0, 1.0]);
        assert!(layer.row_into(2, &mut row).is_err());
        assert!(layer.row_into(0, &mut [0.0; 3]).is_err());
        assert!(layer.forward_into(&[1.0; 3], 1, &mut [0.0; 2]).is_err());
        assert!(layer.forward_into(&[1.0; 2], 1, &mut [0.0; 1]).is_err());
        let nan = HalfLinear::new(vec![0, 0x7fc0], HalfType::Bf16, 1, 2);
        assert!(matches!(nan, Err(KernelError::NonFinite { index: 1, .. })));
        assert!(HalfLinear::new(vec![0; 3], HalfType::Bf16, 2, 2).is_err());
        assert!(HalfLinear::new(vec![], HalfType::Bf16, 0, 2).is_err());
    }
}

//! Dynamic per-token (per-row) symmetric quantization of activations to int8.
//!
//! Row scale `s = max|x| / 127`; `q = clamp(round_half_even(x * (127 / max|x|)), -127, 127)`.
//! (Multiplying by the reciprocal instead of dividing by `s` keeps the loop at one multiply per
//! value; the two differ by at most one ulp before rounding.) An all-zero row has scale 0 and
//! quantizes to zeros. Rows are stored with stride `k_padded`; the padding holds the encoding of
//! zero. VNNI kernels want `u8` activations, so they get the *offset* encoding `q + 128`
//! (`q as u8 ^ 0x80`), and correct with the weights' column sums; the scalar and AVX2 kernels
//! read `q` as plain `i8`.

/// Largest quantized magnitude (symmetric int8, -128 unused).
pub const QMAX: f32 = 127.0;

/// How quantized activations are stored in the byte buffer the kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActEncoding {
    /// `q as u8` (two's complement); the kernel reads `i8`.
    Signed,
    /// `q + 128` as `u8` in [1, 255] (0 encodes as 128); the kernel reads `u8`.
    Offset,
}

impl ActEncoding {
    #[inline(always)]
    fn encode(self, q: i8) -> u8 {
        match self {
            ActEncoding::Signed => q as u8,
            ActEncoding::Offset => (q as u8) ^ 0x80,
        }
    }
}

/// Quantizes one row into `q` (length `x.len()`), returning the row's scale.
///
/// This is the reference the kernels' activation quantization is built from (they call it).
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    let n = x.len().min(q.len());
    let (x, q) = (&x[..n], &mut q[..n]);
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = max / QMAX;
    let inv = QMAX / max;
    if max > 0.0 && inv.is_finite() {
        for (d, &v) in q.iter_mut().zip(x) {
            *d = (v * inv).round_ties_even().clamp(-QMAX, QMAX) as i8;
        }
    } else if max > 0.0 {
        // Subnormal row maximum: 127 / max overflows f32, so divide in f64 instead.
        let inv = f64::from(QMAX) / f64::from(max);
        for (d, &v) in q.iter_mut().zip(x) {
            *d = (f64::from(v) * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    } else {
        q.fill(0);
    }
    scale
}

#[inline(always)]
fn quantize_rows_generic(x: &[f32], k: usize, kp: usize, enc: ActEncoding, out: &mut [u8], scales: &mut [f32]) {
    for ((row, dst), s) in x.chunks_exact(k).zip(out.chunks_exact_mut(kp)).zip(scales) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let inv = QMAX / max;
        *s = max / QMAX;
        if max > 0.0 && inv.is_finite() {
            match enc {
                ActEncoding::Signed => {
                    for (d, &v) in dst.iter_mut().zip(row) {
                        *d = (v * inv).round_ties_even().clamp(-QMAX, QMAX) as i32 as u8;
                    }
                }
                ActEncoding::Offset => {
                    for (d, &v) in dst.iter_mut().zip(row) {
                        *d = ((v * inv).round_ties_even().clamp(-QMAX, QMAX) as i32 + 128) as u8;
                    }
                }
            }
        } else {
            // Zero or subnormal maximum: the rare path goes through the reference.
            let mut tmp = [0i8; 256];
            for (xs, ds) in row.chunks(256).zip(dst.chunks_mut(256)) {
                quantize_row_with_max(xs, max, &mut tmp[..xs.len()]);
                for (d, &q) in ds.iter_mut().zip(&tmp[..xs.len()]) {
                    *d = enc.encode(q);
                }
            }
        }
        dst[k..].fill(enc.encode(0));
    }
}

fn quantize_row_with_max(x: &[f32], max: f32, q: &mut [i8]) {
    if max > 0.0 {
        let inv = f64::from(QMAX) / f64::from(max);
        for (d, &v) in q.iter_mut().zip(x) {
            *d = (f64::from(v) * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    } else {
        q.fill(0);
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! Explicit intrinsics: the generic loop's max-abs reduction and `round_ties_even` did not
    //! vectorize (perf: quantization took 1/6 of the GEMM time at 32x384x1536).
    #![allow(unsafe_op_in_unsafe_fn)]
    use std::arch::x86_64::*;

    use super::{ActEncoding, QMAX};

    /// One row, AVX-512: returns false (writing nothing) when the row needs the slow path
    /// (zero or subnormal maximum, or non-finite values), so the caller falls back.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn row_avx512(x: &[f32], enc: ActEncoding, dst: &mut [u8], scale: &mut f32) -> bool {
        let n = x.len();
        // Four independent max chains: the pass is latency-bound at M = 1, where it sits
        // between the job hand-off and the first weight loads.
        let mut m = [_mm512_setzero_ps(); 4];
        let p = x.as_ptr();
        let mut i = 0;
        while i + 64 <= n {
            for (j, mj) in m.iter_mut().enumerate() {
                *mj = _mm512_max_ps(*mj, _mm512_abs_ps(_mm512_loadu_ps(p.add(i + 16 * j))));
            }
            i += 64;
        }
        while i < n {
            let mask: __mmask16 = if n - i >= 16 { 0xffff } else { (1u16 << (n - i)) - 1 };
            m[0] = _mm512_max_ps(m[0], _mm512_abs_ps(_mm512_maskz_loadu_ps(mask, p.add(i))));
            i += 16;
        }
        let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3])));
        let inv = QMAX / max;
        if !(max > 0.0 && inv.is_finite() && max.is_finite()) {
            return false;
        }
        *scale = max / QMAX;
        let vinv = _mm512_set1_ps(inv);
        let off = _mm512_set1_epi32(if enc == ActEncoding::Offset { 128 } else { 0 });
        let d = dst.as_mut_ptr();
        let mut i = 0;
        // `cvtps_epi32` rounds half to even (the default rounding mode), and needs no clamp:
        // |x| <= max, so |x * (127 / max)| <= 127 * (1 + 2^-22), which rounds to at most 127. A
        // NaN converts to 0x80000000, whose low byte (after the offset) is the encoding of 0, as
        // the reference's `NaN as i8` is. Full vectors narrow in a register and store 16 bytes;
        // only the tail uses the masked narrowing store. (Every intrinsic here must be covered by
        // the target features above: `_mm512_andnot_ps` needs avx512dq and was not inlined,
        // spilling the max loop; perf showed quantization at 23% of a 126x768x64 call.)
        while i + 16 <= n {
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(p.add(i)), vinv)), off);
            _mm_storeu_si128(d.add(i).cast(), _mm512_cvtepi32_epi8(q));
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1u16 << (n - i)) - 1;
            let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, p.add(i)), vinv);
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(v), off);
            _mm512_mask_cvtepi32_storeu_epi8(d.add(i).cast(), mask, q);
        }
        true
    }

    /// One row, AVX2; same contract as [`row_avx512`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn row_avx2(x: &[f32], enc: ActEncoding, dst: &mut [u8], scale: &mut f32) -> bool {
        let n = x.len();
        let sign = _mm256_set1_ps(-0.0);
        let mut m0 = _mm256_setzero_ps();
        let p = x.as_ptr();
        let mut i = 0;
        while i + 8 <= n {
            m0 = _mm256_max_ps(m0, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(i))));
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m0);
        let mut max = lanes.iter().fold(0f32, |a, &b| a.max(b));
        for &v in &x[i..] {
            max = max.max(v.abs());
        }
        let inv = QMAX / max;
        if !(max > 0.0 && inv.is_finite() && max.is_finite()) {
            return false;
        }
        *scale = max / QMAX;
        let vinv = _mm256_set1_ps(inv);
        let offset = enc == ActEncoding::Offset;
        let off = _mm256_set1_epi32(if offset { 128 } else { 0 });
        // Gathers byte 0 of each i32 lane into the low 4 bytes of each 128-bit half.
        let shuf = _mm256_setr_epi8(
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1,
            -1, -1, -1, -1,
        );
        let d = dst.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= n {
            // Rounding and no clamp as in `row_avx512`.
            let q = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p.add(i)), vinv)), off);
            let b = _mm256_shuffle_epi8(q, shuf);
            let lo4 = _mm256_extract_epi32::<0>(b) as u32;
            let hi4 = _mm256_extract_epi32::<4>(b) as u32;
            d.add(i).cast::<u64>().write_unaligned(u64::from(lo4) | (u64::from(hi4) << 32));
            i += 8;
        }
        for (j, &v) in x.iter().enumerate().skip(i) {
            let q = (v * inv).round_ties_even().clamp(-QMAX, QMAX) as i32;
            *d.add(j) = (q + if offset { 128 } else { 0 }) as u8;
        }
        true
    }
}

/// Quantizes `m` rows of `x` (`m * k`, already length-checked) into `out` (`m * kp`) and
/// `scales` (`m`), using the widest vector unit the chosen kernel may use.
pub(crate) fn quantize_rows(
    kind: crate::KernelKind,
    x: &[f32],
    k: usize,
    kp: usize,
    enc: ActEncoding,
    out: &mut [u8],
    scales: &mut [f32],
) {
    use crate::KernelKind;
    for ((row, dst), s) in x.chunks_exact(k).zip(out.chunks_exact_mut(kp)).zip(scales.iter_mut()) {
        let done = match kind {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Avx512Vnni is only selected when avx512f and avx512bw were detected.
            KernelKind::Avx512Vnni => unsafe { simd::row_avx512(row, enc, &mut dst[..k], s) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: these kinds are only selected when avx2 was detected.
            KernelKind::Avx2 | KernelKind::AvxVnni => unsafe { simd::row_avx2(row, enc, &mut dst[..k], s) },
            _ => false,
        };
        if done {
            dst[k..].fill(enc.encode(0));
        } else {
            quantize_rows_generic(row, k, kp, enc, dst, std::slice::from_mut(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_row_edges() {
        let mut q = [0i8; 4];
        assert_eq!(quantize_row(&[0.0; 4], &mut q), 0.0);
        assert_eq!(q, [0; 4]);
        let s = quantize_row(&[1e30, -1.0, 0.0, -1e30], &mut q);
        assert_eq!(q, [127, 0, 0, -127]);
        assert_eq!(s, 1e30 / 127.0);
        // Half-way values round to even: 0.5 * 127 / 127 ... x = 2.5 with max 127 -> 2.
        quantize_row(&[127.0, 2.5, 3.5, -2.5], &mut q);
        assert_eq!(q, [127, 2, 4, -2]);
        // Subnormal maximum still quantizes to +-127.
        quantize_row(&[1e-44, -1e-44, 0.0, 0.0], &mut q);
        assert_eq!(q, [127, -127, 0, 0]);
    }

    #[test]
    fn vectorized_rows_match_reference_on_ties_nan_and_every_tail_length() {
        for kind in [crate::KernelKind::Avx512Vnni, crate::KernelKind::Avx2] {
            if !kind.is_supported() {
                continue;
            }
            for k in [1usize, 15, 16, 17, 63, 64, 65, 200, 384] {
                let kp = k.div_ceil(4) * 4;
                let rows: Vec<Vec<f32>> = vec![
                    (0..k).map(|i| ((i * 7919) % 1000) as f32 - 500.25).collect(),
                    // Exact halves after scaling by 127 / 127: ties round to even.
                    (0..k).map(|i| if i == 0 { 127.0 } else { (i % 9) as f32 - 4.5 }).collect(),
                    // A NaN (not the maximum) quantizes to 0, as in the reference.
                    (0..k).map(|i| if i == k / 2 && k > 1 { f32::NAN } else { (i as f32 + 1.0) * 0.01 }).collect(),
                ];
                for (r, row) in rows.iter().enumerate() {
                    for enc in [ActEncoding::Offset, ActEncoding::Signed] {
                        let mut out = vec![0u8; kp];
                        let mut scale = [0f32];
                        quantize_rows(kind, row, k, kp, enc, &mut out, &mut scale);
                        let mut q = vec![0i8; k];
                        let s = quantize_row(row, &mut q);
                        assert_eq!(s, scale[0], "{kind} k {k} row {r}");
                        let want: Vec<u8> = q.iter().map(|&v| enc.encode(v)).collect();
                        assert_eq!(&out[..k], &want[..], "{kind} k {k} row {r} {enc:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn vectorized_rows_match_reference() {
        let k = 37;
        let x: Vec<f32> = (0..3 * k).map(|i| ((i * 7919) % 1000) as f32 - 500.25).collect();
        let mut out = vec![0u8; 3 * 40];
        let mut scales = vec![0f32; 3];
        quantize_rows(crate::KernelKind::best_supported(), &x, k, 40, ActEncoding::Offset, &mut out, &mut scales);
        for r in 0..3 {
            let mut q = vec![0i8; k];
            let s = quantize_row(&x[r * k..(r + 1) * k], &mut q);
            assert_eq!(s, scales[r]);
            for c in 0..k {
                assert_eq!(out[r * 40 + c], (q[c] as u8) ^ 0x80);
            }
            assert_eq!(&out[r * 40 + k..r * 40 + 40], &[128, 128, 128]);
        }
    }
}

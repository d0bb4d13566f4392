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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn quantize_rows_avx512(x: &[f32], k: usize, kp: usize, enc: ActEncoding, out: &mut [u8], scales: &mut [f32]) {
    quantize_rows_generic(x, k, kp, enc, out, scales)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn quantize_rows_avx2(x: &[f32], k: usize, kp: usize, enc: ActEncoding, out: &mut [u8], scales: &mut [f32]) {
    quantize_rows_generic(x, k, kp, enc, out, scales)
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
    match kind {
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512Vnni => {
            // SAFETY: Avx512Vnni is only selected when avx512f/bw/vl, avx2 and fma were detected.
            unsafe { quantize_rows_avx512(x, k, kp, enc, out, scales) }
        }
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2 | KernelKind::AvxVnni => {
            // SAFETY: these kinds are only selected when avx2 and fma were detected.
            unsafe { quantize_rows_avx2(x, k, kp, enc, out, scales) }
        }
        _ => quantize_rows_generic(x, k, kp, enc, out, scales),
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

//! The W8A8 scheme's weight half: symmetric per-output-channel int8.
//!
//! For each row `w` (one output channel) of a Linear weight:
//!
//! * `scale = max|w| / 127`, rounded to the weight's own float dtype (round to nearest even), the
//!   form compressed-tensors stores as `weight_scale`. If that rounds to zero (an all-zero row, or
//!   one so small that `max|w| / 127` underflows the dtype), the dtype's smallest positive value is
//!   used instead, so the scale is always finite and nonzero and a zero row quantizes to zeros.
//! * `q = clamp(round_half_to_even(w / scale), -127, 127)`, with the scale *as stored*, so that
//!   `q * scale` is exactly the reconstruction a loader computes and the report measures. Round half
//!   to even is what `torch.round` (and so compressed-tensors) does; the range is symmetric, so
//!   -128 is never produced.
//!
//! Activations are quantized dynamically per token at run time; nothing is stored for them.

use crate::dtype::WeightDtype;

/// The largest magnitude of a symmetric int8 value.
pub const QMAX: f32 = 127.0;

/// Adding and subtracting 1.5 * 2^23 rounds an f32 of magnitude below 2^22 to an integer, half
/// to even (the default IEEE rounding mode), in two vectorizable instructions; `f32::round_ties_even`
/// would be a library call per element on the baseline x86-64 target.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Lanes of the accumulators below: one SSE register each on the baseline x86-64 target, so the
/// five error sums stay in registers (eight lanes spilled them to the stack, measured with perf).
const LANES: usize = 4;

/// Error sums of one row or one layer, accumulated in f64.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorSums {
    /// Σ w².
    pub weight_energy: f64,
    /// Σ (w - ŵ)².
    pub error_energy: f64,
    /// Σ ŵ².
    pub reconstruction_energy: f64,
    /// Σ w·ŵ.
    pub cross: f64,
    /// max |w - ŵ|.
    pub max_abs_error: f64,
}

impl ErrorSums {
    /// Combines the sums of two disjoint parts.
    pub fn merge(self, other: ErrorSums) -> ErrorSums {
        ErrorSums {
            weight_energy: self.weight_energy + other.weight_energy,
            error_energy: self.error_energy + other.error_energy,
            reconstruction_energy: self.reconstruction_energy + other.reconstruction_energy,
            cross: self.cross + other.cross,
            max_abs_error: self.max_abs_error.max(other.max_abs_error),
        }
    }

    /// Signal-to-quantization-noise ratio in dB, `10 log10(Σw² / Σ(w-ŵ)²)`; `None` when the error
    /// is exactly zero (infinite SQNR).
    pub fn sqnr_db(&self) -> Option<f64> {
        if self.error_energy == 0.0 {
            return None;
        }
        Some(10.0 * (self.weight_energy / self.error_energy).log10())
    }

    /// Root-mean-square error relative to the weights' RMS, `sqrt(Σ(w-ŵ)² / Σw²)` (0 for a zero
    /// weight).
    pub fn relative_rmse(&self) -> f64 {
        if self.weight_energy == 0.0 {
            return 0.0;
        }
        (self.error_energy / self.weight_energy).sqrt()
    }

    /// Cosine similarity of the weight and its reconstruction, flattened (1 when both are zero).
    pub fn cosine(&self) -> f64 {
        let norms = (self.weight_energy * self.reconstruction_energy).sqrt();
        if norms == 0.0 {
            return if self.weight_energy == self.reconstruction_energy { 1.0 } else { 0.0 };
        }
        self.cross / norms
    }
}

/// The first non-finite value of a row: its column and the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFinite {
    /// Column of the value.
    pub column: usize,
    /// The value (NaN or ±inf).
    pub value: f32,
}

/// The scale stored for a row whose largest magnitude is `max_abs`.
pub fn stored_scale(max_abs: f32, dtype: WeightDtype) -> f32 {
    let scale = dtype.round_trip(max_abs / QMAX);
    if scale > 0.0 { scale } else { dtype.smallest_positive() }
}

/// Quantizes one row: writes `q` into `out` and returns the stored scale with the row's error
/// sums, or the first non-finite value.
///
/// Written as separate simple passes over the row (max, quantize, narrow, error sums) so that
/// each one auto-vectorizes on the baseline x86-64 target; the row stays in L1 between passes.
pub fn quantize_row(row: &[f32], dtype: WeightDtype, out: &mut [i8]) -> Result<(f32, ErrorSums), NonFinite> {
    debug_assert_eq!(row.len(), out.len());
    let mut max_lanes = [0.0f32; LANES];
    // Any NaN or infinity makes `v * 0` NaN, so one sum tells whether the row is finite.
    let mut finite_probe = [0.0f32; LANES];
    for_lanes(row, |lane, w| {
        max_lanes[lane] = max_lanes[lane].max(w.abs());
        finite_probe[lane] += w * 0.0;
    });
    if finite_probe.iter().any(|p| p.is_nan()) {
        let column = row.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(NonFinite { column, value: row[column] });
    }
    let max_abs = max_lanes.iter().fold(0.0f32, |m, v| m.max(*v));
    let scale = stored_scale(max_abs, dtype);

    let mut weight_energy = [0.0f32; LANES];
    let mut error_energy = [0.0f32; LANES];
    let mut reconstruction_energy = [0.0f32; LANES];
    let mut cross = [0.0f32; LANES];
    let mut max_error = [0.0f32; LANES];
    let mut rounded = [0.0f32; PASS_CHUNK];
    for (chunk, q_chunk) in row.chunks(PASS_CHUNK).zip(out.chunks_mut(PASS_CHUNK)) {
        let rounded = &mut rounded[..chunk.len()];
        for ((r, q), w) in rounded.iter_mut().zip(q_chunk.iter_mut()).zip(chunk) {
            let biased = (w / scale).clamp(-QMAX, QMAX) + ROUND_MAGIC;
            // `biased` lies in [2^23, 2^24), where one unit in the last place is 1, so its bits are
            // those of ROUND_MAGIC plus the rounded integer: the low byte is that integer in two's
            // complement. Integer ops only, unlike the saturating float-to-int cast.
            *q = biased.to_bits() as u8 as i8;
            *r = biased - ROUND_MAGIC;
        }
        for_lanes_zip(chunk, rounded, |lane, w, r| {
            let reconstruction = r * scale;
            let error = w - reconstruction;
            weight_energy[lane] += w * w;
            error_energy[lane] += error * error;
            reconstruction_energy[lane] += reconstruction * reconstruction;
            cross[lane] += w * reconstruction;
            max_error[lane] = max_error[lane].max(error.abs());
        });
    }
    let sum = |lanes: [f32; LANES]| lanes.iter().map(|v| f64::from(*v)).sum::<f64>();
    let sums = ErrorSums {
        weight_energy: sum(weight_energy),
        error_energy: sum(error_energy),
        reconstruction_energy: sum(reconstruction_energy),
        cross: sum(cross),
        max_abs_error: f64::from(max_error.iter().fold(0.0f32, |m, v| m.max(*v))),
    };
    Ok((scale, sums))
}

/// Elements per pass of [`quantize_row`]: the rounded values of one chunk stay on the stack and
/// in L1 between the passes.
const PASS_CHUNK: usize = 512;

/// Calls `f(lane, value)` for every value, lane = index mod [`LANES`], in fixed-width chunks the
/// compiler can vectorize (the accumulators `f` updates are per lane, so no reassociation is
/// needed).
#[inline(always)]
fn for_lanes(values: &[f32], mut f: impl FnMut(usize, f32)) {
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, value) in chunk.iter().enumerate() {
            f(lane, *value);
        }
    }
    for (lane, value) in tail.iter().enumerate() {
        f(lane, *value);
    }
}

/// [`for_lanes`] over two slices of equal length.
#[inline(always)]
fn for_lanes_zip(a: &[f32], b: &[f32], mut f: impl FnMut(usize, f32, f32)) {
    let a_chunks = a.chunks_exact(LANES);
    let b_chunks = b.chunks_exact(LANES);
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (a_chunk, b_chunk) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            f(lane, a_chunk[lane], b_chunk[lane]);
        }
    }
    for (lane, (a, b)) in a_tail.iter().zip(b_tail).enumerate() {
        f(lane, *a, *b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// f32 sums over one row of at most a few thousand values, against an f64 reference.
    const SUM_RELATIVE_TOLERANCE: f64 = 1e-4;

    #[test]
    fn zero_row_gets_a_finite_nonzero_scale_and_zeros() {
        for dtype in [WeightDtype::F32, WeightDtype::F16, WeightDtype::BF16] {
            let mut q = [1i8; 5];
            let (scale, sums) = quantize_row(&[0.0; 5], dtype, &mut q).unwrap();
            assert!(scale > 0.0 && scale.is_finite(), "{dtype:?}");
            assert_eq!(q, [0; 5]);
            assert_eq!(sums.sqnr_db(), None);
            assert_eq!(sums.cosine(), 1.0);
        }
    }

    #[test]
    fn tiny_row_does_not_underflow_the_f16_scale() {
        let mut q = [0i8; 2];
        let (scale, _) = quantize_row(&[1e-7, -2e-7], WeightDtype::F16, &mut q).unwrap();
        assert!(scale > 0.0);
        assert!(q.iter().all(|v| (-127..=127).contains(v)));
    }

    #[test]
    fn ties_round_to_even_with_the_stored_scale() {
        // max 127 -> scale exactly 1, so w / scale are the values themselves.
        let row = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -126.5, 3.4999];
        let mut q = [0i8; 8];
        let (scale, _) = quantize_row(&row, WeightDtype::F32, &mut q).unwrap();
        assert_eq!(scale, 1.0);
        assert_eq!(q, [127, 0, 2, 2, 0, -2, -126, 3]);
    }

    #[test]
    fn nonfinite_values_are_located() {
        let mut q = [0i8; 10];
        let mut row = [1.0f32; 10];
        row[9] = f32::NEG_INFINITY;
        assert_eq!(
            quantize_row(&row, WeightDtype::F32, &mut q),
            Err(NonFinite { column: 9, value: f32::NEG_INFINITY })
        );
        row[3] = f32::NAN;
        assert_eq!(quantize_row(&row, WeightDtype::F32, &mut q).unwrap_err().column, 3);
    }

    proptest! {
        #[test]
        fn quantization_matches_an_f64_reference(
            row in proptest::collection::vec(-1000.0f32..1000.0, 1..300),
            dtype in prop_oneof![Just(WeightDtype::F32), Just(WeightDtype::F16), Just(WeightDtype::BF16)],
        ) {
            let row: Vec<f32> = row.iter().map(|v| dtype.round_trip(*v)).collect();
            let mut q = vec![0i8; row.len()];
            let (scale, sums) = quantize_row(&row, dtype, &mut q).unwrap();
            let max_abs = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            prop_assert_eq!(scale, stored_scale(max_abs, dtype));
            let mut reference = ErrorSums::default();
            for (w, q) in row.iter().zip(&q) {
                let expected = (f64::from(*w) / f64::from(scale)).round_ties_even().clamp(-127.0, 127.0);
                // Ties decided in f32 may differ from f64 only when w / scale is not exact in f32.
                prop_assert!((f64::from(*q) - expected).abs() <= 1.0);
                let reconstruction = f64::from(*q) * f64::from(scale);
                let error = f64::from(*w) - reconstruction;
                reference.weight_energy += f64::from(*w) * f64::from(*w);
                reference.error_energy += error * error;
                reference.max_abs_error = reference.max_abs_error.max(error.abs());
            }
            let close = |a: f64, b: f64| (a - b).abs() <= SUM_RELATIVE_TOLERANCE * b.abs().max(1e-12);
            prop_assert!(close(sums.weight_energy, reference.weight_energy));
            // Errors near zero are f32 rounding of the reconstruction `q * scale`: compare them
            // with an absolute allowance of one f32 rounding at the row's magnitude.
            let rounding = f64::from(f32::EPSILON) * f64::from(max_abs);
            prop_assert!((sums.max_abs_error - reference.max_abs_error).abs() <= SUM_RELATIVE_TOLERANCE * reference.max_abs_error + rounding);
            // Every value is within half a step of its reconstruction (clamping cannot bite,
            // since the scale is at least max/127 up to the dtype's rounding).
            let half_step = f64::from(scale) * 0.5 * (1.0 + 1e-2);
            prop_assert!(reference.max_abs_error <= half_step + f64::from(max_abs) * 1e-2);
        }
    }
}

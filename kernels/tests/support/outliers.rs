//! The outlier decomposition's CPU reference, shared by the GPU checks: kernels/examples/gpu_check.rs
//! (on a GPU) and kernels/tests/cuda_emulator.rs (on the CUDA emulator).

use qtier_kernels::cuda::OutlierRule;
use qtier_kernels::{Activation, KernelError, QuantizedLinear};

/// The outlier rule of qtier's CPU runtime (`qtier_models::linear::{OUTLIER_RATIO,
/// OUTLIER_TRIGGER_RATIO, MAX_OUTLIER_CHANNELS}`).
pub const RULE: OutlierRule = OutlierRule { ratio: 3.0, trigger_ratio: 8.0, max_channels: 16 };

/// Relative distance from a rule threshold within which a row's outlier decision may differ
/// between the GPU (tree-summed f32 RMS) and [`select_outliers`] (f64).
pub const RULE_MARGIN: f32 = 1e-3;

/// One row's outliers: `(channel, value)`, largest magnitude first.
pub type Outliers = Vec<(usize, f32)>;

/// `x` (`m x k`) with outliers planted: every third row gets three (two of equal magnitude and
/// opposite signs: a tie), every third row after it twenty (more than [`RULE`] takes), the rest
/// none.
pub fn with_planted_outliers(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let mut x = x.to_vec();
    for row in 0..m {
        let planted: Vec<f32> = match row % 3 {
            0 => vec![40.0, -40.0, 25.0],
            1 => (0..20).map(|j| if j % 2 == 0 { 30.0 + j as f32 } else { -(30.0 + j as f32) }).collect(),
            _ => Vec::new(),
        };
        for (j, v) in planted.into_iter().enumerate() {
            x[row * k + (row * 7 + j * 13) % k] = v;
        }
    }
    x
}

/// [`RULE`]'s selection on one row, and whether the row is clear of the rule's thresholds by
/// [`RULE_MARGIN`] (else the GPU may decide it differently).
pub fn select_outliers(row: &[f32]) -> (Outliers, bool) {
    let rms = (row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / row.len() as f64).sqrt() as f32;
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    let near = |a: f32, threshold: f32| (a - threshold).abs() <= RULE_MARGIN * threshold;
    let (trigger, threshold) = (rms * RULE.trigger_ratio, rms * RULE.ratio);
    if max <= trigger {
        return (Vec::new(), !near(max, trigger));
    }
    let mut picked: Outliers =
        row.iter().enumerate().filter(|(_, v)| v.abs() > threshold).map(|(j, &v)| (j, v)).collect();
    picked.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
    picked.truncate(RULE.max_channels);
    (picked, !near(max, trigger) && row.iter().all(|v| !near(v.abs(), threshold)))
}

/// The decomposed layer on the CPU: `plain` (the layer's weights, bias, no activation) on the
/// rows with their outliers zeroed (`zeroed`, `m x k`), each outlier's value times its
/// dequantized weight column (`w`, `[n, k]`, and `scales`) added, then `activation` and
/// `residual`.
#[allow(clippy::too_many_arguments)]
pub fn decomposed_output(
    plain: &QuantizedLinear,
    w: &[i8],
    scales: &[f32],
    zeroed: &[f32],
    lists: &[Outliers],
    activation: Activation,
    residual: &[f32],
) -> Result<Vec<f32>, KernelError> {
    let (n, k, m) = (plain.n(), plain.k(), lists.len());
    let mut out = vec![0f32; m * n];
    plain.forward_into(zeroed, m, &mut out, None)?;
    for (row, list) in lists.iter().enumerate() {
        for &(channel, value) in list {
            for (col, y) in out[row * n..(row + 1) * n].iter_mut().enumerate() {
                *y += value * (f32::from(w[col * k + channel]) * scales[col]);
            }
        }
    }
    qtier_kernels::activation::apply_in_place(activation, &mut out);
    for (y, r) in out.iter_mut().zip(residual) {
        *y += r;
    }
    Ok(out)
}

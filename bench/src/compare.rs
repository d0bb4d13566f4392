//! Comparing two bench reports for CI: per workload, the change of the median and the tail, a
//! Mann-Whitney U test of "the new samples are slower", and a noise threshold.
//!
//! A workload is a **regression** when both hold:
//! - its median grew by more than the allowed threshold (`--max-regression`, default 5%): changes
//!   smaller than that are treated as noise whatever their significance, since a shared machine
//!   drifts by a few percent between runs;
//! - the one-sided Mann-Whitney U test (Mann & Whitney 1947; normal approximation with tie
//!   correction, as in SciPy's `mannwhitneyu(method="asymptotic")`) rejects "not slower" at
//!   [`SIGNIFICANCE`].
//!
//! The test asks whether a random new sample tends to exceed a random old one, which is robust to
//! the outliers latency samples have; the threshold keeps significant-but-tiny shifts (a large
//! sample makes any 0.5% drift significant) from failing builds.

use serde::{Deserialize, Serialize};

use crate::model_bench::ModelBenchReport;

/// One-sided significance level of the Mann-Whitney test.
pub const SIGNIFICANCE: f64 = 0.01;
/// Default allowed growth of the median before a significant change counts as a regression.
pub const DEFAULT_MAX_REGRESSION: f64 = 0.05;

/// The comparison of one workload present in both reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkloadComparison {
    /// Workload name (`b1xs128`).
    pub name: String,
    /// Old median, ns.
    pub old_median_ns: f64,
    /// New median, ns.
    pub new_median_ns: f64,
    /// `new / old - 1` of the medians.
    pub median_change: f64,
    /// Old tail percentile, ns.
    pub old_tail_ns: f64,
    /// New tail percentile, ns.
    pub new_tail_ns: f64,
    /// `new / old - 1` of the tail percentiles.
    pub tail_change: f64,
    /// One-sided p-value of "new is not slower than old".
    pub p_value: f64,
    /// Significant and beyond the threshold.
    pub regression: bool,
    /// Significantly faster and beyond the threshold.
    pub improvement: bool,
}

impl WorkloadComparison {
    /// The verdict in words: `regression`, `improvement` or `no significant change`.
    pub fn verdict(&self) -> &'static str {
        if self.regression {
            "regression"
        } else if self.improvement {
            "improvement"
        } else {
            "no significant change"
        }
    }
}

/// The comparison of two reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    /// Allowed median growth (fraction).
    pub max_regression: f64,
    /// Per workload present in both.
    pub workloads: Vec<WorkloadComparison>,
    /// Workloads of only one report (compared by name).
    pub unmatched: Vec<String>,
    /// True when any workload regressed.
    pub regressed: bool,
}

/// Compares `new` against `old`.
pub fn compare(old: &ModelBenchReport, new: &ModelBenchReport, max_regression: f64) -> Comparison {
    let mut workloads = Vec::new();
    let mut unmatched = Vec::new();
    for new_workload in &new.workloads {
        let Some(old_workload) = old.workloads.iter().find(|w| w.name == new_workload.name) else {
            unmatched.push(new_workload.name.clone());
            continue;
        };
        let p_value = mann_whitney_greater(&new_workload.samples_ns, &old_workload.samples_ns);
        let (old_stats, new_stats) = (&old_workload.stats, &new_workload.stats);
        let old_tail = old_stats.tail();
        let new_tail = new_stats.tail();
        let median_change = new_stats.p50 / old_stats.p50 - 1.0;
        let faster_p = mann_whitney_greater(&old_workload.samples_ns, &new_workload.samples_ns);
        workloads.push(WorkloadComparison {
            name: new_workload.name.clone(),
            old_median_ns: old_stats.p50,
            new_median_ns: new_stats.p50,
            median_change,
            old_tail_ns: old_tail,
            new_tail_ns: new_tail,
            tail_change: new_tail / old_tail - 1.0,
            p_value,
            regression: median_change > max_regression && p_value < SIGNIFICANCE,
            improvement: -median_change > max_regression && faster_p < SIGNIFICANCE,
        });
    }
    unmatched.extend(
        old.workloads.iter().filter(|w| !new.workloads.iter().any(|n| n.name == w.name)).map(|w| w.name.clone()),
    );
    let regressed = workloads.iter().any(|w| w.regression);
    Comparison { max_regression, workloads, unmatched, regressed }
}

/// One-sided p-value of the Mann-Whitney U test for "`a` tends to be larger than `b`", with the
/// normal approximation, tie correction and continuity correction.
pub fn mann_whitney_greater(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    if a.is_empty() || b.is_empty() {
        return 1.0;
    }
    let mut all: Vec<(f64, bool)> = a.iter().map(|v| (*v, true)).chain(b.iter().map(|v| (*v, false))).collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Mid-ranks for ties, and the tie correction term Σ(t³ - t).
    let mut rank_sum_a = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let mid_rank = (i + j) as f64 / 2.0 + 1.0;
        let ties = (j - i + 1) as f64;
        tie_term += ties * ties * ties - ties;
        rank_sum_a += all[i..=j].iter().filter(|(_, from_a)| *from_a).count() as f64 * mid_rank;
        i = j + 1;
    }
    let u = rank_sum_a - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let mean = n1 * n2 / 2.0;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if variance <= 0.0 {
        return 1.0;
    }
    let z = (u - mean - 0.5) / variance.sqrt();
    upper_normal_tail(z)
}

/// `P(Z > z)` for a standard normal `Z`, from the complementary error function (Numerical Recipes'
/// Chebyshev approximation of erfc, relative error below 1.2e-7).
fn upper_normal_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The comparison as a Markdown table for a pull-request comment.
pub fn to_markdown(comparison: &Comparison) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| workload | median old -> new (ms) | change | tail old -> new (ms) | change | p-value | verdict |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|");
    for w in &comparison.workloads {
        let verdict = if w.regression { "**regression**" } else { w.verdict() };
        let _ = writeln!(
            md,
            "| {} | {:.3} -> {:.3} | {:+.1}% | {:.3} -> {:.3} | {:+.1}% | {:.2e} | {verdict} |",
            w.name,
            w.old_median_ns / 1e6,
            w.new_median_ns / 1e6,
            w.median_change * 100.0,
            w.old_tail_ns / 1e6,
            w.new_tail_ns / 1e6,
            w.tail_change * 100.0,
            w.p_value
        );
    }
    let _ = writeln!(
        md,
        "\nRegression: median more than {:.1}% slower and Mann-Whitney one-sided p < {SIGNIFICANCE}.",
        comparison.max_regression * 100.0
    );
    if !comparison.unmatched.is_empty() {
        let _ = writeln!(md, "Workloads in only one report: {}.", comparison.unmatched.join(", "));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(count: usize, center: f64, seed: u64) -> Vec<f64> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                center * (1.0 + ((state >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 0.1)
            })
            .collect()
    }

    #[test]
    fn mann_whitney_separates_shifted_samples_and_not_equal_ones() {
        let old = noisy(500, 100.0, 1);
        assert!(mann_whitney_greater(&noisy(500, 120.0, 2), &old) < 1e-6);
        let same = mann_whitney_greater(&noisy(500, 100.0, 3), &old);
        assert!(same > SIGNIFICANCE, "p = {same}");
        assert!(mann_whitney_greater(&old, &noisy(500, 120.0, 4)) > 0.99);
    }

    #[test]
    fn identical_constant_samples_are_never_significant() {
        assert_eq!(mann_whitney_greater(&[5.0; 10], &[5.0; 10]), 1.0);
    }

    #[test]
    fn erfc_matches_known_values() {
        for (x, expected) in [(0.0, 1.0), (1.0, 0.157_299_207), (2.0, 0.004_677_735), (-1.0, 1.842_700_793)] {
            assert!((erfc(x) - expected).abs() < 1e-6, "erfc({x})");
        }
    }
}

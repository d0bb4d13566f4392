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
//!
//! **Interleaved runs** (reports pooled by [`crate::model_bench::merge_reports`] from alternating
//! old/new runs, as `scripts/bench-ab.sh` makes them): when both sides pool at least
//! [`MIN_RUNS`] runs, the unit of comparison is the run, not the sample. Samples of one run share
//! its machine state (a noisy neighbour, the CPU's clock, where the pages landed), so thousands of
//! them are not independent and a sample-level test calls any between-run drift significant; on
//! this project's shared 2-core machine it flagged same-build pairs during contention. The gate
//! then compares the median of the run medians (the change, against the threshold) and tests the
//! run medians with the exact one-sided Mann-Whitney test at [`RUN_SIGNIFICANCE`]: with 4 runs a
//! side, only a complete separation (every new run slower than every old one, p = 1/70) counts,
//! which an interleaved same-build pair reaches by chance with probability 1/70.

use serde::{Deserialize, Serialize};

use crate::model_bench::ModelBenchReport;
use crate::stats::median_in_place;

/// One-sided significance level of the Mann-Whitney test.
pub const SIGNIFICANCE: f64 = 0.01;
/// Default allowed growth of the median before a significant change counts as a regression.
pub const DEFAULT_MAX_REGRESSION: f64 = 0.05;
/// Runs each side must pool for the run-level test.
pub const MIN_RUNS: usize = 3;
/// One-sided significance level of the exact Mann-Whitney test on run medians.
pub const RUN_SIGNIFICANCE: f64 = 0.05;
/// Largest pooled run count for which the run-level test enumerates every split exactly
/// (C(20, 10) = 184,756 splits); beyond it the normal approximation is used.
const EXACT_MAX_RUNS: usize = 20;

/// What a workload's verdict was computed from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ComparisonUnit {
    /// Every sample of two single runs (Mann-Whitney at [`SIGNIFICANCE`]).
    Samples,
    /// The run medians of two pooled interleaved reports (exact Mann-Whitney at
    /// [`RUN_SIGNIFICANCE`]).
    Runs,
}

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
    /// What the test compared (absent in reports written before run-level tests: samples).
    #[serde(default = "samples_unit")]
    pub unit: ComparisonUnit,
    /// Runs pooled on the old and the new side.
    #[serde(default = "one_run_each")]
    pub runs: (usize, usize),
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

fn samples_unit() -> ComparisonUnit {
    ComparisonUnit::Samples
}

fn one_run_each() -> (usize, usize) {
    (1, 1)
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
        let (old_stats, new_stats) = (&old_workload.stats, &new_workload.stats);
        let (old_runs, new_runs) = (old_workload.run_medians(), new_workload.run_medians());
        let by_runs = old_runs.len() >= MIN_RUNS && new_runs.len() >= MIN_RUNS;
        let (unit, old_median, new_median, p_value, faster_p, alpha) = if by_runs {
            (
                ComparisonUnit::Runs,
                median_in_place(&mut old_runs.clone()),
                median_in_place(&mut new_runs.clone()),
                mann_whitney_greater_exact(&new_runs, &old_runs),
                mann_whitney_greater_exact(&old_runs, &new_runs),
                RUN_SIGNIFICANCE,
            )
        } else {
            (
                ComparisonUnit::Samples,
                old_stats.p50,
                new_stats.p50,
                mann_whitney_greater(&new_workload.samples_ns, &old_workload.samples_ns),
                mann_whitney_greater(&old_workload.samples_ns, &new_workload.samples_ns),
                SIGNIFICANCE,
            )
        };
        let (old_tail, new_tail) = (old_stats.tail(), new_stats.tail());
        let median_change = new_median / old_median - 1.0;
        workloads.push(WorkloadComparison {
            name: new_workload.name.clone(),
            old_median_ns: old_median,
            new_median_ns: new_median,
            median_change,
            old_tail_ns: old_tail,
            new_tail_ns: new_tail,
            tail_change: new_tail / old_tail - 1.0,
            p_value,
            unit,
            runs: (old_runs.len(), new_runs.len()),
            regression: median_change > max_regression && p_value < alpha,
            improvement: -median_change > max_regression && faster_p < alpha,
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

/// Mann-Whitney's U for "`a` tends to be larger than `b`": pairs with `a > b`, ties counted half.
fn u_statistic(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .map(|x| {
            b.iter()
                .map(|y| {
                    if x > y {
                        1.0
                    } else if x == y {
                        0.5
                    } else {
                        0.0
                    }
                })
                .sum::<f64>()
        })
        .sum()
}

/// One-sided exact p-value of the Mann-Whitney U test for "`a` tends to be larger than `b`": the
/// share of all ways to split the pooled values into groups of `a.len()` and `b.len()` whose U is
/// at least the observed one (ties kept as observed, so the test stays exact with ties). Falls back
/// to [`mann_whitney_greater`] above 20 values in all (`EXACT_MAX_RUNS`).
pub fn mann_whitney_greater_exact(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() + b.len();
    if a.is_empty() || b.is_empty() {
        return 1.0;
    }
    if n > EXACT_MAX_RUNS {
        return mann_whitney_greater(a, b);
    }
    let pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    let observed = u_statistic(a, b);
    let (mut at_least, mut total) = (0u64, 0u64);
    // Every subset of `a.len()` positions of the pooled values, as a bit mask.
    for mask in 0u32..(1u32 << n) {
        if mask.count_ones() as usize != a.len() {
            continue;
        }
        let (mut left, mut right) = (Vec::with_capacity(a.len()), Vec::with_capacity(b.len()));
        for (i, &v) in pooled.iter().enumerate() {
            if mask & (1 << i) != 0 { left.push(v) } else { right.push(v) }
        }
        total += 1;
        // A relative epsilon: U is a sum of halves, exact in f64.
        if u_statistic(&left, &right) >= observed - 1e-9 {
            at_least += 1;
        }
    }
    at_least as f64 / total as f64
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
        "\nRegression: median more than {:.1}% slower and Mann-Whitney one-sided p < {SIGNIFICANCE} over \
         the samples of single runs, or p < {RUN_SIGNIFICANCE} (exact) over the run medians when both sides \
         pool at least {MIN_RUNS} interleaved runs ({}).",
        comparison.max_regression * 100.0,
        comparison
            .workloads
            .iter()
            .map(|w| match w.unit {
                ComparisonUnit::Samples => format!("{}: samples", w.name),
                ComparisonUnit::Runs => format!("{}: {} vs {} runs", w.name, w.runs.0, w.runs.1),
            })
            .collect::<Vec<_>>()
            .join(", ")
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
    fn exact_test_matches_hand_counts() {
        // 4 vs 4, complete separation: 1 split of 70 has U = 16.
        let p = mann_whitney_greater_exact(&[5.0, 6.0, 7.0, 8.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!((p - 1.0 / 70.0).abs() < 1e-12, "p = {p}");
        // The reverse direction is certain.
        assert_eq!(mann_whitney_greater_exact(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]), 1.0);
        // One overlap (U = 15): the splits with U >= 15 are U = 16 and U = 15, 2 of 70.
        let p = mann_whitney_greater_exact(&[4.5, 6.0, 7.0, 8.0], &[1.0, 2.0, 3.0, 5.0]);
        assert!((p - 2.0 / 70.0).abs() < 1e-12, "p = {p}");
        // All equal: every split ties, p = 1.
        assert_eq!(mann_whitney_greater_exact(&[3.0; 4], &[3.0; 4]), 1.0);
    }

    /// A pooled workload: each run contributes 50 samples around its median.
    fn workload(name: &str, run_medians: &[f64]) -> crate::model_bench::ModelWorkload {
        let samples: Vec<f64> = run_medians.iter().flat_map(|&m| noisy(50, m, m.to_bits())).collect();
        let mut workload = crate::export::test_report::workload(name, 1, samples);
        workload.run_medians_ns = run_medians.to_vec();
        workload
    }

    #[test]
    fn run_level_gate_ignores_drift_between_runs_and_flags_a_consistent_regression() {
        let report = |runs: &[f64]| {
            let mut r = crate::export::test_report::report();
            r.workloads = vec![workload("b1xs32", runs)];
            r
        };
        // Same build, the machine drifting by 12% across runs: the medians differ by 10% (beyond
        // the threshold, and a sample-level test finds it significant), but the runs overlap.
        let old = report(&[100.0, 101.0, 112.0, 102.0]);
        let same = report(&[112.0, 113.0, 100.5, 111.0]);
        let verdict = compare(&old, &same, DEFAULT_MAX_REGRESSION);
        let w = &verdict.workloads[0];
        assert_eq!((w.unit, w.runs), (ComparisonUnit::Runs, (4, 4)));
        assert!(w.median_change > DEFAULT_MAX_REGRESSION, "{w:?}");
        assert!(!verdict.regressed, "{w:?}");
        assert!(mann_whitney_greater(&same.workloads[0].samples_ns, &old.workloads[0].samples_ns) < SIGNIFICANCE);
        // Every new run 20% slower than every old one: flagged.
        let slow = report(&[121.0, 122.0, 120.5, 123.0]);
        let verdict = compare(&old, &slow, DEFAULT_MAX_REGRESSION);
        assert!(verdict.regressed, "{:?}", verdict.workloads[0]);
        // Single runs keep the sample-level test.
        let single = compare(&report(&[100.0]), &report(&[120.0]), DEFAULT_MAX_REGRESSION);
        assert_eq!(single.workloads[0].unit, ComparisonUnit::Samples);
        assert!(single.regressed);
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

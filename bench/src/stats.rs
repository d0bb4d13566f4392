//! Statistics of latency samples: pure functions on a validated [`Sample`].
//!
//! Nothing here measures time or touches files; the timing loop hands its raw observations
//! (nanoseconds, though nothing depends on the unit) to [`Sample::new`], and [`Summary::compute`]
//! derives everything a `BenchReport` shows. Every estimator and rule cites its source:
//!
//! - **Percentiles**: Hyndman & Fan (1996), "Sample quantiles in statistical packages", *The
//!   American Statistician* 50(4), definition 7: with the sorted values `x[0..n]` and
//!   `h = (n - 1) * p / 100`, the estimate is `x[⌊h⌋] + (h - ⌊h⌋) * (x[⌊h⌋ + 1] - x[⌊h⌋])`,
//!   linear interpolation between the closest ranks. It is the default of R's `quantile` and of
//!   NumPy's `percentile` (`method = "linear"`), so numbers here can be checked against either.
//!   The 0th percentile is the minimum and the 100th the maximum.
//! - **Confidence intervals**: the percentile bootstrap of Efron & Tibshirani (1993), *An
//!   Introduction to the Bootstrap*, chapter 13: the 2.5th and 97.5th percentiles of
//!   [`BOOTSTRAP_RESAMPLES`] bootstrap replicates of the statistic. A replicate is not computed by
//!   materialising and sorting a resample (too slow for 200 000 observations): drawing `n` values
//!   with replacement from the sorted sample is the same as mapping `n` uniform variates `U` through
//!   the empirical quantile function `x[⌊n U⌋]`, which is monotone, so the resample's k-th order
//!   statistic is `x[⌊n U₍ₖ₎⌋]` where `U₍ₖ₎ ~ Beta(k, n + 1 - k)` is the k-th order statistic of
//!   `n` uniforms (David & Nagaraja (2003), *Order Statistics*, chapter 2). Given `U₍ₖ₎ = u`, the
//!   remaining `n - k` uniforms are independent on `(u, 1)`, which gives `U₍ₖ₊₁₎` for the
//!   interpolation of definition 7. Each replicate therefore has exactly the distribution of the
//!   classic resample-and-sort replicate, at O(1) cost; the tests compare the two. Beta variates
//!   come from two gamma variates (Marsaglia & Tsang (2000), "A simple method for generating gamma
//!   variables", *ACM TOMS* 26(3)) driven by SplitMix64 (Steele, Lea & Flood (2014), "Fast
//!   splittable pseudorandom number generators", OOPSLA), so a given seed always gives the same
//!   interval.
//! - **Early stopping**: MLPerf Inference LoadGen (`loadgen/early_stopping.md`,
//!   `loadgen/early_stopping.cc` and `PerformanceSummary::EarlyStopping` in `loadgen/results.cc` of
//!   <https://github.com/mlcommons/inference>). A query is *overlatency* when its latency is at or
//!   above a candidate bound; with `n` queries of which `t` are overlatency, the run shows (at
//!   confidence `c`) that the true p-th percentile is below the bound when
//!   `P(Binomial(n, 1 - p) <= t) < 1 - c`. LoadGen uses `c = 0.99` ([`EARLY_STOPPING_CONFIDENCE`])
//!   and tolerance `d = 0` (it tests `p - d`). See [`min_samples_for_percentile`] and
//!   [`Sample::early_stopping_upper_bound`] for the two quantities derived from that test.
//! - **Outliers**: the modified z-score of Iglewicz & Hoaglin (1993), *How to Detect and Handle
//!   Outliers*, ASQC Basic References in Quality Control vol. 16:
//!   `Mᵢ = 0.6745 (xᵢ - median) / MAD` with `MAD = median(|xᵢ - median|)`, flagged when
//!   `|Mᵢ| > 3.5`. When `MAD = 0` (more than half the observations equal the median, as with a
//!   coarse timer) `Mᵢ` is infinite for every observation that differs from the median, and exactly
//!   those are flagged. Outliers are only counted and located, never dropped.

use serde::{Deserialize, Serialize};

/// Number of bootstrap replicates behind each confidence interval. Efron & Tibshirani (1993) ask
/// for about 1000 or more for percentile intervals (against 25 to 200 for a standard error),
/// because the endpoints are tail quantiles of the replicates; 2000 halves the Monte Carlo variance of the endpoints again and still costs
/// well under a millisecond with the order-statistic sampler.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// Coverage of the bootstrap confidence intervals ([`Summary::median_ci95`],
/// [`Summary::tail_ci95`]).
pub const CONFIDENCE_INTERVAL_LEVEL: f64 = 0.95;

/// Confidence of the early-stopping bound: the value LoadGen hard-codes in
/// `PerformanceSummary::EarlyStopping` (`double confidence = 0.99;`).
pub const EARLY_STOPPING_CONFIDENCE: f64 = 0.99;

/// `Φ⁻¹(0.75)`: dividing by `MAD / 0.6745` makes the modified z-score a standard score for normal
/// data, whose MAD is `0.6745 σ` (Iglewicz & Hoaglin 1993).
pub const MODIFIED_Z_SCALE: f64 = 0.6745;

/// Modified z-scores whose magnitude exceeds this are outliers: the cut-off Iglewicz & Hoaglin
/// (1993) recommend from simulations of normal samples.
pub const MODIFIED_Z_THRESHOLD: f64 = 3.5;

/// Overlatency queries LoadGen allows for when it states the minimum query count: it reports
/// `find_min_passing(1, p, d, c) + 1` queries, i.e. the test must pass with `t = 1`, because
/// its estimate counts the query at the bound itself as overlatency.
const EARLY_STOPPING_MIN_OVERLATENCY: u64 = 1;

/// The exponential search for [`min_samples_for_percentile`] stops here (the answer saturates to
/// `usize::MAX` beyond it). The largest count any finite input can need is about
/// `-ln(1 - c) / (1 - p)` with `1 - p >= 1.4e-16` (one ulp of 100, divided by 100) and
/// `-ln(1 - c) <= 37`, about 2.6e17, below this.
const EARLY_STOPPING_SEARCH_LIMIT: u64 = 1 << 62;

/// Constant of the squeeze test in Marsaglia & Tsang (2000): accept when `U < 1 - 0.0331 x⁴`, which
/// settles most candidates without the two logarithms of the exact test.
const MARSAGLIA_TSANG_SQUEEZE: f64 = 0.0331;

/// Increment of the SplitMix64 state (Steele, Lea & Flood 2014): the odd integer nearest
/// `2⁶⁴ / φ`, which visits every state once per period.
const SPLITMIX64_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// `2⁻⁵³`: turns the top 53 bits of a random `u64` into a float in `[0, 1)` with every value
/// equally likely, the full precision of an `f64` mantissa.
const F64_FROM_53_BITS: f64 = 1.0 / (1u64 << 53) as f64;

/// Why a statistic could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StatsError {
    /// [`Sample::new`] was given no observations.
    #[error("a sample needs at least one observation, got none")]
    Empty,
    /// An observation is NaN or infinite.
    #[error("observation {index} is {value}; every observation must be a finite number")]
    NonFinite {
        /// Position of the first offending observation in the input.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// The sample is smaller than the statistic needs.
    #[error("{statistic} needs at least {needed} observations, the sample has {found}")]
    TooFewSamples {
        /// What was asked for.
        statistic: &'static str,
        /// The smallest sample size that supports it.
        needed: usize,
        /// The sample size at hand.
        found: usize,
    },
    /// A percentile outside `[0, 100]` (or NaN) was asked for.
    #[error("percentile {percentile} is outside [0, 100]")]
    InvalidPercentile {
        /// The percentile asked for.
        percentile: f64,
    },
    /// A tail percentile (early stopping, [`Summary::compute`]) not strictly between 0 and 100:
    /// no finite number of samples bounds the 100th percentile.
    #[error("tail percentile {percentile} must lie strictly between 0 and 100")]
    InvalidTailPercentile {
        /// The percentile asked for.
        percentile: f64,
    },
    /// A confidence level not strictly between 0 and 1.
    #[error("confidence {confidence} must lie strictly between 0 and 1")]
    InvalidConfidence {
        /// The confidence asked for.
        confidence: f64,
    },
}

/// A non-empty set of finite observations, kept both sorted and in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    sorted: Vec<f64>,
    input: Vec<f64>,
}

impl Sample {
    /// Validates `values`: at least one, all finite.
    pub fn new(values: Vec<f64>) -> Result<Self, StatsError> {
        if values.is_empty() {
            return Err(StatsError::Empty);
        }
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(StatsError::NonFinite { index, value });
        }
        let mut sorted = values.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        Ok(Self { sorted, input: values })
    }

    /// Number of observations (at least 1).
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Always `false`: [`Sample::new`] rejects empty input.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The observations in ascending order.
    pub fn values(&self) -> &[f64] {
        &self.sorted
    }

    /// The observations in the order they were given to [`Sample::new`]; outlier indices refer to
    /// positions in this slice.
    pub fn input_order(&self) -> &[f64] {
        &self.input
    }

    /// The `percentile`-th percentile (`0..=100`), Hyndman & Fan definition 7.
    pub fn percentile(&self, percentile: f64) -> Result<f64, StatsError> {
        check_percentile(percentile)?;
        Ok(type7_percentile(&self.sorted, percentile))
    }

    /// The median: the 50th percentile, the mean of the two middle values when `n` is even.
    pub fn median(&self) -> f64 {
        type7_percentile(&self.sorted, 50.0)
    }

    /// Smallest observation.
    pub fn min(&self) -> f64 {
        self.sorted[0]
    }

    /// Largest observation.
    pub fn max(&self) -> f64 {
        self.sorted[self.sorted.len() - 1]
    }

    /// Arithmetic mean. Exact for a constant sample; within `[min, max]` always.
    pub fn mean(&self) -> f64 {
        if self.min() == self.max() {
            return self.min();
        }
        let n = self.sorted.len() as f64;
        let sum: f64 = self.sorted.iter().sum();
        let mean = if sum.is_finite() { sum / n } else { self.sorted.iter().map(|x| x / n).sum() };
        mean.clamp(self.min(), self.max())
    }

    /// Sample standard deviation, with Bessel's correction (divides by `n - 1`); 0 for a single
    /// observation or a constant sample. Infinite only when the observations span more than
    /// `f64::MAX`.
    pub fn std_dev(&self) -> f64 {
        let n = self.sorted.len();
        if n == 1 || self.min() == self.max() {
            return 0.0;
        }
        let mean = self.mean();
        // Scaling by the largest deviation keeps the sum of squares from overflowing.
        let scale = (self.max() - mean).max(mean - self.min());
        if !scale.is_finite() {
            return f64::INFINITY;
        }
        let sum_of_squares: f64 = self
            .sorted
            .iter()
            .map(|x| {
                let d = (x - mean) / scale;
                d * d
            })
            .sum();
        scale * (sum_of_squares / (n - 1) as f64).sqrt()
    }

    /// Median absolute deviation from the median, unscaled (Iglewicz & Hoaglin 1993).
    pub fn median_absolute_deviation(&self) -> f64 {
        let median = self.median();
        let mut deviations: Vec<f64> = self.sorted.iter().map(|x| (x - median).abs()).collect();
        median_in_place(&mut deviations)
    }

    /// Observations whose modified z-score exceeds [`MODIFIED_Z_THRESHOLD`] in magnitude; when the
    /// MAD is 0, every observation that differs from the median (see the module docs).
    pub fn outliers(&self) -> OutlierSummary {
        let median = self.median();
        let mad = self.median_absolute_deviation();
        let mut summary = OutlierSummary { low: 0, high: 0, indices: Vec::new() };
        for (index, &x) in self.input.iter().enumerate() {
            let flagged = if mad > 0.0 {
                (MODIFIED_Z_SCALE * (x - median) / mad).abs() > MODIFIED_Z_THRESHOLD
            } else {
                x != median
            };
            if flagged {
                if x < median {
                    summary.low += 1;
                } else {
                    summary.high += 1;
                }
                summary.indices.push(index);
            }
        }
        summary
    }

    /// Percentile-bootstrap confidence interval, at [`CONFIDENCE_INTERVAL_LEVEL`], for the
    /// `percentile`-th percentile, from [`BOOTSTRAP_RESAMPLES`] replicates drawn with `seed`.
    ///
    /// The interval always contains the point estimate: in the rare case (tiny or heavily tied
    /// samples) where more than 97.5% of the replicates fall on one side of it, that end is
    /// widened to the estimate rather than reporting an interval that excludes it.
    pub fn percentile_ci95(&self, percentile: f64, seed: u64) -> Result<ConfidenceInterval, StatsError> {
        check_percentile(percentile)?;
        // One stream per percentile, so an interval depends only on the seed and on what it
        // estimates, not on which other intervals were computed first.
        let mut rng = SplitMix64::new(seed ^ SplitMix64::mix(percentile.to_bits()));
        let mut replicates = bootstrap_replicates(&self.sorted, percentile, BOOTSTRAP_RESAMPLES, &mut rng);
        replicates.sort_unstable_by(f64::total_cmp);
        let tail = (1.0 - CONFIDENCE_INTERVAL_LEVEL) / 2.0 * 100.0;
        let estimate = type7_percentile(&self.sorted, percentile);
        Ok(ConfidenceInterval {
            low: type7_percentile(&replicates, tail).min(estimate),
            high: type7_percentile(&replicates, 100.0 - tail).max(estimate),
        })
    }

    /// MLPerf LoadGen's early-stopping estimate of the `percentile`-th percentile: a latency that,
    /// with probability at least `confidence`, the true `percentile`-th percentile of the
    /// distribution the observations came from does not exceed.
    ///
    /// With `q = 1 - percentile / 100`, LoadGen finds the largest `t >= 1` such that
    /// `P(Binomial(n, q) <= t) < 1 - confidence` and returns `x[n - t]` (0-based, ascending),
    /// the t-th largest observation, "discarding the `t - 1` highest latency queries". Why it is
    /// an upper confidence bound for independent observations: for the bound to fall below the
    /// true percentile `Q`, at most `t - 1` observations may reach `Q`; each does so with
    /// probability at least `q`, so that happens with probability at most
    /// `P(Binomial(n, q) <= t - 1) < 1 - confidence`. It is conservative by one order statistic
    /// (LoadGen counts the query at the bound as overlatency), and it approaches the plain
    /// percentile as `n` grows.
    ///
    /// Returns [`StatsError::TooFewSamples`] below [`min_samples_for_percentile`] observations,
    /// where LoadGen reports "Need to process at least ... queries for early stopping".
    pub fn early_stopping_upper_bound(&self, percentile: f64, confidence: f64) -> Result<f64, StatsError> {
        let needed = min_samples_for_percentile(percentile, confidence)?;
        let n = self.sorted.len();
        if n < needed {
            return Err(StatsError::TooFewSamples { statistic: "early-stopping upper bound", needed, found: n });
        }
        let (ln_p, ln_q) = ln_percentile_and_complement(percentile);
        let ln_threshold = (-confidence).ln_1p();
        // Walk the binomial CDF of overlatency counts in log space (P(X = 0) = p^n underflows for
        // large n). P(X <= n) = 1 never passes, so k stops below n, as LoadGen's loop does.
        let mut ln_pmf = n as f64 * ln_p;
        let mut ln_cdf = ln_pmf;
        let mut overlatency = 1;
        for k in 1..n {
            ln_pmf += ((n - k + 1) as f64 / k as f64).ln() + (ln_q - ln_p);
            if ln_pmf.is_nan() {
                // -inf + inf: p or q rounds to 0, so every k below n has probability 0.
                ln_pmf = f64::NEG_INFINITY;
            }
            ln_cdf = ln_add_exp(ln_cdf, ln_pmf);
            // k = 1 passes by the check above; agree with it even if rounding says otherwise.
            if k > 1 {
                if ln_cdf >= ln_threshold {
                    break;
                }
                overlatency = k;
            }
        }
        Ok(self.sorted[n - overlatency])
    }
}

/// A two-sided confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceInterval {
    /// Lower end.
    pub low: f64,
    /// Upper end.
    pub high: f64,
}

/// Observations flagged by the modified z-score rule; they stay in every other statistic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierSummary {
    /// Flagged observations below the median.
    pub low: usize,
    /// Flagged observations above the median.
    pub high: usize,
    /// Positions of the flagged observations in the input order ([`Sample::input_order`]),
    /// ascending, so sample `i` of the raw data can be found.
    pub indices: Vec<usize>,
}

/// The derived statistics of one sample, as stored in a bench report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of observations.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (`n - 1` denominator; 0 for one observation).
    pub std_dev: f64,
    /// Smallest observation.
    pub min: f64,
    /// 50th percentile (median).
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest observation.
    pub max: f64,
    /// 95% percentile-bootstrap confidence interval of the median.
    pub median_ci95: ConfidenceInterval,
    /// Which percentile is the tail of interest (e.g. 99), strictly between 0 and 100.
    pub tail_percentile: f64,
    /// 95% percentile-bootstrap confidence interval of the tail percentile.
    pub tail_ci95: ConfidenceInterval,
    /// LoadGen's early-stopping upper bound on the tail percentile at
    /// [`EARLY_STOPPING_CONFIDENCE`] ([`Sample::early_stopping_upper_bound`]); `None` when the
    /// sample is smaller than [`min_samples_for_percentile`].
    pub tail_upper_bound: Option<f64>,
    /// Outliers by the modified z-score; flagged, not removed.
    pub outliers: OutlierSummary,
}

impl Summary {
    /// The value of the tail percentile this summary names: p99, p95 or p90 for a tail of at
    /// least 99, 95 or otherwise.
    pub fn tail(&self) -> f64 {
        match self.tail_percentile {
            p if p >= 99.0 => self.p99,
            p if p >= 95.0 => self.p95,
            _ => self.p90,
        }
    }

    /// Computes every statistic of `sample`; `tail_percentile` (e.g. 99) must lie strictly between
    /// 0 and 100, and `seed` fixes the bootstrap, so equal inputs give equal summaries.
    pub fn compute(sample: &Sample, tail_percentile: f64, seed: u64) -> Result<Self, StatsError> {
        check_tail_percentile(tail_percentile)?;
        let tail_upper_bound = match sample.early_stopping_upper_bound(tail_percentile, EARLY_STOPPING_CONFIDENCE) {
            Ok(bound) => Some(bound),
            Err(StatsError::TooFewSamples { .. }) => None,
            Err(other) => return Err(other),
        };
        let sorted = sample.values();
        Ok(Self {
            count: sample.len(),
            mean: sample.mean(),
            std_dev: sample.std_dev(),
            min: sample.min(),
            p50: sample.median(),
            p90: type7_percentile(sorted, 90.0),
            p95: type7_percentile(sorted, 95.0),
            p99: type7_percentile(sorted, 99.0),
            max: sample.max(),
            median_ci95: sample.percentile_ci95(50.0, seed)?,
            tail_percentile,
            tail_ci95: sample.percentile_ci95(tail_percentile, seed)?,
            tail_upper_bound,
            outliers: sample.outliers(),
        })
    }
}

/// The smallest number of samples for which LoadGen gives an early-stopping estimate of the
/// `percentile`-th percentile (strictly between 0 and 100) at `confidence` (strictly between 0
/// and 1): the smallest `n` with `P(Binomial(n, 1 - p) <= 1) < 1 - confidence`, where
/// `p = percentile / 100`, that is `p^(n-1) (1 + (n - 1)(1 - p)) < 1 - confidence`.
///
/// This is LoadGen's "Need to process at least `h_min + 1` queries", with
/// `h_min = find_min_passing(t = 1, p, d = 0, c)` the fewest under-latency queries for which one
/// overlatency query still passes (`loadgen/results.cc`, `loadgen/early_stopping.cc`). At
/// `confidence = 0.99` it gives 64 for p90, 130 for p95 and 662 for p99, the minimum query counts
/// LoadGen reports for those percentiles. (Requiring no overlatency query at all, `p^n < 1 - c`, would give 44, 90 and
/// 459; LoadGen's estimate counts the query at the bound itself, hence `t = 1`.) Saturates at
/// `usize::MAX` where the count does not fit.
pub fn min_samples_for_percentile(percentile: f64, confidence: f64) -> Result<usize, StatsError> {
    check_tail_percentile(percentile)?;
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(StatsError::InvalidConfidence { confidence });
    }
    let q = (100.0 - percentile) / 100.0;
    let (ln_p, _) = ln_percentile_and_complement(percentile);
    let ln_threshold = (-confidence).ln_1p();
    // ln P(Binomial(n, q) <= t) for t = 1: (n - 1) ln(1 - q) + ln(1 + (n - 1) q); decreasing in n.
    let passes = |n: u64| {
        let others = (n - EARLY_STOPPING_MIN_OVERLATENCY) as f64;
        others * ln_p + (others * q).ln_1p() < ln_threshold
    };
    // With n = 1 the probability is 1, which never passes.
    let mut failing = EARLY_STOPPING_MIN_OVERLATENCY;
    let mut passing = 2 * failing;
    while !passes(passing) {
        if passing >= EARLY_STOPPING_SEARCH_LIMIT {
            return Ok(usize::MAX);
        }
        failing = passing;
        passing *= 2;
    }
    while passing - failing > 1 {
        let middle = failing + (passing - failing) / 2;
        if passes(middle) {
            passing = middle;
        } else {
            failing = middle;
        }
    }
    Ok(usize::try_from(passing).unwrap_or(usize::MAX))
}

fn check_percentile(percentile: f64) -> Result<(), StatsError> {
    if (0.0..=100.0).contains(&percentile) { Ok(()) } else { Err(StatsError::InvalidPercentile { percentile }) }
}

fn check_tail_percentile(percentile: f64) -> Result<(), StatsError> {
    if percentile > 0.0 && percentile < 100.0 { Ok(()) } else { Err(StatsError::InvalidTailPercentile { percentile }) }
}

/// `(ln(p), ln(1 - p))` for `p = percentile / 100`, each from whichever of `p` and `1 - p` is
/// computed without cancellation.
fn ln_percentile_and_complement(percentile: f64) -> (f64, f64) {
    let p = percentile / 100.0;
    let q = (100.0 - percentile) / 100.0;
    let ln_p = if percentile >= 50.0 { (-q).ln_1p() } else { p.ln() };
    let ln_q = if percentile <= 50.0 { (-p).ln_1p() } else { q.ln() };
    (ln_p, ln_q)
}

/// Hyndman & Fan definition 7 on ascending, non-empty `sorted`; `percentile` in `[0, 100]`.
fn type7_percentile(sorted: &[f64], percentile: f64) -> f64 {
    let n = sorted.len();
    let h = (n - 1) as f64 * (percentile / 100.0);
    let lower = (h.floor() as usize).min(n - 1);
    let fraction = h - lower as f64;
    if fraction <= 0.0 || lower + 1 >= n {
        return sorted[lower];
    }
    interpolate(sorted[lower], sorted[lower + 1], fraction)
}

/// `a + fraction (b - a)` for `a <= b`, kept within `[a, b]` (so percentiles stay monotone in `p`
/// despite rounding) and finite when `b - a` overflows.
fn interpolate(a: f64, b: f64, fraction: f64) -> f64 {
    let gap = b - a;
    let value = if gap.is_finite() { a + fraction * gap } else { (1.0 - fraction) * a + fraction * b };
    value.max(a).min(b)
}

/// The definition-7 median of `values`, reordering them; O(n) by selection.
pub(crate) fn median_in_place(values: &mut [f64]) -> f64 {
    let n = values.len();
    let lower = (n - 1) / 2;
    let (_, &mut lower_value, above) = values.select_nth_unstable_by(lower, f64::total_cmp);
    if n % 2 == 1 {
        return lower_value;
    }
    let upper_value = above.iter().copied().fold(f64::INFINITY, f64::min);
    interpolate(lower_value, upper_value, 0.5)
}

/// `resamples` bootstrap replicates of the definition-7 `percentile` of ascending `sorted`, each
/// distributed exactly as the percentile of a size-`n` resample with replacement (module docs).
fn bootstrap_replicates(sorted: &[f64], percentile: f64, resamples: usize, rng: &mut SplitMix64) -> Vec<f64> {
    let n = sorted.len();
    let h = (n - 1) as f64 * (percentile / 100.0);
    let lower = (h.floor() as usize).min(n - 1);
    let fraction = h - lower as f64;
    let index_of = |u: f64| ((n as f64 * u) as usize).min(n - 1);
    // The 0-based order statistic `lower` is the (lower + 1)-th smallest of n.
    let (alpha, beta) = ((lower + 1) as f64, (n - lower) as f64);
    let above = (n - lower - 1) as f64;
    (0..resamples)
        .map(|_| {
            let u = rng.beta(alpha, beta);
            let lower_value = sorted[index_of(u)];
            if fraction <= 0.0 || lower + 1 >= n {
                return lower_value;
            }
            // The smallest of the `above` uniforms left on (u, 1): u + (1 - u)(1 - V^(1/above)).
            let next = u - (1.0 - u) * (rng.next_open01().ln() / above).exp_m1();
            interpolate(lower_value, sorted[index_of(next)], fraction)
        })
        .collect()
}

/// `ln(eᵃ + eᵇ)` without overflow or underflow.
fn ln_add_exp(a: f64, b: f64) -> f64 {
    let (high, low) = if a >= b { (a, b) } else { (b, a) };
    if low == f64::NEG_INFINITY {
        return high;
    }
    high + (low - high).exp().ln_1p()
}

/// SplitMix64 (Steele, Lea & Flood 2014): 64 bits of state, passes BigCrush, trivially seeded.
#[derive(Debug, Clone)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The SplitMix64 output function (a variant of MurmurHash3's finaliser).
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(SPLITMIX64_GAMMA);
        Self::mix(self.state)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * F64_FROM_53_BITS
    }

    /// Uniform in `(0, 1]`, safe to take the logarithm of.
    fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * F64_FROM_53_BITS
    }

    /// Standard normal by the Box-Muller transform (Box & Muller 1958).
    fn standard_normal(&mut self) -> f64 {
        let radius = (-2.0 * self.next_open01().ln()).sqrt();
        radius * (std::f64::consts::TAU * self.next_f64()).cos()
    }

    /// Gamma(shape, 1) for `shape >= 1`, Marsaglia & Tsang (2000).
    fn gamma(&mut self, shape: f64) -> f64 {
        debug_assert!(shape >= 1.0, "Marsaglia-Tsang as written needs shape >= 1, got {shape}");
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.standard_normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.next_open01();
            let x2 = x * x;
            if u < 1.0 - MARSAGLIA_TSANG_SQUEEZE * x2 * x2 || u.ln() < 0.5 * x2 + d * (1.0 - v + v.ln()) {
                return d * v;
            }
        }
    }

    /// Beta(alpha, beta) for `alpha, beta >= 1`, as `X / (X + Y)` with `X ~ Gamma(alpha)`,
    /// `Y ~ Gamma(beta)`.
    fn beta(&mut self, alpha: f64, beta: f64) -> f64 {
        let x = self.gamma(alpha);
        let y = self.gamma(beta);
        x / (x + y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Size of the samples drawn from known distributions.
    const KNOWN_DISTRIBUTION_SAMPLES: usize = 200_000;

    /// Allowed distance of a sample percentile from the true quantile, in asymptotic standard
    /// errors `sqrt(p (1 - p) / n) / f(Q)` (asymptotic normality of sample quantiles; David &
    /// Nagaraja 2003, chapter 10). A correct estimator lands farther than 5 of them with
    /// probability under 1e-6 whatever the seed, so the fixed seeds are not cherry-picked. At
    /// n = 200 000, 5 errors are 0.1% (uniform p99) to 4.2% (lognormal p99) of the value: they catch
    /// a broken generator, a wrong percentile scale or a wrong distribution, while rank-level details
    /// of definition 7 are pinned by the exact small cases.
    const QUANTILE_TOLERANCE_STANDARD_ERRORS: f64 = 5.0;

    /// Standard normal quantiles `Φ⁻¹(p / 100)` for the checked percentiles, to double precision.
    const NORMAL_QUANTILES: [(f64, f64); 4] = [
        (50.0, 0.0),
        (90.0, 1.281_551_565_544_600_4),
        (95.0, 1.644_853_626_951_472_2),
        (99.0, 2.326_347_874_040_840_8),
    ];

    /// Relative rounding slack for comparisons of computed floats that are equal in exact
    /// arithmetic.
    const FLOAT_SLACK: f64 = 1e-12;

    /// Allowed relative error of a sample standard deviation over 200 000 draws: its relative
    /// standard error is `sqrt((kurtosis - 1) / 4n)`, below 0.0025 for the shapes tested (kurtosis
    /// under 6), so this is 8 standard errors.
    const STD_DEV_RELATIVE_TOLERANCE: f64 = 0.02;

    /// Replicates per method when the order-statistic bootstrap is compared with brute force.
    const EQUIVALENCE_REPLICATES: usize = 20_000;

    /// Largest allowed Kolmogorov-Smirnov distance between the two replicate distributions. The
    /// two-sample critical value at significance 1e-6 is `sqrt(-ln(5e-7) / 2) sqrt(2 / m)`, about
    /// 0.027 for m = 20 000; a wrong rank (Beta(k, n - k) instead of Beta(k, n + 1 - k)) shifts the
    /// distributions by far more at n = 25.
    const EQUIVALENCE_MAX_KS_DISTANCE: f64 = 0.027;

    fn standard_normal_density(z: f64) -> f64 {
        (-0.5 * z * z).exp() / (std::f64::consts::TAU).sqrt()
    }

    fn draw(count: usize, seed: u64, mut one: impl FnMut(&mut SplitMix64) -> f64) -> Sample {
        let mut rng = SplitMix64::new(seed);
        Sample::new((0..count).map(|_| one(&mut rng)).collect()).unwrap()
    }

    /// `quantile` gets `p` and the standard normal quantile `Φ⁻¹(p)`.
    fn check_known_quantiles(
        name: &str,
        sample: &Sample,
        quantile: impl Fn(f64, f64) -> f64,
        density: impl Fn(f64) -> f64,
    ) {
        let n = sample.len() as f64;
        for (percentile, z) in NORMAL_QUANTILES {
            let p = percentile / 100.0;
            let truth = quantile(p, z);
            let standard_error = (p * (1.0 - p) / n).sqrt() / density(truth);
            let estimate = sample.percentile(percentile).unwrap();
            assert!(
                (estimate - truth).abs() <= QUANTILE_TOLERANCE_STANDARD_ERRORS * standard_error,
                "{name} p{percentile}: estimate {estimate}, truth {truth}, standard error {standard_error}"
            );
        }
    }

    #[test]
    fn uniform_percentiles_match_quantiles() {
        let sample = draw(KNOWN_DISTRIBUTION_SAMPLES, 1, |rng| rng.next_f64());
        check_known_quantiles("uniform(0, 1)", &sample, |p, _| p, |_| 1.0);
    }

    #[test]
    fn exponential_percentiles_match_quantiles() {
        // Inverse CDF: -ln(U) with U uniform on (0, 1] is exponential with rate 1.
        let sample = draw(KNOWN_DISTRIBUTION_SAMPLES, 2, |rng| -rng.next_open01().ln());
        check_known_quantiles("exponential(1)", &sample, |p, _| -(-p).ln_1p(), |x| (-x).exp());
    }

    #[test]
    fn lognormal_percentiles_match_quantiles() {
        let sample = draw(KNOWN_DISTRIBUTION_SAMPLES, 3, |rng| rng.standard_normal().exp());
        check_known_quantiles("lognormal(0, 1)", &sample, |_, z| z.exp(), |x| standard_normal_density(x.ln()) / x);
    }

    #[test]
    fn normal_generator_has_unit_moments() {
        let sample = draw(KNOWN_DISTRIBUTION_SAMPLES, 4, SplitMix64::standard_normal);
        // Standard errors: 1/sqrt(n) for the mean, sqrt(1/(2n)) for the standard deviation.
        let n = KNOWN_DISTRIBUTION_SAMPLES as f64;
        assert!(sample.mean().abs() < QUANTILE_TOLERANCE_STANDARD_ERRORS / n.sqrt());
        assert!((sample.std_dev() - 1.0).abs() < QUANTILE_TOLERANCE_STANDARD_ERRORS / (2.0 * n).sqrt());
    }

    #[test]
    fn beta_generator_has_beta_moments() {
        let mut rng = SplitMix64::new(5);
        for (alpha, beta) in [(1.0, 1.0), (3.0, 50.0), (990.0, 11.0), (100_000.0, 100_001.0)] {
            let draws = Sample::new((0..KNOWN_DISTRIBUTION_SAMPLES).map(|_| rng.beta(alpha, beta)).collect()).unwrap();
            let mean = alpha / (alpha + beta);
            let variance = alpha * beta / ((alpha + beta) * (alpha + beta) * (alpha + beta + 1.0));
            let standard_error = (variance / KNOWN_DISTRIBUTION_SAMPLES as f64).sqrt();
            assert!(
                (draws.mean() - mean).abs() < QUANTILE_TOLERANCE_STANDARD_ERRORS * standard_error,
                "Beta({alpha}, {beta}) mean {} vs {mean}",
                draws.mean()
            );
            let relative_sd_error = (draws.std_dev() / variance.sqrt() - 1.0).abs();
            assert!(
                relative_sd_error < STD_DEV_RELATIVE_TOLERANCE,
                "Beta({alpha}, {beta}) sd off by {relative_sd_error}"
            );
        }
    }

    #[test]
    fn type7_exact_small_cases() {
        let sample = Sample::new(vec![4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(sample.percentile(50.0).unwrap(), 2.5);
        assert_eq!(sample.median(), 2.5);
        assert_eq!(sample.percentile(0.0).unwrap(), 1.0);
        assert_eq!(sample.percentile(100.0).unwrap(), 4.0);
        assert_eq!(sample.percentile(25.0).unwrap(), 1.75);
        // NumPy: np.percentile([15, 20, 35, 40, 50], [40, 90]) == [29., 46.]
        let sample = Sample::new(vec![15.0, 20.0, 35.0, 40.0, 50.0]).unwrap();
        assert!((sample.percentile(40.0).unwrap() - 29.0).abs() < FLOAT_SLACK * 29.0);
        assert!((sample.percentile(90.0).unwrap() - 46.0).abs() < FLOAT_SLACK * 46.0);
        assert_eq!(sample.median(), 35.0);
    }

    #[test]
    fn single_observation() {
        let sample = Sample::new(vec![7.5]).unwrap();
        assert_eq!(sample.len(), 1);
        for p in [0.0, 1.0, 50.0, 99.0, 100.0] {
            assert_eq!(sample.percentile(p).unwrap(), 7.5);
        }
        assert_eq!((sample.mean(), sample.std_dev(), sample.min(), sample.max()), (7.5, 0.0, 7.5, 7.5));
        let summary = Summary::compute(&sample, 99.0, 0).unwrap();
        assert_eq!(summary.median_ci95, ConfidenceInterval { low: 7.5, high: 7.5 });
        assert_eq!(summary.tail_ci95, ConfidenceInterval { low: 7.5, high: 7.5 });
        assert_eq!(summary.tail_upper_bound, None);
        assert_eq!(summary.outliers, OutlierSummary { low: 0, high: 0, indices: vec![] });
    }

    #[test]
    fn known_mean_and_std_dev() {
        let sample = Sample::new(vec![2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(sample.mean(), 5.0);
        // Squared deviations sum to 32; 32 / (8 - 1).
        assert!((sample.std_dev() - (32.0f64 / 7.0).sqrt()).abs() < FLOAT_SLACK);
        assert_eq!((sample.min(), sample.max()), (2.0, 9.0));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(Sample::new(vec![]), Err(StatsError::Empty));
        assert!(matches!(
            Sample::new(vec![1.0, 2.0, f64::INFINITY]),
            Err(StatsError::NonFinite { index: 2, value }) if value == f64::INFINITY
        ));
        let sample = Sample::new(vec![1.0, 2.0]).unwrap();
        for bad in [-0.1, 100.1, f64::NAN] {
            assert!(matches!(sample.percentile(bad), Err(StatsError::InvalidPercentile { .. })));
        }
        for bad in [0.0, 100.0, f64::NAN] {
            assert!(matches!(Summary::compute(&sample, bad, 0), Err(StatsError::InvalidTailPercentile { .. })));
        }
        for bad in [0.0, 1.0, f64::NAN] {
            assert!(matches!(min_samples_for_percentile(99.0, bad), Err(StatsError::InvalidConfidence { .. })));
        }
        assert_eq!(
            sample.early_stopping_upper_bound(99.0, EARLY_STOPPING_CONFIDENCE),
            Err(StatsError::TooFewSamples { statistic: "early-stopping upper bound", needed: 662, found: 2 })
        );
    }

    #[test]
    fn early_stopping_minimum_sample_counts_match_mlperf() {
        let c = EARLY_STOPPING_CONFIDENCE;
        assert_eq!(min_samples_for_percentile(90.0, c), Ok(64));
        assert_eq!(min_samples_for_percentile(95.0, c), Ok(130));
        assert_eq!(min_samples_for_percentile(99.0, c), Ok(662));
    }

    /// P(Binomial(n, q) <= t), summed directly; fine for the small n of the reference tests.
    fn binomial_cdf(n: u64, t: u64, q: f64) -> f64 {
        let mut pmf = (1.0 - q).powi(n as i32);
        let mut cdf = pmf;
        for k in 1..=t.min(n) {
            pmf *= (n - k + 1) as f64 / k as f64 * q / (1.0 - q);
            cdf += pmf;
        }
        cdf
    }

    /// LoadGen's `find_min_passing(t, p, 0, c)`: fewest under-latency queries `h` for which `t`
    /// overlatency queries pass, `BetaRegularized[p, h, 1 + t] < 1 - c`.
    fn loadgen_min_passing(t: u64, q: f64, confidence: f64) -> u64 {
        (1..).find(|h| binomial_cdf(h + t, t, q) < 1.0 - confidence).unwrap()
    }

    /// LoadGen's SingleStream loop in `PerformanceSummary::EarlyStopping`, transcribed.
    fn loadgen_estimate(sorted: &[f64], percentile: f64, confidence: f64) -> Option<f64> {
        let n = sorted.len() as u64;
        let q = (100.0 - percentile) / 100.0;
        let h_min = loadgen_min_passing(1, q, confidence);
        if n < h_min + 1 {
            return None;
        }
        let mut t = 1;
        for i in 2..n + 1 {
            if n < loadgen_min_passing(i, q, confidence) + i {
                t = i - 1;
                break;
            }
        }
        Some(sorted[(n - t) as usize])
    }

    #[test]
    fn early_stopping_bound_matches_loadgen_loop() {
        let c = EARLY_STOPPING_CONFIDENCE;
        for (percentile, sizes) in [(90.0, &[10, 63, 64, 65, 100, 257, 1000][..]), (99.0, &[661, 662, 700, 1500][..])] {
            for &n in sizes {
                let sample = draw(n, n as u64, |rng| rng.next_f64());
                let expected = loadgen_estimate(sample.values(), percentile, c);
                let got = sample.early_stopping_upper_bound(percentile, c).ok();
                assert_eq!(got, expected, "p{percentile}, n = {n}");
            }
        }
        let sample = draw(1000, 9, |rng| rng.next_f64());
        assert!(sample.early_stopping_upper_bound(90.0, c).unwrap() >= sample.percentile(90.0).unwrap());
    }

    #[test]
    fn early_stopping_bound_covers_true_percentile() {
        // Uniform(0, 1): the true 99th percentile is 0.99. The bound may fall below it in at most
        // 1% of runs; allow 3 binomial standard errors of Monte Carlo slack on that rate.
        const RUNS: usize = 2000;
        const TRUE_P99: f64 = 0.99;
        let mut rng = SplitMix64::new(11);
        let mut below = 0;
        for _ in 0..RUNS {
            let sample = Sample::new((0..700).map(|_| rng.next_f64()).collect()).unwrap();
            if sample.early_stopping_upper_bound(99.0, EARLY_STOPPING_CONFIDENCE).unwrap() < TRUE_P99 {
                below += 1;
            }
        }
        let allowed = 0.01 * RUNS as f64 + 3.0 * (0.01 * 0.99 * RUNS as f64).sqrt();
        assert!((below as f64) <= allowed, "{below} of {RUNS} bounds fell below the true p99");
    }

    #[test]
    fn early_stopping_handles_large_samples() {
        // (1 - q)^n underflows here; the log-space walk must still find a bound near the p99.
        let sample = draw(KNOWN_DISTRIBUTION_SAMPLES, 12, |rng| rng.next_f64());
        let bound = sample.early_stopping_upper_bound(99.0, EARLY_STOPPING_CONFIDENCE).unwrap();
        let p99 = sample.percentile(99.0).unwrap();
        assert!(bound >= p99 && bound < p99 + 0.002, "bound {bound}, p99 {p99}");
        let median_bound = sample.early_stopping_upper_bound(50.0, EARLY_STOPPING_CONFIDENCE).unwrap();
        assert!(median_bound >= sample.median() && median_bound < sample.median() + 0.01);
    }

    /// The classic bootstrap: resample with replacement, sort, take the percentile.
    fn brute_force_replicates(sorted: &[f64], percentile: f64, resamples: usize, rng: &mut SplitMix64) -> Vec<f64> {
        let n = sorted.len();
        (0..resamples)
            .map(|_| {
                let mut resample: Vec<f64> =
                    (0..n).map(|_| sorted[((rng.next_u64() >> 11) as usize * n) >> 53]).collect();
                resample.sort_unstable_by(f64::total_cmp);
                type7_percentile(&resample, percentile)
            })
            .collect()
    }

    fn ks_distance(mut a: Vec<f64>, mut b: Vec<f64>) -> f64 {
        a.sort_unstable_by(f64::total_cmp);
        b.sort_unstable_by(f64::total_cmp);
        let mut points: Vec<f64> = a.iter().chain(&b).copied().collect();
        points.sort_unstable_by(f64::total_cmp);
        points.dedup();
        let cdf = |sorted: &[f64], x: f64| sorted.partition_point(|&v| v <= x) as f64 / sorted.len() as f64;
        points.iter().map(|&x| (cdf(&a, x) - cdf(&b, x)).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn order_statistic_bootstrap_matches_resampling() {
        let sample = draw(25, 21, |rng| -rng.next_open01().ln());
        let mut rng = SplitMix64::new(22);
        for percentile in [0.0, 10.0, 50.0, 62.5, 90.0, 99.0, 100.0] {
            let fast = bootstrap_replicates(sample.values(), percentile, EQUIVALENCE_REPLICATES, &mut rng);
            let slow = brute_force_replicates(sample.values(), percentile, EQUIVALENCE_REPLICATES, &mut rng);
            let distance = ks_distance(fast, slow);
            assert!(distance < EQUIVALENCE_MAX_KS_DISTANCE, "p{percentile}: KS distance {distance}");
        }
    }

    #[test]
    fn bootstrap_ci_is_deterministic_and_sensible() {
        let sample = draw(10_000, 31, |rng| rng.next_f64());
        let a = Summary::compute(&sample, 99.0, 7).unwrap();
        assert_eq!(a, Summary::compute(&sample, 99.0, 7).unwrap());
        assert_ne!(a.median_ci95, Summary::compute(&sample, 99.0, 8).unwrap().median_ci95);
        // Same percentile, same seed: same interval whichever field it lands in.
        assert_eq!(Summary::compute(&sample, 50.0, 7).unwrap().tail_ci95, a.median_ci95);
        // The median of 10 000 uniforms has standard error 0.005; the interval is about +-2 of them.
        let width = a.median_ci95.high - a.median_ci95.low;
        assert!(width > 0.01 && width < 0.03, "median CI width {width}");
        assert!(a.median_ci95.low <= 0.5 && 0.5 <= a.median_ci95.high);
    }

    #[test]
    fn outliers_are_flagged_in_input_order() {
        let sample = Sample::new(vec![10.0, 10.5, 100.0, 9.5, 10.0, -50.0, 11.0, 9.0]).unwrap();
        let outliers = sample.outliers();
        assert_eq!(outliers, OutlierSummary { low: 1, high: 1, indices: vec![2, 5] });
        // Flagged, not dropped.
        assert_eq!(sample.len(), 8);
        assert_eq!(sample.max(), 100.0);
    }

    #[test]
    fn zero_mad_flags_everything_off_the_median() {
        let sample = Sample::new(vec![5.0, 5.0, 6.0, 5.0, 5.0, 4.0]).unwrap();
        assert_eq!(sample.median_absolute_deviation(), 0.0);
        assert_eq!(sample.outliers(), OutlierSummary { low: 1, high: 1, indices: vec![2, 5] });
    }

    #[test]
    fn summary_serializes_with_snake_case_fields() {
        let sample = draw(1000, 41, |rng| rng.next_f64());
        let summary = Summary::compute(&sample, 99.0, 1).unwrap();
        let json = serde_json::to_value(&summary).unwrap();
        for field in [
            "count",
            "mean",
            "std_dev",
            "min",
            "p50",
            "p90",
            "p95",
            "p99",
            "max",
            "median_ci95",
            "tail_percentile",
            "tail_ci95",
            "tail_upper_bound",
            "outliers",
        ] {
            assert!(json.get(field).is_some(), "missing {field} in {json}");
        }
        assert!(json["median_ci95"].get("low").is_some() && json["outliers"].get("indices").is_some());
        assert!(json["tail_upper_bound"].is_f64(), "1000 samples support a p99 bound: {json}");
        let back: Summary = serde_json::from_value(json).unwrap();
        assert_eq!(back, summary);
        let small = Summary::compute(&draw(100, 42, |rng| rng.next_f64()), 99.0, 1).unwrap();
        assert!(serde_json::to_value(&small).unwrap()["tail_upper_bound"].is_null());
    }

    #[test]
    fn summary_is_fast() {
        // Budgets from the benchmark loop's needs; only meaningful with optimisations on.
        if cfg!(debug_assertions) {
            eprintln!("summary_is_fast: skipped, timing budgets apply to release builds only");
            return;
        }
        for (n, budget_ms) in [(10_000, 100), (200_000, 2000)] {
            let sample = draw(n, 51, |rng| -rng.next_open01().ln());
            let best = (0..3)
                .map(|_| {
                    let start = std::time::Instant::now();
                    std::hint::black_box(Summary::compute(&sample, 99.0, 1).unwrap());
                    start.elapsed()
                })
                .min()
                .unwrap();
            eprintln!("Summary::compute, n = {n}: {best:?}");
            assert!(best.as_millis() < budget_ms, "n = {n} took {best:?}");
        }
    }

    fn observations() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(-1e9..1e9f64, 1..300)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn percentiles_are_monotone(values in observations(), a in 0.0..=100.0f64, b in 0.0..=100.0f64) {
            let sample = Sample::new(values).unwrap();
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(sample.percentile(low).unwrap() <= sample.percentile(high).unwrap());
        }

        #[test]
        fn summary_is_ordered_and_contains_estimates(
            values in observations(),
            tail in 50.0..99.9f64,
            seed in any::<u64>(),
        ) {
            let sample = Sample::new(values).unwrap();
            let s = Summary::compute(&sample, tail, seed).unwrap();
            prop_assert!(s.min <= s.p50 && s.p50 <= s.p90 && s.p90 <= s.p95 && s.p95 <= s.p99 && s.p99 <= s.max);
            prop_assert!(s.min <= s.mean && s.mean <= s.max && s.std_dev >= 0.0);
            let tail_estimate = sample.percentile(tail).unwrap();
            prop_assert!(s.median_ci95.low <= s.p50 && s.p50 <= s.median_ci95.high);
            prop_assert!(s.tail_ci95.low <= tail_estimate && tail_estimate <= s.tail_ci95.high);
            prop_assert!(s.min <= s.median_ci95.low && s.median_ci95.high <= s.max);
            prop_assert!(s.min <= s.tail_ci95.low && s.tail_ci95.high <= s.max);
            if let Some(bound) = s.tail_upper_bound {
                prop_assert!(bound >= tail_estimate);
            }
        }

        #[test]
        fn non_finite_values_are_rejected(
            values in observations(),
            position in any::<prop::sample::Index>(),
            bad in prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
        ) {
            let mut values = values;
            let index = position.index(values.len() + 1);
            values.insert(index, bad);
            let rejected = matches!(Sample::new(values), Err(StatsError::NonFinite { index: i, .. }) if i == index);
            prop_assert!(rejected);
        }

        #[test]
        fn outliers_are_exactly_the_far_values(values in observations(), spikes in prop::collection::vec(-1e12..1e12f64, 0..5)) {
            let mut values = values;
            values.extend(spikes);
            let sample = Sample::new(values).unwrap();
            let median = sample.median();
            let mad = sample.median_absolute_deviation();
            let outliers = sample.outliers();
            prop_assert_eq!(outliers.low + outliers.high, outliers.indices.len());
            prop_assert!(outliers.indices.windows(2).all(|w| w[0] < w[1]));
            for (i, &x) in sample.input_order().iter().enumerate() {
                let far = if mad > 0.0 {
                    (MODIFIED_Z_SCALE * (x - median) / mad).abs() > MODIFIED_Z_THRESHOLD
                } else {
                    x != median
                };
                prop_assert_eq!(far, outliers.indices.contains(&i));
            }
            let low = outliers.indices.iter().filter(|&&i| sample.input_order()[i] < median).count();
            prop_assert_eq!(low, outliers.low);
        }

        #[test]
        fn constant_sample_has_no_spread(value in -1e9..1e9f64, count in 1usize..2000, seed in any::<u64>()) {
            let sample = Sample::new(vec![value; count]).unwrap();
            let s = Summary::compute(&sample, 99.0, seed).unwrap();
            prop_assert_eq!(s.std_dev, 0.0);
            prop_assert_eq!(s.mean, value);
            prop_assert!(s.outliers.indices.is_empty());
            prop_assert_eq!(s.median_ci95, ConfidenceInterval { low: value, high: value });
            prop_assert_eq!(s.tail_ci95, ConfidenceInterval { low: value, high: value });
            prop_assert_eq!(s.tail_upper_bound, (count >= 662).then_some(value));
        }
    }
}

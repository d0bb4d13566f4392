//! The timing loop: single stream, closed loop (one call after another), monotonic clock,
//! every sample kept in nanoseconds.
//!
//! 1. Warm-up: calls in windows of [`WARMUP_WINDOW`] until the median of a window is within
//!    [`WARMUP_STABLE_RATIO`] of the previous window's (caches, page tables, CPU frequency and
//!    lazily built thread pools have settled), bounded by `max_warmup`.
//! 2. Measurement: calls until *both* `min_duration` has passed and `min_samples` were taken, but
//!    no longer than `max_duration` (the caller is told when the time limit cut the sample short).

use std::time::{Duration, Instant};

/// Calls per warm-up window.
pub const WARMUP_WINDOW: usize = 8;
/// Two consecutive warm-up windows whose medians differ by less than this fraction mean the
/// timings have settled (5%: below the run-to-run drift of a shared machine).
pub const WARMUP_STABLE_RATIO: f64 = 0.05;

/// How long and how often to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimingConfig {
    /// Upper bound of the warm-up.
    pub max_warmup: Duration,
    /// Measure at least this long...
    pub min_duration: Duration,
    /// ...and at least this many samples...
    pub min_samples: usize,
    /// ...but stop after this long whatever the count.
    pub max_duration: Duration,
}

/// Raw timings of one workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    /// Nanoseconds of each measured call, in order.
    pub samples_ns: Vec<f64>,
    /// Calls made during warm-up (not in `samples_ns`).
    pub warmup_calls: usize,
    /// True when `max_duration` ended the measurement before `min_samples` were taken.
    pub stopped_by_time_limit: bool,
}

/// Times `call` according to `config`. An error from `call` stops the loop and is returned.
pub fn measure<E>(config: &TimingConfig, mut call: impl FnMut() -> Result<(), E>) -> Result<Timings, E> {
    let mut timed = || time_call(&mut call);

    let warmup_start = Instant::now();
    let mut warmup_calls = 0;
    let mut previous_median: Option<f64> = None;
    while warmup_start.elapsed() < config.max_warmup {
        let mut window = Vec::with_capacity(WARMUP_WINDOW);
        for _ in 0..WARMUP_WINDOW {
            window.push(timed()?);
        }
        warmup_calls += WARMUP_WINDOW;
        window.sort_by(f64::total_cmp);
        let median = window[WARMUP_WINDOW / 2];
        if let Some(previous) = previous_median
            && (median - previous).abs() <= WARMUP_STABLE_RATIO * previous
        {
            break;
        }
        previous_median = Some(median);
    }

    let start = Instant::now();
    let mut samples_ns = Vec::with_capacity(config.min_samples);
    loop {
        samples_ns.push(timed()?);
        let elapsed = start.elapsed();
        let enough = elapsed >= config.min_duration && samples_ns.len() >= config.min_samples;
        if enough || elapsed >= config.max_duration {
            break;
        }
    }
    let stopped_by_time_limit = samples_ns.len() < config.min_samples;
    Ok(Timings { samples_ns, warmup_calls, stopped_by_time_limit })
}

/// Nanoseconds between the two clock reads around one call: the sample [`measure`] records.
fn time_call<E>(call: &mut impl FnMut() -> Result<(), E>) -> Result<f64, E> {
    let start = Instant::now();
    call()?;
    Ok(start.elapsed().as_nanos() as f64)
}

/// Empty timed regions [`clock_overhead_ns`] takes the median of.
const CLOCK_OVERHEAD_SAMPLES: usize = 20_001;

/// The clock's own share of every sample: the median nanoseconds [`measure`] records around a
/// call that does nothing (the end of one clock read and the start of the next; 20 ns on this
/// project's VMs, whose clock ticks in 10 ns steps). Negligible for a model's milliseconds, it
/// is a percent of a two-microsecond kernel call, and the peers' figures exclude theirs (ONNX
/// Runtime's peer script subtracts an empty `session.run`), so `qtier bench kernels` subtracts
/// it from its statistics.
pub fn clock_overhead_ns() -> f64 {
    let mut empty = || -> Result<(), std::convert::Infallible> {
        std::hint::black_box(());
        Ok(())
    };
    let mut samples: Vec<f64> = (0..CLOCK_OVERHEAD_SAMPLES)
        .map(|_| match time_call(&mut empty) {
            Ok(ns) => ns,
            Err(never) => match never {},
        })
        .collect();
    let middle = samples.len() / 2;
    *samples.select_nth_unstable_by(middle, f64::total_cmp).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_until_both_minimums_and_keeps_every_sample() {
        let config = TimingConfig {
            max_warmup: Duration::from_millis(50),
            min_duration: Duration::from_millis(5),
            min_samples: 200,
            max_duration: Duration::from_secs(10),
        };
        let mut calls = 0;
        let timings = measure(&config, || -> Result<(), ()> {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert!(timings.samples_ns.len() >= 200);
        assert_eq!(calls, timings.samples_ns.len() + timings.warmup_calls);
        assert!(!timings.stopped_by_time_limit);
    }

    #[test]
    fn time_limit_cuts_a_slow_workload_short_and_says_so() {
        let config = TimingConfig {
            max_warmup: Duration::ZERO,
            min_duration: Duration::ZERO,
            min_samples: 1_000_000,
            max_duration: Duration::from_millis(20),
        };
        let timings = measure(&config, || -> Result<(), ()> {
            std::thread::sleep(Duration::from_millis(2));
            Ok(())
        })
        .unwrap();
        assert!(timings.stopped_by_time_limit);
        assert!(timings.samples_ns.iter().all(|ns| *ns >= 2e6));
    }

    #[test]
    fn the_clock_overhead_is_what_an_empty_call_measures() {
        let overhead = clock_overhead_ns();
        assert!(overhead.is_finite() && overhead >= 0.0, "{overhead}");
        // A call that takes 50 us measures at least that, and the clock's cost is a small part.
        let config = TimingConfig {
            max_warmup: Duration::ZERO,
            min_duration: Duration::ZERO,
            min_samples: 5,
            max_duration: Duration::from_secs(10),
        };
        let busy = || -> Result<(), ()> {
            let start = Instant::now();
            while start.elapsed() < Duration::from_micros(50) {}
            Ok(())
        };
        let timings = measure(&config, busy).unwrap();
        let shortest = timings.samples_ns.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(shortest >= 50_000.0, "{shortest} ns");
        assert!(overhead < shortest / 10.0, "an empty call measured {overhead} ns, a 50 us one {shortest} ns");
    }

    #[test]
    fn an_error_stops_the_loop() {
        let config = TimingConfig {
            max_warmup: Duration::ZERO,
            min_duration: Duration::from_secs(60),
            min_samples: 10,
            max_duration: Duration::from_secs(60),
        };
        let mut calls = 0;
        let result = measure(&config, || {
            calls += 1;
            if calls == 3 { Err("boom") } else { Ok(()) }
        });
        assert_eq!(result, Err("boom"));
    }
}

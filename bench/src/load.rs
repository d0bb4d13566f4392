//! Open-loop load (MLPerf "Server" scenario, SageMaker Inference Recommender style): requests
//! arrive as a Poisson process at a fixed rate from a separate thread, whatever the server is
//! doing, and each latency runs from the request's *scheduled arrival* to its completion, so
//! queueing counts (no coordinated omission: a slow response does not delay later arrivals).
//!
//! [`find_max_qps`] searches for the highest rate whose tail latency meets an SLA, which the
//! recommender needs to size replicas.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::stats::{Sample, Summary};

/// Requests waiting beyond this many mean the rate is far over capacity: the run stops early
/// and says so, instead of queueing without bound.
pub const MAX_QUEUED: usize = 10_000;
/// Rate searches stop when the bracket is this tight (relative).
pub const SEARCH_PRECISION: f64 = 0.05;
/// Upper bound on search steps.
pub const MAX_SEARCH_STEPS: usize = 12;

/// The result of one open-loop run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadRun {
    /// Offered rate, requests per second.
    pub target_qps: f64,
    /// Completed requests per second of the run.
    pub achieved_qps: f64,
    /// Requests completed.
    pub completed: usize,
    /// True when the queue passed [`MAX_QUEUED`] and the run was cut short.
    pub overloaded: bool,
    /// Latency statistics (ns, arrival to completion).
    pub stats: Option<Summary>,
    /// Every latency, ns, in completion order.
    pub samples_ns: Vec<f64>,
}

/// Exponential inter-arrival times with mean `1 / rate` (inverse CDF on a SplitMix64 stream).
struct PoissonArrivals {
    state: u64,
    mean_gap_s: f64,
}

impl PoissonArrivals {
    fn next_gap(&mut self) -> Duration {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // Uniform in (0, 1]: never 0, so the logarithm is finite.
        let uniform = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        Duration::from_secs_f64(-uniform.ln() * self.mean_gap_s)
    }
}

/// Offers `qps` requests per second for `duration`, each served by `serve` on the calling thread
/// in arrival order, and measures arrival-to-completion latency.
pub fn run_open_loop<E>(
    qps: f64,
    duration: Duration,
    tail_percentile: f64,
    seed: u64,
    mut serve: impl FnMut() -> Result<(), E>,
) -> Result<LoadRun, E> {
    let (sender, receiver) = mpsc::channel::<Instant>();
    let start = Instant::now();
    let end = start + duration;
    let generator = std::thread::spawn(move || {
        let mut arrivals = PoissonArrivals { state: seed, mean_gap_s: 1.0 / qps };
        let mut next = start;
        loop {
            next += arrivals.next_gap();
            if next >= end {
                break;
            }
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            // The scheduled time, not the time of sending: sleeping late must not hide latency.
            if sender.send(next).is_err() {
                break;
            }
        }
    });
    let mut samples_ns = Vec::new();
    let mut overloaded = false;
    for arrival in receiver.iter() {
        serve()?;
        samples_ns.push(arrival.elapsed().as_nanos() as f64);
        // Requests scheduled by now but not yet served.
        let backlog = (start.elapsed().as_secs_f64() * qps) as usize;
        if backlog > samples_ns.len() + MAX_QUEUED {
            overloaded = true;
            break;
        }
    }
    drop(receiver);
    let _ = generator.join();
    let elapsed = start.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
    let stats = Sample::new(samples_ns.clone()).ok().and_then(|s| Summary::compute(&s, tail_percentile, seed).ok());
    Ok(LoadRun {
        target_qps: qps,
        achieved_qps: samples_ns.len() as f64 / elapsed,
        completed: samples_ns.len(),
        overloaded,
        stats,
        samples_ns,
    })
}

/// One step of a rate search.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SearchStep {
    /// Offered rate.
    pub qps: f64,
    /// The measured tail latency, ns (`None` when overloaded or too few samples).
    pub tail_ns: Option<f64>,
    /// Whether the SLA held.
    pub met: bool,
}

/// The result of [`find_max_qps`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MaxQps {
    /// The SLA: tail percentile and its bound in ns.
    pub tail_percentile: f64,
    /// The bound, ns.
    pub sla_ns: f64,
    /// The highest rate that met the SLA (0 when even the lowest tried did not).
    pub max_qps: f64,
    /// Every rate tried, in order.
    pub steps: Vec<SearchStep>,
}

/// Binary search for the highest Poisson rate whose tail latency stays within `sla_ns`, starting
/// from `start_qps` (e.g. the single-stream capacity `1 / p50`), each step an open-loop run of
/// `duration`.
pub fn find_max_qps<E>(
    start_qps: f64,
    sla_ns: f64,
    tail_percentile: f64,
    duration: Duration,
    seed: u64,
    mut serve: impl FnMut() -> Result<(), E>,
) -> Result<MaxQps, E> {
    let mut steps = Vec::new();
    let mut trial = |qps: f64, steps: &mut Vec<SearchStep>| -> Result<bool, E> {
        let run = run_open_loop(qps, duration, tail_percentile, seed ^ steps.len() as u64, &mut serve)?;
        let tail_ns = if run.overloaded { None } else { run.stats.as_ref().map(Summary::tail) };
        let met = tail_ns.is_some_and(|t| t <= sla_ns);
        steps.push(SearchStep { qps, tail_ns, met });
        Ok(met)
    };
    // Bracket: halve until a rate meets the SLA, or double while one does.
    let (mut low, mut high) = (0.0f64, start_qps.max(f64::MIN_POSITIVE));
    if trial(high, &mut steps)? {
        low = high;
        while steps.len() < MAX_SEARCH_STEPS {
            high = low * 2.0;
            if !trial(high, &mut steps)? {
                break;
            }
            low = high;
        }
    } else {
        while steps.len() < MAX_SEARCH_STEPS / 2 {
            let candidate = high / 2.0;
            if trial(candidate, &mut steps)? {
                low = candidate;
                break;
            }
            high = candidate;
        }
    }
    while low > 0.0 && (high - low) / low > SEARCH_PRECISION && steps.len() < MAX_SEARCH_STEPS {
        let middle = (low + high) / 2.0;
        if trial(middle, &mut steps)? {
            low = middle;
        } else {
            high = middle;
        }
    }
    Ok(MaxQps { tail_percentile, sla_ns, max_qps: low, steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_have_the_requested_mean_rate() {
        let mut arrivals = PoissonArrivals { state: 7, mean_gap_s: 0.01 };
        let total: f64 = (0..20_000).map(|_| arrivals.next_gap().as_secs_f64()).sum();
        let mean = total / 20_000.0;
        assert!((mean - 0.01).abs() < 0.0005, "mean gap {mean}");
    }

    #[test]
    fn latency_includes_queueing_when_the_server_is_slower_than_arrivals() {
        // 1 ms of service at 2000 requests/s: the queue grows, so later requests wait longer.
        let run = run_open_loop(2000.0, Duration::from_millis(200), 90.0, 1, || -> Result<(), ()> {
            std::thread::sleep(Duration::from_millis(1));
            Ok(())
        })
        .unwrap();
        let stats = run.stats.unwrap();
        assert!(stats.p90 > 10.0 * 1e6, "p90 {} ns should include tens of ms of queueing", stats.p90);
        assert!(run.achieved_qps < 1500.0);
    }

    #[test]
    fn search_finds_the_capacity_of_a_fixed_time_server() {
        // 2 ms per request: capacity 500/s. Over a finite window a rate a little above capacity
        // still meets the SLA: at r/s the queue wait grows to about (r / 500 - 1) * 300 ms by the
        // window's end, so the p90 (~0.9 of that) passes 20 ms only from r ~ 537/s. A search that
        // stopped at 525/s (p90 19.97 ms) is right, not a failure.
        let result = find_max_qps(100.0, 20e6, 90.0, Duration::from_millis(300), 3, || -> Result<(), ()> {
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(2) {
                std::hint::spin_loop();
            }
            Ok(())
        })
        .unwrap();
        let window_ceiling = 500.0 * (1.0 + 20.0 / (0.9 * 300.0));
        assert!(result.max_qps > 40.0 && result.max_qps < window_ceiling * (1.0 + SEARCH_PRECISION), "{result:?}");
        assert!(result.steps.iter().any(|s| !s.met), "the search must have found the edge");
    }
}

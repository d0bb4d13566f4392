//! A small spin-then-park thread pool for the GEMM's parallel parts.
//!
//! Why not rayon alone: on this machine rayon's sleeping worker often woke too late to take its
//! half of a 1x4096x4096 GEMV; with 2 threads the call took 165 us (the one-thread time) in most
//! runs and 82 us in the others (examples/probe, p50 over 1000 calls). Workers here spin for
//! [`SPIN_BEFORE_PARK`] after each job before parking, as ONNX Runtime's and OpenMP's pools do,
//! so back-to-back layers find them awake. The caller always works on its own job too.
//! If the pool is busy (another thread is running a job), the caller uses rayon instead.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking: long enough to span the gap between the
/// layers of one forward pass, short enough not to burn a core for long after the last one.
pub(crate) const SPIN_BEFORE_PARK: Duration = Duration::from_millis(2);

/// Environment variable overriding [`SPIN_BEFORE_PARK`] in milliseconds (read once, when the pool
/// starts): a latency-critical server with gaps between requests can keep the workers awake
/// across them, trading a busy core for the wake-up a parked worker needs (see `qtier serve`).
pub const SPIN_ENV_VAR: &str = "QTIER_SPIN_MS";

/// The spin time: [`SPIN_ENV_VAR`] when it holds a number of milliseconds, else [`SPIN_BEFORE_PARK`].
fn spin_before_park() -> Duration {
    parse_spin(std::env::var(SPIN_ENV_VAR).ok().as_deref())
}

/// Milliseconds (fractions allowed, at most an hour) as a spin time; anything else is the default.
fn parse_spin(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| (0.0..=3_600_000.0).contains(ms))
        .map_or(SPIN_BEFORE_PARK, |ms| Duration::from_secs_f64(ms / 1e3))
}

/// A value alone on its cache line(s), so that threads spinning on one atomic do not slow
/// down the read-modify-writes of another.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    parts: usize,
    /// Parts `0..home_parts` each belong first to one participant (the caller is 0, worker `i`
    /// is `i + 1`): a bit of `claimed` each. The same part of the same layer then runs on the same
    /// core call after call, so a weight slice that fits its core's L2 stays there; a dynamic
    /// first-come assignment measured 3.6 us (median) for 1x384x1536 on 2 threads, whose 590 KB
    /// of weights were then often read from the other core's cache, against 2.3 us with homes.
    home_parts: usize,
    claimed: Line<AtomicU64>,
    /// The next part past the home parts that anyone may take.
    next: Line<AtomicUsize>,
    /// Parts finished; the caller spins on it, so it has a line of its own.
    done: Line<AtomicUsize>,
    panicked: AtomicBool,
}

impl<'a> Job<'a> {
    fn new(f: &'a (dyn Fn(usize) + Sync), parts: usize, participants: usize) -> Self {
        let home_parts = parts.min(participants).min(u64::BITS as usize);
        Job {
            f,
            parts,
            home_parts,
            claimed: Line(AtomicU64::new(0)),
            next: Line(AtomicUsize::new(home_parts)),
            done: Line(AtomicUsize::new(0)),
            panicked: AtomicBool::new(false),
        }
    }

    fn run_part(&self, i: usize) {
        if catch_unwind(AssertUnwindSafe(|| (self.f)(i))).is_err() {
            self.panicked.store(true, SeqCst);
        }
        self.done.fetch_add(1, SeqCst);
    }

    /// Runs part `home` if nobody has taken it yet. A plain load first: a read-modify-write
    /// takes the line away from the other participants even when the part is already taken,
    /// and each such transfer costs about as much as a small GEMV's column block.
    fn claim_and_run(&self, home: usize) {
        let bit = 1u64 << home;
        if home < self.home_parts
            && self.claimed.load(SeqCst) & bit == 0
            && self.claimed.fetch_or(bit, SeqCst) & bit == 0
        {
            self.run_part(home);
        }
    }

    /// Runs participant `home`'s own part, then shared parts until none are left, then any home
    /// part whose participant has not shown up.
    fn work(&self, home: usize) {
        self.claim_and_run(home);
        while self.next.load(SeqCst) < self.parts {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.parts {
                break;
            }
            self.run_part(i);
        }
        let all_homes = if self.home_parts == 64 { u64::MAX } else { (1u64 << self.home_parts) - 1 };
        if self.claimed.load(SeqCst) != all_homes {
            for other in 0..self.home_parts {
                self.claim_and_run(other);
            }
        }
    }
}

struct Shared {
    /// The current job (type-erased `*const Job<'_>`), null when none.
    job: Line<AtomicPtr<()>>,
    /// Bumped after each new job is published. Workers remember the last epoch they joined, not
    /// the job's address: back-to-back calls put their jobs at the same stack address, and a
    /// worker that missed the null in between must still join the next one.
    epoch: AtomicUsize,
    /// Workers currently holding a reference to `job` (its own line: workers change it while
    /// the caller publishes and others spin on `job`).
    active: Line<AtomicUsize>,
    /// Workers parked (or about to park) on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

pub(crate) struct SpinPool {
    shared: &'static Shared,
    busy: AtomicBool,
    workers: usize,
}

/// Worker `home - 1` of the pool (participant `home` of every job).
fn worker(shared: &'static Shared, home: usize, spin: Duration) {
    // Checking the clock costs a vDSO call (10% of a spinning worker's samples in perf when
    // done every iteration), so the spin loop looks at it once per SPIN_CHECK rounds.
    const SPIN_CHECK: u32 = 256;
    let mut joined = shared.epoch.load(SeqCst);
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    loop {
        let e = shared.epoch.load(SeqCst);
        let p = shared.job.load(SeqCst);
        if !p.is_null() && e != joined {
            shared.active.fetch_add(1, SeqCst);
            // Re-check after announcing ourselves: the caller clears `job` before waiting for
            // `active` to drain, so either it sees us, or we see that the job is gone (or is a
            // newer one, which the next round joins).
            if shared.job.load(SeqCst) == p && shared.epoch.load(SeqCst) == e {
                // SAFETY: `p` points to a live Job on the caller's stack: the caller does not
                // return before `active` is back to zero.
                let job = unsafe { &*p.cast::<Job<'_>>() };
                job.work(home);
                joined = e;
            }
            shared.active.fetch_sub(1, SeqCst);
            idle_since = Instant::now();
            continue;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(SPIN_CHECK) || idle_since.elapsed() < spin {
            std::hint::spin_loop();
            continue;
        }
        let guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        shared.sleepers.fetch_add(1, SeqCst);
        // Wait once, then spin again whatever woke us, even if the job that did is already
        // finished: waking a parked thread takes longer here than a small GEMM, so a worker that
        // went back to sleep on finding no job was late for every layer of the next forward pass
        // too, and a request after an idle gap ran single-threaded (MiniLM int8 b1 x s128 at 20
        // requests/s, open loop: p50 9.7 ms against 5.5 ms back to back).
        let guard = if shared.job.load(SeqCst).is_null() {
            shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner())
        } else {
            guard
        };
        shared.sleepers.fetch_sub(1, SeqCst);
        drop(guard);
        idle_since = Instant::now();
    }
}

impl SpinPool {
    fn new(workers: usize) -> Self {
        let spin = spin_before_park();
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            job: Line(AtomicPtr::new(ptr::null_mut())),
            epoch: AtomicUsize::new(0),
            active: Line(AtomicUsize::new(0)),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let mut started = 0;
        for i in 0..workers {
            let spawned =
                std::thread::Builder::new().name(format!("qtier-gemm-{i}")).spawn(move || worker(shared, i + 1, spin));
            if spawned.is_ok() {
                started += 1;
            }
        }
        SpinPool { shared, busy: AtomicBool::new(false), workers: started }
    }

    /// Runs `f(0..parts)` on the calling thread and the pool's workers; returns when all parts
    /// are done. Falls back to rayon when the pool is already running another caller's job.
    pub(crate) fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        if parts <= 1 || self.workers == 0 {
            (0..parts).for_each(f);
            return;
        }
        if self.busy.swap(true, SeqCst) {
            use rayon::prelude::*;
            (0..parts).into_par_iter().with_max_len(1).for_each(f);
            return;
        }
        let job = Job::new(f, parts, self.workers + 1);
        let s = self.shared;
        s.job.store(ptr::from_ref(&job).cast_mut().cast(), SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        job.work(0);
        while job.done.load(SeqCst) < parts {
            std::hint::spin_loop();
        }
        s.job.store(ptr::null_mut(), SeqCst);
        while s.active.load(SeqCst) > 0 {
            std::hint::spin_loop();
        }
        self.busy.store(false, SeqCst);
        if job.panicked.load(SeqCst) {
            resume_unwind(Box::new("a qtier GEMM task panicked"));
        }
    }
}

/// The process-wide pool: one worker per available core but the caller's.
pub(crate) fn global() -> &'static SpinPool {
    static POOL: OnceLock<SpinPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        SpinPool::new(cores.saturating_sub(1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_even_with_concurrent_callers() {
        let pool = SpinPool::new(2);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for parts in [0, 1, 2, 5, 17] {
                        let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                        pool.run(parts, &|i| {
                            hits[i].fetch_add(1, SeqCst);
                        });
                        assert!(hits.iter().all(|h| h.load(SeqCst) == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn spin_time_parses_milliseconds_and_falls_back_to_the_default() {
        assert_eq!(parse_spin(Some("100")), Duration::from_millis(100));
        assert_eq!(parse_spin(Some(" 0.5 ")), Duration::from_micros(500));
        assert_eq!(parse_spin(Some("0")), Duration::ZERO);
        for bad in [None, Some(""), Some("-1"), Some("fast"), Some("NaN"), Some("inf"), Some("1e12")] {
            assert_eq!(parse_spin(bad), SPIN_BEFORE_PARK, "{bad:?}");
        }
    }

    #[test]
    fn workers_wake_after_parking() {
        let pool = SpinPool::new(1);
        std::thread::sleep(SPIN_BEFORE_PARK * 3);
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 8);
    }
}

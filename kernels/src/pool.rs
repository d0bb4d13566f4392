//! A small spin-then-park thread pool for the GEMM's parallel parts.
//!
//! Why not rayon alone: on this machine rayon's sleeping worker often woke too late to take its
//! half of a 1x4096x4096 GEMV; with 2 threads the call took 165 us (the one-thread time) in most
//! runs and 82 us in the others (examples/probe, p50 over 1000 calls). Workers here spin for
//! [`SPIN_BEFORE_PARK`] after each job before parking, as ONNX Runtime's and OpenMP's pools do,
//! so back-to-back layers find them awake. The caller always works on its own job too.
//! If the pool is busy (another thread is running a job), the caller uses rayon instead.

use std::cell::UnsafeCell;
use std::mem::{MaybeUninit, align_of, size_of};
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::ptr;
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release, Ordering::SeqCst,
};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::KernelError;

/// How long an idle worker spins before parking: long enough to span the gap between the
/// layers of one forward pass, short enough not to burn a core for long after the last one.
pub const SPIN_BEFORE_PARK: Duration = Duration::from_millis(2);

/// Environment variable overriding the spin time (2 ms, `SPIN_BEFORE_PARK`) in milliseconds
/// (read once, when the pool starts): a latency-critical server with gaps between requests can
/// keep the workers awake across them, trading a busy core for the wake-up a parked worker needs
/// (see `qtier serve`).
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
/// down the writes to another.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Bytes of a job's closure that the publish line holds ([`SpinPool::run_copied`]).
const JOB_BYTES: usize = 40;

/// What the caller publishes for each job; written by the caller only (while it holds the pool's
/// `busy` flag), read by the spinning workers. One 64-byte line, the closure included, so a
/// worker that sees the new epoch has the whole job with that one transfer. (With the closure
/// on the caller's stack, a worker fetched that line too, after the publish line, from the
/// caller's core: 1x384x1536 on 2 threads, p50 1.82 vs 1.84 us, and 3.59 vs 3.62 us in a period
/// when lines crossed cores slowly, faster in 35 of 36 interleaved rounds.)
#[repr(C)]
struct Publish {
    /// Job number, bumped (with a release store) after the fields below are written.
    epoch: AtomicUsize,
    /// `call_part::<F>` as a pointer.
    call: AtomicPtr<()>,
    /// Parts of the job.
    parts: AtomicU32,
    /// Parts `0..home_parts` belong to one participant each; the rest go to whoever asks.
    home_parts: AtomicU32,
    /// A copy of the job's closure (an `F: Copy`, at most [`JOB_BYTES`]), called through `call`.
    job: UnsafeCell<MaybeUninit<[u64; JOB_BYTES / 8]>>,
}

const _: () = assert!(size_of::<Publish>() <= 64, "the publish fields fit one cache line");

// SAFETY: `job` is written only by the caller that holds `busy`, before the release store of
// the new epoch and only once every worker that claimed the previous job has stored its `Done`
// (acquired by that caller), or never claimed it; a worker reads `job` only between claiming an
// epoch (after acquiring it) and storing that epoch in its `Done`. So writes and reads of `job`
// never overlap, and each read sees the last write.
unsafe impl Sync for Publish {}

/// One worker's claim on its home part, on its own line, which the caller only touches when it
/// may have to run the part itself (see [`SpinPool::run`]), so that the worker's claim is a
/// read-modify-write on a line its core already owns.
///
/// Part `i + 1` of every job is worker `i`'s home part (part 0 is the caller's), so the same
/// part of the same layer runs on the same core call after call and a weight slice that fits
/// its core's L2 stays there: a first-come assignment measured 3.6 us (median) for 1x384x1536 on
/// 2 threads, whose 590 KB of weights were then often read from the other core's cache, against
/// 2.3 us with home parts.
struct Claim {
    /// The latest epoch whose home part (`worker index + 1`) has been claimed, by the worker
    /// or by the caller sweeping it up. Claiming is `fetch_max(epoch)`: whoever sees a smaller
    /// old value owns the part, exactly once.
    epoch: AtomicUsize,
}

/// One worker's report, on its own line: written by the worker at the end of each job it
/// claimed, read by the caller spinning for it.
struct Done {
    /// The latest epoch this worker has entirely finished with: after storing it the worker
    /// touches nothing of that job again.
    epoch: AtomicUsize,
    /// Whether a part this worker ran for its latest job panicked.
    panicked: AtomicBool,
}

/// Spins of a caller waiting for a worker's [`Done`] before it looks at the worker's [`Claim`],
/// when no worker was parked at publication: a worker that has not claimed its part by then (it
/// went to sleep as the job came, or the system took its core) gets it run by the caller. A look
/// costs the worker a line transfer on its next claim, so the caller looks once, not every spin.
const SPINS_BEFORE_CLAIM_LOOK: u32 = 512;

struct Shared {
    publish: Line<Publish>,
    claims: Box<[Line<Claim>]>,
    done: Box<[Line<Done>]>,
    /// The next part past the home parts that anyone may take (jobs with more parts than
    /// participants).
    next: Line<AtomicUsize>,
    /// Workers parked (or about to park) on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Calls the closure `data` (a `*const F`) on `part`.
///
/// # Safety
/// `data` points to a valid `F`.
unsafe fn call_part<F: Fn(usize) + Sync>(data: *const (), part: usize) {
    // SAFETY: the caller's contract.
    unsafe { (*data.cast::<F>())(part) }
}

type PartFn = unsafe fn(*const (), usize);

/// Runs `part` of the job, catching a panic; returns whether it panicked.
///
/// # Safety
/// `data` and `call` are a published job's closure and `call_part` instance, still live.
unsafe fn run_part(call: PartFn, data: *const (), part: usize) -> bool {
    // SAFETY: the caller's contract.
    catch_unwind(AssertUnwindSafe(|| unsafe { call(data, part) })).is_err()
}

/// Runs the parts past the home parts, taking them from `next` until it passes `parts`; returns
/// whether one panicked.
///
/// # Safety
/// As [`run_part`].
unsafe fn run_shared_parts(next: &AtomicUsize, call: PartFn, data: *const (), parts: usize) -> bool {
    let mut panicked = false;
    loop {
        let i = next.fetch_add(1, AcqRel);
        if i >= parts {
            return panicked;
        }
        // SAFETY: the caller's contract.
        panicked |= unsafe { run_part(call, data, i) };
    }
}

pub(crate) struct SpinPool {
    shared: &'static Shared,
    busy: AtomicBool,
    /// Workers running (the first `workers` claims and reports).
    workers: usize,
    /// Workers asked for (more than `workers` only if the system refused a thread).
    requested: usize,
}

/// Worker `index` of the pool: participant `index + 1` of every job, whose home part is
/// `index + 1`.
///
/// The hand-off costs the worker no read-modify-write on a line another thread writes: it sees
/// the job on the publish line (one transfer), claims its part on its own [`Claim`] line (which
/// the caller leaves alone while the worker keeps up), reads the job from the publish line it
/// already holds, and stores its epoch in its [`Done`] line; the caller publishes with a plain
/// store and waits for nothing but the workers' parts. The previous
/// hand-off (a job object on the caller's stack with shared claim and done counters, and a count
/// of workers still holding it, about eight line transfers per job) measured p50 3.20-3.35 us
/// for 1x384x1536 on 2 threads against 2.72-3.08 us for this one, alternating binaries, at a
/// time when this machine's cores exchanged lines slowly (1x4096x4096: 77-81 vs 76-77 us).
fn worker(shared: &'static Shared, index: usize, spin: Duration) {
    // Checking the clock costs a vDSO call (10% of a spinning worker's samples in perf when
    // done every iteration), so the spin loop looks at it once per SPIN_CHECK rounds.
    const SPIN_CHECK: u32 = 256;
    let (claim, done) = (&shared.claims[index], &shared.done[index]);
    let publish = &shared.publish;
    let mut seen = publish.epoch.load(Acquire);
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    loop {
        let epoch = publish.epoch.load(Acquire);
        if epoch != seen {
            seen = epoch;
            // Claimed here means: the caller cannot finish job `epoch` (nor publish another)
            // before this worker stores the epoch in its `Done`, so the job's fields and closure
            // stay valid.
            if claim.epoch.fetch_max(epoch, AcqRel) < epoch {
                let call: PartFn = {
                    let p = publish.call.load(Relaxed);
                    // SAFETY: `call` holds a `call_part::<F>` stored by `run` for this epoch
                    // (published before the epoch's release store, which we acquired).
                    unsafe { std::mem::transmute::<*mut (), PartFn>(p) }
                };
                let data = publish.job.get().cast_const().cast::<()>();
                let parts = publish.parts.load(Relaxed) as usize;
                // SAFETY: claimed, so job `epoch` is live (see above).
                let mut panicked = unsafe { run_part(call, data, index + 1) };
                if parts > publish.home_parts.load(Relaxed) as usize {
                    // SAFETY: as above.
                    panicked |= unsafe { run_shared_parts(&shared.next, call, data, parts) };
                }
                if panicked {
                    done.panicked.store(true, Relaxed);
                }
                done.epoch.store(epoch, Release);
            }
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
        let guard = if publish.epoch.load(SeqCst) == seen {
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
    fn new(requested: usize) -> Self {
        let spin = spin_before_park();
        let shared = Self::shared_state(requested);
        // Workers are numbered in order; if the system refuses a thread, the pool runs with the
        // ones it has.
        let workers = (0..requested)
            .take_while(|&index| {
                std::thread::Builder::new()
                    .name(format!("qtier-gemm-{index}"))
                    .spawn(move || worker(shared, index, spin))
                    .is_ok()
            })
            .count();
        SpinPool { shared, busy: AtomicBool::new(false), workers, requested }
    }

    /// The hand-off state of a pool of `workers` (leaked: pools live as long as the process).
    fn shared_state(workers: usize) -> &'static Shared {
        let claims: Box<[Line<Claim>]> = (0..workers).map(|_| Line(Claim { epoch: AtomicUsize::new(0) })).collect();
        let done: Box<[Line<Done>]> =
            (0..workers).map(|_| Line(Done { epoch: AtomicUsize::new(0), panicked: AtomicBool::new(false) })).collect();
        Box::leak(Box::new(Shared {
            publish: Line(Publish {
                epoch: AtomicUsize::new(0),
                call: AtomicPtr::new(ptr::null_mut()),
                parts: AtomicU32::new(0),
                home_parts: AtomicU32::new(0),
                job: UnsafeCell::new(MaybeUninit::uninit()),
            }),
            claims,
            done,
            next: Line(AtomicUsize::new(0)),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }))
    }

    /// Runs `f(0..parts)` on the calling thread and the pool's workers; returns when all parts
    /// are done. Falls back to rayon when the pool is already running another caller's job.
    pub(crate) fn run<F: Fn(usize) + Sync>(&self, parts: usize, f: &F) {
        self.run_copied(parts, f);
    }

    /// [`run`](Self::run) for a small closure (at most [`JOB_BYTES`], checked at compile time)
    /// that the pool copies into its publish line, so that a worker reads the job and its
    /// values in one line transfer. `run` passes a reference (one pointer); the M = 1 path
    /// passes its few values themselves (`QuantizedLinear::forward_row`).
    pub(crate) fn run_copied<F: Fn(usize) + Sync + Copy>(&self, parts: usize, f: F) {
        const { assert!(size_of::<F>() <= JOB_BYTES && align_of::<F>() <= align_of::<u64>()) };
        let s = self.shared;
        let workers = self.workers;
        if parts <= 1 || workers == 0 {
            (0..parts).for_each(f);
            return;
        }
        // Rayon when another caller holds the pool, or for a part count the publish line cannot
        // hold (more than u32::MAX; `busy` is then left alone).
        let parts_u32 = match u32::try_from(parts) {
            Ok(p) if !self.busy.swap(true, Acquire) => p,
            _ => {
                use rayon::prelude::*;
                (0..parts).into_par_iter().with_max_len(1).for_each(&f);
                return;
            }
        };
        let participants = workers + 1;
        let home_parts = parts.min(participants);
        // `home_parts <= parts`, which fits u32.
        let home_parts_u32 = home_parts as u32;
        let epoch = s.publish.epoch.load(Relaxed) + 1;
        // Workers without a part in this job: claimed in advance, so they skip it.
        for claim in &s.claims[home_parts - 1..workers] {
            claim.epoch.fetch_max(epoch, AcqRel);
        }
        s.next.store(home_parts, Relaxed);
        let call: PartFn = call_part::<F>;
        let job = s.publish.job.get();
        // SAFETY: `F` fits `job` and its alignment (checked above); no worker reads `job` now
        // (see `Publish`'s Sync). `F: Copy`, so the copy needs no drop and holds no state of
        // its own that the original would miss.
        unsafe { job.cast::<F>().write(f) };
        s.publish.call.store(call as *mut (), Relaxed);
        s.publish.parts.store(parts_u32, Relaxed);
        s.publish.home_parts.store(home_parts_u32, Relaxed);
        // A release store, not a read-modify-write: the caller goes on to its own part without
        // waiting for the line. A worker parking at this moment may miss the wake-up below
        // (the store and the load of `sleepers` can pass each other); the caller then sweeps up
        // its part, and the next job wakes it.
        s.publish.epoch.store(epoch, Release);
        let any_parked = s.sleepers.load(SeqCst) > 0;
        if any_parked {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let data = job.cast_const().cast::<()>();
        // SAFETY: `job` holds a valid `F` until this call returns.
        let mut panicked = unsafe { run_part(call, data, 0) };
        if parts > home_parts {
            // SAFETY: as above.
            panicked |= unsafe { run_shared_parts(&s.next, call, data, parts) };
        }
        for (index, (claim, done)) in s.claims.iter().zip(s.done.iter()).take(home_parts - 1).enumerate() {
            // A worker that was parked may still be waking up: look at its claim at once then.
            // Counting stops at the look (a long part must not overflow the count).
            let mut spins_left = if any_parked { Some(0) } else { Some(SPINS_BEFORE_CLAIM_LOOK) };
            while done.epoch.load(Acquire) < epoch {
                match spins_left {
                    Some(0) => {
                        if claim.epoch.load(Acquire) < epoch && claim.epoch.fetch_max(epoch, AcqRel) < epoch {
                            // The worker has not shown up: its part is ours, and it will skip the job.
                            // SAFETY: as above.
                            panicked |= unsafe { run_part(call, data, index + 1) };
                            break;
                        }
                        spins_left = None;
                    }
                    Some(left) => spins_left = Some(left - 1),
                    None => {}
                }
                std::hint::spin_loop();
            }
            if done.panicked.load(Relaxed) {
                panicked |= done.panicked.swap(false, Relaxed);
            }
        }
        self.busy.store(false, Release);
        if panicked {
            resume_unwind(Box::new("a qtier GEMM task panicked"));
        }
    }
}

/// Runs `f(part)` for every part in `0..parts` on the calling thread and the spinning worker pool
/// the int8 kernels use, returning when all are done; part 0 runs on the calling thread. For
/// work between GEMMs (attention, normalization, outlier handling) on the cores the GEMMs use:
/// the pool's workers are spinning right after a GEMM, where a rayon pool's would first have to
/// wake up and would then compete with them for the cores. Parts beyond [`parallelism`] run
/// after others finish. A panic in `f` is resumed on the calling thread once all parts are done.
/// Calls from inside `f` (or from another thread while a call runs) fall back to rayon.
pub fn run_parts<F: Fn(usize) + Sync>(parts: usize, f: &F) {
    global().run(parts, f)
}

/// How many parts [`run_parts`] runs at once: the calling thread plus the pool's workers (the
/// threads [`set_threads`] asked for, else one per available core).
pub fn parallelism() -> usize {
    global().workers + 1
}

/// The process-wide pool, started on first use.
static POOL: OnceLock<SpinPool> = OnceLock::new();

/// The process-wide pool: `threads - 1` workers for [`set_threads`]'s `threads`, else one worker
/// per available core but the caller's.
pub(crate) fn global() -> &'static SpinPool {
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        SpinPool::new(cores.saturating_sub(1))
    })
}

/// Sizes the process-wide pool that the int8 kernels, attention and the row-wise encoder ops run
/// on: `threads` participants (the calling thread and `threads - 1` workers). Without it the pool
/// takes every available core. A command's `--threads` must reach this pool as well as rayon's:
/// a benchmark with `--threads 1` otherwise still ran attention and the row-wise ops on two
/// threads with the second core's worker spinning, and recorded one thread.
///
/// Call it before anything runs on the pool; it fails with [`KernelError::PoolAlreadyStarted`]
/// once the pool runs with another size (asking again for the size it has is fine).
pub fn set_threads(threads: NonZeroUsize) -> Result<(), KernelError> {
    let requested = threads.get() - 1;
    let pool = POOL.get_or_init(|| SpinPool::new(requested));
    if pool.requested == requested {
        Ok(())
    } else {
        Err(KernelError::PoolAlreadyStarted { threads: pool.requested + 1, requested: threads.get() })
    }
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
    fn every_part_runs_exactly_once_over_many_back_to_back_jobs() {
        // Back-to-back jobs are where a worker still busy with (or late for) one job meets the
        // next: a stale claim must never run a part twice or skip one.
        let pool = SpinPool::new(3);
        let hits: Vec<AtomicUsize> = (0..9).map(|_| AtomicUsize::new(0)).collect();
        for round in 0..20_000 {
            let parts = 2 + round % 8;
            pool.run(parts, &|i| {
                hits[i].fetch_add(1, SeqCst);
            });
            for (i, h) in hits.iter().enumerate() {
                assert_eq!(h.swap(0, SeqCst), usize::from(i < parts), "round {round}, part {i} of {parts}");
            }
        }
    }

    #[test]
    fn copied_jobs_carry_their_own_values_job_after_job() {
        // The closure travels by value in the publish line: every part of every job must see
        // that job's values, never the previous job's copy.
        let pool = SpinPool::new(2);
        let sums: Vec<AtomicUsize> = (0..5).map(|_| AtomicUsize::new(0)).collect();
        for round in 1..=20_000usize {
            let parts = 2 + round % 4;
            let (sums, tag) = (&sums, round * 8);
            pool.run_copied(parts, move |i| {
                sums[i].fetch_add(tag + i, SeqCst);
            });
            for (i, sum) in sums.iter().enumerate() {
                let want = if i < parts { round * 8 + i } else { 0 };
                assert_eq!(sum.swap(0, SeqCst), want, "round {round}, part {i} of {parts}");
            }
        }
    }

    #[test]
    fn a_panicking_part_reaches_the_caller_and_the_pool_stays_usable() {
        let pool = SpinPool::new(2);
        for bad in 0..3 {
            let result = catch_unwind(AssertUnwindSafe(|| {
                pool.run(3, &|i| {
                    if i == bad {
                        panic!("part {i} fails");
                    }
                })
            }));
            assert!(result.is_err(), "part {bad}");
            let count = AtomicUsize::new(0);
            pool.run(5, &|_| {
                count.fetch_add(1, SeqCst);
            });
            assert_eq!(count.load(SeqCst), 5);
        }
    }

    #[test]
    fn run_parts_runs_every_part_once_on_the_global_pool() {
        assert!(parallelism() >= 1);
        for parts in [0, 1, 2, parallelism() + 3] {
            let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            run_parts(parts, &|i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "{parts} parts");
        }
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
    fn the_caller_runs_the_parts_of_workers_that_never_show_up() {
        // Two workers on the books, no threads and none parked: the caller must find every
        // unclaimed home part after its spins and run it itself, once, job after job.
        let pool =
            SpinPool { shared: SpinPool::shared_state(2), busy: AtomicBool::new(false), workers: 2, requested: 2 };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let caller = std::thread::spawn(move || {
            for parts in [2, 3, 7, 3] {
                let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                pool.run(parts, &|i| {
                    hits[i].fetch_add(1, SeqCst);
                });
                assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "{parts} parts");
            }
            done_tx.send(()).unwrap();
        });
        match done_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => resume_unwind(caller.join().unwrap_err()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the caller still waits for absent workers"),
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

//! Short microbenchmarks of this machine's limits, so a benchmark can report a kernel's speed
//! as a fraction of what the hardware allows: int8 multiply-accumulate peak and read bandwidth.
//!
//! Both run `threads` OS threads at once (started together behind a barrier), repeat the
//! measurement [`REPEATS`] times and report the best repeat: a limit is the most the machine
//! was seen to do, and noise (other processes, frequency ramps) only ever slows a repeat down.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::dispatch::KernelKind;
use crate::error::KernelError;

/// Repeats per measurement; the best is reported.
pub const REPEATS: usize = 5;

/// Minimum duration of one repeat, long enough for frequency to settle and timer error to vanish.
pub const MIN_REPEAT: Duration = Duration::from_millis(20);

/// Peak int8 throughput measured by [`int8_peak`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Int8Peak {
    /// Instruction set the loop used (`Avx512Vnni`, `AvxVnni`, `Avx2` or `Scalar`).
    pub kernel: KernelKind,
    /// Threads that ran at once.
    pub threads: usize,
    /// Giga-operations per second, counting a multiply and an add as two operations.
    pub gops: f64,
}

/// Read bandwidth measured by [`read_bandwidth`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadBandwidth {
    /// Size of the buffer read (split evenly between threads).
    pub bytes: usize,
    /// Threads that ran at once.
    pub threads: usize,
    /// Bytes read per second / 1e9.
    pub gb_per_s: f64,
}

fn check_threads(threads: usize) -> Result<(), KernelError> {
    if threads == 0 {
        return Err(KernelError::InvalidLimitsParameter { what: "threads", reason: "must be at least 1" });
    }
    Ok(())
}

/// Runs `work(thread_index)` on `threads` threads released together; returns the longest time
/// any thread spent in `work`. Each thread times itself: timing from the main thread broke on a
/// busy machine, where the workers could finish before the main thread even read the clock.
fn timed_parallel<F: Fn(usize) + Sync>(threads: usize, work: F) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, work) = (&barrier, &work);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    work(t);
                    start.elapsed()
                })
            })
            .collect();
        let mut longest = Duration::ZERO;
        for h in handles {
            // A panicking work function is a bug in this module; propagate it.
            match h.join() {
                Ok(d) => longest = longest.max(d),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        longest
    })
}

/// Int8 multiply-accumulate operations one call of `int8_loop(kind, iters)` performs.
fn ops_per_iter(kind: KernelKind) -> f64 {
    // 16 independent accumulators; each instruction does (lanes * 4) multiply-adds = 2x ops.
    let bytes_per_reg = match kind {
        KernelKind::Avx512Vnni => 64.0,
        KernelKind::AvxVnni | KernelKind::Avx2 => 32.0,
        _ => 16.0,
    };
    INT8_ACCUMULATORS as f64 * bytes_per_reg * 2.0
}

// 16 independent accumulators: twice what two ports x ~4-5 cycles latency need, so the loop
// measures throughput, not latency (machine notes: 12+ needed for two vpdpbusd per cycle).
const INT8_ACCUMULATORS: usize = 16;

fn int8_loop(kind: KernelKind, iters: usize) -> i64 {
    match kind {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers only pass a kind whose features were detected (check_supported).
        KernelKind::Avx512Vnni => unsafe { simd::vnni512(iters) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelKind::AvxVnni => unsafe { simd::vnni256(iters) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelKind::Avx2 => unsafe { simd::avx2(iters) },
        _ => {
            let mut acc = [0i32; INT8_ACCUMULATORS * 4];
            let (a, b) = (black_box(3i32), black_box(-5i32));
            for _ in 0..iters {
                for v in acc.iter_mut() {
                    *v = v.wrapping_add(a * b);
                }
                black_box(&mut acc);
            }
            acc.iter().map(|&v| i64::from(v)).sum()
        }
    }
}

/// Measures peak int8 GOP/s of `kind`'s multiply-accumulate instruction (register operands
/// only, no memory traffic) on `threads` threads at once.
pub fn int8_peak(kind: KernelKind, threads: usize) -> Result<Int8Peak, KernelError> {
    check_threads(threads)?;
    let kind = kind.check_supported()?;
    // Calibrate the iteration count so one repeat lasts at least MIN_REPEAT.
    let mut iters = 1usize << 14;
    loop {
        let t = Instant::now();
        black_box(int8_loop(kind, iters));
        if t.elapsed() >= MIN_REPEAT / 4 || iters >= 1 << 30 {
            break;
        }
        iters *= 2;
    }
    iters *= 4;
    let best = (0..REPEATS)
        .map(|_| {
            timed_parallel(threads, |_| {
                black_box(int8_loop(kind, iters));
            })
        })
        .min()
        .unwrap_or(Duration::MAX);
    let ops = ops_per_iter(kind) * iters as f64 * threads as f64;
    Ok(Int8Peak { kernel: kind, threads, gops: ops / best.as_secs_f64() / 1e9 })
}

/// Measures the read bandwidth of a `bytes`-byte buffer (e.g. a weight matrix's size) split
/// evenly over `threads` threads, read repeatedly with the widest loads the CPU has. A buffer
/// that fits the last-level cache measures cache bandwidth, a larger one main memory.
pub fn read_bandwidth(bytes: usize, threads: usize) -> Result<ReadBandwidth, KernelError> {
    check_threads(threads)?;
    const MIN_BYTES_PER_THREAD: usize = 4096;
    if bytes < MIN_BYTES_PER_THREAD * threads {
        return Err(KernelError::InvalidLimitsParameter { what: "bytes", reason: "need at least 4 KiB per thread" });
    }
    // u64 words, a whole number of 256-byte chunks per thread.
    let words_per_thread = (bytes / threads / 256) * 32;
    let buf: Vec<u64> = (0..words_per_thread * threads).map(|i| i as u64).collect();
    let read_all = |t: usize, passes: usize| {
        let part = &buf[t * words_per_thread..(t + 1) * words_per_thread];
        for _ in 0..passes {
            black_box(sum_words(part));
        }
    };
    // Warm (bring into cache what fits), then calibrate passes to MIN_REPEAT.
    timed_parallel(threads, |t| read_all(t, 1));
    let mut passes = 1usize;
    loop {
        let d = timed_parallel(threads, |t| read_all(t, passes));
        if d >= MIN_REPEAT || passes >= 1 << 24 {
            break;
        }
        // Grow by at most 8x a step, so one disturbed (too short) timing cannot blow up the run.
        let want = (passes as f64 * MIN_REPEAT.as_secs_f64() / d.as_secs_f64().max(1e-9)) as usize;
        passes = want.clamp(passes * 2, passes * 8);
    }
    let best = (0..REPEATS).map(|_| timed_parallel(threads, |t| read_all(t, passes))).min().unwrap_or(Duration::MAX);
    let read = (words_per_thread * threads * 8 * passes) as f64;
    Ok(ReadBandwidth { bytes: words_per_thread * threads * 8, threads, gb_per_s: read / best.as_secs_f64() / 1e9 })
}

fn sum_words(words: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if KernelKind::Avx512Vnni.is_supported() {
            // SAFETY: avx512f was detected (part of the Avx512Vnni check).
            return unsafe { simd::sum_words_avx512(words) };
        }
        if KernelKind::Avx2.is_supported() {
            // SAFETY: avx2 was detected.
            return unsafe { simd::sum_words_avx2(words) };
        }
    }
    words.iter().fold(0u64, |a, &w| a.wrapping_add(w))
}

#[cfg(target_arch = "x86_64")]
mod simd {
    #![allow(unsafe_op_in_unsafe_fn)]
    use std::arch::x86_64::*;

    use super::INT8_ACCUMULATORS as ACC;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn vnni512(iters: usize) -> i64 {
        let a = _mm512_set1_epi8(std::hint::black_box(3));
        let b = _mm512_set1_epi8(std::hint::black_box(-5));
        let mut acc = [_mm512_setzero_si512(); ACC];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for v in acc {
            s = _mm512_add_epi32(s, v);
        }
        i64::from(_mm512_reduce_add_epi32(s))
    }

    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn vnni256(iters: usize) -> i64 {
        let a = _mm256_set1_epi8(std::hint::black_box(3));
        let b = _mm256_set1_epi8(std::hint::black_box(-5));
        // VEX encoding has 16 ymm registers: 14 accumulators + 2 operands; count 16 anyway by
        // running the last two accumulators' instructions twice.
        let mut acc = [_mm256_setzero_si256(); ACC - 2];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_dpbusd_avx_epi32(*v, a, b);
            }
            acc[0] = _mm256_dpbusd_avx_epi32(acc[0], a, b);
            acc[1] = _mm256_dpbusd_avx_epi32(acc[1], a, b);
        }
        let mut s = _mm256_setzero_si256();
        for v in acc {
            s = _mm256_add_epi32(s, v);
        }
        i64::from(_mm256_extract_epi32::<0>(s))
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2(iters: usize) -> i64 {
        let a = _mm256_set1_epi8(std::hint::black_box(3));
        let b = _mm256_set1_epi8(std::hint::black_box(-5));
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 8];
        for _ in 0..iters {
            // Two passes over 8 accumulators = 16 multiply-accumulate steps per iteration.
            for _ in 0..2 {
                for v in acc.iter_mut() {
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones);
                    *v = _mm256_add_epi32(*v, p);
                }
            }
        }
        let mut s = _mm256_setzero_si256();
        for v in acc {
            s = _mm256_add_epi32(s, v);
        }
        i64::from(_mm256_extract_epi32::<0>(s))
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum_words_avx512(words: &[u64]) -> u64 {
        let mut acc = [_mm512_setzero_si512(); 4];
        let chunks = words.chunks_exact(32);
        let rest = chunks.remainder();
        for c in chunks {
            let p = c.as_ptr().cast::<__m512i>();
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_epi64(*a, _mm512_loadu_si512(p.add(i)));
            }
        }
        let s = _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3]));
        (_mm512_reduce_add_epi64(s) as u64).wrapping_add(rest.iter().sum::<u64>())
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum_words_avx2(words: &[u64]) -> u64 {
        let mut acc = [_mm256_setzero_si256(); 4];
        let chunks = words.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            let p = c.as_ptr().cast::<__m256i>();
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_epi64(*a, _mm256_loadu_si256(p.add(i)));
            }
        }
        let mut out = [0u64; 4];
        let s = _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3]));
        _mm256_storeu_si256(out.as_mut_ptr().cast(), s);
        out.iter().fold(0u64, |a, &v| a.wrapping_add(v)).wrapping_add(rest.iter().sum::<u64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_positive_and_reject_bad_input() {
        assert!(read_bandwidth(1 << 20, 1).unwrap().gb_per_s > 0.0);
        assert!(int8_peak(KernelKind::Scalar, 1).unwrap().gops > 0.0);
        assert!(int8_peak(KernelKind::best_supported(), 1).unwrap().gops > 0.0);
        assert!(read_bandwidth(100, 1).is_err());
        assert!(read_bandwidth(1 << 20, 0).is_err());
        assert!(int8_peak(KernelKind::Scalar, 0).is_err());
    }
}

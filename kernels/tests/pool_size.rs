//! `set_threads` sizes the process-wide pool before its first use, and only then. One test in its
//! own binary: the pool is per process and starts on first use.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};

use qtier_kernels::{KernelError, QuantizedLinear, parallelism, run_parts, set_threads};

fn threads(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

#[test]
fn set_threads_sizes_the_pool_layers_and_parts_run_on() {
    // More threads than most test machines have cores, so the default (one per core) differs.
    let asked = std::thread::available_parallelism().map_or(1, |n| n.get()) + 3;
    set_threads(threads(asked)).unwrap();
    assert_eq!(parallelism(), asked);
    // Asking again for the size it has is fine; another size is refused, naming both.
    set_threads(threads(asked)).unwrap();
    assert_eq!(set_threads(threads(2)), Err(KernelError::PoolAlreadyStarted { threads: asked, requested: 2 }));
    assert_eq!(parallelism(), asked);

    // A layer without its own setting splits its calls over the pool's threads.
    let (n, k) = (64, 32);
    let layer = QuantizedLinear::new(&vec![1i8; n * k], &vec![0.5; n], None, n, k).unwrap();
    assert_eq!(layer.threads(), asked);

    // Every part runs exactly once.
    let parts = asked * 4;
    let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
    run_parts(parts, &|i| {
        hits[i].fetch_add(1, Ordering::SeqCst);
    });
    assert!(hits.iter().all(|h| h.load(Ordering::SeqCst) == 1));

    // The pool started `asked - 1` workers besides the caller (a new thread names itself once it
    // runs, so the count may lag its spawn for a moment).
    #[cfg(target_os = "linux")]
    {
        let named_workers = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with("qtier-gemm-"))
                .count()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while named_workers() < asked - 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(named_workers(), asked - 1);
    }
}

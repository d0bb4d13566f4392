//! Times (10th percentile, robust to a busy shared machine) one shape with 1 and 2 threads, and the pieces of a call, for kernel tuning.
//!
//! `cargo run --release -p qtier-kernels --example probe M K N`

use std::time::Instant;

use qtier_kernels::{KernelKind, QuantizedLinear};

fn median(mut f: impl FnMut(), reps: usize) -> f64 {
    for _ in 0..reps / 10 + 1 {
        f();
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    if std::env::var_os("PROBE_DIST").is_some() {
        let q = |p: usize| t[(t.len() - 1) * p / 100];
        print!("[p10 {:.2} p50 {:.2} p90 {:.2}] ", q(10), q(50), q(90));
    }
    t[t.len() / 10]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse()).collect::<Result<_, _>>()?;
    let (m, k, n) = (a[0], a[1], a[2]);
    let w: Vec<i8> = (0..n * k).map(|i| ((i * 7 + i / 13) % 255) as i8).map(|v| v.max(-127)).collect();
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 13) % 101) as f32 / 50.0 - 1.0).collect();
    let ops = 2.0 * (m * n * k) as f64;
    let reps = ((1e9 / ops) as usize).clamp(10, 5000);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
    let mut out = vec![0.0; m * n];
    let xq = vec![3i8; m * k];
    for t in [1, 2] {
        let l = QuantizedLinear::new(&w, &vec![0.01; n], None, n, k)?.with_threads(t)?;
        let mut body = || {
            let f = median(|| l.forward_into(&x, m, &mut out, None).unwrap(), reps);
            let acc = median(|| drop(l.accumulate_i32(KernelKind::Avx512Vnni, &xq, m).unwrap()), reps);
            println!("threads {t}: forward {f:.2} us ({:.0} GOP/s), accumulate_i32 {acc:.1} us", ops / f / 1e3);
        };
        // PROBE_RAYON=1 runs inside a 2-thread rayon pool (as the criterion bench does).
        if std::env::var_os("PROBE_RAYON").is_some() {
            pool.install(&mut body);
        } else {
            body();
        }
    }
    Ok(())
}

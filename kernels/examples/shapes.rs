//! Quick timing of `QuantizedLinear::forward_into` on the reference shapes (median of runs), with
//! the machine limits, for iterating on kernels without a full criterion run.
//!
//! `cargo run --release -p qtier-kernels --example shapes [threads]`

use std::time::Instant;

use qtier_kernels::{KernelKind, QuantizedLinear, limits};

const SHAPES: [(usize, usize, usize); 7] = [
    (1, 384, 1536),
    (32, 384, 1536),
    (128, 768, 3072),
    (1, 4096, 4096),
    (1, 4096, 11008),
    (16, 4096, 11008),
    (128, 4096, 4096),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = std::env::args().nth(1).map_or(Ok(2), |s| s.parse())?;
    let kind = qtier_kernels::selected_kernel()?;
    let peak = limits::int8_peak(KernelKind::best_supported(), threads)?;
    println!("kernel {kind}, threads {threads}, int8 peak {:.0} GOP/s", peak.gops);
    for (m, k, n) in SHAPES {
        let w: Vec<i8> = (0..n * k).map(|i| ((i * 7 + i / 13) % 255) as i8).map(|v| v.max(-127)).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 13) % 101) as f32 / 50.0 - 1.0).collect();
        let l = QuantizedLinear::new(&w, &vec![0.01; n], Some(&vec![0.1; n]), n, k)?.with_threads(threads)?;
        let mut out = vec![0.0; m * n];
        let ops = 2.0 * (m * n * k) as f64;
        let reps = ((2e9 / ops) as usize).clamp(20, 20_000);
        for _ in 0..reps.min(50) {
            l.forward_into(&x, m, &mut out, None)?;
        }
        let mut times = (0..reps)
            .map(|_| {
                let t = Instant::now();
                let r = l.forward_into(&x, m, &mut out, None);
                (r, t.elapsed().as_secs_f64() * 1e6)
            })
            .map(|(r, t)| r.map(|()| t))
            .collect::<Result<Vec<_>, _>>()?;
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let gops = ops / med / 1e3;
        let extra = if m == 1 {
            let bw = limits::read_bandwidth(n * k, threads)?;
            format!(
                "{:.1} GB/s = {:.0}% of read bw {:.1} GB/s",
                (n * k) as f64 / med / 1e3,
                (n * k) as f64 / med / 1e3 / bw.gb_per_s * 100.0,
                bw.gb_per_s
            )
        } else {
            format!("{:.0}% of int8 peak", gops / peak.gops * 100.0)
        };
        println!("{m:>4}x{k:>5}x{n:>6}: median {med:>9.1} us  {gops:>7.1} GOP/s  {extra}");
    }
    Ok(())
}

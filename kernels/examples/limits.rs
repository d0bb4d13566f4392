//! Prints this machine's measured limits: int8 peak (1 and 2 threads) and read bandwidth for
//! the reference weight sizes.
//!
//! `cargo run --release -p qtier-kernels --example limits`

use qtier_kernels::{KernelKind, limits};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kind = KernelKind::best_supported();
    for t in [1, 2] {
        let p = limits::int8_peak(kind, t)?;
        println!("int8 peak ({kind}, {t} threads): {:.0} GOP/s", p.gops);
    }
    for bytes in [384 * 1536, 768 * 3072, 4096 * 4096, 4096 * 11008] {
        for t in [1, 2] {
            let b = limits::read_bandwidth(bytes, t)?;
            println!(
                "read bandwidth {:>6.1} MiB, {t} threads: {:.1} GB/s",
                bytes as f64 / (1 << 20) as f64,
                b.gb_per_s
            );
        }
    }
    Ok(())
}

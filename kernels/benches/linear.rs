//! Criterion benches of `QuantizedLinear::forward_into` on the 7 reference shapes (M x K -> N),
//! 2 threads (qtier: `with_threads(2)`; candle: its default, one per core, checked below),
//! hot weights (the same layer reused every iteration), beside two peers measured in
//! the same run: candle-core's f32 `matmul` and candle's GGML Q8_0 `QMatMul`.
//!
//! Throughput is reported as elements = 2 M N K operations, so criterion's `Gelem/s` reads as
//! GOP/s. `QTIER_BENCH_SHAPES=1x384x1536,...` limits the shapes; `QTIER_BENCH_PEERS=0` skips
//! the peers.

use std::hint::black_box;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qtier_kernels::QuantizedLinear;

/// Threads for every contender (the machine notes' comparison point).
const THREADS: usize = 2;

/// A deterministic value in [-1, 1) (no rand dependency needed for benches).
fn pseudo(i: usize, salt: usize) -> f32 {
    let h = (i as u64 ^ (salt as u64) << 32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn selected_shapes() -> Vec<(usize, usize, usize)> {
    match std::env::var("QTIER_BENCH_SHAPES") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .filter_map(|t| {
                let v: Vec<usize> = t.split('x').filter_map(|d| d.trim().parse().ok()).collect();
                (v.len() == 3).then(|| (v[0], v[1], v[2]))
            })
            .collect(),
        _ => qtier_kernels::REFERENCE_SHAPES.to_vec(),
    }
}

fn bench_linear(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(THREADS).build().expect("rayon pool");
    let peers = std::env::var("QTIER_BENCH_PEERS").map_or(true, |v| v != "0");
    let kernel = qtier_kernels::selected_kernel().expect("QTIER_KERNEL");
    println!(
        "qtier kernel: {kernel}; candle threads: {} (RAYON_NUM_THREADS / cores)",
        candle_core::utils::get_num_threads()
    );
    for (m, k, n) in selected_shapes() {
        let w_f32: Vec<f32> = (0..n * k).map(|i| pseudo(i, 1) * 0.05).collect();
        let x: Vec<f32> = (0..m * k).map(|i| pseudo(i, 2)).collect();
        let bias: Vec<f32> = (0..n).map(|i| pseudo(i, 3) * 0.1).collect();
        // Per-channel symmetric int8, as qtier-quantize produces.
        let mut w_q = vec![0i8; n * k];
        let mut scales = vec![0f32; n];
        for (row, (q, s)) in w_f32.chunks(k).zip(w_q.chunks_mut(k).zip(scales.iter_mut())) {
            *s = qtier_kernels::quant::quantize_row(row, q);
        }
        let layer = QuantizedLinear::new(&w_q, &scales, Some(&bias), n, k)
            .expect("layer")
            .with_threads(THREADS)
            .expect("threads");
        let mut out = vec![0f32; m * n];

        let mut group = c.benchmark_group(format!("linear_{m}x{k}x{n}"));
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_function(BenchmarkId::new("qtier", kernel), |b| {
            pool.install(|| b.iter(|| layer.forward_into(black_box(&x), m, &mut out, None).expect("forward")))
        });
        if peers {
            let dev = Device::Cpu;
            let xt = Tensor::from_vec(x.clone(), (m, k), &dev).expect("x");
            let wt = Tensor::from_vec(w_f32.clone(), (n, k), &dev).expect("w");
            let bt = Tensor::from_vec(bias.clone(), n, &dev).expect("bias");
            // Hot f32 weights, pre-transposed to [K, N] so matmul reads them contiguously.
            let wt_kn = wt.t().and_then(|t| t.contiguous()).expect("transpose");
            group.bench_function("candle_f32", |b| {
                b.iter(|| {
                    let y = black_box(&xt).matmul(&wt_kn).expect("matmul");
                    y.broadcast_add(&bt).expect("bias")
                })
            });
            let q = QTensor::quantize(&wt, GgmlDType::Q8_0).expect("q8_0");
            let qmm = QMatMul::from_qtensor(q).expect("qmatmul");
            group.bench_function("candle_q8_0", |b| {
                b.iter(|| {
                    let y = qmm.forward(black_box(&xt)).expect("qmatmul forward");
                    y.broadcast_add(&bt).expect("bias")
                })
            });
        }
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_linear
}
criterion_main!(benches);

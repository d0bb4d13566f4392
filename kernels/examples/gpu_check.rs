//! GPU check of the CUDA int8 Linear (run by `scripts/gpu-check.sh` on a machine with an NVIDIA
//! GPU; needs the `cuda` feature, the driver, and libnvrtc on `LD_LIBRARY_PATH`).
//!
//! 1. Correctness on the 7 reference shapes and odd ones: the GPU's i32 accumulators must equal
//!    the CPU kernels' exactly (which equal the scalar reference's, see the CPU test suite), the
//!    GPU activation quantization must equal the CPU's bit for bit, and the fused outputs (bias,
//!    GELU, residual) must match the CPU layer within [`OUTPUT_TOLERANCE`]; accumulators and
//!    outputs on every GEMM kernel the GPU runs, forced, not only the one chosen for the shape
//!    (an sm_90 GPU so also runs sm_75's mma.m8n8k16 kernel).
//!    The fp32 Linear of float checkpoints ([`CudaLinear`]) must match a CPU f64 reference within
//!    [`FLOAT_TOLERANCE`] and the accumulation's rounding bound on every shape up to
//!    [`FLOAT_CHECK_MAX_MACS`].
//!    The outlier decomposition ([`OutlierRule`], on inputs with planted outliers): the GPU's
//!    outlier lists must equal a CPU selection (rows whose decision is within [`RULE_MARGIN`] of
//!    a threshold are left out of that comparison), its quantized rows the CPU's quantization of
//!    the rows with their outliers zeroed, bit for bit, and the layer's outputs (GELU with a
//!    residual, and no activation with a residual) the CPU decomposition within
//!    [`OUTPUT_TOLERANCE`].
//! 2. Timing of the fused Linear (quantize + GEMM + epilogue, hot weights, one stream) and of
//!    the GEMM alone on already-quantized activations, as medians over repeated batches of
//!    launches, with achieved TOPS (2 m n k / time); then the GEMM alone forced onto each
//!    kernel the GPU runs (`"sweep"` lines: the data to tune [`qtier_kernels::cuda::launch::select_gemm`]).
//!
//! Prints one JSON object per line; `--out FILE` also writes them there.
//! Usage: `gpu_check [--out FILE] [--quick]` (`--quick`: fewer timing repeats).

use std::io::Write;
use std::time::Instant;

use qtier_kernels::cuda::{
    CudaDevice, CudaError, CudaLinear, CudaQuantizedLinear, GemmKernel, QuantizedActivations, linear,
};
use qtier_kernels::quant::quantize_row;
use qtier_kernels::{Activation, QuantizedLinear};

/// Largest difference between the GPU and CPU fused outputs, per unit of `max(1, |cpu|)`:
/// the activations quantize bit-identically and the accumulators are exact, so only the
/// epilogue's float rounding (FMA contraction) and the erf implementations differ (the CPU's
/// A&S erf is within 1.5e-7; see `qtier_kernels::activation::ACTIVATION_ABS_TOLERANCE`).
const OUTPUT_TOLERANCE: f32 = 1e-4;

/// The GPU's fp32 Linear (fp32 FMA accumulation, GELU and residual fused) against a CPU f64
/// reference: an output may differ by [`FLOAT_TOLERANCE`] per unit of `max(1, |reference|)` (the
/// GELU's erf and the epilogue) plus [`FLOAT_ROUNDING_ULPS`] f32 half-ulps times `sqrt(k)` times
/// `sum |x w| + |bias|` (the k-long f32 accumulation, whose rounding errors add up like a random
/// walk). A fixed relative bound of 1e-4 failed 1x4096x11008 on qtier's CUDA emulator (the same
/// kernel source and accumulation order, on the CPU): 1.34e-4 of a reference whose terms sum to
/// thousands in magnitude.
const FLOAT_TOLERANCE: f64 = 1e-5;
/// See [`FLOAT_TOLERANCE`].
const FLOAT_ROUNDING_ULPS: f64 = 4.0;

/// Largest shape (multiply-adds) the fp32 Linear is checked on: its f64 CPU reference is
/// scalar, and 2e8 multiply-adds take well under a second.
const FLOAT_CHECK_MAX_MACS: usize = 200_000_000;

#[path = "../tests/support/outliers.rs"]
mod outliers;

use outliers::{RULE, decomposed_output, select_outliers, with_planted_outliers};

/// Odd shapes: partial tiles in every dimension, K not a multiple of 32, m on both sides of the
/// dp4a / tensor-core switch (8).
const ODD_SHAPES: [(usize, usize, usize); 6] =
    [(3, 77, 129), (9, 1000, 333), (17, 33, 8), (65, 130, 31), (129, 4095, 250), (8, 5, 1)];

/// Minimum wall time of one timed batch of launches (so launch jitter and timer resolution
/// stay under 1%).
const BATCH_SECONDS: f64 = 0.02;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn i8(&mut self) -> i8 {
        ((self.next() % 255) as i32 - 127) as i8
    }
    fn f32(&mut self) -> f32 {
        (self.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0
    }
}

fn emit(out: &mut Option<std::fs::File>, line: String) {
    println!("{line}");
    if let Some(f) = out {
        let _ = writeln!(f, "{line}");
    }
}

/// Median seconds per call of `f` over `repeats` batches, each at least [`BATCH_SECONDS`].
fn time_calls(
    dev: &CudaDevice,
    repeats: usize,
    mut f: impl FnMut() -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    for _ in 0..3 {
        f()?;
    }
    dev.synchronize()?;
    let mut calls = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..calls {
            f()?;
        }
        dev.synchronize()?;
        if t.elapsed().as_secs_f64() >= BATCH_SECONDS || calls >= 1 << 16 {
            break;
        }
        calls *= 2;
    }
    let mut samples: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                f()?;
            }
            dev.synchronize()?;
            Ok(t.elapsed().as_secs_f64() / calls as f64)
        })
        .collect::<Result<_, CudaError>>()?;
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

struct Case {
    m: usize,
    k: usize,
    n: usize,
    w: Vec<i8>,
    scales: Vec<f32>,
    bias: Vec<f32>,
    x: Vec<f32>,
}

impl Case {
    fn new(m: usize, k: usize, n: usize, seed: u64) -> Case {
        let mut r = Rng(seed);
        Case {
            m,
            k,
            n,
            w: (0..n * k).map(|_| r.i8()).collect(),
            scales: (0..n).map(|_| 0.001 + r.f32().abs() * 0.01).collect(),
            bias: (0..n).map(|_| r.f32()).collect(),
            x: (0..m * k).map(|_| r.f32() * 3.0).collect(),
        }
    }
}

/// Largest `|found - expected| / max(1, |expected|)`; NaN if any output is NaN (`f32::max`
/// would skip it), which the callers' `worst.is_nan() || worst > OUTPUT_TOLERANCE` fails.
fn worst_relative_error(found: &[f32], expected: &[f32]) -> f32 {
    found
        .iter()
        .zip(expected)
        .map(|(g, c)| (g - c).abs() / c.abs().max(1.0))
        .fold(0f32, |w, e| if w.is_nan() || e.is_nan() { f32::NAN } else { w.max(e) })
}

fn check(dev: &CudaDevice, c: &Case) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let (m, k, n) = (c.m, c.k, c.n);
    let mut failures = Vec::new();
    // Quantized activations, CPU reference.
    let mut xq = vec![0i8; m * k];
    let mut xs = vec![0f32; m];
    for r in 0..m {
        xs[r] = quantize_row(&c.x[r * k..(r + 1) * k], &mut xq[r * k..(r + 1) * k]);
    }
    let cpu = QuantizedLinear::new(&c.w, &c.scales, Some(&c.bias), n, k)?.with_activation(Activation::GeluErf);
    let cpu_acc = cpu.accumulate_i32(cpu.kernel(), &xq, m)?;
    // Activation quantization on the device.
    let x_dev = dev.upload(&c.x)?;
    let mut qa = QuantizedActivations::new(dev, m, k)?;
    linear::quantize_rows(dev, &x_dev, &mut qa)?;
    let (gq, gs) = (dev.download(qa.values())?, dev.download(qa.scales())?);
    let kp = qa.k_padded();
    let q_bad =
        (0..m).flat_map(|r| (0..k).map(move |j| (r, j))).filter(|&(r, j)| gq[r * kp + j] != xq[r * k + j]).count();
    let s_bad = gs.iter().zip(&xs).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    if q_bad + s_bad > 0 {
        failures.push(format!("{m}x{k}x{n} quantization: {q_bad} values and {s_bad} scales differ from the CPU"));
    }
    // Per kernel the GPU runs: the exact accumulators, and the fused outputs with a residual.
    let residual: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 * 0.25).collect();
    let mut cpu_out = vec![0f32; m * n];
    cpu.forward_into(&c.x, m, &mut cpu_out, Some(&residual))?;
    let res_dev = dev.upload(&residual)?;
    let mut out = dev.zeros::<f32>(m * n)?;
    for kernel in GemmKernel::ALL.into_iter().filter(|k| k.runs_on(dev.arch())) {
        let layer = CudaQuantizedLinear::new(dev, &c.w, &c.scales, Some(&c.bias), n, k)?
            .with_activation(Activation::GeluErf)
            .with_kernel(kernel);
        let acc = layer.accumulate_i32(dev, &xq, m, kernel)?;
        let bad = acc.iter().zip(&cpu_acc).filter(|(a, b)| a != b).count();
        if bad > 0 {
            failures.push(format!("{m}x{k}x{n} {kernel:?}: {bad} of {} accumulators differ", acc.len()));
        }
        layer.forward(dev, &x_dev, m, Some(&res_dev), &mut out)?;
        let gpu_out = dev.download(&out)?;
        let worst = worst_relative_error(&gpu_out, &cpu_out);
        if worst.is_nan() || worst > OUTPUT_TOLERANCE {
            failures.push(format!(
                "{m}x{k}x{n} {kernel:?} fused output: worst relative error {worst:e} > {OUTPUT_TOLERANCE:e}"
            ));
        }
    }
    Ok(failures)
}

/// The outlier decomposition on `c`'s shape with planted outliers (see the module docs).
fn check_outliers(dev: &CudaDevice, c: &Case) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let (m, k, n) = (c.m, c.k, c.n);
    let mut failures = Vec::new();
    let x = with_planted_outliers(&c.x, m, k);
    let x_dev = dev.upload(&x)?;
    let mut qa = QuantizedActivations::with_outliers(dev, m, k, RULE)?;
    linear::quantize_rows(dev, &x_dev, &mut qa)?;
    let lists = qa.download_outliers(dev)?.ok_or("activations without outlier lists")?;
    let (gq, gs) = (dev.download(qa.values())?, dev.download(qa.scales())?);
    let kp = qa.k_padded();
    // The CPU's side: selection, the rows with their outliers zeroed, their quantization.
    let (mut list_bad, mut unclear, mut q_bad, mut s_bad) = (0, 0, 0, 0);
    let mut zeroed = x.clone();
    for row in 0..m {
        let (expected, clear) = select_outliers(&x[row * k..(row + 1) * k]);
        // The GPU's lists decide the zeroed rows, so a row near a threshold still checks the rest.
        for &(channel, _) in &lists[row] {
            // (Clamped: a channel out of range is a GPU bug the list comparison reports.)
            zeroed[row * k + channel.min(k - 1)] = 0.0;
        }
        if !clear {
            unclear += 1;
        } else if expected.iter().zip(&lists[row]).any(|(a, b)| a.0 != b.0 || a.1.to_bits() != b.1.to_bits())
            || expected.len() != lists[row].len()
        {
            list_bad += 1;
        }
        let mut q = vec![0i8; k];
        let scale = quantize_row(&zeroed[row * k..(row + 1) * k], &mut q);
        q_bad += (0..k).filter(|&j| gq[row * kp + j] != q[j]).count();
        s_bad += usize::from(gs[row].to_bits() != scale.to_bits());
    }
    let taken: usize = lists.iter().map(Vec::len).sum();
    if list_bad + q_bad + s_bad > 0 {
        failures.push(format!(
            "{m}x{k}x{n} outliers: {list_bad} rows' lists, {q_bad} quantized values and {s_bad} scales differ from the CPU"
        ));
    }
    // The layer, both ways its float half runs.
    let residual: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 * 0.25).collect();
    let res_dev = dev.upload(&residual)?;
    let plain = QuantizedLinear::new(&c.w, &c.scales, Some(&c.bias), n, k)?;
    for activation in [Activation::GeluErf, Activation::None] {
        let expected = decomposed_output(&plain, &c.w, &c.scales, &zeroed, &lists, activation, &residual)?;
        let gpu = CudaQuantizedLinear::new(dev, &c.w, &c.scales, Some(&c.bias), n, k)?
            .with_activation(activation)
            .with_outlier_rule(RULE)?;
        let mut out = dev.zeros::<f32>(m * n)?;
        gpu.forward(dev, &x_dev, m, Some(&res_dev), &mut out)?;
        let found = dev.download(&out)?;
        let worst = worst_relative_error(&found, &expected);
        if worst.is_nan() || worst > OUTPUT_TOLERANCE {
            failures.push(format!(
                "{m}x{k}x{n} decomposed output ({activation:?}): worst relative error {worst:e} > {OUTPUT_TOLERANCE:e}"
            ));
        }
    }
    eprintln!("{m}x{k}x{n}: {taken} outliers taken, {unclear} rows near a threshold");
    Ok(failures)
}

/// The fp32 Linear (GELU and residual fused) against an f64 CPU reference on `c`'s shape.
fn check_float(dev: &CudaDevice, c: &Case) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let (m, k, n) = (c.m, c.k, c.n);
    let w: Vec<f32> = c.w.iter().map(|&v| f32::from(v) / 127.0).collect();
    let residual: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32 * 0.5).collect();
    let layer = CudaLinear::new(dev, &w, Some(&c.bias), n, k)?.with_activation(Activation::GeluErf);
    let (x, r) = (dev.upload(&c.x)?, dev.upload(&residual)?);
    let mut out = dev.zeros::<f32>(m * n)?;
    layer.forward(dev, &x, m, Some(&r), &mut out)?;
    let gpu = dev.download(&out)?;
    let gelu = |v: f64| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2));
    let half_ulp = f64::from(f32::EPSILON) / 2.0;
    // The worst output as a fraction of what it may differ by (a failure above 1).
    let mut worst = 0f64;
    for row in 0..m {
        for col in 0..n {
            let terms = (0..k).map(|i| f64::from(c.x[row * k + i]) * f64::from(w[col * k + i]));
            let (dot, magnitude) = terms.fold((0.0, 0.0), |(sum, size), t| (sum + t, size + t.abs()));
            let expected = gelu(dot + f64::from(c.bias[col])) + f64::from(residual[row * n + col]);
            let rounding =
                FLOAT_ROUNDING_ULPS * half_ulp * (k as f64).sqrt() * (magnitude + f64::from(c.bias[col]).abs());
            let allowed = FLOAT_TOLERANCE * expected.abs().max(1.0) + rounding;
            let share = (f64::from(gpu[row * n + col]) - expected).abs() / allowed;
            worst = if share.is_nan() { f64::INFINITY } else { worst.max(share) };
        }
    }
    Ok(if worst > 1.0 {
        vec![format!("{m}x{k}x{n} fp32 Linear: an output differs by {worst:.2} times what is allowed")]
    } else {
        Vec::new()
    })
}

/// erf in f64 (Abramowitz and Stegun 7.1.26 is too coarse for a reference; this is the
/// complementary-error-function series of Numerical Recipes' `erfc`, relative error < 1.2e-7,
/// far below [`FLOAT_TOLERANCE`]).
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 { 1.0 - erfc } else { erfc - 1.0 }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out_path = args.iter().position(|a| a == "--out").and_then(|i| args.get(i + 1)).cloned();
    let repeats = if args.iter().any(|a| a == "--quick") { 5 } else { 11 };
    let mut out = out_path.map(std::fs::File::create).transpose()?;

    let dev = CudaDevice::new(0)?;
    let t = Instant::now();
    dev.preload()?;
    emit(
        &mut out,
        format!(
            "{{\"device\":{:?},\"arch\":\"{}\",\"sm_count\":{},\"preload_s\":{:.3}}}",
            dev.name(),
            dev.arch(),
            dev.sm_count(),
            t.elapsed().as_secs_f64()
        ),
    );

    let mut failures = Vec::new();
    for (i, &(m, k, n)) in qtier_kernels::REFERENCE_SHAPES.iter().chain(&ODD_SHAPES).enumerate() {
        let case = Case::new(m, k, n, 0x9e37_79b9_7f4a_7c15 ^ i as u64);
        let mut f = check(&dev, &case)?;
        f.extend(check_outliers(&dev, &case)?);
        if m * k * n <= FLOAT_CHECK_MAX_MACS {
            f.extend(check_float(&dev, &case)?);
        }
        emit(&mut out, format!("{{\"check\":\"{m}x{k}x{n}\",\"ok\":{},\"failures\":{:?}}}", f.is_empty(), f));
        failures.extend(f);
    }

    for (i, &(m, k, n)) in qtier_kernels::REFERENCE_SHAPES.iter().enumerate() {
        let c = Case::new(m, k, n, 0x51ed ^ i as u64);
        let layer = CudaQuantizedLinear::new(&dev, &c.w, &c.scales, Some(&c.bias), n, k)?;
        let x = dev.upload(&c.x)?;
        let mut y = dev.zeros::<f32>(m * n)?;
        let mut qa = QuantizedActivations::new(&dev, m, k)?;
        linear::quantize_rows(&dev, &x, &mut qa)?;
        let fused = time_calls(&dev, repeats, || layer.forward(&dev, &x, m, None, &mut y))?;
        let gemm = time_calls(&dev, repeats, || layer.forward_quantized(&dev, &qa, None, &mut y))?;
        let ops = 2.0 * (m * n * k) as f64;
        emit(
            &mut out,
            format!(
                "{{\"bench\":\"{m}x{k}x{n}\",\"kernel\":\"{:?}\",\"fused_us\":{:.2},\"fused_tops\":{:.2},\"gemm_us\":{:.2},\"gemm_tops\":{:.2},\"weight_gb_s\":{:.0}}}",
                layer.kernel_for(&dev, m),
                fused * 1e6,
                ops / fused / 1e12,
                gemm * 1e6,
                ops / gemm / 1e12,
                (n * k) as f64 / gemm / 1e9
            ),
        );
        for kernel in GemmKernel::ALL.into_iter().filter(|k| k.runs_on(dev.arch())) {
            let forced = CudaQuantizedLinear::new(&dev, &c.w, &c.scales, Some(&c.bias), n, k)?.with_kernel(kernel);
            let gemm = time_calls(&dev, repeats, || forced.forward_quantized(&dev, &qa, None, &mut y))?;
            emit(
                &mut out,
                format!(
                    "{{\"sweep\":\"{m}x{k}x{n}\",\"kernel\":\"{}\",\"gemm_us\":{:.2},\"gemm_tops\":{:.2}}}",
                    kernel.name(),
                    gemm * 1e6,
                    ops / gemm / 1e12
                ),
            );
        }
    }
    if failures.is_empty() {
        emit(&mut out, "{\"result\":\"pass\"}".to_owned());
        Ok(())
    } else {
        emit(&mut out, format!("{{\"result\":\"fail\",\"failures\":{failures:?}}}"));
        Err(format!("{} GPU checks failed", failures.len()).into())
    }
}

//! `qtier bench kernels`: the fused int8 Linear on fixed shapes, hot weights (the same layer again
//! and again, as ONNX Runtime's peer script measures), against this machine's measured limits and,
//! in the same process, candle's f32 `matmul` and Q8_0 `QMatMul`.
//!
//! Each shape's limit is its roofline: the longer of `2MNK / int8 peak` and
//! `weight bytes / read bandwidth at the weight's size` (both measured by
//! [`qtier_kernels::limits`] with the same thread count); `percent_of_limit` is that time over
//! the measured median.
//!
//! The statistics (qtier's and the peers') exclude the clock's own cost, measured in the same run
//! ([`crate::timing::clock_overhead_ns`], reported as `clock_overhead_ns`): the limits are
//! measured over long loops without a clock read per pass, and ONNX Runtime's peer figures
//! subtract its empty-run overhead. `samples_ns` are kept as measured.

use std::collections::BTreeMap;
use std::time::Duration;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use qtier_kernels::{KernelKind, QuantizedLinear, limits};
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::stats::Sample;
use crate::timing::{TimingConfig, measure};

/// Version of [`KernelBenchReport`]'s layout.
pub const KERNEL_REPORT_SCHEMA_VERSION: u32 = 2;

/// The reference shapes of the kernel issue: MiniLM's FFN at batch 1 and 32, BERT-base's at 128
/// tokens, and Llama-7B's projections at decode (M=1), small-batch decode (16) and prefill (128).
pub const REFERENCE_SHAPES: &str =
    "1x384x1536,32x384x1536,128x768x3072,1x4096x4096,1x4096x11008,16x4096x11008,128x4096x4096";

/// One Linear shape: `m` tokens of `k` features to `n` outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearShape {
    /// Rows of the input (tokens).
    pub m: usize,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
}

impl LinearShape {
    /// Parses `MxKxN`.
    pub fn parse(text: &str) -> Result<LinearShape> {
        let bad = |problem: &str| BenchError::InvalidWorkload { text: text.to_string(), problem: problem.into() };
        let parts: Vec<&str> = text.trim().split('x').collect();
        if parts.len() != 3 {
            return Err(bad("expected MxKxN, e.g. 32x384x1536"));
        }
        let dims: Vec<usize> = parts
            .iter()
            .map(|p| p.parse::<usize>().map_err(|_| bad("dimensions must be positive integers")))
            .collect::<Result<_>>()?;
        if dims.contains(&0) {
            return Err(bad("dimensions must be positive integers"));
        }
        Ok(LinearShape { m: dims[0], k: dims[1], n: dims[2] })
    }

    /// Parses a comma-separated list of shapes.
    pub fn parse_list(text: &str) -> Result<Vec<LinearShape>> {
        text.split(',').filter(|s| !s.trim().is_empty()).map(LinearShape::parse).collect()
    }

    /// Multiply-accumulates counted as two operations: `2 m k n`.
    pub fn operations(&self) -> f64 {
        2.0 * self.m as f64 * self.k as f64 * self.n as f64
    }
}

impl std::fmt::Display for LinearShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.m, self.k, self.n)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct KernelBenchConfig {
    /// The shapes.
    pub shapes: Vec<LinearShape>,
    /// Threads for qtier's kernel, the limits and (through the global pool) the peers.
    pub threads: usize,
    /// Time per shape.
    pub timing: TimingConfig,
    /// Also time candle's f32 matmul and Q8_0 QMatMul on each shape.
    pub peers: bool,
}

/// This machine's limits for the thread count used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineLimits {
    /// Peak int8 multiply-accumulate throughput, GOP/s.
    pub int8_gops: f64,
    /// The instruction set of that peak.
    pub int8_kernel: String,
    /// Read bandwidth in GB/s by buffer size in bytes (the weight sizes of the shapes).
    pub read_gbps_by_bytes: BTreeMap<String, f64>,
}

/// Timings of one shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelRow {
    /// `MxKxN`.
    pub shape: String,
    /// Rows.
    pub m: usize,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// Median of the samples less the clock's cost, µs.
    pub median_us: f64,
    /// 10th percentile less the clock's cost, µs.
    pub p10_us: f64,
    /// 90th percentile less the clock's cost, µs.
    pub p90_us: f64,
    /// `2MNK / median`, GOP/s.
    pub gops: f64,
    /// The roofline time of this shape, µs.
    pub limit_us: f64,
    /// Which limit binds: `compute` or `memory`.
    pub bound: String,
    /// `limit_us / median_us`, in percent.
    pub percent_of_limit: f64,
    /// Peer timings in the same process, when asked for.
    pub peers: Option<PeerTimings>,
    /// Every sample as measured (the clock's cost included), ns.
    pub samples_ns: Vec<f64>,
}

/// Median µs of the peers on one shape, less the clock's cost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerTimings {
    /// candle f32 `matmul` (weights pre-transposed, contiguous).
    pub candle_f32_median_us: f64,
    /// candle `QMatMul` with Q8_0 weights; `None` when `k` is not a multiple of Q8_0's block of
    /// 32 (candle cannot quantize it).
    pub candle_q8_0_median_us: Option<f64>,
}

/// The result of `qtier bench kernels`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelBenchReport {
    /// Layout version.
    pub schema_version: u32,
    /// Which qtier produced it and how it was run.
    pub provenance: crate::Provenance,
    /// The machine it ran on.
    pub hardware: crate::hardware::Hardware,
    /// The int8 kernel variant qtier chose (or was forced to with `QTIER_KERNEL`).
    pub kernel: String,
    /// Threads used.
    pub threads: usize,
    /// Measured limits.
    pub limits: MachineLimits,
    /// The clock's own cost in each sample, ns, subtracted from every statistic of the report
    /// ([`crate::timing::clock_overhead_ns`]; absent, and so 0, in schema version 1 reports).
    #[serde(default)]
    pub clock_overhead_ns: f64,
    /// One row per shape.
    pub rows: Vec<KernelRow>,
}

/// Deterministic values in [-1, 1) (SplitMix64), so runs are comparable.
fn pseudo_random(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Runs the kernel benchmark.
pub fn run_kernel_bench(
    config: &KernelBenchConfig,
    provenance: crate::Provenance,
    hardware: crate::hardware::Hardware,
    progress: &dyn Fn(&str),
) -> Result<KernelBenchReport> {
    let kernel = qtier_kernels::selected_kernel()?;
    let peak_kind = if KernelKind::Avx512Vnni.is_supported() { KernelKind::Avx512Vnni } else { kernel };
    progress("measuring this machine's int8 peak");
    let peak = limits::int8_peak(peak_kind, config.threads)?;
    let clock_ns = crate::timing::clock_overhead_ns();
    let mut read_gbps_by_bytes = BTreeMap::new();
    let mut rows = Vec::with_capacity(config.shapes.len());
    for shape in &config.shapes {
        let weight_bytes = shape.n * shape.k;
        let bandwidth = match read_gbps_by_bytes.get(&weight_bytes.to_string()) {
            Some(gbps) => *gbps,
            None => {
                progress(&format!("measuring read bandwidth at {weight_bytes} bytes"));
                let measured =
                    limits::read_bandwidth(weight_bytes.max(4096 * config.threads), config.threads)?.gb_per_s;
                read_gbps_by_bytes.insert(weight_bytes.to_string(), measured);
                measured
            }
        };
        progress(&format!("timing {shape}"));
        rows.push(time_shape(config, *shape, peak.gops, bandwidth, clock_ns)?);
    }
    Ok(KernelBenchReport {
        schema_version: KERNEL_REPORT_SCHEMA_VERSION,
        provenance,
        hardware,
        kernel: kernel.name().to_string(),
        threads: config.threads,
        limits: MachineLimits { int8_gops: peak.gops, int8_kernel: peak.kernel.name().to_string(), read_gbps_by_bytes },
        clock_overhead_ns: clock_ns,
        rows,
    })
}

/// `ns` less the clock's cost `clock_ns`, in µs (never below zero).
fn call_us(ns: f64, clock_ns: f64) -> f64 {
    (ns - clock_ns).max(0.0) / 1e3
}

fn time_shape(
    config: &KernelBenchConfig,
    shape: LinearShape,
    peak_gops: f64,
    read_gbps: f64,
    clock_ns: f64,
) -> Result<KernelRow> {
    let LinearShape { m, k, n } = shape;
    let weights: Vec<i8> = pseudo_random(n * k, 1).iter().map(|v| (v * 127.0).round() as i8).collect();
    let scales = vec![1.0 / 127.0; n];
    let bias = pseudo_random(n, 2);
    let x = pseudo_random(m * k, 3);
    let layer = QuantizedLinear::new(&weights, &scales, Some(&bias), n, k)?.with_threads(config.threads)?;
    let mut out = vec![0.0f32; m * n];
    let timings = measure(&config.timing, || layer.forward_into(&x, m, &mut out, None))?;
    let sample = Sample::new(timings.samples_ns.clone())?;
    let median_us = call_us(sample.median(), clock_ns);
    let compute_us = shape.operations() / (peak_gops * 1e9) * 1e6;
    let memory_us = (n * k) as f64 / (read_gbps * 1e9) * 1e6;
    let limit_us = compute_us.max(memory_us);
    let peers = if config.peers { Some(time_peers(config, shape, &weights, &x, clock_ns)?) } else { None };
    Ok(KernelRow {
        shape: shape.to_string(),
        m,
        k,
        n,
        median_us,
        p10_us: call_us(sample.percentile(10.0)?, clock_ns),
        p90_us: call_us(sample.percentile(90.0)?, clock_ns),
        gops: shape.operations() / (median_us * 1e3),
        limit_us,
        bound: if compute_us >= memory_us { "compute" } else { "memory" }.to_string(),
        percent_of_limit: 100.0 * limit_us / median_us,
        peers,
        samples_ns: timings.samples_ns,
    })
}

fn peer_error(peer: &'static str) -> impl Fn(candle_core::Error) -> BenchError {
    move |e| BenchError::Peer { peer, problem: e.to_string() }
}

fn time_peers(
    config: &KernelBenchConfig,
    shape: LinearShape,
    weights: &[i8],
    x: &[f32],
    clock_ns: f64,
) -> Result<PeerTimings> {
    let LinearShape { m, k, n } = shape;
    let device = Device::Cpu;
    let float_weights: Vec<f32> = weights.iter().map(|w| f32::from(*w) / 127.0).collect();
    let f32_error = peer_error("candle f32 matmul");
    let input = Tensor::from_slice(x, (m, k), &device).map_err(&f32_error)?;
    let weight = Tensor::from_vec(float_weights, (n, k), &device).map_err(&f32_error)?;
    let weight_t = weight.t().and_then(|w| w.contiguous()).map_err(&f32_error)?;
    let peer_timing =
        TimingConfig { min_duration: config.timing.min_duration.min(Duration::from_secs(1)), ..config.timing };
    let f32_timings = measure(&peer_timing, || input.matmul(&weight_t).map(drop)).map_err(&f32_error)?;

    let candle_q8_0_median_us = if k % GgmlDType::Q8_0.block_size() == 0 {
        let q8_error = peer_error("candle Q8_0 QMatMul");
        let quantized = QTensor::quantize(&weight, GgmlDType::Q8_0).map_err(&q8_error)?;
        let matmul = QMatMul::from_qtensor(quantized).map_err(&q8_error)?;
        let q8_timings = measure(&peer_timing, || matmul.forward(&input).map(drop)).map_err(&q8_error)?;
        Some(call_us(Sample::new(q8_timings.samples_ns)?.median(), clock_ns))
    } else {
        None
    };
    let candle_f32_median_us = call_us(Sample::new(f32_timings.samples_ns)?.median(), clock_ns);
    Ok(PeerTimings { candle_f32_median_us, candle_q8_0_median_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_reject_nonsense() {
        let shapes = LinearShape::parse_list(REFERENCE_SHAPES).unwrap();
        let expected: Vec<LinearShape> =
            qtier_kernels::REFERENCE_SHAPES.iter().map(|&(m, k, n)| LinearShape { m, k, n }).collect();
        assert_eq!(shapes, expected, "the CLI default lists the kernels' reference shapes");
        assert_eq!(shapes[1], LinearShape { m: 32, k: 384, n: 1536 });
        assert_eq!(shapes[1].to_string(), "32x384x1536");
        for bad in ["1x2", "1x0x3", "axbxc", "1x2x3x4"] {
            assert!(LinearShape::parse(bad).is_err(), "{bad}");
        }
    }
}

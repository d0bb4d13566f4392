//! Projection of a measured latency onto hardware that was not measured.
//!
//! A measured report gives one point: a forward of known FLOPs and bytes took `t` on a host whose
//! peaks follow from its CPU flags and core count. Its **efficiency** is the roofline time on that
//! host divided by `t` (see [`crate::workload`]). A target of the same device class (CPU with
//! VNNI, CPU with AVX2 only, GPU) is assumed to reach the same efficiency, so its projected median
//! is its own roofline time divided by that efficiency, and its projected tail keeps the
//! calibrating report's tail-to-median ratio. Every projection carries the range
//! [`PROJECTION_RANGE_LOW`]..[`PROJECTION_RANGE_HIGH`] times its central value.
//!
//! What the report does not record, named constants supply: the clock of the measuring host
//! ([`REPORT_CLOCK_GHZ`]) and its read bandwidth per core ([`REPORT_READ_GBPS_PER_CORE`]).
//!
//! Thread scaling is never extrapolated: a target with more cores than the calibrating run used
//! runs several replicas of the calibrated size (their throughput adds up) rather than one
//! faster replica; a target with fewer cores gets a replica on all of them, slower in proportion.

use qtier_bench::hardware::Hardware;
use qtier_bench::model_bench::{ModelBenchReport, ModelWorkload};
use serde::{Deserialize, Serialize};

use crate::catalog::{CpuProfile, InstanceProfile, VnniSupport};
use crate::error::{ProfilesError, Result};
use crate::gpus::{BUILTIN_GPUS_NAME, GpuTable};
use crate::workload::{EncoderShape, Op, Peaks, RequestShape, encoder_ops, roofline_seconds};

/// Clock assumed for a measuring host, GHz: reports do not record the frequency. 3.0 GHz is the
/// sustained all-core AVX-512 clock typical of the server parts qtier runs on, and it is what
/// the development host's measured 760 GOP/s per core implies (760 / 256 ops per cycle = 2.97).
pub const REPORT_CLOCK_GHZ: f64 = 3.0;
/// Main-memory read bandwidth per core of a measuring host, GB/s: the development host's measured
/// 14 GB/s per core (28 GB/s for 2), recorded in ARCHITECTURE.md; reports do not record it.
pub const REPORT_READ_GBPS_PER_CORE: f64 = 14.0;
/// Low end of a projection's range, as a factor of its central value. A judgement, not a
/// measurement: the roofline's peaks, clocks and bandwidths are nominal, and efficiency moves
/// with cache sizes and microarchitecture between hosts of one class.
pub const PROJECTION_RANGE_LOW: f64 = 0.7;
/// High end of a projection's range (the value a projected SLA check uses). A judgement, as
/// [`PROJECTION_RANGE_LOW`]; wider upward because unmeasured effects (noisy neighbours, lower
/// AVX-512 clocks, smaller caches) mostly slow a target down.
pub const PROJECTION_RANGE_HIGH: f64 = 1.5;

/// int8 operations per cycle and core of AVX-512 VNNI: two `vpdpbusd` per cycle (ports 0 and 5)
/// x 64 multiply-adds x 2 operations.
const AVX512_VNNI_OPS_PER_CYCLE: f64 = 256.0;
/// AVX-VNNI (256-bit `vpdpbusd`): two per cycle x 32 multiply-adds x 2.
const AVX_VNNI_OPS_PER_CYCLE: f64 = 128.0;
/// AVX2 without VNNI: `vpmaddubsw` + `vpmaddwd` + `vpaddd` per 32 multiply-adds, the two
/// multiplies sharing two ports: one group per cycle, 32 x 2 operations.
const AVX2_INT8_OPS_PER_CYCLE: f64 = 64.0;
/// Portable scalar int8 loop: a few multiply-adds per cycle (judgement; qtier never ships it as
/// a production path).
const SCALAR_INT8_OPS_PER_CYCLE: f64 = 8.0;
/// f32 operations per cycle and core with AVX-512: two 512-bit FMA units x 16 lanes x 2.
const AVX512_F32_OPS_PER_CYCLE: f64 = 64.0;
/// f32 operations per cycle and core with AVX2: two 256-bit FMA units x 8 lanes x 2.
const AVX2_F32_OPS_PER_CYCLE: f64 = 32.0;

/// The int8 instruction set qtier's kernels use on a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Int8Isa {
    /// No SIMD int8 kernel.
    Scalar,
    /// AVX2 (`vpmaddubsw`).
    Avx2,
    /// 256-bit VNNI.
    AvxVnni,
    /// 512-bit VNNI.
    Avx512Vnni,
}

impl Int8Isa {
    /// The ISA qtier's kernel selection picks for CPU `flags` (as /proc/cpuinfo names them).
    pub fn from_flags(flags: &[String]) -> Self {
        let has = |flag: &str| flags.iter().any(|f| f == flag);
        if has("avx512_vnni") && has("avx512f") && has("avx512bw") {
            Int8Isa::Avx512Vnni
        } else if has("avx_vnni") && has("avx2") {
            Int8Isa::AvxVnni
        } else if has("avx2") {
            Int8Isa::Avx2
        } else {
            Int8Isa::Scalar
        }
    }

    /// The ISA of a qtier kernel name (`avx512vnni`), if it is one.
    pub fn from_kernel_name(name: &str) -> Option<Self> {
        match name {
            "avx512vnni" => Some(Int8Isa::Avx512Vnni),
            "avxvnni" => Some(Int8Isa::AvxVnni),
            "avx2" => Some(Int8Isa::Avx2),
            "scalar" => Some(Int8Isa::Scalar),
            _ => None,
        }
    }

    /// The name of qtier's kernel for this ISA.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Int8Isa::Avx512Vnni => "avx512vnni",
            Int8Isa::AvxVnni => "avxvnni",
            Int8Isa::Avx2 => "avx2",
            Int8Isa::Scalar => "scalar",
        }
    }

    /// int8 operations per cycle and core.
    pub fn int8_ops_per_cycle(self) -> f64 {
        match self {
            Int8Isa::Avx512Vnni => AVX512_VNNI_OPS_PER_CYCLE,
            Int8Isa::AvxVnni => AVX_VNNI_OPS_PER_CYCLE,
            Int8Isa::Avx2 => AVX2_INT8_OPS_PER_CYCLE,
            Int8Isa::Scalar => SCALAR_INT8_OPS_PER_CYCLE,
        }
    }

    /// The class whose calibrations apply.
    pub fn device_class(self) -> DeviceClass {
        match self {
            Int8Isa::Avx512Vnni | Int8Isa::AvxVnni => DeviceClass::CpuVnni,
            Int8Isa::Avx2 => DeviceClass::CpuAvx2,
            Int8Isa::Scalar => DeviceClass::CpuScalar,
        }
    }
}

/// Hardware whose efficiency is assumed alike: a calibration applies within its class only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceClass {
    /// x86 CPUs with VNNI (qtier's `avx512vnni` and `avxvnni` kernels).
    CpuVnni,
    /// x86 CPUs with AVX2 and no VNNI (qtier's `avx2` kernel).
    CpuAvx2,
    /// CPUs on the scalar kernel.
    CpuScalar,
    /// NVIDIA GPUs.
    Gpu,
}

impl DeviceClass {
    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            DeviceClass::CpuVnni => "CPU VNNI",
            DeviceClass::CpuAvx2 => "CPU AVX2",
            DeviceClass::CpuScalar => "CPU scalar",
            DeviceClass::Gpu => "GPU",
        }
    }
}

/// Peaks of `cores` cores of a CPU with `isa`, f32 width per `avx512`, at `ghz`, with `gbps` of
/// read bandwidth.
fn cpu_peaks(isa: Int8Isa, avx512: bool, ghz: f64, cores: f64, gbps: f64) -> Peaks {
    let f32_per_cycle = if avx512 { AVX512_F32_OPS_PER_CYCLE } else { AVX2_F32_OPS_PER_CYCLE };
    Peaks {
        int8_ops: isa.int8_ops_per_cycle() * ghz * 1e9 * cores,
        float_ops: f32_per_cycle * ghz * 1e9 * cores,
        bytes: gbps * 1e9,
    }
}

/// The device a report was measured on, as far as its hardware fields tell: a CPU, or the GPU
/// of a `--device cuda` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuringHost {
    /// The class its efficiency applies to.
    pub class: DeviceClass,
    /// CPU model name, or the GPU's name as the driver gives it.
    #[serde(alias = "cpu_model")]
    pub model: String,
    /// The int8 ISA the CPU kernels used (CPU runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isa: Option<Int8Isa>,
    /// Whether f32 work ran with AVX-512 (false on a GPU).
    pub avx512: bool,
    /// Cores the run could use: its threads, at most the physical cores; 1 on a GPU (one GPU).
    pub cores: f64,
    /// The roofline peaks of those cores, or of the GPU.
    pub peaks: Peaks,
}

impl MeasuringHost {
    /// The CPU of a run with `threads` threads on `hardware`. The kernel name wins over the
    /// flags when it is a known one (it is what ran, e.g. forced by `QTIER_KERNEL`).
    pub fn of(hardware: &Hardware, threads: usize) -> Self {
        let isa =
            Int8Isa::from_kernel_name(&hardware.kernel).unwrap_or_else(|| Int8Isa::from_flags(&hardware.cpu_flags));
        let avx512 = hardware.cpu_flags.iter().any(|f| f == "avx512f");
        let physical = hardware.physical_cores.unwrap_or(hardware.logical_cores).max(1);
        let cores = threads.clamp(1, physical) as f64;
        let peaks = cpu_peaks(isa, avx512, REPORT_CLOCK_GHZ, cores, REPORT_READ_GBPS_PER_CORE * cores);
        Self { class: isa.device_class(), model: hardware.cpu_model.clone(), isa: Some(isa), avx512, cores, peaks }
    }

    /// The device `report` ran on: its GPU when it records one (a `--device cuda` run), with the
    /// peaks of the GPU table's entry for that name; else its CPU ([`MeasuringHost::of`]).
    /// Fails for a GPU the table does not know, naming it.
    pub fn of_report(report: &ModelBenchReport, label: &str) -> Result<Self> {
        let Some(gpu) = &report.hardware.gpu else {
            return Ok(Self::of(&report.hardware, report.threads));
        };
        let table = GpuTable::builtin()?;
        let reference = table.find(&gpu.name).ok_or_else(|| ProfilesError::Report {
            report: label.into(),
            problem: format!(
                "ran on GPU `{}`, which {} does not list: its peaks are needed to turn the measured latency into an efficiency",
                gpu.name, BUILTIN_GPUS_NAME
            ),
        })?;
        Ok(Self {
            class: DeviceClass::Gpu,
            model: gpu.name.clone(),
            isa: None,
            avx512: false,
            cores: 1.0,
            peaks: reference.peaks(),
        })
    }

    /// As a projection target (one replica on the same cores, or on the GPU).
    pub fn as_target(&self) -> ComputeTarget {
        let description = match self.isa {
            Some(isa) => format!("{} ({}, {} cores)", self.model, isa.kernel_name(), self.cores),
            None => format!("{} (one GPU)", self.model),
        };
        ComputeTarget {
            class: self.class,
            description,
            peaks: self.peaks,
            cores_per_replica: Some(self.cores),
            replicas_per_instance: 1,
        }
    }
}

/// Latencies measured for one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredLatency {
    /// The workload.
    pub shape: RequestShape,
    /// Median, ms.
    pub p50_ms: f64,
    /// The 99th percentile used for SLA checks, ms.
    pub p99_ms: f64,
    /// How `p99_ms` was obtained.
    pub p99_basis: String,
    /// Samples behind it.
    pub samples: usize,
}

impl MeasuredLatency {
    /// The p99 of a workload: LoadGen's early-stopping upper bound when the report's tail
    /// percentile is 99 or above (a bound on a higher percentile also bounds the p99), else the
    /// p99 point estimate of the samples, with a basis that says so.
    pub fn of(workload: &ModelWorkload) -> Self {
        let stats = &workload.stats;
        let (p99_ns, p99_basis) = match stats.tail_upper_bound {
            Some(bound) if stats.tail_percentile >= 99.0 => (
                bound.max(stats.p99),
                format!(
                    "99% upper bound of p{} (LoadGen early stopping, {} samples)",
                    stats.tail_percentile, stats.count
                ),
            ),
            _ => (
                stats.p99,
                format!(
                    "p99 point estimate of {} samples (the report's tail is p{}; no upper bound for p99)",
                    stats.count, stats.tail_percentile
                ),
            ),
        };
        Self {
            shape: RequestShape { batch: workload.batch, seq: workload.seq },
            p50_ms: stats.p50 / 1e6,
            p99_ms: p99_ns / 1e6,
            p99_basis,
            samples: stats.count,
        }
    }
}

/// The workload of `report` closest to `request`: the same shape, else the same batch with the
/// nearest token count, else the nearest token count.
pub fn closest_workload(report: &ModelBenchReport, request: RequestShape) -> Option<&ModelWorkload> {
    let distance = |w: &ModelWorkload| {
        let tokens = (w.batch * w.seq).max(1) as f64;
        let ratio = (tokens / request.tokens().max(1) as f64).ln().abs();
        (w.batch != request.batch, w.seq != request.seq, ratio)
    };
    report.workloads.iter().min_by(|a, b| distance(a).partial_cmp(&distance(b)).unwrap_or(std::cmp::Ordering::Equal))
}

/// Efficiency of one measured run against its host's roofline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The report it comes from.
    pub report: String,
    /// The class it applies to.
    pub class: DeviceClass,
    /// The measuring host.
    pub host: MeasuringHost,
    /// Whether the model ran int8.
    pub int8: bool,
    /// The measurement used.
    pub measured: MeasuredLatency,
    /// Roofline time of that workload on the host, ms.
    pub roofline_ms: f64,
    /// `roofline_ms / measured p50`.
    pub efficiency: f64,
    /// `measured p99 / measured p50`, applied to projected medians.
    pub tail_ratio: f64,
}

/// Calibrates on the workload of `report` closest to `request` (see [`closest_workload`]).
pub fn calibrate(
    report: &ModelBenchReport,
    label: &str,
    shape: &EncoderShape,
    request: RequestShape,
) -> Result<Calibration> {
    let workload = closest_workload(report, request)
        .ok_or_else(|| ProfilesError::Report { report: label.into(), problem: "has no workloads".into() })?;
    let host = MeasuringHost::of_report(report, label)?;
    let measured = MeasuredLatency::of(workload);
    if !(measured.p50_ms > 0.0 && measured.p50_ms.is_finite()) {
        return Err(ProfilesError::Report {
            report: label.into(),
            problem: format!("median {} ms is not positive", measured.p50_ms),
        });
    }
    let ops = encoder_ops(shape, measured.shape, report.int8);
    let roofline_ms = roofline_seconds(&ops, &host.peaks) * 1e3;
    Ok(Calibration {
        report: label.into(),
        class: host.class,
        int8: report.int8,
        efficiency: roofline_ms / measured.p50_ms,
        tail_ratio: measured.p99_ms / measured.p50_ms,
        roofline_ms,
        measured,
        host,
    })
}

/// A device a model replica could run on, with its peaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputeTarget {
    /// The class whose calibrations apply.
    pub class: DeviceClass,
    /// What it is, for people.
    pub description: String,
    /// Peaks available to one replica.
    pub peaks: Peaks,
    /// CPU cores per replica (None on GPUs).
    pub cores_per_replica: Option<f64>,
    /// Replicas one instance runs.
    pub replicas_per_instance: u32,
}

/// The ISAs qtier may run on `cpu`: two when AWS may allocate either generation.
pub fn possible_isas(cpu: &CpuProfile) -> Vec<Int8Isa> {
    let vnni = if cpu.avx512 { Int8Isa::Avx512Vnni } else { Int8Isa::AvxVnni };
    match cpu.vnni {
        VnniSupport::Yes => vec![vnni],
        VnniSupport::No => vec![Int8Isa::Avx2],
        VnniSupport::Varies => vec![Int8Isa::Avx2, vnni],
    }
}

/// The CPU of `instance` with `isa`, split into replicas of `calibrated_cores` cores (all of the
/// instance's physical cores when it has fewer).
pub fn cpu_target(instance: &InstanceProfile, isa: Int8Isa, calibrated_cores: f64) -> ComputeTarget {
    let cpu = &instance.cpu;
    let total = f64::from(instance.physical_cores());
    let cores = calibrated_cores.min(total).max(1.0);
    let replicas = ((total / cores).floor() as u32).max(1);
    let gbps = cpu.memory_bandwidth_gbps.get() * cores / total;
    ComputeTarget {
        class: isa.device_class(),
        description: format!(
            "{} ({}, {} of {} cores per replica, {} replica{})",
            cpu.model,
            isa.kernel_name(),
            cores,
            total,
            replicas,
            if replicas == 1 { "" } else { "s" }
        ),
        peaks: cpu_peaks(isa, cpu.avx512, cpu.all_core_turbo_ghz.get(), cores, gbps),
        cores_per_replica: Some(cores),
        replicas_per_instance: replicas,
    }
}

/// The GPUs of `instance`, one replica per GPU (int8 tensor peak for Linear layers, fp16 tensor
/// peak for attention).
pub fn gpu_target(instance: &InstanceProfile) -> Option<ComputeTarget> {
    let gpu = instance.gpu.as_ref()?;
    Some(ComputeTarget {
        class: DeviceClass::Gpu,
        description: format!(
            "{} (sm_{}, one replica per GPU, {}){}",
            gpu.model,
            gpu.compute_capability.as_str().replace('.', ""),
            gpu.count,
            if gpu.peak_uncertain { "; peaks uncertain" } else { "" }
        ),
        peaks: Peaks::of_gpu(gpu.int8_tops.get(), gpu.fp16_tflops.get(), gpu.memory_bandwidth_gbps.get()),
        cores_per_replica: None,
        replicas_per_instance: gpu.count,
    })
}

/// A projected latency on a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// The calibrating report.
    pub calibration: String,
    /// The target.
    pub target: ComputeTarget,
    /// Roofline time on the target, ms.
    pub roofline_ms: f64,
    /// Efficiency applied.
    pub efficiency: f64,
    /// Projected median, ms (central value).
    pub p50_ms: f64,
    /// Projected p99, ms (central value).
    pub p99_ms: f64,
    /// Range factors applied to the central values.
    pub range: [f64; 2],
}

impl Projection {
    /// `value` scaled to the low and high ends of the range.
    pub fn range_of(&self, value: f64) -> [f64; 2] {
        [value * self.range[0], value * self.range[1]]
    }
}

/// Projects `ops` (one forward at the request shape) onto `target` with `calibration`'s
/// efficiency and tail ratio.
pub fn project(calibration: &Calibration, ops: &[Op], target: &ComputeTarget) -> Projection {
    let roofline_ms = roofline_seconds(ops, &target.peaks) * 1e3;
    let p50_ms = roofline_ms / calibration.efficiency;
    Projection {
        calibration: calibration.report.clone(),
        target: target.clone(),
        roofline_ms,
        efficiency: calibration.efficiency,
        p50_ms,
        p99_ms: p50_ms * calibration.tail_ratio,
        range: [PROJECTION_RANGE_LOW, PROJECTION_RANGE_HIGH],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_kernel_names_decide_the_isa() {
        let flags = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Int8Isa::from_flags(&flags(&["avx2", "avx512f", "avx512bw", "avx512_vnni"])), Int8Isa::Avx512Vnni);
        assert_eq!(Int8Isa::from_flags(&flags(&["avx2", "avx512f", "avx512bw"])), Int8Isa::Avx2);
        assert_eq!(Int8Isa::from_flags(&flags(&["avx2", "avx_vnni"])), Int8Isa::AvxVnni);
        assert_eq!(Int8Isa::from_flags(&flags(&[])), Int8Isa::Scalar);
        assert_eq!(Int8Isa::from_kernel_name("avx2"), Some(Int8Isa::Avx2));
        assert_eq!(Int8Isa::from_kernel_name("unavailable: x"), None);
        assert_eq!(Int8Isa::Avx512Vnni.device_class(), DeviceClass::CpuVnni);
        assert_eq!(Int8Isa::AvxVnni.device_class(), DeviceClass::CpuVnni);
    }

    #[test]
    fn the_vnni_peak_per_core_matches_the_measured_development_host() {
        // ARCHITECTURE.md: about 760 GOP/s per core measured with two vpdpbusd per cycle.
        let per_core = Int8Isa::Avx512Vnni.int8_ops_per_cycle() * REPORT_CLOCK_GHZ;
        assert!((per_core - 760.0).abs() / 760.0 < 0.02, "{per_core}");
    }

    #[test]
    fn c5_may_run_either_kernel() {
        let catalog = crate::catalog::InstanceCatalog::builtin().unwrap();
        let c5 = catalog.get("c5.large").unwrap();
        assert_eq!(possible_isas(&c5.cpu), [Int8Isa::Avx2, Int8Isa::Avx512Vnni]);
        let g5 = catalog.get("g5.xlarge").unwrap();
        assert_eq!(possible_isas(&g5.cpu), [Int8Isa::Avx2]);
    }

    #[test]
    fn replicas_split_cores_without_extrapolating_thread_scaling() {
        let catalog = crate::catalog::InstanceCatalog::builtin().unwrap();
        let c6i_2x = catalog.get("c6i.2xlarge").unwrap(); // 8 vCPU = 4 cores
        let target = cpu_target(c6i_2x, Int8Isa::Avx512Vnni, 2.0);
        assert_eq!((target.cores_per_replica, target.replicas_per_instance), (Some(2.0), 2));
        let c6i_large = catalog.get("c6i.large").unwrap(); // 1 core
        let target = cpu_target(c6i_large, Int8Isa::Avx512Vnni, 2.0);
        assert_eq!((target.cores_per_replica, target.replicas_per_instance), (Some(1.0), 1));
        let expected = 256.0 * 3.5e9;
        assert!((target.peaks.int8_ops - expected).abs() < 1.0);
        let p4d = gpu_target(catalog.get("p4d.24xlarge").unwrap()).unwrap();
        assert_eq!(p4d.replicas_per_instance, 8);
    }
}

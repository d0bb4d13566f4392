//! The recommendation engine: for each tier and each catalog instance, the latency at the request
//! shape (measured, or projected), whether it meets the tier, how many instances the required
//! throughput needs, what that costs, and the cheapest instance that meets the tier (ties: the
//! lower headline latency), with a reason for every other candidate.
//!
//! Pure functions of their inputs: reports, catalog, tiers and options in; a [`Recommendation`]
//! out. Rules, in the order they apply:
//!
//! - A report whose hardware names an EC2 instance type (found by `--instance-type` or the
//!   instance metadata service) that the catalog lists is a **measured** candidate for that type,
//!   when it has a workload of exactly the request shape. A report without an instance type (a
//!   laptop, this development host) is never taken for an EC2 type: it only calibrates
//!   projections.
//! - Every CPU report calibrates the efficiency of its device class ([`crate::projection`]).
//!   An instance without a measured report is **projected** with each calibration of its class;
//!   the slowest projection is kept. A projection meets a tier only with `--allow-projected`, and
//!   its SLA check uses the high end of its range.
//! - Measured beats projected for the same type.
//! - A replica's throughput is the measured maximum (`qtier bench model --find-max-qps`) when
//!   the report has one found under an SLA at least as strict as the tier's headline p99 limit;
//!   it already includes queueing, so instances are sized to it directly. Otherwise it is
//!   `batch / p50` of the request shape, estimated from single-stream latency, and instances are
//!   sized so each replica runs at [`TARGET_UTILIZATION`] of it.

use qtier_bench::model_bench::ModelBenchReport;
use serde::{Deserialize, Serialize};

use crate::catalog::{InstanceCatalog, InstanceProfile, Service};
use crate::decoder::{DecoderLatency, project_decoder};
use crate::error::{ProfilesError, Result};
use crate::gpus::BUILTIN_GPUS_NAME;
use crate::projection::{
    Calibration, ComputeTarget, DeviceClass, Int8Isa, MeasuredLatency, MeasuringHost, Projection, calibrate,
    cpu_target, gpu_target, possible_isas, project,
};
use crate::tiers::{LatencyMetric, TierSla, Tiers};
use crate::workload::{EncoderShape, RequestShape, encoder_ops};

/// Version of [`Recommendation`]'s layout.
pub const RECOMMENDATION_SCHEMA_VERSION: u32 = 1;
/// Fraction of a replica's throughput capacity it is sized to run at. The capacity estimate is
/// single-stream (no queueing); queueing delay grows without bound as utilization nears 1
/// (M/D/1: mean wait rho / (2 (1 - rho)) service times, 1.2 at 0.7, 4.5 at 0.9), so the tail
/// measured without queueing holds only with headroom. A judgement, common in capacity planning.
pub const TARGET_UTILIZATION: f64 = 0.7;
/// Costs closer than this, USD per hour, are a tie (decided by latency): float noise only.
pub const COST_TIE_USD_PER_HOUR: f64 = 1e-9;
/// Instance type sources in a report that identify an EC2 instance.
const TRUSTED_INSTANCE_SOURCES: [&str; 2] = ["flag", "imds"];

/// A bench report and the name it is known by (its file name).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledReport {
    /// The report's name in output and errors.
    pub label: String,
    /// The report.
    pub report: ModelBenchReport,
}

/// What to recommend for, beyond reports, catalog and tiers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecommendOptions {
    /// Sequences per request (default 1).
    pub batch: Option<usize>,
    /// Tokens per sequence (default: the one sequence length the reports measured).
    pub seq: Option<usize>,
    /// Accept spot capacity for tiers that allow it with `--allow-spot`.
    pub allow_spot: bool,
    /// Let projected figures meet a tier.
    pub allow_projected: bool,
    /// The model's dimensions, for projections (None: nothing can be projected).
    pub model_shape: Option<EncoderShape>,
    /// Where `model_shape` was read.
    pub model_shape_source: Option<String>,
}

/// Where a candidate's latency comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Evidence {
    /// Measured on this instance type.
    Measured {
        /// The report.
        report: String,
        /// The latencies.
        latency: MeasuredLatency,
        /// Measured maximum sustainable throughput of one replica, when the report has one.
        max_qps: Option<MeasuredMaxQps>,
        /// TTFT and TPOT, for a decoder (`latency` is then one whole request).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decoder: Option<DecoderLatency>,
    },
    /// Projected from a calibration (the slowest over the classes and calibrations that apply).
    Projected {
        /// The projection.
        projection: Projection,
        /// Caveats (which ISA was assumed, why).
        notes: Vec<String>,
        /// Projected TTFT and TPOT, for a decoder (`projection` is then one whole request).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decoder: Option<DecoderLatency>,
    },
    /// Neither measured nor projectable.
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl Evidence {
    /// `measured`, `projected` or `none`.
    pub fn basis(&self) -> &'static str {
        match self {
            Evidence::Measured { .. } => "measured",
            Evidence::Projected { .. } => "projected",
            Evidence::Unavailable { .. } => "none",
        }
    }
}

/// A measured maximum throughput and the SLA it was found under.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeasuredMaxQps {
    /// Requests per second.
    pub qps: f64,
    /// The percentile the search bounded (e.g. 99).
    pub tail_percentile: f64,
    /// The bound, ms.
    pub sla_ms: f64,
}

/// One metric of a candidate against one limit of a tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricCheck {
    /// The metric.
    pub metric: LatencyMetric,
    /// The tier's limit, ms.
    pub limit_ms: f64,
    /// Measured value or central projection, ms (None: not available).
    pub value_ms: Option<f64>,
    /// Projection range, ms (projected only).
    pub range_ms: Option<[f64; 2]>,
    /// The value compared with the limit: measured, or the high end of a projection's range.
    pub decision_ms: Option<f64>,
    /// How the value was obtained.
    pub basis: String,
    /// Whether `decision_ms <= limit_ms` (None: not available).
    pub meets: Option<bool>,
}

/// How capacity is bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purchase {
    /// On-demand.
    OnDemand,
    /// Spot, at the catalog's estimated discount.
    Spot,
}

/// The outcome of a candidate in a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The cheapest that meets the tier.
    Chosen,
    /// Meets the tier but costs more (or ties and is slower).
    Feasible,
    /// Does not meet the tier.
    Rejected,
}

/// One instance type evaluated for one tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The instance type.
    pub instance: String,
    /// EC2 or SageMaker.
    pub service: Service,
    /// `measured`, `projected` or `none`.
    pub basis: String,
    /// Each tier limit checked.
    pub checks: Vec<MetricCheck>,
    /// How it is bought for this tier.
    pub purchase: Purchase,
    /// Price of one instance as bought, USD per hour.
    pub price_usd_per_hour: f64,
    /// Requests per second one replica sustains (decision value), when known.
    pub replica_qps: Option<f64>,
    /// How `replica_qps` was obtained.
    pub qps_basis: String,
    /// Replicas one instance runs.
    pub replicas_per_instance: u32,
    /// Instances needed for the required throughput (1 when none is required).
    pub instances: Option<u64>,
    /// `instances x price`, USD per hour.
    pub cost_usd_per_hour: Option<f64>,
    /// USD per million requests at the required throughput (or at the sized utilization when
    /// none is required).
    pub usd_per_million: Option<f64>,
    /// The outcome.
    pub verdict: Verdict,
    /// Why it was not chosen (empty for the chosen one).
    pub reasons: Vec<String>,
}

impl Candidate {
    /// The headline check (the tier's first limit).
    pub fn headline(&self) -> &MetricCheck {
        &self.checks[0]
    }

    /// The worst `decision / limit` over the checks (None when a value is missing).
    pub fn worst_ratio(&self) -> Option<f64> {
        self.checks
            .iter()
            .map(|c| c.decision_ms.map(|d| d / c.limit_ms))
            .try_fold(0.0f64, |worst, r| r.map(|r| worst.max(r)))
    }
}

/// The outcome for one tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierRecommendation {
    /// The tier.
    pub tier: TierSla,
    /// Requests per second it must sustain, if given.
    pub required_qps: Option<f64>,
    /// Whether spot capacity may serve it in this run.
    pub spot_permitted: bool,
    /// The chosen instance type, if any meets the tier.
    pub chosen: Option<String>,
    /// When none meets it: the candidate closest to meeting it.
    pub closest_miss: Option<String>,
    /// One sentence.
    pub summary: String,
    /// Every instance of the catalog: chosen, then feasible by cost, then rejected (closest
    /// first).
    pub candidates: Vec<Candidate>,
}

impl TierRecommendation {
    /// The chosen candidate.
    pub fn chosen_candidate(&self) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.verdict == Verdict::Chosen)
    }
}

/// One input report as the recommendation used it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportUse {
    /// The report's name.
    pub report: String,
    /// Its instance type, when it names one.
    pub instance_type: Option<String>,
    /// How the report found it.
    pub instance_type_source: String,
    /// CPU model.
    pub cpu_model: String,
    /// The GPU it ran on (`--device cuda` reports), as the driver names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// The device class it calibrates.
    pub class: DeviceClass,
    /// Threads it ran on.
    pub threads: usize,
    /// Its workloads.
    pub workloads: Vec<RequestShape>,
    /// What it was used for.
    pub role: String,
}

impl ReportUse {
    /// What the report ran on, for people: the GPU for a GPU run, else the CPU.
    pub fn device(&self) -> &str {
        self.gpu.as_deref().unwrap_or(&self.cpu_model)
    }
}

/// Facts about the model the reports measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// The model paths the reports name.
    pub paths: Vec<String>,
    /// Whether it ran int8.
    pub int8: bool,
    /// Its dimensions, when known.
    pub shape: Option<EncoderShape>,
    /// Where they were read.
    pub shape_source: Option<String>,
}

/// The options in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedOptions {
    /// `--allow-spot`.
    pub allow_spot: bool,
    /// `--allow-projected`.
    pub allow_projected: bool,
    /// [`TARGET_UTILIZATION`].
    pub target_utilization: f64,
    /// The projection range factors.
    pub projection_range: [f64; 2],
}

/// The catalog used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogUse {
    /// Where it was read.
    pub source: String,
    /// Its region.
    pub region: String,
    /// Its note on the figures' provenance.
    pub note: String,
    /// Each instance's on-demand price source and date, `name: source (as_of)`.
    pub price_sources: Vec<String>,
}

/// The latency evidence of one instance type (the same in every tier).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceLatency {
    /// The instance type.
    pub instance: String,
    /// Its on-demand price, USD per hour.
    pub on_demand_usd_per_hour: f64,
    /// `measured`, `projected` or `none`.
    pub basis: String,
    /// Median at the request shape, ms (central value when projected).
    pub p50_ms: Option<f64>,
    /// p99 at the request shape, ms (central value when projected).
    pub p99_ms: Option<f64>,
    /// The p99's projection range, ms.
    pub p99_range_ms: Option<[f64; 2]>,
    /// Where the figures come from, in full.
    pub evidence: Evidence,
}

/// The result of `qtier recommend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Layout version.
    pub schema_version: u32,
    /// The model.
    pub model: ModelSummary,
    /// The request shape.
    pub request: RequestShape,
    /// Options.
    pub options: AppliedOptions,
    /// The catalog.
    pub catalog: CatalogUse,
    /// Where the tiers were read.
    pub tiers_source: String,
    /// The reports.
    pub reports: Vec<ReportUse>,
    /// The calibrations projections use.
    pub calibrations: Vec<Calibration>,
    /// Each catalog instance's latency evidence.
    pub latencies: Vec<InstanceLatency>,
    /// One entry per tier, in the tiers' order.
    pub tiers: Vec<TierRecommendation>,
    /// Caveats that apply to the whole recommendation.
    pub notes: Vec<String>,
}

fn report_error(report: &str, problem: impl Into<String>) -> ProfilesError {
    ProfilesError::Report { report: report.into(), problem: problem.into() }
}

/// The request shape: `batch` (default 1) x `seq` (default the only sequence length measured).
fn request_shape(reports: &[LabelledReport], options: &RecommendOptions) -> Result<RequestShape> {
    let batch = options.batch.unwrap_or(1);
    if batch == 0 {
        return Err(ProfilesError::Request { problem: "--batch must be at least 1".into() });
    }
    let seq = match options.seq {
        Some(0) => return Err(ProfilesError::Request { problem: "--seq must be at least 1".into() }),
        Some(seq) => seq,
        None => {
            let seqs: std::collections::BTreeSet<usize> =
                reports.iter().flat_map(|r| r.report.workloads.iter().map(|w| w.seq)).collect();
            match seqs.len() {
                1 => seqs.into_iter().next().unwrap_or_default(),
                _ => {
                    let list: Vec<String> = seqs.iter().map(ToString::to_string).collect();
                    return Err(ProfilesError::Request {
                        problem: format!(
                            "the reports measured sequence lengths {}; choose one with --seq",
                            list.join(", ")
                        ),
                    });
                }
            }
        }
    };
    Ok(RequestShape { batch, seq })
}

/// The instance type a report was measured on, when it names one it may be trusted for.
fn measured_instance_type(report: &ModelBenchReport) -> Option<&str> {
    let hardware = &report.hardware;
    let trusted = TRUSTED_INSTANCE_SOURCES.contains(&hardware.instance_type_source.as_str());
    (trusted && hardware.instance_type != "unknown" && !hardware.instance_type.is_empty())
        .then_some(hardware.instance_type.as_str())
}

/// Ratio of int8 peaks between a calibrating GPU and a target beyond which a projection notes that
/// the efficiency was carried across a large gap (a judgement: efficiency depends on how busy
/// the GPU's SMs are, which differs between a GPU 4x larger and the target).
const GPU_PEAK_RATIO_NOTE: f64 = 4.0;

/// The device class of a report: GPU when it records the GPU it ran on (`--device cuda`), else
/// its CPU's.
fn report_class(report: &ModelBenchReport) -> DeviceClass {
    if report.hardware.gpu.is_some() {
        DeviceClass::Gpu
    } else {
        MeasuringHost::of(&report.hardware, report.threads).class
    }
}

/// The evidence for `instance`: a measured report of it (the fastest at the request shape when
/// several), else the slowest projection over the ISAs AWS may allocate and the calibrations of
/// their class.
fn evidence_for(
    instance: &InstanceProfile,
    reports: &[LabelledReport],
    calibrations: &[Calibration],
    shape: Option<&EncoderShape>,
    request: RequestShape,
    int8: bool,
) -> Evidence {
    let name = instance.name.as_str();
    let measured = reports
        .iter()
        .filter(|r| measured_instance_type(&r.report) == Some(name))
        .filter_map(|r| {
            if let Some(decoder) = DecoderLatency::measured(&r.report) {
                return (request.batch == 1 && decoder.prompt_len == request.seq)
                    .then(|| (r, decoder.request(), Some(decoder)));
            }
            let workload = r.report.workloads.iter().find(|w| w.batch == request.batch && w.seq == request.seq)?;
            Some((r, MeasuredLatency::of(workload), None))
        })
        .min_by(|a, b| a.1.p99_ms.total_cmp(&b.1.p99_ms));
    if let Some((report, latency, decoder)) = measured {
        let max_qps = report
            .report
            .workloads
            .iter()
            .find(|w| w.batch == request.batch && w.seq == request.seq)
            .and_then(|w| w.max_qps.as_ref())
            .map(|m| MeasuredMaxQps { qps: m.max_qps, tail_percentile: m.tail_percentile, sla_ms: m.sla_ns / 1e6 });
        return Evidence::Measured { report: report.label.clone(), latency, max_qps, decoder };
    }
    if reports.iter().any(|r| r.report.decoder.is_some()) {
        return project_decoder_evidence(instance, reports);
    }
    let Some(shape) = shape else {
        return Evidence::Unavailable {
            reason: "no measured report of this type, and no model config.json to project from (--model-config)".into(),
        };
    };
    let ops = encoder_ops(shape, request, int8);
    let mut notes = Vec::new();
    let mut worst: Option<Projection> = None;
    let kinds: Vec<TargetKind> = match gpu_target(instance) {
        Some(target) => vec![TargetKind::Gpu(target)],
        None => possible_isas(&instance.cpu).into_iter().map(TargetKind::Cpu).collect(),
    };
    if kinds.len() > 1 {
        notes.push(format!(
            "{name} may be allocated different CPUs ({}); the slowest projection is used",
            instance.cpu.model
        ));
    }
    for kind in &kinds {
        let class = match kind {
            TargetKind::Gpu(target) => target.class,
            TargetKind::Cpu(isa) => isa.device_class(),
        };
        let usable: Vec<&Calibration> = calibrations.iter().filter(|c| c.class == class).collect();
        if usable.is_empty() {
            let why = match class {
                DeviceClass::Gpu => "no measured report from a GPU to calibrate GPU efficiency \
                                     (`qtier bench model --device cuda` on a GPU the GPU table lists)"
                    .to_string(),
                other => format!("no measured report from a {} host to calibrate its efficiency", other.name()),
            };
            let reason = match kind {
                TargetKind::Cpu(isa) if kinds.len() > 1 => format!(
                    "{why}: this type may be allocated either CPU ({}), and qtier runs its {} kernel on one of them",
                    instance.cpu.model,
                    isa.kernel_name()
                ),
                _ => why,
            };
            return Evidence::Unavailable { reason };
        }
        for calibration in usable {
            let target = match kind {
                TargetKind::Gpu(target) => target.clone(),
                TargetKind::Cpu(isa) => cpu_target(instance, *isa, calibration.host.cores),
            };
            let peak_ratio = calibration.host.peaks.int8_ops / target.peaks.int8_ops;
            if class == DeviceClass::Gpu && !(1.0 / GPU_PEAK_RATIO_NOTE..=GPU_PEAK_RATIO_NOTE).contains(&peak_ratio) {
                notes.push(format!(
                    "calibrated on {} ({peak_ratio:.1}x this GPU's int8 peak): efficiency carried across that gap is \
                     a rough guide (a request that is launch-bound on the faster GPU projects pessimistically)",
                    calibration.host.model
                ));
            }
            let projection = project(calibration, &ops, &target);
            if worst.as_ref().is_none_or(|w| projection.p99_ms > w.p99_ms) {
                worst = Some(projection);
            }
        }
    }
    match worst {
        Some(projection) => Evidence::Projected { projection, notes, decoder: None },
        None => Evidence::Unavailable { reason: "nothing to project from".into() },
    }
}

/// The slowest TPOT projection of `instance` from the decoder reports of each device class it
/// may run on ([`crate::decoder`]: TPOT from its memory bound at the catalog's bandwidth).
fn project_decoder_evidence(instance: &InstanceProfile, reports: &[LabelledReport]) -> Evidence {
    let kinds: Vec<TargetKind> = match gpu_target(instance) {
        Some(target) => vec![TargetKind::Gpu(target)],
        None => possible_isas(&instance.cpu).into_iter().map(TargetKind::Cpu).collect(),
    };
    let mut worst: Option<(Projection, DecoderLatency)> = None;
    for kind in &kinds {
        let class = match kind {
            TargetKind::Gpu(target) => target.class,
            TargetKind::Cpu(isa) => isa.device_class(),
        };
        for r in reports.iter().filter(|r| r.report.decoder.is_some() && report_class(&r.report) == class) {
            let host_cores = MeasuringHost::of(&r.report.hardware, r.report.threads).cores;
            let target = match kind {
                TargetKind::Gpu(target) => target.clone(),
                TargetKind::Cpu(isa) => cpu_target(instance, *isa, host_cores),
            };
            let Some(decoder) = project_decoder(&r.report, &target) else { continue };
            if worst.as_ref().is_some_and(|(_, w)| w.tpot_p99_ms >= decoder.tpot_p99_ms) {
                continue;
            }
            let request = decoder.request();
            let projection = Projection {
                calibration: r.label.clone(),
                target,
                roofline_ms: decoder.tpot_bound_ms,
                efficiency: decoder.tpot_bound_ms / decoder.tpot_p50_ms,
                p50_ms: request.p50_ms,
                p99_ms: request.p99_ms,
                range: [crate::projection::PROJECTION_RANGE_LOW, crate::projection::PROJECTION_RANGE_HIGH],
            };
            worst = Some((projection, decoder));
        }
    }
    match worst {
        Some((projection, decoder)) => Evidence::Projected { projection, notes: Vec::new(), decoder: Some(decoder) },
        None => Evidence::Unavailable {
            reason: "no measured decoder report of this type or of its device class to project from".into(),
        },
    }
}

/// What an instance's model replica runs on.
enum TargetKind {
    /// Its GPUs.
    Gpu(ComputeTarget),
    /// Its CPU, with one of the ISAs AWS may allocate.
    Cpu(Int8Isa),
}

/// What every evaluation of one recommendation shares.
struct EvaluationContext<'a> {
    catalog: &'a InstanceCatalog,
    options: &'a RecommendOptions,
    int8: bool,
    request: RequestShape,
}

/// `tier` with the limits a model of this kind is judged on: request latency (p50, p99) for an
/// encoder, TTFT and TPOT for a decoder. A tier naming no metric of the kind keeps all its limits
/// (none can be measured, so every candidate is rejected with the reason).
fn judged_limits(tier: &TierSla, decoder: bool) -> TierSla {
    let applicable: Vec<_> = tier.limit.iter().filter(|l| l.metric.is_decoder_metric() == decoder).copied().collect();
    if applicable.is_empty() { tier.clone() } else { TierSla { limit: applicable, ..tier.clone() } }
}

/// Evaluates `instance` with `evidence` for `tier`; the verdict is set later by [`choose`].
fn evaluate(
    context: &EvaluationContext<'_>,
    instance: &InstanceProfile,
    evidence: &Evidence,
    tier: &TierSla,
    required_qps: Option<f64>,
) -> Candidate {
    let EvaluationContext { catalog, options, int8, request } = *context;
    let mut reasons = Vec::new();
    if let Evidence::Unavailable { reason } = evidence {
        reasons.push(reason.clone());
    }
    let checks: Vec<MetricCheck> = tier
        .limit
        .iter()
        .map(|limit| {
            let limit_ms = limit.max_ms.get();
            let (value_ms, range_ms, decision_ms, basis) = match (evidence, limit.metric) {
                (
                    Evidence::Measured { decoder: Some(decoder), .. },
                    metric @ (LatencyMetric::TtftP99 | LatencyMetric::TpotP99),
                ) => {
                    let value = decoder.value(metric);
                    (value, None, value, decoder.basis.clone())
                }
                (
                    Evidence::Projected { decoder: Some(decoder), projection, .. },
                    metric @ (LatencyMetric::TtftP99 | LatencyMetric::TpotP99),
                ) => {
                    let range = decoder.value(metric).map(|v| projection.range_of(v));
                    (
                        decoder.value(metric),
                        range,
                        range.map(|r| r[1]),
                        format!("{}; high end of the range", decoder.basis),
                    )
                }
                (Evidence::Measured { latency, .. }, LatencyMetric::P50) => (
                    Some(latency.p50_ms),
                    None,
                    Some(latency.p50_ms),
                    format!("measured median of {} samples", latency.samples),
                ),
                (Evidence::Measured { latency, .. }, LatencyMetric::P99) => {
                    (Some(latency.p99_ms), None, Some(latency.p99_ms), format!("measured: {}", latency.p99_basis))
                }
                (Evidence::Projected { projection, .. }, LatencyMetric::P50 | LatencyMetric::P99) => {
                    let value = if limit.metric == LatencyMetric::P50 { projection.p50_ms } else { projection.p99_ms };
                    let range = projection.range_of(value);
                    (Some(value), Some(range), Some(range[1]), "projected: high end of the range".to_string())
                }
                (Evidence::Unavailable { .. }, _) => (None, None, None, "not available".to_string()),
                (_, metric @ (LatencyMetric::TtftP99 | LatencyMetric::TpotP99)) => {
                    (None, None, None, format!("{metric} is a decoder metric; encoder reports do not measure it"))
                }
            };
            let meets = decision_ms.map(|d| d <= limit_ms);
            match (meets, decision_ms) {
                (Some(false), Some(d)) => reasons.push(format!(
                    "{} {:.3} ms{} > {} ms",
                    limit.metric,
                    d,
                    if range_ms.is_some() { " (high end of projection)" } else { "" },
                    fmt_number(limit_ms)
                )),
                (None, _) if !matches!(evidence, Evidence::Unavailable { .. }) => reasons.push(basis.clone()),
                _ => {}
            }
            MetricCheck { metric: limit.metric, limit_ms, value_ms, range_ms, decision_ms, basis, meets }
        })
        .collect();
    if tier.int8_required && !int8 {
        reasons.push(format!("tier {} requires an int8 model; the reports measured a float one", tier.name));
    }
    if matches!(evidence, Evidence::Projected { .. }) && !options.allow_projected {
        reasons.push("projected, not measured: pass --allow-projected to let projections meet a tier".into());
    }
    let spot = tier.spot.permits_spot(options.allow_spot).then(|| catalog.spot_for(instance.family.as_str())).flatten();
    let on_demand = instance.price.on_demand_usd_per_hour.get();
    let (purchase, price) = match spot {
        Some(estimate) => (Purchase::Spot, on_demand * (1.0 - estimate.discount.get())),
        None => (Purchase::OnDemand, on_demand),
    };
    // (requests/s of one replica, how it was found, fraction of it to run at)
    let headline = tier.headline();
    let (replica_qps, qps_basis, utilization, replicas_per_instance) = match evidence {
        Evidence::Measured { latency, max_qps, .. } => {
            let single_stream = request.batch as f64 * 1e3 / latency.p50_ms;
            match max_qps {
                Some(m)
                    if m.qps > 0.0
                        && headline.metric == LatencyMetric::P99
                        && m.tail_percentile >= 99.0
                        && m.sla_ms <= headline.max_ms.get() =>
                {
                    let basis = format!("measured maximum under p{} <= {} ms", m.tail_percentile, fmt_number(m.sla_ms));
                    (Some(m.qps), basis, 1.0, 1)
                }
                Some(m) => {
                    let basis = format!(
                        "estimated from single-stream latency (batch / measured p50); the measured maximum \
                         ({:.1}/s under p{} <= {} ms) does not apply to this tier's {} <= {} ms",
                        m.qps,
                        m.tail_percentile,
                        fmt_number(m.sla_ms),
                        headline.metric,
                        fmt_number(headline.max_ms.get())
                    );
                    (Some(single_stream), basis, TARGET_UTILIZATION, 1)
                }
                None => (
                    Some(single_stream),
                    "estimated from single-stream latency (batch / measured p50)".to_string(),
                    TARGET_UTILIZATION,
                    1,
                ),
            }
        }
        Evidence::Projected { projection, .. } => (
            Some(request.batch as f64 * 1e3 / projection.range_of(projection.p50_ms)[1]),
            "estimated from single-stream latency (batch / high end of projected p50)".to_string(),
            TARGET_UTILIZATION,
            projection.target.replicas_per_instance,
        ),
        Evidence::Unavailable { .. } => (None, "not available".to_string(), TARGET_UTILIZATION, 1),
    };
    let capacity = replica_qps.map(|q| q * utilization * f64::from(replicas_per_instance));
    let instances = capacity.map(|per_instance| match required_qps {
        Some(required) => ((required / per_instance).ceil() as u64).max(1),
        None => 1,
    });
    let cost = instances.map(|n| n as f64 * price);
    let usd_per_million = match (cost, capacity, instances) {
        (Some(cost), Some(per_instance), Some(n)) => {
            let served = required_qps.unwrap_or(per_instance * n as f64);
            Some(cost / (served * 3600.0) * 1e6)
        }
        _ => None,
    };
    Candidate {
        instance: instance.name.to_string(),
        service: instance.service,
        basis: evidence.basis().into(),
        checks,
        purchase,
        price_usd_per_hour: price,
        replica_qps,
        qps_basis,
        replicas_per_instance,
        instances,
        cost_usd_per_hour: cost,
        usd_per_million,
        verdict: Verdict::Rejected,
        reasons,
    }
}

/// `value` without trailing zeros (16, 0.5, 10000).
pub(crate) fn fmt_number(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Chooses among evaluated candidates: the cheapest with no reasons against it (ties: lower
/// headline decision latency, then name); sets every verdict and orders them chosen, feasible
/// by cost, rejected closest first. Returns the chosen and, when none, the closest miss.
pub fn choose(candidates: &mut [Candidate]) -> (Option<String>, Option<String>) {
    let cost_of = |c: &Candidate| c.cost_usd_per_hour.unwrap_or(f64::INFINITY);
    let headline = |c: &Candidate| c.headline().decision_ms.unwrap_or(f64::INFINITY);
    let better = |a: &Candidate, b: &Candidate| {
        let (ca, cb) = (cost_of(a), cost_of(b));
        if (ca - cb).abs() > COST_TIE_USD_PER_HOUR {
            ca.total_cmp(&cb)
        } else {
            headline(a).total_cmp(&headline(b)).then_with(|| a.instance.cmp(&b.instance))
        }
    };
    for candidate in candidates.iter_mut() {
        candidate.verdict = if candidate.reasons.is_empty() { Verdict::Feasible } else { Verdict::Rejected };
    }
    candidates.sort_by(|a, b| {
        a.verdict.cmp(&b.verdict).then_with(|| match a.verdict {
            Verdict::Rejected => {
                let ratio = |c: &Candidate| c.worst_ratio().unwrap_or(f64::INFINITY);
                ratio(a).total_cmp(&ratio(b)).then_with(|| better(a, b))
            }
            _ => better(a, b),
        })
    });
    let Some(first) = candidates.first().filter(|c| c.verdict == Verdict::Feasible).cloned() else {
        let miss = candidates.iter().find(|c| c.worst_ratio().is_some()).map(|c| c.instance.clone());
        return (None, miss);
    };
    for candidate in candidates.iter_mut() {
        if candidate.instance == first.instance {
            candidate.verdict = Verdict::Chosen;
        } else if candidate.verdict == Verdict::Feasible {
            let (cost, chosen_cost) = (cost_of(candidate), cost_of(&first));
            candidate.reasons.push(if (cost - chosen_cost).abs() > COST_TIE_USD_PER_HOUR {
                format!("costs ${cost:.4}/h, more than {} at ${chosen_cost:.4}/h", first.instance)
            } else {
                format!(
                    "ties with {} at ${chosen_cost:.4}/h; its {} is higher ({:.3} vs {:.3} ms)",
                    first.instance,
                    candidate.headline().metric,
                    headline(candidate),
                    headline(&first)
                )
            });
        }
    }
    (Some(first.instance), None)
}

/// Builds the recommendation. See the module documentation for the rules.
pub fn recommend(
    reports: &[LabelledReport],
    catalog: &InstanceCatalog,
    tiers: &Tiers,
    options: &RecommendOptions,
) -> Result<Recommendation> {
    let Some(first) = reports.first() else {
        return Err(ProfilesError::Request { problem: "no bench reports given".into() });
    };
    for r in reports {
        if r.report.workloads.is_empty() {
            return Err(report_error(&r.label, "has no workloads"));
        }
        if r.report.int8 != first.report.int8 {
            return Err(report_error(
                &r.label,
                format!(
                    "measured a {} model but {} measured a {} one; recommend one variant at a time",
                    variant(r.report.int8),
                    first.label,
                    variant(first.report.int8)
                ),
            ));
        }
    }
    let int8 = first.report.int8;
    let decoder = first.report.decoder.is_some();
    if let Some(other) = reports.iter().find(|r| r.report.decoder.is_some() != decoder) {
        return Err(report_error(&other.label, format!("mixes decoder and encoder reports with {}", first.label)));
    }
    let request = request_shape(reports, options)?;
    let shape = options.model_shape.as_ref();
    let mut notes = Vec::new();
    let mut calibrations = Vec::new();
    let mut uses = Vec::new();
    for r in reports {
        let instance_type = measured_instance_type(&r.report).map(str::to_string);
        let class = report_class(&r.report);
        let mut roles = Vec::new();
        match &instance_type {
            Some(t) if catalog.get(t).is_some() => {
                if r.report.workloads.iter().any(|w| w.batch == request.batch && w.seq == request.seq) {
                    roles.push(format!("measured candidate for {t}"));
                } else {
                    roles.push(format!("measured on {t}, but not at the request shape {request}"));
                }
            }
            Some(t) => roles.push(format!("measured on {t}, which the catalog does not list")),
            None => roles.push(format!(
                "no EC2 instance type (`{}`, {}): never taken for a catalog type",
                r.report.hardware.instance_type, r.report.hardware.instance_type_source
            )),
        }
        match (class, shape) {
            _ if decoder => roles.push(match &r.report.decoder {
                Some(info) => format!(
                    "calibrates decoder projections (TPOT at {:.0}% of its memory bound)",
                    info.tpot_percent_of_bound
                ),
                None => "decoder report".into(),
            }),
            (_, None) => roles.push("cannot calibrate: no model config".into()),
            (DeviceClass::Gpu, Some(_)) if MeasuringHost::of_report(&r.report, &r.label).is_err() => {
                let gpu = r.report.hardware.gpu.as_ref().map_or("?", |g| g.name.as_str());
                roles.push(format!("cannot calibrate: GPU `{gpu}` is not in {BUILTIN_GPUS_NAME}"));
            }
            (_, Some(shape)) => {
                let calibration = calibrate(&r.report, &r.label, shape, request)?;
                roles.push(format!(
                    "calibrates {} (efficiency {:.1}% at {})",
                    class.name(),
                    calibration.efficiency * 100.0,
                    calibration.measured.shape
                ));
                calibrations.push(calibration);
            }
        }
        uses.push(ReportUse {
            report: r.label.clone(),
            instance_type,
            instance_type_source: r.report.hardware.instance_type_source.clone(),
            cpu_model: r.report.hardware.cpu_model.clone(),
            gpu: r.report.hardware.gpu.as_ref().map(|g| g.name.clone()),
            class,
            threads: r.report.threads,
            workloads: r.report.workloads.iter().map(|w| RequestShape { batch: w.batch, seq: w.seq }).collect(),
            role: roles.join("; "),
        });
    }
    if shape.is_none() {
        notes.push("No model config.json was found, so nothing could be projected; pass --model-config.".into());
    }
    if reports.iter().all(|r| measured_instance_type(&r.report).is_none()) {
        notes.push(
            "No report was measured on an EC2 instance type: every instance's figures are projected from \
             the reports' hosts, not measured on the instance."
                .into(),
        );
    }
    notes.push(format!(
        "Throughput per replica is a measured maximum (bench model --find-max-qps) where one applies, else \
         estimated from single-stream latency (batch / p50) and sized to run at {:.0}% of it.",
        TARGET_UTILIZATION * 100.0
    ));
    let evidence: Vec<(&InstanceProfile, Evidence)> =
        catalog.instances.iter().map(|i| (i, evidence_for(i, reports, &calibrations, shape, request, int8))).collect();
    let context = EvaluationContext { catalog, options, int8, request };
    let tier_results = tiers
        .tiers
        .iter()
        .map(|tier| {
            let tier = &judged_limits(tier, decoder);
            let required_qps = tier.required_qps.map(|q| q.get());
            let mut candidates: Vec<Candidate> = evidence
                .iter()
                .map(|(instance, evidence)| evaluate(&context, instance, evidence, tier, required_qps))
                .collect();
            let (chosen, closest_miss) = choose(&mut candidates);
            let summary = summarize(tier, &candidates, chosen.as_deref(), closest_miss.as_deref());
            TierRecommendation {
                spot_permitted: tier.spot.permits_spot(options.allow_spot),
                tier: tier.clone(),
                required_qps,
                chosen,
                closest_miss,
                summary,
                candidates,
            }
        })
        .collect();
    Ok(Recommendation {
        schema_version: RECOMMENDATION_SCHEMA_VERSION,
        model: ModelSummary {
            paths: dedup(reports.iter().map(|r| r.report.model.clone())),
            int8,
            shape: options.model_shape,
            shape_source: options.model_shape_source.clone(),
        },
        request,
        options: AppliedOptions {
            allow_spot: options.allow_spot,
            allow_projected: options.allow_projected,
            target_utilization: TARGET_UTILIZATION,
            projection_range: [crate::projection::PROJECTION_RANGE_LOW, crate::projection::PROJECTION_RANGE_HIGH],
        },
        catalog: CatalogUse {
            source: catalog.source_name.clone(),
            region: catalog.header.region.to_string(),
            note: catalog.header.note.to_string(),
            price_sources: catalog
                .instances
                .iter()
                .map(|i| format!("{}: {} ({})", i.name, i.price.source, i.price.as_of))
                .collect(),
        },
        tiers_source: tiers.source_name.clone(),
        reports: uses,
        calibrations,
        latencies: evidence.iter().map(|(instance, evidence)| instance_latency(instance, evidence)).collect(),
        tiers: tier_results,
        notes,
    })
}

fn instance_latency(instance: &InstanceProfile, evidence: &Evidence) -> InstanceLatency {
    let (p50_ms, p99_ms, p99_range_ms) = match evidence {
        Evidence::Measured { latency, .. } => (Some(latency.p50_ms), Some(latency.p99_ms), None),
        Evidence::Projected { projection, .. } => {
            (Some(projection.p50_ms), Some(projection.p99_ms), Some(projection.range_of(projection.p99_ms)))
        }
        Evidence::Unavailable { .. } => (None, None, None),
    };
    InstanceLatency {
        instance: instance.name.to_string(),
        on_demand_usd_per_hour: instance.price.on_demand_usd_per_hour.get(),
        basis: evidence.basis().into(),
        p50_ms,
        p99_ms,
        p99_range_ms,
        evidence: evidence.clone(),
    }
}

fn variant(int8: bool) -> &'static str {
    if int8 { "int8" } else { "float" }
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn summarize(tier: &TierSla, candidates: &[Candidate], chosen: Option<&str>, miss: Option<&str>) -> String {
    let find = |name: &str| candidates.iter().find(|c| c.instance == name);
    match (chosen.and_then(find), miss.and_then(find)) {
        (Some(c), _) => format!(
            "{}: {} ({}, {}), {} instance{} at ${:.4}/h, {} {:.3} ms <= {} ms",
            tier.name,
            c.instance,
            c.basis,
            match c.purchase {
                Purchase::Spot => "spot",
                Purchase::OnDemand => "on-demand",
            },
            c.instances.unwrap_or(1),
            if c.instances == Some(1) { "" } else { "s" },
            c.cost_usd_per_hour.unwrap_or(f64::NAN),
            c.headline().metric,
            c.headline().decision_ms.unwrap_or(f64::NAN),
            fmt_number(c.headline().limit_ms),
        ),
        (None, Some(m)) => format!(
            "{}: no instance meets this tier; closest miss {} ({}): {}",
            tier.name,
            m.instance,
            m.basis,
            m.reasons.join("; ")
        ),
        (None, None) => format!("{}: no instance meets this tier, and none could be evaluated", tier.name),
    }
}

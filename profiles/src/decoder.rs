//! Decoder latencies: time to first token (TTFT) and time per output token (TPOT), measured by
//! `qtier bench model` on a decoder, and projected onto unmeasured instance types.
//!
//! TPOT at batch 1 is memory-bound: a step reads every weight once. The report records the bound
//! on its host (`weight bytes / measured read bandwidth`) and the measured median; their ratio is
//! the run's bandwidth efficiency. A target's TPOT is its own bound (the same weight bytes over
//! the catalog's memory bandwidth for the replica's cores) divided by that efficiency. TTFT (the
//! prompt's forward) is compute-bound: `2 x Linear parameters x prompt tokens` operations (plus
//! `lm_head` once) at the int8 or f32 peak, calibrated the same way on the host's roofline
//! peaks. Tails keep the measured tail-to-median ratios.

use qtier_bench::decoder_bench::DecoderMetric;
use qtier_bench::model_bench::ModelBenchReport;
use serde::{Deserialize, Serialize};

use crate::projection::{ComputeTarget, MeasuredLatency, MeasuringHost};
use crate::tiers::LatencyMetric;

/// TTFT and TPOT of a decoder on one machine, measured or projected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderLatency {
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Tokens generated per request.
    pub gen_len: usize,
    /// Median time to first token, ms.
    pub ttft_p50_ms: f64,
    /// 99th percentile time to first token, ms.
    pub ttft_p99_ms: f64,
    /// Median time per output token, ms.
    pub tpot_p50_ms: f64,
    /// 99th percentile time per output token, ms.
    pub tpot_p99_ms: f64,
    /// TPOT's memory bound on this machine, ms.
    pub tpot_bound_ms: f64,
    /// How the figures were obtained.
    pub basis: String,
}

impl DecoderLatency {
    /// The measured latencies of a decoder report (None for an encoder report).
    pub fn measured(report: &ModelBenchReport) -> Option<Self> {
        let info = report.decoder.as_ref()?;
        let of = |metric: DecoderMetric| {
            report.workloads.iter().find(|w| w.decoder_metric == Some(metric)).map(MeasuredLatency::of)
        };
        let (ttft, tpot) = (of(DecoderMetric::Ttft)?, of(DecoderMetric::Tpot)?);
        Some(Self {
            prompt_len: info.prompt_len,
            gen_len: info.gen_len,
            ttft_p50_ms: ttft.p50_ms,
            ttft_p99_ms: ttft.p99_ms,
            tpot_p50_ms: tpot.p50_ms,
            tpot_p99_ms: tpot.p99_ms,
            tpot_bound_ms: info.tpot_bound_ms,
            basis: format!("measured: TTFT {} ({} runs); TPOT {}", ttft.p99_basis, ttft.samples, tpot.p99_basis),
        })
    }

    /// One request (`ttft + (gen_len - 1) tpot`) as a [`MeasuredLatency`], median and p99.
    pub fn request(&self) -> MeasuredLatency {
        let steps = self.gen_len.saturating_sub(1) as f64;
        MeasuredLatency {
            shape: crate::workload::RequestShape { batch: 1, seq: self.prompt_len },
            p50_ms: self.ttft_p50_ms + steps * self.tpot_p50_ms,
            p99_ms: self.ttft_p99_ms + steps * self.tpot_p99_ms,
            p99_basis: format!("TTFT p99 + {steps} x TPOT p99 (a request of {} generated tokens)", self.gen_len),
            samples: 1,
        }
    }

    /// The value of a decoder metric, ms (None for encoder metrics).
    pub fn value(&self, metric: LatencyMetric) -> Option<f64> {
        match metric {
            LatencyMetric::TtftP99 => Some(self.ttft_p99_ms),
            LatencyMetric::TpotP99 => Some(self.tpot_p99_ms),
            LatencyMetric::P50 | LatencyMetric::P99 => None,
        }
    }
}

/// Projects a measured decoder report onto `target` (see the module documentation). None when
/// the report is not a decoder report, its medians are not positive, or it ran on a GPU the GPU
/// table does not know.
pub fn project_decoder(report: &ModelBenchReport, target: &ComputeTarget) -> Option<DecoderLatency> {
    let info = report.decoder.as_ref()?;
    let measured = DecoderLatency::measured(report)?;
    if !(measured.ttft_p50_ms > 0.0 && measured.tpot_p50_ms > 0.0 && info.tpot_bound_ms > 0.0) {
        return None;
    }
    let tpot_efficiency = info.tpot_bound_ms / measured.tpot_p50_ms;
    let tpot_bound_ms = info.weight_bytes_per_token as f64 / target.peaks.bytes * 1e3;
    let tpot_p50_ms = tpot_bound_ms / tpot_efficiency;
    let host = MeasuringHost::of_report(report, &report.model).ok()?;
    let operations = 2.0 * info.linear_params as f64 * info.prompt_len as f64
        + 2.0 * info.hidden_size as f64 * info.vocab_size as f64;
    let peak = |peaks: &crate::workload::Peaks| if report.int8 { peaks.int8_ops } else { peaks.float_ops };
    let ttft_efficiency = operations / peak(&host.peaks) * 1e3 / measured.ttft_p50_ms;
    let ttft_p50_ms = operations / peak(&target.peaks) * 1e3 / ttft_efficiency;
    Some(DecoderLatency {
        prompt_len: info.prompt_len,
        gen_len: info.gen_len,
        ttft_p50_ms,
        ttft_p99_ms: ttft_p50_ms * measured.ttft_p99_ms / measured.ttft_p50_ms,
        tpot_p50_ms,
        tpot_p99_ms: tpot_p50_ms * measured.tpot_p99_ms / measured.tpot_p50_ms,
        tpot_bound_ms,
        basis: format!(
            "projected: TPOT at {:.0}% of its memory bound ({:.1} GB/s for the replica), TTFT at {:.1}% of the compute peak",
            tpot_efficiency * 100.0,
            target.peaks.bytes / 1e9,
            ttft_efficiency * 100.0
        ),
    })
}

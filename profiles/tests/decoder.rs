//! `recommend` on decoder reports: tiers are judged on TTFT and TPOT, and TPOT is projected onto
//! unmeasured types from its memory bound at the catalog's bandwidth.

mod common;

use qtier_bench::decoder_bench::{DecoderBenchInfo, DecoderMetric};
use qtier_profiles::recommend::Verdict;
use qtier_profiles::tiers::LatencyMetric;
use qtier_profiles::{LabelledReport, RecommendOptions, Tiers, recommend};

/// A decoder report (prompt 512, 128 generated) with the given TTFT and TPOT p50/p99, measured on
/// `instance_type` (or an unknown host), TPOT at 80% of a 10 ms bound at 28 GB/s.
fn decoder_report(instance_type: Option<&str>, ttft: (f64, f64), tpot: (f64, f64)) -> LabelledReport {
    let mut ttft_workload = common::workload(1, 512, ttft.0, ttft.1);
    ttft_workload.name = "ttft_p512".into();
    ttft_workload.decoder_metric = Some(DecoderMetric::Ttft);
    let mut tpot_workload = common::workload(1, 512, tpot.0, tpot.1);
    tpot_workload.name = "tpot_p512_g128".into();
    tpot_workload.decoder_metric = Some(DecoderMetric::Tpot);
    let mut report = common::report(instance_type, &common::VNNI_FLAGS, 2, vec![ttft_workload, tpot_workload]);
    report.decoder = Some(DecoderBenchInfo {
        prompt_len: 512,
        gen_len: 128,
        runs: 3,
        weight_dtype: "int8 (lm_head f32)".into(),
        weight_bytes_per_token: 280_000_000,
        linear_params: 973_078_528,
        vocab_size: 128_256,
        hidden_size: 2048,
        read_gb_per_s: 28.0,
        read_probe_bytes: 1 << 30,
        tpot_bound_ms: 10.0,
        tpot_p50_ms: tpot.0,
        tpot_percent_of_bound: 10.0 / tpot.0 * 100.0,
    });
    LabelledReport { label: format!("{}.json", instance_type.unwrap_or("host")), report }
}

const TIERS: &str = "[[tier]]\nname = \"chat\"\nkind = \"real-time\"\nspot = \"never\"\nint8_required = false\n\
    [[tier.limit]]\nmetric = \"p99\"\nmax_ms = 16\n[[tier.limit]]\nmetric = \"tpot_p99\"\nmax_ms = 16\n\
    [[tier]]\nname = \"prefill\"\nkind = \"interactive\"\nspot = \"never\"\nint8_required = false\n\
    [[tier.limit]]\nmetric = \"p99\"\nmax_ms = 250\n[[tier.limit]]\nmetric = \"ttft_p99\"\nmax_ms = 250\n";

#[test]
fn measured_decoders_are_judged_on_tpot_and_ttft() {
    let tiers = Tiers::parse(TIERS, "t.toml").unwrap();
    let catalog = common::catalog(&[("c6i.large", 0.085), ("c7i.large", 0.089)]);
    // c6i: TPOT p99 15 ms (meets 16), TTFT p99 300 ms (misses 250); c7i: TPOT 20 ms, TTFT 200 ms.
    let reports = [
        decoder_report(Some("c6i.large"), (280.0, 300.0), (12.5, 15.0)),
        decoder_report(Some("c7i.large"), (180.0, 200.0), (18.0, 20.0)),
    ];
    let recommendation = recommend(&reports, &catalog, &tiers, &RecommendOptions::default()).unwrap();
    let chat = &recommendation.tiers[0];
    assert_eq!(chat.chosen.as_deref(), Some("c6i.large"), "{}", chat.summary);
    let checks = &chat.chosen_candidate().unwrap().checks;
    assert_eq!(checks.len(), 1, "an encoder's p99 limit does not apply to a decoder");
    assert_eq!((checks[0].metric, checks[0].decision_ms), (LatencyMetric::TpotP99, Some(15.0)));
    let prefill = &recommendation.tiers[1];
    assert_eq!(prefill.chosen.as_deref(), Some("c7i.large"), "{}", prefill.summary);
    assert_eq!(prefill.chosen_candidate().unwrap().headline().metric, LatencyMetric::TtftP99);
    let rejected = prefill.candidates.iter().find(|c| c.instance == "c6i.large").unwrap();
    assert_eq!(rejected.verdict, Verdict::Rejected);
    assert!(chat.summary.contains("tpot_p99"), "{}", chat.summary);
}

#[test]
fn decoder_tpot_projects_from_the_memory_bound() {
    let tiers = Tiers::parse(TIERS, "t.toml").unwrap();
    // The catalog's test instances have 20 GB/s for 1 physical core.
    let catalog = common::catalog(&[("c6i.large", 0.085)]);
    let host = decoder_report(None, (2000.0, 2100.0), (12.5, 13.0));
    let options = RecommendOptions { allow_projected: true, ..RecommendOptions::default() };
    let recommendation = recommend(&[host], &catalog, &tiers, &options).unwrap();
    let candidate = &recommendation.tiers[0].candidates[0];
    assert_eq!(candidate.basis, "projected");
    let check = &candidate.checks[0];
    assert_eq!(check.metric, LatencyMetric::TpotP99);
    // Bound on the target: 0.28 GB / 20 GB/s = 14 ms; at the host's 80% efficiency a median of
    // 17.5 ms, p99 18.2 ms (the host's 13/12.5 tail ratio).
    let value = check.value_ms.unwrap();
    assert!((value - 18.2).abs() < 1e-6, "projected TPOT p99 {value}");
    assert_eq!(check.meets, Some(false));
}

#[test]
fn builtin_tiers_bound_decoder_metrics() {
    let tiers = Tiers::builtin().unwrap();
    let limit = |tier: usize, metric: LatencyMetric| {
        tiers.tiers[tier].limit.iter().find(|l| l.metric == metric).map(|l| l.max_ms.get())
    };
    assert_eq!(limit(0, LatencyMetric::TpotP99), Some(16.0));
    assert_eq!(limit(1, LatencyMetric::TtftP99), Some(250.0));
    assert_eq!(limit(2, LatencyMetric::TtftP99), Some(10_000.0));
}

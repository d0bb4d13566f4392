//! Recommendation scenarios with known answers, on synthetic reports whose latencies are set
//! exactly (see `common::workload`).

mod common;

use common::*;
use qtier_profiles::recommend::{Purchase, TARGET_UTILIZATION, TierRecommendation, Verdict};
use qtier_profiles::{LabelledReport, RecommendOptions, Recommendation, Tiers, recommend};

fn options() -> RecommendOptions {
    RecommendOptions::default()
}

fn run(
    reports: &[LabelledReport],
    catalog: &qtier_profiles::InstanceCatalog,
    tiers: &Tiers,
    options: &RecommendOptions,
) -> Recommendation {
    recommend(reports, catalog, tiers, options).unwrap()
}

fn tier<'a>(r: &'a Recommendation, name: &str) -> &'a TierRecommendation {
    r.tiers.iter().find(|t| t.tier.name.as_str() == name).unwrap()
}

fn candidate<'a>(t: &'a TierRecommendation, name: &str) -> &'a qtier_profiles::recommend::Candidate {
    t.candidates.iter().find(|c| c.instance == name).unwrap()
}

#[test]
fn the_cheapest_feasible_instance_wins() {
    let catalog = catalog(&[("c6i.large", 0.085), ("c6i.xlarge", 0.17)]);
    let reports = [measured("c6i.large", 5.0, 10.0), measured("c6i.xlarge", 3.0, 6.0)];
    let r = run(&reports, &catalog, &Tiers::builtin().unwrap(), &options());
    let gold = tier(&r, "gold");
    assert_eq!(gold.chosen.as_deref(), Some("c6i.large"));
    let chosen = candidate(gold, "c6i.large");
    assert_eq!(
        (chosen.verdict, chosen.basis.as_str(), chosen.purchase),
        (Verdict::Chosen, "measured", Purchase::OnDemand)
    );
    assert_eq!(chosen.cost_usd_per_hour, Some(0.085));
    assert_eq!(chosen.headline().decision_ms, Some(10.0));
    let other = candidate(gold, "c6i.xlarge");
    assert_eq!(other.verdict, Verdict::Feasible);
    assert!(other.reasons[0].contains("more than c6i.large"), "{:?}", other.reasons);
    assert!(gold.summary.starts_with("gold: c6i.large (measured, on-demand)"), "{}", gold.summary);
}

#[test]
fn a_cheaper_infeasible_instance_is_rejected_with_its_reason() {
    let catalog = catalog(&[("c6i.large", 0.085), ("c6i.xlarge", 0.17)]);
    let reports = [measured("c6i.large", 9.0, 20.0), measured("c6i.xlarge", 3.0, 6.0)];
    let r = run(&reports, &catalog, &Tiers::builtin().unwrap(), &options());
    let gold = tier(&r, "gold");
    assert_eq!(gold.chosen.as_deref(), Some("c6i.xlarge"));
    let rejected = candidate(gold, "c6i.large");
    assert_eq!(rejected.verdict, Verdict::Rejected);
    assert_eq!(rejected.reasons, ["p99 20.000 ms > 16 ms"]);
    // Silver's limits (p99 250, p50 80) are met by both: the cheaper one wins there.
    assert_eq!(tier(&r, "silver").chosen.as_deref(), Some("c6i.large"));
}

#[test]
fn a_cost_tie_goes_to_the_lower_tail_latency() {
    let catalog = catalog(&[("c5.large", 0.085), ("c6i.large", 0.085)]);
    let reports = [measured("c5.large", 5.0, 12.0), measured("c6i.large", 4.0, 8.0)];
    let r = run(&reports, &catalog, &Tiers::builtin().unwrap(), &options());
    let gold = tier(&r, "gold");
    assert_eq!(gold.chosen.as_deref(), Some("c6i.large"));
    let tied = candidate(gold, "c5.large");
    assert_eq!(tied.verdict, Verdict::Feasible);
    assert!(tied.reasons[0].starts_with("ties with c6i.large"), "{:?}", tied.reasons);
    // Reversed latencies reverse the choice: the tie-break is the latency, not the order.
    let reports = [measured("c5.large", 4.0, 8.0), measured("c6i.large", 5.0, 12.0)];
    let r = run(&reports, &catalog, &Tiers::builtin().unwrap(), &options());
    assert_eq!(tier(&r, "gold").chosen.as_deref(), Some("c5.large"));
}

#[test]
fn no_feasible_instance_is_an_answer_with_the_closest_miss() {
    let catalog = catalog(&[("c6i.large", 0.085), ("c6i.xlarge", 0.17), ("m7i.large", 0.1)]);
    let reports = [measured("c6i.large", 15.0, 40.0), measured("c6i.xlarge", 10.0, 20.0)];
    let r = run(&reports, &catalog, &Tiers::builtin().unwrap(), &options());
    let gold = tier(&r, "gold");
    assert_eq!(gold.chosen, None);
    assert_eq!(gold.closest_miss.as_deref(), Some("c6i.xlarge"));
    assert!(gold.candidates.iter().all(|c| c.verdict == Verdict::Rejected));
    assert!(gold.summary.contains("no instance meets this tier; closest miss c6i.xlarge"), "{}", gold.summary);
    // m7i.large has no report and there is no host to calibrate on: not evaluated, with why.
    let unmeasured = candidate(gold, "m7i.large");
    assert_eq!(unmeasured.basis, "none");
    assert!(unmeasured.reasons[0].contains("no measured report"), "{:?}", unmeasured.reasons);
    // Bronze is met.
    assert_eq!(tier(&r, "bronze").chosen.as_deref(), Some("c6i.large"));
}

#[test]
fn spot_is_used_only_where_the_tier_allows_it() {
    // m7i has no spot estimate; c7i is 60% off on spot.
    let catalog = catalog(&[("m7i.large", 0.10), ("c7i.large", 0.12)]);
    let reports = [measured("m7i.large", 5.0, 10.0), measured("c7i.large", 5.0, 10.0)];
    let tiers = Tiers::builtin().unwrap();

    let r = run(&reports, &catalog, &tiers, &options());
    let gold = tier(&r, "gold");
    assert_eq!(gold.chosen.as_deref(), Some("m7i.large"));
    assert!(gold.candidates.iter().all(|c| c.purchase == Purchase::OnDemand));
    let silver = tier(&r, "silver");
    assert_eq!(silver.chosen.as_deref(), Some("m7i.large"), "silver needs --allow-spot for spot");
    assert!(!silver.spot_permitted);
    let bronze = tier(&r, "bronze");
    assert_eq!(bronze.chosen.as_deref(), Some("c7i.large"));
    let spot = candidate(bronze, "c7i.large");
    assert_eq!(spot.purchase, Purchase::Spot);
    assert!((spot.price_usd_per_hour - 0.12 * 0.4).abs() < 1e-12);
    assert_eq!(candidate(bronze, "m7i.large").purchase, Purchase::OnDemand, "no spot estimate, no spot");

    let r = run(&reports, &catalog, &tiers, &RecommendOptions { allow_spot: true, ..options() });
    assert_eq!(tier(&r, "silver").chosen.as_deref(), Some("c7i.large"));
    assert_eq!(tier(&r, "gold").chosen.as_deref(), Some("m7i.large"), "gold never uses spot");
}

#[test]
fn replicas_for_the_required_throughput_change_the_winner() {
    let catalog = catalog(&[("c6i.large", 0.085), ("c6i.xlarge", 0.17)]);
    // One replica: c6i.large 100 requests/s (p50 10 ms), c6i.xlarge 500 (p50 2 ms).
    let reports = [measured("c6i.large", 10.0, 12.0), measured("c6i.xlarge", 2.0, 4.0)];
    let mut tiers = Tiers::builtin().unwrap();
    let r = run(&reports, &catalog, &tiers, &options());
    assert_eq!(tier(&r, "gold").chosen.as_deref(), Some("c6i.large"));

    tiers.apply_qps("gold=300").unwrap();
    let r = run(&reports, &catalog, &tiers, &options());
    let gold = tier(&r, "gold");
    assert_eq!(gold.chosen.as_deref(), Some("c6i.xlarge"));
    let large = candidate(gold, "c6i.large");
    let expected = (300.0 / (100.0 * TARGET_UTILIZATION)).ceil() as u64;
    assert_eq!(large.instances, Some(expected));
    assert!((large.cost_usd_per_hour.unwrap() - expected as f64 * 0.085).abs() < 1e-12);
    let xlarge = candidate(gold, "c6i.xlarge");
    assert_eq!(xlarge.instances, Some(1));
    assert!(xlarge.qps_basis.contains("estimated from single-stream latency"), "{}", xlarge.qps_basis);
    // $ per million requests at the required throughput: 0.17 $/h over 300 x 3600 requests.
    let per_million = 0.17 / (300.0 * 3600.0) * 1e6;
    assert!((xlarge.usd_per_million.unwrap() - per_million).abs() < 1e-12);
}

#[test]
fn measured_beats_projected_for_the_same_type() {
    let catalog = catalog(&[("c6i.large", 0.085), ("c6i.xlarge", 0.17)]);
    // The host calibrates at 2 cores; it would project both types well inside gold.
    let host = LabelledReport {
        label: "host.json".into(),
        report: report(None, &VNNI_FLAGS, 2, vec![workload(1, 32, 1.0, 1.5)]),
    };
    let options = RecommendOptions { allow_projected: true, model_shape: Some(minilm()), ..options() };
    let r = run(std::slice::from_ref(&host), &catalog, &Tiers::builtin().unwrap(), &options);
    assert_eq!(tier(&r, "gold").chosen.as_deref(), Some("c6i.large"));
    assert_eq!(candidate(tier(&r, "gold"), "c6i.large").basis, "projected");

    // A measurement of c6i.large that misses gold overrides its projection.
    let r = run(&[host, measured("c6i.large", 20.0, 30.0)], &catalog, &Tiers::builtin().unwrap(), &options);
    let gold = tier(&r, "gold");
    let large = candidate(gold, "c6i.large");
    assert_eq!((large.basis.as_str(), large.verdict), ("measured", Verdict::Rejected));
    assert_eq!(large.reasons, ["p99 30.000 ms > 16 ms"]);
    assert_ne!(gold.chosen.as_deref(), Some("c6i.large"));
    // The unmeasured type is still projected, now also from the slower c6i.large measurement
    // (the slowest calibration of the class wins).
    let xlarge = candidate(gold, "c6i.xlarge");
    assert_eq!(xlarge.basis, "projected");
    assert_eq!(r.calibrations.len(), 2);
}

#[test]
fn projections_meet_a_tier_only_when_allowed() {
    let catalog = catalog(&[("c6i.large", 0.085)]);
    let host = LabelledReport {
        label: "host.json".into(),
        report: report(None, &VNNI_FLAGS, 2, vec![workload(1, 32, 1.0, 1.5)]),
    };
    let options = RecommendOptions { model_shape: Some(minilm()), ..options() };
    let r = run(std::slice::from_ref(&host), &catalog, &Tiers::builtin().unwrap(), &options);
    for t in &r.tiers {
        assert_eq!(t.chosen, None);
        let c = candidate(t, "c6i.large");
        assert_eq!(c.basis, "projected");
        assert!(c.reasons.iter().any(|r| r.contains("--allow-projected")), "{:?}", c.reasons);
        assert_eq!(t.closest_miss.as_deref(), Some("c6i.large"));
    }
    // A host report is never taken for an EC2 type.
    assert!(r.reports[0].instance_type.is_none());
    assert!(r.reports[0].role.contains("never taken for a catalog type"), "{}", r.reports[0].role);
}

#[test]
fn a_float_model_cannot_serve_an_int8_tier() {
    let catalog = catalog(&[("c6i.large", 0.085)]);
    let mut report = measured("c6i.large", 2.0, 4.0);
    report.report.int8 = false;
    let r = run(&[report], &catalog, &Tiers::builtin().unwrap(), &options());
    let gold = tier(&r, "gold");
    assert_eq!(gold.chosen, None);
    assert!(candidate(gold, "c6i.large").reasons[0].contains("requires an int8 model"));
    assert_eq!(tier(&r, "silver").chosen.as_deref(), Some("c6i.large"));
}

#[test]
fn decoder_metrics_are_reported_unavailable_for_encoder_reports() {
    let catalog = catalog(&[("c6i.large", 0.085)]);
    let tiers = Tiers::parse(
        "[[tier]]\nname = \"chat\"\nkind = \"interactive\"\nspot = \"never\"\nint8_required = false\n\
         [[tier.limit]]\nmetric = \"tpot_p99\"\nmax_ms = 50\n",
        "chat.toml",
    )
    .unwrap();
    let r = run(&[measured("c6i.large", 2.0, 4.0)], &catalog, &tiers, &options());
    let chat = tier(&r, "chat");
    assert_eq!(chat.chosen, None);
    assert!(candidate(chat, "c6i.large").reasons[0].contains("tpot_p99 is a decoder metric"));
}

#[test]
fn reports_of_int8_and_float_models_are_not_mixed() {
    let catalog = catalog(&[("c6i.large", 0.085)]);
    let mut float = measured("c6i.large", 2.0, 4.0);
    float.report.int8 = false;
    let error = recommend(&[measured("c6i.large", 2.0, 4.0), float], &catalog, &Tiers::builtin().unwrap(), &options())
        .unwrap_err();
    assert!(error.to_string().contains("one variant at a time"), "{error}");
}

#[test]
fn several_sequence_lengths_need_a_choice() {
    let catalog = catalog(&[("c6i.large", 0.085)]);
    let mut report = measured("c6i.large", 2.0, 4.0);
    report.report.workloads.push(workload(1, 128, 8.0, 10.0));
    let error = recommend(std::slice::from_ref(&report), &catalog, &Tiers::builtin().unwrap(), &options()).unwrap_err();
    assert!(error.to_string().contains("--seq"), "{error}");
    let r = run(&[report], &catalog, &Tiers::builtin().unwrap(), &RecommendOptions { seq: Some(128), ..options() });
    assert_eq!(candidate(tier(&r, "gold"), "c6i.large").headline().decision_ms, Some(10.0));
}

#[test]
fn a_measured_maximum_throughput_sizes_replicas_when_its_sla_is_as_strict_as_the_tiers() {
    use qtier_bench::load::MaxQps;
    let catalog = catalog(&[("c6i.large", 0.085)]);
    let with_max = |sla_ms: f64| {
        let mut report = measured("c6i.large", 4.0, 8.0);
        report.report.workloads[0].max_qps =
            Some(MaxQps { tail_percentile: 99.0, sla_ns: sla_ms * 1e6, max_qps: 120.0, steps: Vec::new() });
        report
    };
    let mut tiers = Tiers::builtin().unwrap();
    tiers.apply_qps("gold=600,bronze=600").unwrap();
    // Found under p99 <= 16 ms: valid for gold (16 ms) and bronze (10 s); no utilization headroom
    // on top, since the search already included queueing.
    let r = run(&[with_max(16.0)], &catalog, &tiers, &options());
    for name in ["gold", "bronze"] {
        let c = candidate(tier(&r, name), "c6i.large");
        assert_eq!(c.replica_qps, Some(120.0));
        assert_eq!(c.instances, Some(5), "{name}: 600 / 120");
        assert!(c.qps_basis.starts_with("measured maximum under p99 <= 16 ms"), "{}", c.qps_basis);
    }
    // Found under a looser SLA than gold's: gold falls back to the single-stream estimate
    // (250/s at p50 4 ms, run at 70%); bronze still uses the measurement.
    let r = run(&[with_max(50.0)], &catalog, &tiers, &options());
    let gold = candidate(tier(&r, "gold"), "c6i.large");
    assert_eq!(gold.replica_qps, Some(250.0));
    assert_eq!(gold.instances, Some((600.0 / (250.0 * TARGET_UTILIZATION)).ceil() as u64));
    assert!(gold.qps_basis.contains("does not apply to this tier"), "{}", gold.qps_basis);
    assert_eq!(candidate(tier(&r, "bronze"), "c6i.large").replica_qps, Some(120.0));
}

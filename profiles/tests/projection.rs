//! Projection on the development host's measured reports (fixtures made by
//! `fixtures/make_host_report.sh`).

mod common;

use common::*;
use qtier_bench::hardware::GpuHardware;
use qtier_profiles::gpus::GpuTable;
use qtier_profiles::projection::{DeviceClass, MeasuringHost, calibrate, gpu_target, project};
use qtier_profiles::recommend::Evidence;
use qtier_profiles::workload::{RequestShape, encoder_ops, roofline_seconds};
use qtier_profiles::{InstanceCatalog, RecommendOptions, Tiers, recommend};

/// The acceptance bound: projecting back onto the calibrating hardware reproduces the
/// measurement within 10%.
const SAME_HARDWARE_TOLERANCE: f64 = 0.10;

#[test]
fn calibrating_on_a_cpu_report_and_projecting_back_to_the_same_hardware_reproduces_it() {
    let shape = minilm();
    for seq in [32, 128] {
        let fixture = host_report(seq);
        for workload in &fixture.report.workloads {
            let request = RequestShape { batch: workload.batch, seq: workload.seq };
            let calibration = calibrate(&fixture.report, &fixture.label, &shape, request).unwrap();
            assert_eq!(calibration.class, DeviceClass::CpuVnni);
            assert_eq!(calibration.host.cores, 2.0);
            assert!(calibration.efficiency > 0.0 && calibration.efficiency < 1.0, "{}", calibration.efficiency);
            let host = MeasuringHost::of(&fixture.report.hardware, fixture.report.threads).as_target();
            let projection = project(&calibration, &encoder_ops(&shape, request, true), &host);
            let measured_p50 = workload.stats.p50 / 1e6;
            let error = (projection.p50_ms / measured_p50 - 1.0).abs();
            assert!(
                error <= SAME_HARDWARE_TOLERANCE,
                "{request}: projected {} vs measured {measured_p50}",
                projection.p50_ms
            );
            let measured_p99 = calibration.measured.p99_ms;
            let error = (projection.p99_ms / measured_p99 - 1.0).abs();
            assert!(
                error <= SAME_HARDWARE_TOLERANCE,
                "{request}: projected p99 {} vs {measured_p99}",
                projection.p99_ms
            );
        }
    }
}

/// Calibrated at one shape, the projection to the host's other measured shapes (4x the batch,
/// 4x the sequence, both) lands within the projection's range: a check of the range's judgement
/// on this host's data, not a proof.
#[test]
fn projections_to_other_measured_shapes_fall_within_the_range() {
    let shape = minilm();
    let reports = [host_report(32), host_report(128)];
    let from = RequestShape { batch: 1, seq: 32 };
    let calibration = calibrate(&reports[0].report, &reports[0].label, &shape, from).unwrap();
    let host = MeasuringHost::of(&reports[0].report.hardware, reports[0].report.threads).as_target();
    let mut checked = 0;
    for r in &reports {
        for w in &r.report.workloads {
            let request = RequestShape { batch: w.batch, seq: w.seq };
            let projection = project(&calibration, &encoder_ops(&shape, request, true), &host);
            let [low, high] = projection.range_of(projection.p50_ms);
            let measured = w.stats.p50 / 1e6;
            assert!(
                (low..=high).contains(&measured),
                "{request}: measured {measured:.3} ms outside the projection {:.3} ({low:.3}-{high:.3})",
                projection.p50_ms
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}

/// A `--device cuda` report of the MiniLM int8 model at b1 x s128 on the GPU the driver calls
/// `gpu`, with median `p50_ms`.
fn gpu_report(gpu: &str, p50_ms: f64) -> qtier_profiles::LabelledReport {
    let mut report = report(None, &VNNI_FLAGS, 2, vec![workload(1, 128, p50_ms, p50_ms * 1.5)]);
    report.hardware.gpu = Some(GpuHardware {
        name: gpu.into(),
        compute_capability: "9.0".into(),
        memory_bytes: 150_000_000_000,
        driver_version: "test".into(),
        driver_cuda_version: "13.0".into(),
        kernel_variant: "mma.m16n8k32 64x64".into(),
    });
    report.kernel = Some("cuda mma.m16n8k32 64x64".into());
    qtier_profiles::LabelledReport { label: format!("{gpu}.json"), report }
}

#[test]
fn a_gpu_report_calibrates_at_its_gpus_peaks_and_projects_catalog_gpus_at_theirs() {
    let shape = minilm();
    let request = RequestShape { batch: 1, seq: 128 };
    let measured_ms = 0.8;
    let r = gpu_report("NVIDIA H200", measured_ms);
    let calibration = calibrate(&r.report, &r.label, &shape, request).unwrap();
    assert_eq!(calibration.class, DeviceClass::Gpu);
    let h200 = GpuTable::builtin().unwrap().find("NVIDIA H200").unwrap().peaks();
    assert_eq!(calibration.host.peaks, h200);
    let ops = encoder_ops(&shape, request, true);
    let h200_roofline_ms = roofline_seconds(&ops, &h200) * 1e3;
    assert!((calibration.efficiency - h200_roofline_ms / measured_ms).abs() < 1e-12);
    // Back onto the measuring GPU: the measurement.
    let back = project(&calibration, &ops, &calibration.host.as_target());
    assert!((back.p50_ms - measured_ms).abs() < 1e-9, "{}", back.p50_ms);
    // Onto g4dn's T4 and g5's A10G: each one's own roofline over the same efficiency.
    let catalog = InstanceCatalog::builtin().unwrap();
    for (name, slower_than_h200) in [("g4dn.xlarge", true), ("g5.xlarge", true)] {
        let target = gpu_target(catalog.get(name).unwrap()).unwrap();
        let projected = project(&calibration, &ops, &target);
        let roofline_ms = roofline_seconds(&ops, &target.peaks) * 1e3;
        assert!((projected.p50_ms - roofline_ms / calibration.efficiency).abs() < 1e-9, "{name}");
        assert_eq!(projected.p50_ms > measured_ms, slower_than_h200, "{name}: {}", projected.p50_ms);
    }
}

#[test]
fn recommend_projects_gpu_types_from_a_gpu_report_and_names_a_gpu_it_cannot_use() {
    let options = RecommendOptions { allow_projected: true, model_shape: Some(minilm()), ..Default::default() };
    let catalog = InstanceCatalog::builtin().unwrap();
    let tiers = Tiers::builtin().unwrap();
    let r = recommend(&[gpu_report("NVIDIA H200", 0.8)], &catalog, &tiers, &options).unwrap();
    assert!(r.reports[0].role.contains("calibrates GPU"), "{}", r.reports[0].role);
    assert_eq!(r.reports[0].device(), "NVIDIA H200");
    let latency = |r: &qtier_profiles::Recommendation, name: &str| {
        r.latencies.iter().find(|l| l.instance == name).unwrap_or_else(|| panic!("{name}")).clone()
    };
    for name in ["g4dn.xlarge", "g5.xlarge", "p4d.24xlarge"] {
        let l = latency(&r, name);
        assert_eq!(l.basis, "projected", "{name}");
        let Evidence::Projected { notes, .. } = &l.evidence else { panic!("{name}: {:?}", l.evidence) };
        // The H200's int8 peak is 15x the T4's and 14x the A10G's, but 3.2x the A100's.
        let gap_noted = notes.iter().any(|n| n.contains("calibrated on NVIDIA H200"));
        assert_eq!(gap_noted, name != "p4d.24xlarge", "{name}: {notes:?}");
    }
    assert_eq!(latency(&r, "c6i.large").basis, "none");

    let r = recommend(&[gpu_report("NVIDIA GeForce RTX 4090", 0.8)], &catalog, &tiers, &options).unwrap();
    let role = &r.reports[0].role;
    assert!(role.contains("`NVIDIA GeForce RTX 4090`") && role.contains("gpus.toml"), "{role}");
    let Evidence::Unavailable { reason } = &latency(&r, "g4dn.xlarge").evidence else { panic!("g4dn projected") };
    assert!(reason.contains("GPU"), "{reason}");
}

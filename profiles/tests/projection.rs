//! Projection on the development host's measured reports (fixtures made by
//! `fixtures/make_host_report.sh`).

mod common;

use common::*;
use qtier_profiles::projection::{DeviceClass, MeasuringHost, calibrate, project};
use qtier_profiles::workload::{RequestShape, encoder_ops};

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

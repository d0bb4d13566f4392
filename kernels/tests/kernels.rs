//! Property and edge-case tests: every kernel's i32 accumulators equal the scalar reference's,
//! and every kernel's `forward` matches an f64 computation of the same quantized math.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use qtier_kernels::activation::{self, ACTIVATION_ABS_TOLERANCE};
use qtier_kernels::quant::quantize_row;
use qtier_kernels::{Activation, KernelError, KernelKind, QuantizedLinear, resolve_kernel};

/// Relative tolerance of the f32 epilogue against f64: `acc as f32`, two multiplies, one add and
/// the residual add each round once (5 roundings of 2^-24 = 3e-7), with margin for the magnitude
/// of the terms that cancel.
const EPILOGUE_REL_TOLERANCE: f64 = 2e-6;

/// Proptest cases per property and kernel: the suite must stay well under a minute in release
/// mode on 2 cores.
const CASES: u32 = 48;

fn skip_unless_supported(kind: KernelKind) -> bool {
    if kind.is_supported() {
        false
    } else {
        println!("SKIPPED: {kind} not supported on this CPU");
        true
    }
}

fn run<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

/// An int8 value biased towards the extremes and zero.
fn q8() -> impl Strategy<Value = i8> {
    prop_oneof![
        2 => Just(127i8),
        2 => Just(-127i8),
        1 => Just(0i8),
        10 => -127i8..=127,
    ]
}

#[derive(Debug, Clone)]
struct Case {
    m: usize,
    k: usize,
    n: usize,
    w: Vec<i8>,
    x: Vec<i8>,
}

fn shapes() -> impl Strategy<Value = (usize, usize, usize)> {
    prop_oneof![
        3 => (
            prop_oneof![1 => Just(1usize), 1 => 1usize..=8, 2 => 1usize..=300],
            prop_oneof![1 => 1usize..=8, 2 => 1usize..=300],
            prop_oneof![1 => 1usize..=20, 2 => 1usize..=200],
        ),
        // K beyond one K chunk (96 groups = 384), so tiles accumulate across chunks.
        1 => (1usize..=40, 380usize..=1100, 1usize..=150),
    ]
}

fn int_case() -> impl Strategy<Value = Case> {
    shapes().prop_flat_map(|(m, k, n)| {
        let zero_row = prop::option::of(0..m);
        let zero_col = prop::option::of(0..n);
        (prop::collection::vec(q8(), n * k), prop::collection::vec(q8(), m * k), zero_row, zero_col).prop_map(
            move |(mut w, mut x, zr, zc)| {
                if let Some(r) = zr {
                    x[r * k..(r + 1) * k].fill(0);
                }
                if let Some(c) = zc {
                    w[c * k..(c + 1) * k].fill(0);
                }
                Case { m, k, n, w, x }
            },
        )
    })
}

fn reference_acc(c: &Case) -> Vec<i32> {
    let mut out = vec![0i32; c.m * c.n];
    for i in 0..c.m {
        for j in 0..c.n {
            let mut s = 0i64;
            for kk in 0..c.k {
                s += i64::from(c.x[i * c.k + kk]) * i64::from(c.w[j * c.k + kk]);
            }
            out[i * c.n + j] = i32::try_from(s).unwrap();
        }
    }
    out
}

fn layer(c: &Case, kind: KernelKind) -> QuantizedLinear {
    let scales = vec![1.0f32; c.n];
    QuantizedLinear::new(&c.w, &scales, None, c.n, c.k).unwrap().with_kernel(kind).unwrap()
}

fn check_accumulators(kind: KernelKind) {
    if skip_unless_supported(kind) {
        return;
    }
    run(int_case(), |c| {
        let l = layer(&c, kind);
        let got = l.accumulate_i32(kind, &c.x, c.m).unwrap();
        let scalar = l.accumulate_i32(KernelKind::Scalar, &c.x, c.m).unwrap();
        prop_assert_eq!(&scalar, &reference_acc(&c));
        prop_assert_eq!(got, scalar);
        Ok(())
    });
}

/// f64 erf: Maclaurin series below 4 (error < 1e-9 after cancellation), +-1 beyond
/// (erfc(4) = 1.5e-8).
fn erf64(x: f64) -> f64 {
    if x.abs() >= 4.0 {
        return x.signum();
    }
    let mut term = x;
    let mut sum = x;
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn act64(a: Activation, v: f64) -> f64 {
    match a {
        Activation::Relu => v.max(0.0),
        Activation::GeluErf => 0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            let u = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v);
            0.5 * v * (1.0 + u.tanh())
        }
        Activation::Silu => v / (1.0 + (-v).exp()),
        _ => v,
    }
}

#[derive(Debug, Clone)]
struct FloatCase {
    m: usize,
    k: usize,
    n: usize,
    w: Vec<i8>,
    scales: Vec<f32>,
    bias: Option<Vec<f32>>,
    x: Vec<f32>,
    residual: Option<Vec<f32>>,
    act: Activation,
}

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::None),
        Just(Activation::Relu),
        Just(Activation::GeluErf),
        Just(Activation::GeluTanh),
        Just(Activation::Silu),
    ]
}

/// An activation value: ordinary, zero, or (rarely) huge, so some rows have one huge value.
fn xval() -> impl Strategy<Value = f32> {
    prop_oneof![
        20 => -4.0f32..4.0,
        2 => Just(0.0f32),
        1 => prop_oneof![Just(1e30f32), Just(-3e4f32)],
    ]
}

fn float_case() -> impl Strategy<Value = FloatCase> {
    shapes().prop_flat_map(|(m, k, n)| {
        (
            prop::collection::vec(q8(), n * k),
            prop::collection::vec(1e-4f32..0.05, n),
            prop::option::of(prop::collection::vec(-2.0f32..2.0, n)),
            prop::collection::vec(xval(), m * k),
            prop::option::of(prop::collection::vec(-2.0f32..2.0, m * n)),
            activation(),
            prop::option::of(0..m),
        )
            .prop_map(move |(w, scales, bias, mut x, residual, act, zr)| {
                if let Some(r) = zr {
                    x[r * k..(r + 1) * k].fill(0.0);
                }
                FloatCase { m, k, n, w, scales, bias, x, residual, act }
            })
    })
}

fn check_forward(kind: KernelKind) {
    if skip_unless_supported(kind) {
        return;
    }
    run(float_case(), |c| {
        let l = QuantizedLinear::new(&c.w, &c.scales, c.bias.as_deref(), c.n, c.k)
            .unwrap()
            .with_kernel(kind)
            .unwrap()
            .with_activation(c.act);
        let mut out = vec![f32::NAN; c.m * c.n];
        l.forward_into(&c.x, c.m, &mut out, c.residual.as_deref()).unwrap();
        check_against_reference(&c, &out, kind)
    });
}

/// Checks `out` (the layer's output for case `c`) against an f64 computation of the same
/// quantized math, within the epilogue's and the activation's tolerances.
fn check_against_reference(c: &FloatCase, out: &[f32], kind: KernelKind) -> Result<(), TestCaseError> {
    for i in 0..c.m {
        let mut q = vec![0i8; c.k];
        let xs = f64::from(quantize_row(&c.x[i * c.k..(i + 1) * c.k], &mut q));
        for j in 0..c.n {
            let acc: i64 = (0..c.k).map(|kk| i64::from(q[kk]) * i64::from(c.w[j * c.k + kk])).sum();
            let lin = acc as f64 * xs * f64::from(c.scales[j]);
            let b = c.bias.as_ref().map_or(0.0, |b| f64::from(b[j]));
            let r = c.residual.as_ref().map_or(0.0, |r| f64::from(r[i * c.n + j]));
            let v = lin + b;
            let want = act64(c.act, v) + r;
            let got = f64::from(out[i * c.n + j]);
            let tol = EPILOGUE_REL_TOLERANCE * (lin.abs() + b.abs() + r.abs() + 1e-30)
                + f64::from(ACTIVATION_ABS_TOLERANCE) * v.abs().max(1.0);
            prop_assert!(
                (got - want).abs() <= tol,
                "kernel {} act {} at ({}, {}): got {} want {} tol {}",
                kind,
                c.act,
                i,
                j,
                got,
                want,
                tol
            );
        }
    }
    Ok(())
}

macro_rules! kernel_tests {
    ($($name:ident => $kind:expr),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[test]
            fn accumulators_equal_scalar_reference() {
                check_accumulators($kind);
            }

            #[test]
            fn forward_matches_f64_reference() {
                check_forward($kind);
            }

            #[test]
            fn extreme_values_do_not_overflow() {
                if skip_unless_supported($kind) {
                    return;
                }
                // All products 127 * 127 (and -127 * 127) over a long K: the largest sums the
                // +128 trick and vpmaddubsw pairs can produce.
                for &(xv, wv) in &[(127i8, 127i8), (-127, 127), (-127, -127), (127, -127)] {
                    let (m, k, n) = (7, 4099, 33);
                    let c = Case { m, k, n, w: vec![wv; n * k], x: vec![xv; m * k] };
                    let got = layer(&c, $kind).accumulate_i32($kind, &c.x, m).unwrap();
                    let want = i32::from(xv) * i32::from(wv) * k as i32;
                    assert!(got.iter().all(|&v| v == want), "{} {} {}", xv, wv, $kind);
                }
            }

            #[test]
            fn row_of_one_huge_value() {
                if skip_unless_supported($kind) {
                    return;
                }
                let (m, k, n) = (3, 67, 21);
                let w: Vec<i8> = (0..n * k).map(|i| ((i * 31) % 255) as i8).map(|v| v.max(-127)).collect();
                let mut x = vec![1e-3f32; m * k];
                x[k + 5] = 1e30;
                x[2 * k..].fill(0.0);
                let l = QuantizedLinear::new(&w, &vec![0.01; n], None, n, k)
                    .unwrap()
                    .with_kernel($kind)
                    .unwrap();
                let y = l.forward(&x, m).unwrap();
                for j in 0..n {
                    let want = 1e30f64 / 127.0 * 127.0 * f64::from(w[j * k + 5]) * 0.01;
                    let got = f64::from(y[n + j]);
                    assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} vs {want}");
                    assert_eq!(y[2 * n + j], 0.0);
                }
            }
        }
    )*};
}

kernel_tests! {
    scalar => KernelKind::Scalar,
    avx2 => KernelKind::Avx2,
    avxvnni => KernelKind::AvxVnni,
    avx512vnni => KernelKind::Avx512Vnni,
}

#[test]
fn activation_approximations_match_f64() {
    for a in [Activation::Relu, Activation::GeluErf, Activation::GeluTanh, Activation::Silu] {
        let mut worst = 0.0f64;
        for i in -40_000..=40_000 {
            let x = i as f32 * 5e-4;
            let got = f64::from(a.apply(x));
            let want = act64(a, f64::from(x));
            worst = worst.max((got - want).abs() / f64::from(x.abs()).max(1.0));
        }
        assert!(worst <= f64::from(ACTIVATION_ABS_TOLERANCE), "{a}: {worst}");
    }
    assert_eq!(activation::exp_approx(0.0), 1.0);
    assert_eq!(activation::gelu_erf(-100.0), 0.0);
    assert_eq!(activation::silu(1e30), 1e30);
}

#[test]
fn exp_approx_is_within_a_few_ulp_over_its_range_and_clamps_outside() {
    let mut worst = 0.0f64;
    let mut x = -87.0f32;
    while x <= 88.0 {
        let want = f64::from(x).exp();
        worst = worst.max((f64::from(activation::exp_approx(x)) - want).abs() / want);
        x += 0.0137;
    }
    assert!(worst < 4.0 * f64::from(f32::EPSILON), "worst relative error {worst}");
    assert_eq!(activation::exp_approx(-1000.0), activation::exp_approx(-87.0));
    assert_eq!(activation::exp_approx(f32::MAX), activation::exp_approx(88.0));
    assert!(activation::exp_approx(88.0).is_finite());
}

#[test]
fn qtier_kernel_values_parse_or_fail_clearly() {
    assert_eq!(resolve_kernel(Some("scalar")), Ok(KernelKind::Scalar));
    assert_eq!(resolve_kernel(Some(" AVX2 ")).is_ok(), KernelKind::Avx2.is_supported());
    assert_eq!(resolve_kernel(None), Ok(KernelKind::best_supported()));
    let e = resolve_kernel(Some("neon")).unwrap_err();
    assert!(matches!(e, KernelError::UnknownKernel { .. }));
    assert!(e.to_string().contains("avx512vnni"), "{e}");
    for kind in KernelKind::ALL {
        let r = resolve_kernel(Some(kind.name()));
        if kind.is_supported() {
            assert_eq!(r, Ok(kind));
        } else {
            assert!(matches!(r, Err(KernelError::UnsupportedKernel { .. })));
        }
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let w = vec![1i8; 6];
    assert!(matches!(
        QuantizedLinear::new(&w, &[1.0; 2], None, 2, 4),
        Err(KernelError::ShapeMismatch { what: "weights", .. })
    ));
    assert!(matches!(
        QuantizedLinear::new(&w, &[1.0; 3], None, 2, 3),
        Err(KernelError::ShapeMismatch { what: "scales", .. })
    ));
    assert!(matches!(
        QuantizedLinear::new(&w, &[1.0; 2], Some(&[0.0]), 2, 3),
        Err(KernelError::ShapeMismatch { what: "bias", .. })
    ));
    assert!(matches!(
        QuantizedLinear::new(&w, &[1.0, f32::NAN], None, 2, 3),
        Err(KernelError::NonFinite { what: "scales", index: 1 })
    ));
    let l = QuantizedLinear::new(&w, &[1.0; 2], None, 2, 3).unwrap();
    assert!(matches!(l.forward(&[0.0; 5], 2), Err(KernelError::ShapeMismatch { what: "x", .. })));
    let mut out = [0.0; 3];
    assert!(matches!(
        l.forward_into(&[0.0; 6], 2, &mut out, None),
        Err(KernelError::OutputTooSmall { needed: 4, found: 3 })
    ));
    let mut out = [0.0; 4];
    assert!(matches!(
        l.forward_into(&[0.0; 6], 2, &mut out, Some(&[0.0; 3])),
        Err(KernelError::ShapeMismatch { what: "residual", .. })
    ));
    assert!(l.forward(&[], 0).unwrap().is_empty());
    assert!(matches!(l.clone().with_threads(0), Err(KernelError::InvalidDimension { .. })));
    assert!(matches!(l.accumulate_i32(KernelKind::Scalar, &[0; 5], 2), Err(KernelError::ShapeMismatch { .. })));
}

/// One row (the GEMV path) large enough to be split over threads (2 M N K >= 1 M operations),
/// with N not a multiple of 64 (or 16), bias, activation and residual: every kernel gives the
/// same output on 1, 2, 3 and 7 tasks, and it matches the f64 reference. At K = 300 a panel
/// holds less than the caller's lead, so parts start and end inside column blocks.
#[test]
fn gemv_split_over_threads_matches_reference() {
    for (k, n) in [(1031, 601), (300, 1801)] {
        let m = 1;
        let c = FloatCase {
            m,
            k,
            n,
            w: (0..n * k).map(|i| ((i * 7 + i / 11) % 255) as i8).map(|v| v.max(-127)).collect(),
            scales: (0..n).map(|j| 1e-3 + j as f32 * 1e-5).collect(),
            bias: Some((0..n).map(|j| (j % 17) as f32 * 0.1 - 0.8).collect()),
            x: (0..k).map(|i| ((i * 13) % 101) as f32 / 25.0 - 2.0).collect(),
            residual: Some((0..n).map(|j| (j % 5) as f32 - 2.0).collect()),
            act: Activation::GeluErf,
        };
        check_thread_splits(&c);
    }
}

/// Every supported kernel gives `c` the same output on 1, 2, 3 and 7 tasks, and the one-task
/// output matches the f64 reference.
fn check_thread_splits(c: &FloatCase) {
    let (m, k, n) = (c.m, c.k, c.n);
    for kind in [KernelKind::Scalar, KernelKind::Avx2, KernelKind::AvxVnni, KernelKind::Avx512Vnni] {
        if skip_unless_supported(kind) {
            continue;
        }
        let l = QuantizedLinear::new(&c.w, &c.scales, c.bias.as_deref(), n, k)
            .unwrap()
            .with_kernel(kind)
            .unwrap()
            .with_activation(c.act);
        let mut one = vec![f32::NAN; m * n];
        l.clone().with_threads(1).unwrap().forward_into(&c.x, m, &mut one, c.residual.as_deref()).unwrap();
        check_against_reference(c, &one, kind).unwrap();
        for t in [2, 3, 7] {
            let mut y = vec![f32::NAN; m * n];
            l.clone().with_threads(t).unwrap().forward_into(&c.x, m, &mut y, c.residual.as_deref()).unwrap();
            assert_eq!(y, one, "kernel {kind}, {m}x{k}x{n}, threads {t}");
        }
    }
}

/// A small batch (rows quantized in parallel, then split over columns) with bias, activation,
/// residual and a different scale per row: the same output on 1, 2, 3 and 7 tasks, matching
/// the f64 reference.
#[test]
fn small_batch_split_over_threads_matches_reference() {
    let (m, k, n) = (20, 300, 601);
    let c = FloatCase {
        m,
        k,
        n,
        w: (0..n * k).map(|i| ((i * 5 + i / 7) % 255) as i8).map(|v| v.max(-127)).collect(),
        scales: (0..n).map(|j| 2e-3 + j as f32 * 1e-5).collect(),
        bias: Some((0..n).map(|j| (j % 13) as f32 * 0.1 - 0.6).collect()),
        // Rows of different magnitudes, so each has its own scale.
        x: (0..m * k).map(|i| (((i * 17) % 103) as f32 / 25.0 - 2.0) * (1.0 + (i / k) as f32 * 0.3)).collect(),
        residual: Some((0..m * n).map(|j| (j % 7) as f32 - 3.0).collect()),
        act: Activation::Silu,
    };
    check_thread_splits(&c);
}

#[test]
fn threads_split_gives_identical_results() {
    let (m, k, n) = (37, 517, 300);
    let w: Vec<i8> = (0..n * k).map(|i| ((i * 7) % 255) as i8).map(|v| v.max(-127)).collect();
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 13) % 101) as f32 - 50.0).collect();
    let base = QuantizedLinear::new(&w, &vec![0.02; n], None, n, k).unwrap();
    let one = base.clone().with_threads(1).unwrap().forward(&x, m).unwrap();
    for t in [2, 3, 7] {
        let y = base.clone().with_threads(t).unwrap().forward(&x, m).unwrap();
        assert_eq!(y, one, "threads {t}");
    }
}

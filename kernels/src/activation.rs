//! Activation functions of the fused epilogue.
//!
//! Each function is written branch-free with only arithmetic, `min`/`max` and bit casts, so the
//! compiler vectorizes the epilogue loops that call them inside each kernel's `#[target_feature]`
//! function (no libm calls, which would block vectorization). The same function serves the scalar
//! reference and every SIMD kernel, so kernels differ only by FMA contraction, not by formula.
//! Accuracy against f64 is checked in the tests with [`ACTIVATION_ABS_TOLERANCE`].

use std::fmt;

/// Largest absolute error of these approximations against the exact f64 function (per unit of
/// `max(1, |x|)`), measured by the tests over [-20, 20]: the erf approximation (Abramowitz &
/// Stegun 7.1.26) is good to 1.5e-7, exp to a few ulp; the bound leaves room for f32 rounding.
pub const ACTIVATION_ABS_TOLERANCE: f32 = 2e-6;

/// Activation applied after `acc * x_scale * w_scale + bias`, before the residual add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Activation {
    /// No activation (identity).
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// GELU with the exact erf form: `0.5 x (1 + erf(x / sqrt 2))` (BERT, PyTorch default).
    GeluErf,
    /// GELU with the tanh approximation (GPT-2, `approximate="tanh"`).
    GeluTanh,
    /// SiLU / swish: `x * sigmoid(x)` (Llama MLP).
    Silu,
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activation::None => "none",
            Activation::Relu => "relu",
            Activation::GeluErf => "gelu_erf",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
        })
    }
}

impl Activation {
    /// Applies the activation to one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::GeluErf => gelu_erf(x),
            Activation::GeluTanh => gelu_tanh(x),
            Activation::Silu => silu(x),
        }
    }
}

// Round-to-nearest by the 1.5 * 2^23 trick: exact for |v| < 2^22, vectorizes to one add/sub pair.
const ROUND_MAGIC: f32 = 12_582_912.0;
// exp(x) underflows to 0 below about -87.3 and overflows above 88.7 in f32.
const EXP_MIN_ARG: f32 = -87.0;
const EXP_MAX_ARG: f32 = 88.0;

/// `e^x` for f32, branch-free: range reduction by `ln 2` (Cody-Waite, two constants) and a
/// degree-6 polynomial; relative error a few ulp over the clamped range [-87, 88].
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(EXP_MIN_ARG, EXP_MAX_ARG);
    let n = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor coefficients 1/k!; |r| <= ln2/2 so degree 6 leaves < 1e-7 relative error.
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n without a float-to-int conversion (which does not vectorize): adding 2^23 + 127 to
    // the integer-valued n in [-126, 127] leaves n + 127 in the low mantissa bits, and shifting
    // those into the exponent field gives 2^n.
    const EXPONENT_MAGIC: f32 = 8_388_735.0;
    p * f32::from_bits((n + EXPONENT_MAGIC).to_bits() << 23)
}

/// `erf(x)` by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7).
#[inline(always)]
pub fn erf_approx(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
    let y = 1.0 - poly * exp_approx(-a * a);
    f32::from_bits(y.to_bits() | (x.to_bits() & 0x8000_0000))
}

/// `tanh(x)` as `1 - 2 / (e^{2x} + 1)`, sign-symmetric.
#[inline(always)]
pub fn tanh_approx(x: f32) -> f32 {
    let a = x.abs();
    let e = exp_approx(2.0 * a);
    let y = 1.0 - 2.0 / (e + 1.0);
    f32::from_bits(y.to_bits() | (x.to_bits() & 0x8000_0000))
}

/// GELU, erf form.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_approx(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU, tanh approximation.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const C: f32 = 0.044_715;
    0.5 * x * (1.0 + tanh_approx(SQRT_2_OVER_PI * (x + C * x * x * x)))
}

/// SiLU: `x / (1 + e^{-x})`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_approx(-x))
}

/// Applies `activation` to every value, with the widest instruction set of the selected kernel
/// (the epilogue's own vectorized loop), for callers that add something before the activation.
pub fn apply_in_place(activation: Activation, values: &mut [f32]) {
    crate::gemm::finish_row(activation, values);
}

//! The one error type of this crate.

use crate::dispatch::KernelKind;

/// Everything that can go wrong when building or running a [`crate::QuantizedLinear`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A buffer's length does not match the shape it was given with.
    #[error("{what}: expected {expected} elements, found {found}")]
    ShapeMismatch {
        /// Which buffer (`weights`, `scales`, `bias`, `x`, `residual`).
        what: &'static str,
        /// Length the shape asks for.
        expected: usize,
        /// Length that was passed.
        found: usize,
    },
    /// The output buffer is smaller than `m * n`.
    #[error("output buffer too small: need {needed} elements, found {found}")]
    OutputTooSmall {
        /// `m * n`.
        needed: usize,
        /// Length that was passed.
        found: usize,
    },
    /// A dimension is zero or too large for exact i32 accumulation.
    #[error("invalid dimension {what} = {value}: {reason}")]
    InvalidDimension {
        /// Name of the dimension (`n`, `k`, `threads`).
        what: &'static str,
        /// The value that was passed.
        value: usize,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A weight byte outside the symmetric range [-127, 127] (i.e. -128).
    #[error("weight at row {row}, column {col} is -128; symmetric int8 weights lie in [-127, 127]")]
    WeightOutOfRange {
        /// Output channel (row of the `[N, K]` weight matrix).
        row: usize,
        /// Input feature (column of the weight matrix).
        col: usize,
    },
    /// A scale or bias value is NaN or infinite.
    #[error("{what}[{index}] is not finite")]
    NonFinite {
        /// Which buffer (`scales` or `bias`).
        what: &'static str,
        /// Index of the offending value.
        index: usize,
    },
    /// `QTIER_KERNEL` names no kernel.
    #[error("QTIER_KERNEL={value:?} is not a kernel; expected one of scalar, avx2, avxvnni, avx512vnni")]
    UnknownKernel {
        /// The value found in the environment.
        value: String,
    },
    /// A kernel was requested (by `QTIER_KERNEL` or by the caller) that this CPU cannot run.
    #[error("kernel {kind} is not supported on this CPU (detected: {detected})")]
    UnsupportedKernel {
        /// The kernel asked for.
        kind: KernelKind,
        /// The best kernel this CPU supports.
        detected: KernelKind,
    },
    /// [`crate::set_threads`] was called after the kernels' pool had started with another size.
    #[error("the kernels' thread pool already runs {threads} threads; {requested} were asked for after it started")]
    PoolAlreadyStarted {
        /// Threads the pool runs (the caller included).
        threads: usize,
        /// Threads asked for.
        requested: usize,
    },
    /// A measurement in [`crate::limits`] was asked for with parameters it cannot use.
    #[error("invalid limits parameter {what}: {reason}")]
    InvalidLimitsParameter {
        /// Parameter name.
        what: &'static str,
        /// Why it is rejected.
        reason: &'static str,
    },
}

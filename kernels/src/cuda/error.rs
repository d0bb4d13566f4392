//! [`CudaError`]: everything the CUDA path can report.

use super::arch::GpuArch;
use crate::error::KernelError;

/// What to do when `libnvrtc.so` cannot be loaded (also printed by the NVRTC test).
pub const NVRTC_HINT: &str = "install NVRTC (`pip install nvidia-cuda-nvrtc==13.0.88`, or a CUDA toolkit) and add the \
     directory holding libnvrtc.so.13 (for the wheel: <site-packages>/nvidia/cu13/lib) to LD_LIBRARY_PATH; \
     scripts/test.sh does this in ${XDG_CACHE_HOME:-$HOME/.cache}/qtier/nvrtc-venv";

/// What to do when `libcuda.so` (the NVIDIA driver) cannot be loaded.
pub const DRIVER_HINT: &str = "no NVIDIA driver was found (libcuda.so.1); this machine has no usable GPU, so use the \
     CPU kernels (qtier_kernels::QuantizedLinear) or run on a host with an NVIDIA GPU and driver";

/// An error of the CUDA path ([`crate::cuda`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// This build of qtier-kernels has no CUDA support (the `cuda` cargo feature is off).
    #[error(
        "qtier-kernels was built without CUDA: rebuild with the `cuda` feature (cargo build --features qtier-kernels/cuda)"
    )]
    NotBuilt,
    /// A shared library the CUDA path loads at run time is missing.
    #[error("{library} could not be loaded: {hint}")]
    LibraryNotFound {
        /// The library (`libcuda.so` or `libnvrtc.so`).
        library: &'static str,
        /// How to get it.
        hint: &'static str,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver call {call} failed: {message}")]
    Driver {
        /// What was being done (`cuCtxCreate`, `launch qtier_gemm_s8_dp4a`, ...).
        call: String,
        /// The driver's error.
        message: String,
    },
    /// NVRTC rejected a kernel source; `log` is NVRTC's program log.
    #[error("NVRTC failed to compile {file} for {arch} ({status}):\n{log}")]
    Compile {
        /// The `.cu` file.
        file: &'static str,
        /// Target architecture.
        arch: GpuArch,
        /// NVRTC's status.
        status: String,
        /// NVRTC's program log.
        log: String,
    },
    /// The GPU lacks what the kernels need: older than the oldest architecture they support, or
    /// without the instructions of a GEMM kernel a layer was forced to.
    #[error("GPU architecture {arch} is not supported: {reason}")]
    UnsupportedArch {
        /// The device's architecture.
        arch: GpuArch,
        /// Why.
        reason: &'static str,
    },
    /// An argument is out of the range a kernel handles.
    #[error("invalid {what} = {value}: {reason}")]
    InvalidArgument {
        /// Argument name.
        what: &'static str,
        /// The value passed.
        value: usize,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// An outlier rule ([`super::linear::OutlierRule`]) the kernels cannot use.
    #[error("invalid outlier rule ({rule}): {reason}")]
    InvalidOutlierRule {
        /// The rule, as `Debug` prints it.
        rule: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A launch whose arguments do not follow the kernel's parameter list: a bug in the host
    /// code, refused before the driver would read the wrong bytes as the kernel's parameters.
    #[error("kernel {kernel} takes ({expected}) but the launch passed ({passed})")]
    LaunchArguments {
        /// The kernel.
        kernel: &'static str,
        /// Its parameter kinds ([`super::source::KernelFn::params`]).
        expected: String,
        /// The kinds of the arguments passed.
        passed: String,
    },
    /// A device buffer was passed to a device (or layer) other than the one that owns it.
    #[error("{what} lives on another CUDA device handle than the one it was used with")]
    WrongDevice {
        /// Which buffer.
        what: &'static str,
    },
    /// Shapes, weights or scales rejected by the same checks as the CPU layer.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// `value` as a kernel's `int` argument called `what`; fails beyond `i32::MAX`.
pub(crate) fn int_arg(what: &'static str, value: usize) -> Result<i32, CudaError> {
    i32::try_from(value).map_err(|_| CudaError::InvalidArgument { what, value, reason: "exceeds i32::MAX" })
}

/// `a * b` (an element count called `what`); fails when it overflows `usize`.
pub(crate) fn checked_product(what: &'static str, a: usize, b: usize) -> Result<usize, CudaError> {
    a.checked_mul(b).ok_or(CudaError::Kernel(KernelError::InvalidDimension {
        what,
        value: a,
        reason: "product overflows usize",
    }))
}

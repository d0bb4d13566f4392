//! The CUDA path: the fused int8 Linear, the fp32 Linear and the encoder ops on NVIDIA GPUs.
//!
//! Kernels live in real `.cu` files under `kernels/cuda/`, embedded with `include_str!`
//! ([`source`]) and compiled by NVRTC ([`nvrtc`]) for the device's `sm_XY` on first use, then
//! cached in memory (per device) and on disk ([`cache`]). No nvcc and no CUDA headers are
//! needed at build time: cudarc loads `libcuda.so` and `libnvrtc.so` at run time, and checks
//! that they exist before touching them, so a machine without a GPU gets
//! [`CudaError::LibraryNotFound`], never a panic. Without the `cuda` cargo feature the same API
//! exists and every entry point returns [`CudaError::NotBuilt`].
pub mod arch;
pub mod cache;
pub mod device;
pub mod encoder;
pub mod error;
pub mod float_linear;
pub mod launch;
pub mod layout;
pub mod linear;
pub mod nvrtc;
pub mod source;

pub use arch::{GpuArch, NVRTC_CHECK_ARCHES};
pub use device::{CudaDevice, DeviceBuffer, DeviceElem};
pub use error::CudaError;
pub use float_linear::CudaLinear;
pub use launch::GemmKernel;
pub use linear::{CudaQuantizedLinear, OutlierRule, QuantizedActivations};

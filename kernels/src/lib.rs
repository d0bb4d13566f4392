//! qtier-kernels: fused int8 Linear layers for x86-64 CPUs, and for NVIDIA GPUs through NVRTC
//! ([`cuda`], compiled in with the `cuda` feature).
//!
//! [`QuantizedLinear`] holds symmetric per-channel int8 weights packed once ([`pack`]) and runs
//! `y = act(x_q W_q^T * x_scale * w_scale + bias) + residual` in one pass over each output tile:
//! activations are quantized per row (per token) on the fly ([`quant`]), the int8 GEMM
//! accumulates exactly in i32, and the epilogue (scales, bias, [`Activation`], residual) runs on
//! each tile while it is in L1 (the AVX-512 kernel dequantizes straight from its accumulator
//! registers into the output; the activation and residual follow on the rows it just wrote).
//!
//! Kernels ([`KernelKind`]): a scalar reference, AVX2 (`vpmaddubsw`, exact, no saturation),
//! AVX-VNNI (256-bit `vpdpbusd`) and AVX-512 VNNI (512-bit `vpdpbusd`, 6x64 tiles). The CPU is
//! probed once; [`selected_kernel`] says which kernel runs (callers log and report it) and
//! `QTIER_KERNEL=scalar|avx2|avxvnni|avx512vnni` forces one. Every kernel's i32 accumulators equal
//! the scalar reference's exactly ([`QuantizedLinear::accumulate_i32`] exposes them to tests).
//!
//! Work is split over output column blocks (and rows, when there are few columns) into
//! [`QuantizedLinear::threads`] parts, run by the caller and a small spin-then-park worker pool
//! (rayon's wake-up latency cost 2x on the GEMV; see `pool.rs`); calls under about 1 MOP stay on
//! the calling thread. [`limits`] measures this machine's int8 peak and read bandwidth so
//! benchmarks can report a fraction of the limit.
//!
//! ```
//! use qtier_kernels::{Activation, QuantizedLinear};
//!
//! // 2 output features, 3 inputs: int8 weights [N, K], per-channel scales, bias.
//! let layer = QuantizedLinear::new(&[1, 0, -1, 127, 127, 127], &[0.5, 0.01], Some(&[0.0, 1.0]), 2, 3)?
//!     .with_activation(Activation::Relu);
//! let y = layer.forward(&[1.0, 2.0, 3.0], 1)?; // one token
//! assert_eq!(y.len(), 2);
//! assert!((y[0] - 0.0).abs() < 1e-6); // relu(0.5 * (1 - 3)) = 0
//! assert!((y[1] - 8.62).abs() < 0.05); // 0.01 * 127 * 6 + 1, up to int8 rounding of x
//! println!("kernel: {}", layer.kernel());
//! # Ok::<(), qtier_kernels::KernelError>(())
//! ```

#![warn(missing_docs)]

pub mod activation;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avxvnni;
pub mod cuda;
pub mod dispatch;
pub mod error;
mod gemm;
pub mod half_linear;
pub mod limits;
mod linear;
pub mod pack;
mod pool;
pub mod quant;
mod scalar;

pub use activation::Activation;
pub use dispatch::{KERNEL_ENV_VAR, KernelKind, resolve_kernel, selected_kernel};
pub use error::KernelError;
pub use half_linear::{HalfLinear, HalfType};
pub use linear::QuantizedLinear;
pub use pool::{SPIN_BEFORE_PARK, SPIN_ENV_VAR, parallelism, run_parts, set_threads};

/// The reference Linear shapes `(m, k, n)` every kernel benchmark and check measures: MiniLM's
/// FFN at batch 1 and 32, BERT-base's at 128 tokens, and Llama-7B's projections at decode (m = 1),
/// small-batch decode (16) and prefill (128).
pub const REFERENCE_SHAPES: [(usize, usize, usize); 7] = [
    (1, 384, 1536),
    (32, 384, 1536),
    (128, 768, 3072),
    (1, 4096, 4096),
    (1, 4096, 11008),
    (16, 4096, 11008),
    (128, 4096, 4096),
];

//! qtier-bench: latency benchmarks with honest statistics.
//!
//! - [`timing`]: the closed-loop timing loop (warm-up until stable, then minimum duration and
//!   sample count), every sample kept.
//! - [`stats`]: pure statistics on a validated [`stats::Sample`].
//! - [`kernel_bench`]: `qtier bench kernels`, the int8 Linear against the machine's limits and
//!   candle's f32 and Q8_0 matmuls.
//! - [`model_bench`]: `qtier bench model`, end-to-end latency of a model per batch size.
#![warn(missing_docs)]
#![deny(unsafe_code)]

mod error;
pub mod kernel_bench;
pub mod model_bench;
pub mod stats;
pub mod timing;

pub use error::{BenchError, Result};

//! qtier-bench: latency benchmarks with honest statistics.
//!
//! - [`timing`]: the closed-loop timing loop (warm-up until stable, then minimum duration and
//!   sample count), every sample kept.
//! - [`stats`]: pure statistics on a validated [`stats::Sample`].
//! - [`kernel_bench`]: `qtier bench kernels`, the int8 Linear against the machine's limits and
//!   candle's f32 and Q8_0 matmuls.
//! - [`model_bench`]: `qtier bench model`, end-to-end latency of a model per batch size.
//! - [`decoder_bench`]: `qtier bench model` on a decoder: TTFT and TPOT against the memory bound.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod compare;
pub mod decoder_bench;
mod error;
pub mod export;
pub mod hardware;
pub mod kernel_bench;
pub mod load;
pub mod model_bench;
pub mod stats;
pub mod timing;

pub use error::{BenchError, Result};

use serde::{Deserialize, Serialize};

/// Where a report came from: which qtier, built from which revision, run how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    /// qtier's version.
    pub qtier_version: String,
    /// The git revision qtier was built from (`-dirty` when built with uncommitted changes).
    pub git_revision: String,
    /// The full command line.
    pub command: Vec<String>,
    /// When the run started, milliseconds since the Unix epoch.
    #[serde(default)]
    pub started_unix_ms: u64,
}

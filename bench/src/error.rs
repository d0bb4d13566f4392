//! The one error type of this crate.

/// Everything that can go wrong while benchmarking.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A workload description that does not parse (`--shapes 1x384`, `--batch 0`, ...).
    #[error("invalid workload `{text}`: {problem}")]
    InvalidWorkload {
        /// What was given.
        text: String,
        /// Why it is invalid.
        problem: String,
    },
    /// The statistics of a sample could not be computed.
    #[error("statistics: {0}")]
    Stats(#[from] crate::stats::StatsError),
    /// An int8 kernel failed.
    #[error("int8 kernel: {0}")]
    Kernel(#[from] qtier_kernels::KernelError),
    /// Loading or running the model failed.
    #[error("model: {0}")]
    Model(String),
    /// A peer library failed.
    #[error("peer {peer}: {problem}")]
    Peer {
        /// The peer (`candle f32 matmul`, ...).
        peer: &'static str,
        /// What went wrong.
        problem: String,
    },
}

/// Short for `Result<T, BenchError>`.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

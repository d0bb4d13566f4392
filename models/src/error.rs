//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file that cannot be read.
    #[error("{path}: {action}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The underlying error (part of the message, not a `source`).
        cause: std::io::Error,
    },
    /// A configuration file that is missing a field or holds a bad value.
    #[error("{path}: {problem}")]
    InvalidConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A checkpoint that lacks a tensor the architecture needs, or has it in the wrong shape.
    #[error("{path}: tensor `{tensor}`: {problem}")]
    InvalidWeight {
        /// The model directory.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// The architecture named by `config.json` is not one qtier runs.
    #[error("{path}: model_type `{model_type}` is not supported (supported: {supported})")]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// Its `model_type`.
        model_type: String,
        /// What is supported.
        supported: &'static str,
    },
    /// The tokenizer failed to load or to encode.
    #[error("tokenizer {path}: {problem}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// Input the model cannot take (empty batch, sequence too long, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// Reading the checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] qtier_quantize::QuantizeError),
    /// An int8 kernel refused its input.
    #[error("int8 kernel: {0}")]
    Kernel(#[from] qtier_kernels::KernelError),
    /// The GPU path (`--device cuda`) is unavailable (no CUDA build, no driver, no such GPU) or
    /// failed.
    #[error("--device cuda: {context}: {cause}")]
    Cuda {
        /// What was being done (`opening GPU 0`, `running the encoder`, ...).
        context: String,
        /// The CUDA path's error (part of the message, not a `source`).
        cause: qtier_kernels::cuda::CudaError,
    },
    /// A tensor operation failed (shape mismatch inside the model: a bug or a bad checkpoint).
    #[error("tensor operation: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, cause: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), action, cause }
    }
}

/// Short for `Result<T, ModelError>`.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

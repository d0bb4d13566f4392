//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading a checkpoint, quantizing it or writing an artifact.
///
/// Every variant names the file it concerns and, where there is one, the tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantizeError {
    /// An operating-system error on a file or directory.
    #[error("{path}: {action}: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What qtier was doing ("open", "read", "write", ...).
        action: &'static str,
        /// The underlying error, already part of the message (so not also a `source`, which
        /// would print it twice in an error chain).
        cause: std::io::Error,
    },
    /// A safetensors file whose header or layout is invalid.
    #[error("{path}: invalid safetensors file: {problem}")]
    InvalidSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        problem: String,
    },
    /// A tensor entry of a safetensors header that is inconsistent.
    #[error("{path}: tensor `{tensor}`: {problem}")]
    InvalidTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong, in words.
        problem: String,
    },
    /// A weight chosen for quantization holds NaN or an infinity.
    #[error(
        "{path}: tensor `{tensor}` holds a non-finite value ({value}) at row {row}, column {column}; \
         fix the checkpoint, or pass --allow-nonfinite to keep this layer in float"
    )]
    NonFiniteWeight {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The offending value, as text ("NaN", "inf", "-inf").
        value: String,
        /// Its row (output channel).
        row: usize,
        /// Its column (input feature).
        column: usize,
    },
    /// A sharded checkpoint's index that is unreadable or inconsistent.
    #[error("{path}: {problem}")]
    InvalidIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong, in words.
        problem: String,
    },
    /// A `config.json` that is not a JSON object, or that says the model is already quantized.
    #[error("{path}: {problem}")]
    InvalidConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong, in words.
        problem: String,
    },
    /// The input path holds no checkpoint qtier can read.
    #[error("{path}: {problem}")]
    NoCheckpoint {
        /// The path given as input.
        path: PathBuf,
        /// What was expected there.
        problem: String,
    },
    /// The output directory exists and overwriting was not asked for.
    #[error("{path}: output already exists; pass --force to replace it")]
    OutputExists {
        /// The output directory.
        path: PathBuf,
    },
    /// An `--ignore` or `--targets` pattern that does not parse.
    #[error("invalid layer pattern `{pattern}`: {problem}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// Why it does not parse.
        problem: String,
    },
    /// Options that contradict each other or the input.
    #[error("{0}")]
    InvalidOptions(String),
}

impl QuantizeError {
    /// Wraps an I/O error with the path and action it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        QuantizeError::Io { path: path.into(), action, cause: source }
    }
}

/// Short for `Result<T, QuantizeError>`.
pub type Result<T, E = QuantizeError> = std::result::Result<T, E>;

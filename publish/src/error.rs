//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong publishing or pulling an artifact. Each variant names the file,
/// object or location involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A local file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A destination or source URI that qtier does not understand or refuses.
    #[error("{uri}: {reason}")]
    BadUri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A JSON input (report, manifest, pointer) that does not parse or lacks what is needed.
    #[error("{what}: {reason}")]
    BadDocument {
        /// Which document (a path or an object location).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The artifact failed a gate and `--force` was not given.
    #[error("refusing to publish: {}; pass --force --reason \"...\" to override", failures.join("; "))]
    GateFailed {
        /// Each failed gate, in words.
        failures: Vec<String>,
    },
    /// The version already holds (or is being written with) a different artifact.
    #[error("{location}: {reason}")]
    VersionTaken {
        /// The version's location.
        location: String,
        /// What is there instead.
        reason: String,
    },
    /// A request to the object store failed (after retries where the error was transient).
    #[error("{operation} {location}: {message}")]
    Store {
        /// What was attempted (`upload`, `download`, `read`, ...).
        operation: &'static str,
        /// The object's location.
        location: String,
        /// The store's error, with its chain of causes.
        message: String,
    },
    /// Bytes that do not match their manifest entry or the checksum sent with them.
    #[error("{location}: {reason}")]
    Verification {
        /// The file or object.
        location: String,
        /// Expected versus found.
        reason: String,
    },
    /// No artifact at the location.
    #[error("{location}: no artifact here (no qtier-manifest.json, no latest pointer)")]
    NotFound {
        /// Where it was looked for.
        location: String,
    },
    /// Creating or committing the pull target failed (it exists without `--force`, or I/O).
    #[error(transparent)]
    Target(#[from] qtier_quantize::QuantizeError),
}

impl PublishError {
    /// An [`PublishError::Io`] error for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PublishError::Io { path: path.into(), source }
    }
}

/// Result with [`PublishError`].
pub type Result<T, E = PublishError> = std::result::Result<T, E>;

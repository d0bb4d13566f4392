//! The error type of qtier-profiles.

/// Everything that can go wrong reading profiles, tiers, reports and offer files, or building a
/// recommendation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfilesError {
    /// A TOML file does not parse or does not match the expected layout (unknown key, wrong type,
    /// out-of-range value); the message names the line and column.
    #[error("{file}: {message}")]
    Toml {
        /// The file (or the built-in data's name).
        file: String,
        /// 1-based line of the problem, when the parser knows it.
        line: Option<usize>,
        /// The parser's message, with line, column and the offending text.
        message: String,
    },
    /// A TOML file parses but its content is inconsistent (duplicate names, a family without
    /// instances, ...).
    #[error("{file}:{line}: {item}: {problem}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line of the entry.
        line: usize,
        /// The entry (instance or tier name).
        item: String,
        /// What is wrong.
        problem: String,
    },
    /// A `--qps` list that does not parse or names an unknown tier.
    #[error("--qps `{text}`: {problem}")]
    QpsSpec {
        /// The offending text.
        text: String,
        /// What is wrong.
        problem: String,
    },
    /// A model `config.json` without the fields the roofline model needs.
    #[error("model config {file}: {problem}")]
    ModelConfig {
        /// The file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// An AWS Price List offer file that does not have the expected layout.
    #[error("offer file {file}: {problem}")]
    OfferFile {
        /// The file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// Bench reports that cannot be used together, or lack the requested workload.
    #[error("bench report {report}: {problem}")]
    Report {
        /// The report's label (its file name).
        report: String,
        /// What is wrong.
        problem: String,
    },
    /// A recommendation asked for without anything to recommend from.
    #[error("{problem}")]
    Request {
        /// What is wrong.
        problem: String,
    },
    /// Serializing a recommendation failed.
    #[error("rendering {format}: {problem}")]
    Render {
        /// The export format.
        format: &'static str,
        /// What went wrong.
        problem: String,
    },
}

/// Result with [`ProfilesError`].
pub type Result<T, E = ProfilesError> = std::result::Result<T, E>;

/// 1-based line of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// A [`ProfilesError::Toml`] from a TOML deserialization error of `text`.
pub(crate) fn toml_error(file: &str, text: &str, error: &toml::de::Error) -> ProfilesError {
    ProfilesError::Toml {
        file: file.to_string(),
        line: error.span().map(|span| line_of(text, span.start)),
        message: error.to_string().trim_end().to_string(),
    }
}

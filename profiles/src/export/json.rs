//! The JSON export: the [`Recommendation`] as serialized.

use super::RecommendationExport;
use crate::error::{ProfilesError, Result};
use crate::recommend::Recommendation;

/// Pretty-printed JSON of the whole recommendation.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonExport;

impl RecommendationExport for JsonExport {
    fn file_name(&self) -> &'static str {
        "recommendation.json"
    }

    fn render(&self, recommendation: &Recommendation) -> Result<String> {
        let mut text = serde_json::to_string_pretty(recommendation)
            .map_err(|e| ProfilesError::Render { format: "JSON", problem: e.to_string() })?;
        text.push('\n');
        Ok(text)
    }
}

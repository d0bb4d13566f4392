//! Exporters of a [`Recommendation`]: one trait, one file per format.
//!
//! - [`JsonExport`]: the recommendation as serialized (the format scripts read).
//! - [`MarkdownExport`]: a summary, then per tier the measured and the projected candidates in
//!   separate tables, every rejection with its reason.
//! - [`HtmlExport`]: the same as a standalone page (well-formed XML) with an SVG plot of tail
//!   latency against price per instance.

mod html;
mod json;
mod markdown;
mod svg;

pub use html::HtmlExport;
pub use json::JsonExport;
pub use markdown::MarkdownExport;
pub use svg::latency_cost_svg;

use crate::error::Result;
use crate::recommend::{Candidate, Purchase, Recommendation};

/// One output format of a recommendation.
pub trait RecommendationExport {
    /// The file name `qtier recommend --out DIR` writes (`recommendation.json`).
    fn file_name(&self) -> &'static str;
    /// The document.
    fn render(&self, recommendation: &Recommendation) -> Result<String>;
}

/// Every format, in the order `--out` writes them.
pub fn all_exports() -> [&'static dyn RecommendationExport; 3] {
    [&JsonExport, &MarkdownExport, &HtmlExport]
}

/// `12.345` with three decimals, or `-`.
pub(crate) fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// A dollar amount with four decimals, or `-`.
pub(crate) fn usd(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("${v:.4}"))
}

/// `on-demand` or `spot`.
pub(crate) fn purchase(candidate: &Candidate) -> &'static str {
    match candidate.purchase {
        Purchase::OnDemand => "on-demand",
        Purchase::Spot => "spot",
    }
}

/// A check's value with its projection range: `12.000 (8.400-18.000)`.
pub(crate) fn value_with_range(check: &crate::recommend::MetricCheck) -> String {
    match (check.value_ms, check.range_ms) {
        (Some(v), Some([low, high])) => format!("{v:.3} ({low:.3}-{high:.3})"),
        (v, _) => ms(v),
    }
}

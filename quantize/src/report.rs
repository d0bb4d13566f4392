//! The quantization report: every tensor's fate and every quantized layer's error, as JSON for
//! tools and Markdown for people.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::select::KeepReason;

/// File name of the JSON report inside an artifact.
pub const REPORT_JSON: &str = "qtier-quant-report.json";
/// File name of the Markdown report inside an artifact.
pub const REPORT_MARKDOWN: &str = "qtier-quant-report.md";
/// Version of the report's JSON layout; bumped when a field is renamed or removed.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// The report of one `qtier quantize` run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuantReport {
    /// Version of this layout.
    pub schema_version: u32,
    /// Version of qtier that wrote it.
    pub qtier_version: String,
    /// The input checkpoint, as given.
    pub input: String,
    /// The artifact directory.
    pub output: String,
    /// How weights and activations are quantized.
    pub scheme: SchemeSummary,
    /// Every quantized layer, in checkpoint order.
    pub layers: Vec<LayerReport>,
    /// Every tensor copied unchanged, with the reason.
    pub kept: Vec<KeptTensor>,
    /// Files of the input directory that were not copied, with the reason.
    pub files_not_copied: Vec<SkippedFile>,
    /// Totals over the checkpoint.
    pub totals: Totals,
}

/// The quantization scheme, in words and in the fields compressed-tensors uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemeSummary {
    /// Short name (`W8A8`).
    pub name: String,
    /// Weight quantization.
    pub weights: String,
    /// Activation quantization.
    pub activations: String,
    /// Rounding rule.
    pub rounding: String,
}

impl Default for SchemeSummary {
    fn default() -> Self {
        SchemeSummary {
            name: "W8A8".into(),
            weights: "int8 symmetric per output channel, range [-127, 127], scale = max|row| / 127 \
                      stored in the weight's dtype"
                .into(),
            activations: "int8 symmetric per token, dynamic (computed at run time)".into(),
            rounding: "round half to even, using the scale as stored".into(),
        }
    }
}

/// Error of one quantized layer's weight against its reconstruction `q * scale`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerReport {
    /// The Linear module.
    pub name: String,
    /// `[out_features, in_features]`.
    pub shape: Vec<usize>,
    /// The input weight's dtype (also the scale's).
    pub dtype: String,
    /// Signal-to-quantization-noise ratio in dB; `null` when the reconstruction is exact.
    pub sqnr_db: Option<f64>,
    /// RMS error relative to the weight's RMS.
    pub relative_rmse: f64,
    /// Largest absolute error of one weight.
    pub max_abs_error: f64,
    /// Cosine similarity of weight and reconstruction.
    pub cosine: f64,
}

/// A tensor copied unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeptTensor {
    /// The tensor's name.
    pub name: String,
    /// Its dtype.
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Why it was kept.
    pub reason: KeepReason,
    /// The pattern or value behind the reason, when there is one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
}

/// A file of the input directory left out of the artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SkippedFile {
    /// Path relative to the input directory.
    pub path: String,
    /// Why it was left out.
    pub reason: String,
}

/// Totals of one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    /// Number of Linear layers quantized.
    pub layers_quantized: usize,
    /// Parameters (weight elements) quantized.
    pub parameters_quantized: u64,
    /// Parameters in the whole checkpoint.
    pub parameters_total: u64,
    /// Bytes of tensor data in the input.
    pub tensor_bytes_before: u64,
    /// Bytes of tensor data in the artifact.
    pub tensor_bytes_after: u64,
    /// `tensor_bytes_before / tensor_bytes_after`.
    pub compression_ratio: f64,
    /// Smallest SQNR of any layer, dB.
    pub min_sqnr_db: Option<f64>,
    /// The layer with the smallest SQNR.
    pub min_sqnr_layer: Option<String>,
    /// Median SQNR over layers, dB.
    pub median_sqnr_db: Option<f64>,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Input tensor bytes per second of wall time, GB/s (10^9).
    pub input_gb_per_s: f64,
}

impl QuantReport {
    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let t = &self.totals;
        let mut md = String::new();
        let _ = writeln!(md, "# qtier quantization report\n");
        let _ = writeln!(md, "- input: `{}`\n- output: `{}`\n- qtier {}", self.input, self.output, self.qtier_version);
        let _ = writeln!(
            md,
            "- scheme: {} (weights: {}; activations: {}; rounding: {})\n",
            self.scheme.name, self.scheme.weights, self.scheme.activations, self.scheme.rounding
        );
        let _ = writeln!(md, "## Totals\n");
        let _ = writeln!(md, "| | |\n|---|---|");
        let _ = writeln!(md, "| layers quantized | {} |", t.layers_quantized);
        let _ = writeln!(md, "| parameters quantized | {} of {} |", t.parameters_quantized, t.parameters_total);
        let _ = writeln!(
            md,
            "| tensor bytes | {} -> {} ({:.2}x smaller) |",
            t.tensor_bytes_before, t.tensor_bytes_after, t.compression_ratio
        );
        let _ = writeln!(
            md,
            "| SQNR | min {} ({}), median {} |",
            format_db(t.min_sqnr_db),
            t.min_sqnr_layer.as_deref().unwrap_or("-"),
            format_db(t.median_sqnr_db)
        );
        let _ = writeln!(md, "| time | {:.2} s ({:.2} GB/s of input) |\n", t.seconds, t.input_gb_per_s);
        let _ = writeln!(md, "## Quantized layers\n");
        let _ = writeln!(md, "| layer | shape | dtype | SQNR dB | rel. RMSE | max abs err | cosine |");
        let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|");
        for layer in &self.layers {
            let _ = writeln!(
                md,
                "| `{}` | {:?} | {} | {} | {:.5} | {:.3e} | {:.6} |",
                layer.name,
                layer.shape,
                layer.dtype,
                format_db(layer.sqnr_db),
                layer.relative_rmse,
                layer.max_abs_error,
                layer.cosine
            );
        }
        let _ = writeln!(md, "\n## Tensors kept unchanged\n");
        let _ = writeln!(md, "| tensor | dtype | shape | reason |\n|---|---|---|---|");
        for kept in &self.kept {
            let reason = serde_json::to_value(&kept.reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let detail = kept.detail.as_deref().map(|d| format!(" (`{d}`)")).unwrap_or_default();
            let _ = writeln!(md, "| `{}` | {} | {:?} | {reason}{detail} |", kept.name, kept.dtype, kept.shape);
        }
        if !self.files_not_copied.is_empty() {
            let _ = writeln!(md, "\n## Files not copied\n");
            for file in &self.files_not_copied {
                let _ = writeln!(md, "- `{}`: {}", file.path, file.reason);
            }
        }
        md
    }
}

/// Formats an SQNR for people: `inf` when the reconstruction is exact.
pub fn format_db(db: Option<f64>) -> String {
    db.map_or_else(|| "inf".to_string(), |db| format!("{db:.2}"))
}

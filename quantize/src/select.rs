//! Which tensors are Linear weights, and which of those to quantize.
//!
//! A safetensors file has no module types, so a Linear weight is recognised by shape and name: a
//! two-dimensional float `<module>.weight` whose module is not an embedding or a norm. Of those,
//! `lm_head` is kept in float by default, as compressed-tensors recommends (the output projection
//! is the most sensitive layer of a language model). `--targets` and `--ignore` narrow the choice
//! with patterns in the forms compressed-tensors accepts (exact module names, `re:<regex>`) plus
//! shell globs.

use globset::{Glob, GlobMatcher};
use regex::Regex;

use crate::dtype::Dtype;
use crate::error::{QuantizeError, Result};

/// The target that means "every Linear layer", as in compressed-tensors' `targets: ["Linear"]`.
pub const LINEAR_TARGET: &str = "Linear";

/// A pattern matching module names.
#[derive(Debug, Clone)]
pub enum LayerPattern {
    /// Every Linear-shaped module (the word `Linear`).
    AnyLinear,
    /// One module name, exactly.
    Exact(String),
    /// A shell glob (`*`, `?`, `[...]`); `*` also matches dots, as in Python's fnmatch.
    Glob(String, GlobMatcher),
    /// `re:<regex>`, matched from the start of the name as Python's `re.match` does.
    Regex(String, Regex),
}

impl LayerPattern {
    /// Parses `Linear`, `re:<regex>`, a glob, or an exact module name.
    pub fn parse(text: &str) -> Result<LayerPattern> {
        let bad = |problem: String| QuantizeError::InvalidPattern { pattern: text.to_string(), problem };
        if text.is_empty() {
            return Err(bad("empty pattern".into()));
        }
        if text == LINEAR_TARGET {
            return Ok(LayerPattern::AnyLinear);
        }
        if let Some(regex) = text.strip_prefix("re:") {
            let anchored = Regex::new(&format!("^(?:{regex})")).map_err(|e| bad(e.to_string()))?;
            return Ok(LayerPattern::Regex(text.to_string(), anchored));
        }
        if text.contains(['*', '?', '[']) {
            let glob = Glob::new(text).map_err(|e| bad(e.to_string()))?;
            return Ok(LayerPattern::Glob(text.to_string(), glob.compile_matcher()));
        }
        Ok(LayerPattern::Exact(text.to_string()))
    }

    /// True when `module` matches.
    pub fn matches(&self, module: &str) -> bool {
        match self {
            LayerPattern::AnyLinear => true,
            LayerPattern::Exact(name) => name == module,
            LayerPattern::Glob(_, matcher) => matcher.is_match(module),
            LayerPattern::Regex(_, regex) => regex.is_match(module),
        }
    }

    /// The pattern as the user wrote it.
    pub fn as_str(&self) -> &str {
        match self {
            LayerPattern::AnyLinear => LINEAR_TARGET,
            LayerPattern::Exact(text) | LayerPattern::Glob(text, _) | LayerPattern::Regex(text, _) => text,
        }
    }
}

/// Why a tensor is kept as it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeepReason {
    /// Not a `<module>.weight` tensor (a bias, a buffer, ...).
    NotAWeight,
    /// A weight that is not two-dimensional (norm scales, convolutions, ...).
    NotTwoDimensional,
    /// A weight whose dtype is not F32, F16 or BF16.
    NotFloat,
    /// An embedding table.
    Embedding,
    /// A normalization layer's weight.
    Norm,
    /// The language-model head, kept in float by default.
    LmHead,
    /// A Linear weight excluded by an `--ignore` pattern.
    Ignored,
    /// A Linear weight that no `--targets` pattern names.
    NotTargeted,
    /// A Linear weight holding NaN or infinity, kept in float by `--allow-nonfinite`.
    NonFinite,
}

impl KeepReason {
    /// True when the tensor is the weight of a Linear module that stays in float, so that
    /// compressed-tensors' `ignore` list must name the module.
    pub fn is_linear_kept(&self) -> bool {
        matches!(self, KeepReason::LmHead | KeepReason::Ignored | KeepReason::NotTargeted | KeepReason::NonFinite)
    }
}

/// What happens to one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Quantize it as the weight of module `module`.
    Quantize {
        /// The Linear module's name (the tensor's name without `.weight`).
        module: String,
    },
    /// Copy it unchanged.
    Keep {
        /// Why.
        reason: KeepReason,
        /// The pattern or detail that decided it, if any.
        detail: Option<String>,
    },
}

/// The user's choice of layers.
#[derive(Debug, Clone)]
pub struct LayerSelection {
    targets: Vec<LayerPattern>,
    ignore: Vec<LayerPattern>,
}

impl Default for LayerSelection {
    fn default() -> Self {
        LayerSelection { targets: vec![LayerPattern::AnyLinear], ignore: Vec::new() }
    }
}

impl LayerSelection {
    /// Builds a selection from `--targets` (empty: every Linear layer) and `--ignore` patterns.
    pub fn new(targets: &[String], ignore: &[String]) -> Result<LayerSelection> {
        let targets = if targets.is_empty() {
            vec![LayerPattern::AnyLinear]
        } else {
            targets.iter().map(|t| LayerPattern::parse(t)).collect::<Result<_>>()?
        };
        let ignore = ignore.iter().map(|t| LayerPattern::parse(t)).collect::<Result<_>>()?;
        Ok(LayerSelection { targets, ignore })
    }

    /// The `--targets` patterns.
    pub fn targets(&self) -> &[LayerPattern] {
        &self.targets
    }

    /// Decides what happens to the tensor `name` of `dtype` and `shape`.
    pub fn decide(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Decision {
        let keep = |reason| Decision::Keep { reason, detail: None };
        let Some(module) = name.strip_suffix(".weight") else {
            return keep(KeepReason::NotAWeight);
        };
        let components: Vec<&str> = module.split('.').collect();
        if components.iter().any(|c| is_embedding_component(c)) {
            return keep(KeepReason::Embedding);
        }
        if components.iter().any(|c| is_norm_component(c)) {
            return keep(KeepReason::Norm);
        }
        if shape.len() != 2 {
            return keep(KeepReason::NotTwoDimensional);
        }
        if dtype.as_weight_dtype().is_none() {
            return keep(KeepReason::NotFloat);
        }
        // Explicit targets override the lm_head default: a user who names lm_head means it.
        let explicit_target = self.targets.iter().find(|t| !matches!(t, LayerPattern::AnyLinear) && t.matches(module));
        if explicit_target.is_none() {
            if !self.targets.iter().any(|t| t.matches(module)) {
                return keep(KeepReason::NotTargeted);
            }
            if components.last() == Some(&"lm_head") {
                return keep(KeepReason::LmHead);
            }
        }
        if let Some(pattern) = self.ignore.iter().find(|p| p.matches(module)) {
            return Decision::Keep { reason: KeepReason::Ignored, detail: Some(pattern.as_str().to_string()) };
        }
        Decision::Quantize { module: module.to_string() }
    }
}

/// Module-name components that denote embedding tables (BERT `embeddings`, Llama `embed_tokens`,
/// GPT-2 `wte`/`wpe`, T5 `shared`, OPT `embed_positions`, ...).
fn is_embedding_component(component: &str) -> bool {
    let lower = component.to_ascii_lowercase();
    lower.contains("embed") || matches!(lower.as_str(), "wte" | "wpe" | "shared")
}

/// Module-name components that denote normalization layers (`LayerNorm`, `input_layernorm`,
/// `norm`, `rms_norm`, GPT-2 `ln_1`/`ln_f`, ...).
fn is_norm_component(component: &str) -> bool {
    let lower = component.to_ascii_lowercase();
    lower.contains("norm") || lower == "ln" || lower.starts_with("ln_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(selection: &LayerSelection, name: &str, shape: &[usize]) -> Decision {
        selection.decide(name, Dtype::F16, shape)
    }

    fn quantized(name: &str) -> Decision {
        Decision::Quantize { module: name.trim_end_matches(".weight").to_string() }
    }

    #[test]
    fn default_selection_keeps_embeddings_norms_biases_and_lm_head() {
        let selection = LayerSelection::default();
        let keep = |reason| Decision::Keep { reason, detail: None };
        let cases = [
            (
                "encoder.layer.0.attention.self.query.weight",
                &[384, 384][..],
                quantized("encoder.layer.0.attention.self.query.weight"),
            ),
            ("encoder.layer.0.attention.self.query.bias", &[384][..], keep(KeepReason::NotAWeight)),
            ("embeddings.word_embeddings.weight", &[30522, 384][..], keep(KeepReason::Embedding)),
            ("model.embed_tokens.weight", &[32000, 4096][..], keep(KeepReason::Embedding)),
            ("transformer.wte.weight", &[50257, 768][..], keep(KeepReason::Embedding)),
            ("encoder.layer.0.output.LayerNorm.weight", &[384][..], keep(KeepReason::Norm)),
            ("model.layers.0.input_layernorm.weight", &[4096][..], keep(KeepReason::Norm)),
            ("transformer.h.0.ln_1.weight", &[768][..], keep(KeepReason::Norm)),
            ("lm_head.weight", &[32000, 4096][..], keep(KeepReason::LmHead)),
            ("conv.weight", &[8, 3, 3, 3][..], keep(KeepReason::NotTwoDimensional)),
        ];
        for (name, shape, expected) in cases {
            assert_eq!(decide(&selection, name, shape), expected, "{name}");
        }
        assert_eq!(selection.decide("proj.weight", Dtype::I64, &[2, 2]), keep(KeepReason::NotFloat));
    }

    #[test]
    fn patterns_follow_compressed_tensors_and_globs() {
        let selection =
            LayerSelection::new(&["re:.*attention.*".into(), "lm_head".into()], &["encoder.layer.1.*".into()]).unwrap();
        assert_eq!(
            decide(&selection, "encoder.layer.0.attention.self.key.weight", &[4, 4]),
            quantized("encoder.layer.0.attention.self.key.weight")
        );
        assert_eq!(
            decide(&selection, "encoder.layer.0.intermediate.dense.weight", &[4, 4]),
            Decision::Keep { reason: KeepReason::NotTargeted, detail: None }
        );
        assert_eq!(
            decide(&selection, "encoder.layer.1.attention.self.key.weight", &[4, 4]),
            Decision::Keep { reason: KeepReason::Ignored, detail: Some("encoder.layer.1.*".into()) }
        );
        assert_eq!(decide(&selection, "lm_head.weight", &[4, 4]), quantized("lm_head.weight"));
    }

    #[test]
    fn regex_is_anchored_at_the_start_like_python_re_match() {
        let pattern = LayerPattern::parse("re:layer\\.0").unwrap();
        assert!(pattern.matches("layer.0.q"));
        assert!(!pattern.matches("encoder.layer.0.q"));
        assert!(LayerPattern::parse("re:(").is_err());
        assert!(LayerPattern::parse("").is_err());
    }
}

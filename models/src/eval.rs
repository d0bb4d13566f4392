//! fp32 vs int8 on real text.
//!
//! - Sentence-embedding cosine between the two models, per text (mean, min, 1st percentile).
//! - Nearest-neighbour agreement: for each text, whether its most similar other text in the set is
//!   the same under both models (what a retrieval user sees change).
//! - Per quantized layer, the SQNR of its *output* on the real activations: both the float and the
//!   int8 layer are run on the float model's input to that layer, so each figure isolates one
//!   layer's error (weights and dynamic activation quantization together).

use std::collections::HashMap;

use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::linear::Linear;
use crate::sentence::{EMBED_BATCH, SentenceEncoder};

/// The development sentences (the 20 of the reference fixture), the default eval set.
pub const DEV_SENTENCES: &str = include_str!("../data/dev-sentences.txt");
/// Sentences not used while choosing quantization settings, for a held-out check.
pub const HELDOUT_SENTENCES: &str = include_str!("../data/heldout-sentences.txt");

/// Non-empty lines of a text file, trimmed.
pub fn lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

/// The result of comparing two models on one set of texts.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The reference (float) model directory.
    pub reference: String,
    /// The candidate (int8) model directory.
    pub candidate: String,
    /// Number of texts.
    pub texts: usize,
    /// Embedding cosine between the models.
    pub cosine: CosineSummary,
    /// Fraction of texts whose nearest neighbour in the set is the same under both models.
    pub nearest_neighbour_agreement: f64,
    /// Per quantized layer, the SQNR of its output on real activations, in execution order.
    pub layers: Vec<LayerOutputError>,
    /// Per text, the cosine (in input order).
    pub per_text_cosine: Vec<f64>,
}

/// Summary of per-text cosines.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CosineSummary {
    /// Mean.
    pub mean: f64,
    /// Minimum; NaN when any text's cosine is (a non-finite embedding).
    pub min: f64,
    /// 1st percentile (nearest rank).
    pub p1: f64,
}

impl CosineSummary {
    /// The summary of per-text cosines (at least one). A NaN cosine (a non-finite embedding)
    /// sorts first whatever its sign bit, so `min` is NaN, which the gates treat as a failure
    /// (`total_cmp` alone sorts a positive NaN last, and `min` would be a real cosine).
    pub fn of(per_text: &[f64]) -> CosineSummary {
        let mut sorted = per_text.to_vec();
        sorted.sort_by(|a, b| b.is_nan().cmp(&a.is_nan()).then(a.total_cmp(b)));
        let p1_rank = ((sorted.len() as f64 * 0.01).ceil() as usize).clamp(1, sorted.len()) - 1;
        CosineSummary {
            mean: per_text.iter().sum::<f64>() / per_text.len() as f64,
            min: sorted[0],
            p1: sorted[p1_rank],
        }
    }

    /// Whether the minimum is below `bar`; a NaN minimum (a non-finite embedding) is.
    pub fn min_below(&self, bar: f64) -> bool {
        self.min.is_nan() || self.min < bar
    }
}

/// One quantized layer's output error.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerOutputError {
    /// The Linear module.
    pub name: String,
    /// `10 log10(Σ y² / Σ (y - ŷ)²)` over every output element of the texts, float `y` vs int8 `ŷ`.
    pub sqnr_db: f64,
}

/// Cosine similarity of two vectors (0 when one is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na.sqrt() * nb.sqrt()) }
}

/// For each embedding, the index of its most similar other embedding.
pub fn nearest_neighbours(embeddings: &[Vec<f32>]) -> Vec<usize> {
    (0..embeddings.len())
        .map(|i| {
            (0..embeddings.len())
                .filter(|&j| j != i)
                .max_by(|&a, &b| {
                    cosine(&embeddings[i], &embeddings[a]).total_cmp(&cosine(&embeddings[i], &embeddings[b]))
                })
                .unwrap_or(i)
        })
        .collect()
}

/// Compares `candidate` (int8) with `reference` (float) on `texts`.
pub fn evaluate(reference: &SentenceEncoder, candidate: &SentenceEncoder, texts: &[&str]) -> Result<EvalReport> {
    if texts.len() < 2 {
        return Err(ModelError::InvalidInput("eval needs at least two texts".into()));
    }
    let reference_embeddings = reference.embed(texts)?;
    let candidate_embeddings = candidate.embed(texts)?;
    let per_text_cosine: Vec<f64> =
        reference_embeddings.iter().zip(&candidate_embeddings).map(|(a, b)| cosine(a, b)).collect();
    let cosine = CosineSummary::of(&per_text_cosine);
    let agree = nearest_neighbours(&reference_embeddings)
        .iter()
        .zip(nearest_neighbours(&candidate_embeddings))
        .filter(|(a, b)| **a == *b)
        .count();
    Ok(EvalReport {
        reference: reference.dir().display().to_string(),
        candidate: candidate.dir().display().to_string(),
        texts: texts.len(),
        cosine,
        nearest_neighbour_agreement: agree as f64 / texts.len() as f64,
        layers: layer_output_errors(reference, candidate, texts)?,
        per_text_cosine,
    })
}

/// Runs the reference model on `texts` and, at each Linear layer the candidate quantized, runs
/// both versions of the layer on the reference's input to it.
fn layer_output_errors(
    reference: &SentenceEncoder,
    candidate: &SentenceEncoder,
    texts: &[&str],
) -> Result<Vec<LayerOutputError>> {
    let quantized: HashMap<&str, &Linear> =
        candidate.model().linears().filter(|l| l.is_int8()).map(|l| (l.name(), l)).collect();
    let mut order = Vec::new();
    let mut sums: HashMap<String, (f64, f64)> = HashMap::new();
    for chunk in texts.chunks(EMBED_BATCH) {
        let batch = reference.tokenizer().encode_batch(chunk)?;
        // Padding rows are real inputs to the kernels but not real text: keep only masked-in rows.
        let keep: Vec<bool> = batch.attention_mask.iter().map(|m| *m == 1).collect();
        reference.model().forward_with_tap(&batch, &mut |float_layer, input| {
            let Some(int8_layer) = quantized.get(float_layer.name()) else { return Ok(()) };
            let expected = float_layer.forward(input, None)?.to_vec2::<f32>()?;
            let actual = int8_layer.forward(input, None)?.to_vec2::<f32>()?;
            let entry = sums.entry(float_layer.name().to_string()).or_insert_with(|| {
                order.push(float_layer.name().to_string());
                (0.0, 0.0)
            });
            for ((expected, actual), keep) in expected.iter().zip(&actual).zip(&keep) {
                if !keep {
                    continue;
                }
                for (y, y_hat) in expected.iter().zip(actual) {
                    entry.0 += f64::from(*y) * f64::from(*y);
                    entry.1 += (f64::from(*y) - f64::from(*y_hat)).powi(2);
                }
            }
            Ok(())
        })?;
    }
    Ok(order
        .into_iter()
        .map(|name| {
            let (signal, noise) = sums[&name];
            LayerOutputError { sqnr_db: 10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10(), name }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_cosine_is_the_minimum_whatever_its_sign_bit() {
        for nan in [f64::NAN, -f64::NAN] {
            let summary = CosineSummary::of(&[0.999, nan, 0.998]);
            assert!(summary.min.is_nan(), "{nan:?} sorted after real cosines");
            assert!(summary.min_below(-1.0), "a NaN minimum passes a bar");
        }
        let summary = CosineSummary::of(&[0.999, 0.97, 0.998]);
        assert_eq!((summary.min, summary.p1), (0.97, 0.97));
        assert!(summary.min_below(0.971) && !summary.min_below(0.97));
        assert!((summary.mean - 0.989).abs() < 1e-12);
    }
}

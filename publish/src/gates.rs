//! The checks an artifact must pass before it is published: accuracy (the eval report's lowest
//! embedding cosine) and service (at least one tier met in the recommendation).

use serde::Deserialize;

use crate::error::{PublishError, Result};
use crate::manifest::{EvalSummary, TierOutcome};

/// The default accuracy gate: the lowest embedding cosine between the int8 artifact and its float
/// model over the eval texts. 0.99 keeps nearest-neighbour search results essentially unchanged
/// for sentence embeddings (MiniLM int8 measures a minimum of 0.997 on the dev sentences).
pub const DEFAULT_MIN_COSINE: f64 = 0.99;

/// What the gates require.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatePolicy {
    /// The lowest acceptable minimum embedding cosine.
    pub min_cosine: f64,
}

impl Default for GatePolicy {
    fn default() -> Self {
        GatePolicy { min_cosine: DEFAULT_MIN_COSINE }
    }
}

/// The fields of a `qtier eval --json` report the gate reads.
#[derive(Debug, Deserialize)]
struct EvalReportFields {
    texts: u64,
    cosine: CosineFields,
    nearest_neighbour_agreement: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct CosineFields {
    mean: f64,
    min: f64,
}

/// The fields of a `qtier recommend --json` recommendation the gate reads.
#[derive(Debug, Deserialize)]
struct RecommendationFields {
    tiers: Vec<TierFields>,
}

#[derive(Debug, Deserialize)]
struct TierFields {
    tier: TierName,
    chosen: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TierName {
    name: String,
}

/// Reads an eval report (`qtier eval --json`) stored at `path_in_artifact`.
pub fn parse_eval(bytes: &[u8], what: &str, path_in_artifact: &str) -> Result<EvalSummary> {
    let fields: EvalReportFields = serde_json::from_slice(bytes).map_err(|e| PublishError::BadDocument {
        what: what.to_owned(),
        reason: format!("not a qtier eval report (qtier eval --json): {e}"),
    })?;
    Ok(EvalSummary {
        report: path_in_artifact.to_owned(),
        texts: fields.texts,
        cosine_mean: fields.cosine.mean,
        cosine_min: fields.cosine.min,
        nearest_neighbour_agreement: fields.nearest_neighbour_agreement,
    })
}

/// Reads the tiers of a recommendation (`qtier recommend --json`).
pub fn parse_recommendation(bytes: &[u8], what: &str) -> Result<Vec<TierOutcome>> {
    let fields: RecommendationFields = serde_json::from_slice(bytes).map_err(|e| PublishError::BadDocument {
        what: what.to_owned(),
        reason: format!("not a qtier recommendation (qtier recommend --json): {e}"),
    })?;
    Ok(fields.tiers.into_iter().map(|t| TierOutcome { tier: t.tier.name, instance_type: t.chosen }).collect())
}

/// Each failed gate, in words (empty when all pass). A missing report fails its gate.
pub fn check(policy: &GatePolicy, eval: Option<&EvalSummary>, tiers: Option<&[TierOutcome]>) -> Vec<String> {
    let mut failures = Vec::new();
    match eval {
        None => failures.push("no eval report (give one with --eval; `qtier eval --json` writes it)".to_owned()),
        // A NaN cosine is not >= anything, so it fails too.
        Some(eval) if eval.cosine_min.partial_cmp(&policy.min_cosine).is_none_or(|o| o.is_lt()) => {
            failures.push(format!(
                "eval: minimum embedding cosine {:.6} is below {} ({})",
                eval.cosine_min, policy.min_cosine, eval.report
            ))
        }
        Some(_) => {}
    }
    match tiers {
        None => failures
            .push("no recommendation (give one with --recommendation; `qtier recommend --json` writes it)".to_owned()),
        Some(tiers) if !tiers.iter().any(|t| t.instance_type.is_some()) => {
            let names: Vec<&str> = tiers.iter().map(|t| t.tier.as_str()).collect();
            failures.push(format!("recommendation: no service tier is met ({})", names.join(", ")));
        }
        Some(_) => {}
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(min: f64) -> EvalSummary {
        EvalSummary {
            report: "reports/eval.json".into(),
            texts: 30,
            cosine_mean: 0.999,
            cosine_min: min,
            nearest_neighbour_agreement: Some(1.0),
        }
    }

    fn tier(name: &str, chosen: Option<&str>) -> TierOutcome {
        TierOutcome { tier: name.into(), instance_type: chosen.map(Into::into) }
    }

    #[test]
    fn passes_a_good_artifact() {
        let tiers = [tier("gold", None), tier("silver", Some("c7i.large"))];
        assert!(check(&GatePolicy::default(), Some(&eval(0.997)), Some(&tiers)).is_empty());
    }

    #[test]
    fn fails_low_nan_and_missing() {
        let tiers = [tier("gold", Some("c7i.large"))];
        for bad in [0.98, f64::NAN] {
            let failures = check(&GatePolicy::default(), Some(&eval(bad)), Some(&tiers));
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert!(failures[0].contains("below 0.99"));
        }
        let failures = check(&GatePolicy::default(), None, None);
        assert_eq!(failures.len(), 2);
        let none_met = [tier("gold", None), tier("bronze", None)];
        let failures = check(&GatePolicy::default(), Some(&eval(0.999)), Some(&none_met));
        assert_eq!(failures, vec!["recommendation: no service tier is met (gold, bronze)".to_owned()]);
    }

    #[test]
    fn reads_reports() {
        let eval = br#"{"reference":"a","candidate":"b","texts":3,"cosine":{"mean":0.999,"min":0.998,"p1":0.998},
            "nearest_neighbour_agreement":1.0,"layers":[],"per_text_cosine":[1,1,1]}"#;
        let summary = parse_eval(eval, "eval.json", "reports/eval.json").unwrap();
        assert_eq!((summary.texts, summary.cosine_min), (3, 0.998));
        let rec =
            br#"{"tiers":[{"tier":{"name":"gold"},"chosen":null},{"tier":{"name":"bronze"},"chosen":"c5.large"}]}"#;
        assert_eq!(
            parse_recommendation(rec, "rec.json").unwrap(),
            vec![tier("gold", None), tier("bronze", Some("c5.large"))]
        );
        assert!(parse_eval(b"{}", "eval.json", "x").unwrap_err().to_string().contains("eval.json"));
    }
}

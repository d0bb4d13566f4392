//! Service tiers: the latency limits a deployment promises, whether spot capacity may serve it,
//! and the throughput it must sustain.
//!
//! The built-in tiers are `profiles/data/tiers.toml` ([`BUILTIN_TIERS_TOML`]): gold (real-time,
//! p99 <= 16 ms, on-demand, int8), silver (interactive, p99 <= 250 ms and p50 <= 80 ms, spot only
//! with `--allow-spot`), bronze (async, p99 <= 10 s, spot). A tier's limits name their metric, so
//! each tier also bounds `ttft_p99` and `tpot_p99`, the metrics decoder reports are judged on
//! (an encoder is judged on the p50/p99 limits, a decoder on the TTFT/TPOT ones).

use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{ProfilesError, Result, line_of, toml_error};
use crate::values::{Positive, Text};

/// The built-in tiers' text.
pub const BUILTIN_TIERS_TOML: &str = include_str!("../data/tiers.toml");
/// The name errors and reports give the built-in tiers.
pub const BUILTIN_TIERS_NAME: &str = "built-in profiles/data/tiers.toml";

/// A latency statistic of a request that a tier bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyMetric {
    /// Median end-to-end request latency.
    P50,
    /// 99th percentile end-to-end request latency.
    P99,
    /// 99th percentile time to first token (decoders).
    TtftP99,
    /// 99th percentile time per output token (decoders).
    TpotP99,
}

impl LatencyMetric {
    /// True for the decoder metrics (TTFT, TPOT), which only decoder reports measure; p50 and
    /// p99 apply to encoders.
    pub fn is_decoder_metric(self) -> bool {
        matches!(self, LatencyMetric::TtftP99 | LatencyMetric::TpotP99)
    }

    /// The name used in the data files and reports.
    pub fn name(self) -> &'static str {
        match self {
            LatencyMetric::P50 => "p50",
            LatencyMetric::P99 => "p99",
            LatencyMetric::TtftP99 => "ttft_p99",
            LatencyMetric::TpotP99 => "tpot_p99",
        }
    }
}

impl fmt::Display for LatencyMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One latency limit of a tier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyLimit {
    /// The statistic bounded.
    pub metric: LatencyMetric,
    /// Its largest allowed value, milliseconds.
    pub max_ms: Positive,
}

/// When spot capacity may serve a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpotPolicy {
    /// On-demand only.
    Never,
    /// Spot when the user passes `--allow-spot`.
    WithAllowSpot,
    /// Spot whenever the catalog sells it.
    Allowed,
}

impl SpotPolicy {
    /// Whether spot may be used, given the user's `--allow-spot`.
    pub fn permits_spot(self, allow_spot: bool) -> bool {
        match self {
            SpotPolicy::Never => false,
            SpotPolicy::WithAllowSpot => allow_spot,
            SpotPolicy::Allowed => true,
        }
    }
}

/// One service tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSla {
    /// Short name (`gold`), used by `--qps`.
    pub name: Text,
    /// The kind of traffic (`real-time`, `interactive`, `async`).
    pub kind: Text,
    /// One sentence for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Text>,
    /// When spot capacity may serve it.
    pub spot: SpotPolicy,
    /// Whether only an int8 model may serve it.
    pub int8_required: bool,
    /// Requests per second it must sustain (replaced by `--qps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_qps: Option<Positive>,
    /// Latency limits; the first is the headline.
    pub limit: Vec<LatencyLimit>,
}

impl TierSla {
    /// The headline limit (the first).
    pub fn headline(&self) -> &LatencyLimit {
        &self.limit[0]
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TiersFile {
    tier: Vec<Spanned<TierSla>>,
}

/// The validated tiers, in file order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tiers {
    /// Where they were read from.
    pub source_name: String,
    /// The tiers.
    pub tiers: Vec<TierSla>,
}

impl Tiers {
    /// Parses and validates tiers; `source_name` names the file in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self> {
        let file: TiersFile = toml::from_str(text).map_err(|e| toml_error(source_name, text, &e))?;
        if file.tier.is_empty() {
            return Err(ProfilesError::Toml {
                file: source_name.into(),
                line: None,
                message: "no [[tier]] defined".into(),
            });
        }
        let mut names = std::collections::BTreeSet::new();
        for entry in &file.tier {
            let tier = entry.get_ref();
            let invalid = |problem: String| ProfilesError::Invalid {
                file: source_name.into(),
                line: line_of(text, entry.span().start),
                item: tier.name.to_string(),
                problem,
            };
            let name = tier.name.as_str();
            if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
                return Err(invalid("names are lowercase letters, digits, `-` and `_` (for --qps)".into()));
            }
            if !names.insert(name.to_string()) {
                return Err(invalid("defined twice".into()));
            }
            if tier.limit.is_empty() {
                return Err(invalid("needs at least one [[tier.limit]]".into()));
            }
            let mut metrics = std::collections::BTreeSet::new();
            for limit in &tier.limit {
                if !metrics.insert(limit.metric.name()) {
                    return Err(invalid(format!("limits {} twice", limit.metric)));
                }
            }
        }
        Ok(Self { source_name: source_name.into(), tiers: file.tier.into_iter().map(Spanned::into_inner).collect() })
    }

    /// The built-in tiers.
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN_TIERS_TOML, BUILTIN_TIERS_NAME)
    }

    /// Sets each named tier's required throughput from a `--qps` list (`gold=200,silver=50`).
    pub fn apply_qps(&mut self, spec: &str) -> Result<()> {
        let known: Vec<String> = self.tiers.iter().map(|t| t.name.to_string()).collect();
        let parsed = parse_qps(spec)?;
        // Check every name before changing anything.
        if let Some((name, _)) = parsed.iter().find(|(name, _)| !known.contains(name)) {
            return Err(ProfilesError::QpsSpec {
                text: spec.into(),
                problem: format!("no tier named `{name}` (tiers: {})", known.join(", ")),
            });
        }
        for (name, qps) in parsed {
            if let Some(tier) = self.tiers.iter_mut().find(|t| t.name.as_str() == name) {
                tier.required_qps = Some(qps);
            }
        }
        Ok(())
    }
}

/// Parses `tier=qps,tier=qps`; each throughput is requests per second, greater than zero.
pub fn parse_qps(spec: &str) -> Result<Vec<(String, Positive)>> {
    let error = |problem: String| ProfilesError::QpsSpec { text: spec.into(), problem };
    let mut out: Vec<(String, Positive)> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) =
            item.split_once('=').ok_or_else(|| error(format!("`{item}` is not tier=requests_per_second")))?;
        let (name, value) = (name.trim(), value.trim());
        let qps = value
            .parse::<f64>()
            .ok()
            .and_then(Positive::new)
            .ok_or_else(|| error(format!("`{value}` is not a positive number of requests per second")))?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(error(format!("`{name}` given twice")));
        }
        out.push((name.to_string(), qps));
    }
    if out.is_empty() {
        return Err(error("empty list; expected e.g. gold=200,silver=50".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tiers_are_the_issue_tiers() {
        let tiers = Tiers::builtin().unwrap();
        let names: Vec<&str> = tiers.tiers.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["gold", "silver", "bronze"]);
        let gold = &tiers.tiers[0];
        assert_eq!((gold.headline().metric, gold.headline().max_ms.get()), (LatencyMetric::P99, 16.0));
        assert!(gold.int8_required && gold.spot == SpotPolicy::Never);
        let silver = &tiers.tiers[1];
        assert_eq!(silver.limit[1].metric, LatencyMetric::P50);
        assert_eq!(silver.limit[1].max_ms.get(), 80.0);
        assert!(!silver.spot.permits_spot(false) && silver.spot.permits_spot(true));
        let bronze = &tiers.tiers[2];
        assert_eq!(bronze.headline().max_ms.get(), 10_000.0);
        assert!(bronze.spot.permits_spot(false));
    }

    #[test]
    fn qps_lists_apply_to_named_tiers() {
        let mut tiers = Tiers::builtin().unwrap();
        tiers.apply_qps("gold=200, silver=50").unwrap();
        assert_eq!(tiers.tiers[0].required_qps.unwrap().get(), 200.0);
        assert_eq!(tiers.tiers[1].required_qps.unwrap().get(), 50.0);
        assert!(tiers.tiers[2].required_qps.is_none());
        for bad in ["platinum=5", "gold=0", "gold=-1", "gold", "gold=1,gold=2", ""] {
            let error = tiers.apply_qps(bad).unwrap_err();
            assert!(matches!(error, ProfilesError::QpsSpec { .. }), "{bad}: {error}");
        }
    }

    #[test]
    fn decoder_metrics_and_bad_values_parse_or_fail_with_lines() {
        let text = "[[tier]]\nname = \"chat\"\nkind = \"interactive\"\nspot = \"never\"\nint8_required = false\n\
                    [[tier.limit]]\nmetric = \"ttft_p99\"\nmax_ms = 500\n[[tier.limit]]\nmetric = \"tpot_p99\"\nmax_ms = 50\n";
        let tiers = Tiers::parse(text, "t.toml").unwrap();
        assert_eq!(tiers.tiers[0].limit[1].metric, LatencyMetric::TpotP99);

        let error = Tiers::parse(&text.replace("max_ms = 50\n", "max_ms = -50\n"), "t.toml").unwrap_err();
        assert!(matches!(&error, ProfilesError::Toml { line: Some(11), .. }), "{error}");
        let error = Tiers::parse(&text.replace("kind =", "kinds ="), "t.toml").unwrap_err();
        assert!(matches!(&error, ProfilesError::Toml { line: Some(3), .. }), "{error}");
        let error = Tiers::parse(&text.replace("tpot_p99", "p999"), "t.toml").unwrap_err();
        assert!(error.to_string().contains("p999"), "{error}");
        let error = Tiers::parse(&text.replace("tpot_p99", "ttft_p99"), "t.toml").unwrap_err();
        assert!(error.to_string().contains("t.toml:1: chat: limits ttft_p99 twice"), "{error}");
    }
}

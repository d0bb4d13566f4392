//! The Markdown export.

use std::fmt::Write as _;

use super::{RecommendationExport, purchase, usd, value_with_range};
use crate::error::Result;
use crate::recommend::{Candidate, Recommendation, TierRecommendation, Verdict, fmt_number};

/// A Markdown report: summary table, then each tier's candidates, measured and projected apart.
#[derive(Debug, Clone, Copy, Default)]
pub struct MarkdownExport;

/// Escapes a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The tier's limits in words: `p99 <= 16 ms, p50 <= 80 ms`.
pub(crate) fn limits(tier: &TierRecommendation) -> String {
    tier.tier
        .limit
        .iter()
        .map(|l| format!("{} <= {} ms", l.metric, fmt_number(l.max_ms.get())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Spot policy in words.
pub(crate) fn spot_words(tier: &TierRecommendation) -> &'static str {
    use crate::tiers::SpotPolicy;
    match (tier.tier.spot, tier.spot_permitted) {
        (SpotPolicy::Never, _) => "on-demand only",
        (SpotPolicy::WithAllowSpot, false) => "on-demand (spot only with --allow-spot)",
        (SpotPolicy::WithAllowSpot, true) => "spot allowed (--allow-spot)",
        (SpotPolicy::Allowed, _) => "spot allowed",
    }
}

fn verdict(candidate: &Candidate) -> &'static str {
    match candidate.verdict {
        Verdict::Chosen => "**chosen**",
        Verdict::Feasible => "meets, not chosen",
        Verdict::Rejected => "rejected",
    }
}

fn candidate_table(out: &mut String, tier: &TierRecommendation, rows: &[&Candidate]) {
    let mut header = String::from("| instance | verdict | purchase |");
    let mut rule = String::from("|---|---|---|");
    for limit in &tier.tier.limit {
        let _ = write!(header, " {} ms (limit {}) |", limit.metric, fmt_number(limit.max_ms.get()));
        rule.push_str("---:|");
    }
    header.push_str(" replica QPS | replicas/instance | instances | $/h | $/M requests | reason |");
    rule.push_str("---:|---:|---:|---:|---:|---|");
    let _ = writeln!(out, "{header}\n{rule}");
    for c in rows {
        let mut line = format!("| {} | {} | {} |", cell(&c.instance), verdict(c), purchase(c));
        for check in &c.checks {
            let _ = write!(line, " {} |", value_with_range(check));
        }
        let _ = write!(
            line,
            " {} | {} | {} | {} | {} | {} |",
            c.replica_qps.map_or_else(|| "-".into(), |q| format!("{q:.1}")),
            c.replicas_per_instance,
            c.instances.map_or_else(|| "-".into(), |n| n.to_string()),
            usd(c.cost_usd_per_hour),
            usd(c.usd_per_million),
            cell(&c.reasons.join("; "))
        );
        let _ = writeln!(out, "{line}");
    }
    out.push('\n');
}

impl RecommendationExport for MarkdownExport {
    fn file_name(&self) -> &'static str {
        "recommendation.md"
    }

    fn render(&self, r: &Recommendation) -> Result<String> {
        let mut out = String::new();
        let _ = writeln!(out, "# Instance recommendation\n");
        let _ = writeln!(
            out,
            "Model `{}` ({}), request shape {} (batch {} x {} tokens). Catalog: {} ({}). Tiers: {}.\n",
            cell(&r.model.paths.join("`, `")),
            if r.model.int8 { "int8" } else { "float" },
            r.request,
            r.request.batch,
            r.request.seq,
            cell(&r.catalog.source),
            r.catalog.region,
            cell(&r.tiers_source)
        );
        let _ = writeln!(
            out,
            "> **Projected figures are not measurements.** They are the roofline time of the model on the \
             instance divided by the efficiency measured on a calibrating host of the same device class, \
             with a range of x{}-x{}; a projection meets a tier only with `--allow-projected` \
             ({}), and then by the high end of its range.\n",
            fmt_number(r.options.projection_range[0]),
            fmt_number(r.options.projection_range[1]),
            if r.options.allow_projected { "given" } else { "not given" }
        );
        let _ = writeln!(out, "## Summary\n");
        let _ = writeln!(
            out,
            "| tier | limits | required QPS | choice | basis | purchase | instances | $/h | $/M requests |"
        );
        let _ = writeln!(out, "|---|---|---:|---|---|---|---:|---:|---:|");
        for tier in &r.tiers {
            let qps = tier.required_qps.map_or_else(|| "-".into(), fmt_number);
            match tier.chosen_candidate() {
                Some(c) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | **{}** | {} | {} | {} | {} | {} |",
                        tier.tier.name,
                        limits(tier),
                        qps,
                        c.instance,
                        c.basis,
                        purchase(c),
                        c.instances.unwrap_or(1),
                        usd(c.cost_usd_per_hour),
                        usd(c.usd_per_million)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | none meets this tier{} | - | - | - | - | - |",
                        tier.tier.name,
                        limits(tier),
                        qps,
                        tier.closest_miss.as_ref().map_or_else(String::new, |m| format!(" (closest miss: {m})"))
                    );
                }
            }
        }
        out.push('\n');
        for tier in &r.tiers {
            let _ = writeln!(out, "## {} ({})\n", tier.tier.name, tier.tier.kind);
            if let Some(description) = &tier.tier.description {
                let _ = writeln!(out, "{description}\n");
            }
            let _ = writeln!(
                out,
                "Limits: {}; {}; {}; required throughput: {}.\n",
                limits(tier),
                spot_words(tier),
                if tier.tier.int8_required { "int8 model required" } else { "float or int8" },
                tier.required_qps
                    .map_or_else(|| "none given (one instance)".into(), |q| format!("{} requests/s", fmt_number(q)))
            );
            let _ = writeln!(out, "**{}**\n", cell(&tier.summary));
            let measured: Vec<&Candidate> = tier.candidates.iter().filter(|c| c.basis == "measured").collect();
            let projected: Vec<&Candidate> = tier.candidates.iter().filter(|c| c.basis == "projected").collect();
            let none: Vec<&Candidate> = tier.candidates.iter().filter(|c| c.basis == "none").collect();
            let _ = writeln!(out, "### Measured\n");
            if measured.is_empty() {
                let _ = writeln!(out, "No instance type of the catalog was measured.\n");
            } else {
                candidate_table(&mut out, tier, &measured);
            }
            let _ = writeln!(out, "### Projected (not measured)\n");
            if projected.is_empty() {
                let _ = writeln!(out, "Nothing was projected.\n");
            } else {
                candidate_table(&mut out, tier, &projected);
            }
            if !none.is_empty() {
                let _ = writeln!(out, "### Not evaluated\n");
                for c in none {
                    let _ = writeln!(out, "- {}: {}", c.instance, c.reasons.join("; "));
                }
                out.push('\n');
            }
        }
        let _ = writeln!(out, "## Calibrations\n");
        if r.calibrations.is_empty() {
            let _ = writeln!(out, "None.\n");
        } else {
            let _ = writeln!(
                out,
                "| report | class | host | workload | measured p50 ms | roofline ms | efficiency | p99/p50 |"
            );
            let _ = writeln!(out, "|---|---|---|---|---:|---:|---:|---:|");
            for c in &r.calibrations {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} ({} cores) | {} | {:.3} | {:.4} | {:.2}% | {:.2} |",
                    cell(&c.report),
                    c.class.name(),
                    cell(&c.host.model),
                    c.host.cores,
                    c.measured.shape,
                    c.measured.p50_ms,
                    c.roofline_ms,
                    c.efficiency * 100.0,
                    c.tail_ratio
                );
            }
            out.push('\n');
        }
        let _ = writeln!(out, "## Reports\n");
        for report in &r.reports {
            let _ = writeln!(
                out,
                "- `{}`: {} ({} threads): {}",
                report.report,
                report.device(),
                report.threads,
                report.role
            );
        }
        let _ = writeln!(out, "\n## Notes\n");
        for note in &r.notes {
            let _ = writeln!(out, "- {note}");
        }
        let _ = writeln!(out, "- Catalog: {}", r.catalog.note);
        let _ = writeln!(out, "\n## Price sources\n");
        for source in &r.catalog.price_sources {
            let _ = writeln!(out, "- {source}");
        }
        Ok(out)
    }
}

//! The HTML export: a standalone page, well-formed XML (every element closed), with the plot of
//! [`super::latency_cost_svg`] inline.

use std::fmt::Write as _;

use super::markdown::{limits, spot_words};
use super::svg::{esc, latency_cost_svg, tier_color};
use super::{RecommendationExport, ms, purchase, usd, value_with_range};
use crate::error::Result;
use crate::recommend::{Candidate, Recommendation, TierRecommendation, Verdict, fmt_number};

/// A standalone HTML page.
#[derive(Debug, Clone, Copy, Default)]
pub struct HtmlExport;

const STYLE: &str = "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#111827}\
table{border-collapse:collapse;margin:0.5em 0 1.5em 0;font-size:13px}\
th,td{border:1px solid #d1d5db;padding:3px 6px;text-align:right;vertical-align:top}\
th{background:#f3f4f6}td.text,th.text{text-align:left}\
tr.chosen{background:#ecfdf5;font-weight:bold}tr.rejected{color:#6b7280}\
.warning{border-left:4px solid #2563eb;background:#eff6ff;padding:0.5em 1em}\
.projected-label{color:#2563eb;font-weight:bold}";

fn candidate_rows(out: &mut String, tier: &TierRecommendation, rows: &[&Candidate]) {
    out.push_str("<table><thead><tr><th class=\"text\">instance</th><th class=\"text\">verdict</th><th class=\"text\">purchase</th>");
    for limit in &tier.tier.limit {
        let _ = write!(out, "<th>{} ms (limit {})</th>", limit.metric, fmt_number(limit.max_ms.get()));
    }
    out.push_str(
        "<th>replica QPS</th><th>replicas/instance</th><th>instances</th><th>$/h</th><th>$/M requests</th>\
         <th class=\"text\">reason</th></tr></thead><tbody>\n",
    );
    for c in rows {
        let (class, verdict) = match c.verdict {
            Verdict::Chosen => ("chosen", "chosen"),
            Verdict::Feasible => ("feasible", "meets, not chosen"),
            Verdict::Rejected => ("rejected", "rejected"),
        };
        let _ = write!(
            out,
            "<tr class=\"{class}\"><td class=\"text\">{}</td><td class=\"text\">{verdict}</td><td class=\"text\">{}</td>",
            esc(&c.instance),
            purchase(c)
        );
        for check in &c.checks {
            let _ = write!(out, "<td>{}</td>", esc(&value_with_range(check)));
        }
        let _ = writeln!(
            out,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"text\">{}</td></tr>",
            c.replica_qps.map_or_else(|| "-".into(), |q| format!("{q:.1}")),
            c.replicas_per_instance,
            c.instances.map_or_else(|| "-".into(), |n| n.to_string()),
            esc(&usd(c.cost_usd_per_hour)),
            esc(&usd(c.usd_per_million)),
            esc(&c.reasons.join("; "))
        );
    }
    out.push_str("</tbody></table>\n");
}

impl RecommendationExport for HtmlExport {
    fn file_name(&self) -> &'static str {
        "recommendation.html"
    }

    fn render(&self, r: &Recommendation) -> Result<String> {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>qtier instance recommendation</title>\
             <style>{STYLE}</style></head><body>"
        );
        let _ = writeln!(out, "<h1>Instance recommendation</h1>");
        let _ = writeln!(
            out,
            "<p>Model <code>{}</code> ({}), request shape {} (batch {} x {} tokens). Catalog: {} ({}). Tiers: {}.</p>",
            esc(&r.model.paths.join(", ")),
            if r.model.int8 { "int8" } else { "float" },
            r.request,
            r.request.batch,
            r.request.seq,
            esc(&r.catalog.source),
            esc(&r.catalog.region),
            esc(&r.tiers_source)
        );
        let _ = writeln!(
            out,
            "<p class=\"warning\"><span class=\"projected-label\">Projected figures are not measurements.</span> \
             They are the roofline time of the model on the instance divided by the efficiency measured on a \
             calibrating host of the same device class, with a range of x{}-x{}; a projection meets a tier only \
             with --allow-projected ({}), and then by the high end of its range.</p>",
            fmt_number(r.options.projection_range[0]),
            fmt_number(r.options.projection_range[1]),
            if r.options.allow_projected { "given" } else { "not given" }
        );
        out.push_str("<h2>Summary</h2>\n<table><thead><tr><th class=\"text\">tier</th><th class=\"text\">limits</th><th>required QPS</th><th class=\"text\">choice</th><th class=\"text\">basis</th><th class=\"text\">purchase</th><th>instances</th><th>$/h</th><th>$/M requests</th></tr></thead><tbody>\n");
        for tier in &r.tiers {
            let name = esc(tier.tier.name.as_str());
            let color = tier_color(tier.tier.name.as_str());
            let qps = tier.required_qps.map_or_else(|| "-".into(), fmt_number);
            match tier.chosen_candidate() {
                Some(c) => {
                    let _ = writeln!(
                        out,
                        "<tr><td class=\"text\" style=\"color:{color}\">{name}</td><td class=\"text\">{}</td><td>{qps}</td><td class=\"text\"><b>{}</b></td><td class=\"text\">{}</td><td class=\"text\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&limits(tier)),
                        esc(&c.instance),
                        c.basis,
                        purchase(c),
                        c.instances.unwrap_or(1),
                        esc(&usd(c.cost_usd_per_hour)),
                        esc(&usd(c.usd_per_million))
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "<tr><td class=\"text\" style=\"color:{color}\">{name}</td><td class=\"text\">{}</td><td>{qps}</td><td class=\"text\">none meets this tier{}</td><td>-</td><td>-</td><td>-</td><td>-</td><td>-</td></tr>",
                        esc(&limits(tier)),
                        esc(&tier.closest_miss.as_ref().map_or_else(String::new, |m| format!(" (closest miss: {m})")))
                    );
                }
            }
        }
        out.push_str("</tbody></table>\n<h2>Latency against price</h2>\n<figure>\n");
        out.push_str(&latency_cost_svg(r));
        out.push_str("<figcaption>Filled: measured on the instance type. Hollow with a bar: projected, with its range. Dashed lines: each tier's headline limit. Rings: each tier's choice.</figcaption>\n</figure>\n");
        for tier in &r.tiers {
            let _ = writeln!(
                out,
                "<h2 style=\"color:{}\">{} ({})</h2>",
                tier_color(tier.tier.name.as_str()),
                esc(tier.tier.name.as_str()),
                esc(tier.tier.kind.as_str())
            );
            if let Some(description) = &tier.tier.description {
                let _ = writeln!(out, "<p>{}</p>", esc(description.as_str()));
            }
            let _ = writeln!(
                out,
                "<p>Limits: {}; {}; {}; required throughput: {}.</p>\n<p><b>{}</b></p>",
                esc(&limits(tier)),
                esc(spot_words(tier)),
                if tier.tier.int8_required { "int8 model required" } else { "float or int8" },
                tier.required_qps
                    .map_or_else(|| "none given (one instance)".into(), |q| format!("{} requests/s", fmt_number(q))),
                esc(&tier.summary)
            );
            let measured: Vec<&Candidate> = tier.candidates.iter().filter(|c| c.basis == "measured").collect();
            let projected: Vec<&Candidate> = tier.candidates.iter().filter(|c| c.basis == "projected").collect();
            let none: Vec<&Candidate> = tier.candidates.iter().filter(|c| c.basis == "none").collect();
            out.push_str("<h3>Measured</h3>\n");
            if measured.is_empty() {
                out.push_str("<p>No instance type of the catalog was measured.</p>\n");
            } else {
                candidate_rows(&mut out, tier, &measured);
            }
            out.push_str("<h3><span class=\"projected-label\">Projected</span> (not measured)</h3>\n");
            if projected.is_empty() {
                out.push_str("<p>Nothing was projected.</p>\n");
            } else {
                candidate_rows(&mut out, tier, &projected);
            }
            if !none.is_empty() {
                out.push_str("<h3>Not evaluated</h3>\n<ul>\n");
                for c in none {
                    let _ = writeln!(out, "<li>{}: {}</li>", esc(&c.instance), esc(&c.reasons.join("; ")));
                }
                out.push_str("</ul>\n");
            }
        }
        out.push_str("<h2>Calibrations</h2>\n");
        if r.calibrations.is_empty() {
            out.push_str("<p>None.</p>\n");
        } else {
            out.push_str("<table><thead><tr><th class=\"text\">report</th><th class=\"text\">class</th><th class=\"text\">host</th><th class=\"text\">workload</th><th>measured p50 ms</th><th>roofline ms</th><th>efficiency</th><th>p99/p50</th></tr></thead><tbody>\n");
            for c in &r.calibrations {
                let _ = writeln!(
                    out,
                    "<tr><td class=\"text\">{}</td><td class=\"text\">{}</td><td class=\"text\">{} ({} cores)</td><td class=\"text\">{}</td><td>{}</td><td>{:.4}</td><td>{:.2}%</td><td>{:.2}</td></tr>",
                    esc(&c.report),
                    c.class.name(),
                    esc(&c.host.model),
                    c.host.cores,
                    c.measured.shape,
                    ms(Some(c.measured.p50_ms)),
                    c.roofline_ms,
                    c.efficiency * 100.0,
                    c.tail_ratio
                );
            }
            out.push_str("</tbody></table>\n");
        }
        out.push_str("<h2>Reports</h2>\n<ul>\n");
        for report in &r.reports {
            let _ = writeln!(
                out,
                "<li><code>{}</code>: {} ({} threads): {}</li>",
                esc(&report.report),
                esc(report.device()),
                report.threads,
                esc(&report.role)
            );
        }
        out.push_str("</ul>\n<h2>Notes</h2>\n<ul>\n");
        for note in &r.notes {
            let _ = writeln!(out, "<li>{}</li>", esc(note));
        }
        let _ = writeln!(out, "<li>Catalog: {}</li>\n</ul>\n<h2>Price sources</h2>\n<ul>", esc(&r.catalog.note));
        for source in &r.catalog.price_sources {
            let _ = writeln!(out, "<li>{}</li>", esc(source));
        }
        out.push_str("</ul>\n</body></html>\n");
        Ok(out)
    }
}

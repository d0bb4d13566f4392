//! The exports of a recommendation: JSON that round-trips, Markdown and HTML that keep measured
//! and projected figures apart, HTML (with its SVG plot) that is well-formed XML.

mod common;

use common::*;
use qtier_profiles::export::{
    HtmlExport, JsonExport, MarkdownExport, RecommendationExport, all_exports, latency_cost_svg,
};
use qtier_profiles::{InstanceCatalog, LabelledReport, RecommendOptions, Recommendation, Tiers, recommend};

/// The development host's measured report (projected onto every CPU type) plus a synthetic
/// measurement of c6i.xlarge, gold needing 100 requests/s.
fn recommendation() -> Recommendation {
    let catalog = InstanceCatalog::builtin().unwrap();
    let mut tiers = Tiers::builtin().unwrap();
    tiers.apply_qps("gold=100").unwrap();
    let reports: Vec<LabelledReport> = vec![host_report(32), measured("c6i.xlarge", 6.0, 9.0)];
    let options = RecommendOptions {
        allow_projected: true,
        model_shape: Some(minilm()),
        model_shape_source: Some("minilm-config.json".into()),
        ..RecommendOptions::default()
    };
    recommend(&reports, &catalog, &tiers, &options).unwrap()
}

/// Parses `xml` strictly (end tags must match), returning the names of the elements opened.
fn parse_xml(xml: &str) -> Vec<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut names = Vec::new();
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(tag) | quick_xml::events::Event::Empty(tag)) => {
                names.push(String::from_utf8_lossy(tag.name().as_ref()).into_owned());
            }
            Ok(quick_xml::events::Event::Text(text)) => {
                // Entities must be the predefined ones.
                text.decode().unwrap_or_else(|e| panic!("bad text at {}: {e}", reader.buffer_position()));
            }
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(error) => panic!("not well-formed at {}: {error}", reader.buffer_position()),
        }
    }
    names
}

#[test]
fn json_round_trips() {
    let r = recommendation();
    let text = JsonExport.render(&r).unwrap();
    let back: Recommendation = serde_json::from_str(&text).unwrap();
    // Compared as parsed values: serde_json's float parsing is not bit-exact without its
    // float_roundtrip feature, but parsing the same text twice gives the same numbers.
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), value);
    assert_eq!(back.tiers[0].chosen, r.tiers[0].chosen);
    assert_eq!(value["tiers"].as_array().unwrap().len(), 3);
    assert_eq!(value["options"]["projection_range"], serde_json::json!([0.7, 1.5]));
}

#[test]
fn markdown_keeps_measured_and_projected_apart() {
    let r = recommendation();
    let text = MarkdownExport.render(&r).unwrap();
    for tier in ["## gold (real-time)", "## silver (interactive)", "## bronze (async)"] {
        assert!(text.contains(tier), "{tier}");
    }
    assert_eq!(text.matches("### Measured").count(), 3);
    assert_eq!(text.matches("### Projected (not measured)").count(), 3);
    assert!(text.contains("**Projected figures are not measurements.**"));
    // Every table row has as many cells as its header.
    let mut columns = None;
    for line in text.lines() {
        if !line.starts_with('|') {
            columns = None;
            continue;
        }
        let cells = line.replace("\\|", "").matches('|').count();
        match columns {
            None => columns = Some(cells),
            Some(expected) => assert_eq!(cells, expected, "{line}"),
        }
    }
    // c6i.xlarge is measured; c6i.large is projected; GPUs could not be calibrated.
    let gold = &text[text.find("## gold").unwrap()..text.find("## silver").unwrap()];
    let measured = &gold[gold.find("### Measured").unwrap()..gold.find("### Projected").unwrap()];
    assert!(measured.contains("| c6i.xlarge |") && !measured.contains("| c6i.large |"));
    let projected = &gold[gold.find("### Projected").unwrap()..];
    assert!(projected.contains("| c6i.large |"));
    assert!(gold.contains("- g4dn.xlarge: no measured report from a GPU"));
    insta::assert_snapshot!("markdown", text);
}

#[test]
fn html_is_well_formed_xml_with_one_plot() {
    let r = recommendation();
    let page = HtmlExport.render(&r).unwrap();
    let body = page.strip_prefix("<!DOCTYPE html>\n").expect("doctype first");
    let names = parse_xml(body);
    assert_eq!(names.iter().filter(|n| *n == "svg").count(), 1);
    assert_eq!(names.iter().filter(|n| *n == "table").count(), 1 + 3 * 2 + 1, "summary, 2 per tier, calibrations");
    let svg = latency_cost_svg(&r);
    parse_xml(&svg);
    assert!(page.contains(&svg));
    let plotted = r.latencies.iter().filter(|l| l.p99_ms.is_some()).count();
    let projected = r.latencies.iter().filter(|l| l.basis == "projected").count();
    assert_eq!(svg.matches("<g class=\"projected\">").count(), projected);
    assert_eq!(svg.matches("<g class=\"measured\">").count(), plotted - projected);
    assert_eq!(svg.matches("<g class=\"measured\">").count(), 1);
    assert_eq!(svg.matches("<g class=\"sla\">").count(), 3);
    let chosen = r.tiers.iter().filter(|t| t.chosen.is_some()).count();
    assert_eq!(svg.matches("<g class=\"chosen\">").count(), chosen);
    insta::assert_snapshot!("svg", svg);
}

#[test]
fn text_from_reports_is_escaped() {
    let mut r = recommendation();
    r.model.paths = vec!["/models/<a & b>".into()];
    r.reports[0].cpu_model = "\"Evil\" <CPU>".into();
    let page = HtmlExport.render(&r).unwrap();
    parse_xml(page.strip_prefix("<!DOCTYPE html>\n").unwrap());
    assert!(page.contains("/models/&lt;a &amp; b&gt;"));
    let markdown = MarkdownExport.render(&r).unwrap();
    assert!(markdown.contains("/models/<a & b>"));
}

#[test]
fn every_format_has_its_file_name() {
    let names: Vec<&str> = all_exports().iter().map(|e| e.file_name()).collect();
    assert_eq!(names, ["recommendation.json", "recommendation.md", "recommendation.html"]);
}

//! A self-contained HTML page (no scripts, no external files): the summary table and, per
//! workload, an SVG latency CDF and histogram drawn by hand. The markup is well-formed XML
//! (XHTML-compatible), so strict parsers accept it as well as browsers.

use std::fmt::Write as _;

use super::{Exporter, model_name, ms};
use crate::model_bench::{ModelBenchReport, ModelWorkload};

/// Plot width and height in pixels (SVG user units).
const PLOT_WIDTH: f64 = 520.0;
/// Plot height.
const PLOT_HEIGHT: f64 = 240.0;
/// Margin for axis labels.
const MARGIN: f64 = 40.0;
/// Histogram bins.
const HISTOGRAM_BINS: usize = 40;
/// Axis ticks per plot.
const TICKS: usize = 5;

/// HTML exporter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Html;

/// Escapes text for HTML and XML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Exporter for Html {
    fn export(&self, report: &ModelBenchReport) -> String {
        let hw = &report.hardware;
        let mut page = String::new();
        let title = format!("qtier bench: {}", model_name(report));
        let _ = writeln!(page, "<!DOCTYPE html>\n<html lang=\"en\" xmlns=\"http://www.w3.org/1999/xhtml\">\n<head>");
        let _ = writeln!(page, "<meta charset=\"utf-8\"/>\n<title>{}</title>", escape(&title));
        let _ = writeln!(
            page,
            "<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
             td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}\
             .axis{{stroke:#333}}.grid{{stroke:#ddd}}text{{font-size:11px}}</style>\n</head>\n<body>"
        );
        let _ = writeln!(page, "<h1>{}</h1>", escape(&title));
        let _ = writeln!(
            page,
            "<p>{} model <code>{}</code>, kernel {}, {} threads. {} ({} logical cores; {}). Instance type {} ({}). \
             qtier {} ({}).</p>",
            if report.int8 { "int8" } else { "float" },
            escape(&report.model),
            escape(report.kernel.as_deref().unwrap_or("-")),
            report.threads,
            escape(&hw.cpu_model),
            hw.logical_cores,
            escape(&hw.cpu_flags.join(" ")),
            escape(&hw.instance_type),
            escape(&hw.instance_type_source),
            escape(&report.provenance.qtier_version),
            escape(&report.provenance.git_revision)
        );
        let _ = writeln!(
            page,
            "<table>\n<tr><th>workload</th><th>samples</th><th>p50 ms</th><th>p50 95% CI ms</th><th>p90 ms</th>\
             <th>p99 ms</th><th>tail bound ms</th><th>outliers</th></tr>"
        );
        for w in &report.workloads {
            let s = &w.stats;
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3} - {:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td><td>{}</td></tr>",
                escape(&w.name),
                s.count,
                ms(s.p50),
                ms(s.median_ci95.low),
                ms(s.median_ci95.high),
                ms(s.p90),
                ms(s.p99),
                s.tail_upper_bound.map_or_else(|| "-".to_string(), |b| format!("{:.3}", ms(b))),
                s.outliers.indices.len()
            );
        }
        let _ = writeln!(page, "</table>");
        for w in &report.workloads {
            let _ = writeln!(page, "<h2>{}</h2>", escape(&w.name));
            page.push_str(&cdf_svg(w));
            page.push_str(&histogram_svg(w));
        }
        let _ = writeln!(page, "</body>\n</html>");
        page
    }
}

/// Sorted samples in ms and the plotted range `[low, high]`.
fn sorted_ms(w: &ModelWorkload) -> (Vec<f64>, f64, f64) {
    let mut values: Vec<f64> = w.samples_ns.iter().map(|ns| ms(*ns)).collect();
    values.sort_by(f64::total_cmp);
    let low = values.first().copied().unwrap_or(0.0);
    let high = values.last().copied().unwrap_or(1.0).max(low + f64::EPSILON);
    (values, low, high)
}

fn x_of(value: f64, low: f64, high: f64) -> f64 {
    MARGIN + (value - low) / (high - low) * (PLOT_WIDTH - 2.0 * MARGIN)
}

fn y_of(fraction: f64) -> f64 {
    PLOT_HEIGHT - MARGIN - fraction * (PLOT_HEIGHT - 2.0 * MARGIN)
}

/// The frame, x ticks in ms and a title.
fn frame(title: &str, low: f64, high: f64) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{PLOT_WIDTH}\" height=\"{PLOT_HEIGHT}\" \
         viewBox=\"0 0 {PLOT_WIDTH} {PLOT_HEIGHT}\" role=\"img\">\n<title>{}</title>\n",
        escape(title)
    );
    let (x0, x1, y0, y1) = (MARGIN, PLOT_WIDTH - MARGIN, y_of(0.0), y_of(1.0));
    let _ = writeln!(svg, "<line class=\"axis\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\"/>");
    let _ = writeln!(svg, "<line class=\"axis\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\"/>");
    for tick in 0..TICKS {
        let value = low + (high - low) * tick as f64 / (TICKS - 1) as f64;
        let x = x_of(value, low, high);
        let _ = writeln!(svg, "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{y1}\"/>");
        let _ = writeln!(svg, "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{value:.2}</text>", y0 + 14.0);
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        PLOT_WIDTH / 2.0,
        MARGIN / 2.0,
        escape(title)
    );
    let _ = writeln!(svg, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">ms</text>", x1, y0 + 28.0);
    svg
}

fn cdf_svg(w: &ModelWorkload) -> String {
    let (values, low, high) = sorted_ms(w);
    let mut svg = frame(&format!("{}: latency CDF", w.name), low, high);
    let n = values.len().max(1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", x_of(*v, low, high), y_of((i + 1) as f64 / n)))
        .collect();
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>",
        points.join(" ")
    );
    for (label, fraction) in [("0.5", 0.5), ("0.9", 0.9), ("0.99", 0.99)] {
        let y = y_of(fraction);
        let _ = writeln!(
            svg,
            "<line class=\"grid\" x1=\"{MARGIN}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>",
            PLOT_WIDTH - MARGIN
        );
        let _ =
            writeln!(svg, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>", MARGIN - 4.0, y + 4.0);
    }
    svg.push_str("</svg>\n");
    svg
}

fn histogram_svg(w: &ModelWorkload) -> String {
    let (values, low, high) = sorted_ms(w);
    let mut counts = [0usize; HISTOGRAM_BINS];
    for v in &values {
        let bin = (((v - low) / (high - low)) * HISTOGRAM_BINS as f64) as usize;
        counts[bin.min(HISTOGRAM_BINS - 1)] += 1;
    }
    let tallest = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let mut svg = frame(&format!("{}: latency histogram", w.name), low, high);
    let bin_width = (PLOT_WIDTH - 2.0 * MARGIN) / HISTOGRAM_BINS as f64;
    for (bin, count) in counts.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        let height = *count as f64 / tallest * (PLOT_HEIGHT - 2.0 * MARGIN);
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"#ff7f0e\"><title>{count}</title></rect>",
            MARGIN + bin as f64 * bin_width,
            y_of(0.0) - height,
            bin_width - 1.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_report::report;

    #[test]
    fn html_is_well_formed_xml_with_two_plots_per_workload() {
        let mut report = report();
        report.model = "/models/<a & b>".into();
        let page = Html.export(&report);
        let body = page.trim_start_matches("<!DOCTYPE html>\n");
        let mut reader = quick_xml::Reader::from_str(body);
        reader.config_mut().check_end_names = true;
        let mut svgs = 0;
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Start(tag)) if tag.name().as_ref() == b"svg" => svgs += 1,
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => {}
                Err(error) => panic!("not well-formed at {}: {error}", reader.buffer_position()),
            }
        }
        assert_eq!(svgs, 4);
        assert!(page.contains("&lt;a &amp; b&gt;"));
    }

    #[test]
    fn html_snapshot() {
        insta::assert_snapshot!(Html.export(&report()));
    }
}

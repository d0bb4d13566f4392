//! The SVG plot of the HTML export, written by hand: p99 latency at the request shape against
//! the on-demand price of one instance, log-log, one point per instance (filled: measured;
//! hollow with its range as a bar: projected), a horizontal line per tier at its headline limit,
//! and a ring with the tier's name around the instance each tier chose.

use std::fmt::Write as _;

use crate::recommend::{Recommendation, fmt_number};

/// Plot size and margins, px.
const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 500.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 56.0;

/// Escapes text for XML content and attribute values.
pub(crate) fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A tier's color: gold, silver and bronze by name, grey otherwise.
pub(crate) fn tier_color(name: &str) -> &'static str {
    match name {
        "gold" => "#b8860b",
        "silver" => "#6b7280",
        "bronze" => "#a0522d",
        _ => "#374151",
    }
}

/// Margin around the data on a log axis, as a factor.
const AXIS_PADDING: f64 = 1.25;
/// Decades above which an axis gets ticks at powers of ten only (else 1, 2, 5 per decade).
const DENSE_TICK_DECADES: f64 = 3.0;
/// Approximate width of one character of the 11 px labels, px.
const CHAR_WIDTH: f64 = 6.2;
/// Height of a label, px.
const LABEL_HEIGHT: f64 = 11.0;

/// A log10 axis covering `[low, high]` with some padding, drawn from `from` to `to` px.
struct LogAxis {
    low: f64,
    high: f64,
    from: f64,
    to: f64,
}

impl LogAxis {
    fn covering(values: impl Iterator<Item = f64>, from: f64, to: f64) -> Self {
        let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite() && *v > 0.0) {
            low = low.min(v);
            high = high.max(v);
        }
        if !low.is_finite() {
            (low, high) = (1.0, 10.0);
        }
        Self { low: low / AXIS_PADDING, high: high * AXIS_PADDING, from, to }
    }

    fn place(&self, v: f64) -> f64 {
        let t = (v.log10() - self.low.log10()) / (self.high.log10() - self.low.log10());
        self.from + t * (self.to - self.from)
    }

    /// Ticks at 1, 2 and 5 of each decade inside the axis (powers of ten only on wide axes).
    fn ticks(&self) -> Vec<f64> {
        let dense = (self.high / self.low).log10() <= DENSE_TICK_DECADES;
        let multiples: &[f64] = if dense { &[1.0, 2.0, 5.0] } else { &[1.0] };
        let mut ticks = Vec::new();
        for decade in (self.low.log10().floor() as i32)..=(self.high.log10().ceil() as i32) {
            for m in multiples {
                let v = m * 10f64.powi(decade);
                if v >= self.low && v <= self.high {
                    ticks.push(v);
                }
            }
        }
        ticks
    }
}

/// Places labels greedily where they overlap no label placed before.
#[derive(Default)]
struct LabelPlacer {
    placed: Vec<[f64; 4]>,
}

impl LabelPlacer {
    /// The position (x, baseline y) for `text` near the point (px, py), clear of earlier labels
    /// when one of the tried offsets is.
    fn place(&mut self, text: &str, px: f64, py: f64, clearance: f64) -> (f64, f64) {
        let width = text.chars().count() as f64 * CHAR_WIDTH;
        let right = px + clearance;
        let left = px - clearance - width;
        let offsets = [
            (right, py + 4.0),
            (right, py - 8.0),
            (right, py + 16.0),
            (left, py + 4.0),
            (left, py - 8.0),
            (left, py + 16.0),
            (right, py - 20.0),
            (right, py + 28.0),
            (left, py - 20.0),
            (left, py + 28.0),
        ];
        let overlaps =
            |b: &[f64; 4]| self.placed.iter().any(|p| b[0] < p[2] && p[0] < b[2] && b[1] < p[3] && p[1] < b[3]);
        let boxed = |(x, y): (f64, f64)| [x, y - LABEL_HEIGHT + 2.0, x + width, y + 2.0];
        let chosen = offsets.iter().copied().find(|&o| !overlaps(&boxed(o))).unwrap_or(offsets[0]);
        self.placed.push(boxed(chosen));
        chosen
    }
}

/// The plot as an `<svg>` element.
pub fn latency_cost_svg(r: &Recommendation) -> String {
    let points: Vec<_> = r.latencies.iter().filter(|l| l.p99_ms.is_some()).collect();
    let headline_limits: Vec<(String, f64)> = r
        .tiers
        .iter()
        .map(|t| {
            (
                format!(
                    "{} {} <= {} ms",
                    t.tier.name,
                    t.tier.headline().metric,
                    fmt_number(t.tier.headline().max_ms.get())
                ),
                t.tier.headline().max_ms.get(),
            )
        })
        .collect();
    let x = LogAxis::covering(points.iter().map(|p| p.on_demand_usd_per_hour), LEFT, WIDTH - RIGHT);
    let y = LogAxis::covering(
        points
            .iter()
            .flat_map(|p| {
                let range = p.p99_range_ms.unwrap_or([f64::NAN; 2]);
                [p.p99_ms.unwrap_or(f64::NAN), range[0], range[1]]
            })
            .chain(headline_limits.iter().map(|(_, v)| *v)),
        HEIGHT - BOTTOM,
        TOP,
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="plot-title" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<title id="plot-title">p99 latency at {} against on-demand price per instance</title>"#,
        r.request
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#ffffff" stroke="#9ca3af"/>"##,
        WIDTH - LEFT - RIGHT,
        HEIGHT - TOP - BOTTOM
    );
    for tick in x.ticks() {
        let px = x.place(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e5e7eb"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">${}</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 16.0,
            fmt_number(tick)
        );
    }
    for tick in y.ticks() {
        let py = y.place(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e5e7eb"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            fmt_number(tick)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">on-demand price of one instance, USD per hour (log)</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 14.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">p99 latency, ms (log)</text>"#,
        (TOP + HEIGHT - BOTTOM) / 2.0,
        (TOP + HEIGHT - BOTTOM) / 2.0
    );
    for (tier, (label, limit)) in r.tiers.iter().zip(&headline_limits) {
        let py = y.place(*limit);
        let color = tier_color(tier.tier.name.as_str());
        let _ = writeln!(
            s,
            r#"<g class="sla"><line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="{color}" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="{color}">{}</text></g>"#,
            WIDTH - RIGHT,
            WIDTH - RIGHT + 6.0,
            py + 4.0,
            esc(label)
        );
    }
    let mut labels = LabelPlacer::default();
    // Labels keep clear of every marker.
    for point in &points {
        if let Some(p99) = point.p99_ms {
            let (px, py) = (x.place(point.on_demand_usd_per_hour), y.place(p99));
            labels.placed.push([px - 6.0, py - 6.0, px + 6.0, py + 6.0]);
        }
    }
    for point in &points {
        let (Some(p99), px) = (point.p99_ms, x.place(point.on_demand_usd_per_hour)) else { continue };
        let py = y.place(p99);
        let tooltip = format!(
            "{}: p99 {:.3} ms ({}), ${}/h on-demand",
            point.instance,
            p99,
            point.basis,
            fmt_number(point.on_demand_usd_per_hour)
        );
        if let Some([low, high]) = point.p99_range_ms {
            let _ = writeln!(
                s,
                r##"<g class="projected"><line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#2563eb" stroke-dasharray="3 2"/><circle cx="{px:.1}" cy="{py:.1}" r="5" fill="#ffffff" stroke="#2563eb" stroke-width="1.5"><title>{}</title></circle></g>"##,
                y.place(low),
                y.place(high),
                esc(&tooltip)
            );
        } else {
            let _ = writeln!(
                s,
                r##"<g class="measured"><circle cx="{px:.1}" cy="{py:.1}" r="5" fill="#059669"><title>{}</title></circle></g>"##,
                esc(&tooltip)
            );
        }
        let (lx, ly) = labels.place(&point.instance, px, py, 8.0);
        let _ = writeln!(s, r##"<text x="{lx:.1}" y="{ly:.1}" fill="#111827">{}</text>"##, esc(&point.instance));
    }
    for (rank, tier) in r.tiers.iter().enumerate() {
        let Some(chosen) = &tier.chosen else { continue };
        let Some(point) = points.iter().find(|p| &p.instance == chosen) else { continue };
        let Some(p99) = point.p99_ms else { continue };
        let (px, py) = (x.place(point.on_demand_usd_per_hour), y.place(p99));
        let color = tier_color(tier.tier.name.as_str());
        let radius = 9.0 + 4.0 * rank as f64;
        let text = format!("{} choice", tier.tier.name);
        let (lx, ly) = labels.place(&text, px, py, radius + 2.0);
        let _ = writeln!(
            s,
            r#"<g class="chosen"><circle cx="{px:.1}" cy="{py:.1}" r="{radius:.1}" fill="none" stroke="{color}" stroke-width="2"/><text x="{lx:.1}" y="{ly:.1}" fill="{color}" font-weight="bold">{}</text></g>"#,
            esc(&text)
        );
    }
    let legend_x = WIDTH - RIGHT + 6.0;
    let legend_y = HEIGHT - BOTTOM - 40.0;
    let _ = writeln!(
        s,
        r##"<g class="legend"><circle cx="{:.1}" cy="{:.1}" r="5" fill="#059669"/><text x="{:.1}" y="{:.1}">measured</text><circle cx="{:.1}" cy="{:.1}" r="5" fill="#ffffff" stroke="#2563eb" stroke-width="1.5"/><text x="{:.1}" y="{:.1}">projected (bar: range)</text></g>"##,
        legend_x + 5.0,
        legend_y,
        legend_x + 14.0,
        legend_y + 4.0,
        legend_x + 5.0,
        legend_y + 18.0,
        legend_x + 14.0,
        legend_y + 22.0
    );
    if points.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no instance could be measured or projected</text>"#,
            (LEFT + WIDTH - RIGHT) / 2.0,
            (TOP + HEIGHT - BOTTOM) / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

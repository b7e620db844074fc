//! Line charts as standalone SVG: the browser does the text rendering, so the report needs no
//! font files and no plotting library.

use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 52.0;
const COLORS: [&str; 14] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22", "#393b79", "#e7969c", "#637939", "#ad494a",
];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (a reference line rather than a measurement).
    pub dashed: bool,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic axes (values ≤ 0 are left out).
    pub log_x: bool,
    pub log_y: bool,
}

/// One axis: the data range it shows, linear or in decades.
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Scale {
    /// A linear scale padded around the values, or a log scale over whole decades.
    fn fit(values: impl Iterator<Item = f64>, log: bool) -> Scale {
        if !log {
            let (lo, hi) = padded(range(values));
            return Scale { lo, hi, log };
        }
        let (lo, hi) = match range(values.map(f64::log10)) {
            (lo, hi) if lo.is_finite() => (lo.floor(), hi.ceil().max(lo.floor() + 1.0)),
            _ => (0.0, 1.0),
        };
        Scale { lo, hi, log }
    }

    /// Where `value` falls, 0 at the low end and 1 at the high end.
    fn fraction(&self, value: f64) -> f64 {
        let v = if self.log { value.log10() } else { value };
        (v - self.lo) / (self.hi - self.lo)
    }

    fn shows(&self, value: f64) -> bool {
        shows(value, self.log)
    }

    fn ticks(&self, target: usize) -> Vec<(f64, String)> {
        if self.log {
            (self.lo as i32..=self.hi as i32)
                .map(|p| (10f64.powi(p), label(10f64.powi(p))))
                .collect()
        } else {
            nice_ticks(self.lo, self.hi, target)
                .into_iter()
                .map(|t| (t, label(t)))
                .collect()
        }
    }
}

/// Whether a value can be drawn: finite, and positive on a log axis.
fn shows(value: f64, log: bool) -> bool {
    value.is_finite() && (!log || value > 0.0)
}

/// Maps data coordinates onto the plot area.
struct Frame {
    x: Scale,
    y: Scale,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + self.x.fraction(x) * (WIDTH - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        HEIGHT - BOTTOM - self.y.fraction(y) * (HEIGHT - TOP - BOTTOM)
    }
    fn shows(&self, (x, y): (f64, f64)) -> bool {
        self.x.shows(x) && self.y.shows(y)
    }
}

impl Chart {
    pub fn to_svg(&self) -> String {
        let shown: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|&(x, y)| shows(x, self.log_x) && shows(y, self.log_y))
            .collect();
        let frame = Frame {
            x: Scale::fit(shown.iter().map(|p| p.0), self.log_x),
            y: Scale::fit(shown.iter().map(|p| p.1), self.log_y),
        };
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(
            svg,
            r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
            (LEFT + WIDTH - RIGHT) / 2.0,
            escape(&self.title)
        );
        self.axes(&mut svg, &frame);
        for (i, series) in self.series.iter().enumerate() {
            draw_series(&mut svg, &frame, series, COLORS[i % COLORS.len()], i);
        }
        svg.push_str("</svg>\n");
        svg
    }

    fn axes(&self, svg: &mut String, frame: &Frame) {
        let (x0, x1) = (LEFT, WIDTH - RIGHT);
        let (y0, y1) = (HEIGHT - BOTTOM, TOP);
        let _ = write!(
            svg,
            r##"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
            x1 - x0,
            y0 - y1
        );
        for (tick, text) in frame.x.ticks(8) {
            let px = frame.px(tick);
            let _ = write!(
                svg,
                r##"<line x1="{px:.1}" y1="{y0}" x2="{px:.1}" y2="{}" stroke="#444"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
                y0 + 5.0,
                y0 + 18.0,
                text
            );
        }
        let y_ticks = frame.y.ticks(6);
        for (tick, text) in y_ticks {
            let py = frame.py(tick);
            let _ = write!(
                svg,
                r##"<line x1="{x0}" y1="{py:.1}" x2="{x1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{text}</text>"##,
                x0 - 6.0,
                py + 4.0
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(18 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            HEIGHT - 12.0,
            escape(&self.x_label),
            (y0 + y1) / 2.0,
            escape(&self.y_label)
        );
    }
}

fn draw_series(svg: &mut String, frame: &Frame, series: &Series, color: &str, index: usize) {
    let dash = if series.dashed {
        r#" stroke-dasharray="6 4""#
    } else {
        ""
    };
    // A point with a non-finite y ends a line: gaps in the data stay gaps.
    for segment in series.points.split(|&(_, y)| !y.is_finite()) {
        let points: Vec<(f64, f64)> = segment
            .iter()
            .filter(|&&p| frame.shows(p))
            .map(|&(x, y)| (frame.px(x), frame.py(y)))
            .collect();
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            path.join(" ")
        );
        if !series.dashed {
            for (x, y) in &points {
                let _ = write!(
                    svg,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"#
                );
            }
        }
    }
    let ly = TOP + 10.0 + 20.0 * index as f64;
    let lx = WIDTH - RIGHT + 14.0;
    let _ = write!(
        svg,
        r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
        lx + 22.0,
        lx + 28.0,
        ly + 4.0,
        escape(&series.name)
    );
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// A range with a little room around the data; a single value or no data still gets a span.
fn padded((lo, hi): (f64, f64)) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let half = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - half, hi + half);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// Round tick positions (1, 2 or 5 times a power of ten apart) inside `[lo, hi]`, about `target`
/// of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite() && hi > lo && target > 0) {
        return Vec::new();
    }
    let rough = (hi - lo) / target as f64;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A tick label without float noise (0.30000000000000004 → "0.3") and short for large values
/// (25000 → "25k", 1e7 → "10M").
fn label(value: f64) -> String {
    for (scale, suffix) in [(1e9, "G"), (1e6, "M"), (1e4, "k")] {
        if value.abs() >= scale {
            let divisor = if suffix == "k" { 1e3 } else { scale };
            return format!("{}{suffix}", label(value / divisor));
        }
    }
    let text = format!("{value:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        // (8.4 − 3.2) / 5 = 1.04 rounds up to a step of 2.
        assert_eq!(nice_ticks(3.2, 8.4, 5), vec![4.0, 6.0, 8.0]);
        assert_eq!(nice_ticks(0.01, 0.045, 4), vec![0.01, 0.02, 0.03, 0.04]);
        assert!(nice_ticks(1.0, 1.0, 5).is_empty());
    }

    #[test]
    fn labels_drop_float_noise() {
        assert_eq!(label(0.1 + 0.2), "0.3");
        assert_eq!(label(1e6), "1M");
        assert_eq!(label(25_000.0), "25k");
        assert_eq!(label(9_000.0), "9000");
        assert_eq!(label(-0.0), "0");
    }

    #[test]
    fn a_chart_names_its_series_and_escapes_text() {
        let chart = Chart {
            title: "BpB <falling>".into(),
            x_label: "window".into(),
            y_label: "bits per byte".into(),
            series: vec![Series {
                name: "validation".into(),
                points: vec![(1.0, 8.0), (2.0, 6.5), (3.0, 5.0)],
                dashed: false,
            }],
            log_x: false,
            log_y: false,
        };
        let svg = chart.to_svg();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("BpB &lt;falling&gt;"));
        assert!(svg.contains(">validation</text>"));
        assert_eq!(svg.matches("<circle").count(), 3);
    }

    #[test]
    fn a_log_x_axis_ticks_whole_decades_and_drops_non_positive_x() {
        let chart = Chart {
            title: "t".into(),
            x_label: "bytes".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "s".into(),
                points: vec![(0.0, 1.0), (2e3, 2.0), (5e5, 3.0)],
                dashed: false,
            }],
            log_x: true,
            log_y: false,
        };
        let svg = chart.to_svg();
        for decade in [">1000<", ">10k<", ">100k<", ">1M<"] {
            assert!(svg.contains(decade), "{decade} missing");
        }
        assert_eq!(svg.matches("<circle").count(), 2);
    }

    #[test]
    fn a_non_finite_point_breaks_the_line() {
        let chart = Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "gappy".into(),
                points: vec![(1.0, 1.0), (2.0, 2.0), (3.0, f64::NAN), (9.0, 3.0)],
                dashed: false,
            }],
            log_x: false,
            log_y: false,
        };
        let svg = chart.to_svg();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 3);
    }

    #[test]
    fn degenerate_data_still_draws() {
        let chart = Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "one".into(),
                points: vec![(5.0, 0.0)],
                dashed: false,
            }],
            log_x: false,
            log_y: true,
        };
        let svg = chart.to_svg();
        assert!(!svg.contains("NaN"));
        assert!(!svg.contains("inf"));
    }
}

//! `--plot FILE.svg`: p50/p99 over time (log scale), errors per bucket, and the scenario's
//! events and rate steps as labelled vertical lines. Hand-written SVG, no dependencies.

use std::fmt::Write;

use crate::timeline::Bucket;

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 970.0;
/// Latency panel.
const LAT_TOP: f64 = 92.0;
const LAT_BOTTOM: f64 = 420.0;
/// Error panel.
const ERR_TOP: f64 = 450.0;
const ERR_BOTTOM: f64 = 540.0;
const HEIGHT: f64 = 590.0;
/// Rows for event labels above the latency panel, from the lowest up.
const LABEL_ROWS: [f64; 3] = [84.0, 70.0, 56.0];
/// Rough width of one character at font-size 11, for placing labels.
const CHAR_W: f64 = 6.2;

const P50: &str = "#1f77b4";
const P99: &str = "#ff7f0e";
const ERR: &str = "#d62728";
const EVENT: &str = "#7b3294";
const STEP: &str = "#777777";

/// A vertical line on the plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    /// Seconds from the start of the measured window.
    pub t_s: f64,
    pub label: String,
    pub kind: MarkKind,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MarkKind {
    /// A scenario event; `ok` is whether it succeeded.
    Event { ok: bool },
    /// The start of a rate step.
    Step,
}

/// Renders the plot. `window_s` is the nominal measured window; the x axis covers it and
/// any bucket past it.
pub fn render(
    title: &str,
    buckets: &[Bucket],
    bucket_s: f64,
    window_s: f64,
    marks: &[Mark],
) -> String {
    let x_max = buckets
        .last()
        .map_or(window_s, |b| b.t_s + bucket_s)
        .max(window_s)
        .max(bucket_s);
    let x = |t: f64| LEFT + (t / x_max).clamp(0.0, 1.0) * (RIGHT - LEFT);

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>
"#,
        escape(title)
    );
    legend(&mut svg);

    // Latency panel, log scale.
    let (lo, hi) = log_range(buckets);
    let (llo, lhi) = (lo.log10(), hi.log10());
    let y_lat =
        |us: f64| LAT_BOTTOM - (us.max(lo).log10() - llo) / (lhi - llo) * (LAT_BOTTOM - LAT_TOP);
    frame(&mut svg, LAT_TOP, LAT_BOTTOM);
    for tick in log_ticks(lo, hi) {
        let y = y_lat(tick);
        grid_y(&mut svg, y, &axis_us(tick));
    }
    let _ = writeln!(
        svg,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">latency from due time (log)</text>"#,
        (LAT_TOP + LAT_BOTTOM) / 2.0
    );
    for (pick, color, width) in [
        (
            Box::new(|b: &Bucket| b.p50_us) as Box<dyn Fn(&Bucket) -> Option<u64>>,
            P50,
            1.8,
        ),
        (Box::new(|b: &Bucket| b.p99_us), P99, 1.8),
    ] {
        let path = series_path(buckets, bucket_s, &x, |b| pick(b).map(|v| y_lat(v as f64)));
        if !path.is_empty() {
            let _ = writeln!(
                svg,
                r#"<path d="{path}" fill="none" stroke="{color}" stroke-width="{width}" stroke-linejoin="round"/>"#
            );
        }
    }

    // Error panel, linear.
    frame(&mut svg, ERR_TOP, ERR_BOTTOM);
    let max_err = buckets.iter().map(|b| b.errors).max().unwrap_or(0);
    let _ = writeln!(
        svg,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">errors</text>"#,
        (ERR_TOP + ERR_BOTTOM) / 2.0
    );
    if max_err == 0 {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#999">no errors</text>"##,
            (LEFT + RIGHT) / 2.0,
            (ERR_TOP + ERR_BOTTOM) / 2.0 + 4.0
        );
    } else {
        let top = nice_ceil(max_err as f64);
        let y_err = |n: f64| ERR_BOTTOM - n / top * (ERR_BOTTOM - ERR_TOP);
        for tick in [0.0, top / 2.0, top] {
            grid_y(&mut svg, y_err(tick), &format!("{tick}"));
        }
        let w = ((x(bucket_s) - x(0.0)) * 0.9).max(1.0);
        for b in buckets.iter().filter(|b| b.errors > 0) {
            let y = y_err(b.errors as f64);
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{ERR}"/>"#,
                x(b.t_s),
                ERR_BOTTOM - y
            );
        }
    }
    let _ = writeln!(
        svg,
        r#"<text x="{RIGHT}" y="{}" text-anchor="end" fill="{ERR}">per {} bucket, by due time</text>"#,
        ERR_TOP - 4.0,
        format_seconds(bucket_s)
    );

    // Time axis.
    let step = nice_step(x_max / 10.0);
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        let xt = x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{xt:.1}" y1="{ERR_BOTTOM}" x2="{xt:.1}" y2="{}" stroke="#333"/><text x="{xt:.1}" y="{}" text-anchor="middle">{}</text>"##,
            ERR_BOTTOM + 4.0,
            ERR_BOTTOM + 16.0,
            format_seconds(t)
        );
        t += step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">time since the start of the measured window</text>"#,
        (LEFT + RIGHT) / 2.0,
        HEIGHT - 16.0
    );

    marks_svg(&mut svg, marks, &x);
    svg.push_str("</svg>\n");
    svg
}

fn legend(svg: &mut String) {
    let items = [
        (P50, "p50", "line"),
        (P99, "p99", "line"),
        (ERR, "errors", "box"),
        (EVENT, "event", "dash"),
        (STEP, "rate step", "line"),
    ];
    let mut lx = 640.0;
    for (color, name, shape) in items {
        let _ = match shape {
            "box" => writeln!(
                svg,
                r#"<rect x="{lx}" y="13" width="14" height="10" fill="{color}"/>"#
            ),
            "dash" => writeln!(
                svg,
                r#"<line x1="{lx}" y1="18" x2="{}" y2="18" stroke="{color}" stroke-width="1.5" stroke-dasharray="4 3"/>"#,
                lx + 16.0
            ),
            _ => writeln!(
                svg,
                r#"<line x1="{lx}" y1="18" x2="{}" y2="18" stroke="{color}" stroke-width="2.5"/>"#,
                lx + 16.0
            ),
        };
        let _ = writeln!(svg, r#"<text x="{}" y="22">{name}</text>"#, lx + 20.0);
        lx += 28.0 + name.len() as f64 * CHAR_W;
    }
}

fn frame(svg: &mut String, top: f64, bottom: f64) {
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        RIGHT - LEFT,
        bottom - top
    );
}

fn grid_y(svg: &mut String, y: f64, label: &str) {
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
        LEFT - 5.0,
        y + 4.0,
        escape(label)
    );
}

/// A polyline through the bucket midpoints, broken where `y` is `None`.
fn series_path(
    buckets: &[Bucket],
    bucket_s: f64,
    x: &impl Fn(f64) -> f64,
    y: impl Fn(&Bucket) -> Option<f64>,
) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    for b in buckets {
        match y(b) {
            Some(yv) => {
                let cmd = if pen_down { 'L' } else { 'M' };
                let _ = write!(d, "{cmd}{:.1} {yv:.1} ", x(b.t_s + bucket_s / 2.0));
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    d.trim_end().to_owned()
}

fn marks_svg(svg: &mut String, marks: &[Mark], x: &impl Fn(f64) -> f64) {
    // Each label row remembers where its last label ends, so labels do not overlap.
    let mut row_end = [f64::MIN; LABEL_ROWS.len()];
    let mut sorted: Vec<&Mark> = marks.iter().collect();
    sorted.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    for m in sorted {
        let xm = x(m.t_s);
        match m.kind {
            MarkKind::Step => {
                let _ = writeln!(
                    svg,
                    r#"<line x1="{xm:.1}" y1="{LAT_TOP}" x2="{xm:.1}" y2="{ERR_BOTTOM}" stroke="{STEP}" stroke-width="1.2"/><text x="{:.1}" y="{}" fill="{STEP}">{}</text>"#,
                    xm + 3.0,
                    LAT_BOTTOM - 6.0,
                    escape(&m.label)
                );
            }
            MarkKind::Event { ok } => {
                let color = if ok { EVENT } else { ERR };
                let label = if ok {
                    m.label.clone()
                } else {
                    format!("{} (failed)", m.label)
                };
                let width = label.chars().count() as f64 * CHAR_W;
                let row = row_end
                    .iter()
                    .position(|&end| end + 6.0 < xm)
                    .unwrap_or(LABEL_ROWS.len() - 1);
                // Near the right edge, labels end at the line instead of starting at it.
                let (anchor, tx, end) = if xm + 3.0 + width > WIDTH - 4.0 {
                    ("end", xm - 3.0, xm)
                } else {
                    ("start", xm + 3.0, xm + 3.0 + width)
                };
                row_end[row] = row_end[row].max(end);
                let ty = LABEL_ROWS[row];
                // Labels get a white halo so a later event's line never runs through them.
                let _ = writeln!(
                    svg,
                    r#"<line x1="{xm:.1}" y1="{:.1}" x2="{xm:.1}" y2="{ERR_BOTTOM}" stroke="{color}" stroke-width="1.5" stroke-dasharray="5 4"/><text x="{tx:.1}" y="{ty}" text-anchor="{anchor}" fill="{color}" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"#,
                    ty - 10.0,
                    escape(&label)
                );
            }
        }
    }
}

/// Decades that hold every p50 and p99, at least one decade wide.
fn log_range(buckets: &[Bucket]) -> (f64, f64) {
    let values = buckets
        .iter()
        .flat_map(|b| [b.p50_us, b.p99_us])
        .flatten()
        .map(|v| v.max(1) as f64);
    let (min, max) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if max == 0.0 {
        return (100.0, 10_000.0);
    }
    let lo = 10f64.powf(min.log10().floor());
    let mut hi = 10f64.powf(max.log10().ceil());
    if hi <= lo {
        hi = lo * 10.0;
    }
    (lo, hi)
}

/// 1-2-5 ticks from `lo` to `hi` inclusive.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = lo;
    while decade <= hi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let t = decade * m;
            if t <= hi * 1.0001 {
                ticks.push(t);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// The smallest 1/2/5 × 10^k at or above `v`.
fn nice_step(v: f64) -> f64 {
    let v = v.max(1e-3);
    let decade = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|&s| s >= v * 0.9999)
        .unwrap_or(10.0 * decade)
}

/// `200µs`, `1ms`, `50ms`, `2s`: a 1-2-5 latency tick, without trailing zeros.
fn axis_us(us: f64) -> String {
    let (value, unit) = if us >= 1e6 {
        (us / 1e6, "s")
    } else if us >= 1e3 {
        (us / 1e3, "ms")
    } else {
        (us, "µs")
    };
    format!("{}{unit}", (value * 1000.0).round() / 1000.0)
}

/// A round number at or above `v`, for a linear axis.
fn nice_ceil(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let step = nice_step(v / 2.0);
    (v / step).ceil() * step
}

fn format_seconds(s: f64) -> String {
    if s == 0.0 {
        "0".to_owned()
    } else if s < 1.0 {
        format!("{}ms", (s * 1e3).round())
    } else if s.fract().abs() < 1e-9 {
        format!("{s:.0}s")
    } else {
        format!("{s:.1}s")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(t_s: f64, p50: Option<u64>, p99: Option<u64>, errors: u64) -> Bucket {
        Bucket {
            t_s,
            sent: 10 + errors,
            ok: 10,
            errors,
            p50_us: p50,
            p99_us: p99,
            max_us: p99,
        }
    }

    #[test]
    fn renders_series_marks_and_escapes() {
        let buckets = vec![
            bucket(0.0, Some(200), Some(900), 0),
            bucket(1.0, None, None, 5),
            bucket(2.0, Some(20_000), Some(45_000), 1),
            bucket(3.0, Some(210), Some(1_000), 0),
        ];
        let marks = vec![
            Mark {
                t_s: 1.5,
                label: "sim <slow> & co".into(),
                kind: MarkKind::Event { ok: true },
            },
            Mark {
                t_s: 1.6,
                label: "kill".into(),
                kind: MarkKind::Event { ok: false },
            },
            Mark {
                t_s: 2.0,
                label: "1000 rps".into(),
                kind: MarkKind::Step,
            },
        ];
        let svg = render("demo \"run\"", &buckets, 1.0, 4.0, &marks);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("demo &quot;run&quot;"));
        assert!(svg.contains("sim &lt;slow&gt; &amp; co"));
        assert!(svg.contains("kill (failed)"));
        assert!(svg.contains(">1000 rps<"));
        // p50 is broken by the empty bucket: two separate sub-paths.
        let p50_path = svg
            .lines()
            .find(|l| l.contains(&format!("stroke=\"{P50}\"")) && l.starts_with("<path"))
            .unwrap();
        assert_eq!(p50_path.matches('M').count(), 2, "{p50_path}");
        // Log axis from 100 µs to 100 ms, labelled.
        assert!(svg.contains(">100µs<") && svg.contains(">100ms<"));
        // Two rows of labels: the close events do not share one.
        assert!(svg.contains(&format!("y=\"{}\"", LABEL_ROWS[1])));
        assert_eq!(svg.matches(&format!("fill=\"{ERR}\"/>")).count(), 3);
    }

    #[test]
    fn empty_run_still_renders() {
        let svg = render("nothing", &[], 1.0, 10.0, &[]);
        assert!(svg.contains("no errors"));
        assert!(svg.contains(">10s<"));
    }

    #[test]
    fn scales() {
        assert_eq!(nice_step(0.9), 1.0);
        assert_eq!(nice_step(1.2), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(20.0), 20.0);
        assert_eq!(nice_ceil(7.0), 10.0);
        assert_eq!(nice_ceil(3.0), 4.0);
        assert_eq!(log_ticks(100.0, 1000.0), [100.0, 200.0, 500.0, 1000.0]);
        assert_eq!(format_seconds(0.5), "500ms");
        assert_eq!(format_seconds(2.0), "2s");
        assert_eq!(axis_us(2_000_000.0), "2s");
        assert_eq!(axis_us(500.0), "500µs");
        assert_eq!(axis_us(20_000.0), "20ms");
    }
}

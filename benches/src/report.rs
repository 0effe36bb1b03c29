//! The results files' pieces: medians and ranges of rounds ([`median`],
//! [`range`]), numbers in ms ([`ms`]), the machine note
//! ([`machine`]: cores and CPU model), the commit measured ([`commit`]), a
//! Markdown table ([`markdown_table`]) or row ([`table_row`]), and hand-written SVG line charts of
//! latency (log scale) against offered rate: [`latency_chart`] (rate on a
//! linear scale from 0), or [`chart`] in a [`Frame`] of the bench's own.

use std::fmt::Write as _;

/// The median of the finite values (NaN without any).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The smallest and largest finite values (∞, −∞ without any).
pub fn range(v: &[f64]) -> (f64, f64) {
    let f = v.iter().copied().filter(|x| x.is_finite());
    (
        f.clone().fold(f64::INFINITY, f64::min),
        f.fold(f64::NEG_INFINITY, f64::max),
    )
}

/// `12.34`, or `-` for NaN.
pub fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.2}")
    }
}

/// (cores, CPU model name) of this machine.
pub fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    (cores, cpu)
}

/// A Markdown table row of `cells`: `| a | b | c |`.
pub fn table_row<T: std::fmt::Display>(cells: impl IntoIterator<Item = T>) -> String {
    let mut row = String::from("|");
    for cell in cells {
        let _ = write!(row, " {cell} |");
    }
    row
}

/// A Markdown table: a header of `columns` (title, right-aligned: the
/// figures), then one line per row of cells.
pub fn markdown_table<R, T>(columns: &[(&str, bool)], rows: impl IntoIterator<Item = R>) -> String
where
    R: IntoIterator<Item = T>,
    T: std::fmt::Display,
{
    let mut table = table_row(columns.iter().map(|c| c.0));
    table.push('\n');
    table.push_str(&table_row(
        columns.iter().map(|c| if c.1 { "---:" } else { "---" }),
    ));
    table.push('\n');
    for row in rows {
        table.push_str(&table_row(row));
        table.push('\n');
    }
    table
}

/// The short hash of the checked-out commit, so a results file names the
/// code it measured; empty when git cannot tell.
pub fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(rig::workspace_root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// One line (or set of dots) of a chart.
pub struct Series {
    /// Legend text; empty: not in the legend.
    pub label: String,
    /// SVG colour, e.g. `#1f77b4`.
    pub color: &'static str,
    /// Dashed line (e.g. for p50 beside a solid p99).
    pub dashed: bool,
    /// Draw a line through the points (else dots only).
    pub line: bool,
    /// (offered rate in req/s, latency in ms).
    pub points: Vec<(f64, f64)>,
}

/// Where a chart draws: its size, margins, the title's baseline, and each
/// axis's range, ticks and kind. Latency is always on a log scale.
pub struct Frame {
    /// Width and height, px.
    pub size: (f64, f64),
    /// Left, top, right (legend) and bottom margins, px.
    pub margins: (f64, f64, f64, f64),
    /// The title's baseline, px from the top.
    pub title_y: f64,
    /// Offered rate from, to (req/s).
    pub x_range: (f64, f64),
    /// A log scale for the offered rate (else linear).
    pub x_log: bool,
    /// Where the rate has grid lines.
    pub x_ticks: Vec<f64>,
    /// The rate axis's title.
    pub x_title: &'static str,
    /// Latency from, to (ms).
    pub y_range: (f64, f64),
    /// Where the latency has grid lines.
    pub y_ticks: Vec<f64>,
}

/// Latency (log scale, ms) against offered rate (linear, req/s) as SVG:
/// `title` on top, one polyline with dots per series, legend on the right.
pub fn latency_chart(title: &str, series: &[Series]) -> String {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.clone()).collect();
    let max_x = all.iter().map(|p| p.0).fold(1000.0, f64::max);
    let (lo, hi) = (0.1f64, all.iter().map(|p| p.1).fold(10.0, f64::max) * 1.2);
    let step = if max_x > 20_000.0 {
        5000.0
    } else if max_x > 8000.0 {
        2000.0
    } else {
        1000.0
    };
    let x_ticks = (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|r| *r <= max_x)
        .collect();
    let y_ticks = [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
    ]
    .into_iter()
    .filter(|d| (lo..=hi).contains(d))
    .collect();
    let frame = Frame {
        size: (760.0, 420.0),
        margins: (60.0, 20.0, 230.0, 50.0),
        title_y: 14.0,
        x_range: (0.0, max_x),
        x_log: false,
        x_ticks,
        x_title: "offered rate, req/s",
        y_range: (lo, hi),
        y_ticks,
    };
    chart(title, &frame, series)
}

/// `series` as SVG in `frame`: `title` on top, grid lines at the ticks, one
/// polyline (where asked) with dots per series, legend on the right.
pub fn chart(title: &str, frame: &Frame, series: &[Series]) -> String {
    let (w, h) = frame.size;
    let (left, top, right, bottom) = frame.margins;
    let (pw, ph) = (w - left - right, h - top - bottom);
    let ((x_lo, x_hi), (y_lo, y_hi)) = (frame.x_range, frame.y_range);
    let x = |r: f64| {
        let share = if frame.x_log {
            (r.log10() - x_lo.log10()) / (x_hi.log10() - x_lo.log10())
        } else {
            (r - x_lo) / (x_hi - x_lo)
        };
        left + share * pw
    };
    let y = |v: f64| top + ph - (v.log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10()) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{title}</text>"#,
        left + pw / 2.0,
        frame.title_y
    );
    for &tick in &frame.y_ticks {
        let yy = y(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{tick}</text>"##,
            left + pw,
            left - 4.0,
            yy + 4.0
        );
    }
    for &r in &frame.x_ticks {
        let xx = x(r);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{top}" y2="{}" stroke="#eee"/><text x="{xx:.1}" y="{}" text-anchor="middle">{r:.0}</text>"##,
            top + ph,
            top + ph + 14.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">latency, ms (log)</text>"#,
        left + pw / 2.0,
        h - 12.0,
        frame.x_title,
        top + ph / 2.0,
        top + ph / 2.0
    );
    let mut legend = 0.0;
    for one in series {
        if one.points.is_empty() {
            continue;
        }
        let color = one.color;
        let dash = if one.dashed {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        };
        if one.line {
            let path: Vec<String> = one
                .points
                .iter()
                .map(|(r, v)| format!("{:.1},{:.1}", x(*r), y(*v)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                path.join(" ")
            );
        }
        for (r, v) in &one.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x(*r),
                y(*v)
            );
        }
        if one.label.is_empty() {
            continue;
        }
        let ly = top + 10.0 + legend * 18.0;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            one.label
        );
        legend += 1.0;
    }
    let _ = writeln!(s, "</svg>");
    s
}

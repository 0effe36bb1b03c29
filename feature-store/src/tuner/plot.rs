//! The one SVG plotter of the tuner: the refresh interval (log scale, left
//! axis) and each window's metric (right axis) over time, the threshold
//! dashed, an optional marker. Used by the simulation's report and by
//! `mlgw-features tuner report` on a real job's stored history.

use std::fmt::Write as _;
use std::time::Duration;

use super::controller::human;

/// One point: a window's end, the interval in force, its metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlotPoint {
    /// Time from the plot's start.
    pub at: Duration,
    /// The interval in force after the window.
    pub interval: Duration,
    /// The window's metric, if judged.
    pub metric: Option<f64>,
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct Plot<'a> {
    /// The metric's name ("AUC").
    pub metric_name: &'a str,
    /// The acceptable value.
    pub threshold: f64,
    /// Bottom and top of the interval axis.
    pub interval_range: (Duration, Duration),
    /// Bottom and top of the metric axis.
    pub metric_range: (f64, f64),
    /// The time the x axis spans.
    pub span: Duration,
    /// The points, in time order.
    pub points: &'a [PlotPoint],
    /// Labels under the x axis.
    pub x_ticks: Vec<(Duration, String)>,
    /// A vertical marker with its label.
    pub marker: Option<(Duration, String)>,
    /// A line of text above the plot (job and dates).
    pub subtitle: String,
}

/// The metric axis for `points`: the threshold and every metric with a
/// margin, within [0, 1] for metrics that live there.
pub fn metric_range(points: &[PlotPoint], threshold: f64, unit_interval: bool) -> (f64, f64) {
    let values = points.iter().filter_map(|p| p.metric).chain([threshold]);
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let margin = ((hi - lo) * 0.1).max(0.01);
    let (mut lo, mut hi) = (lo - margin, hi + margin);
    if unit_interval {
        (lo, hi) = (lo.max(0.0), hi.min(1.0));
    }
    (lo, hi)
}

/// Ticks every `step` across `span`, labelled by `label`.
pub fn ticks(
    span: Duration,
    step: Duration,
    label: impl Fn(Duration) -> String,
) -> Vec<(Duration, String)> {
    let step = step.max(Duration::from_secs(1));
    let mut out = Vec::new();
    let mut t = Duration::ZERO;
    while t <= span && out.len() < 60 {
        out.push((t, label(t)));
        t += step;
    }
    out
}

/// The plot as an SVG document.
pub fn svg(plot: &Plot<'_>) -> String {
    let (w, h, left, right, top, bottom) = (960.0, 420.0, 70.0, 70.0, 42.0, 50.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let total = plot.span.as_secs_f64().max(1.0);
    let x = |d: Duration| left + plot_w * (d.as_secs_f64() / total).clamp(0.0, 1.0);
    let (lo, hi) = (
        plot.interval_range.0.as_secs_f64().max(1.0).log2(),
        plot.interval_range.1.as_secs_f64().max(1.0).log2(),
    );
    let y_int = |d: Duration| {
        let v = (d.as_secs_f64().max(1.0).log2() - lo) / (hi - lo).max(1e-9);
        top + plot_h * (1.0 - v.clamp(0.0, 1.0))
    };
    let (m_lo, m_hi) = plot.metric_range;
    let y_met =
        |m: f64| top + plot_h * (1.0 - ((m - m_lo) / (m_hi - m_lo).max(1e-9)).clamp(0.0, 1.0));
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="16">Refresh interval (blue, log scale) and window {} (orange); threshold dashed</text>
<text x="{left}" y="32" fill="#555">{}</text>"##,
        escape(plot.metric_name),
        escape(&plot.subtitle)
    );
    let mut metric_path = String::new();
    for p in plot.points {
        if let Some(m) = p.metric {
            let cmd = if metric_path.is_empty() { 'M' } else { 'L' };
            let _ = write!(metric_path, "{cmd}{:.1},{:.1} ", x(p.at), y_met(m));
        }
    }
    if !metric_path.is_empty() {
        let _ = writeln!(
            out,
            r##"<path d="{metric_path}" fill="none" stroke="#f28e2b" stroke-width="1"/>"##
        );
    }
    let mut interval_path = String::new();
    let mut prev: Option<f64> = None;
    for p in plot.points {
        let (xx, yy) = (x(p.at), y_int(p.interval));
        match prev {
            None => {
                let _ = write!(interval_path, "M{left:.1},{yy:.1} L{xx:.1},{yy:.1} ");
            }
            Some(py) => {
                let _ = write!(interval_path, "L{xx:.1},{py:.1} L{xx:.1},{yy:.1} ");
            }
        }
        prev = Some(yy);
    }
    if let Some(py) = prev {
        let _ = write!(interval_path, "L{:.1},{py:.1}", left + plot_w);
        let _ = writeln!(
            out,
            r##"<path d="{interval_path}" fill="none" stroke="#4e79a7" stroke-width="2"/>"##
        );
    }
    let ty = y_met(plot.threshold);
    let _ = writeln!(
        out,
        r##"<line x1="{left}" x2="{:.1}" y1="{ty:.1}" y2="{ty:.1}" stroke="#e15759" stroke-dasharray="6 4"/>"##,
        left + plot_w
    );
    if let Some((at, label)) = &plot.marker {
        let cx = x(*at);
        let _ = writeln!(
            out,
            r##"<line x1="{cx:.1}" x2="{cx:.1}" y1="{top}" y2="{:.1}" stroke="#999"/><text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
            top + plot_h,
            cx + 4.0,
            top + 14.0,
            escape(label)
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let mut tick = plot.interval_range.0.max(Duration::from_secs(1));
    while tick <= plot.interval_range.1 {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#4e79a7">{}</text>"##,
            left - 6.0,
            y_int(tick) + 4.0,
            human(tick)
        );
        tick *= 2;
    }
    for i in 0..=5 {
        let m = m_lo + (m_hi - m_lo) * f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#f28e2b">{m:.2}</text>"##,
            left + plot_w + 6.0,
            y_met(m) + 4.0
        );
    }
    for (at, label) in &plot.x_ticks {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            x(*at),
            top + plot_h + 18.0,
            escape(label)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// `text` safe inside SVG text and attribute values.
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
    fn a_plot_draws_both_series_the_threshold_and_escapes_text() {
        let hour = Duration::from_secs(3600);
        let points = [
            PlotPoint {
                at: hour,
                interval: hour,
                metric: Some(0.9),
            },
            PlotPoint {
                at: 2 * hour,
                interval: 2 * hour,
                metric: None,
            },
            PlotPoint {
                at: 3 * hour,
                interval: hour,
                metric: Some(0.8),
            },
        ];
        let range = metric_range(&points, 0.85, true);
        assert!(
            range.0 < 0.8 && range.1 > 0.9 && range.1 <= 1.0,
            "{range:?}"
        );
        let svg = svg(&Plot {
            metric_name: "AUC",
            threshold: 0.85,
            interval_range: (hour, 4 * hour),
            metric_range: range,
            span: 4 * hour,
            points: &points,
            x_ticks: ticks(4 * hour, hour, |t| format!("{} h", t.as_secs() / 3600)),
            marker: None,
            subtitle: "job <a> & b".into(),
        });
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("job &lt;a&gt; &amp; b"), "{svg}");
        assert_eq!(svg.matches("<path").count(), 2, "{svg}");
        assert!(svg.contains("stroke-dasharray"), "{svg}");
        assert!(svg.contains(">4 h<"), "{svg}");
    }
}

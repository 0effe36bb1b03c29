//! Reading a server's Prometheus `/metrics` page, for tests and benches: a
//! [`Page`] parsed by the `prometheus-parse` crate, with the lookups they
//! need: one series by name and labels ([`Page::value`], or written as in
//! the exposition with [`Page::get`]), the series whose labels include some
//! ([`Page::matching`]) and their sum ([`Page::sum`]), each series of a
//! family ([`Page::series`]) and a histogram's count and sum
//! ([`Page::histogram`]).
//!
//! Histogram buckets are read as `name_bucket` with an `le` label; `_sum` and
//! `_count` as series of their own. Label values must not contain `,`, `=`
//! or `}` (the parser splits on them); the servers' label values do not.

use std::collections::HashMap;

use anyhow::{Context, Result};
use prometheus_parse::{Sample, Scrape, Value};

/// One parsed `/metrics` page.
#[derive(Debug, Clone)]
pub struct Page {
    samples: Vec<Sample>,
}

/// A histogram series' totals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramTotals {
    /// Observations (the `_count` series).
    pub count: f64,
    /// Sum of the observed values (the `_sum` series).
    pub sum: f64,
}

fn labels_are(sample: &Sample, labels: &[(&str, &str)]) -> bool {
    sample.labels.len() == labels.len() && labels_include(sample, labels)
}

fn labels_include(sample: &Sample, labels: &[(&str, &str)]) -> bool {
    labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v))
}

/// A counter's, gauge's or untyped series' value; `None` for a histogram or
/// summary (read those through their `_bucket`, `_sum`, `_count` names).
fn scalar(value: &Value) -> Option<f64> {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
        Value::Histogram(_) | Value::Summary(_) => None,
    }
}

impl Page {
    /// Parses a page in the Prometheus text format.
    ///
    /// # Errors
    /// When the parser refuses the text.
    pub fn parse(text: &str) -> Result<Page> {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .context("parse the Prometheus text exposition")?;
        Ok(Page {
            samples: scrape.samples,
        })
    }

    /// `GET {base}/metrics`, parsed.
    ///
    /// # Errors
    /// When the server does not answer 200 or the page does not parse.
    pub async fn scrape(http: &reqwest::Client, base: &str) -> Result<Page> {
        let text = crate::get_ok(http, &format!("{base}/metrics"))
            .await?
            .text()
            .await?;
        Page::parse(&text)
    }

    /// The value of the series `name` with exactly `labels` (in any order).
    /// A histogram bucket is `name_bucket` with its `le` among `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        if let Some(family) = name.strip_suffix("_bucket")
            && let Some(&(_, le)) = labels.iter().find(|(k, _)| *k == "le")
        {
            let le: f64 = le.parse().ok()?;
            let rest: Vec<(&str, &str)> =
                labels.iter().copied().filter(|(k, _)| *k != "le").collect();
            return self
                .samples
                .iter()
                .filter(|s| s.metric == family && labels_are(s, &rest))
                .find_map(|s| match &s.value {
                    Value::Histogram(buckets) => {
                        buckets.iter().find(|b| b.less_than == le).map(|b| b.count)
                    }
                    _ => None,
                });
        }
        self.samples
            .iter()
            .find(|s| s.metric == name && labels_are(s, labels))
            .and_then(|s| scalar(&s.value))
    }

    /// The value of one series written as in the exposition, e.g.
    /// `mlgw_requests_total{front="rest",route="predict",code="ok"}` or a
    /// bare name.
    pub fn get(&self, series: &str) -> Option<f64> {
        let (name, labels) = split_series(series)?;
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.value(&name, &labels)
    }

    /// The sum of every series of `name` whose labels include `labels`
    /// (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).sum()
    }

    /// The values of the series of `name` whose labels include `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.series(name)
            .filter(|(l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
    }

    /// Each series of `name` (a counter, gauge or untyped family): its labels
    /// and value.
    pub fn series<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a HashMap<String, String>, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.metric == name)
            .filter_map(|s| Some((&*s.labels, scalar(&s.value)?)))
    }

    /// Every series' name and label names (sorted), `le` left out: a
    /// histogram appears once under its own name and again as `_sum` and
    /// `_count`. For comparing which series two pages expose.
    pub fn series_shapes(&self) -> std::collections::BTreeSet<(String, Vec<String>)> {
        self.samples
            .iter()
            .map(|s| {
                let mut names: Vec<String> = s.labels.keys().cloned().collect();
                names.sort_unstable();
                (s.metric.clone(), names)
            })
            .collect()
    }

    /// The count and sum of the histogram `name` with exactly `labels`.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<HistogramTotals> {
        Some(HistogramTotals {
            count: self.value(&format!("{name}_count"), labels)?,
            sum: self.value(&format!("{name}_sum"), labels)?,
        })
    }
}

/// `name{k="v",…}` as (name, labels), read by the same parser as a page
/// (one sample line with a dummy value).
fn split_series(series: &str) -> Option<(String, Vec<(String, String)>)> {
    let scrape = Scrape::parse(std::iter::once(Ok(format!("{series} 0")))).ok()?;
    let sample = scrape.samples.into_iter().next()?;
    let labels = sample
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some((sample.metric, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP mlgw_requests_total Finished requests.
# TYPE mlgw_requests_total counter
mlgw_requests_total{front="rest",route="predict",code="ok"} 3
mlgw_requests_total{front="grpc",route="predict",code="ok"} 4
mlgw_requests_total{front="grpc",route="predict",code="overloaded"} 1
# HELP mlgw_predict_seconds Prediction time.
# TYPE mlgw_predict_seconds histogram
mlgw_predict_seconds_bucket{le="0.001"} 1
mlgw_predict_seconds_bucket{le="1"} 2
mlgw_predict_seconds_bucket{le="+Inf"} 3
mlgw_predict_seconds_sum 2.5
mlgw_predict_seconds_count 3
# HELP mlgw_stage_seconds Stage time.
# TYPE mlgw_stage_seconds histogram
mlgw_stage_seconds_bucket{stage="decode",le="1"} 5
mlgw_stage_seconds_bucket{stage="decode",le="+Inf"} 5
mlgw_stage_seconds_sum{stage="decode"} 0.5
mlgw_stage_seconds_count{stage="decode"} 5
# HELP mlgw_requests_in_flight Now.
# TYPE mlgw_requests_in_flight gauge
mlgw_requests_in_flight 0
"#;

    #[test]
    fn series_by_name_and_labels() -> Result<()> {
        let page = Page::parse(PAGE)?;
        let ok = [("route", "predict"), ("code", "ok"), ("front", "grpc")];
        assert_eq!(page.value("mlgw_requests_total", &ok), Some(4.0));
        assert_eq!(page.value("mlgw_requests_total", &ok[..2]), None);
        assert_eq!(
            page.get(r#"mlgw_requests_total{front="rest",route="predict",code="ok"}"#),
            Some(3.0)
        );
        assert_eq!(page.get("mlgw_requests_in_flight"), Some(0.0));
        assert_eq!(page.get("mlgw_absent_total"), None);
        Ok(())
    }

    #[test]
    fn sums_over_labels() -> Result<()> {
        let page = Page::parse(PAGE)?;
        assert_eq!(
            page.sum("mlgw_requests_total", &[("route", "predict")]),
            8.0
        );
        assert_eq!(page.sum("mlgw_requests_total", &[("front", "grpc")]), 5.0);
        assert_eq!(page.sum("mlgw_absent_total", &[]), 0.0);
        let codes: f64 = page
            .series("mlgw_requests_total")
            .filter(|(l, _)| l.get("code").is_some_and(|c| c != "ok"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(codes, 1.0);
        Ok(())
    }

    #[test]
    fn histograms_by_bucket_count_and_sum() -> Result<()> {
        let page = Page::parse(PAGE)?;
        assert_eq!(
            page.histogram("mlgw_predict_seconds", &[]),
            Some(HistogramTotals {
                count: 3.0,
                sum: 2.5
            })
        );
        assert_eq!(
            page.histogram("mlgw_stage_seconds", &[("stage", "decode")])
                .map(|h| h.count),
            Some(5.0)
        );
        assert_eq!(
            page.get(r#"mlgw_predict_seconds_bucket{le="1"}"#),
            Some(2.0)
        );
        assert_eq!(
            page.value(
                "mlgw_stage_seconds_bucket",
                &[("le", "+Inf"), ("stage", "decode")]
            ),
            Some(5.0)
        );
        assert_eq!(page.get("mlgw_predict_seconds_count"), Some(3.0));
        Ok(())
    }
}

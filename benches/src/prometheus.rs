//! Reading the servers' Prometheus `/metrics` text: [`scrape`] fetches it,
//! [`metric`] reads one sample by its full name with labels (0 when
//! absent), [`delta`] the change of one between two scrapes, and
//! [`failure_codes`] the gateway's failed gRPC predictions by code.

use std::collections::BTreeMap;

use anyhow::Result;

/// The value of the sample named exactly `name` (with its labels, e.g.
/// `mlgw_shadow_calls_total{model="m",version="2",result="ok"}`), 0 when
/// absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every series whose line starts with `prefix` (a name and the
/// start of its labels, e.g. `mlgw_model_calls_total{pool="callers"`).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `metric(after, name) - metric(before, name)`.
pub fn delta(before: &str, after: &str, name: &str) -> f64 {
    metric(after, name) - metric(before, name)
}

/// `GET {base}/metrics` as text.
///
/// # Errors
/// When the server does not answer 200.
pub async fn scrape(http: &reqwest::Client, base: &str) -> Result<String> {
    Ok(http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Failed gRPC predictions by the gateway's own code (from /metrics) between
/// two scrapes, e.g. "overloaded 12, feature_store_unavailable 3"; empty if
/// none.
pub fn failure_codes(before: &str, after: &str) -> String {
    const PREFIX: &str = "mlgw_requests_total{front=\"grpc\",route=\"predict\",code=\"";
    let counts = |text: &str| -> BTreeMap<String, f64> {
        text.lines()
            .filter_map(|l| {
                let (code, n) = l.strip_prefix(PREFIX)?.split_once("\"} ")?;
                Some((code.to_owned(), n.trim().parse().ok()?))
            })
            .collect()
    };
    let was = counts(before);
    counts(after)
        .into_iter()
        .filter(|(code, _)| code != "ok")
        .map(|(code, n)| (n - was.get(&code).copied().unwrap_or(0.0), code))
        .filter(|(n, _)| *n > 0.0)
        .map(|(n, code)| format!("{code} {n:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

//! The gateway's `/metrics` as the load benches read it, on
//! [`rig::metrics::Page`]: [`scrape`] fetches and parses it, [`delta`] is
//! the change of one series between two scrapes, and [`failure_codes`] the
//! gateway's failed gRPC predictions by code.

use std::collections::BTreeMap;

use anyhow::Result;
use rig::metrics::Page;

/// `GET {base}/metrics`, parsed.
///
/// # Errors
/// When the server does not answer 200 or the page does not parse.
pub async fn scrape(http: &reqwest::Client, base: &str) -> Result<Page> {
    Page::scrape(http, base).await
}

/// The change of the series written `series` (e.g.
/// `mlgw_shadow_calls_total{model="m",version="2",result="ok"}`) between two
/// scrapes; an absent series counts as 0.
pub fn delta(before: &Page, after: &Page, series: &str) -> f64 {
    after.get(series).unwrap_or(0.0) - before.get(series).unwrap_or(0.0)
}

/// Failed predictions (both fronts) by the gateway's own code (from
/// /metrics) between two scrapes, e.g. "overloaded 12,
/// feature_store_unavailable 3"; empty if none.
pub fn failure_codes(before: &Page, after: &Page) -> String {
    let counts = |page: &Page| -> BTreeMap<String, f64> {
        page.series("mlgw_requests_total")
            .filter(|(l, _)| l.get("route").is_some_and(|r| r == "predict"))
            .filter_map(|(l, n)| Some((l.get("code")?.clone(), n)))
            .fold(BTreeMap::new(), |mut sum, (code, n)| {
                *sum.entry(code).or_insert(0.0) += n;
                sum
            })
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

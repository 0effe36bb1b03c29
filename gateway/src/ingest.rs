//! The dynamic-feature stream ingest hosted by the gateway (`[ingest]`):
//! [`feature_store::ingest::Ingest`] started with the server's reader and
//! stopped with it, and its counters on `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use feature_store::ingest::{Ingest, IngestError, IngestSettings, IngestStats, Reason};
use feature_store::reader::FeatureReader;
use feature_store::store::AnyStore;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The consumer for `settings`, when enabled.
///
/// # Errors
/// [`IngestError`] when no dynamic view declares a topic or the Kafka
/// client cannot be set up.
pub fn start(
    settings: &IngestSettings,
    reader: &Arc<FeatureReader<AnyStore>>,
) -> Result<Option<Ingest<AnyStore>>, IngestError> {
    if !settings.enabled {
        return Ok(None);
    }
    Ingest::new(Arc::clone(reader), settings).map(Some)
}

/// `mlgw_ingest_*` from the ingest's counters, read at each scrape.
#[derive(Debug)]
pub struct IngestFamilies(pub Arc<IngestStats>);

impl Collector for IngestFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let stats = &self.0;
        let mut events = encoder.encode_descriptor(
            "mlgw_ingest_events",
            "Stream records by view and result: ingested (stored), dead_lettered (sent to the dead-letter topic).",
            None,
            MetricType::Counter,
        )?;
        for v in &stats.views {
            let dead: u64 = v
                .dead_lettered
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .sum();
            for (result, n) in [
                ("ingested", v.ingested.load(Ordering::Relaxed)),
                ("dead_lettered", dead),
            ] {
                ConstCounter::new(n).encode(
                    events.encode_family(&[("view", v.view.as_str()), ("result", result)])?,
                )?;
            }
        }
        let mut dead = encoder.encode_descriptor(
            "mlgw_ingest_dead_letters",
            "Stream records sent to the dead-letter topic, by view and reason.",
            None,
            MetricType::Counter,
        )?;
        for v in &stats.views {
            for (reason, n) in Reason::ALL.iter().zip(&v.dead_lettered) {
                ConstCounter::new(n.load(Ordering::Relaxed)).encode(
                    dead.encode_family(&[("view", v.view.as_str()), ("reason", reason.as_str())])?,
                )?;
            }
        }
        let mut retries = encoder.encode_descriptor(
            "mlgw_ingest_retries",
            "Batches whose store write or dead-letter send failed and was retried (nothing is committed past them).",
            None,
            MetricType::Counter,
        )?;
        for (step, n) in [
            ("store", &stats.store_retries),
            ("dead_letter", &stats.dead_letter_retries),
        ] {
            ConstCounter::new(n.load(Ordering::Relaxed))
                .encode(retries.encode_family(&[("step", step)])?)?;
        }
        let failures = encoder.encode_descriptor(
            "mlgw_ingest_commit_failures",
            "Offset commits Kafka refused (those records are read again; events are idempotent).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(stats.commit_failures.load(Ordering::Relaxed)).encode(failures)?;
        let mut lag = encoder.encode_descriptor(
            "mlgw_ingest_lag",
            "Records not yet committed per assigned topic partition (end offset minus committed offset), as last measured.",
            None,
            MetricType::Gauge,
        )?;
        for ((topic, partition), n) in stats.lag() {
            let partition = partition.to_string();
            ConstGauge::new(n).encode(lag.encode_family(&[
                ("topic", topic.as_str()),
                ("partition", partition.as_str()),
            ])?)?;
        }
        Ok(())
    }
}

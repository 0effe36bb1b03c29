//! The prediction log writer: predictions are queued off the hot path in a
//! bounded buffer and written to the store in batches by one task.
//!
//! Nothing is lost silently. A full buffer refuses the record at once (the
//! request is not slowed down), counts it and logs a warning at most once a
//! second with the running count. A write that fails is retried with backoff
//! while the error is transient; what still fails is counted and logged.
//! [`PredictionLog::flush`] waits until everything queued before it is
//! written (feedback for a just-made prediction uses it), and
//! [`PredictionLog::close`] writes what is left at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use feature_store::log::PredictionRecord;
use feature_store::store::{FullStore, StoreError};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Deserialize;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::publish::Publisher;

/// Prediction log settings (`[prediction_log]` in the gateway config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Whether predictions are logged at all.
    pub enabled: bool,
    /// Records the buffer holds before new ones are refused (and counted).
    pub buffer: usize,
    /// Records written per store call at most.
    pub batch: usize,
    /// How long the store keeps records (ScyllaDB TTL), e.g. "90d".
    #[serde(with = "humantime_secs")]
    pub retention: Duration,
    /// Extra attempts for a write that failed transiently.
    pub retries: u32,
    /// How long the writer waits after the first queued record for more to
    /// join its batch (unless the batch is full or a flush waits). Each store
    /// write has a fixed cost (an embedded commit, a round trip), so at low
    /// rates one write per record would cost more CPU than the predictions.
    pub linger_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            enabled: true,
            buffer: 65_536,
            batch: 512,
            retention: feature_store::log::DEFAULT_LOG_RETENTION,
            retries: 3,
            linger_ms: 20,
        }
    }
}

mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        feature_store::definitions::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Counts of what happened to logged predictions.
#[derive(Debug)]
pub struct LogStats {
    /// Written to the store.
    pub written: AtomicU64,
    /// Refused because the buffer was full.
    pub dropped_full: AtomicU64,
    /// Lost because the store kept failing.
    pub failed: AtomicU64,
    /// Store calls made.
    pub batches: AtomicU64,
    /// Records waiting in the buffer.
    pub queued: AtomicU64,
    /// Records per store write.
    pub batch_records: telemetry::prom::Histogram,
}

impl Default for LogStats {
    fn default() -> Self {
        LogStats {
            written: AtomicU64::default(),
            dropped_full: AtomicU64::default(),
            failed: AtomicU64::default(),
            batches: AtomicU64::default(),
            queued: AtomicU64::default(),
            batch_records: telemetry::prom::Histogram::new(telemetry::prom::SIZE_BUCKETS),
        }
    }
}

/// The prediction log's counters as a `prometheus-client` collector, read
/// at each scrape.
#[derive(Debug)]
pub struct LogFamilies(Arc<LogStats>);

impl Collector for LogFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let stats = &self.0;
        let mut family = encoder.encode_descriptor(
            "mlgw_prediction_log_records",
            "Predictions by what happened to their log record.",
            None,
            MetricType::Counter,
        )?;
        for (result, c) in [
            ("written", &stats.written),
            ("dropped_buffer_full", &stats.dropped_full),
            ("failed", &stats.failed),
        ] {
            ConstCounter::new(get(c)).encode(family.encode_family(&[("result", result)])?)?;
        }
        ConstCounter::new(get(&stats.batches)).encode(encoder.encode_descriptor(
            "mlgw_prediction_log_writes",
            "Store calls made by the log writer.",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(i64::try_from(get(&stats.queued)).unwrap_or(i64::MAX)).encode(
            encoder.encode_descriptor(
                "mlgw_prediction_log_queued",
                "Records waiting in the log buffer.",
                None,
                MetricType::Gauge,
            )?,
        )?;
        stats.batch_records.encode(encoder.encode_descriptor(
            "mlgw_prediction_log_batch_records",
            "Records per prediction log write.",
            None,
            MetricType::Histogram,
        )?)
    }
}

enum Message {
    Record(Box<PredictionRecord>),
    Flush(oneshot::Sender<()>),
}

/// The handle the gateway core records predictions through.
pub struct PredictionLog {
    tx: mpsc::Sender<Message>,
    stats: Arc<LogStats>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Drop warnings, at most one a second.
    warnings: telemetry::throttle::Throttle,
}

impl PredictionLog {
    /// Starts the writer task on `store`; each batch it writes is handed to
    /// `publisher` too, when there is one.
    pub fn start<S: FullStore>(
        store: Arc<S>,
        config: &LogConfig,
        publisher: Option<Arc<Publisher>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let stats = Arc::new(LogStats::default());
        let writer = tokio::spawn(write_loop(
            store,
            rx,
            Arc::clone(&stats),
            config.clone(),
            publisher,
        ));
        PredictionLog {
            tx,
            stats,
            writer: Mutex::new(Some(writer)),
            warnings: telemetry::throttle::Throttle::new(Duration::from_secs(1)),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// The collector of these counters for the `/metrics` registry.
    pub fn families(&self) -> LogFamilies {
        LogFamilies(Arc::clone(&self.stats))
    }

    /// Queues a record without waiting. A full buffer (or a closed log)
    /// refuses it: counted, and logged at most once a second.
    pub fn record(&self, record: PredictionRecord) {
        match self.tx.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let total = self.stats.dropped_full.fetch_add(1, Ordering::Relaxed) + 1;
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "the buffer is full",
                    mpsc::error::TrySendError::Closed(_) => "the log is closed",
                };
                if self.warnings.ready() {
                    tracing::warn!(
                        dropped_total = total,
                        "prediction log: a record was not logged because {why}; \
                         the store is slower than the prediction rate"
                    );
                }
            }
        }
    }

    /// Waits until every record queued before this call is written (or has
    /// failed), at most `deadline`. Returns whether it finished in time.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        tokio::time::timeout(deadline, async {
            self.tx.send(Message::Flush(done)).await.is_ok() && wait.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Writes what is queued and stops the writer, waiting at most
    /// `deadline`. Records arriving later are refused and counted.
    pub async fn close(&self, deadline: Duration) -> bool {
        let flushed = self.flush(deadline).await;
        if let Some(writer) = self.writer.lock().await.take() {
            writer.abort();
        }
        flushed
    }
}

async fn write_loop<S: FullStore>(
    store: Arc<S>,
    mut rx: mpsc::Receiver<Message>,
    stats: Arc<LogStats>,
    config: LogConfig,
    publisher: Option<Arc<Publisher>>,
) {
    let limit = config.batch.max(1);
    let mut messages = Vec::with_capacity(limit);
    let mut records = Vec::with_capacity(limit);
    loop {
        if rx.recv_many(&mut messages, limit).await == 0 {
            return;
        }
        if config.linger_ms > 0 {
            let until = tokio::time::Instant::now() + Duration::from_millis(config.linger_ms);
            while messages.len() < limit && !messages.iter().any(|m| matches!(m, Message::Flush(_)))
            {
                let room = limit - messages.len();
                // recv_many is cancel-safe: a timeout loses nothing.
                match tokio::time::timeout_at(until, rx.recv_many(&mut messages, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        let mut waiters = Vec::new();
        for m in messages.drain(..) {
            match m {
                Message::Record(r) => records.push(*r),
                Message::Flush(done) => waiters.push(done),
            }
        }
        if !records.is_empty() {
            let n = records.len() as u64;
            stats.queued.fetch_sub(n, Ordering::Relaxed);
            match write_with_retries(&*store, &records, &config).await {
                Ok(()) => {
                    stats.written.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    let total = stats.failed.fetch_add(n, Ordering::Relaxed) + n;
                    tracing::error!(
                        error = %e,
                        records = n,
                        failed_total = total,
                        "prediction log: records could not be written"
                    );
                }
            }
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.batch_records.observe(n as f64);
            // Answered predictions go downstream whether or not the store
            // took them.
            if let Some(p) = &publisher {
                p.predictions(&records);
            }
            records.clear();
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

async fn write_with_retries<S: FullStore>(
    store: &S,
    records: &[PredictionRecord],
    config: &LogConfig,
) -> Result<(), StoreError> {
    let mut attempt = 0;
    loop {
        match store.write_predictions(records, config.retention).await {
            Err(e) if e.is_transient() && attempt < config.retries => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "prediction log: retrying a write");
                tokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use feature_store::store::LogWindow;
    use feature_store::store::embedded::EmbeddedStore;
    use feature_store::store::prelude::*;

    use super::*;

    fn record(i: u32) -> PredictionRecord {
        PredictionRecord {
            prediction_id: uuid::Uuid::now_v7().to_string(),
            at: feature_store::store::now_micros(),
            subject: "svc".into(),
            model: "m".into(),
            model_version: "1".into(),
            route: "stable".into(),
            entity: format!("e-{i}"),
            inputs: vec![i as f32],
            view_ages_ms: BTreeMap::new(),
            defaulted: Vec::new(),
            outputs: Vec::new(),
            shadow_of: None,
            model_time_us: Some(120),
            source: feature_store::log::PredictionSource::Live,
        }
    }

    async fn store(tag: &str) -> Result<(Arc<EmbeddedStore>, std::path::PathBuf), StoreError> {
        let dir = std::env::temp_dir().join(format!("mlgw_predlog_{tag}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EmbeddedStore::open(&dir.join("log.redb"))?;
        store.apply_schema().await?;
        Ok((Arc::new(store), dir))
    }

    async fn logged(store: &EmbeddedStore) -> Result<usize, StoreError> {
        let now = SystemTime::now();
        Ok(store
            .read_log(LogWindow {
                from: now - Duration::from_secs(60),
                to: now + Duration::from_secs(60),
                limit: usize::MAX,
            })
            .await?
            .len())
    }

    // One thread: the writer cannot run while the loop below fills the buffer.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_buffer_refuses_and_counts_never_blocks() -> Result<(), StoreError> {
        let (store, dir) = store("full").await?;
        let config = LogConfig {
            buffer: 8,
            ..LogConfig::default()
        };
        let log = PredictionLog::start(Arc::clone(&store), &config, None);
        for i in 0..100 {
            log.record(record(i));
        }
        assert_eq!(log.stats().dropped_full.load(Ordering::Relaxed), 92);
        assert!(log.flush(Duration::from_secs(10)).await);
        assert_eq!(log.stats().written.load(Ordering::Relaxed), 8);
        assert_eq!(logged(&store).await?, 8);
        let mut registry = telemetry::prom::Registry::default();
        registry.register_collector(Box::new(log.families()));
        let text = telemetry::prom::encode(&registry).unwrap_or_default();
        assert!(
            text.contains("mlgw_prediction_log_records_total{result=\"dropped_buffer_full\"} 92")
        );
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }

    #[tokio::test]
    async fn close_writes_everything_queued() -> Result<(), StoreError> {
        let (store, dir) = store("close").await?;
        let log = PredictionLog::start(Arc::clone(&store), &LogConfig::default(), None);
        for i in 0..2000 {
            log.record(record(i));
        }
        assert!(log.close(Duration::from_secs(30)).await);
        assert_eq!(logged(&store).await?, 2000);
        assert_eq!(log.stats().written.load(Ordering::Relaxed), 2000);
        // After close, a record is refused and counted, not lost silently.
        log.record(record(0));
        assert_eq!(log.stats().dropped_full.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }
}

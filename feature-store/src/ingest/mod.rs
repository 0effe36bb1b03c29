//! Stream ingest: dynamic views' events consumed from Kafka into the store,
//! through the same checks and write path as the push API.
//!
//! Each dynamic view may declare a topic (`source = { kafka = { … } }`, see
//! [`crate::definitions::KafkaSource`]). One [`Ingest`] consumes every
//! declared topic in one consumer group and loops over batches (up to
//! `batch_max` records, or what arrived within `linger_ms` of the first):
//!
//! 1. each record is decoded ([`decode`]) into an entity key and an event;
//! 2. the decoded events are checked against their view and the valid ones
//!    written in one batched store call
//!    ([`FeatureReader::push_events`] → `RowStore::write_events`);
//! 3. every refused record goes to the dead-letter topic: its original key
//!    and value, with headers `mlgw-dead-letter-reason` (a stable code, see
//!    [`Reason`]), `mlgw-dead-letter-error` (what is wrong, for a person),
//!    `mlgw-source-topic`, `mlgw-source-partition`, `mlgw-source-offset`
//!    and `mlgw-view`; a bad record never holds its partition up;
//! 4. only when the store write succeeded and Kafka acknowledged every
//!    dead letter are the batch's offsets committed.
//!
//! A failing store write or dead-letter send is retried with backoff (at
//! most `retry_max_ms` apart) until it succeeds or the ingest is stopped;
//! nothing is skipped and nothing is committed past it, so after a crash,
//! a stop or a Kafka outage the group resumes from the last committed
//! offsets. Records read again are the same events: an event's identity is
//! (event time, event ID), and the ID is the record's or derived from its
//! content, so redeliveries and replays are stored once.
//!
//! It lives in the feature store, not the gateway, because it needs only
//! the reader and the store: the gateway hosts it (`[ingest]`) and
//! `mlgw-features ingest` runs it alone.
//!
//! Counters ([`IngestStats`]): events written per view, dead letters per
//! view and reason, retries, failed commits, and the consumer lag of each
//! assigned partition (from librdkafka's statistics: the partition's end
//! offset minus the group's committed offset).

mod decode;

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;

pub use decode::{Rejection, decode};

use crate::definitions::{KafkaSource, brokers_problem, topic_name_problem};
use crate::reader::{FeatureReader, PushedEvent, ReadError};
use crate::store::{BatchStore, RowStore};

/// `[ingest]` as written (the gateway's section; `mlgw-features ingest`
/// takes the same as flags).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Whether the declared topics are consumed (default false).
    pub enabled: bool,
    /// Kafka bootstrap servers, `host:port,host:port`.
    pub brokers: String,
    /// The consumer group; replicas sharing it share the partitions.
    pub group_id: String,
    /// Where refused records go, with the reason.
    pub dead_letter_topic: String,
    /// Records written per batch at most.
    pub batch_max: usize,
    /// How long a batch waits to fill after its first record, ms.
    pub linger_ms: u64,
    /// A member silent this long leaves the group (its partitions move), ms.
    pub session_timeout_ms: u64,
    /// Deadline of one Kafka call (a dead letter's acknowledgement, the
    /// final commit), ms.
    pub call_timeout_ms: u64,
    /// The longest wait between retries of a failed write, ms.
    pub retry_max_ms: u64,
    /// How often the consumer lag is measured, ms.
    pub lag_interval_ms: u64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            enabled: false,
            brokers: String::new(),
            group_id: "mlgw-ingest".to_owned(),
            dead_letter_topic: "mlgw.ingest.dead-letter".to_owned(),
            batch_max: 5_000,
            linger_ms: 20,
            session_timeout_ms: 10_000,
            call_timeout_ms: 10_000,
            retry_max_ms: 5_000,
            lag_interval_ms: 1_000,
        }
    }
}

impl IngestSettings {
    /// Checks the settings; `(key, message)` of the first problem.
    ///
    /// # Errors
    /// The key (relative to `[ingest]`) and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.enabled {
            return Ok(());
        }
        if let Some(problem) = brokers_problem(&self.brokers) {
            return Err(("brokers", problem));
        }
        if self.group_id.trim().is_empty() {
            return Err(("group_id", "name the consumer group".into()));
        }
        if let Some(problem) = topic_name_problem(&self.dead_letter_topic) {
            return Err(("dead_letter_topic", problem));
        }
        for (key, v) in [
            ("batch_max", self.batch_max as u64),
            ("session_timeout_ms", self.session_timeout_ms),
            ("call_timeout_ms", self.call_timeout_ms),
            ("retry_max_ms", self.retry_max_ms),
            ("lag_interval_ms", self.lag_interval_ms),
        ] {
            if v == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

/// Why the ingest cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// No dynamic view declares a Kafka source.
    #[error(
        "ingest: no [[dynamic_view]] of {0} declares `source = {{ kafka = {{ topic = … }} }}`; declare one or turn ingest off"
    )]
    NoSources(String),
    /// librdkafka refused the configuration or the subscription.
    #[error("ingest: cannot set up the Kafka client: {0}")]
    Kafka(#[from] KafkaError),
}

/// Why a record went to the dead-letter topic: the `reason` label and the
/// `mlgw-dead-letter-reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Not JSON / not a `gateway.v1.StreamedFeatureEvent`, or empty.
    Undecodable,
    /// An entity key field is missing, empty or not text.
    MissingKey,
    /// The event time is missing or unreadable.
    BadTime,
    /// The event ID is not text or longer than 128 bytes.
    BadId,
    /// A field no aggregate of the view reads.
    UnknownField,
    /// A field's value does not fit (not a number where one is summed, not
    /// finite, an array).
    BadField,
    /// The event carries no field at all.
    NoFields,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 7] = [
        Reason::Undecodable,
        Reason::MissingKey,
        Reason::BadTime,
        Reason::BadId,
        Reason::UnknownField,
        Reason::BadField,
        Reason::NoFields,
    ];

    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Undecodable => "undecodable",
            Reason::MissingKey => "missing_key",
            Reason::BadTime => "bad_time",
            Reason::BadId => "bad_id",
            Reason::UnknownField => "unknown_field",
            Reason::BadField => "bad_field",
            Reason::NoFields => "no_fields",
        }
    }

    fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// The reason for an event the reader refused.
    fn of(e: &ReadError) -> Reason {
        match e {
            ReadError::EventField {
                problem: crate::aggregate::EventFieldProblem::Unknown { .. },
                ..
            } => Reason::UnknownField,
            ReadError::NoEventFields { .. } => Reason::NoFields,
            ReadError::EventIdTooLong { .. } => Reason::BadId,
            _ => Reason::BadField,
        }
    }
}

/// One view's counters.
#[derive(Debug)]
pub struct ViewCounts {
    /// The view.
    pub view: String,
    /// Its topic.
    pub topic: String,
    /// Events written.
    pub ingested: AtomicU64,
    /// Records dead-lettered, by [`Reason::ALL`] index.
    pub dead_lettered: [AtomicU64; Reason::ALL.len()],
}

/// What the ingest did, for metrics (monotonic counters since start, and
/// the latest lag).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Per view, in definitions order.
    pub views: Vec<ViewCounts>,
    /// Store writes retried.
    pub store_retries: AtomicU64,
    /// Dead-letter sends retried.
    pub dead_letter_retries: AtomicU64,
    /// Offset commits Kafka refused (the records are read again later).
    pub commit_failures: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    lag: Mutex<BTreeMap<(String, i32), i64>>,
}

impl IngestStats {
    fn new(sources: &[KafkaSource]) -> Self {
        IngestStats {
            views: sources
                .iter()
                .map(|s| ViewCounts {
                    view: s.view.clone(),
                    topic: s.topic.clone(),
                    ingested: AtomicU64::new(0),
                    dead_lettered: Default::default(),
                })
                .collect(),
            ..IngestStats::default()
        }
    }

    /// Records not yet committed, per assigned (topic, partition), as last
    /// measured.
    pub fn lag(&self) -> BTreeMap<(String, i32), i64> {
        self.lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Events written, all views.
    pub fn ingested(&self) -> u64 {
        self.views
            .iter()
            .map(|v| v.ingested.load(Ordering::Relaxed))
            .sum()
    }

    /// Records dead-lettered, all views and reasons.
    pub fn dead_lettered(&self) -> u64 {
        self.views
            .iter()
            .flat_map(|v| v.dead_lettered.iter())
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }
}

/// librdkafka's callbacks: statistics → lag, commit results → counters.
struct Context(Arc<IngestStats>);

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let mut lag = BTreeMap::new();
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if partition < 0 || !p.desired {
                    continue;
                }
                let n = if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else if p.committed_offset < 0 && p.hi_offset >= 0 && p.lo_offset >= 0 {
                    // Nothing committed yet: everything kept is still to read.
                    p.hi_offset - p.lo_offset
                } else {
                    continue;
                };
                lag.insert((topic.clone(), partition), n);
            }
        }
        *self.0.lag.lock().unwrap_or_else(PoisonError::into_inner) = lag;
    }
}

impl ConsumerContext for Context {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // "No offset" is a commit with nothing new, not a failure.
            if !matches!(
                e,
                KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)
            ) {
                self.0.commit_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("ingest: an offset commit failed: {e}");
            }
        }
    }
}

/// One record's fate within a batch.
enum Fate {
    Event {
        view: usize,
        key: String,
        event: crate::aggregate::Event,
    },
    Dead {
        view: usize,
        rejection: Rejection,
    },
}

/// The consumer of every declared topic, writing through one reader.
pub struct Ingest<S> {
    reader: Arc<FeatureReader<S>>,
    consumer: Arc<StreamConsumer<Context>>,
    producer: FutureProducer,
    sources: Vec<KafkaSource>,
    by_topic: HashMap<String, usize>,
    settings: IngestSettings,
    stats: Arc<IngestStats>,
    warnings: telemetry::throttle::Throttle,
}

impl<S: RowStore + BatchStore> Ingest<S> {
    /// A consumer subscribed to the topics `reader`'s definitions declare
    /// (connections are made in the background: an unreachable Kafka only
    /// delays ingest).
    ///
    /// # Errors
    /// [`IngestError`] when no view declares a topic or librdkafka refuses
    /// the settings.
    pub fn new(
        reader: Arc<FeatureReader<S>>,
        settings: &IngestSettings,
    ) -> Result<Self, IngestError> {
        let sources = reader.definitions().event_sources().to_vec();
        if sources.is_empty() {
            return Err(IngestError::NoSources(
                reader.definitions().source().display().to_string(),
            ));
        }
        let stats = Arc::new(IngestStats::new(&sources));
        let timeout = settings.call_timeout_ms.to_string();
        let consumer: StreamConsumer<Context> = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                settings.session_timeout_ms.to_string(),
            )
            .set("socket.timeout.ms", &timeout)
            .set(
                "statistics.interval.ms",
                settings.lag_interval_ms.to_string(),
            )
            // Fetch in large chunks: records are written in batches anyway.
            .set("fetch.wait.max.ms", settings.linger_ms.max(10).to_string())
            .create_with_context(Context(Arc::clone(&stats)))?;
        let topics: Vec<&str> = sources.iter().map(|s| s.topic.as_str()).collect();
        consumer.subscribe(&topics)?;
        let consumer = Arc::new(consumer);
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", &timeout)
            .set("linger.ms", "5")
            .create()?;
        let by_topic = sources
            .iter()
            .enumerate()
            .map(|(i, s)| (s.topic.clone(), i))
            .collect();
        Ok(Ingest {
            reader,
            consumer,
            producer,
            sources,
            by_topic,
            settings: settings.clone(),
            stats,
            warnings: telemetry::throttle::Throttle::new(Duration::from_secs(5)),
        })
    }

    /// The counters (shared; they keep counting while `run` runs).
    pub fn stats(&self) -> Arc<IngestStats> {
        Arc::clone(&self.stats)
    }

    /// Consumes until `stop` completes: the batch in hand is finished
    /// (written and committed) unless its write is being retried, in which
    /// case it is left uncommitted for the next member to read again.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = pin!(stop);
        let linger = Duration::from_millis(self.settings.linger_ms);
        let max = self.settings.batch_max.max(1);
        tracing::info!(
            group = self.settings.group_id,
            topics = ?self.sources.iter().map(|s| s.topic.as_str()).collect::<Vec<_>>(),
            "ingest: consuming"
        );
        let mut last_commit = None;
        loop {
            let first = tokio::select! {
                () = &mut stop => break,
                m = self.consumer.recv() => m,
            };
            let mut batch = Vec::with_capacity(max.min(4096));
            match first {
                Ok(m) => batch.push(m.detach()),
                Err(e) => {
                    self.warn(&format!("ingest: reading from Kafka failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let until = tokio::time::Instant::now() + linger;
            while batch.len() < max {
                tokio::select! {
                    m = self.consumer.recv() => match m {
                        Ok(m) => batch.push(m.detach()),
                        Err(e) => {
                            self.warn(&format!("ingest: reading from Kafka failed: {e}"));
                            break;
                        }
                    },
                    () = tokio::time::sleep_until(until) => break,
                }
            }
            match self.process(&batch, &mut stop).await {
                Some(committed) => last_commit = Some(committed),
                None => break,
            }
        }
        // Batches are committed asynchronously; the last one again, and
        // waited for, before the consumer leaves the group. (Not the
        // consumer's position: that may be past records never written.)
        if let Some(offsets) = last_commit {
            let consumer = Arc::clone(&self.consumer);
            let deadline = Duration::from_millis(self.settings.call_timeout_ms);
            let commit =
                tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync));
            match tokio::time::timeout(deadline, commit).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!("ingest: the final offset commit failed: {e}"),
                Ok(Err(e)) => tracing::warn!("ingest: the final offset commit failed: {e}"),
                Err(_) => tracing::warn!(
                    "ingest: the final offset commit was not answered within {deadline:?}"
                ),
            }
        }
        tracing::info!("ingest: stopped");
    }

    /// Decodes, writes, dead-letters and commits one batch, returning the
    /// offsets committed; None when stopped before the batch was done
    /// (nothing committed then).
    async fn process(
        &self,
        batch: &[OwnedMessage],
        stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Option<TopicPartitionList> {
        let mut fates = Vec::with_capacity(batch.len());
        for m in batch {
            let Some(&view) = self.by_topic.get(m.topic()) else {
                continue;
            };
            fates.push(
                match decode(&self.sources[view], m.payload().unwrap_or_default()) {
                    Ok((key, event)) => Fate::Event { view, key, event },
                    Err(rejection) => Fate::Dead { view, rejection },
                },
            );
        }
        // Write the decoded events, retrying until the store takes them.
        let mut pushed = Vec::with_capacity(fates.len());
        let mut pushed_at = Vec::with_capacity(fates.len());
        for (i, fate) in fates.iter().enumerate() {
            if let Fate::Event { view, key, event } = fate {
                pushed.push(PushedEvent {
                    view: &self.sources[*view].view,
                    entity_key: key,
                    event,
                });
                pushed_at.push(i);
            }
        }
        let mut refused: Vec<(usize, Rejection)> = Vec::new();
        if !pushed.is_empty() {
            let mut attempt = 0u32;
            let outcomes = loop {
                match self.reader.push_events(&pushed).await {
                    Ok(outcomes) => break outcomes,
                    Err(e) => {
                        self.stats.store_retries.fetch_add(1, Ordering::Relaxed);
                        self.warn(&format!(
                            "ingest: writing {} events failed, retrying: {e}",
                            pushed.len()
                        ));
                        if !self.backoff(&mut attempt, stop).await {
                            return None;
                        }
                    }
                }
            };
            for (j, outcome) in outcomes.into_iter().enumerate() {
                let i = pushed_at[j];
                let Fate::Event { view, .. } = &fates[i] else {
                    continue;
                };
                match outcome {
                    None => {
                        self.stats.views[*view]
                            .ingested
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Some(e) => refused.push((i, Rejection::new(Reason::of(&e), e.to_string()))),
                }
            }
        }
        // Dead letters: the undecodable ones and those the reader refused.
        let mut dead: Vec<(usize, usize, Rejection)> = Vec::new();
        let mut k = 0;
        for (i, fate) in fates.into_iter().enumerate() {
            match fate {
                Fate::Dead { view, rejection } => dead.push((i, view, rejection)),
                Fate::Event { view, .. } => {
                    if let Some((j, _)) = refused.get(k)
                        && *j == i
                    {
                        let (_, rejection) = refused[k].clone();
                        dead.push((i, view, rejection));
                        k += 1;
                    }
                }
            }
        }
        if !dead.is_empty() {
            let mut attempt = 0u32;
            while !self.dead_letter(batch, &dead).await {
                self.stats
                    .dead_letter_retries
                    .fetch_add(1, Ordering::Relaxed);
                if !self.backoff(&mut attempt, stop).await {
                    return None;
                }
            }
            for (_, view, rejection) in &dead {
                self.stats.views[*view].dead_lettered[rejection.reason.index()]
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        // Everything of the batch is stored or dead-lettered: commit.
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in batch {
            let at = next.entry((m.topic(), m.partition())).or_insert(0);
            *at = (*at).max(m.offset() + 1);
        }
        let mut offsets = TopicPartitionList::with_capacity(next.len());
        for ((topic, partition), offset) in next {
            if let Err(e) = offsets.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                self.warn(&format!("ingest: cannot commit {topic}/{partition}: {e}"));
            }
        }
        if let Err(e) = self.consumer.commit(&offsets, CommitMode::Async) {
            self.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            self.warn(&format!(
                "ingest: committing offsets failed (the records will be read again): {e}"
            ));
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        Some(offsets)
    }

    /// Sends the dead letters and waits for Kafka's acknowledgements
    /// (bounded by `message.timeout.ms`); true when all were acknowledged.
    async fn dead_letter(
        &self,
        batch: &[OwnedMessage],
        dead: &[(usize, usize, Rejection)],
    ) -> bool {
        let topic = &self.settings.dead_letter_topic;
        let sends = dead.iter().map(|(i, view, rejection)| {
            let m = &batch[*i];
            let partition = m.partition().to_string();
            let offset = m.offset().to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "mlgw-dead-letter-reason",
                    value: Some(rejection.reason.as_str()),
                })
                .insert(Header {
                    key: "mlgw-dead-letter-error",
                    value: Some(rejection.message.as_str()),
                })
                .insert(Header {
                    key: "mlgw-source-topic",
                    value: Some(m.topic()),
                })
                .insert(Header {
                    key: "mlgw-source-partition",
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: "mlgw-source-offset",
                    value: Some(offset.as_str()),
                })
                .insert(Header {
                    key: "mlgw-view",
                    value: Some(self.sources[*view].view.as_str()),
                });
            let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                .payload(m.payload().unwrap_or_default())
                .headers(headers);
            if let Some(key) = m.key() {
                record = record.key(key);
            }
            self.producer
                .send(record, Duration::from_millis(self.settings.call_timeout_ms))
        });
        let results = join_all(sends).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if let Some(Err((e, _))) = results.iter().find(|r| r.is_err()) {
            self.warn(&format!(
                "ingest: {failed} dead letter(s) not acknowledged by Kafka, retrying: {e}"
            ));
        }
        failed == 0
    }

    /// Waits before the next attempt (100 ms doubling up to
    /// `retry_max_ms`); false when stopped meanwhile.
    async fn backoff(
        &self,
        attempt: &mut u32,
        stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> bool {
        let wait =
            Duration::from_millis((100u64 << (*attempt).min(10)).min(self.settings.retry_max_ms));
        *attempt += 1;
        tokio::select! {
            () = stop.as_mut() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }

    fn warn(&self, message: &str) {
        if self.warnings.ready() {
            tracing::warn!("{message}");
        } else {
            tracing::debug!("{message}");
        }
    }
}

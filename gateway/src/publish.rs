//! Predictions and feedback published downstream to Kafka (`[publish]`):
//! every record the prediction log writes (live, precomputed and shadow
//! answers) and every feedback, as `gateway.v1.PredictionEvent` /
//! `FeedbackEvent` protobuf keyed by the prediction ID.
//!
//! Nothing here can slow a caller down. The prediction log's writer task
//! hands its batches over after writing them; the producer (librdkafka,
//! through rdkafka) queues up to `queue_max` records, sends them in
//! batches from its own thread, and retries while Kafka is away. A full
//! queue refuses a record at once: counted and logged at most once a
//! second. A record Kafka never acknowledged within `message_timeout_ms`
//! is counted as failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use feature_store::clock::to_micros;
use feature_store::definitions::{brokers_problem, topic_name_problem};
use feature_store::log::{FeedbackRecord, Outcome, PredictionRecord, PredictionSource};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prost::Message as _;
use proto::gateway::v1 as pb;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use serde::Deserialize;

/// `[publish]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishSettings {
    /// Whether predictions and feedback are published (default false).
    pub enabled: bool,
    /// Kafka bootstrap servers, `host:port,host:port`.
    pub brokers: String,
    /// The topic of predictions.
    pub predictions_topic: String,
    /// The topic of feedback.
    pub feedback_topic: String,
    /// Records queued for sending at most; more are dropped (counted).
    pub queue_max: usize,
    /// How long the producer waits to fill a batch, ms (downstream readers
    /// see a record up to this much later).
    pub linger_ms: u64,
    /// How long a record may wait for Kafka's acknowledgement before it
    /// counts as failed, ms.
    pub message_timeout_ms: u64,
}

impl Default for PublishSettings {
    fn default() -> Self {
        PublishSettings {
            enabled: false,
            brokers: String::new(),
            predictions_topic: "mlgw.predictions".to_owned(),
            feedback_topic: "mlgw.feedback".to_owned(),
            queue_max: 100_000,
            linger_ms: 5,
            message_timeout_ms: 30_000,
        }
    }
}

impl PublishSettings {
    /// Checks the settings; `(key, message)` of the first problem.
    ///
    /// # Errors
    /// The key (relative to `[publish]`) and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.enabled {
            return Ok(());
        }
        if let Some(problem) = brokers_problem(&self.brokers) {
            return Err(("brokers", problem));
        }
        for (key, topic) in [
            ("predictions_topic", &self.predictions_topic),
            ("feedback_topic", &self.feedback_topic),
        ] {
            if let Some(problem) = topic_name_problem(topic) {
                return Err((key, problem));
            }
        }
        if self.queue_max == 0 || self.message_timeout_ms == 0 {
            return Err((
                "queue_max",
                "queue_max and message_timeout_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Why the producer could not be made.
#[derive(Debug, thiserror::Error)]
#[error("publish: cannot create the Kafka producer: {0}")]
pub struct PublishError(#[from] KafkaError);

/// What happened to published records, per stream.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Acknowledged by Kafka.
    pub delivered: AtomicU64,
    /// Not acknowledged in time, or refused by Kafka.
    pub failed: AtomicU64,
    /// Refused at once: the queue was full.
    pub dropped: AtomicU64,
}

/// Both streams' counters.
#[derive(Debug, Default)]
pub struct PublishStats {
    /// The predictions topic.
    pub predictions: StreamStats,
    /// The feedback topic.
    pub feedback: StreamStats,
}

/// Counts deliveries from librdkafka's callbacks; the stream is the
/// record's opaque tag.
struct Counting(Arc<PublishStats>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = Box<Stream>;

    fn delivery(&self, result: &DeliveryResult<'_>, stream: Self::DeliveryOpaque) {
        let stats = stream.of(&self.0);
        match result {
            Ok(_) => stats.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::debug!("publish: a record was not delivered: {e}");
                stats.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Which topic a record went to.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// Predictions.
    Predictions,
    /// Feedback.
    Feedback,
}

impl Stream {
    fn of(self, stats: &PublishStats) -> &StreamStats {
        match self {
            Stream::Predictions => &stats.predictions,
            Stream::Feedback => &stats.feedback,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Stream::Predictions => "predictions",
            Stream::Feedback => "feedback",
        }
    }
}

/// The producer of both streams.
pub struct Publisher {
    producer: ThreadedProducer<Counting>,
    settings: PublishSettings,
    stats: Arc<PublishStats>,
    /// Drop warnings, at most one a second.
    warnings: telemetry::throttle::Throttle,
}

impl Publisher {
    /// A producer for `settings` (connections are made in the background;
    /// an unreachable Kafka only delays deliveries).
    ///
    /// # Errors
    /// [`PublishError`] when librdkafka refuses the configuration.
    pub fn start(settings: &PublishSettings) -> Result<Self, PublishError> {
        let stats = Arc::new(PublishStats::default());
        let producer: ThreadedProducer<Counting> = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", settings.linger_ms.to_string())
            .set(
                "message.timeout.ms",
                settings.message_timeout_ms.to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                settings.queue_max.to_string(),
            )
            .create_with_context(Counting(Arc::clone(&stats)))?;
        Ok(Publisher {
            producer,
            settings: settings.clone(),
            stats,
            warnings: telemetry::throttle::Throttle::new(Duration::from_secs(1)),
        })
    }

    /// The counters (for `/metrics`).
    pub fn families(&self) -> PublishFamilies {
        PublishFamilies(Arc::clone(&self.stats))
    }

    /// Queues the logged `records` (never waits).
    pub fn predictions(&self, records: &[PredictionRecord]) {
        for r in records {
            let (source, batch_id) = match &r.source {
                PredictionSource::Live => ("live", String::new()),
                PredictionSource::Precomputed { batch_id } => ("precomputed", batch_id.clone()),
            };
            let event = pb::PredictionEvent {
                prediction_id: r.prediction_id.clone(),
                at_unix_us: to_micros(r.at),
                subject: r.subject.clone(),
                model: r.model.clone(),
                model_version: r.model_version.clone(),
                route: r.route.clone(),
                entity: r.entity.clone(),
                outputs: r
                    .outputs
                    .iter()
                    .map(|o| pb::PublishedOutput {
                        name: o.name.clone(),
                        label: o.label.clone().unwrap_or_default(),
                        score: o.score,
                    })
                    .collect(),
                source: source.to_owned(),
                batch_id,
                shadow_of: r.shadow_of.clone().unwrap_or_default(),
            };
            self.send(
                Stream::Predictions,
                &r.prediction_id,
                &event.encode_to_vec(),
            );
        }
    }

    /// Queues one feedback (never waits).
    pub fn feedback(&self, record: &FeedbackRecord) {
        let event = pb::FeedbackEvent {
            prediction_id: record.prediction_id.clone(),
            outcome: Some(match &record.outcome {
                Outcome::Label(l) => pb::feedback_event::Outcome::Label(l.clone()),
                Outcome::Value(v) => pb::feedback_event::Outcome::Value(*v),
            }),
            observed_at_unix_us: to_micros(record.observed_at),
            received_at_unix_us: to_micros(record.received_at),
            subject: record.subject.clone(),
        };
        self.send(
            Stream::Feedback,
            &record.prediction_id,
            &event.encode_to_vec(),
        );
    }

    fn send(&self, stream: Stream, key: &str, payload: &[u8]) {
        let topic = match stream {
            Stream::Predictions => &self.settings.predictions_topic,
            Stream::Feedback => &self.settings.feedback_topic,
        };
        let record = BaseRecord::with_opaque_to(topic, Box::new(stream))
            .key(key)
            .payload(payload);
        if let Err((e, _)) = self.producer.send(record) {
            let total = stream
                .of(&self.stats)
                .dropped
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            let why = match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    "the queue is full (Kafka is slower than the predictions, or away)".to_owned()
                }
                other => other.to_string(),
            };
            if self.warnings.ready() {
                tracing::warn!(
                    stream = stream.as_str(),
                    dropped_total = total,
                    "publish: a record was not published because {why}"
                );
            }
        }
    }

    /// Sends what is queued, waiting at most `deadline` (at shutdown).
    pub fn flush(&self, deadline: Duration) -> bool {
        self.producer.flush(deadline).is_ok()
    }
}

/// `mlgw_publish_records_total{stream, result}` from the counters.
#[derive(Debug)]
pub struct PublishFamilies(Arc<PublishStats>);

impl Collector for PublishFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "mlgw_publish_records",
            "Records published downstream by stream and result: delivered (acknowledged by Kafka), failed (not acknowledged in time), dropped (the queue was full).",
            None,
            MetricType::Counter,
        )?;
        for stream in [Stream::Predictions, Stream::Feedback] {
            let s = stream.of(&self.0);
            for (result, n) in [
                ("delivered", &s.delivered),
                ("failed", &s.failed),
                ("dropped", &s.dropped),
            ] {
                let labels = [("stream", stream.as_str()), ("result", result)];
                ConstCounter::new(n.load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

//! Asynchronous predictions (`[async_predict]`): a caller's request is
//! checked at once like a synchronous one (token, policy, model, entity and
//! request features), written pending to the store, queued on its model's
//! request topic in Kafka keyed by the entity, and answered 202 with an ID;
//! workers ([`worker`], a consumer group inside the gateway) score queued
//! requests through the same prediction path and store and publish each
//! result; the caller polls the ID.
//!
//! Nothing accepted is lost: a submit answers 202 only after Kafka
//! acknowledged the request (acks=all), and 503 `queue_unavailable` when it
//! cannot (Kafka away: the breaker then refuses at once, letting one probe
//! through a second). An idempotency key is claimed atomically in the store
//! for (subject, model, key): the same key again returns the first ID and
//! never queues a second prediction.

pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use feature_store::clock::{from_micros, to_micros};
use feature_store::store::{FullStore, IdempotencyClaim, RequestRecord, RequestState, StoreError};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::histogram::Histogram;
use prost::Message as _;
use proto::gateway::v1 as pb;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::auth::Caller;
pub use crate::config::AsyncSettings;
use crate::enrich::WireValue;
use crate::error::GatewayError;
use crate::metrics::Front;
use crate::serve::{Core, PredictInput};

/// Why asynchronous predictions cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AsyncError {
    /// librdkafka refused the configuration.
    #[error("async_predict: cannot create the Kafka client: {0}")]
    Client(#[source] KafkaError),
    /// A topic is missing and could not be created.
    #[error("async_predict: topic {topic:?}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// What Kafka said.
        reason: String,
    },
}

/// The counters behind `/metrics`.
#[derive(Debug)]
pub struct AsyncStats {
    /// Submits accepted (queued in Kafka).
    pub accepted: AtomicU64,
    /// Submits answered with an earlier request's ID (idempotency key).
    pub duplicate: AtomicU64,
    /// Submits refused because Kafka (or the store) could not take them.
    pub unavailable: AtomicU64,
    /// Requests scored.
    pub done: AtomicU64,
    /// Requests failed (deadline passed, bad input, model failure).
    pub failed: AtomicU64,
    /// Queued copies of a request already answered, skipped.
    pub skipped: AtomicU64,
    /// Results published again after a worker died before committing.
    pub replayed: AtomicU64,
    /// Worker transactions aborted (the batch is scored again from its
    /// stored results).
    pub aborted: AtomicU64,
    /// From acceptance to the result stored.
    pub latency: Histogram,
}

impl AsyncStats {
    fn new() -> Self {
        AsyncStats {
            accepted: AtomicU64::new(0),
            duplicate: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            latency: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        }
    }
}

/// Kafka seen away: the time (µs) of the last failed acknowledgement, 0
/// once one succeeded. While set, submits are refused at once except one
/// probe a second.
#[derive(Debug, Default)]
struct Breaker {
    down_since_us: AtomicI64,
    last_probe_us: AtomicI64,
}

impl Breaker {
    const PROBE_EVERY_US: i64 = 1_000_000;

    fn admit(&self) -> bool {
        if self.down_since_us.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let now = to_micros(SystemTime::now());
        let last = self.last_probe_us.load(Ordering::Relaxed);
        now - last >= Self::PROBE_EVERY_US
            && self
                .last_probe_us
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn succeeded(&self) {
        self.down_since_us.store(0, Ordering::Relaxed);
    }

    fn failed(&self) {
        let now = to_micros(SystemTime::now());
        let _ = self
            .down_since_us
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_probe_us.store(now, Ordering::Relaxed);
    }
}

/// Logs librdkafka's client errors through `tracing`, at most one a second.
pub(crate) struct Quiet(telemetry::throttle::Throttle);

impl Quiet {
    pub(crate) fn new() -> Self {
        Quiet(telemetry::throttle::Throttle::new(Duration::from_secs(1)))
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        if self.0.ready() {
            tracing::warn!("async_predict: Kafka: {error}: {reason}");
        }
    }
}

/// A pending record waiting for the group commit, and who waits for it.
type PendingWrite = (RequestRecord, oneshot::Sender<Result<(), Arc<StoreError>>>);

/// What a submit answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The request's ID.
    pub id: String,
    /// An earlier request with the same idempotency key.
    pub duplicate: bool,
}

/// The submit and poll side, shared by both fronts and the workers.
pub struct AsyncPredictions<S> {
    settings: AsyncSettings,
    store: Arc<S>,
    producer: FutureProducer<Quiet>,
    pending: mpsc::Sender<PendingWrite>,
    breaker: Breaker,
    stats: Arc<AsyncStats>,
    /// How long a submit waits for Kafka: `submit_timeout_ms`, within the
    /// request timeout.
    ack_wait: Duration,
}

/// Pending records written together at most (one store transaction).
const PENDING_BATCH: usize = 512;

impl<S: FullStore> AsyncPredictions<S> {
    /// Makes the producer (connections are made in the background), starts
    /// the pending records' writer and, when asked to, creates the models'
    /// topics in the background (retried until Kafka answers: a Kafka away
    /// at start only makes submits answer 503).
    ///
    /// # Errors
    /// [`AsyncError::Client`] when librdkafka refuses the configuration.
    pub fn start(
        settings: &AsyncSettings,
        store: Arc<S>,
        models: &[String],
        request_timeout: Duration,
    ) -> Result<Self, AsyncError> {
        let ack_wait = Duration::from_millis(settings.submit_timeout_ms)
            .min(request_timeout.mul_f64(0.8))
            .max(Duration::from_millis(1));
        let producer: FutureProducer<Quiet> = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .set(
                "message.timeout.ms",
                ack_wait.as_millis().max(1).to_string(),
            )
            .create_with_context(Quiet::new())
            .map_err(AsyncError::Client)?;
        if settings.create_topics {
            let topics: Vec<String> = models
                .iter()
                .flat_map(|m| [settings.request_topic(m), settings.result_topic(m)])
                .collect();
            let settings = settings.clone();
            tokio::spawn(async move {
                while let Err(e) = worker::create_topics(&settings, &topics).await {
                    tracing::warn!("{e}; trying again in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            });
        }
        let (tx, rx) = mpsc::channel(PENDING_BATCH * 8);
        tokio::spawn(write_pending(Arc::clone(&store), rx));
        Ok(AsyncPredictions {
            settings: settings.clone(),
            store,
            producer,
            pending: tx,
            breaker: Breaker::default(),
            stats: Arc::new(AsyncStats::new()),
            ack_wait,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &AsyncSettings {
        &self.settings
    }

    /// The counters (for `/metrics`).
    pub fn families(&self) -> AsyncFamilies {
        AsyncFamilies(Arc::clone(&self.stats))
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<AsyncStats> {
        &self.stats
    }

    /// The store the records live in.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Accepts `input` for `caller`: checked as a synchronous call is, then
    /// queued; `deadline` bounds how long it may wait for a worker.
    ///
    /// # Errors
    /// As [`Core::predict`]'s checks (400, 401, 403, 404), or
    /// [`GatewayError::QueueUnavailable`] when Kafka or the store cannot take
    /// it (nothing was accepted).
    pub async fn submit(
        &self,
        core: &Core<S>,
        front: Front,
        caller: &Caller,
        input: PredictInput,
        idempotency_key: Option<&str>,
        deadline: Option<Duration>,
    ) -> Result<Accepted, GatewayError> {
        // Kafka's wait is counted from here: a slow store write before it
        // must shorten it, or the request timeout answers 504 instead.
        let until = Instant::now() + self.ack_wait;
        let entity_key = core.check_queued(front, caller, &input)?;
        let deadline = deadline.unwrap_or(Duration::from_millis(self.settings.default_deadline_ms));
        let max = Duration::from_millis(self.settings.max_deadline_ms);
        if deadline.is_zero() || deadline > max {
            return Err(GatewayError::InvalidArgument(format!(
                "deadline_ms: {} is outside 1..={} ms",
                deadline.as_millis(),
                max.as_millis()
            )));
        }
        if let Some(key) = idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            return Err(GatewayError::InvalidArgument(
                "idempotency key: 1 to 256 bytes".to_owned(),
            ));
        }
        if !self.breaker.admit() {
            self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(GatewayError::QueueUnavailable(
                "Kafka did not acknowledge recent requests; retry with backoff".to_owned(),
            ));
        }
        let now = SystemTime::now();
        let expires_at = now + self.settings.retention();
        let id = uuid::Uuid::now_v7().to_string();
        if let Some(key) = idempotency_key {
            let scoped = format!("{}\u{1f}{}\u{1f}{key}", caller.subject, input.model);
            let claimed = self
                .store
                .claim_idempotency(IdempotencyClaim {
                    key: &scoped,
                    id: &id,
                    expires_at,
                })
                .await
                .map_err(|e| self.unavailable(&e))?;
            if let Some(first) = claimed {
                return self.resume(core, first, until).await;
            }
        }
        let queued = pb::QueuedPrediction {
            id: id.clone(),
            model: input.model.clone(),
            model_version: input.model_version.clone(),
            keys: input.keys.clone().into_iter().collect(),
            request_features: input
                .request_features
                .iter()
                .map(|(k, v)| (k.clone(), v.to_proto()))
                .collect(),
            subject: caller.subject.clone(),
            groups: caller.groups.clone(),
            submitted_at_unix_ms: unix_ms(now),
            deadline_unix_ms: unix_ms(now + deadline),
        };
        let body = queued.encode_to_vec();
        let record = RequestRecord {
            id: id.clone(),
            model: input.model.clone(),
            subject: caller.subject.clone(),
            state: RequestState::Pending,
            submitted_at: now,
            expires_at,
            position: None,
            body: body.clone(),
        };
        self.write_pending(record).await?;
        self.enqueue(&input.model, &entity_key, &body, until)
            .await?;
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Accepted {
            id,
            duplicate: false,
        })
    }

    /// The answer to a repeated idempotency key: the first request's ID,
    /// queued again if it is still pending (its first queueing may have
    /// failed; a worker skips a copy of a request already answered).
    async fn resume(
        &self,
        core: &Core<S>,
        first: String,
        until: Instant,
    ) -> Result<Accepted, GatewayError> {
        let record = self
            .store
            .get_request(&first)
            .await
            .map_err(|e| self.unavailable(&e))?;
        if let Some(r) = record.filter(|r| r.state == RequestState::Pending) {
            // Queued again under the first request's own entity key: the
            // same partition as its first copy, so one worker sees both in
            // order and skips the second.
            let key = pb::QueuedPrediction::decode(r.body.as_slice())
                .ok()
                .and_then(|q| {
                    core.entity_key_of(&q.model, &q.keys.into_iter().collect())
                        .ok()
                })
                .unwrap_or_default();
            self.enqueue(&r.model, &key, &r.body, until).await?;
        }
        self.stats.duplicate.fetch_add(1, Ordering::Relaxed);
        Ok(Accepted {
            id: first,
            duplicate: true,
        })
    }

    async fn write_pending(&self, record: RequestRecord) -> Result<(), GatewayError> {
        let (tx, rx) = oneshot::channel();
        let closed = || GatewayError::QueueUnavailable("the gateway is shutting down".to_owned());
        self.pending
            .send((record, tx))
            .await
            .map_err(|_| closed())?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.unavailable(&e)),
            Err(_) => Err(closed()),
        }
    }

    fn unavailable(&self, e: &StoreError) -> GatewayError {
        self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
        GatewayError::QueueUnavailable(format!("the request could not be recorded: {e}"))
    }

    /// Sends one request to its model's topic and waits for Kafka's
    /// acknowledgement until `until`.
    async fn enqueue(
        &self,
        model: &str,
        entity_key: &str,
        body: &[u8],
        until: Instant,
    ) -> Result<(), GatewayError> {
        let topic = self.settings.request_topic(model);
        let record = FutureRecord::to(&topic).key(entity_key).payload(body);
        let refused = |why: String| {
            self.breaker.failed();
            self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            GatewayError::QueueUnavailable(format!(
                "Kafka did not take the request ({why}); nothing was accepted, retry with backoff"
            ))
        };
        // The caller's answer must come before the request's own timeout
        // ends the call: a 503 it can act on, not a 504.
        let wait = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, self.producer.send(record, wait)).await {
            Ok(Ok(_)) => {
                self.breaker.succeeded();
                Ok(())
            }
            Ok(Err((e, _))) => Err(refused(e.to_string())),
            Err(_) => Err(refused(format!(
                "no acknowledgement within {} ms of the submit",
                self.ack_wait.as_millis()
            ))),
        }
    }

    /// Request `id` as `caller` may see it: its own (same subject), or any
    /// for an admin (`is_admin`); anything else is unknown.
    ///
    /// # Errors
    /// [`GatewayError::UnknownRequest`], or the store's failure.
    pub async fn poll(
        &self,
        caller: &Caller,
        is_admin: impl FnOnce() -> bool,
        id: &str,
    ) -> Result<pb::AsyncPrediction, GatewayError> {
        let unknown = || GatewayError::UnknownRequest { id: id.to_owned() };
        if id.is_empty() || id.len() > 64 {
            return Err(unknown());
        }
        let record = self
            .store
            .get_request(id)
            .await
            .map_err(|e| GatewayError::FeatureStore(e.into()))?
            .ok_or_else(unknown)?;
        if record.subject != caller.subject && !is_admin() {
            return Err(unknown());
        }
        match record.state {
            RequestState::Pending => Ok(pb::AsyncPrediction {
                id: record.id,
                model: record.model,
                state: RequestState::Pending.as_str().to_owned(),
                prediction: None,
                error: None,
                submitted_at_unix_ms: unix_ms(record.submitted_at),
                finished_at_unix_ms: 0,
            }),
            RequestState::Done | RequestState::Failed => {
                pb::AsyncPrediction::decode(record.body.as_slice()).map_err(|e| {
                    GatewayError::FeatureStore(
                        StoreError::Backend(format!("the stored result of {id} is damaged: {e}"))
                            .into(),
                    )
                })
            }
        }
    }
}

/// Writes pending records in groups: one store transaction for every
/// record queued meanwhile, so the embedded store's one-writer commits do
/// not bound submits.
async fn write_pending<S: FullStore>(store: Arc<S>, mut rx: mpsc::Receiver<PendingWrite>) {
    let mut batch = Vec::with_capacity(PENDING_BATCH);
    while rx.recv_many(&mut batch, PENDING_BATCH).await > 0 {
        let (records, waiters): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        let result = store.put_requests(&records).await.map_err(Arc::new);
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

/// Unix milliseconds.
pub(crate) fn unix_ms(at: SystemTime) -> i64 {
    to_micros(at) / 1000
}

/// The time of Unix milliseconds.
pub(crate) fn of_unix_ms(ms: i64) -> SystemTime {
    from_micros(ms.saturating_mul(1000))
}

/// The request a queued message carries, wire-neutral.
pub(crate) fn queued_input(q: &pb::QueuedPrediction) -> Result<PredictInput, GatewayError> {
    let mut features = HashMap::with_capacity(q.request_features.len());
    for (name, v) in &q.request_features {
        let value = WireValue::from_proto(v).ok_or_else(|| {
            GatewayError::InvalidArgument(format!("request_features.{name}: no value set"))
        })?;
        features.insert(name.clone(), value);
    }
    Ok(PredictInput {
        model: q.model.clone(),
        model_version: q.model_version.clone(),
        keys: q.keys.clone().into_iter().collect(),
        request_features: features,
        subject: q.subject.clone(),
        groups: q.groups.clone(),
    })
}

/// `mlgw_async_requests_total{result}`, `mlgw_async_results_total{state}`
/// and `mlgw_async_latency_seconds`.
#[derive(Debug)]
pub struct AsyncFamilies(Arc<AsyncStats>);

impl Collector for AsyncFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.0;
        let mut family = encoder.encode_descriptor(
            "mlgw_async_requests",
            "Asynchronous submits by result: accepted (queued in Kafka), duplicate (an idempotency key seen before), unavailable (refused with 503: nothing accepted).",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [
            ("accepted", &s.accepted),
            ("duplicate", &s.duplicate),
            ("unavailable", &s.unavailable),
        ] {
            ConstCounter::new(n.load(Ordering::Relaxed))
                .encode(family.encode_family(&[("result", result)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "mlgw_async_results",
            "Queued requests handled by this gateway's workers: done, failed, skipped (a copy of a request already answered), replayed (a stored result published again after a worker died), aborted (transactions rolled back).",
            None,
            MetricType::Counter,
        )?;
        for (state, n) in [
            ("done", &s.done),
            ("failed", &s.failed),
            ("skipped", &s.skipped),
            ("replayed", &s.replayed),
            ("aborted", &s.aborted),
        ] {
            ConstCounter::new(n.load(Ordering::Relaxed))
                .encode(family.encode_family(&[("state", state)])?)?;
        }
        let family = encoder.encode_descriptor(
            "mlgw_async_latency_seconds",
            "From a request's acceptance to its result stored, by this gateway's workers.",
            None,
            MetricType::Histogram,
        )?;
        s.latency.encode(family)?;
        Ok(())
    }
}

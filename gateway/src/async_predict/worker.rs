//! The workers: a Kafka consumer group over the models' request topics,
//! hosted by the gateway (`workers = true`) because scoring needs all of
//! the synchronous path's state (row cache, model-server connections and
//! their coalescing, routing, prediction log). A front-only deployment
//! sets `workers = false`; worker replicas are gateways that take no
//! traffic, scaled up to the topics' partitions.
//!
//! A worker takes up to `batch_max` requests, reads each one's record,
//! scores the pending ones concurrently through [`Core::predict_queued`]
//! (a request past its deadline fails instead) and stores the results with
//! the message's position: from then on they are pollable. The next batch
//! does not wait for that: a few batches are scored at once. Meanwhile, in
//! one Kafka transaction at a time, the results stored so far are
//! published to the models' result topics and the consumed offsets
//! committed, so a result never waits for an earlier batch's commit. A worker
//! killed anywhere in between leaves its offsets uncommitted and its
//! transaction aborted: the next worker reads the same messages, finds the
//! stored results of those same positions and publishes them again (no
//! second prediction); a second copy of a request (an idempotent retry)
//! finds a result of another position and is skipped. Result topics read
//! with `isolation.level=read_committed` hold each result once.

use std::collections::{BTreeMap, HashSet};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use feature_store::store::{FullStore, RequestRecord, RequestState, StoreError, TopicPosition};
use futures_util::StreamExt as _;
use futures_util::future::join_all;
use futures_util::stream::FuturesOrdered;
use prost::Message as _;
use proto::gateway::v1 as pb;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{
    AsyncError, AsyncPredictions, AsyncSettings, Quiet, of_unix_ms, queued_input, unix_ms,
};
use crate::error::GatewayError;
use crate::serve::Core;

/// Kafka's calls inside a worker's transaction, at most.
const TXN_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a prediction failing for a passing reason (model-server or
/// store away, overload, one slow model call), within the request's
/// deadline.
const PREDICT_ATTEMPTS: u32 = 3;

/// Creates the `topics` that do not exist yet.
///
/// # Errors
/// [`AsyncError::Topic`] naming the first topic Kafka refused, or the
/// client's failure.
pub async fn create_topics(settings: &AsyncSettings, topics: &[String]) -> Result<(), AsyncError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .create()
        .map_err(AsyncError::Client)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results =
        tokio::time::timeout(Duration::from_secs(15), admin.create_topics(&new, &options))
            .await
            .map_err(|_| AsyncError::Topic {
                topic: topics.join(", "),
                reason: "Kafka did not answer within 15 s".to_owned(),
            })?
            .map_err(AsyncError::Client)?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(AsyncError::Topic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Runs a worker until `stop`: opens a session (consumer and transactional
/// producer), serves it, and opens a new one after a failure (which
/// resumes from the committed offsets).
pub async fn run<S: FullStore>(
    queue: Arc<AsyncPredictions<S>>,
    core: Arc<Core<S>>,
    models: Vec<String>,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    let mut stop = pin!(stop);
    let mut pause = Duration::from_millis(500);
    loop {
        let outcome = match Session::open(queue.settings(), &models).await {
            Ok(session) => {
                let served = session.serve(&queue, &core, &mut stop).await;
                session.close().await;
                served
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("async_predict worker: {e}; starting again in {pause:?}");
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Why a worker session ended early.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Start(#[from] AsyncError),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("storing results: {0}")]
    Store(#[source] StoreError),
    #[error("the consumer has no group metadata to commit with")]
    NoGroup,
    #[error("a Kafka call's thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// One consumed request message.
struct Taken {
    topic: String,
    position: TopicPosition,
    payload: Vec<u8>,
}

/// What to do with one message after reading its record.
enum Outcome {
    /// Nothing (a copy of a request already answered, or a message that is
    /// not a request): its offset is committed with the others.
    Skip,
    /// Publish this result (new, or stored by a worker that died).
    Publish {
        model: String,
        id: String,
        body: Vec<u8>,
        store: Option<Box<RequestRecord>>,
    },
}

/// A batch scored and stored, waiting for its transaction.
struct Scored {
    batch: Vec<Taken>,
    outcomes: Vec<Outcome>,
}

/// Scored batches waiting for a commit at most; scoring waits beyond.
const PIPELINE_BATCHES: usize = 64;
/// Batches scored at once: a batch's model calls and result write wait on
/// other processes, and the next batch need not wait for them.
const SCORING_BATCHES: usize = 4;

struct Session {
    consumer: StreamConsumer<Quiet>,
    producer: FutureProducer<Quiet>,
}

impl Session {
    async fn open(settings: &AsyncSettings, models: &[String]) -> Result<Self, SessionError> {
        let worker = settings.worker_name();
        let requests: Vec<String> = models.iter().map(|m| settings.request_topic(m)).collect();
        if settings.create_topics {
            let mut all = requests.clone();
            all.extend(models.iter().map(|m| settings.result_topic(m)));
            create_topics(settings, &all).await?;
        }
        let consumer: StreamConsumer<Quiet> = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            // Static membership: a restarted worker takes its partitions
            // back at once instead of after the session timeout.
            .set("group.instance.id", &worker)
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            .create_with_context(Quiet::new())?;
        let topics: Vec<&str> = requests.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        // One transactional ID per worker, the same after a restart: the
        // new producer's first call fences a dead predecessor and aborts its
        // open transaction at once (a new ID would leave it, and the
        // group's offsets it holds, pending until its timeout).
        let producer: FutureProducer<Quiet> = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set(
                "transactional.id",
                format!("{}-{worker}", settings.group_id),
            )
            .set("linger.ms", "2")
            .set("transaction.timeout.ms", "60000")
            .create_with_context(Quiet::new())?;
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(TXN_TIMEOUT)).await??;
        Ok(Session { consumer, producer })
    }

    async fn close(self) {
        let Session { consumer, producer } = self;
        // Leaving the group and closing the producer block on the network.
        let _ = tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
            drop(producer);
        })
        .await;
    }

    /// Takes, scores and commits batches until `stop`, in three stages that
    /// overlap: batches are taken as they arrive; up to `SCORING_BATCHES`
    /// of them are scored and their results stored (pollable) at once; and
    /// the results stored so far are published and their offsets committed
    /// in one transaction at a time, in the order the batches were taken. A
    /// result is never held back by an earlier batch's scoring or commit,
    /// and the commits group whatever was scored while the previous one ran.
    async fn serve<S: FullStore>(
        &self,
        queue: &AsyncPredictions<S>,
        core: &Core<S>,
        stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<(), SessionError> {
        let settings = queue.settings();
        let linger = Duration::from_millis(settings.batch_linger_ms);
        let (batch_tx, mut batch_rx) = tokio::sync::mpsc::channel::<Vec<Taken>>(1);
        let (scored_tx, mut scored_rx) = tokio::sync::mpsc::channel::<Scored>(PIPELINE_BATCHES);
        // Each stage owns the sender it feeds the next one with: its end
        // closes the channel, and the next stage finishes what it was given.
        let gathering = async {
            let batch_tx = batch_tx;
            loop {
                let mut batch = Vec::new();
                tokio::select! {
                    () = stop.as_mut() => return Ok(()),
                    first = self.consumer.recv() => batch.push(taken(&first?)),
                }
                let until = tokio::time::Instant::now() + linger;
                while batch.len() < settings.batch_max {
                    match tokio::time::timeout_at(until, self.consumer.recv()).await {
                        Ok(m) => batch.push(taken(&m?)),
                        Err(_) => break,
                    }
                }
                if batch_tx.send(batch).await.is_err() {
                    return Ok(());
                }
            }
        };
        let scoring = async {
            let scored_tx = scored_tx;
            let scoring = Mutex::new(HashSet::new());
            let mut running = FuturesOrdered::new();
            let mut open = true;
            while open || !running.is_empty() {
                tokio::select! {
                    next = batch_rx.recv(), if open && running.len() < SCORING_BATCHES => {
                        let Some(batch) = next else {
                            open = false;
                            continue;
                        };
                        let scoring = &scoring;
                        running.push_back(async move {
                            let outcomes = score_batch(queue, core, &batch, scoring).await?;
                            Ok::<_, SessionError>(Scored { batch, outcomes })
                        });
                    }
                    Some(done) = running.next() => {
                        if scored_tx.send(done?).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            Ok(())
        };
        let committing = async {
            while let Some(first) = scored_rx.recv().await {
                let mut group = vec![first];
                while let Ok(more) = scored_rx.try_recv() {
                    group.push(more);
                }
                let committed = self.commit(settings, &group).await;
                if committed.is_err() {
                    queue.stats().aborted.fetch_add(1, Ordering::Relaxed);
                    let p = self.producer.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || p.abort_transaction(TXN_TIMEOUT)).await;
                }
                committed?;
            }
            Ok(())
        };
        // A stop ends the gathering; the batches taken by then are scored
        // and committed before the session ends. A failure anywhere ends it
        // at once: what was stored but not committed is read again by the
        // next session, which publishes the stored results without
        // predicting again.
        tokio::try_join!(gathering, scoring, committing).map(drop)
    }

    /// Publishes the results of a group of scored batches and commits their
    /// offsets in one transaction.
    async fn commit(&self, settings: &AsyncSettings, group: &[Scored]) -> Result<(), SessionError> {
        self.producer.begin_transaction()?;
        let mut deliveries = Vec::new();
        for o in group.iter().flat_map(|g| &g.outcomes) {
            let Outcome::Publish {
                model, id, body, ..
            } = o
            else {
                continue;
            };
            let topic = settings.result_topic(model);
            let mut record = FutureRecord::to(&topic)
                .key(id.as_str())
                .payload(body.as_slice());
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for t in group.iter().flat_map(|g| &g.batch) {
            let at = next
                .entry((t.topic.as_str(), t.position.partition))
                .or_insert(0);
            *at = (*at).max(t.position.offset + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            offsets.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
        let group = self
            .consumer
            .group_metadata()
            .ok_or(SessionError::NoGroup)?;
        let p = self.producer.clone();
        tokio::task::spawn_blocking(move || -> Result<(), KafkaError> {
            p.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)?;
            p.commit_transaction(TXN_TIMEOUT)
        })
        .await??;
        // Committed: every delivery is acknowledged; a failed one would have
        // failed the commit.
        drop(deliveries);
        Ok(())
    }
}

/// Reads, scores and stores one batch: its outcomes, in message order.
async fn score_batch<S: FullStore>(
    queue: &AsyncPredictions<S>,
    core: &Core<S>,
    batch: &[Taken],
    scoring: &Mutex<HashSet<String>>,
) -> Result<Vec<Outcome>, SessionError> {
    // Two copies of one request in the batches being scored (an idempotent
    // retry queued it again): the first is handled, the others skipped. Once
    // its result is stored, a later copy finds it and is skipped too.
    let mut mine = Vec::new();
    let outcomes = join_all(batch.iter().map(|t| {
        let queued = match pb::QueuedPrediction::decode(t.payload.as_slice()) {
            Ok(q) if lock(scoring).insert(q.id.clone()) => {
                mine.push(q.id.clone());
                Some(q)
            }
            Ok(_) => {
                queue.stats().skipped.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(_) => {
                tracing::warn!(
                    topic = %t.topic,
                    partition = t.position.partition,
                    offset = t.position.offset,
                    "async_predict worker: a message that is not a queued prediction was skipped"
                );
                None
            }
        };
        async move {
            match queued {
                Some(q) => outcome(queue, core, t, q).await,
                None => Ok(Outcome::Skip),
            }
        }
    }))
    .await;
    let _release = Release(scoring, mine);
    let outcomes = outcomes
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(SessionError::Store)?;
    let fresh: Vec<RequestRecord> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Publish { store, .. } => store.as_deref().cloned(),
            Outcome::Skip => None,
        })
        .collect();
    if !fresh.is_empty() {
        with_retry("storing results", || queue.store().put_requests(&fresh))
            .await
            .map_err(SessionError::Store)?;
        let stats = queue.stats();
        let now = SystemTime::now();
        for r in &fresh {
            match r.state {
                RequestState::Done => stats.done.fetch_add(1, Ordering::Relaxed),
                _ => stats.failed.fetch_add(1, Ordering::Relaxed),
            };
            stats.latency.observe(
                now.duration_since(r.submitted_at)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
        }
    }
    Ok(outcomes)
}

/// The IDs one batch is scoring, released when the batch is done with
/// them (its results stored, or it failed and ends the session).
struct Release<'a>(&'a Mutex<HashSet<String>>, Vec<String>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let mut scoring = lock(self.0);
        for id in &self.1 {
            scoring.remove(id);
        }
    }
}

fn lock(m: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    // The set holds plain IDs: a panic elsewhere cannot leave it half-made.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn taken(m: &rdkafka::message::BorrowedMessage<'_>) -> Taken {
    Taken {
        topic: m.topic().to_owned(),
        position: TopicPosition {
            partition: m.partition(),
            offset: m.offset(),
        },
        payload: m.payload().unwrap_or_default().to_vec(),
    }
}

/// Runs the store call `call`, again while it fails for a passing reason
/// (8 more tries, backing off to 2 s): a batch cannot be committed before
/// its records are read and its results stored.
async fn with_retry<T, F, Fut>(what: &str, mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut pause = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if e.is_transient() && attempt < 8 => {
                tracing::warn!("async_predict worker: {what} failed ({e}); retrying");
                attempt += 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Reads the record of request `q` (message `t`) and decides: skip it,
/// publish its stored result again, or score it.
async fn outcome<S: FullStore>(
    queue: &AsyncPredictions<S>,
    core: &Core<S>,
    t: &Taken,
    q: pb::QueuedPrediction,
) -> Result<Outcome, StoreError> {
    let record = with_retry("reading a request", || queue.store().get_request(&q.id)).await?;
    if let Some(r) = record.filter(|r| r.state != RequestState::Pending) {
        if r.position == Some(t.position) {
            queue.stats().replayed.fetch_add(1, Ordering::Relaxed);
            return Ok(Outcome::Publish {
                model: r.model,
                id: r.id,
                body: r.body,
                store: None,
            });
        }
        queue.stats().skipped.fetch_add(1, Ordering::Relaxed);
        return Ok(Outcome::Skip);
    }
    let submitted_at = of_unix_ms(q.submitted_at_unix_ms);
    let deadline = of_unix_ms(q.deadline_unix_ms);
    let result = score(core, &q, deadline).await;
    let finished = SystemTime::now();
    let (state, prediction, error) = match result {
        Ok(p) => (RequestState::Done, Some(p), None),
        Err(e) => (
            RequestState::Failed,
            None,
            Some(pb::AsyncError {
                code: e.code().code.to_owned(),
                message: e.to_string(),
            }),
        ),
    };
    let answer = pb::AsyncPrediction {
        id: q.id.clone(),
        model: q.model.clone(),
        state: state.as_str().to_owned(),
        prediction,
        error,
        submitted_at_unix_ms: q.submitted_at_unix_ms,
        finished_at_unix_ms: unix_ms(finished),
    };
    let body = answer.encode_to_vec();
    let expires_at = finished + Duration::from_secs(queue.settings().retention_s);
    Ok(Outcome::Publish {
        model: q.model.clone(),
        id: q.id.clone(),
        body: body.clone(),
        store: Some(Box::new(RequestRecord {
            id: q.id,
            model: q.model,
            subject: q.subject,
            state,
            submitted_at,
            expires_at,
            position: Some(t.position),
            body,
        })),
    })
}

/// Scores one request within its deadline, trying again while the cause of
/// a failure may pass and time remains.
async fn score<S: FullStore>(
    core: &Core<S>,
    q: &pb::QueuedPrediction,
    deadline: SystemTime,
) -> Result<pb::PredictResponse, GatewayError> {
    let input = queued_input(q)?;
    let mut pause = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        let Ok(left) = deadline.duration_since(SystemTime::now()) else {
            let waited = SystemTime::now()
                .duration_since(of_unix_ms(q.submitted_at_unix_ms))
                .unwrap_or_default();
            return Err(GatewayError::QueueDeadline {
                waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                deadline_ms: u64::try_from(q.deadline_unix_ms - q.submitted_at_unix_ms)
                    .unwrap_or(0),
            });
        };
        let started = Instant::now();
        match core.predict_queued(&input, left).await {
            Ok(p) => return Ok(p.into_proto()),
            Err(e)
                if attempt < PREDICT_ATTEMPTS
                    && passing(&e)
                    && left > started.elapsed() + pause =>
            {
                attempt += 1;
                tokio::time::sleep(pause).await;
                pause *= 4;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a failure may pass on its own (tried again within the deadline).
/// A model call that overran its own timeout counts: a queued request may
/// have minutes left, and one slow answer under load should not fail it.
fn passing(e: &GatewayError) -> bool {
    matches!(
        e.code().code,
        "model_unavailable" | "overloaded" | "feature_store_unavailable" | "deadline_exceeded"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_or_absent_parts_are_tried_again_bad_input_is_not() {
        assert!(passing(&GatewayError::DeadlineExceeded));
        assert!(passing(&GatewayError::Overloaded));
        assert!(!passing(&GatewayError::InvalidArgument(
            "no entity".to_owned()
        )));
    }
}

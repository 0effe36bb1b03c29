//! Single-row model calls sent together while the model-server is busy.
//!
//! Every `ModelInfer` call costs both processes a fixed amount of work that
//! does not depend on its rows: HTTP/2 framing, HPACK, protobuf, the socket
//! writes and reads, and the wake-ups of the tasks and threads on each side.
//! For a small model that fixed part is most of the call. So each (model,
//! version) has a [`Lane`] that lets at most [`Coalesce::max_in_flight`] calls
//! out at once:
//!
//! * a prediction that finds a free slot is sent at once, alone, from its own
//!   task: an idle or lightly loaded gateway adds no wait and no hand-off;
//! * one that finds every slot busy waits in the lane's queue; when a call of
//!   the lane ends, its slot takes up to [`Coalesce::max_rows`] queued rows
//!   (oldest first, skipping callers that gave up) and sends them as one call
//!   of N rows, and each waiter gets its own row of the answer.
//!
//! Shadow copies go through the lanes of the shadow clients (their own
//! slots), so they never take a slot of the callers' calls.
//!
//! So the number of calls grows more slowly than the number of predictions
//! exactly when the machine is short of CPU, which is when the fixed cost
//! matters. Triton's and our model-server's dynamic batchers do the same on
//! the server side; this saves the per-call cost that comes before them.
//!
//! `max_rows` must not exceed the model's max batch size, which the V2
//! metadata does not tell. When the model-server refuses a call of several
//! rows (INVALID_ARGUMENT: nothing ran), the lane halves its row limit, says
//! so in a warning, and sends each of those rows again alone; so a limit set
//! too high costs one refused call per halving, never the predictions.
//!
//! Bounds: a waiter holds one of the gateway's admission permits and waits at
//! most its own deadline, so the queue is bounded by the concurrency limit
//! and never outlives its callers. A batch call's deadline is the latest of
//! its waiters' (each waiter still gives up at its own). A row with a
//! non-finite value is never put in a batch (the model-server would refuse
//! the whole call for it), and calls are never retried, as in
//! [`ModelClient::infer`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::infer::{InferError, InferOutputs, ModelClient};

/// How a model's single-row calls are sent together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesce {
    /// Calls of one (model, version) out at once before later predictions
    /// wait to be sent together; 0 sends every prediction alone.
    pub max_in_flight: usize,
    /// Most rows in one call.
    pub max_rows: usize,
}

impl Coalesce {
    /// Every prediction is its own call.
    pub const OFF: Coalesce = Coalesce {
        max_in_flight: 0,
        max_rows: 1,
    };
}

/// A model-server client that sends single rows, each (model, version)
/// through its own [`Lane`]: what the prediction path calls.
#[derive(Debug)]
pub struct RowClient {
    client: Arc<ModelClient>,
    /// The single-row call lanes, one per (model, version) seen.
    lanes: Mutex<Vec<Arc<Lane>>>,
}

impl RowClient {
    /// Sends rows over `client`.
    pub fn new(client: ModelClient) -> Self {
        RowClient {
            client: Arc::new(client),
            lanes: Mutex::new(Vec::new()),
        }
    }

    /// The client every call goes through (breaker, counters, readiness).
    pub fn client(&self) -> &ModelClient {
        &self.client
    }

    /// Runs one prediction's `row` through `model` `version` (input `input`,
    /// `row.len()` FP32 columns) within `deadline`, sent together with other
    /// predictions of the same version while `coalesce.max_in_flight` calls
    /// are already out (see the module's docs).
    ///
    /// # Errors
    /// [`InferError`]; never retried.
    pub async fn infer_row(
        &self,
        model: &str,
        version: &str,
        input: &str,
        row: &[f32],
        coalesce: Coalesce,
        deadline: Duration,
    ) -> Result<RowAnswer, InferError> {
        let lane = self.lane(model, version, input, row.len(), coalesce);
        lane.infer(&self.client, row, deadline).await
    }

    pub(crate) fn lane(
        &self,
        model: &str,
        version: &str,
        input: &str,
        width: usize,
        coalesce: Coalesce,
    ) -> Arc<Lane> {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lane) = lanes
            .iter()
            .find(|l| l.serves(model, version, input, width) && l.settings() == coalesce)
        {
            return Arc::clone(lane);
        }
        let lane = Arc::new(Lane::new(model, version, input, width, coalesce));
        lanes.push(Arc::clone(&lane));
        lane
    }
}

/// One prediction's share of a model call.
#[derive(Debug, Clone)]
pub struct RowAnswer {
    /// The call's answer (shared by every row of the call).
    pub outputs: Arc<InferOutputs>,
    /// This prediction's row in `outputs`.
    pub row: usize,
    /// Rows in the call (1: sent alone).
    pub rows_in_call: usize,
    /// From this prediction's send (or its entry in the queue) to its answer.
    pub elapsed: Duration,
}

/// The single-row calls of one (model, version) on one client.
#[derive(Debug)]
pub struct Lane {
    model: String,
    version: String,
    input: String,
    width: usize,
    settings: Coalesce,
    /// Rows per call now: `settings.max_rows`, halved after each call of
    /// several rows that the model-server refused.
    max_rows: AtomicUsize,
    state: Mutex<LaneState>,
}

#[derive(Debug, Default)]
struct LaneState {
    /// Calls out now (each holds a [`Slot`]).
    in_flight: usize,
    /// Predictions waiting for a slot. Not empty only while every slot is
    /// taken (or a freed slot's batch task is about to take them).
    queue: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    row: Vec<f32>,
    /// When the caller stops waiting.
    deadline: Instant,
    /// The caller's span: the batch call is traced under the first
    /// waiter's, linked from the others'.
    span: tracing::Span,
    answer: oneshot::Sender<Result<RowAnswer, InferError>>,
    queued: Instant,
}

impl Lane {
    /// A lane for `model` `version`, whose input tensor `input` is `width`
    /// FP32 columns wide.
    pub fn new(model: &str, version: &str, input: &str, width: usize, settings: Coalesce) -> Self {
        Lane {
            model: model.to_owned(),
            version: version.to_owned(),
            input: input.to_owned(),
            width,
            settings,
            max_rows: AtomicUsize::new(settings.max_rows.max(1)),
            state: Mutex::new(LaneState::default()),
        }
    }

    /// Whether this lane serves `model` `version` with these settings.
    pub fn serves(&self, model: &str, version: &str, input: &str, width: usize) -> bool {
        self.model == model && self.version == version && self.input == input && self.width == width
    }

    /// The lane's settings.
    pub fn settings(&self) -> Coalesce {
        self.settings
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LaneState> {
        // The state is consistent after every statement that changes it, so
        // a panic elsewhere while it was held leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rows one call carries at most now (see the module's docs on refusals).
    pub fn max_rows(&self) -> usize {
        self.max_rows.load(Ordering::Relaxed)
    }

    /// Runs one row (`row.len() == width`) through the model within
    /// `deadline`: sent at once when a slot is free, else with the other rows
    /// queued meanwhile when a slot frees.
    ///
    /// # Errors
    /// [`InferError`] of the call that carried the row, or
    /// [`InferError::DeadlineExceeded`] when no call answered in time.
    pub async fn infer(
        self: &Arc<Self>,
        client: &Arc<ModelClient>,
        row: &[f32],
        deadline: Duration,
    ) -> Result<RowAnswer, InferError> {
        let started = Instant::now();
        let coalescable = self.settings.max_in_flight > 0 && row.iter().all(|v| v.is_finite());
        let waiting = if coalescable {
            let mut state = self.state();
            if state.in_flight < self.settings.max_in_flight && state.queue.is_empty() {
                state.in_flight += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                state.queue.push_back(Waiter {
                    row: row.to_vec(),
                    deadline: started + deadline,
                    span: tracing::Span::current(),
                    answer: tx,
                    queued: started,
                });
                Some(rx)
            }
        } else {
            None
        };
        let Some(rx) = waiting else {
            // Sent at once, alone. The slot (when coalescable) is handed on
            // to the queue when this call ends, or when the caller gives up.
            let _slot = coalescable.then(|| Slot::taken(client, self));
            return self.send_alone(client, row, deadline, started).await;
        };
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(answer)) => answer.map(|mut a| {
                a.elapsed = started.elapsed();
                a
            }),
            Ok(Err(_)) => Err(InferError::Failed {
                endpoint: client.endpoint().to_owned(),
                detail: "the call carrying this row ended without an answer".into(),
            }),
            Err(_) => Err(InferError::DeadlineExceeded {
                endpoint: client.endpoint().to_owned(),
                deadline,
            }),
        }
    }

    /// Sends `row` in a call of its own within `deadline`; the answer's
    /// `elapsed` counts from `since` (the prediction's send or queueing).
    async fn send_alone(
        &self,
        client: &ModelClient,
        row: &[f32],
        deadline: Duration,
        since: Instant,
    ) -> Result<RowAnswer, InferError> {
        let outputs = client
            .infer(
                &self.model,
                &self.version,
                &self.input,
                row,
                self.width,
                deadline,
            )
            .await?;
        Ok(RowAnswer {
            outputs: Arc::new(outputs),
            row: 0,
            rows_in_call: 1,
            elapsed: since.elapsed(),
        })
    }

    /// Takes the next batch for a freed slot: up to `max_rows` waiters who
    /// still wait, oldest first. Empty: the slot is released.
    fn next_batch(&self) -> Vec<Waiter> {
        let max_rows = self.max_rows();
        let mut state = self.state();
        let mut batch = Vec::new();
        while batch.len() < max_rows {
            let Some(w) = state.queue.pop_front() else {
                break;
            };
            if !w.answer.is_closed() {
                batch.push(w);
            }
        }
        if batch.is_empty() {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        batch
    }
}

/// One of a lane's call slots, held by a call in flight. Dropped (the call
/// ended, or its caller gave up), it goes to the queued rows if there are
/// any, on a task of their own, else back to the lane.
struct Slot {
    held: Option<(Arc<ModelClient>, Arc<Lane>)>,
}

impl Slot {
    fn taken(client: &Arc<ModelClient>, lane: &Arc<Lane>) -> Self {
        Slot {
            held: Some((Arc::clone(client), Arc::clone(lane))),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some((client, lane)) = self.held.take() else {
            return;
        };
        let batch = lane.next_batch();
        if batch.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(send_batch(Slot::taken(&client, &lane), batch));
            }
            Err(_) => {
                // No runtime (the process is ending): nothing can send them.
                for w in batch {
                    let _ = w.answer.send(Err(InferError::Unavailable {
                        endpoint: client.endpoint().to_owned(),
                        detail: "the gateway is shutting down".into(),
                    }));
                }
                let mut state = lane.state();
                state.in_flight = state.in_flight.saturating_sub(1);
            }
        }
    }
}

/// Sends `batch` as one call on `slot`'s lane and answers each waiter with
/// its row; the slot then goes to the next queued rows (see [`Slot`]).
async fn send_batch(slot: Slot, batch: Vec<Waiter>) {
    let Some((client, lane)) = slot.held.as_ref() else {
        return;
    };
    let now = Instant::now();
    let deadline = batch
        .iter()
        .map(|w| w.deadline.saturating_duration_since(now))
        .max()
        .unwrap_or_default();
    let mut rows = Vec::with_capacity(batch.len() * lane.width);
    for w in &batch {
        rows.extend_from_slice(&w.row);
    }
    let n = batch.len();
    let span = batch.first().map_or_else(
        tracing::Span::none,
        |first| tracing::info_span!(parent: &first.span, "model_call_batch", rows = n),
    );
    for w in batch.iter().skip(1) {
        span.follows_from(&w.span);
    }
    let result = client
        .infer(
            &lane.model,
            &lane.version,
            &lane.input,
            &rows,
            lane.width,
            deadline,
        )
        .instrument(span)
        .await;
    match result {
        Err(InferError::Refused { detail, .. }) if n > 1 => {
            // Nothing ran: most likely more rows than the model's max batch
            // size. Send fewer from now on, and these rows one by one.
            client.count_refused_batch();
            let fewer = (n / 2).max(1);
            if lane.max_rows.fetch_min(fewer, Ordering::Relaxed) > fewer {
                tracing::warn!(
                    model = %lane.model,
                    version = %lane.version,
                    endpoint = %client.endpoint(),
                    "the model-server refused a call of {n} predictions ({detail}); sending at most {fewer} per call from now on: set [model.coalesce] max_rows to at most the model's max batch size"
                );
            }
            for w in batch {
                let (client, lane) = (Arc::clone(client), Arc::clone(lane));
                tokio::spawn(async move {
                    let deadline = w.deadline.saturating_duration_since(Instant::now());
                    let answer = lane
                        .send_alone(&client, &w.row, deadline, w.queued)
                        .instrument(w.span.clone())
                        .await;
                    let _ = w.answer.send(answer);
                });
            }
        }
        Ok(outputs) => {
            let outputs = Arc::new(outputs);
            for (row, w) in batch.into_iter().enumerate() {
                let _ = w.answer.send(Ok(RowAnswer {
                    outputs: Arc::clone(&outputs),
                    row,
                    rows_in_call: n,
                    elapsed: w.queued.elapsed(),
                }));
            }
        }
        Err(e) => {
            for w in batch {
                let _ = w.answer.send(Err(e.clone()));
            }
        }
    }
    drop(slot);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use proto::inference as pb;
    use proto::inference::grpc_inference_service_server::{
        GrpcInferenceService, GrpcInferenceServiceServer,
    };
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::model::infer::BreakerConfig;

    /// A V2 server whose model answers each row with its first two values
    /// (output "echo", [rows, 2]) after `delay`, recording each call's rows.
    #[derive(Clone)]
    struct Echo {
        delay: Duration,
        /// Calls of more rows are refused (INVALID_ARGUMENT), as a V2
        /// server refuses more rows than the model's max batch size.
        max_batch: usize,
        calls: Arc<Mutex<Vec<usize>>>,
        refused: Arc<AtomicU64>,
    }

    fn status(message: &str) -> Status {
        Status::unimplemented(message.to_owned())
    }

    #[tonic::async_trait]
    impl GrpcInferenceService for Echo {
        async fn server_live(
            &self,
            _: Request<pb::ServerLiveRequest>,
        ) -> Result<Response<pb::ServerLiveResponse>, Status> {
            Err(status("live"))
        }
        async fn server_ready(
            &self,
            _: Request<pb::ServerReadyRequest>,
        ) -> Result<Response<pb::ServerReadyResponse>, Status> {
            Err(status("ready"))
        }
        async fn model_ready(
            &self,
            _: Request<pb::ModelReadyRequest>,
        ) -> Result<Response<pb::ModelReadyResponse>, Status> {
            Err(status("model ready"))
        }
        async fn server_metadata(
            &self,
            _: Request<pb::ServerMetadataRequest>,
        ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
            Err(status("server metadata"))
        }
        async fn model_metadata(
            &self,
            _: Request<pb::ModelMetadataRequest>,
        ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
            Err(status("model metadata"))
        }
        async fn model_infer(
            &self,
            request: Request<pb::ModelInferRequest>,
        ) -> Result<Response<pb::ModelInferResponse>, Status> {
            let r = request.into_inner();
            let shape = r
                .inputs
                .first()
                .map(|t| t.shape.clone())
                .unwrap_or_default();
            let (rows, width) = (shape[0] as usize, shape[1] as usize);
            let values: Vec<f32> = r.raw_input_contents[0]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if values.iter().any(|v| !v.is_finite()) {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Status::invalid_argument("NaN"));
            }
            if rows > self.max_batch {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Status::invalid_argument(format!(
                    "{rows} rows exceed the model's max_batch_size {}",
                    self.max_batch
                )));
            }
            self.calls.lock().expect("calls").push(rows);
            tokio::time::sleep(self.delay).await;
            let mut out = Vec::with_capacity(rows * 8);
            for row in values.chunks_exact(width) {
                out.extend_from_slice(&row[0].to_le_bytes());
                out.extend_from_slice(&row[1].to_le_bytes());
            }
            Ok(Response::new(pb::ModelInferResponse {
                model_name: r.model_name,
                model_version: "7".into(),
                outputs: vec![pb::model_infer_response::InferOutputTensor {
                    name: "echo".into(),
                    datatype: "FP32".into(),
                    shape: vec![rows as i64, 2],
                    ..Default::default()
                }],
                raw_output_contents: vec![out.into()],
                ..Default::default()
            }))
        }
    }

    async fn echo_server(delay: Duration) -> (Echo, String) {
        echo_server_with(delay, usize::MAX).await
    }

    async fn echo_server_with(delay: Duration, max_batch: usize) -> (Echo, String) {
        let echo = Echo {
            delay,
            max_batch,
            calls: Arc::default(),
            refused: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let service = GrpcInferenceServiceServer::new(echo.clone());
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        (echo, url)
    }

    fn client(url: &str) -> Arc<RowClient> {
        Arc::new(RowClient::new(
            ModelClient::new(url, Duration::from_secs(2), BreakerConfig::default())
                .expect("client"),
        ))
    }

    fn row(i: usize) -> Vec<f32> {
        vec![i as f32, -(i as f32), 0.5]
    }

    async fn predict(
        client: &Arc<RowClient>,
        i: usize,
        settings: Coalesce,
        deadline: Duration,
    ) -> Result<RowAnswer, InferError> {
        client
            .infer_row("m", "1", "x", &row(i), settings, deadline)
            .await
    }

    fn echoed(answer: &RowAnswer) -> Vec<f64> {
        let o = &answer.outputs.outputs[0];
        o.values[answer.row * 2..answer.row * 2 + 2].to_vec()
    }

    const ONE_AT_A_TIME: Coalesce = Coalesce {
        max_in_flight: 1,
        max_rows: 8,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn predictions_waiting_for_a_busy_model_go_together_and_each_gets_its_own_row() {
        let (echo, url) = echo_server(Duration::from_millis(30)).await;
        let client = client(&url);
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let client = Arc::clone(&client);
                tokio::spawn(async move {
                    (
                        i,
                        predict(&client, i, ONE_AT_A_TIME, Duration::from_secs(2)).await,
                    )
                })
            })
            .collect();
        let mut together = 0;
        for call in calls {
            let (i, answer) = call.await.expect("task");
            let answer = answer.expect("answered");
            assert_eq!(echoed(&answer), vec![i as f64, -(i as f64)], "call {i}");
            assert_eq!(answer.outputs.model_version, "7");
            if answer.rows_in_call > 1 {
                together += 1;
            }
        }
        let sent = echo.calls.lock().expect("calls").clone();
        assert_eq!(
            sent.iter().sum::<usize>(),
            20,
            "every row sent once: {sent:?}"
        );
        assert!(sent.iter().all(|&n| n <= 8), "max_rows holds: {sent:?}");
        assert!(
            sent.len() < 20 && together > 0,
            "some went together: {sent:?}"
        );
        assert_eq!(client.client().calls_and_rows(), (sent.len() as u64, 20));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_free_slot_sends_at_once_and_coalescing_off_sends_each_alone() {
        let (echo, url) = echo_server(Duration::from_millis(20)).await;
        let client = client(&url);
        let answer = predict(&client, 3, ONE_AT_A_TIME, Duration::from_secs(2))
            .await
            .expect("answered");
        assert_eq!((answer.rows_in_call, echoed(&answer)), (1, vec![3.0, -3.0]));
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let client = Arc::clone(&client);
                tokio::spawn(async move {
                    predict(&client, i, Coalesce::OFF, Duration::from_secs(2)).await
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.expect("task").expect("answered").rows_in_call, 1);
        }
        assert_eq!(*echo.calls.lock().expect("calls"), vec![1; 7]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_past_its_deadline_gives_up_and_is_not_sent() {
        let (echo, url) = echo_server(Duration::from_millis(300)).await;
        let client = client(&url);
        let first = {
            let client = Arc::clone(&client);
            tokio::spawn(
                async move { predict(&client, 1, ONE_AT_A_TIME, Duration::from_secs(2)).await },
            )
        };
        // Wait (bounded) until the first call is out and holds the slot.
        for _ in 0..100 {
            if client.client().calls_and_rows().0 == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            client.client().calls_and_rows().0,
            1,
            "the first call is out"
        );
        // The slot is busy for up to 300 ms more: a 20-ms caller gives up queued.
        let hurried = predict(&client, 2, ONE_AT_A_TIME, Duration::from_millis(20)).await;
        assert!(
            matches!(hurried, Err(InferError::DeadlineExceeded { .. })),
            "{hurried:?}"
        );
        let patient = predict(&client, 3, ONE_AT_A_TIME, Duration::from_secs(2))
            .await
            .expect("answered");
        assert_eq!(echoed(&patient), vec![3.0, -3.0]);
        assert!(first.await.expect("task").is_ok());
        assert_eq!(
            *echo.calls.lock().expect("calls"),
            vec![1, 1],
            "the row whose caller gave up was never sent"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_with_a_non_finite_value_is_sent_alone_and_fails_alone() {
        let (echo, url) = echo_server(Duration::from_millis(40)).await;
        let client = client(&url);
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let client = Arc::clone(&client);
                tokio::spawn(async move {
                    let mut r = row(i);
                    if i == 4 {
                        r[2] = f32::NAN;
                    }
                    client
                        .infer_row("m", "1", "x", &r, ONE_AT_A_TIME, Duration::from_secs(2))
                        .await
                })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let answer = call.await.expect("task");
            assert_eq!(answer.is_err(), i == 4, "call {i}: {answer:?}");
        }
        assert_eq!(echo.refused.load(Ordering::Relaxed), 1);
        assert_eq!(echo.calls.lock().expect("calls").iter().sum::<usize>(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_batch_halves_the_row_limit_and_its_rows_are_answered_alone() {
        let (echo, url) = echo_server_with(Duration::from_millis(30), 3).await;
        let client = client(&url);
        let calls: Vec<_> = (0..30)
            .map(|i| {
                let client = Arc::clone(&client);
                tokio::spawn(async move {
                    (
                        i,
                        predict(&client, i, ONE_AT_A_TIME, Duration::from_secs(3)).await,
                    )
                })
            })
            .collect();
        for call in calls {
            let (i, answer) = call.await.expect("task");
            let answer = answer.expect("answered despite the refusals");
            assert_eq!(echoed(&answer), vec![i as f64, -(i as f64)], "call {i}");
        }
        let refused = echo.refused.load(Ordering::Relaxed);
        assert!(refused >= 1, "8 rows were refused");
        assert_eq!(
            client.client().refused_batches(),
            refused,
            "each refusal counted"
        );
        let lane = client.lane("m", "1", "x", 3, ONE_AT_A_TIME);
        assert_eq!(lane.max_rows(), 2, "8 refused, then 4 refused, then 2");
        let sent = echo.calls.lock().expect("calls").clone();
        assert_eq!(
            sent.iter().sum::<usize>(),
            30,
            "every row answered once: {sent:?}"
        );
    }
}

//! Dynamic batching: each model version has one bounded queue and a few worker
//! threads. A worker takes the oldest request, gathers more until the batch is
//! full or the oldest has waited `max_queue_delay`, runs them as one inference and
//! hands each caller its own rows back. A full queue refuses at once (429).
//!
//! Waiting only pays while the CPU is busy anyway: when no other worker of the
//! version is running an inference, a worker takes what is already queued and
//! runs at once (unless `wait_when_idle`), so a lightly loaded server adds no
//! batching delay, and under load batches form from the queue that builds up
//! behind the running inferences. A worker already waiting stops as soon as
//! the other inferences end (checked every [`IDLE_CHECK`]): the window is an
//! upper bound, not a fixed delay.
//!
//! Inference is CPU-bound, so it runs on dedicated OS threads, not on the async
//! runtime's workers, with one exception: a request that finds the version
//! idle (nothing running or queued) and whose run is expected to take under
//! the model's `inline_max_us` runs on the thread that decoded it. For a small
//! model the hand-off to an inference thread and back (two wake-ups) costs
//! more than the run itself.
//!
//! Tracing: each request's `queue_wait` span lasts from queueing until its batch
//! starts; the batch's `inference` span is a child of the first request's span
//! and links the others (one run serves several traces).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

use crate::config::ModelSpec;
use crate::datatype::TensorData;
use crate::error::InferError;
use crate::metrics::ModelMetrics;
use crate::runtime::{OnnxModel, OutputTensor};

/// How often a worker holding a batch open re-checks whether the version's
/// other inferences have finished (then it stops waiting and runs).
const IDLE_CHECK: Duration = Duration::from_micros(100);

/// Outputs of one request (ordered as `spec.outputs`), or why it failed.
pub type JobResult = Result<Vec<OutputTensor>, InferError>;

/// One request waiting in a version's queue.
struct Job {
    inputs: Vec<(Vec<usize>, TensorData)>,
    rows: usize,
    enqueued: Instant,
    reply: oneshot::Sender<JobResult>,
    /// The caller's span (the batch's parent or link).
    caller: tracing::Span,
    /// Open while the request waits; closed when its batch starts.
    queued: tracing::Span,
}

/// The queue in front of one loaded model version.
pub struct Batcher {
    sender: Sender<Job>,
    capacity: usize,
    shared: Arc<Shared>,
}

/// What the version's callers and its worker threads share.
struct Shared {
    spec: Arc<ModelSpec>,
    version: String,
    model: Arc<OnnxModel>,
    metrics: Option<Arc<ModelMetrics>>,
    /// How many of the version's inferences run now (workers and inline).
    running: AtomicUsize,
    /// Recent run time per row, in nanoseconds (a moving average): what a
    /// request's run is expected to cost, to decide whether it may run inline.
    /// Small batches overstate it (the run's fixed cost is spread over few
    /// rows), which only errs towards the queue.
    nanos_per_row: AtomicU64,
}

/// Counts one running inference until dropped (also if the run panics).
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    fn start_running(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::AcqRel);
        Running(&self.running)
    }

    /// Records a finished run of `rows` rows that took `took`.
    fn ran(&self, took: Duration, rows: usize) {
        if let Some(m) = &self.metrics {
            m.inference.observe_duration(took);
            m.batch_rows.observe(rows as f64);
        }
        let sample = u64::try_from(took.as_nanos() / rows.max(1) as u128).unwrap_or(u64::MAX);
        let old = self.nanos_per_row.load(Ordering::Relaxed);
        // Racy read-modify-write: a lost update only skips one sample.
        let new = if sample >= old {
            old + (sample - old) / 8
        } else {
            old - (old - sample) / 8
        };
        self.nanos_per_row.store(new, Ordering::Relaxed);
    }

    fn expected_run(&self, rows: usize) -> Duration {
        Duration::from_nanos(
            self.nanos_per_row
                .load(Ordering::Relaxed)
                .saturating_mul(rows as u64),
        )
    }

    fn inference_error(&self, message: String) -> InferError {
        InferError::Inference {
            model: self.spec.name.clone(),
            version: self.version.clone(),
            message,
        }
    }
}

impl Batcher {
    /// Starts `spec.instances` worker threads running `model`; `warm_per_row`
    /// is a warm-up run's time per row, the first estimate of a run's cost
    /// (None: no warm-up ran, so runs count as slow until real ones say
    /// otherwise).
    ///
    /// # Errors
    /// The OS error when a thread cannot be spawned.
    pub fn start(
        spec: Arc<ModelSpec>,
        version: String,
        model: Arc<OnnxModel>,
        metrics: Option<Arc<ModelMetrics>>,
        warm_per_row: Option<Duration>,
    ) -> std::io::Result<Batcher> {
        let capacity = spec.max_queue_size;
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(capacity);
        let shared = Arc::new(Shared {
            spec: Arc::clone(&spec),
            version: version.clone(),
            model,
            metrics,
            running: AtomicUsize::new(0),
            nanos_per_row: AtomicU64::new(warm_per_row.map_or(u64::MAX, |d| {
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
            })),
        });
        for i in 0..spec.instances {
            let worker = Worker {
                shared: Arc::clone(&shared),
                receiver: receiver.clone(),
                carry: None,
            };
            std::thread::Builder::new()
                .name(format!("infer-{}-v{version}-{i}", spec.name))
                .spawn(move || worker.run())?;
        }
        Ok(Batcher {
            sender,
            capacity,
            shared,
        })
    }

    /// Queues a checked request and waits for its rows (or runs it at once on
    /// this thread, see [`ModelSpec::inline_max`]).
    ///
    /// # Errors
    /// `QueueFull` at once when the queue is full; `ShuttingDown` when the workers
    /// are gone; the inference error otherwise.
    pub async fn infer(&self, inputs: Vec<(Vec<usize>, TensorData)>, rows: usize) -> JobResult {
        if let Some(result) = self.run_inline(&inputs, rows) {
            return result;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            enqueued: Instant::now(),
            reply,
            caller: tracing::Span::current(),
            queued: tracing::info_span!("queue_wait", rows),
        };
        match self.sender.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if let Some(m) = &self.shared.metrics {
                    m.queue_full.inc();
                }
                return Err(InferError::QueueFull {
                    model: self.shared.spec.name.clone(),
                    version: self.shared.version.clone(),
                    capacity: self.capacity,
                });
            }
            Err(TrySendError::Disconnected(_)) => return Err(InferError::ShuttingDown),
        }
        answer.await.unwrap_or(Err(InferError::ShuttingDown))
    }

    /// Runs the request on the calling thread when a worker would run it at
    /// once anyway (no inference of the version running, nothing queued, no
    /// `wait_when_idle`) and its run is expected to be short; None otherwise.
    /// A worker would give the same answer, after two thread wake-ups.
    fn run_inline(&self, inputs: &[(Vec<usize>, TensorData)], rows: usize) -> Option<JobResult> {
        let shared = &*self.shared;
        let spec = &*shared.spec;
        if spec.inline_max.is_zero()
            || spec.dynamic_batching.is_some_and(|b| b.wait_when_idle)
            || shared.expected_run(rows) > spec.inline_max
            || !self.sender.is_empty()
        {
            return None;
        }
        // Claims the version only if nothing runs: at most one inline run, and
        // none beside the workers' batches (which would then wait for it).
        shared
            .running
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        let _running = Running(&shared.running);
        if let Some(m) = &shared.metrics {
            m.queue_wait.observe_duration(Duration::ZERO);
            m.inline_runs.inc();
        }
        // Every request's trace has the same stages: this one waited for nothing.
        drop(tracing::info_span!("queue_wait", rows));
        let span = tracing::info_span!(
            "inference",
            model = %spec.name,
            version = %shared.version,
            rows,
            requests = 1,
            inline = true
        );
        let _entered = span.enter();
        let started = Instant::now();
        let result = shared.model.run(spec, inputs);
        shared.ran(started.elapsed(), rows);
        Some(result.map_err(|message| {
            tracing::warn!(model = %spec.name, version = %shared.version, rows, %message, "inference failed");
            shared.inference_error(message)
        }))
    }
}

struct Worker {
    shared: Arc<Shared>,
    receiver: Receiver<Job>,
    /// A request taken from the queue that did not fit the last batch.
    carry: Option<Job>,
}

impl Worker {
    fn run(mut self) {
        while let Some(first) = self.carry.take().or_else(|| self.receiver.recv().ok()) {
            let batch = self.gather(first);
            let _running = self.shared.start_running();
            self.execute(batch);
        }
    }

    /// Collects requests to run with `first`: until max_batch_size rows, or until
    /// `first` has waited max_queue_delay (no waiting at all while no other
    /// inference runs, unless `wait_when_idle`). Requests whose trailing
    /// dimensions differ from `first` cannot be concatenated and wait for the
    /// next batch.
    fn gather(&mut self, first: Job) -> Vec<Job> {
        let Some(batching) = self.shared.spec.dynamic_batching else {
            return vec![first];
        };
        let deadline = first.enqueued + batching.max_queue_delay;
        let mut rows = first.rows;
        let mut batch = vec![first];
        while rows < self.shared.spec.max_batch_size {
            let Some(next) = self.next_job(deadline, batching.wait_when_idle) else {
                break;
            };
            if rows + next.rows > self.shared.spec.max_batch_size
                || !same_trailing_dims(&batch[0], &next)
            {
                self.carry = Some(next);
                break;
            }
            rows += next.rows;
            batch.push(next);
        }
        batch
    }

    /// The next queued request to join the batch, waiting for one until
    /// `deadline` only while another inference of the version runs (always,
    /// with `wait_when_idle`). The wait is cut into short slices and re-checks
    /// that: once the other inference ends, a core is free and holding the
    /// batch back any longer would only add latency.
    fn next_job(&self, deadline: Instant, wait_when_idle: bool) -> Option<Job> {
        loop {
            match self.receiver.try_recv() {
                Ok(job) => return Some(job),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if !wait_when_idle && self.shared.running.load(Ordering::Acquire) == 0 {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let slice = if wait_when_idle {
                deadline
            } else {
                deadline.min(now + IDLE_CHECK)
            };
            match self.receiver.recv_deadline(slice) {
                Ok(job) => return Some(job),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn execute(&self, batch: Vec<Job>) {
        let shared = &*self.shared;
        let spec = &*shared.spec;
        // A caller whose deadline passed has dropped its receiver: skip its rows.
        let mut batch: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if batch.is_empty() {
            return;
        }
        let total_rows: usize = batch.iter().map(|j| j.rows).sum();
        for job in &mut batch {
            if let Some(m) = &shared.metrics {
                m.queue_wait.observe_duration(job.enqueued.elapsed());
            }
            // Closes the wait span now that the run starts.
            drop(std::mem::replace(&mut job.queued, tracing::Span::none()));
        }
        let span = tracing::info_span!(
            parent: &batch[0].caller,
            "inference",
            model = %spec.name,
            version = %shared.version,
            rows = total_rows,
            requests = batch.len()
        );
        for job in batch.iter().skip(1) {
            telemetry::link(&span, &job.caller);
        }
        let _entered = span.enter();
        let started = Instant::now();
        let result = if batch.len() == 1 {
            shared.model.run(spec, &batch[0].inputs)
        } else {
            match concat_inputs(&batch, total_rows) {
                Some(inputs) => shared.model.run(spec, &inputs),
                None => Err("requests in one batch have different input types".to_owned()),
            }
        };
        shared.ran(started.elapsed(), total_rows);
        match result {
            Err(message) => {
                tracing::warn!(model = %spec.name, version = %shared.version, rows = total_rows, %message, "inference failed");
                for job in batch {
                    let _ = job.reply.send(Err(shared.inference_error(message.clone())));
                }
            }
            Ok(outputs) if batch.len() == 1 => {
                if let Some(job) = batch.into_iter().next() {
                    let _ = job.reply.send(Ok(outputs));
                }
            }
            Ok(outputs) => match split_outputs(&outputs, &batch, total_rows, spec.batched_dims) {
                Ok(parts) => {
                    for (job, part) in batch.into_iter().zip(parts) {
                        // The caller may have gone; its rows are simply dropped.
                        let _ = job.reply.send(Ok(part));
                    }
                }
                Err(message) => {
                    for job in batch {
                        let _ = job.reply.send(Err(shared.inference_error(message.clone())));
                    }
                }
            },
        }
    }
}

fn same_trailing_dims(a: &Job, b: &Job) -> bool {
    a.inputs.len() == b.inputs.len()
        && a.inputs
            .iter()
            .zip(&b.inputs)
            .all(|((sa, _), (sb, _))| sa.get(1..) == sb.get(1..))
}

/// Concatenates every job's inputs along the batch axis.
fn concat_inputs(batch: &[Job], total_rows: usize) -> Option<Vec<(Vec<usize>, TensorData)>> {
    let first = batch.first()?;
    first
        .inputs
        .iter()
        .enumerate()
        .map(|(i, (shape, data))| {
            let per_row = data.len() / first.rows.max(1);
            let mut joined = TensorData::with_capacity(data.datatype(), per_row * total_rows)?;
            for job in batch {
                if !joined.extend_from(&job.inputs.get(i)?.1) {
                    return None;
                }
            }
            let mut full_shape = shape.clone();
            if let Some(d0) = full_shape.first_mut() {
                *d0 = total_rows;
            }
            Some((full_shape, joined))
        })
        .collect()
}

/// Splits batched outputs back into each job's rows.
fn split_outputs(
    outputs: &[OutputTensor],
    batch: &[Job],
    total_rows: usize,
    batched_dims: bool,
) -> Result<Vec<Vec<OutputTensor>>, String> {
    let mut parts: Vec<Vec<OutputTensor>> = batch
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for out in outputs {
        if !batched_dims || out.shape.first().copied() != Some(total_rows) {
            return Err(format!(
                "an output has shape {:?}; batching needs its first dimension to be the {total_rows} rows",
                out.shape
            ));
        }
        let per_row = out.data.len() / total_rows.max(1);
        let mut start = 0;
        for (job, part) in batch.iter().zip(parts.iter_mut()) {
            let end = start + job.rows * per_row;
            let mut shape = out.shape.clone();
            shape[0] = job.rows;
            part.push(OutputTensor {
                shape,
                data: out.data.slice(start, end),
            });
            start = end;
        }
    }
    Ok(parts)
}

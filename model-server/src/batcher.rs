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
//! Inference is CPU-bound, so it runs on dedicated OS threads, never on the async
//! runtime's workers.
//!
//! Tracing: each request's `queue_wait` span lasts from queueing until its batch
//! starts; the batch's `inference` span is a child of the first request's span
//! and links the others (one run serves several traces).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    model: String,
    version: String,
    metrics: Option<Arc<ModelMetrics>>,
}

impl Batcher {
    /// Starts `spec.instances` worker threads running `model`.
    ///
    /// # Errors
    /// The OS error when a thread cannot be spawned.
    pub fn start(
        spec: Arc<ModelSpec>,
        version: String,
        model: Arc<OnnxModel>,
        metrics: Option<Arc<ModelMetrics>>,
    ) -> std::io::Result<Batcher> {
        let capacity = spec.max_queue_size;
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(capacity);
        let running = Arc::new(AtomicUsize::new(0));
        for i in 0..spec.instances {
            let worker = Worker {
                spec: spec.clone(),
                version: version.clone(),
                model: model.clone(),
                receiver: receiver.clone(),
                carry: None,
                metrics: metrics.clone(),
                running: Arc::clone(&running),
            };
            std::thread::Builder::new()
                .name(format!("infer-{}-v{version}-{i}", spec.name))
                .spawn(move || worker.run())?;
        }
        Ok(Batcher {
            sender,
            capacity,
            model: spec.name.clone(),
            version,
            metrics,
        })
    }

    /// Queues a checked request and waits for its rows.
    ///
    /// # Errors
    /// `QueueFull` at once when the queue is full; `ShuttingDown` when the workers
    /// are gone; the inference error otherwise.
    pub async fn infer(&self, inputs: Vec<(Vec<usize>, TensorData)>, rows: usize) -> JobResult {
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
                if let Some(m) = &self.metrics {
                    m.queue_full
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return Err(InferError::QueueFull {
                    model: self.model.clone(),
                    version: self.version.clone(),
                    capacity: self.capacity,
                });
            }
            Err(TrySendError::Disconnected(_)) => return Err(InferError::ShuttingDown),
        }
        answer.await.unwrap_or(Err(InferError::ShuttingDown))
    }
}

struct Worker {
    spec: Arc<ModelSpec>,
    version: String,
    model: Arc<OnnxModel>,
    receiver: Receiver<Job>,
    /// A request taken from the queue that did not fit the last batch.
    carry: Option<Job>,
    metrics: Option<Arc<ModelMetrics>>,
    /// How many of the version's workers are running an inference now.
    running: Arc<AtomicUsize>,
}

impl Worker {
    fn run(mut self) {
        while let Some(first) = self.carry.take().or_else(|| self.receiver.recv().ok()) {
            let batch = self.gather(first);
            self.running.fetch_add(1, Ordering::AcqRel);
            self.execute(batch);
            self.running.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Collects requests to run with `first`: until max_batch_size rows, or until
    /// `first` has waited max_queue_delay (no waiting at all while no other
    /// worker runs, unless `wait_when_idle`). Requests whose trailing dimensions
    /// differ from `first` cannot be concatenated and wait for the next batch.
    fn gather(&mut self, first: Job) -> Vec<Job> {
        let Some(batching) = self.spec.dynamic_batching else {
            return vec![first];
        };
        let deadline = first.enqueued + batching.max_queue_delay;
        let mut rows = first.rows;
        let mut batch = vec![first];
        while rows < self.spec.max_batch_size {
            let Some(next) = self.next_job(deadline, batching.wait_when_idle) else {
                break;
            };
            if rows + next.rows > self.spec.max_batch_size || !same_trailing_dims(&batch[0], &next)
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
    /// `deadline` only while another worker of the version runs an inference
    /// (always, with `wait_when_idle`). The wait is cut into short slices and
    /// re-checks that: once the other inference ends, a core is free and
    /// holding the batch back any longer would only add latency.
    fn next_job(&self, deadline: Instant, wait_when_idle: bool) -> Option<Job> {
        loop {
            match self.receiver.try_recv() {
                Ok(job) => return Some(job),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if !wait_when_idle && self.running.load(Ordering::Acquire) == 0 {
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
        // A caller whose deadline passed has dropped its receiver: skip its rows.
        let mut batch: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if batch.is_empty() {
            return;
        }
        let total_rows: usize = batch.iter().map(|j| j.rows).sum();
        for job in &mut batch {
            if let Some(m) = &self.metrics {
                m.queue_wait.observe_duration(job.enqueued.elapsed());
            }
            // Closes the wait span now that the run starts.
            drop(std::mem::replace(&mut job.queued, tracing::Span::none()));
        }
        let span = tracing::info_span!(
            parent: &batch[0].caller,
            "inference",
            model = %self.spec.name,
            version = %self.version,
            rows = total_rows,
            requests = batch.len()
        );
        for job in batch.iter().skip(1) {
            telemetry::link(&span, &job.caller);
        }
        let _entered = span.enter();
        let started = Instant::now();
        let result = if batch.len() == 1 {
            self.model.run(&self.spec, &batch[0].inputs)
        } else {
            match concat_inputs(&batch, total_rows) {
                Some(inputs) => self.model.run(&self.spec, &inputs),
                None => Err("requests in one batch have different input types".to_owned()),
            }
        };
        if let Some(m) = &self.metrics {
            m.inference.observe_duration(started.elapsed());
            m.batch_rows.observe(total_rows as f64);
        }
        let fail = |message: String| InferError::Inference {
            model: self.spec.name.clone(),
            version: self.version.clone(),
            message,
        };
        match result {
            Err(message) => {
                tracing::warn!(model = %self.spec.name, version = %self.version, rows = total_rows, %message, "inference failed");
                for job in batch {
                    let _ = job.reply.send(Err(fail(message.clone())));
                }
            }
            Ok(outputs) if batch.len() == 1 => {
                if let Some(job) = batch.into_iter().next() {
                    let _ = job.reply.send(Ok(outputs));
                }
            }
            Ok(outputs) => {
                match split_outputs(&outputs, &batch, total_rows, self.spec.batched_dims) {
                    Ok(parts) => {
                        for (job, part) in batch.into_iter().zip(parts) {
                            // The caller may have gone; its rows are simply dropped.
                            let _ = job.reply.send(Ok(part));
                        }
                    }
                    Err(message) => {
                        for job in batch {
                            let _ = job.reply.send(Err(fail(message.clone())));
                        }
                    }
                }
            }
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

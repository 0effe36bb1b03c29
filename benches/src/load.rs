//! The load driver: open loop at a fixed rate (latency from each call's
//! *intended* send time, so queueing is never hidden — no coordinated
//! omission) and closed loop with a number of callers, over any async call.
//!
//! - A target is anything implementing [`Call`]: `call(k)` sends call number
//!   `k` of the run (use `k` to vary the request) and returns its
//!   [`Outcome`]: [`Outcome::Ok`], [`Outcome::Shed`] (load shedding, e.g.
//!   gRPC `RESOURCE_EXHAUSTED` or HTTP 429) or [`Outcome::Failed`] with a
//!   code. [`call_fn`] turns an `async` closure into a target;
//!   [`Outcome::from_grpc`] maps a tonic result.
//! - [`open_loop`] (or [`run`] with [`Load::Open`]): a dedicated pacing thread
//!   sends call *i* at `start + i / rate` whether or not earlier ones have
//!   answered; more than [`MAX_OUTSTANDING`] calls in flight are not sent but
//!   counted as `client_backlog`.
//! - [`closed_loop`] (or [`Load::Closed`]): `callers` tasks each send their
//!   next call when the last one answers, optionally paced to a total rate;
//!   latency from the actual send.
//! - Every step has [`WARMUP`] of unmeasured calls first; the returned
//!   [`Measured`] covers the measured window only (`completed_all` counts
//!   the warm-up too, for CPU per call).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;

use crate::report::ms;

/// Unmeasured warm-up at the start of every step.
pub const WARMUP: Duration = Duration::from_millis(500);
/// Open loop: calls in flight beyond this are not sent but counted as
/// `client_backlog`, so an overloaded run cannot exhaust the machine.
pub const MAX_OUTSTANDING: u64 = 20_000;

/// What one call ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered successfully; its latency is recorded.
    Ok,
    /// Refused by load shedding (gRPC `RESOURCE_EXHAUSTED`, HTTP 429/503…).
    Shed,
    /// Failed otherwise; the code names the failure in the tally
    /// (e.g. `"Unavailable"`, `"500"`).
    Failed(String),
    /// Not sent: too many calls already in flight (open loop only).
    Backlog,
}

impl Outcome {
    /// A failure with this code.
    pub fn failed(code: impl Into<String>) -> Self {
        Outcome::Failed(code.into())
    }

    /// `None` when ok, else what went wrong (`Shed`, the code, `client_backlog`).
    pub fn failure(&self) -> Option<String> {
        match self {
            Outcome::Ok => None,
            Outcome::Shed => Some("Shed".into()),
            Outcome::Failed(code) => Some(code.clone()),
            Outcome::Backlog => Some("client_backlog".into()),
        }
    }

    /// A tonic call's result: `RESOURCE_EXHAUSTED` is shed, any other status
    /// a failure named by its code (`"Unavailable"`, `"DeadlineExceeded"`…).
    pub fn from_grpc<T>(result: &Result<T, tonic::Status>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => Outcome::Shed,
            Err(s) => Outcome::Failed(format!("{:?}", s.code())),
        }
    }
}

/// A target of the driver: sends call number `k` of the run.
pub trait Call: Send + Sync + 'static {
    /// Sends call `k` and says how it ended (latency is measured outside).
    fn call(&self, k: u64) -> impl Future<Output = Outcome> + Send;
}

/// A [`Call`] made of a closure returning a future; see [`call_fn`].
pub struct CallFn<F>(pub F);

/// Makes `f` (`Fn(u64) -> impl Future<Output = Outcome>`) a target.
pub fn call_fn<F, Fut>(f: F) -> CallFn<F>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    CallFn(f)
}

impl<F, Fut> Call for CallFn<F>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    fn call(&self, k: u64) -> impl Future<Output = Outcome> + Send {
        (self.0)(k)
    }
}

/// How a step loads its target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Open loop at `rate` calls a second.
    Open {
        /// Calls a second.
        rate: f64,
    },
    /// Closed loop with `callers` concurrent callers, optionally paced to
    /// `pace` calls a second in total.
    Closed {
        /// Concurrent callers.
        callers: usize,
        /// At most this many calls a second in total.
        pace: Option<f64>,
    },
}

impl Load {
    /// `open 1000/s`, `closed x8`, `closed x8 paced 950/s`.
    pub fn text(&self) -> String {
        match *self {
            Load::Open { rate } => format!("open {rate:.0}/s"),
            Load::Closed {
                callers,
                pace: None,
            } => format!("closed x{callers}"),
            Load::Closed {
                callers,
                pace: Some(r),
            } => format!("closed x{callers} paced {r:.0}/s"),
        }
    }
}

/// Runs one step of `load` for `seconds` measured seconds (after [`WARMUP`]).
///
/// # Errors
/// When a histogram cannot record or the pacing thread fails.
pub async fn run<C: Call>(target: &Arc<C>, load: Load, seconds: f64) -> Result<Measured> {
    match load {
        Load::Open { rate } => open_loop(Arc::clone(target), rate, seconds).await,
        Load::Closed { callers, pace } => {
            closed_loop(Arc::clone(target), callers, pace, seconds).await
        }
    }
}

/// What one step measured (its measured window only, warm-up excluded).
pub struct Measured {
    /// Latency of successful calls, µs.
    pub hist: Histogram<u64>,
    /// Successful calls.
    pub ok: u64,
    /// Shed calls.
    pub shed: u64,
    /// Other failures by code (or `client_backlog`).
    pub errors: BTreeMap<String, u64>,
    /// Successful calls per second over the window.
    pub achieved: f64,
    /// Open loop: how late the pacing thread sent, p99 µs.
    pub send_lag_p99_us: Option<u64>,
    /// Calls completed in the whole step (warm-up too), for CPU per call.
    pub completed_all: u64,
}

impl Measured {
    /// Latency quantile `q` of successful calls in ms (NaN without any).
    pub fn p_ms(&self, q: f64) -> f64 {
        if self.ok == 0 {
            f64::NAN
        } else {
            self.hist.value_at_quantile(q) as f64 / 1000.0
        }
    }

    /// The throughput and latency cells of a results-table row:
    /// `achieved req/s | p50 | p99 | p99.9` (ms), so every table reports
    /// the same quantiles the same way.
    pub fn latency_cells(&self) -> String {
        let [p50, p99, p999] = self.reported_quantiles();
        format!("{:.0} | {p50} | {p99} | {p999}", self.achieved)
    }

    /// The same figures for a progress line: `812 req/s, p50 1.20 p99 3.40
    /// p99.9 5.60 ms`.
    pub fn summary(&self) -> String {
        let [p50, p99, p999] = self.reported_quantiles();
        format!(
            "{:.0} req/s, p50 {p50} p99 {p99} p99.9 {p999} ms",
            self.achieved
        )
    }

    /// p50, p99 and p99.9 as [`ms`] text.
    fn reported_quantiles(&self) -> [String; 3] {
        [0.5, 0.99, 0.999].map(|q| ms(self.p_ms(q)))
    }

    /// The share of calls that got no answer (failed or shed), 0 without
    /// any calls.
    pub fn unanswered_share(&self) -> f64 {
        let unanswered = self.error_count() + self.shed;
        unanswered as f64 / (self.ok + unanswered).max(1) as f64
    }

    /// Failures other than shedding.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// `0`, or the failures by code: `Unavailable 3, client_backlog 2`.
    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            "0".into()
        } else {
            let mut text = String::new();
            for (i, (k, v)) in self.errors.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(text, "{sep}{k} {v}");
            }
            text
        }
    }
}

/// Accumulates the outcomes of calls into a [`Measured`].
pub struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    shed: u64,
    errors: BTreeMap<String, u64>,
    last_done: Option<Instant>,
    completed_all: u64,
}

impl Tally {
    /// An empty tally (latencies 1 µs … 120 s, 3 significant digits).
    ///
    /// # Errors
    /// Never in practice (the histogram bounds are fixed).
    pub fn new() -> Result<Self> {
        Ok(Tally {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            ok: 0,
            shed: 0,
            errors: BTreeMap::new(),
            last_done: None,
            completed_all: 0,
        })
    }

    /// Adds one call that ended at `done` after `latency`; only calls
    /// `in_window` are tallied (all count in `completed_all`).
    ///
    /// # Errors
    /// When the latency is beyond the histogram's range.
    pub fn add(
        &mut self,
        outcome: Outcome,
        latency: Duration,
        in_window: bool,
        done: Instant,
    ) -> Result<()> {
        self.completed_all += 1;
        if !in_window {
            return Ok(());
        }
        self.last_done = Some(self.last_done.map_or(done, |d| d.max(done)));
        match outcome {
            Outcome::Ok => {
                self.ok += 1;
                self.hist.record((latency.as_micros() as u64).max(1))?;
            }
            Outcome::Shed => self.shed += 1,
            Outcome::Failed(code) => *self.errors.entry(code).or_default() += 1,
            Outcome::Backlog => *self.errors.entry("client_backlog".into()).or_default() += 1,
        }
        Ok(())
    }

    /// Adds another tally (of another caller of the same step).
    ///
    /// # Errors
    /// When the histograms cannot be added.
    pub fn merge(&mut self, other: Tally) -> Result<()> {
        self.hist.add(other.hist)?;
        self.ok += other.ok;
        self.shed += other.shed;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.completed_all += other.completed_all;
        Ok(())
    }

    /// The step's result over the window `window_start .. + window`.
    pub fn finish(
        self,
        window_start: Instant,
        window: Duration,
        send_lag_p99_us: Option<u64>,
    ) -> Measured {
        // Calls still answering after the window stretch it: a system that
        // cannot keep up shows an achieved rate below the target.
        let span = self
            .last_done
            .map_or(window, |d| d.saturating_duration_since(window_start))
            .max(window);
        Measured {
            achieved: self.ok as f64 / span.as_secs_f64(),
            hist: self.hist,
            ok: self.ok,
            shed: self.shed,
            errors: self.errors,
            send_lag_p99_us,
            completed_all: self.completed_all,
        }
    }
}

struct Sample {
    outcome: Outcome,
    latency: Duration,
    in_window: bool,
    done: Instant,
}

/// Slot `i` of a schedule at `rate` calls a second from `start`.
fn slot(start: Instant, i: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(i as f64 / rate)
}

/// A precise sleep for a pacing thread: tokio's timer ticks in
/// milliseconds, too coarse for thousands of calls a second. It waits on a
/// channel nobody sends on (clippy's rule against `thread::sleep` targets
/// runtime threads).
struct Sleeper {
    _keep: std::sync::mpsc::Sender<()>,
    wait: std::sync::mpsc::Receiver<()>,
}

impl Sleeper {
    fn new() -> Self {
        let (_keep, wait) = std::sync::mpsc::channel();
        Sleeper { _keep, wait }
    }

    /// Returns at `due` (at once when it has passed).
    fn until(&self, due: Instant) {
        let now = Instant::now();
        if due > now {
            let _ = self.wait.recv_timeout(due - now);
        }
    }
}

/// Open loop at `rate`: call *i* is due at `start + i / rate`, sent then by a
/// dedicated pacing thread (tokio's timer ticks in milliseconds, too coarse
/// for 5,000 req/s), and its latency runs from that due time. Must run on a
/// multi-threaded tokio runtime.
///
/// # Errors
/// When the pacing thread cannot start or panics, or a histogram fails.
pub async fn open_loop<C: Call>(target: Arc<C>, rate: f64, seconds: f64) -> Result<Measured> {
    let total = ((WARMUP.as_secs_f64() + seconds) * rate).round() as u64;
    let start = Instant::now() + Duration::from_millis(20);
    let window_start = start + WARMUP;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let runtime = tokio::runtime::Handle::current();
    let outstanding = Arc::new(AtomicU64::new(0));
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || -> Result<Histogram<u64>> {
            let sleeper = Sleeper::new();
            let mut lag = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
            for i in 0..total {
                let due = slot(start, i, rate);
                sleeper.until(due);
                let in_window = due >= window_start;
                if in_window {
                    lag.record((due.elapsed().as_micros() as u64).max(1))?;
                }
                if outstanding.load(Ordering::Relaxed) >= MAX_OUTSTANDING {
                    let _ = tx.send(Sample {
                        outcome: Outcome::Backlog,
                        latency: Duration::ZERO,
                        in_window,
                        done: Instant::now(),
                    });
                    continue;
                }
                outstanding.fetch_add(1, Ordering::Relaxed);
                let (target, tx, outstanding) =
                    (Arc::clone(&target), tx.clone(), Arc::clone(&outstanding));
                runtime.spawn(async move {
                    let outcome = target.call(i).await;
                    let done = Instant::now();
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                    let _ = tx.send(Sample {
                        outcome,
                        latency: done.saturating_duration_since(due),
                        in_window,
                        done,
                    });
                });
            }
            Ok(lag)
        })?;
    let mut tally = Tally::new()?;
    // Ends when the pacer and every call have dropped their senders.
    while let Some(s) = rx.recv().await {
        tally.add(s.outcome, s.latency, s.in_window, s.done)?;
    }
    let lag = pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacing thread panicked"))??;
    Ok(tally.finish(
        window_start,
        Duration::from_secs_f64(seconds),
        Some(lag.value_at_quantile(0.99)),
    ))
}

/// Closed loop: `callers` tasks each send their next call when the last one
/// answers; with `pace`, the callers together send at most that many calls a
/// second (a paired run can match another's rate this way), each call due at
/// its slot of the schedule and timed from then (as wrk2 does), so a late
/// answer's delay to the calls behind it is counted.
///
/// The slots are released by a pacing thread, as in [`open_loop`]: tokio's
/// timer rounds every sleep up to its next millisecond tick, which would
/// release the calls of a millisecond together and count up to a millisecond
/// of the timer's own lateness in every latency. Must run on a
/// multi-threaded tokio runtime when paced.
///
/// # Errors
/// When a caller task fails or panics, or the pacing thread cannot start.
pub async fn closed_loop<C: Call>(
    target: Arc<C>,
    callers: usize,
    pace: Option<f64>,
    seconds: f64,
) -> Result<Measured> {
    let start = Instant::now() + Duration::from_millis(20);
    let window_start = start + WARMUP;
    let end = window_start + Duration::from_secs_f64(seconds);
    // Paced: one permit per slot, added by the pacer at the slot's time
    // (tokio's semaphore is fair, first come first served).
    let slots = pace.map(|rate| (rate, Arc::new(tokio::sync::Semaphore::new(0))));
    let pacer = match &slots {
        Some((rate, permits)) => {
            let (rate, permits) = (*rate, Arc::clone(permits));
            let total = ((end - start).as_secs_f64() * rate).round() as u64;
            Some(
                std::thread::Builder::new()
                    .name("bench-pacer".into())
                    .spawn(move || {
                        let sleeper = Sleeper::new();
                        for i in 0..total {
                            sleeper.until(slot(start, i, rate));
                            permits.add_permits(1);
                        }
                        // The schedule is over: callers waiting for a slot stop.
                        permits.close();
                    })?,
            )
        }
        None => None,
    };
    // Call numbers shared by the callers, so no two send the same; paced,
    // the n-th call taken is slot n.
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let target = Arc::clone(&target);
        let slots = slots.clone();
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new()?;
            loop {
                if let Some((_, permits)) = &slots {
                    let Ok(permit) = permits.acquire().await else {
                        break;
                    };
                    permit.forget();
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                let due = slots.as_ref().map(|(rate, _)| slot(start, k, *rate));
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let outcome = target.call(k).await;
                let done = Instant::now();
                // Paced: from the call's due time, so a caller held up by a
                // slow answer counts its lateness (no coordinated omission).
                let from = due.unwrap_or(sent);
                tally.add(outcome, done - from, from >= window_start, done)?;
            }
            anyhow::Ok(tally)
        }));
    }
    let mut all = Tally::new()?;
    for t in tasks {
        all.merge(t.await??)?;
    }
    if let Some(pacer) = pacer {
        pacer
            .join()
            .map_err(|_| anyhow::anyhow!("the pacing thread panicked"))?;
    }
    Ok(all.finish(window_start, Duration::from_secs_f64(seconds), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_counts_every_outcome_of_the_window() -> Result<()> {
        let target = Arc::new(call_fn(|k: u64| async move {
            match k % 10 {
                0 => Outcome::Shed,
                1 => Outcome::failed("boom"),
                _ => Outcome::Ok,
            }
        }));
        let m = run(&target, Load::Open { rate: 2000.0 }, 0.5).await?;
        assert_eq!(m.ok + m.shed + m.error_count(), 1000);
        assert_eq!(m.shed, 100);
        assert_eq!(m.errors.get("boom"), Some(&100));
        assert_eq!(m.completed_all, 2000);
        assert!(m.p_ms(0.5) < 50.0, "{}", m.p_ms(0.5));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paced_closed_loop_sends_each_slot_once_at_the_rate() -> Result<()> {
        let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let target = Arc::new(call_fn({
            let seen = Arc::clone(&seen);
            move |k: u64| {
                let fresh = seen.lock().map(|mut s| s.insert(k)).unwrap_or(false);
                async move {
                    if fresh {
                        Outcome::Ok
                    } else {
                        Outcome::failed("duplicate")
                    }
                }
            }
        }));
        let load = Load::Closed {
            callers: 8,
            pace: Some(2000.0),
        };
        let m = run(&target, load, 0.5).await?;
        assert!(m.errors.is_empty(), "{}", m.errors_text());
        // 1000 slots in the window; the last ones may fall just past its end.
        assert!((990..=1000).contains(&m.ok), "{} calls in the window", m.ok);
        assert!(
            (1980..=2000).contains(&m.completed_all),
            "{}",
            m.completed_all
        );

        // Unpaced, the callers share one sequence of call numbers too.
        let load = Load::Closed {
            callers: 8,
            pace: None,
        };
        seen.lock().map(|mut s| s.clear()).ok();
        let m = run(&target, load, 0.2).await?;
        assert!(m.errors.is_empty(), "{}", m.errors_text());
        assert!(m.ok > 0);
        Ok(())
    }
}

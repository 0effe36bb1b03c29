//! The refresh scheduler: runs each declared `[[refresh_job]]` at its current
//! interval (the tuner's, or the declared one), judges the tuner's window
//! every evaluation window, honours a person's run request, applies the
//! job's missed-run policy after downtime, retries a failed run before the
//! next slot ([`wait_after`]), and stops a run at its timeout.
//!
//! Two schedulers never run one job at once: a run holds the job's lease in
//! the store (a lightweight transaction on ScyllaDB, a write transaction on
//! redb) until it ends or its timeout plus a margin passes, so a crashed
//! holder blocks the job for one timeout at most. Inside one process a job
//! with a run in flight is not started again.
//!
//! [`Scheduler::tick`] takes the time as an argument, so tests drive it with
//! any clock; [`Scheduler::run`] calls it every poll interval with a
//! [`Clock`]. Runs themselves take real time (real files, real processes).

pub mod jobs;
mod runner;
#[cfg(test)]
mod tests;
pub mod tuning;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::definitions::{FeatureDefinitions, MissedRun, RefreshJobSpec};
use crate::reader::FeatureReader;
use crate::store::{FullStore, Lease, LeaseOutcome, StoreError, TunerStore};
use crate::tuner::TunedJob;
use crate::tuner::controller::{Decision, human};

pub use crate::runs::{
    KEPT_RUNS, RunOutcome, RunRecord, RunRequest, ScheduleState, Trigger, wait_after,
};

/// Where time comes from for [`Scheduler::run`].
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock (to the microsecond, like every stored time).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        crate::clock::now_micros()
    }
}

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Who this scheduler is, in leases and run records (host and process).
    pub holder: String,
    /// How often it looks for due work.
    pub poll: Duration,
    /// A run's lease lasts its timeout plus this.
    pub lease_margin: Duration,
    /// At shutdown, how long runs in flight may take to finish before they
    /// are stopped.
    pub shutdown_grace: Duration,
}

impl SchedulerConfig {
    /// Defaults with a holder name of this host and process.
    pub fn for_this_process() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .unwrap_or_else(|| "localhost".to_owned());
        SchedulerConfig {
            holder: format!("{host}/{}", std::process::id()),
            poll: Duration::from_secs(5),
            lease_margin: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// What one tick did for a job.
#[derive(Debug, Clone, PartialEq)]
pub enum TickEvent {
    /// A run started.
    Started {
        /// The job.
        job: String,
        /// Why.
        trigger: Trigger,
    },
    /// Missed runs were skipped.
    Skipped {
        /// The job.
        job: String,
        /// How many.
        missed: u32,
        /// The next run.
        next: SystemTime,
    },
    /// Another scheduler holds the job.
    LeaseHeld {
        /// The job.
        job: String,
        /// The holder.
        holder: String,
        /// Until.
        until: SystemTime,
    },
    /// The tuner judged a window.
    Evaluated {
        /// The job.
        job: String,
        /// Its decision.
        decision: Decision,
    },
    /// Something failed (the store); retried next tick.
    Error {
        /// The job.
        job: String,
        /// What.
        message: String,
    },
}

/// Why the scheduler cannot work on a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The lease name of a job's runs.
pub fn run_lease(job: &str) -> String {
    format!("refresh/{job}")
}

fn tuner_lease(job: &str) -> String {
    format!("tuner/{job}")
}

/// The job's interval now: the tuner's (or its pin) once it has state, else
/// the declared one.
///
/// # Errors
/// The store's failure.
pub async fn current_interval<S: TunerStore>(
    store: &S,
    spec: &RefreshJobSpec,
) -> Result<Duration, StoreError> {
    if spec.tuning.is_none() {
        return Ok(spec.interval);
    }
    Ok(store
        .get_tuner_state(&spec.name)
        .await?
        .map_or(spec.interval, |s| s.interval))
}

/// When the job's next run is due (None: at once, it never ran), from its
/// schedule and interval; a pending request makes it due now.
pub fn next_due(
    schedule: &ScheduleState,
    interval: Duration,
    request: Option<&RunRequest>,
) -> Option<SystemTime> {
    if request.is_some_and(|r| schedule.is_pending(r)) {
        return None;
    }
    schedule.anchor.map(|a| a + interval)
}

/// What is due for a job at `now`.
#[derive(Debug, Clone, PartialEq)]
enum Due {
    Nothing,
    Run(Trigger),
    Skip { missed: u32, anchor: SystemTime },
}

fn due(
    spec: &RefreshJobSpec,
    schedule: &ScheduleState,
    interval: Duration,
    request: Option<&RunRequest>,
    now: SystemTime,
) -> Due {
    if let Some(r) = request.filter(|r| schedule.is_pending(r)) {
        return Due::Run(Trigger::Forced { by: r.by.clone() });
    }
    let Some(anchor) = schedule.anchor else {
        return Due::Run(Trigger::First);
    };
    let Ok(since) = now.duration_since(anchor) else {
        return Due::Nothing;
    };
    let interval = interval.max(Duration::from_secs(1));
    let failures = schedule.failures_in_a_row();
    if since < wait_after(interval, failures) {
        return Due::Nothing;
    }
    if since < interval {
        return Due::Run(Trigger::Retry { failed: failures });
    }
    // Slots whose time has come since the anchor: one is the normal run,
    // more mean the scheduler was not running.
    let slots = u32::try_from(since.as_secs() / interval.as_secs().max(1)).unwrap_or(u32::MAX);
    if slots < 2 {
        return Due::Run(Trigger::Scheduled);
    }
    match spec.missed_run {
        MissedRun::RunOnce => Due::Run(Trigger::CatchUp { missed: slots }),
        MissedRun::Skip => Due::Skip {
            missed: slots,
            anchor: anchor + interval * slots,
        },
    }
}

/// Runs the declared refresh jobs (see the module docs).
pub struct Scheduler<S> {
    store: Arc<S>,
    defs: Arc<FeatureDefinitions>,
    config: SchedulerConfig,
    running: Mutex<HashMap<String, JoinHandle<()>>>,
    reader: Option<Weak<FeatureReader<S>>>,
}

impl<S: FullStore> Scheduler<S> {
    /// A scheduler of every `[[refresh_job]]` in `defs`.
    pub fn new(store: Arc<S>, defs: Arc<FeatureDefinitions>, config: SchedulerConfig) -> Self {
        Scheduler {
            store,
            defs,
            config,
            running: Mutex::new(HashMap::new()),
            reader: None,
        }
    }

    /// Tells the scheduler which reader serves this process's predictions:
    /// a loaded run refreshes its current batches before it is recorded.
    #[must_use]
    pub fn serving(mut self, reader: &Arc<FeatureReader<S>>) -> Self {
        self.reader = Some(Arc::downgrade(reader));
        self
    }

    /// Its settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Looks at every job once at `now`: judges a due tuner window, starts a
    /// due run (in the background; see [`Scheduler::wait_runs`]) or skips
    /// missed ones. Store failures are reported as events and retried on the
    /// next tick.
    pub async fn tick(&self, now: SystemTime) -> Vec<TickEvent> {
        let mut events = Vec::new();
        {
            let mut running = self.running.lock().await;
            running.retain(|_, h| !h.is_finished());
        }
        for spec in self.defs.job_specs() {
            if let Err(e) = self.tick_job(spec, now, &mut events).await {
                events.push(TickEvent::Error {
                    job: spec.name.clone(),
                    message: e.to_string(),
                });
            }
        }
        events
    }

    async fn tick_job(
        &self,
        spec: &RefreshJobSpec,
        now: SystemTime,
        events: &mut Vec<TickEvent>,
    ) -> Result<(), ScheduleError> {
        if let Some(tuned) = TunedJob::from_spec(spec) {
            self.maybe_evaluate(&tuned, now, events).await?;
        }
        if self.running.lock().await.contains_key(&spec.name) {
            return Ok(());
        }
        let store = &*self.store;
        let interval = current_interval(store, spec).await?;
        let request = store.get_run_request(&spec.name).await?;
        let schedule = self.schedule_of(spec).await?;
        if due(spec, &schedule, interval, request.as_ref(), now) == Due::Nothing {
            return Ok(());
        }
        let lease = run_lease(&spec.name);
        let until = now + spec.timeout + self.config.lease_margin;
        match store
            .try_lease(&Lease::new(&lease, &self.config.holder, until), now)
            .await?
        {
            LeaseOutcome::Held(l) => {
                events.push(TickEvent::LeaseHeld {
                    job: spec.name.clone(),
                    holder: l.holder,
                    until: l.expires_at,
                });
                return Ok(());
            }
            LeaseOutcome::Acquired => {}
        }
        // Another scheduler may have run the job just before we took the
        // lease: decide again on what the store says now.
        let mut schedule = self.schedule_of(spec).await?;
        let request = store.get_run_request(&spec.name).await?;
        match due(spec, &schedule, interval, request.as_ref(), now) {
            Due::Nothing => {
                store.release_lease(&lease, &self.config.holder).await?;
            }
            Due::Skip { missed, anchor } => {
                let next = anchor + interval;
                schedule.anchor = Some(anchor);
                schedule.push(RunRecord {
                    started_at: now,
                    finished_at: now,
                    trigger: Trigger::Scheduled,
                    outcome: RunOutcome::Skipped,
                    batch_id: None,
                    exit_code: None,
                    output: String::new(),
                    message: format!(
                        "skipped {missed} missed run(s) (missed_run = \"skip\"); next run at the next {} slot",
                        human(interval)
                    ),
                    holder: self.config.holder.clone(),
                });
                let saved = store.put_schedule(&schedule).await;
                store.release_lease(&lease, &self.config.holder).await?;
                saved?;
                events.push(TickEvent::Skipped {
                    job: spec.name.clone(),
                    missed,
                    next,
                });
            }
            Due::Run(trigger) => {
                if let (Trigger::Forced { .. }, Some(r)) = (&trigger, &request) {
                    schedule.handled_request = Some(r.at);
                }
                events.push(TickEvent::Started {
                    job: spec.name.clone(),
                    trigger: trigger.clone(),
                });
                let run = runner::JobRun {
                    store: Arc::clone(&self.store),
                    defs: Arc::clone(&self.defs),
                    spec: spec.clone(),
                    trigger,
                    started_at: now,
                    holder: self.config.holder.clone(),
                    schedule,
                    reader: self.reader.clone(),
                };
                let handle = tokio::spawn(run.run());
                self.running.lock().await.insert(spec.name.clone(), handle);
            }
        }
        Ok(())
    }

    /// The job's schedule; a job never run by a scheduler whose view already
    /// has a batch counts from that batch.
    async fn schedule_of(&self, spec: &RefreshJobSpec) -> Result<ScheduleState, StoreError> {
        if let Some(s) = self.store.get_schedule(&spec.name).await? {
            return Ok(s);
        }
        let mut s = ScheduleState::new(&spec.name);
        s.anchor = self
            .store
            .current_batches()
            .await?
            .remove(&spec.view)
            .map(|c| c.written_at);
        Ok(s)
    }

    async fn maybe_evaluate(
        &self,
        job: &TunedJob,
        now: SystemTime,
        events: &mut Vec<TickEvent>,
    ) -> Result<(), ScheduleError> {
        let store = &*self.store;
        let last = match store.get_tuner_state(&job.job).await? {
            Some(state) => state.history.last().map(Decision::judged),
            None => {
                // A job the tuner has never seen: its first window starts
                // now, so it is judged on predictions made under this
                // scheduler.
                let mut state = tuning::load_state(store, job).await?;
                state.begin(
                    now,
                    format!(
                        "tuning starts at {}; the first window is judged in {}",
                        human(state.interval),
                        human(job.window)
                    ),
                );
                store.put_tuner_state(&state).await?;
                Some(now)
            }
        };
        if last.is_some_and(|t| now < t + job.window) {
            return Ok(());
        }
        let lease = tuner_lease(&job.job);
        let until = now + Duration::from_secs(120);
        if let LeaseOutcome::Held(_) = store
            .try_lease(&Lease::new(&lease, &self.config.holder, until), now)
            .await?
        {
            return Ok(());
        }
        // Judged by another scheduler meanwhile?
        let again = store
            .get_tuner_state(&job.job)
            .await?
            .and_then(|s| s.history.last().map(Decision::judged));
        let result = if again.is_some_and(|t| now < t + job.window) {
            Ok(None)
        } else {
            tuning::evaluate(store, job, now).await.map(Some)
        };
        store.release_lease(&lease, &self.config.holder).await?;
        if let Some(evaluation) = result? {
            events.extend(evaluation.decisions().map(|decision| TickEvent::Evaluated {
                job: job.job.clone(),
                decision: decision.clone(),
            }));
        }
        Ok(())
    }

    /// Waits for every run in flight to end.
    pub async fn wait_runs(&self) {
        let handles: Vec<_> = self.running.lock().await.drain().collect();
        for (job, h) in handles {
            if let Err(e) = h.await {
                tracing::error!(job, error = %e, "a refresh run's task failed");
            }
        }
    }

    /// Whether `job` has a run in flight in this process.
    pub async fn is_running(&self, job: &str) -> bool {
        self.running
            .lock()
            .await
            .get(job)
            .is_some_and(|h| !h.is_finished())
    }

    /// Ticks every poll interval with `clock` until `shutdown`, then gives
    /// runs in flight the shutdown grace and stops the rest (their leases
    /// lapse; their batches are never served).
    /// Every event goes to `on_event` (e.g. [`log_event`]).
    pub async fn run(
        self: Arc<Self>,
        clock: Arc<dyn Clock>,
        shutdown: impl std::future::Future<Output = ()> + Send,
        on_event: impl Fn(&TickEvent) + Send,
    ) {
        tokio::pin!(shutdown);
        loop {
            for event in self.tick(clock.now()).await {
                on_event(&event);
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.config.poll) => {}
            }
        }
        let grace = self.config.shutdown_grace;
        if tokio::time::timeout(grace, self.wait_runs()).await.is_err() {
            let mut running = self.running.lock().await;
            for (job, h) in running.drain() {
                tracing::warn!(job, "refresh run stopped at shutdown after {grace:?}");
                h.abort();
            }
        }
    }
}

/// Logs one event at a level a person would want.
pub fn log_event(event: &TickEvent) {
    match event {
        TickEvent::Started { job, trigger } => {
            tracing::info!(job, "refresh run started: {}", trigger.describe());
        }
        TickEvent::Skipped { job, missed, .. } => {
            tracing::warn!(job, missed, "missed refresh runs skipped");
        }
        TickEvent::LeaseHeld { job, holder, .. } => {
            tracing::debug!(job, holder, "refresh job held by another scheduler");
        }
        TickEvent::Evaluated { job, decision } => {
            tracing::info!(job, "refresh tuner: {}", decision.reason);
        }
        TickEvent::Error { job, message } => {
            tracing::warn!(job, "scheduler: {message}");
        }
    }
}

//! Scoring runs inside the gateway: started by the admin API (one at a time
//! per job, on a task of their own) and, with `[scheduler]` enabled, when a
//! job is due (its served batch older than its interval). A store lease per
//! job keeps two replicas (or a replica and a `mlgw-score` process that
//! takes the same lease) from running one job at once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use feature_store::store::{BatchStatus, FullStore, Lease, LeaseOutcome, score_target};

use super::{RunOptions, Scorer, ScoringError, job_lease};

/// The lease a start takes until its run takes over.
const START_LEASE: Duration = Duration::from_secs(60);

/// How long the scheduler waits after a failed (or abandoned) run of a job
/// before it starts another, at most the job's interval.
const RETRY_PAUSE: Duration = Duration::from_secs(10 * 60);

/// Why a run cannot start now.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// No such job.
    #[error("no [[scoring_job]] is named {job:?}; declared: {known}")]
    UnknownJob {
        /// The name asked for.
        job: String,
        /// The declared ones.
        known: String,
    },
    /// A run of the job is going on.
    #[error("a run of scoring job {job:?} is going on ({holder}); wait for it to end")]
    Running {
        /// The job.
        job: String,
        /// Who runs it.
        holder: String,
    },
    /// The lease could not be taken.
    #[error("feature store: {0}")]
    Store(#[from] feature_store::store::StoreError),
}

/// Runs scoring jobs on tasks of this process.
pub struct ScoringHost<S> {
    scorer: Arc<Scorer<S>>,
    running: Mutex<HashSet<String>>,
}

impl<S: FullStore> ScoringHost<S> {
    /// A host for `scorer`'s runs.
    pub fn new(scorer: Scorer<S>) -> Self {
        ScoringHost {
            scorer: Arc::new(scorer),
            running: Mutex::new(HashSet::new()),
        }
    }

    /// The scorer (for listing runs).
    pub fn scorer(&self) -> &Scorer<S> {
        &self.scorer
    }

    /// Starts a run of `job` on its own task and returns at once; the run's
    /// outcome goes to the log and to the job's batch records.
    ///
    /// # Errors
    /// [`StartError`]: an unknown job, or a run of it going on here or
    /// elsewhere.
    pub async fn start(self: &Arc<Self>, job: &str) -> Result<(), StartError> {
        if let Err(ScoringError::UnknownJob { job, known }) = self.scorer.spec(job) {
            return Err(StartError::UnknownJob { job, known });
        }
        {
            let Ok(mut running) = self.running.lock() else {
                return Err(StartError::Running {
                    job: job.to_owned(),
                    holder: self.scorer.holder().to_owned(),
                });
            };
            if !running.insert(job.to_owned()) {
                return Err(StartError::Running {
                    job: job.to_owned(),
                    holder: self.scorer.holder().to_owned(),
                });
            }
        }
        // Taken here to answer "running" at once; the run renews and
        // releases it (same holder).
        let now = feature_store::store::now_micros();
        let lease = Lease::new(&job_lease(job), self.scorer.holder(), now + START_LEASE);
        match self.scorer.store().try_lease(&lease, now).await {
            Ok(LeaseOutcome::Acquired) => {}
            Ok(LeaseOutcome::Held(held)) => {
                self.done(job);
                return Err(StartError::Running {
                    job: job.to_owned(),
                    holder: held.holder,
                });
            }
            Err(e) => {
                self.done(job);
                return Err(e.into());
            }
        }
        let host = Arc::clone(self);
        let job = job.to_owned();
        tokio::spawn(async move {
            let result = host.scorer.run(&job, &RunOptions::default(), &|_| {}).await;
            match result {
                Ok(r) => tracing::info!(
                    job = %job, batch = %r.batch_id, rows = r.scored, rejected = r.rejected,
                    outcome = ?r.outcome, "scoring run ended ({:.0} rows/s)", r.rows_per_second()
                ),
                Err(e) => tracing::warn!(job = %job, "scoring run failed: {e}"),
            }
            host.done(&job);
        });
        Ok(())
    }

    fn done(&self, job: &str) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(job);
        }
    }

    /// Starts every job whose served batch is older than its interval (or
    /// that has none), every `poll`, until `stop` completes.
    pub async fn schedule(
        self: Arc<Self>,
        poll: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            let jobs: Vec<(String, String, Duration)> = self
                .scorer
                .definitions()
                .scoring_jobs()
                .iter()
                .map(|j| (j.name.clone(), j.model.clone(), j.interval))
                .collect();
            for (job, model, interval) in jobs {
                if self.is_due(&job, &model, interval).await {
                    match self.start(&job).await {
                        Ok(()) => tracing::info!(job = %job, "scoring job due: started"),
                        Err(StartError::Running { .. }) => {}
                        Err(e) => {
                            tracing::warn!(job = %job, "scoring job due but not started: {e}")
                        }
                    }
                }
            }
        }
    }

    /// Whether `job` is due: no done batch started within its interval, and
    /// no attempt (done, failed, or still processing here or elsewhere)
    /// started within the retry pause, so a failing job is retried, not
    /// hammered.
    async fn is_due(&self, job: &str, model: &str, interval: Duration) -> bool {
        let Ok(batches) = self
            .scorer
            .store()
            .list_batches(&score_target(model), 32)
            .await
        else {
            return false;
        };
        let whole = || {
            batches
                .iter()
                .filter(|b| b.job == job && !b.batch_id.contains('/'))
        };
        let last_done = whole()
            .find(|b| b.status == BatchStatus::Done)
            .and_then(|b| b.started_at);
        let last_attempt = whole().find_map(|b| b.started_at);
        let now = SystemTime::now();
        last_done.is_none_or(|t| t + interval <= now)
            && last_attempt.is_none_or(|t| t + interval.min(RETRY_PAUSE) <= now)
    }
}

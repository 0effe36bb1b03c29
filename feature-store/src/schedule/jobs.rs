//! What data engineers see of and do to the declared refresh jobs, shared by
//! the CLI and the gateway's admin API: each job's interval, last good
//! interval, last window's metric, last batch, next run and pin; its
//! history; pin, unpin and run-now requests.

use std::time::{Duration, SystemTime};

use super::{RunRecord, RunRequest, ScheduleState, current_interval, next_due};
use crate::definitions::{FeatureDefinitions, RefreshJobSpec};
use crate::store::{BatchRecord, FeatureStore, StoreError};
use crate::tuner::controller::{Decision, JobState, Pin};
use crate::tuner::{TunedJob, TunerError};

/// Why a job operation was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobsError {
    /// No `[[refresh_job]]` has this name.
    #[error("no refresh job {job:?} is declared in the definitions; declared: {known}")]
    UnknownJob {
        /// The name asked for.
        job: String,
        /// The declared jobs.
        known: String,
    },
    /// The job has no `[refresh_job.tuner]`, so there is nothing to pin.
    #[error(
        "refresh job {job:?} runs at a fixed interval (no [refresh_job.tuner]); change `interval` in the definitions instead"
    )]
    NotTuned {
        /// The job.
        job: String,
    },
    /// A pin outside the job's bounds.
    #[error("interval {asked} is outside job {job:?}'s bounds [{min}, {max}]")]
    OutOfBounds {
        /// The job.
        job: String,
        /// The interval asked for.
        asked: String,
        /// Its min_interval.
        min: String,
        /// Its max_interval.
        max: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<TunerError> for JobsError {
    fn from(e: TunerError) -> Self {
        match e {
            TunerError::UnknownJob { job, known } => JobsError::UnknownJob { job, known },
            TunerError::Store(s) => JobsError::Store(s),
        }
    }
}

/// One job as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOverview {
    /// The job.
    pub job: String,
    /// The view it loads.
    pub view: String,
    /// The interval in force.
    pub interval: Duration,
    /// The longest interval proven good (tuned jobs).
    pub last_good: Option<Duration>,
    /// The tuner's metric name and threshold (tuned jobs).
    pub metric: Option<(&'static str, f64)>,
    /// The last judged window: its decision (with metric and samples).
    pub last_window: Option<Decision>,
    /// A person's pin.
    pub pin: Option<Pin>,
    /// The view's newest batch.
    pub last_batch: Option<BatchRecord>,
    /// The scheduler's last run.
    pub last_run: Option<RunRecord>,
    /// When the next run is due (None: at the scheduler's next poll).
    pub next_run: Option<SystemTime>,
    /// A run request the scheduler has not picked up yet.
    pub pending_request: Option<RunRequest>,
}

/// One job with its whole history.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDetail {
    /// As listed.
    pub overview: JobOverview,
    /// The tuner's decisions, oldest first.
    pub decisions: Vec<Decision>,
    /// The scheduler's runs, oldest first.
    pub runs: Vec<RunRecord>,
}

/// The declared job `job`.
///
/// # Errors
/// [`JobsError::UnknownJob`].
pub fn spec<'a>(defs: &'a FeatureDefinitions, job: &str) -> Result<&'a RefreshJobSpec, JobsError> {
    defs.job_spec(job).ok_or_else(|| JobsError::UnknownJob {
        job: job.to_owned(),
        known: known(defs),
    })
}

fn known(defs: &FeatureDefinitions) -> String {
    let names: Vec<String> = defs
        .job_specs()
        .iter()
        .map(|j| format!("{:?}", j.name))
        .collect();
    if names.is_empty() {
        "none (add a [[refresh_job]])".to_owned()
    } else {
        names.join(", ")
    }
}

/// Every declared job, in file order.
///
/// # Errors
/// The store's failure.
pub async fn list<S: FeatureStore>(
    store: &S,
    defs: &FeatureDefinitions,
) -> Result<Vec<JobOverview>, JobsError> {
    let mut out = Vec::with_capacity(defs.job_specs().len());
    for spec in defs.job_specs() {
        out.push(detail_of(store, spec).await?.overview);
    }
    Ok(out)
}

/// One job with its decisions and runs.
///
/// # Errors
/// [`JobsError::UnknownJob`] or the store's failure.
pub async fn detail<S: FeatureStore>(
    store: &S,
    defs: &FeatureDefinitions,
    job: &str,
) -> Result<JobDetail, JobsError> {
    detail_of(store, spec(defs, job)?).await
}

async fn detail_of<S: FeatureStore>(
    store: &S,
    spec: &RefreshJobSpec,
) -> Result<JobDetail, JobsError> {
    let state: Option<JobState> = if spec.tuning.is_some() {
        store.get_tuner_state(&spec.name).await?
    } else {
        None
    };
    let interval = current_interval(store, spec).await?;
    let schedule = store
        .get_schedule(&spec.name)
        .await?
        .unwrap_or_else(|| ScheduleState::new(&spec.name));
    let request = store.get_run_request(&spec.name).await?;
    let mut schedule_for_due = schedule.clone();
    if schedule_for_due.anchor.is_none() {
        schedule_for_due.anchor = store
            .current_batches()
            .await?
            .remove(&spec.view)
            .map(|c| c.written_at);
    }
    let next_run = next_due(&schedule_for_due, interval, request.as_ref());
    let pending_request = request.filter(|r| schedule.is_pending(r));
    let last_batch = store.list_batches(&spec.view, 1).await?.into_iter().next();
    let decisions = state.as_ref().map(|s| s.history.clone()).unwrap_or_default();
    let last_window = decisions.iter().rev().find(|d| d.samples > 0).cloned();
    Ok(JobDetail {
        overview: JobOverview {
            job: spec.name.clone(),
            view: spec.view.clone(),
            interval,
            last_good: state.as_ref().map(|s| s.last_good),
            metric: spec
                .tuning
                .as_ref()
                .map(|t| (t.policy.metric.name(), t.policy.threshold)),
            last_window,
            pin: state.as_ref().and_then(|s| s.pin.clone()),
            last_batch,
            last_run: schedule.runs.last().cloned(),
            next_run,
            pending_request,
        },
        decisions,
        runs: schedule.runs,
    })
}

fn tuned(spec: &RefreshJobSpec) -> Result<TunedJob, JobsError> {
    TunedJob::from_spec(spec).ok_or_else(|| JobsError::NotTuned {
        job: spec.name.clone(),
    })
}

/// Pins `job` at `interval` (within its bounds) for `by`, with a reason.
///
/// # Errors
/// [`JobsError`]: unknown, untuned, out of bounds, or the store.
pub async fn pin<S: FeatureStore>(
    store: &S,
    defs: &FeatureDefinitions,
    job: &str,
    interval: Duration,
    by: &str,
    reason: Option<String>,
) -> Result<JobState, JobsError> {
    let job = tuned(spec(defs, job)?)?;
    let (min, max) = (job.policy.min_interval, job.policy.max_interval);
    if !(min..=max).contains(&interval) {
        use crate::tuner::controller::human;
        return Err(JobsError::OutOfBounds {
            job: job.job.clone(),
            asked: human(interval),
            min: human(min),
            max: human(max),
        });
    }
    let pin = Pin {
        interval,
        by: by.to_owned(),
        at: crate::store::now_micros(),
        reason,
    };
    Ok(crate::tuner::set_pin(store, &job, Some(pin)).await?)
}

/// Unpins `job`: the tuner decides again from the pinned interval.
///
/// # Errors
/// [`JobsError`]: unknown, untuned, or the store.
pub async fn unpin<S: FeatureStore>(
    store: &S,
    defs: &FeatureDefinitions,
    job: &str,
) -> Result<JobState, JobsError> {
    let job = tuned(spec(defs, job)?)?;
    Ok(crate::tuner::set_pin(store, &job, None).await?)
}

/// Asks the scheduler to run `job` at its next poll (forced: identical input
/// is loaded again).
///
/// # Errors
/// [`JobsError::UnknownJob`] or the store's failure.
pub async fn request_run<S: FeatureStore>(
    store: &S,
    defs: &FeatureDefinitions,
    job: &str,
    by: &str,
    reason: Option<String>,
) -> Result<RunRequest, JobsError> {
    let spec = spec(defs, job)?;
    let request = RunRequest {
        job: spec.name.clone(),
        by: by.to_owned(),
        at: crate::store::now_micros(),
        reason,
    };
    store.put_run_request(&request).await?;
    Ok(request)
}

//! The refresh auto-tuner: measure how the model's metric depends on the age
//! of a static view's features, and run the view's refresh job as rarely as
//! the metric allows.
//!
//! [`metric`] computes AUC / accuracy / log-loss / MAE from the prediction
//! log joined with feedback, overall and by feature age; [`controller`]
//! turns one window's metric into a decision on the job's interval (double,
//! revert, shorten, cool down, hold, pin), each with its reason; [`sim`] is a
//! deterministic synthetic world to run the controller against for weeks;
//! [`plot`] draws interval and metric over time as SVG (the simulation's
//! report and `mlgw-features tuner report` of a real job).

pub mod controller;
pub mod metric;
pub mod plot;
pub mod sim;

use std::time::{Duration, SystemTime};

use controller::{Decision, JobState, Pin, Policy, Window};
use metric::Scoring;

use crate::definitions::FeatureDefinitions;
use crate::store::{FeatureStore, StoreError};

/// One refresh job under the tuner.
#[derive(Debug, Clone, PartialEq)]
pub struct TunedJob {
    /// The refresh job.
    pub job: String,
    /// The static view it loads (whose feature age is measured).
    pub view: String,
    /// Which predictions count and how they are scored.
    pub scoring: Scoring,
    /// The controller's policy.
    pub policy: Policy,
    /// The evaluation window.
    pub window: Duration,
    /// The job's interval before the tuner first saw it.
    pub current_interval: Duration,
}

/// Why the tuner cannot evaluate a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunerError {
    /// The job loads no static view of the definitions.
    #[error("refresh job {job:?} loads no static view of the definitions; known jobs: {known}")]
    UnknownJob {
        /// The job.
        job: String,
        /// The jobs the definitions name.
        known: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TunedJob {
    /// The tuned job a `[[refresh_job]]` declares (None: it has no
    /// `[refresh_job.tuner]`).
    pub fn from_spec(spec: &crate::definitions::RefreshJobSpec) -> Option<Self> {
        let t = spec.tuning.as_ref()?;
        Some(TunedJob {
            job: spec.name.clone(),
            view: spec.view.clone(),
            scoring: t.scoring.clone(),
            policy: t.policy.clone(),
            window: t.window,
            current_interval: spec.interval,
        })
    }

    /// The view `job` refreshes, from the definitions.
    ///
    /// # Errors
    /// [`TunerError::UnknownJob`].
    pub fn view_of(defs: &FeatureDefinitions, job: &str) -> Result<String, TunerError> {
        defs.static_views()
            .find(|v| v.refresh_job().is_some_and(|j| j.as_str() == job))
            .map(|v| v.name.clone())
            .ok_or_else(|| TunerError::UnknownJob {
                job: job.to_owned(),
                known: defs
                    .static_views()
                    .filter_map(|v| v.refresh_job().map(|j| j.as_str().to_owned()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// The job's saved state, or a new one that adopts its current interval as
/// already in force (so the first window is judged).
///
/// # Errors
/// The store's failure.
pub async fn load_state<S: FeatureStore>(
    store: &S,
    job: &TunedJob,
) -> Result<JobState, TunerError> {
    Ok(match store.get_tuner_state(&job.job).await? {
        Some(state) => state,
        None => {
            let mut state = JobState::new(
                &job.job,
                job.current_interval,
                &job.policy,
                SystemTime::UNIX_EPOCH,
            );
            state.settled_at = SystemTime::UNIX_EPOCH;
            state
        }
    })
}

/// Judges the window ending at `end`: reads the prediction log joined with
/// feedback, computes the job's metric for its model, lets the controller
/// decide and saves the state. Returns the decision.
///
/// # Errors
/// The store's failure.
pub async fn evaluate<S: FeatureStore>(
    store: &S,
    job: &TunedJob,
    end: SystemTime,
) -> Result<Decision, TunerError> {
    let mut state = load_state(store, job).await?;
    let start = end
        .checked_sub(job.window)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let log = store.read_log(start, end, usize::MAX).await?;
    let samples: Vec<_> = log
        .iter()
        .filter_map(|e| job.scoring.sample(e, &job.view))
        .collect();
    let decision = state.observe(
        &job.policy,
        Window {
            start,
            end,
            metric: job.policy.metric.compute(&samples),
            samples: samples.len(),
        },
    );
    store.put_tuner_state(&state).await?;
    Ok(decision)
}

/// Pins (or with None unpins, on behalf of `by`) a job's interval and saves
/// the state.
///
/// # Errors
/// The store's failure.
pub async fn set_pin<S: FeatureStore>(
    store: &S,
    job: &TunedJob,
    pin: Option<Pin>,
    by: &str,
) -> Result<JobState, TunerError> {
    let mut state = load_state(store, job).await?;
    state.set_pin(pin, by, crate::store::now_micros());
    store.put_tuner_state(&state).await?;
    Ok(state)
}

#[cfg(test)]
mod tests;

//! The tuner's steps that read and write the store: load a job's state,
//! judge a window from the prediction log, pin or unpin its interval. The
//! scheduler calls them every evaluation window; the CLI and the admin API
//! for pins and dry runs.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::store::{LogStore, LogWindow, StoreError, TunerStore};
use crate::tuner::TunedJob;
use crate::tuner::controller::{Decision, JobState, Pin, Window};

/// The job's saved state, or a new one that adopts its current interval as
/// already in force (so the first window is judged).
///
/// # Errors
/// The store's failure.
pub async fn load_state<S: TunerStore>(store: &S, job: &TunedJob) -> Result<JobState, StoreError> {
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

/// Judges the window of predictions whose labels matured by `now`: the
/// window ending the job's label delay before `now`. Reads the prediction
/// log joined with feedback, computes the samples of the job's model (each
/// with its feature age), lets the controller decide and saves the state.
/// Returns the decision.
///
/// # Errors
/// The store's failure.
pub async fn evaluate<S: TunerStore + LogStore>(
    store: &S,
    job: &TunedJob,
    now: SystemTime,
) -> Result<Decision, StoreError> {
    let mut state = load_state(store, job).await?;
    let end = now
        .checked_sub(job.policy.label_delay)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let start = end
        .checked_sub(job.window)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let log = store
        .read_log(LogWindow {
            from: start,
            to: end,
            limit: usize::MAX,
        })
        .await?;
    let mut versions: BTreeMap<&str, usize> = BTreeMap::new();
    let samples: Vec<_> = log
        .iter()
        .filter_map(|e| {
            let s = job.scoring.sample(e, &job.view)?;
            *versions
                .entry(e.prediction.model_version.as_str())
                .or_default() += 1;
            Some(s)
        })
        .collect();
    let version = versions
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(v, _)| *v)
        .filter(|v| !v.is_empty());
    let decision = state.observe(
        &job.policy,
        Window {
            start,
            end,
            judged_at: now,
            samples: &samples,
            model_version: version,
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
pub async fn set_pin<S: TunerStore>(
    store: &S,
    job: &TunedJob,
    pin: Option<Pin>,
    by: &str,
) -> Result<JobState, StoreError> {
    let mut state = load_state(store, job).await?;
    state.set_pin(pin, by, crate::clock::now_micros());
    store.put_tuner_state(&state).await?;
    Ok(state)
}

//! The tuner's steps that read and write the store: load a job's state,
//! judge a window from the prediction log, pin or unpin its interval. The
//! scheduler calls them every evaluation window; the CLI and the admin API
//! for pins and dry runs.

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

/// Judges the window ending at `end`: reads the prediction log joined with
/// feedback, computes the job's metric for its model, lets the controller
/// decide and saves the state. Returns the decision.
///
/// # Errors
/// The store's failure.
pub async fn evaluate<S: TunerStore + LogStore>(
    store: &S,
    job: &TunedJob,
    end: SystemTime,
) -> Result<Decision, StoreError> {
    let mut state = load_state(store, job).await?;
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

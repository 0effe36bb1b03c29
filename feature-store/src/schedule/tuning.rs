//! The tuner's steps that read and write the store: load a job's state,
//! judge a window from the prediction log (and look early at a later one), pin or unpin its interval. The
//! scheduler calls them every evaluation window; the CLI and the admin API
//! for pins and dry runs.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::store::{LogStore, LogWindow, StoreError, TunerStore};
use crate::tuner::TunedJob;
use crate::tuner::controller::{Decision, JobState, Pin, Window, early_look_lag};
use crate::tuner::metric::Sample;

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

/// What one evaluation decided: on the window whose labels matured, and,
/// when it changed the interval, on the early look at a later window.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The decision on the matured window.
    pub matured: Decision,
    /// The early look's decision, when it acted.
    pub early: Option<Decision>,
}

impl Evaluation {
    /// Its decisions, the matured window's first.
    pub fn decisions(&self) -> impl Iterator<Item = &Decision> {
        std::iter::once(&self.matured).chain(&self.early)
    }
}

/// Judges the window of predictions whose labels matured by `now` (the
/// window ending the job's label delay before `now`), then looks early at
/// the window ending [`early_look_lag`] before `now` on the labels it has
/// so far. Reads the prediction log joined with feedback, computes the
/// samples of the job's model (each with its feature age), lets the
/// controller decide and saves the state.
///
/// # Errors
/// The store's failure.
pub async fn evaluate<S: TunerStore + LogStore>(
    store: &S,
    job: &TunedJob,
    now: SystemTime,
) -> Result<Evaluation, StoreError> {
    let mut state = load_state(store, job).await?;
    let end = now
        .checked_sub(job.policy.label_delay)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let matured = window_ending(store, job, end).await?;
    let matured = state.observe(&job.policy, matured.window(now));
    let mut early = None;
    if let Some(lag) = early_look_lag(&job.policy, job.window)
        && let Some(end) = now.checked_sub(lag)
    {
        let window = window_ending(store, job, end).await?;
        early = state.look_early(&job.policy, window.window(now));
    }
    store.put_tuner_state(&state).await?;
    Ok(Evaluation { matured, early })
}

/// A window of the job's labelled samples read from the log.
struct Logged {
    start: SystemTime,
    end: SystemTime,
    samples: Vec<Sample>,
    /// The model version that made most of them.
    version: Option<String>,
}

impl Logged {
    /// The window as the controller judges it at `now`.
    fn window(&self, now: SystemTime) -> Window<'_> {
        Window {
            start: self.start,
            end: self.end,
            judged_at: now,
            samples: &self.samples,
            model_version: self.version.as_deref(),
        }
    }
}

/// The job's labelled samples of the window ending at `end`.
async fn window_ending<S: LogStore>(
    store: &S,
    job: &TunedJob,
    end: SystemTime,
) -> Result<Logged, StoreError> {
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
        .map(|(v, _)| (*v).to_owned())
        .filter(|v| !v.is_empty());
    Ok(Logged {
        start,
        end,
        samples,
        version,
    })
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

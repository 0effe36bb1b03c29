//! What data engineers see of and do to the declared refresh jobs, shared by
//! the CLI and the gateway's admin API: each job's interval, last good
//! interval, last window's metric, last batch, next run and pin; its
//! history; pin, unpin and run-now requests.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::{RunRecord, RunRequest, ScheduleState, current_interval, next_due};
/// How job views spell times (UTC, whole seconds); from [`crate::clock`].
pub use crate::clock::utc;
use crate::definitions::{FeatureDefinitions, RefreshJobSpec};
use crate::store::{BatchRecord, BatchStore, CoordinationStore, StoreError, TunerStore};
use crate::tuner::TunedJob;
use crate::tuner::controller::{Decision, JobState, Pin};

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
    /// Nothing to plot yet.
    #[error(
        "refresh job {job:?} has no tuner decisions yet; a running scheduler records one every evaluation window"
    )]
    NoHistory {
        /// The job.
        job: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// Judged windows in a row without enough labels (tuned jobs): labels
    /// may have stopped arriving.
    pub windows_without_labels: Option<u32>,
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
    /// The view's newest refresh batches (at most [`BATCHES_LISTED`]),
    /// newest first.
    pub batches: Vec<BatchRecord>,
    /// The batch the view serves now, if any.
    pub current_batch: Option<String>,
}

/// Refresh batches a job's detail lists at most.
pub const BATCHES_LISTED: usize = 50;

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
pub async fn list<S: TunerStore + BatchStore + CoordinationStore>(
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
pub async fn detail<S: TunerStore + BatchStore + CoordinationStore>(
    store: &S,
    defs: &FeatureDefinitions,
    job: &str,
) -> Result<JobDetail, JobsError> {
    detail_of(store, spec(defs, job)?).await
}

async fn detail_of<S: TunerStore + BatchStore + CoordinationStore>(
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
    let current = store.current_batches().await?.remove(&spec.view);
    let mut schedule_for_due = schedule.clone();
    if schedule_for_due.anchor.is_none() {
        schedule_for_due.anchor = current.as_ref().map(|c| c.written_at);
    }
    let next_run = next_due(&schedule_for_due, interval, request.as_ref());
    let pending_request = request.filter(|r| schedule.is_pending(r));
    let batches = store.list_batches(&spec.view, BATCHES_LISTED).await?;
    let last_batch = batches.first().cloned();
    let decisions = state
        .as_ref()
        .map(|s| s.history.clone())
        .unwrap_or_default();
    let last_window = decisions.iter().rev().find(|d| d.samples > 0).cloned();
    Ok(JobDetail {
        overview: JobOverview {
            job: spec.name.clone(),
            view: spec.view.clone(),
            interval,
            last_good: state.as_ref().map(|s| s.last_good),
            windows_without_labels: state.as_ref().map(|s| s.windows_without_labels),
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
        batches,
        current_batch: current.map(|c| c.batch_id),
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
pub async fn pin<S: TunerStore>(
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
        at: crate::clock::now_micros(),
        reason,
    };
    Ok(super::tuning::set_pin(store, &job, Some(pin), by).await?)
}

/// Unpins `job` for `by`: the tuner decides again from the pinned interval.
///
/// # Errors
/// [`JobsError`]: unknown, untuned, or the store.
pub async fn unpin<S: TunerStore>(
    store: &S,
    defs: &FeatureDefinitions,
    job: &str,
    by: &str,
) -> Result<JobState, JobsError> {
    let job = tuned(spec(defs, job)?)?;
    Ok(super::tuning::set_pin(store, &job, None, by).await?)
}

/// Asks the scheduler to run `job` at its next poll (forced: identical input
/// is loaded again).
///
/// # Errors
/// [`JobsError::UnknownJob`] or the store's failure.
pub async fn request_run<S: CoordinationStore>(
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
        at: crate::clock::now_micros(),
        reason,
    };
    store.put_run_request(&request).await?;
    Ok(request)
}

/// The SVG plot of a job's interval and metric over its stored decisions
/// (see [`crate::tuner::plot`]).
///
/// # Errors
/// [`JobsError::NotTuned`] or [`JobsError::NoHistory`].
pub fn report_svg(spec: &RefreshJobSpec, detail: &JobDetail) -> Result<String, JobsError> {
    use crate::tuner::metric::MetricKind;
    use crate::tuner::plot::{Plot, PlotPoint, metric_range, svg, ticks};
    let tuning = spec.tuning.as_ref().ok_or_else(|| JobsError::NotTuned {
        job: spec.name.clone(),
    })?;
    let (Some(first), Some(last)) = (detail.decisions.first(), detail.decisions.last()) else {
        return Err(JobsError::NoHistory {
            job: spec.name.clone(),
        });
    };
    let start = first.at;
    let since = |t: SystemTime| t.duration_since(start).unwrap_or_default();
    let points: Vec<PlotPoint> = detail
        .decisions
        .iter()
        .map(|d| PlotPoint {
            at: since(d.at),
            interval: d.to,
            metric: d.metric,
        })
        .collect();
    let span = since(last.at).max(tuning.window);
    let step = [3600u64, 6 * 3600, 86_400, 7 * 86_400]
        .into_iter()
        .map(Duration::from_secs)
        .find(|s| span / 8 <= *s)
        .unwrap_or(Duration::from_secs(30 * 86_400));
    let policy = &tuning.policy;
    let unit = matches!(policy.metric, MetricKind::Auc | MetricKind::Accuracy);
    Ok(svg(&Plot {
        metric_name: policy.metric.name(),
        threshold: policy.threshold,
        interval_range: (policy.min_interval, policy.max_interval),
        metric_range: metric_range(&points, policy.threshold, unit),
        span,
        points: &points,
        x_ticks: ticks(span, step, |t| {
            let text = utc(start + t);
            // Date for day steps, time of day otherwise.
            let part = if step >= Duration::from_secs(86_400) {
                text.get(..10)
            } else {
                text.get(11..16)
            };
            part.unwrap_or(&text).to_owned()
        }),
        marker: None,
        subtitle: format!(
            "job {} (view {}), {} to {}, {} decisions",
            spec.name,
            spec.view,
            utc(start),
            utc(last.at),
            detail.decisions.len()
        ),
    }))
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

/// The JSON form of a decision (CLI `--json` and the admin API).
pub fn decision_json(d: &Decision) -> Value {
    json!({
        "at": utc(d.at),
        "action": d.action,
        "from_s": secs(d.from),
        "to_s": secs(d.to),
        "metric": d.metric,
        "samples": d.samples,
        "reason": d.reason,
        "basis": d.basis,
        "predicted": d.predicted,
        "stale": d.stale,
        "judged_at": utc(d.judged()),
    })
}

/// The JSON form of a run.
pub fn run_json(r: &RunRecord) -> Value {
    json!({
        "started_at": utc(r.started_at),
        "finished_at": utc(r.finished_at),
        "took_s": r.finished_at.duration_since(r.started_at).unwrap_or_default().as_secs_f64(),
        "trigger": r.trigger,
        "outcome": r.outcome.as_str(),
        "batch_id": r.batch_id,
        "exit_code": r.exit_code,
        "output": r.output,
        "message": r.message,
        "holder": r.holder,
    })
}

/// The JSON form of a pin.
pub fn pin_json(p: &Pin) -> Value {
    json!({"interval_s": secs(p.interval), "by": p.by, "at": utc(p.at), "reason": p.reason})
}

/// The JSON form of a listed job.
pub fn overview_json(o: &JobOverview) -> Value {
    json!({
        "job": o.job,
        "view": o.view,
        "interval_s": secs(o.interval),
        "last_good_s": o.last_good.map(secs),
        "metric": o.metric.map(|(name, threshold)| json!({"name": name, "threshold": threshold})),
        "last_window": o.last_window.as_ref().map(decision_json),
        "pin": o.pin.as_ref().map(pin_json),
        "last_batch": o.last_batch.as_ref().map(batch_json),
        "last_run": o.last_run.as_ref().map(run_json),
        "next_run": o.next_run.map(utc),
        "pending_request": o.pending_request.as_ref().map(|r| json!({"by": r.by, "at": utc(r.at), "reason": r.reason})),
    })
}

/// A refresh batch as JSON: identity, status, row counts, timing, source.
pub fn batch_json(b: &BatchRecord) -> Value {
    json!({
        "batch_id": b.batch_id,
        "status": b.status.as_str(),
        "ingested_at": utc(b.ingested_at),
        "started_at": b.started_at.map(utc),
        "finished_at": b.finished_at.map(utc),
        "rows_written": b.rows_written,
        "rows_rejected": b.rows_rejected,
        "source": b.source,
        "fingerprint": b.fingerprint,
        "script_version": b.script_version,
        "error": b.error,
    })
}

/// The JSON form of a job with its history (the last `limit` decisions and
/// runs) and its view's newest batches (`current` marks the one served).
pub fn detail_json(d: &JobDetail, limit: usize) -> Value {
    let mut v = overview_json(&d.overview);
    let tail = |n: usize| n.saturating_sub(limit);
    v["decisions"] = d.decisions[tail(d.decisions.len())..]
        .iter()
        .map(decision_json)
        .collect();
    v["runs"] = d.runs[tail(d.runs.len())..].iter().map(run_json).collect();
    v["batches"] = d
        .batches
        .iter()
        .map(|b| {
            let mut j = batch_json(b);
            j["current"] = json!(d.current_batch.as_deref() == Some(b.batch_id.as_str()));
            j
        })
        .collect();
    v
}

//! `[[refresh_job]]`: how a static view's refresh job is run and tuned,
//! declared once next to the view — its source (a file for the built-in
//! loader, a command that writes that file, or a command that does the whole
//! load), script version, starting interval, per-run timeout, what to do
//! about runs missed while nothing was scheduling, and the tuner's policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::error::{DefinitionProblem, duration};
use super::tuning::{MetricKind, Policy, Scoring};
use super::view::FeatureView;

/// `[[refresh_job]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRefreshJob {
    pub name: String,
    pub view: Option<String>,
    pub script_version: Option<String>,
    pub interval: String,
    pub timeout: String,
    pub missed_run: Option<String>,
    pub max_rejected_percent: Option<f64>,
    pub source: RawJobSource,
    pub tuner: Option<RawJobTuner>,
}

/// `[refresh_job.source]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJobSource {
    pub file: Option<String>,
    pub command: Option<Vec<String>>,
}

/// `[refresh_job.tuner]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJobTuner {
    pub model: String,
    pub output: Option<String>,
    pub metric: String,
    pub positive_label: Option<String>,
    pub threshold: f64,
    pub min_interval: String,
    pub max_interval: String,
    pub good_windows: Option<u32>,
    pub cooldown_windows: Option<u32>,
    pub min_samples: Option<usize>,
    pub window: String,
    pub label_delay: Option<String>,
}

/// Where a run's rows come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobSource {
    /// The built-in CSV/Parquet loader reads this file.
    File(PathBuf),
    /// The command writes the file (its path is in `MLGW_REFRESH_FILE`),
    /// then the built-in loader reads it.
    CommandThenFile {
        /// Program and arguments (no shell).
        command: Vec<String>,
        /// The file it writes.
        file: PathBuf,
    },
    /// The command does the whole load itself; its exit code decides.
    Command(Vec<String>),
}

/// What the scheduler does when it finds a run was missed by more than one
/// interval (the scheduler was down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedRun {
    /// Run once now to catch up, then keep the interval from there.
    RunOnce,
    /// Do not catch up; the next run is the next slot of the old schedule.
    Skip,
}

impl MissedRun {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            MissedRun::RunOnce => "run_once",
            MissedRun::Skip => "skip",
        }
    }
}

/// The tuner's settings of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobTuning {
    /// Which predictions count and how they are scored.
    pub scoring: Scoring,
    /// The controller's policy.
    pub policy: Policy,
    /// The evaluation window (the tuner judges one every window).
    pub window: Duration,
}

/// One declared refresh job.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshJobSpec {
    /// The job's name (a static view's `refresh_job`).
    pub name: String,
    /// The static view it loads.
    pub view: String,
    /// Recorded in every batch it loads.
    pub script_version: String,
    /// The interval before the tuner changes it.
    pub interval: Duration,
    /// A run taking longer is stopped and recorded as failed.
    pub timeout: Duration,
    /// What to do about runs missed during downtime.
    pub missed_run: MissedRun,
    /// The built-in loader's limit on rejected rows, in percent.
    pub max_rejected_percent: f64,
    /// Where the rows come from.
    pub source: JobSource,
    /// The tuner's settings; None runs the job at a fixed interval.
    pub tuning: Option<JobTuning>,
}

fn bad(message: impl Into<String>) -> DefinitionProblem {
    DefinitionProblem::RefreshJob(message.into())
}

/// Validates one `[[refresh_job]]`; errors carry the key (relative to the
/// entry) they are about. `dir` is the definitions file's folder, which
/// relative paths start from.
pub(super) fn validate_job(
    raw: &RawRefreshJob,
    views: &[FeatureView],
    dir: &Path,
) -> Result<RefreshJobSpec, (&'static str, DefinitionProblem)> {
    let loaded: Vec<&FeatureView> = views
        .iter()
        .filter(|v| v.refresh_job().is_some_and(|j| j.as_str() == raw.name))
        .collect();
    let view = match (&raw.view, loaded.as_slice()) {
        (_, []) => {
            let known: Vec<String> = views
                .iter()
                .filter_map(|v| v.refresh_job().map(|j| format!("{:?}", j.as_str())))
                .collect();
            return Err((
                "name",
                bad(format!(
                    "no static view names {:?} as its refresh_job; jobs named by views: {}",
                    raw.name,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )),
            ));
        }
        (None, [only]) => only.name.clone(),
        (None, _) => {
            return Err((
                "view",
                bad(format!(
                    "job {:?} loads several views; name the one this entry runs with view = \"...\"",
                    raw.name
                )),
            ));
        }
        (Some(v), many) => {
            if !many.iter().any(|m| &m.name == v) {
                return Err((
                    "view",
                    bad(format!(
                        "view {v:?} is not loaded by job {:?}; it loads {}",
                        raw.name,
                        many.iter()
                            .map(|m| format!("{:?}", m.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                ));
            }
            v.clone()
        }
    };
    let interval = duration(&raw.interval).map_err(|p| ("interval", p))?;
    let timeout = duration(&raw.timeout).map_err(|p| ("timeout", p))?;
    let missed_run = match raw.missed_run.as_deref() {
        None | Some("run_once") => MissedRun::RunOnce,
        Some("skip") => MissedRun::Skip,
        Some(other) => {
            return Err((
                "missed_run",
                bad(format!("{other:?}: write \"run_once\" or \"skip\"")),
            ));
        }
    };
    let max_rejected_percent = raw.max_rejected_percent.unwrap_or(1.0);
    if !(0.0..=100.0).contains(&max_rejected_percent) {
        return Err((
            "max_rejected_percent",
            bad(format!(
                "{max_rejected_percent} is not a percentage between 0 and 100"
            )),
        ));
    }
    let path = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            dir.join(p)
        }
    };
    let source = match (&raw.source.file, &raw.source.command) {
        (_, Some(c)) if c.is_empty() || c[0].trim().is_empty() => {
            return Err((
                "source.command",
                bad("give the program and its arguments, e.g. [\"python3\", \"export.py\"]"),
            ));
        }
        (Some(f), None) => JobSource::File(path(f)),
        (Some(f), Some(c)) => JobSource::CommandThenFile {
            command: c.clone(),
            file: path(f),
        },
        (None, Some(c)) => JobSource::Command(c.clone()),
        (None, None) => {
            return Err((
                "source",
                bad(
                    "give `file` (loaded by the built-in loader), `command` (does the whole load), or both (the command writes the file)",
                ),
            ));
        }
    };
    let tuning = raw.tuner.as_ref().map(validate_tuner).transpose()?;
    if let Some(t) = &tuning
        && !(t.policy.min_interval..=t.policy.max_interval).contains(&interval)
    {
        return Err((
            "interval",
            bad(format!(
                "{} is outside the tuner's bounds [{}, {}]",
                raw.interval,
                raw.tuner.as_ref().map_or("", |r| r.min_interval.as_str()),
                raw.tuner.as_ref().map_or("", |r| r.max_interval.as_str())
            )),
        ));
    }
    Ok(RefreshJobSpec {
        name: raw.name.clone(),
        view,
        script_version: raw
            .script_version
            .clone()
            .unwrap_or_else(|| "unversioned".to_owned()),
        interval,
        timeout,
        missed_run,
        max_rejected_percent,
        source,
        tuning,
    })
}

fn validate_tuner(t: &RawJobTuner) -> Result<JobTuning, (&'static str, DefinitionProblem)> {
    let metric = match t.metric.as_str() {
        "auc" => MetricKind::Auc,
        "accuracy" => MetricKind::Accuracy,
        "log_loss" => MetricKind::LogLoss,
        "mae" => MetricKind::Mae,
        other => {
            return Err((
                "tuner.metric",
                bad(format!(
                    "{other:?} is not one of \"auc\", \"accuracy\", \"log_loss\", \"mae\""
                )),
            ));
        }
    };
    match (metric, &t.positive_label) {
        (MetricKind::Mae, Some(_)) => {
            return Err((
                "tuner.positive_label",
                bad("mae scores a numeric output; remove positive_label"),
            ));
        }
        (MetricKind::Mae, None) | (_, Some(_)) => {}
        (_, None) => {
            return Err((
                "tuner.positive_label",
                bad(format!(
                    "{} is a binary metric: name the positive label, e.g. positive_label = \"fraud\"",
                    t.metric
                )),
            ));
        }
    }
    if !t.threshold.is_finite() {
        return Err(("tuner.threshold", bad("must be a finite number")));
    }
    let min_interval = duration(&t.min_interval).map_err(|p| ("tuner.min_interval", p))?;
    let max_interval = duration(&t.max_interval).map_err(|p| ("tuner.max_interval", p))?;
    if min_interval > max_interval {
        return Err((
            "tuner.min_interval",
            bad(format!(
                "{} is longer than max_interval {}",
                t.min_interval, t.max_interval
            )),
        ));
    }
    let window = duration(&t.window).map_err(|p| ("tuner.window", p))?;
    let good_windows = t.good_windows.unwrap_or(3);
    if good_windows == 0 {
        return Err(("tuner.good_windows", bad("must be at least 1")));
    }
    let label_delay = t
        .label_delay
        .as_deref()
        .map(duration)
        .transpose()
        .map_err(|p| ("tuner.label_delay", p))?
        .unwrap_or_default();
    let min_samples = t.min_samples.unwrap_or(500);
    if min_samples == 0 {
        return Err(("tuner.min_samples", bad("must be at least 1")));
    }
    Ok(JobTuning {
        scoring: Scoring {
            model: t.model.clone(),
            output: t
                .output
                .clone()
                .unwrap_or_else(|| "probabilities".to_owned()),
            positive_label: t.positive_label.clone(),
        },
        policy: Policy {
            metric,
            threshold: t.threshold,
            min_interval,
            max_interval,
            good_windows,
            cooldown_windows: t.cooldown_windows.unwrap_or(24),
            min_samples,
            label_delay,
        },
        window,
    })
}

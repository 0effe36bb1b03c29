//! The refresh scheduler's stored records: per job its schedule (the runs
//! with their trigger and outcome, and the slot it counts from) and a
//! person's latest request to run it now. The store keeps them as JSON
//! documents; the scheduler writes them under the job's lease.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Runs kept per job in its [`ScheduleState`].
pub const KEPT_RUNS: usize = 200;

/// A person's request to run a job now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The job.
    pub job: String,
    /// Who asked.
    pub by: String,
    /// When.
    #[serde(with = "crate::clock::unix_micros")]
    pub at: SystemTime,
    /// Why, as given.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Why a run started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Trigger {
    /// The job had never run (and its view has no batch).
    First,
    /// Its interval passed.
    Scheduled,
    /// Runs were missed while no scheduler ran; `missed_run = "run_once"`.
    CatchUp {
        /// How many slots were missed.
        missed: u32,
    },
    /// A person asked for it.
    Forced {
        /// Who.
        by: String,
    },
    /// The last run failed or timed out: tried again before the next slot
    /// (see [`wait_after`]).
    Retry {
        /// Runs failed in a row.
        failed: u32,
    },
}

impl Trigger {
    /// A short phrase for reports.
    pub fn describe(&self) -> String {
        match self {
            Trigger::First => "first run".to_owned(),
            Trigger::Scheduled => "interval passed".to_owned(),
            Trigger::CatchUp { missed } => format!("catch-up after {missed} missed run(s)"),
            Trigger::Forced { by } => format!("forced by {by}"),
            Trigger::Retry { failed } => format!("retry after {failed} failed run(s)"),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// A new batch is current (or the command's load succeeded).
    Loaded,
    /// The input was identical to the current batch's; nothing written.
    Unchanged,
    /// The run failed; the previous batch stays current.
    Failed,
    /// The run passed its timeout and was stopped.
    TimedOut,
    /// Missed runs skipped (`missed_run = "skip"`); nothing ran.
    Skipped,
}

impl RunOutcome {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Loaded => "loaded",
            RunOutcome::Unchanged => "unchanged",
            RunOutcome::Failed => "failed",
            RunOutcome::TimedOut => "timed_out",
            RunOutcome::Skipped => "skipped",
        }
    }
}

/// One run (or skip) of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// When it started (scheduler time).
    #[serde(with = "crate::clock::unix_micros")]
    pub started_at: SystemTime,
    /// When it ended.
    #[serde(with = "crate::clock::unix_micros")]
    pub finished_at: SystemTime,
    /// Why it ran.
    pub trigger: Trigger,
    /// How it ended.
    pub outcome: RunOutcome,
    /// The batch it loaded (or found current, or that failed).
    pub batch_id: Option<String>,
    /// A command's exit code.
    pub exit_code: Option<i32>,
    /// The end of a command's output (stdout then stderr, its last few
    /// KiB).
    #[serde(default)]
    pub output: String,
    /// What happened, in words.
    pub message: String,
    /// The scheduler that ran it.
    pub holder: String,
}

/// The scheduler's record of one job, written only under the job's lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// The job.
    pub job: String,
    /// The slot the schedule counts from: the last run's start, or the
    /// last skipped slot. The next run is due one interval later.
    #[serde(with = "crate::clock::opt_unix_micros")]
    pub anchor: Option<SystemTime>,
    /// The time of the last run request handled.
    #[serde(with = "crate::clock::opt_unix_micros")]
    pub handled_request: Option<SystemTime>,
    /// Runs, oldest first (the last [`KEPT_RUNS`]).
    pub runs: Vec<RunRecord>,
}

impl ScheduleState {
    /// A job never run by a scheduler.
    pub fn new(job: &str) -> Self {
        ScheduleState {
            job: job.to_owned(),
            anchor: None,
            handled_request: None,
            runs: Vec::new(),
        }
    }

    /// Runs that failed or timed out since the last one that did not
    /// (skipped slots left aside).
    pub fn failures_in_a_row(&self) -> u32 {
        let failed = self
            .runs
            .iter()
            .rev()
            .filter(|r| r.outcome != RunOutcome::Skipped)
            .take_while(|r| matches!(r.outcome, RunOutcome::Failed | RunOutcome::TimedOut))
            .count();
        u32::try_from(failed).unwrap_or(u32::MAX)
    }

    /// Appends a run, keeping the last [`KEPT_RUNS`].
    pub(crate) fn push(&mut self, run: RunRecord) {
        self.runs.push(run);
        if self.runs.len() > KEPT_RUNS {
            let extra = self.runs.len() - KEPT_RUNS;
            self.runs.drain(..extra);
        }
    }

    /// Whether `request` is newer than the last one handled.
    pub fn is_pending(&self, request: &RunRequest) -> bool {
        self.handled_request.is_none_or(|h| request.at > h)
    }
}

/// How long after a run's start the next one is due: the interval after a
/// run that worked. After the `failures`-th failed run in a row the previous
/// batch is still served, older than the interval allows, and waiting for
/// the next slot would serve it for up to two intervals: an eighth of the
/// interval instead, doubling with each failure in a row (a broken source
/// is not hammered), at least 30 s, never later than the next slot.
pub fn wait_after(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    let first = (interval / 8).max(Duration::from_secs(30));
    first
        .saturating_mul(1u32 << (failures - 1).min(16))
        .min(interval)
}

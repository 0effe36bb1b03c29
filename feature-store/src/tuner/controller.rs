//! The interval controller of one refresh job: double the interval while the
//! metric holds, go back to the last good interval (then cool down) as soon
//! as it does not, shorten further if even that is not enough, respect
//! bounds and a person's pin, and explain every decision.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use crate::definitions::Policy;

/// What the controller did with one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The metric held long enough: the interval doubled.
    Doubled,
    /// The metric fell: back to the last good interval.
    Reverted,
    /// The metric fell at the last good interval too: halved.
    Shortened,
    /// The metric held; not yet long enough to double (or at the maximum).
    Held,
    /// The metric held, but a cool-down after a revert is running.
    CoolingDown,
    /// The window still mixes rows refreshed at the previous interval.
    Settling,
    /// Too few labelled predictions: no decision.
    TooFewLabels,
    /// A person pinned the interval.
    Pinned,
    /// The scheduler began tuning the job.
    Started,
}

/// One decision with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The end of the window decided on.
    #[serde(with = "crate::clock::unix_micros")]
    pub at: SystemTime,
    /// What was done.
    pub action: Action,
    /// Interval before.
    #[serde(with = "crate::clock::secs")]
    pub from: Duration,
    /// Interval after.
    #[serde(with = "crate::clock::secs")]
    pub to: Duration,
    /// The window's metric, if defined.
    pub metric: Option<f64>,
    /// Labelled predictions in the window.
    pub samples: usize,
    /// Why, in words.
    pub reason: String,
}

/// A pin set by a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pin {
    /// The pinned interval.
    #[serde(with = "crate::clock::secs")]
    pub interval: Duration,
    /// Who pinned it.
    pub by: String,
    /// When.
    #[serde(with = "crate::clock::unix_micros")]
    pub at: SystemTime,
    /// Why, as the person gave it.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The persisted state of one job's controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// The refresh job.
    pub job: String,
    /// The interval the scheduler uses now.
    #[serde(with = "crate::clock::secs")]
    pub interval: Duration,
    /// The longest interval proven good.
    #[serde(with = "crate::clock::secs")]
    pub last_good: Duration,
    /// Good windows in a row at the current interval.
    pub good_streak: u32,
    /// Start of the first window of the current good streak: the interval
    /// doubles only once the streak spans a whole interval, so every feature
    /// age the interval produces has been measured.
    #[serde(default, with = "crate::clock::opt_unix_micros")]
    pub good_since: Option<SystemTime>,
    /// Windows of cool-down left.
    pub cooldown_left: u32,
    /// Reverts in a row from the same longer interval: each doubles the
    /// next cool-down (up to 64×), so a failing attempt is retried ever
    /// more rarely.
    #[serde(default)]
    pub failed_attempts: u32,
    /// Windows ending before this mix rows from the previous interval.
    #[serde(with = "crate::clock::unix_micros")]
    pub settled_at: SystemTime,
    /// A person's pin, if any.
    pub pin: Option<Pin>,
    /// Decisions, oldest first (the last [`HISTORY`] kept).
    pub history: Vec<Decision>,
}

/// Decisions kept per job.
pub const HISTORY: usize = 2000;

/// A window's measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Its start.
    pub start: SystemTime,
    /// Its end.
    pub end: SystemTime,
    /// The metric, if defined.
    pub metric: Option<f64>,
    /// Labelled predictions.
    pub samples: usize,
}

/// "90 min", "2 h", "1 d 6 h": short human durations for reasons.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..7200 if s.is_multiple_of(60) => format!("{} min", s / 60),
        60..7200 => format!("{:.1} min", s as f64 / 60.0),
        _ if s.is_multiple_of(3600) && s < 172_800 => format!("{} h", s / 3600),
        _ if s < 172_800 => format!("{:.1} h", s as f64 / 3600.0),
        _ => format!("{:.1} d", s as f64 / 86_400.0),
    }
}

impl JobState {
    /// A new job starting at `interval` (clamped to the policy's bounds).
    pub fn new(job: &str, interval: Duration, policy: &Policy, now: SystemTime) -> Self {
        let interval = interval.clamp(policy.min_interval, policy.max_interval);
        JobState {
            job: job.to_owned(),
            interval,
            last_good: interval,
            good_streak: 0,
            good_since: None,
            cooldown_left: 0,
            failed_attempts: 0,
            settled_at: now + interval,
            pin: None,
            history: Vec::new(),
        }
    }

    /// Pins the interval (the controller then holds it) or, with None,
    /// unpins on behalf of `by` (the controller resumes from the pinned
    /// interval).
    pub fn set_pin(&mut self, pin: Option<Pin>, by: &str, now: SystemTime) {
        let from = self.interval;
        let reason = match &pin {
            Some(p) => {
                self.interval = p.interval;
                let why = p
                    .reason
                    .as_deref()
                    .map_or_else(String::new, |r| format!(": {r}"));
                format!("pinned at {} by {}{why}", human(p.interval), p.by)
            }
            None => format!("unpinned by {by}; tuning resumes"),
        };
        self.pin = pin;
        self.good_streak = 0;
        self.good_since = None;
        self.settled_at = now + self.interval;
        self.push(Decision {
            at: now,
            action: Action::Pinned,
            from,
            to: self.interval,
            metric: None,
            samples: 0,
            reason,
        });
    }

    /// Records that tuning begins at `now` (the first window ends one
    /// window later).
    pub fn begin(&mut self, now: SystemTime, reason: String) {
        self.push(Decision {
            at: now,
            action: Action::Started,
            from: self.interval,
            to: self.interval,
            metric: None,
            samples: 0,
            reason,
        });
    }

    fn push(&mut self, d: Decision) {
        self.history.push(d);
        if self.history.len() > HISTORY {
            let extra = self.history.len() - HISTORY;
            self.history.drain(..extra);
        }
    }

    /// Decides on one window and returns the decision (also kept in the
    /// history).
    pub fn observe(&mut self, policy: &Policy, w: Window) -> Decision {
        let from = self.interval;
        let name = policy.metric.name();
        let cmp = if policy.metric.higher_is_better() {
            ("≥", "<")
        } else {
            ("≤", ">")
        };
        let (action, reason) = if let Some(pin) = &self.pin {
            self.interval = pin.interval;
            (
                Action::Pinned,
                format!("held at {}: pinned by {}", human(pin.interval), pin.by),
            )
        } else if w.samples < policy.min_samples || w.metric.is_none() {
            (
                Action::TooFewLabels,
                format!(
                    "no decision: {} labelled predictions, {} needed",
                    w.samples, policy.min_samples
                ),
            )
        } else {
            let m = w.metric.unwrap_or_default();
            let settling = w.start < self.settled_at;
            let good = policy.metric.meets(m, policy.threshold);
            if settling && (good || self.interval <= self.last_good) {
                // Rows refreshed under the previous interval are still being
                // served: a good window proves nothing yet, and a bad one at
                // the last good interval is the previous interval's doing. A
                // bad window after a lengthening still reverts at once.
                (
                    Action::Settling,
                    format!(
                        "no decision on {name} {m:.3}: the window mixes rows refreshed before the change to {}",
                        human(self.interval)
                    ),
                )
            } else if good {
                if self.cooldown_left > 0 {
                    self.cooldown_left -= 1;
                    (
                        Action::CoolingDown,
                        format!(
                            "held at {}: {name} {m:.3} {} {:.3}, cool-down {} more window(s)",
                            human(self.interval),
                            cmp.0,
                            policy.threshold,
                            self.cooldown_left
                        ),
                    )
                } else {
                    self.good_streak += 1;
                    let since = *self.good_since.get_or_insert(w.start);
                    let spans = w.end.duration_since(since).unwrap_or_default() >= self.interval;
                    let doubled = (self.interval * 2).min(policy.max_interval);
                    if self.good_streak >= policy.good_windows && spans && doubled > self.interval {
                        if self.interval > self.last_good {
                            // A longer interval proved itself.
                            self.failed_attempts = 0;
                        }
                        self.last_good = self.interval;
                        self.interval = doubled;
                        self.good_streak = 0;
                        self.good_since = None;
                        self.settled_at = w.end + doubled;
                        (
                            Action::Doubled,
                            format!(
                                "doubled {} → {}: {name} {m:.3} {} {:.3} for {} window(s)",
                                human(from),
                                human(doubled),
                                cmp.0,
                                policy.threshold,
                                policy.good_windows
                            ),
                        )
                    } else {
                        let why = if doubled <= self.interval {
                            "at the maximum interval".to_owned()
                        } else if self.good_streak < policy.good_windows {
                            format!(
                                "{} of {} good windows",
                                self.good_streak, policy.good_windows
                            )
                        } else {
                            format!(
                                "good windows do not yet span one {} cycle",
                                human(self.interval)
                            )
                        };
                        (
                            Action::Held,
                            format!(
                                "held at {}: {name} {m:.3} {} {:.3}, {why}",
                                human(self.interval),
                                cmp.0,
                                policy.threshold
                            ),
                        )
                    }
                }
            } else if self.interval > self.last_good {
                self.interval = self.last_good;
                self.good_streak = 0;
                self.good_since = None;
                self.failed_attempts += 1;
                self.cooldown_left = policy
                    .cooldown_windows
                    .saturating_mul(1 << (self.failed_attempts - 1).min(6));
                self.settled_at = w.end + self.interval;
                (
                    Action::Reverted,
                    format!(
                        "reverted {} → {}: {name} {m:.3} {} {:.3}; cool-down {} window(s)",
                        human(from),
                        human(self.interval),
                        cmp.1,
                        policy.threshold,
                        self.cooldown_left
                    ),
                )
            } else {
                let halved = (self.interval / 2).max(policy.min_interval);
                self.interval = halved;
                self.last_good = halved;
                self.good_streak = 0;
                self.good_since = None;
                self.cooldown_left = policy.cooldown_windows;
                self.settled_at = w.end + halved;
                let bound = if halved == from {
                    " (already at the minimum interval)"
                } else {
                    ""
                };
                (
                    Action::Shortened,
                    format!(
                        "shortened {} → {}{bound}: {name} {m:.3} {} {:.3} at the last good interval",
                        human(from),
                        human(halved),
                        cmp.1,
                        policy.threshold
                    ),
                )
            }
        };
        let decision = Decision {
            at: w.end,
            action,
            from,
            to: self.interval,
            metric: w.metric,
            samples: w.samples,
            reason,
        };
        self.push(decision.clone());
        decision
    }
}

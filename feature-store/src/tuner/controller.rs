//! The interval controller of one refresh job: double the interval while the
//! metric holds, go back to the last good interval (then cool down) as soon
//! as it does not, shorten further if even that is not enough, respect
//! bounds and a person's pin, and explain every decision.
//!
//! Labels arrive late (fraud labels are chargebacks), so a window is judged
//! once its labels matured: its predictions were made under whatever
//! interval was in force then, which the state remembers ([`Regime`]), and
//! a bad window is blamed on that interval, not on the current one. An
//! early look at a younger window, on the labels it has so far, may pull
//! the interval back before a week of late labels has passed (never push
//! it out).
//! Predictions whose features were older than their interval allows (a
//! refresh failed or was skipped) are judged as served and counted in the
//! decision. A window below the threshold counts against the interval it
//! was served at by how many sampling errors it fell short ([`Evidence`]):
//! far below acts at once, a little below only when windows in a row agree,
//! so noise alone does not pull the interval back from where the true
//! metric holds. Every window also
//! teaches the metric by feature age ([`AgeCurve`]): a doubling is refused
//! while the curve predicts the longer interval would miss the threshold,
//! over a window or at the oldest age it serves.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::curve::{AgeCurve, Prediction};
use super::metric::{MetricKind, Sample};
pub use crate::definitions::Policy;

/// Intervals in force remembered, newest last (windows judged late look
/// back at them).
const REGIMES: usize = 64;
/// Residuals (window metric minus the curve's prediction) remembered.
const RESIDUALS: usize = 336;
/// The curve forgets half of what it learned in this long.
const CURVE_HALF_LIFE: Duration = Duration::from_secs(7 * 86_400);
/// A window below the threshold is evidence against the interval it was
/// served at: how many standard errors below, less this allowance, summed
/// over the windows served at that interval (a one-sided CUSUM, floored at
/// zero, which windows above the threshold drain).
const EVIDENCE_ALLOWANCE: f64 = 0.25;
/// The interval fails once the evidence reaches this: at once for a window
/// 1.75 standard errors below, after a few windows for ones just below, and
/// rarely by chance where the true metric holds (a window's sampling error
/// alone would otherwise revert one in six windows 1 standard error above).
const FAIL_EVIDENCE: f64 = 1.5;

/// What the controller did with one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The metric held long enough: the interval doubled.
    Doubled,
    /// The metric held long enough, but the metric by feature age expects
    /// double to miss the threshold: the interval grew by less.
    Lengthened,
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
    /// The window was made by another model version: the metric by feature
    /// age is learned anew, the interval holds.
    ModelChanged,
    /// A bad window served at a longer interval than the one in force now:
    /// it was acted on already.
    AlreadyActed,
    /// The metric fell below the threshold by less than the window's
    /// sampling error allows to tell: held, the evidence kept.
    WithinError,
}

/// Which evidence decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Nothing was judged (a pin, too few labels, a settling window).
    #[default]
    Nothing,
    /// The window's metric.
    Window,
    /// The window's metric, and the metric by feature age predicted for a
    /// longer interval (a doubling made or refused).
    WindowAndCurve,
    /// The labels a window had before it matured (an early look).
    EarlyLabels,
}

/// An interval in force from `since` (when the decision was made) until
/// the next regime's `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regime {
    /// When it took effect.
    #[serde(with = "crate::clock::unix_micros")]
    pub since: SystemTime,
    /// The interval.
    #[serde(with = "crate::clock::secs")]
    pub interval: Duration,
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
    /// Labelled predictions in the window that were judged.
    pub samples: usize,
    /// Why, in words.
    pub reason: String,
    /// Which evidence decided.
    #[serde(default)]
    pub basis: Basis,
    /// The metric the curve predicted for the longer interval, when a
    /// doubling was considered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<f64>,
    /// Predictions left out because their features were older than their
    /// interval allows (a failed or late refresh).
    #[serde(default)]
    pub stale: usize,
    /// When the window was judged (its labels matured); `at` is the end of
    /// its predictions.
    #[serde(default, with = "crate::clock::opt_unix_micros")]
    pub judged_at: Option<SystemTime>,
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
    /// The intervals in force lately, oldest first.
    #[serde(default)]
    pub regimes: Vec<Regime>,
    /// When the interval last changed.
    #[serde(default, with = "crate::clock::opt_unix_micros")]
    pub changed_at: Option<SystemTime>,
    /// The metric by feature age of the current model version.
    #[serde(default)]
    pub curve: AgeCurve,
    /// Recent window metrics minus the curve's prediction for them: how far
    /// a window falls from the curve, which a doubling must leave room for.
    #[serde(default)]
    pub residuals: Vec<f64>,
    /// The model version the curve belongs to.
    #[serde(default)]
    pub model_version: Option<String>,
    /// Windows in a row without enough labels (labels may have stopped
    /// arriving; shown on `/metrics` for alerting).
    #[serde(default)]
    pub windows_without_labels: u32,
    /// Evidence against the interval last judged below the threshold (see
    /// [`FAIL_EVIDENCE`]).
    #[serde(default)]
    pub evidence: Evidence,
    /// The same, from early looks at windows not yet matured.
    #[serde(default)]
    pub early_evidence: Evidence,
}

/// Decisions kept per job.
pub const HISTORY: usize = 2000;

/// Evidence against one served interval, in standard errors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The interval the windows were served at.
    #[serde(with = "crate::clock::secs")]
    pub served: Duration,
    /// The CUSUM of their shortfalls.
    pub score: f64,
}

impl Evidence {
    /// Starts over when the windows judged were served at another interval.
    fn against(&mut self, served: Duration) {
        if self.served != served {
            *self = Evidence { served, score: 0.0 };
        }
    }

    /// Adds a window `z` standard errors below the threshold (negative:
    /// above it, which drains the sum).
    fn add(&mut self, z: f64) {
        self.score = (self.score + z - EVIDENCE_ALLOWANCE).max(0.0);
    }
}

/// A window of labelled predictions to judge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window<'a> {
    /// When its predictions start.
    pub start: SystemTime,
    /// When they end.
    pub end: SystemTime,
    /// When it is judged: once its labels matured (`end` plus the job's
    /// label delay), or later.
    pub judged_at: SystemTime,
    /// Its labelled predictions, each with its feature age.
    pub samples: &'a [Sample],
    /// The model version that made most of them.
    pub model_version: Option<&'a str>,
}

/// How far `m`, the metric over `samples`, falls short of the threshold in
/// standard errors (negative above it), and the standard error.
fn shortfall(policy: &Policy, samples: &[Sample], m: f64) -> (f64, Option<f64>) {
    let se = policy.metric.standard_error(samples, m);
    let below = if policy.metric.higher_is_better() {
        policy.threshold - m
    } else {
        m - policy.threshold
    };
    let z = match se {
        Some(se) if se > 0.0 => below / se,
        _ if below > 0.0 => f64::INFINITY,
        _ => 0.0,
    };
    (z, se)
}

/// How long after a window's end it gets its early look: an eighth of the
/// label delay, in whole windows (None: labels mature within a window, or
/// the metric is not AUC). Only AUC is looked at early: it compares
/// positives with negatives, so labels of one class arriving sooner than
/// the other's do not bias it, as long as within a class a label's delay
/// does not depend on the score; a mean metric over early labels would
/// weigh the faster class more.
pub fn early_look_lag(policy: &Policy, window: Duration) -> Option<Duration> {
    if policy.metric != MetricKind::Auc || window.is_zero() {
        return None;
    }
    let windows = (policy.label_delay.as_secs() / 8)
        .div_ceil(window.as_secs())
        .max(1);
    let lag = window * u32::try_from(windows).ok()?;
    (lag < policy.label_delay).then_some(lag)
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

impl Decision {
    /// When it was made: when its window was judged (older records, from
    /// before labels could be late, only have `at`).
    pub fn judged(&self) -> SystemTime {
        self.judged_at.unwrap_or(self.at)
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
            regimes: vec![Regime {
                since: now,
                interval,
            }],
            changed_at: Some(now),
            curve: AgeCurve::default(),
            residuals: Vec::new(),
            model_version: None,
            windows_without_labels: 0,
            evidence: Evidence::default(),
            early_evidence: Evidence::default(),
        }
    }

    /// Records that `interval` is in force from `at` (a decision's time).
    fn change_to(&mut self, interval: Duration, at: SystemTime) {
        self.interval = interval;
        self.good_streak = 0;
        self.good_since = None;
        self.settled_at = at + interval;
        self.changed_at = Some(at);
        self.evidence = Evidence::default();
        self.early_evidence = Evidence::default();
        self.regimes.push(Regime {
            since: at,
            interval,
        });
        if self.regimes.len() > REGIMES {
            let extra = self.regimes.len() - REGIMES;
            self.regimes.drain(..extra);
        }
    }

    /// The longest interval in force while `[start, end)`'s predictions
    /// were made.
    pub fn interval_during(&self, start: SystemTime, end: SystemTime) -> Duration {
        let mut longest: Option<Duration> = None;
        for (i, r) in self.regimes.iter().enumerate() {
            let until = self.regimes.get(i + 1).map(|n| n.since);
            let overlaps = r.since < end && until.is_none_or(|u| u > start);
            // A window before every remembered regime ran under the first.
            let before_all = i == 0 && end <= r.since;
            if overlaps || before_all {
                longest = Some(longest.map_or(r.interval, |l| l.max(r.interval)));
            }
        }
        longest.unwrap_or(self.interval)
    }

    /// The predicted metric of `interval` from the curve, shifted by the
    /// low tail of recent residuals (how far windows fell below the curve
    /// at the interval in force), so a longer interval leaves room for the
    /// windows that fall furthest. A dip grows with the decline it rides
    /// on (drift acts through age), so the tail is scaled by how much more
    /// the curve declines at `interval` than at the current one.
    fn predict(&self, policy: &Policy, interval: Duration) -> Option<(Prediction, f64)> {
        let bounds = AgeCurve::bounds(policy.min_interval, policy.max_interval);
        let kind = policy.metric;
        let p = self.curve.predict(kind, &bounds, interval)?;
        let higher = kind.higher_is_better();
        let oriented = |x: f64| if higher { x } else { -x };
        let mut tail: Vec<f64> = self.residuals.iter().map(|r| oriented(*r)).collect();
        tail.sort_by(f64::total_cmp);
        let low = tail.get(tail.len() / 100).copied().unwrap_or(0.0);
        let decline = |j: Duration| {
            let fresh = self.curve.predict(kind, &bounds, bounds[1])?;
            let at = self.curve.predict(kind, &bounds, j)?;
            Some(oriented(fresh.metric) - oriented(at.metric))
        };
        let scale = match (decline(interval), decline(self.interval)) {
            (Some(there), Some(here)) if here > 0.002 && there > here => there / here,
            _ => 1.0,
        };
        let shift = if low < 0.0 { low * scale } else { low };
        let window = p.metric + if higher { shift } else { -shift };
        // Every hour must hold, the cycle's last too: a window longer than
        // an hour averages the oldest rows with fresh ones.
        let oldest = self.curve.at_age(kind, &bounds, interval).unwrap_or(window);
        let worst = if higher {
            window.min(oldest)
        } else {
            window.max(oldest)
        };
        Some((p, worst))
    }

    /// Pins the interval (the controller then holds it) or, with None,
    /// unpins on behalf of `by` (the controller resumes from the pinned
    /// interval).
    pub fn set_pin(&mut self, pin: Option<Pin>, by: &str, now: SystemTime) {
        let from = self.interval;
        let reason = match &pin {
            Some(p) => {
                self.change_to(p.interval, now);
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
            basis: Basis::Nothing,
            predicted: None,
            stale: 0,
            judged_at: Some(now),
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
            basis: Basis::Nothing,
            predicted: None,
            stale: 0,
            judged_at: Some(now),
        });
    }

    fn push(&mut self, d: Decision) {
        self.history.push(d);
        if self.history.len() > HISTORY {
            let extra = self.history.len() - HISTORY;
            self.history.drain(..extra);
        }
    }

    /// The interval `served` failed (`metric` and `evidence` say how): back
    /// to the last good interval when `served` was a trial longer than it,
    /// else half of `served` (which was believed good), then cool down.
    fn fail(
        &mut self,
        policy: &Policy,
        served: Duration,
        at: SystemTime,
        metric: &str,
        evidence: &str,
    ) -> (Action, String) {
        let from = self.interval;
        if self.interval > self.last_good && served > self.last_good {
            self.failed_attempts += 1;
            self.cooldown_left = policy
                .cooldown_windows
                .saturating_mul(1 << (self.failed_attempts - 1).min(6));
            let back = self.last_good;
            self.change_to(back, at);
            return (
                Action::Reverted,
                format!(
                    "reverted {} → {}: {metric}, {evidence}; cool-down {} window(s)",
                    human(from),
                    human(back),
                    self.cooldown_left
                ),
            );
        }
        let halved = (served / 2).max(policy.min_interval).min(self.interval);
        self.last_good = halved;
        self.change_to(halved, at);
        self.cooldown_left = policy.cooldown_windows;
        let bound = if halved == from {
            " (already at the minimum interval)"
        } else {
            ""
        };
        let at = if served == from {
            "at the last good interval".to_owned()
        } else {
            format!("at {}, an interval believed good", human(served))
        };
        (
            Action::Shortened,
            format!(
                "shortened {} → {}{bound}: {metric} {at}, {evidence}",
                human(from),
                human(halved)
            ),
        )
    }

    /// Looks early at a window whose labels have not all arrived (see
    /// [`early_look_lag`]): its labels so far are evidence against the
    /// interval it was served at, summed like a matured window's but apart
    /// from them, and the interval falls back as soon as that evidence
    /// suffices. It never lengthens an interval nor teaches the curve:
    /// those wait for the matured window. Returns a decision only when the
    /// interval changed.
    pub fn look_early(&mut self, policy: &Policy, w: Window<'_>) -> Option<Decision> {
        if self.pin.is_some()
            || policy.metric != MetricKind::Auc
            || w.samples.len() < policy.min_samples
        {
            return None;
        }
        if let (Some(old), Some(new)) = (&self.model_version, w.model_version)
            && old != new
        {
            return None;
        }
        let m = policy.metric.compute(w.samples)?;
        let served = self.interval_during(w.start, w.end);
        let settling = w.start < self.settled_at;
        let before_change = self.changed_at.is_some_and(|c| w.end <= c);
        if served > self.interval || (settling && !before_change && served <= self.last_good) {
            return None;
        }
        let (z, _) = shortfall(policy, w.samples, m);
        self.early_evidence.against(served);
        self.early_evidence.add(z);
        if policy.metric.meets(m, policy.threshold) || self.early_evidence.score < FAIL_EVIDENCE {
            return None;
        }
        let from = self.interval;
        let lag = w.judged_at.duration_since(w.end).unwrap_or_default();
        let score = self.early_evidence.score;
        let (action, reason) = self.fail(
            policy,
            served,
            w.judged_at,
            &format!(
                "{} {m:.3} < {:.3} on the {} label(s) arrived within {} of the window's end",
                policy.metric.name(),
                policy.threshold,
                w.samples.len(),
                human(lag)
            ),
            &format!("{z:.1} standard error(s) below; early evidence {score:.1} ≥ {FAIL_EVIDENCE}"),
        );
        let decision = Decision {
            at: w.end,
            action,
            from,
            to: self.interval,
            metric: Some(m),
            samples: w.samples.len(),
            reason,
            basis: Basis::EarlyLabels,
            predicted: None,
            stale: 0,
            judged_at: Some(w.judged_at),
        };
        self.push(decision.clone());
        Some(decision)
    }

    /// Decides on one window and returns the decision (also kept in the
    /// history).
    pub fn observe(&mut self, policy: &Policy, w: Window<'_>) -> Decision {
        let from = self.interval;
        let name = policy.metric.name();
        let (meets, misses) = if policy.metric.higher_is_better() {
            ("≥", "<")
        } else {
            ("≤", ">")
        };
        let threshold = policy.threshold;
        // The interval these predictions were served under, and how many
        // had features older than it allows (a refresh failed, was skipped
        // or ran late). They are judged as served: callers got them, and a
        // job whose runs fail needs a shorter interval to keep the metric;
        // the curve learns them at their true age.
        let served = self.interval_during(w.start, w.end);
        let limit = served + (served / 4).max(Duration::from_secs(600));
        let stale = w
            .samples
            .iter()
            .filter(|s| s.age.is_some_and(|a| a > limit))
            .count();
        let metric = policy.metric.compute(w.samples);
        let stale_note = if stale > 0 {
            format!(
                "; {stale} prediction(s) had features older than {} allows (a refresh failed or was late)",
                human(served)
            )
        } else {
            String::new()
        };

        // A new model version has a curve of its own.
        let changed_model = match (&self.model_version, w.model_version) {
            (Some(old), Some(new)) if old != new => Some((old.clone(), new.to_owned())),
            _ => None,
        };
        if let Some(v) = w.model_version {
            self.model_version = Some(v.to_owned());
        }
        if changed_model.is_some() {
            self.curve = AgeCurve::default();
            self.residuals.clear();
        }
        // The residual is measured against the curve before it learns this
        // window, so it says how far an unseen window falls from it; only
        // where the curve has measured the window's ages (a miss past them
        // is the extrapolation's, which the revert answers).
        if w.samples.len() >= policy.min_samples
            && let Some(m) = metric
            && let Some(p) = self.curve.predict(
                policy.metric,
                &AgeCurve::bounds(policy.min_interval, policy.max_interval),
                served,
            )
            && p.oldest_seen >= served
        {
            self.residuals.push(m - p.metric);
            if self.residuals.len() > RESIDUALS {
                let extra = self.residuals.len() - RESIDUALS;
                self.residuals.drain(..extra);
            }
        }
        let span = w.end.duration_since(w.start).unwrap_or_default();
        let decay = 0.5f64.powf(span.as_secs_f64() / CURVE_HALF_LIFE.as_secs_f64());
        let bounds = AgeCurve::bounds(policy.min_interval, policy.max_interval);
        self.curve
            .learn(policy.metric, &bounds, w.samples, decay.clamp(0.0, 1.0));

        let mut basis = Basis::Window;
        let mut predicted = None;
        let (action, reason) = if let Some(pin) = &self.pin {
            basis = Basis::Nothing;
            (
                Action::Pinned,
                format!("held at {}: pinned by {}", human(pin.interval), pin.by),
            )
        } else if let Some((old, new)) = changed_model {
            basis = Basis::Nothing;
            self.good_streak = 0;
            self.good_since = None;
            (
                Action::ModelChanged,
                format!(
                    "model version {old} → {new}: its metric by feature age is learned anew; held at {}",
                    human(self.interval)
                ),
            )
        } else if w.samples.len() < policy.min_samples || metric.is_none() {
            basis = Basis::Nothing;
            self.windows_without_labels += 1;
            (
                Action::TooFewLabels,
                format!(
                    "no decision: {} labelled predictions, {} needed ({} window(s) in a row)",
                    w.samples.len(),
                    policy.min_samples,
                    self.windows_without_labels
                ),
            )
        } else {
            self.windows_without_labels = 0;
            let m = metric.unwrap_or_default();
            let good = policy.metric.meets(m, threshold);
            let settling = w.start < self.settled_at;
            let before_change = self.changed_at.is_some_and(|c| w.end <= c);
            // How far below the threshold, in this window's sampling errors.
            let (z, se) = shortfall(policy, w.samples, m);
            self.evidence.against(served);
            // A window made since the last change that still mixes rows of
            // a longer interval says nothing against one believed good;
            // against a trial interval it can only flatter it.
            let counted = !(settling && !before_change && served <= self.last_good);
            if counted {
                self.evidence.add(z);
            }
            // Below at these ages window after window (the curve pools
            // them): the interval's oldest rows are too old, not unlucky.
            let learned = self.curve.at_ages(policy.metric, &bounds, w.samples);
            let systematic = learned.is_some_and(|l| !policy.metric.meets(l, threshold));
            let failed = !good && (systematic || self.evidence.score >= FAIL_EVIDENCE);
            let evidence = match learned {
                Some(l) if systematic => {
                    format!("{z:.1} standard error(s) below, and {l:.3} learned at these ages")
                }
                _ => format!(
                    "{z:.1} standard error(s) below; evidence {:.1} ≥ {FAIL_EVIDENCE}",
                    self.evidence.score
                ),
            };
            if !good && served > self.interval {
                basis = Basis::Nothing;
                (
                    Action::AlreadyActed,
                    format!(
                        "no decision on {name} {m:.3}: served at {}, longer than the {} in force since",
                        human(served),
                        human(self.interval)
                    ),
                )
            } else if !good && !failed && counted {
                // One window a little below proves nothing: its sampling
                // error alone puts it there often where the true metric
                // holds. The evidence is kept; more windows below decide.
                self.good_streak = 0;
                self.good_since = None;
                (
                    Action::WithinError,
                    format!(
                        "held at {}: {name} {m:.3} {misses} {threshold:.3} by {z:.1} standard error(s) (±{:.3}), {} learned at these ages; evidence against {} {:.1} of {FAIL_EVIDENCE}",
                        human(from),
                        se.unwrap_or_default(),
                        learned.map_or_else(|| "nothing".to_owned(), |l| format!("{l:.3}")),
                        human(served),
                        self.evidence.score
                    ),
                )
            } else if !good
                && ((self.interval > self.last_good && served > self.last_good)
                    || !settling
                    || before_change)
            {
                // A trial interval fails at once; one believed good only
                // on windows made under it (or before the change).
                self.fail(
                    policy,
                    served,
                    w.judged_at,
                    &format!("{name} {m:.3} {misses} {threshold:.3}"),
                    &evidence,
                )
            } else if settling {
                // Rows refreshed under the previous interval are still being
                // served: a good window proves nothing yet, and a bad one at
                // the last good interval is the previous interval's doing.
                basis = Basis::Nothing;
                (
                    Action::Settling,
                    format!(
                        "no decision on {name} {m:.3}: the window mixes rows refreshed before the change to {}",
                        human(self.interval)
                    ),
                )
            } else if self.cooldown_left > 0 {
                self.cooldown_left -= 1;
                (
                    Action::CoolingDown,
                    format!(
                        "held at {}: {name} {m:.3} {meets} {threshold:.3}, cool-down {} more window(s)",
                        human(self.interval),
                        self.cooldown_left
                    ),
                )
            } else {
                self.good_streak += 1;
                let since = *self.good_since.get_or_insert(w.start);
                let spans = w.end.duration_since(since).unwrap_or_default() >= self.interval;
                let doubled = (self.interval * 2).min(policy.max_interval);
                let held = |why: String| {
                    (
                        Action::Held,
                        format!(
                            "held at {}: {name} {m:.3} {meets} {threshold:.3}, {why}",
                            human(from)
                        ),
                    )
                };
                if doubled <= self.interval {
                    held("at the maximum interval".to_owned())
                } else if self.good_streak < policy.good_windows {
                    held(format!(
                        "{} of {} good windows",
                        self.good_streak, policy.good_windows
                    ))
                } else if !spans {
                    held(format!(
                        "good windows do not yet span one {} cycle",
                        human(self.interval)
                    ))
                } else {
                    basis = Basis::WindowAndCurve;
                    // The longest step up to double that the curve expects
                    // to hold: double, else the longest of 7/8 … 1/8 of
                    // the way there.
                    let holds = |j: Duration| {
                        self.predict(policy, j)
                            .filter(|(_, shifted)| policy.metric.meets(*shifted, threshold))
                    };
                    let step = (1..=8u32).rev().find_map(|k| {
                        let j = self.interval + (doubled - self.interval) * k / 8;
                        holds(j).map(|(p, shifted)| (j, p, shifted))
                    });
                    let blind = policy.label_delay <= span;
                    match (step, self.predict(policy, doubled)) {
                        (_, None) if blind => {
                            // Labels come within a window: a wrong doubling
                            // is seen and reverted at once, so the window's
                            // own evidence may decide.
                            basis = Basis::Window;
                            if self.interval > self.last_good {
                                self.failed_attempts = 0;
                            }
                            self.last_good = self.interval;
                            self.change_to(doubled, w.judged_at);
                            (
                                Action::Doubled,
                                format!(
                                    "doubled {} → {}: {name} {m:.3} {meets} {threshold:.3} for {} window(s); the metric by feature age is not known yet",
                                    human(from),
                                    human(doubled),
                                    policy.good_windows
                                ),
                            )
                        }
                        (_, None) => held(format!(
                            "not doubling to {}: labels take {}, and the metric by feature age is not known yet (fewer than two ages with enough labels)",
                            human(doubled),
                            human(policy.label_delay)
                        )),
                        (None, Some((p, shifted))) => {
                            predicted = Some(shifted);
                            held(format!(
                                "not lengthening: the metric by feature age predicts {name} {shifted:.3} {misses} {threshold:.3} at {} (ages seen up to {}), and no shorter step holds",
                                human(doubled),
                                human(p.oldest_seen)
                            ))
                        }
                        (Some((to, p, shifted)), _) => {
                            predicted = Some(shifted);
                            if self.interval > self.last_good {
                                // A longer interval proved itself.
                                self.failed_attempts = 0;
                            }
                            self.last_good = self.interval;
                            self.change_to(to, w.judged_at);
                            let (action, verb) = if to == doubled {
                                (Action::Doubled, "doubled")
                            } else {
                                (Action::Lengthened, "lengthened")
                            };
                            (
                                action,
                                format!(
                                    "{verb} {} → {}: {name} {m:.3} {meets} {threshold:.3} for {} window(s); the metric by feature age predicts {shifted:.3} there (ages seen up to {})",
                                    human(from),
                                    human(to),
                                    policy.good_windows,
                                    human(p.oldest_seen)
                                ),
                            )
                        }
                    }
                }
            }
        };
        let decision = Decision {
            at: w.end,
            action,
            from,
            to: self.interval,
            metric,
            samples: w.samples.len(),
            reason: reason + &stale_note,
            basis,
            predicted,
            stale,
            judged_at: Some(w.judged_at),
        };
        self.push(decision.clone());
        decision
    }
}

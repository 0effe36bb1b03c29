//! Every controller transition, late labels and faults included.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::controller::{Action, Basis, Decision, JobState, Pin, Policy, Window, early_look_lag};
use super::metric::{MetricKind, Sample};

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn policy() -> Policy {
    Policy {
        metric: MetricKind::Auc,
        threshold: 0.88,
        min_interval: Duration::from_secs(15 * 60),
        max_interval: Duration::from_secs(16 * 3600),
        good_windows: 3,
        cooldown_windows: 2,
        min_samples: 100,
        label_delay: Duration::ZERO,
    }
}

/// `n` labelled predictions (n/2 negatives) whose AUC is `auc` to the
/// nearest 2/n, at ages spread evenly over `[0, interval)` with the same
/// mix at every age: positives score 0.5, a share `auc` of the negatives
/// 0.0 and the rest 1.0.
fn with_auc(auc: f64, n: usize, interval: Duration) -> Vec<Sample> {
    let negatives = n / 2;
    let low = (auc * negatives as f64).round() as usize;
    (0..n)
        .map(|i| {
            let (score, outcome) = if i >= negatives {
                (0.5, 1.0)
            } else if i < low {
                (0.0, 0.0)
            } else {
                (1.0, 0.0)
            };
            Sample {
                score,
                outcome,
                age: Some(interval * (i % 8) as u32 / 8),
            }
        })
        .collect()
}

/// Drives one job through hourly windows.
struct Run {
    state: JobState,
    policy: Policy,
    now: SystemTime,
    version: &'static str,
}

impl Run {
    fn new(interval: Duration) -> Self {
        let policy = policy();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Run {
            state: JobState::new("profile_daily", interval, &policy, now),
            policy,
            now,
            version: "1",
        }
    }

    /// Skips time so the next window is settled.
    fn settle(&mut self) {
        self.now = self.now.max(self.state.settled_at);
    }

    /// Judges the next hour's predictions (made at the interval in force).
    fn window(&mut self, metric: f64, samples: usize) -> Action {
        let samples = if self.policy.metric == MetricKind::Auc {
            with_auc(metric, samples, self.state.interval)
        } else {
            // Log-loss: every outcome positive at score e^-metric.
            (0..samples)
                .map(|i| Sample {
                    score: (-metric).exp(),
                    outcome: 1.0,
                    age: Some(self.state.interval * (i % 8) as u32 / 8),
                })
                .collect()
        };
        self.judge(&samples, Duration::ZERO)
    }

    /// The reason of the last decision.
    fn last_reason(&self) -> String {
        self.state
            .history
            .last()
            .map(|d| d.reason.clone())
            .unwrap_or_default()
    }

    /// Looks early, `lag` after it ends, at the next hour of predictions
    /// whose labels so far are `samples`.
    fn look_early(&mut self, samples: &[Sample], lag: Duration) -> Option<Decision> {
        let start = self.now;
        self.now += HOUR;
        self.state.look_early(
            &self.policy,
            Window {
                start,
                end: self.now,
                judged_at: self.now + lag,
                samples,
                model_version: Some(self.version),
            },
        )
    }

    /// Judges the next hour of predictions `samples`, `delay` after it ends.
    fn judge(&mut self, samples: &[Sample], delay: Duration) -> Action {
        let start = self.now;
        self.now += HOUR;
        self.state
            .observe(
                &self.policy,
                Window {
                    start,
                    end: self.now,
                    judged_at: self.now + delay,
                    samples,
                    model_version: Some(self.version),
                },
            )
            .action
    }
}

#[test]
fn doubles_after_enough_good_windows_and_explains_it() {
    let mut r = Run::new(30 * MIN);
    r.settle();
    assert_eq!(r.window(0.91, 2000), Action::Held);
    assert_eq!(r.window(0.91, 2000), Action::Held);
    assert_eq!(r.window(0.91, 2000), Action::Doubled);
    assert_eq!(r.state.interval, 60 * MIN);
    assert_eq!(r.state.last_good, 30 * MIN);
    let reason = r.last_reason();
    assert!(
        reason.starts_with(
            "doubled 30 min → 60 min: AUC 0.910 ≥ 0.880 for 3 window(s); the metric by feature age predicts "
        ),
        "{reason}"
    );
    let predicted = r.state.history.last().and_then(|d| d.predicted);
    assert!(predicted.is_some_and(|p| p >= 0.88), "{predicted:?}");
}

#[test]
fn a_window_right_after_a_change_is_not_judged() {
    let mut r = Run::new(2 * HOUR);
    // The first windows mix rows of the old schedule.
    assert_eq!(r.window(0.5, 2000), Action::Settling);
    assert_eq!(r.state.interval, 2 * HOUR);
}

#[test]
fn a_bad_window_reverts_to_the_last_good_interval_then_cools_down() {
    let mut r = Run::new(30 * MIN);
    r.settle();
    for _ in 0..3 {
        r.window(0.91, 2000);
    }
    r.settle();
    assert_eq!(r.window(0.86, 2000), Action::Reverted);
    assert_eq!(r.state.interval, 30 * MIN);
    r.settle();
    assert_eq!(r.window(0.92, 2000), Action::CoolingDown);
    assert_eq!(r.window(0.92, 2000), Action::CoolingDown);
    // Cool-down over: the streak starts again, but the curve has learned
    // the oldest ages of 60 min below the threshold: no doubling into them.
    assert_eq!(r.window(0.92, 2000), Action::Held);
    assert_eq!(r.window(0.92, 2000), Action::Held);
    let third = r.window(0.92, 2000);
    assert!(
        matches!(third, Action::Held | Action::Lengthened),
        "{third:?}"
    );
    assert!(r.state.interval < 60 * MIN, "{}", r.last_reason());
    assert!(
        r.last_reason()
            .contains("the metric by feature age predicts"),
        "{}",
        r.last_reason()
    );
    assert!(r.state.history.iter().any(|d| {
        d.reason
            .starts_with("reverted 60 min → 30 min: AUC 0.860 < 0.880, 2.")
            && d.reason.ends_with("; cool-down 2 window(s)")
    }));
}

/// A window a little below the threshold, at ages where everything the
/// curve has learned is below it too, is not bad luck: it acts at once.
#[test]
fn a_window_below_at_ages_learned_below_acts_at_once() {
    let mut r = Run::new(60 * MIN);
    r.settle();
    assert_eq!(r.window(0.876, 2000), Action::Shortened);
    assert_eq!(r.state.interval, 30 * MIN);
    let reason = r.last_reason();
    assert!(
        reason.contains("0.5 standard error(s) below, and 0.8")
            && reason.ends_with("learned at these ages"),
        "{reason}"
    );
}

/// Windows a little below the threshold, within their sampling error, hold
/// the interval while windows above come between them; several in a row
/// shorten it, and one far below reverts at once.
#[test]
fn windows_within_their_sampling_error_need_more_evidence() {
    let mut r = Run::new(60 * MIN);
    r.settle();
    assert_eq!(r.window(0.9, 2000), Action::Held);
    assert_eq!(r.window(0.9, 2000), Action::Held);
    // 2,000 samples: a standard error of about 0.008. What the curve has
    // learned at these ages stays above the threshold.
    for _ in 0..10 {
        assert_eq!(r.window(0.876, 2000), Action::WithinError);
        assert_ne!(r.window(0.895, 2000), Action::Shortened);
    }
    assert_eq!(r.state.interval, 60 * MIN);
    let reason = r
        .state
        .history
        .iter()
        .rev()
        .find(|d| d.action == Action::WithinError)
        .map(|d| d.reason.clone())
        .unwrap_or_default();
    assert!(
        reason.starts_with("held at 60 min: AUC 0.876 < 0.880 by 0.5 standard error(s) (±0.00")
            && reason.contains("learned at these ages; evidence against 60 min 0."),
        "{reason}"
    );
    // Below, window after window: the evidence adds up.
    let mut below = 0;
    while r.window(0.872, 2000) == Action::WithinError {
        below += 1;
        assert!(below < 10, "never shortened");
    }
    assert_eq!(r.state.interval, 30 * MIN);
    assert!(
        below >= 1,
        "one window 1 standard error below decided alone"
    );
    let reason = r.last_reason();
    assert!(
        reason.starts_with("shortened 60 min → 30 min: AUC 0.872 < 0.880 at the last good interval, 1.0 standard error(s) below; evidence "),
        "{reason}"
    );
}

#[test]
fn a_bad_window_at_the_last_good_interval_shortens_down_to_the_minimum() {
    let mut r = Run::new(2 * HOUR);
    r.settle();
    assert_eq!(r.window(0.80, 2000), Action::Shortened);
    assert_eq!(r.state.interval, HOUR);
    r.settle();
    r.window(0.80, 2000);
    r.settle();
    r.window(0.80, 2000);
    r.settle();
    r.window(0.80, 2000);
    assert_eq!(r.state.interval, 15 * MIN, "bounded by min_interval");
    r.settle();
    assert_eq!(r.window(0.80, 2000), Action::Shortened);
    assert_eq!(r.state.interval, 15 * MIN);
    assert!(
        r.state
            .history
            .last()
            .is_some_and(|d| d.reason.contains("already at the minimum"))
    );
}

#[test]
fn never_doubles_past_the_maximum() {
    let mut r = Run::new(16 * HOUR);
    r.settle();
    for _ in 0..5 {
        assert_eq!(r.window(0.95, 2000), Action::Held);
    }
    assert_eq!(r.state.interval, 16 * HOUR);
    assert!(
        r.state
            .history
            .last()
            .is_some_and(|d| d.reason.contains("at the maximum interval"))
    );
    // A new job asking for more than the maximum is clamped.
    let clamped = JobState::new("j", 100 * HOUR, &policy(), SystemTime::now());
    assert_eq!(clamped.interval, 16 * HOUR);
}

#[test]
fn too_few_labels_make_no_decision() {
    let mut r = Run::new(30 * MIN);
    r.settle();
    assert_eq!(r.window(0.10, 99), Action::TooFewLabels);
    assert_eq!(r.state.interval, 30 * MIN);
    assert_eq!(r.state.good_streak, 0);
    let d = r
        .state
        .observe(
            &r.policy,
            Window {
                start: r.now,
                end: r.now + HOUR,
                judged_at: r.now + HOUR,
                samples: &[Sample {
                    score: 0.9,
                    outcome: 1.0,
                    age: Some(MIN),
                }; 1000],
                model_version: Some("1"),
            },
        )
        .action;
    assert_eq!(
        d,
        Action::TooFewLabels,
        "an undefined metric decides nothing"
    );
}

#[test]
fn a_pin_holds_the_interval_until_unpinned() {
    let mut r = Run::new(30 * MIN);
    let at = r.now;
    r.state.set_pin(
        Some(Pin {
            interval: 4 * HOUR,
            by: "dana@data".into(),
            at,
            reason: None,
        }),
        "dana@data",
        at,
    );
    assert_eq!(r.state.interval, 4 * HOUR);
    r.settle();
    assert_eq!(r.window(0.10, 2000), Action::Pinned);
    assert_eq!(r.window(0.99, 2000), Action::Pinned);
    assert_eq!(r.state.interval, 4 * HOUR);
    let now = r.now;
    r.state.set_pin(None, "dana@data", now);
    r.settle();
    // A pinned interval was never proven good: a bad window goes back to
    // the last interval that was.
    assert_eq!(r.window(0.80, 2000), Action::Reverted);
    assert_eq!(r.state.interval, 30 * MIN);
}

#[test]
fn repeated_failures_at_one_interval_back_off_the_next_attempt() {
    let mut r = Run::new(30 * MIN);
    let mut cooldowns = Vec::new();
    // Bad windows whose rows are all fresh: the failure is not the curve's
    // to learn, so each attempt is the same doubling.
    let bad = with_auc(0.85, 2000, MIN);
    for _ in 0..3 {
        r.settle();
        while r.window(0.91, 2000) != Action::Doubled {}
        r.settle();
        assert_eq!(r.judge(&bad, Duration::ZERO), Action::Reverted);
        cooldowns.push(r.state.cooldown_left);
    }
    assert_eq!(
        cooldowns,
        [2, 4, 8],
        "each failed attempt doubles the cool-down"
    );
    // The longer interval finally holds: the back-off resets.
    r.settle();
    while r.window(0.91, 2000) != Action::Doubled {}
    r.settle();
    while r.window(0.91, 2000) != Action::Doubled {}
    assert_eq!(r.state.failed_attempts, 0);
    assert_eq!(r.state.interval, 2 * HOUR);
}

#[test]
fn lower_is_better_metrics_compare_the_other_way() {
    let mut r = Run::new(30 * MIN);
    r.policy.metric = MetricKind::LogLoss;
    r.policy.threshold = 0.30;
    r.settle();
    r.window(0.20, 2000);
    r.window(0.20, 2000);
    assert_eq!(r.window(0.20, 2000), Action::Doubled);
    r.settle();
    assert_eq!(r.window(0.35, 2000), Action::Reverted);
    assert!(
        r.state
            .history
            .last()
            .is_some_and(|d| d.reason.contains("log-loss 0.350 > 0.300"))
    );
}

#[test]
fn state_survives_serialization() -> Result<(), serde_json::Error> {
    let mut r = Run::new(30 * MIN);
    r.settle();
    for _ in 0..4 {
        r.window(0.91, 2000);
    }
    let text = serde_json::to_string(&r.state)?;
    let back: JobState = serde_json::from_str(&text)?;
    assert_eq!(back, r.state);
    Ok(())
}

#[test]
fn a_bad_window_right_after_lengthening_reverts_at_once() {
    let mut r = Run::new(30 * MIN);
    r.settle();
    while r.window(0.91, 2000) != Action::Doubled {}
    // Not settled yet, but already worse: no waiting for the cycle to end.
    assert_eq!(r.window(0.85, 2000), Action::Reverted);
    assert_eq!(r.state.interval, 30 * MIN);
    // Right after the revert, rows of the longer interval are still served:
    // a bad window then is not blamed on the last good interval.
    assert_eq!(r.window(0.86, 2000), Action::Settling);
    assert_eq!(r.state.interval, 30 * MIN);
}

#[test]
fn doubling_waits_until_good_windows_span_a_whole_interval() {
    let mut r = Run::new(4 * HOUR);
    r.settle();
    for _ in 0..3 {
        assert_eq!(r.window(0.95, 2000), Action::Held);
    }
    assert!(
        r.state
            .history
            .last()
            .is_some_and(|d| d.reason.contains("do not yet span one 4 h cycle")),
        "{:?}",
        r.state.history.last()
    );
    assert_eq!(r.window(0.95, 2000), Action::Doubled);
}

/// A month of the base world (labels within 6 h, 600 an hour): the tuner
/// saves most of the runs of a 15-minute schedule, keeps 99 % of hours at
/// the threshold by the world's ground truth, and never lets more than two
/// breaching hours pass once a breach could be seen.
#[test]
fn a_simulated_month_meets_the_goals() {
    use super::sim::{SimConfig, fixed_runs, run};
    let config = SimConfig {
        duration: Duration::from_secs(28 * 86_400),
        labels_per_hour: 600,
        ..SimConfig::example()
    };
    let result = run(&config, None);
    let fewer = 1.0 - result.runs as f64 / fixed_runs(&config, 15 * MIN) as f64;
    assert!(fewer >= 0.8, "only {:.1} % fewer runs", fewer * 100.0);
    let share = result.share_meeting(&config.policy);
    assert!(
        share >= 0.99,
        "{:.2} % of hours met the threshold",
        share * 100.0
    );
    let worst = result.worst_breaches_once_observable(
        &config.policy,
        config.policy.label_delay,
        config.window,
    );
    assert!(
        worst <= 2,
        "{worst} breaching hours in a row once observable"
    );
}

/// A bad window judged a day late is blamed on the interval its
/// predictions were served at: here the one before the last doubling, so
/// the interval goes to half of that; later windows of that time are not
/// acted on twice.
#[test]
fn a_late_bad_window_is_blamed_on_the_interval_it_was_served_at() {
    let mut r = Run::new(2 * HOUR);
    r.policy.label_delay = 24 * HOUR;
    r.settle();
    let delay = 24 * HOUR;
    let good = with_auc(0.93, 2000, 2 * HOUR);
    while r.judge(&good, delay) != Action::Doubled {}
    assert_eq!(r.state.interval, 4 * HOUR);
    // Predictions made before the doubling (at 2 h), judged after it.
    let bad = with_auc(0.85, 2000, 2 * HOUR);
    assert_eq!(r.judge(&bad, delay), Action::Shortened);
    assert_eq!(r.state.interval, HOUR);
    let reason = r.last_reason();
    assert!(
        reason.contains("at 2 h, an interval believed good"),
        "{reason}"
    );
    // The next late window of that time: already acted on.
    assert_eq!(r.judge(&bad, delay), Action::AlreadyActed);
    assert_eq!(r.state.interval, HOUR);
}

/// A late window made before a doubling, a little below the threshold at
/// the interval believed good, is sampling error until others agree: held.
#[test]
fn a_late_window_within_its_error_does_not_shorten() {
    let mut r = Run::new(2 * HOUR);
    r.policy.label_delay = 24 * HOUR;
    r.settle();
    let delay = 24 * HOUR;
    let good = with_auc(0.93, 2000, 2 * HOUR);
    while r.judge(&good, delay) != Action::Doubled {}
    let low = with_auc(0.876, 2000, 2 * HOUR);
    assert_eq!(r.judge(&low, delay), Action::WithinError);
    assert_eq!(r.state.interval, 4 * HOUR);
}

/// After a doubling decided on late labels, windows made before the new
/// interval took full effect prove nothing: no second doubling until
/// windows made under it have matured.
#[test]
fn no_second_doubling_before_the_first_one_is_seen() {
    let mut r = Run::new(HOUR);
    let delay = 48 * HOUR;
    r.policy.label_delay = delay;
    r.settle();
    let good = with_auc(0.95, 2000, HOUR);
    while r.judge(&good, delay) != Action::Doubled {}
    let doubled_at = r.now + delay;
    // Two days of windows made before the change mature one by one.
    for _ in 0..48 {
        assert_eq!(r.judge(&good, delay), Action::Settling);
    }
    assert_eq!(r.state.interval, 2 * HOUR);
    // Windows made after the change took effect count again.
    r.now = r.now.max(doubled_at + 2 * HOUR);
    let later = with_auc(0.95, 2000, 2 * HOUR);
    assert_eq!(r.judge(&later, delay), Action::Held);
}

/// Predictions whose features were older than their interval allows (a
/// refresh failed) are judged as served, since callers got them, and the
/// decision says how many there were.
#[test]
fn predictions_served_with_stale_rows_count_and_are_reported() {
    let mut r = Run::new(2 * HOUR);
    r.settle();
    let mut samples = with_auc(0.92, 2000, 2 * HOUR);
    // A failed refresh: rows a day old, and the model nearly blind.
    samples.extend(with_auc(0.55, 2000, HOUR).into_iter().map(|s| Sample {
        age: Some(24 * HOUR),
        ..s
    }));
    assert_eq!(r.judge(&samples, Duration::ZERO), Action::Shortened);
    let last = r.state.history.last().cloned();
    assert!(
        last.as_ref().is_some_and(|d| d.stale == 2000
            && d.samples == 4000
            && d.reason
                .contains("2000 prediction(s) had features older than 2 h allows")),
        "{last:?}"
    );
}

/// Labels that stop arriving decide nothing, count windows for the alert,
/// and never double the interval.
#[test]
fn silence_never_doubles() {
    let mut r = Run::new(HOUR);
    r.settle();
    for n in 1..=100u32 {
        assert_eq!(r.judge(&[], Duration::ZERO), Action::TooFewLabels);
        assert_eq!(r.state.windows_without_labels, n);
    }
    assert_eq!(r.state.interval, HOUR);
    r.window(0.93, 2000);
    assert_eq!(r.state.windows_without_labels, 0);
}

/// A new model version: the curve is learned anew and the interval holds.
#[test]
fn a_model_change_relearns_the_curve_and_holds_the_interval() {
    let mut r = Run::new(HOUR);
    r.settle();
    r.window(0.93, 2000);
    r.window(0.93, 2000);
    assert!(!r.state.curve.buckets.is_empty());
    r.version = "2";
    assert_eq!(r.window(0.93, 2000), Action::ModelChanged);
    assert_eq!(r.state.interval, HOUR);
    assert_eq!(r.state.good_streak, 0);
    assert_eq!(r.state.model_version.as_deref(), Some("2"));
    let reason = r.last_reason();
    assert!(reason.starts_with("model version 1 → 2"), "{reason}");
}

/// Accuracy falls with feature age: the window holds at 2 h, but the curve
/// expects 4 h to miss the threshold, so the interval grows by less (or
/// not at all), and the record says the curve decided.
#[test]
fn the_curve_refuses_a_doubling_it_expects_to_miss() {
    let mut r = Run::new(2 * HOUR);
    r.policy.metric = MetricKind::Accuracy;
    r.policy.threshold = 0.90;
    r.settle();
    // At age a (of 2 h), accuracy 0.99 − 0.10·a/2h; the window's ≈ 0.94.
    let samples: Vec<Sample> = (0..4000)
        .map(|i| {
            let age = 2 * HOUR * (i % 40) / 40;
            let right = (i / 40) as f64 / 100.0 < 0.99 - 0.10 * age.as_secs_f64() / 7200.0;
            Sample {
                score: if right { 0.9 } else { 0.1 },
                outcome: 1.0,
                age: Some(age),
            }
        })
        .collect();
    let mut last = Action::Held;
    for _ in 0..6 {
        last = r.judge(&samples, Duration::ZERO);
        if last != Action::Held {
            break;
        }
    }
    let d = r.state.history.last().cloned();
    assert!(r.state.interval < 4 * HOUR, "{d:?}");
    assert!(
        matches!(last, Action::Held | Action::Lengthened),
        "{last:?}: {d:?}"
    );
    assert!(
        d.is_some_and(|d| d.basis == Basis::WindowAndCurve && d.predicted.is_some()),
        "the curve decided"
    );
}

/// Labels a week late: a doubling that fails is seen on the labels that
/// arrived within a day, and reverted then, not a week later; the matured
/// window of that time is not acted on twice.
#[test]
fn early_labels_revert_a_failing_doubling_before_the_window_matures() {
    let mut r = Run::new(HOUR);
    let delay = 7 * 24 * HOUR;
    r.policy.label_delay = delay;
    let lag = early_look_lag(&r.policy, HOUR).unwrap_or_default();
    assert_eq!(lag, 21 * HOUR);
    r.settle();
    let good = with_auc(0.95, 2000, HOUR);
    while r.judge(&good, delay) != Action::Doubled {}
    assert_eq!(r.state.interval, 2 * HOUR);
    // Predictions made once the doubling took effect.
    r.now = r.now.max(r.state.settled_at);
    let before = r.state.clone();
    let bad = with_auc(0.80, 500, 2 * HOUR);
    let decision = r.look_early(&bad, lag);
    let Some(d) = decision else {
        panic!(
            "no early decision on AUC 0.80: {:?}",
            r.state.early_evidence
        );
    };
    assert_eq!((d.action, d.basis), (Action::Reverted, Basis::EarlyLabels));
    assert_eq!(r.state.interval, HOUR);
    assert!(
        d.reason
            .contains("on the 500 label(s) arrived within 21 h of the window's end"),
        "{}",
        d.reason
    );
    assert_eq!(r.state.curve, before.curve, "an early look teaches nothing");
    // The same window, matured a week later: already acted on.
    r.now -= HOUR;
    let matured = with_auc(0.80, 2000, 2 * HOUR);
    assert_eq!(r.judge(&matured, delay), Action::AlreadyActed);
    assert_eq!(r.state.interval, HOUR);
}

/// An early look never lengthens the interval nor counts toward a
/// doubling, and one window a little below is noise until others agree.
#[test]
fn early_labels_only_ever_shorten() {
    let mut r = Run::new(2 * HOUR);
    let delay = 7 * 24 * HOUR;
    r.policy.label_delay = delay;
    r.settle();
    let lag = 21 * HOUR;
    let before = r.state.clone();
    for _ in 0..10 {
        assert!(r.look_early(&with_auc(0.95, 1000, 2 * HOUR), lag).is_none());
    }
    assert_eq!(r.state.good_streak, before.good_streak);
    assert_eq!(r.state.history, before.history);
    // 0.87 on 500 labels is about half a standard error below.
    assert!(r.look_early(&with_auc(0.87, 500, 2 * HOUR), lag).is_none());
    assert!(r.state.early_evidence.score > 0.0);
    assert_eq!(r.state.interval, 2 * HOUR);
    // Fewer labels than a decision needs: nothing, however low.
    assert!(r.look_early(&with_auc(0.70, 99, 2 * HOUR), lag).is_none());
    // Windows in a row below agree: the interval believed good is halved.
    let low = with_auc(0.86, 500, 2 * HOUR);
    let acted = (0..10).find_map(|_| r.look_early(&low, lag));
    assert_eq!(acted.map(|d| d.action), Some(Action::Shortened));
    assert_eq!(r.state.interval, HOUR);
}

/// Early looks are for AUC only (a mean over early labels weighs the class
/// whose labels come first more), and only where labels take longer than
/// a window.
#[test]
fn early_looks_are_taken_where_they_cannot_mislead() {
    let mut p = policy();
    p.label_delay = 30 * 24 * HOUR;
    assert_eq!(early_look_lag(&p, HOUR), Some(90 * HOUR));
    assert_eq!(early_look_lag(&p, 6 * HOUR), Some(90 * HOUR));
    p.label_delay = 6 * HOUR;
    assert_eq!(early_look_lag(&p, HOUR), Some(HOUR));
    p.label_delay = HOUR;
    assert_eq!(early_look_lag(&p, HOUR), None);
    p.label_delay = 7 * 24 * HOUR;
    p.metric = MetricKind::LogLoss;
    assert_eq!(early_look_lag(&p, HOUR), None);
}

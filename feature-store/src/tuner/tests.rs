//! Every controller transition.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::controller::{Action, JobState, Pin, Policy, Window};
use super::metric::MetricKind;

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
    }
}

/// Drives one job through hourly windows.
struct Run {
    state: JobState,
    policy: Policy,
    now: SystemTime,
}

impl Run {
    fn new(interval: Duration) -> Self {
        let policy = policy();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Run {
            state: JobState::new("profile_daily", interval, &policy, now),
            policy,
            now,
        }
    }

    /// Skips time so the next window is settled.
    fn settle(&mut self) {
        self.now = self.now.max(self.state.settled_at);
    }

    fn window(&mut self, metric: f64, samples: usize) -> Action {
        let start = self.now;
        self.now += HOUR;
        self.state
            .observe(
                &self.policy,
                Window {
                    start,
                    end: self.now,
                    metric: Some(metric),
                    samples,
                },
            )
            .action
    }
}

#[test]
fn doubles_after_enough_good_windows_and_explains_it() {
    let mut r = Run::new(30 * MIN);
    r.settle();
    assert_eq!(r.window(0.91, 500), Action::Held);
    assert_eq!(r.window(0.91, 500), Action::Held);
    assert_eq!(r.window(0.91, 500), Action::Doubled);
    assert_eq!(r.state.interval, 60 * MIN);
    assert_eq!(r.state.last_good, 30 * MIN);
    let reason = &r
        .state
        .history
        .last()
        .map(|d| d.reason.clone())
        .unwrap_or_default();
    assert_eq!(
        reason,
        "doubled 30 min → 60 min: AUC 0.910 ≥ 0.880 for 3 window(s)"
    );
}

#[test]
fn a_window_right_after_a_change_is_not_judged() {
    let mut r = Run::new(2 * HOUR);
    // The first windows mix rows of the old schedule.
    assert_eq!(r.window(0.5, 500), Action::Settling);
    assert_eq!(r.state.interval, 2 * HOUR);
}

#[test]
fn a_bad_window_reverts_to_the_last_good_interval_then_cools_down() {
    let mut r = Run::new(30 * MIN);
    r.settle();
    for _ in 0..3 {
        r.window(0.91, 500);
    }
    r.settle();
    assert_eq!(r.window(0.86, 500), Action::Reverted);
    assert_eq!(r.state.interval, 30 * MIN);
    r.settle();
    assert_eq!(r.window(0.92, 500), Action::CoolingDown);
    assert_eq!(r.window(0.92, 500), Action::CoolingDown);
    // Cool-down over: the streak starts again.
    assert_eq!(r.window(0.92, 500), Action::Held);
    assert_eq!(r.window(0.92, 500), Action::Held);
    assert_eq!(r.window(0.92, 500), Action::Doubled);
    assert!(
        r.state
            .history
            .iter()
            .any(|d| d.reason
                == "reverted 60 min → 30 min: AUC 0.860 < 0.880; cool-down 2 window(s)")
    );
}

#[test]
fn a_bad_window_at_the_last_good_interval_shortens_down_to_the_minimum() {
    let mut r = Run::new(2 * HOUR);
    r.settle();
    assert_eq!(r.window(0.80, 500), Action::Shortened);
    assert_eq!(r.state.interval, HOUR);
    r.settle();
    r.window(0.80, 500);
    r.settle();
    r.window(0.80, 500);
    r.settle();
    r.window(0.80, 500);
    assert_eq!(r.state.interval, 15 * MIN, "bounded by min_interval");
    r.settle();
    assert_eq!(r.window(0.80, 500), Action::Shortened);
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
        assert_eq!(r.window(0.95, 500), Action::Held);
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
                metric: None,
                samples: 1000,
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
    assert_eq!(r.window(0.10, 500), Action::Pinned);
    assert_eq!(r.window(0.99, 500), Action::Pinned);
    assert_eq!(r.state.interval, 4 * HOUR);
    let now = r.now;
    r.state.set_pin(None, "dana@data", now);
    r.settle();
    // A pinned interval was never proven good: a bad window goes back to
    // the last interval that was.
    assert_eq!(r.window(0.80, 500), Action::Reverted);
    assert_eq!(r.state.interval, 30 * MIN);
}

#[test]
fn repeated_failures_at_one_interval_back_off_the_next_attempt() {
    let mut r = Run::new(30 * MIN);
    let mut cooldowns = Vec::new();
    for _ in 0..3 {
        r.settle();
        while r.window(0.91, 500) != Action::Doubled {}
        r.settle();
        assert_eq!(r.window(0.85, 500), Action::Reverted);
        cooldowns.push(r.state.cooldown_left);
    }
    assert_eq!(
        cooldowns,
        [2, 4, 8],
        "each failed attempt doubles the cool-down"
    );
    // The longer interval finally holds: the back-off resets.
    r.settle();
    while r.window(0.91, 500) != Action::Doubled {}
    r.settle();
    while r.window(0.91, 500) != Action::Doubled {}
    assert_eq!(r.state.failed_attempts, 0);
    assert_eq!(r.state.interval, 2 * HOUR);
}

#[test]
fn lower_is_better_metrics_compare_the_other_way() {
    let mut r = Run::new(30 * MIN);
    r.policy.metric = MetricKind::LogLoss;
    r.policy.threshold = 0.30;
    r.settle();
    r.window(0.20, 500);
    r.window(0.20, 500);
    assert_eq!(r.window(0.20, 500), Action::Doubled);
    r.settle();
    assert_eq!(r.window(0.35, 500), Action::Reverted);
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
        r.window(0.91, 500);
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
    while r.window(0.91, 500) != Action::Doubled {}
    // Not settled yet, but already worse: no waiting for the cycle to end.
    assert_eq!(r.window(0.85, 500), Action::Reverted);
    assert_eq!(r.state.interval, 30 * MIN);
    // Right after the revert, rows of the longer interval are still served:
    // a bad window then is not blamed on the last good interval.
    assert_eq!(r.window(0.86, 500), Action::Settling);
    assert_eq!(r.state.interval, 30 * MIN);
}

#[test]
fn doubling_waits_until_good_windows_span_a_whole_interval() {
    let mut r = Run::new(4 * HOUR);
    r.settle();
    for _ in 0..3 {
        assert_eq!(r.window(0.95, 500), Action::Held);
    }
    assert!(
        r.state
            .history
            .last()
            .is_some_and(|d| d.reason.contains("do not yet span one 4 h cycle")),
        "{:?}",
        r.state.history.last()
    );
    assert_eq!(r.window(0.95, 500), Action::Doubled);
}

/// The deterministic world of the report (`benches/results/tuner_simulation.md`):
/// the tuner settles at 4 h (the bench shows it is the largest feasible
/// interval on the ladder), saves at least 80 % of the runs of a 15-minute
/// schedule, keeps 99 % of windows at the threshold, and reacts to a drift
/// rise within a few windows.
#[test]
fn the_simulated_world_meets_the_goals() {
    use super::sim::{SimConfig, run};
    let config = SimConfig::example();
    let result = run(&config, None);
    let change = Duration::from_secs(5 * 7 * 86_400);
    let week = Duration::from_secs(7 * 86_400);
    assert_eq!(result.dominant_interval(week, change), Some(4 * HOUR));
    let fewer = 1.0 - result.tuned_runs as f64 / result.fixed_runs as f64;
    assert!(fewer >= 0.8, "only {:.1} % fewer runs", fewer * 100.0);
    let share = result.share_meeting(&config.policy);
    assert!(
        share >= 0.99,
        "{:.2} % of windows met the threshold",
        share * 100.0
    );
    let reaction = result
        .windows
        .iter()
        .filter(|w| w.end > change)
        .position(|w| matches!(w.decision.action, Action::Reverted | Action::Shortened));
    assert!(
        reaction.is_some_and(|n| n < 6),
        "reacted after {reaction:?} windows"
    );
    assert!(result.state.interval < 4 * HOUR);
}

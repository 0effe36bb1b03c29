//! A seeded synthetic world to run the controller against for months: a
//! binary model whose scores lose their signal as the static features age,
//! at a drift rate that can rise, fall and follow a weekly cycle; labels
//! that arrive hours to weeks after the prediction (or stop arriving);
//! refresh runs that take time and sometimes fail (retried early, as the
//! scheduler does); a model version change.
//!
//! Per prediction with feature age `a` (hours) and drift rate `λ(t)`, the
//! label is positive with probability `positive_rate` and the score is
//! `sigmoid(β·e^(−λ(t)·a)·(2y−1) + ε)`, ε ~ N(0, 1). Fresh features give
//! AUC `Φ(√2·β)`. Every hour is also judged by the world's ground truth:
//! the exact AUC of that hour's predictions in expectation (its feature
//! ages sampled every 5 minutes), whether or not any label ever arrives.
//! Everything comes from seeded generators, so a run is reproducible bit
//! for bit.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::controller::{Action, Decision, JobState, Policy, Window, early_look_lag};
use super::metric::{MetricKind, Sample};
use crate::runs::wait_after;

const HOUR: Duration = Duration::from_secs(3600);
/// Ground truth and refresh timing are resolved to this step.
const STEP: Duration = Duration::from_secs(300);
/// Steps per hour.
const STEPS: usize = 12;

/// How the drift rate moves over time (a factor on the base rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Drift {
    /// Constant.
    Steady,
    /// `factor` times faster during `[from, to)`.
    RiseAndFall {
        /// Start of the rise.
        from: Duration,
        /// Its end.
        to: Duration,
        /// The factor meanwhile.
        factor: f64,
    },
    /// `factor` times faster on the last two days of every week.
    Weekends {
        /// The factor at weekends.
        factor: f64,
    },
}

impl Drift {
    fn factor(self, t: Duration) -> f64 {
        match self {
            Drift::Steady => 1.0,
            Drift::RiseAndFall { from, to, factor } => {
                if t >= from && t < to {
                    factor
                } else {
                    1.0
                }
            }
            Drift::Weekends { factor } => {
                if t.as_secs() % (7 * 86_400) >= 5 * 86_400 {
                    factor
                } else {
                    1.0
                }
            }
        }
    }
}

/// A new model version from `at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelChange {
    /// When it starts serving.
    pub at: Duration,
    /// Its signal β.
    pub signal: f64,
    /// Its sensitivity to drift (a factor on the drift rate).
    pub drift_factor: f64,
}

/// The world and the run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Generator seed.
    pub seed: u64,
    /// Simulated length.
    pub duration: Duration,
    /// Labelled predictions per hour (before any is lost).
    pub labels_per_hour: usize,
    /// Share of positive labels.
    pub positive_rate: f64,
    /// Signal strength β of fresh features.
    pub signal: f64,
    /// Base drift rate λ per hour of feature age.
    pub drift_per_hour: f64,
    /// How the drift rate moves.
    pub drift: Drift,
    /// Label delays are log-uniform between these (the shortest may be 0:
    /// then uniform up to the longest).
    pub label_delay: (Duration, Duration),
    /// No label arrives during `[from, to)` (the feedback feed is down;
    /// those labels are lost).
    pub label_outage: Option<(Duration, Duration)>,
    /// Share of refresh runs that fail (the old rows stay).
    pub refresh_failure: f64,
    /// How long a run takes before its rows are served (their age counts
    /// from the run's start).
    pub refresh_time: Duration,
    /// A model version change.
    pub model_change: Option<ModelChange>,
    /// The job's first interval.
    pub start_interval: Duration,
    /// The controller's policy (its `window` and `label_delay` included).
    pub policy: Policy,
    /// The evaluation window.
    pub window: Duration,
}

impl SimConfig {
    /// The base world: fresh AUC ≈ 0.95, threshold 0.88, drift 0.05 per
    /// hour, labels within 6 h, 1,000 an hour, the fast policy (15 min …
    /// 24 h, 6 good windows), 26 weeks.
    pub fn example() -> Self {
        SimConfig {
            seed: 7,
            duration: Duration::from_secs(26 * 7 * 86_400),
            labels_per_hour: 1000,
            positive_rate: 0.3,
            signal: 1.163,
            drift_per_hour: 0.05,
            drift: Drift::Steady,
            label_delay: (Duration::ZERO, 6 * HOUR),
            label_outage: None,
            refresh_failure: 0.0,
            refresh_time: Duration::ZERO,
            model_change: None,
            start_interval: Duration::from_secs(15 * 60),
            policy: Policy {
                metric: MetricKind::Auc,
                threshold: 0.88,
                min_interval: Duration::from_secs(15 * 60),
                max_interval: 24 * HOUR,
                good_windows: 6,
                cooldown_windows: 24,
                min_samples: 500,
                label_delay: 6 * HOUR,
            },
            window: HOUR,
        }
    }
}

/// One hour of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct HourRecord {
    /// The hour's end, from the start of the run.
    pub end: Duration,
    /// The interval in force at the hour's end.
    pub interval: Duration,
    /// The world's AUC of the hour's predictions.
    pub truth: f64,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct SimResult {
    /// Every hour, by ground truth.
    pub hours: Vec<HourRecord>,
    /// Every judged window's decision (tuned runs).
    pub decisions: Vec<Decision>,
    /// Refresh runs started (failed ones included).
    pub runs: u64,
    /// The controller's state at the end.
    pub state: JobState,
}

impl SimResult {
    /// Share of hours whose ground truth met the threshold.
    pub fn share_meeting(&self, policy: &Policy) -> f64 {
        if self.hours.is_empty() {
            return 0.0;
        }
        let good = self
            .hours
            .iter()
            .filter(|h| policy.metric.meets(h.truth, policy.threshold))
            .count();
        good as f64 / self.hours.len() as f64
    }

    /// The longest run of breaching hours after the run's first breach
    /// could have been seen: its labels matured (`label_delay`) and the
    /// next window was judged (`window`).
    pub fn worst_breaches_once_observable(
        &self,
        policy: &Policy,
        label_delay: Duration,
        window: Duration,
    ) -> usize {
        let mut worst = 0;
        let mut i = 0;
        while i < self.hours.len() {
            if policy.metric.meets(self.hours[i].truth, policy.threshold) {
                i += 1;
                continue;
            }
            let seen_at = self.hours[i].end + label_delay + window;
            let mut j = i;
            let mut after = 0;
            while j < self.hours.len()
                && !policy.metric.meets(self.hours[j].truth, policy.threshold)
            {
                if self.hours[j].end > seen_at {
                    after += 1;
                }
                j += 1;
            }
            worst = worst.max(after);
            i = j;
        }
        worst
    }
}

/// splitmix64: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Φ, the standard normal CDF (Abramowitz–Stegun 7.1.26 on erf; error
/// below 1.5e-7, far under the differences the reports show).
fn phi(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// The refresh job as the world runs it.
struct Refreshes {
    /// When the rows being served were taken.
    snapshot: Duration,
    /// A run in progress: (its start, when its rows are served).
    running: Option<(Duration, Duration)>,
    /// When the next run starts.
    next: Duration,
    /// The last run's start.
    last_start: Duration,
    /// Runs failed in a row (the scheduler retries them early).
    failures: u32,
    runs: u64,
    rng: Rng,
}

impl Refreshes {
    fn new(seed: u64, interval: Duration) -> Self {
        Refreshes {
            snapshot: Duration::ZERO,
            running: None,
            next: interval,
            last_start: Duration::ZERO,
            failures: 0,
            runs: 1, // the load at t = 0
            rng: Rng(seed ^ 0xA5A5_5A5A_F00D_BEEF),
        }
    }

    /// Advances to `t` under `interval`; the age of the rows served at `t`.
    fn age_at(&mut self, t: Duration, interval: Duration, config: &SimConfig) -> Duration {
        loop {
            if let Some((start, ready)) = self.running
                && ready <= t
            {
                self.snapshot = start;
                self.running = None;
            }
            if self.next > t {
                break;
            }
            let start = self.next;
            self.next = start + interval;
            if self.running.is_some() {
                // The job's lease is held by the run still going: this
                // slot is not taken.
                continue;
            }
            self.runs += 1;
            self.last_start = start;
            if self.rng.uniform() >= config.refresh_failure {
                self.running = Some((start, start + config.refresh_time));
                self.failures = 0;
            } else {
                // As the scheduler does: try again before the next slot.
                self.failures += 1;
                self.next = start + wait_after(interval, self.failures);
            }
        }
        t.saturating_sub(self.snapshot)
    }

    /// The interval changed at `t`: the next run is one new interval (or
    /// retry delay) after the last start, or now when that is past.
    fn replan(&mut self, t: Duration, interval: Duration) {
        self.next = (self.last_start + wait_after(interval, self.failures)).max(t);
    }
}

struct World<'a> {
    config: &'a SimConfig,
}

impl World<'_> {
    /// (signal, drift rate per hour) at `t`.
    fn model_at(&self, t: Duration) -> (f64, f64, &'static str) {
        let c = self.config;
        let base = c.drift_per_hour * c.drift.factor(t);
        match c.model_change {
            Some(m) if t >= m.at => (m.signal, base * m.drift_factor, "2"),
            _ => (c.signal, base, "1"),
        }
    }

    fn quality(&self, t: Duration, age: Duration) -> f64 {
        let (signal, drift, _) = self.model_at(t);
        signal * (-drift * age.as_secs_f64() / 3600.0).exp()
    }

    fn delay(&self, rng: &mut Rng) -> Duration {
        let (lo, hi) = self.config.label_delay;
        let u = rng.uniform();
        if lo.is_zero() {
            hi.mul_f64(u)
        } else {
            let (a, b) = (lo.as_secs_f64().ln(), hi.as_secs_f64().ln());
            Duration::from_secs_f64((a + (b - a) * u).exp())
        }
    }
}

/// A prediction waiting for its label, and when the label arrives.
struct Pending {
    sample: Sample,
    made: Duration,
    arrives: Duration,
}

/// Runs the world for `config.duration`. With `fixed`, the interval never
/// changes and no labels are drawn (a baseline or a feasibility check,
/// judged by ground truth only).
pub fn run(config: &SimConfig, fixed: Option<Duration>) -> SimResult {
    let epoch = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let at = |d: Duration| -> SystemTime { epoch + d };
    let world = World { config };
    let mut rng = Rng(config.seed);
    let start_interval = fixed.unwrap_or(config.start_interval);
    let mut state = JobState::new("simulated_job", start_interval, &config.policy, epoch);
    let mut refreshes = Refreshes::new(config.seed, start_interval);
    let window = config.window.max(HOUR);
    let delay = config.policy.label_delay;
    let early_lag = early_look_lag(&config.policy, window);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut hours = Vec::new();
    let mut decisions = Vec::new();
    let mut judged_until = Duration::ZERO;
    let mut t = Duration::ZERO;
    while t + HOUR <= config.duration {
        let mut q = [0.0f64; STEPS];
        for (k, qk) in q.iter_mut().enumerate() {
            let now = t + STEP * k as u32 + STEP / 2;
            let age = refreshes.age_at(now, state.interval, config);
            *qk = world.quality(now, age);
            if fixed.is_some() {
                continue;
            }
            // The hour's labels spread over its steps, none lost to rounding.
            let per_step =
                config.labels_per_hour * (k + 1) / STEPS - config.labels_per_hour * k / STEPS;
            for _ in 0..per_step {
                let y = rng.uniform() < config.positive_rate;
                let z = if y { *qk } else { -*qk } + rng.normal();
                let arrives = now + world.delay(&mut rng);
                let lost = config
                    .label_outage
                    .is_some_and(|(from, to)| arrives >= from && arrives < to);
                if lost {
                    continue;
                }
                pending.push_back(Pending {
                    sample: Sample {
                        score: 1.0 / (1.0 + (-z).exp()),
                        outcome: f64::from(u8::from(y)),
                        age: Some(age),
                    },
                    made: now,
                    arrives,
                });
            }
        }
        // Ground truth: a positive and a negative of this hour, from any
        // two of its steps, are ordered right with Φ((q_i + q_j)/√2).
        let mut sum = 0.0;
        for qi in &q {
            for qj in &q {
                sum += phi((qi + qj) / std::f64::consts::SQRT_2);
            }
        }
        let end = t + HOUR;
        hours.push(HourRecord {
            end,
            interval: state.interval,
            truth: sum / (STEPS * STEPS) as f64,
        });
        t = end;
        if fixed.is_some() || !(t.as_secs()).is_multiple_of(window.as_secs()) {
            continue;
        }
        // The window starting at `from`, judged now.
        let window_of =
            |from: Duration| (at(from), at(from + window), at(t), world.model_at(from).2);
        // Judge every window whose labels have matured by now.
        while judged_until + window + delay <= t {
            let (from, to) = (judged_until, judged_until + window);
            let mut samples = Vec::new();
            while pending.front().is_some_and(|p| p.made < to) {
                if let Some(p) = pending.pop_front()
                    && p.made >= from
                    && p.arrives <= t
                {
                    samples.push(p.sample);
                }
            }
            let before = state.interval;
            let decision = state.observe(&config.policy, judged(window_of(from), &samples));
            if state.interval != before {
                refreshes.replan(t, state.interval);
            }
            decisions.push(decision);
            judged_until = to;
        }
        // The early look at the window `lag` before now, on the labels
        // that have arrived.
        if let Some(lag) = early_lag
            && let Some(to) = t.checked_sub(lag)
            && let Some(from) = to.checked_sub(window)
            && to > judged_until
        {
            let samples: Vec<Sample> = pending
                .iter()
                .rev()
                .skip_while(|p| p.made >= to)
                .take_while(|p| p.made >= from)
                .filter(|p| p.arrives <= t)
                .map(|p| p.sample)
                .collect();
            let before = state.interval;
            let looked = state.look_early(&config.policy, judged(window_of(from), &samples));
            if state.interval != before {
                refreshes.replan(t, state.interval);
            }
            decisions.extend(looked);
        }
    }
    SimResult {
        hours,
        decisions,
        runs: refreshes.runs,
        state,
    }
}

/// A window (start, end, judged at, model version) with its samples.
fn judged<'a>(
    (start, end, judged_at, version): (SystemTime, SystemTime, SystemTime, &'static str),
    samples: &'a [Sample],
) -> Window<'a> {
    Window {
        start,
        end,
        judged_at,
        samples,
        model_version: Some(version),
    }
}

/// The refresh runs of a fixed schedule at `interval` over the run.
pub fn fixed_runs(config: &SimConfig, interval: Duration) -> u64 {
    config.duration.as_secs() / interval.as_secs().max(1) + 1
}

/// Whether a fixed schedule at `interval` keeps `target` of the hours at or
/// above the threshold in this world (failures included).
pub fn feasible(config: &SimConfig, interval: Duration, target: f64) -> bool {
    run(config, Some(interval)).share_meeting(&config.policy) >= target
}

/// The largest fixed interval (a multiple of `grain`, up to the policy's
/// maximum) that keeps `target` of the hours at or above the threshold, by
/// bisection (longer intervals only serve older rows).
pub fn best_fixed(config: &SimConfig, grain: Duration, target: f64) -> Option<Duration> {
    let steps = (config.policy.max_interval.as_secs() / grain.as_secs().max(1)) as u32;
    if steps == 0 || !feasible(config, grain, target) {
        return None;
    }
    let (mut good, mut bad) = (1u32, steps + 1);
    if feasible(config, grain * steps, target) {
        return Some(grain * steps);
    }
    while bad - good > 1 {
        let mid = u32::midpoint(good, bad);
        if feasible(config, grain * mid, target) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(grain * good)
}

/// The largest interval on the controller's doubling ladder (from
/// `min_interval`) that keeps `target` of the hours at the threshold.
pub fn best_on_ladder(config: &SimConfig, target: f64) -> Option<Duration> {
    let mut best = None;
    let mut interval = config.policy.min_interval;
    while interval <= config.policy.max_interval {
        if feasible(config, interval, target) {
            best = Some(interval);
        }
        interval *= 2;
    }
    best
}

/// The run as an SVG (see [`super::plot`]): the interval in force and the
/// ground-truth metric per hour, the threshold dashed.
pub fn svg(config: &SimConfig, result: &SimResult, title: &str) -> String {
    use super::plot::{Plot, PlotPoint, svg, ticks};
    let points: Vec<PlotPoint> = result
        .hours
        .iter()
        .map(|h| PlotPoint {
            at: h.end,
            interval: h.interval,
            metric: Some(h.truth),
        })
        .collect();
    let marker = match (config.model_change, config.drift, config.label_outage) {
        (Some(m), _, _) => Some((m.at, "model v2".to_owned())),
        (_, Drift::RiseAndFall { from, factor, .. }, _) => Some((from, format!("drift ×{factor}"))),
        (_, _, Some((from, _))) => Some((from, "labels stop".to_owned())),
        _ => None,
    };
    svg(&Plot {
        metric_name: config.policy.metric.name(),
        threshold: config.policy.threshold,
        interval_range: (config.policy.min_interval, config.policy.max_interval),
        metric_range: (0.75, 1.0),
        span: config.duration,
        points: &points,
        x_ticks: ticks(config.duration, Duration::from_secs(28 * 86_400), |t| {
            format!("day {}", t.as_secs() / 86_400)
        }),
        marker,
        subtitle: format!("{title} (seed {}, ground truth per hour)", config.seed),
    })
}

/// Decisions that changed the interval, for reports.
pub fn changes(result: &SimResult) -> impl Iterator<Item = &Decision> {
    result.decisions.iter().filter(|d| {
        d.from != d.to
            || matches!(
                d.action,
                Action::Reverted | Action::Shortened | Action::ModelChanged
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short() -> SimConfig {
        SimConfig {
            duration: Duration::from_secs(4 * 86_400),
            labels_per_hour: 600,
            ..SimConfig::example()
        }
    }

    #[test]
    fn a_run_is_reproducible() {
        let a = run(&short(), None);
        let b = run(&short(), None);
        assert_eq!(a.hours, b.hours);
        assert_eq!(a.decisions, b.decisions);
        assert_eq!(a.runs, b.runs);
    }

    #[test]
    fn ground_truth_gives_the_configured_auc_and_it_decays_with_age() {
        let c = short();
        let world = World { config: &c };
        let fresh = phi(2.0 * world.quality(Duration::ZERO, Duration::ZERO) / 2f64.sqrt());
        let old = phi(2.0 * world.quality(Duration::ZERO, 12 * HOUR) / 2f64.sqrt());
        assert!((fresh - 0.95).abs() < 0.01, "fresh AUC {fresh}");
        assert!(old < 0.88, "12 h old AUC {old}");
        assert!((phi(0.0) - 0.5).abs() < 1e-9 && (phi(1.96) - 0.975).abs() < 1e-4);
    }

    #[test]
    fn sampled_labels_agree_with_the_ground_truth() {
        let c = SimConfig {
            labels_per_hour: 12_000,
            label_delay: (Duration::ZERO, Duration::ZERO),
            ..short()
        };
        let r = run(&c, None);
        // Windows judged on sampled labels against the hour's truth.
        for (d, h) in r.decisions.iter().zip(&r.hours).take(24) {
            let (Some(m), truth) = (d.metric, h.truth) else {
                continue;
            };
            assert!((m - truth).abs() < 0.02, "sampled {m} vs truth {truth}");
        }
    }

    #[test]
    fn failed_refreshes_serve_older_rows() {
        let ok = run(&short(), Some(4 * HOUR)).share_meeting(&short().policy);
        let failing = SimConfig {
            refresh_failure: 0.5,
            ..short()
        };
        let bad = run(&failing, Some(4 * HOUR)).share_meeting(&failing.policy);
        assert!(bad < ok, "{bad} vs {ok}");
    }
}

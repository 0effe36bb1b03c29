//! A deterministic synthetic world to run the controller against: a binary
//! model whose scores lose their signal as the static features age (the
//! features drift at a configurable rate), labelled predictions arriving at
//! a steady rate, and a refresh job run at the controller's interval.
//!
//! Per prediction with feature age `a` (hours) and drift rate `λ` per hour,
//! the label is positive with probability `positive_rate` and the score is
//! `sigmoid(β·e^(−λa)·(2y−1) + ε)`, ε ~ N(0, 1): fresh features give AUC
//! `Φ(√2·β)`, and the AUC decays towards 0.5 as features age. Everything
//! comes from one seeded generator, so a run is reproducible bit for bit.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::controller::{Action, Decision, JobState, Policy, Window};
use super::metric::{MetricKind, Sample};

/// The world and the run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Generator seed.
    pub seed: u64,
    /// Simulated length.
    pub duration: Duration,
    /// Evaluation window.
    pub window: Duration,
    /// Labelled predictions per window.
    pub predictions_per_window: usize,
    /// Share of positive labels.
    pub positive_rate: f64,
    /// Signal strength β of fresh features.
    pub signal: f64,
    /// Drift rate λ per hour of feature age.
    pub drift_per_hour: f64,
    /// From this time on, the drift rate is multiplied by `drift_factor`.
    pub drift_change_at: Option<Duration>,
    /// The factor of the drift change.
    pub drift_factor: f64,
    /// The job's first interval.
    pub start_interval: Duration,
    /// The controller's policy.
    pub policy: Policy,
}

impl SimConfig {
    /// The example world of the report: fresh AUC ≈ 0.95, AUC threshold 0.88,
    /// drift 0.05 per hour, four times faster after five weeks, six weeks.
    pub fn example() -> Self {
        SimConfig {
            seed: 7,
            duration: Duration::from_secs(6 * 7 * 86_400),
            window: Duration::from_secs(3600),
            predictions_per_window: 2000,
            positive_rate: 0.3,
            signal: 1.163,
            drift_per_hour: 0.05,
            drift_change_at: Some(Duration::from_secs(5 * 7 * 86_400)),
            drift_factor: 4.0,
            start_interval: Duration::from_secs(15 * 60),
            policy: Policy {
                metric: MetricKind::Auc,
                threshold: 0.88,
                min_interval: Duration::from_secs(15 * 60),
                max_interval: Duration::from_secs(24 * 3600),
                good_windows: 6,
                cooldown_windows: 24,
                min_samples: 500,
            },
        }
    }
}

/// One window of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRecord {
    /// Window end, from the start of the run.
    pub end: Duration,
    /// The interval in force during the window.
    pub interval: Duration,
    /// The window's metric.
    pub metric: Option<f64>,
    /// The decision on it.
    pub decision: Decision,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct SimResult {
    /// Every window.
    pub windows: Vec<WindowRecord>,
    /// Refresh runs made by the tuned schedule.
    pub tuned_runs: u64,
    /// Refresh runs a fixed 15-minute schedule would make.
    pub fixed_runs: u64,
    /// The controller's state at the end.
    pub state: JobState,
}

impl SimResult {
    /// Share of judged windows whose metric met the threshold.
    pub fn share_meeting(&self, policy: &Policy) -> f64 {
        let judged: Vec<f64> = self.windows.iter().filter_map(|w| w.metric).collect();
        if judged.is_empty() {
            return 0.0;
        }
        judged
            .iter()
            .filter(|m| policy.metric.meets(**m, policy.threshold))
            .count() as f64
            / judged.len() as f64
    }

    /// The interval in force for most of `[from, to)`.
    pub fn dominant_interval(&self, from: Duration, to: Duration) -> Option<Duration> {
        let mut counts: Vec<(Duration, usize)> = Vec::new();
        for w in self.windows.iter().filter(|w| w.end > from && w.end <= to) {
            match counts.iter_mut().find(|(i, _)| *i == w.interval) {
                Some((_, n)) => *n += 1,
                None => counts.push((w.interval, 1)),
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(i, _)| i)
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

/// The world's generator of labelled predictions.
struct World<'a> {
    config: &'a SimConfig,
    rng: Rng,
}

impl World<'_> {
    fn drift_at(&self, t: Duration) -> f64 {
        match self.config.drift_change_at {
            Some(at) if t >= at => self.config.drift_per_hour * self.config.drift_factor,
            _ => self.config.drift_per_hour,
        }
    }

    fn sample(&mut self, t: Duration, age: Duration) -> Sample {
        let y = self.rng.uniform() < self.config.positive_rate;
        let quality = (-self.drift_at(t) * age.as_secs_f64() / 3600.0).exp();
        let sign = if y { 1.0 } else { -1.0 };
        let z = self.config.signal * quality * sign + self.rng.normal();
        Sample {
            score: 1.0 / (1.0 + (-z).exp()),
            outcome: if y { 1.0 } else { 0.0 },
            age: Some(age),
        }
    }
}

/// Runs the controller against the world. With `fixed`, the interval never
/// changes (a baseline or a feasibility check).
pub fn run(config: &SimConfig, fixed: Option<Duration>) -> SimResult {
    let epoch = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let at = |d: Duration| -> SystemTime { epoch + d };
    let mut world = World {
        config,
        rng: Rng(config.seed),
    };
    let start_interval = fixed.unwrap_or(config.start_interval);
    let mut state = JobState::new("simulated_job", start_interval, &config.policy, epoch);
    let window = config.window.max(Duration::from_secs(1));
    let n = config.predictions_per_window.max(1);
    let mut last_refresh = Duration::ZERO;
    let mut next_refresh = state.interval;
    let mut tuned_runs = 1; // the load at t = 0
    let mut windows = Vec::new();
    let mut start = Duration::ZERO;
    while start + window <= config.duration {
        let interval = state.interval;
        let mut samples = Vec::with_capacity(n);
        for k in 0..n {
            let t = start + window.mul_f64((k as f64 + 0.5) / n as f64);
            while next_refresh <= t {
                last_refresh = next_refresh;
                tuned_runs += 1;
                next_refresh = last_refresh + state.interval;
            }
            samples.push(world.sample(t, t - last_refresh));
        }
        let end = start + window;
        let metric = config.policy.metric.compute(&samples);
        let decision = if fixed.is_some() {
            Decision {
                at: at(end),
                action: Action::Held,
                from: interval,
                to: interval,
                metric,
                samples: samples.len(),
                reason: "fixed schedule".to_owned(),
            }
        } else {
            state.observe(
                &config.policy,
                Window {
                    start: at(start),
                    end: at(end),
                    metric,
                    samples: samples.len(),
                },
            )
        };
        if state.interval != interval {
            // The scheduler re-plans the next run at the new interval; one
            // already overdue runs at once.
            next_refresh = (last_refresh + state.interval).max(end);
        }
        windows.push(WindowRecord {
            end,
            interval,
            metric,
            decision,
        });
        start = end;
    }
    let fixed_runs = config.duration.as_secs() / (15 * 60) + 1;
    SimResult {
        windows,
        tuned_runs,
        fixed_runs,
        state,
    }
}

/// The largest interval on the controller's doubling ladder (from
/// `min_interval`) whose fixed schedule keeps every window of `[from, to)`
/// at or above the threshold, found by running the world with each.
pub fn largest_feasible(config: &SimConfig, from: Duration, to: Duration) -> Option<Duration> {
    let mut best = None;
    let mut interval = config.policy.min_interval;
    while interval <= config.policy.max_interval {
        let result = run(config, Some(interval));
        let ok = result
            .windows
            .iter()
            .filter(|w| w.end > from && w.end <= to)
            .filter_map(|w| w.metric)
            .all(|m| config.policy.metric.meets(m, config.policy.threshold));
        if ok {
            best = Some(interval);
        }
        interval *= 2;
    }
    best
}

/// The run as an SVG (see [`super::plot`]): interval and metric per
/// window, the threshold dashed, the drift change marked.
pub fn svg(config: &SimConfig, result: &SimResult) -> String {
    use super::plot::{Plot, PlotPoint, svg, ticks};
    let points: Vec<PlotPoint> = result
        .windows
        .iter()
        .map(|w| PlotPoint {
            at: w.end,
            interval: w.interval,
            metric: w.metric,
        })
        .collect();
    svg(&Plot {
        metric_name: config.policy.metric.name(),
        threshold: config.policy.threshold,
        interval_range: (config.policy.min_interval, config.policy.max_interval),
        metric_range: (0.75, 1.0),
        span: config.duration,
        points: &points,
        x_ticks: ticks(config.duration, Duration::from_secs(7 * 86_400), |t| {
            format!("day {}", t.as_secs() / 86_400)
        }),
        marker: config
            .drift_change_at
            .map(|at| (at, format!("drift ×{}", config.drift_factor))),
        subtitle: format!(
            "simulation: {} days, seed {}",
            config.duration.as_secs() / 86_400,
            config.seed
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short() -> SimConfig {
        SimConfig {
            duration: Duration::from_secs(3 * 86_400),
            predictions_per_window: 600,
            drift_change_at: None,
            ..SimConfig::example()
        }
    }

    #[test]
    fn a_run_is_reproducible() {
        let a = run(&short(), None);
        let b = run(&short(), None);
        assert_eq!(a.windows, b.windows);
        assert_eq!(a.tuned_runs, b.tuned_runs);
    }

    #[test]
    fn fresh_features_give_the_configured_auc_and_it_decays_with_age() {
        let c = short();
        let mut world = World {
            config: &c,
            rng: Rng(1),
        };
        let fresh: Vec<Sample> = (0..20_000)
            .map(|_| world.sample(Duration::ZERO, Duration::ZERO))
            .collect();
        let old: Vec<Sample> = (0..20_000)
            .map(|_| world.sample(Duration::ZERO, Duration::from_secs(12 * 3600)))
            .collect();
        let fresh_auc = MetricKind::Auc.compute(&fresh).unwrap_or(0.0);
        let old_auc = MetricKind::Auc.compute(&old).unwrap_or(1.0);
        assert!((fresh_auc - 0.95).abs() < 0.01, "fresh AUC {fresh_auc}");
        assert!(old_auc < 0.88, "12 h old AUC {old_auc}");
    }
}

//! How a refresh job is tuned, as declared in `[refresh_job.tuner]`: the
//! metric, which logged predictions count and the controller's policy. The
//! tuner computes and acts on these; the definitions only declare them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The metric a job is tuned against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Area under the ROC curve of the positive label's score (binary).
    Auc,
    /// Share of decisions equal to the outcome (score ≥ 0.5 = positive).
    Accuracy,
    /// Mean negative log-likelihood of the outcome (binary), lower is better.
    LogLoss,
    /// Mean absolute error of a numeric output, lower is better.
    Mae,
}

impl MetricKind {
    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, MetricKind::Auc | MetricKind::Accuracy)
    }

    /// The name shown in reports.
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Auc => "AUC",
            MetricKind::Accuracy => "accuracy",
            MetricKind::LogLoss => "log-loss",
            MetricKind::Mae => "MAE",
        }
    }

    /// Whether `value` meets `threshold` in this metric's direction.
    pub fn meets(self, value: f64, threshold: f64) -> bool {
        if self.higher_is_better() {
            value >= threshold
        } else {
            value <= threshold
        }
    }
}

/// Which output of a logged prediction is scored, and how outcomes map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scoring {
    /// The model whose predictions count.
    pub model: String,
    /// The output holding the decision (e.g. `probabilities`).
    pub output: String,
    /// For binary metrics: the positive label (its score is the score, its
    /// outcome is 1).
    pub positive_label: Option<String>,
}

/// How a job is tuned (from the tuner config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The metric.
    pub metric: MetricKind,
    /// The acceptable value (minimum for AUC/accuracy, maximum for
    /// log-loss/MAE).
    pub threshold: f64,
    /// Shortest interval.
    #[serde(with = "crate::clock::secs")]
    pub min_interval: Duration,
    /// Longest interval.
    #[serde(with = "crate::clock::secs")]
    pub max_interval: Duration,
    /// Windows in a row at or above the threshold before the interval doubles.
    pub good_windows: u32,
    /// Windows held after a revert before the next attempt.
    pub cooldown_windows: u32,
    /// Labelled predictions a window needs for a decision.
    pub min_samples: usize,
    /// How long after a prediction its label is final (chargebacks come
    /// weeks later): a window is judged once this has passed since its end.
    #[serde(default, with = "crate::clock::secs")]
    pub label_delay: Duration,
}

//! Model metrics computed from labelled predictions, overall and by the age
//! of a view's features at prediction time.

use std::time::Duration;

use crate::log::{LogEntry, Outcome, PredictionSource};

pub use crate::definitions::{MetricKind, Scoring};

impl MetricKind {
    /// The metric over `samples`; None when it is undefined (no samples, or
    /// AUC with only one class).
    pub fn compute(self, samples: &[Sample]) -> Option<f64> {
        if samples.is_empty() {
            return None;
        }
        match self {
            MetricKind::Auc => auc(samples),
            _ => Some(samples.iter().map(|s| self.term(s)).sum::<f64>() / samples.len() as f64),
        }
    }

    /// The sampling error of `value`, the metric over `samples`: how far a
    /// window of this size strays from the model's true metric by chance.
    /// AUC by Hanley and McNeil's formula, the others as the standard error
    /// of a mean. None when it cannot be told (fewer than two samples, or
    /// AUC with only one class).
    pub fn standard_error(self, samples: &[Sample], value: f64) -> Option<f64> {
        let n = samples.len() as f64;
        if n < 2.0 {
            return None;
        }
        match self {
            MetricKind::Auc => {
                let pos = samples.iter().filter(|s| s.outcome >= 0.5).count() as f64;
                let neg = n - pos;
                if pos == 0.0 || neg == 0.0 {
                    return None;
                }
                let a = value.clamp(1e-6, 1.0 - 1e-6);
                let q1 = a / (2.0 - a);
                let q2 = 2.0 * a * a / (1.0 + a);
                let var = (a * (1.0 - a) + (pos - 1.0) * (q1 - a * a) + (neg - 1.0) * (q2 - a * a))
                    / (pos * neg);
                Some(var.max(0.0).sqrt())
            }
            _ => {
                let var = samples
                    .iter()
                    .map(|s| (self.term(s) - value).powi(2))
                    .sum::<f64>()
                    / (n - 1.0);
                Some((var / n).sqrt())
            }
        }
    }

    /// One sample's term of a mean metric (accuracy, log-loss, MAE).
    fn term(self, s: &Sample) -> f64 {
        match self {
            MetricKind::Accuracy => f64::from(u8::from((s.score >= 0.5) == (s.outcome >= 0.5))),
            MetricKind::LogLoss => {
                let p = s.score.clamp(1e-15, 1.0 - 1e-15);
                if s.outcome >= 0.5 {
                    -p.ln()
                } else {
                    -(1.0 - p).ln()
                }
            }
            MetricKind::Mae | MetricKind::Auc => (s.score - s.outcome).abs(),
        }
    }
}

/// One labelled prediction, reduced to what a metric needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The positive label's score (binary) or the predicted number.
    pub score: f64,
    /// 1 / 0 for positive / negative, or the observed number.
    pub outcome: f64,
    /// Age of the tuned view's features at prediction time (None: no row).
    pub age: Option<Duration>,
}

/// Mann-Whitney AUC with ties counted half.
fn auc(samples: &[Sample]) -> Option<f64> {
    let mut sorted: Vec<(f64, bool)> = samples
        .iter()
        .map(|s| (s.score, s.outcome >= 0.5))
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = sorted.iter().filter(|(_, p)| *p).count() as f64;
    let negatives = sorted.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    // Sum of the positives' (average) ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1].0 == sorted[i].0 {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += sorted[i..=j].iter().filter(|(_, p)| *p).count() as f64 * avg_rank;
        i = j + 1;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

impl Scoring {
    /// The sample of one logged prediction for `view`, if it has feedback
    /// and the output it needs.
    pub fn sample(&self, entry: &LogEntry, view: &str) -> Option<Sample> {
        let p = &entry.prediction;
        // Shadow copies were never seen by a caller: not the model's metric.
        // A precomputed answer was scored by a batch run on the features of
        // its time, not on the rows served at this feature age: it says
        // nothing about the refresh interval.
        if p.model != self.model
            || p.shadow_of.is_some()
            || matches!(p.source, PredictionSource::Precomputed { .. })
        {
            return None;
        }
        let feedback = entry.feedback.as_ref()?;
        let out = p.outputs.iter().find(|o| o.name == self.output)?;
        let (score, outcome) = match (&self.positive_label, &feedback.outcome) {
            (Some(positive), Outcome::Label(label)) => {
                // The logged score is the chosen label's; turn it into the
                // positive label's (binary outputs).
                let chosen = out.label.as_deref()?;
                let score = if chosen == positive {
                    out.score
                } else {
                    1.0 - out.score
                };
                (score, if label == positive { 1.0 } else { 0.0 })
            }
            (None, Outcome::Value(v)) => (out.score, *v),
            _ => return None,
        };
        let age = p
            .view_ages_ms
            .get(view)
            .copied()
            .flatten()
            .map(Duration::from_millis);
        Some(Sample {
            score,
            outcome,
            age,
        })
    }
}

/// The metric per feature-age bucket: `(lower bound, samples, metric)`, the
/// last bucket open-ended; samples with no row are left out.
pub fn by_age(
    kind: MetricKind,
    samples: &[Sample],
    bounds: &[Duration],
) -> Vec<(Duration, usize, Option<f64>)> {
    let mut buckets: Vec<Vec<Sample>> = vec![Vec::new(); bounds.len()];
    for s in samples {
        let Some(age) = s.age else { continue };
        if let Some(i) = bounds.iter().rposition(|b| age >= *b) {
            buckets[i].push(*s);
        }
    }
    bounds
        .iter()
        .zip(buckets)
        .map(|(b, v)| (*b, v.len(), kind.compute(&v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(score: f64, outcome: f64) -> Sample {
        Sample {
            score,
            outcome,
            age: None,
        }
    }

    #[test]
    fn auc_matches_hand_computed_values() {
        let perfect = [s(0.9, 1.0), s(0.8, 1.0), s(0.2, 0.0), s(0.1, 0.0)];
        assert_eq!(MetricKind::Auc.compute(&perfect), Some(1.0));
        let inverted = [s(0.1, 1.0), s(0.9, 0.0)];
        assert_eq!(MetricKind::Auc.compute(&inverted), Some(0.0));
        // One of four positive-negative pairs misordered, one tie.
        let mixed = [s(0.9, 1.0), s(0.5, 1.0), s(0.5, 0.0), s(0.1, 0.0)];
        assert_eq!(MetricKind::Auc.compute(&mixed), Some(0.875));
        assert_eq!(MetricKind::Auc.compute(&[s(0.9, 1.0)]), None);
    }

    #[test]
    fn accuracy_logloss_and_mae() {
        let v = [s(0.9, 1.0), s(0.4, 1.0), s(0.2, 0.0), s(0.6, 0.0)];
        assert_eq!(MetricKind::Accuracy.compute(&v), Some(0.5));
        let ll = MetricKind::LogLoss.compute(&[s(0.5, 1.0)]).unwrap_or(0.0);
        assert!((ll - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(
            MetricKind::Mae.compute(&[s(3.0, 1.0), s(1.0, 2.0)]),
            Some(1.5)
        );
        assert!(MetricKind::LogLoss.meets(0.2, 0.3));
        assert!(!MetricKind::Auc.meets(0.2, 0.3));
    }

    /// Only what callers were answered live counts: shadow copies and
    /// precomputed answers are left out; the age is the logged one.
    #[test]
    fn samples_come_from_live_answers_with_feedback() {
        use crate::log::{FeedbackRecord, LoggedOutput, PredictionRecord};
        use std::collections::BTreeMap;
        use std::time::UNIX_EPOCH;
        let entry = |shadow: bool, source: PredictionSource| LogEntry {
            prediction: PredictionRecord {
                prediction_id: "p".into(),
                at: UNIX_EPOCH,
                subject: "s".into(),
                model: "fraud_detector".into(),
                model_version: "1".into(),
                route: "stable".into(),
                entity: "c-1".into(),
                inputs: Vec::new(),
                view_ages_ms: BTreeMap::from([("customer_profile".to_owned(), Some(90_000))]),
                defaulted: Vec::new(),
                outputs: vec![LoggedOutput {
                    name: "probabilities".into(),
                    label: Some("legit".into()),
                    score: 0.8,
                }],
                shadow_of: shadow.then(|| "1".to_owned()),
                model_time_us: None,
                source,
            },
            feedback: Some(FeedbackRecord {
                prediction_id: "p".into(),
                outcome: Outcome::Label("fraud".into()),
                observed_at: UNIX_EPOCH,
                received_at: UNIX_EPOCH,
                subject: "s".into(),
            }),
        };
        let scoring = Scoring {
            model: "fraud_detector".into(),
            output: "probabilities".into(),
            positive_label: Some("fraud".into()),
        };
        let live = scoring.sample(&entry(false, PredictionSource::Live), "customer_profile");
        let s = live.unwrap_or(Sample {
            score: -1.0,
            outcome: -1.0,
            age: None,
        });
        assert!((s.score - 0.2).abs() < 1e-12, "the positive label's score");
        assert_eq!(s.outcome, 1.0);
        assert_eq!(s.age, Some(Duration::from_secs(90)));
        assert_eq!(
            scoring.sample(&entry(true, PredictionSource::Live), "customer_profile"),
            None
        );
        let precomputed = PredictionSource::Precomputed {
            batch_id: "b".into(),
        };
        assert_eq!(
            scoring.sample(&entry(false, precomputed), "customer_profile"),
            None
        );
    }

    #[test]
    fn age_buckets_split_samples() {
        let at = |age_min: u64, score: f64, outcome: f64| Sample {
            score,
            outcome,
            age: Some(Duration::from_secs(age_min * 60)),
        };
        let samples = [
            at(1, 0.9, 1.0),
            at(2, 0.1, 0.0),
            at(90, 0.1, 1.0),
            at(95, 0.9, 0.0),
        ];
        let b = by_age(
            MetricKind::Auc,
            &samples,
            &[Duration::ZERO, Duration::from_secs(3600)],
        );
        assert_eq!(b[0], (Duration::ZERO, 2, Some(1.0)));
        assert_eq!(b[1], (Duration::from_secs(3600), 2, Some(0.0)));
    }
}

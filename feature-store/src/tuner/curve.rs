//! The metric as a function of feature age, learned from judged windows.
//!
//! Every labelled prediction carries the age its static features had when
//! it was made, and the log holds predictions made at many ages (all of
//! `[0, interval)` every cycle, older ones when a refresh failed). The curve
//! keeps decayed statistics per age bucket (buckets on a doubling ladder
//! from an eighth of the shortest interval, each placed at the mean age of
//! its samples) and predicts the metric at an age, and of a window served
//! at a candidate interval: the curve averaged over the ages that interval
//! produces. Past the oldest age seen it extends along the slope of the
//! older buckets (never assuming features improve with age). The
//! controller refuses a doubling whose window or oldest age misses the
//! threshold.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::metric::{MetricKind, Sample};

/// Score bins of a bucket's AUC histograms, on the logit scale so the
/// scores of a rare positive class (most of them near 0) still spread out.
const BINS: usize = 48;
/// Logits beyond ±this fall in the end bins.
const LOGIT_SPAN: f64 = 8.0;
/// A bucket needs this many (decayed) samples to count.
const MIN_BUCKET_SAMPLES: f64 = 100.0;
/// For AUC, this many of each class too.
const MIN_BUCKET_CLASS: f64 = 10.0;

/// The ages `[lo, hi)` of bucket `i` in seconds (the last reaches twice its
/// start). `i` is below `bounds.len()`.
fn span(bounds: &[Duration], i: usize) -> (f64, f64) {
    let lo = bounds[i].as_secs_f64();
    let hi = bounds.get(i + 1).map_or(lo * 2.0, Duration::as_secs_f64);
    (lo, hi)
}

/// Decayed statistics of the samples in one age bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Effective sample count.
    pub n: f64,
    /// Sum of the per-sample term: correct decisions (accuracy), log-loss
    /// terms, absolute errors (unused for AUC).
    pub sum: f64,
    /// AUC: positives per score bin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pos: Vec<f64>,
    /// AUC: negatives per score bin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neg: Vec<f64>,
    /// Sum of the samples' ages in seconds: where in the bucket its metric
    /// was measured (a bucket spans a doubling of ages, and the longest
    /// interval seen may fill only its start).
    #[serde(default)]
    pub age_sum: f64,
}

fn bin(score: f64) -> usize {
    let p = score.clamp(1e-12, 1.0 - 1e-12);
    let logit = (p / (1.0 - p)).ln().clamp(-LOGIT_SPAN, LOGIT_SPAN);
    let i = ((logit + LOGIT_SPAN) / (2.0 * LOGIT_SPAN) * BINS as f64) as usize;
    i.min(BINS - 1)
}

impl Stats {
    fn add(&mut self, kind: MetricKind, s: &Sample, age: Duration) {
        self.n += 1.0;
        self.age_sum += age.as_secs_f64();
        match kind {
            MetricKind::Auc => {
                if self.pos.is_empty() {
                    self.pos = vec![0.0; BINS];
                    self.neg = vec![0.0; BINS];
                }
                let b = bin(s.score);
                if s.outcome >= 0.5 {
                    self.pos[b] += 1.0;
                } else {
                    self.neg[b] += 1.0;
                }
            }
            MetricKind::Accuracy => {
                self.sum += f64::from(u8::from((s.score >= 0.5) == (s.outcome >= 0.5)));
            }
            MetricKind::LogLoss => {
                let p = s.score.clamp(1e-15, 1.0 - 1e-15);
                self.sum -= if s.outcome >= 0.5 {
                    p.ln()
                } else {
                    (1.0 - p).ln()
                };
            }
            MetricKind::Mae => self.sum += (s.score - s.outcome).abs(),
        }
    }

    fn decay(&mut self, factor: f64) {
        self.n *= factor;
        self.sum *= factor;
        self.age_sum *= factor;
        self.pos.iter_mut().for_each(|v| *v *= factor);
        self.neg.iter_mut().for_each(|v| *v *= factor);
    }

    /// The bucket's metric, when it has enough samples to be told.
    fn metric(&self, kind: MetricKind) -> Option<f64> {
        if self.n < MIN_BUCKET_SAMPLES {
            return None;
        }
        match kind {
            MetricKind::Auc => {
                let (p, n): (f64, f64) = (self.pos.iter().sum(), self.neg.iter().sum());
                if p < MIN_BUCKET_CLASS || n < MIN_BUCKET_CLASS {
                    return None;
                }
                // Pairs ordered right, ties within a bin counted half.
                let (mut below, mut right) = (0.0, 0.0);
                for (pos, neg) in self.pos.iter().zip(&self.neg) {
                    right += pos * (below + 0.5 * neg);
                    below += neg;
                }
                Some(right / (p * n))
            }
            _ => Some(self.sum / self.n),
        }
    }
}

/// What the curve predicts for a window served at some interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// The predicted window metric.
    pub metric: f64,
    /// The oldest age the curve has seen enough of.
    pub oldest_seen: Duration,
    /// Effective labelled predictions behind the curve.
    pub samples: f64,
}

/// The metric by feature age of one job and model version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgeCurve {
    /// One per bucket of [`AgeCurve::bounds`] (empty until the first
    /// window).
    pub buckets: Vec<Stats>,
}

impl AgeCurve {
    /// The lower age bound of every bucket for a policy whose shortest
    /// interval is `min_interval` and longest `max_interval`: 0, then
    /// `min/8` doubling until past four times the longest interval (failed
    /// refreshes serve older rows). The last bucket is open-ended.
    pub fn bounds(min_interval: Duration, max_interval: Duration) -> Vec<Duration> {
        let mut out = vec![Duration::ZERO];
        let mut b = (min_interval / 8).max(Duration::from_secs(1));
        while b < max_interval * 4 {
            out.push(b);
            b *= 2;
        }
        out.push(b);
        out
    }

    /// Adds a window's samples, after decaying what is there by `decay`.
    /// Samples without an age (no row of the view) are left out.
    pub fn learn(&mut self, kind: MetricKind, bounds: &[Duration], samples: &[Sample], decay: f64) {
        if self.buckets.len() != bounds.len() {
            self.buckets = vec![Stats::default(); bounds.len()];
        }
        self.buckets.iter_mut().for_each(|b| b.decay(decay));
        for s in samples {
            let Some(age) = s.age else { continue };
            let i = bounds.iter().rposition(|b| age >= *b).unwrap_or(0);
            self.buckets[i].add(kind, s, age);
        }
    }

    /// (bucket, mean age of its samples in s, metric, samples) of every
    /// bucket that can be told (a state saved before ages were summed
    /// places a bucket at its middle).
    fn seen(&self, kind: MetricKind, bounds: &[Duration]) -> Vec<(usize, f64, f64, f64)> {
        self.buckets
            .iter()
            .zip(0..bounds.len())
            .filter_map(|(b, i)| {
                let (lo, hi) = span(bounds, i);
                let at = if b.age_sum > 0.0 {
                    (b.age_sum / b.n).clamp(lo, hi)
                } else {
                    f64::midpoint(lo, hi)
                };
                b.metric(kind).map(|m| (i, at, m, b.n))
            })
            .collect()
    }

    /// The metric the curve has learned at the oldest ages of `samples`
    /// (their 90th percentile; every hour must hold, the last of a cycle
    /// too): interpolated between the buckets' mean ages, extended past the
    /// oldest along the last segment (never improving with age). It pools
    /// every window judged lately, so it tells a window that fell below by
    /// chance from ages that are below.
    pub fn at_ages(
        &self,
        kind: MetricKind,
        bounds: &[Duration],
        samples: &[Sample],
    ) -> Option<f64> {
        let mut ages: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.age.map(|a| a.as_secs_f64()))
            .collect();
        if ages.is_empty() {
            return None;
        }
        ages.sort_by(f64::total_cmp);
        self.at_age(
            kind,
            bounds,
            Duration::from_secs_f64(ages[ages.len() * 9 / 10]),
        )
    }

    /// The metric the curve has learned at `age`: interpolated between the
    /// buckets' mean ages, extended past the oldest along the last segment
    /// (never improving with age); None until a bucket can be told.
    pub fn at_age(&self, kind: MetricKind, bounds: &[Duration], age: Duration) -> Option<f64> {
        let x = age.as_secs_f64();
        let points: Vec<(f64, f64)> = self
            .seen(kind, bounds)
            .into_iter()
            .map(|(_, mid, m, _)| (mid, m))
            .collect();
        let (&first, &last) = (points.first()?, points.last()?);
        if x <= first.0 || points.len() == 1 {
            return Some(first.1);
        }
        if let Some(w) = points.windows(2).find(|w| x <= w[1].0) {
            let t = (x - w[0].0) / (w[1].0 - w[0].0);
            return Some(w[0].1 + t * (w[1].1 - w[0].1));
        }
        let before = points[points.len() - 2];
        let raw = (last.1 - before.1) / (last.0 - before.0);
        let slope = if kind.higher_is_better() {
            raw.min(0.0)
        } else {
            raw.max(0.0)
        };
        Some(last.1 + slope * (x - last.0))
    }

    /// The predicted metric of a window served at `interval` (ages spread
    /// evenly over `[0, interval)`), or None while fewer than two buckets
    /// have enough samples.
    pub fn predict(
        &self,
        kind: MetricKind,
        bounds: &[Duration],
        interval: Duration,
    ) -> Option<Prediction> {
        let seen = self.seen(kind, bounds);
        let (&(last_i, last_mid, last_m, _), _) = seen.split_last()?;
        if seen.len() < 2 {
            return None;
        }
        // The slope of the older half of what was seen (weighted least
        // squares), which is where a longer interval continues.
        let older: Vec<_> = seen
            .iter()
            .filter(|(_, mid, _, _)| *mid >= last_mid / 8.0)
            .collect();
        let fit = if older.len() >= 2 {
            older
        } else {
            seen.iter().collect()
        };
        let w: f64 = fit.iter().map(|x| x.3).sum();
        let mx = fit.iter().map(|x| x.1 * x.3).sum::<f64>() / w;
        let my = fit.iter().map(|x| x.2 * x.3).sum::<f64>() / w;
        let sxx: f64 = fit.iter().map(|x| x.3 * (x.1 - mx).powi(2)).sum();
        let sxy: f64 = fit.iter().map(|x| x.3 * (x.1 - mx) * (x.2 - my)).sum();
        let raw = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        // Older features never make the model better.
        let slope = if kind.higher_is_better() {
            raw.min(0.0)
        } else {
            raw.max(0.0)
        };
        let j = interval.as_secs_f64();
        let (mut total, mut weight) = (0.0, 0.0);
        for i in 0..bounds.len() {
            let (lo, hi) = span(bounds, i);
            if lo >= j {
                break;
            }
            let top = hi.min(j);
            // A bucket seen counts as measured; any other (a gap, or past
            // the oldest age seen) lies on the line through the oldest, and
            // so do the oldest bucket's ages past those it measured.
            let mid = f64::midpoint(lo, top);
            let line = last_m + slope * (mid - last_mid);
            let value = match seen.iter().find(|x| x.0 == i) {
                Some(_) if i == last_i && mid > last_mid => line,
                Some(x) => x.2,
                None => line,
            };
            total += value * (top - lo);
            weight += top - lo;
        }
        (weight > 0.0).then(|| Prediction {
            metric: total / weight,
            oldest_seen: Duration::from_secs_f64(span(bounds, last_i).1),
            samples: seen.iter().map(|x| x.3).sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Accuracy-style samples at `age`: `right` of 100 decided right.
    fn at(age: Duration, right: usize) -> Vec<Sample> {
        (0..100)
            .map(|i| Sample {
                score: if i < right { 0.9 } else { 0.1 },
                outcome: 1.0,
                age: Some(age),
            })
            .collect()
    }

    #[test]
    fn a_flat_curve_predicts_the_same_metric_at_longer_intervals() {
        let bounds = AgeCurve::bounds(HOUR, 8 * HOUR);
        let mut c = AgeCurve::default();
        for h in 0..8 {
            let samples: Vec<Sample> = (0..4)
                .flat_map(|q| at(HOUR / 4 * q + HOUR * h / 8, 90))
                .collect();
            c.learn(MetricKind::Accuracy, &bounds, &samples, 1.0);
        }
        let p = c.predict(MetricKind::Accuracy, &bounds, 4 * HOUR);
        assert!(p.is_some_and(|p| (p.metric - 0.9).abs() < 1e-9), "{p:?}");
    }

    #[test]
    fn a_falling_curve_is_extended_past_the_oldest_age_seen() {
        let bounds = AgeCurve::bounds(HOUR, 16 * HOUR);
        let mut c = AgeCurve::default();
        // Accuracy falls 5 points per hour of age over the first 2 h.
        for m in (0..120).step_by(5) {
            let age = Duration::from_secs(m * 60);
            c.learn(
                MetricKind::Accuracy,
                &bounds,
                &at(age, 95 - (m as usize) / 12),
                1.0,
            );
        }
        let now = c.predict(MetricKind::Accuracy, &bounds, 2 * HOUR);
        let longer = c.predict(MetricKind::Accuracy, &bounds, 4 * HOUR);
        let (Some(now), Some(longer)) = (now, longer) else {
            panic!("no prediction: {now:?} {longer:?}");
        };
        assert!(now.metric > 0.88 && now.metric < 0.95, "{now:?}");
        assert!(
            longer.metric < now.metric - 0.03,
            "a longer interval serves older rows: {longer:?} vs {now:?}"
        );
        assert_eq!(now.oldest_seen, 2 * HOUR);
    }

    /// A bucket spans a doubling of ages; an interval just past its start
    /// fills only its first ages, and the curve places the bucket where
    /// its samples were, so the decline is as steep as measured.
    #[test]
    fn a_bucket_counts_at_the_ages_it_measured() {
        let bounds = AgeCurve::bounds(HOUR, 8 * HOUR);
        let mut c = AgeCurve::default();
        // 95 % right up to 3 h, 85 % at 4 h 15 min (the 4–8 h bucket's
        // start).
        let mut samples = at(HOUR / 2, 95);
        samples.extend(at(3 * HOUR / 2, 95));
        samples.extend(at(3 * HOUR, 95));
        samples.extend(at(4 * HOUR + HOUR / 4, 85));
        c.learn(MetricKind::Accuracy, &bounds, &samples, 1.0);
        let at_age = |h: f64| {
            c.at_age(
                MetricKind::Accuracy,
                &bounds,
                Duration::from_secs_f64(h * 3600.0),
            )
            .unwrap_or(f64::NAN)
        };
        assert!((at_age(4.25) - 0.85).abs() < 1e-9, "{}", at_age(4.25));
        // Past the ages measured, along the slope between them.
        assert!((at_age(5.5) - 0.75).abs() < 1e-9, "{}", at_age(5.5));
        let p = c.predict(MetricKind::Accuracy, &bounds, 6 * HOUR);
        // Counted flat, the 4–6 h ages would make it (4·0.95 + 2·0.85)/6
        // = 0.917.
        assert!(
            p.is_some_and(|p| p.metric < 0.915),
            "the 4–8 h bucket's later ages lie on the slope: {p:?}"
        );
    }

    #[test]
    fn one_age_alone_predicts_nothing_and_decay_forgets() {
        let bounds = AgeCurve::bounds(HOUR, 8 * HOUR);
        let mut c = AgeCurve::default();
        c.learn(MetricKind::Accuracy, &bounds, &at(HOUR / 4, 90), 1.0);
        assert_eq!(c.predict(MetricKind::Accuracy, &bounds, HOUR), None);
        c.learn(MetricKind::Accuracy, &bounds, &at(HOUR / 2, 90), 0.01);
        assert_eq!(
            c.predict(MetricKind::Accuracy, &bounds, HOUR),
            None,
            "the first bucket decayed below its minimum"
        );
    }

    #[test]
    fn auc_from_histograms_matches_the_exact_auc() {
        let bounds = AgeCurve::bounds(HOUR, 8 * HOUR);
        let samples: Vec<Sample> = (0..400)
            .map(|i| {
                let y = i % 3 == 0;
                let z = if y { 1.0 } else { -1.0 } + ((i * 37) % 100) as f64 / 25.0 - 2.0;
                Sample {
                    score: 1.0 / (1.0 + (-z).exp()),
                    outcome: f64::from(u8::from(y)),
                    age: Some(Duration::from_secs(60)),
                }
            })
            .collect();
        let mut c = AgeCurve::default();
        c.learn(MetricKind::Auc, &bounds, &samples, 1.0);
        let exact = MetricKind::Auc.compute(&samples).unwrap_or(0.0);
        let binned = c.buckets[0].metric(MetricKind::Auc).unwrap_or(0.0);
        assert!((exact - binned).abs() < 0.02, "{exact} vs {binned}");
    }
}

//! The cardinality watch of a batch-scoring run: how many distinct keys it
//! scored and, per categorical key feature, how many distinct values it saw
//! and how many of them the previous run never saw. Judged against the job's
//! declared limits ([`Cardinality`]): more keys than the hard cap refuses the
//! switch to the new batch (a spike must not blow up the lookup table); a
//! feature whose new values exceed the factor times the previous run's new
//! values raises an alarm, but the batch is still served.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::definitions::Cardinality;

/// What one run saw, built while it scores.
#[derive(Debug, Default)]
pub struct Watch {
    keys: HashSet<String>,
    values: BTreeMap<String, BTreeSet<String>>,
}

impl Watch {
    /// An empty watch.
    pub fn new() -> Self {
        Self::default()
    }

    /// One scored key with its categorical features' values.
    pub fn observe<'a>(
        &mut self,
        key: &str,
        categories: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        if !self.keys.contains(key) {
            self.keys.insert(key.to_owned());
        }
        for (feature, value) in categories {
            // Owned strings only for what is new: most rows repeat both.
            match self.values.get_mut(feature) {
                Some(seen) if seen.contains(value) => {}
                Some(seen) => {
                    seen.insert(value.to_owned());
                }
                None => {
                    self.values
                        .insert(feature.to_owned(), BTreeSet::from([value.to_owned()]));
                }
            }
        }
    }

    /// Distinct keys so far.
    pub fn keys(&self) -> u64 {
        u64::try_from(self.keys.len()).unwrap_or(u64::MAX)
    }

    /// What the next run compares itself with.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            keys: self.keys(),
            values: self.values.clone(),
            new_values: BTreeMap::new(),
        }
    }
}

/// A finished run's distinct values per categorical feature, and how many of
/// them were new then, kept with its batch for the next run to compare with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Distinct keys.
    pub keys: u64,
    /// Feature → its distinct values.
    pub values: BTreeMap<String, BTreeSet<String>>,
    /// Feature → how many of its values its own previous run had not seen.
    pub new_values: BTreeMap<String, u64>,
}

/// One categorical feature of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureCount {
    /// The feature.
    pub feature: String,
    /// Distinct values this run.
    pub distinct: u64,
    /// Values the previous run never saw.
    pub new: u64,
    /// New values in the previous run (the baseline of the factor).
    pub previous_new: u64,
}

/// Why a run raised the alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Alarm {
    /// More distinct keys than the hard cap: the batch is not served.
    TooManyKeys {
        /// Distinct keys scored.
        keys: u64,
        /// The cap.
        max_keys: u64,
    },
    /// A spike of values never seen before in one feature.
    NewCategories {
        /// The feature.
        feature: String,
        /// New values this run.
        new: u64,
        /// New values in the previous run.
        previous_new: u64,
        /// The declared factor.
        factor: f64,
    },
}

impl std::fmt::Display for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Alarm::TooManyKeys { keys, max_keys } => write!(
                f,
                "{keys} distinct keys exceed the cap of {max_keys}; the new batch is not served"
            ),
            Alarm::NewCategories {
                feature,
                new,
                previous_new,
                factor,
            } => write!(
                f,
                "{feature}: {new} values never seen before, more than {factor} × the previous run's {previous_new}"
            ),
        }
    }
}

/// A run's cardinality, judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Distinct keys scored.
    pub keys: u64,
    /// Per categorical key feature, in name order.
    pub features: Vec<FeatureCount>,
    /// What raised the alarm (empty: nothing).
    pub alarms: Vec<Alarm>,
    /// Whether the new batch may be served (false above the hard cap).
    pub may_switch: bool,
    /// What the next run compares itself with.
    #[serde(skip)]
    pub snapshot: Snapshot,
}

/// Judges `watch` against the previous run's snapshot (`None`: the first
/// run, whose values are all new and raise no alarm) and the limits.
///
/// The factor's baseline is the previous run's count of new values, at least
/// one, so a feature that had no new values last time alarms only when more
/// than `factor` new values arrive at once.
pub fn judge(watch: &Watch, previous: Option<&Snapshot>, limits: Cardinality) -> Report {
    judge_snapshot(watch.snapshot(), previous, limits)
}

/// As [`judge`], for what a run saw as a [`Snapshot`] (e.g. the union of a
/// sharded run's parts).
pub fn judge_snapshot(seen: Snapshot, previous: Option<&Snapshot>, limits: Cardinality) -> Report {
    let keys = seen.keys;
    let mut alarms = Vec::new();
    if keys > limits.max_keys {
        alarms.push(Alarm::TooManyKeys {
            keys,
            max_keys: limits.max_keys,
        });
    }
    let mut snapshot = seen;
    snapshot.new_values.clear();
    let mut features = Vec::with_capacity(snapshot.values.len());
    for (feature, values) in &snapshot.values {
        let before = previous.and_then(|p| p.values.get(feature));
        let new = before.map_or(values.len(), |b| values.difference(b).count());
        let new = u64::try_from(new).unwrap_or(u64::MAX);
        let previous_new = previous
            .and_then(|p| p.new_values.get(feature).copied())
            .unwrap_or(0);
        #[expect(
            clippy::cast_precision_loss,
            reason = "counts far below 2^52 compare exactly enough"
        )]
        let spike = new as f64 > limits.new_category_factor * previous_new.max(1) as f64;
        if previous.is_some() && spike {
            alarms.push(Alarm::NewCategories {
                feature: feature.clone(),
                new,
                previous_new,
                factor: limits.new_category_factor,
            });
        }
        snapshot.new_values.insert(feature.clone(), new);
        features.push(FeatureCount {
            feature: feature.clone(),
            distinct: u64::try_from(values.len()).unwrap_or(u64::MAX),
            new,
            previous_new,
        });
    }
    Report {
        keys,
        features,
        may_switch: keys <= limits.max_keys,
        alarms,
        snapshot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Cardinality = Cardinality {
        max_keys: 5,
        new_category_factor: 3.0,
    };

    fn run(rows: &[(&str, &str)]) -> Watch {
        let mut w = Watch::new();
        for (key, country) in rows {
            w.observe(key, [("country", *country)]);
        }
        w
    }

    #[test]
    fn keys_and_values_are_counted_once() {
        let w = run(&[("k1", "DE"), ("k2", "DE"), ("k1", "DE"), ("k3", "FR")]);
        let r = judge(&w, None, LIMITS);
        assert_eq!(r.keys, 3);
        assert_eq!(
            r.features,
            [FeatureCount {
                feature: "country".into(),
                distinct: 2,
                new: 2,
                previous_new: 0,
            }]
        );
        assert!(r.alarms.is_empty(), "a first run raises no category alarm");
        assert!(r.may_switch);
    }

    #[test]
    fn a_spike_of_new_categories_alarms_and_the_batch_is_still_served() {
        let first = judge(&run(&[("k1", "DE"), ("k2", "FR")]), None, LIMITS);
        // One new country: within 3 × max(2, 1).
        let second = judge(
            &run(&[("k1", "DE"), ("k2", "IT")]),
            Some(&first.snapshot),
            LIMITS,
        );
        assert!(second.alarms.is_empty(), "{:?}", second.alarms);
        assert_eq!(second.features[0].new, 1);
        // Four new countries after one new last time: 4 > 3 × 1.
        let third = judge(
            &run(&[("k1", "ES"), ("k2", "PT"), ("k3", "NL"), ("k4", "BE")]),
            Some(&second.snapshot),
            LIMITS,
        );
        assert_eq!(
            third.alarms,
            [Alarm::NewCategories {
                feature: "country".into(),
                new: 4,
                previous_new: 1,
                factor: 3.0,
            }]
        );
        assert!(
            third.may_switch,
            "a category spike alone does not stop the switch"
        );
        assert_eq!(
            third.alarms[0].to_string(),
            "country: 4 values never seen before, more than 3 × the previous run's 1"
        );
    }

    #[test]
    fn more_keys_than_the_cap_refuse_the_switch() {
        let rows: Vec<(String, &str)> = (0..6).map(|i| (format!("k{i}"), "DE")).collect();
        let mut w = Watch::new();
        for (key, country) in &rows {
            w.observe(key, [("country", *country)]);
        }
        let r = judge(&w, None, LIMITS);
        assert!(!r.may_switch);
        assert_eq!(
            r.alarms,
            [Alarm::TooManyKeys {
                keys: 6,
                max_keys: 5
            }]
        );
    }
}

//! Shadow-vs-primary comparison from the prediction log: each shadow record
//! names the prediction the caller got (`shadow_of`), so the two answers
//! for the same input are paired and compared per shadow version.

use std::collections::{BTreeMap, HashMap};

use feature_store::log::{LogEntry, LoggedOutput, PredictionRecord};
use serde::Serialize;

/// The comparison of one shadow version with the versions that answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowComparison {
    /// The shadow version.
    pub version: String,
    /// Shadow records in the window.
    pub shadow_records: usize,
    /// Of them, paired with their primary prediction.
    pub pairs: usize,
    /// The versions that answered those calls, with counts.
    pub against: BTreeMap<String, usize>,
    /// Share of pairs whose first output has the same label.
    pub label_agreement: Option<f64>,
    /// Mean |shadow score − primary score| of the first output.
    pub mean_abs_score_diff: Option<f64>,
    /// 99th percentile of that difference.
    pub p99_abs_score_diff: Option<f64>,
    /// Largest difference.
    pub max_abs_score_diff: Option<f64>,
    /// Model-server time of the shadow calls, p50 / p99 in ms.
    pub shadow_model_ms: Option<(f64, f64)>,
    /// Model-server time of the paired primary calls, p50 / p99 in ms.
    pub primary_model_ms: Option<(f64, f64)>,
}

/// The report for one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowReport {
    /// The model.
    pub model: String,
    /// Primary predictions of the model in the window.
    pub primary_records: usize,
    /// One entry per shadow version seen.
    pub shadows: Vec<ShadowComparison>,
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * (sorted.len() - 1) as f64).round();
    // In 0..len by construction.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "rank is in 0..len"
    )]
    sorted.get(rank as usize).copied()
}

fn latency(records: &[&PredictionRecord]) -> Option<(f64, f64)> {
    let mut ms: Vec<f64> = records
        .iter()
        .filter_map(|r| r.model_time_us)
        .map(|us| us as f64 / 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    Some((quantile(&ms, 0.5)?, quantile(&ms, 0.99)?))
}

/// The output pair to compare: the first output (by the primary's order)
/// both sides have with a label, else the first both have.
fn compared_outputs<'a>(
    shadow: &'a PredictionRecord,
    primary: &'a PredictionRecord,
) -> Option<(&'a LoggedOutput, &'a LoggedOutput)> {
    let pairs = || {
        primary
            .outputs
            .iter()
            .filter_map(|b| Some((shadow.outputs.iter().find(|a| a.name == b.name)?, b)))
    };
    pairs()
        .find(|(a, b)| a.label.is_some() && b.label.is_some())
        .or_else(|| pairs().next())
}

/// Compares every shadow version of `model` found in `entries` with the
/// predictions they shadowed.
pub fn compare(model: &str, entries: &[LogEntry]) -> ShadowReport {
    let primaries: HashMap<&str, &PredictionRecord> = entries
        .iter()
        .map(|e| &e.prediction)
        .filter(|p| p.model == model && p.shadow_of.is_none())
        .map(|p| (p.prediction_id.as_str(), p))
        .collect();
    let mut by_version: BTreeMap<&str, Vec<&PredictionRecord>> = BTreeMap::new();
    for p in entries.iter().map(|e| &e.prediction) {
        if p.model == model && p.shadow_of.is_some() {
            by_version
                .entry(p.model_version.as_str())
                .or_default()
                .push(p);
        }
    }
    let shadows = by_version
        .into_iter()
        .map(|(version, records)| {
            let mut against = BTreeMap::new();
            let (mut agree, mut labelled) = (0usize, 0usize);
            let mut diffs = Vec::new();
            let (mut shadow_side, mut primary_side) = (Vec::new(), Vec::new());
            for s in &records {
                let Some(p) = s.shadow_of.as_deref().and_then(|id| primaries.get(id)) else {
                    continue;
                };
                *against.entry(p.model_version.clone()).or_insert(0) += 1;
                shadow_side.push(*s);
                primary_side.push(*p);
                if let Some((a, b)) = compared_outputs(s, p) {
                    diffs.push((a.score - b.score).abs());
                    if let (Some(la), Some(lb)) = (&a.label, &b.label) {
                        labelled += 1;
                        agree += usize::from(la == lb);
                    }
                }
            }
            diffs.sort_by(f64::total_cmp);
            let pairs = shadow_side.len();
            ShadowComparison {
                version: version.to_owned(),
                shadow_records: records.len(),
                pairs,
                against,
                label_agreement: (labelled > 0).then(|| agree as f64 / labelled as f64),
                mean_abs_score_diff: (!diffs.is_empty())
                    .then(|| diffs.iter().sum::<f64>() / diffs.len() as f64),
                p99_abs_score_diff: quantile(&diffs, 0.99),
                max_abs_score_diff: diffs.last().copied(),
                shadow_model_ms: latency(&shadow_side),
                primary_model_ms: latency(&primary_side),
            }
        })
        .collect();
    ShadowReport {
        model: model.to_owned(),
        primary_records: primaries.len(),
        shadows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, version: &str, label: &str, score: f64, of: Option<&str>) -> LogEntry {
        LogEntry {
            prediction: PredictionRecord {
                prediction_id: id.into(),
                at: std::time::SystemTime::UNIX_EPOCH,
                subject: "s".into(),
                model: "m".into(),
                model_version: version.into(),
                route: if of.is_some() { "shadow" } else { "stable" }.into(),
                entity: "e".into(),
                inputs: vec![],
                view_ages_ms: BTreeMap::new(),
                defaulted: vec![],
                outputs: vec![
                    LoggedOutput {
                        name: "raw".into(),
                        label: None,
                        score: 0.0,
                    },
                    LoggedOutput {
                        name: "p".into(),
                        label: Some(label.into()),
                        score,
                    },
                ],
                shadow_of: of.map(str::to_owned),
                model_time_us: Some(1000),
                source: feature_store::log::PredictionSource::Live,
            },
            feedback: None,
        }
    }

    #[test]
    fn pairs_shadows_with_their_primaries() {
        let entries = vec![
            rec("a", "1", "fraud", 0.9, None),
            rec("b", "1", "legit", 0.8, None),
            rec("sa", "2", "fraud", 0.8, Some("a")),
            rec("sb", "2", "fraud", 0.6, Some("b")),
            rec("sx", "2", "fraud", 0.6, Some("gone")),
        ];
        let r = compare("m", &entries);
        assert_eq!(r.primary_records, 2);
        let s = &r.shadows[0];
        assert_eq!((s.version.as_str(), s.shadow_records, s.pairs), ("2", 3, 2));
        assert_eq!(s.label_agreement, Some(0.5));
        let mean = s.mean_abs_score_diff.unwrap();
        assert!((mean - 0.15).abs() < 1e-9, "{mean}");
        assert!((s.max_abs_score_diff.unwrap() - 0.2).abs() < 1e-9);
        assert_eq!(s.shadow_model_ms, Some((1.0, 1.0)));
        assert_eq!(s.against.get("1"), Some(&2));
        assert!(compare("other", &entries).shadows.is_empty());
    }
}

//! Post-processing declared per model: output values → labels, a decision
//! threshold, top-k with labels and optional Platt calibration.

use serde::Deserialize;

use crate::model::infer::OutputTensor;

/// Platt scaling of a positive-class score: `1 / (1 + exp(a·s + b))`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platt {
    /// Slope (negative for a score that grows with the positive class).
    pub a: f64,
    /// Intercept.
    pub b: f64,
}

impl Platt {
    /// The calibrated probability of score `s`.
    pub fn apply(self, s: f64) -> f64 {
        1.0 / (1.0 + (self.a * s + self.b).exp())
    }
}

/// Why a model's answer cannot be post-processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    /// An output has fewer rows than the call carried.
    #[error("output {output:?} has no row {row}")]
    NoRow {
        /// The output.
        output: String,
        /// The row asked for.
        row: usize,
    },
    /// The scores output's width does not match the configured labels.
    #[error("output {output:?} has {scores} scores per row but {labels} labels are configured")]
    Width {
        /// The output.
        output: String,
        /// Scores per row.
        scores: usize,
        /// Labels configured.
        labels: usize,
    },
    /// The scores output is missing.
    #[error("the model answered without output {0:?}")]
    MissingOutput(String),
}

/// How one model's answer is turned into the response.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostProcess {
    /// The output holding class scores, one per label (e.g. `probabilities`).
    pub scores_output: String,
    /// Class labels in output order.
    pub labels: Vec<String>,
    /// For a binary decision: the positive label, chosen when its
    /// (calibrated) score reaches `threshold`.
    #[serde(default)]
    pub positive_label: Option<String>,
    /// Decision threshold for `positive_label` (default 0.5).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// How many best labels to return (default: all).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Calibration of the positive label's score.
    #[serde(default)]
    pub platt: Option<Platt>,
}

/// A post-processed output (stored as JSON in precomputed predictions).
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct Processed {
    /// Output name.
    pub name: String,
    /// The decided label (empty for outputs without labels).
    pub label: String,
    /// The decided label's score.
    pub score: f64,
    /// Best labels first.
    pub top_k: Vec<(String, f64)>,
    /// The raw values of this row.
    pub values: Vec<f64>,
}

/// Settings that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PostProcessError {
    /// The positive label is not among the labels.
    #[error("postprocess.positive_label {0:?} is not one of postprocess.labels")]
    UnknownPositive(String),
    /// Threshold outside [0, 1].
    #[error("postprocess.threshold must be between 0 and 1")]
    Threshold,
    /// A threshold without a positive label.
    #[error("postprocess.threshold needs postprocess.positive_label")]
    ThresholdWithoutPositive,
    /// Platt scaling without a positive label.
    #[error("postprocess.platt needs postprocess.positive_label and exactly 2 labels")]
    PlattNeedsBinary,
    /// No labels.
    #[error("postprocess.labels must name at least one label")]
    NoLabels,
}

impl PostProcess {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`PostProcessError`] naming the key.
    pub fn validate(&self) -> Result<(), PostProcessError> {
        if self.labels.is_empty() {
            return Err(PostProcessError::NoLabels);
        }
        if let Some(p) = &self.positive_label
            && !self.labels.contains(p)
        {
            return Err(PostProcessError::UnknownPositive(p.clone()));
        }
        if let Some(t) = self.threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(PostProcessError::Threshold);
            }
            if self.positive_label.is_none() {
                return Err(PostProcessError::ThresholdWithoutPositive);
            }
        }
        if self.platt.is_some() && (self.positive_label.is_none() || self.labels.len() != 2) {
            return Err(PostProcessError::PlattNeedsBinary);
        }
        Ok(())
    }

    /// Post-processes row `row` of `outputs`. Outputs other than the scores
    /// output are returned with their values only.
    ///
    /// # Errors
    /// [`AnswerError`] if the scores output is missing or has the wrong
    /// width.
    pub fn apply(
        &self,
        outputs: &[OutputTensor],
        row: usize,
    ) -> Result<Vec<Processed>, AnswerError> {
        let mut out = Vec::with_capacity(outputs.len());
        let mut found = false;
        for o in outputs {
            let width = row_width(o);
            let values: Vec<f64> = o
                .values
                .get(row * width..(row + 1) * width)
                .ok_or_else(|| AnswerError::NoRow {
                    output: o.name.clone(),
                    row,
                })?
                .to_vec();
            if o.name != self.scores_output {
                out.push(Processed {
                    name: o.name.clone(),
                    label: String::new(),
                    score: values.first().copied().unwrap_or(0.0),
                    top_k: Vec::new(),
                    values,
                });
                continue;
            }
            found = true;
            if values.len() != self.labels.len() {
                return Err(AnswerError::Width {
                    output: o.name.clone(),
                    scores: values.len(),
                    labels: self.labels.len(),
                });
            }
            let mut scores = values.clone();
            let positive = self
                .positive_label
                .as_ref()
                .and_then(|p| self.labels.iter().position(|l| l == p));
            if let (Some(platt), Some(pi)) = (self.platt, positive) {
                let p = platt.apply(scores[pi]);
                scores[pi] = p;
                scores[1 - pi] = 1.0 - p;
            }
            let decided = match (positive, self.threshold) {
                (Some(pi), threshold) if self.labels.len() == 2 => {
                    if scores[pi] >= threshold.unwrap_or(0.5) {
                        pi
                    } else {
                        1 - pi
                    }
                }
                _ => argmax(&scores),
            };
            let mut ranked: Vec<(String, f64)> = self
                .labels
                .iter()
                .cloned()
                .zip(scores.iter().copied())
                .collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            ranked.truncate(self.top_k.unwrap_or(ranked.len()));
            out.push(Processed {
                name: o.name.clone(),
                label: self.labels[decided].clone(),
                score: scores[decided],
                top_k: ranked,
                values,
            });
        }
        if !found {
            return Err(AnswerError::MissingOutput(self.scores_output.clone()));
        }
        Ok(out)
    }
}

fn row_width(o: &OutputTensor) -> usize {
    o.shape
        .iter()
        .skip(1)
        .map(|d| usize::try_from(*d).unwrap_or(1).max(1))
        .product::<usize>()
        .max(1)
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fraud(threshold: Option<f64>, platt: Option<Platt>) -> PostProcess {
        PostProcess {
            scores_output: "probabilities".into(),
            labels: vec!["legit".into(), "fraud".into()],
            positive_label: Some("fraud".into()),
            threshold,
            top_k: Some(1),
            platt,
        }
    }

    fn outputs(p_fraud: f64) -> Vec<OutputTensor> {
        vec![
            OutputTensor {
                name: "label".into(),
                shape: vec![1],
                values: vec![f64::from(u8::from(p_fraud > 0.5))],
            },
            OutputTensor {
                name: "probabilities".into(),
                shape: vec![1, 2],
                values: vec![1.0 - p_fraud, p_fraud],
            },
        ]
    }

    #[test]
    fn threshold_decides_the_positive_label() {
        let low = fraud(Some(0.2), None).apply(&outputs(0.3), 0).unwrap();
        assert_eq!((low[1].label.as_str(), low[1].score), ("fraud", 0.3));
        let high = fraud(Some(0.9), None).apply(&outputs(0.3), 0).unwrap();
        assert_eq!(high[1].label, "legit");
        assert!((high[1].score - 0.7).abs() < 1e-12);
        assert_eq!(high[1].top_k.len(), 1);
        assert_eq!(high[0].values, vec![0.0], "other outputs pass through");
    }

    #[test]
    fn platt_calibrates_the_positive_score() {
        let p = Platt { a: -4.0, b: 2.0 };
        let out = fraud(None, Some(p)).apply(&outputs(0.5), 0).unwrap();
        assert!((out[1].score - 0.5).abs() < 1e-12, "1/(1+e^0) = 0.5");
        let out = fraud(None, Some(p)).apply(&outputs(0.9), 0).unwrap();
        let expected = 1.0 / (1.0 + (-4.0f64 * 0.9 + 2.0).exp());
        assert_eq!(out[1].label, "fraud");
        assert!((out[1].score - expected).abs() < 1e-12);
    }

    #[test]
    fn bad_settings_and_answers_are_refused() {
        let mut p = fraud(Some(1.5), None);
        assert_eq!(p.validate(), Err(PostProcessError::Threshold));
        p.threshold = Some(0.5);
        p.positive_label = Some("spam".into());
        assert_eq!(
            p.validate(),
            Err(PostProcessError::UnknownPositive("spam".into()))
        );
        let mut wrong = outputs(0.1);
        wrong[1].values = vec![1.0, 0.0, 0.0];
        wrong[1].shape = vec![1, 3];
        assert!(
            fraud(None, None)
                .apply(&wrong, 0)
                .unwrap_err()
                .to_string()
                .contains("3 scores per row but 2 labels")
        );
    }
}

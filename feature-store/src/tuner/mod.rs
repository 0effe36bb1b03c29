//! The refresh auto-tuner: measure how the model's metric depends on the age
//! of a static view's features, and run the view's refresh job as rarely as
//! the metric allows.
//!
//! [`metric`] computes AUC / accuracy / log-loss / MAE from the prediction
//! log joined with feedback, overall and by feature age; [`curve`] learns
//! the metric as a function of feature age and predicts it for a longer
//! interval; [`controller`] turns one window of matured labels into a
//! decision on the job's interval (double, revert, shorten, cool down,
//! hold, pin), each with its reason and the evidence that decided; [`sim`]
//! is a seeded synthetic world (late labels, failed refreshes, drift that
//! moves) to run the controller against for months;
//! [`plot`] draws interval and metric over time as SVG (the simulation's
//! report and `mlgw-features tuner report` of a real job).
//!
//! All of it is computation on values: the steps that read the prediction
//! log and save a job's state run against the store in `schedule::tuning`.

pub mod controller;
pub mod curve;
pub mod metric;
pub mod plot;
pub mod sim;

use std::time::Duration;

use crate::definitions::{Policy, RefreshJobSpec, Scoring};

/// One refresh job under the tuner.
#[derive(Debug, Clone, PartialEq)]
pub struct TunedJob {
    /// The refresh job.
    pub job: String,
    /// The static view it loads (whose feature age is measured).
    pub view: String,
    /// Which predictions count and how they are scored.
    pub scoring: Scoring,
    /// The controller's policy.
    pub policy: Policy,
    /// The evaluation window.
    pub window: Duration,
    /// The job's interval before the tuner first saw it.
    pub current_interval: Duration,
}

impl TunedJob {
    /// The tuned job a `[[refresh_job]]` declares (None: it has no
    /// `[refresh_job.tuner]`).
    pub fn from_spec(spec: &RefreshJobSpec) -> Option<Self> {
        let t = spec.tuning.as_ref()?;
        Some(TunedJob {
            job: spec.name.clone(),
            view: spec.view.clone(),
            scoring: t.scoring.clone(),
            policy: t.policy.clone(),
            window: t.window,
            current_interval: spec.interval,
        })
    }
}

#[cfg(test)]
mod tests;

//! The refresh auto-tuner: measure how the model's metric depends on the age
//! of a static view's features, and run the view's refresh job as rarely as
//! the metric allows.
//!
//! [`metric`] computes AUC / accuracy / log-loss / MAE from the prediction
//! log joined with feedback, overall and by feature age; [`controller`]
//! turns one window's metric into a decision on the job's interval (double,
//! revert, shorten, cool down, hold, pin), each with its reason; [`sim`] is a
//! deterministic synthetic world to run the controller against for weeks.

pub mod controller;
pub mod metric;
pub mod sim;

#[cfg(test)]
mod tests;

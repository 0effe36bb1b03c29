//! The prediction log and feedback: one record per prediction and per
//! feedback, keyed by the prediction ID (UUIDv7), read back by ID or joined
//! over a time window (the tuner's and the rollout report's input).

use std::future::Future;
use std::time::{Duration, SystemTime};

use super::StoreError;
use crate::log::{FeedbackRecord, LogEntry, PredictionRecord};

/// Predictions made in `[from, to)`, oldest first, at most `limit`.
#[derive(Debug, Clone, Copy)]
pub struct LogWindow {
    /// The earliest prediction time (inclusive).
    pub from: SystemTime,
    /// The end (exclusive).
    pub to: SystemTime,
    /// How many predictions at the most.
    pub limit: usize,
}

/// The prediction log and its feedback.
pub trait LogStore: Send + Sync + 'static {
    /// Appends predictions to the log, kept for `retention` where the backend
    /// expires rows (ScyllaDB). Rewriting a record is harmless.
    fn write_predictions(
        &self,
        records: &[PredictionRecord],
        retention: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The logged prediction with this ID (a valid UUIDv7, see
    /// [`crate::log::PredictionKey`]), if any.
    fn read_prediction(
        &self,
        prediction_id: &str,
    ) -> impl Future<Output = Result<Option<PredictionRecord>, StoreError>> + Send;

    /// Stores ground truth for a prediction, replacing earlier feedback for it.
    fn write_feedback(
        &self,
        record: &FeedbackRecord,
        retention: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The predictions in the window, each with its feedback if any.
    fn read_log(
        &self,
        window: LogWindow,
    ) -> impl Future<Output = Result<Vec<LogEntry>, StoreError>> + Send;
}

//! The refresh tuner's state: per refresh job the controller's state and
//! decision history, one JSON document.

use std::future::Future;

use super::StoreError;
use crate::tuner::controller::JobState;

/// The tuner's state per refresh job.
pub trait TunerStore: Send + Sync + 'static {
    /// The refresh tuner's state of `job`, if it was ever saved.
    fn get_tuner_state(
        &self,
        job: &str,
    ) -> impl Future<Output = Result<Option<JobState>, StoreError>> + Send;

    /// Saves the refresh tuner's state of one job (replacing the previous).
    fn put_tuner_state(
        &self,
        state: &JobState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

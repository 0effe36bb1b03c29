//! The refresh tuner's state in the file: one JSON document per job.

use super::EmbeddedStore;
use super::tables::TUNER;
use crate::store::{StoreError, TunerStore};
use crate::tuner::controller::JobState;

impl TunerStore for EmbeddedStore {
    async fn get_tuner_state(&self, job: &str) -> Result<Option<JobState>, StoreError> {
        self.get_json(TUNER, job, format!("tuner state of {job}"))
            .await
    }

    async fn put_tuner_state(&self, state: &JobState) -> Result<(), StoreError> {
        self.put_json(TUNER, &state.job, state).await
    }
}

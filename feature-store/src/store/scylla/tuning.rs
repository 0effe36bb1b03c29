//! The refresh tuner's state on ScyllaDB: `tuner_state (job)`, one JSON
//! text per job, read at the write consistency so the tuner sees its own
//! last write.

use std::time::Duration;

use super::{ScyllaStore, deadline};
use crate::store::decode;
use crate::store::{StoreError, TunerStore};
use crate::tuner::controller::JobState;

impl TunerStore for ScyllaStore {
    async fn get_tuner_state(&self, job: &str) -> Result<Option<JobState>, StoreError> {
        deadline(
            self.config.read_timeout.max(Duration::from_secs(2)),
            async {
                let st = self.statements().await?;
                // The tuner's read must see its own last write (QUORUM-written).
                let mut statement = st.get_tuner.clone();
                statement.set_consistency(self.config.write_consistency);
                let result = self.session.execute_unpaged(&statement, (job,)).await?;
                let rows = result.into_rows_result()?;
                let row: Option<(String,)> = rows.maybe_first_row()?;
                row.map(|(text,)| decode::json(|| format!("log record {job}"), text.as_bytes()))
                    .transpose()
            },
        )
        .await
    }

    async fn put_tuner_state(&self, state: &JobState) -> Result<(), StoreError> {
        let text = serde_json::to_string(state)?;
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            self.session
                .execute_unpaged(&st.put_tuner, (state.job.as_str(), text))
                .await
                .map(drop)
                .map_err(StoreError::from)
        })
        .await
    }
}

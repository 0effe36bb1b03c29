//! Precomputed predictions on ScyllaDB: `scores ((model, key), batch_id)`,
//! so one lookup is a single-partition read; entries expire by TTL.

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::{LOG_WRITE_PARALLELISM, ScyllaStore, deadline, ttl_seconds};
use crate::store::decode;
use crate::store::{ScoreEntry, ScoreKey, ScoreStore, ScoreWrite, StoreError};

impl ScoreStore for ScyllaStore {
    async fn write_scores(&self, write: ScoreWrite<'_>) -> Result<(), StoreError> {
        let st = deadline(self.config.write_timeout, self.statements()).await?;
        let ttl = ttl_seconds(write.retention);
        let rows = write
            .entries
            .iter()
            .map(|e| Ok((e.key.clone(), serde_json::to_string(e)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        stream::iter(rows)
            .map(|(key, entry)| async move {
                deadline(self.config.write_timeout, async {
                    self.session
                        .execute_unpaged(
                            &st.write_score,
                            (write.model, key.as_str(), write.batch_id, entry, ttl),
                        )
                        .await
                        .map(drop)
                        .map_err(StoreError::from)
                })
                .await
            })
            .buffer_unordered(LOG_WRITE_PARALLELISM)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn read_score(&self, at: ScoreKey<'_>) -> Result<Option<ScoreEntry>, StoreError> {
        deadline(self.config.read_timeout, async {
            let st = self.statements().await?;
            let result = self
                .session
                .execute_unpaged(&st.read_score, (at.model, at.key, at.batch_id))
                .await?;
            let rows = result.into_rows_result()?;
            let Some((entry,)) = rows.maybe_first_row::<(String,)>()? else {
                return Ok(None);
            };
            let what = || {
                format!(
                    "precomputed prediction {}/{}/{}",
                    at.model, at.batch_id, at.key
                )
            };
            Ok(Some(decode::json(what, entry.as_bytes())?))
        })
        .await
    }
}

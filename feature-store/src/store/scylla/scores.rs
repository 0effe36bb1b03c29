//! Precomputed predictions on ScyllaDB: `scores ((model, key), batch_id)`,
//! so one lookup is a single-partition read; entries expire by TTL.

use super::{ScyllaStore, deadline, ttl_seconds};
use crate::store::decode;
use crate::store::{ScoreEntry, ScoreKey, ScoreStore, ScoreWrite, ScoringRunRecord, StoreError};

impl ScoreStore for ScyllaStore {
    async fn write_scores(&self, write: ScoreWrite<'_>) -> Result<(), StoreError> {
        let st = deadline(self.config.write_timeout, self.statements()).await?;
        let ttl = ttl_seconds(write.retention);
        let rows = write
            .entries
            .iter()
            .map(|e| {
                let entry = serde_json::to_string(e)?;
                Ok((write.model, e.key.as_str(), write.batch_id, entry, ttl))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.execute_each(&st.write_score, rows).await
    }

    async fn discard_scores(&self, _model: &str, _batch_id: &str) -> Result<(), StoreError> {
        // Entries live in (model, key) partitions: removing one batch would
        // mean finding its keys; their TTL removes them instead.
        Ok(())
    }

    async fn put_scoring_run(&self, record: &ScoringRunRecord) -> Result<(), StoreError> {
        let text = serde_json::to_string(record)?;
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            self.session
                .execute_unpaged(
                    &st.put_scoring_run,
                    (record.job.as_str(), record.batch_id.as_str(), text),
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn scoring_runs(
        &self,
        job: &str,
        limit: usize,
    ) -> Result<Vec<ScoringRunRecord>, StoreError> {
        deadline(self.config.read_timeout, async {
            let st = self.statements().await?;
            let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
            let result = self
                .session
                .execute_unpaged(&st.scoring_runs, (job, limit))
                .await?;
            let rows = result.into_rows_result()?;
            let mut out = Vec::new();
            for row in rows.rows::<(String,)>()? {
                let (text,) = row?;
                out.push(decode::json(
                    || format!("scoring run record of job {job}"),
                    text.as_bytes(),
                )?);
            }
            Ok(out)
        })
        .await
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
            let what = || at.to_string();
            Ok(Some(decode::json(what, entry.as_bytes())?))
        })
        .await
    }
}

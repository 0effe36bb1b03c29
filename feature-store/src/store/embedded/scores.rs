//! Precomputed predictions in the file: (model, batch, key) → JSON entry.

use redb::ReadableDatabase;

use super::tables::{SCORES, SCORING_RUNS};
use super::{EmbeddedStore, key, prefix_end, read_table};
use crate::store::decode;
use crate::store::{ScoreEntry, ScoreKey, ScoreStore, ScoreWrite, ScoringRunRecord, StoreError};

impl ScoreStore for EmbeddedStore {
    async fn write_scores(&self, write: ScoreWrite<'_>) -> Result<(), StoreError> {
        let entries = write
            .entries
            .iter()
            .map(|e| {
                let k = key(&[
                    write.model.as_bytes(),
                    write.batch_id.as_bytes(),
                    e.key.as_bytes(),
                ]);
                Ok((k, serde_json::to_vec(e)?))
            })
            .collect::<Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError>>()?;
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(SCORES)?;
                for (k, v) in &entries {
                    table.insert(k.as_slice(), v.as_slice())?;
                }
            }
            Ok(tx.commit()?)
        })
        .await
    }

    async fn discard_scores(&self, model: &str, batch_id: &str) -> Result<(), StoreError> {
        let prefix = key(&[model.as_bytes(), batch_id.as_bytes()]);
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(SCORES)?;
                let end = prefix_end(&prefix);
                table.retain_in(prefix.as_slice()..end.as_slice(), |_, _| false)?;
            }
            Ok(tx.commit()?)
        })
        .await
    }

    async fn put_scoring_run(&self, record: &ScoringRunRecord) -> Result<(), StoreError> {
        let k = key(&[record.job.as_bytes(), record.batch_id.as_bytes()]);
        let v = serde_json::to_vec(record)?;
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            tx.open_table(SCORING_RUNS)?
                .insert(k.as_slice(), v.as_slice())?;
            Ok(tx.commit()?)
        })
        .await
    }

    async fn scoring_runs(
        &self,
        job: &str,
        limit: usize,
    ) -> Result<Vec<ScoringRunRecord>, StoreError> {
        let prefix = key(&[job.as_bytes()]);
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_read()?;
            let table = tx.open_table(SCORING_RUNS)?;
            let end = prefix_end(&prefix);
            let mut out = Vec::new();
            for item in table
                .range(prefix.as_slice()..end.as_slice())?
                .rev()
                .take(limit)
            {
                let (_, v) = item?;
                out.push(decode::json(|| "scoring run record".to_owned(), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn read_score(&self, at: ScoreKey<'_>) -> Result<Option<ScoreEntry>, StoreError> {
        // Inline like the other one-key reads: a point lookup in a snapshot.
        self.inline(|tx| {
            let table = read_table(tx, SCORES)?;
            let k = key(&[
                at.model.as_bytes(),
                at.batch_id.as_bytes(),
                at.key.as_bytes(),
            ]);
            let Some(v) = table.get(k.as_slice())? else {
                return Ok(None);
            };
            let what = || at.to_string();
            Ok(Some(decode::json(what, v.value())?))
        })
    }
}

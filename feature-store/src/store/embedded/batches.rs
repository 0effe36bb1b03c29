//! Refresh batches in the file: the JSON batch records keyed by (view,
//! batch) and the current batch per view. Switching the current batch also
//! deletes the view's batches older than the one it replaces.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};

use super::tables::{BATCHES, CURRENT, STATIC};
use super::{EmbeddedStore, key, prefix_end};
use crate::clock::{from_micros, to_micros};
use crate::store::decode;
use crate::store::{BatchRecord, BatchStore, CurrentBatch, StoreError};

/// A view's current batch as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct CurrentJson {
    batch_id: String,
    written_at: i64,
    fingerprint: String,
}

impl BatchStore for EmbeddedStore {
    async fn put_batch(&self, record: &BatchRecord) -> Result<(), StoreError> {
        let k = key(&[record.view.as_bytes(), record.batch_id.as_bytes()]);
        let v = serde_json::to_vec(record)?;
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(BATCHES)?;
                table.insert(k.as_slice(), v.as_slice())?;
            }
            Ok(tx.commit()?)
        })
        .await
    }

    async fn list_batches(&self, view: &str, limit: usize) -> Result<Vec<BatchRecord>, StoreError> {
        let prefix = key(&[view.as_bytes()]);
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_read()?;
            let table = tx.open_table(BATCHES)?;
            let end = prefix_end(&prefix);
            let mut out = Vec::new();
            for item in table
                .range(prefix.as_slice()..end.as_slice())?
                .rev()
                .take(limit)
            {
                let (_, v) = item?;
                let record: BatchRecord = decode::json(|| "batch record".to_owned(), v.value())?;
                out.push(record);
            }
            Ok(out)
        })
        .await
    }

    async fn set_current(&self, record: &BatchRecord) -> Result<(), StoreError> {
        let view = record.view.clone();
        let batch_id = record.batch_id.clone();
        let json = serde_json::to_vec(&CurrentJson {
            batch_id: record.batch_id.clone(),
            written_at: to_micros(record.ingested_at),
            fingerprint: record.fingerprint.clone(),
        })?;
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            {
                let mut current = tx.open_table(CURRENT)?;
                let previous: Option<String> = current
                    .get(view.as_str())?
                    .and_then(|g| serde_json::from_slice::<CurrentJson>(g.value()).ok())
                    .map(|c| c.batch_id);
                current.insert(view.as_str(), json.as_slice())?;
                // Keep the new batch and the one it replaces (for a reader that
                // has not switched yet); drop every older batch of the view.
                let mut rows = tx.open_table(STATIC)?;
                let view_prefix = key(&[view.as_bytes()]);
                let keep_prefixes: Vec<Vec<u8>> = [Some(batch_id.as_str()), previous.as_deref()]
                    .into_iter()
                    .flatten()
                    .map(|b| key(&[view.as_bytes(), b.as_bytes()]))
                    .collect();
                let end = prefix_end(&view_prefix);
                rows.retain_in(view_prefix.as_slice()..end.as_slice(), |k, _| {
                    keep_prefixes.iter().any(|p| k.starts_with(p))
                })?;
            }
            Ok(tx.commit()?)
        })
        .await
    }

    async fn current_batches(&self) -> Result<BTreeMap<String, CurrentBatch>, StoreError> {
        self.blocking(|db| {
            Self::check_schema(db)?;
            let tx = db.begin_read()?;
            let table = tx.open_table(CURRENT)?;
            let mut out = BTreeMap::new();
            for item in table.iter()? {
                let (k, v) = item?;
                let c: CurrentJson = decode::json(|| "current batch".to_owned(), v.value())?;
                out.insert(
                    k.value().to_owned(),
                    CurrentBatch {
                        batch_id: c.batch_id,
                        written_at: from_micros(c.written_at),
                        fingerprint: c.fingerprint,
                    },
                );
            }
            Ok(out)
        })
        .await
    }

    async fn discard_batch(&self, view: &str, batch_id: &str) -> Result<(), StoreError> {
        let prefix = key(&[view.as_bytes(), batch_id.as_bytes()]);
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            {
                let mut rows = tx.open_table(STATIC)?;
                let end = prefix_end(&prefix);
                rows.retain_in(prefix.as_slice()..end.as_slice(), |_, _| false)?;
            }
            Ok(tx.commit()?)
        })
        .await
    }
}

//! Refresh batches on ScyllaDB: `refresh_batches` per view, newest first,
//! and `current_batch` per view. A failed batch's rows are left to their TTL.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ScyllaStore, deadline};
use crate::clock::{from_micros, to_micros};
use crate::source::RejectedRow;
use crate::store::decode;
use crate::store::{BatchRecord, BatchStatus, BatchStore, CurrentBatch, StoreError};

/// A `refresh_batches` row, in the order the statement selects it.
type BatchRow = (
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

impl BatchStore for ScyllaStore {
    async fn put_batch(&self, record: &BatchRecord) -> Result<(), StoreError> {
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            let rejections = serde_json::to_string(&record.rejections)?;
            let values = (
                record.view.as_str(),
                record.batch_id.as_str(),
                record.job.as_str(),
                to_micros(record.ingested_at),
                record.started_at.map(to_micros),
                record.finished_at.map(to_micros),
                record.source.as_str(),
                record.fingerprint.as_str(),
                record.script_version.as_str(),
                record.status.as_str(),
                i64::try_from(record.rows_written).unwrap_or(i64::MAX),
                i64::try_from(record.rows_rejected).unwrap_or(i64::MAX),
                rejections,
                record.error.as_deref(),
            );
            self.session
                .execute_unpaged(&st.put_batch, values)
                .await
                .map(drop)
                .map_err(StoreError::from)
        })
        .await
    }

    async fn list_batches(&self, view: &str, limit: usize) -> Result<Vec<BatchRecord>, StoreError> {
        deadline(
            self.config.read_timeout.max(Duration::from_secs(2)),
            async {
                let st = self.statements().await?;
                let limit = i32::try_from(limit).unwrap_or(i32::MAX);
                let result = self
                    .session
                    .execute_unpaged(&st.list_batches, (view, limit))
                    .await?;
                let rows = result.into_rows_result()?;
                let mut out = Vec::new();
                for row in rows.rows::<BatchRow>()? {
                    let (
                        view,
                        batch_id,
                        job,
                        ingested_at,
                        started_at,
                        finished_at,
                        source,
                        fingerprint,
                        script_version,
                        status,
                        rows_written,
                        rows_rejected,
                        rejections,
                        error,
                    ) = row?;
                    let rejections: Vec<RejectedRow> = match rejections {
                        Some(text) => decode::json(|| "batch record".to_owned(), text.as_bytes())?,
                        None => Vec::new(),
                    };
                    out.push(BatchRecord {
                        batch_id,
                        job,
                        view,
                        ingested_at: from_micros(ingested_at),
                        started_at: started_at.map(from_micros),
                        finished_at: finished_at.map(from_micros),
                        source,
                        fingerprint,
                        script_version,
                        status: BatchStatus::parse(&status).ok_or_else(|| {
                            StoreError::Backend(format!("unknown batch status {status:?}"))
                        })?,
                        rows_written: u64::try_from(rows_written).unwrap_or(0),
                        rows_rejected: u64::try_from(rows_rejected).unwrap_or(0),
                        rejections,
                        error,
                    });
                }
                Ok(out)
            },
        )
        .await
    }

    async fn set_current(&self, record: &BatchRecord) -> Result<(), StoreError> {
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            self.session
                .execute_unpaged(
                    &st.set_current,
                    (
                        record.view.as_str(),
                        record.batch_id.as_str(),
                        to_micros(record.ingested_at),
                        record.fingerprint.as_str(),
                    ),
                )
                .await
                .map(drop)
                .map_err(StoreError::from)
        })
        .await
    }

    async fn current_batches(&self) -> Result<BTreeMap<String, CurrentBatch>, StoreError> {
        deadline(
            self.config.read_timeout.max(Duration::from_secs(2)),
            async {
                let st = self.statements().await?;
                let result = self
                    .session
                    .execute_unpaged(&st.current_batches, ())
                    .await?;
                let rows = result.into_rows_result()?;
                let mut out = BTreeMap::new();
                for row in rows.rows::<(String, String, i64, String)>()? {
                    let (view, batch_id, written_at, fingerprint) = row?;
                    out.insert(
                        view,
                        CurrentBatch {
                            batch_id,
                            written_at: from_micros(written_at),
                            fingerprint,
                        },
                    );
                }
                Ok(out)
            },
        )
        .await
    }

    async fn discard_batch(&self, _view: &str, _batch_id: &str) -> Result<(), StoreError> {
        // The rows' TTL collects them; deleting would need a scan.
        Ok(())
    }
}

//! The prediction log and feedback on ScyllaDB: partitions of one hour and
//! shard taken from the UUIDv7 prediction ID itself, so a record is found
//! from its ID alone and a time window is read partition by partition. A
//! call's records are written a partition at a time, as unlogged
//! single-partition batches: one mutation per partition, not per record.

use std::collections::HashMap;
use std::time::Duration;

use super::{LOG_WRITE_PARALLELISM, ScyllaStore, deadline, ttl_seconds};
use crate::log::{
    FeedbackRecord, LOG_SHARDS, LogEntry, PredictionKey, PredictionRecord, hours, id_lower_bound,
    unix_ms,
};
use crate::store::decode;
use crate::store::{LogStore, LogWindow, StoreError};

impl LogStore for ScyllaStore {
    async fn write_predictions(
        &self,
        records: &[PredictionRecord],
        retention: Duration,
    ) -> Result<(), StoreError> {
        let st = deadline(self.config.write_timeout, self.statements()).await?;
        let ttl = ttl_seconds(retention);
        let mut rows = Vec::with_capacity(records.len());
        for r in records {
            let key = PredictionKey::parse(&r.prediction_id)?;
            let (hour, shard) = (key.hour(), i32::from(key.shard));
            let id = r.prediction_id.clone();
            let blob = r.to_bytes();
            let bytes = blob.len() + id.len();
            rows.push(((hour, shard), bytes, (hour, shard, id, blob, ttl)));
        }
        self.execute_grouped(&st.write_prediction, rows, LOG_WRITE_PARALLELISM)
            .await
    }

    async fn read_prediction(
        &self,
        prediction_id: &str,
    ) -> Result<Option<PredictionRecord>, StoreError> {
        let key = PredictionKey::parse(prediction_id)?;
        deadline(self.config.read_timeout, async {
            let st = self.statements().await?;
            let result = self
                .session
                .execute_unpaged(
                    &st.read_prediction,
                    (key.hour(), i32::from(key.shard), prediction_id),
                )
                .await?;
            let rows = result.into_rows_result()?;
            let row: Option<(Vec<u8>,)> = rows.maybe_first_row()?;
            row.map(|(blob,)| decode::prediction(|| format!("log record {prediction_id}"), &blob))
                .transpose()
        })
        .await
    }

    async fn write_feedback(
        &self,
        record: &FeedbackRecord,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let key = PredictionKey::parse(&record.prediction_id)?;
        let blob = serde_json::to_vec(record)?;
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            self.session
                .execute_unpaged(
                    &st.write_feedback,
                    (
                        key.hour(),
                        i32::from(key.shard),
                        record.prediction_id.as_str(),
                        blob,
                        ttl_seconds(retention),
                    ),
                )
                .await
                .map(drop)
                .map_err(StoreError::from)
        })
        .await
    }

    async fn read_log(&self, window: LogWindow) -> Result<Vec<LogEntry>, StoreError> {
        let LogWindow { from, to, limit } = window;
        let st = deadline(self.config.read_timeout, self.statements()).await?;
        let (lo, hi) = (id_lower_bound(unix_ms(from)), id_lower_bound(unix_ms(to)));
        let partitions: Vec<(i64, i32)> = hours(from, to)
            .flat_map(|h| (0..LOG_SHARDS).map(move |s| (h, i32::from(s))))
            .collect();
        let scan_limit = self.config.read_timeout.max(Duration::from_secs(5));
        let range = (lo.as_str(), hi.as_str());
        let mut predictions = self
            .scan_log(&st.scan_predictions, &partitions, range, scan_limit)
            .await?;
        predictions.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        predictions.truncate(limit);
        let feedback: HashMap<String, Vec<u8>> = self
            .scan_log(&st.scan_feedback, &partitions, range, scan_limit)
            .await?
            .into_iter()
            .collect();
        predictions
            .into_iter()
            .map(|(id, blob)| {
                Ok(LogEntry {
                    prediction: decode::prediction(|| format!("log record {id}"), &blob)?,
                    feedback: feedback
                        .get(&id)
                        .map(|f| decode::json(|| format!("log record {id}"), f))
                        .transpose()?,
                })
            })
            .collect()
    }
}

//! The prediction log and feedback in the file, keyed by the prediction ID
//! (UUIDv7 text, so a time window is a key range). The file keeps them until
//! it is deleted; ScyllaDB expires them by TTL.

use std::time::Duration;

use redb::ReadableDatabase;

use super::EmbeddedStore;
use super::tables::{FEEDBACK, PREDICTIONS};
use crate::log::{
    FeedbackRecord, LogEntry, PredictionKey, PredictionRecord, id_lower_bound, unix_ms,
};
use crate::store::decode;
use crate::store::{LogStore, LogWindow, StoreError};

impl LogStore for EmbeddedStore {
    async fn write_predictions(
        &self,
        records: &[PredictionRecord],
        _retention: Duration,
    ) -> Result<(), StoreError> {
        // The embedded file keeps the log until it is deleted; ScyllaDB
        // expires it by TTL.
        let mut encoded = Vec::with_capacity(records.len());
        for r in records {
            PredictionKey::parse(&r.prediction_id)?;
            encoded.push((r.prediction_id.clone(), r.to_bytes()));
        }
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(PREDICTIONS)?;
                for (k, v) in &encoded {
                    table.insert(k.as_str(), v.as_slice())?;
                }
            }
            Ok(tx.commit()?)
        })
        .await
    }

    async fn read_prediction(
        &self,
        prediction_id: &str,
    ) -> Result<Option<PredictionRecord>, StoreError> {
        let id = prediction_id.to_owned();
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_read()?;
            let table = tx.open_table(PREDICTIONS)?;
            let Some(v) = table.get(id.as_str())? else {
                return Ok(None);
            };
            Ok(Some(decode::prediction(
                || format!("prediction record {id}"),
                v.value(),
            )?))
        })
        .await
    }

    async fn write_feedback(
        &self,
        record: &FeedbackRecord,
        _retention: Duration,
    ) -> Result<(), StoreError> {
        PredictionKey::parse(&record.prediction_id)?;
        let k = record.prediction_id.clone();
        let v = serde_json::to_vec(record)?;
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(FEEDBACK)?;
                table.insert(k.as_str(), v.as_slice())?;
            }
            Ok(tx.commit()?)
        })
        .await
    }

    async fn read_log(&self, window: LogWindow) -> Result<Vec<LogEntry>, StoreError> {
        let LogWindow { from, to, limit } = window;
        let (lo, hi) = (id_lower_bound(unix_ms(from)), id_lower_bound(unix_ms(to)));
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_read()?;
            let predictions = tx.open_table(PREDICTIONS)?;
            let feedback = tx.open_table(FEEDBACK)?;
            let mut out = Vec::new();
            for item in predictions.range(lo.as_str()..hi.as_str())?.take(limit) {
                let (k, v) = item?;
                let id = k.value();
                let prediction =
                    decode::prediction(|| format!("prediction record {id}"), v.value())?;
                let feedback = match feedback.get(id)? {
                    Some(f) => Some(decode::json(|| format!("feedback record {id}"), f.value())?),
                    None => None,
                };
                out.push(LogEntry {
                    prediction,
                    feedback,
                });
            }
            Ok(out)
        })
        .await
    }
}

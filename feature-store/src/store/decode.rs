//! Decoding shared by both backends: a stored static row, dynamic value or
//! event from its time and encoded bytes, and the JSON and binary records,
//! each failure naming what it was reading.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::StoreError;
use crate::aggregate::Event;
use crate::clock::from_micros;
use crate::codec::{self, CodecError};
use crate::freshness::{StoredRow, StoredValue};
use crate::log::PredictionRecord;

/// A row of `view`/`entity` whose stored layout (not its encoded values) is
/// broken, e.g. a truncated time.
pub(crate) fn corrupt(view: &str, entity: &str, what: &'static str) -> StoreError {
    corrupt_codec(view, entity)(CodecError { offset: 0, what })
}

/// Wraps a decoding error of a row of `view`/`entity`.
pub(crate) fn corrupt_codec(view: &str, entity: &str) -> impl FnOnce(CodecError) -> StoreError {
    move |source| StoreError::Corrupt {
        view: view.to_owned(),
        entity: entity.to_owned(),
        source,
    }
}

/// The static row of `entity` written by `batch_id` at `micros` (its data
/// time) with the encoded values `blob`.
pub(crate) fn static_row(
    view: &str,
    batch_id: &str,
    entity: &str,
    micros: i64,
    blob: &[u8],
) -> Result<StoredRow, StoreError> {
    let written_at = from_micros(micros);
    let values = codec::decode(blob).map_err(corrupt_codec(view, entity))?;
    Ok(StoredRow {
        values: values
            .into_iter()
            .map(|(k, value)| (k, StoredValue { value, written_at }))
            .collect(),
        written_at,
        batch_id: Some(Arc::from(batch_id)),
    })
}

/// One dynamic value of `entity` with its event time `micros`.
pub(crate) fn dynamic_value(
    view: &str,
    entity: &str,
    micros: i64,
    blob: &[u8],
) -> Result<StoredValue, StoreError> {
    Ok(StoredValue {
        value: codec::decode_value(blob).map_err(corrupt_codec(view, entity))?,
        written_at: from_micros(micros),
    })
}

/// One raw event of `entity` with its time, ID and encoded fields.
pub(crate) fn event(
    view: &str,
    entity: &str,
    micros: i64,
    event_id: String,
    blob: &[u8],
) -> Result<Event, StoreError> {
    Ok(Event {
        event_id,
        event_time: from_micros(micros),
        fields: codec::decode(blob).map_err(corrupt_codec(view, entity))?,
    })
}

/// A JSON record; `what` names it in the error ("batch record", "tuner
/// state of job-1").
pub(crate) fn json<T: DeserializeOwned>(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::damaged(what(), e))
}

/// A logged prediction (`PredictionRecord::to_bytes`); `what` names it.
pub(crate) fn prediction(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<PredictionRecord, StoreError> {
    PredictionRecord::from_bytes(bytes).map_err(|e| StoreError::damaged(what(), e))
}

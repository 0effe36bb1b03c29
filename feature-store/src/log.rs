//! The prediction log and feedback records, as both store backends keep them.
//!
//! Every prediction the gateway answers becomes a [`PredictionRecord`] (who
//! asked, which model and version, the input row with each view's age, the
//! outputs). Ground truth arrives later as a [`FeedbackRecord`] for the same
//! prediction ID. Joined over a time window ([`LogEntry`]), they are the
//! refresh tuner's input: the metric as a function of feature age.
//!
//! Prediction IDs are UUIDv7 strings: their text sorts by time, and the time
//! and a shard number can be read back from the ID alone, so a backend can
//! find a prediction (and its feedback) from its ID without an index.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How many partitions one hour of the log is spread over on ScyllaDB.
pub const LOG_SHARDS: u8 = 16;

/// One post-processed output as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedOutput {
    /// The output name.
    pub name: String,
    /// The chosen label, when the model declares labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The (calibrated) score of the chosen label or the first value.
    pub score: f64,
}

/// One answered prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    /// Time-ordered ID (UUIDv7) given to the caller.
    pub prediction_id: String,
    /// When the answer was made.
    #[serde(with = "crate::store::unix_micros")]
    pub at: SystemTime,
    /// The caller's subject (never a token).
    pub subject: String,
    /// The model.
    pub model: String,
    /// The version that answered.
    pub model_version: String,
    /// How the version was chosen: `stable`, `canary`, `pilot`, `explicit`,
    /// or `shadow` for a silent copy that no caller saw.
    pub route: String,
    /// The entity key the features were read for.
    pub entity: String,
    /// The model's input row, in its declared column order.
    pub inputs: Vec<f32>,
    /// Per view read, the age of its values in ms (None: no row).
    pub view_ages_ms: BTreeMap<String, Option<u64>>,
    /// Input columns that got their declared default.
    pub defaulted: Vec<String>,
    /// Post-processed outputs.
    pub outputs: Vec<LoggedOutput>,
    /// For a shadow record: the ID of the prediction the caller got, so the
    /// two can be compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_of: Option<String>,
    /// Time the model-server call took, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_time_us: Option<u64>,
}

/// The observed outcome of a prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A class label.
    Label(String),
    /// A numeric value (regression).
    Value(f64),
}

/// Ground truth for one prediction. A later record for the same ID replaces
/// an earlier one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    /// The prediction.
    pub prediction_id: String,
    /// What happened.
    pub outcome: Outcome,
    /// When it was observed.
    #[serde(with = "crate::store::unix_micros")]
    pub observed_at: SystemTime,
    /// When the gateway received it.
    #[serde(with = "crate::store::unix_micros")]
    pub received_at: SystemTime,
    /// Who sent it.
    pub subject: String,
}

/// A prediction with its feedback, if any arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// The prediction.
    pub prediction: PredictionRecord,
    /// Its ground truth.
    pub feedback: Option<FeedbackRecord>,
}

/// Why a string is not a prediction ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a prediction ID (a UUIDv7 as returned by predict)")]
pub struct BadPredictionId(pub String);

/// A prediction ID taken apart: its time and the shard it is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PredictionKey {
    /// Milliseconds since the Unix epoch, from the ID.
    pub unix_ms: u64,
    /// The ID's shard, `0..LOG_SHARDS`.
    pub shard: u8,
}

impl PredictionKey {
    /// Parses a prediction ID (a lowercase hyphenated UUIDv7).
    ///
    /// # Errors
    /// [`BadPredictionId`] for anything else, so a caller's typo is a clear
    /// 400 and never a lookup of some other key.
    pub fn parse(id: &str) -> Result<Self, BadPredictionId> {
        let bad = || BadPredictionId(id.chars().take(64).collect());
        let uuid = uuid::Uuid::try_parse(id).map_err(|_| bad())?;
        if uuid.get_version_num() != 7 || uuid.hyphenated().to_string() != id {
            return Err(bad());
        }
        let bytes = uuid.as_bytes();
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&bytes[..6]);
        Ok(PredictionKey {
            unix_ms: u64::from_be_bytes(ms),
            shard: bytes[15] % LOG_SHARDS,
        })
    }

    /// The hour (since the Unix epoch) the ID falls in: the log's partition
    /// together with the shard.
    pub fn hour(&self) -> i64 {
        i64::try_from(self.unix_ms / 3_600_000).unwrap_or(i64::MAX)
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The smallest UUIDv7 text of millisecond `ms`: every ID made at or after
/// `ms` sorts at or after it, every ID made before sorts before it.
pub fn id_lower_bound(ms: u64) -> String {
    let ms = ms & 0xFFFF_FFFF_FFFF;
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        ms >> 16,
        ms & 0xFFFF
    )
}

/// The hours (since the Unix epoch) that `[from, to)` touches.
pub fn hours(from: SystemTime, to: SystemTime) -> std::ops::Range<i64> {
    let first = i64::try_from(unix_ms(from) / 3_600_000).unwrap_or(i64::MAX);
    let last = i64::try_from(unix_ms(to).saturating_sub(1) / 3_600_000).unwrap_or(i64::MAX);
    if to <= from {
        first..first
    } else {
        first..last.saturating_add(1)
    }
}

/// How long the log keeps records unless configured.
pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_gives_back_its_time_and_a_stable_shard() {
        let before = unix_ms(SystemTime::now());
        let id = uuid::Uuid::now_v7().to_string();
        let after = unix_ms(SystemTime::now());
        let key = PredictionKey::parse(&id).expect("a fresh v7 ID parses");
        assert!(key.unix_ms >= before && key.unix_ms <= after);
        assert!(key.shard < LOG_SHARDS);
        assert_eq!(PredictionKey::parse(&id), Ok(key));
    }

    #[test]
    fn anything_but_a_lowercase_v7_id_is_refused() {
        for bad in [
            "",
            "42",
            "not-an-id",
            "0193a0b4-6c2e-4d7e-9f00-1234567890ab", // v4
            "0193A0B4-6C2E-7D7E-9F00-1234567890AB", // upper case
            "0193a0b46c2e7d7e9f001234567890ab",     // no hyphens
        ] {
            assert!(PredictionKey::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn bounds_sort_ids_by_time() {
        let id = uuid::Uuid::now_v7().to_string();
        let ms = PredictionKey::parse(&id).expect("parses").unix_ms;
        assert!(id_lower_bound(ms).as_str() <= id.as_str());
        assert!(id_lower_bound(ms + 1).as_str() > id.as_str());
        assert!(id_lower_bound(ms - 1).as_str() < id.as_str());
    }

    #[test]
    fn hours_cover_the_window() {
        let t = UNIX_EPOCH + Duration::from_secs(10 * 3600);
        assert_eq!(hours(t, t + Duration::from_secs(3600)), 10..11);
        assert_eq!(hours(t, t + Duration::from_secs(3601)), 10..12);
        assert_eq!(hours(t, t), 10..10);
    }
}

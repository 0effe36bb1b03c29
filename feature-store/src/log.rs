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
    #[serde(with = "crate::clock::unix_micros")]
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
    /// Where the answer came from; records of earlier layouts read as live.
    #[serde(default)]
    pub source: PredictionSource,
}

/// Where an answer came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PredictionSource {
    /// The model computed it for this call.
    #[default]
    Live,
    /// A batch-scoring run computed it earlier; the prediction store served
    /// it.
    Precomputed {
        /// The scoring batch it came from.
        batch_id: String,
    },
}

impl PredictionSource {
    /// `live` or `precomputed`, as answers and metrics name it.
    pub fn as_str(&self) -> &'static str {
        match self {
            PredictionSource::Live => "live",
            PredictionSource::Precomputed { .. } => "precomputed",
        }
    }
}

/// First byte of a [`PredictionRecord`] in the binary layout, version 1
/// (no source: live). Records written before it are JSON, whose first byte
/// is `{`.
const BINARY_V1: u8 = 1;
/// Version 2: version 1 followed by the source (0 live; 1 precomputed and
/// its batch ID).
const BINARY_V2: u8 = 2;

impl PredictionRecord {
    /// The record as the stores keep it: a compact binary layout (little
    /// endian; strings and lists prefixed by a u32 length; the input row as
    /// raw f32). About a third the size of its JSON and several times
    /// cheaper to make, which matters as every answered prediction is one.
    pub fn to_bytes(&self) -> Vec<u8> {
        let strings = self.prediction_id.len()
            + self.subject.len()
            + self.model.len()
            + self.model_version.len()
            + self.route.len()
            + self.entity.len();
        let mut out =
            Vec::with_capacity(64 + strings + 4 * self.inputs.len() + 32 * self.outputs.len());
        out.push(BINARY_V2);
        for text in [
            &self.prediction_id,
            &self.subject,
            &self.model,
            &self.model_version,
            &self.route,
            &self.entity,
        ] {
            put_str(&mut out, text);
        }
        out.extend_from_slice(&crate::clock::to_micros(self.at).to_le_bytes());
        put_len(&mut out, self.inputs.len());
        for v in &self.inputs {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_len(&mut out, self.view_ages_ms.len());
        for (view, age) in &self.view_ages_ms {
            put_str(&mut out, view);
            put_opt_u64(&mut out, *age);
        }
        put_len(&mut out, self.defaulted.len());
        for d in &self.defaulted {
            put_str(&mut out, d);
        }
        put_len(&mut out, self.outputs.len());
        for o in &self.outputs {
            put_str(&mut out, &o.name);
            match &o.label {
                Some(l) => {
                    out.push(1);
                    put_str(&mut out, l);
                }
                None => out.push(0),
            }
            out.extend_from_slice(&o.score.to_le_bytes());
        }
        match &self.shadow_of {
            Some(id) => {
                out.push(1);
                put_str(&mut out, id);
            }
            None => out.push(0),
        }
        put_opt_u64(&mut out, self.model_time_us);
        match &self.source {
            PredictionSource::Live => out.push(0),
            PredictionSource::Precomputed { batch_id } => {
                out.push(1);
                put_str(&mut out, batch_id);
            }
        }
        out
    }

    /// Reads a record written by [`PredictionRecord::to_bytes`], or the JSON
    /// of earlier releases.
    ///
    /// # Errors
    /// A damaged record (cut short, bad UTF-8, unknown layout, bytes left
    /// over): what is wrong and at which byte; never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DamagedRecord> {
        match bytes.first() {
            Some(b'{') => Ok(serde_json::from_slice(bytes)?),
            Some(&layout @ (BINARY_V1 | BINARY_V2)) => {
                let mut r = Reader(crate::codec::Reader::new(bytes));
                r.array::<1>()?;
                let mut record = r.record()?;
                if layout == BINARY_V2 {
                    record.source = if r.flag()? {
                        PredictionSource::Precomputed {
                            batch_id: r.string()?,
                        }
                    } else {
                        PredictionSource::Live
                    };
                }
                if r.0.remaining() != 0 {
                    return Err(r.damaged("bytes after the end of the record"));
                }
                Ok(record)
            }
            Some(&other) => Err(DamagedRecord::UnknownLayout(other)),
            None => Err(DamagedRecord::Empty),
        }
    }
}

/// Why stored bytes are not a prediction record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DamagedRecord {
    /// A JSON record (earlier releases) that does not parse.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// The binary layout is cut short or malformed.
    #[error("{} at byte {}", .0.what, .0.offset)]
    Layout(#[source] crate::codec::CodecError),
    /// The first byte names no known layout.
    #[error("unknown record layout {0:#04x}")]
    UnknownLayout(u8),
    /// No bytes at all.
    #[error("empty record")]
    Empty,
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // A field over 4 GiB cannot be made by the gateway (its request bodies
    // are bounded far below that); the length saturates rather than wraps.
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
        None => out.push(0),
    }
}

impl From<crate::codec::CodecError> for DamagedRecord {
    fn from(e: crate::codec::CodecError) -> Self {
        DamagedRecord::Layout(e)
    }
}

/// The record layout's fields over the stores' shared byte cursor.
struct Reader<'a>(crate::codec::Reader<'a>);

impl Reader<'_> {
    fn damaged(&self, what: &'static str) -> DamagedRecord {
        self.0.err(what).into()
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DamagedRecord> {
        Ok(self.0.array()?)
    }

    fn len(&mut self) -> Result<usize, DamagedRecord> {
        let n = u32::from_le_bytes(self.array()?);
        let n = usize::try_from(n).map_err(|_| self.damaged("length too large"))?;
        // Every element takes at least one byte: a longer list than the
        // bytes left is damage, found before allocating for it.
        if n > self.0.remaining() {
            return Err(self.damaged("length beyond the end of the record"));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, DamagedRecord> {
        let n = self.len()?;
        let raw = self.0.take(n)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| self.damaged("text that is not UTF-8"))
    }

    fn flag(&mut self) -> Result<bool, DamagedRecord> {
        match self.array::<1>()? {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(self.damaged("a presence flag that is neither 0 nor 1")),
        }
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, DamagedRecord> {
        Ok(if self.flag()? {
            Some(u64::from_le_bytes(self.array()?))
        } else {
            None
        })
    }

    fn record(&mut self) -> Result<PredictionRecord, DamagedRecord> {
        let prediction_id = self.string()?;
        let subject = self.string()?;
        let model = self.string()?;
        let model_version = self.string()?;
        let route = self.string()?;
        let entity = self.string()?;
        let at = crate::clock::from_micros(i64::from_le_bytes(self.array()?));
        let n = self.len()?;
        let mut inputs = Vec::with_capacity(n);
        for _ in 0..n {
            inputs.push(f32::from_le_bytes(self.array()?));
        }
        let mut view_ages_ms = BTreeMap::new();
        for _ in 0..self.len()? {
            let view = self.string()?;
            let age = self.opt_u64()?;
            view_ages_ms.insert(view, age);
        }
        let n = self.len()?;
        let mut defaulted = Vec::with_capacity(n);
        for _ in 0..n {
            defaulted.push(self.string()?);
        }
        let n = self.len()?;
        let mut outputs = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.string()?;
            let label = if self.flag()? {
                Some(self.string()?)
            } else {
                None
            };
            let score = f64::from_le_bytes(self.array()?);
            outputs.push(LoggedOutput { name, label, score });
        }
        let shadow_of = if self.flag()? {
            Some(self.string()?)
        } else {
            None
        };
        let model_time_us = self.opt_u64()?;
        Ok(PredictionRecord {
            prediction_id,
            at,
            subject,
            model,
            model_version,
            route,
            entity,
            inputs,
            view_ages_ms,
            defaulted,
            outputs,
            shadow_of,
            model_time_us,
            source: PredictionSource::Live,
        })
    }
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
    #[serde(with = "crate::clock::unix_micros")]
    pub observed_at: SystemTime,
    /// When the gateway received it.
    #[serde(with = "crate::clock::unix_micros")]
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

    fn sample(shadow: bool) -> PredictionRecord {
        PredictionRecord {
            prediction_id: uuid::Uuid::now_v7().to_string(),
            at: UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456),
            subject: "alice@example.com".to_owned(),
            model: "fraud".to_owned(),
            model_version: "2".to_owned(),
            route: "canary".to_owned(),
            entity: "customer_id=c-42 ✓".to_owned(),
            inputs: vec![0.5, -1.25, f32::MAX, 0.0, 1e-30],
            view_ages_ms: BTreeMap::from([
                ("customer_profile".to_owned(), Some(3_600_000)),
                ("customer_activity".to_owned(), None),
            ]),
            defaulted: vec!["txn_count_1h".to_owned()],
            outputs: vec![
                LoggedOutput {
                    name: "scores".to_owned(),
                    label: Some("fraud".to_owned()),
                    score: 0.875,
                },
                LoggedOutput {
                    name: "raw".to_owned(),
                    label: None,
                    score: -3.5,
                },
            ],
            shadow_of: shadow.then(|| uuid::Uuid::now_v7().to_string()),
            model_time_us: (!shadow).then_some(412),
            source: if shadow {
                PredictionSource::Live
            } else {
                PredictionSource::Precomputed {
                    batch_id: uuid::Uuid::now_v7().to_string(),
                }
            },
        }
    }

    #[test]
    fn a_record_reads_back_as_written_and_is_smaller_than_its_json() {
        for shadow in [false, true] {
            let r = sample(shadow);
            let bytes = r.to_bytes();
            assert_eq!(PredictionRecord::from_bytes(&bytes).ok(), Some(r.clone()));
            let json = serde_json::to_vec(&r).expect("serialises");
            assert!(
                bytes.len() < json.len(),
                "{} >= {}",
                bytes.len(),
                json.len()
            );
        }
    }

    #[test]
    fn records_written_as_json_by_earlier_releases_still_read() {
        let r = sample(false);
        let json = serde_json::to_vec(&r).expect("serialises");
        assert_eq!(PredictionRecord::from_bytes(&json).ok(), Some(r));
    }

    #[test]
    fn records_of_the_first_binary_layout_read_as_live() {
        let mut r = sample(true);
        let mut bytes = r.to_bytes();
        // Layout 1 is layout 2 without the trailing source.
        assert_eq!(bytes.pop(), Some(0));
        bytes[0] = BINARY_V1;
        r.source = PredictionSource::Live;
        assert_eq!(PredictionRecord::from_bytes(&bytes).ok(), Some(r));
    }

    #[test]
    fn damaged_records_are_errors_never_panics() {
        let bytes = sample(true).to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                PredictionRecord::from_bytes(&bytes[..cut]).is_err(),
                "a record cut to {cut} bytes was accepted"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let err = PredictionRecord::from_bytes(&longer).expect_err("trailing byte");
        assert!(err.to_string().contains("after the end"), "{err}");
        let mut huge = bytes.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = PredictionRecord::from_bytes(&huge).expect_err("huge length");
        assert!(err.to_string().contains("beyond the end"), "{err}");
        let mut layout = bytes;
        layout[0] = 9;
        let err = PredictionRecord::from_bytes(&layout).expect_err("unknown layout");
        assert!(
            err.to_string().contains("unknown record layout 0x09"),
            "{err}"
        );
    }

    #[test]
    fn hours_cover_the_window() {
        let t = UNIX_EPOCH + Duration::from_secs(10 * 3600);
        assert_eq!(hours(t, t + Duration::from_secs(3600)), 10..11);
        assert_eq!(hours(t, t + Duration::from_secs(3601)), 10..12);
        assert_eq!(hours(t, t), 10..10);
    }
}

//! Refresh batches: the record of every refresh run and, per static view, the
//! batch it serves, switched in one write when a new batch is done.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::source::RejectedRow;

/// Where a refresh batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Recorded; the file is being read.
    Ingested,
    /// Rows are being written.
    Processing,
    /// Complete and current (or superseded by a later one).
    Done,
    /// Stopped by an error; never served.
    Failed,
}

impl BatchStatus {
    /// The lowercase name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Ingested => "ingested",
            BatchStatus::Processing => "processing",
            BatchStatus::Done => "done",
            BatchStatus::Failed => "failed",
        }
    }

    /// Parses [`BatchStatus::as_str`]'s output.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ingested" => BatchStatus::Ingested,
            "processing" => BatchStatus::Processing,
            "done" => BatchStatus::Done,
            "failed" => BatchStatus::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The record of one refresh run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// Time-ordered ID (UUIDv7): later batches sort after earlier ones.
    pub batch_id: String,
    /// The refresh job.
    pub job: String,
    /// The static view loaded.
    pub view: String,
    /// When the run started reading its source; the rows' data time.
    #[serde(with = "crate::clock::unix_micros")]
    pub ingested_at: SystemTime,
    /// When writing started.
    #[serde(with = "crate::clock::opt_unix_micros")]
    pub started_at: Option<SystemTime>,
    /// When the run ended (done or failed).
    #[serde(with = "crate::clock::opt_unix_micros")]
    pub finished_at: Option<SystemTime>,
    /// The source file.
    pub source: String,
    /// SHA-256 of the source bytes, view, job and script version: equal
    /// fingerprints mean an identical load.
    pub fingerprint: String,
    /// The version of the script or pipeline that produced the file.
    pub script_version: String,
    /// Where the run is.
    pub status: BatchStatus,
    /// Rows written.
    pub rows_written: u64,
    /// Rows rejected.
    pub rows_rejected: u64,
    /// The first rejected rows with their line and reason.
    pub rejections: Vec<RejectedRow>,
    /// Why the run failed.
    pub error: Option<String>,
}

/// The batch a static view serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentBatch {
    /// The batch.
    pub batch_id: String,
    /// Its data time.
    pub written_at: SystemTime,
    /// Its fingerprint.
    pub fingerprint: String,
}

/// Refresh batch records and each static view's current batch.
pub trait BatchStore: Send + Sync + 'static {
    /// Inserts or replaces a batch record.
    fn put_batch(
        &self,
        record: &BatchRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The records of `view`'s batches, newest first, at most `limit`.
    fn list_batches(
        &self,
        view: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<BatchRecord>, StoreError>> + Send;

    /// Makes `record` (a done batch) the batch its view serves.
    fn set_current(
        &self,
        record: &BatchRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every static view's current batch.
    fn current_batches(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, CurrentBatch>, StoreError>> + Send;

    /// Removes what a failed batch wrote, where the backend can do so cheaply
    /// (embedded); others let the rows' TTL collect them.
    fn discard_batch(
        &self,
        view: &str,
        batch_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

//! Precomputed predictions: what a batch-scoring run wrote for one model,
//! one entry per key (an entity key, or a combination key from
//! [`crate::combination`]) under the run's batch, read back by one lookup of
//! (model, batch, key). A scoring batch has a [`super::BatchRecord`] like a
//! refresh batch, whose target is [`score_target`] instead of a view; the
//! batch a model serves is that target's current batch, switched in one
//! write when a run completes. An entry of any other batch is never read.

use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::StoreError;

/// One precomputed prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreEntry {
    /// The entity or combination key.
    pub key: String,
    /// The model version that scored it.
    pub model_version: String,
    /// The post-processed outputs as the live answer gives them (JSON).
    pub outputs: String,
    /// When it was scored.
    #[serde(with = "crate::clock::unix_micros")]
    pub scored_at: SystemTime,
}

/// Entries of one scoring batch, to store.
#[derive(Debug, Clone, Copy)]
pub struct ScoreWrite<'a> {
    /// The model scored.
    pub model: &'a str,
    /// The scoring run's batch.
    pub batch_id: &'a str,
    /// The entries.
    pub entries: &'a [ScoreEntry],
    /// How long a backend that collects old batches by TTL keeps them.
    pub retention: Duration,
}

/// Where one entry is.
#[derive(Debug, Clone, Copy)]
pub struct ScoreKey<'a> {
    /// The model.
    pub model: &'a str,
    /// The batch.
    pub batch_id: &'a str,
    /// The entity or combination key.
    pub key: &'a str,
}

/// The batch-record target of `model`'s precomputed predictions, where a
/// refresh batch names its view: `predictions:<model>` (a view name cannot
/// hold a `:`).
pub fn score_target(model: &str) -> String {
    format!("predictions:{model}")
}

/// Precomputed predictions per model, batch and key.
pub trait ScoreStore: Send + Sync + 'static {
    /// Writes entries of one batch; rewriting an entry is harmless.
    fn write_scores(
        &self,
        write: ScoreWrite<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes what a failed or abandoned batch wrote, where the backend can
    /// do so cheaply (embedded); others let the entries' TTL collect them.
    fn discard_scores(
        &self,
        model: &str,
        batch_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The entry at `at`, if that batch holds one for the key.
    fn read_score(
        &self,
        at: ScoreKey<'_>,
    ) -> impl Future<Output = Result<Option<ScoreEntry>, StoreError>> + Send;
}

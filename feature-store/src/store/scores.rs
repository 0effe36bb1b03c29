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

/// What one scoring run (or one shard of it) saw and decided, kept per job
/// and batch: the next run judges its cardinality against it, and metrics
/// and the CLI report its alarms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoringRunRecord {
    /// The scoring job.
    pub job: String,
    /// The batch; a shard's own record is `<batch>/<shard>-of-<count>`.
    pub batch_id: String,
    /// The model version scored.
    pub model_version: String,
    /// Distinct keys and categorical values, judged against the previous
    /// run.
    pub cardinality: crate::cardinality::Snapshot,
    /// Per categorical key feature: distinct and new values.
    pub features: Vec<crate::cardinality::FeatureCount>,
    /// What raised the alarm (empty: nothing).
    pub alarms: Vec<crate::cardinality::Alarm>,
    /// Whether the batch was switched to (served).
    pub switched: bool,
    /// When the run ended.
    #[serde(with = "crate::clock::unix_micros")]
    pub finished_at: SystemTime,
}

impl std::fmt::Display for ScoreKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "precomputed prediction {}/{}/{}",
            self.model, self.batch_id, self.key
        )
    }
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

    /// Saves the record of a scoring run (or of one shard of it).
    fn put_scoring_run(
        &self,
        record: &ScoringRunRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The run records of `job`, newest batch first, at most `limit`.
    fn scoring_runs(
        &self,
        job: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ScoringRunRecord>, StoreError>> + Send;

    /// The entry at `at`, if that batch holds one for the key.
    fn read_score(
        &self,
        at: ScoreKey<'_>,
    ) -> impl Future<Output = Result<Option<ScoreEntry>, StoreError>> + Send;
}

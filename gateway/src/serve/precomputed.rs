//! The prediction store on the prediction path: for a model answered from
//! it first, the entry of the model's current scoring batch for the call's
//! key (the entity key, or the combination key of the assembled row), kept
//! decoded in a moka cache. An entry is served only when it was scored by
//! the version routing chose for this caller and is younger than the job's
//! max age; every other case says why, so the caller is answered live and
//! the reason counted.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use feature_store::definitions::ScoringJobSpec;
use feature_store::reader::FeatureReader;
use feature_store::store::{FullStore, ScoreEntry, ScoreKey, score_target};
use moka::future::Cache;

use crate::metrics::Lookup;
use crate::postprocess::Processed;

/// Entries kept decoded at most (hits and known misses together).
const CACHE_ENTRIES: u64 = 200_000;
/// How long a cached entry or known miss is kept; a new batch replaces
/// them at once (every lookup checks the batch).
const CACHE_TTL: Duration = Duration::from_secs(60);

/// A precomputed answer, decoded.
#[derive(Debug)]
pub struct Hit {
    /// The scoring batch it came from.
    pub batch_id: Arc<str>,
    /// The version that scored it.
    pub model_version: String,
    /// The post-processed outputs, as the live answer gives them.
    pub outputs: Vec<Processed>,
    /// When it was scored.
    pub scored_at: SystemTime,
}

impl Hit {
    /// How old the entry is at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.scored_at).unwrap_or(Duration::ZERO)
    }
}

#[derive(Debug, Clone)]
struct Cached {
    /// The key the entry belongs to: the cache key holds only its hash.
    key: Arc<str>,
    batch_id: Arc<str>,
    hit: Option<Arc<Hit>>,
}

/// One model's view of its prediction store.
pub struct ModelScores {
    job: ScoringJobSpec,
    target: String,
    model: String,
}

impl ModelScores {
    /// The store of `job`'s model.
    pub fn new(job: ScoringJobSpec) -> Self {
        ModelScores {
            target: score_target(&job.model),
            model: job.model.clone(),
            job,
        }
    }

    /// The scoring job that fills it.
    pub fn job(&self) -> &ScoringJobSpec {
        &self.job
    }
}

/// The decoded-entry cache shared by every model.
pub struct Precomputed {
    cache: Cache<(u32, u64), Cached>,
    hasher: RandomState,
}

impl Default for Precomputed {
    fn default() -> Self {
        Precomputed {
            cache: Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(CACHE_TTL)
                .build(),
            hasher: RandomState::new(),
        }
    }
}

impl Precomputed {
    /// The entry for `key` that may answer a call routed to `version` at
    /// `now`, or why there is none. `slot` tells models apart in the cache.
    ///
    /// # Errors
    /// The [`Lookup`] outcome that sends the call live.
    pub async fn lookup<S: FullStore>(
        &self,
        reader: &FeatureReader<S>,
        scores: &ModelScores,
        slot: u32,
        key: &str,
        version: &str,
        now: SystemTime,
    ) -> Result<Arc<Hit>, Lookup> {
        let hit = self.entry(reader, scores, slot, key).await?;
        if hit.model_version != version {
            return Err(Lookup::Version);
        }
        if hit.age(now) > scores.job.max_age {
            return Err(Lookup::Stale);
        }
        Ok(hit)
    }

    async fn entry<S: FullStore>(
        &self,
        reader: &FeatureReader<S>,
        scores: &ModelScores,
        slot: u32,
        key: &str,
    ) -> Result<Arc<Hit>, Lookup> {
        let batch = reader
            .current_batch(&scores.target)
            .ok_or(Lookup::NoBatch)?;
        let cache_key = (slot, self.hasher.hash_one(key));
        if let Some(cached) = self.cache.get(&cache_key).await
            && &*cached.key == key
            && *cached.batch_id == *batch.batch_id
        {
            return cached.hit.ok_or(Lookup::Miss);
        }
        let entry = reader
            .store()
            .read_score(ScoreKey {
                model: &scores.model,
                batch_id: &batch.batch_id,
                key,
            })
            .await
            .map_err(|e| {
                tracing::debug!(model = %scores.model, "prediction store read failed: {e}");
                Lookup::StoreError
            })?;
        let batch_id: Arc<str> = Arc::from(batch.batch_id.as_str());
        let hit = match entry {
            Some(entry) => Some(Arc::new(decode(entry, &batch_id).map_err(|e| {
                tracing::warn!(model = %scores.model, key, "a precomputed entry does not decode: {e}");
                Lookup::StoreError
            })?)),
            None => None,
        };
        self.cache
            .insert(
                cache_key,
                Cached {
                    key: Arc::from(key),
                    batch_id,
                    hit: hit.clone(),
                },
            )
            .await;
        hit.ok_or(Lookup::Miss)
    }
}

fn decode(entry: ScoreEntry, batch_id: &Arc<str>) -> Result<Hit, serde_json::Error> {
    Ok(Hit {
        batch_id: Arc::clone(batch_id),
        outputs: serde_json::from_str(&entry.outputs)?,
        model_version: entry.model_version,
        scored_at: entry.scored_at,
    })
}

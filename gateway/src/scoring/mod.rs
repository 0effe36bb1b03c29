//! Batch scoring: one run of a `[[scoring_job]]`. It finds what to score
//! ([`source`]: a static view's current batch, the most requested entities or
//! combinations in the prediction log, or a file of keys), assembles each row
//! with the live path's own enrichment ([`crate::enrich`]), calls the
//! model-server in batches with several calls in flight, post-processes as a
//! live answer is, and writes the entries under a new batch of the model's
//! prediction store. The batch is served only once complete and judged by
//! the cardinality watch: a failed, killed or refused run leaves the
//! previous batch served.
//!
//! A run may be one of N shards ([`Shard`]): the shards agree on the batch
//! through a lease named after the run, each scores its part and records it,
//! and the shard that finds every part done judges the whole and switches.

pub mod host;
pub mod source;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use feature_store::cardinality::{self, Snapshot, Watch};
use feature_store::definitions::{FeatureDefinitions, ModelFeatures, ScoringJobSpec};
use feature_store::reader::FeatureReader;
use feature_store::source::RejectedRow;
use feature_store::store::{
    BatchRecord, BatchStatus, FullStore, Lease, LeaseOutcome, ScoreEntry, ScoreWrite,
    ScoringRunRecord, StoreError, score_target,
};
use futures_util::TryStreamExt;

use crate::config::ModelConfig;
use crate::enrich::Enricher;
use crate::model::infer::{BreakerConfig, InferError, ModelClient};
use crate::rollout::live::{RolloutError, stored_table};

pub use source::SourceError;

/// Rejected rows kept in a batch record (the count covers them all).
const KEPT_REJECTIONS: usize = 100;
/// How long the lease that names a sharded run's batch lasts: longer than
/// any run, so a late shard still finds the batch of its run.
const RUN_LEASE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a whole run's job lease lasts before it must be renewed; a
/// crashed holder's lease lapses after it.
const JOB_LEASE: Duration = Duration::from_secs(15 * 60);
/// Batches of a model kept after a switch: the served one and the one
/// before (entries of older ones are removed where the backend can).
const KEPT_BATCHES: usize = 2;

/// One part of a sharded run: `index` of `count` (`0/1`: the whole run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, below `count`.
    pub index: u32,
    /// How many shards score the batch together.
    pub count: u32,
}

impl Shard {
    /// The whole run in one process.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/N` (e.g. `0/4`, as a Kubernetes Indexed Job's completion
    /// index over its completions).
    ///
    /// # Errors
    /// A message saying what is wrong with the text.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (i, n) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: write the shard as INDEX/COUNT, e.g. 0/4"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: the index {i:?} is not a whole number"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: the count {n:?} is not a whole number"))?;
        if count == 0 || index >= count {
            return Err(format!(
                "{text:?}: the index must be below the count (0/{count} to {}/{count})",
                count.saturating_sub(1)
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether `ordinal` (a row's position in the source) is this shard's.
    fn owns(self, ordinal: u64) -> bool {
        ordinal % u64::from(self.count) == u64::from(self.index)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// How a run calls the model-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoringSettings {
    /// Rows per model-server call (at most the model's max batch size).
    pub batch_rows: usize,
    /// Model-server calls in flight at once.
    pub in_flight: usize,
    /// Deadline of one model-server call.
    pub call_timeout: Duration,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        ScoringSettings {
            batch_rows: 256,
            in_flight: 4,
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// What a run is asked to do beyond its job.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Which part of the batch this process scores (`None`: all of it).
    pub shard: Option<Shard>,
    /// The name every shard of one run shares (required with shards), e.g.
    /// the Kubernetes Job's name.
    pub run: Option<String>,
}

/// Rows done so far, for a progress bar or log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Rows scored and written.
    pub scored: u64,
    /// Rows rejected.
    pub rejected: u64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// The new batch is served.
    Switched,
    /// The cardinality watch refused the batch; the previous one stays
    /// served.
    Refused,
    /// This shard's part is done; other shards' are not yet.
    ShardDone {
        /// Parts done.
        done: u32,
        /// Parts in all.
        of: u32,
    },
    /// A shard of the run failed, so the batch is never served.
    ShardFailed {
        /// The failed part's record.
        part: String,
    },
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The job.
    pub job: String,
    /// The model.
    pub model: String,
    /// The version scored.
    pub model_version: String,
    /// The batch.
    pub batch_id: String,
    /// This process's part.
    pub shard: Shard,
    /// Rows scored and written by this process.
    pub scored: u64,
    /// Rows rejected by this process.
    pub rejected: u64,
    /// The first rejected rows with line and reason.
    pub rejections: Vec<RejectedRow>,
    /// The cardinality judged (by the process that judged the batch).
    pub cardinality: Option<cardinality::Report>,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Wall time of this process's part.
    pub elapsed: Duration,
}

impl RunReport {
    /// Rows scored per second.
    pub fn rows_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.scored as f64 / secs
        } else {
            0.0
        }
    }
}

/// One scoring batch as listed by the CLI and the admin API.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct BatchSummary {
    /// The batch.
    pub batch_id: String,
    /// The job that wrote it.
    pub job: String,
    /// `processing`, `done` or `failed`.
    pub status: &'static str,
    /// Whether the gateway answers from it now.
    pub served: bool,
    /// What was scored.
    pub source: String,
    /// The model and version scored.
    pub scored_with: String,
    /// Rows scored.
    pub rows: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// The first rejected rows with line and reason.
    #[schema(value_type = Vec<Object>)]
    pub rejections: Vec<RejectedRow>,
    /// Cardinality alarms the run raised.
    pub alarms: Vec<String>,
    /// When it started, UTC.
    pub started_at: Option<String>,
    /// When it ended, UTC.
    pub finished_at: Option<String>,
    /// Why it failed or was refused.
    pub error: Option<String>,
}

/// Why a run could not score.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScoringError {
    /// No such job is declared.
    #[error("no [[scoring_job]] is named {job:?}; declared: {known}")]
    UnknownJob {
        /// The name asked for.
        job: String,
        /// The declared ones.
        known: String,
    },
    /// The job's model is not configured in this gateway's config.
    #[error(
        "scoring job {job:?} scores model {model:?}, which this config does not serve; add a [[model]] with its endpoint"
    )]
    ModelNotConfigured {
        /// The job.
        job: String,
        /// The model.
        model: String,
    },
    /// No version to score.
    #[error(
        "scoring job {job:?}: model {model:?} has no stable version in its routing; name one with `version` in the job"
    )]
    NoVersion {
        /// The job.
        job: String,
        /// The model.
        model: String,
    },
    /// Another process runs the job now.
    #[error("a run of scoring job {job:?} is going on ({holder}); wait for it to end")]
    Running {
        /// The job.
        job: String,
        /// Who runs it.
        holder: String,
    },
    /// Shards without a shared run name.
    #[error(
        "a sharded run needs --run NAME, shared by every shard of the run (e.g. the Job's name)"
    )]
    RunNameMissing,
    /// What to score cannot be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The model-server failed a call.
    #[error("model-server call failed: {0}")]
    Model(#[from] InferError),
    /// The model's answer does not fit its post-processing.
    #[error("model {model:?} answered what cannot be post-processed: {detail}")]
    BadAnswer {
        /// The model.
        model: String,
        /// What is wrong.
        detail: crate::postprocess::AnswerError,
    },
    /// The routing could not be read.
    #[error(transparent)]
    Routing(#[from] RolloutError),
    /// The feature store failed.
    #[error("feature store: {0}")]
    Store(#[from] StoreError),
    /// Post-processed outputs could not be encoded for the store.
    #[error("encoding outputs: {0}")]
    Encode(#[from] serde_json::Error),
    /// Features could not be read for a row.
    #[error("reading features: {0}")]
    Read(#[from] feature_store::reader::ReadError),
}

/// What scoring runs share: the store, the definitions, the models'
/// settings and how to call the model-server.
pub struct Scorer<S> {
    enricher: Enricher<S>,
    models: HashMap<String, ModelConfig>,
    settings: ScoringSettings,
    /// This process in leases (host/pid).
    holder: String,
}

/// One assembled row to score.
pub(crate) struct Item {
    key: String,
    row: Vec<f32>,
}

/// What [`Scorer::score`] produced.
struct Scored {
    scored: u64,
    rejected: u64,
    rejections: Vec<RejectedRow>,
    watch: Watch,
}

impl<S: FullStore> Scorer<S> {
    /// A scorer over `reader` (its store and definitions) for the `models`
    /// of a gateway config.
    pub fn new(
        reader: Arc<FeatureReader<S>>,
        models: &[ModelConfig],
        settings: ScoringSettings,
    ) -> Self {
        Scorer {
            enricher: Enricher::new(reader),
            models: models.iter().map(|m| (m.name.clone(), m.clone())).collect(),
            settings,
            holder: feature_store::schedule::SchedulerConfig::for_this_process().holder,
        }
    }

    /// This process as it holds leases.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The definitions the jobs are declared in.
    pub fn definitions(&self) -> &FeatureDefinitions {
        self.enricher.definitions()
    }

    /// The declared job `job`.
    ///
    /// # Errors
    /// [`ScoringError::UnknownJob`] naming the declared ones.
    pub fn spec(&self, job: &str) -> Result<&ScoringJobSpec, ScoringError> {
        let defs = self.definitions();
        defs.scoring_job(job)
            .ok_or_else(|| ScoringError::UnknownJob {
                job: job.to_owned(),
                known: defs
                    .scoring_jobs()
                    .iter()
                    .map(|j| j.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The store scored into.
    pub fn store(&self) -> &Arc<S> {
        self.enricher.reader().store()
    }

    /// The recent scoring batches of `job`, newest first, at most `limit`
    /// (whole batches, not shards' parts).
    ///
    /// # Errors
    /// An unknown job, or the store's failure.
    pub async fn batches(
        &self,
        job: &str,
        limit: usize,
    ) -> Result<Vec<BatchSummary>, ScoringError> {
        let spec = self.spec(job)?;
        let target = score_target(&spec.model);
        let store = self.store();
        let batches = store.list_batches(&target, limit.max(1) * 4 + 16).await?;
        let runs = store.scoring_runs(job, limit.max(1) * 4 + 16).await?;
        let served = store.current_batches().await?.remove(&target);
        Ok(batches
            .into_iter()
            .filter(|b| !b.batch_id.contains('/'))
            .take(limit)
            .map(|b| BatchSummary {
                served: served.as_ref().is_some_and(|c| c.batch_id == b.batch_id),
                alarms: runs
                    .iter()
                    .find(|r| r.batch_id == b.batch_id)
                    .map(|r| r.alarms.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                status: b.status.as_str(),
                started_at: b
                    .started_at
                    .map(|t| feature_store::clock::utc(t).to_string()),
                finished_at: b
                    .finished_at
                    .map(|t| feature_store::clock::utc(t).to_string()),
                batch_id: b.batch_id,
                job: b.job,
                source: b.source,
                scored_with: b.script_version,
                rows: b.rows_written,
                rejected: b.rows_rejected,
                rejections: b.rejections,
                error: b.error,
            })
            .collect())
    }

    /// Runs `job` once: scores, records and (when complete and within its
    /// limits) switches the model's prediction store to the new batch.
    /// `progress` is called after every written chunk. A whole (unsharded)
    /// run holds the job's lease while it runs, and first marks the batches
    /// of runs that stopped midway (killed, crashed) failed and discards
    /// what they wrote.
    ///
    /// # Errors
    /// [`ScoringError`]: [`ScoringError::Running`] while another process
    /// runs the job; otherwise the batch is recorded as failed and never
    /// served.
    pub async fn run(
        &self,
        job: &str,
        options: &RunOptions,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<RunReport, ScoringError> {
        if options.shard.is_some_and(|s| s.count > 1) {
            return self.run_part(job, options, progress).await;
        }
        let lease_name = job_lease(job);
        let lease = |now: SystemTime| Lease::new(&lease_name, &self.holder, now + JOB_LEASE);
        let now = feature_store::store::now_micros();
        if let LeaseOutcome::Held(held) = self.store().try_lease(&lease(now), now).await? {
            return Err(ScoringError::Running {
                job: job.to_owned(),
                holder: held.holder,
            });
        }
        let renew = async {
            let mut tick = tokio::time::interval(JOB_LEASE / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = feature_store::store::now_micros();
                if let Err(e) = self.store().try_lease(&lease(now), now).await {
                    tracing::warn!(job, "cannot renew the scoring lease: {e}");
                }
            }
        };
        let result = tokio::select! {
            r = async {
                self.reap(job).await?;
                self.run_part(job, options, progress).await
            } => r,
            () = renew => Err(ScoringError::Store(StoreError::Backend("the lease renewal stopped".to_owned()))),
        };
        if let Err(e) = self.store().release_lease(&lease_name, &self.holder).await {
            tracing::debug!(job, "scoring lease not released (it lapses): {e}");
        }
        result
    }

    /// Marks the whole batches of `job` still `processing` (their run
    /// stopped midway: only the lease holder runs the job) failed, and
    /// discards what they wrote.
    async fn reap(&self, job: &str) -> Result<(), ScoringError> {
        let Some(spec) = self.definitions().scoring_job(job) else {
            return Ok(());
        };
        let target = score_target(&spec.model);
        for mut b in self.store().list_batches(&target, 256).await? {
            let abandoned = b.job == job
                && !b.batch_id.contains('/')
                && matches!(b.status, BatchStatus::Ingested | BatchStatus::Processing);
            if !abandoned {
                continue;
            }
            tracing::warn!(job, batch = %b.batch_id, "a scoring run stopped midway; its batch is marked failed and discarded");
            b.status = BatchStatus::Failed;
            b.finished_at = Some(feature_store::store::now_micros());
            b.error = Some(
                "abandoned: the run that wrote it stopped before finishing (killed or crashed); it was never served and its entries are discarded".to_owned(),
            );
            self.store().put_batch(&b).await?;
            self.store()
                .discard_scores(&spec.model, &b.batch_id)
                .await?;
        }
        Ok(())
    }

    /// One run of this process's part (the whole job for a whole run).
    async fn run_part(
        &self,
        job: &str,
        options: &RunOptions,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<RunReport, ScoringError> {
        let started = Instant::now();
        let defs = self.definitions();
        let spec = self.spec(job)?.clone();
        let model = defs
            .model(&spec.model)
            .ok_or_else(|| ScoringError::ModelNotConfigured {
                job: spec.name.clone(),
                model: spec.model.clone(),
            })?
            .clone();
        let config =
            self.models
                .get(&spec.model)
                .ok_or_else(|| ScoringError::ModelNotConfigured {
                    job: spec.name.clone(),
                    model: spec.model.clone(),
                })?;
        let version = match &spec.version {
            Some(v) => v.clone(),
            None => stored_table(self.store().as_ref(), &spec.model)
                .await?
                .map(|t| t.stable)
                .or_else(|| Some(config.routing.stable.clone()))
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ScoringError::NoVersion {
                    job: spec.name.clone(),
                    model: spec.model.clone(),
                })?,
        };
        let shard = options.shard.unwrap_or(Shard::WHOLE);
        let now = feature_store::store::now_micros();
        let batch_id = self
            .batch_of_run(&spec, shard, options.run.as_deref(), now)
            .await?;
        let target = score_target(&spec.model);
        let mut record = BatchRecord {
            batch_id: part_id(&batch_id, shard),
            job: spec.name.clone(),
            view: target,
            ingested_at: now,
            started_at: Some(now),
            finished_at: None,
            source: source::describe(&spec.source),
            fingerprint: String::new(),
            script_version: format!("{} version {version}", spec.model),
            status: BatchStatus::Processing,
            rows_written: 0,
            rows_rejected: 0,
            rejections: Vec::new(),
            error: None,
        };
        self.store().put_batch(&record).await?;
        tracing::info!(job = %spec.name, batch = %record.batch_id, shard = %shard, version = %version, "scoring run started");
        let scored = self
            .score(&spec, &model, config, &version, &batch_id, shard, progress)
            .await;
        let scored = match scored {
            Ok(s) => s,
            Err(e) => {
                record.status = BatchStatus::Failed;
                record.error = Some(e.to_string());
                record.finished_at = Some(feature_store::store::now_micros());
                if let Err(store) = self.store().put_batch(&record).await {
                    tracing::warn!(job = %spec.name, "cannot record the failed scoring batch: {store}");
                }
                if shard.count == 1 {
                    let _ = self.store().discard_scores(&spec.model, &batch_id).await;
                }
                return Err(e);
            }
        };
        record.rows_written = scored.scored;
        record.rows_rejected = scored.rejected;
        record.rejections = scored.rejections.clone();
        let mut report = RunReport {
            job: spec.name.clone(),
            model: spec.model.clone(),
            model_version: version.clone(),
            batch_id: batch_id.clone(),
            shard,
            scored: scored.scored,
            rejected: scored.rejected,
            rejections: scored.rejections,
            cardinality: None,
            outcome: RunOutcome::Switched,
            elapsed: Duration::ZERO,
        };
        if shard.count == 1 {
            let judged = self
                .judge(&spec, &version, &batch_id, scored.watch.snapshot())
                .await?;
            report.outcome = self.finish(&spec, &mut record, &judged).await?;
            report.cardinality = Some(judged);
        } else {
            report.outcome = self
                .finish_shard(
                    &spec,
                    &version,
                    &batch_id,
                    shard,
                    &mut record,
                    &scored.watch,
                )
                .await?;
            if let RunOutcome::Switched | RunOutcome::Refused = report.outcome {
                report.cardinality = self.last_judged(&spec, &batch_id).await?;
            }
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// The batch of this run: a new one, or for a shard the one its run's
    /// first shard named (through a lease, taken atomically).
    async fn batch_of_run(
        &self,
        spec: &ScoringJobSpec,
        shard: Shard,
        run: Option<&str>,
        now: SystemTime,
    ) -> Result<String, ScoringError> {
        let mine = uuid::Uuid::now_v7().to_string();
        if shard.count == 1 {
            return Ok(mine);
        }
        let run = run
            .filter(|r| !r.is_empty())
            .ok_or(ScoringError::RunNameMissing)?;
        let lease = Lease::new(
            &format!("scoring:{}:{run}", spec.name),
            &mine,
            now + RUN_LEASE,
        );
        Ok(match self.store().try_lease(&lease, now).await? {
            LeaseOutcome::Acquired => mine,
            LeaseOutcome::Held(held) => held.holder,
        })
    }

    /// Scores this process's part: rows from the source, assembled by the
    /// live path's enrichment, scored in chunks with several calls in
    /// flight, written under `batch_id`.
    #[expect(clippy::too_many_arguments, reason = "one run's fixed context")]
    async fn score(
        &self,
        spec: &ScoringJobSpec,
        model: &ModelFeatures,
        config: &ModelConfig,
        version: &str,
        batch_id: &str,
        shard: Shard,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Scored, ScoringError> {
        let client = ModelClient::new(
            config.endpoint_of(version),
            Duration::from_secs(2),
            BreakerConfig::default(),
        )?;
        let rejected = std::sync::Mutex::new((0u64, Vec::<RejectedRow>::new()));
        let reject = |row: RejectedRow| {
            if let Ok(mut r) = rejected.lock() {
                r.0 += 1;
                if r.1.len() < KEPT_REJECTIONS {
                    r.1.push(row);
                }
            }
        };
        let scored = AtomicU64::new(0);
        let watch = std::sync::Mutex::new(Watch::new());
        let width = model.input().width();
        let input_name = model.input().name();
        let retention = spec.max_age.saturating_mul(2);
        let items = source::items(
            &self.enricher,
            spec,
            model,
            shard,
            self.settings.in_flight,
            &reject,
        )
        .await?;
        items
            .try_chunks(self.settings.batch_rows.max(1))
            .map_err(|e| e.1)
            .map_ok(|chunk| {
                let client = &client;
                let scored = &scored;
                let watch = &watch;
                let rejected = &rejected;
                async move {
                    let mut rows = Vec::with_capacity(chunk.len() * width);
                    for item in &chunk {
                        rows.extend_from_slice(&item.row);
                    }
                    let answer = client
                        .infer(
                            &spec.model,
                            version,
                            input_name,
                            &rows,
                            width,
                            self.settings.call_timeout,
                        )
                        .await?;
                    let scored_at = feature_store::store::now_micros();
                    let mut entries = Vec::with_capacity(chunk.len());
                    for (i, item) in chunk.iter().enumerate() {
                        let outputs =
                            config
                                .postprocess
                                .apply(&answer.outputs, i)
                                .map_err(|detail| ScoringError::BadAnswer {
                                    model: spec.model.clone(),
                                    detail,
                                })?;
                        let outputs = serde_json::to_string(&outputs)?;
                        entries.push(ScoreEntry {
                            key: item.key.clone(),
                            model_version: answer.model_version.clone(),
                            outputs,
                            scored_at,
                        });
                    }
                    self.store()
                        .write_scores(ScoreWrite {
                            model: &spec.model,
                            batch_id,
                            entries: &entries,
                            retention,
                        })
                        .await?;
                    if let Ok(mut w) = watch.lock() {
                        for item in &chunk {
                            w.observe(
                                &item.key,
                                spec.key
                                    .categories(&item.row)
                                    .iter()
                                    .map(|(f, v)| (*f, v.as_str())),
                            );
                        }
                    }
                    let n = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
                    let done = scored.fetch_add(n, Ordering::Relaxed) + n;
                    let rejected = rejected.lock().map_or(0, |r| r.0);
                    progress(Progress {
                        scored: done,
                        rejected,
                    });
                    Ok::<_, ScoringError>(())
                }
            })
            .try_buffer_unordered(self.settings.in_flight.max(1))
            .try_collect::<()>()
            .await?;
        let (rejected, rejections) = rejected.into_inner().unwrap_or_default();
        Ok(Scored {
            scored: scored.into_inner(),
            rejected,
            rejections,
            watch: watch.into_inner().unwrap_or_default(),
        })
    }

    /// Judges a complete batch's cardinality against the last judged run of
    /// the job, and records the judgement.
    async fn judge(
        &self,
        spec: &ScoringJobSpec,
        version: &str,
        batch_id: &str,
        snapshot: Snapshot,
    ) -> Result<cardinality::Report, ScoringError> {
        let previous = self
            .store()
            .scoring_runs(&spec.name, 64)
            .await?
            .into_iter()
            .find(|r| !r.batch_id.contains('/') && r.batch_id != batch_id);
        let judged = cardinality::judge_snapshot(
            snapshot,
            previous.as_ref().map(|p| &p.cardinality),
            spec.cardinality,
        );
        for alarm in &judged.alarms {
            tracing::warn!(job = %spec.name, batch = %batch_id, "cardinality alarm: {alarm}");
        }
        self.store()
            .put_scoring_run(&ScoringRunRecord {
                job: spec.name.clone(),
                batch_id: batch_id.to_owned(),
                model_version: version.to_owned(),
                cardinality: judged.snapshot.clone(),
                features: judged.features.clone(),
                alarms: judged.alarms.clone(),
                switched: judged.may_switch,
                finished_at: feature_store::store::now_micros(),
            })
            .await?;
        Ok(judged)
    }

    /// The judgement recorded for `batch_id`, if any.
    async fn last_judged(
        &self,
        spec: &ScoringJobSpec,
        batch_id: &str,
    ) -> Result<Option<cardinality::Report>, ScoringError> {
        Ok(self
            .store()
            .scoring_runs(&spec.name, 64)
            .await?
            .into_iter()
            .find(|r| r.batch_id == batch_id)
            .map(|r| cardinality::Report {
                keys: r.cardinality.keys,
                features: r.features,
                may_switch: r.switched,
                alarms: r.alarms,
                snapshot: r.cardinality,
            }))
    }

    /// Ends a complete batch: done and served when the watch allows it,
    /// refused (failed, entries discarded) when not.
    async fn finish(
        &self,
        spec: &ScoringJobSpec,
        record: &mut BatchRecord,
        judged: &cardinality::Report,
    ) -> Result<RunOutcome, ScoringError> {
        record.finished_at = Some(feature_store::store::now_micros());
        if !judged.may_switch {
            record.status = BatchStatus::Failed;
            record.error = Some(
                judged
                    .alarms
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            self.store().put_batch(record).await?;
            self.store()
                .discard_scores(&spec.model, &record.batch_id)
                .await?;
            return Ok(RunOutcome::Refused);
        }
        record.status = BatchStatus::Done;
        self.store().put_batch(record).await?;
        self.store().set_current(record).await?;
        // A gateway that runs the job serves the batch at once; others
        // learn it at their next poll of the current batches.
        if let Err(e) = self.enricher.reader().refresh_current().await {
            tracing::debug!(job = %spec.name, "current batches not re-read now: {e}");
        }
        tracing::info!(job = %spec.name, batch = %record.batch_id, rows = record.rows_written, "scoring batch served");
        self.collect_old(spec, &record.view, &record.batch_id).await;
        Ok(RunOutcome::Switched)
    }

    /// Ends one shard's part; the shard that finds every part done judges
    /// and finishes the batch.
    async fn finish_shard(
        &self,
        spec: &ScoringJobSpec,
        version: &str,
        batch_id: &str,
        shard: Shard,
        record: &mut BatchRecord,
        watch: &Watch,
    ) -> Result<RunOutcome, ScoringError> {
        record.status = BatchStatus::Done;
        record.finished_at = Some(feature_store::store::now_micros());
        self.store().put_batch(record).await?;
        self.store()
            .put_scoring_run(&ScoringRunRecord {
                job: spec.name.clone(),
                batch_id: record.batch_id.clone(),
                model_version: version.to_owned(),
                cardinality: watch.snapshot(),
                features: Vec::new(),
                alarms: Vec::new(),
                switched: false,
                finished_at: feature_store::store::now_micros(),
            })
            .await?;
        // Parts of this batch, as recorded by every shard (see `part_id`).
        let parts_prefix = format!("{batch_id}/");
        let listed = self
            .store()
            .list_batches(&record.view, 4 * shard.count as usize + 64)
            .await?;
        let parts: Vec<&BatchRecord> = listed
            .iter()
            .filter(|b| b.batch_id.starts_with(&parts_prefix))
            .collect();
        if let Some(failed) = parts.iter().find(|b| b.status == BatchStatus::Failed) {
            return Ok(RunOutcome::ShardFailed {
                part: failed.batch_id.clone(),
            });
        }
        let done = u32::try_from(
            parts
                .iter()
                .filter(|b| b.status == BatchStatus::Done)
                .count(),
        )
        .unwrap_or(u32::MAX);
        if done < shard.count {
            return Ok(RunOutcome::ShardDone {
                done,
                of: shard.count,
            });
        }
        // Every part is done: the whole batch's cardinality is the union of
        // the parts' (a key scored by two shards counts twice).
        let runs = self
            .store()
            .scoring_runs(&spec.name, 4 * shard.count as usize + 64)
            .await?;
        let mut whole = Snapshot::default();
        for part in runs
            .iter()
            .filter(|r| r.batch_id.starts_with(&parts_prefix))
        {
            whole.keys += part.cardinality.keys;
            for (feature, values) in &part.cardinality.values {
                whole
                    .values
                    .entry(feature.clone())
                    .or_default()
                    .extend(values.iter().cloned());
            }
        }
        let judged = self.judge(spec, version, batch_id, whole).await?;
        let mut batch = record.clone();
        batch.batch_id = batch_id.to_owned();
        batch.rows_written = parts.iter().map(|b| b.rows_written).sum();
        batch.rows_rejected = parts.iter().map(|b| b.rows_rejected).sum();
        batch.rejections = parts
            .iter()
            .flat_map(|b| b.rejections.iter().cloned())
            .take(KEPT_REJECTIONS)
            .collect();
        batch.started_at = parts.iter().filter_map(|b| b.started_at).min();
        self.finish(spec, &mut batch, &judged).await
    }

    /// Removes the entries of batches older than the ones kept (where the
    /// backend can); a failure only leaves them to their TTL.
    async fn collect_old(&self, spec: &ScoringJobSpec, target: &str, served: &str) {
        let Ok(batches) = self.store().list_batches(target, 256).await else {
            return;
        };
        let mut kept = 0;
        for b in batches.iter().filter(|b| !b.batch_id.contains('/')) {
            match b.status {
                _ if b.batch_id == served => continue,
                BatchStatus::Done if kept < KEPT_BATCHES - 1 => {
                    kept += 1;
                    continue;
                }
                BatchStatus::Done | BatchStatus::Failed => {}
                // A run still going (another process's) is not touched.
                BatchStatus::Ingested | BatchStatus::Processing => continue,
            }
            if let Err(e) = self.store().discard_scores(&spec.model, &b.batch_id).await {
                tracing::debug!(job = %spec.name, "old scoring batch not removed: {e}");
            }
        }
    }
}

/// The name of the lease a whole run of `job` holds.
pub fn job_lease(job: &str) -> String {
    format!("scoring-job:{job}")
}

/// The batch record of a shard's part (`<batch>/<index>-of-<count>`), or the
/// batch itself for a whole run.
fn part_id(batch_id: &str, shard: Shard) -> String {
    if shard.count == 1 {
        batch_id.to_owned()
    } else {
        format!("{batch_id}/{}-of-{}", shard.index, shard.count)
    }
}

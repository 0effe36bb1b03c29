//! Static refresh jobs: load a file into a static view as a new batch.
//!
//! A run records a [`BatchRecord`] and moves it through `ingested →
//! processing → done | failed`. Rows are written under the new batch ID while
//! readers keep serving the previous batch; only a complete run switches the
//! view's current batch, in one write. A run that fails (bad file, too many
//! bad rows, store error) is marked failed with its reason and never served.
//! A rerun of an identical input (same bytes, view, job and script version)
//! is recognised by its fingerprint and does nothing unless forced.
//!
//! The file is parsed on a blocking thread and handed to the writer in chunks
//! through a bounded channel, so reading and writing overlap and memory stays
//! bounded by a few chunks whatever the file size.
//!
//! A run that dies without a word (killed, machine lost) cannot mark its own
//! batch failed. So each run holds a liveness lease in the store
//! (`refresh-batch/<batch id>`, renewed every third of
//! [`RefreshOptions::liveness`]) for as long as it works. [`reap_interrupted`]
//! (called by every run for its view before it loads, and by `mlgw-features
//! batches reap`) takes the lease of each `ingested`/`processing` batch whose
//! run stopped renewing it, marks the batch failed as interrupted and discards
//! its rows. A run that finds its lease taken stops and fails its batch.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::clock::now_micros;
use crate::codec;
use crate::definitions::{FeatureDefinitions, FeatureView};
use crate::source::{self, RejectedRow, SourceError, SourceItem};
use crate::store::{
    BatchRecord, BatchStatus, BatchStore, CoordinationStore, CurrentBatch, EncodedRow, Lease,
    LeaseOutcome, RowStore, StaticWrite, StoreError,
};

/// How many rejected rows a batch record keeps with their reasons (all are
/// counted).
pub const KEPT_REJECTIONS: usize = 100;

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct RefreshOptions {
    /// Version of the script or pipeline that produced the file.
    pub script_version: String,
    /// Load even if the current batch has the same fingerprint.
    pub force: bool,
    /// Fail the batch when more than this share of rows (percent) is rejected.
    pub max_rejected_percent: f64,
    /// Rows handed to the store per write.
    pub chunk_rows: usize,
    /// How long the backend keeps the rows (None: four times the view's
    /// max_age, at least seven days).
    pub retention: Option<Duration>,
    /// How long the run's liveness lease lasts without renewal: a run silent
    /// for longer counts as interrupted. Renewed every third of it.
    pub liveness: Duration,
}

/// The default [`RefreshOptions::liveness`].
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(60);

/// How many of a view's newest batches [`reap_interrupted`] looks at.
const REAP_SCAN: usize = 50;

/// The store lease a run holds while it works on `batch_id`.
pub fn liveness_lease(batch_id: &str) -> String {
    format!("refresh-batch/{batch_id}")
}

impl Default for RefreshOptions {
    fn default() -> Self {
        RefreshOptions {
            script_version: "unversioned".to_owned(),
            force: false,
            max_rejected_percent: 1.0,
            chunk_rows: 4096,
            retention: None,
            liveness: DEFAULT_LIVENESS,
        }
    }
}

/// What a successful run did.
#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    /// A new batch is done and current.
    Loaded(Box<BatchRecord>),
    /// The current batch already holds this exact input; nothing was written.
    Unchanged(CurrentBatch),
}

/// Why a run did not load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// The job name is not declared by any static view.
    #[error("no static view is refreshed by job {job:?}; jobs: {known}")]
    UnknownJob {
        /// The job.
        job: String,
        /// Declared jobs.
        known: String,
    },
    /// The job refreshes several views and none was chosen, or the chosen view
    /// is not refreshed by it.
    #[error("job {job:?} refreshes {views}; name one with --view")]
    AmbiguousView {
        /// The job.
        job: String,
        /// Its views.
        views: String,
    },
    /// The source file cannot be read at all.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The store failed before a batch was recorded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The batch was recorded and failed; the previous batch stays current.
    #[error("batch {} failed: {reason}; view {:?} keeps serving its previous batch", batch.batch_id, batch.view)]
    Failed {
        /// The failed batch's record.
        batch: Box<BatchRecord>,
        /// Why.
        reason: String,
    },
}

/// Picks the view `job` loads (`view` chooses among several).
///
/// # Errors
/// [`RefreshError::UnknownJob`] or [`RefreshError::AmbiguousView`].
pub fn job_view<'a>(
    definitions: &'a FeatureDefinitions,
    job: &str,
    view: Option<&str>,
) -> Result<&'a FeatureView, RefreshError> {
    let views: Vec<&FeatureView> = definitions
        .static_views()
        .filter(|v| v.refresh_job().is_some_and(|j| j.as_str() == job))
        .collect();
    if views.is_empty() {
        let known = definitions
            .refresh_jobs()
            .iter()
            .map(|j| format!("{:?}", j.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(RefreshError::UnknownJob {
            job: job.to_owned(),
            known,
        });
    }
    let names = || {
        views
            .iter()
            .map(|v| format!("{:?}", v.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (view, views.as_slice()) {
        (None, [only]) => Ok(only),
        (Some(name), _) => views
            .iter()
            .find(|v| v.name == name)
            .copied()
            .ok_or_else(|| RefreshError::AmbiguousView {
                job: job.to_owned(),
                views: names(),
            }),
        (None, _) => Err(RefreshError::AmbiguousView {
            job: job.to_owned(),
            views: names(),
        }),
    }
}

/// The fingerprint of an input: SHA-256 over the file's bytes, the view, the
/// job and the script version.
///
/// # Errors
/// [`SourceError::Io`] if the file cannot be read.
pub fn fingerprint(
    path: &Path,
    view: &str,
    job: &str,
    script_version: &str,
) -> Result<String, SourceError> {
    let io = |error| SourceError::Io {
        path: path.display().to_string(),
        error,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    for part in [view, job, script_version] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

enum Chunk {
    Rows(Vec<EncodedRow>),
    Rejected(RejectedRow),
    Failed(String),
}

/// Runs `job` on `path`. `progress` is called with the rows handled so far
/// after each chunk.
///
/// # Errors
/// [`RefreshError`]; once a batch is recorded, every failure is
/// [`RefreshError::Failed`] with the batch marked failed.
pub async fn run<S: RowStore + BatchStore + CoordinationStore>(
    store: &S,
    definitions: &FeatureDefinitions,
    job: &str,
    view: Option<&str>,
    path: &Path,
    options: &RefreshOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RefreshOutcome, RefreshError> {
    let view = job_view(definitions, job, view)?.clone();
    let entity = definitions
        .entity(&view.entity)
        .ok_or_else(|| RefreshError::UnknownJob {
            job: job.to_owned(),
            known: String::new(),
        })?
        .clone();
    let fp = {
        let (owned, v, j, s) = (
            path.to_owned(),
            view.name.clone(),
            job.to_owned(),
            options.script_version.clone(),
        );
        tokio::task::spawn_blocking(move || fingerprint(&owned, &v, &j, &s))
            .await
            .map_err(|e| SourceError::Io {
                path: path.display().to_string(),
                error: std::io::Error::other(e.to_string()),
            })??
    };
    if !options.force
        && let Some(current) = store.current_batches().await?.remove(&view.name)
        && current.fingerprint == fp
    {
        return Ok(RefreshOutcome::Unchanged(current));
    }

    // Batches of this view whose runs died are failed now, before a new one
    // starts; a store that cannot say is no reason to refuse this run.
    match reap_interrupted(store, &view.name, options.liveness).await {
        Ok(reaped) => {
            for r in reaped {
                tracing::warn!(batch = %r.batch_id, view = %r.view, "an earlier refresh run was interrupted; its batch is now failed");
            }
        }
        Err(e) => {
            tracing::warn!(view = %view.name, error = %e, "cannot look for interrupted refresh runs")
        }
    }

    let ingested_at = now_micros();
    let mut record = BatchRecord {
        batch_id: uuid::Uuid::now_v7().to_string(),
        job: job.to_owned(),
        view: view.name.clone(),
        ingested_at,
        started_at: None,
        finished_at: None,
        source: path.display().to_string(),
        fingerprint: fp,
        script_version: options.script_version.clone(),
        status: BatchStatus::Ingested,
        rows_written: 0,
        rows_rejected: 0,
        rejections: Vec::new(),
        error: None,
    };
    let mut alive = Liveness::new(&record.batch_id, options.liveness);
    // Held before the record exists, so no reaper ever sees the batch unleased.
    alive.renew(store).await.map_err(|e| match e {
        LivenessError::Store(e) => RefreshError::Store(e),
        LivenessError::Lost(l) => RefreshError::Store(StoreError::Backend(l)),
    })?;
    store.put_batch(&record).await?;

    let result = load(
        store,
        Target {
            view: &view,
            entity: &entity,
        },
        path,
        options,
        &mut record,
        &mut alive,
        progress,
    )
    .await;
    record.finished_at = Some(now_micros());
    let result = match result {
        // The last word before the switch: still ours?
        Ok(()) => alive.renew(store).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let outcome = match result {
        Ok(()) => {
            record.status = BatchStatus::Done;
            let switched = async {
                store.put_batch(&record).await?;
                store.set_current(&record).await
            }
            .await;
            match switched {
                Ok(()) => Ok(RefreshOutcome::Loaded(Box::new(record))),
                Err(e) => {
                    Err(fail(store, record, format!("cannot make the batch current: {e}")).await)
                }
            }
        }
        Err(reason) => Err(fail(store, record, reason).await),
    };
    alive.release(store).await;
    outcome
}

/// A run's hold on its liveness lease.
struct Liveness {
    name: String,
    holder: String,
    period: Duration,
    renewed: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
enum LivenessError {
    #[error("cannot renew the run's liveness lease: {0}")]
    Store(StoreError),
    #[error("{0}")]
    Lost(String),
}

impl Liveness {
    fn new(batch_id: &str, period: Duration) -> Self {
        Liveness {
            name: liveness_lease(batch_id),
            holder: batch_id.to_owned(),
            period: period.max(Duration::from_millis(300)),
            renewed: None,
        }
    }

    /// Whether a third of the period has passed since the last renewal.
    fn due(&self) -> bool {
        self.renewed.is_none_or(|t| t.elapsed() >= self.period / 3)
    }

    async fn renew<S: CoordinationStore>(&mut self, store: &S) -> Result<(), LivenessError> {
        let now = SystemTime::now();
        match store
            .try_lease(
                &Lease::new(&self.name, &self.holder, now + self.period),
                now,
            )
            .await
            .map_err(LivenessError::Store)?
        {
            LeaseOutcome::Acquired => {
                self.renewed = Some(Instant::now());
                Ok(())
            }
            LeaseOutcome::Held(l) => Err(LivenessError::Lost(format!(
                "the run went silent for longer than its liveness of {:?} and {} declared it interrupted; its batch is failed",
                self.period, l.holder
            ))),
        }
    }

    async fn release<S: CoordinationStore>(&self, store: &S) {
        if let Err(e) = store.release_lease(&self.name, &self.holder).await {
            tracing::debug!(lease = %self.name, error = %e, "cannot release the liveness lease; it expires by itself");
        }
    }
}

/// Fails `view`'s batches whose runs stopped without finishing: each
/// `ingested`/`processing` batch among the newest whose liveness lease has
/// lapsed is marked failed (interrupted) and its rows are discarded. A run
/// still renewing its lease is left alone. Returns the batches failed.
///
/// # Errors
/// The first store error; batches failed before it stay failed.
pub async fn reap_interrupted<S: RowStore + BatchStore + CoordinationStore>(
    store: &S,
    view: &str,
    liveness: Duration,
) -> Result<Vec<BatchRecord>, StoreError> {
    let reaper = format!("reaper-{}", uuid::Uuid::now_v7());
    let mut reaped = Vec::new();
    for candidate in store.list_batches(view, REAP_SCAN).await? {
        if !matches!(
            candidate.status,
            BatchStatus::Ingested | BatchStatus::Processing
        ) {
            continue;
        }
        let lease = liveness_lease(&candidate.batch_id);
        let now = SystemTime::now();
        match store
            .try_lease(&Lease::new(&lease, &reaper, now + liveness), now)
            .await?
        {
            LeaseOutcome::Held(_) => continue,
            LeaseOutcome::Acquired => {}
        }
        // The run may have finished between the listing and the lease (it
        // records `done` before it lets its lease go): decide on what the
        // store says now.
        let Some(mut record) = store
            .list_batches(view, REAP_SCAN)
            .await?
            .into_iter()
            .find(|b| b.batch_id == candidate.batch_id)
        else {
            continue;
        };
        if matches!(
            record.status,
            BatchStatus::Ingested | BatchStatus::Processing
        ) {
            let since = record.started_at.unwrap_or(record.ingested_at);
            record.status = BatchStatus::Failed;
            record.finished_at = Some(now_micros());
            record.error = Some(format!(
                "interrupted: its run stopped without finishing (no sign of life for {liveness:?}; it was {} after {} rows, started {}); the rows it wrote were discarded",
                candidate.status,
                record.rows_written,
                crate::clock::utc(since)
            ));
            store.put_batch(&record).await?;
            store.discard_batch(view, &record.batch_id).await?;
            reaped.push(record);
        }
        // Kept until it expires: a run that wakes up finds it taken and stops.
    }
    Ok(reaped)
}

async fn fail<S: RowStore + BatchStore + CoordinationStore>(
    store: &S,
    mut record: BatchRecord,
    reason: String,
) -> RefreshError {
    record.status = BatchStatus::Failed;
    record.error = Some(reason.clone());
    // Best effort: the batch is not current whatever happens here.
    if let Err(e) = store.put_batch(&record).await {
        tracing::warn!(batch = %record.batch_id, error = %e, "cannot record the failed batch");
    }
    if let Err(e) = store.discard_batch(&record.view, &record.batch_id).await {
        tracing::warn!(batch = %record.batch_id, error = %e, "cannot discard the failed batch's rows");
    }
    RefreshError::Failed {
        batch: Box::new(record),
        reason,
    }
}

/// The view a run loads and its entity.
struct Target<'a> {
    view: &'a FeatureView,
    entity: &'a crate::definitions::Entity,
}

async fn load<S: RowStore + BatchStore + CoordinationStore>(
    store: &S,
    Target { view, entity }: Target<'_>,
    path: &Path,
    options: &RefreshOptions,
    record: &mut BatchRecord,
    alive: &mut Liveness,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), String> {
    let rows = source::open(view, entity, path).map_err(|e| e.to_string())?;
    record.status = BatchStatus::Processing;
    record.started_at = Some(now_micros());
    store.put_batch(record).await.map_err(|e| e.to_string())?;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(4);
    let chunk_rows = options.chunk_rows.max(1);
    let feature_order: Vec<String> = view.features.iter().map(|f| f.name.clone()).collect();
    let reader = tokio::task::spawn_blocking(move || {
        let mut first_line: HashMap<String, u64> = HashMap::new();
        let mut chunk = Vec::with_capacity(chunk_rows);
        for item in rows {
            let sent = match item {
                Err(e) => tx.blocking_send(Chunk::Failed(e.to_string())),
                Ok(SourceItem::Rejected(r)) => tx.blocking_send(Chunk::Rejected(r)),
                Ok(SourceItem::Row(row)) => {
                    if let Some(first) = first_line.get(&row.entity_key) {
                        tx.blocking_send(Chunk::Rejected(RejectedRow {
                            line: row.line,
                            reason: format!(
                                "repeats entity {:?} first given on line {first}; a refresh file holds one row per entity",
                                row.entity_key
                            ),
                        }))
                    } else {
                        first_line.insert(row.entity_key.clone(), row.line);
                        // Declared order, so equal rows encode to equal blobs.
                        let blob = codec::encode(
                            feature_order
                                .iter()
                                .filter_map(|f| row.values.get(f).map(|v| (f.as_str(), v))),
                        );
                        chunk.push(EncodedRow {
                            entity_key: row.entity_key,
                            blob,
                        });
                        if chunk.len() >= chunk_rows {
                            let full =
                                std::mem::replace(&mut chunk, Vec::with_capacity(chunk_rows));
                            tx.blocking_send(Chunk::Rows(full))
                        } else {
                            Ok(())
                        }
                    }
                }
            };
            if sent.is_err() {
                return;
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(Chunk::Rows(chunk));
        }
    });

    let retention = options
        .retention
        .unwrap_or_else(|| (view.max_age * 4).max(Duration::from_secs(7 * 86_400)));
    let mut outcome = Ok(());
    while let Some(chunk) = rx.recv().await {
        if alive.due() {
            if let Err(e) = alive.renew(store).await {
                outcome = Err(e.to_string());
                break;
            }
            // Progress for `batches list` while the run goes on.
            if let Err(e) = store.put_batch(record).await {
                tracing::debug!(batch = %record.batch_id, error = %e, "cannot record the run's progress");
            }
        }
        match chunk {
            Chunk::Rows(rows) => {
                let write = StaticWrite {
                    view: &view.name,
                    batch_id: &record.batch_id,
                    written_at: record.ingested_at,
                    retention,
                    rows: &rows,
                };
                if let Err(e) = store.write_static(write).await {
                    outcome = Err(format!(
                        "writing rows failed after {} rows: {e}",
                        record.rows_written
                    ));
                    break;
                }
                record.rows_written += rows.len() as u64;
                progress(record.rows_written + record.rows_rejected);
            }
            Chunk::Rejected(r) => {
                record.rows_rejected += 1;
                if record.rejections.len() < KEPT_REJECTIONS {
                    record.rejections.push(r);
                }
            }
            Chunk::Failed(reason) => {
                outcome = Err(reason);
                break;
            }
        }
    }
    drop(rx);
    let _ = reader.await;
    outcome?;
    let total = record.rows_written + record.rows_rejected;
    if total == 0 {
        return Err("the file holds no rows; an empty batch would blank the view".to_owned());
    }
    let percent = record.rows_rejected as f64 * 100.0 / total as f64;
    if percent > options.max_rejected_percent {
        return Err(format!(
            "{} of {total} rows rejected ({percent:.2}%, the limit is {}%); first: {}",
            record.rows_rejected,
            options.max_rejected_percent,
            record
                .rejections
                .first()
                .map_or_else(String::new, |r| format!("line {}: {}", r.line, r.reason))
        ));
    }
    Ok(())
}

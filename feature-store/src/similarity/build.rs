//! The index build job: reads a view's current batch, builds its index on
//! blocking threads, stores it as an artifact and makes it the view's
//! current index in one write. The index's record is a batch record whose
//! view is `index:<view>` (a view name cannot hold `:`), so readers learn
//! of a new index the way they learn of a new batch; its fingerprint names
//! the view batch it was built from, so an unchanged batch is not rebuilt.

use std::time::{Instant, SystemTime};

use crate::definitions::FeatureDefinitions;
use crate::definitions::FeatureValue;
use crate::source::RejectedRow;
use crate::store::{
    ArtifactStore, BatchRecord, BatchStatus, BatchStore, RowStore, ScanCursor, ScanPart,
    StaticScan, StoreError,
};

use super::index::{IndexError, Provenance, VectorIndex, check_vector};

/// Rows examined per scan page.
const SCAN_PAGE: usize = 4096;
/// Index artifacts kept per view: the current one and the one before it,
/// which a replica may still be loading.
const KEPT_ARTIFACTS: usize = 2;
/// How many rows without a usable vector a record keeps with their reasons.
const KEPT_SKIPS: usize = 20;

/// The batch-record view name of `view`'s index.
pub fn index_target(view: &str) -> String {
    format!("index:{view}")
}

/// The artifact name of the index built as `index_batch` of `view`.
pub fn artifact_name(view: &str, index_batch: &str) -> String {
    format!("index/{view}/{index_batch}")
}

/// Why an index was not built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The view is unknown or declares no index.
    #[error(
        "view {0:?} declares no similarity index; add a [static_view.index] table naming its vector feature"
    )]
    NoIndex(String),
    /// The view has no current batch to index.
    #[error("view {0:?} has no current batch; load it first (mlgw-features refresh)")]
    NoBatch(String),
    /// The view's current batch holds no usable vector.
    #[error("view {view:?}'s batch {batch} holds no usable vector ({skipped} rows skipped)")]
    Empty {
        /// The view.
        view: String,
        /// The batch.
        batch: String,
        /// Rows without a usable vector.
        skipped: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A refresh file cannot be read.
    #[error(transparent)]
    Source(crate::source::SourceError),
    /// Building or serialising the index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// What a build did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildReport {
    /// The view.
    pub view: String,
    /// The index's record (its batch ID).
    pub index_batch: String,
    /// The view batch indexed.
    pub source_batch: String,
    /// False when the current index was already built from that batch.
    pub built: bool,
    /// Vectors indexed.
    pub vectors: u64,
    /// Rows without a usable vector.
    pub skipped: u64,
    /// The artifact's size.
    pub artifact_bytes: u64,
    /// The index's memory once loaded.
    pub memory_bytes: u64,
    /// Seconds spent building the graph.
    pub build_seconds: f64,
}

/// Builds `view`'s index from its current batch (unless the current index
/// already is of that batch and `force` is false), adding vectors from
/// `threads` threads.
///
/// # Errors
/// [`BuildError`]; a build that started is recorded as failed with the
/// reason, and the previous index stays current.
pub async fn build<S: RowStore + BatchStore + ArtifactStore>(
    store: &S,
    definitions: &FeatureDefinitions,
    view_name: &str,
    threads: usize,
    force: bool,
) -> Result<BuildReport, BuildError> {
    let (view, spec) = definitions
        .indexed_views()
        .find(|(v, _)| v.name == view_name)
        .ok_or_else(|| BuildError::NoIndex(view_name.to_owned()))?;
    let target = index_target(&view.name);
    let current = store.current_batches().await?;
    let source = current
        .get(&view.name)
        .cloned()
        .ok_or_else(|| BuildError::NoBatch(view.name.clone()))?;
    if let Some(existing) = current
        .get(&target)
        .filter(|c| c.fingerprint == source.batch_id)
        && !force
    {
        return Ok(BuildReport {
            view: view.name.clone(),
            index_batch: existing.batch_id.clone(),
            source_batch: source.batch_id,
            built: false,
            vectors: 0,
            skipped: 0,
            artifact_bytes: 0,
            memory_bytes: 0,
            build_seconds: 0.0,
        });
    }
    let mut record = BatchRecord {
        batch_id: uuid::Uuid::now_v7().to_string(),
        job: view
            .refresh_job()
            .map_or_else(String::new, |j| j.as_str().to_owned()),
        view: target.clone(),
        ingested_at: source.written_at,
        started_at: Some(SystemTime::now()),
        finished_at: None,
        source: format!("{}@{}", view.name, source.batch_id),
        fingerprint: source.batch_id.clone(),
        script_version: format!("usearch {}", usearch::version()),
        status: BatchStatus::Processing,
        rows_written: 0,
        rows_rejected: 0,
        rejections: Vec::new(),
        error: None,
    };
    store.put_batch(&record).await?;
    let outcome = build_recorded(store, view_name, spec, &source, threads, &mut record).await;
    record.finished_at = Some(SystemTime::now());
    match outcome {
        Ok(report) => {
            record.status = BatchStatus::Done;
            store.put_batch(&record).await?;
            store.set_current(&record).await?;
            prune(store, view_name, &target).await;
            Ok(report)
        }
        Err(e) => {
            record.status = BatchStatus::Failed;
            record.error = Some(e.to_string());
            if let Err(write) = store.put_batch(&record).await {
                tracing::warn!(error = %write, view = view_name, "cannot record the failed index build");
            }
            Err(e)
        }
    }
}

/// A view batch's usable vectors, sorted by entity key, with the rows
/// skipped (no vector, or one the index cannot hold) and the first reasons.
#[derive(Debug, Clone, Default)]
pub struct BatchVectors {
    /// Entity key and vector.
    pub vectors: Vec<(String, Vec<f32>)>,
    /// Rows skipped.
    pub skipped: u64,
    /// The first skipped rows (scan position) with their reason.
    pub reasons: Vec<RejectedRow>,
}

/// Reads every row of `batch_id` of `view_name` and keeps its `spec`
/// feature's vectors.
///
/// # Errors
/// The store's error.
pub async fn batch_vectors<S: RowStore>(
    store: &S,
    view_name: &str,
    batch_id: &str,
    spec: &crate::definitions::IndexSpec,
) -> Result<BatchVectors, StoreError> {
    let mut out = BatchVectors::default();
    let mut row = 0u64;
    let fanout = store.scan_fanout().max(1);
    for index in 0..fanout {
        let part = ScanPart {
            index,
            count: fanout,
        };
        let mut after: Option<ScanCursor> = None;
        loop {
            let page = store
                .scan_static(StaticScan {
                    view: view_name,
                    batch_id,
                    part,
                    after: after.as_ref(),
                    limit: SCAN_PAGE,
                })
                .await?;
            for (entity, stored) in page.rows {
                row += 1;
                let vector = match stored.values.get(&spec.feature).map(|v| &v.value) {
                    Some(FeatureValue::Vector(v)) => {
                        check_vector(v, spec.dimensions, spec.distance).map(|()| v.clone())
                    }
                    Some(other) => Err(format!(
                        "{} holds a {} value",
                        spec.feature,
                        other.feature_type()
                    )),
                    None => Err(format!("{} is missing", spec.feature)),
                };
                match vector {
                    Ok(v) => out.vectors.push((entity, v)),
                    Err(reason) => {
                        out.skipped += 1;
                        if out.reasons.len() < KEPT_SKIPS {
                            out.reasons.push(RejectedRow {
                                line: row,
                                reason: format!("entity {entity}: {reason}"),
                            });
                        }
                    }
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    // Scan order differs between backends and runs: sort, so one batch
    // always yields the same key order.
    out.vectors.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The usable vectors of a refresh file for `view` (as [`batch_vectors`]
/// reads a stored batch), without touching the store: for sizing before a
/// load, or beside a gateway that holds the store.
///
/// # Errors
/// The file cannot be read at all.
pub fn file_vectors(
    definitions: &FeatureDefinitions,
    view_name: &str,
    path: &std::path::Path,
) -> Result<BatchVectors, BuildError> {
    let (view, spec) = definitions
        .indexed_views()
        .find(|(v, _)| v.name == view_name)
        .ok_or_else(|| BuildError::NoIndex(view_name.to_owned()))?;
    let entity = definitions
        .entity(&view.entity)
        .ok_or_else(|| BuildError::NoIndex(view_name.to_owned()))?;
    let rows = crate::source::open(view, entity, path).map_err(BuildError::Source)?;
    let mut out = BatchVectors::default();
    for item in rows {
        match item.map_err(BuildError::Source)? {
            crate::source::SourceItem::Row(row) => {
                let vector = match row.values.get(&spec.feature) {
                    Some(FeatureValue::Vector(v)) => {
                        check_vector(v, spec.dimensions, spec.distance).map(|()| v.clone())
                    }
                    _ => Err(format!("{} is missing", spec.feature)),
                };
                match vector {
                    Ok(v) => out.vectors.push((row.entity_key, v)),
                    Err(reason) => {
                        out.skipped += 1;
                        if out.reasons.len() < KEPT_SKIPS {
                            out.reasons.push(RejectedRow {
                                line: row.line,
                                reason,
                            });
                        }
                    }
                }
            }
            crate::source::SourceItem::Rejected(r) => {
                out.skipped += 1;
                if out.reasons.len() < KEPT_SKIPS {
                    out.reasons.push(r);
                }
            }
        }
    }
    out.vectors.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

async fn build_recorded<S: RowStore + BatchStore + ArtifactStore>(
    store: &S,
    view_name: &str,
    spec: &crate::definitions::IndexSpec,
    source: &crate::store::CurrentBatch,
    threads: usize,
    record: &mut BatchRecord,
) -> Result<BuildReport, BuildError> {
    let BatchVectors {
        vectors,
        skipped,
        reasons,
    } = batch_vectors(store, view_name, &source.batch_id, spec).await?;
    record.rejections = reasons;
    record.rows_rejected = skipped;
    if vectors.is_empty() {
        return Err(BuildError::Empty {
            view: view_name.to_owned(),
            batch: source.batch_id.clone(),
            skipped,
        });
    }
    let provenance = Provenance {
        view: view_name.to_owned(),
        source_batch: source.batch_id.clone(),
        data_time: source.written_at,
    };
    let spec = spec.clone();
    let (index, bytes, seconds) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let index = VectorIndex::build(&spec, provenance, vectors, threads)?;
        let seconds = started.elapsed().as_secs_f64();
        let bytes = index.to_bytes()?;
        Ok::<_, IndexError>((index, bytes, seconds))
    })
    .await
    .map_err(|e| StoreError::Backend(format!("the index build thread failed: {e}")))??;
    store
        .put_artifact(&artifact_name(view_name, &record.batch_id), &bytes)
        .await?;
    record.rows_written = index.len() as u64;
    Ok(BuildReport {
        view: view_name.to_owned(),
        index_batch: record.batch_id.clone(),
        source_batch: source.batch_id.clone(),
        built: true,
        vectors: index.len() as u64,
        skipped,
        artifact_bytes: bytes.len() as u64,
        memory_bytes: index.memory_bytes() as u64,
        build_seconds: seconds,
    })
}

/// After a refresh of `view`: builds its index if it declares one and the
/// current index is not of the view's current batch. `None` when the view
/// declares no index.
pub async fn after_refresh<S: RowStore + BatchStore + ArtifactStore>(
    store: &S,
    definitions: &FeatureDefinitions,
    view: &str,
) -> Option<Result<BuildReport, BuildError>> {
    definitions.view(view)?.index.as_ref()?;
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Some(build(store, definitions, view, threads, false).await)
}

/// A line for people about a build after a refresh.
pub fn summary(outcome: &Result<BuildReport, BuildError>) -> String {
    match outcome {
        Ok(r) if r.built => format!(
            "index {} built from batch {}: {} vectors ({} skipped) in {:.2}s, {:.1} MiB; now current",
            r.index_batch,
            r.source_batch,
            r.vectors,
            r.skipped,
            r.build_seconds,
            r.artifact_bytes as f64 / f64::from(1u32 << 20)
        ),
        Ok(r) => format!(
            "index {} is already of batch {}; not rebuilt",
            r.index_batch, r.source_batch
        ),
        Err(e) => format!("index not rebuilt: {e}; the previous index stays current"),
    }
}

/// Deletes the artifacts of all but the newest [`KEPT_ARTIFACTS`] done
/// builds, and of failed ones; a failure only costs space, so it is logged.
async fn prune<S: BatchStore + ArtifactStore>(store: &S, view: &str, target: &str) {
    let records = match store.list_batches(target, 50).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, view, "cannot list old indexes to remove");
            return;
        }
    };
    let mut done = 0;
    for r in records {
        let keep = match r.status {
            BatchStatus::Done => {
                done += 1;
                done <= KEPT_ARTIFACTS
            }
            BatchStatus::Failed => false,
            // A build in progress (another process): not ours to remove.
            BatchStatus::Ingested | BatchStatus::Processing => true,
        };
        if !keep
            && let Err(e) = store
                .delete_artifact(&artifact_name(view, &r.batch_id))
                .await
        {
            tracing::warn!(error = %e, view, index = %r.batch_id, "cannot remove an old index");
        }
    }
}

//! What a scoring run scores, as a stream of assembled rows: every entity of
//! a static view's current batch (read in bulk, by parts and pages, and
//! assembled by the live path's enrichment), the most requested entities or
//! combinations over a window of the prediction log, or the keys in a CSV
//! or Parquet file (rows with bad values rejected with their line and
//! reason). Each source hands this shard only its part.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use feature_store::definitions::{
    ColumnSource, Entity, FeatureSpec, FeatureType, FeatureValue, FeatureView, ModelFeatures,
    ScoreSource, ScoringJobSpec, ScoringKey, ViewKind,
};
use feature_store::freshness::StoredRow;
use feature_store::source::{RejectedRow, SourceItem};
use feature_store::store::{FullStore, LogWindow, RowStore, ScanCursor, ScanPart, StaticScan};
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};

use super::{Item, ScoringError, Shard};
use crate::enrich::{EnrichError, Enricher, WireValue};

/// Rows examined per page of a bulk scan.
const SCAN_PAGE: usize = 2_000;
/// Rows assembled at once (reads of other views in flight).
const ASSEMBLING: usize = 64;
/// Prediction log records read at most for a top-N count.
const LOG_LIMIT: usize = 5_000_000;
/// Key-file rows queued between the file reader and the scorer.
const FILE_QUEUE: usize = 4_096;

/// Why what a job scores cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The view has never been refreshed.
    #[error("static view {view:?} serves no batch yet; run its refresh job first")]
    NoBatch {
        /// The view.
        view: String,
    },
    /// The key file cannot be read.
    #[error("key file: {0}")]
    File(#[from] feature_store::source::SourceError),
    /// A combination key with a feature read from a view cannot come from
    /// a file of request values.
    #[error(
        "a key file holds request-time values; key feature {0:?} is read from a view, so score this job from the prediction log instead"
    )]
    ViewFeatureInFile(String),
    /// The file reader stopped unexpectedly.
    #[error("the key file reader stopped: {0}")]
    Reader(String),
}

/// One line of the job's source in a batch record.
pub fn describe(source: &ScoreSource) -> String {
    match source {
        ScoreSource::View(view) => format!("view {view}"),
        ScoreSource::TopEntities { n, window } => {
            format!(
                "top {n} entities over {}",
                humantime::format_duration(*window)
            )
        }
        ScoreSource::TopCombinations { n, window } => format!(
            "top {n} combinations over {}",
            humantime::format_duration(*window)
        ),
        ScoreSource::File(path) => path.display().to_string(),
    }
}

/// The rows of this shard's part of `spec`'s source, assembled.
pub(super) async fn items<'a, S: FullStore>(
    enricher: &'a Enricher<S>,
    spec: &'a ScoringJobSpec,
    model: &'a ModelFeatures,
    shard: Shard,
    in_flight: usize,
    reject: &'a (dyn Fn(RejectedRow) + Send + Sync),
) -> Result<BoxStream<'a, Result<Item, ScoringError>>, ScoringError> {
    let now = SystemTime::now();
    match &spec.source {
        ScoreSource::View(view) => {
            view_items(enricher, model, view, shard, in_flight, reject, now).await
        }
        ScoreSource::File(path) => file_items(enricher, spec, model, path, shard, reject, now),
        ScoreSource::TopEntities { n, window } => {
            let keys = top(enricher, spec, model, *n, *window, now, |r| {
                Some(r.entity.clone())
            })
            .await?;
            let keys = keys
                .into_iter()
                .enumerate()
                .filter(move |(i, _)| shard.owns(*i as u64))
                .map(|(i, (key, _))| (i as u64 + 1, key));
            Ok(stream::iter(keys)
                .map(move |(line, key)| async move {
                    let e = enricher
                        .enrich_key(model, key.clone(), &HashMap::new(), now)
                        .await;
                    assembled(e, key, line, reject)
                })
                .buffer_unordered(ASSEMBLING)
                .try_filter_map(|x| async move { Ok(x) })
                .boxed())
        }
        ScoreSource::TopCombinations { n, window } => {
            let width = model.input().width();
            let rows = top(enricher, spec, model, *n, *window, now, |r| {
                (r.inputs.len() == width).then(|| spec.key.of_row("", &r.inputs))
            })
            .await?;
            let items = rows
                .into_iter()
                .enumerate()
                .filter(move |(i, _)| shard.owns(*i as u64))
                .map(|(_, (key, row))| Ok(Item { key, row }));
            Ok(stream::iter(items).boxed())
        }
    }
}

/// An assembled row as an item: `None` (and the row rejected) for a bad
/// row, an error for a store failure.
fn assembled(
    enriched: Result<crate::enrich::Enriched, EnrichError>,
    key: String,
    line: u64,
    reject: &(dyn Fn(RejectedRow) + Send + Sync),
) -> Result<Option<Item>, ScoringError> {
    match enriched {
        Ok(e) => Ok(Some(Item { key, row: e.row })),
        Err(EnrichError::Read(read)) => Err(ScoringError::Read(read)),
        Err(bad) => {
            reject(RejectedRow {
                line,
                reason: bad.to_string(),
            });
            Ok(None)
        }
    }
}

/// Every entity of `view`'s current batch in this shard's parts, read by
/// bulk scans and assembled with the scanned row in place of a read.
async fn view_items<'a, S: FullStore>(
    enricher: &'a Enricher<S>,
    model: &'a ModelFeatures,
    view: &'a str,
    shard: Shard,
    in_flight: usize,
    reject: &'a (dyn Fn(RejectedRow) + Send + Sync),
    now: SystemTime,
) -> Result<BoxStream<'a, Result<Item, ScoringError>>, ScoringError> {
    let store = enricher.reader().store();
    let batch =
        store
            .current_batches()
            .await?
            .remove(view)
            .ok_or_else(|| SourceError::NoBatch {
                view: view.to_owned(),
            })?;
    let fanout = store.scan_fanout().max(1);
    let count = shard.count.saturating_mul(fanout);
    let parts = (0..fanout).map(move |k| ScanPart {
        index: shard.index + shard.count * k,
        count,
    });
    let batch_id: Arc<str> = Arc::from(batch.batch_id);
    let rows = stream::iter(parts)
        .map(move |part| pages(store.as_ref(), view, Arc::clone(&batch_id), part))
        .flatten_unordered(in_flight.max(1));
    let mut line = 0u64;
    Ok(rows
        .map(move |row| {
            line += 1;
            (line, row)
        })
        .map(move |(line, row)| async move {
            let (entity, stored) = row?;
            let e = enricher
                .enrich_known(model, entity.clone(), &HashMap::new(), (view, &stored), now)
                .await;
            assembled(e, entity, line, reject)
        })
        .buffer_unordered(ASSEMBLING)
        .try_filter_map(|x| async move { Ok(x) })
        .boxed())
}

/// The rows of one part of a batch, page by page.
fn pages<'a, S: RowStore>(
    store: &'a S,
    view: &'a str,
    batch_id: Arc<str>,
    part: ScanPart,
) -> BoxStream<'a, Result<(String, StoredRow), ScoringError>> {
    stream::try_unfold(Some(None::<ScanCursor>), move |state| {
        let batch_id = Arc::clone(&batch_id);
        async move {
            let Some(after) = state else {
                return Ok(None);
            };
            let page = store
                .scan_static(StaticScan {
                    view,
                    batch_id: &batch_id,
                    part,
                    after: after.as_ref(),
                    limit: SCAN_PAGE,
                })
                .await?;
            let next = page.next.map(Some);
            Ok::<_, ScoringError>(Some((
                stream::iter(page.rows.into_iter().map(Ok::<_, ScoringError>)),
                next,
            )))
        }
    })
    .try_flatten()
    .boxed()
}

/// The keys (or rows) most often predicted for the job's model over the
/// last `window` of the log, most frequent first (ties by key), at most
/// `n`; `key_of` says a record's key (`None`: skip it). Shadow copies are
/// not requests and are not counted.
async fn top<S: FullStore>(
    enricher: &Enricher<S>,
    spec: &ScoringJobSpec,
    model: &ModelFeatures,
    n: u64,
    window: Duration,
    now: SystemTime,
    key_of: impl Fn(&feature_store::log::PredictionRecord) -> Option<String>,
) -> Result<Vec<(String, Vec<f32>)>, ScoringError> {
    let entries = enricher
        .reader()
        .store()
        .read_log(LogWindow {
            from: now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH),
            to: now,
            limit: LOG_LIMIT,
        })
        .await?;
    let mut counts: HashMap<String, (u64, Vec<f32>)> = HashMap::new();
    for entry in entries {
        let record = entry.prediction;
        if record.model != model.name() || record.shadow_of.is_some() {
            continue;
        }
        let Some(key) = key_of(&record).filter(|k| !k.is_empty()) else {
            continue;
        };
        counts.entry(key).or_insert((0, record.inputs)).0 += 1;
    }
    let mut ranked: Vec<(String, (u64, Vec<f32>))> = counts.into_iter().collect();
    ranked.sort_unstable_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    tracing::info!(job = %spec.name, keys = ranked.len(), "counted the most requested keys");
    Ok(ranked.into_iter().map(|(k, (_, row))| (k, row)).collect())
}

/// The keys of a CSV or Parquet file: an entity key's columns, or a
/// combination's request features by name. Read on a blocking thread.
fn file_items<'a, S: FullStore>(
    enricher: &'a Enricher<S>,
    spec: &'a ScoringJobSpec,
    model: &'a ModelFeatures,
    path: &'a Path,
    shard: Shard,
    reject: &'a (dyn Fn(RejectedRow) + Send + Sync),
    now: SystemTime,
) -> Result<BoxStream<'a, Result<Item, ScoringError>>, ScoringError> {
    let defs = enricher.definitions();
    let (entity, features) = match &spec.key {
        ScoringKey::Entity => {
            let name = model.entities().first().cloned().unwrap_or_default();
            let entity = defs.entity(&name).cloned().unwrap_or(Entity {
                name,
                keys: Vec::new(),
            });
            (entity, Vec::new())
        }
        ScoringKey::Combination(keys) => {
            let mut features = Vec::with_capacity(keys.len());
            for k in keys {
                let column = model.input().columns().get(k.column);
                if column.is_none_or(|c| c.source != ColumnSource::Request) {
                    return Err(SourceError::ViewFeatureInFile(k.reference.clone()).into());
                }
                features.push(FeatureSpec {
                    name: k.name.clone(),
                    feature_type: k.feature_type,
                    default: zero(k.feature_type),
                    aggregate: None,
                });
            }
            let entity = Entity {
                name: format!("{} key", spec.name),
                keys: Vec::new(),
            };
            (entity, features)
        }
    };
    let view = FeatureView {
        name: format!("{} keys", spec.name),
        entity: entity.name.clone(),
        max_age: Duration::MAX,
        kind: ViewKind::Dynamic { ttl: Duration::MAX },
        features,
        index: None,
    };
    let rows = feature_store::source::open(&view, &entity, path).map_err(SourceError::from)?;
    let (tx, rx) = tokio::sync::mpsc::channel(FILE_QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut data_row = 0u64;
        for item in rows {
            let owned = match &item {
                Ok(SourceItem::Row(_)) | Ok(SourceItem::Rejected(_)) => {
                    data_row += 1;
                    shard.owns(data_row - 1)
                }
                Err(_) => true,
            };
            if owned && tx.blocking_send(item).is_err() {
                return;
            }
        }
    });
    let combination = matches!(spec.key, ScoringKey::Combination(_));
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(move |item| async move {
            match item.map_err(SourceError::from)? {
                SourceItem::Rejected(row) => {
                    reject(row);
                    Ok(None)
                }
                SourceItem::Row(row) if combination => {
                    let request: HashMap<String, WireValue> =
                        row.values.into_iter().map(|(k, v)| (k, wire(v))).collect();
                    let e = enricher
                        .enrich_key(model, String::new(), &request, now)
                        .await;
                    let key = match &e {
                        Ok(e) => spec.key.of_row("", &e.row),
                        Err(_) => String::new(),
                    };
                    assembled(e, key, row.line, reject)
                }
                SourceItem::Row(row) => {
                    if row.entity_key.is_empty() {
                        reject(RejectedRow {
                            line: row.line,
                            reason: "the entity key is empty".to_owned(),
                        });
                        return Ok(None);
                    }
                    let e = enricher
                        .enrich_key(model, row.entity_key.clone(), &HashMap::new(), now)
                        .await;
                    assembled(e, row.entity_key, row.line, reject)
                }
            }
        })
        .buffered(ASSEMBLING)
        .try_filter_map(|x| async move { Ok(x) })
        .boxed())
}

fn zero(ty: FeatureType) -> FeatureValue {
    match ty {
        FeatureType::Float32 => FeatureValue::Float32(0.0),
        FeatureType::Float64 => FeatureValue::Float64(0.0),
        FeatureType::Int64 => FeatureValue::Int64(0),
        FeatureType::Bool => FeatureValue::Bool(false),
        FeatureType::String => FeatureValue::String(String::new()),
        FeatureType::Vector(n) => FeatureValue::Vector(vec![0.0; usize::from(n)]),
    }
}

/// A typed file value as the caller would have sent it.
fn wire(value: FeatureValue) -> WireValue {
    match value {
        FeatureValue::Float32(v) => WireValue::Double(f64::from(v)),
        FeatureValue::Float64(v) => WireValue::Double(v),
        FeatureValue::Int64(v) => WireValue::Int(v),
        FeatureValue::Bool(v) => WireValue::Bool(v),
        FeatureValue::String(v) => WireValue::Text(v),
        // Request features are model inputs, which are never vectors (the
        // definitions refuse them); shown as text if one ever got here.
        v @ FeatureValue::Vector(_) => WireValue::Text(v.to_string()),
    }
}

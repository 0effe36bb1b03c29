//! Feature rows and events on ScyllaDB: a static row is one
//! single-partition read; static rows are written in unlogged batches
//! grouped by the replica that owns them, retried when the cluster is busy;
//! dynamic values carry their event time as the cell's write timestamp.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::time::{Duration, SystemTime};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use scylla::response::PagingState;
use scylla::statement::batch::{Batch, BatchType};

use super::{ScyllaStore, WRITE_RETRIES, deadline};
use crate::aggregate::EventRange;
use crate::clock::to_micros;
use crate::codec;
use crate::freshness::StoredRow;
use crate::store::decode;
use crate::store::{
    DynamicWrite, EventQuery, EventWrite, RowStore, ScanCursor, ScanPage, ScanPart, SchemaReport,
    StaticKey, StaticScan, StaticWrite, StoreError,
};

/// How many token ranges a scan is cut into per process, so that many
/// ranges are read at once.
const SCAN_FANOUT: u32 = 32;

/// Event writes (statements or single-partition batches) in flight at once
/// from one `write_events` call.
const EVENT_WRITES_IN_FLIGHT: usize = 64;

/// The inclusive token range of `part`: the Murmur3 token space cut into
/// `count` equal ranges.
fn token_range(part: ScanPart) -> (i64, i64) {
    let count = i128::from(part.count.max(1));
    let index = i128::from(part.index.min(part.count.saturating_sub(1)));
    let span = i128::from(i64::MAX) - i128::from(i64::MIN) + 1;
    let lo = i128::from(i64::MIN) + span * index / count;
    let hi = i128::from(i64::MIN) + span * (index + 1) / count - 1;
    let clamp = |t: i128| i64::try_from(t).unwrap_or(if t < 0 { i64::MIN } else { i64::MAX });
    (clamp(lo), clamp(hi))
}

impl RowStore for ScyllaStore {
    async fn apply_schema(&self) -> Result<SchemaReport, StoreError> {
        self.create_tables().await
    }

    async fn scan_static(&self, scan: StaticScan<'_>) -> Result<ScanPage, StoreError> {
        // A page of thousands of rows is a bulk read (scoring runs, index
        // builds), not a request's point read: it gets at least 5 s.
        let limit = self.config.read_timeout.max(Duration::from_secs(5));
        deadline(limit, async {
            let st = self.statements().await?;
            let mut statement = st.scan_static.clone();
            statement.set_request_timeout(Some(limit));
            statement.set_page_size(i32::try_from(scan.limit.max(1)).unwrap_or(i32::MAX));
            let paging = scan.after.map_or_else(PagingState::start, |c| {
                PagingState::new_from_raw_bytes(c.0.as_slice())
            });
            let (result, more) = self
                .session
                .execute_single_page(&statement, token_range(scan.part), paging)
                .await?;
            let rows = result.into_rows_result()?;
            let mut page = ScanPage::default();
            for row in rows.rows::<(String, String, String, i64, Vec<u8>)>()? {
                let (view, entity, batch_id, micros, blob) = row?;
                // The table holds every view and every kept batch; a token
                // range cannot be narrowed to one of them.
                if view != scan.view || batch_id != scan.batch_id {
                    continue;
                }
                let stored = decode::static_row(&view, &batch_id, &entity, micros, &blob)?;
                page.rows.push((entity, stored));
            }
            page.next = match more.into_paging_control_flow() {
                ControlFlow::Continue(state) => state
                    .as_bytes_slice()
                    .map(|bytes| ScanCursor(bytes.to_vec())),
                ControlFlow::Break(()) => None,
            };
            Ok(page)
        })
        .await
    }

    fn scan_fanout(&self) -> u32 {
        SCAN_FANOUT
    }

    async fn read_static(&self, key: StaticKey<'_>) -> Result<Option<StoredRow>, StoreError> {
        let (view, batch_id, entity_key) = (key.view, key.batch_id, key.entity_key);
        deadline(self.config.read_timeout, async {
            let st = self.statements().await?;
            let result = self
                .session
                .execute_unpaged(&st.read_static, (view, entity_key, batch_id))
                .await?;
            let rows = result.into_rows_result()?;
            let Some((micros, blob)) = rows.maybe_first_row::<(i64, Vec<u8>)>()? else {
                return Ok(None);
            };
            Ok(Some(decode::static_row(
                view, batch_id, entity_key, micros, &blob,
            )?))
        })
        .await
    }

    async fn write_static(&self, write: StaticWrite<'_>) -> Result<(), StoreError> {
        let st = deadline(self.config.write_timeout, self.statements()).await?;
        let ttl = i32::try_from(write.retention.as_secs().max(1)).unwrap_or(i32::MAX);
        let micros = to_micros(write.written_at);
        // Group rows by owning replica, then cut each group into batches.
        let mut groups: HashMap<Option<uuid::Uuid>, Vec<usize>> = HashMap::new();
        for (i, row) in write.rows.iter().enumerate() {
            let owner = self.owner(&st.write_static, write.view, &row.entity_key);
            groups.entry(owner).or_default().push(i);
        }
        let per_batch = self.config.write_batch_rows.max(1);
        let chunks: Vec<Vec<usize>> = groups
            .into_values()
            .flat_map(|idx| {
                idx.chunks(per_batch)
                    .map(<[usize]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect();
        stream::iter(chunks)
            .map(|chunk| async move {
                let mut batch = Batch::new(BatchType::Unlogged);
                batch.set_consistency(self.config.write_consistency);
                batch.set_request_timeout(Some(self.config.write_timeout));
                let mut values = Vec::with_capacity(chunk.len());
                for &i in &chunk {
                    batch.append_statement(st.write_static.clone());
                    let row = &write.rows[i];
                    values.push((
                        write.view,
                        row.entity_key.as_str(),
                        write.batch_id,
                        micros,
                        row.blob.as_slice(),
                        ttl,
                    ));
                }
                // Static rows are idempotent (same key, same values), so a
                // write that timed out or found the node busy is retried a
                // few times with backoff instead of failing the whole batch.
                let mut attempt = 0u32;
                loop {
                    let result = deadline(self.config.write_timeout, async {
                        self.session
                            .batch(&batch, &values)
                            .await
                            .map(drop)
                            .map_err(StoreError::from)
                    })
                    .await;
                    match result {
                        Err(e) if e.is_transient() && attempt < WRITE_RETRIES => {
                            attempt += 1;
                            tracing::debug!(error = %e, attempt, "retrying a refresh write");
                            tokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
                        }
                        other => break other,
                    }
                }
            })
            .buffer_unordered(self.config.write_parallelism.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn read_dynamic(
        &self,
        view: &str,
        entity_key: &str,
    ) -> Result<Option<StoredRow>, StoreError> {
        deadline(self.config.read_timeout, async {
            let st = self.statements().await?;
            let result = self
                .session
                .execute_unpaged(&st.read_dynamic, (view, entity_key))
                .await?;
            let rows = result.into_rows_result()?;
            let mut values = BTreeMap::new();
            for row in rows.rows::<(String, Vec<u8>, i64)>()? {
                let (feature, blob, micros) = row?;
                values.insert(
                    feature,
                    decode::dynamic_value(view, entity_key, micros, &blob)?,
                );
            }
            Ok(StoredRow::dynamic(values))
        })
        .await
    }

    async fn write_dynamic(&self, write: DynamicWrite<'_>) -> Result<(), StoreError> {
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            let Some(ttl) = ttl_left(write.expires_at) else {
                return Ok(());
            };
            if write.values.is_empty() {
                return Ok(());
            }
            let stamp = to_micros(write.event_time);
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_consistency(self.config.write_consistency);
            batch.set_request_timeout(Some(self.config.write_timeout));
            let mut values = Vec::with_capacity(write.values.len());
            for (name, value) in write.values {
                batch.append_statement(st.write_dynamic.clone());
                values.push((
                    write.view,
                    write.entity_key,
                    name.as_str(),
                    codec::encode_value(value),
                    stamp,
                    ttl,
                ));
            }
            self.session
                .batch(&batch, values)
                .await
                .map(drop)
                .map_err(StoreError::from)
        })
        .await
    }

    async fn write_event(&self, write: EventWrite<'_>) -> Result<(), StoreError> {
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            let Some(ttl) = ttl_left(write.expires_at) else {
                return Ok(());
            };
            let event = write.event;
            let blob = codec::encode(event.fields.iter().map(|(n, v)| (n.as_str(), v)));
            self.session
                .execute_unpaged(
                    &st.write_event,
                    (
                        write.view,
                        write.entity_key,
                        to_micros(event.event_time),
                        event.event_id.as_str(),
                        blob,
                        ttl,
                    ),
                )
                .await
                .map(drop)
                .map_err(StoreError::from)
        })
        .await
    }

    /// Events grouped by partition (view, entity): a partition's events go
    /// in unlogged single-partition batches (one mutation on one replica
    /// set each), a lone event as one prepared statement; at most
    /// [`EVENT_WRITES_IN_FLIGHT`] calls at once, each with the write
    /// deadline. Measured against unlogged batches spanning partitions,
    /// which make one coordinator fan out to every replica and answer
    /// when the slowest has.
    async fn write_events(&self, writes: &[EventWrite<'_>]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let st = deadline(self.config.write_timeout, self.statements()).await?;
        let mut rows = Vec::with_capacity(writes.len());
        for w in writes {
            // Already past the view's TTL: never read, so not written.
            let Some(ttl) = ttl_left(w.expires_at) else {
                continue;
            };
            let blob = codec::encode(w.event.fields.iter().map(|(n, v)| (n.as_str(), v)));
            let bytes = blob.len() + w.event.event_id.len() + w.entity_key.len();
            rows.push((
                (w.view, w.entity_key),
                bytes,
                (
                    w.view,
                    w.entity_key,
                    to_micros(w.event.event_time),
                    w.event.event_id.as_str(),
                    blob,
                    ttl,
                ),
            ));
        }
        self.execute_grouped(&st.write_event, rows, EVENT_WRITES_IN_FLIGHT)
            .await
    }

    async fn read_events(&self, query: EventQuery<'_>) -> Result<EventRange, StoreError> {
        let (view, entity_key, limit) = (query.view, query.entity_key, query.limit);
        deadline(self.config.read_timeout, async {
            let st = self.statements().await?;
            // One row more than asked says whether the cap was hit.
            let asked = i32::try_from(limit.saturating_add(1)).unwrap_or(i32::MAX);
            let result = self
                .session
                .execute_unpaged(
                    &st.read_events,
                    (
                        view,
                        entity_key,
                        to_micros(query.from),
                        to_micros(query.to),
                        asked,
                    ),
                )
                .await?;
            let rows = result.into_rows_result()?;
            let mut out = EventRange::default();
            for row in rows.rows::<(i64, String, Vec<u8>)>()? {
                let (micros, event_id, blob) = row?;
                if out.events.len() == limit {
                    out.truncated = true;
                    break;
                }
                out.events
                    .push(decode::event(view, entity_key, micros, event_id, &blob)?);
            }
            Ok(out)
        })
        .await
    }
}

/// The CQL TTL (seconds) of a value that expires at `expires_at`, or `None`
/// when less than a second is left: such a value is not written, since it
/// would read as missing anyway and TTL 0 means "never expires" in CQL.
fn ttl_left(expires_at: SystemTime) -> Option<i32> {
    let left = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .as_secs();
    (left > 0).then(|| i32::try_from(left).unwrap_or(i32::MAX))
}

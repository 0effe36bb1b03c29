//! Feature rows and events in the file: static rows keyed by (view, batch,
//! entity), dynamic values by (view, entity, feature) with last-write-wins by
//! event time, raw events by (view, entity, event time, event ID) with an
//! expiry index that every write prunes a bounded part of.

use std::collections::BTreeMap;
use std::time::SystemTime;

use redb::{ReadTransaction, ReadableTable};

use super::tables::{DYNAMIC, EVENT_EXPIRY, EVENT_PRUNE_PER_WRITE, EVENTS, STATIC};
use super::{
    CallResult, EmbeddedStore, from_ordered_micros, key, ordered_micros, prefix_end, read_table,
    split_i64, tables,
};
use crate::aggregate::EventRange;
use crate::clock::to_micros;
use crate::codec;
use crate::freshness::StoredRow;
use crate::store::decode::{self, corrupt};
use crate::store::{
    DynamicWrite, EventQuery, EventWrite, RowStore, ScanCursor, ScanPage, SchemaReport, StaticKey,
    StaticScan, StaticWrite, StoreError,
};

/// The unexpired dynamic values of `entity_key` in `view` at `now` (µs).
fn dynamic_in(
    tx: &ReadTransaction,
    view: &str,
    entity_key: &str,
    now: i64,
) -> CallResult<Option<StoredRow>> {
    let table = read_table(tx, DYNAMIC)?;
    let prefix = key(&[view.as_bytes(), entity_key.as_bytes()]);
    let end = prefix_end(&prefix);
    let mut values = BTreeMap::new();
    for item in table.range(prefix.as_slice()..end.as_slice())? {
        let (k, v) = item?;
        let feature = k
            .value()
            .get(prefix.len() + 4..)
            .and_then(|f| std::str::from_utf8(f).ok())
            .ok_or_else(|| corrupt(view, entity_key, "bad feature key"))?
            .to_owned();
        let (event, rest) =
            split_i64(v.value()).ok_or_else(|| corrupt(view, entity_key, "truncated"))?;
        let (expires, blob) =
            split_i64(rest).ok_or_else(|| corrupt(view, entity_key, "truncated"))?;
        if expires <= now {
            continue;
        }
        values.insert(
            feature,
            decode::dynamic_value(view, entity_key, event, blob)?,
        );
    }
    Ok(StoredRow::dynamic(values))
}

/// The unexpired events of `entity_key` in `view` with event times in
/// `[from, to]`, newest first, at most `limit`, at `now` (µs).
fn events_in(tx: &ReadTransaction, query: EventQuery<'_>, now: i64) -> CallResult<EventRange> {
    let (view, entity_key, limit) = (query.view, query.entity_key, query.limit);
    let prefix = key(&[view.as_bytes(), entity_key.as_bytes()]);
    let mut lo = prefix.clone();
    lo.extend_from_slice(&ordered_micros(to_micros(query.from)));
    let mut hi = prefix.clone();
    hi.extend_from_slice(&ordered_micros(to_micros(query.to).saturating_add(1)));
    let table = read_table(tx, EVENTS)?;
    let corrupt = |what| corrupt(view, entity_key, what);
    let mut out = EventRange::default();
    // Newest first; expired rows (the oldest) are skipped until pruned.
    for item in table.range(lo.as_slice()..hi.as_slice())?.rev() {
        let (k, v) = item?;
        let (expires, blob) = split_i64(v.value()).ok_or_else(|| corrupt("truncated"))?;
        if expires <= now {
            continue;
        }
        if out.events.len() == limit {
            out.truncated = true;
            break;
        }
        let rest = k
            .value()
            .get(prefix.len()..)
            .ok_or_else(|| corrupt("bad event key"))?;
        let (time, id) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("bad event key"))?;
        let event_id = std::str::from_utf8(id)
            .map_err(|_| corrupt("event ID is not UTF-8"))?
            .to_owned();
        out.events.push(decode::event(
            view,
            entity_key,
            from_ordered_micros(*time),
            event_id,
            blob,
        )?);
    }
    Ok(out)
}

/// The static row of `entity_key` written by `batch_id`.
fn static_in(
    tx: &ReadTransaction,
    view: &str,
    batch_id: &str,
    entity_key: &str,
) -> CallResult<Option<StoredRow>> {
    let table = read_table(tx, STATIC)?;
    let k = key(&[view.as_bytes(), batch_id.as_bytes(), entity_key.as_bytes()]);
    let Some(guard) = table.get(k.as_slice())? else {
        return Ok(None);
    };
    let (micros, blob) =
        split_i64(guard.value()).ok_or_else(|| corrupt(view, entity_key, "truncated time"))?;
    Ok(Some(decode::static_row(
        view, batch_id, entity_key, micros, blob,
    )?))
}

/// One event as its rows: the event row keyed by (view, entity, ordered
/// event time, event ID), so a redelivery overwrites itself, and its entry in
/// the expiry index.
struct StoredEvent {
    key: Vec<u8>,
    value: Vec<u8>,
    expiry_key: Vec<u8>,
    expires: i64,
}

impl StoredEvent {
    fn new(write: &EventWrite<'_>) -> Self {
        let expires = to_micros(write.expires_at);
        let mut key = key(&[write.view.as_bytes(), write.entity_key.as_bytes()]);
        key.extend_from_slice(&ordered_micros(to_micros(write.event.event_time)));
        key.extend_from_slice(write.event.event_id.as_bytes());
        let blob = codec::encode(write.event.fields.iter().map(|(n, v)| (n.as_str(), v)));
        let mut value = Vec::with_capacity(8 + blob.len());
        value.extend_from_slice(&expires.to_le_bytes());
        value.extend_from_slice(&blob);
        let mut expiry_key = ordered_micros(expires).to_vec();
        expiry_key.extend_from_slice(&key);
        StoredEvent {
            key,
            value,
            expiry_key,
            expires,
        }
    }
}

/// The scan part of an entity key: FNV-1a, fixed here so that every
/// process of a sharded run agrees on it.
fn part_of(entity: &str, count: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in entity.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    u32::try_from(h % u64::from(count.max(1))).unwrap_or(0)
}

impl RowStore for EmbeddedStore {
    async fn apply_schema(&self) -> Result<SchemaReport, StoreError> {
        self.blocking(tables::apply).await
    }

    async fn read_static(&self, key: StaticKey<'_>) -> Result<Option<StoredRow>, StoreError> {
        self.inline(|tx| static_in(tx, key.view, key.batch_id, key.entity_key))
    }

    async fn scan_static(&self, scan: StaticScan<'_>) -> Result<ScanPage, StoreError> {
        let prefix = key(&[scan.view.as_bytes(), scan.batch_id.as_bytes()]);
        let end = prefix_end(&prefix);
        let limit = scan.limit.max(1);
        let part = scan.part;
        // Resume just past the last key of the previous page.
        let start = scan.after.map_or_else(
            || prefix.clone(),
            |c| {
                let mut k = c.0.clone();
                k.push(0);
                k
            },
        );
        let (view, batch_id) = (scan.view, scan.batch_id);
        self.inline(|tx| {
            let table = read_table(tx, STATIC)?;
            let mut page = ScanPage::default();
            let mut examined = 0usize;
            let mut last: Option<Vec<u8>> = None;
            for item in table.range(start.as_slice()..end.as_slice())? {
                let (k, v) = item?;
                let k = k.value();
                examined += 1;
                let entity = k
                    .get(prefix.len() + 4..)
                    .and_then(|rest| std::str::from_utf8(rest).ok())
                    .ok_or_else(|| corrupt(view, "", "a static key that is not UTF-8"))?;
                if part_of(entity, part.count) == part.index {
                    let (micros, blob) = split_i64(v.value())
                        .ok_or_else(|| corrupt(view, entity, "truncated time"))?;
                    let row = decode::static_row(view, batch_id, entity, micros, blob)?;
                    page.rows.push((entity.to_owned(), row));
                }
                if examined >= limit {
                    last = Some(k.to_vec());
                    break;
                }
            }
            page.next = last.map(ScanCursor);
            Ok(page)
        })
    }

    async fn write_static(&self, write: StaticWrite<'_>) -> Result<(), StoreError> {
        let micros = to_micros(write.written_at).to_le_bytes();
        let entries: Vec<(Vec<u8>, Vec<u8>)> = write
            .rows
            .iter()
            .map(|r| {
                let k = key(&[
                    write.view.as_bytes(),
                    write.batch_id.as_bytes(),
                    r.entity_key.as_bytes(),
                ]);
                let mut v = Vec::with_capacity(8 + r.blob.len());
                v.extend_from_slice(&micros);
                v.extend_from_slice(&r.blob);
                (k, v)
            })
            .collect();
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(STATIC)?;
                for (k, v) in &entries {
                    table.insert(k.as_slice(), v.as_slice())?;
                }
            }
            Ok(tx.commit()?)
        })
        .await
    }

    async fn read_dynamic(
        &self,
        view: &str,
        entity_key: &str,
    ) -> Result<Option<StoredRow>, StoreError> {
        self.inline(|tx| dynamic_in(tx, view, entity_key, to_micros(SystemTime::now())))
    }

    async fn write_dynamic(&self, write: DynamicWrite<'_>) -> Result<(), StoreError> {
        let event = to_micros(write.event_time);
        let expires = to_micros(write.expires_at);
        let entries: Vec<(Vec<u8>, Vec<u8>)> = write
            .values
            .iter()
            .map(|(name, value)| {
                let k = key(&[
                    write.view.as_bytes(),
                    write.entity_key.as_bytes(),
                    name.as_bytes(),
                ]);
                let mut v = Vec::with_capacity(24);
                v.extend_from_slice(&event.to_le_bytes());
                v.extend_from_slice(&expires.to_le_bytes());
                v.extend_from_slice(&codec::encode_value(value));
                (k, v)
            })
            .collect();
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(DYNAMIC)?;
                for (k, v) in &entries {
                    // Last write wins by event time, as ScyllaDB's cell
                    // timestamps do: an older event never replaces a newer one.
                    let stored = table
                        .get(k.as_slice())?
                        .and_then(|g| split_i64(g.value()).map(|(t, _)| t));
                    if stored.is_some_and(|t| t > event) {
                        continue;
                    }
                    table.insert(k.as_slice(), v.as_slice())?;
                }
            }
            Ok(tx.commit()?)
        })
        .await
    }

    async fn write_event(&self, write: EventWrite<'_>) -> Result<(), StoreError> {
        self.write_events(std::slice::from_ref(&write)).await
    }

    /// All events in one write transaction: one commit (and one fsync) for
    /// the batch, which is what makes stream ingest fast on this backend.
    async fn write_events(&self, writes: &[EventWrite<'_>]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let entries: Vec<StoredEvent> = writes.iter().map(StoredEvent::new).collect();
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let now = to_micros(SystemTime::now());
            let tx = db.begin_write()?;
            {
                let mut events = tx.open_table(EVENTS)?;
                let mut expiry = tx.open_table(EVENT_EXPIRY)?;
                for e in &entries {
                    // As on ScyllaDB, an event past its TTL is not written.
                    if e.expires > now {
                        events.insert(e.key.as_slice(), e.value.as_slice())?;
                        expiry.insert(e.expiry_key.as_slice(), [].as_slice())?;
                    }
                }
                // Prune the events that expired first, a bounded number per
                // write. An index entry whose event was rewritten with a
                // later expiry only drops itself.
                let due: Vec<Vec<u8>> = expiry
                    .range(..ordered_micros(now.saturating_add(1)).as_slice())?
                    .take(EVENT_PRUNE_PER_WRITE)
                    .map(|item| item.map(|(k, _)| k.value().to_vec()))
                    .collect::<Result<_, _>>()?;
                for index_key in due {
                    expiry.remove(index_key.as_slice())?;
                    let Some(event_key) = index_key.get(8..) else {
                        continue;
                    };
                    let stored = events
                        .get(event_key)?
                        .and_then(|g| split_i64(g.value()).map(|(t, _)| t));
                    if stored.is_some_and(|t| t <= now) {
                        events.remove(event_key)?;
                    }
                }
            }
            Ok(tx.commit()?)
        })
        .await
    }

    async fn read_events(&self, query: EventQuery<'_>) -> Result<EventRange, StoreError> {
        // Inline like the other reads of one entity: a window's events are
        // a short range of one key prefix (at most `limit`).
        self.inline(|tx| {
            let now = to_micros(SystemTime::now());
            events_in(tx, query, now)
        })
    }

    /// Both reads in one read transaction, so they see one state of the
    /// store.
    async fn read_dynamic_window(
        &self,
        query: EventQuery<'_>,
    ) -> Result<(Option<StoredRow>, EventRange), StoreError> {
        self.inline(|tx| {
            let now = to_micros(SystemTime::now());
            let row = dynamic_in(tx, query.view, query.entity_key, now)?;
            let events = events_in(tx, query, now)?;
            Ok((row, events))
        })
    }
}

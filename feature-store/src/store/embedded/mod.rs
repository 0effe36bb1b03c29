//! The embedded backend: one redb file, so the product runs on a laptop with no
//! ScyllaDB, with the same semantics as the ScyllaDB backend.
//!
//! The file is opened in redb's multi-writer mode, so the gateway and the data
//! engineers' CLI can use it at the same time. redb calls block, so each call
//! runs on tokio's blocking pool. Keys are byte strings with length-prefixed
//! parts, so no entity key (which may contain any character) can collide with
//! another.
//!
//! Point reads of one entity (static rows, dynamic rows, a window of events)
//! run inline and share one read snapshot among the reads that begin within
//! [`SNAPSHOT_TTL`] of it: starting a read transaction in the multi-writer
//! mode registers it, takes a shared lock on the file header and reads the
//! header (sharing the transaction cut the gateway's CPU per call by ~7% at
//! 5,000 req/s). Any call of this process that may have written drops the
//! snapshot, so this process reads its own writes at once; another process's
//! commits are seen at most `SNAPSHOT_TTL` late, and a snapshot outlives its
//! last read by at most one such call (the reader's batch poll is one, every
//! 2 s by default), so it does not pin old pages for long.
//!
//! One file per concern (`rows`, `batches`, `predictions`, `coordination`,
//! `routing`, `tuning`, `scores`); `tables` holds the file's layout and creates it.

mod artifacts;
mod batches;
mod coordination;
mod predictions;
mod requests;
mod routing;
mod rows;
mod scores;
mod tables;
mod tuning;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{ConcurrencyMode, Database, ReadTransaction, ReadableDatabase, TableDefinition};

use super::{BoxError, StoreError, decode};
use tables::META;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 9;

/// How long a read snapshot is shared by the point reads that begin after it
/// (see the module docs).
pub const SNAPSHOT_TTL: Duration = Duration::from_millis(1);

/// A read transaction shared by point reads, and the write generation it was
/// taken in.
struct Snapshot {
    tx: ReadTransaction,
    taken: Instant,
    generation: u64,
}

/// The shared snapshot and the count of this process's calls that may have
/// written.
#[derive(Default)]
struct Snapshots {
    generation: AtomicU64,
    shared: Mutex<Option<Arc<Snapshot>>>,
}

impl Snapshots {
    /// Called after every call that may have written: later reads begin a
    /// new transaction.
    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut slot) = self.shared.lock() {
            *slot = None;
        }
    }

    /// The shared snapshot if it is young and no write came since; else a
    /// new one, which becomes the shared one.
    fn get(&self, db: &Database) -> Result<Arc<Snapshot>, redb::Error> {
        // Loaded before the transaction begins: a write committed meanwhile
        // has bumped it, so a snapshot that may miss the write is never
        // handed out after the write's caller has returned.
        let generation = self.generation.load(Ordering::Acquire);
        if let Ok(slot) = self.shared.lock()
            && let Some(s) = slot.as_ref()
            && s.generation == generation
            && s.taken.elapsed() < SNAPSHOT_TTL
        {
            return Ok(Arc::clone(s));
        }
        let snapshot = Arc::new(Snapshot {
            tx: db.begin_read()?,
            taken: Instant::now(),
            generation,
        });
        if let Ok(mut slot) = self.shared.lock()
            && self.generation.load(Ordering::Acquire) == generation
        {
            *slot = Some(Arc::clone(&snapshot));
        }
        Ok(snapshot)
    }
}

/// The redb-backed store.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    snapshots: Arc<Snapshots>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Memory for the file's pages kept in the process (read and written), by
/// default. redb's own default is 1 GiB, and a gateway writing its prediction
/// log fills it with pages it will not read again: it grew by ~2.4 KB per
/// prediction, each new 2-MiB huge page faulted in and zeroed on the hot
/// path. Beyond this the kernel's page cache still holds the file.
pub const DEFAULT_CACHE_BYTES: usize = 128 << 20;

/// A failure inside one call, before the file's path is attached to it.
#[derive(Debug)]
enum CallError {
    /// redb failed.
    Redb(redb::Error),
    /// Anything else, with its path-free [`StoreError`].
    Store(StoreError),
    /// The file itself is unusable for this build.
    File(BoxError),
}

impl From<serde_json::Error> for CallError {
    fn from(e: serde_json::Error) -> Self {
        CallError::Store(e.into())
    }
}

impl From<StoreError> for CallError {
    fn from(e: StoreError) -> Self {
        CallError::Store(e)
    }
}

/// Every redb error type a call can meet converts into [`redb::Error`].
macro_rules! from_redb {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for CallError {
            fn from(e: $t) -> Self {
                CallError::Redb(e.into())
            }
        })*
    };
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);

impl CallError {
    /// The caller's error, naming the file where the file is at fault.
    fn at(self, path: &Path) -> StoreError {
        let file = |source| StoreError::Embedded {
            path: path.display().to_string(),
            source,
        };
        match self {
            CallError::Redb(e) => file(Box::new(e)),
            CallError::File(e) => file(e),
            CallError::Store(e) => e,
        }
    }
}

/// A call's result inside the store.
type CallResult<T> = Result<T, CallError>;

/// The directory of a new database file cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot create directory {}: {source}", dir.display())]
struct CreateDirError {
    dir: PathBuf,
    #[source]
    source: std::io::Error,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database file at `path`, with
    /// [`DEFAULT_CACHE_BYTES`] of page cache. The schema is created by
    /// [`RowStore::apply_schema`](super::RowStore::apply_schema).
    ///
    /// # Errors
    /// [`StoreError::Embedded`] if the file cannot be created or opened (bad
    /// directory, not a redb file, a newer format).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`EmbeddedStore::open`] with `cache_bytes` of page cache (0: none,
    /// every read goes to the file through the kernel's page cache).
    ///
    /// # Errors
    /// As [`EmbeddedStore::open`].
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| {
                CallError::File(Box::new(CreateDirError {
                    dir: dir.to_owned(),
                    source,
                }))
                .at(path)
            })?;
        }
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| CallError::from(e).at(path))?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path: path.to_owned(),
            snapshots: Arc::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the blocking pool with the database. `f` may write, so
    /// the shared read snapshot is dropped once it has run.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> CallResult<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        let snapshots = Arc::clone(&self.snapshots);
        tokio::task::spawn_blocking(move || {
            let out = f(&db);
            snapshots.invalidate();
            out
        })
        .await
        .map_err(|e| CallError::File(Box::new(e)))
        .and_then(|out| out)
        .map_err(|e| e.at(&self.path))
    }

    /// Runs a point read `f` right here, on the caller's thread, in the
    /// shared read snapshot (see the module docs). A read on one key of a
    /// page-cached file takes microseconds, less than handing it to a
    /// blocking thread and waking the caller again costs (that hand-off was
    /// ~5% of the gateway's CPU per call); writes, scans and schema work stay
    /// on the blocking pool.
    fn inline<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> CallResult<T>,
    ) -> Result<T, StoreError> {
        self.snapshots
            .get(&self.db)
            .map_err(CallError::from)
            .and_then(|snapshot| f(&snapshot.tx))
            .map_err(|e| e.at(&self.path))
    }

    /// Fails unless the file's schema is this build's.
    fn check_schema(db: &Database) -> CallResult<()> {
        let tx = db.begin_read()?;
        let found = match tx.open_table(META) {
            Ok(t) => t.get("schema_version")?.map_or(0, |v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        if found == u64::from(SCHEMA_VERSION) {
            Ok(())
        } else {
            Err(StoreError::SchemaVersion {
                found: u32::try_from(found).unwrap_or(u32::MAX),
                needed: SCHEMA_VERSION,
            }
            .into())
        }
    }

    /// The JSON document under `key` in `table`; `what` names it in errors.
    async fn get_json<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: &str,
        what: String,
    ) -> Result<Option<T>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_read()?;
            let t = tx.open_table(table)?;
            let Some(v) = t.get(key.as_str())? else {
                return Ok(None);
            };
            Ok(Some(decode::json(|| what, v.value())?))
        })
        .await
    }

    /// Replaces the JSON document under `key` in `table`.
    async fn put_json<T: serde::Serialize>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let k = key.to_owned();
        let v = serde_json::to_vec(value)?;
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(table)?;
                t.insert(k.as_str(), v.as_slice())?;
            }
            Ok(tx.commit()?)
        })
        .await
    }
}

/// Opens `table` for reading; a file without it predates the schema
/// (run `schema apply`).
fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    table: TableDefinition<'_, K, V>,
) -> CallResult<redb::ReadOnlyTable<K, V>> {
    match tx.open_table(table) {
        Ok(t) => Ok(t),
        Err(redb::TableError::TableDoesNotExist(_)) => Err(StoreError::SchemaVersion {
            found: 0,
            needed: SCHEMA_VERSION,
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// A key of length-prefixed parts, so no part (an entity key may hold any
/// byte) can run into the next.
fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// The exclusive upper bound of all keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// `micros` as 8 bytes that sort like the number (sign bit flipped, big-endian).
fn ordered_micros(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`ordered_micros`].
fn from_ordered_micros(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// A little-endian i64 at the front of `bytes`, and the rest.
fn split_i64(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<8>()?;
    Some((i64::from_le_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::codec;
    use crate::definitions::FeatureValue;
    use crate::store::{EncodedRow, RowStore, StaticKey, StaticWrite};

    fn store() -> (EmbeddedStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("mlgw-embedded-{}", uuid::Uuid::now_v7()));
        let store = EmbeddedStore::open(&dir.join("features.redb")).unwrap();
        (store, dir)
    }

    async fn write(store: &EmbeddedStore, batch: &str, visits: i64) {
        let blob = codec::encode([("visits", &FeatureValue::Int64(visits))]);
        let rows = [EncodedRow {
            entity_key: "u-1".to_owned(),
            blob,
        }];
        store
            .write_static(StaticWrite {
                view: "profile",
                batch_id: batch,
                written_at: SystemTime::now(),
                retention: Duration::from_secs(3600),
                rows: &rows,
            })
            .await
            .unwrap();
    }

    async fn visits(store: &EmbeddedStore, batch: &str) -> Option<String> {
        store
            .read_static(StaticKey {
                view: "profile",
                batch_id: batch,
                entity_key: "u-1",
            })
            .await
            .unwrap()
            .map(|r| format!("{:?}", r.values["visits"]))
    }

    #[tokio::test]
    async fn reads_share_a_young_snapshot_and_see_this_process_writes_at_once() {
        let (store, dir) = store();
        store.apply_schema().await.unwrap();
        // Reads close together share one transaction...
        let a = store.snapshots.get(&store.db).unwrap();
        let b = store.snapshots.get(&store.db).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // ...and an old one is not handed out again.
        tokio::time::sleep(SNAPSHOT_TTL * 2).await;
        let c = store.snapshots.get(&store.db).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b, c));

        // A read takes a snapshot; a write right after it (well within the
        // snapshot's life) is seen by the next read, each time.
        for i in 0..50 {
            let before = visits(&store, "b1").await;
            write(&store, "b1", i).await;
            let after = visits(&store, "b1").await.unwrap_or_default();
            assert!(
                after.contains(&format!("{i}")),
                "write {i}: read {after} after {before:?}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

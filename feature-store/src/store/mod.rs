//! The feature store's storage, split by concern, and its two backends.
//!
//! One trait per concern, each small enough to read at once:
//! - [`RowStore`] (`rows`): the schema, **static rows** (one per view, entity
//!   and refresh batch; a read names the view's current batch, so readers
//!   keep seeing the last complete batch while a new one is written and a
//!   failed batch is never read), **dynamic values** (one per view, entity
//!   and feature with its event time and expiry; an older event time loses)
//!   and **dynamic events** (the raw events behind windowed aggregates, one
//!   row per view, entity, event time and event ID, read newest first over a
//!   time range with a limit).
//! - [`BatchStore`] (`batches`): a [`BatchRecord`] per refresh run and each
//!   static view's [`CurrentBatch`], switched in one write when a batch is
//!   done. Old batches are collected by the backend (ScyllaDB: the rows'
//!   TTL; embedded: deleted when a newer batch becomes current).
//! - [`LogStore`] (`predictions`): the prediction log and feedback, keyed by
//!   the prediction ID (UUIDv7), read by ID or joined over a time window.
//! - [`CoordinationStore`] (`coordination`): named leases taken atomically,
//!   so only one scheduler runs a job at a time; each job's schedule and a
//!   person's latest run request.
//! - [`RoutingStore`] (`routing`): the gateway's routing document per model,
//!   changed by compare-and-set.
//! - [`TunerStore`] (`tuning`): the refresh tuner's state per job.
//! - [`ScoreStore`] (`scores`): precomputed predictions per model, scoring
//!   batch and key.
//! - [`RequestStore`] (`requests`): asynchronous prediction requests and
//!   their results by request ID, and idempotency keys claimed once.
//! - [`ArtifactStore`] (`artifacts`): built artifacts (similarity indexes)
//!   as named blobs in chunks, readable only once whole.
//!
//! [`FullStore`] is every concern at once, for code that needs them all
//! (the gateway, the scheduler). [`scylla::ScyllaStore`] is the production
//! backend; [`embedded::EmbeddedStore`] (redb) runs the product on a laptop;
//! each is a folder with one file per concern. [`AnyStore`] picks one from
//! config. Decoding shared by both backends is in `decode`.

mod any;
mod artifacts;
mod batches;
mod coordination;
mod decode;
pub mod embedded;
mod error;
mod predictions;
mod requests;
mod routing;
mod rows;
mod scores;
pub mod scylla;
mod tuning;

pub use any::AnyStore;
pub use artifacts::{ARTIFACT_CHUNK, ArtifactStore};
pub use batches::{BatchRecord, BatchStatus, BatchStore, CurrentBatch};
pub use coordination::{CoordinationStore, Lease, LeaseOutcome};
pub use error::{BoxError, StoreError};
pub use predictions::{LogStore, LogWindow};
pub use requests::{IdempotencyClaim, RequestRecord, RequestState, RequestStore, TopicPosition};
pub use routing::{RoutingRecord, RoutingStore};
pub use rows::{
    DynamicWrite, EncodedRow, EventQuery, EventWrite, RowStore, ScanCursor, ScanPage, ScanPart,
    SchemaReport, StaticKey, StaticScan, StaticWrite,
};
pub use scores::{ScoreEntry, ScoreKey, ScoreStore, ScoreWrite, ScoringRunRecord, score_target};
pub use tuning::TunerStore;

/// The store's time unit, re-exported where callers of the store look for it.
pub use crate::clock::{from_micros, now_micros, to_micros};

/// Every concern's trait at once, for code that uses them all. It has no
/// methods of its own: any type implementing every concern is one.
pub trait FullStore:
    RowStore
    + BatchStore
    + LogStore
    + CoordinationStore
    + RoutingStore
    + TunerStore
    + ScoreStore
    + RequestStore
    + ArtifactStore
{
}

impl<T> FullStore for T where
    T: RowStore
        + BatchStore
        + LogStore
        + CoordinationStore
        + RoutingStore
        + TunerStore
        + ScoreStore
        + RequestStore
        + ArtifactStore
{
}

/// Every concern's trait, imported for its methods only, so that
/// `use feature_store::store::prelude::*;` lets a concrete store
/// ([`AnyStore`], a backend) call any store method.
pub mod prelude {
    pub use super::{
        ArtifactStore as _, BatchStore as _, CoordinationStore as _, LogStore as _,
        RequestStore as _, RoutingStore as _, RowStore as _, ScoreStore as _, TunerStore as _,
    };
}

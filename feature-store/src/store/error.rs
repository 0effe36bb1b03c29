//! [`StoreError`]: how a backend call fails, the same for every backend and
//! every concern. Each variant's message is complete on its own (it names
//! its cause); the typed cause is also kept as the error's `source()`.

use std::time::Duration;

use crate::codec::CodecError;

/// A typed cause kept behind a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A backend call that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The call did not finish within its deadline.
    #[error("feature store call timed out after {0:?}")]
    Timeout(Duration),
    /// The backend cannot be reached (all nodes down, connection refused,
    /// overloaded): a later call may succeed.
    #[error("feature store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The backend answered with an error this crate describes itself.
    #[error("feature store error: {0}")]
    Backend(String),
    /// The backend or its driver failed with the typed error inside.
    #[error("feature store error: {0}")]
    Failed(#[source] BoxError),
    /// A stored record (a batch record, a log record, a JSON document)
    /// cannot be read back.
    #[error("feature store error: damaged {what}: {source}")]
    Damaged {
        /// Which record.
        what: String,
        /// Why it cannot be read.
        #[source]
        source: BoxError,
    },
    /// The backend answered in a shape this build does not expect.
    #[error("feature store error: unexpected result shape: {0}")]
    Shape(#[source] BoxError),
    /// The schema is missing or older than this build expects.
    #[error(
        "feature store schema is at version {found}, this build needs {needed}; run `mlgw-features schema apply`"
    )]
    SchemaVersion {
        /// Version found.
        found: u32,
        /// Version needed.
        needed: u32,
    },
    /// A stored row cannot be decoded.
    #[error("feature store holds a damaged row for view {view:?}, entity {entity:?}")]
    Corrupt {
        /// The view.
        view: String,
        /// The entity.
        entity: String,
        /// The decoding error.
        #[source]
        source: CodecError,
    },
    /// The embedded database file cannot be opened or used.
    #[error("embedded feature store {path}: {source}")]
    Embedded {
        /// The database file.
        path: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// Whether a later call may succeed (outage, timeout) rather than a
    /// problem a person must fix.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Timeout(_) | StoreError::Unavailable(_))
    }

    /// A stored record that cannot be read back.
    pub(crate) fn damaged(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Damaged {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Encoding a record as JSON for the store.
impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Failed(Box::new(e))
    }
}

/// A prediction ID that is not a UUIDv7 cannot key the log.
impl From<crate::log::BadPredictionId> for StoreError {
    fn from(e: crate::log::BadPredictionId) -> Self {
        StoreError::Failed(Box::new(e))
    }
}

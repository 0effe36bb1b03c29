//! How the driver's errors become [`StoreError`]s: `From` conversions that
//! tell an outage (a later call may succeed) from a refused request, and the
//! driver's result-shape errors.

use scylla::errors::{
    DbError, DeserializationError, ExecutionError, FirstRowError, IntoRowsResultError,
    MaybeFirstRowError, NewSessionError, NextRowError, PrepareError, RequestAttemptError,
    RowsError, SchemaAgreementError, TypeCheckError,
};

use crate::store::StoreError;

impl From<ExecutionError> for StoreError {
    fn from(e: ExecutionError) -> Self {
        let transient = match &e {
            ExecutionError::RequestTimeout(d) => return StoreError::Timeout(*d),
            ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan => true,
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => {
                is_transient_db_error(db)
            }
            ExecutionError::LastAttemptError(a) => is_connection_problem(a),
            _ => false,
        };
        if transient {
            StoreError::Unavailable(Box::new(e))
        } else {
            StoreError::Failed(Box::new(e))
        }
    }
}

/// Server answers that mean "not now" rather than "never": the coordinator
/// is overloaded (also what Cassandra answers, "Server is shutting down",
/// while a stopping node drains), still starting, or short of live replicas
/// or of their replies in time. A later call may succeed.
fn is_transient_db_error(e: &DbError) -> bool {
    matches!(
        e,
        DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::Unavailable { .. }
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
    )
}

/// Whether a last attempt failed because the node could not be reached (as
/// opposed to a query it refused): a broken connection, no free stream, or
/// an I/O error anywhere in the error's sources.
fn is_connection_problem(e: &RequestAttemptError) -> bool {
    if matches!(
        e,
        RequestAttemptError::BrokenConnectionError(_) | RequestAttemptError::UnableToAllocStreamId
    ) {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The driver's result-shape errors: the answer is not the rows expected.
macro_rules! shape_errors {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Shape(Box::new(e))
            }
        })*
    };
}

shape_errors!(
    IntoRowsResultError,
    MaybeFirstRowError,
    FirstRowError,
    RowsError,
    DeserializationError,
    TypeCheckError,
    NextRowError,
);

/// No contact point answered.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {nodes}: {source}")]
pub(super) struct ConnectError {
    /// The contact points tried.
    pub nodes: String,
    /// The driver's error.
    #[source]
    pub source: NewSessionError,
}

/// A statement could not be prepared (for a reason other than a missing
/// table).
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare statement: {0}")]
pub(super) struct PrepareFailed(#[source] pub PrepareError);

/// The nodes did not agree on the schema after it was applied.
#[derive(Debug, thiserror::Error)]
#[error("schema agreement: {0}")]
pub(super) struct NoSchemaAgreement(#[source] pub SchemaAgreementError);

/// Other schedulers kept changing a lease between this one's read and write.
#[derive(Debug, thiserror::Error)]
#[error("lease {name}: lost four races in a row to other schedulers; retry")]
pub(super) struct LeaseContention {
    /// The lease.
    pub name: String,
}

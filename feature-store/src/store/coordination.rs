//! Coordination of schedulers: named leases taken atomically (a lightweight
//! transaction on ScyllaDB, a write transaction on redb) so only one process
//! runs a job at a time, each job's schedule, and a person's run request.

use std::future::Future;
use std::time::SystemTime;

use super::StoreError;
use crate::runs::{RunRequest, ScheduleState};

/// A lease on a named resource (a refresh job): who holds it, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The resource.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// When it lapses unless renewed.
    pub expires_at: SystemTime,
}

impl Lease {
    /// `holder`'s lease on `name` until `expires_at`.
    pub fn new(name: &str, holder: &str, expires_at: SystemTime) -> Self {
        Self {
            name: name.to_owned(),
            holder: holder.to_owned(),
            expires_at,
        }
    }
}

/// The answer to [`CoordinationStore::try_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The caller holds the lease until the asked time.
    Acquired,
    /// Someone else holds an unexpired lease.
    Held(Lease),
}

/// Leases, schedules and run requests.
pub trait CoordinationStore: Send + Sync + 'static {
    /// Takes (or renews) `lease` (its name, for its holder, until it
    /// expires), atomically: it succeeds when nobody holds it, the same holder
    /// holds it, or the current holder's lease expired before `now`.
    fn try_lease(
        &self,
        lease: &Lease,
        now: SystemTime,
    ) -> impl Future<Output = Result<LeaseOutcome, StoreError>> + Send;

    /// Gives the lease up if `holder` still holds it; true if it did.
    fn release_lease(
        &self,
        name: &str,
        holder: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The scheduler's record of `job`, if it ever ran it.
    fn get_schedule(
        &self,
        job: &str,
    ) -> impl Future<Output = Result<Option<ScheduleState>, StoreError>> + Send;

    /// Saves the scheduler's record of one job (written by the lease holder).
    fn put_schedule(
        &self,
        state: &ScheduleState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Saves a person's request to run a job now (replacing an earlier one).
    fn put_run_request(
        &self,
        request: &RunRequest,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The latest run request of `job`, if any.
    fn get_run_request(
        &self,
        job: &str,
    ) -> impl Future<Output = Result<Option<RunRequest>, StoreError>> + Send;
}

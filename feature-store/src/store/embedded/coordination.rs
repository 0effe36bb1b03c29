//! Leases, schedules and run requests in the file. A lease is taken in one
//! write transaction: redb serialises writers, also across processes sharing
//! the file, so read-check-write is atomic.

use std::time::SystemTime;

use redb::ReadableTable;

use super::EmbeddedStore;
use super::tables::{LEASES, RUN_REQUESTS, SCHEDULE};
use crate::clock::{from_micros, to_micros};
use crate::runs::{RunRequest, ScheduleState};
use crate::store::decode;
use crate::store::{CoordinationStore, Lease, LeaseOutcome, StoreError};

/// A lease as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseJson {
    holder: String,
    expires_at: i64,
}

impl CoordinationStore for EmbeddedStore {
    async fn try_lease(&self, lease: &Lease, now: SystemTime) -> Result<LeaseOutcome, StoreError> {
        let (name, holder, until) = (lease.name.clone(), lease.holder.clone(), lease.expires_at);
        self.blocking(move |db| {
            Self::check_schema(db)?;
            // One write transaction: redb serialises writers (also across
            // processes sharing the file), so read-check-write is atomic.
            let tx = db.begin_write()?;
            let outcome = {
                let mut t = tx.open_table(LEASES)?;
                let current: Option<LeaseJson> = match t.get(name.as_str())? {
                    Some(v) => Some(decode::json(|| format!("lease {name}"), v.value())?),
                    None => None,
                };
                match current {
                    Some(c) if c.holder != holder && c.expires_at > to_micros(now) => {
                        LeaseOutcome::Held(Lease {
                            name: name.clone(),
                            holder: c.holder,
                            expires_at: from_micros(c.expires_at),
                        })
                    }
                    _ => {
                        let v = serde_json::to_vec(&LeaseJson {
                            holder: holder.clone(),
                            expires_at: to_micros(until),
                        })?;
                        t.insert(name.as_str(), v.as_slice())?;
                        LeaseOutcome::Acquired
                    }
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            let released = {
                let mut t = tx.open_table(LEASES)?;
                let mine = match t.get(name.as_str())? {
                    Some(v) => serde_json::from_slice::<LeaseJson>(v.value())
                        .is_ok_and(|c| c.holder == holder),
                    None => false,
                };
                if mine {
                    t.remove(name.as_str())?;
                }
                mine
            };
            tx.commit()?;
            Ok(released)
        })
        .await
    }

    async fn get_schedule(&self, job: &str) -> Result<Option<ScheduleState>, StoreError> {
        self.get_json(SCHEDULE, job, format!("job_schedule record of {job}"))
            .await
    }

    async fn put_schedule(&self, state: &ScheduleState) -> Result<(), StoreError> {
        self.put_json(SCHEDULE, &state.job, state).await
    }

    async fn put_run_request(&self, request: &RunRequest) -> Result<(), StoreError> {
        self.put_json(RUN_REQUESTS, &request.job, request).await
    }

    async fn get_run_request(&self, job: &str) -> Result<Option<RunRequest>, StoreError> {
        self.get_json(RUN_REQUESTS, job, format!("run_requests record of {job}"))
            .await
    }
}

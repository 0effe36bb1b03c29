//! Leases, schedules and run requests on ScyllaDB. A lease is taken with
//! lightweight transactions (`IF NOT EXISTS` / `IF holder = ? AND
//! expires_at = ?`) after a read at SERIAL, so two schedulers never both
//! win one job.

use std::time::SystemTime;

use super::errors::LeaseContention;
use super::{ScyllaStore, applied, deadline};
use crate::clock::{from_micros, to_micros};
use crate::runs::{RunRequest, ScheduleState};
use crate::store::{CoordinationStore, Lease, LeaseOutcome, StoreError};

impl CoordinationStore for ScyllaStore {
    async fn try_lease(&self, lease: &Lease, now: SystemTime) -> Result<LeaseOutcome, StoreError> {
        let (name, holder) = (lease.name.as_str(), lease.holder.as_str());
        let until = lease.expires_at;
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            let until_us = to_micros(until);
            // A few rounds at most: each lost race means another scheduler
            // changed the lease in between, which the next read shows.
            for _ in 0..4 {
                let result = self
                    .session
                    .execute_unpaged(&st.read_lease, (name,))
                    .await?;
                let rows = result.into_rows_result()?;
                let current: Option<(Option<String>, Option<i64>)> = rows.maybe_first_row()?;
                let won = match current {
                    None => applied(
                        self.session
                            .execute_unpaged(&st.insert_lease, (name, holder, until_us))
                            .await?,
                    )?,
                    Some((h, exp)) => {
                        let (h, exp) = (h.unwrap_or_default(), exp.unwrap_or(0));
                        if h != holder && exp > to_micros(now) {
                            return Ok(LeaseOutcome::Held(Lease {
                                name: name.to_owned(),
                                holder: h,
                                expires_at: from_micros(exp),
                            }));
                        }
                        applied(
                            self.session
                                .execute_unpaged(
                                    &st.update_lease,
                                    (holder, until_us, name, h.as_str(), exp),
                                )
                                .await?,
                        )?
                    }
                };
                if won {
                    return Ok(LeaseOutcome::Acquired);
                }
            }
            Err(StoreError::Unavailable(Box::new(LeaseContention {
                name: name.to_owned(),
            })))
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            applied(
                self.session
                    .execute_unpaged(&st.delete_lease, (name, holder))
                    .await?,
            )
        })
        .await
    }

    async fn get_schedule(&self, job: &str) -> Result<Option<ScheduleState>, StoreError> {
        let st = self.statements().await?;
        self.get_doc(&st.get_schedule, job).await
    }

    async fn put_schedule(&self, state: &ScheduleState) -> Result<(), StoreError> {
        let st = self.statements().await?;
        self.put_doc(&st.put_schedule, &state.job, state).await
    }

    async fn put_run_request(&self, request: &RunRequest) -> Result<(), StoreError> {
        let st = self.statements().await?;
        self.put_doc(&st.put_request, &request.job, request).await
    }

    async fn get_run_request(&self, job: &str) -> Result<Option<RunRequest>, StoreError> {
        let st = self.statements().await?;
        self.get_doc(&st.get_request, job).await
    }
}

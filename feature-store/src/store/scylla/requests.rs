//! Asynchronous requests on ScyllaDB: `async_requests (id)` holding the
//! record's bytes, and `async_idempotency (key)` claimed by a lightweight
//! transaction; both expire by TTL.

use std::time::SystemTime;

use super::{ScyllaStore, deadline, ttl_seconds};
use crate::store::{IdempotencyClaim, RequestRecord, RequestStore, StoreError};

/// Seconds from now until `at`, at least one (a TTL of 0 means "forever").
fn ttl_until(at: SystemTime) -> i32 {
    ttl_seconds(at.duration_since(SystemTime::now()).unwrap_or_default())
}

impl RequestStore for ScyllaStore {
    async fn put_requests(&self, records: &[RequestRecord]) -> Result<(), StoreError> {
        let st = deadline(self.config.write_timeout, self.statements()).await?;
        let now = SystemTime::now();
        // An already expired record is not written: a TTL cannot say "gone".
        let rows = records
            .iter()
            .filter(|r| r.expires_at > now)
            .map(|r| (r.id.as_str(), r.to_bytes(), ttl_until(r.expires_at)))
            .collect();
        self.execute_each(&st.put_async, rows).await
    }

    async fn get_request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        deadline(self.config.read_timeout, async {
            let st = self.statements().await?;
            let result = self.session.execute_unpaged(&st.get_async, (id,)).await?;
            let rows = result.into_rows_result()?;
            let Some((bytes,)) = rows.maybe_first_row::<(Vec<u8>,)>()? else {
                return Ok(None);
            };
            let record = RequestRecord::from_bytes(id, &bytes)?;
            Ok((record.expires_at > SystemTime::now()).then_some(record))
        })
        .await
    }

    async fn claim_idempotency(
        &self,
        claim: IdempotencyClaim<'_>,
    ) -> Result<Option<String>, StoreError> {
        if claim.expires_at <= SystemTime::now() {
            // Nothing to hold: the key is free at once, as on the embedded store.
            return Ok(None);
        }
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            let result = self
                .session
                .execute_unpaged(
                    &st.claim_key,
                    (claim.key, claim.id, ttl_until(claim.expires_at)),
                )
                .await?;
            let rows = result.into_rows_result()?;
            // `[applied]` first; when not applied, the row that holds the key.
            let id_column = rows.column_specs().iter().position(|c| c.name() == "id");
            let row: scylla::value::Row = rows.first_row()?;
            let applied = row
                .columns
                .first()
                .and_then(|c| c.as_ref())
                .and_then(scylla::value::CqlValue::as_boolean)
                .ok_or_else(|| {
                    StoreError::Backend(
                        "a lightweight transaction answered no [applied]".to_owned(),
                    )
                })?;
            if applied {
                return Ok(None);
            }
            let holder = id_column
                .and_then(|i| row.columns.get(i))
                .and_then(|c| c.as_ref())
                .and_then(scylla::value::CqlValue::as_text)
                .ok_or_else(|| {
                    StoreError::Backend(format!(
                        "idempotency key {:?} is held, but its request ID was not returned",
                        claim.key
                    ))
                })?;
            Ok(Some(holder.clone()))
        })
        .await
    }
}

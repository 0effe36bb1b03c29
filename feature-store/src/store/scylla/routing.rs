//! The gateway's routing documents on ScyllaDB: `model_routing (model)`,
//! changed only by lightweight transactions (`IF revision = ?`).

use std::time::Duration;

use super::{ScyllaStore, deadline};
use crate::store::{RoutingRecord, RoutingStore, StoreError};

impl RoutingStore for ScyllaStore {
    async fn get_routing(&self, model: &str) -> Result<Option<RoutingRecord>, StoreError> {
        deadline(
            self.config.read_timeout.max(Duration::from_secs(2)),
            async {
                let st = self.statements().await?;
                // Read at the write consistency: a replica polling after a
                // change on another one must see it.
                let mut statement = st.get_routing.clone();
                statement.set_consistency(self.config.write_consistency);
                let result = self.session.execute_unpaged(&statement, (model,)).await?;
                let rows = result.into_rows_result()?;
                let row: Option<(i64, String)> = rows.maybe_first_row()?;
                Ok(row.map(|(revision, document)| RoutingRecord { revision, document }))
            },
        )
        .await
    }

    async fn put_routing(&self, model: &str, next: &RoutingRecord) -> Result<bool, StoreError> {
        // A lightweight transaction takes several round trips (Paxos).
        deadline(self.config.write_timeout.max(Duration::from_secs(5)), async {
            let st = self.statements().await?;
            let doc = next.document.as_str();
            let result = match next.previous() {
                None => {
                    self.session
                        .execute_unpaged(&st.insert_routing, (model, doc))
                        .await
                }
                Some(rev) => {
                    self.session
                        .execute_unpaged(&st.update_routing, (next.revision, doc, model, rev))
                        .await
                }
            }?;
            // The first column is `[applied]`; the others (the current
            // values, when not applied) vary, so read the row untyped.
            let rows = result.into_rows_result()?;
            let row: Option<scylla::value::Row> = rows.maybe_first_row()?;
            match row.as_ref().and_then(|r| r.columns.first()) {
                Some(Some(scylla::value::CqlValue::Boolean(applied))) => Ok(*applied),
                other => Err(StoreError::Backend(format!(
                    "a conditional write of the routing of {model} answered {other:?}, not [applied]"
                ))),
            }
        })
        .await
    }
}

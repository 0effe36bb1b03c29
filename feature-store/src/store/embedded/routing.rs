//! The gateway's routing documents in the file: per model the revision
//! (i64 LE) followed by the document. Compare-and-set is one write
//! transaction, atomic across processes.

use redb::{ReadableDatabase, ReadableTable};

use super::EmbeddedStore;
use super::tables::ROUTING;
use crate::store::{RoutingRecord, RoutingStore, StoreError};

impl RoutingStore for EmbeddedStore {
    async fn get_routing(&self, model: &str) -> Result<Option<RoutingRecord>, StoreError> {
        let model = model.to_owned();
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_read()?;
            let table = tx.open_table(ROUTING)?;
            let Some(v) = table.get(model.as_str())? else {
                return Ok(None);
            };
            Ok(Some(decode_routing(&model, v.value())?))
        })
        .await
    }

    async fn put_routing(&self, model: &str, next: &RoutingRecord) -> Result<bool, StoreError> {
        let (model, next) = (model.to_owned(), next.clone());
        self.blocking(move |db| {
            Self::check_schema(db)?;
            // One write transaction: redb serialises writers, so the
            // revision check and the write are atomic across processes.
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(ROUTING)?;
                let stored = table
                    .get(model.as_str())?
                    .map(|v| decode_routing(&model, v.value()).map(|r| r.revision))
                    .transpose()?;
                if stored != next.previous() {
                    return Ok(false);
                }
                let mut value = next.revision.to_le_bytes().to_vec();
                value.extend_from_slice(next.document.as_bytes());
                table.insert(model.as_str(), value.as_slice())?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}

/// A stored routing value: revision, then the document.
fn decode_routing(model: &str, value: &[u8]) -> Result<RoutingRecord, StoreError> {
    let damaged = |why: &str| StoreError::Backend(format!("damaged routing of {model}: {why}"));
    let (revision, document) = value
        .split_first_chunk::<8>()
        .ok_or_else(|| damaged("shorter than its revision"))?;
    Ok(RoutingRecord {
        revision: i64::from_le_bytes(*revision),
        document: String::from_utf8(document.to_vec()).map_err(|_| damaged("not UTF-8"))?,
    })
}

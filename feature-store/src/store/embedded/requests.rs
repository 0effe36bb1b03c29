//! Asynchronous requests and idempotency keys in the file, with an expiry
//! index pruned a bounded number at a time by every write.

use std::time::SystemTime;

use redb::{ReadableTable, WriteTransaction};

use super::tables::{IDEMPOTENCY, REQUEST_EXPIRY, REQUESTS};
use super::{CallResult, EmbeddedStore, ordered_micros, read_table};
use crate::clock::to_micros;
use crate::store::{IdempotencyClaim, RequestRecord, RequestStore, StoreError};

/// Expired requests and keys removed by one write, at most.
const PRUNE_PER_WRITE: usize = 256;

fn expiry_key(expires_us: i64, tag: u8, key: &str) -> Vec<u8> {
    let mut k = ordered_micros(expires_us).to_vec();
    k.push(tag);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Removes what expired before `now_us`, at most [`PRUNE_PER_WRITE`]. An
/// index entry whose record was rewritten with a later expiry leaves the
/// record alone.
fn prune(tx: &WriteTransaction, now_us: i64) -> CallResult<()> {
    let mut expiry = tx.open_table(REQUEST_EXPIRY)?;
    let mut requests = tx.open_table(REQUESTS)?;
    let mut keys = tx.open_table(IDEMPOTENCY)?;
    let due: Vec<Vec<u8>> = expiry
        .range(..ordered_micros(now_us).as_slice())?
        .take(PRUNE_PER_WRITE)
        .map(|item| item.map(|(k, _)| k.value().to_vec()))
        .collect::<Result<_, _>>()?;
    for index_key in due {
        expiry.remove(index_key.as_slice())?;
        let (Some(&tag), Some(name)) = (
            index_key.get(8),
            index_key.get(9..).and_then(|b| std::str::from_utf8(b).ok()),
        ) else {
            continue;
        };
        match tag {
            b'r' => {
                let expired = requests
                    .get(name)?
                    .map(|v| RequestRecord::from_bytes(name, v.value()))
                    .and_then(Result::ok)
                    .is_none_or(|r| to_micros(r.expires_at) < now_us);
                if expired {
                    requests.remove(name)?;
                }
            }
            b'i' => {
                let expired = keys
                    .get(name)?
                    .and_then(|v| idempotency_expiry(v.value()))
                    .is_none_or(|e| e < now_us);
                if expired {
                    keys.remove(name)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn idempotency_expiry(value: &[u8]) -> Option<i64> {
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_le_bytes)
}

impl RequestStore for EmbeddedStore {
    async fn put_requests(&self, records: &[RequestRecord]) -> Result<(), StoreError> {
        let rows: Vec<(String, i64, Vec<u8>)> = records
            .iter()
            .map(|r| (r.id.clone(), to_micros(r.expires_at), r.to_bytes()))
            .collect();
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let now = to_micros(SystemTime::now());
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(REQUESTS)?;
                let mut expiry = tx.open_table(REQUEST_EXPIRY)?;
                for (id, expires, bytes) in &rows {
                    table.insert(id.as_str(), bytes.as_slice())?;
                    expiry.insert(expiry_key(*expires, b'r', id).as_slice(), [].as_slice())?;
                }
            }
            prune(&tx, now)?;
            Ok(tx.commit()?)
        })
        .await
    }

    async fn get_request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let now = SystemTime::now();
        self.inline(|tx| {
            let table = read_table(tx, REQUESTS)?;
            let Some(v) = table.get(id)? else {
                return Ok(None);
            };
            Ok(Some(v.value().to_vec()))
        })?
        .map(|bytes| RequestRecord::from_bytes(id, &bytes))
        .transpose()
        .map(|r| r.filter(|r| r.expires_at > now))
    }

    async fn claim_idempotency(
        &self,
        claim: IdempotencyClaim<'_>,
    ) -> Result<Option<String>, StoreError> {
        let key = claim.key.to_owned();
        let id = claim.id.to_owned();
        let expires = to_micros(claim.expires_at);
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let now = to_micros(SystemTime::now());
            let tx = db.begin_write()?;
            let existing = {
                let mut table = tx.open_table(IDEMPOTENCY)?;
                let held = table.get(key.as_str())?.and_then(|v| {
                    let value = v.value();
                    let until = idempotency_expiry(value)?;
                    let holder = std::str::from_utf8(value.get(8..)?).ok()?;
                    (until >= now).then(|| holder.to_owned())
                });
                if held.is_none() {
                    let mut value = expires.to_le_bytes().to_vec();
                    value.extend_from_slice(id.as_bytes());
                    table.insert(key.as_str(), value.as_slice())?;
                    tx.open_table(REQUEST_EXPIRY)?
                        .insert(expiry_key(expires, b'i', &key).as_slice(), [].as_slice())?;
                }
                held
            };
            prune(&tx, now)?;
            tx.commit()?;
            Ok(existing)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{RequestState, RowStore as _};

    async fn store() -> (Dir, EmbeddedStore) {
        let dir = Dir(std::env::temp_dir().join(format!("mlgw-requests-{}", uuid::Uuid::now_v7())));
        let store = EmbeddedStore::open(&dir.0.join("features.redb")).expect("open");
        store.apply_schema().await.expect("schema");
        (dir, store)
    }

    /// Removes the test's folder when dropped.
    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn record(id: &str, state: RequestState, expires_at: SystemTime) -> RequestRecord {
        RequestRecord {
            id: id.into(),
            model: "fraud".into(),
            subject: "alice".into(),
            state,
            submitted_at: SystemTime::now(),
            expires_at,
            position: None,
            body: b"body".to_vec(),
        }
    }

    #[tokio::test]
    async fn a_result_replaces_the_pending_record_and_expired_ones_are_gone() {
        let (_dir, store) = store().await;
        let later = SystemTime::now() + Duration::from_secs(60);
        store
            .put_requests(&[record("a", RequestState::Pending, later)])
            .await
            .expect("put");
        let done = record("a", RequestState::Done, later);
        store
            .put_requests(std::slice::from_ref(&done))
            .await
            .expect("put");
        let read = store.get_request("a").await.expect("get");
        assert_eq!(read.map(|r| r.state), Some(RequestState::Done));

        let past = SystemTime::now() - Duration::from_secs(1);
        store
            .put_requests(&[record("old", RequestState::Done, past)])
            .await
            .expect("put");
        assert_eq!(store.get_request("old").await.expect("get"), None);
        assert_eq!(store.get_request("never").await.expect("get"), None);
    }

    #[tokio::test]
    async fn an_idempotency_key_is_claimed_once_until_it_expires() {
        let (_dir, store) = store().await;
        let later = SystemTime::now() + Duration::from_secs(60);
        let claim = |id: &'static str, expires_at| IdempotencyClaim {
            key: "alice/fraud/k1",
            id,
            expires_at,
        };
        assert_eq!(
            store
                .claim_idempotency(claim("a", later))
                .await
                .expect("claim"),
            None
        );
        assert_eq!(
            store
                .claim_idempotency(claim("b", later))
                .await
                .expect("claim"),
            Some("a".to_owned())
        );
        // An expired claim no longer holds the key.
        let other = IdempotencyClaim {
            key: "alice/fraud/k2",
            id: "c",
            expires_at: SystemTime::now() - Duration::from_secs(1),
        };
        assert_eq!(store.claim_idempotency(other).await.expect("claim"), None);
        let again = IdempotencyClaim { id: "d", ..other };
        assert_eq!(store.claim_idempotency(again).await.expect("claim"), None);
    }
}

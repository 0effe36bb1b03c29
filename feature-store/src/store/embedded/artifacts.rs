//! Artifacts in the file: the chunks under (name, chunk number) and, per
//! name, its length, written in one transaction, so a reader sees all of an
//! artifact or none of it.

use redb::{ReadableDatabase, ReadableTable};

use super::EmbeddedStore;
use super::tables::{ARTIFACT_CHUNKS, ARTIFACTS};
use crate::store::artifacts::{ARTIFACT_CHUNK, chunk_count};
use crate::store::{ArtifactStore, StoreError};

fn chunk_key(name: &str, chunk: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 5);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(&u32::try_from(chunk).unwrap_or(u32::MAX).to_be_bytes());
    key
}

/// Removes the chunks of an artifact `name` of `length` bytes (if stored).
fn remove_chunks(
    chunks: &mut redb::Table<'_, &[u8], &[u8]>,
    name: &str,
    length: Option<u64>,
) -> Result<(), redb::StorageError> {
    for i in 0..chunk_count(length.map_or(0, |l| usize::try_from(l).unwrap_or(0))) {
        chunks.remove(chunk_key(name, i).as_slice())?;
    }
    Ok(())
}

impl ArtifactStore for EmbeddedStore {
    async fn put_artifact(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let (name, bytes) = (name.to_owned(), bytes.to_vec());
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            {
                let mut lengths = tx.open_table(ARTIFACTS)?;
                let mut chunks = tx.open_table(ARTIFACT_CHUNKS)?;
                let old = lengths.get(name.as_str())?.map(|v| v.value());
                remove_chunks(&mut chunks, &name, old)?;
                for (i, chunk) in bytes.chunks(ARTIFACT_CHUNK).enumerate() {
                    chunks.insert(chunk_key(&name, i).as_slice(), chunk)?;
                }
                lengths.insert(name.as_str(), bytes.len() as u64)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_artifact(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = name.to_owned();
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_read()?;
            let lengths = tx.open_table(ARTIFACTS)?;
            let Some(len) = lengths.get(name.as_str())?.map(|v| v.value()) else {
                return Ok(None);
            };
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            let chunks = tx.open_table(ARTIFACT_CHUNKS)?;
            let mut bytes = Vec::with_capacity(len);
            for i in 0..chunk_count(len) {
                let Some(chunk) = chunks.get(chunk_key(&name, i).as_slice())? else {
                    return Err(StoreError::Backend(format!(
                        "artifact {name} lacks chunk {i} of {}",
                        chunk_count(len)
                    ))
                    .into());
                };
                bytes.extend_from_slice(chunk.value());
            }
            if bytes.len() != len {
                return Err(StoreError::Backend(format!(
                    "artifact {name} holds {} bytes, not the {len} recorded",
                    bytes.len()
                ))
                .into());
            }
            Ok(Some(bytes))
        })
        .await
    }

    async fn delete_artifact(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.blocking(move |db| {
            Self::check_schema(db)?;
            let tx = db.begin_write()?;
            {
                let mut lengths = tx.open_table(ARTIFACTS)?;
                let mut chunks = tx.open_table(ARTIFACT_CHUNKS)?;
                let old = lengths.remove(name.as_str())?.map(|v| v.value());
                remove_chunks(&mut chunks, &name, old)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

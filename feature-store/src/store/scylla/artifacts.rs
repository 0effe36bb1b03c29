//! Artifacts on ScyllaDB: `artifact_chunks ((name, chunk))`, one partition
//! per chunk, and `artifacts (name)` with the length, chunk count and
//! SHA-256, written after every chunk, so a reader finds an artifact only
//! once all of it is stored and can check what it read.

use futures_util::{StreamExt, TryStreamExt, stream};
use sha2::{Digest, Sha256};

use super::{ScyllaStore, deadline};
use crate::store::artifacts::{ARTIFACT_CHUNK, chunk_count};
use crate::store::{ArtifactStore, StoreError};

/// Chunks written or read at once.
const IN_FLIGHT: usize = 4;

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl ScyllaStore {
    async fn artifact_manifest(
        &self,
        name: &str,
    ) -> Result<Option<(i64, i32, String)>, StoreError> {
        deadline(self.config.read_timeout, async {
            let st = self.statements().await?;
            let mut statement = st.get_artifact.clone();
            // Written at the write consistency by another process: read so.
            statement.set_consistency(self.config.write_consistency);
            let result = self.session.execute_unpaged(&statement, (name,)).await?;
            Ok(result.into_rows_result()?.maybe_first_row()?)
        })
        .await
    }
}

impl ArtifactStore for ScyllaStore {
    async fn put_artifact(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let st = self.statements().await?;
        let chunks = i32::try_from(chunk_count(bytes.len()))
            .map_err(|_| StoreError::Backend(format!("artifact {name} is too large to store")))?;
        let chunked: Vec<(i32, &[u8])> = (0..).zip(bytes.chunks(ARTIFACT_CHUNK)).collect();
        for group in chunked.chunks(IN_FLIGHT) {
            futures_util::future::try_join_all(group.iter().map(|&(i, chunk)| {
                deadline(self.config.write_timeout, async move {
                    self.session
                        .execute_unpaged(&st.put_chunk, (name, i, chunk))
                        .await?;
                    Ok(())
                })
            }))
            .await?;
        }
        let sha = hex(&Sha256::digest(bytes));
        let length = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        deadline(self.config.write_timeout, async {
            self.session
                .execute_unpaged(&st.put_artifact, (name, length, chunks, sha.as_str()))
                .await?;
            Ok(())
        })
        .await
    }

    async fn get_artifact(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((length, chunks, sha)) = self.artifact_manifest(name).await? else {
            return Ok(None);
        };
        let st = self.statements().await?;
        // One buffer filled in order as chunks arrive (a few read ahead):
        // never the chunks and their concatenation at once.
        let mut bytes = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
        let mut parts = stream::iter(0..chunks)
            .map(|i| {
                deadline(
                    self.config
                        .read_timeout
                        .max(std::time::Duration::from_secs(5)),
                    async move {
                        let mut statement = st.get_chunk.clone();
                        statement.set_consistency(self.config.write_consistency);
                        let result = self.session.execute_unpaged(&statement, (name, i)).await?;
                        let row: Option<(Vec<u8>,)> =
                            result.into_rows_result()?.maybe_first_row()?;
                        row.map(|(data,)| data).ok_or_else(|| {
                            StoreError::Backend(format!(
                                "artifact {name} lacks chunk {i} of {chunks}"
                            ))
                        })
                    },
                )
            })
            .buffered(IN_FLIGHT);
        while let Some(part) = parts.try_next().await? {
            bytes.extend_from_slice(&part);
        }
        if i64::try_from(bytes.len()).ok() != Some(length) || hex(&Sha256::digest(&bytes)) != sha {
            return Err(StoreError::Backend(format!(
                "artifact {name} read back as {} bytes that do not match its recorded length {length} and SHA-256",
                bytes.len()
            )));
        }
        Ok(Some(bytes))
    }

    async fn delete_artifact(&self, name: &str) -> Result<(), StoreError> {
        let Some((_, chunks, _)) = self.artifact_manifest(name).await? else {
            return Ok(());
        };
        let st = self.statements().await?;
        // The manifest first: a reader then finds nothing rather than a
        // manifest without its chunks.
        deadline(self.config.write_timeout, async {
            self.session
                .execute_unpaged(&st.delete_artifact, (name,))
                .await?;
            Ok(())
        })
        .await?;
        stream::iter(0..chunks)
            .map(|i| {
                deadline(self.config.write_timeout, async move {
                    self.session
                        .execute_unpaged(&st.delete_chunk, (name, i))
                        .await?;
                    Ok(())
                })
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>()
            .await
    }
}

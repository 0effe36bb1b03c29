//! Built artifacts (similarity indexes) as named blobs, so every gateway
//! replica loads the same bytes from the store it already reads, with no
//! shared file system. An artifact is written whole before it can be read:
//! a reader never sees a part of one.

use std::future::Future;

use super::StoreError;

/// Bytes per stored chunk: a large artifact is written and read as many
/// moderate writes, never one huge one.
pub const ARTIFACT_CHUNK: usize = 1 << 20;

/// Named, immutable blobs.
pub trait ArtifactStore: Send + Sync + 'static {
    /// Stores `bytes` under `name` (replacing an artifact of that name); the
    /// artifact is readable only once all of it is written.
    fn put_artifact(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The artifact called `name`, whole, if one was stored.
    ///
    /// # Errors
    /// The backend's error, or [`StoreError::Backend`] when what is stored
    /// is not the whole artifact.
    fn get_artifact(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Removes the artifact called `name` (nothing if there is none).
    fn delete_artifact(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// How many chunks `len` bytes take.
pub(crate) fn chunk_count(len: usize) -> usize {
    len.div_ceil(ARTIFACT_CHUNK)
}

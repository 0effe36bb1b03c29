//! Similarity indexes over a static view's vector feature
//! (`[static_view.index]`): [`index`] is one built HNSW index (usearch)
//! with its entity keys, searched by vector or entity and written as one
//! artifact; [`build`] is the job that indexes a view's current batch,
//! stores the artifact and makes it the view's current index; [`sizing`]
//! measures smaller dimensions (PCA) by recall, latency and memory.

pub mod build;
pub mod index;
pub mod sizing;

pub use build::{
    BatchVectors, BuildError, BuildReport, after_refresh, artifact_name, batch_vectors, build,
    file_vectors, index_target, summary,
};
pub use index::{IndexError, IndexHeader, Neighbour, Provenance, VectorIndex, check_vector};

#[cfg(test)]
mod tests;

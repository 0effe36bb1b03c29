//! One built similarity index: a usearch HNSW graph over a view's vectors,
//! the entity key of each vector, and a header saying what it was built
//! from. It is built in memory, written as one artifact (header, keys, the
//! graph) and read back by every gateway replica.

use std::collections::HashMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::definitions::{Distance, IndexSpec, Quantization};

/// The first bytes of an index artifact, with its layout's version.
const MAGIC: &[u8; 8] = b"MLGWANN1";

/// How many searches one loaded index serves at once: usearch keeps a
/// search context per concurrent caller, and a search runs on the calling
/// thread without yielding, so a few per core cover every runtime thread.
/// More at once are refused as busy.
pub fn search_contexts() -> usize {
    std::thread::available_parallelism().map_or(8, |n| (n.get() * 4).max(8))
}

/// Why an index cannot be built, read or searched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// usearch refused an operation.
    #[error("the vector index refused to {what}: {source}")]
    Engine {
        /// What was being done.
        what: &'static str,
        /// usearch's error.
        source: crate::store::BoxError,
    },
    /// The artifact is not an index this build can read.
    #[error("damaged index artifact: {0}")]
    Damaged(String),
    /// A query vector cannot be searched.
    #[error("{0}")]
    BadQuery(String),
    /// Every search context is in use.
    #[error("the index is serving as many searches as it has contexts; retry shortly")]
    Busy,
}

fn engine<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> IndexError {
    move |source| IndexError::Engine {
        what,
        source: Box::new(source),
    }
}

/// What an index was built from and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexHeader {
    /// The view.
    pub view: String,
    /// Its vector feature.
    pub feature: String,
    /// The view's refresh batch the vectors came from.
    pub source_batch: String,
    /// That batch's data time.
    #[serde(with = "crate::clock::unix_micros")]
    pub data_time: SystemTime,
    /// When the index was built.
    #[serde(with = "crate::clock::unix_micros")]
    pub built_at: SystemTime,
    /// How vectors are compared (`cosine`, `dot`, `l2`).
    pub distance: String,
    /// How vectors are stored (`f32`, `f16`, `i8`).
    pub quantization: String,
    /// Vector length.
    pub dimensions: usize,
    /// HNSW links per node.
    pub connectivity: usize,
    /// Candidates kept while inserting.
    pub expansion_add: usize,
    /// Candidates kept while searching.
    pub expansion_search: usize,
    /// Vectors held.
    pub count: usize,
}

/// One neighbour found.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour<'a> {
    /// Its entity key.
    pub entity_key: &'a str,
    /// Its distance from the query under the index's distance.
    pub distance: f32,
}

/// A searchable index (see the module docs).
pub struct VectorIndex {
    header: IndexHeader,
    distance: Distance,
    keys: Vec<String>,
    positions: HashMap<String, u64>,
    index: Index,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

fn options(
    distance: Distance,
    quantization: Quantization,
    dimensions: usize,
    connectivity: usize,
    expansion_add: usize,
    expansion_search: usize,
) -> IndexOptions {
    IndexOptions {
        dimensions,
        metric: match distance {
            Distance::Cosine => MetricKind::Cos,
            Distance::Dot => MetricKind::IP,
            Distance::L2 => MetricKind::L2sq,
        },
        quantization: match quantization {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::I8 => ScalarKind::I8,
        },
        connectivity,
        expansion_add,
        expansion_search,
        multi: false,
    }
}

/// What an index is built from: the header's provenance fields.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The view.
    pub view: String,
    /// The view's refresh batch.
    pub source_batch: String,
    /// That batch's data time.
    pub data_time: SystemTime,
}

impl VectorIndex {
    /// Builds an index of `vectors` (entity key, vector of `spec.dimensions`
    /// values), adding from `threads` threads.
    ///
    /// # Errors
    /// [`IndexError::BadQuery`] for a vector of the wrong length or with a
    /// value that is not finite; [`IndexError::Engine`] if usearch fails.
    pub fn build(
        spec: &IndexSpec,
        provenance: Provenance,
        vectors: Vec<(String, Vec<f32>)>,
        threads: usize,
    ) -> Result<Self, IndexError> {
        let threads = threads.max(1);
        for (key, v) in &vectors {
            check_vector(v, spec.dimensions, spec.distance)
                .map_err(|why| IndexError::BadQuery(format!("entity {key}: {why}")))?;
        }
        let opts = options(
            spec.distance,
            spec.quantization,
            spec.dimensions,
            spec.connectivity,
            spec.expansion_add,
            spec.expansion_search,
        );
        let index = Index::new(&opts).map_err(engine("start an index"))?;
        index
            .reserve_capacity_and_threads(vectors.len().max(1), threads)
            .map_err(engine("reserve memory"))?;
        let failure: std::sync::Mutex<Option<IndexError>> = std::sync::Mutex::new(None);
        std::thread::scope(|scope| {
            for t in 0..threads {
                let (index, vectors, failure) = (&index, &vectors, &failure);
                scope.spawn(move || {
                    for (i, (_, v)) in vectors.iter().enumerate().skip(t).step_by(threads) {
                        if let Err(e) = index.add(i as u64, v) {
                            if let Ok(mut slot) = failure.lock() {
                                slot.get_or_insert(engine("add a vector")(e));
                            }
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().ok().flatten() {
            return Err(e);
        }
        let keys: Vec<String> = vectors.into_iter().map(|(k, _)| k).collect();
        let header = IndexHeader {
            view: provenance.view,
            feature: spec.feature.clone(),
            source_batch: provenance.source_batch,
            data_time: provenance.data_time,
            built_at: crate::clock::now_micros(),
            distance: spec.distance.as_str().to_owned(),
            quantization: spec.quantization.as_str().to_owned(),
            dimensions: spec.dimensions,
            connectivity: spec.connectivity,
            expansion_add: spec.expansion_add,
            expansion_search: spec.expansion_search,
            count: keys.len(),
        };
        Ok(Self::assemble(header, spec.distance, keys, index))
    }

    fn assemble(header: IndexHeader, distance: Distance, keys: Vec<String>, index: Index) -> Self {
        let positions = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i as u64))
            .collect();
        VectorIndex {
            header,
            distance,
            keys,
            positions,
            index,
        }
    }

    /// What the index was built from.
    pub fn header(&self) -> &IndexHeader {
        &self.header
    }

    /// How vectors are compared.
    pub fn distance(&self) -> Distance {
        self.distance
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the index holds no vector.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Bytes the index holds in memory: usearch's own count (graph and
    /// vectors) plus the entity keys.
    pub fn memory_bytes(&self) -> usize {
        self.index.memory_usage()
            + self
                .keys
                .iter()
                .map(|k| 2 * k.len() + 2 * std::mem::size_of::<String>() + 16)
                .sum::<usize>()
    }

    /// Changes how many candidates a search keeps (HNSW's ef; at least `k`
    /// is used): more finds more of the true neighbours, slower.
    pub fn set_expansion_search(&self, ef: usize) {
        self.index.change_expansion_search(ef.max(1));
    }

    /// Whether `entity_key` has a vector here.
    pub fn contains(&self, entity_key: &str) -> bool {
        self.positions.contains_key(entity_key)
    }

    /// The stored vector of `entity_key` (as stored: rounded by the
    /// quantization).
    pub fn vector_of(&self, entity_key: &str) -> Option<Vec<f32>> {
        let &position = self.positions.get(entity_key)?;
        let mut v = vec![0.0f32; self.header.dimensions];
        match self.index.get(position, &mut v) {
            Ok(1) => Some(v),
            _ => None,
        }
    }

    /// Checks a query vector as [`Self::search`] would.
    ///
    /// # Errors
    /// [`IndexError::BadQuery`] saying what is wrong.
    pub fn check_query(&self, query: &[f32]) -> Result<(), IndexError> {
        check_vector(query, self.header.dimensions, self.distance).map_err(IndexError::BadQuery)
    }

    /// The `k` nearest neighbours of `query`, nearest first, leaving out
    /// `exclude` (an entity key).
    ///
    /// # Errors
    /// [`IndexError::BadQuery`] for a vector of the wrong length, with a
    /// value that is not finite, or (cosine) of zero length;
    /// [`IndexError::Busy`] when every search context is in use.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        exclude: Option<&str>,
    ) -> Result<Vec<Neighbour<'_>>, IndexError> {
        self.check_query(query)?;
        let k = k.min(self.keys.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        let excluded = exclude.and_then(|e| self.positions.get(e).copied());
        let found = match excluded {
            None => self.index.search(query, k),
            Some(x) => self.index.filtered_search(query, k, |key| key != x),
        }
        .map_err(|e| {
            if e.what().contains("Reserve capacity") {
                IndexError::Busy
            } else {
                engine("search")(e)
            }
        })?;
        Ok(found
            .keys
            .iter()
            .zip(&found.distances)
            .filter_map(|(&key, &d)| {
                let entity_key = self.keys.get(usize::try_from(key).ok()?)?;
                let distance = match self.distance {
                    Distance::L2 => d.max(0.0).sqrt(),
                    _ => d,
                };
                Some(Neighbour {
                    entity_key,
                    distance,
                })
            })
            .collect())
    }

    /// The artifact: magic, header (JSON), keys, then usearch's bytes.
    ///
    /// # Errors
    /// [`IndexError::Engine`] if usearch cannot serialise the graph.
    pub fn to_bytes(&self) -> Result<Vec<u8>, IndexError> {
        let header = serde_json::to_vec(&self.header)
            .map_err(|e| IndexError::Damaged(format!("header not serialisable: {e}")))?;
        let keys_len: usize = self.keys.iter().map(|k| 4 + k.len()).sum();
        let graph_len = self.index.serialized_length();
        let mut out = Vec::with_capacity(8 + 4 + header.len() + 8 + keys_len + graph_len);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(
            &u32::try_from(header.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        out.extend_from_slice(&header);
        out.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        for k in &self.keys {
            out.extend_from_slice(&u32::try_from(k.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
        }
        let start = out.len();
        out.resize(start + graph_len, 0);
        self.index
            .save_to_buffer(&mut out[start..])
            .map_err(engine("serialise the graph"))?;
        Ok(out)
    }

    /// Reads an artifact written by [`Self::to_bytes`].
    ///
    /// # Errors
    /// [`IndexError::Damaged`] naming what does not add up.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IndexError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(IndexError::Damaged(
                "not an index artifact of this build (bad magic)".to_owned(),
            ));
        }
        let header_len = r.u32()? as usize;
        let header: IndexHeader = serde_json::from_slice(r.take(header_len)?)
            .map_err(|e| IndexError::Damaged(format!("header: {e}")))?;
        let distance = Distance::parse(&header.distance)
            .ok_or_else(|| IndexError::Damaged(format!("unknown distance {}", header.distance)))?;
        let quantization = Quantization::parse(&header.quantization).ok_or_else(|| {
            IndexError::Damaged(format!("unknown quantization {}", header.quantization))
        })?;
        let count = usize::try_from(r.u64()?).unwrap_or(usize::MAX);
        if count != header.count || count > bytes.len() {
            return Err(IndexError::Damaged(format!(
                "{count} keys for a header of {} vectors",
                header.count
            )));
        }
        let mut keys = Vec::with_capacity(count);
        for _ in 0..count {
            let len = r.u32()? as usize;
            let key = std::str::from_utf8(r.take(len)?)
                .map_err(|_| IndexError::Damaged("an entity key is not UTF-8".to_owned()))?;
            keys.push(key.to_owned());
        }
        let opts = options(
            distance,
            quantization,
            header.dimensions,
            header.connectivity,
            header.expansion_add,
            header.expansion_search,
        );
        let index = Index::new(&opts).map_err(engine("start an index"))?;
        index
            .load_from_buffer(&bytes[r.at..])
            .map_err(engine("load the graph"))?;
        if index.size() != count || index.dimensions() != header.dimensions {
            return Err(IndexError::Damaged(format!(
                "the graph holds {} vectors of {} values; the header says {count} of {}",
                index.size(),
                index.dimensions(),
                header.dimensions
            )));
        }
        index
            .reserve_capacity_and_threads(count.max(1), search_contexts())
            .map_err(engine("reserve search contexts"))?;
        index.change_expansion_search(header.expansion_search);
        Ok(Self::assemble(header, distance, keys, index))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IndexError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(IndexError::Damaged(format!(
                "cut short at byte {} of {}",
                self.at,
                self.bytes.len()
            )));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, IndexError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, IndexError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// Why `v` cannot be indexed or searched as a vector of `dimensions` under
/// `distance`.
pub fn check_vector(v: &[f32], dimensions: usize, distance: Distance) -> Result<(), String> {
    if v.len() != dimensions {
        return Err(format!(
            "the vector has {} values; this index holds vectors of {dimensions}",
            v.len()
        ));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(format!(
            "value {i} of the vector is {}, not a finite number",
            v[i]
        ));
    }
    if distance == Distance::Cosine && v.iter().all(|&x| x == 0.0) {
        return Err("the zero vector has no direction to compare by cosine".to_owned());
    }
    Ok(())
}

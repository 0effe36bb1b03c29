//! Similarity lookups (`POST /v1/similar/{view}`, gRPC `Similar`): for every
//! view that declares `[static_view.index]`, the index its build job made
//! current is read from the store's artifact and loaded on a blocking thread
//! while the previous one keeps answering; then it is swapped in at once.
//! A query holds the index it started with, so no answer mixes two.
//!
//! A query names an entity (whose own vector is searched, and which is left
//! out of its answer unless asked otherwise) or gives a vector; the answer
//! lists the `k` nearest entity keys with their distances and says which
//! view batch the index was built from and how old that batch's data is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use feature_store::definitions::{FeatureDefinitions, IndexSpec};
use feature_store::reader::FeatureReader;
use feature_store::similarity::{IndexError, VectorIndex, artifact_name, index_target};
use feature_store::source::KEY_SEPARATOR;
use feature_store::store::FullStore;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::error::GatewayError;

/// How long reading one index artifact from the store may take.
const ARTIFACT_DEADLINE: Duration = Duration::from_secs(120);
/// How long a build that failed to load waits before it is tried again.
const RETRY_FAILED: Duration = Duration::from_secs(60);

/// What to search for.
#[derive(Debug, Clone)]
pub enum QueryBy {
    /// An entity of the view, by key column.
    Entity(HashMap<String, String>),
    /// A vector of the index's dimension.
    Vector(Vec<f32>),
}

/// One similarity query.
#[derive(Debug, Clone)]
pub struct SimilarQuery {
    /// What to search for.
    pub by: QueryBy,
    /// How many neighbours (1 to the view's `max_k`).
    pub k: usize,
    /// Whether the query entity may appear in its own answer.
    pub include_query: bool,
}

/// One neighbour in an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Its entity key (compound keys joined by `|`).
    pub entity: String,
    /// Its distance from the query.
    pub distance: f32,
}

/// The answer to a query.
#[derive(Debug, Clone)]
pub struct SimilarAnswer {
    /// The view.
    pub view: String,
    /// The view batch the index was built from.
    pub batch_id: String,
    /// The index build that answered.
    pub index_id: String,
    /// How old that batch's data is.
    pub age: Duration,
    /// How distances are measured (`cosine`, `dot`, `l2`).
    pub distance: &'static str,
    /// The neighbours, nearest first.
    pub neighbours: Vec<Found>,
}

struct Loaded {
    index: VectorIndex,
    index_id: String,
}

/// One indexed view: its spec, its entity's key columns, what is loaded.
struct ViewIndex {
    view: String,
    spec: IndexSpec,
    key_columns: Vec<String>,
    current: ArcSwapOption<Loaded>,
    /// Why no index answers yet, or the last load failure.
    status: Mutex<String>,
    /// The index build being loaded now, if any.
    loading: Mutex<Option<String>>,
    /// The last build that failed to load, and when: retried only after
    /// [`RETRY_FAILED`], so a damaged artifact is not re-read every poll.
    failed: Mutex<Option<(String, Instant)>>,
}

/// What a view's index is doing, for `/metrics` and logs.
#[derive(Debug, Clone)]
pub struct IndexStatus {
    /// The view.
    pub view: String,
    /// Vectors in the loaded index (0: none loaded).
    pub vectors: usize,
    /// Its memory in bytes.
    pub memory_bytes: usize,
    /// Age of its data.
    pub age: Option<Duration>,
}

/// The indexes of one gateway (see the module docs).
pub struct Similarity<S> {
    store: Arc<S>,
    reader: Arc<FeatureReader<S>>,
    views: Vec<Arc<ViewIndex>>,
}

impl<S: FullStore> Similarity<S> {
    /// One slot per indexed view of `definitions`, empty until loaded.
    pub fn new(store: Arc<S>, reader: Arc<FeatureReader<S>>) -> Self {
        let definitions: &FeatureDefinitions = reader.definitions();
        let views = definitions
            .indexed_views()
            .map(|(view, spec)| {
                Arc::new(ViewIndex {
                    view: view.name.clone(),
                    spec: spec.clone(),
                    key_columns: definitions
                        .entity(&view.entity)
                        .map(|e| e.keys.clone())
                        .unwrap_or_default(),
                    current: ArcSwapOption::empty(),
                    status: Mutex::new("no index has been built for its current batch yet (mlgw-features index build)".to_owned()),
                    loading: Mutex::new(None),
                    failed: Mutex::new(None),
                })
            })
            .collect();
        Similarity {
            store,
            reader,
            views,
        }
    }

    /// Whether any view declares an index.
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// Each indexed view's loaded index, for `/metrics`.
    pub fn status(&self) -> Vec<IndexStatus> {
        let now = SystemTime::now();
        self.views
            .iter()
            .map(|v| {
                let loaded = v.current.load_full();
                IndexStatus {
                    view: v.view.clone(),
                    vectors: loaded.as_ref().map_or(0, |l| l.index.len()),
                    memory_bytes: loaded.as_ref().map_or(0, |l| l.index.memory_bytes()),
                    age: loaded.as_ref().map(|l| {
                        now.duration_since(l.index.header().data_time)
                            .unwrap_or_default()
                    }),
                }
            })
            .collect()
    }

    /// Loads every view's current index where it changed; returns when the
    /// loads started now are done. Called at start and by [`Self::watch`].
    pub async fn sync(self: &Arc<Self>) {
        let mut started = Vec::new();
        for view in &self.views {
            let Some(current) = self.reader.current_batch(&index_target(&view.view)) else {
                continue;
            };
            let loaded = view.current.load();
            if loaded.as_ref().map(|l| l.index_id.as_str()) == Some(current.batch_id.as_str()) {
                continue;
            }
            let recently_failed = view.failed.lock().is_ok_and(|f| {
                f.as_ref()
                    .is_some_and(|(id, at)| *id == current.batch_id && at.elapsed() < RETRY_FAILED)
            });
            if recently_failed {
                continue;
            }
            {
                let Ok(mut loading) = view.loading.lock() else {
                    continue;
                };
                if loading.is_some() {
                    continue;
                }
                *loading = Some(current.batch_id.clone());
            }
            let (this, view, id) = (Arc::clone(self), Arc::clone(view), current.batch_id.clone());
            started.push(tokio::spawn(async move {
                let started = Instant::now();
                let outcome = this.load(&view, &id).await;
                match &outcome {
                    Ok(n) => tracing::info!(
                        view = view.view,
                        index = id,
                        vectors = n,
                        "similarity index loaded in {:.2?}; now answering",
                        started.elapsed()
                    ),
                    Err(why) => {
                        tracing::warn!(view = view.view, index = id, error = %why, "similarity index not loaded; the previous one keeps answering");
                        if let Ok(mut s) = view.status.lock() {
                            *s = format!("index {id} failed to load: {why}");
                        }
                        if let Ok(mut f) = view.failed.lock() {
                            *f = Some((id.clone(), Instant::now()));
                        }
                    }
                }
                if let Ok(mut loading) = view.loading.lock() {
                    *loading = None;
                }
            }));
        }
        for task in started {
            let _ = task.await;
        }
    }

    async fn load(&self, view: &ViewIndex, id: &str) -> Result<usize, String> {
        let name = artifact_name(&view.view, id);
        let bytes = tokio::time::timeout(ARTIFACT_DEADLINE, self.store.get_artifact(&name))
            .await
            .map_err(|_| format!("reading its artifact took over {ARTIFACT_DEADLINE:?}"))?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("its artifact {name} is missing from the store"))?;
        let index = tokio::task::spawn_blocking(move || VectorIndex::from_bytes(&bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if index.header().dimensions != view.spec.dimensions {
            return Err(format!(
                "it holds vectors of {} values; the definitions declare {}",
                index.header().dimensions,
                view.spec.dimensions
            ));
        }
        let n = index.len();
        view.current.store(Some(Arc::new(Loaded {
            index,
            index_id: id.to_owned(),
        })));
        Ok(n)
    }

    /// Calls [`Self::sync`] every `every` until the returned task is
    /// aborted or the gateway stops.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.sync().await;
            }
        })
    }

    /// Answers `query` on `view`'s current index.
    ///
    /// # Errors
    /// 404 for a view without an index or an entity without a vector; 400
    /// for a bad vector, key or `k`; 503 before the first index is loaded;
    /// 429 when every search context is busy.
    pub fn query(&self, view: &str, query: &SimilarQuery) -> Result<SimilarAnswer, GatewayError> {
        let slot = self.views.iter().find(|v| v.view == view).ok_or_else(|| {
            GatewayError::UnknownIndex {
                view: view.to_owned(),
                known: if self.views.is_empty() {
                    "none".to_owned()
                } else {
                    self.views
                        .iter()
                        .map(|v| v.view.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }
        })?;
        if query.k == 0 || query.k > slot.spec.max_k {
            return Err(GatewayError::InvalidArgument(format!(
                "k = {} is out of range: ask for 1 to {} neighbours (max_k of view {view:?})",
                query.k, slot.spec.max_k
            )));
        }
        let vector_given = matches!(query.by, QueryBy::Vector(_));
        if let QueryBy::Vector(v) = &query.by {
            // Checked before the index is needed: a bad vector is the
            // caller's to fix whatever the index's state.
            feature_store::similarity::check_vector(v, slot.spec.dimensions, slot.spec.distance)
                .map_err(|why| GatewayError::InvalidArgument(format!("vector: {why}")))?;
        }
        let entity = match &query.by {
            QueryBy::Entity(keys) => Some(entity_key(&slot.key_columns, keys)?),
            QueryBy::Vector(_) => None,
        };
        let Some(loaded) = slot.current.load_full() else {
            let why = slot
                .status
                .lock()
                .map_or_else(|_| "unknown".to_owned(), |s| s.clone());
            return Err(GatewayError::IndexNotReady {
                view: view.to_owned(),
                why,
            });
        };
        let index = &loaded.index;
        let own;
        let vector: &[f32] = match (&query.by, &entity) {
            (QueryBy::Vector(v), _) => v,
            (QueryBy::Entity(_), Some(key)) => {
                own = index
                    .vector_of(key)
                    .ok_or_else(|| GatewayError::UnknownEntity {
                        view: view.to_owned(),
                        entity: key.replace(KEY_SEPARATOR, "|"),
                    })?;
                &own
            }
            (QueryBy::Entity(_), None) => &[],
        };
        // An entity asked for with include_query is its own nearest
        // neighbour at distance 0 under cosine and l2: put it first exactly
        // rather than hope the approximate search finds it (under dot a
        // longer vector may come closer, so there the search decides).
        let self_first = query.include_query
            && entity.is_some()
            && index.distance() != feature_store::definitions::Distance::Dot;
        let exclude = if (query.include_query && !self_first) || vector_given {
            None
        } else {
            entity.as_deref()
        };
        let found = index
            .search(vector, query.k, exclude)
            .map_err(|e| match e {
                IndexError::BadQuery(why) => {
                    GatewayError::InvalidArgument(format!("vector: {why}"))
                }
                IndexError::Busy => GatewayError::Overloaded,
                other => GatewayError::IndexNotReady {
                    view: view.to_owned(),
                    why: other.to_string(),
                },
            })?;
        let header = index.header();
        let mut neighbours: Vec<Found> = found
            .into_iter()
            .map(|n| Found {
                entity: n.entity_key.replace(KEY_SEPARATOR, "|"),
                distance: n.distance,
            })
            .collect();
        if let (true, Some(key)) = (self_first, &entity) {
            neighbours.insert(
                0,
                Found {
                    entity: key.replace(KEY_SEPARATOR, "|"),
                    distance: 0.0,
                },
            );
            neighbours.truncate(query.k);
        }
        Ok(SimilarAnswer {
            view: view.to_owned(),
            batch_id: header.source_batch.clone(),
            index_id: loaded.index_id.clone(),
            age: SystemTime::now()
                .duration_since(header.data_time)
                .unwrap_or_default(),
            distance: index.distance().as_str(),
            neighbours,
        })
    }
}

/// The store key of an entity from the caller's key map, in the entity's
/// declared key order.
fn entity_key(columns: &[String], keys: &HashMap<String, String>) -> Result<String, GatewayError> {
    if let Some(unknown) = keys.keys().find(|k| !columns.contains(k)) {
        return Err(GatewayError::InvalidArgument(format!(
            "entity: unknown key column {unknown:?}; this view's entity is keyed by {}",
            columns.join(", ")
        )));
    }
    let mut parts = Vec::with_capacity(columns.len());
    for c in columns {
        match keys.get(c) {
            Some(v) if !v.is_empty() => parts.push(v.as_str()),
            Some(_) => {
                return Err(GatewayError::InvalidArgument(format!(
                    "entity: key {c:?} is empty"
                )));
            }
            None => {
                return Err(GatewayError::InvalidArgument(format!(
                    "entity: key {c:?} is missing; this view's entity is keyed by {}",
                    columns.join(", ")
                )));
            }
        }
    }
    Ok(parts.join(&KEY_SEPARATOR.to_string()))
}

/// A gauge family: name, help, and its value for one view's index.
type Family = (&'static str, &'static str, fn(&IndexStatus) -> f64);

/// `mlgw_similarity_index_*` on `/metrics`, read from the loaded indexes at
/// scrape time.
pub struct SimilarityFamilies<S>(pub Arc<Similarity<S>>);

impl<S> std::fmt::Debug for SimilarityFamilies<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimilarityFamilies")
    }
}

impl<S: FullStore> Collector for SimilarityFamilies<S> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let status = self.0.status();
        let families: [Family; 3] = [
            (
                "mlgw_similarity_index_vectors",
                "Vectors in the similarity index a view answers from (0: none loaded yet).",
                |s| s.vectors as f64,
            ),
            (
                "mlgw_similarity_index_memory_bytes",
                "Memory the loaded similarity index holds (graph, vectors, keys).",
                |s| s.memory_bytes as f64,
            ),
            (
                "mlgw_similarity_index_age_seconds",
                "Age of the data the loaded similarity index was built from.",
                |s| s.age.map_or(f64::NAN, |a| a.as_secs_f64()),
            ),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &status {
                ConstGauge::new(value(s))
                    .encode(family.encode_family(&[("view", s.view.as_str())])?)?;
            }
        }
        Ok(())
    }
}

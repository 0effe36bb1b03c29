//! The routing the gateway serves from. Each model's [`RoutingDocument`]
//! lives in the store (so every replica serves the same routing and a change
//! survives restarts); the gateway keeps the current table in an
//! [`ArcSwap`] that a request reads without a lock.
//!
//! - A change (admin API) is compare-and-set on the stored revision: read →
//!   apply → write if nobody changed it meanwhile, else retry on the newer
//!   document. The replica that made it serves it from the very next
//!   request; the others pick it up within their poll interval.
//! - The config file's routing is applied when it differs from what the
//!   file said when last applied (an edit while running, or while the
//!   gateway was down); otherwise admin changes stand.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use feature_store::store::{FullStore, RoutingRecord, RoutingStore, StoreError};

use super::RoutingTable;
use super::change::{ChangeError, RoutingAction, RoutingChange, RoutingDocument, describe};

/// Attempts of one compare-and-set change before giving up.
const CAS_ATTEMPTS: usize = 8;

/// What a request routes with: a table and the stored revision it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// The document's revision.
    pub revision: i64,
    /// The routing.
    pub table: RoutingTable,
}

/// Why a routing operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// The model is not configured.
    #[error("model {0:?} is not configured on this gateway")]
    UnknownModel(String),
    /// The change does not apply.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// A version the change brings in failed its model-server check.
    #[error("{0}; the routing was not changed")]
    VersionCheck(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Other writers kept changing the routing.
    #[error(
        "the routing of {0:?} kept changing under this request ({CAS_ATTEMPTS} attempts); read it again and retry"
    )]
    Conflict(String),
    /// The store failed.
    #[error("feature store: {0}")]
    Store(#[from] StoreError),
    /// The stored document cannot be read.
    #[error("the stored routing of {model:?} is damaged: {detail}")]
    Damaged {
        /// The model.
        model: String,
        /// What failed.
        detail: String,
    },
}

/// The live routing of every configured model.
pub struct LiveRouting<S> {
    store: Arc<S>,
    models: HashMap<String, ArcSwap<Served>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The routing `model` serves now, as stored (`None`: never stored), read
/// straight from the store by a process that does not serve (a scoring job).
///
/// # Errors
/// [`RolloutError`] when the store fails or holds a damaged document.
pub async fn stored_table<S: RoutingStore>(
    store: &S,
    model: &str,
) -> Result<Option<RoutingTable>, RolloutError> {
    let Some(record) = store.get_routing(model).await? else {
        return Ok(None);
    };
    let doc: RoutingDocument =
        serde_json::from_str(&record.document).map_err(|e| RolloutError::Damaged {
            model: model.to_owned(),
            detail: e.to_string(),
        })?;
    Ok(Some(doc.current))
}

impl<S: FullStore> LiveRouting<S> {
    /// Loads (or first stores) each model's routing; `file` is each model's
    /// routing from the config file.
    ///
    /// # Errors
    /// [`RolloutError`] when the store fails or holds a damaged document.
    pub async fn open(
        store: Arc<S>,
        file: &[(String, RoutingTable)],
    ) -> Result<Self, RolloutError> {
        let mut live = LiveRouting {
            store,
            models: HashMap::new(),
        };
        for (model, table) in file {
            let served = live.sync_file(model, table).await?;
            live.models
                .insert(model.clone(), ArcSwap::from_pointee(served));
        }
        Ok(live)
    }

    /// The routing a request of `model` uses now.
    pub fn current(&self, model: &str) -> Option<Arc<Served>> {
        self.models.get(model).map(ArcSwap::load_full)
    }

    /// The configured models.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    async fn read(&self, model: &str) -> Result<Option<(i64, RoutingDocument)>, RolloutError> {
        let Some(record) = self.store.get_routing(model).await? else {
            return Ok(None);
        };
        let doc = serde_json::from_str(&record.document).map_err(|e| RolloutError::Damaged {
            model: model.to_owned(),
            detail: e.to_string(),
        })?;
        Ok(Some((record.revision, doc)))
    }

    async fn write(
        &self,
        model: &str,
        expected: Option<i64>,
        doc: &RoutingDocument,
    ) -> Result<bool, RolloutError> {
        let text = serde_json::to_string(doc).map_err(|e| RolloutError::Damaged {
            model: model.to_owned(),
            detail: e.to_string(),
        })?;
        let next = RoutingRecord::after(expected, text);
        Ok(self.store.put_routing(model, &next).await?)
    }

    /// The stored document of `model` with its revision.
    ///
    /// # Errors
    /// Unknown model, store failure, damaged document.
    pub async fn document(&self, model: &str) -> Result<(i64, RoutingDocument), RolloutError> {
        if !self.models.contains_key(model) {
            return Err(RolloutError::UnknownModel(model.to_owned()));
        }
        match self.read(model).await? {
            Some(found) => Ok(found),
            None => Err(RolloutError::Damaged {
                model: model.to_owned(),
                detail: "no routing document is stored (was the store reset?)".to_owned(),
            }),
        }
    }

    /// Makes the stored routing follow the config file's `table` where the
    /// file changed since it was last applied; returns what to serve.
    async fn sync_file(&self, model: &str, table: &RoutingTable) -> Result<Served, RolloutError> {
        for _ in 0..CAS_ATTEMPTS {
            match self.read(model).await? {
                None => {
                    let doc = RoutingDocument::initial(table.clone(), now_ms());
                    if self.write(model, None, &doc).await? {
                        tracing::info!(model, routing = %describe(table), "routing stored from the config file");
                        return Ok(Served {
                            revision: 1,
                            table: doc.current,
                        });
                    }
                }
                Some((revision, doc)) if doc.from_file == *table => {
                    return Ok(Served {
                        revision,
                        table: doc.current,
                    });
                }
                Some((revision, doc)) => {
                    let what = format!("config file: {}", describe(table));
                    let mut next = doc.with_change(
                        table.clone(),
                        what,
                        "config-file",
                        None,
                        now_ms(),
                        revision + 1,
                    );
                    next.from_file = table.clone();
                    if self.write(model, Some(revision), &next).await? {
                        tracing::info!(model, routing = %describe(table), revision = revision + 1, "routing changed by the config file");
                        return Ok(Served {
                            revision: revision + 1,
                            table: next.current,
                        });
                    }
                }
            }
        }
        Err(RolloutError::Conflict(model.to_owned()))
    }

    /// Applies the config file's routing after the file changed on disk;
    /// returns the models whose routing changed.
    ///
    /// # Errors
    /// The first model's failure (the others are still tried).
    pub async fn apply_file(
        &self,
        file: &[(String, RoutingTable)],
    ) -> Result<Vec<String>, RolloutError> {
        let mut changed = Vec::new();
        let mut first_err = None;
        for (model, table) in file {
            let Some(cell) = self.models.get(model) else {
                tracing::warn!(
                    model,
                    "the config file names a new model; adding models needs a restart"
                );
                continue;
            };
            match self.sync_file(model, table).await {
                Ok(served) => {
                    if served.revision != cell.load().revision {
                        changed.push(model.clone());
                    }
                    cell.store(Arc::new(served));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(changed), Err)
    }

    /// Applies `action` to `model`'s routing as `by`; `check` is called once
    /// with the versions the action brings into service and must confirm
    /// they can serve. The change is served by this gateway from the next
    /// request on.
    ///
    /// # Errors
    /// [`RolloutError`]: unknown model, a change that does not apply, a
    /// failed version check, too many concurrent writers, the store.
    pub async fn apply<F, Fut, E>(
        &self,
        model: &str,
        action: &RoutingAction,
        by: &str,
        reason: Option<String>,
        check: F,
    ) -> Result<RoutingChange, RolloutError>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let cell = self
            .models
            .get(model)
            .ok_or_else(|| RolloutError::UnknownModel(model.to_owned()))?;
        let mut checked = false;
        for _ in 0..CAS_ATTEMPTS {
            let (revision, doc) = self.document(model).await?;
            let (after, what) = action.apply(&doc)?;
            if !checked {
                let fresh: Vec<String> = after
                    .serving_versions()
                    .into_iter()
                    .chain(after.shadows.iter().map(String::as_str))
                    .filter(|v| doc.current.role_of(v).is_none())
                    .map(str::to_owned)
                    .collect();
                if !fresh.is_empty() {
                    check(fresh)
                        .await
                        .map_err(|e| RolloutError::VersionCheck(Box::new(e)))?;
                }
                checked = true;
            }
            let next = doc.with_change(after, what, by, reason.clone(), now_ms(), revision + 1);
            if self.write(model, Some(revision), &next).await? {
                let change = next
                    .history
                    .last()
                    .cloned()
                    .ok_or_else(|| RolloutError::Damaged {
                        model: model.to_owned(),
                        detail: "a change left no history".to_owned(),
                    })?;
                tracing::info!(model, by, revision = change.revision, what = %change.what, "routing changed");
                cell.store(Arc::new(Served {
                    revision: revision + 1,
                    table: next.current,
                }));
                return Ok(change);
            }
        }
        Err(RolloutError::Conflict(model.to_owned()))
    }

    /// Reads every model's stored routing and serves any newer revision
    /// (changes made through another replica). Returns how many changed.
    pub async fn poll(&self) -> usize {
        let mut changed = 0;
        for (model, cell) in &self.models {
            match self.read(model).await {
                Ok(Some((revision, doc))) if revision != cell.load().revision => {
                    tracing::info!(model = %model, revision, routing = %describe(&doc.current), "routing changed elsewhere; serving it");
                    cell.store(Arc::new(Served {
                        revision,
                        table: doc.current,
                    }));
                    changed += 1;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(model = %model, "routing poll failed: {e}"),
            }
        }
        changed
    }

    /// Polls every `interval` until `stop` resolves.
    pub async fn watch(&self, interval: Duration, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => { self.poll().await; }
            }
        }
    }
}

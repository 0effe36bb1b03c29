//! The live model repository: rescans the repository while the server runs
//! and brings the engine's versions in line with it, and answers the V2
//! repository extension (index, load, unload).
//!
//! What a scan does, per served model:
//! - a version folder that appeared is loaded and warmed up (on the scanning
//!   thread, a blocking one) and served only once warm; until then it shows
//!   as LOADING and the other versions answer. Its `model.onnx` must first be
//!   stable: the same size and mtime in two scans in a row, or last written a
//!   poll interval ago, so a file still being copied is not loaded half-way.
//!   The safe way to publish is still to write the folder under a dot-name
//!   (`.3`, skipped by scans) and rename it to `3`;
//! - a version folder that disappeared stops taking requests at once and is
//!   unloaded when its in-flight requests have their answers;
//! - a version that failed to load is reported (index, metadata, metrics, an
//!   error log) and never served; it is tried again only when its
//!   `model.onnx` changes. A ready version whose file changes in place keeps
//!   serving what it loaded (logged once): publish a new version number;
//! - a changed `config.toml` is not applied until restart (logged once per
//!   change): the inputs, outputs and batching of a model are fixed while
//!   it serves;
//! - a new model folder is not served until restart (logged once, listed in
//!   the index as UNAVAILABLE): the served models, and with them the
//!   metric label sets resolved at start, are fixed while the server runs.
//!
//! An unload call stops serving a model's versions and scans leave it alone
//! until a load call, which rescans its folder at once (no stability wait:
//! the caller says the files are complete), retries failed versions, and
//! waits for the loads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::engine::{Engine, LoadState};
use crate::error::InferError;
use crate::repository::{self, FileStamp};

/// One line of the repository index (`POST /v2/repository/index`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexEntry {
    /// The model.
    pub name: String,
    /// The version; empty for a line about the whole model.
    pub version: String,
    /// `READY`, `LOADING`, `FAILED` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why it is not ready (empty when it is).
    pub reason: String,
}

/// What scans remember of one served model between scans.
#[derive(Debug, Default)]
struct ModelWatch {
    /// The config text the model was started with.
    config_text: String,
    /// A changed config text already warned about.
    config_warned: Option<String>,
    /// Each version file's stamp at the last scan, to tell a file still
    /// being written from a complete one.
    seen: BTreeMap<u64, FileStamp>,
    /// Ready versions whose file changed in place, already warned about
    /// (with the stamp warned for).
    changed_warned: BTreeMap<u64, FileStamp>,
}

/// What the index shows beyond the engine's versions.
#[derive(Debug, Default)]
struct Pending {
    /// Versions found but not loaded yet, with why.
    versions: BTreeMap<(String, u64), String>,
    /// Model folders that appeared after start.
    new_models: BTreeSet<String>,
}

/// The repository folder as the server keeps following it.
pub struct LiveRepository {
    dir: PathBuf,
    engine: Arc<Engine>,
    /// How long a file must be untouched to count as complete without a
    /// second look (the poll interval; one second when polling is off).
    settle: Duration,
    /// One lock per served model, held for a whole scan of that model
    /// (loads included), so a poll and a load call never load the same
    /// version twice.
    models: BTreeMap<String, Mutex<ModelWatch>>,
    /// Short-held; the index reads it while loads run.
    pending: Mutex<Pending>,
}

/// A poisoned lock only means a scan panicked; its state is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LiveRepository {
    /// Follows `dir` for `engine`, whose models were scanned from it with
    /// `configs` (model name → the config text read at start).
    pub fn new(
        dir: PathBuf,
        engine: Arc<Engine>,
        configs: BTreeMap<String, String>,
        poll: Option<Duration>,
    ) -> LiveRepository {
        let models = configs
            .into_iter()
            .map(|(name, config_text)| {
                let watch = ModelWatch {
                    config_text,
                    ..ModelWatch::default()
                };
                (name, Mutex::new(watch))
            })
            .collect();
        LiveRepository {
            dir,
            engine,
            settle: poll.unwrap_or(Duration::from_secs(1)),
            models,
            pending: Mutex::new(Pending::default()),
        }
    }

    /// The engine this repository feeds.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// One scan of the whole repository; blocking (loads run here), so call
    /// it on a blocking thread. Problems are logged and reported, never
    /// returned: the next scan tries again.
    pub fn poll(&self) {
        match repository::model_folders(&self.dir) {
            Ok(names) => {
                let new: BTreeSet<String> = names
                    .into_iter()
                    .filter(|n| !self.models.contains_key(n))
                    .collect();
                let mut pending = lock(&self.pending);
                for name in new.difference(&pending.new_models) {
                    tracing::warn!(model = %name, "new model folder in the repository: not served until the server restarts");
                }
                pending.new_models = new;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the model repository; keeping what is served");
                return;
            }
        }
        for name in self.models.keys() {
            if let Err(e) = self.sync(name, false) {
                tracing::warn!(model = %name, error = %e, "repository scan of the model failed");
            }
        }
    }

    /// Serves `model` again if it was unloaded, rescans its folder now and
    /// waits until its versions are loaded; blocking.
    ///
    /// # Errors
    /// `ModelNotFound` for a model not served since start (`LoadFailed` when
    /// its folder is new: that needs a restart); `ModelNotReady` while the
    /// server still loads the repository; `LoadFailed` naming each version
    /// that failed, or the folder's problem.
    pub fn load(&self, model: &str) -> Result<(), InferError> {
        if !self.models.contains_key(model) && lock(&self.pending).new_models.contains(model) {
            return Err(InferError::LoadFailed {
                model: model.to_owned(),
                detail:
                    "the model folder appeared after start; restart the server to serve a new model"
                        .into(),
            });
        }
        self.known(model)?;
        if !self.engine.started() {
            return Err(InferError::ModelNotReady {
                model: model.to_owned(),
                version: "(any)".into(),
                reason: "the server is still loading the repository".into(),
            });
        }
        self.engine.set_serving(model, true);
        self.sync(model, true)
    }

    /// Stops serving every version of `model`; scans leave it alone until a
    /// load call. In-flight requests finish.
    ///
    /// # Errors
    /// `ModelNotFound` for a model not served.
    pub fn unload(&self, model: &str) -> Result<(), InferError> {
        let watch = self.known(model)?;
        let mut watch = lock(watch);
        self.engine.set_serving(model, false);
        for status in self.engine.version_statuses(model).unwrap_or_default() {
            self.engine.remove_version(model, status.version);
        }
        watch.seen.clear();
        lock(&self.pending).versions.retain(|(m, _), _| m != model);
        tracing::info!(model = %model, "model unloaded by a repository call");
        Ok(())
    }

    /// Every model and version the server knows of, with its state; only
    /// the READY ones with `ready_only`.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let pending = lock(&self.pending);
        let mut entries = Vec::new();
        for name in self.models.keys() {
            let line = |version: String, state: &'static str, reason: String| IndexEntry {
                name: name.clone(),
                version,
                state,
                reason,
            };
            if !self.engine.is_serving(name) {
                entries.push(line(
                    String::new(),
                    "UNAVAILABLE",
                    "unloaded by a repository call".into(),
                ));
                continue;
            }
            let statuses = self.engine.version_statuses(name).unwrap_or_default();
            let waiting: Vec<(u64, &String)> = pending
                .versions
                .iter()
                .filter(|((m, v), _)| m == name && !statuses.iter().any(|s| s.version == *v))
                .map(|((_, v), why)| (*v, why))
                .collect();
            if statuses.is_empty() && waiting.is_empty() {
                entries.push(line(
                    String::new(),
                    "UNAVAILABLE",
                    "the repository holds no version of it".into(),
                ));
            }
            let mut lines: Vec<(u64, IndexEntry)> = statuses
                .into_iter()
                .map(|s| {
                    (
                        s.version,
                        line(s.version.to_string(), s.state.as_str(), s.reason),
                    )
                })
                .chain(waiting.into_iter().map(|(v, why)| {
                    (
                        v,
                        line(v.to_string(), LoadState::Loading.as_str(), why.clone()),
                    )
                }))
                .collect();
            lines.sort_by_key(|(v, _)| *v);
            entries.extend(lines.into_iter().map(|(_, e)| e));
        }
        for name in &pending.new_models {
            entries.push(IndexEntry {
                name: name.clone(),
                version: String::new(),
                state: "UNAVAILABLE",
                reason: "new model folder: restart the server to serve it".into(),
            });
        }
        if ready_only {
            entries.retain(|e| e.state == LoadState::Ready.as_str());
        }
        entries
    }

    fn known(&self, model: &str) -> Result<&Mutex<ModelWatch>, InferError> {
        self.models
            .get(model)
            .ok_or_else(|| InferError::model_not_found(model, self.models.keys()))
    }

    /// Brings `model`'s versions in line with its folder. `forced` (a load
    /// call): files count as complete at once, failed versions are retried,
    /// and failures are returned.
    fn sync(&self, model: &str, forced: bool) -> Result<(), InferError> {
        let watch = self.known(model)?;
        let mut watch = lock(watch);
        if !self.engine.is_serving(model) {
            return Ok(());
        }
        let folder = self.dir.join(model);
        let failed = |detail: String| InferError::LoadFailed {
            model: model.to_owned(),
            detail,
        };
        let listed = if folder.is_dir() {
            if let Ok(text) = repository::read_config(&folder)
                && text != watch.config_text
                && watch.config_warned.as_ref() != Some(&text)
            {
                tracing::warn!(model = %model, "config.toml changed; the change is not applied until the server restarts");
                watch.config_warned = Some(text);
            }
            repository::version_folders(&folder).map_err(|e| failed(e.to_string()))?
        } else {
            BTreeMap::new()
        };
        if forced && listed.values().all(Option::is_none) {
            return Err(failed(format!(
                "{} has no version folder with a {} (e.g. {}/1/{})",
                folder.display(),
                repository::MODEL_FILE,
                folder.display(),
                repository::MODEL_FILE
            )));
        }
        let current: BTreeMap<u64, _> = self
            .engine
            .version_statuses(model)
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.version, s))
            .collect();

        for number in current.keys() {
            if !matches!(listed.get(number), Some(Some(_)))
                && self.engine.remove_version(model, *number)
            {
                tracing::info!(model = %model, version = number, "model version removed from the repository: no new requests; unloaded once in-flight ones finish");
                watch.changed_warned.remove(number);
            }
        }

        let mut waiting = BTreeMap::new();
        let mut seen = BTreeMap::new();
        for (number, file) in listed {
            let Some(file) = file else {
                waiting.insert(
                    number,
                    format!("the version folder has no {} yet", repository::MODEL_FILE),
                );
                continue;
            };
            seen.insert(number, file.stamp);
            let retry = match current.get(&number) {
                None => true,
                Some(s) if s.state == LoadState::Ready => {
                    if s.stamp != file.stamp
                        && watch.changed_warned.get(&number) != Some(&file.stamp)
                    {
                        tracing::warn!(model = %model, version = number, "model.onnx of a served version changed in place; still serving what was loaded (publish a new version number instead)");
                        watch.changed_warned.insert(number, file.stamp);
                    }
                    false
                }
                Some(s) if s.state == LoadState::Failed => forced || s.stamp != file.stamp,
                Some(_) => false,
            };
            if !retry {
                continue;
            }
            let complete = forced
                || watch.seen.get(&number) == Some(&file.stamp)
                || file.stamp.older_than(self.settle);
            if !complete {
                waiting.insert(
                    number,
                    format!("waiting for {} to stop changing", repository::MODEL_FILE),
                );
                continue;
            }
            lock(&self.pending)
                .versions
                .remove(&(model.to_owned(), number));
            tracing::info!(model = %model, version = number, "loading a model version found in the repository");
            // A failure is logged and counted by the engine and reported
            // below (load call) or by the index.
            let _ = self.engine.load_version(model, number, file);
        }
        watch.seen = seen;
        {
            let mut pending = lock(&self.pending);
            pending.versions.retain(|(m, _), _| m != model);
            pending.versions.extend(
                waiting
                    .into_iter()
                    .map(|(v, why)| ((model.to_owned(), v), why)),
            );
        }
        if !forced {
            return Ok(());
        }
        // A load call answers for every version it leaves failed, also
        // those that failed before and whose file did not change.
        let still_failed: Vec<String> = self
            .engine
            .version_statuses(model)
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.state == LoadState::Failed)
            .map(|s| format!("version {}: {}", s.version, s.reason))
            .collect();
        if still_failed.is_empty() {
            Ok(())
        } else {
            Err(failed(still_failed.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_entries_serialize_as_the_extension_says() {
        let entry = IndexEntry {
            name: "m".into(),
            version: "3".into(),
            state: "FAILED",
            reason: "bad file".into(),
        };
        assert_eq!(
            serde_json::to_value(&entry).unwrap(),
            serde_json::json!({"name": "m", "version": "3", "state": "FAILED", "reason": "bad file"})
        );
    }
}

//! The model repository on disk: `DIR/<model>/config.toml` plus one folder per
//! numeric version holding `model.onnx`. Scanning validates every config before
//! the server starts; the ONNX files are loaded later, in the background.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, ConfigOverrides, ModelSpec};

/// Name of each model's config file.
pub const CONFIG_FILE: &str = "config.toml";
/// Name of the ONNX file inside each version folder.
pub const MODEL_FILE: &str = "model.onnx";

/// One model found in the repository, with its versions (ascending).
#[derive(Debug, Clone)]
pub struct RepositoryModel {
    /// The validated config.
    pub spec: ModelSpec,
    /// Version number to the ONNX file of that version.
    pub versions: BTreeMap<u64, PathBuf>,
}

/// Why the repository cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError {
    /// The folder is missing or unreadable.
    #[error("cannot read model repository {path}")]
    Read {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A model folder has no config.toml.
    #[error(
        "model folder {path} has no {CONFIG_FILE}; add one declaring platform, inputs and outputs"
    )]
    MissingConfig {
        /// The model folder.
        path: PathBuf,
    },
    /// A model's config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A model folder has no version folder with a model.onnx.
    #[error("model folder {path} has no version folder (e.g. {path}/1/{MODEL_FILE})")]
    NoVersions {
        /// The model folder.
        path: PathBuf,
    },
    /// A version folder lacks model.onnx.
    #[error("version folder {path} has no {MODEL_FILE}")]
    MissingModelFile {
        /// The version folder.
        path: PathBuf,
    },
    /// The repository holds no model at all.
    #[error("model repository {path} holds no model folder (expected DIR/<model>/{CONFIG_FILE})")]
    Empty {
        /// The folder.
        path: PathBuf,
    },
}

/// Scans `dir` and validates every model config in it.
///
/// Folders whose name starts with `.` are skipped; a version folder is one whose
/// name is a non-negative integer. Other entries are ignored.
///
/// # Errors
/// The first `RepositoryError` found; a repository with any bad model is refused
/// whole, so a typo never silently drops a model.
pub fn scan(
    dir: &Path,
    overrides: ConfigOverrides,
) -> Result<BTreeMap<String, RepositoryModel>, RepositoryError> {
    let read = |path: &Path| {
        std::fs::read_dir(path).map_err(|source| RepositoryError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let mut models = BTreeMap::new();
    for entry in read(dir)? {
        let entry = entry.map_err(|source| RepositoryError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        let config_path = path.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(RepositoryError::MissingConfig { path });
        }
        let spec = ModelSpec::load(&config_path, &name, overrides)?;
        let mut versions = BTreeMap::new();
        for v in read(&path)? {
            let v = v.map_err(|source| RepositoryError::Read {
                path: path.clone(),
                source,
            })?;
            let vpath = v.path();
            let Some(number) = vpath
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if !vpath.is_dir() {
                continue;
            }
            let file = vpath.join(MODEL_FILE);
            if !file.is_file() {
                return Err(RepositoryError::MissingModelFile { path: vpath });
            }
            versions.insert(number, file);
        }
        if versions.is_empty() {
            return Err(RepositoryError::NoVersions { path });
        }
        models.insert(name, RepositoryModel { spec, versions });
    }
    if models.is_empty() {
        return Err(RepositoryError::Empty {
            path: dir.to_owned(),
        });
    }
    Ok(models)
}

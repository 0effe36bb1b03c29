//! The model repository on disk: `DIR/<model>/config.toml` plus one folder per
//! numeric version holding `model.onnx`. The start-up scan validates every
//! config (and each declared `default_version`) before the server serves; the
//! ONNX files are loaded later, in the background. The listings the live
//! repository polls with (model folders, version folders with their files'
//! size and mtime) are here too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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
    /// The config file's text as read, to notice later edits.
    pub config_text: String,
    /// Version number to the ONNX file of that version.
    pub versions: BTreeMap<u64, VersionFile>,
}

/// The ONNX file of one version, as seen by one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionFile {
    /// The `model.onnx` path.
    pub path: PathBuf,
    /// Its size and modification time then.
    pub stamp: FileStamp,
}

/// Size and modification time of a file: two equal stamps a poll apart say
/// nobody is writing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Length in bytes.
    pub len: u64,
    /// Last modification (None where the platform does not say).
    pub modified: Option<SystemTime>,
}

impl FileStamp {
    /// The stamp of the file at `path`.
    ///
    /// # Errors
    /// The I/O error when the file cannot be inspected.
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        let meta = std::fs::metadata(path)?;
        Ok(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    /// Whether the file was last written at least `age` ago (false when
    /// the time is unknown or in the future).
    pub fn older_than(&self, age: Duration) -> bool {
        self.modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|elapsed| elapsed >= age)
    }
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
    /// The config declares a `default_version` the repository lacks.
    #[error(
        "model {model}: default_version {version} in {CONFIG_FILE} is not in the repository (versions found: {available}); add that version folder or change default_version"
    )]
    MissingDefaultVersion {
        /// The model.
        model: String,
        /// The declared default.
        version: u64,
        /// The versions found, comma-separated.
        available: String,
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
/// Folders whose name starts with `.` are skipped (publish a version by
/// writing it under a dot-name and renaming it in); a version folder is one
/// whose name is a non-negative integer. Other entries are ignored.
///
/// # Errors
/// The first `RepositoryError` found; a repository with any bad model is refused
/// whole, so a typo never silently drops a model.
pub fn scan(
    dir: &Path,
    overrides: ConfigOverrides,
) -> Result<BTreeMap<String, RepositoryModel>, RepositoryError> {
    let mut models = BTreeMap::new();
    for name in model_folders(dir)? {
        let path = dir.join(&name);
        let config_path = path.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(RepositoryError::MissingConfig { path });
        }
        let config_text = read_config(&path)?;
        let spec = ModelSpec::parse(&config_text, &config_path, &name, overrides)?;
        let mut versions = BTreeMap::new();
        for (number, file) in version_folders(&path)? {
            let file = file.ok_or_else(|| RepositoryError::MissingModelFile {
                path: path.join(number.to_string()),
            })?;
            versions.insert(number, file);
        }
        if versions.is_empty() {
            return Err(RepositoryError::NoVersions { path });
        }
        if let Some(default) = spec.default_version
            && !versions.contains_key(&default)
        {
            return Err(RepositoryError::MissingDefaultVersion {
                model: name,
                version: default,
                available: versions
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        models.insert(
            name,
            RepositoryModel {
                spec,
                config_text,
                versions,
            },
        );
    }
    if models.is_empty() {
        return Err(RepositoryError::Empty {
            path: dir.to_owned(),
        });
    }
    Ok(models)
}

fn read_dir(path: &Path) -> Result<Vec<PathBuf>, RepositoryError> {
    let failed = |source| RepositoryError::Read {
        path: path.to_owned(),
        source,
    };
    std::fs::read_dir(path)
        .map_err(failed)?
        .map(|entry| entry.map(|e| e.path()).map_err(failed))
        .collect()
}

/// Names of the model folders in `dir` (sorted; dot-folders skipped).
///
/// # Errors
/// `Read` when the folder cannot be listed.
pub fn model_folders(dir: &Path) -> Result<Vec<String>, RepositoryError> {
    let mut names: Vec<String> = read_dir(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

/// The text of a model folder's config file.
///
/// # Errors
/// `Config` (a read error naming the file).
pub fn read_config(model_dir: &Path) -> Result<String, RepositoryError> {
    let path = model_dir.join(CONFIG_FILE);
    std::fs::read_to_string(&path)
        .map_err(|source| RepositoryError::Config(ConfigError::Read { path, source }))
}

/// The version folders of one model folder: number to its `model.onnx`
/// (None: the folder has no `model.onnx` yet, or it vanished meanwhile).
///
/// # Errors
/// `Read` when the folder cannot be listed.
pub fn version_folders(
    model_dir: &Path,
) -> Result<BTreeMap<u64, Option<VersionFile>>, RepositoryError> {
    let mut versions = BTreeMap::new();
    for vpath in read_dir(model_dir)? {
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
        let path = vpath.join(MODEL_FILE);
        let file = match FileStamp::of(&path) {
            Ok(stamp) if path.is_file() => Some(VersionFile { path, stamp }),
            _ => None,
        };
        versions.insert(number, file);
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
platform = "onnx"
max_batch_size = 4
[[input]]
name = "x"
datatype = "FP32"
shape = [-1, 2]
[[output]]
name = "y"
datatype = "FP32"
shape = [-1]
"#;

    fn overrides() -> ConfigOverrides {
        ConfigOverrides {
            disable_batching: false,
            default_instances: 1,
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mlgw-repository-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn add_model(dir: &Path, config: &str, versions: &[&str]) {
        let m = dir.join("m");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join(CONFIG_FILE), config).unwrap();
        for v in versions {
            std::fs::create_dir_all(m.join(v)).unwrap();
            std::fs::write(m.join(v).join(MODEL_FILE), b"onnx").unwrap();
        }
    }

    #[test]
    fn dot_folders_are_skipped_and_versions_found() {
        let dir = scratch("dots");
        add_model(&dir, CONFIG, &["1", "2", ".3", "notes"]);
        let models = scan(&dir, overrides()).unwrap();
        let versions: Vec<u64> = models["m"].versions.keys().copied().collect();
        assert_eq!(versions, [1, 2]);
        assert_eq!(models["m"].versions[&1].stamp.len, 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_default_version_is_refused_naming_the_versions() {
        let dir = scratch("default");
        add_model(&dir, &format!("default_version = 3\n{CONFIG}"), &["1", "2"]);
        let err = scan(&dir, overrides()).unwrap_err().to_string();
        assert!(
            err.contains("model m") && err.contains("default_version 3") && err.contains("1, 2"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_version_folder_without_its_file_is_listed_as_incomplete() {
        let dir = scratch("incomplete");
        add_model(&dir, CONFIG, &["1"]);
        std::fs::create_dir_all(dir.join("m/2")).unwrap();
        let listed = version_folders(&dir.join("m")).unwrap();
        assert!(listed[&1].is_some());
        assert!(listed[&2].is_none());
        assert!(scan(&dir, overrides()).is_err(), "strict at start");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stamps_age() {
        let stamp = FileStamp {
            len: 1,
            modified: Some(SystemTime::now() - Duration::from_secs(5)),
        };
        assert!(stamp.older_than(Duration::from_secs(1)));
        assert!(!stamp.older_than(Duration::from_secs(60)));
        assert!(
            !FileStamp {
                len: 1,
                modified: None
            }
            .older_than(Duration::ZERO)
        );
    }
}

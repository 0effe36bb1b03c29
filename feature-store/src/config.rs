//! Choosing and connecting a backend: the `[store]` settings shared by the
//! gateway's config file and the CLI's flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::store::embedded::{DEFAULT_CACHE_BYTES, EmbeddedStore};
use crate::store::scylla::{ScyllaConfig, ScyllaStore, parse_consistency};
use crate::store::{AnyStore, StoreError};

/// Which backend to use and how to reach it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreSettings {
    /// The embedded redb file.
    Embedded {
        /// The database file (created if missing).
        path: PathBuf,
        /// MiB of the file's pages kept in memory (default
        /// [`DEFAULT_CACHE_BYTES`]; 0: rely on the kernel's page cache only).
        #[serde(default)]
        cache_mib: Option<u64>,
    },
    /// A ScyllaDB (or Cassandra) cluster.
    Scylla {
        /// Contact points, `host:port`.
        nodes: Vec<String>,
        /// Keyspace (default `mlgw_features`).
        #[serde(default)]
        keyspace: Option<String>,
        /// Replication map used when the schema command creates the keyspace.
        #[serde(default)]
        replication: Option<String>,
        /// Read consistency (default `local_one`).
        #[serde(default)]
        read_consistency: Option<String>,
        /// Write consistency (default `local_quorum`).
        #[serde(default)]
        write_consistency: Option<String>,
        /// Per-read deadline in milliseconds (default 500).
        #[serde(default)]
        read_timeout_ms: Option<u64>,
        /// Per-write deadline in milliseconds (default 10000).
        #[serde(default)]
        write_timeout_ms: Option<u64>,
    },
}

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A consistency name is not a CQL consistency level.
    #[error(
        "store.{key}: {value:?} is not a consistency level; use one of any, one, two, three, quorum, all, local_quorum, each_quorum, local_one"
    )]
    Consistency {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// No contact point was given.
    #[error("store.nodes: give at least one `host:port` of the ScyllaDB cluster")]
    NoNodes,
    /// A timeout of zero.
    #[error("store.{0}: must be at least 1 millisecond")]
    ZeroTimeout(&'static str),
    /// The backend cannot be opened or reached.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StoreSettings {
    /// The ScyllaDB driver settings these describe (None for embedded).
    ///
    /// # Errors
    /// [`SettingsError`] naming the bad key.
    pub fn scylla_config(&self) -> Result<Option<ScyllaConfig>, SettingsError> {
        let StoreSettings::Scylla {
            nodes,
            keyspace,
            replication,
            read_consistency,
            write_consistency,
            read_timeout_ms,
            write_timeout_ms,
        } = self
        else {
            return Ok(None);
        };
        if nodes.is_empty() {
            return Err(SettingsError::NoNodes);
        }
        let mut config = ScyllaConfig {
            nodes: nodes.clone(),
            ..ScyllaConfig::default()
        };
        if let Some(k) = keyspace {
            config.keyspace.clone_from(k);
        }
        if let Some(r) = replication {
            config.replication.clone_from(r);
        }
        let consistency = |key, value: &Option<String>, default| match value {
            None => Ok(default),
            Some(v) => parse_consistency(v).ok_or_else(|| SettingsError::Consistency {
                key,
                value: v.clone(),
            }),
        };
        config.read_consistency = consistency(
            "read_consistency",
            read_consistency,
            config.read_consistency,
        )?;
        config.write_consistency = consistency(
            "write_consistency",
            write_consistency,
            config.write_consistency,
        )?;
        let ms = |key, value: Option<u64>, default: Duration| match value {
            None => Ok(default),
            Some(0) => Err(SettingsError::ZeroTimeout(key)),
            Some(v) => Ok(Duration::from_millis(v)),
        };
        config.read_timeout = ms("read_timeout_ms", *read_timeout_ms, config.read_timeout)?;
        config.write_timeout = ms("write_timeout_ms", *write_timeout_ms, config.write_timeout)?;
        Ok(Some(config))
    }

    /// Opens the embedded file or connects to the cluster.
    ///
    /// # Errors
    /// [`SettingsError`] for bad settings or an unreachable backend.
    pub async fn connect(&self) -> Result<AnyStore, SettingsError> {
        match self {
            StoreSettings::Embedded { path, cache_mib } => {
                let cache_bytes = cache_mib.map_or(DEFAULT_CACHE_BYTES, |mib| {
                    usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
                });
                let store = EmbeddedStore::open_with_cache(path, cache_bytes)?;
                Ok(AnyStore::Embedded(Arc::new(store)))
            }
            StoreSettings::Scylla { .. } => {
                let config = self.scylla_config()?.ok_or(SettingsError::NoNodes)?;
                let store = ScyllaStore::connect(config).await?;
                Ok(AnyStore::Scylla(Arc::new(store)))
            }
        }
    }

    /// A one-line description for logs and CLI output.
    pub fn describe(&self) -> String {
        match self {
            StoreSettings::Embedded { path, .. } => format!("embedded store {}", path.display()),
            StoreSettings::Scylla {
                nodes, keyspace, ..
            } => format!(
                "ScyllaDB {} keyspace {}",
                nodes.join(","),
                keyspace.as_deref().unwrap_or("mlgw_features")
            ),
        }
    }
}

/// The embedded file used when nothing else is configured:
/// `$XDG_DATA_HOME/mlgw/features.redb` (or `~/.local/share/mlgw/…`).
pub fn default_embedded_path() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("mlgw").join("features.redb")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scylla_settings_parse_and_validate() {
        let s: StoreSettings = toml::from_str(
            "backend = \"scylla\"\nnodes = [\"10.0.0.1:9042\"]\nread_consistency = \"LOCAL_QUORUM\"\nread_timeout_ms = 80\n",
        )
        .unwrap();
        let c = s.scylla_config().unwrap().unwrap();
        assert_eq!(
            c.read_consistency,
            scylla::statement::Consistency::LocalQuorum
        );
        assert_eq!(c.read_timeout, Duration::from_millis(80));
        assert_eq!(c.keyspace, "mlgw_features");
        let bad: StoreSettings = toml::from_str(
            "backend = \"scylla\"\nnodes = [\"a:1\"]\nread_consistency = \"fast\"\n",
        )
        .unwrap();
        assert_eq!(
            bad.scylla_config().unwrap_err().to_string(),
            "store.read_consistency: \"fast\" is not a consistency level; use one of any, one, two, three, quorum, all, local_quorum, each_quorum, local_one"
        );
        let embedded: StoreSettings =
            toml::from_str("backend = \"embedded\"\npath = \"x\"\ncache_mib = 16\n").unwrap();
        assert_eq!(
            embedded,
            StoreSettings::Embedded {
                path: PathBuf::from("x"),
                cache_mib: Some(16)
            }
        );
        let unknown =
            toml::from_str::<StoreSettings>("backend = \"embedded\"\npath = \"x\"\nsize = 3\n");
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `size`")
        );
    }
}

//! A Cassandra node for a benchmark: started in a folder of the bench's own
//! with `tests/rig/cassandra.sh` and stopped when dropped, or one already
//! running elsewhere (given by address), which is left alone; and the
//! feature store in a keyspace on a node ([`store`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use feature_store::store::AnyStore;
use feature_store::store::scylla::ScyllaStore;
use rig::workspace_root;

/// The feature store in `keyspace` on the node at `addr`, with the tests'
/// timeouts (a busy machine's schema changes take seconds).
///
/// # Errors
/// When the node cannot be reached.
pub async fn store(addr: &str, keyspace: String) -> Result<AnyStore> {
    let store = ScyllaStore::connect(rig::store::scylla_config(addr, keyspace)).await?;
    Ok(AnyStore::Scylla(Arc::new(store)))
}

/// A node the bench talks CQL to.
pub struct Cassandra {
    /// The node's RIG_DIR (config, data, `cassandra.pid`); empty for an
    /// outside node.
    pub rig_dir: PathBuf,
    /// `host:port`.
    pub addr: String,
    /// Started by the bench, so stopped on drop.
    pub owned: bool,
}

impl Cassandra {
    /// A node someone else runs at `addr`.
    pub fn outside(addr: String) -> Self {
        Cassandra {
            rig_dir: PathBuf::new(),
            addr,
            owned: false,
        }
    }

    /// Starts a node in `rig_dir` (the rig's output goes to the terminal).
    ///
    /// # Errors
    /// When the script fails or writes no address.
    pub fn start(rig_dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&rig_dir)
            .with_context(|| format!("create {}", rig_dir.display()))?;
        // Owned from here on, so a failed start is still stopped.
        let mut node = Cassandra {
            rig_dir,
            addr: String::new(),
            owned: true,
        };
        let status = node
            .script("start")
            .status()
            .context("running tests/rig/cassandra.sh")?;
        if !status.success() {
            bail!("Cassandra did not start (see the rig output above)");
        }
        let env_path = node.rig_dir.join("cassandra.env");
        let env = std::fs::read_to_string(&env_path)
            .with_context(|| format!("read {}", env_path.display()))?;
        node.addr = env
            .lines()
            .find_map(|l| l.strip_prefix("MLGW_TEST_CASSANDRA="))
            .context("cassandra.env lacks MLGW_TEST_CASSANDRA")?
            .trim()
            .to_owned();
        Ok(node)
    }

    fn script(&self, command: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(workspace_root().join("tests/rig/cassandra.sh"));
        cmd.arg(command).env("RIG_DIR", &self.rig_dir);
        cmd
    }

    /// The node's PID: ours, or an outside node's from
    /// MLGW_BENCH_CASSANDRA_PID (None when not given).
    pub fn pid(&self) -> Option<String> {
        if !self.owned {
            return std::env::var("MLGW_BENCH_CASSANDRA_PID").ok();
        }
        std::fs::read_to_string(self.rig_dir.join("cassandra.pid"))
            .ok()
            .map(|p| p.trim().to_owned())
    }

    /// CPU seconds the node has used (None for an outside node).
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::process::cpu_seconds(&self.pid()?)
    }
}

impl Drop for Cassandra {
    fn drop(&mut self) {
        if self.owned {
            let _ = self.script("stop").status();
        }
    }
}

//! A private Kafka broker for one test (tests/rig/kafka.sh with its own
//! RIG_DIR), for fault tests that stop and restart it; the shared rig's
//! broker is never touched.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{unique, workspace_root};

/// A broker in its own RIG_DIR, stopped when dropped.
pub struct OwnKafka {
    /// The broker's RIG_DIR (config, data, `kafka.log`).
    pub dir: PathBuf,
    /// Set by the test when it passed: the directory is then removed.
    pub passed: bool,
}

impl OwnKafka {
    fn script() -> PathBuf {
        workspace_root().join("tests/rig/kafka.sh")
    }

    /// Starts a broker in a fresh RIG_DIR.
    ///
    /// # Errors
    /// When the broker cannot start (with the script's output).
    pub async fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(unique("mlgw_kafka_rig"));
        std::fs::create_dir_all(&dir)?;
        let broker = OwnKafka { dir, passed: false };
        broker.run("start").await?;
        Ok(broker)
    }

    /// Runs the rig script (`start`, `stop`, `restart`); a failure carries
    /// its output.
    ///
    /// # Errors
    /// When the script fails.
    pub async fn run(&self, command: &str) -> Result<Duration> {
        let started = Instant::now();
        let out = tokio::process::Command::new("bash")
            .arg(Self::script())
            .arg(command)
            .env("RIG_DIR", &self.dir)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("cannot run kafka.sh {command}"))?;
        let took = started.elapsed();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!(
                "kafka.sh {command} failed ({}) after {took:?}:\n{text}",
                out.status
            );
        }
        eprintln!("own kafka: kafka.sh {command} took {took:.1?}");
        Ok(took)
    }

    /// `host:port` of the broker, from the env file the script wrote.
    ///
    /// # Errors
    /// When the env file is missing.
    pub fn address(&self) -> Result<String> {
        let env = std::fs::read_to_string(self.dir.join("kafka.env"))?;
        env.lines()
            .find_map(|l| l.strip_prefix("MLGW_TEST_KAFKA="))
            .map(str::to_owned)
            .context("kafka.env names no MLGW_TEST_KAFKA")
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        let stopped = std::process::Command::new("bash")
            .arg(Self::script())
            .arg("stop")
            .env("RIG_DIR", &self.dir)
            .status();
        match stopped {
            Ok(s) if s.success() => {}
            other => eprintln!(
                "own kafka: stopping the broker in {} failed: {other:?}",
                self.dir.display()
            ),
        }
        if self.passed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

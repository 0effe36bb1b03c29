//! Test-only support: where the real parts started by `tests/run.sh` listen,
//! starting our own model-server and gateway processes on free ports and
//! waiting for them, scratch folders and unique names, (in [`sso`]) tokens
//! from the rig's oidc-provider and forged ones, (in [`metrics`]) reading the
//! servers' `/metrics` pages, and (in [`store`]) feature-store set-up.
//!
//! Nothing here is product code. A part the tests need but cannot find fails the
//! test with a message saying how to start it — never a silent skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod gateway;
pub mod kafka;
pub mod metrics;
pub mod sso;
pub mod store;

/// The workspace root (the folder holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The example model repository shipped in the repo.
pub fn example_repository() -> PathBuf {
    workspace_root().join("model-server/models")
}

/// Reads a variable the rig script exported, failing loudly when it is absent.
///
/// # Errors
/// When the variable is unset: the tests were not started by `tests/run.sh`.
pub fn rig_env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set: run the suite with ./tests/run.sh, which starts Cassandra and oidc-provider and exports their addresses")
    })
}

/// Path of a workspace binary built in the same profile as the tests.
///
/// # Errors
/// When the binary has not been built (the rig script builds it first).
pub fn binary(name: &str) -> Result<PathBuf> {
    let var = format!("MLGW_{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Ok(p) = std::env::var(&var) {
        return Ok(PathBuf::from(p));
    }
    // Integration-test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().context("cannot locate the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable is not under target/<profile>/deps")?;
    let path = profile_dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first (`cargo build --workspace --bins`, as tests/run.sh does) or set {var}",
            path.display()
        );
    }
    Ok(path)
}

/// A model-server child process on free ports; killed when dropped.
pub struct ModelServerProcess {
    child: Child,
    /// REST base URL, e.g. `http://127.0.0.1:41234`.
    pub http_url: String,
    /// gRPC endpoint URL, e.g. `http://127.0.0.1:41235`.
    pub grpc_url: String,
    /// The gRPC Unix socket's endpoint (`unix:/path`), when started with
    /// `--grpc-socket`.
    pub grpc_socket_url: Option<String>,
    log_path: PathBuf,
}

impl ModelServerProcess {
    /// Starts the model-server on `repository` with extra flags and waits for its
    /// "listening" line (not for readiness).
    ///
    /// # Errors
    /// When the process cannot start or exits before listening; the error holds
    /// its log tail.
    pub async fn start(repository: &Path, extra_args: &[&str]) -> Result<Self> {
        let bin = binary("model-server")?;
        let log_dir = std::env::temp_dir().join("mlgw-test-logs");
        std::fs::create_dir_all(&log_dir)?;
        let log_path = log_dir.join(format!(
            "model-server-{}-{:x}.log",
            std::process::id(),
            rand_suffix()
        ));
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(&bin)
            .arg("--model-repository")
            .arg(repository)
            .args([
                "--http-port",
                "0",
                "--grpc-port",
                "0",
                "--host",
                "127.0.0.1",
            ])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let line = match line {
            Ok(Ok(Some(l))) => l,
            other => {
                let _ = child.kill().await;
                bail!(
                    "model-server did not report its ports ({other:?}); log tail:\n{}",
                    log_tail(&log_path)
                );
            }
        };
        let http_url = format!("http://{}", banner_field(&line, "http=")?);
        let grpc_url = format!("http://{}", banner_field(&line, "grpc=")?);
        let grpc_socket_url = banner_field(&line, "grpc_socket=")
            .ok()
            .map(|p| format!("unix:{p}"));
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ModelServerProcess {
            child,
            http_url,
            grpc_url,
            grpc_socket_url,
            log_path,
        })
    }

    /// Polls `/v2/health/ready` until 200, failing after `timeout` with the log tail.
    ///
    /// # Errors
    /// When the server is not ready in time or has exited.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let url = format!("{}/v2/health/ready", self.http_url);
        let child = &mut self.child;
        let ready = poll_ready(&url, timeout, Duration::from_millis(20), || {
            exited(child, "model-server")
        })
        .await;
        ready.with_context(|| {
            format!(
                "the model-server did not get ready; log tail:\n{}",
                log_tail(&self.log_path)
            )
        })
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// The child's PID (for memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM (what Kubernetes sends) and waits up to `timeout` for the
    /// process to exit, returning its exit status.
    ///
    /// # Errors
    /// When the signal cannot be sent or the process does not exit in time.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().context("the server has already exited")?;
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "model-server did not exit within {timeout:?} of SIGTERM; log tail:\n{}",
                    self.log_tail()
                )
            })?
            .context("waiting for the model-server")
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: a frozen one keeps
    /// its connections open and answers nothing, like a hung process.
    ///
    /// # Errors
    /// When the process has exited or cannot be signalled.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let pid = self.child.id().context("the model-server has exited")?;
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} {pid}: {status}");
        Ok(())
    }

    /// Kills the server and waits for it to exit.
    ///
    /// # Errors
    /// When the process cannot be signalled.
    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// The value of `key` (e.g. `http=`) in a server's start-up line such as
/// `gateway listening http=127.0.0.1:41234 grpc=127.0.0.1:41235`.
///
/// # Errors
/// When the line has no such word.
pub fn banner_field<'a>(line: &'a str, key: &str) -> Result<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .with_context(|| format!("no {key} in {line:?}"))
}

/// Polls `url` every `every` until it answers 2xx, for at most `timeout`.
/// Before each try `gone` may end the wait with its error (the process
/// exited, its log shows it cannot start).
///
/// # Errors
/// `gone`'s error, or the URL not being ready in time.
pub async fn poll_ready(
    url: &str,
    timeout: Duration,
    every: Duration,
    mut gone: impl FnMut() -> Result<()>,
) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        gone()?;
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} is not ready after {timeout:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// An error naming `what` and its exit status once `child` has exited.
///
/// # Errors
/// When the child has exited or cannot be polled.
pub fn exited(child: &mut Child, what: &str) -> Result<()> {
    match child.try_wait()? {
        Some(status) => bail!("{what} exited ({status})"),
        None => Ok(()),
    }
}

/// A free 127.0.0.1 port below the kernel's ephemeral range, for a server a
/// test stops and starts again on the same port; picked by
/// `tests/rig/pick-ports.py`, as the rig scripts pick theirs (it says why).
///
/// # Errors
/// When the script cannot run or finds no free port.
pub fn restartable_port() -> Result<u16> {
    let script = workspace_root().join("tests/rig/pick-ports.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .output()
        .with_context(|| format!("cannot run python3 {}", script.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text.trim()
        .parse()
        .with_context(|| format!("{} printed {text:?}, not a port", script.display()))
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The example model's reference rows and onnxruntime outputs for one version.
#[derive(Debug, serde::Deserialize)]
pub struct Reference {
    /// Input rows (15 float32 values each).
    pub inputs: Vec<Vec<f32>>,
    /// onnxruntime's outputs.
    pub outputs: ReferenceOutputs,
}

/// onnxruntime's outputs for the reference rows.
#[derive(Debug, serde::Deserialize)]
pub struct ReferenceOutputs {
    /// Predicted class per row.
    pub label: Vec<i64>,
    /// [P(legit), P(fraud)] per row.
    pub probabilities: Vec<[f32; 2]>,
}

impl ReferenceOutputs {
    /// The probabilities row after row, as a flat FP32 tensor holds them.
    pub fn flat_probabilities(&self) -> Vec<f32> {
        self.probabilities.iter().flatten().copied().collect()
    }
}

/// Loads `model-server/training/reference/fraud_detector_v{version}.json`.
///
/// # Errors
/// When the file is missing or malformed.
pub fn reference(version: u32) -> Result<Reference> {
    let path = workspace_root().join(format!(
        "model-server/training/reference/fraud_detector_v{version}.json"
    ));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// The largest absolute difference between `a` and `b`, element by element
/// (how far a model's outputs are from a reference).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// Copies the example repository to a fresh temp folder and lets `edit` rewrite
/// the model's config.toml text, for tests that need other settings.
///
/// # Errors
/// On I/O errors.
pub fn example_repository_with(edit: impl Fn(&str) -> String) -> Result<TempRepo> {
    let repo = TempRepo::new()?;
    repo.add_example_model("fraud_detector", edit)?;
    Ok(repo)
}

/// A temporary model repository folder, removed when dropped.
pub struct TempRepo {
    /// Its path.
    pub path: PathBuf,
}

impl TempRepo {
    /// An empty repository folder.
    ///
    /// # Errors
    /// On I/O errors.
    pub fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "mlgw-repo-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempRepo { path })
    }

    /// Adds the example fraud model (every version) under `name`, its config
    /// rewritten by `edit`.
    ///
    /// # Errors
    /// On I/O errors.
    pub fn add_example_model(&self, name: &str, edit: impl Fn(&str) -> String) -> Result<()> {
        let src = example_repository().join("fraud_detector");
        let dst = self.path.join(name);
        for entry in std::fs::read_dir(&src)? {
            let version = entry?.file_name();
            if !version
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
            {
                continue;
            }
            std::fs::create_dir_all(dst.join(&version))?;
            std::fs::copy(
                src.join(&version).join("model.onnx"),
                dst.join(&version).join("model.onnx"),
            )?;
        }
        let config = std::fs::read_to_string(src.join("config.toml"))?;
        std::fs::write(dst.join("config.toml"), edit(&config))?;
        Ok(())
    }

    /// Adds the example model `name` with version `from`'s file served as
    /// each of `versions` (the same answers under several versions).
    ///
    /// # Errors
    /// On I/O errors.
    pub fn add_model_as(&self, name: &str, from: &str, versions: &[&str]) -> Result<()> {
        let src = example_repository().join(name);
        let dst = self.path.join(name);
        for version in versions {
            std::fs::create_dir_all(dst.join(version))?;
            std::fs::copy(
                src.join(from).join("model.onnx"),
                dst.join(version).join("model.onnx"),
            )?;
        }
        std::fs::copy(src.join("config.toml"), dst.join("config.toml"))?;
        Ok(())
    }
}

impl Drop for TempRepo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A name unique to this process and moment (keyspaces, scratch folders):
/// the counter keeps two calls within one clock tick apart.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A scratch folder under the temp dir, removed when dropped.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// A fresh folder named after `prefix`.
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub fn new(prefix: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }

    /// Writes `content` to `name` in the folder and returns its path.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn file(&self, name: &str, content: impl AsRef<[u8]>) -> Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, content).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GET url`, failing unless the answer is a success.
///
/// # Errors
/// When the request fails or the status is not 2xx.
pub async fn get_ok(http: &reqwest::Client, url: &str) -> Result<reqwest::Response> {
    Ok(http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()?)
}

/// `GET url` and its JSON body, whatever the status (the body says what
/// went wrong).
///
/// # Errors
/// When the request fails or the body is not JSON.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Result<serde_json::Value> {
    let answer = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    Ok(answer.json().await?)
}

/// A client whose every request gives up after 10 s, for probes of the rig's
/// shared parts (a hung part fails the test instead of stalling it).
///
/// # Errors
/// When the client cannot be built.
pub fn probe_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// A part of the rig a test can run on its own (its rig script, and the
/// variable of its address in the env file the script writes).
pub trait RigPart {
    /// The script's name in tests/rig/ without `.sh`, e.g. `cassandra`.
    const NAME: &'static str;
    /// The address variable the script writes to `<NAME>.env`.
    const ADDRESS_VAR: &'static str;
}

/// Apache Cassandra (tests/rig/cassandra.sh).
pub struct Cassandra;

impl RigPart for Cassandra {
    const NAME: &'static str = "cassandra";
    const ADDRESS_VAR: &'static str = "MLGW_TEST_CASSANDRA";
}

/// Apache Kafka in KRaft mode (tests/rig/kafka.sh).
pub struct Kafka;

impl RigPart for Kafka {
    const NAME: &'static str = "kafka";
    const ADDRESS_VAR: &'static str = "MLGW_TEST_KAFKA";
}

/// A rig part of one test alone, in its own RIG_DIR (the shared rig's is
/// never touched), for tests that stop and restart it. Dropping it stops
/// it (synchronously, also when the test fails) and removes the directory
/// unless the test failed, so its log can be read.
pub struct OwnRig<P: RigPart> {
    /// Its RIG_DIR (config, data, the log).
    pub dir: PathBuf,
    /// Set by the test when it passed: the directory is then removed.
    pub passed: bool,
    part: std::marker::PhantomData<P>,
}

/// A Cassandra node of one test alone.
pub type OwnCassandra = OwnRig<Cassandra>;

impl<P: RigPart> OwnRig<P> {
    fn script() -> PathBuf {
        workspace_root().join(format!("tests/rig/{}.sh", P::NAME))
    }

    /// Starts it in a fresh RIG_DIR.
    ///
    /// # Errors
    /// When it cannot start (with the script's output).
    pub async fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(unique(&format!("mlgw_own_{}", P::NAME)));
        std::fs::create_dir_all(&dir)?;
        // The guard exists before the process does, so any failure below stops it.
        let own = OwnRig {
            dir,
            passed: false,
            part: std::marker::PhantomData,
        };
        own.run("start").await?;
        Ok(own)
    }

    /// Runs the rig script (`start`, `stop`, `restart`); its output goes to
    /// the test's output, and a failure carries it.
    ///
    /// # Errors
    /// When the script fails.
    pub async fn run(&self, command: &str) -> Result<Duration> {
        let name = P::NAME;
        let started = Instant::now();
        let out = tokio::process::Command::new("bash")
            .arg(Self::script())
            .arg(command)
            .env("RIG_DIR", &self.dir)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("cannot run {name}.sh {command}"))?;
        let took = started.elapsed();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!(
                "{name}.sh {command} failed ({}) after {took:?}:\n{text}",
                out.status
            );
        }
        eprint!("{text}");
        eprintln!("own {name}: {name}.sh {command} took {took:.1?}");
        Ok(took)
    }

    /// `host:port`, from the env file the script wrote.
    ///
    /// # Errors
    /// When the env file is missing.
    pub fn address(&self) -> Result<String> {
        let env = std::fs::read_to_string(self.dir.join(format!("{}.env", P::NAME)))?;
        let prefix = format!("{}=", P::ADDRESS_VAR);
        env.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(str::to_owned)
            .with_context(|| format!("{}.env names no {}", P::NAME, P::ADDRESS_VAR))
    }
}

impl<P: RigPart> Drop for OwnRig<P> {
    fn drop(&mut self) {
        let name = P::NAME;
        let stopped = std::process::Command::new("bash")
            .arg(Self::script())
            .arg("stop")
            .env("RIG_DIR", &self.dir)
            .status();
        match stopped {
            Ok(s) if s.success() => {}
            other => eprintln!(
                "own {name}: stopping it in {} failed: {other:?}",
                self.dir.display()
            ),
        }
        if self.passed {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "own {name}: rig state kept in {} (see {name}.log)",
                self.dir.display()
            );
        }
    }
}

/// The example merchant embeddings
/// (`feature-store/definitions/exports/merchant_embedding.csv`) by merchant,
/// in file order.
///
/// # Errors
/// When the file cannot be read or a row is not `id,…,"v1 v2 …"`.
pub fn example_embeddings() -> Result<Vec<(String, Vec<f32>)>> {
    let path = workspace_root().join("feature-store/definitions/exports/merchant_embedding.csv");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let id = line.split(',').next().context("merchant id")?.to_owned();
        let cell = line.split('"').nth(1).context("quoted vector")?;
        let v: Vec<f32> = cell
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        out.push((id, v));
    }
    Ok(out)
}

/// Brute-force cosine top-`k` of `id` among `vectors`, itself left out.
///
/// # Errors
/// When `id` is not among them.
pub fn cosine_top(vectors: &[(String, Vec<f32>)], id: &str, k: usize) -> Result<Vec<String>> {
    let q = &vectors
        .iter()
        .find(|(m, _)| m == id)
        .with_context(|| format!("{id} among the vectors"))?
        .1;
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let mut scored: Vec<(f32, &str)> = vectors
        .iter()
        .filter(|(m, _)| m != id)
        .map(|(m, v)| {
            let dot: f32 = q.iter().zip(v).map(|(a, b)| a * b).sum();
            (1.0 - dot / (norm(q) * norm(v)), m.as_str())
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(scored
        .into_iter()
        .take(k)
        .map(|(_, m)| m.to_owned())
        .collect())
}

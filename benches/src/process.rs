//! The processes a benchmark starts and what they cost: the release gateway
//! ([`GatewayProcess`], config from [`gateway_config`]), a model-server that
//! can be killed, paused (SIGSTOP) and restarted on the same ports
//! ([`ModelServer`]), CPU time per process and of the whole machine
//! ([`CpuProbe`] → [`CpuUse`]: CPU µs per call and the cores other work kept
//! busy), resident memory ([`resident_bytes`]), and [`interrupted`] for
//! Ctrl-C / SIGTERM, which [`report_in_scratch`] (the body of most benches'
//! `main`) stops a run on.
//!
//! Binaries are found by `rig::binary` (the bench profile's target folder,
//! i.e. `cargo build --release -p model-server -p gateway`, or
//! `MLGW_GATEWAY_BIN` / `MLGW_MODEL_SERVER_BIN`). Every child is killed when
//! its handle is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rig::{banner_field, binary, exited, poll_ready, workspace_root};
use tokio::io::{AsyncBufReadExt, BufReader};

/// CPU seconds a process has used so far (utime + stime).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}

/// Resident memory of a process now and its high-water mark (VmRSS and
/// VmHWM of /proc/<pid>/status), bytes; None when it is gone.
pub fn resident_bytes(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds the whole machine has been busy (all cores, /proc/stat).
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: busy = all − idle − iowait.
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (ticks.iter().take(8).sum::<f64>() - idle) / 100.0
}

/// The processes whose CPU time each step reads, by name and PID.
pub struct CpuProbe {
    /// (name, PID) of each probed process.
    pub pids: Vec<(&'static str, String)>,
}

/// Readings at the start of a step; see [`CpuProbe::begin`].
pub struct CpuMark {
    cpu: Vec<f64>,
    machine: f64,
    wall: Instant,
}

/// What a step cost in CPU.
#[derive(Clone, Debug, Default)]
pub struct CpuUse {
    /// CPU µs per completed call, per probed process.
    pub per_call_us: Vec<(&'static str, f64)>,
    /// Cores kept busy by everything else on the machine during the step.
    pub other_cores: f64,
}

impl CpuUse {
    /// `310 / 460 / 120`: µs per call of each probed process.
    pub fn text(&self) -> String {
        self.per_call_us
            .iter()
            .map(|(_, v)| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// µs per call of the process named `name`.
    pub fn of(&self, name: &str) -> Option<f64> {
        self.per_call_us
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

impl CpuProbe {
    /// CPU seconds of each probed process now (NaN for one that is gone).
    pub fn read(&self) -> Vec<f64> {
        self.pids
            .iter()
            .map(|(_, pid)| cpu_seconds(pid).unwrap_or(f64::NAN))
            .collect()
    }

    /// Readings before a step.
    pub fn begin(&self) -> CpuMark {
        let cpu = self.read();
        CpuMark {
            cpu,
            machine: machine_busy_seconds(),
            wall: Instant::now(),
        }
    }

    /// CPU use since `mark`, divided over `calls` completed calls.
    pub fn end(&self, mark: CpuMark, calls: u64) -> CpuUse {
        let cpu_after = self.read();
        let (machine, wall) = (
            machine_busy_seconds() - mark.machine,
            mark.wall.elapsed().as_secs_f64(),
        );
        let ours: f64 = mark
            .cpu
            .iter()
            .zip(&cpu_after)
            .map(|(b, a)| a - b)
            .filter(|d| d.is_finite())
            .sum();
        let calls = calls.max(1) as f64;
        CpuUse {
            per_call_us: self
                .pids
                .iter()
                .zip(mark.cpu.iter().zip(&cpu_after))
                .map(|((name, _), (b, a))| (*name, (a - b) / calls * 1e6))
                .collect(),
            other_cores: ((machine - ours) / wall).max(0.0),
        }
    }
}

/// The last 30 lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The gateway as a child process on free ports; killed when dropped.
pub struct GatewayProcess {
    child: tokio::process::Child,
    /// REST base URL (`/metrics`, admin API).
    pub http: String,
    /// gRPC endpoint URL.
    pub grpc: String,
    /// Its stdout lines up to and including "gateway listening …" (and the
    /// dev token line after it).
    pub banner: Vec<String>,
    /// Its stderr log.
    pub log: PathBuf,
}

/// The log filter the benches start the gateway with: `MLGW_BENCH_GATEWAY_LOG`,
/// default `warn`. At `warn` the gateway's info-level spans (one per request
/// stage) are not created, so neither their cost nor the per-stage timings
/// in `/metrics` are there; the shipped default is `info`.
pub fn gateway_log_filter() -> String {
    std::env::var("MLGW_BENCH_GATEWAY_LOG").unwrap_or_else(|_| "warn".into())
}

impl GatewayProcess {
    /// Starts the gateway binary on `config` (stderr to `log`, its log
    /// filter `MLGW_LOG` set to [`gateway_log_filter`]) and waits until
    /// `/readyz` answers 200.
    ///
    /// # Errors
    /// When it does not start, report its ports or become ready in time;
    /// the error holds the log tail.
    pub async fn start(config: &Path, log: PathBuf) -> Result<Self> {
        let bin = binary("gateway")?;
        let mut child = tokio::process::Command::new(&bin)
            .arg("--config")
            .arg(config)
            .env("MLGW_LOG", gateway_log_filter())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let listening = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    banner.push(line.clone());
                    if line.starts_with("gateway listening") {
                        // In dev mode the token line follows at once.
                        if let Ok(Ok(Some(next))) =
                            tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await
                        {
                            banner.push(next);
                        }
                        break line;
                    }
                }
                other => {
                    let _ = child.kill().await;
                    bail!(
                        "the gateway did not report its ports ({other:?}); log tail:\n{}",
                        tail(&log)
                    );
                }
            }
        };
        let field = |key| banner_field(&listening, key).map(|a| format!("http://{a}"));
        let (http, grpc) = (field("http=")?, field("grpc=")?);
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut gw = GatewayProcess {
            child,
            http,
            grpc,
            banner,
            log,
        };
        gw.wait_ready().await?;
        Ok(gw)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let url = format!("{}/readyz", self.http);
        let child = &mut self.child;
        let ready = poll_ready(
            &url,
            Duration::from_secs(30),
            Duration::from_millis(50),
            || exited(child, "the gateway"),
        )
        .await;
        ready.with_context(|| {
            format!(
                "the gateway did not get ready; log tail:\n{}",
                tail(&self.log)
            )
        })
    }

    /// Its PID, for a [`CpuProbe`].
    ///
    /// # Errors
    /// When it has exited.
    pub fn pid(&self) -> Result<String> {
        Ok(self
            .child
            .id()
            .context("the gateway has exited")?
            .to_string())
    }

    /// Stops the gateway with SIGTERM (a graceful drain), SIGKILL after 10 s.
    ///
    /// # Errors
    /// When it cannot be killed.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            terminate(
                &mut self.child,
                &[&pid.to_string()],
                Duration::from_secs(10),
            )
            .await?;
        }
        Ok(())
    }
}

/// What a benchmark's gateway config says beyond the shipped settings.
pub struct GatewaySettings<'a> {
    /// The `fraud_detector` model's default endpoint (gRPC URL).
    pub model_grpc: &'a str,
    /// The `[store]` table, e.g. `[store]\nbackend = "embedded"\npath = "…"`.
    pub store: &'a str,
    /// `[server] max_concurrent_requests`.
    pub max_concurrent: u64,
    /// More keys of the model, put before `[model.postprocess]` (e.g.
    /// `[model.endpoints]` and `[model.routing]`); each line ending in `\n`.
    pub model_extra: &'a str,
    /// More top-level tables, put before `[cache]` (e.g. `[rollout]`); each
    /// line ending in `\n`.
    pub extra: &'a str,
}

/// Writes a gateway config in `dir` — gateway/config/gateway.toml's
/// settings on free ports, the dev issuer, and `settings` — and returns its
/// path (a new name each call).
///
/// # Errors
/// On I/O errors.
pub fn gateway_config(dir: &Path, settings: &GatewaySettings<'_>) -> Result<PathBuf> {
    gateway_config_with_auth(dir, settings, "")
}

/// `[[auth.allow]]` for the admin API, for the dev token's group.
pub const ADMIN_AUTH: &str = "[[auth.allow]]\napi = \"admin\"\ngroups = [\"fraud-team\"]\n";

/// [`gateway_config`] with more `[[auth.allow]]` rules after the dev
/// issuer's (e.g. [`ADMIN_AUTH`]).
///
/// # Errors
/// On I/O errors.
pub fn gateway_config_with_auth(
    dir: &Path,
    settings: &GatewaySettings<'_>,
    auth_extra: &str,
) -> Result<PathBuf> {
    gateway_config_with_definitions(
        dir,
        &workspace_root().join("feature-store/definitions/fraud.toml"),
        settings,
        auth_extra,
    )
}

/// [`gateway_config_with_auth`] serving the feature definitions at
/// `definitions` instead of the example's fraud.toml (they must declare what
/// the `fraud_detector` model reads, e.g. by including fraud.toml).
///
/// # Errors
/// On I/O errors.
pub fn gateway_config_with_definitions(
    dir: &Path,
    definitions: &Path,
    settings: &GatewaySettings<'_>,
    auth_extra: &str,
) -> Result<PathBuf> {
    let GatewaySettings {
        model_grpc,
        store,
        max_concurrent,
        model_extra,
        extra,
    } = settings;
    let text = format!(
        r#"definitions = "{defs}"
[server]
environment = "development"
host = "127.0.0.1"
http_port = 0
grpc_port = 0
request_timeout_ms = 1000
max_concurrent_requests = {max_concurrent}
max_batch_entities = 64
{store}
{extra}[cache]
max_bytes = 268435456
static_ttl_s = 600
negative_ttl_s = 5
dynamic_ttl_ms = 0
batch_poll_ms = 2000
[[model]]
name = "fraud_detector"
endpoint = "{model_grpc}"
timeout_ms = 300
{model_extra}[model.postprocess]
scores_output = "probabilities"
labels = ["legit", "fraud"]
positive_label = "fraud"
threshold = 0.5
top_k = 2
{auth}{auth_extra}"#,
        auth = rig::gateway::DEV_AUTH,
        defs = definitions.display()
    );
    let path = dir.join(format!("gateway-{}.toml", dir.read_dir()?.count()));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (free when asked; another process may take
/// it before it is used).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A model-server child on fixed ports that can be killed, paused and
/// started again on the same ports (so a gateway's endpoint stays valid);
/// killed when dropped.
pub struct ModelServer {
    child: Option<tokio::process::Child>,
    repository: PathBuf,
    http_port: u16,
    grpc_port: u16,
    log: PathBuf,
    paused: bool,
}

impl ModelServer {
    /// Starts the model-server binary on `repository` on two free ports
    /// (stderr to `log`) and waits until it is ready.
    ///
    /// # Errors
    /// When it does not start or become ready in 120 s.
    pub async fn start(repository: &Path, log: PathBuf) -> Result<Self> {
        let mut server = ModelServer {
            child: None,
            repository: repository.to_path_buf(),
            http_port: free_port()?,
            grpc_port: free_port()?,
            log,
            paused: false,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> Result<()> {
        let bin = binary("model-server")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = tokio::process::Command::new(&bin)
            .arg("--model-repository")
            .arg(&self.repository)
            .args(["--host", "127.0.0.1", "--http-port"])
            .arg(self.http_port.to_string())
            .arg("--grpc-port")
            .arg(self.grpc_port.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        self.child = Some(child);
        self.paused = false;
        self.wait_ready(Duration::from_secs(120)).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let url = format!("{}/v2/health/ready", self.http_url());
        let child = &mut self.child;
        let ready = poll_ready(&url, timeout, Duration::from_millis(20), || {
            child
                .as_mut()
                .map_or(Ok(()), |c| exited(c, "the model-server"))
        })
        .await;
        ready.with_context(|| {
            format!(
                "the model-server did not get ready; log tail:\n{}",
                tail(&self.log)
            )
        })
    }

    /// Its gRPC URL (the same across restarts).
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Its REST URL (the same across restarts).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Its PID while running.
    pub fn pid(&self) -> Option<String> {
        self.child.as_ref()?.id().map(|p| p.to_string())
    }

    /// Whether it runs (started and not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills it (SIGKILL) and waits for it to exit; its port then refuses
    /// connections.
    ///
    /// # Errors
    /// When it cannot be signalled.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        self.paused = false;
        Ok(())
    }

    /// Starts it again on the same ports (after [`Self::kill`]) and waits
    /// until it is ready.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        self.spawn().await
    }

    async fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().context("the model-server is not running")?;
        let status = tokio::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// Freezes it (SIGSTOP): connections stay open and calls hang until
    /// [`Self::resume`].
    ///
    /// # Errors
    /// When it is not running or cannot be signalled.
    pub async fn pause(&mut self) -> Result<()> {
        self.signal("-STOP").await?;
        self.paused = true;
        Ok(())
    }

    /// Lets a paused server run again (SIGCONT).
    ///
    /// # Errors
    /// When it is not running or cannot be signalled.
    pub async fn resume(&mut self) -> Result<()> {
        self.signal("-CONT").await?;
        self.paused = false;
        Ok(())
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        // SIGKILL (kill_on_drop) ends a stopped process too; continuing it
        // first is belt and braces for anything that only sends SIGTERM.
        if self.paused
            && let Some(pid) = self.pid()
        {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid])
                .status();
        }
    }
}

/// The python of a cached venv `name` with `requirements` (a path from the
/// workspace root) installed, made or reused by tests/rig/python-venv.sh;
/// `probe` is a statement that must run in it (the imports the peer needs).
/// The script's progress goes to the terminal.
///
/// # Errors
/// When the script fails.
pub async fn python_venv(name: &str, requirements: &str, probe: &str) -> Result<PathBuf> {
    let root = workspace_root();
    let out = tokio::process::Command::new(root.join("tests/rig/python-venv.sh"))
        .args([name, requirements, probe])
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("run tests/rig/python-venv.sh")?;
    anyhow::ensure!(
        out.status.success(),
        "tests/rig/python-venv.sh could not make {name} ({}); see its output above",
        out.status
    );
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Sends SIGTERM to `target` (`kill -TERM` arguments: a PID, or `--` and a
/// negated process group), waits up to `grace` for `child` to exit, then
/// kills it.
///
/// # Errors
/// When the child cannot be killed.
pub async fn terminate(
    child: &mut tokio::process::Child,
    target: &[&str],
    grace: Duration,
) -> Result<()> {
    let _ = tokio::process::Command::new("kill")
        .arg("-TERM")
        .args(target)
        .status()
        .await;
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        child.kill().await?;
    }
    Ok(())
}

/// True when `cargo test --benches` runs this bench (it passes `--test` or
/// `--list`): a benchmark is not a test, so its `main` returns at once.
pub fn invoked_as_test() -> bool {
    std::env::args().any(|a| a == "--test" || a == "--list")
}

/// Runs `run` in a fresh scratch folder named after `tag` and prints the
/// report it returns (nothing at all under `cargo test`, see
/// [`invoked_as_test`]). On Ctrl-C or SIGTERM the run is dropped, and with it
/// every process it started (kill_on_drop; an owned Cassandra's Drop runs
/// the rig's stop); the folder is removed either way.
///
/// # Errors
/// When the folder cannot be created, the run fails or is interrupted.
pub async fn report_in_scratch<F, Fut>(tag: &str, run: F) -> Result<()>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    if invoked_as_test() {
        return Ok(());
    }
    let scratch = std::env::temp_dir().join(format!("mlgw_bench_{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    let result = tokio::select! {
        r = run(scratch.clone()) => r,
        s = interrupted() => Err(anyhow::anyhow!("interrupted by {s}; stopped everything the bench started")),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{}", result?);
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM, naming which.
pub async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "Ctrl-C";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}

//! Our model-server against MLServer (Seldon's Python server, from PyPI)
//! serving the same ONNX file, side by side in one run: the example
//! `fraud_detector` model, single-row V2 gRPC `ModelInfer` calls sent by the
//! same client code to both, dynamic (MLServer: adaptive) batching on and off.
//!
//! * **Answers first.** Every server start is checked against the reference
//!   outputs (onnxruntime's, model-server/training/reference/) and MLServer's
//!   answers against ours, one row at a time and all rows at once (so batches
//!   form): labels equal, probabilities within 1e-5. A mismatch stops the run.
//! * **Closed loop** at 1, 8 and 64 callers (throughput).
//! * **Open loop** at fixed rates (the benches library's driver: call *i* sent
//!   at `start + i / rate`, latency from that intended time, so queueing shows
//!   and there is no coordinated omission), rising until a step falls below
//!   90% of its rate, fails more than 1% of calls or has p99 over 1 s.
//! * **CPU per call** of each server (all its processes: MLServer runs a main
//!   process and inference worker processes) and of the client, from
//!   /proc/PID/stat; client and servers share the machine's cores.
//!
//! MLServer runs benches/peers/mlserver/onnx_runtime.py (an `MLModel` on
//! onnxruntime; there is no ONNX runtime package for MLServer 1.7) with
//! benches/peers/mlserver/settings.json and model-settings.json, in a venv
//! made by tests/rig/python-venv.sh from benches/peers/mlserver/requirements.txt.
//! If MLServer cannot start or load the model, the run fails with its log tail.
//!
//! Run (release build of the server first; the venv is made on first use):
//!   cargo build --release -p model-server && cargo bench -p benches --bench peer_model_server
//! Results are printed and written to benches/results/peer_model_server.md and
//! benches/results/peer_model_server.svg; the file's hand-written
//! interpretation (below its `<!-- interpretation -->` line) is kept.
//!
//! Knobs: MLGW_BENCH_SECONDS (measured seconds per step, default 4, plus 0.5 s
//! warm-up), MLGW_BENCH_RATES (open-loop req/s, default
//! 50,100,200,400,1000,2000,4000,8000,16000: MLServer
//! saturates at a few hundred on two cores), MLGW_BENCH_CONCURRENCY (closed-loop
//! callers, default 1,8,64), MLGW_BENCH_MLSERVER_WORKERS (MLServer's
//! `parallel_workers`, default 1 as MLServer ships), MLGW_BENCH_MODEL_VERSION
//! (1 = logistic regression, 2 = MLP, default 2).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use benches::grpc_client::{DirectClient, channels, direct_clients};
use benches::knobs::{env_list, env_num, list_text};
use benches::load::{self, Load, Measured, Outcome};
use benches::process::{cpu_seconds, free_port, interrupted, invoked_as_test, python_venv, tail};
use benches::report::{Frame, Series, chart, machine, ms, table_row};
use proto::inference as pb;
use rig::{
    ModelServerProcess, TempRepo, example_repository, exited, poll_ready, reference, workspace_root,
};

/// Callers share this many HTTP/2 connections, as a client pool would.
const CONNECTIONS: usize = 4;
/// Both servers batch up to this many rows (our shipped config.toml's
/// `max_batch_size`; MLServer's `max_batch_size`)…
const MAX_BATCH: u64 = 64;
/// …waiting at most this long for a batch to fill (ours: `max_queue_delay_ms`,
/// MLServer: `max_batch_time`).
const BATCH_DELAY_MS: u64 = 2;
/// Answers may differ by this much per probability (tract against onnxruntime).
const TOLERANCE: f32 = 1e-5;
/// A call not answered in this time counts as failed (`client_timeout`).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// An open-loop step worse than this ends the rising rates of its series.
const SATURATED_P99_MS: f64 = 1000.0;
const MODEL: &str = "fraud_detector";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Server {
    Ours,
    MlServer,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Ours => "model-server",
            Server::MlServer => "MLServer",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Batching {
    On,
    Off,
}

impl Batching {
    fn name(self) -> &'static str {
        match self {
            Batching::On => "on",
            Batching::Off => "off",
        }
    }
}

struct Knobs {
    seconds: f64,
    rates: Vec<f64>,
    callers: Vec<f64>,
    workers: u64,
    version: String,
}

impl Knobs {
    fn from_env() -> Result<Self> {
        let version = env_num("MLGW_BENCH_MODEL_VERSION", 2.0)?;
        ensure!(
            version == 1.0 || version == 2.0,
            "MLGW_BENCH_MODEL_VERSION must be 1 or 2"
        );
        Ok(Knobs {
            seconds: env_num("MLGW_BENCH_SECONDS", 4.0)?,
            rates: env_list(
                "MLGW_BENCH_RATES",
                &[
                    50.0, 100.0, 200.0, 400.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0,
                ],
            )?,
            callers: env_list("MLGW_BENCH_CONCURRENCY", &[1.0, 8.0, 64.0])?,
            workers: env_num("MLGW_BENCH_MLSERVER_WORKERS", 1.0)? as u64,
            version: format!("{version:.0}"),
        })
    }
}

/// One measured step.
struct Step {
    server: Server,
    batching: Batching,
    load: Load,
    m: Measured,
    /// CPU µs per completed call of the server's processes together.
    server_cpu_us: f64,
    /// CPU µs per completed call of this benchmark process.
    client_cpu_us: f64,
}

impl Step {
    fn errors_text(&self) -> String {
        match (self.m.shed, self.m.errors_text().as_str()) {
            (0, text) => text.to_owned(),
            (shed, "0") => format!("Shed {shed}"),
            (shed, text) => format!("Shed {shed}, {text}"),
        }
    }

    /// A results-table row: server, batching, `load` (callers or offered
    /// rate), throughput and latency, errors, the `extra` cells, then the
    /// server's and the client's CPU µs per call.
    fn table_row(&self, load: &str, extra: &[String]) -> String {
        let (server, batching) = (self.server.name(), self.batching.name());
        let head = [server, batching, load].map(str::to_owned);
        let figures = [self.m.latency_cells(), self.errors_text()];
        let cpu = [self.server_cpu_us, self.client_cpu_us].map(|us| format!("{us:.0}"));
        table_row(head.iter().chain(&figures).chain(extra).chain(&cpu))
    }

    /// Kept up: nearly the offered rate, next to no failures, p99 in bounds.
    fn sustained(&self) -> bool {
        let Load::Open { rate } = self.load else {
            return true;
        };
        self.m.achieved >= 0.9 * rate
            && self.m.unanswered_share() <= 0.01
            && self.m.p_ms(0.99) <= SATURATED_P99_MS
    }
}

/// One row's answer: predicted label and [P(legit), P(fraud)].
#[derive(Clone, Debug, PartialEq)]
struct Answer {
    label: i64,
    probabilities: [f32; 2],
}

fn request(version: &str, row: &[f32]) -> pb::ModelInferRequest {
    benches::demo::row_request(version, row)
}

/// The answers in a response: outputs `label` (INT64 [n]) and
/// `probabilities` (FP32 [n, 2]), as raw bytes or typed contents.
fn decode(response: &pb::ModelInferResponse) -> Result<Vec<Answer>> {
    let output = |name: &str| {
        response
            .outputs
            .iter()
            .enumerate()
            .find(|(_, o)| o.name == name)
            .with_context(|| format!("no output {name:?} in {response:?}"))
    };
    let (li, label) = output("label")?;
    let (pi, probabilities) = output("probabilities")?;
    ensure!(
        label.datatype == "INT64" && probabilities.datatype == "FP32",
        "output datatypes {} / {}, want INT64 / FP32",
        label.datatype,
        probabilities.datatype
    );
    let raw = |i: usize| response.raw_output_contents.get(i).map(|b| b.as_ref());
    let labels: Vec<i64> = match raw(li) {
        Some(bytes) => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        None => label
            .contents
            .as_ref()
            .map(|c| c.int64_contents.clone())
            .unwrap_or_default(),
    };
    let probs: Vec<f32> = match raw(pi) {
        Some(bytes) => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        None => probabilities
            .contents
            .as_ref()
            .map(|c| c.fp32_contents.clone())
            .unwrap_or_default(),
    };
    ensure!(
        label.shape == [labels.len() as i64]
            && probabilities.shape == [labels.len() as i64, 2]
            && probs.len() == 2 * labels.len(),
        "output shapes {:?} / {:?} with {} labels and {} probabilities",
        label.shape,
        probabilities.shape,
        labels.len(),
        probs.len()
    );
    Ok(labels
        .iter()
        .zip(probs.chunks_exact(2))
        .map(|(&label, p)| Answer {
            label,
            probabilities: [p[0], p[1]],
        })
        .collect())
}

/// Each reference row's answer, one call per row: one after another, or all
/// at once (so a batching server merges them).
async fn answers(
    clients: &[DirectClient],
    requests: &[pb::ModelInferRequest],
    all_at_once: bool,
) -> Result<Vec<Answer>> {
    let one = |i: usize| {
        let mut client = clients[i % clients.len()].clone();
        let req = requests[i].clone();
        async move {
            let response = client
                .model_infer(req)
                .await
                .with_context(|| format!("ModelInfer of reference row {i}"))?
                .into_inner();
            let mut got = decode(&response).with_context(|| format!("reference row {i}"))?;
            ensure!(got.len() == 1, "row {i}: {} answers for one row", got.len());
            anyhow::Ok(got.remove(0))
        }
    };
    let mut out = Vec::with_capacity(requests.len());
    if all_at_once {
        let mut tasks = Vec::with_capacity(requests.len());
        for i in 0..requests.len() {
            tasks.push(tokio::spawn(one(i)));
        }
        for t in tasks {
            out.push(t.await??);
        }
    } else {
        for i in 0..requests.len() {
            out.push(one(i).await?);
        }
    }
    Ok(out)
}

/// Fails naming the first rows where `got` and `want` differ.
fn compare(what: &str, got: &[Answer], want: &[Answer]) -> Result<()> {
    ensure!(
        got.len() == want.len(),
        "{what}: {} answers, want {}",
        got.len(),
        want.len()
    );
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| {
            g.label != w.label
                || g.probabilities
                    .iter()
                    .zip(&w.probabilities)
                    .any(|(a, b)| (a - b).abs() > TOLERANCE || !a.is_finite())
        })
        .map(|(i, (g, w))| format!("row {i}: got {g:?}, want {w:?}"))
        .collect();
    if !bad.is_empty() {
        bail!(
            "{what}: {} of {} rows differ (labels must be equal, probabilities within {TOLERANCE}); first: {}",
            bad.len(),
            got.len(),
            bad[..bad.len().min(5)].join("; ")
        );
    }
    Ok(())
}

/// PIDs of `root` and all its descendants (MLServer's inference workers).
fn process_tree(root: u32) -> Vec<String> {
    let mut parent = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // After "pid (comm)": state, then the parent's PID.
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            {
                parent.push((name, ppid.to_owned()));
            }
        }
    }
    let mut tree = vec![root.to_string()];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i].clone();
        tree.extend(
            parent
                .iter()
                .filter(|(_, pp)| *pp == p)
                .map(|(c, _)| c.clone()),
        );
        i += 1;
    }
    tree
}

/// CPU seconds used so far by `root` and its descendants.
fn tree_cpu_seconds(root: u32) -> f64 {
    process_tree(root)
        .iter()
        .filter_map(|p| cpu_seconds(p))
        .sum()
}

/// MLServer in its own process group (its workers are child processes), on
/// free ports, serving one version of the example model from a scratch
/// folder; the whole group is killed when dropped.
struct MlServer {
    child: Option<tokio::process::Child>,
    pid: u32,
    http_url: String,
    grpc_url: String,
    log: PathBuf,
    _scratch: TempRepo,
}

impl MlServer {
    /// Writes settings.json and fraud_detector/model-settings.json (from the
    /// templates in benches/peers/mlserver/) into a scratch folder and runs
    /// `mlserver start` there, waiting until the model version is ready.
    async fn start(
        mlserver: &Path,
        version: &str,
        batching: Batching,
        workers: u64,
    ) -> Result<Self> {
        let peer = workspace_root().join("benches/peers/mlserver");
        let scratch = TempRepo::new()?;
        let dir = scratch.path.clone();
        let (http_port, grpc_port, metrics_port) = (free_port()?, free_port()?, free_port()?);
        let mut settings: serde_json::Value = read_json(&peer.join("settings.json"))?;
        settings["host"] = "127.0.0.1".into();
        settings["http_port"] = http_port.into();
        settings["grpc_port"] = grpc_port.into();
        settings["metrics_port"] = metrics_port.into();
        settings["parallel_workers"] = workers.into();
        settings["environments_dir"] = dir.join(".envs").to_string_lossy().as_ref().into();
        settings["metrics_dir"] = dir.join(".metrics").to_string_lossy().as_ref().into();
        std::fs::write(
            dir.join("settings.json"),
            serde_json::to_string_pretty(&settings)?,
        )?;
        let mut model: serde_json::Value = read_json(&peer.join("model-settings.json"))?;
        let onnx = example_repository().join(format!("{MODEL}/{version}/model.onnx"));
        model["name"] = MODEL.into();
        model["parameters"]["uri"] = onnx.to_string_lossy().as_ref().into();
        model["parameters"]["version"] = version.into();
        let (size, time) = match batching {
            Batching::On => (MAX_BATCH, BATCH_DELAY_MS as f64 / 1000.0),
            // MLServer batches only with max_batch_size > 1 and max_batch_time > 0.
            Batching::Off => (0, 0.0),
        };
        model["max_batch_size"] = size.into();
        model["max_batch_time"] = time.into();
        std::fs::create_dir_all(dir.join(MODEL))?;
        std::fs::write(
            dir.join(MODEL).join("model-settings.json"),
            serde_json::to_string_pretty(&model)?,
        )?;

        let log = dir.join("mlserver.log");
        let out = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(mlserver)
            .arg("start")
            .arg(&dir)
            .current_dir(&dir)
            .env("PYTHONPATH", &peer)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", mlserver.display()))?;
        let pid = child.id().context("MLServer exited at once")?;
        let mut server = MlServer {
            child: Some(child),
            pid,
            http_url: format!("http://127.0.0.1:{http_port}"),
            grpc_url: format!("http://127.0.0.1:{grpc_port}"),
            log,
            _scratch: scratch,
        };
        server.wait_ready(version, Duration::from_secs(120)).await?;
        Ok(server)
    }

    async fn wait_ready(&mut self, version: &str, timeout: Duration) -> Result<()> {
        let url = format!(
            "{}/v2/models/{MODEL}/versions/{version}/ready",
            self.http_url
        );
        let (child, log) = (&mut self.child, &self.log);
        let ready = poll_ready(&url, timeout, Duration::from_millis(100), || {
            if let Some(c) = child.as_mut() {
                exited(c, "MLServer")?;
            }
            let text = std::fs::read_to_string(log).unwrap_or_default();
            ensure!(
                !(text.contains("failed to load") || text.contains("Couldn't load model")),
                "MLServer could not load {MODEL} v{version}"
            );
            Ok(())
        })
        .await;
        ready.with_context(|| {
            format!(
                "MLServer did not serve {MODEL} v{version}; log tail ({}):\n{}",
                self.log.display(),
                tail(&self.log)
            )
        })
    }

    /// Sends `signal` (`-TERM`, `-KILL`) to the main process alone or to its
    /// whole process group.
    fn signal(&self, signal: &str, group: bool) {
        let target = if group {
            format!("-{}", self.pid)
        } else {
            self.pid.to_string()
        };
        let _ = std::process::Command::new("kill")
            .args([signal, "--", &target])
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM to the main process (it stops its workers), SIGKILL to the
    /// group after 20 s.
    async fn stop(mut self) -> Result<()> {
        self.signal("-TERM", false);
        if let Some(mut child) = self.child.take()
            && tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
        {
            self.signal("-KILL", true);
            child.wait().await?;
        }
        // Workers that outlived the main process.
        self.signal("-KILL", true);
        Ok(())
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal("-KILL", true);
        }
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// The venv's python (made or reused by tests/rig/python-venv.sh).
async fn mlserver_python() -> Result<PathBuf> {
    python_venv(
        "mlserver-venv",
        "benches/peers/mlserver/requirements.txt",
        "import mlserver, onnxruntime",
    )
    .await
}

async fn command_output(program: &Path, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("run {}", program.display()))?;
    ensure!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A running server of either kind.
enum Running {
    Ours(ModelServerProcess),
    Peer(MlServer),
}

impl Running {
    fn grpc_url(&self) -> &str {
        match self {
            Running::Ours(s) => &s.grpc_url,
            Running::Peer(s) => &s.grpc_url,
        }
    }

    fn pid(&self) -> Result<u32> {
        match self {
            Running::Ours(s) => s.pid().context("model-server pid"),
            Running::Peer(s) => Ok(s.pid),
        }
    }

    async fn stop(self) -> Result<()> {
        match self {
            Running::Ours(s) => s.stop().await,
            Running::Peer(s) => s.stop().await,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    if invoked_as_test() {
        return Ok(());
    }
    // On Ctrl-C or SIGTERM the run is dropped, so every server it started
    // (MLServer's whole process group too) is killed before exiting.
    tokio::select! {
        done = run() => done,
        signal = interrupted() => bail!("interrupted by {signal}"),
    }
}

async fn run() -> Result<()> {
    let knobs = Knobs::from_env()?;
    let version = knobs.version.as_str();
    let shipped = std::fs::read_to_string(example_repository().join(MODEL).join("config.toml"))?;
    ensure!(
        shipped.contains(&format!("max_batch_size = {MAX_BATCH}"))
            && shipped.contains(&format!("max_queue_delay_ms = {BATCH_DELAY_MS}")),
        "the shipped config.toml no longer batches {MAX_BATCH} rows with a {BATCH_DELAY_MS} ms delay: \
         update MAX_BATCH / BATCH_DELAY_MS so MLServer gets the same settings"
    );

    let python = mlserver_python().await?;
    let mlserver = python.with_file_name("mlserver");
    let peer_versions = command_output(
        &python,
        &[
            "-c",
            "import sys, mlserver, onnxruntime, numpy; \
             print(f'MLServer {mlserver.__version__}, onnxruntime {onnxruntime.__version__}, \
             numpy {numpy.__version__}, Python {sys.version.split()[0]}')",
        ],
    )
    .await?;
    let ours_version = command_output(&rig::binary("model-server")?, &["--version"]).await?;

    let reference = reference(version.parse()?)?;
    let want: Vec<Answer> = reference
        .outputs
        .label
        .iter()
        .zip(&reference.outputs.probabilities)
        .map(|(&label, &probabilities)| Answer {
            label,
            probabilities,
        })
        .collect();
    let requests: Arc<Vec<pb::ModelInferRequest>> = Arc::new(
        reference
            .inputs
            .iter()
            .map(|row| request(version, row))
            .collect(),
    );

    // Other work on the machine skews every number here; the report says how much there was.
    let load_before = load_average();
    let mut steps: Vec<Step> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut ours_answers: Option<Vec<Answer>> = None;
    for batching in [Batching::On, Batching::Off] {
        for server in [Server::Ours, Server::MlServer] {
            let label = format!("{} batching {}", server.name(), batching.name());
            let running = match server {
                Server::Ours => {
                    let args: &[&str] = match batching {
                        Batching::On => &[],
                        Batching::Off => &["--disable-batching"],
                    };
                    let mut s = ModelServerProcess::start(&example_repository(), args).await?;
                    s.wait_ready(Duration::from_secs(120)).await?;
                    Running::Ours(s)
                }
                Server::MlServer => Running::Peer(
                    MlServer::start(&mlserver, version, batching, knobs.workers).await?,
                ),
            };
            let pid = running.pid()?;
            let clients = direct_clients(&channels(running.grpc_url(), CONNECTIONS).await?);

            for all_at_once in [false, true] {
                let how = if all_at_once {
                    "all rows at once"
                } else {
                    "one row at a time"
                };
                let got = answers(&clients, &requests, all_at_once).await?;
                compare(
                    &format!("{label}, {how}, against onnxruntime's reference"),
                    &got,
                    &want,
                )?;
                match &ours_answers {
                    None => ours_answers = Some(got),
                    Some(ours) => {
                        compare(
                            &format!("{label}, {how}, against our model-server"),
                            &got,
                            ours,
                        )?;
                    }
                }
            }
            eprintln!(
                "{label}: {} reference rows answered alike (one at a time and all at once)",
                requests.len()
            );

            let target = {
                let (clients, requests) = (clients.clone(), Arc::clone(&requests));
                Arc::new(load::call_fn(move |k: u64| {
                    let mut client = clients[k as usize % clients.len()].clone();
                    let req = requests[k as usize % requests.len()].clone();
                    async move {
                        match tokio::time::timeout(CALL_TIMEOUT, client.model_infer(req)).await {
                            Ok(Ok(r)) if r.get_ref().outputs.len() == 2 => Outcome::Ok,
                            Ok(Ok(_)) => Outcome::failed("wrong_outputs"),
                            Ok(Err(status)) => Outcome::from_grpc::<()>(&Err(status)),
                            Err(_) => Outcome::failed("client_timeout"),
                        }
                    }
                }))
            };
            let mut loads: Vec<Load> = knobs
                .callers
                .iter()
                .map(|&c| Load::Closed {
                    callers: c as usize,
                    pace: None,
                })
                .collect();
            loads.extend(knobs.rates.iter().map(|&rate| Load::Open { rate }));
            for load in loads {
                let (cpu0, me0) = (tree_cpu_seconds(pid), own_cpu_seconds());
                let m = load::run(&target, load, knobs.seconds).await?;
                let calls = m.completed_all.max(1) as f64;
                let step = Step {
                    server,
                    batching,
                    load,
                    server_cpu_us: (tree_cpu_seconds(pid) - cpu0) / calls * 1e6,
                    client_cpu_us: (own_cpu_seconds() - me0) / calls * 1e6,
                    m,
                };
                eprintln!(
                    "{label} {}: {} errors={} cpu/call server={:.0}us client={:.0}us",
                    load.text(),
                    step.m.summary(),
                    step.errors_text(),
                    step.server_cpu_us,
                    step.client_cpu_us,
                );
                let saturated = !step.sustained();
                steps.push(step);
                // Let the server drain before the next step.
                tokio::time::sleep(Duration::from_millis(300)).await;
                if saturated && let Load::Open { rate } = load {
                    let higher: Vec<f64> =
                        knobs.rates.iter().copied().filter(|&r| r > rate).collect();
                    if !higher.is_empty() {
                        notes.push(format!(
                            "{label}: saturated at {rate:.0} req/s, so {} req/s were not run.",
                            list_text(&higher)
                        ));
                    }
                    break;
                }
            }
            running.stop().await?;
        }
    }

    notes.push(format!(
        "Load average (1, 5, 15 min) before the run: {load_before}; after: {}.",
        load_average()
    ));
    let text = report(&knobs, &steps, &notes, &ours_version, &peer_versions)?;
    println!("{text}");
    let dir = workspace_root().join("benches/results");
    std::fs::create_dir_all(&dir)?;
    let md = dir.join("peer_model_server.md");
    let kept = std::fs::read_to_string(&md)
        .ok()
        .and_then(|old| old.find(INTERPRETATION).map(|i| old[i..].to_owned()))
        .unwrap_or_else(|| format!("{INTERPRETATION}\n"));
    std::fs::write(&md, format!("{text}\n{kept}"))?;
    std::fs::write(dir.join("peer_model_server.svg"), latency_svg(&steps))?;
    Ok(())
}

/// The line after which the results file is written by hand.
const INTERPRETATION: &str = "<!-- interpretation -->";

/// `/proc/loadavg`'s first three fields.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(", ")
}

fn own_cpu_seconds() -> f64 {
    cpu_seconds(&std::process::id().to_string()).unwrap_or(f64::NAN)
}

fn find(steps: &[Step], server: Server, batching: Batching, load: Load) -> Option<&Step> {
    steps
        .iter()
        .find(|s| s.server == server && s.batching == batching && s.load == load)
}

/// `1.23×`, or `-` when either side is missing.
fn ratio(ours: f64, theirs: f64) -> String {
    if ours.is_finite() && theirs.is_finite() && theirs > 0.0 {
        format!("{:.2}×", ours / theirs)
    } else {
        "-".into()
    }
}

fn report(
    knobs: &Knobs,
    steps: &[Step],
    notes: &[String],
    ours_version: &str,
    peer_versions: &str,
) -> Result<String> {
    let (cores, cpu) = machine();
    let v = &knobs.version;
    let mut out = String::new();
    writeln!(
        out,
        "# Our model-server against MLServer, same model, same client\n"
    )?;
    writeln!(
        out,
        "Command: `cargo build --release -p model-server && cargo bench -p benches --bench peer_model_server` \
         (MLGW_BENCH_SECONDS={}, MLGW_BENCH_RATES={}, MLGW_BENCH_CONCURRENCY={}, MLGW_BENCH_MLSERVER_WORKERS={}, \
         MLGW_BENCH_MODEL_VERSION={v}).\n",
        knobs.seconds,
        list_text(&knobs.rates),
        list_text(&knobs.callers),
        knobs.workers
    )?;
    writeln!(
        out,
        "Machine: {cores} cores ({cpu}); client and both servers on it, one server running at a time. \
         Versions: {ours_version} (release build); {peer_versions} (benches/peers/mlserver/requirements.txt).\n"
    )?;
    writeln!(
        out,
        "Work: `{MODEL}` v{v} ({}), the same model.onnx file for both; single-row V2 gRPC `ModelInfer` calls \
         (raw FP32 input, 15 features; the 256 reference rows in turn) from one tonic client over {CONNECTIONS} HTTP/2 connections. \
         Before any load, each server start answered the reference rows one at a time and all at once, \
         labels equal and probabilities within {TOLERANCE} of onnxruntime's reference and of our server's answers.\n",
        if v == "1" {
            "StandardScaler + LogisticRegression"
        } else {
            "StandardScaler + MLP (32, 16)"
        }
    )?;
    writeln!(out, "Configuration:\n")?;
    writeln!(
        out,
        "- **model-server**: defaults (`--model-repository model-server/models`), i.e. {cores} inference threads \
         per model version (one per core) and tokio's default {cores} runtime threads; tract runs the graph. \
         Batching on: the shipped config.toml (max_batch_size {MAX_BATCH}, max_queue_delay_ms {BATCH_DELAY_MS}); \
         off: `--disable-batching`. Prometheus metrics on (always)."
    )?;
    writeln!(
        out,
        "- **MLServer**: benches/peers/mlserver (settings.json, model-settings.json, onnx_runtime.py: an `MLModel` \
         running onnxruntime with 1 intra-op thread per session), `parallel_workers` {} ({}), so one main process \
         (asyncio gRPC/REST, adaptive batching) hands requests to {} inference worker process(es); `debug` false \
         (no access log), metrics on their own port (MLServer's default). Batching on: max_batch_size {MAX_BATCH}, \
         max_batch_time {} s; off: max_batch_size 0.\n",
        knobs.workers,
        if knobs.workers == 1 {
            "MLServer's default"
        } else {
            "not MLServer's default of 1"
        },
        knobs.workers,
        BATCH_DELAY_MS as f64 / 1000.0
    )?;
    writeln!(
        out,
        "Latency in ms. Open loop: from each call's intended send time; a series stops rising after a step that \
         falls below 90% of its rate, fails over 1% of calls or has p99 over {SATURATED_P99_MS:.0} ms. \
         CPU µs per call: all the server's processes (utime + stime from /proc, MLServer's workers included) \
         and the benchmark client, divided over the step's completed calls (warm-up included).\n"
    )?;

    writeln!(out, "## Closed loop (throughput)\n")?;
    writeln!(
        out,
        "| server | batching | callers | req/s | p50 | p99 | p99.9 | errors | server CPU µs/call | client CPU µs/call |"
    )?;
    writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
    )?;
    for s in steps {
        if let Load::Closed { callers, .. } = s.load {
            writeln!(out, "{}", s.table_row(&callers.to_string(), &[]))?;
        }
    }
    writeln!(out, "\n## Open loop (fixed rates)\n")?;
    writeln!(
        out,
        "| server | batching | offered req/s | achieved req/s | p50 | p99 | p99.9 | errors | send lag p99 | server CPU µs/call | client CPU µs/call |"
    )?;
    writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"
    )?;
    for s in steps {
        if let Load::Open { rate } = s.load {
            let send_lag = ms(s.m.send_lag_p99_us.map_or(f64::NAN, |u| u as f64 / 1000.0));
            writeln!(out, "{}", s.table_row(&format!("{rate:.0}"), &[send_lag]))?;
        }
    }
    for n in notes {
        writeln!(out, "\n{n}")?;
    }

    writeln!(out, "\n## Ours against MLServer\n")?;
    writeln!(
        out,
        "Ratios model-server ÷ MLServer on the same load (throughput: higher is better for us; p99 and CPU: lower is).\n"
    )?;
    writeln!(
        out,
        "| batching | load | req/s ours | req/s MLServer | throughput ratio | p99 ours | p99 MLServer | p99 ratio | CPU/call ratio |"
    )?;
    writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for batching in [Batching::On, Batching::Off] {
        for s in steps
            .iter()
            .filter(|s| s.server == Server::Ours && s.batching == batching)
        {
            let Some(p) = find(steps, Server::MlServer, batching, s.load) else {
                continue;
            };
            writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                batching.name(),
                s.load.text(),
                s.m.achieved,
                p.m.achieved,
                ratio(s.m.achieved, p.m.achieved),
                ms(s.m.p_ms(0.99)),
                ms(p.m.p_ms(0.99)),
                ratio(s.m.p_ms(0.99), p.m.p_ms(0.99)),
                ratio(s.server_cpu_us, p.server_cpu_us)
            )?;
        }
    }
    writeln!(out)?;
    let mut best: BTreeMap<(Server, Batching), f64> = BTreeMap::new();
    for s in steps {
        if let Load::Open { rate } = s.load
            && s.sustained()
        {
            let e = best.entry((s.server, s.batching)).or_insert(0.0);
            *e = e.max(rate);
        }
    }
    for batching in [Batching::On, Batching::Off] {
        let get = |server| best.get(&(server, batching)).copied().unwrap_or(0.0);
        let (o, p) = (get(Server::Ours), get(Server::MlServer));
        writeln!(
            out,
            "Highest open-loop rate sustained (≥ 90% achieved, ≤ 1% failed, p99 ≤ {SATURATED_P99_MS:.0} ms), batching {}: \
             model-server {o:.0} req/s, MLServer {p:.0} req/s ({}).\n",
            batching.name(),
            ratio(o, p)
        )?;
    }
    writeln!(
        out,
        "Plot: benches/results/peer_model_server.svg (open loop, p99 solid and p50 dashed, against offered rate, both axes log)."
    )?;
    Ok(out)
}

/// Open-loop p99 (solid) and p50 (dashed) against offered rate, log-log,
/// one colour per server and batching mode.
fn latency_svg(steps: &[Step]) -> String {
    let series = [
        (Server::Ours, Batching::On, "#1f77b4"),
        (Server::Ours, Batching::Off, "#2ca02c"),
        (Server::MlServer, Batching::On, "#d62728"),
        (Server::MlServer, Batching::Off, "#ff7f0e"),
    ];
    let points = |server, batching, q: f64| -> Vec<(f64, f64)> {
        steps
            .iter()
            .filter(|s| s.server == server && s.batching == batching)
            .filter_map(|s| match s.load {
                Load::Open { rate } if s.m.ok > 0 => Some((rate, s.m.p_ms(q).max(0.01))),
                _ => None,
            })
            .collect()
    };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|&(s, b, _)| {
            let mut v = points(s, b, 0.99);
            v.extend(points(s, b, 0.5));
            v
        })
        .collect();
    let decade_floor = |v: f64| 10f64.powf(v.log10().floor());
    let decade_ceil = |v: f64| 10f64.powf(v.log10().ceil());
    // Whole decades around the values, spanning at least `lo_max..hi_min`.
    let span = |values: Vec<f64>, lo_max: f64, hi_min: f64| {
        let lo = values.iter().copied().fold(lo_max, f64::min);
        let hi = values.iter().copied().fold(hi_min, f64::max);
        (decade_floor(lo), decade_ceil(hi))
    };
    let (x_lo, x_hi) = span(all.iter().map(|p| p.0).collect(), 100.0, 1000.0);
    let (y_lo, y_hi) = span(all.iter().map(|p| p.1).collect(), 0.1, 10.0);
    let ticks = |lo: f64, hi: f64| {
        let mut t = Vec::new();
        let mut d = lo;
        while d <= hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                if d * m <= hi * 1.0001 {
                    t.push(d * m);
                }
            }
            d *= 10.0;
        }
        t
    };
    let frame = Frame {
        size: (780.0, 440.0),
        margins: (60.0, 30.0, 230.0, 50.0),
        title_y: 18.0,
        x_range: (x_lo, x_hi),
        x_log: true,
        x_ticks: ticks(x_lo, x_hi),
        x_title: "offered rate, req/s (log)",
        y_range: (y_lo, y_hi),
        y_ticks: ticks(y_lo, y_hi),
    };
    // Per server and batching mode: p99 solid, then p50 dashed.
    let lines: Vec<Series> = series
        .iter()
        .flat_map(|&(server, batching, color)| {
            [(0.99, false, "p99"), (0.5, true, "p50")].map(|(q, dashed, what)| Series {
                label: format!("{} batching {} {what}", server.name(), batching.name()),
                color,
                dashed,
                line: true,
                points: points(server, batching, q),
            })
        })
        .collect();
    chart(
        "ModelInfer latency vs offered rate (open loop): model-server vs MLServer",
        &frame,
        &lines,
    )
}

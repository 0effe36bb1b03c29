//! Peer benchmark: a prediction through our gateway against the pipeline a
//! user would build instead of it — the Feast feature server (`feast serve`,
//! Feast from PyPI, Cassandra online store) reading the same features for
//! the same customers, then a V2 `ModelInfer` to the same model-server.
//!
//! * **Ours:** gRPC `gateway.v1.PredictionService/Predict` through the
//!   release gateway on the Cassandra backend, **cache hit** (a small hot set
//!   of customers, warmed) and **cache miss** (customer IDs never repeated).
//!   The gateway reads the static view `customer_profile` (row cache) and
//!   the dynamic view `customer_activity` (read on every call, as shipped),
//!   calls the model-server, post-processes and logs the prediction.
//! * **Feast pipeline:** per call `POST /get-online-features` for the
//!   customer (both views, 10 features) on HTTP/1.1 keep-alive, then
//!   `ModelInfer` on the model-server with those 10 features and the 5
//!   request features; answered when both are done. Feast reads both views
//!   from Cassandra on every call (it has no row cache). Measured as
//!   `feast serve` starts by default (1 worker, access log on, a worker
//!   restart every ~1,000 requests) and tuned, once per worker count in
//!   MLGW_BENCH_FEAST_WORKERS (no access log, no worker restarts), and
//!   through its gRPC feature server (`feast listen`, GetOnlineFeatures).
//! * Both load the same demo customers: `benches::demo::profile` for the
//!   static view, [`activity`] for the dynamic one; the gateway's store gets
//!   them through its refresh run and `write_dynamic` (the five activity
//!   values; its definitions are the example's without the windowed
//!   aggregates, so it reads one stored row as Feast does), Feast through parquet
//!   files (benches/peers/feast/load.py), `feast apply` and `feast
//!   materialize`. Before measuring, a few customers are read back through
//!   Feast and compared with the loaded values, and the gateway's scores
//!   with the pipeline's for the same calls; any difference stops the run.
//! * **Open loop** at fixed rates (latency from each call's intended send
//!   time, so queueing shows), the same rates for every system, rising ×1.5
//!   after the list until p99 blows past 10× the threshold, more than 1% of
//!   calls fail or the achieved rate falls below 90%; then two bisection
//!   steps. "Throughput at fixed p99" is the highest offered rate with p99 ≤
//!   MLGW_BENCH_P99_MS, under 0.1% failed or shed and ≥ 95% achieved. CPU
//!   per call of every process (whole process trees for `feast serve`) from
//!   /proc, since everything shares the machine.
//!
//! Run (release binaries first; Cassandra jars and the Feast venv are
//! fetched on the first run):
//!   cargo build --release -p model-server -p gateway && cargo bench -p benches --bench peer_feast
//! Results go to benches/results/peer_feast.md and peer_feast.svg.
//!
//! Knobs: MLGW_BENCH_SECONDS (measured seconds per step, default 4; plus
//! 0.5 s warm-up), MLGW_BENCH_RATES (req/s, default 100,200,500,1000,2000),
//! MLGW_BENCH_MAX_RATE (cap of the rising steps, default 8000),
//! MLGW_BENCH_P99_MS (threshold of "throughput at fixed p99", default 50),
//! MLGW_BENCH_CUSTOMERS (loaded into both stores, default 100000),
//! MLGW_BENCH_HOT_KEYS (default 1000), MLGW_BENCH_WARMUP_S (unmeasured
//! closed-loop warm-up before each system, default 8),
//! MLGW_BENCH_FEAST_WORKERS (worker counts of the tuned `feast serve`, one
//! run each, default 2,4),
//! MLGW_BENCH_CASSANDRA=host:port (reuse a running Cassandra instead of
//! starting one with tests/rig/cassandra.sh; its CPU is read from
//! MLGW_BENCH_CASSANDRA_PID, else from the only CassandraDaemon running),
//! MLGW_BENCH_TOKEN (bearer token
//! for the gateway; default the dev token it prints). A full run takes
//! about 8–10 minutes on two cores.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use benches::demo::{Keys, customer_id, load_profiles, predict_request, profile};
use benches::demo::{model_row, row_request, write_csv, write_profiles};
use benches::grpc_client::{
    Bearer, DirectClient, GatewayClient, channels, direct_clients, gateway_clients,
};
use benches::knobs::{env_list, env_num, list_text};
use benches::load::{self, Call, Load, Measured, Outcome, WARMUP, closed_loop};
use benches::process::{
    GatewayProcess, GatewaySettings, ModelServer, gateway_config_with_definitions,
    machine_busy_seconds, python_venv, report_in_scratch, tail, terminate,
};
use benches::report::{Series, commit, latency_chart, machine, ms};
use feature_store::definitions::FeatureValue;
use feature_store::store::prelude::*;
use feature_store::store::{AnyStore, DynamicWrite};
use proto::inference as inf;
use rig::{OwnCassandra, workspace_root};
use tonic::transport::Channel;

#[path = "peer_feast/feast_grpc.rs"]
mod feast_grpc;

/// Callers share this many HTTP/2 connections to the gateway and to the
/// model-server, as a client pool would.
const CONNECTIONS: usize = 4;
/// Deadline of one whole call (the Feast pipeline: both requests together).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Rising steps multiply the rate by this.
const RISE: f64 = 1.5;
/// A step "blows up" past this many times the p99 threshold.
const BLOWN_FACTOR: f64 = 10.0;
/// The ten store features in the model's column order (view, feature).
const STORE_FEATURES: [(&str, &str); 10] = [
    ("customer_profile", "account_age_days"),
    ("customer_profile", "avg_txn_amount_30d"),
    ("customer_profile", "txn_count_30d"),
    ("customer_profile", "chargeback_count_1y"),
    ("customer_profile", "home_country_risk"),
    ("customer_activity", "txn_count_1h"),
    ("customer_activity", "txn_amount_sum_1h"),
    ("customer_activity", "distinct_merchants_24h"),
    ("customer_activity", "failed_auth_count_24h"),
    ("customer_activity", "minutes_since_last_txn"),
];

// ---------------------------------------------------------------------------
// Knobs

struct Knobs {
    seconds: f64,
    rates: Vec<f64>,
    max_rate: f64,
    p99_ms: f64,
    customers: u64,
    hot_keys: u64,
    warmup_s: f64,
    feast_workers: Vec<u64>,
    cassandra: Option<String>,
}

impl Knobs {
    fn from_env() -> Result<Self> {
        let knobs = Knobs {
            seconds: env_num("MLGW_BENCH_SECONDS", 4.0)?,
            rates: env_list("MLGW_BENCH_RATES", &[100.0, 200.0, 500.0, 1000.0, 2000.0])?,
            max_rate: env_num("MLGW_BENCH_MAX_RATE", 8000.0)?,
            p99_ms: env_num("MLGW_BENCH_P99_MS", 50.0)?,
            customers: env_num("MLGW_BENCH_CUSTOMERS", 100_000.0)? as u64,
            hot_keys: env_num("MLGW_BENCH_HOT_KEYS", 1000.0)? as u64,
            warmup_s: env_num("MLGW_BENCH_WARMUP_S", 8.0)?,
            feast_workers: env_list("MLGW_BENCH_FEAST_WORKERS", &[2.0, 4.0])?
                .into_iter()
                .map(|w| w as u64)
                .collect(),
            cassandra: std::env::var("MLGW_BENCH_CASSANDRA").ok(),
        };
        ensure!(
            knobs.seconds > 0.0
                && knobs.rates.iter().all(|r| *r > 0.0)
                && !knobs.rates.is_empty()
                && knobs.p99_ms > 0.0
                && knobs.hot_keys > 0
                && knobs.customers >= knobs.hot_keys
                && !knobs.feast_workers.is_empty()
                && knobs.feast_workers.iter().all(|w| *w > 0),
            "bad knobs: seconds, rates, p99, hot keys and workers must be positive, customers ≥ hot keys"
        );
        Ok(knobs)
    }
}

// ---------------------------------------------------------------------------
// The demo data both stores hold

/// The dynamic `customer_activity` values of customer `i`: txn_count_1h,
/// txn_amount_sum_1h, distinct_merchants_24h, failed_auth_count_24h,
/// minutes_since_last_txn (exact in binary, so CSV, parquet, Cassandra and
/// JSON carry them unchanged).
fn activity(i: u64) -> (i64, f64, i64, i64, f32) {
    (
        (i % 5) as i64,
        (i % 5) as f64 * 12.25,
        (i % 7) as i64,
        (i % 3) as i64,
        (i % 600) as f32 + 0.5,
    )
}

/// The ten store features of customer `i` as the model gets them (FP32).
fn store_row(i: u64) -> [f32; 10] {
    let p = profile(i);
    let (a, b, c, d, e) = activity(i);
    [
        p[0], p[1], p[2], p[3], p[4], a as f32, b as f32, c as f32, d as f32, e,
    ]
}

fn write_activity_csv(path: &Path, customers: u64) -> Result<()> {
    let rows = (0..customers).map(|i| {
        let (a, b, c, d, e) = activity(i);
        format!("{},{a},{b},{c},{d},{e}", customer_id(i))
    });
    write_csv(
        path,
        "customer_id,txn_count_1h,txn_amount_sum_1h,distinct_merchants_24h,failed_auth_count_24h,minutes_since_last_txn",
        rows,
    )
}

/// Writes every customer's activity into our store as stored values (event
/// time one minute ago, as load.py gives Feast), `PARALLEL` customers at a
/// time. The gateway serves them through [`stored_values_definitions`], so
/// it reads what Feast reads: one row of five values, no events.
async fn load_activity(store: &AnyStore, customers: u64) -> Result<f64> {
    const PARALLEL: u64 = 64;
    let started = Instant::now();
    let event_time = feature_store::store::now_micros() - Duration::from_secs(60);
    let expires_at = event_time + Duration::from_secs(48 * 3600);
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..PARALLEL {
        let store = store.clone();
        tasks.spawn(async move {
            let mut i = lane;
            while i < customers {
                let (a, b, c, d, e) = activity(i);
                let values = [
                    ("txn_count_1h".to_owned(), FeatureValue::Int64(a)),
                    ("txn_amount_sum_1h".to_owned(), FeatureValue::Float64(b)),
                    ("distinct_merchants_24h".to_owned(), FeatureValue::Int64(c)),
                    ("failed_auth_count_24h".to_owned(), FeatureValue::Int64(d)),
                    (
                        "minutes_since_last_txn".to_owned(),
                        FeatureValue::Float32(e),
                    ),
                ];
                let key = customer_id(i);
                store
                    .write_dynamic(DynamicWrite {
                        view: "customer_activity",
                        entity_key: &key,
                        values: &values,
                        event_time,
                        expires_at,
                    })
                    .await
                    .with_context(|| format!("writing the activity of {key}"))?;
                i += PARALLEL;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The example's fraud.toml with its windowed aggregates (and the event
/// stream that feeds them) taken out, written to `dir`: every feature of
/// `customer_activity` is then a stored value, read in one row as Feast
/// reads its view, which is the work compared here.
fn stored_values_definitions(dir: &Path) -> Result<PathBuf> {
    let shipped = workspace_root().join("feature-store/definitions/fraud.toml");
    let text = std::fs::read_to_string(&shipped)
        .with_context(|| format!("reading {}", shipped.display()))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            !line.starts_with("aggregate") && !line.starts_with("source = { kafka")
        })
        .collect();
    ensure!(
        kept.len() < text.lines().count(),
        "{} declares no aggregate any more; this bench's view change is stale",
        shipped.display()
    );
    let path = dir.join("fraud-stored-values.toml");
    std::fs::write(&path, kept.join("\n"))?;
    Ok(path)
}

// ---------------------------------------------------------------------------
// Cassandra

/// Ours (tests/rig/cassandra.sh, stopped on drop) or one given by
/// MLGW_BENCH_CASSANDRA (left alone).
struct Cassandra {
    addr: String,
    pid: Option<String>,
    _own: Option<OwnCassandra>,
}

impl Cassandra {
    async fn start(reuse: Option<&str>) -> Result<Self> {
        if let Some(addr) = reuse {
            return Ok(Cassandra {
                addr: addr.to_owned(),
                pid: std::env::var("MLGW_BENCH_CASSANDRA_PID")
                    .ok()
                    .or_else(find_cassandra_pid),
                _own: None,
            });
        }
        let mut own = OwnCassandra::start().await?;
        // Nothing of a benchmark's node is worth keeping.
        own.passed = true;
        let addr = own.address()?.trim().to_owned();
        let pid = std::fs::read_to_string(own.dir.join("cassandra.pid"))
            .ok()
            .map(|p| p.trim().to_owned());
        Ok(Cassandra {
            addr,
            pid,
            _own: Some(own),
        })
    }
}

/// The PID of the only CassandraDaemon on the machine, if exactly one runs.
fn find_cassandra_pid() -> Option<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains("CassandraDaemon")
        {
            found.push(name);
        }
    }
    (found.len() == 1).then(|| found.remove(0))
}

// ---------------------------------------------------------------------------
// CPU of process trees

/// (utime + stime + cutime + cstime) seconds and parent PID of `pid`.
fn stat_of(pid: &str) -> Option<(f64, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = (11..15)
        .map(|i| fields.get(i).and_then(|t| t.parse::<f64>().ok()))
        .sum::<Option<f64>>()?;
    Some((ticks / 100.0, (*fields.get(1)?).to_owned()))
}

/// CPU seconds of `pid` and all its live descendants, plus what their
/// exited and reaped children used (gunicorn restarts its workers).
fn tree_cpu(pid: &str) -> f64 {
    let mut parents: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Some((secs, ppid)) = stat_of(&name) {
                parents.entry(ppid).or_default().push(name.clone());
                cpu.insert(name, secs);
            }
        }
    }
    let mut total = 0.0;
    let mut todo = vec![pid.to_owned()];
    while let Some(p) = todo.pop() {
        total += cpu.get(&p).copied().unwrap_or(0.0);
        if let Some(children) = parents.get(&p) {
            todo.extend(children.iter().cloned());
        }
    }
    total
}

/// The processes whose CPU time a step reads.
struct Probe {
    /// (name, PID, whole tree?) — the bench itself is not a tree (its
    /// children are the servers).
    pids: Vec<(&'static str, String, bool)>,
}

impl Probe {
    fn read(&self) -> Vec<f64> {
        self.pids
            .iter()
            .map(|(_, pid, tree)| {
                if *tree {
                    tree_cpu(pid)
                } else {
                    benches::process::cpu_seconds(pid).unwrap_or(f64::NAN)
                }
            })
            .collect()
    }
}

/// CPU µs per call by process, and the machine's busy cores.
#[derive(Clone, Debug, Default)]
struct Cpu {
    per_call_us: Vec<(&'static str, f64)>,
    machine_cores: f64,
}

impl Cpu {
    fn of(&self, name: &str) -> Option<f64> {
        self.per_call_us
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

// ---------------------------------------------------------------------------
// The targets

enum Target {
    /// Our gateway's gRPC Predict.
    Gateway {
        clients: Vec<GatewayClient>,
        keys: Keys,
    },
    /// Feast's online features, then ModelInfer.
    Feast {
        client: FeastClient,
        models: Vec<DirectClient>,
        keys: Keys,
    },
}

/// How the pipeline asks Feast for a customer's features.
#[derive(Clone)]
enum FeastClient {
    /// `POST {url}` (`/get-online-features` of `feast serve`).
    Http { http: reqwest::Client, url: String },
    /// `GetOnlineFeatures` of `feast listen`, one channel per connection.
    Grpc { channels: Vec<Channel> },
}

impl FeastClient {
    async fn features(&self, conn: usize, customer: u64) -> Result<[f32; 10], FeastError> {
        match self {
            FeastClient::Http { http, url } => feast_features(http, url, customer).await,
            FeastClient::Grpc { channels } => {
                feast_grpc::features(&channels[conn % channels.len()], customer).await
            }
        }
    }
}

/// What went wrong in one Feast pipeline call, as a failure code.
fn feast_failure(e: &FeastError) -> Outcome {
    match e {
        FeastError::Status(s) => Outcome::failed(format!("feast {s}")),
        FeastError::Transport => Outcome::failed("feast transport"),
        FeastError::Body(_) => Outcome::failed("feast body"),
        FeastError::Missing(_) => Outcome::failed("feast not found"),
        FeastError::Grpc(code) => Outcome::failed(format!("feast {code:?}")),
    }
}

#[derive(Debug)]
enum FeastError {
    /// Not a 2xx answer.
    Status(u16),
    /// No answer.
    Transport,
    /// An answer that is not what `/get-online-features` returns.
    Body(String),
    /// A feature without a value for the customer.
    Missing(String),
    /// A gRPC status other than OK.
    Grpc(tonic::Code),
}

impl std::fmt::Display for FeastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeastError::Status(s) => write!(f, "HTTP {s}"),
            FeastError::Transport => write!(f, "no answer"),
            FeastError::Body(m) => write!(f, "unexpected answer: {m}"),
            FeastError::Missing(m) => write!(f, "no value: {m}"),
            FeastError::Grpc(code) => write!(f, "gRPC {code:?}"),
        }
    }
}

/// The body of `/get-online-features` for one customer, the ten features
/// in the model's order.
fn feast_body(customer: u64) -> String {
    let features: Vec<String> = STORE_FEATURES
        .iter()
        .map(|(v, f)| format!("\"{v}:{f}\""))
        .collect();
    format!(
        r#"{{"features":[{}],"entities":{{"customer_id":["{}"]}}}}"#,
        features.join(","),
        customer_id(customer)
    )
}

/// The ten values of Feast's answer, by feature name in the model's order
/// (Feast's answer has one column per feature, `metadata.feature_names`
/// naming them, and a status per value).
fn parse_feast(body: &[u8]) -> Result<[f32; 10], FeastError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| FeastError::Body(e.to_string()))?;
    let names = v["metadata"]["feature_names"]
        .as_array()
        .ok_or_else(|| FeastError::Body("no metadata.feature_names".into()))?;
    let results = v["results"]
        .as_array()
        .ok_or_else(|| FeastError::Body("no results".into()))?;
    let mut row = [0f32; 10];
    for (slot, (_, feature)) in row.iter_mut().zip(STORE_FEATURES) {
        let col = names
            .iter()
            .position(|n| n.as_str() == Some(feature))
            .ok_or_else(|| FeastError::Body(format!("no column {feature}")))?;
        let cell = &results[col];
        if cell["statuses"][0].as_str() != Some("PRESENT") {
            return Err(FeastError::Missing(format!(
                "{feature}: {}",
                cell["statuses"][0]
            )));
        }
        *slot = cell["values"][0]
            .as_f64()
            .ok_or_else(|| FeastError::Body(format!("{feature} is not a number")))?
            as f32;
    }
    Ok(row)
}

async fn feast_features(
    http: &reqwest::Client,
    url: &str,
    customer: u64,
) -> Result<[f32; 10], FeastError> {
    let resp = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(feast_body(customer))
        .send()
        .await
        .map_err(|_| FeastError::Transport)?;
    if !resp.status().is_success() {
        return Err(FeastError::Status(resp.status().as_u16()));
    }
    let bytes = resp.bytes().await.map_err(|_| FeastError::Transport)?;
    parse_feast(&bytes)
}

/// The model-server request of call `k` with the store features `store`:
/// the same row the gateway assembles (request features of
/// `benches::demo::request_values`, merchant_category_risk defaulted).
fn pipeline_request(store: &[f32; 10], k: u64) -> inf::ModelInferRequest {
    row_request("", &model_row(store, k))
}

/// P(fraud) from a model-server answer.
fn fraud_probability(resp: &inf::ModelInferResponse) -> Option<f64> {
    let idx = resp
        .outputs
        .iter()
        .position(|o| o.name == "probabilities")?;
    let raw = resp.raw_output_contents.get(idx)?;
    let bytes: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
    Some(f64::from(f32::from_le_bytes(bytes)))
}

impl Target {
    /// One Feast pipeline call; its P(fraud) when it worked.
    async fn pipeline(
        client: &FeastClient,
        conn: usize,
        model: &DirectClient,
        customer: u64,
        k: u64,
    ) -> Result<f64, Outcome> {
        let row = client
            .features(conn, customer)
            .await
            .map_err(|e| feast_failure(&e))?;
        let mut request = tonic::Request::new(pipeline_request(&row, k));
        request.set_timeout(CALL_TIMEOUT);
        let result = model.clone().model_infer(request).await;
        match result {
            Ok(r) => fraud_probability(r.get_ref()).ok_or_else(|| Outcome::failed("model output")),
            Err(s) => Err(Outcome::from_grpc::<()>(&Err(s))),
        }
    }
}

impl Call for Target {
    async fn call(&self, k: u64) -> Outcome {
        let conn = (k as usize) % CONNECTIONS;
        match self {
            Target::Gateway { clients, keys } => {
                let mut request = tonic::Request::new(predict_request(keys.customer(k), k));
                request.set_timeout(CALL_TIMEOUT);
                Outcome::from_grpc(&clients[conn].clone().predict(request).await)
            }
            Target::Feast {
                client,
                models,
                keys,
            } => {
                let call = Target::pipeline(client, conn, &models[conn], keys.customer(k), k);
                match tokio::time::timeout(CALL_TIMEOUT, call).await {
                    Ok(Ok(_)) => Outcome::Ok,
                    Ok(Err(outcome)) => outcome,
                    Err(_) => Outcome::failed("DeadlineExceeded"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// feast serve

/// How Feast serves online features.
enum FeastFront {
    /// `feast serve` (FastAPI under gunicorn, HTTP/1.1 JSON) with these
    /// extra arguments.
    Http(Vec<String>),
    /// `feast listen`: its gRPC feature server (one process, a thread pool
    /// of 10 by default).
    Grpc,
}

/// Feast's server as a child in a process group of its own (gunicorn and
/// its workers), stopped with SIGTERM to the group; SIGKILL on drop.
struct FeastServer {
    child: tokio::process::Child,
    pgid: Option<u32>,
    url: String,
    grpc: bool,
    log: PathBuf,
}

impl FeastServer {
    async fn start(
        feast: &Path,
        repo: &Path,
        env: &[(&str, String)],
        front: &FeastFront,
        log: PathBuf,
    ) -> Result<Self> {
        let port = benches::process::free_port()?;
        let out = std::fs::File::create(&log)?;
        let mut cmd = tokio::process::Command::new(feast);
        cmd.arg("-c").arg(repo);
        match front {
            FeastFront::Http(args) => {
                cmd.args(["serve", "-h", "127.0.0.1", "-p", &port.to_string()])
                    .args(args);
            }
            FeastFront::Grpc => {
                cmd.args(["listen", "-a", &format!("127.0.0.1:{port}")]);
            }
        }
        cmd.stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", feast.display()))?;
        let pgid = child.id();
        let url = format!("http://127.0.0.1:{port}");
        let grpc = matches!(front, FeastFront::Grpc);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "feast exited ({status}) before answering; log tail:\n{}",
                    tail(&log)
                );
            }
            let up = if grpc {
                // Up once it answers a read (it has no other probe we use).
                match Channel::from_shared(url.clone())?.connect().await {
                    Ok(ch) => feast_grpc::features(&ch, 0).await.is_ok(),
                    Err(_) => false,
                }
            } else {
                http.get(format!("{url}/health"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            };
            if up {
                break;
            }
            if Instant::now() > deadline {
                let server = FeastServer {
                    child,
                    pgid,
                    url,
                    grpc,
                    log,
                };
                let log_tail = tail(&server.log);
                drop(server);
                bail!("feast did not answer in 120 s; log tail:\n{log_tail}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(FeastServer {
            child,
            pgid,
            url,
            grpc,
            log,
        })
    }

    /// A client of this server: `CONNECTIONS` channels for gRPC, the shared
    /// HTTP/1.1 pool otherwise.
    async fn client(&self, http: &reqwest::Client) -> Result<FeastClient> {
        Ok(if self.grpc {
            FeastClient::Grpc {
                channels: channels(&self.url, CONNECTIONS).await?,
            }
        } else {
            FeastClient::Http {
                http: http.clone(),
                url: format!("{}/get-online-features", self.url),
            }
        })
    }

    fn pid(&self) -> Result<String> {
        Ok(self.child.id().context("feast has exited")?.to_string())
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(pgid) = self.pgid {
            let group = format!("-{pgid}");
            terminate(&mut self.child, &["--", &group], Duration::from_secs(15)).await?;
        }
        Ok(())
    }
}

impl Drop for FeastServer {
    fn drop(&mut self) {
        // The group: gunicorn's workers too. Harmless once they are gone.
        if let Some(pgid) = self.pgid {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The Feast venv (tests/rig/python-venv.sh): (python, feast CLI).
async fn feast_venv() -> Result<(PathBuf, PathBuf)> {
    let python = python_venv(
        "feast-venv",
        "benches/peers/feast/requirements.txt",
        "import feast, cassandra, pandas, grpc",
    )
    .await?;
    let feast = python.with_file_name("feast");
    ensure!(feast.is_file(), "{} is missing", feast.display());
    Ok((python, feast))
}

/// Runs a venv command with the Feast environment; fails with its output.
fn run_logged(program: &Path, args: &[&str], env: &[(&str, String)], what: &str) -> Result<f64> {
    let started = Instant::now();
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "{what} failed ({}); last lines:\n{}",
            out.status,
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("{what}: {secs:.1} s");
    Ok(secs)
}

// ---------------------------------------------------------------------------
// Steps

struct Step {
    system: String,
    rate: f64,
    m: Measured,
    cpu: Cpu,
}

impl Step {
    /// Within the threshold: p99 ≤ `p99_ms`, < 0.1% failed or shed, ≥ 95%
    /// of the offered rate achieved.
    fn good(&self, p99_ms: f64) -> bool {
        self.m.ok > 0
            && self.m.p_ms(0.99) <= p99_ms
            && self.m.unanswered_share() < 0.001
            && self.m.achieved >= 0.95 * self.rate
    }

    /// Past saving: p99 beyond 10× the threshold, > 1% failed, or < 90%
    /// achieved.
    fn blown(&self, p99_ms: f64) -> bool {
        self.m.ok == 0
            || self.m.p_ms(0.99) > BLOWN_FACTOR * p99_ms
            || self.m.unanswered_share() > 0.01
            || self.m.achieved < 0.9 * self.rate
    }
}

struct Runner {
    seconds: f64,
    p99_ms: f64,
    probe: Probe,
    steps: Vec<Step>,
}

impl Runner {
    async fn step(&mut self, system: &str, target: &Arc<Target>, rate: f64) -> Result<usize> {
        let before = self.probe.read();
        let (machine0, wall0) = (machine_busy_seconds(), Instant::now());
        let m = load::run(target, Load::Open { rate }, self.seconds).await?;
        let after = self.probe.read();
        let machine_cores = (machine_busy_seconds() - machine0) / wall0.elapsed().as_secs_f64();
        let calls = m.completed_all.max(1) as f64;
        let cpu = Cpu {
            per_call_us: self
                .probe
                .pids
                .iter()
                .zip(before.iter().zip(&after))
                .map(|((name, _, _), (b, a))| (*name, (a - b) / calls * 1e6))
                .collect(),
            machine_cores,
        };
        let step = Step {
            system: system.to_owned(),
            rate,
            m,
            cpu,
        };
        eprintln!(
            "{system:<28} {rate:>6.0}/s  {}  shed {} errors {}  cores {:.2}",
            step.m.summary(),
            step.m.shed,
            step.m.errors_text(),
            step.cpu.machine_cores,
        );
        self.steps.push(step);
        // Let the queues drain before the next step.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(self.steps.len() - 1)
    }

    /// The listed rates, then ×1.5 up to `max_rate`, until a step blows up;
    /// then two bisection steps between the best good rate and the first
    /// rate that was not good.
    async fn rising(
        &mut self,
        system: &str,
        target: &Arc<Target>,
        rates: &[f64],
        max_rate: f64,
    ) -> Result<()> {
        let mut rate_list = rates.to_vec();
        let mut next = rates.last().copied().unwrap_or(100.0) * RISE;
        while next <= max_rate {
            rate_list.push(next.round());
            next *= RISE;
        }
        let (mut good, mut bad): (Option<f64>, Option<f64>) = (None, None);
        for rate in rate_list {
            let i = self.step(system, target, rate).await?;
            let s = &self.steps[i];
            if s.good(self.p99_ms) {
                good = Some(rate);
            } else if bad.is_none() {
                bad = Some(rate);
            }
            if s.blown(self.p99_ms) {
                break;
            }
        }
        // Bisect between the best good rate (or 0) and the first not-good
        // rate above it.
        let mut lo = good.unwrap_or(0.0);
        let mut hi = match bad {
            Some(b) if b > lo => b,
            _ => return Ok(()),
        };
        for _ in 0..2 {
            let mid = ((lo + hi) / 2.0).round();
            if mid <= lo || mid >= hi {
                break;
            }
            let i = self.step(system, target, mid).await?;
            if self.steps[i].good(self.p99_ms) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(())
    }

    /// Highest rate of `system` whose step was good.
    fn throughput(&self, system: &str) -> Option<f64> {
        self.steps
            .iter()
            .filter(|s| s.system == system && s.good(self.p99_ms))
            .map(|s| s.rate)
            .fold(None, |a: Option<f64>, r| Some(a.map_or(r, |a| a.max(r))))
    }

    fn at(&self, system: &str, rate: f64) -> Option<&Step> {
        self.steps
            .iter()
            .find(|s| s.system == system && (s.rate - rate).abs() < 0.5)
    }
}

// ---------------------------------------------------------------------------
// Checks before measuring

/// Feast's values for a few customers equal the loaded ones, and (given a
/// gateway) the gateway's P(fraud) equals the Feast pipeline's for the same
/// calls.
async fn check_same_answers(
    gateway: Option<&GatewayClient>,
    client: &FeastClient,
    model: &DirectClient,
    customers: u64,
) -> Result<usize> {
    let picks = [0, 1, 42, 4242 % customers, customers / 2, customers - 1];
    for (n, &c) in picks.iter().enumerate() {
        let got = client
            .features(n, c)
            .await
            .map_err(|e| anyhow::anyhow!("Feast read of {}: {e}", customer_id(c)))?;
        let want = store_row(c);
        if got != want {
            bail!(
                "Feast returns other values than were loaded for {}:\n  feast  {got:?}\n  loaded {want:?}",
                customer_id(c)
            );
        }
        let Some(gateway) = gateway else { continue };
        let k = 7_000_000 + n as u64;
        let ours = gateway
            .clone()
            .predict(predict_request(c, k))
            .await
            .with_context(|| format!("gateway predict for {}", customer_id(c)))?
            .into_inner();
        let ours_p = ours
            .outputs
            .iter()
            .find(|o| o.name == "probabilities")
            .and_then(|o| o.values.get(1).copied())
            .context("the gateway's answer has no probabilities")?;
        let theirs = Target::pipeline(client, n, model, c, k)
            .await
            .map_err(|o| {
                anyhow::anyhow!("the Feast pipeline failed for {}: {o:?}", customer_id(c))
            })?;
        if (ours_p - theirs).abs() > 1e-6 {
            bail!(
                "P(fraud) differs for {} call {k}: gateway {ours_p}, Feast pipeline {theirs} (the feature rows differ)",
                customer_id(c)
            );
        }
    }
    Ok(picks.len())
}

// ---------------------------------------------------------------------------
// main

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    report_in_scratch("peer_feast", run).await
}

async fn run(scratch: PathBuf) -> Result<String> {
    let (knobs, scratch) = (&Knobs::from_env()?, scratch.as_path());
    let root = workspace_root();
    let (python, feast) = feast_venv().await?;
    let cassandra = Cassandra::start(knobs.cassandra.as_deref()).await?;
    let (host, port) = cassandra
        .addr
        .rsplit_once(':')
        .context("the Cassandra address is not host:port")?;
    let tag = std::process::id();
    let keyspace = format!("bench_pf_{tag}");
    let feast_keyspace = format!("bench_pf_feast_{tag}");
    let feast_data = scratch.join("feast");
    std::fs::create_dir_all(&feast_data)?;
    let feast_env = vec![
        ("MLGW_FEAST_DATA", feast_data.display().to_string()),
        ("MLGW_FEAST_CASSANDRA_HOST", host.to_owned()),
        ("MLGW_FEAST_CASSANDRA_PORT", port.to_owned()),
        ("MLGW_FEAST_KEYSPACE", feast_keyspace.clone()),
    ];
    let repo = root.join("benches/peers/feast/feature_repo");

    // --- the same customers into both stores ------------------------------
    let store = benches::cassandra::store(&cassandra.addr, keyspace.clone()).await?;
    let ours_profiles_s = load_profiles(&store, knobs.customers, scratch).await?;
    let ours_activity_s = load_activity(&store, knobs.customers).await?;
    drop(store);
    eprintln!(
        "our store: {} profiles in {ours_profiles_s:.1} s, activity in {ours_activity_s:.1} s",
        knobs.customers
    );
    let profiles_csv = scratch.join("profiles.csv");
    let activity_csv = scratch.join("activity.csv");
    write_profiles(&profiles_csv, knobs.customers)?;
    write_activity_csv(&activity_csv, knobs.customers)?;
    let load_py = root.join("benches/peers/feast/load.py");
    let repo_arg = repo.display().to_string();
    let csv_s = run_logged(
        &python,
        &[
            &load_py.display().to_string(),
            &profiles_csv.display().to_string(),
            &activity_csv.display().to_string(),
            &feast_data.display().to_string(),
        ],
        &feast_env,
        "feast: load.py (parquet, keyspace)",
    )?;
    let apply_s = run_logged(
        &feast,
        &["-c", &repo_arg, "apply"],
        &feast_env,
        "feast apply",
    )?;
    let now = chrono_like_now();
    let materialize_s = run_logged(
        &feast,
        &["-c", &repo_arg, "materialize", &now.0, &now.1],
        &feast_env,
        "feast materialize",
    )?;

    // --- the servers --------------------------------------------------------
    let repository = root.join("model-server/models");
    let model_server = ModelServer::start(&repository, scratch.join("model-server.log")).await?;
    let ms_pid = model_server
        .pid()
        .context("the model-server is not running")?;
    let model_clients = direct_clients(&channels(&model_server.grpc_url(), CONNECTIONS).await?);
    let config = gateway_config_with_definitions(
        scratch,
        &stored_values_definitions(scratch)?,
        &GatewaySettings {
            model_grpc: &model_server.grpc_url(),
            store: &format!(
                "[store]\nbackend = \"scylla\"\nnodes = [\"{}\"]\nkeyspace = \"{keyspace}\"",
                cassandra.addr
            ),
            max_concurrent: 256,
            model_extra: "",
            extra: "",
        },
        "",
    )?;
    let gateway = GatewayProcess::start(&config, scratch.join("gateway.log")).await?;
    let bearer = Bearer::new(&gateway.banner)?;
    let gw_clients = gateway_clients(&channels(&gateway.grpc, CONNECTIONS).await?, &bearer);
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .timeout(CALL_TIMEOUT)
        .build()?;

    // Feast's serving knobs: gunicorn workers (its HTTP server is
    // synchronous per worker, so more workers than cores can overlap
    // Cassandra waits), no access log, no worker restarts.
    let mut feast_systems: Vec<(String, FeastFront)> =
        vec![("Feast default".into(), FeastFront::Http(Vec::new()))];
    for workers in &knobs.feast_workers {
        feast_systems.push((
            format!("Feast tuned, {workers} workers"),
            FeastFront::Http(vec![
                "-w".into(),
                workers.to_string(),
                "--no-access-log".into(),
                "--max-requests".into(),
                "0".into(),
            ]),
        ));
    }
    feast_systems.push(("Feast gRPC (feast listen)".into(), FeastFront::Grpc));

    // Check the answers before measuring anything (default server).
    let feast_server = FeastServer::start(
        &feast,
        &repo,
        &feast_env,
        &FeastFront::Http(Vec::new()),
        scratch.join("feast-check.log"),
    )
    .await?;
    let checked = check_same_answers(
        Some(&gw_clients[0]),
        &feast_server.client(&http).await?,
        &model_clients[0],
        knobs.customers,
    )
    .await?;
    feast_server.stop().await?;
    eprintln!("checked {checked} customers: Feast's values and both P(fraud) agree");

    let base_pids = |extra: Vec<(&'static str, String, bool)>| {
        let mut pids = vec![("model-server", ms_pid.clone(), false)];
        if let Some(pid) = &cassandra.pid {
            pids.push(("cassandra", pid.clone(), false));
        }
        pids.push(("client", std::process::id().to_string(), false));
        pids.extend(extra);
        pids
    };
    let mut runner = Runner {
        seconds: knobs.seconds,
        p99_ms: knobs.p99_ms,
        probe: Probe { pids: Vec::new() },
        steps: Vec::new(),
    };

    // --- ours ---------------------------------------------------------------
    runner.probe = Probe {
        pids: base_pids(vec![("gateway", gateway.pid()?, false)]),
    };
    let hot = Arc::new(Target::Gateway {
        clients: gw_clients.clone(),
        keys: Keys::Hot {
            count: knobs.hot_keys,
        },
    });
    closed_loop(Arc::clone(&hot), 16, None, knobs.warmup_s).await?;
    let ours_hit = "ours, cache hit";
    runner
        .rising(ours_hit, &hot, &knobs.rates, knobs.max_rate)
        .await?;
    let fresh = Arc::new(Target::Gateway {
        clients: gw_clients.clone(),
        keys: Keys::fresh(knobs.customers),
    });
    closed_loop(Arc::clone(&fresh), 16, None, knobs.warmup_s).await?;
    let ours_miss = "ours, cache miss";
    runner
        .rising(ours_miss, &fresh, &knobs.rates, knobs.max_rate)
        .await?;
    drop((hot, fresh, gw_clients));
    gateway.stop().await?;

    // --- Feast ------------------------------------------------------------
    for (n, (name, front)) in feast_systems.iter().enumerate() {
        let server = FeastServer::start(
            &feast,
            &repo,
            &feast_env,
            front,
            scratch.join(format!("feast-{n}.log")),
        )
        .await?;
        let client = server.client(&http).await?;
        check_same_answers(None, &client, &model_clients[0], knobs.customers)
            .await
            .with_context(|| format!("{name}: its answers"))?;
        runner.probe = Probe {
            pids: base_pids(vec![("feast", server.pid()?, true)]),
        };
        let target = Arc::new(Target::Feast {
            client,
            models: model_clients.clone(),
            keys: Keys::fresh(knobs.customers),
        });
        if let Some(code) = target.call(0).await.failure() {
            bail!(
                "a first Feast pipeline call failed with {code}; feast log tail:\n{}",
                tail(&server.log)
            );
        }
        closed_loop(Arc::clone(&target), 16, None, knobs.warmup_s).await?;
        runner
            .rising(name, &target, &knobs.rates, knobs.max_rate)
            .await?;
        drop(target);
        server.stop().await?;
    }
    drop(model_server);

    let versions = versions(&python, &feast)?;
    let setup = Setup {
        ours_profiles_s,
        ours_activity_s,
        feast_load_s: csv_s + apply_s + materialize_s,
        materialize_s,
        checked,
        versions,
        cassandra_reused: knobs.cassandra.is_some(),
    };
    let names: Vec<String> = [ours_hit.to_owned(), ours_miss.to_owned()]
        .into_iter()
        .chain(feast_systems.iter().map(|(n, _)| n.clone()))
        .collect();
    let report = report(&runner, knobs, &names, &setup)?;
    let dir = root.join("benches/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("peer_feast.md"), &report)?;
    std::fs::write(
        dir.join("peer_feast.svg"),
        svg(&runner, &names, knobs.p99_ms),
    )?;
    Ok(report)
}

/// (two days ago, now) as ISO-8601 UTC for `feast materialize`.
fn chrono_like_now() -> (String, String) {
    let now = SystemTime::now();
    let iso = |t: SystemTime| {
        feature_store::clock::utc(t)
            .trim_end_matches('Z')
            .to_owned()
    };
    (
        iso(now - Duration::from_secs(2 * 86_400)),
        iso(now + Duration::from_secs(60)),
    )
}

struct Setup {
    ours_profiles_s: f64,
    ours_activity_s: f64,
    feast_load_s: f64,
    materialize_s: f64,
    checked: usize,
    versions: String,
    cassandra_reused: bool,
}

fn versions(python: &Path, _feast: &Path) -> Result<String> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys, feast, cassandra, gunicorn, uvicorn; print(f'Feast {feast.__version__}, cassandra-driver {cassandra.__version__}, gunicorn {gunicorn.__version__}, uvicorn {uvicorn.__version__}, Python {sys.version.split()[0]}')",
        ])
        .output()?;
    ensure!(out.status.success(), "cannot read the Feast versions");
    let commit = commit();
    Ok(format!(
        "{}; Cassandra 5.0.9 (tests/rig/cassandra.sh); mlgw at {commit}",
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

// ---------------------------------------------------------------------------
// Report

fn cpu_cell(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite())
        .map_or("-".into(), |v| format!("{v:.0}"))
}

fn report(runner: &Runner, knobs: &Knobs, names: &[String], setup: &Setup) -> Result<String> {
    let (cores, cpu) = machine();
    let mut r = String::new();
    writeln!(
        r,
        "# Peer benchmark: our gateway vs the Feast feature server + a model call\n"
    )?;
    // Every knob that was set, so the command reproduces the run.
    let mut cmd = String::new();
    for var in [
        "MLGW_BENCH_SECONDS",
        "MLGW_BENCH_RATES",
        "MLGW_BENCH_MAX_RATE",
        "MLGW_BENCH_P99_MS",
        "MLGW_BENCH_CUSTOMERS",
        "MLGW_BENCH_HOT_KEYS",
        "MLGW_BENCH_WARMUP_S",
        "MLGW_BENCH_FEAST_WORKERS",
        "MLGW_BENCH_CASSANDRA",
    ] {
        if let Ok(v) = std::env::var(var) {
            let _ = write!(cmd, "{var}={v} ");
        }
    }
    writeln!(
        r,
        "Command: `cargo build --release -p model-server -p gateway && {cmd}cargo bench -p benches --bench peer_feast`\n"
    )?;
    writeln!(
        r,
        "Machine: {cores} cores ({cpu}), shared by everything: Cassandra, the model-server, the gateway or `feast serve`, and the load generator. Versions: {}.\n",
        setup.versions
    )?;
    writeln!(
        r,
        "## Setup\n\n\
         - **Work per prediction, both systems:** the 5 features of the static view `customer_profile` and the 5 of the dynamic view `customer_activity` of one customer from a single-node Cassandra 5.0{reuse}, plus 5 request-time features, then `fraud_detector` on this project's model-server (the same process for both, 4 HTTP/2 connections).\n\
         - **Ours:** gRPC `Predict` to the release gateway (Cassandra backend, keyspace of its own, shipped cache settings: row cache for static rows, dynamic view read on every call; its definitions are the example's without the windowed aggregates, so `customer_activity` is one stored row as in Feast; max_concurrent_requests 256, prediction log on — it also writes every prediction to Cassandra, which the Feast pipeline does not). *Cache hit:* {hot} hot customers, warmed. *Cache miss:* customer IDs never repeated (static read from Cassandra too).\n\
         - **Feast pipeline:** `POST /get-online-features` (the 10 features, JSON, HTTP/1.1 keep-alive, reqwest) to `feast serve` (Cassandra online store, token-aware, protocol v5, keyspace of its own), then V2 `ModelInfer` with the 10 values + 5 request features; answered when both are done. Feast has no row cache: every call reads both views from Cassandra, so hit and miss are the same work for it (run on never-repeated IDs). *Default:* `feast serve` as it starts (1 worker, access log on, `--max-requests 1000`: gunicorn restarts the worker every ~1,000 requests). *Tuned:* `-w N --no-access-log --max-requests 0` for N in {workers}: N workers, no access log, no worker restarts. *gRPC:* `feast listen`, Feast's gRPC feature server (`GrpcFeatureServer/GetOnlineFeatures`, protobuf, 4 HTTP/2 connections; one process with its default pool of 10 threads). Feast's Go feature server (it has a Cassandra online store too) is not tried: it is built from Feast's Go module, which the module proxy this machine reaches does not serve.\n\
         - **Same data:** {customers} customers, the gateway's through its refresh run ({:.1} s) and `write_dynamic` (the five activity values; {:.1} s), Feast's from parquet made from the same values (benches/peers/feast/load.py), `feast apply`, `feast materialize` ({:.1} s of {:.1} s in all). Checked before measuring: Feast's 10 values for {} customers equal the loaded ones, and the gateway's P(fraud) equals the Feast pipeline's for the same calls.\n\
         - **Load:** open loop (each call sent at its intended time, latency from then), {:.0} s measured per step after {:.1} s warm-up, the same rates for every system ({}), then ×{RISE} until a step blows up (p99 > {:.0} ms, > 1% failed, or < 90% achieved), then two bisection steps. Deadline 2 s per call. {:.0} s closed-loop warm-up (16 callers) before each system. CPU per call from /proc (`feast` = the gunicorn master and its workers).\n",
        setup.ours_profiles_s,
        setup.ours_activity_s,
        setup.materialize_s,
        setup.feast_load_s,
        setup.checked,
        knobs.seconds,
        WARMUP.as_secs_f64(),
        list_text(&knobs.rates),
        BLOWN_FACTOR * knobs.p99_ms,
        knobs.warmup_s,
        reuse = if setup.cassandra_reused {
            " (reused)"
        } else {
            " started by tests/rig/cassandra.sh"
        },
        hot = knobs.hot_keys,
        workers = list_text(
            &knobs
                .feast_workers
                .iter()
                .map(|w| *w as f64)
                .collect::<Vec<_>>()
        ),
        customers = knobs.customers,
    )?;

    writeln!(r, "## Throughput at p99 ≤ {:.0} ms\n", knobs.p99_ms)?;
    writeln!(
        r,
        "Highest offered rate whose step had p99 ≤ {:.0} ms, < 0.1% failed or shed, and ≥ 95% of the rate achieved.\n",
        knobs.p99_ms
    )?;
    writeln!(
        r,
        "| system | req/s at p99 ≤ {:.0} ms | p99 there, ms | CPU µs/call there (gateway or feast / model-server / cassandra / client) |",
        knobs.p99_ms
    )?;
    writeln!(r, "| --- | ---: | ---: | --- |")?;
    for name in names {
        let t = runner.throughput(name);
        let s = t.and_then(|t| runner.at(name, t));
        let front = s.and_then(|s| s.cpu.of("gateway").or_else(|| s.cpu.of("feast")));
        writeln!(
            r,
            "| {name} | {} | {} | {} |",
            t.map_or("none".into(), |t| format!("{t:.0}")),
            s.map_or("-".into(), |s| ms(s.m.p_ms(0.99))),
            s.map_or("-".into(), |s| format!(
                "{} / {} / {} / {}",
                cpu_cell(front),
                cpu_cell(s.cpu.of("model-server")),
                cpu_cell(s.cpu.of("cassandra")),
                cpu_cell(s.cpu.of("client"))
            )),
        )?;
    }
    writeln!(r)?;

    writeln!(r, "## Every step\n")?;
    writeln!(
        r,
        "| system | offered req/s | achieved | p50 ms | p99 ms | p999 ms | shed | errors | CPU µs/call front | model-server | cassandra | client | machine cores busy |"
    )?;
    writeln!(
        r,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for name in names {
        let mut steps: Vec<&Step> = runner.steps.iter().filter(|s| &s.system == name).collect();
        steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        for s in steps {
            let front = s.cpu.of("gateway").or_else(|| s.cpu.of("feast"));
            writeln!(
                r,
                "| {name} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                s.rate,
                s.m.latency_cells(),
                s.m.shed,
                s.m.errors_text(),
                cpu_cell(front),
                cpu_cell(s.cpu.of("model-server")),
                cpu_cell(s.cpu.of("cassandra")),
                cpu_cell(s.cpu.of("client")),
                s.cpu.machine_cores,
            )?;
        }
    }
    writeln!(r)?;
    writeln!(r, "{}", summary(runner, names, knobs))?;
    Ok(r)
}

/// The ratios for the closing note: ours against the better Feast setting.
fn summary(runner: &Runner, names: &[String], knobs: &Knobs) -> String {
    let mut s = String::from("## Ours against Feast (computed)\n\n");
    let feast: Vec<&String> = names.iter().filter(|n| n.starts_with("Feast")).collect();
    let best_feast = feast
        .iter()
        .filter_map(|n| runner.throughput(n).map(|t| (*n, t)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    for ours in names.iter().filter(|n| n.starts_with("ours")) {
        let t = runner.throughput(ours);
        match (t, best_feast) {
            (Some(t), Some((f, ft))) if ft > 0.0 => {
                let _ = writeln!(
                    s,
                    "- {ours}: {t:.0} req/s at p99 ≤ {:.0} ms, {:.1}× {f} ({ft:.0} req/s).",
                    knobs.p99_ms,
                    t / ft
                );
            }
            (Some(t), None) => {
                let _ = writeln!(
                    s,
                    "- {ours}: {t:.0} req/s at p99 ≤ {:.0} ms; no Feast setting met the threshold at any rate.",
                    knobs.p99_ms
                );
            }
            _ => {
                let _ = writeln!(s, "- {ours}: did not meet the threshold.");
            }
        }
        for f in &feast {
            for rate in &knobs.rates {
                if let (Some(a), Some(b)) = (runner.at(ours, *rate), runner.at(f, *rate))
                    && a.m.ok > 0
                    && b.m.ok > 0
                {
                    let _ = writeln!(
                        s,
                        "  - at {rate:.0} req/s: p99 {} ms vs {} ms for {f} ({:.1}× lower), p50 {} vs {} ms",
                        ms(a.m.p_ms(0.99)),
                        ms(b.m.p_ms(0.99)),
                        b.m.p_ms(0.99) / a.m.p_ms(0.99),
                        ms(a.m.p_ms(0.5)),
                        ms(b.m.p_ms(0.5)),
                    );
                }
            }
        }
    }
    s
}

fn svg(runner: &Runner, names: &[String], p99_ms: f64) -> String {
    const COLORS: [&str; 6] = [
        "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let mut series = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut steps: Vec<&Step> = runner
            .steps
            .iter()
            .filter(|s| &s.system == name && s.m.ok > 0)
            .collect();
        steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let color = COLORS[i % COLORS.len()];
        series.push(Series {
            label: format!("{name} p99"),
            color,
            dashed: false,
            line: true,
            points: steps.iter().map(|s| (s.rate, s.m.p_ms(0.99))).collect(),
        });
        series.push(Series {
            label: String::new(),
            color,
            dashed: true,
            line: true,
            points: steps.iter().map(|s| (s.rate, s.m.p_ms(0.5))).collect(),
        });
    }
    latency_chart(
        &format!(
            "p99 (solid) and p50 (dashed) vs offered rate, open loop; threshold {p99_ms:.0} ms"
        ),
        &series,
    )
}

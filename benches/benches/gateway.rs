//! Gateway load benchmark: gRPC `gateway.v1.PredictionService/Predict` through
//! the real gateway and model-server processes (release builds), on the
//! embedded store loaded with demo customers (and optionally on Cassandra).
//!
//! * **Open loop** at fixed rates: a pacing thread sends request *i* at
//!   `start + i / rate` whether or not earlier ones have answered, and latency
//!   is measured from that *intended* time, so queueing in the client, the
//!   gateway or the model-server is never hidden (no coordinated omission).
//!   After the listed rates it keeps raising the rate ×1.5 until calls are
//!   shed or fail, or the achieved rate falls below 90% of the target.
//! * **Closed loop** at 1, 8, 32, 64 callers for throughput.
//! * **Cache hit** (a small warmed set of hot customers) and **cache miss**
//!   (customer IDs drawn without repetition from all loaded customers).
//! * **Gateway overhead** from a paired run: the same assembled tensor sent
//!   straight to the model-server (`ModelInfer`) at the same rate (open loop)
//!   or the same rate and number of callers (closed loop), subtracted
//!   percentile by percentile; and the gateway's own view from `/metrics`
//!   (mean of `mlgw_predict_seconds` minus mean of `mlgw_model_call_seconds`).
//!
//! Run (release binaries first):
//!   cargo build --release -p model-server -p gateway && cargo bench -p benches --bench gateway
//! Results are printed and written to benches/results/gateway.md and
//! benches/results/gateway_latency.svg.
//!
//! Knobs: MLGW_BENCH_SECONDS (measured seconds per step, default 4; each step
//! also has 0.5 s of unmeasured warm-up), MLGW_BENCH_RATES (req/s, default
//! 500,1000,2000,3000,5000), MLGW_BENCH_MAX_RATE (cap of the rising steps, default
//! 40000), MLGW_BENCH_CONCURRENCY (default 1,8,32,64), MLGW_BENCH_CUSTOMERS
//! (loaded into the embedded store, default 1000000), MLGW_BENCH_HOT_KEYS
//! (default 1000), MLGW_BENCH_MAX_CONCURRENT (the gateway's
//! max_concurrent_requests, default 256 as shipped), MLGW_BENCH_QUEUE_DELAY_MS
//! (model-server batching delay, default: the shipped config's),
//! MLGW_BENCH_TOKEN (bearer token for every gateway call), and for the
//! Cassandra cache-miss run MLGW_BENCH_GATEWAY_CASSANDRA=1 (start one with
//! tests/rig/cassandra.sh) or MLGW_BENCH_CASSANDRA=host:port (reuse one),
//! MLGW_BENCH_CASSANDRA_CUSTOMERS (default 200000), MLGW_BENCH_CASSANDRA_RATES
//! (default 100,200,500: a single Cassandra node sharing two cores with
//! everything else saturates far below the embedded store).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use feature_store::definitions::FeatureDefinitions;
use feature_store::refresh::{self, RefreshOptions, RefreshOutcome};
use feature_store::store::embedded::EmbeddedStore;
use feature_store::store::scylla::{ScyllaConfig, ScyllaStore};
use feature_store::store::{AnyStore, FeatureStore};
use hdrhistogram::Histogram;
use proto::gateway::v1 as gw;
use proto::gateway::v1::prediction_service_client::PredictionServiceClient;
use proto::inference as inf;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use rig::{ModelServerProcess, binary, example_repository_with, workspace_root};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Callers share this many HTTP/2 connections, as a client pool would.
const CONNECTIONS: usize = 4;
/// Unmeasured warm-up at the start of every step.
const WARMUP: Duration = Duration::from_millis(500);
/// Deadline the client puts on every call (`grpc-timeout`).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Open loop: calls in flight beyond this are not sent but counted as
/// `client_backlog`, so an overloaded run cannot exhaust the machine.
const MAX_OUTSTANDING: u64 = 20_000;
/// Rising steps multiply the rate by this.
const RISE: f64 = 1.5;

// ---------------------------------------------------------------------------
// Knobs

struct Knobs {
    seconds: f64,
    rates: Vec<f64>,
    max_rate: f64,
    concurrency: Vec<usize>,
    customers: u64,
    hot_keys: u64,
    max_concurrent: u64,
    queue_delay_ms: Option<u64>,
    cassandra: CassandraMode,
    cassandra_customers: u64,
    cassandra_rates: Vec<f64>,
}

enum CassandraMode {
    Off,
    Start,
    Reuse(String),
}

fn env_num(name: &str, default: f64) -> Result<f64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn env_list(name: &str, default: &[f64]) -> Result<Vec<f64>> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<f64>()
                    .with_context(|| format!("{name}={v:?}: {s:?} is not a number"))
            })
            .collect(),
        Err(_) => Ok(default.to_vec()),
    }
}

impl Knobs {
    fn from_env() -> Result<Self> {
        let cassandra = match (
            std::env::var("MLGW_BENCH_CASSANDRA"),
            std::env::var("MLGW_BENCH_GATEWAY_CASSANDRA"),
        ) {
            (Ok(addr), _) => CassandraMode::Reuse(addr),
            (Err(_), Ok(v)) if v == "1" => CassandraMode::Start,
            _ => CassandraMode::Off,
        };
        let knobs = Knobs {
            seconds: env_num("MLGW_BENCH_SECONDS", 4.0)?,
            rates: env_list("MLGW_BENCH_RATES", &[500.0, 1000.0, 2000.0, 3000.0, 5000.0])?,
            max_rate: env_num("MLGW_BENCH_MAX_RATE", 40_000.0)?,
            concurrency: env_list("MLGW_BENCH_CONCURRENCY", &[1.0, 8.0, 32.0, 64.0])?
                .into_iter()
                .map(|c| c as usize)
                .collect(),
            customers: env_num("MLGW_BENCH_CUSTOMERS", 1_000_000.0)? as u64,
            hot_keys: env_num("MLGW_BENCH_HOT_KEYS", 1000.0)? as u64,
            max_concurrent: env_num("MLGW_BENCH_MAX_CONCURRENT", 256.0)? as u64,
            queue_delay_ms: std::env::var("MLGW_BENCH_QUEUE_DELAY_MS")
                .ok()
                .map(|v| v.parse().context("MLGW_BENCH_QUEUE_DELAY_MS"))
                .transpose()?,
            cassandra,
            cassandra_customers: env_num("MLGW_BENCH_CASSANDRA_CUSTOMERS", 200_000.0)? as u64,
            cassandra_rates: env_list("MLGW_BENCH_CASSANDRA_RATES", &[100.0, 200.0, 500.0])?,
        };
        if knobs.seconds <= 0.0
            || knobs.rates.iter().any(|r| *r <= 0.0)
            || knobs.concurrency.contains(&0)
            || knobs.hot_keys == 0
            || knobs.customers < knobs.hot_keys
        {
            bail!(
                "bad knobs: seconds, rates, callers and hot keys must be positive, customers ≥ hot keys"
            );
        }
        Ok(knobs)
    }
}

// ---------------------------------------------------------------------------
// Demo data: the same customer profiles as deploy/local/run.sh, keyed c-NNNNNNN.

fn customer_id(i: u64) -> String {
    format!("c-{i:07}")
}

/// account_age_days, avg_txn_amount_30d, txn_count_30d, chargeback_count_1y,
/// home_country_risk of customer `i`.
fn profile(i: u64) -> [f32; 5] {
    [
        (30 + (i * 37) % 3000) as f32,
        (15 + (i * 13) % 200) as f32 + 0.5,
        ((i * 7) % 90) as f32,
        if i.is_multiple_of(23) { 2.0 } else { 0.0 },
        ((i * 11) % 100) as f32 / 100.0,
    ]
}

fn write_profiles(path: &Path, customers: u64) -> Result<()> {
    use std::io::Write as _;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        w,
        "customer_id,account_age_days,avg_txn_amount_30d,txn_count_30d,chargeback_count_1y,home_country_risk"
    )?;
    for i in 0..customers {
        let p = profile(i);
        writeln!(
            w,
            "{},{},{:.2},{},{},{:.2}",
            customer_id(i),
            p[0],
            p[1],
            p[2],
            p[3],
            p[4]
        )?;
    }
    w.flush()?;
    Ok(())
}

async fn load_profiles(store: &AnyStore, customers: u64, scratch: &Path) -> Result<f64> {
    let defs =
        FeatureDefinitions::load(&workspace_root().join("feature-store/definitions/fraud.toml"))?;
    store.apply_schema().await?;
    let csv = scratch.join(format!("profiles-{customers}.csv"));
    write_profiles(&csv, customers)?;
    let started = Instant::now();
    let outcome = refresh::run(
        store,
        &defs,
        "customer_profile_daily",
        None,
        &csv,
        &RefreshOptions {
            script_version: "bench".into(),
            force: true,
            ..RefreshOptions::default()
        },
        &|_| {},
    )
    .await?;
    let RefreshOutcome::Loaded(batch) = outcome else {
        bail!("the demo refresh did not load");
    };
    if batch.rows_written != customers {
        bail!("loaded {} of {customers} customers", batch.rows_written);
    }
    let _ = std::fs::remove_file(&csv);
    Ok(started.elapsed().as_secs_f64())
}

/// The request-time features of call `k` (varied so no two calls are alike):
/// amount, is_card_present, hour_of_day, distance_from_home_km.
fn request_values(k: u64) -> (f64, bool, i64, f64) {
    (
        5.0 + (k % 997) as f64 * 1.3,
        !k.is_multiple_of(3),
        (k % 24) as i64,
        (k % 200) as f64 * 0.7,
    )
}

fn predict_request(customer: u64, k: u64) -> gw::PredictRequest {
    use gw::feature_value::Kind;
    let fv = |k: Kind| gw::FeatureValue { kind: Some(k) };
    let (amount, card, hour, distance) = request_values(k);
    gw::PredictRequest {
        model: "fraud_detector".into(),
        model_version: String::new(),
        entity: Some(gw::EntityKey {
            keys: HashMap::from([("customer_id".into(), customer_id(customer))]),
        }),
        request_features: HashMap::from([
            ("amount".into(), fv(Kind::DoubleValue(amount))),
            ("is_card_present".into(), fv(Kind::BoolValue(card))),
            ("hour_of_day".into(), fv(Kind::Int64Value(hour))),
            (
                "distance_from_home_km".into(),
                fv(Kind::DoubleValue(distance)),
            ),
        ]),
    }
}

/// The FP32 row the gateway assembles for the same call: the profile, the
/// activity defaults (no dynamic values are loaded), the request features
/// with merchant_category_risk defaulted.
fn model_request(customer: u64, k: u64) -> inf::ModelInferRequest {
    let p = profile(customer);
    let (amount, card, hour, distance) = request_values(k);
    let row = [
        p[0],
        p[1],
        p[2],
        p[3],
        p[4],
        0.0,
        0.0,
        0.0,
        0.0,
        1440.0,
        amount as f32,
        0.21,
        f32::from(u8::from(card)),
        hour as f32,
        distance as f32,
    ];
    inf::ModelInferRequest {
        model_name: "fraud_detector".into(),
        model_version: String::new(),
        inputs: vec![inf::model_infer_request::InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![1, row.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![
            row.iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        ],
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// The client

/// Adds `authorization: Bearer <token>` to every gateway call: the token
/// comes from MLGW_BENCH_TOKEN, or the dev token the gateway prints at start
/// (the bench runs it with the dev issuer, like the demo).
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    fn new(gateway_banner: &[String]) -> Result<Self> {
        let token = std::env::var("MLGW_BENCH_TOKEN").ok().or_else(|| {
            gateway_banner
                .iter()
                .find(|l| l.starts_with("dev token"))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        });
        token
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {t}"))
                    .context("the bearer token is not valid header text")
            })
            .transpose()
            .map(Bearer)
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type GatewayClient = PredictionServiceClient<InterceptedService<Channel, Bearer>>;
type DirectClient = GrpcInferenceServiceClient<Channel>;

/// Which customer each call asks for.
enum Keys {
    /// `k % count`: a small hot set, warmed into the row cache.
    Hot { count: u64 },
    /// Never repeated: a permutation of all loaded customers, walked by a
    /// counter shared by every step of the run.
    Fresh {
        customers: u64,
        next: Arc<AtomicU64>,
    },
}

impl Keys {
    fn customer(&self, k: u64) -> u64 {
        match self {
            Keys::Hot { count } => k % count,
            Keys::Fresh { customers, next } => {
                let n = next.fetch_add(1, Ordering::Relaxed) % customers;
                // n ↦ n·p mod N is a permutation when p (a prime above any
                // N used here) shares no factor with N; it spreads the reads
                // over the whole key range instead of walking it in order.
                ((u128::from(n) * 2_654_435_761) % u128::from(*customers)) as u64
            }
        }
    }
}

/// What one call ended with.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Ok,
    Status(tonic::Code),
    /// Not sent: too many calls already in flight (open loop only).
    Backlog,
}

/// Where the calls go.
enum Target {
    Gateway {
        clients: Vec<GatewayClient>,
        keys: Keys,
    },
    Direct {
        clients: Vec<DirectClient>,
        hot: u64,
    },
}

impl Target {
    async fn call(&self, k: u64) -> Outcome {
        let conn = (k as usize) % CONNECTIONS;
        let result = match self {
            Target::Gateway { clients, keys } => {
                let mut request = tonic::Request::new(predict_request(keys.customer(k), k));
                request.set_timeout(CALL_TIMEOUT);
                clients[conn].clone().predict(request).await.map(drop)
            }
            Target::Direct { clients, hot } => {
                let mut request = tonic::Request::new(model_request(k % hot, k));
                request.set_timeout(CALL_TIMEOUT);
                clients[conn].clone().model_infer(request).await.map(drop)
            }
        };
        match result {
            Ok(()) => Outcome::Ok,
            Err(status) => Outcome::Status(status.code()),
        }
    }
}

async fn channels(url: &str) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        out.push(
            Channel::from_shared(url.to_owned())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("cannot connect to {url}"))?,
        );
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Measuring

/// What one step measured (its measured window only, warm-up excluded).
struct Measured {
    /// Latency of successful calls, µs.
    hist: Histogram<u64>,
    ok: u64,
    shed: u64,
    /// Other failures by gRPC code (or `client_backlog`).
    errors: BTreeMap<String, u64>,
    /// Successful calls per second over the window.
    achieved: f64,
    /// Open loop: how late the pacing thread sent, p99 µs.
    send_lag_p99_us: Option<u64>,
    /// Calls completed in the whole step (warm-up too), for CPU per call.
    completed_all: u64,
}

struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    shed: u64,
    errors: BTreeMap<String, u64>,
    last_done: Option<Instant>,
    completed_all: u64,
}

impl Tally {
    fn new() -> Result<Self> {
        Ok(Tally {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            ok: 0,
            shed: 0,
            errors: BTreeMap::new(),
            last_done: None,
            completed_all: 0,
        })
    }

    fn add(
        &mut self,
        outcome: Outcome,
        latency: Duration,
        in_window: bool,
        done: Instant,
    ) -> Result<()> {
        self.completed_all += 1;
        if !in_window {
            return Ok(());
        }
        self.last_done = Some(self.last_done.map_or(done, |d| d.max(done)));
        match outcome {
            Outcome::Ok => {
                self.ok += 1;
                self.hist.record((latency.as_micros() as u64).max(1))?;
            }
            Outcome::Status(tonic::Code::ResourceExhausted) => self.shed += 1,
            Outcome::Status(code) => *self.errors.entry(format!("{code:?}")).or_default() += 1,
            Outcome::Backlog => *self.errors.entry("client_backlog".into()).or_default() += 1,
        }
        Ok(())
    }

    fn merge(&mut self, other: Tally) -> Result<()> {
        self.hist.add(other.hist)?;
        self.ok += other.ok;
        self.shed += other.shed;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.completed_all += other.completed_all;
        Ok(())
    }

    fn finish(
        self,
        window_start: Instant,
        window: Duration,
        send_lag_p99_us: Option<u64>,
    ) -> Measured {
        // Calls still answering after the window stretch it: a system that
        // cannot keep up shows an achieved rate below the target.
        let span = self
            .last_done
            .map_or(window, |d| d.saturating_duration_since(window_start))
            .max(window);
        Measured {
            achieved: self.ok as f64 / span.as_secs_f64(),
            hist: self.hist,
            ok: self.ok,
            shed: self.shed,
            errors: self.errors,
            send_lag_p99_us,
            completed_all: self.completed_all,
        }
    }
}

struct Sample {
    outcome: Outcome,
    latency: Duration,
    in_window: bool,
    done: Instant,
}

/// Open loop at `rate`: call *i* is due at `start + i / rate`, sent then by a
/// dedicated pacing thread (tokio's timer ticks in milliseconds, too coarse
/// for 5,000 req/s), and its latency runs from that due time.
async fn open_loop(target: Arc<Target>, rate: f64, seconds: f64) -> Result<Measured> {
    let total = ((WARMUP.as_secs_f64() + seconds) * rate).round() as u64;
    let start = Instant::now() + Duration::from_millis(20);
    let window_start = start + WARMUP;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let runtime = tokio::runtime::Handle::current();
    let outstanding = Arc::new(AtomicU64::new(0));
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || -> Result<Histogram<u64>> {
            // A channel nobody sends on: recv_timeout is a precise sleep
            // (clippy's rule against thread::sleep targets runtime threads).
            let (_keep, wait) = std::sync::mpsc::channel::<()>();
            let mut lag = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
            for i in 0..total {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if due > now {
                    let _ = wait.recv_timeout(due - now);
                }
                let in_window = due >= window_start;
                if in_window {
                    lag.record((due.elapsed().as_micros() as u64).max(1))?;
                }
                if outstanding.load(Ordering::Relaxed) >= MAX_OUTSTANDING {
                    let _ = tx.send(Sample {
                        outcome: Outcome::Backlog,
                        latency: Duration::ZERO,
                        in_window,
                        done: Instant::now(),
                    });
                    continue;
                }
                outstanding.fetch_add(1, Ordering::Relaxed);
                let (target, tx, outstanding) =
                    (Arc::clone(&target), tx.clone(), Arc::clone(&outstanding));
                runtime.spawn(async move {
                    let outcome = target.call(i).await;
                    let done = Instant::now();
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                    let _ = tx.send(Sample {
                        outcome,
                        latency: done.saturating_duration_since(due),
                        in_window,
                        done,
                    });
                });
            }
            Ok(lag)
        })?;
    let mut tally = Tally::new()?;
    // Ends when the pacer and every call have dropped their senders.
    while let Some(s) = rx.recv().await {
        tally.add(s.outcome, s.latency, s.in_window, s.done)?;
    }
    let lag = pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacing thread panicked"))??;
    Ok(tally.finish(
        window_start,
        Duration::from_secs_f64(seconds),
        Some(lag.value_at_quantile(0.99)),
    ))
}

/// Closed loop: `callers` tasks each send their next call when the last one
/// answers; with `pace`, the callers together send at most that many calls a
/// second (the paired direct run matches the gateway's rate this way).
async fn closed_loop(
    target: Arc<Target>,
    callers: usize,
    pace: Option<f64>,
    seconds: f64,
) -> Result<Measured> {
    let start = Instant::now();
    let window_start = start + WARMUP;
    let end = window_start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(callers);
    for c in 0..callers {
        let target = Arc::clone(&target);
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new()?;
            let mut n = 0u64;
            loop {
                let k = n * callers as u64 + c as u64;
                if let Some(rate) = pace {
                    let due = start + Duration::from_secs_f64(k as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let outcome = target.call(k).await;
                let done = Instant::now();
                tally.add(outcome, done - sent, sent >= window_start, done)?;
                n += 1;
            }
            anyhow::Ok(tally)
        }));
    }
    let mut all = Tally::new()?;
    for t in tasks {
        all.merge(t.await??)?;
    }
    Ok(all.finish(window_start, Duration::from_secs_f64(seconds), None))
}

// ---------------------------------------------------------------------------
// Processes

/// CPU seconds a process has used so far (utime + stime).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}

/// CPU seconds the whole machine has been busy (all cores, /proc/stat).
fn machine_busy_seconds() -> f64 {
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

/// The processes whose CPU time each step reads.
struct CpuProbe {
    pids: Vec<(&'static str, String)>,
}

impl CpuProbe {
    fn read(&self) -> Vec<f64> {
        self.pids
            .iter()
            .map(|(_, pid)| cpu_seconds(pid).unwrap_or(f64::NAN))
            .collect()
    }
}

/// The gateway as a child process on free ports; killed when dropped.
struct GatewayProcess {
    child: tokio::process::Child,
    http: String,
    grpc: String,
    /// Its stdout lines up to and including "gateway listening …".
    banner: Vec<String>,
    log: PathBuf,
}

impl GatewayProcess {
    async fn start(config: &Path, log: PathBuf) -> Result<Self> {
        let bin = binary("gateway")?;
        let mut child = tokio::process::Command::new(&bin)
            .arg("--config")
            .arg(config)
            .env("MLGW_LOG", "warn")
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
        let field = |key: &str| {
            listening
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(|a| format!("http://{a}"))
                .with_context(|| format!("no {key} in {listening:?}"))
        };
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
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the gateway exited ({status}); log tail:\n{}",
                    tail(&self.log)
                );
            }
            if let Ok(r) = client.get(format!("{}/readyz", self.http)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the gateway is not ready after 30 s; log tail:\n{}",
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> Result<String> {
        Ok(self
            .child
            .id()
            .context("the gateway has exited")?
            .to_string())
    }

    /// Stops the gateway with SIGTERM (a graceful drain), SIGKILL after 10 s.
    async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_err()
            {
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn gateway_config(
    dir: &Path,
    model_grpc: &str,
    store: &str,
    max_concurrent: u64,
) -> Result<PathBuf> {
    // gateway/config/gateway.toml's settings, on free ports and our store.
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
[cache]
max_bytes = 268435456
static_ttl_s = 600
negative_ttl_s = 5
dynamic_ttl_ms = 0
batch_poll_ms = 2000
[[model]]
name = "fraud_detector"
endpoint = "{model_grpc}"
timeout_ms = 300
[model.postprocess]
scores_output = "probabilities"
labels = ["legit", "fraud"]
positive_label = "fraud"
threshold = 0.5
top_k = 2
{auth}"#,
        auth = rig::gateway::DEV_AUTH,
        defs = workspace_root()
            .join("feature-store/definitions/fraud.toml")
            .display()
    );
    let path = dir.join(format!("gateway-{}.toml", dir.read_dir()?.count()));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A Cassandra started for the benchmark (tests/rig/cassandra.sh), stopped on
/// drop; or one given by MLGW_BENCH_CASSANDRA, left alone.
struct Cassandra {
    rig_dir: PathBuf,
    addr: String,
    owned: bool,
}

impl Cassandra {
    fn start(mode: &CassandraMode, scratch: &Path) -> Result<Option<Self>> {
        let rig_dir = scratch.join("cassandra-rig");
        match mode {
            CassandraMode::Off => Ok(None),
            CassandraMode::Reuse(addr) => Ok(Some(Cassandra {
                rig_dir,
                addr: addr.clone(),
                owned: false,
            })),
            CassandraMode::Start => {
                std::fs::create_dir_all(&rig_dir)?;
                // Owned from here on, so a failed start is still stopped.
                let mut node = Cassandra {
                    rig_dir,
                    addr: String::new(),
                    owned: true,
                };
                let status =
                    std::process::Command::new(workspace_root().join("tests/rig/cassandra.sh"))
                        .arg("start")
                        .env("RIG_DIR", &node.rig_dir)
                        .status()
                        .context("running tests/rig/cassandra.sh")?;
                if !status.success() {
                    bail!("Cassandra did not start (see the rig output above)");
                }
                let env = std::fs::read_to_string(node.rig_dir.join("cassandra.env"))?;
                node.addr = env
                    .lines()
                    .find_map(|l| l.strip_prefix("MLGW_TEST_CASSANDRA="))
                    .context("cassandra.env lacks MLGW_TEST_CASSANDRA")?
                    .trim()
                    .to_owned();
                Ok(Some(node))
            }
        }
    }

    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(self.rig_dir.join("cassandra.pid"))
            .ok()
            .map(|p| p.trim().to_owned())
    }
}

impl Drop for Cassandra {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::process::Command::new(workspace_root().join("tests/rig/cassandra.sh"))
                .arg("stop")
                .env("RIG_DIR", &self.rig_dir)
                .status();
        }
    }
}

// ---------------------------------------------------------------------------
// Steps

#[derive(Clone, Copy, PartialEq)]
enum Load {
    Open { rate: f64 },
    Closed { callers: usize, pace: Option<f64> },
}

/// The gateway's own accounting over one step, from /metrics.
#[derive(Default, Clone, Copy)]
struct GatewayView {
    /// Mean end-to-end time inside the gateway of a successful prediction, µs.
    predict_mean_us: f64,
    /// Mean time of its model-server call, µs.
    model_mean_us: f64,
    /// Share of feature-cache reads answered from the cache.
    hit_ratio: f64,
}

impl GatewayView {
    fn text(&self) -> String {
        format!(
            "{} / {} / {}",
            ms(self.predict_mean_us / 1000.0),
            ms(self.model_mean_us / 1000.0),
            ms((self.predict_mean_us - self.model_mean_us) / 1000.0)
        )
    }
}

struct Step {
    backend: &'static str,
    scenario: &'static str,
    load: Load,
    m: Measured,
    gateway: Option<GatewayView>,
    /// The gateway's own failure codes over the step (warm-up included).
    gateway_failures: String,
    /// CPU µs per completed call, per probed process.
    cpu_per_call_us: Vec<(&'static str, f64)>,
    /// Cores kept busy by everything else on the machine during the step
    /// (other users' builds and tests share it).
    other_cores: f64,
}

impl Step {
    fn p(&self, q: f64) -> f64 {
        if self.m.ok == 0 {
            f64::NAN
        } else {
            self.m.hist.value_at_quantile(q) as f64 / 1000.0
        }
    }
    fn errors(&self) -> u64 {
        self.m.errors.values().sum()
    }
    fn errors_text(&self) -> String {
        let mut text = if self.m.errors.is_empty() {
            "0".into()
        } else {
            self.m
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.gateway_failures.is_empty() {
            let _ = write!(text, " (gateway: {})", self.gateway_failures);
        }
        text
    }
    fn cpu_text(&self) -> String {
        self.cpu_per_call_us
            .iter()
            .map(|(_, v)| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(http: &reqwest::Client, gateway: &str) -> Result<String> {
    Ok(http
        .get(format!("{gateway}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

fn view(before: &str, after: &str) -> GatewayView {
    let d = |name: &str| metric(after, name) - metric(before, name);
    let mean_us = |name: &str| {
        let n = d(&format!("{name}_count"));
        if n > 0.0 {
            d(&format!("{name}_sum")) / n * 1e6
        } else {
            f64::NAN
        }
    };
    let (hits, misses) = (
        d("mlgw_feature_cache_hits_total"),
        d("mlgw_feature_cache_misses_total"),
    );
    GatewayView {
        predict_mean_us: mean_us("mlgw_predict_seconds"),
        model_mean_us: mean_us("mlgw_model_call_seconds"),
        hit_ratio: if hits + misses > 0.0 {
            hits / (hits + misses)
        } else {
            f64::NAN
        },
    }
}

/// Failed gRPC predictions by the gateway's own code (from /metrics) over a
/// step, e.g. "overloaded 12, feature_store_unavailable 3"; empty if none.
fn failure_codes(before: &str, after: &str) -> String {
    const PREFIX: &str = "mlgw_requests_total{front=\"grpc\",route=\"predict\",code=\"";
    let counts = |text: &str| -> BTreeMap<String, f64> {
        text.lines()
            .filter_map(|l| {
                let (code, n) = l.strip_prefix(PREFIX)?.split_once("\"} ")?;
                Some((code.to_owned(), n.trim().parse().ok()?))
            })
            .collect()
    };
    let was = counts(before);
    counts(after)
        .into_iter()
        .filter(|(code, _)| code != "ok")
        .map(|(code, n)| (n - was.get(&code).copied().unwrap_or(0.0), code))
        .filter(|(n, _)| *n > 0.0)
        .map(|(n, code)| format!("{code} {n:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Runner {
    seconds: f64,
    probe: CpuProbe,
    http: reqwest::Client,
    steps: Vec<Step>,
}

impl Runner {
    async fn step(
        &mut self,
        backend: &'static str,
        scenario: &'static str,
        target: &Arc<Target>,
        gateway_http: Option<&str>,
        load: Load,
    ) -> Result<usize> {
        let before = match gateway_http {
            Some(g) => Some(scrape(&self.http, g).await?),
            None => None,
        };
        let cpu_before = self.probe.read();
        let (machine_before, wall) = (machine_busy_seconds(), Instant::now());
        let m = match load {
            Load::Open { rate } => open_loop(Arc::clone(target), rate, self.seconds).await?,
            Load::Closed { callers, pace } => {
                closed_loop(Arc::clone(target), callers, pace, self.seconds).await?
            }
        };
        let cpu_after = self.probe.read();
        let (machine, wall) = (
            machine_busy_seconds() - machine_before,
            wall.elapsed().as_secs_f64(),
        );
        let ours: f64 = cpu_before
            .iter()
            .zip(&cpu_after)
            .map(|(b, a)| a - b)
            .filter(|d| d.is_finite())
            .sum();
        let other_cores = ((machine - ours) / wall).max(0.0);
        let (gateway, gateway_failures) = match (gateway_http, before) {
            (Some(g), Some(b)) => {
                let after = scrape(&self.http, g).await?;
                (Some(view(&b, &after)), failure_codes(&b, &after))
            }
            _ => (None, String::new()),
        };
        let calls = m.completed_all.max(1) as f64;
        let cpu_per_call_us = self
            .probe
            .pids
            .iter()
            .zip(cpu_before.iter().zip(&cpu_after))
            .map(|((name, _), (b, a))| (*name, (a - b) / calls * 1e6))
            .collect();
        let step = Step {
            backend,
            scenario,
            load,
            m,
            gateway,
            gateway_failures,
            cpu_per_call_us,
            other_cores,
        };
        let load_text = match load {
            Load::Open { rate } => format!("open {rate:.0}/s"),
            Load::Closed {
                callers,
                pace: None,
            } => format!("closed x{callers}"),
            Load::Closed {
                callers,
                pace: Some(r),
            } => format!("closed x{callers} paced {r:.0}/s"),
        };
        eprintln!(
            "{backend} {scenario} {load_text}: {:.0} req/s p50 {:.2} p99 {:.2} p99.9 {:.2} ms, shed {}, errors {}, hit {:.2}, lag p99 {} µs, cpu µs/call {}, other load {:.2} cores",
            step.m.achieved,
            step.p(0.5),
            step.p(0.99),
            step.p(0.999),
            step.m.shed,
            step.errors_text(),
            step.gateway.map_or(f64::NAN, |g| g.hit_ratio),
            step.m
                .send_lag_p99_us
                .map_or_else(|| "-".into(), |l| l.to_string()),
            step.cpu_text(),
            step.other_cores,
        );
        self.steps.push(step);
        Ok(self.steps.len() - 1)
    }

    /// The listed rates, then ×1.5 (up to `max_rate`), until a step is
    /// saturated: more than 1% of its calls shed or failed, or the achieved
    /// rate below 90% of the target. With `paired`,
    /// each rate is run again right after against the model-server directly,
    /// so both see the same background load of the shared machine.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per scenario; a struct would only rename them"
    )]
    async fn rising(
        &mut self,
        backend: &'static str,
        scenario: &'static str,
        target: &Arc<Target>,
        gateway_http: Option<&str>,
        paired: Option<&Arc<Target>>,
        rates: &[f64],
        max_rate: f64,
    ) -> Result<()> {
        let mut next = rates.to_vec();
        let mut i = 0;
        while i < next.len() {
            let rate = next[i];
            let s = self
                .step(backend, scenario, target, gateway_http, Load::Open { rate })
                .await?;
            if let Some(direct) = paired {
                self.step(backend, "direct", direct, None, Load::Open { rate })
                    .await?;
            }
            let s = &self.steps[s];
            // Past saturation every higher rate only measures the overload
            // again: stop the series there.
            let failed = (s.m.shed + s.errors()) as f64;
            if failed > 0.01 * (failed + s.m.ok as f64) || s.m.achieved < 0.9 * rate {
                break;
            }
            if i + 1 == next.len() {
                let up = (rate * RISE / 500.0).round() * 500.0;
                if up <= max_rate {
                    next.push(up);
                }
            }
            i += 1;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // `cargo test --benches` passes flags; this is a benchmark, not a test.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return Ok(());
    }
    let knobs = Knobs::from_env()?;
    let scratch = std::env::temp_dir().join(format!("mlgw_bench_gw_{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    // On Ctrl-C or SIGTERM the run is dropped, and with it every process it
    // started (kill_on_drop; Cassandra's Drop runs the rig's stop).
    let result = tokio::select! {
        r = run(&knobs, &scratch) => r,
        s = interrupted() => Err(anyhow::anyhow!("interrupted by {s}; stopped everything the bench started")),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    println!("{report}");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM, naming which.
async fn interrupted() -> &'static str {
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

async fn run(knobs: &Knobs, scratch: &Path) -> Result<String> {
    let configs = scratch.join("configs");
    std::fs::create_dir_all(&configs)?;

    // The model-server: the shipped example model config, or its batching
    // delay changed by MLGW_BENCH_QUEUE_DELAY_MS.
    let repo = example_repository_with(|c| match knobs.queue_delay_ms {
        Some(ms) => c.replace(
            "max_queue_delay_ms = 2",
            &format!("max_queue_delay_ms = {ms}"),
        ),
        None => c.to_owned(),
    })?;
    let model_config = std::fs::read_to_string(repo.path.join("fraud_detector/config.toml"))?;
    let queue_delay = model_config
        .lines()
        .find(|l| l.starts_with("max_queue_delay_ms"))
        .unwrap_or("max_queue_delay_ms = ?")
        .to_owned();
    let mut model_server = ModelServerProcess::start(&repo.path, &[]).await?;
    model_server.wait_ready(Duration::from_secs(120)).await?;
    let ms_pid = model_server.pid().context("model-server pid")?.to_string();

    // Demo data in the embedded store.
    let redb = scratch.join("features.redb");
    let load_seconds = {
        let store = AnyStore::Embedded(Arc::new(EmbeddedStore::open(&redb)?));
        load_profiles(&store, knobs.customers, scratch).await?
    };
    eprintln!(
        "loaded {} customers into the embedded store in {load_seconds:.1} s",
        knobs.customers
    );

    let mut runner = Runner {
        seconds: knobs.seconds,
        probe: CpuProbe { pids: Vec::new() },
        http: reqwest::Client::new(),
        steps: Vec::new(),
    };
    let misses = Arc::new(AtomicU64::new(0));

    // --- Embedded store ---------------------------------------------------
    let config = gateway_config(
        &configs,
        &model_server.grpc_url,
        &format!(
            "[store]\nbackend = \"embedded\"\npath = \"{}\"",
            redb.display()
        ),
        knobs.max_concurrent,
    )?;
    let gateway = GatewayProcess::start(&config, scratch.join("gateway-embedded.log")).await?;
    let bearer = Bearer::new(&gateway.banner)?;
    runner.probe = CpuProbe {
        pids: vec![
            ("gateway", gateway.pid()?),
            ("model-server", ms_pid.clone()),
            ("client", std::process::id().to_string()),
        ],
    };
    let gw_channels = channels(&gateway.grpc).await?;
    let gateway_clients: Vec<GatewayClient> = gw_channels
        .iter()
        .map(|c| PredictionServiceClient::with_interceptor(c.clone(), bearer.clone()))
        .collect();
    let hot = Arc::new(Target::Gateway {
        clients: gateway_clients.clone(),
        keys: Keys::Hot {
            count: knobs.hot_keys,
        },
    });
    let fresh = Arc::new(Target::Gateway {
        clients: gateway_clients.clone(),
        keys: Keys::Fresh {
            customers: knobs.customers,
            next: Arc::clone(&misses),
        },
    });
    let direct = Arc::new(Target::Direct {
        clients: channels(&model_server.grpc_url)
            .await?
            .into_iter()
            .map(GrpcInferenceServiceClient::new)
            .collect(),
        hot: knobs.hot_keys,
    });
    // Fail loudly before measuring anything if a call does not go through.
    for (name, t) in [("gateway", &hot), ("model-server", &direct)] {
        if let Outcome::Status(code) = t.call(0).await {
            bail!(
                "a first call to the {name} failed with {code:?}; see {}",
                gateway.log.display()
            );
        }
    }
    // Warm the hot set into the row cache (and both paths), unmeasured.
    for k in 0..knobs.hot_keys.max(2000) {
        if let Outcome::Status(code) = hot.call(k).await {
            bail!("warming the cache: a call failed with {code:?}");
        }
    }

    let gw_http = gateway.http.clone();
    let g = Some(gw_http.as_str());
    let emb = "embedded";
    runner
        .rising(
            emb,
            "hit",
            &hot,
            g,
            Some(&direct),
            &knobs.rates,
            knobs.max_rate,
        )
        .await?;
    runner
        .rising(emb, "miss", &fresh, g, None, &knobs.rates, knobs.max_rate)
        .await?;
    for &callers in &knobs.concurrency {
        let s = runner
            .step(
                emb,
                "hit",
                &hot,
                g,
                Load::Closed {
                    callers,
                    pace: None,
                },
            )
            .await?;
        let pace = runner.steps[s].m.achieved;
        runner
            .step(
                emb,
                "direct",
                &direct,
                None,
                Load::Closed {
                    callers,
                    pace: Some(pace),
                },
            )
            .await?;
    }
    for &callers in &knobs.concurrency {
        runner
            .step(
                emb,
                "miss",
                &fresh,
                g,
                Load::Closed {
                    callers,
                    pace: None,
                },
            )
            .await?;
    }
    drop((hot, fresh, gateway_clients, gw_channels));
    gateway.stop().await?;

    // --- Cassandra (opt-in) -------------------------------------------------
    let mut cassandra_note = String::new();
    if let Some(node) = Cassandra::start(&knobs.cassandra, scratch)? {
        let keyspace = format!("bench_gw_{}", std::process::id());
        let store = AnyStore::Scylla(Arc::new(
            ScyllaStore::connect(ScyllaConfig {
                nodes: vec![node.addr.clone()],
                keyspace: keyspace.clone(),
                write_timeout: Duration::from_secs(30),
                ..ScyllaConfig::default()
            })
            .await?,
        ));
        let seconds = load_profiles(&store, knobs.cassandra_customers, scratch).await?;
        drop(store);
        eprintln!(
            "loaded {} customers into Cassandra in {seconds:.1} s",
            knobs.cassandra_customers
        );
        let config = gateway_config(
            &configs,
            &model_server.grpc_url,
            &format!(
                "[store]\nbackend = \"scylla\"\nnodes = [\"{}\"]\nkeyspace = \"{keyspace}\"",
                node.addr
            ),
            knobs.max_concurrent,
        )?;
        let gateway = GatewayProcess::start(&config, scratch.join("gateway-cassandra.log")).await?;
        let mut pids = vec![
            ("gateway", gateway.pid()?),
            ("model-server", ms_pid.clone()),
            ("client", std::process::id().to_string()),
        ];
        if let Some(pid) = node.pid() {
            pids.push(("cassandra", pid));
        }
        runner.probe = CpuProbe { pids };
        let bearer = Bearer::new(&gateway.banner)?;
        let clients: Vec<GatewayClient> = channels(&gateway.grpc)
            .await?
            .into_iter()
            .map(|c| PredictionServiceClient::with_interceptor(c, bearer.clone()))
            .collect();
        let fresh = Arc::new(Target::Gateway {
            clients,
            keys: Keys::Fresh {
                customers: knobs.cassandra_customers,
                next: Arc::new(AtomicU64::new(0)),
            },
        });
        if let Outcome::Status(code) = fresh.call(0).await {
            bail!(
                "a first call to the Cassandra gateway failed with {code:?}; see {}",
                gateway.log.display()
            );
        }
        // A fresh JVM runs interpreted for a while: warm its read path (and
        // the gateway's) for 10 s, unmeasured.
        closed_loop(Arc::clone(&fresh), 16, None, 10.0).await?;
        let cas = "Cassandra";
        let gh = gateway.http.clone();
        runner
            .rising(
                cas,
                "miss",
                &fresh,
                Some(&gh),
                None,
                &knobs.cassandra_rates,
                knobs.max_rate,
            )
            .await?;
        for &callers in &knobs.concurrency {
            runner
                .step(
                    cas,
                    "miss",
                    &fresh,
                    Some(&gh),
                    Load::Closed {
                        callers,
                        pace: None,
                    },
                )
                .await?;
        }
        drop(fresh);
        gateway.stop().await?;
        cassandra_note = format!(
            " Cassandra run: single-node Cassandra 5.0 from tests/rig/cassandra.sh on the same machine, {} customers, read warm-up 10 s.",
            knobs.cassandra_customers
        );
        drop(node);
    }
    model_server.stop().await?;

    let report = report(
        &runner.steps,
        knobs,
        &queue_delay,
        load_seconds,
        &cassandra_note,
    )?;
    let dir = workspace_root().join("benches/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("gateway.md"), &report)?;
    std::fs::write(dir.join("gateway_latency.svg"), svg(&runner.steps))?;
    Ok(report)
}

// ---------------------------------------------------------------------------
// Report

fn find<'a>(steps: &'a [Step], backend: &str, scenario: &str, load: Load) -> Option<&'a Step> {
    steps
        .iter()
        .find(|s| s.backend == backend && s.scenario == scenario && s.load == load)
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.2}")
    }
}

fn report(
    steps: &[Step],
    knobs: &Knobs,
    queue_delay: &str,
    load_seconds: f64,
    cassandra_note: &str,
) -> Result<String> {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    writeln!(out, "# Gateway load benchmark\n")?;
    writeln!(
        out,
        "Command: `cargo build --release -p model-server -p gateway && {}cargo bench -p benches --bench gateway` \
         (MLGW_BENCH_SECONDS={}, MLGW_BENCH_RATES={}, MLGW_BENCH_CONCURRENCY={}, MLGW_BENCH_CUSTOMERS={}, MLGW_BENCH_HOT_KEYS={}{}).\n",
        match &knobs.cassandra {
            CassandraMode::Off => String::new(),
            CassandraMode::Start => "MLGW_BENCH_GATEWAY_CASSANDRA=1 ".into(),
            CassandraMode::Reuse(addr) => format!("MLGW_BENCH_CASSANDRA={addr} "),
        },
        knobs.seconds,
        knobs
            .rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(","),
        knobs
            .concurrency
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        knobs.customers,
        knobs.hot_keys,
        match knobs.cassandra {
            CassandraMode::Off => String::new(),
            _ => format!(
                ", MLGW_BENCH_CASSANDRA_RATES={}, MLGW_BENCH_CASSANDRA_CUSTOMERS={}",
                knobs
                    .cassandra_rates
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(","),
                knobs.cassandra_customers
            ),
        }
    )?;
    writeln!(
        out,
        "Setup: the benchmark client, the gateway and the model-server (release builds) all on one {cores}-core machine ({cpu}), over 127.0.0.1. \
         gRPC `Predict` for `fraud_detector` (default version, v2 MLP) with one customer ID and four request features; \
         the client uses {CONNECTIONS} HTTP/2 connections and a {}-s deadline per call. Gateway: the shipped settings \
         (max_concurrent_requests {}, request_timeout 1000 ms, model timeout 300 ms, 256 MiB row cache, dynamic features read from the store on every call). \
         Model-server: the example model's config ({queue_delay}, max_batch_size 64, 2 inference threads). \
         Embedded store: {} customers loaded by a refresh run ({load_seconds:.1} s). \
         **hit**: {} hot customers, warmed into the row cache first; **miss**: every call a customer not asked for before in the run \
         (a permutation of all loaded customers), so the static row is read from the store; in both, the dynamic view is read from the store \
         (no dynamic values are loaded, so it is a lookup that finds nothing). **direct**: the same FP32 row sent straight to the model-server's \
         `ModelInfer`, the paired run for the gateway's overhead.{cassandra_note} Each step has {:.1} s of unmeasured warm-up.\n",
        CALL_TIMEOUT.as_secs(),
        knobs.max_concurrent,
        knobs.customers,
        knobs.hot_keys,
        WARMUP.as_secs_f64()
    )?;
    writeln!(
        out,
        "Latency is of successful calls. Open loop: from the call's *intended* send time (no coordinated omission); \
         'send lag' is how late the client's pacing thread actually sent (p99) — when it grows, the client itself is short of CPU. \
         Closed loop: from the actual send. 'shed' = RESOURCE_EXHAUSTED (the gateway's admission limit, or the model-server's full queue); \
         other failures are listed by gRPC code (Cancelled: tonic's own timeout fired on the call's 2-s deadline before any answer; \
         Unavailable: the model-server circuit breaker open or a store read failed or timed out; DeadlineExceeded: the gateway's 1-s request budget or 300-ms model timeout); \
         in parentheses, the gateway's own codes for its failed predictions from /metrics (warm-up included, so they may exceed the counts beside them). 'hit %' is the feature-cache hit share from the gateway's /metrics (static views only; warm-up included). \
         'CPU µs/call' is CPU time per completed call of gateway / model-server / client{} over the step; \
         'other load' is the cores kept busy by everything else on the machine meanwhile (it is shared with other builds and tests).\n",
        if cassandra_note.is_empty() {
            ""
        } else {
            " (/ Cassandra)"
        }
    )?;

    // Targets first: what the reader asks.
    writeln!(out, "## Against the targets\n")?;
    writeln!(out, "| target | measured |\n| --- | --- |")?;
    let c32 = knobs.concurrency.iter().find(|c| **c == 32).and_then(|c| {
        find(
            steps,
            "embedded",
            "hit",
            Load::Closed {
                callers: *c,
                pace: None,
            },
        )
    });
    if let Some(s) = c32 {
        writeln!(
            out,
            "| full Predict, cache hit, 32 callers: ≥ 5,000 req/s with p99 < 5 ms | {:.0} req/s, p99 {} ms |",
            s.m.achieved,
            ms(s.p(0.99))
        )?;
    }
    if let (Some(g), Some(d)) = (
        find(steps, "embedded", "hit", Load::Open { rate: 1000.0 }),
        find(steps, "embedded", "direct", Load::Open { rate: 1000.0 }),
    ) {
        writeln!(
            out,
            "| gateway overhead p99 < 1 ms at 1,000 req/s | p99 {} − {} = {} ms (paired run); gateway-internal mean {} ms (/metrics) |",
            ms(g.p(0.99)),
            ms(d.p(0.99)),
            ms(g.p(0.99) - d.p(0.99)),
            ms(g.gateway
                .map_or(f64::NAN, |v| (v.predict_mean_us - v.model_mean_us) / 1000.0))
        )?;
    }
    writeln!(
        out,
        "| for scale: Feast's feature server alone | 340–510 req/s by default, ~1,900 tuned, on this kind of machine |\n"
    )?;

    writeln!(out, "## Open loop: fixed rates\n")?;
    writeln!(
        out,
        "| store | scenario | target req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | shed | other errors | hit % | send lag p99 µs | CPU µs/call | other load, cores |"
    )?;
    writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: |"
    )?;
    for s in steps {
        let Load::Open { rate } = s.load else {
            continue;
        };
        writeln!(
            out,
            "| {} | {} | {rate:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            s.backend,
            s.scenario,
            s.m.achieved,
            ms(s.p(0.5)),
            ms(s.p(0.99)),
            ms(s.p(0.999)),
            s.m.shed,
            s.errors_text(),
            s.gateway
                .map_or_else(|| "-".into(), |g| format!("{:.1}", g.hit_ratio * 100.0)),
            s.m.send_lag_p99_us
                .map_or_else(|| "-".into(), |l| l.to_string()),
            s.cpu_text(),
            s.other_cores
        )?;
    }

    writeln!(
        out,
        "\n## Gateway overhead by rate (open loop, cache hit)\n"
    )?;
    writeln!(
        out,
        "Paired: the gateway's percentile minus the direct model-server's at the same rate (percentiles do not subtract exactly; \
         this is the added latency at that percentile). 'In gateway' is the gateway's own accounting from /metrics, means over the step: \
         handler time (from the gRPC handler's start to its answer) / the model-server call within it / the rest (enrichment, post-processing). \
         Client latency minus handler time is spent outside the handler: the client, both HTTP/2 stacks, and waiting for a CPU.\n"
    )?;
    writeln!(
        out,
        "| req/s | gateway p50 / p99 ms | direct p50 / p99 ms | overhead p50 / p99 ms | in gateway: handler / model call / own, mean ms |"
    )?;
    writeln!(out, "| ---: | ---: | ---: | ---: | ---: |")?;
    for g in steps
        .iter()
        .filter(|s| s.backend == "embedded" && s.scenario == "hit")
    {
        let Load::Open { rate } = g.load else {
            continue;
        };
        let Some(d) = find(steps, "embedded", "direct", g.load) else {
            continue;
        };
        let v = g.gateway.unwrap_or_default();
        writeln!(
            out,
            "| {rate:.0} | {} / {} | {} / {} | {} / {} | {} |",
            ms(g.p(0.5)),
            ms(g.p(0.99)),
            ms(d.p(0.5)),
            ms(d.p(0.99)),
            ms(g.p(0.5) - d.p(0.5)),
            ms(g.p(0.99) - d.p(0.99)),
            v.text()
        )?;
    }

    writeln!(out, "\n## Closed loop: concurrent callers\n")?;
    writeln!(
        out,
        "'direct' is paced to the gateway-hit rate of the row above it, with as many callers (the paired run).\n"
    )?;
    writeln!(
        out,
        "| store | scenario | callers | req/s | p50 ms | p99 ms | p99.9 ms | shed | other errors | hit % | CPU µs/call | other load, cores |"
    )?;
    writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: |"
    )?;
    for s in steps {
        let Load::Closed { callers, .. } = s.load else {
            continue;
        };
        writeln!(
            out,
            "| {} | {} | {callers} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            s.backend,
            s.scenario,
            s.m.achieved,
            ms(s.p(0.5)),
            ms(s.p(0.99)),
            ms(s.p(0.999)),
            s.m.shed,
            s.errors_text(),
            s.gateway
                .map_or_else(|| "-".into(), |g| format!("{:.1}", g.hit_ratio * 100.0)),
            s.cpu_text(),
            s.other_cores
        )?;
    }

    writeln!(
        out,
        "\n## Gateway overhead by concurrency (closed loop, cache hit)\n"
    )?;
    writeln!(
        out,
        "| callers | req/s | gateway p50 / p99 ms | direct (same rate, same callers) p50 / p99 ms | overhead p50 / p99 ms | in gateway: handler / model call / own, mean ms |"
    )?;
    writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for &callers in &knobs.concurrency {
        let Some(g) = find(
            steps,
            "embedded",
            "hit",
            Load::Closed {
                callers,
                pace: None,
            },
        ) else {
            continue;
        };
        let Some(d) = steps.iter().find(|s| {
            s.scenario == "direct"
                && matches!(s.load, Load::Closed { callers: c, pace: Some(_) } if c == callers)
        }) else {
            continue;
        };
        let v = g.gateway.unwrap_or_default();
        writeln!(
            out,
            "| {callers} | {:.0} | {} / {} | {} / {} | {} / {} | {} |",
            g.m.achieved,
            ms(g.p(0.5)),
            ms(g.p(0.99)),
            ms(d.p(0.5)),
            ms(d.p(0.99)),
            ms(g.p(0.5) - d.p(0.5)),
            ms(g.p(0.99) - d.p(0.99)),
            v.text()
        )?;
    }
    writeln!(out, "\n![latency vs rate](gateway_latency.svg)\n")?;
    Ok(out)
}

/// Latency (p50 and p99, log scale) against the target rate, open loop.
fn svg(steps: &[Step]) -> String {
    let series: Vec<(&str, &str, &str, f64, &str)> = vec![
        (
            "embedded",
            "hit",
            "#1f77b4",
            0.99,
            "gateway, cache hit, p99",
        ),
        ("embedded", "hit", "#1f77b4", 0.5, "gateway, cache hit, p50"),
        (
            "embedded",
            "miss",
            "#d62728",
            0.99,
            "gateway, cache miss, p99",
        ),
        (
            "embedded",
            "direct",
            "#2ca02c",
            0.99,
            "model-server direct, p99",
        ),
        (
            "embedded",
            "direct",
            "#2ca02c",
            0.5,
            "model-server direct, p50",
        ),
        (
            "Cassandra",
            "miss",
            "#9467bd",
            0.99,
            "gateway, Cassandra miss, p99",
        ),
    ];
    let points = |backend: &str, scenario: &str, q: f64| -> Vec<(f64, f64)> {
        steps
            .iter()
            .filter(|s| s.backend == backend && s.scenario == scenario && s.m.ok > 0)
            .filter_map(|s| match s.load {
                Load::Open { rate } => Some((rate, s.p(q).max(0.01))),
                Load::Closed { .. } => None,
            })
            .collect()
    };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(b, s, _, q, _)| points(b, s, *q))
        .collect();
    let max_x = all.iter().map(|p| p.0).fold(1000.0, f64::max);
    let (lo, hi) = (0.1f64, all.iter().map(|p| p.1).fold(10.0, f64::max) * 1.2);
    let (w, h, left, top, right, bottom) = (760.0, 420.0, 60.0, 20.0, 230.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let x = |r: f64| left + r / max_x * pw;
    let y = |v: f64| top + ph - (v.log10() - lo.log10()) / (hi.log10() - lo.log10()) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="14" text-anchor="middle" font-size="13">Predict latency vs offered rate (open loop, from intended send time)</text>"#,
        left + pw / 2.0
    );
    for decade in [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
    ] {
        if decade < lo || decade > hi {
            continue;
        }
        let yy = y(decade);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{decade}</text>"##,
            left + pw,
            left - 4.0,
            yy + 4.0
        );
    }
    let step = if max_x > 20_000.0 {
        5000.0
    } else if max_x > 8000.0 {
        2000.0
    } else {
        1000.0
    };
    let mut r = 0.0;
    while r <= max_x {
        let xx = x(r);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{top}" y2="{}" stroke="#eee"/><text x="{xx:.1}" y="{}" text-anchor="middle">{r:.0}</text>"##,
            top + ph,
            top + ph + 14.0
        );
        r += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">offered rate, req/s</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">latency, ms (log)</text>"#,
        left + pw / 2.0,
        h - 12.0,
        top + ph / 2.0,
        top + ph / 2.0
    );
    let mut legend = 0.0;
    for (b, sc, color, q, label) in &series {
        let pts = points(b, sc, *q);
        if pts.is_empty() {
            continue;
        }
        let dash = if *q < 0.9 {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        };
        let path: Vec<String> = pts
            .iter()
            .map(|(r, v)| format!("{:.1},{:.1}", x(*r), y(*v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        for (r, v) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x(*r),
                y(*v)
            );
        }
        let ly = top + 10.0 + legend * 18.0;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{label}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
        legend += 1.0;
    }
    let _ = writeln!(s, "</svg>");
    s
}

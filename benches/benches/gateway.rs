//! Gateway load benchmark: gRPC `gateway.v1.PredictionService/Predict` through
//! the real gateway and model-server processes (release builds), on the
//! embedded store loaded with demo customers, and optionally as deployed:
//! the shipped config on Cassandra.
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
//! MLGW_BENCH_TOKEN (bearer token for every gateway call),
//! MLGW_BENCH_GATEWAY_EXTRA (TOML sections added to the embedded-store
//! gateway's config, e.g. `[prediction_log]` settings, for A/B runs),
//! MLGW_BENCH_MODEL_EXTRA (TOML added inside that gateway's `[[model]]`,
//! e.g. `[model.coalesce]` settings), MLGW_BENCH_STORE_EXTRA (keys added
//! to that gateway's embedded `[store]`, e.g. `cache_mib = 32`), MLGW_BENCH_GATEWAY_LOG (the gateway's log filter, default `warn`: its
//! info-level stage spans off; the shipped default is `info`),
//! MLGW_BENCH_TRANSPORT (`tcp`, default: the gateway and the bench's direct
//! calls reach the model-server over 127.0.0.1; `uds`: over its
//! `--grpc-socket` Unix-domain socket, the sidecar deployment), and for the
//! Cassandra run (the production configuration, [`production`]:
//! the shipped gateway.toml on Cassandra, shadows, prediction log, REST,
//! per-user tokens) MLGW_BENCH_GATEWAY_CASSANDRA=1 (start one with
//! tests/rig/cassandra.sh) or MLGW_BENCH_CASSANDRA=host:port (reuse one;
//! MLGW_BENCH_CASSANDRA_PID for its CPU), MLGW_BENCH_CASSANDRA_CUSTOMERS
//! (default 50000), MLGW_BENCH_CASSANDRA_RATES (default 500,1000,2000, then
//! rising), MLGW_BENCH_EVENTS (raw events per customer, default 20),
//! MLGW_BENCH_USERS (distinct users' tokens, default 50000).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use benches::cassandra::Cassandra;
use benches::demo::{Keys, load_embedded_profiles, model_request, predict_json, predict_request};
use benches::grpc_client::{
    Bearer, DirectClient, GatewayClient, channels, direct_clients, gateway_clients,
};
use benches::knobs::{env_list, env_num};
use benches::load::{self, Call, Load, Measured, Outcome, WARMUP};
use benches::process::{
    CpuProbe, CpuUse, GatewayProcess, GatewaySettings, gateway_config, report_in_scratch,
};
use benches::prometheus::{delta, failure_codes, scrape};
use benches::report::{Series, latency_chart, machine, ms, table_row};
use rig::metrics::Page;
use rig::{ModelServerProcess, example_repository_with, workspace_root};
use tonic::metadata::{Ascii, MetadataValue};

#[path = "gateway/production.rs"]
mod production;
use production::{ProductionNotes, ProductionSetup, run_production};

/// Callers share this many HTTP/2 connections, as a client pool would.
/// The throughput target, offered by 32 paced callers.
const TARGET_RATE: f64 = 5000.0;

const CONNECTIONS: usize = 4;
/// Deadline the client puts on every call (`grpc-timeout`).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Rising steps multiply the rate by this.
const RISE: f64 = 1.5;

/// TOML text from environment variable `var` (empty when unset), ending with
/// a newline so that the config's next section starts on a line of its own.
fn toml_lines(var: &str) -> String {
    let mut text = std::env::var(var).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

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
    /// TOML sections added to the embedded-store gateway's config.
    gateway_extra: String,
    /// TOML added inside its `[[model]]` (e.g. a `[model.coalesce]` section).
    model_extra: String,
    /// Keys added to its `[store]` table (e.g. `cache_mib = 32`).
    store_extra: String,
    /// How the gateway (and the direct calls) reach the model-server.
    transport: Transport,
    cassandra: CassandraMode,
    cassandra_customers: u64,
    cassandra_rates: Vec<f64>,
    /// Raw events per customer in the dynamic view (Cassandra run).
    events: u64,
    /// Distinct users' tokens (Cassandra run).
    users: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Uds,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Uds => "uds",
        }
    }
}

enum CassandraMode {
    Off,
    Start,
    Reuse(String),
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
            // Whole sections; they go before `[cache]` and `[model.postprocess]`.
            gateway_extra: toml_lines("MLGW_BENCH_GATEWAY_EXTRA"),
            model_extra: toml_lines("MLGW_BENCH_MODEL_EXTRA"),
            store_extra: toml_lines("MLGW_BENCH_STORE_EXTRA"),
            transport: match std::env::var("MLGW_BENCH_TRANSPORT").as_deref() {
                Err(_) | Ok("tcp") => Transport::Tcp,
                Ok("uds") => Transport::Uds,
                Ok(other) => bail!("MLGW_BENCH_TRANSPORT={other}: write tcp or uds"),
            },
            cassandra,
            cassandra_customers: env_num("MLGW_BENCH_CASSANDRA_CUSTOMERS", 50_000.0)? as u64,
            cassandra_rates: env_list("MLGW_BENCH_CASSANDRA_RATES", &[500.0, 1000.0, 2000.0])?,
            events: env_num("MLGW_BENCH_EVENTS", 20.0)? as u64,
            users: env_num("MLGW_BENCH_USERS", 50_000.0)? as u64,
        };
        if knobs.seconds <= 0.0
            || knobs.rates.iter().any(|r| *r <= 0.0)
            || knobs.concurrency.contains(&0)
            || knobs.hot_keys == 0
            || knobs.customers < knobs.hot_keys
            || knobs.cassandra_customers < knobs.hot_keys
            || knobs.users == 0
        {
            bail!(
                "bad knobs: seconds, rates, callers and hot keys must be positive, customers ≥ hot keys"
            );
        }
        Ok(knobs)
    }
}

// ---------------------------------------------------------------------------
// The targets

/// Where the calls go.
enum Target {
    /// gRPC `Predict`, every call with the clients' one token.
    Gateway {
        clients: Vec<GatewayClient>,
        keys: Keys,
    },
    /// REST `POST /v1/models/fraud_detector/predict`, JSON both ways.
    Rest {
        http: reqwest::Client,
        url: String,
        authorization: String,
        keys: Keys,
    },
    /// gRPC `Predict`, each call with the next user's own token (cycling
    /// through all of them, shared by every step).
    Users {
        clients: Vec<GatewayClient>,
        tokens: Vec<MetadataValue<Ascii>>,
        next: AtomicU64,
        keys: Keys,
    },
    /// The same row straight to the model-server's `ModelInfer`, at
    /// `version` (`""`: its default).
    Direct {
        clients: Vec<DirectClient>,
        hot: u64,
        version: &'static str,
    },
}

impl Call for Target {
    async fn call(&self, k: u64) -> Outcome {
        let conn = (k as usize) % CONNECTIONS;
        let result = match self {
            Target::Gateway { clients, keys } => {
                let mut request = tonic::Request::new(predict_request(keys.customer(k), k));
                request.set_timeout(CALL_TIMEOUT);
                clients[conn].clone().predict(request).await.map(drop)
            }
            Target::Users {
                clients,
                tokens,
                next,
                keys,
            } => {
                let mut request = tonic::Request::new(predict_request(keys.customer(k), k));
                request.set_timeout(CALL_TIMEOUT);
                let user = next.fetch_add(1, Ordering::Relaxed) as usize % tokens.len();
                request
                    .metadata_mut()
                    .insert("authorization", tokens[user].clone());
                clients[conn].clone().predict(request).await.map(drop)
            }
            Target::Direct {
                clients,
                hot,
                version,
            } => {
                let mut row = model_request(k % hot, k);
                row.model_version = (*version).to_owned();
                let mut request = tonic::Request::new(row);
                request.set_timeout(CALL_TIMEOUT);
                clients[conn].clone().model_infer(request).await.map(drop)
            }
            Target::Rest {
                http,
                url,
                authorization,
                keys,
            } => {
                let sent = http
                    .post(url)
                    .header(http::header::AUTHORIZATION, authorization)
                    .json(&predict_json(keys.customer(k), k))
                    .timeout(CALL_TIMEOUT)
                    .send()
                    .await;
                return match sent {
                    Ok(answer) => {
                        let status = answer.status();
                        // Read the whole answer, as a caller would.
                        let body = answer.bytes().await;
                        match (status.as_u16(), body) {
                            (200, Ok(_)) => Outcome::Ok,
                            (429, _) => Outcome::Shed,
                            (200, Err(_)) => Outcome::failed("body"),
                            (code, _) => Outcome::failed(code.to_string()),
                        }
                    }
                    Err(e) if e.is_timeout() => Outcome::failed("timeout"),
                    Err(_) => Outcome::failed("transport"),
                };
            }
        };
        Outcome::from_grpc(&result)
    }
}

// ---------------------------------------------------------------------------
// Cassandra

/// The bench's node per `mode`: none, one given by MLGW_BENCH_CASSANDRA
/// (left alone), or one started in `scratch` (stopped on drop).
fn start_cassandra(mode: &CassandraMode, scratch: &Path) -> Result<Option<Cassandra>> {
    match mode {
        CassandraMode::Off => Ok(None),
        CassandraMode::Reuse(addr) => Ok(Some(Cassandra::outside(addr.clone()))),
        CassandraMode::Start => Cassandra::start(scratch.join("cassandra-rig")).map(Some),
    }
}

// ---------------------------------------------------------------------------
// Steps

/// The gateway's own accounting over one step, from /metrics.
#[derive(Default, Clone, Copy)]
struct GatewayView {
    /// Mean end-to-end time inside the gateway of a successful prediction, µs.
    predict_mean_us: f64,
    /// Mean time of its model-server call, µs.
    model_mean_us: f64,
    /// Predictions per `ModelInfer` call of the callers' clients (above 1
    /// when predictions were sent together, `[model.coalesce]`).
    rows_per_call: f64,
    /// Share of feature-cache reads answered from the cache.
    hit_ratio: f64,
}

impl GatewayView {
    fn text(&self) -> String {
        format!(
            "{} / {} / {} | {:.2}",
            ms(self.predict_mean_us / 1000.0),
            ms(self.model_mean_us / 1000.0),
            ms((self.predict_mean_us - self.model_mean_us) / 1000.0),
            self.rows_per_call
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
    /// CPU µs per completed call, per probed process, and the cores kept
    /// busy by everything else on the machine during the step (other users'
    /// builds and tests share it).
    cpu: CpuUse,
}

impl Step {
    fn p(&self, q: f64) -> f64 {
        self.m.p_ms(q)
    }
    fn errors(&self) -> u64 {
        self.m.error_count()
    }
    fn errors_text(&self) -> String {
        let mut text = self.m.errors_text();
        if !self.gateway_failures.is_empty() {
            let _ = write!(text, " (gateway: {})", self.gateway_failures);
        }
        text
    }
    /// A results-table row: store, scenario, `load` (rate or callers),
    /// throughput and latency, shed, other errors, hit %, the `extra` cells,
    /// then CPU per call and the other load.
    fn table_row(&self, load: &str, extra: &[String]) -> String {
        let head = [self.backend, self.scenario, load].map(str::to_owned);
        let figures = [
            self.m.latency_cells(),
            self.m.shed.to_string(),
            self.errors_text(),
            self.hit_percent(),
        ];
        let cpu = [self.cpu_text(), format!("{:.2}", self.cpu.other_cores)];
        table_row(head.iter().chain(&figures).chain(extra).chain(&cpu))
    }

    /// The gateway's row-cache hit ratio in %, `-` where no gateway ran.
    fn hit_percent(&self) -> String {
        self.gateway
            .map_or_else(|| "-".into(), |g| format!("{:.1}", g.hit_ratio * 100.0))
    }
    fn cpu_text(&self) -> String {
        self.cpu.text()
    }
}

fn view(before: &Page, after: &Page) -> GatewayView {
    let d = |name: &str| delta(before, after, name);
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
        rows_per_call: {
            let callers = |name: &str| {
                let pool = [("pool", "callers")];
                after.sum(name, &pool) - before.sum(name, &pool)
            };
            callers("mlgw_model_call_rows_total") / callers("mlgw_model_calls_total")
        },
        hit_ratio: if hits + misses > 0.0 {
            hits / (hits + misses)
        } else {
            f64::NAN
        },
    }
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
        let mark = self.probe.begin();
        let m = load::run(target, load, self.seconds).await?;
        let cpu = self.probe.end(mark, m.completed_all);
        let (gateway, gateway_failures) = match (gateway_http, before) {
            (Some(g), Some(b)) => {
                let after = scrape(&self.http, g).await?;
                (Some(view(&b, &after)), failure_codes(&b, &after))
            }
            _ => (None, String::new()),
        };
        let step = Step {
            backend,
            scenario,
            load,
            m,
            gateway,
            gateway_failures,
            cpu,
        };
        let load_text = load.text();
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
            step.cpu.other_cores,
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
    report_in_scratch("gw", run).await
}

async fn run(scratch: PathBuf) -> Result<String> {
    let (knobs, scratch) = (&Knobs::from_env()?, scratch.as_path());
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
    if !matches!(knobs.cassandra, CassandraMode::Off) {
        // The shipped config serves these too.
        repo.add_model_as("customer_risk", "1", &["1"])?;
        repo.add_model_as("txn_pattern", "1", &["1"])?;
    }
    let model_config = std::fs::read_to_string(repo.path.join("fraud_detector/config.toml"))?;
    let queue_delay = model_config
        .lines()
        .find(|l| l.starts_with("max_queue_delay_ms"))
        .unwrap_or("max_queue_delay_ms = ?")
        .to_owned();
    let socket = scratch.join("model-server.sock");
    let socket_arg = socket.to_string_lossy().into_owned();
    let ms_args: &[&str] = match knobs.transport {
        Transport::Tcp => &[],
        Transport::Uds => &["--grpc-socket", &socket_arg],
    };
    let mut model_server = ModelServerProcess::start(&repo.path, ms_args).await?;
    model_server.wait_ready(Duration::from_secs(120)).await?;
    let model_url = match knobs.transport {
        Transport::Tcp => model_server.grpc_url.clone(),
        Transport::Uds => model_server
            .grpc_socket_url
            .clone()
            .context("the model-server did not print its grpc_socket")?,
    };
    eprintln!(
        "the gateway reaches the model-server over {} ({model_url})",
        knobs.transport.name()
    );
    let ms_pid = model_server.pid().context("model-server pid")?.to_string();

    // Demo data in the embedded store.
    let redb = scratch.join("features.redb");
    let load_seconds = load_embedded_profiles(&redb, knobs.customers, scratch).await?;
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
        &GatewaySettings {
            model_grpc: &model_url,
            store: &format!(
                "[store]\nbackend = \"embedded\"\npath = \"{}\"\n{}",
                redb.display(),
                knobs.store_extra
            ),
            max_concurrent: knobs.max_concurrent,
            model_extra: &knobs.model_extra,
            extra: &knobs.gateway_extra,
        },
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
    let gw_channels = channels(&gateway.grpc, CONNECTIONS).await?;
    let gateway_clients: Vec<GatewayClient> = gateway_clients(&gw_channels, &bearer);
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
        clients: direct_clients(&channels(&model_url, CONNECTIONS).await?),
        hot: knobs.hot_keys,
        version: "",
    });
    // Fail loudly before measuring anything if a call does not go through.
    for (name, t) in [("gateway", &hot), ("model-server", &direct)] {
        if let Some(code) = t.call(0).await.failure() {
            bail!(
                "a first call to the {name} failed with {code}; see {}",
                gateway.log.display()
            );
        }
    }
    // Warm the hot set into the row cache (and both paths), unmeasured.
    for k in 0..knobs.hot_keys.max(2000) {
        if let Some(code) = hot.call(k).await.failure() {
            bail!("warming the cache: a call failed with {code}");
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
    // The target's load: 32 callers together offering 5,000 calls a second.
    // Unpaced callers saturate by definition (latency = callers / throughput).
    let target_load = Load::Closed {
        callers: 32,
        pace: Some(TARGET_RATE),
    };
    runner.step(emb, "hit", &hot, g, target_load).await?;
    runner
        .step(emb, "direct", &direct, None, target_load)
        .await?;
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

    // --- Cassandra, the production configuration (opt-in) -------------------
    let mut production = None;
    if let Some(node) = start_cassandra(&knobs.cassandra, scratch)? {
        let setup = ProductionSetup {
            knobs,
            node: &node,
            model_url: &model_url,
            ms_pid: &ms_pid,
            scratch,
            configs: &configs,
        };
        production = Some(run_production(&mut runner, &setup).await?);
        drop(node);
    }
    model_server.stop().await?;

    let report = report(
        &runner.steps,
        knobs,
        &queue_delay,
        load_seconds,
        production.as_ref(),
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

fn report(
    steps: &[Step],
    knobs: &Knobs,
    queue_delay: &str,
    load_seconds: f64,
    production: Option<&ProductionNotes>,
) -> Result<String> {
    let mut out = String::new();
    let (cores, cpu) = machine();
    let log_filter = benches::process::gateway_log_filter();
    writeln!(out, "# Gateway load benchmark\n")?;
    writeln!(out, "Commit {}.", benches::report::commit())?;
    writeln!(
        out,
        "Command: `cargo build --release -p model-server -p gateway && {}{}cargo bench -p benches --bench gateway` \
         (MLGW_BENCH_SECONDS={}, MLGW_BENCH_RATES={}, MLGW_BENCH_CONCURRENCY={}, MLGW_BENCH_CUSTOMERS={}, MLGW_BENCH_HOT_KEYS={}{}).\n",
        match knobs.transport {
            Transport::Tcp => "",
            Transport::Uds => "MLGW_BENCH_TRANSPORT=uds ",
        },
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
                ", MLGW_BENCH_CASSANDRA_RATES={}, MLGW_BENCH_CASSANDRA_CUSTOMERS={}, MLGW_BENCH_EVENTS={}, MLGW_BENCH_USERS={}",
                knobs
                    .cassandra_rates
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(","),
                knobs.cassandra_customers,
                knobs.events,
                knobs.users
            ),
        }
    )?;
    writeln!(
        out,
        "Setup: the benchmark client, the gateway and the model-server (release builds) all on one {cores}-core machine ({cpu}); the client reaches the gateway over 127.0.0.1, and the gateway (and the direct calls) reach the model-server {}. \
         gRPC `Predict` for `fraud_detector` (default version, v2 MLP) with one customer ID and four request features; \
         the client uses {CONNECTIONS} HTTP/2 connections and a {}-s deadline per call. Gateway: the shipped settings \
         (max_concurrent_requests {}, request_timeout 1000 ms, model timeout 300 ms, 256 MiB row cache, dynamic features read from the store on every call){}; log filter `MLGW_LOG={}`{}. \
         Model-server: the example model's config ({queue_delay}, max_batch_size 64, 2 inference threads). \
         Embedded store: {} customers loaded by a refresh run ({load_seconds:.1} s). \
         **hit**: {} hot customers, warmed into the row cache first; **miss**: every call a customer not asked for before in the run \
         (a permutation of all loaded customers), so the static row is read from the store; in both, the dynamic view is read from the store \
         (no dynamic values are loaded, so it is a lookup that finds nothing). **direct**: the same FP32 row sent straight to the model-server's \
         `ModelInfer`, the paired run for the gateway's overhead. Each step has {:.1} s of unmeasured warm-up.\n",
        match knobs.transport {
            Transport::Tcp => "over 127.0.0.1 too",
            Transport::Uds =>
                "over its Unix-domain socket (`--grpc-socket`, MLGW_BENCH_TRANSPORT=uds: the sidecar deployment)",
        },
        CALL_TIMEOUT.as_secs(),
        knobs.max_concurrent,
        [
            (
                &knobs.gateway_extra,
                "its config (MLGW_BENCH_GATEWAY_EXTRA)"
            ),
            (
                &knobs.model_extra,
                "its `[[model]]` (MLGW_BENCH_MODEL_EXTRA)"
            ),
            (&knobs.store_extra, "its `[store]` (MLGW_BENCH_STORE_EXTRA)"),
        ]
        .iter()
        .filter(|(extra, _)| !extra.is_empty())
        .map(|(extra, to)| format!(
            ", with `{}` added to {to}",
            extra.trim().replace('\n', "; ")
        ))
        .collect::<String>(),
        log_filter,
        if log_filter == "warn" {
            " (the shipped default is `info`; at `warn` the per-stage spans are not created)"
        } else {
            ""
        },
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
        if production.is_none() {
            ""
        } else {
            " (/ Cassandra)"
        }
    )?;
    if let Some(p) = production {
        writeln!(
            out,
            "**Cassandra (the production configuration).** The shipped `gateway/config/gateway.toml` as it is, but for its store \
             (single-node Cassandra 5.0 from tests/rig/cassandra.sh on the same two cores), its SSO (an OIDC issuer served by the \
             bench, RS256 tokens shaped like the oidc-provider's, verified by the gateway as in production) and the model-server's \
             address: `fraud_detector` routed to version 1 with versions 2 and 3 shadowed on every call, the prediction log on, \
             the row cache, coalescing and dynamic features (`dynamic_ttl_ms = 0`: read on every call) as shipped. {} customers \
             loaded by a refresh run ({:.1} s), each with its two pushed activity values and {} raw events in the last 23 hours, \
             a quarter of them inside the last hour ({:.1} s to write), so every windowed aggregate reads events. \
             **hit**: the {} hot customers' static rows cached (the dynamic view still read from Cassandra on each call); \
             **miss**: static rows read from Cassandra too; **hit REST**: the same calls as JSON over `POST /v1/models/fraud_detector/predict` \
             (HTTP/1.1, a pool of keep-alive connections); **hit, per-user tokens**: each call carries the next of {} users' own tokens; \
             **hit, no shadows**: a second gateway, the same config with `shadow = []`; **direct**: the same row to version 1. \
             After the load the bench waited {:.0} s for Cassandra to go quiet (under 0.1 core: its flushes and compactions done); \
             JVM and read path warmed for 10 s first. {}\n",
            knobs.cassandra_customers,
            p.load_seconds.0,
            knobs.events,
            p.load_seconds.1,
            knobs.hot_keys,
            knobs.users,
            p.settled_seconds,
            p.tokens
        )?;
        writeln!(
            out,
            "Prediction log, checked after each gateway's last step:\n"
        )?;
        for line in &p.log_books {
            writeln!(out, "- {line}")?;
        }
        writeln!(out)?;
    }

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
    if let Some(s) = find(
        steps,
        "embedded",
        "hit",
        Load::Closed {
            callers: 32,
            pace: Some(TARGET_RATE),
        },
    ) {
        writeln!(
            out,
            "| full Predict, cache hit, 32 callers offering 5,000 req/s together: ≥ 5,000 req/s with p99 < 5 ms | {:.0} req/s, p50 {} ms, p99 {} ms, p99.9 {} ms (timed from each call's due time) |",
            s.m.achieved,
            ms(s.p(0.5)),
            ms(s.p(0.99)),
            ms(s.p(0.999))
        )?;
    }
    if let Some(s) = c32 {
        writeln!(
            out,
            "| the same 32 callers unpaced (each sends again as soon as answered: the machine's ceiling) | {:.0} req/s, p99 {} ms; with 32 calls always in flight the mean latency is 32 / throughput = {:.2} ms by Little's law |",
            s.m.achieved,
            ms(s.p(0.99)),
            32_000.0 / s.m.achieved
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
    production::targets(&mut out, steps)?;
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
        let send_lag =
            s.m.send_lag_p99_us
                .map_or_else(|| "-".into(), |l| l.to_string());
        writeln!(out, "{}", s.table_row(&format!("{rate:.0}"), &[send_lag]))?;
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
         Client latency minus handler time is spent outside the handler: the client, both HTTP/2 stacks, and waiting for a CPU. \
         'Predictions per model call': rows over `ModelInfer` calls sent by the gateway (`mlgw_model_call_rows_total` / `mlgw_model_calls_total`); \
         above 1 when predictions that arrived while the model-server was busy went together (`[model.coalesce]`).\n"
    )?;
    writeln!(
        out,
        "| req/s | gateway p50 / p99 ms | direct p50 / p99 ms | overhead p50 / p99 ms | in gateway: handler / model call / own, mean ms | predictions per model call |"
    )?;
    writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: |")?;
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
        let rate = format!("{rate:.0}");
        writeln!(
            out,
            "{}",
            table_row([rate].into_iter().chain(overhead_cells(g, d)))
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
        let Load::Closed { callers, pace } = s.load else {
            continue;
        };
        let callers = match pace {
            Some(r) if s.scenario != "direct" => format!("{callers}, paced {r:.0}/s"),
            _ => callers.to_string(),
        };
        writeln!(out, "{}", s.table_row(&callers, &[]))?;
    }

    writeln!(
        out,
        "\n## Gateway overhead by concurrency (closed loop, cache hit)\n"
    )?;
    writeln!(
        out,
        "| callers | req/s | gateway p50 / p99 ms | direct (same rate, same callers) p50 / p99 ms | overhead p50 / p99 ms | in gateway: handler / model call / own, mean ms | predictions per model call |"
    )?;
    writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    // Each closed-loop hit step (unpaced, then the paced one) is followed by
    // its paired direct step.
    for (i, g) in steps.iter().enumerate() {
        let Load::Closed { callers, pace } = g.load else {
            continue;
        };
        if g.backend != "embedded" || g.scenario != "hit" {
            continue;
        }
        let Some(d) = steps.get(i + 1).filter(|d| {
            d.scenario == "direct"
                && matches!(d.load, Load::Closed { callers: c, .. } if c == callers)
        }) else {
            continue;
        };
        let who = match pace {
            None => callers.to_string(),
            Some(rate) => format!("{callers}, paced {rate:.0}/s"),
        };
        let head = [who, format!("{:.0}", g.m.achieved)];
        writeln!(
            out,
            "{}",
            table_row(head.into_iter().chain(overhead_cells(g, d)))
        )?;
    }
    writeln!(out, "\n![latency vs rate](gateway_latency.svg)\n")?;
    Ok(out)
}

/// The overhead tables' cells for gateway step `g` and its paired direct
/// step `d`: each one's p50 / p99, their difference, and the gateway's own
/// accounting.
fn overhead_cells(g: &Step, d: &Step) -> [String; 4] {
    let pair = |a: f64, b: f64| format!("{} / {}", ms(a), ms(b));
    [
        pair(g.p(0.5), g.p(0.99)),
        pair(d.p(0.5), d.p(0.99)),
        pair(g.p(0.5) - d.p(0.5), g.p(0.99) - d.p(0.99)),
        g.gateway.unwrap_or_default().text(),
    ]
}

/// Latency (p50 and p99, log scale) against the target rate, open loop.
fn svg(steps: &[Step]) -> String {
    let series: Vec<(&str, &str, &'static str, f64, &str)> = vec![
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
            "hit",
            "#ff7f0e",
            0.99,
            "gateway, Cassandra hit (shipped config), p99",
        ),
        (
            "Cassandra",
            "hit REST",
            "#8c564b",
            0.99,
            "REST, Cassandra hit, p99",
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
    let series: Vec<Series> = series
        .iter()
        .map(|(b, sc, color, q, label)| Series {
            label: (*label).to_owned(),
            color,
            dashed: *q < 0.9,
            line: true,
            points: points(b, sc, *q),
        })
        .collect();
    latency_chart(
        "Predict latency vs offered rate (open loop, from intended send time)",
        &series,
    )
}

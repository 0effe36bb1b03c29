//! Batch-scoring benchmark: end-to-end scoring throughput of `mlgw-score`
//! (bulk view scan, the live path's row assembly, model-server calls,
//! post-processing, writes of the new batch, the switch) on the embedded
//! store and on Cassandra, side by side; and the latency of a precomputed
//! answer through the gateway against a live one at the same open-loop
//! rates.
//!
//! Starts the example model-server (release build), loads demo customers
//! into each store, and runs `mlgw-score run customer_risk_daily` with the
//! shipped job and the CLI's default batch size and calls in flight, several
//! rounds per store (figures: rows/s of the run, from its start to the
//! switch; whole-machine core-µs per row, which includes the model-server
//! and, for Cassandra, its JVM). Then the gateway on the scored embedded
//! store, with `customer_risk` at `precomputed = "first"` (every call a hit)
//! and at `"off"` (every call live), alternating per round, answers gRPC
//! `Predict` for a warmed hot set at each rate.
//!
//! Run (release binaries first):
//!   cargo build --release -p model-server -p gateway && cargo bench -p benches --bench scoring
//! Results: benches/results/scoring.md.
//!
//! Knobs: MLGW_BENCH_CUSTOMERS (default 200000), MLGW_BENCH_ROUNDS (3),
//! MLGW_BENCH_RATES (gateway, default 1000,5000), MLGW_BENCH_SECONDS (per
//! rate, 5), MLGW_BENCH_HOT_KEYS (customers asked for, 20000),
//! MLGW_BENCH_CASSANDRA (host:port of a node to use instead of starting one).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use benches::cassandra::Cassandra;
use benches::demo::{customer_id, load_embedded_profiles, load_profiles};
use benches::grpc_client::{Bearer, GatewayClient, channels, gateway_clients};
use benches::knobs::{env_list, env_num, list_text};
use benches::load::{self, Call, Load, Measured, Outcome};
use benches::process::{
    GatewayProcess, GatewaySettings, ModelServer, gateway_config_with_auth, machine_busy_seconds,
    report_in_scratch,
};
use benches::report::{commit, machine, markdown_table, median, ms, range};
use proto::gateway::v1 as gw;
use rig::{binary, example_repository, workspace_root};
use serde_json::Value;

/// The job scored, and its model.
const JOB: &str = "customer_risk_daily";
const MODEL: &str = "customer_risk";
/// Targets of the issue, rows/s.
const EMBEDDED_TARGET: f64 = 50_000.0;
const CASSANDRA_TARGET: f64 = 10_000.0;
/// Callers share this many HTTP/2 connections.
const CONNECTIONS: usize = 4;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

struct Knobs {
    customers: u64,
    rounds: usize,
    rates: Vec<f64>,
    seconds: f64,
    hot: u64,
}

impl Knobs {
    fn from_env() -> Result<Self> {
        let k = Knobs {
            customers: env_num("MLGW_BENCH_CUSTOMERS", 200_000.0)? as u64,
            rounds: env_num("MLGW_BENCH_ROUNDS", 3.0)? as usize,
            rates: env_list("MLGW_BENCH_RATES", &[1000.0, 5000.0])?,
            seconds: env_num("MLGW_BENCH_SECONDS", 5.0)?,
            hot: env_num("MLGW_BENCH_HOT_KEYS", 20_000.0)? as u64,
        };
        ensure!(
            k.customers > 0 && k.rounds > 0 && k.seconds > 0.0 && k.hot > 0 && k.hot <= k.customers,
            "bad knobs: customers, rounds, seconds and hot keys must be positive, hot keys ≤ customers"
        );
        Ok(k)
    }
}

/// The `[[model]]` tables of the scored model, after the dev issuer's rules.
fn scored_model(endpoint: &str, precomputed: &str) -> String {
    format!(
        "[[auth.allow]]\napi = \"admin\"\ngroups = [\"fraud-team\"]\n\
         [[model]]\nname = \"{MODEL}\"\nendpoint = \"{endpoint}\"\ntimeout_ms = 300\nprecomputed = \"{precomputed}\"\n\
         [model.routing]\nstable = \"1\"\n\
         [model.postprocess]\nscores_output = \"probabilities\"\nlabels = [\"legit\", \"fraud\"]\npositive_label = \"fraud\"\nthreshold = 0.5\n"
    )
}

fn config(dir: &Path, model_grpc: &str, store: &str, precomputed: &str) -> Result<PathBuf> {
    gateway_config_with_auth(
        dir,
        &GatewaySettings {
            model_grpc,
            store,
            max_concurrent: 256,
            model_extra: "",
            extra: "",
        },
        &scored_model(model_grpc, precomputed),
    )
}

/// One scoring run as measured.
struct Run {
    store: &'static str,
    rows: u64,
    seconds: f64,
    rows_per_s: f64,
    core_us_per_row: f64,
}

/// Runs the job once with `config` and checks it scored every customer.
async fn score(store: &'static str, config: &Path, customers: u64) -> Result<Run> {
    let busy = machine_busy_seconds();
    let out = tokio::process::Command::new(binary("mlgw-score")?)
        .arg("--config")
        .arg(config)
        .args(["run", JOB, "--json"])
        .env("MLGW_LOG", "warn")
        .output()
        .await?;
    let busy = machine_busy_seconds() - busy;
    ensure!(
        out.status.success(),
        "mlgw-score on {store}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let rows = report["scored"].as_u64().context("scored")?;
    ensure!(
        rows == customers && report["outcome"] == "served",
        "{store}: {report}"
    );
    let run = Run {
        store,
        rows,
        seconds: report["elapsed_s"].as_f64().context("elapsed_s")?,
        rows_per_s: report["rows_per_second"]
            .as_f64()
            .context("rows_per_second")?,
        core_us_per_row: busy * 1e6 / rows as f64,
    };
    eprintln!(
        "{store}: {} rows in {:.2} s = {:.0} rows/s, {:.1} core-µs/row (whole machine)",
        run.rows, run.seconds, run.rows_per_s, run.core_us_per_row
    );
    Ok(run)
}

/// `Predict` of `customer_risk` for the hot customers; an answer of the
/// other source than expected counts as a failure.
struct Scored {
    clients: Vec<GatewayClient>,
    hot: u64,
    source: &'static str,
}

impl Call for Scored {
    async fn call(&self, k: u64) -> Outcome {
        let mut request = tonic::Request::new(gw::PredictRequest {
            model: MODEL.into(),
            model_version: String::new(),
            entity: Some(gw::EntityKey {
                keys: HashMap::from([("customer_id".into(), customer_id(k % self.hot))]),
            }),
            request_features: HashMap::new(),
        });
        request.set_timeout(CALL_TIMEOUT);
        let result = self.clients[(k as usize) % CONNECTIONS]
            .clone()
            .predict(request)
            .await;
        match &result {
            Ok(r) if r.get_ref().source != self.source => Outcome::failed("wrong_source"),
            _ => Outcome::from_grpc(&result),
        }
    }
}

/// One gateway step.
struct Step {
    source: &'static str,
    rate: f64,
    m: Measured,
}

async fn gateway_round(
    knobs: &Knobs,
    config: &Path,
    source: &'static str,
    log: PathBuf,
    steps: &mut Vec<Step>,
) -> Result<()> {
    let gateway = GatewayProcess::start(config, log).await?;
    let bearer = Bearer::new(&gateway.banner)?;
    let clients = gateway_clients(&channels(&gateway.grpc, CONNECTIONS).await?, &bearer);
    let target = Arc::new(Scored {
        clients,
        hot: knobs.hot,
        source,
    });
    if let Some(code) = target.call(0).await.failure() {
        bail!(
            "a first {source} call failed with {code}; see {}",
            gateway.log.display()
        );
    }
    // The hot set into the caches (entries or rows), unmeasured.
    load::run(
        &target,
        Load::Closed {
            callers: 16,
            pace: None,
        },
        (knobs.hot as f64 / 2000.0).max(2.0),
    )
    .await?;
    for &rate in &knobs.rates {
        let m = load::run(&target, Load::Open { rate }, knobs.seconds).await?;
        eprintln!(
            "{source} {rate:.0}/s: {}, shed {}, errors {}",
            m.summary(),
            m.shed,
            m.errors_text()
        );
        steps.push(Step { source, rate, m });
    }
    drop(target);
    gateway.stop().await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    report_in_scratch("scoring", run).await
}

async fn run(scratch: PathBuf) -> Result<String> {
    let (knobs, scratch) = (&Knobs::from_env()?, scratch.as_path());
    let server =
        ModelServer::start(&example_repository(), scratch.join("model-server.log")).await?;
    let grpc = server.grpc_url();
    let configs = scratch.join("configs");
    std::fs::create_dir_all(&configs)?;

    // Embedded.
    let redb = scratch.join("features.redb");
    let loaded = load_embedded_profiles(&redb, knobs.customers, scratch).await?;
    eprintln!(
        "embedded: {} customers loaded in {loaded:.1} s",
        knobs.customers
    );
    let embedded_store = format!(
        "[store]\nbackend = \"embedded\"\npath = \"{}\"",
        redb.display()
    );
    let embedded = config(&configs, &grpc, &embedded_store, "first")?;
    let mut runs = Vec::new();
    for _ in 0..knobs.rounds {
        runs.push(score("embedded", &embedded, knobs.customers).await?);
    }

    // Cassandra.
    let node = match std::env::var("MLGW_BENCH_CASSANDRA") {
        Ok(addr) => Cassandra::outside(addr),
        Err(_) => Cassandra::start(scratch.join("cassandra-rig"))?,
    };
    let node_note = if node.owned {
        "one Cassandra 5.0 node started by the bench (tests/rig/cassandra.sh, its default settings)"
            .to_owned()
    } else {
        format!(
            "the Cassandra node at {} (MLGW_BENCH_CASSANDRA, not started by the bench)",
            node.addr
        )
    };
    let keyspace = format!("bench_scoring_{}", std::process::id());
    {
        let store = benches::cassandra::store(&node.addr, keyspace.clone()).await?;
        let loaded = load_profiles(&store, knobs.customers, scratch).await?;
        eprintln!(
            "cassandra: {} customers loaded in {loaded:.1} s",
            knobs.customers
        );
    }
    let cassandra_store = format!(
        "[store]\nbackend = \"scylla\"\nnodes = [\"{}\"]\nkeyspace = \"{keyspace}\"\nread_timeout_ms = 5000\nwrite_timeout_ms = 10000",
        node.addr
    );
    let cassandra = config(&configs, &grpc, &cassandra_store, "first")?;
    for _ in 0..knobs.rounds {
        runs.push(score("cassandra", &cassandra, knobs.customers).await?);
    }
    drop(node);

    // The gateway on the scored embedded store: hits against live calls.
    let live = config(&configs, &grpc, &embedded_store, "off")?;
    let mut steps = Vec::new();
    for round in 0..knobs.rounds {
        let order: [(&Path, &'static str); 2] = if round % 2 == 0 {
            [(&embedded, "precomputed"), (&live, "live")]
        } else {
            [(&live, "live"), (&embedded, "precomputed")]
        };
        for (cfg, source) in order {
            let log = scratch.join(format!("gateway-{round}-{source}.log"));
            gateway_round(knobs, cfg, source, log, &mut steps).await?;
        }
    }
    drop(server);

    let report = report(knobs, &runs, &steps, &node_note)?;
    let dir = workspace_root().join("benches/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("scoring.md"), &report)?;
    Ok(report)
}

/// `lo–hi` of the finite values, no decimals.
fn range_text(v: &[f64]) -> String {
    let (lo, hi) = range(v);
    format!("{lo:.0}–{hi:.0}")
}

fn report(knobs: &Knobs, runs: &[Run], steps: &[Step], node: &str) -> Result<String> {
    let mut out = String::new();
    let (cores, cpu) = machine();
    writeln!(out, "# Batch scoring: throughput and precomputed answers\n")?;
    writeln!(
        out,
        "Commit `{}`. Command: `cargo build --release -p model-server -p gateway && MLGW_BENCH_CUSTOMERS={} MLGW_BENCH_ROUNDS={} MLGW_BENCH_RATES={} MLGW_BENCH_SECONDS={} MLGW_BENCH_HOT_KEYS={} cargo bench -p benches --bench scoring` (source: benches/benches/scoring.rs).\n",
        commit(),
        knobs.customers,
        knobs.rounds,
        list_text(&knobs.rates),
        knobs.seconds,
        knobs.hot
    )?;
    writeln!(
        out,
        "Machine: **everything on one {cores}-core machine** ({cpu}): `mlgw-score`, the model-server, the gateway, the load client and (for its rows) {node}, release builds over 127.0.0.1.\n"
    )?;
    writeln!(
        out,
        "## Scoring throughput\n\n`mlgw-score run {JOB}` as shipped (`feature-store/definitions/fraud.toml`: every customer of `customer_profile`'s current batch, key = the entity; CLI defaults: 256 rows per model-server call, 4 calls in flight) over {} demo customers, {} runs per store. \
         End to end: the bulk scan of the view's batch, each row assembled by the live path's enrichment, the model-server (`customer_risk` v1, logistic regression on 5 columns), post-processing, the writes of the new batch (embedded: one transaction per 256 entries; Cassandra: the parallel write loop), the batch records and the switch. \
         rows/s is the CLI's own figure (scored rows over the run's wall time); core-µs per row is the whole machine's busy CPU over the process's life (model-server and Cassandra included) divided by the rows.\n",
        knobs.customers, knobs.rounds
    )?;
    let mut rows = Vec::new();
    for (store, target) in [
        ("embedded", EMBEDDED_TARGET),
        ("cassandra", CASSANDRA_TARGET),
    ] {
        let of: Vec<&Run> = runs.iter().filter(|r| r.store == store).collect();
        let rate: Vec<f64> = of.iter().map(|r| r.rows_per_s).collect();
        let median_rate = median(rate.clone());
        rows.push(vec![
            store.to_owned(),
            of.first().map_or(0, |r| r.rows).to_string(),
            format!("{:.2}", median(of.iter().map(|r| r.seconds).collect())),
            format!("{median_rate:.0}"),
            range_text(&rate),
            format!(
                "{:.1}",
                median(of.iter().map(|r| r.core_us_per_row).collect())
            ),
            format!("{target:.0}"),
            if median_rate >= target {
                "yes"
            } else {
                "**no**"
            }
            .to_owned(),
        ]);
    }
    out.push_str(&markdown_table(
        &[
            ("store", false),
            ("rows", true),
            ("seconds (median)", true),
            ("rows/s (median)", true),
            ("rows/s (range)", true),
            ("core-µs/row", true),
            ("target rows/s", true),
            ("met", false),
        ],
        rows,
    ));
    writeln!(
        out,
        "\n## A precomputed answer through the gateway\n\nThe gateway (shipped settings, dev issuer, prediction log on) on the embedded store scored above; gRPC `Predict` of `{MODEL}` for {} hot customers (warmed into the caches first), open loop, latency from each call's intended send time, {} s per rate after 0.5 s of warm-up. \
         **precomputed**: `precomputed = \"first\"`, every call answered from the store (an answer with another source counts as an error); **live**: the same gateway and store with `precomputed = \"off\"`, every call enriched from the row cache and sent to the model-server. \
         The two alternate per round (round 1 precomputed first). Cells: median over {} rounds (range).\n",
        knobs.hot, knobs.seconds, knobs.rounds
    )?;
    let mut rows = Vec::new();
    for &rate in &knobs.rates {
        let of = |source: &str| -> Vec<&Step> {
            steps
                .iter()
                .filter(|s| s.source == source && s.rate == rate)
                .collect()
        };
        let cell = |v: Vec<f64>| {
            let (lo, hi) = range(&v);
            format!("{} ({}–{})", ms(median(v)), ms(lo), ms(hi))
        };
        let (hit, live) = (of("precomputed"), of("live"));
        let p99 = |s: &[&Step]| s.iter().map(|x| x.m.p_ms(0.99)).collect::<Vec<_>>();
        let errors = |s: &[&Step]| s.iter().map(|x| x.m.error_count() + x.m.shed).sum::<u64>();
        rows.push(vec![
            format!("{rate:.0}"),
            cell(hit.iter().map(|x| x.m.p_ms(0.5)).collect()),
            cell(p99(&hit)),
            errors(&hit).to_string(),
            cell(live.iter().map(|x| x.m.p_ms(0.5)).collect()),
            cell(p99(&live)),
            errors(&live).to_string(),
            if median(p99(&hit)) <= median(p99(&live)) {
                "yes"
            } else {
                "**no**"
            }
            .to_owned(),
        ]);
    }
    out.push_str(&markdown_table(
        &[
            ("req/s", true),
            ("precomputed p50 ms", true),
            ("precomputed p99 ms", true),
            ("errors + shed", true),
            ("live p50 ms", true),
            ("live p99 ms", true),
            ("errors + shed", true),
            ("precomputed p99 ≤ live p99", false),
        ],
        rows,
    ));
    Ok(out)
}

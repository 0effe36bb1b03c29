//! Streams benchmark: asynchronous predictions over Kafka, and what
//! publishing predictions downstream costs the synchronous path.
//!
//! Starts the example model-server (release build), a Kafka 4.4 broker of
//! its own (tests/rig/kafka.sh; on the same two cores) and gateways on an
//! embedded store with demo customers, with the shipped config's settings.
//! A freshly started broker spends its first minute compiling its own hot
//! paths (the JVM's JIT, about half a core here), where a deployed broker
//! is long warm: so the steady run below runs once first, on the cold
//! broker, and its figures are reported beside the warm ones.
//! 1. **Submit burst**: a front-only gateway (`workers = false`) takes gRPC
//!    `PredictAsync` from closed-loop callers for the burst's seconds
//!    (accepted/s, submit latency); then a worker gateway on the same store
//!    drains the backlog (the sustained scoring rate: requests scored a
//!    second, from its start to the last result stored).
//! 2. **Submit → result at a steady rate**: one gateway that accepts and
//!    scores, open-loop submits at `MLGW_BENCH_ASYNC_RATE`; every result is
//!    read back from the result topic (read-committed): latency from
//!    acceptance to the result stored (pollable; the result's own
//!    timestamps) and to the result on the topic (the reader's clock).
//! 3. **Publishing on the sync path**: gRPC `Predict` open loop at
//!    `MLGW_BENCH_PUBLISH_RATE` with `[publish]` off and on at each of
//!    `MLGW_BENCH_PUBLISH_LINGERS` (the producer's `linger_ms`; the prediction
//!    log on in all), interleaved rounds; the p99 difference to the round's
//!    run without publishing, and its median per linger.
//!
//! Run (release binaries first):
//!   cargo build --release -p model-server -p gateway && cargo bench -p benches --bench streams
//! Results: benches/results/streams.md.
//!
//! Knobs: MLGW_BENCH_CUSTOMERS (20000), MLGW_BENCH_BURST_SECONDS (10),
//! MLGW_BENCH_BURST_CALLERS (64), MLGW_BENCH_ASYNC_RATE (1000),
//! MLGW_BENCH_SECONDS (per steady or publish run, 10),
//! MLGW_BENCH_PUBLISH_RATE (1000), MLGW_BENCH_PAIRS (rounds, 5),
//! MLGW_BENCH_PUBLISH_LINGERS (ms, the shipped `[publish] linger_ms` first;
//! default 5).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use benches::demo::{load_embedded_profiles, predict_request};
use benches::grpc_client::{Bearer, GatewayClient, channels, gateway_clients};
use benches::knobs::{env_list, env_num};
use benches::load::{self, Call as _, Load, Measured, Outcome, call_fn};
use benches::process::{
    GatewayProcess, GatewaySettings, ModelServer, gateway_config, report_in_scratch,
};
use benches::report::{commit, machine, median, ms};
use hdrhistogram::Histogram;
use prost::Message as _;
use proto::gateway::v1 as gw;
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rig::kafka::OwnKafka;
use rig::{example_repository, workspace_root};

const CONNECTIONS: usize = 4;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Targets of the issue.
const BURST_TARGET: f64 = 5_000.0;
const LATENCY_TARGET_MS: f64 = 100.0;
const PUBLISH_TARGET_MS: f64 = 0.2;

struct Knobs {
    customers: u64,
    burst_seconds: f64,
    burst_callers: usize,
    async_rate: f64,
    seconds: f64,
    publish_rate: f64,
    pairs: usize,
    /// `[publish] linger_ms` values compared.
    lingers: Vec<u64>,
}

impl Knobs {
    /// The lingers compared, joined by `sep`.
    fn lingers_text(&self, sep: &str) -> String {
        self.lingers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(sep)
    }

    fn from_env() -> Result<Self> {
        let k = Knobs {
            customers: env_num("MLGW_BENCH_CUSTOMERS", 20_000.0)? as u64,
            burst_seconds: env_num("MLGW_BENCH_BURST_SECONDS", 10.0)?,
            burst_callers: env_num("MLGW_BENCH_BURST_CALLERS", 64.0)? as usize,
            async_rate: env_num("MLGW_BENCH_ASYNC_RATE", 1000.0)?,
            seconds: env_num("MLGW_BENCH_SECONDS", 10.0)?,
            publish_rate: env_num("MLGW_BENCH_PUBLISH_RATE", 1000.0)?,
            pairs: env_num("MLGW_BENCH_PAIRS", 5.0)? as usize,
            lingers: env_list("MLGW_BENCH_PUBLISH_LINGERS", &[5.0])?
                .into_iter()
                .map(|l| l as u64)
                .collect(),
        };
        ensure!(
            k.customers > 0
                && k.burst_seconds > 0.0
                && k.burst_callers > 0
                && k.async_rate > 0.0
                && k.seconds > 0.0
                && k.publish_rate > 0.0
                && k.pairs > 0,
            "bad knobs: every knob must be positive"
        );
        Ok(k)
    }
}

/// `[async_predict]` on `broker` with this run's topics.
fn async_section(broker: &str, prefix: &str, workers: bool) -> String {
    format!(
        "[async_predict]\nenabled = true\nbrokers = \"{broker}\"\n\
         request_topic = \"{prefix}.requests.{{model}}\"\nresult_topic = \"{prefix}.results.{{model}}\"\n\
         partitions = 6\nworkers = {workers}\ngroup_id = \"{prefix}-workers\"\n\
         default_deadline_ms = 600000\n"
    )
}

fn config(dir: &Path, model_grpc: &str, store: &str, extra: &str) -> Result<PathBuf> {
    gateway_config(
        dir,
        &GatewaySettings {
            model_grpc,
            store,
            max_concurrent: 256,
            model_extra: "",
            extra,
        },
    )
}

async fn clients(gateway: &GatewayProcess) -> Result<Vec<GatewayClient>> {
    let bearer = Bearer::new(&gateway.banner)?;
    Ok(gateway_clients(
        &channels(&gateway.grpc, CONNECTIONS).await?,
        &bearer,
    ))
}

/// gRPC `PredictAsync` calls to `gateway`, once its first submit is
/// accepted (it makes its topics in the background at start).
async fn submitter(gateway: &GatewayProcess, customers: u64) -> Result<Arc<impl load::Call>> {
    let clients = Arc::new(clients(gateway).await?);
    let target = Arc::new(call_fn(move |k| {
        let mut c = clients[(k as usize) % CONNECTIONS].clone();
        async move {
            let r = c.predict_async(submit_request(customers, k)).await;
            Outcome::from_grpc(&r)
        }
    }));
    let started = Instant::now();
    while target.call(0).await.failure().is_some() {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no submit accepted within 60 s; see {}",
            gateway.log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(target)
}

fn submit_request(customers: u64, k: u64) -> tonic::Request<gw::PredictAsyncRequest> {
    let mut r = tonic::Request::new(gw::PredictAsyncRequest {
        request: Some(predict_request(k % customers, k)),
        idempotency_key: String::new(),
        deadline_ms: 0,
    });
    r.set_timeout(CALL_TIMEOUT);
    r
}

/// How long the result reader waits for a new result, once it knows how
/// many to expect, before it reports the missing ones.
const QUIET_LIMIT: Duration = Duration::from_secs(60);

/// Reads results from `topic` (read-committed) until as many distinct IDs
/// as `want` says arrived or `limit` passed; says on `ready` once it has
/// its partitions. Per result: (submitted, scored, received) as Unix ms.
async fn read_results(
    broker: String,
    topic: String,
    ready: tokio::sync::oneshot::Sender<()>,
    want: tokio::sync::watch::Receiver<usize>,
    limit: Duration,
) -> Result<HashMap<String, (i64, i64, i64)>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set(
            "group.id",
            format!("bench-reader-{}-{topic}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let mut ready = Some(ready);
    let mut out = HashMap::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_new = tokio::time::Instant::now();
    while out.len() < *want.borrow() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{topic}: {} results within {limit:?}",
            out.len()
        );
        // Once the count is known, a long silence means some accepted
        // request will never arrive: say so now rather than at the limit.
        let expected = *want.borrow();
        ensure!(
            expected == usize::MAX || last_new.elapsed() < QUIET_LIMIT,
            "{topic}: {} of the {expected} accepted requests have a result, and none came for {QUIET_LIMIT:?}",
            out.len()
        );
        if ready.is_some() && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            let _ = ready.take().map(|r| r.send(()));
        }
        let Ok(m) = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await else {
            continue;
        };
        let m = m?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
        let r = gw::AsyncPrediction::decode(m.payload().unwrap_or_default())?;
        ensure!(r.state == "done", "a request failed: {r:?}");
        if out
            .insert(r.id, (r.submitted_at_unix_ms, r.finished_at_unix_ms, now))
            .is_none()
        {
            last_new = tokio::time::Instant::now();
        }
    }
    Ok(out)
}

/// Starts [`read_results`] and waits until it reads its partitions; send
/// the number of results to wait for on the returned sender.
async fn results_reader(
    broker: &str,
    topic: &str,
    limit: Duration,
) -> Result<(
    tokio::sync::watch::Sender<usize>,
    tokio::task::JoinHandle<Result<HashMap<String, (i64, i64, i64)>>>,
)> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (want_tx, want_rx) = tokio::sync::watch::channel(usize::MAX);
    let reader = tokio::spawn(read_results(
        broker.to_owned(),
        topic.to_owned(),
        ready_tx,
        want_rx,
        limit,
    ));
    tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .context("the result reader got no partitions within 60 s")?
        .context("the result reader stopped")?;
    Ok((want_tx, reader))
}

fn quantiles_ms(values_ms: impl Iterator<Item = i64>) -> Result<(f64, f64, f64)> {
    let mut h = Histogram::<u64>::new(3)?;
    for v in values_ms {
        h.record(v.max(0) as u64)?;
    }
    Ok((
        h.value_at_quantile(0.5) as f64,
        h.value_at_quantile(0.99) as f64,
        h.max() as f64,
    ))
}

struct Burst {
    accepted: u64,
    per_s: f64,
    submit: Measured,
    drain_s: f64,
    scored_per_s: f64,
}

struct Steady {
    rate: f64,
    submit: Measured,
    stored: (f64, f64, f64),
    topic: (f64, f64, f64),
}

async fn burst(
    knobs: &Knobs,
    scratch: &Path,
    grpc: &str,
    store: &str,
    broker: &str,
) -> Result<Burst> {
    let prefix = format!("bench-burst-{}", std::process::id());
    let front = config(scratch, grpc, store, &async_section(broker, &prefix, false))?;
    let gateway = GatewayProcess::start(&front, scratch.join("gateway-front.log")).await?;
    let target = submitter(&gateway, knobs.customers).await?;
    let submit = load::run(
        &target,
        Load::Closed {
            callers: knobs.burst_callers,
            pace: None,
        },
        knobs.burst_seconds,
    )
    .await?;
    let accepted =
        metric(&gateway, "mlgw_async_requests_total", "result", "accepted").await? as u64;
    gateway.stop().await?;
    let per_s = submit.hist.len() as f64 / knobs.burst_seconds;
    eprintln!(
        "burst: {accepted} accepted, {per_s:.0}/s measured, {}",
        submit.summary()
    );

    // Drain: a worker gateway on the same store.
    let worker = config(scratch, grpc, store, &async_section(broker, &prefix, true))?;
    let began = Instant::now();
    let gateway = GatewayProcess::start(&worker, scratch.join("gateway-drain.log")).await?;
    let topic = format!("{prefix}.results.fraud_detector");
    let (want, reader) = results_reader(broker, &topic, Duration::from_secs(900)).await?;
    want.send(accepted as usize)?;
    let results = reader.await??;
    let last_stored = results.values().map(|r| r.1).max().unwrap_or(0);
    let start_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64
        - began.elapsed().as_millis() as i64;
    let drain_s = (last_stored - start_ms) as f64 / 1000.0;
    gateway.stop().await?;
    let scored_per_s = accepted as f64 / drain_s.max(1e-3);
    eprintln!("drain: {accepted} scored in {drain_s:.1} s = {scored_per_s:.0}/s");
    Ok(Burst {
        accepted,
        per_s,
        submit,
        drain_s,
        scored_per_s,
    })
}

async fn steady(
    knobs: &Knobs,
    scratch: &Path,
    grpc: &str,
    store: &str,
    broker: &str,
    tag: &str,
) -> Result<Steady> {
    let prefix = format!("bench-steady-{tag}-{}", std::process::id());
    let both = config(scratch, grpc, store, &async_section(broker, &prefix, true))?;
    let gateway =
        GatewayProcess::start(&both, scratch.join(format!("gateway-steady-{tag}.log"))).await?;
    let target = submitter(&gateway, knobs.customers).await?;
    let topic = format!("{prefix}.results.fraud_detector");
    // Reading while submitting: "on topic" is when a result became visible.
    let (want, reader) = results_reader(broker, &topic, Duration::from_secs(300)).await?;
    let submit = load::run(
        &target,
        Load::Open {
            rate: knobs.async_rate,
        },
        knobs.seconds,
    )
    .await?;
    let accepted =
        metric(&gateway, "mlgw_async_requests_total", "result", "accepted").await? as usize;
    want.send(accepted)?;
    let results = reader.await??;
    gateway.stop().await?;
    let stored = quantiles_ms(results.values().map(|r| r.1 - r.0))?;
    let on_topic = quantiles_ms(results.values().map(|r| r.2 - r.0))?;
    eprintln!(
        "steady {:.0}/s ({tag}): submit {}; stored p50 {} p99 {} ms; on topic p50 {} p99 {} ms",
        knobs.async_rate,
        submit.summary(),
        stored.0,
        stored.1,
        on_topic.0,
        on_topic.1
    );
    Ok(Steady {
        rate: knobs.async_rate,
        submit,
        stored,
        topic: on_topic,
    })
}

/// One counter of the gateway's `/metrics`.
async fn metric(gateway: &GatewayProcess, name: &str, label: &str, value: &str) -> Result<f64> {
    let text = reqwest::get(format!("{}/metrics", gateway.http))
        .await?
        .text()
        .await?;
    let wanted = format!("{name}{{{label}=\"{value}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&wanted).map(str::trim))
        .context(format!("{wanted} is not on /metrics"))?
        .parse::<f64>()
        .context("not a number")
}

/// One round: publishing off, and on at each linger (in the knobs' order).
struct Pair {
    on: Vec<Measured>,
    off: Measured,
}

async fn publish_run(knobs: &Knobs, config: &Path, log: PathBuf) -> Result<Measured> {
    let gateway = GatewayProcess::start(config, log).await?;
    let clients = Arc::new(clients(&gateway).await?);
    let customers = knobs.customers;
    let target = {
        let clients = Arc::clone(&clients);
        Arc::new(call_fn(move |k| {
            let mut c = clients[(k as usize) % CONNECTIONS].clone();
            async move {
                let mut r = tonic::Request::new(predict_request(k % customers, k));
                r.set_timeout(CALL_TIMEOUT);
                Outcome::from_grpc(&c.predict(r).await)
            }
        }))
    };
    if let Some(code) = target.call(0).await.failure() {
        bail!(
            "a first predict failed with {code}; see {}",
            gateway.log.display()
        );
    }
    // Rows into the cache, connections warm; unmeasured.
    load::run(
        &target,
        Load::Open {
            rate: knobs.publish_rate,
        },
        3.0,
    )
    .await?;
    let m = load::run(
        &target,
        Load::Open {
            rate: knobs.publish_rate,
        },
        knobs.seconds,
    )
    .await?;
    gateway.stop().await?;
    Ok(m)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    report_in_scratch("streams", run).await
}

async fn run(scratch: PathBuf) -> Result<String> {
    let (knobs, scratch) = (&Knobs::from_env()?, scratch.as_path());
    let server =
        ModelServer::start(&example_repository(), scratch.join("model-server.log")).await?;
    let grpc = server.grpc_url();
    let mut kafka = OwnKafka::start().await?;
    let broker = kafka.address()?;
    let redb = scratch.join("features.redb");
    load_embedded_profiles(&redb, knobs.customers, scratch).await?;
    let store = format!(
        "[store]\nbackend = \"embedded\"\npath = \"{}\"",
        redb.display()
    );
    let configs = scratch.join("configs");
    std::fs::create_dir_all(&configs)?;

    let cold = steady(knobs, &configs, &grpc, &store, &broker, "cold").await?;
    let burst = burst(knobs, &configs, &grpc, &store, &broker).await?;
    let warm = steady(knobs, &configs, &grpc, &store, &broker, "warm").await?;

    let log = "[prediction_log]\nenabled = true\n";
    benches_create_topic(&broker, "bench.predictions").await?;
    let off = config(&configs, &grpc, &store, log)?;
    let mut on = Vec::new();
    for linger in &knobs.lingers {
        let dir = configs.join(format!("linger-{linger}"));
        std::fs::create_dir_all(&dir)?;
        let publish = format!(
            "{log}[publish]\nenabled = true\nbrokers = \"{broker}\"\npredictions_topic = \"bench.predictions\"\nfeedback_topic = \"bench.feedback\"\nlinger_ms = {linger}\n"
        );
        on.push(config(&dir, &grpc, &store, &publish)?);
    }
    let mut pairs = Vec::new();
    for i in 0..knobs.pairs {
        // Rotate the order, so drift over the run hits every setting, and
        // reverse it every other cycle, so each setting follows each other
        // one equally often: a run right after the one without publishing
        // measured slower than one after another publishing run.
        let mut runs: Vec<(Option<usize>, &PathBuf)> = std::iter::once((None, &off))
            .chain(on.iter().enumerate().map(|(k, c)| (Some(k), c)))
            .collect();
        let len = runs.len();
        runs.rotate_left(i % len);
        if (i / len) % 2 == 1 {
            runs.reverse();
        }
        let mut measured: Vec<(Option<usize>, Measured)> = Vec::new();
        for (j, (which, cfg)) in runs.into_iter().enumerate() {
            let m = publish_run(knobs, cfg, configs.join(format!("gw-round{i}-{j}.log"))).await?;
            measured.push((which, m));
        }
        let off_m = measured
            .iter()
            .position(|(w, _)| w.is_none())
            .map(|p| measured.remove(p).1)
            .context("the round has no run without publishing")?;
        measured.sort_by_key(|(w, _)| *w);
        let on_m: Vec<Measured> = measured.into_iter().map(|(_, m)| m).collect();
        eprintln!(
            "round {i}: off p99 {} ms, on p99 {} ms",
            ms(off_m.p_ms(0.99)),
            on_m.iter()
                .map(|m| ms(m.p_ms(0.99)))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        pairs.push(Pair {
            on: on_m,
            off: off_m,
        });
    }
    drop(server);
    kafka.passed = true;
    drop(kafka);

    let report = report(knobs, &burst, [&cold, &warm], &pairs)?;
    let dir = workspace_root().join("benches/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("streams.md"), &report)?;
    Ok(report)
}

async fn benches_create_topic(broker: &str, topic: &str) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in results {
        if let Err((name, code)) = r {
            bail!("creating topic {name}: {code}");
        }
    }
    Ok(())
}

fn report(
    knobs: &Knobs,
    burst: &Burst,
    [cold, warm]: [&Steady; 2],
    pairs: &[Pair],
) -> Result<String> {
    let (cores, cpu) = machine();
    let mut out = String::new();
    writeln!(
        out,
        "# Streams: asynchronous predictions and publishing downstream\n"
    )?;
    writeln!(
        out,
        "Commit `{}`. Command: `cargo build --release -p model-server -p gateway && MLGW_BENCH_CUSTOMERS={} MLGW_BENCH_BURST_SECONDS={} MLGW_BENCH_BURST_CALLERS={} MLGW_BENCH_ASYNC_RATE={} MLGW_BENCH_SECONDS={} MLGW_BENCH_PUBLISH_RATE={} MLGW_BENCH_PAIRS={} MLGW_BENCH_PUBLISH_LINGERS={} cargo bench -p benches --bench streams` (source: benches/benches/streams.rs).\n",
        commit(),
        knobs.customers,
        knobs.burst_seconds,
        knobs.burst_callers,
        knobs.async_rate,
        knobs.seconds,
        knobs.publish_rate,
        knobs.pairs,
        knobs.lingers_text(",")
    )?;
    writeln!(
        out,
        "Machine: {cores} cores, {cpu}. Everything on it: the model-server (example models, release), one Kafka 4.4 broker in KRaft mode started by the bench (tests/rig/kafka.sh), the gateways (release, the shipped settings of benches' gateway config, embedded store with {} demo customers), and the load generator.\n",
        knobs.customers
    )?;
    writeln!(
        out,
        "## Asynchronous submits: a {:.0} s burst\n",
        knobs.burst_seconds
    )?;
    writeln!(
        out,
        "A front-only gateway (`workers = false`) takes gRPC `PredictAsync` from {} closed-loop callers; each answer comes after the pending record is stored and Kafka acknowledged the request (`acks=all`). It runs after the cold steady run below, so on a broker past its first minute. Then a worker gateway on the same store drains the backlog.\n",
        knobs.burst_callers
    )?;
    writeln!(
        out,
        "| accepted | accepted/s | target | submit p50 | p99 | errors | drained in | scored/s |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|---|---:|---:|")?;
    writeln!(
        out,
        "| {} | {:.0} | ≥ {:.0} {} | {} ms | {} ms | {} | {:.1} s | {:.0} |\n",
        burst.accepted,
        burst.per_s,
        BURST_TARGET,
        if burst.per_s >= BURST_TARGET {
            "met"
        } else {
            "**missed**"
        },
        ms(burst.submit.p_ms(0.5)),
        ms(burst.submit.p_ms(0.99)),
        burst.submit.errors_text(),
        burst.drain_s,
        burst.scored_per_s
    )?;
    writeln!(out, "## Submit → result at a steady {:.0}/s\n", warm.rate)?;
    writeln!(
        out,
        "One gateway accepts and scores; open-loop submits for {:.0} s; every result read back from the result topic. *Scored*: acceptance → result scored (stored and pollable right after), from the result's own timestamps. *On topic*: acceptance → the result read by a read-committed consumer (the worker's transaction committed), on the reader's clock. *Cold*: the bench's first traffic, on the broker just started (its JIT compiling); *warm*: the same run again after the burst and the drain, as a deployed broker is. The target is judged on the warm run.\n",
        knobs.seconds
    )?;
    writeln!(
        out,
        "| broker | submit p50 | submit p99 | scored p50 | scored p99 | target | on topic p50 | on topic p99 | max |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for (name, steady) in [("cold", cold), ("warm", warm)] {
        writeln!(
            out,
            "| {name} | {} ms | {} ms | {} ms | {} ms | ≤ {LATENCY_TARGET_MS:.0} ms {} | {} ms | {} ms | {} ms |",
            ms(steady.submit.p_ms(0.5)),
            ms(steady.submit.p_ms(0.99)),
            steady.stored.0,
            steady.stored.1,
            if steady.stored.1 <= LATENCY_TARGET_MS {
                "met"
            } else {
                "**missed**"
            },
            steady.topic.0,
            steady.topic.1,
            steady.topic.2
        )?;
    }
    writeln!(out)?;
    writeln!(out, "## Publishing downstream on the sync path\n")?;
    writeln!(
        out,
        "gRPC `Predict` open loop at {:.0}/s for {:.0} s per run (after 3 s of warm-up), the prediction log on in all; `[publish]` off, and on with the producer's `linger_ms` at {} ms (the first is the shipped default), interleaved rounds (the order rotates, and reverses every other cycle).\n",
        knobs.publish_rate,
        knobs.seconds,
        knobs.lingers_text(", ")
    )?;
    writeln!(
        out,
        "| round | linger ms | p50 on | p50 off | p99 on | p99 off | p99 on − off |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut diffs: Vec<Vec<f64>> = vec![Vec::new(); knobs.lingers.len()];
    for (i, p) in pairs.iter().enumerate() {
        for (k, on) in p.on.iter().enumerate() {
            let d = on.p_ms(0.99) - p.off.p_ms(0.99);
            diffs[k].push(d);
            writeln!(
                out,
                "| {i} | {} | {} | {} | {} | {} | {:+.2} |",
                knobs.lingers[k],
                ms(on.p_ms(0.5)),
                ms(p.off.p_ms(0.5)),
                ms(on.p_ms(0.99)),
                ms(p.off.p_ms(0.99)),
                d
            )?;
        }
    }
    writeln!(out)?;
    for (k, d) in diffs.into_iter().enumerate() {
        let m = median(d);
        writeln!(
            out,
            "- linger {} ms: median p99 difference {m:+.2} ms (target ≤ {PUBLISH_TARGET_MS} ms: {}).",
            knobs.lingers[k],
            if m <= PUBLISH_TARGET_MS {
                "met"
            } else {
                "**missed**"
            }
        )?;
    }
    Ok(out)
}

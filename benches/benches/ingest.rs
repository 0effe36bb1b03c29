//! Event ingest from Kafka into a dynamic view, on each backend: a backlog
//! of JSON events (`MLGW_BENCH_EVENTS`, 10,000 customers, explicit IDs,
//! times within the last hour) is produced to a 3-partition topic, then
//! one `feature_store::ingest::Ingest` (the gateway's `[ingest]`, default
//! settings) is started and timed until every event is written and the
//! consumer lag (end offset minus committed offset, every partition) is
//! zero. Then, with the consumer caught up, a burst of a quarter as many
//! events is produced as fast as the producer can, and the time from the
//! burst's last acknowledged record to a lag of zero is measured.
//!
//! Everything runs on this machine: Kafka (`MLGW_BENCH_KAFKA` host:port, or
//! a broker started by tests/rig/kafka.sh), Cassandra (`MLGW_BENCH_CASSANDRA`
//! or one started by tests/rig/cassandra.sh), the producer and the consumer.
//!
//! Results: benches/results/ingest.md. Knobs: MLGW_BENCH_EVENTS (default
//! 200000), MLGW_BENCH_ROUNDS (3).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use benches::cassandra::Cassandra;
use benches::knobs::env_num;
use benches::process::report_in_scratch;
use benches::report::{commit, machine, markdown_table, median, range};
use feature_store::definitions::FeatureDefinitions;
use feature_store::ingest::{Ingest, IngestSettings, IngestStats};
use feature_store::reader::{FeatureReader, ReaderConfig};
use feature_store::store::AnyStore;
use feature_store::store::embedded::EmbeddedStore;
use feature_store::store::prelude::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rig::kafka::{OwnKafka, activity_definitions};
use rig::workspace_root;

const PARTITIONS: i32 = 3;
const CUSTOMERS: u64 = 10_000;
const TARGET_EMBEDDED: f64 = 50_000.0;
const TARGET_CASSANDRA: f64 = 20_000.0;

struct Run {
    store: &'static str,
    events: u64,
    seconds: f64,
    burst_events: u64,
    burst_drain: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    report_in_scratch("ingest", run).await
}

async fn run(scratch: PathBuf) -> Result<String> {
    let events = env_num("MLGW_BENCH_EVENTS", 200_000.0)? as u64;
    let rounds = env_num("MLGW_BENCH_ROUNDS", 3.0)? as usize;
    let (own_kafka, broker) = match std::env::var("MLGW_BENCH_KAFKA") {
        Ok(addr) => (None, addr),
        Err(_) => {
            let k = OwnKafka::start().await?;
            let addr = k.address()?;
            (Some(k), addr)
        }
    };
    let node = match std::env::var("MLGW_BENCH_CASSANDRA") {
        Ok(addr) => Cassandra::outside(addr),
        Err(_) => Cassandra::start(scratch.join("cassandra-rig"))?,
    };
    let mut runs = Vec::new();
    for round in 0..rounds {
        let path = scratch.join(format!("features-{round}.redb"));
        let store = EmbeddedStore::open(&path)?;
        store.apply_schema().await?;
        let store = AnyStore::Embedded(Arc::new(store));
        runs.push(round_on("embedded", store, &broker, events, &scratch).await?);
        let keyspace = format!("bench_ingest_{}_{round}", std::process::id());
        let store = benches::cassandra::store(&node.addr, keyspace).await?;
        store.apply_schema().await?;
        runs.push(round_on("cassandra", store, &broker, events, &scratch).await?);
    }
    let kafka_note = if own_kafka.is_some() {
        "one Kafka 4.4 broker (KRaft) started by the bench (tests/rig/kafka.sh)".to_owned()
    } else {
        format!("the Kafka broker at {broker} (MLGW_BENCH_KAFKA)")
    };
    let cassandra_note = if node.owned {
        "one Cassandra 5.0 node started by the bench (tests/rig/cassandra.sh)".to_owned()
    } else {
        format!("the Cassandra node at {} (MLGW_BENCH_CASSANDRA)", node.addr)
    };
    drop(node);
    drop(own_kafka);
    let report = report(events, rounds, &runs, &kafka_note, &cassandra_note)?;
    let dir = workspace_root().join("benches/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ingest.md"), &report)?;
    Ok(report)
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(0)
}

/// Produces `n` events (IDs from `first`) and waits for every
/// acknowledgement.
async fn produce(producer: &FutureProducer, topic: &str, first: u64, n: u64) -> Result<()> {
    let now = now_ms();
    let mut pending = Vec::with_capacity(10_000);
    for i in first..first + n {
        let customer = format!("c-{}", i % CUSTOMERS);
        let payload = format!(
            r#"{{"customer_id":"{customer}","event_time":{},"event_id":"e-{i}","transaction_id":"t-{i}","amount":{}.25}}"#,
            now - (i % 3_000_000),
            i % 500
        );
        let record = FutureRecord::to(topic).key(&customer).payload(&payload);
        // Enqueued now (librdkafka copies key and payload), so the
        // acknowledgement futures borrow nothing of this iteration.
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .context("a record was not enqueued")?,
        );
        if pending.len() == 10_000 {
            acknowledged(pending.drain(..)).await?;
        }
    }
    acknowledged(pending).await
}

/// Waits for every delivery report; the first failure.
async fn acknowledged(pending: impl IntoIterator<Item = DeliveryFuture>) -> Result<()> {
    for r in futures_util::future::join_all(pending).await {
        r.context("the producer went away")?
            .map_err(|(e, _)| e)
            .context("a record was not acknowledged")?;
    }
    Ok(())
}

/// Waits until `n` events are written and every partition's lag is zero;
/// the time it took.
async fn caught_up(stats: &IngestStats, n: u64, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let lag = stats.lag();
        if stats.ingested() >= n
            && lag.len() == PARTITIONS as usize
            && lag.values().all(|l| *l == 0)
        {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < limit,
            "{} of {n} events written, lag {lag:?} after {limit:?}",
            stats.ingested()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn round_on(
    name: &'static str,
    store: AnyStore,
    broker: &str,
    events: u64,
    scratch: &Path,
) -> Result<Run> {
    let topic = format!("bench-ingest-{name}-{}", rig::unique("t"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()?;
    for r in admin
        .create_topics(
            &[
                NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1)),
                NewTopic::new(&format!("{topic}-dlq"), 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?
    {
        if let Err((t, code)) = r {
            bail!("creating topic {t}: {code}");
        }
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    produce(&producer, &topic, 0, events).await?;
    let defs_path = scratch.join(format!("{topic}.toml"));
    std::fs::write(&defs_path, activity_definitions(&topic))?;
    let defs = Arc::new(FeatureDefinitions::load(&defs_path)?);
    let reader =
        Arc::new(FeatureReader::new(Arc::new(store), defs, ReaderConfig::default()).await?);
    let settings = IngestSettings {
        enabled: true,
        brokers: broker.to_owned(),
        group_id: format!("{topic}-group"),
        dead_letter_topic: format!("{topic}-dlq"),
        lag_interval_ms: 100,
        ..IngestSettings::default()
    };
    let ingest = Ingest::new(reader, &settings)?;
    let stats = ingest.stats();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(ingest.run(async move {
        let _ = stop_rx.await;
    }));
    // The backlog, timed from the consumer's start (joining the group
    // included) to the last event written and committed.
    let took = caught_up(&stats, events, Duration::from_secs(600)).await?;
    let seconds = took.as_secs_f64();
    eprintln!(
        "{name}: {events} events in {seconds:.2} s ({:.0}/s)",
        events as f64 / seconds
    );
    // A burst while caught up: time from its last acknowledged record to lag 0.
    let burst = events / 4;
    produce(&producer, &topic, events, burst).await?;
    let drain = caught_up(&stats, events + burst, Duration::from_secs(600)).await?;
    eprintln!(
        "{name}: burst of {burst} drained {:.2} s after it was produced",
        drain.as_secs_f64()
    );
    ensure!(
        stats.dead_lettered() == 0,
        "{name}: dead letters in a clean stream"
    );
    let _ = stop_tx.send(());
    running.await?;
    let _ = admin
        .delete_topics(&[&topic, &format!("{topic}-dlq")], &AdminOptions::new())
        .await;
    Ok(Run {
        store: name,
        events,
        seconds,
        burst_events: burst,
        burst_drain: drain.as_secs_f64(),
    })
}

fn report(
    events: u64,
    rounds: usize,
    runs: &[Run],
    kafka: &str,
    cassandra: &str,
) -> Result<String> {
    let mut out = String::new();
    let (cores, cpu) = machine();
    writeln!(out, "# Event ingest from Kafka into dynamic views\n")?;
    writeln!(
        out,
        "Commit `{}`. Command: `MLGW_BENCH_EVENTS={events} MLGW_BENCH_ROUNDS={rounds} cargo bench -p benches --bench ingest` (source: benches/benches/ingest.rs).\n",
        commit()
    )?;
    writeln!(
        out,
        "Machine: **everything on one {cores}-core machine** ({cpu}): {kafka}, {cassandra}, the producer and the consumer (`feature_store::ingest::Ingest` in the bench's process, as the gateway's `[ingest]` hosts it, default settings: batches of up to 5000 records, 20 ms linger), release build over 127.0.0.1.\n"
    )?;
    writeln!(
        out,
        "**Backlog**: {events} JSON events (10,000 customers, explicit IDs, times in the last hour) produced to a {PARTITIONS}-partition topic first; then the consumer starts and is timed until every event is written (decoded, checked against the view, one batched store write per batch: embedded one redb transaction, Cassandra single-partition unlogged batches and single statements, 64 in flight) and every partition's committed offset is at its end. **Burst**: with the consumer caught up, a quarter as many events produced as fast as the producer can; drain = from the burst's last acknowledged record to a consumer lag of zero on every partition. Cells: median over {rounds} rounds (range).\n"
    )?;
    let mut rows = Vec::new();
    for (store, target) in [
        ("embedded", TARGET_EMBEDDED),
        ("cassandra", TARGET_CASSANDRA),
    ] {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.store == store).collect();
        if mine.is_empty() {
            continue;
        }
        let rates: Vec<f64> = mine.iter().map(|r| r.events as f64 / r.seconds).collect();
        let drains: Vec<f64> = mine.iter().map(|r| r.burst_drain).collect();
        let rate = median(rates.clone());
        let (lo, hi) = range(&rates);
        let (dlo, dhi) = range(&drains);
        rows.push(vec![
            store.to_owned(),
            mine[0].events.to_string(),
            format!("{rate:.0} ({lo:.0}–{hi:.0})"),
            mine[0].burst_events.to_string(),
            format!("{:.2} ({dlo:.2}–{dhi:.2})", median(drains.clone())),
            format!("{target:.0}"),
            if rate >= target { "yes" } else { "no" }.to_owned(),
        ]);
    }
    out.push_str(&markdown_table(
        &[
            ("store", false),
            ("backlog events", true),
            ("events/s", true),
            ("burst events", true),
            ("burst drained, s", true),
            ("target events/s", true),
            ("met", false),
        ],
        rows,
    ));
    Ok(out)
}

//! Prediction log writes into Cassandra: what one record costs the node and
//! how fast the log drains, with a call's records written one request per
//! record (`write_batch_rows = 1`) or grouped into one unlogged batch per
//! partition (the default, 64 rows / 40 KiB at most). Records are shaped like
//! the gateway's (15 inputs, two view ages, an output, UUIDv7 IDs of now) and
//! written as its log writer does: calls of MLGW_BENCH_LOG_BATCH records, one
//! at a time. The modes alternate (A B A B …) so drift in the shared machine
//! falls on both.
//!
//! Run: `cargo bench -p benches --bench log_writes` (starts its own node via
//! tests/rig/cassandra.sh, or MLGW_BENCH_CASSANDRA=host:port with
//! MLGW_BENCH_CASSANDRA_PID to reuse one). Knobs: MLGW_BENCH_LOG_RECORDS
//! (per round, default 100000), MLGW_BENCH_LOG_BATCH (records per call,
//! default 512 as shipped), MLGW_BENCH_LOG_ROUNDS (per mode, default 2).
//! Results: benches/results/log_writes.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use benches::cassandra::Cassandra;
use benches::knobs::env_num;
use benches::process::report_in_scratch;
use benches::report::{commit, machine, markdown_table};
use feature_store::log::{LoggedOutput, PredictionRecord, PredictionSource};
use feature_store::store::prelude::*;
use feature_store::store::scylla::{ScyllaConfig, ScyllaStore};
use feature_store::store::{AnyStore, LogStore};
use hdrhistogram::Histogram;
use rig::workspace_root;

fn record(i: u64) -> PredictionRecord {
    let shadow = !i.is_multiple_of(3);
    PredictionRecord {
        prediction_id: uuid::Uuid::now_v7().to_string(),
        at: SystemTime::now(),
        subject: "svc-fraud-api".into(),
        model: "fraud_detector".into(),
        model_version: ["1", "2", "3"][(i % 3) as usize].into(),
        route: if shadow { "shadow" } else { "stable" }.into(),
        entity: format!("customer_id=c-{:07}", i % 50_000),
        inputs: (0..15).map(|k| (i + k) as f32 * 0.37).collect(),
        view_ages_ms: BTreeMap::from([
            ("customer_profile".into(), Some(3_600_000 + i % 1000)),
            ("customer_activity".into(), Some(i % 60_000)),
        ]),
        defaulted: Vec::new(),
        outputs: vec![LoggedOutput {
            name: "probabilities".into(),
            label: Some("legit".into()),
            score: (i % 1000) as f64 / 1000.0,
        }],
        shadow_of: shadow.then(|| uuid::Uuid::now_v7().to_string()),
        model_time_us: Some(300 + i % 200),
        source: PredictionSource::Live,
    }
}

struct Round {
    mode: &'static str,
    records_per_s: f64,
    cassandra_us: f64,
    client_us: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn round(
    store: &AnyStore,
    node: &Cassandra,
    mode: &'static str,
    records: u64,
    batch: u64,
) -> Result<Round> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let retention = Duration::from_secs(3600);
    let node_before = node.cpu_seconds();
    let me = std::process::id().to_string();
    let client_before = benches::process::cpu_seconds(&me);
    let started = Instant::now();
    let mut i = 0;
    while i < records {
        let call: Vec<PredictionRecord> = (i..(i + batch).min(records)).map(record).collect();
        let t = Instant::now();
        store
            .write_predictions(&call, retention)
            .await
            .with_context(|| format!("{mode}: writing records {i}.."))?;
        hist.record(
            u64::try_from(t.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        )?;
        i += batch;
    }
    let wall = started.elapsed().as_secs_f64();
    let per_record = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(b), Some(a)) => (a - b) * 1e6 / records as f64,
        _ => f64::NAN,
    };
    Ok(Round {
        mode,
        records_per_s: records as f64 / wall,
        cassandra_us: per_record(node_before, node.cpu_seconds()),
        client_us: per_record(client_before, benches::process::cpu_seconds(&me)),
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1e3,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1e3,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    report_in_scratch("log", |scratch| async move {
        let records = env_num("MLGW_BENCH_LOG_RECORDS", 100_000.0)? as u64;
        let batch = env_num("MLGW_BENCH_LOG_BATCH", 512.0)?.max(1.0) as u64;
        let rounds = env_num("MLGW_BENCH_LOG_ROUNDS", 2.0)?.max(1.0) as u64;
        let node = match std::env::var("MLGW_BENCH_CASSANDRA") {
            Ok(addr) => Cassandra::outside(addr),
            Err(_) => Cassandra::start(scratch.join("cassandra-rig"))?,
        };
        let keyspace = format!("bench_log_{}", std::process::id());
        let connect = |rows: usize| {
            let config = ScyllaConfig {
                write_batch_rows: rows,
                ..rig::store::scylla_config(&node.addr, keyspace.clone())
            };
            async move {
                anyhow::Ok(AnyStore::Scylla(Arc::new(
                    ScyllaStore::connect(config).await?,
                )))
            }
        };
        let per_row = connect(1).await?;
        per_row.apply_schema().await?;
        let grouped = connect(ScyllaConfig::default().write_batch_rows).await?;
        // Warm the JVM's write path (untimed) with both modes.
        round(&per_row, &node, "warm", records / 2, batch).await?;
        round(&grouped, &node, "warm", records / 2, batch).await?;
        let mut results = Vec::new();
        for _ in 0..rounds {
            for (store, mode) in [
                (&per_row, "one request per record"),
                (&grouped, "one batch per partition"),
            ] {
                let r = round(store, &node, mode, records, batch).await?;
                eprintln!(
                    "{mode}: {:.0} records/s, Cassandra {:.1} µs/record, client {:.1} µs/record, call p50 {:.1} p99 {:.1} ms",
                    r.records_per_s, r.cassandra_us, r.client_us, r.p50_ms, r.p99_ms
                );
                results.push(r);
            }
        }
        let table = markdown_table(
            &[
                ("mode", false),
                ("records/s", true),
                ("Cassandra CPU µs/record", true),
                ("client CPU µs/record", true),
                ("call p50 ms", true),
                ("call p99 ms", true),
            ],
            results.iter().map(|r| {
                [
                    r.mode.to_owned(),
                    format!("{:.0}", r.records_per_s),
                    format!("{:.1}", r.cassandra_us),
                    format!("{:.1}", r.client_us),
                    format!("{:.1}", r.p50_ms),
                    format!("{:.1}", r.p99_ms),
                ]
            }),
        );
        let (cores, cpu) = machine();
        let mut doc = String::new();
        writeln!(doc, "# Prediction log writes into Cassandra\n")?;
        writeln!(
            doc,
            "Commit {}. Command: `cargo bench -p benches --bench log_writes` (MLGW_BENCH_LOG_RECORDS={records}, \
             MLGW_BENCH_LOG_BATCH={batch}, MLGW_BENCH_LOG_ROUNDS={rounds}). Single-node Cassandra 5.0 from \
             tests/rig/cassandra.sh and this client on one {cores}-core machine ({cpu}). Each round writes \
             {records} records shaped like the gateway's (a third of them answers, two thirds shadow answers, \
             UUIDv7 IDs of now: 16 partitions of the current hour) in calls of {batch}, one call at a time, as \
             the gateway's log writer does; after an untimed warm-up of both modes, the modes alternate. \
             'One request per record' is `write_batch_rows = 1` (each record its own INSERT, 16 in flight); \
             'one batch per partition' is the default (a call's records of one partition in unlogged batches \
             of up to 64 rows and 40 KiB, 16 in flight). CPU is per record written: the node's, and this \
             process's (driver and encoding).\n",
            commit()
        )?;
        writeln!(doc, "{table}")?;
        let path = workspace_root().join("benches/results/log_writes.md");
        std::fs::write(&path, &doc).with_context(|| format!("write {}", path.display()))?;
        Ok(doc)
    })
    .await
}

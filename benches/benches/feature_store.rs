//! Feature-store benchmark: parse rate of the refresh sources (the same 1M rows
//! as CSV and as Parquet written the way pyarrow writes by default), refresh
//! load rate of the CSV into each backend and of the Parquet file into the
//! embedded store,
//! cached read cost through the moka row cache, and uncached single-entity
//! reads (one prepared single-partition read each) against Cassandra and the
//! embedded store at 1, 16 and 64 concurrent readers.
//!
//! Run: `cargo bench -p benches --bench feature_store`
//! It starts its own Cassandra with tests/rig/cassandra.sh (or uses
//! MLGW_BENCH_CASSANDRA=host:port) and writes benches/results/feature_store.md.
//! Knobs: MLGW_BENCH_ROWS (default 1000000), MLGW_BENCH_SECONDS (per cell, 4),
//! MLGW_BENCH_WARM_ROWS (the untimed Cassandra warm-up load, default ROWS),
//! MLGW_BENCH_WRITE_PARALLELISM and MLGW_BENCH_BATCH_ROWS (the write path's
//! settings, default the shipped ones), MLGW_BENCH_ONLY=cassandra-load (only
//! the Cassandra refresh, printed, no results file: for tuning the writes).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use benches::cassandra::Cassandra;
use benches::demo::{PROFILE_HEADER, write_csv};
use feature_store::definitions::FeatureDefinitions;
use feature_store::reader::{FeatureReader, ReaderConfig};
use feature_store::refresh::{self, RefreshOptions, RefreshOutcome};
use feature_store::store::embedded::EmbeddedStore;
use feature_store::store::prelude::*;
use feature_store::store::scylla::{ScyllaConfig, ScyllaStore};
use feature_store::store::{AnyStore, StaticKey};
use hdrhistogram::Histogram;
use rig::workspace_root;

const CONCURRENCY: [usize; 3] = [1, 16, 64];

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bench's node: MLGW_BENCH_CASSANDRA=host:port, or one started in
/// `scratch`.
fn cassandra(scratch: &Path) -> Result<Cassandra> {
    match std::env::var("MLGW_BENCH_CASSANDRA") {
        Ok(addr) => Ok(Cassandra::outside(addr)),
        Err(_) => Cassandra::start(scratch.join("cassandra-rig")),
    }
}

/// Waits until the node uses under 5% of a core over 3 s (flushes and
/// compactions done), at most `limit`; an outside node gets a fixed 30 s.
async fn settle(node: &Cassandra, limit: Duration) -> Duration {
    let started = Instant::now();
    if !node.owned {
        tokio::time::sleep(Duration::from_secs(30)).await;
        return started.elapsed();
    }
    let window = Duration::from_secs(3);
    while started.elapsed() < limit {
        let Some(before) = node.cpu_seconds() else {
            break;
        };
        tokio::time::sleep(window).await;
        let Some(after) = node.cpu_seconds() else {
            break;
        };
        if (after - before) / window.as_secs_f64() < 0.05 {
            break;
        }
    }
    started.elapsed()
}

/// The value of row `i` in each profile column, shared by the CSV and the
/// Parquet file so both hold the same data.
/// One profile row: key, account age, average amount, count, chargebacks, risk.
type ProfileRow = (String, i64, f32, i64, i64, f32);

fn profile_row(i: u64) -> ProfileRow {
    (
        format!("c-{i:07}"),
        (i % 3650) as i64,
        ((i % 997) as f64 * 0.37) as f32,
        (i % 120) as i64,
        (i % 3) as i64,
        (i % 1000) as f32 / 1000.0,
    )
}

/// The profile rows as Parquet: snappy pages with dictionaries (pyarrow's
/// defaults), row groups of 128k rows, every feature nullable.
fn write_profile_parquet(path: &Path, rows: u64) -> Result<()> {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    const GROUP: u64 = 128 * 1024;
    let schema = Arc::new(parse_message_type(
        "message profile {
            required binary customer_id (STRING);
            optional int64 account_age_days;
            optional float avg_txn_amount_30d;
            optional int64 txn_count_30d;
            optional int64 chargeback_count_1y;
            optional float home_country_risk;
        }",
    )?);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(path)?, schema, Arc::new(props))?;
    let mut start = 0;
    while start < rows {
        let end = rows.min(start + GROUP);
        let group: Vec<_> = (start..end).map(profile_row).collect();
        let defs = vec![1i16; group.len()];
        let mut rg = writer.next_row_group()?;
        // Columns in schema order: the key, then the five features.
        let ints = |f: fn(&ProfileRow) -> i64| -> Vec<i64> { group.iter().map(f).collect() };
        let floats = |f: fn(&ProfileRow) -> f32| -> Vec<f32> { group.iter().map(f).collect() };
        let keys: Vec<ByteArray> = group
            .iter()
            .map(|r| ByteArray::from(r.0.as_str()))
            .collect();
        let mut put = |write: &dyn Fn(
            &mut parquet::file::writer::SerializedColumnWriter<'_>,
        ) -> parquet::errors::Result<usize>|
         -> Result<()> {
            let mut column = rg.next_column()?.context("fewer columns than the schema")?;
            write(&mut column)?;
            column.close()?;
            Ok(())
        };
        put(&|c| c.typed::<ByteArrayType>().write_batch(&keys, None, None))?;
        put(&|c| {
            c.typed::<Int64Type>()
                .write_batch(&ints(|r| r.1), Some(&defs), None)
        })?;
        put(&|c| {
            c.typed::<FloatType>()
                .write_batch(&floats(|r| r.2), Some(&defs), None)
        })?;
        put(&|c| {
            c.typed::<Int64Type>()
                .write_batch(&ints(|r| r.3), Some(&defs), None)
        })?;
        put(&|c| {
            c.typed::<Int64Type>()
                .write_batch(&ints(|r| r.4), Some(&defs), None)
        })?;
        put(&|c| {
            c.typed::<FloatType>()
                .write_batch(&floats(|r| r.5), Some(&defs), None)
        })?;
        rg.close()?;
        start = end;
    }
    writer.close()?;
    Ok(())
}

/// Reads every row of `path` through the refresh source (`source::open`:
/// parse, type-check, one `SourceRow` per line), nothing written.
fn parse_rate(defs: &FeatureDefinitions, path: &Path, format: &'static str) -> Result<Parse> {
    let view = defs
        .view("customer_profile")
        .context("customer_profile view")?;
    let entity = defs.entity(&view.entity).context("customer entity")?;
    let started = Instant::now();
    let (mut rows, mut rejected) = (0u64, 0u64);
    for item in feature_store::source::open(view, entity, path)? {
        match item? {
            feature_store::source::SourceItem::Row(_) => rows += 1,
            feature_store::source::SourceItem::Rejected(_) => rejected += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if rejected > 0 {
        bail!("{format}: {rejected} rows rejected; the bench file must be clean");
    }
    println!(
        "parse {format}: {rows} rows in {seconds:.2}s = {:.0} rows/s",
        rows as f64 / seconds
    );
    Ok(Parse {
        format,
        bytes: std::fs::metadata(path)?.len(),
        rows,
        seconds,
    })
}

struct Parse {
    format: &'static str,
    bytes: u64,
    rows: u64,
    seconds: f64,
}

fn write_profile_csv(path: &Path, rows: u64) -> Result<()> {
    let lines = (0..rows).map(|i| {
        let (key, age, amount, count, chargebacks, risk) = profile_row(i);
        format!("{key},{age},{amount},{count},{chargebacks},{risk}")
    });
    write_csv(path, PROFILE_HEADER, lines)
}

struct Load {
    backend: &'static str,
    rows: u64,
    seconds: f64,
}

async fn load(
    store: &AnyStore,
    defs: &FeatureDefinitions,
    csv: &Path,
    backend: &'static str,
) -> Result<Load> {
    store.apply_schema().await?;
    let options = RefreshOptions {
        script_version: "bench".into(),
        force: true,
        ..RefreshOptions::default()
    };
    let started = Instant::now();
    let outcome = refresh::run(
        store,
        defs,
        "customer_profile_daily",
        None,
        csv,
        &options,
        &|_| {},
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let RefreshOutcome::Loaded(batch) = outcome else {
        bail!("the refresh did not load");
    };
    println!(
        "refresh {backend}: {} rows in {seconds:.2}s = {:.0} rows/s",
        batch.rows_written,
        batch.rows_written as f64 / seconds
    );
    Ok(Load {
        backend,
        rows: batch.rows_written,
        seconds,
    })
}

struct ReadCell {
    backend: &'static str,
    readers: usize,
    reads: u64,
    errors: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

/// Closed-loop uncached reads of random entities for `seconds`.
async fn uncached(
    store: &AnyStore,
    backend: &'static str,
    readers: usize,
    rows: u64,
    seconds: f64,
) -> Result<ReadCell> {
    let batch = store
        .current_batches()
        .await?
        .remove("customer_profile")
        .context("no current batch")?
        .batch_id;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for r in 0..readers {
        let store = store.clone();
        let batch = batch.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let mut errors = 0u64;
            // A cheap LCG per reader: uniform keys, no shared RNG.
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (r as u64);
            while Instant::now() < until {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let key = format!("c-{:07}", (x >> 33) % rows);
                let t = Instant::now();
                let at = StaticKey {
                    view: "customer_profile",
                    batch_id: &batch,
                    entity_key: &key,
                };
                match store.read_static(at).await {
                    Ok(Some(_)) => hist.record(t.elapsed().as_nanos() as u64)?,
                    Ok(None) | Err(_) => errors += 1,
                }
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let started = Instant::now();
    let mut hist = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        hist.add(h)?;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64().max(seconds);
    let cell = ReadCell {
        backend,
        readers,
        reads: hist.len(),
        errors,
        seconds: secs,
        p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
        p999_us: hist.value_at_quantile(0.999) as f64 / 1000.0,
    };
    println!(
        "uncached {backend} x{readers}: {:.0} reads/s p50 {:.0} µs p99 {:.0} µs p99.9 {:.0} µs errors {}",
        cell.reads as f64 / cell.seconds,
        cell.p50_us,
        cell.p99_us,
        cell.p999_us,
        cell.errors
    );
    Ok(cell)
}

/// Mean cost of a cache hit (sequential reads of already cached entities).
async fn cached(store: &AnyStore, defs: Arc<FeatureDefinitions>) -> Result<(f64, u64)> {
    let reader = FeatureReader::new(Arc::new(store.clone()), defs, ReaderConfig::default()).await?;
    let keys: Vec<String> = (0..10_000).map(|i| format!("c-{i:07}")).collect();
    let now = SystemTime::now();
    for k in &keys {
        reader.read("customer_profile", k, now).await?;
    }
    let n = 1_000_000u64;
    let started = Instant::now();
    for i in 0..n {
        let v = reader
            .read("customer_profile", &keys[(i % 10_000) as usize], now)
            .await?;
        std::hint::black_box(v);
    }
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    let stats = reader.cache_stats();
    println!(
        "cached read: {ns:.0} ns/op ({} hits, {} loads)",
        stats.hits, stats.loads
    );
    Ok((ns, stats.loads))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rows = env_num("MLGW_BENCH_ROWS", 1_000_000);
    let seconds = env_num("MLGW_BENCH_SECONDS", 4) as f64;
    let scratch = std::env::temp_dir().join(format!("mlgw_bench_fs_{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let defs = Arc::new(FeatureDefinitions::load(
        &workspace_root().join("feature-store/definitions/fraud.toml"),
    )?);
    let csv = scratch.join("profile.csv");
    write_profile_csv(&csv, rows)?;
    let csv_mb = std::fs::metadata(&csv)?.len() as f64 / 1e6;
    println!("{rows} rows, {csv_mb:.1} MB of CSV");
    // MLGW_BENCH_ONLY=cassandra-load measures the Cassandra refresh alone (for
    // tuning the write path) and writes no results file.
    let only_load = std::env::var("MLGW_BENCH_ONLY").is_ok_and(|v| v == "cassandra-load");
    let mut parses = Vec::new();
    let mut loads = Vec::new();
    let (mut cached_ns, mut cached_loads) = (0.0, 0);
    let mut cells = Vec::new();
    // Embedded first, before Cassandra starts, so the two do not share the CPU.
    if !only_load {
        let parquet = scratch.join("profile.parquet");
        write_profile_parquet(&parquet, rows)?;
        parses.push(parse_rate(&defs, &csv, "CSV")?);
        parses.push(parse_rate(&defs, &parquet, "Parquet (snappy, dictionary)")?);
        let embedded = AnyStore::Embedded(Arc::new(EmbeddedStore::open(
            &scratch.join("features.redb"),
        )?));
        loads.push(load(&embedded, &defs, &csv, "embedded (redb), CSV").await?);
        loads.push(load(&embedded, &defs, &parquet, "embedded (redb), Parquet").await?);
        (cached_ns, cached_loads) = cached(&embedded, Arc::clone(&defs)).await?;
        for readers in CONCURRENCY {
            cells.push(uncached(&embedded, "embedded (redb)", readers, rows, seconds).await?);
        }
    }
    let cassandra = cassandra(&scratch)?;
    let defaults = ScyllaConfig::default();
    let write_parallelism = env_num(
        "MLGW_BENCH_WRITE_PARALLELISM",
        defaults.write_parallelism as u64,
    ) as usize;
    let write_batch_rows =
        env_num("MLGW_BENCH_BATCH_ROWS", defaults.write_batch_rows as u64) as usize;
    let scylla = AnyStore::Scylla(Arc::new(
        ScyllaStore::connect(ScyllaConfig {
            nodes: vec![cassandra.addr.clone()],
            keyspace: format!("bench_{}", std::process::id()),
            read_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(30),
            write_parallelism,
            write_batch_rows,
            ..defaults
        })
        .await?,
    ));
    // A fresh JVM runs interpreted for a while and its JIT compiler then takes
    // a fifth of the node's CPU: warm the write path up with an untimed load
    // of the same size (MLGW_BENCH_WARM_ROWS), so the timed load is what a
    // daily refresh into a node that has been serving costs: the view already
    // holds the previous batch, and nothing is still being compiled.
    let warm_rows = rows.min(env_num("MLGW_BENCH_WARM_ROWS", rows));
    let warm_csv = if warm_rows == rows {
        csv.clone()
    } else {
        let path = scratch.join("warm.csv");
        write_profile_csv(&path, warm_rows)?;
        path
    };
    load(
        &scylla,
        &defs,
        &warm_csv,
        "Cassandra 5.0 (warm-up, not reported)",
    )
    .await?;
    // Let the warm-up's flushes and compactions finish first, so the timed
    // load does not pay for the warm-up's data.
    let warmed = settle(&cassandra, Duration::from_secs(120)).await;
    println!(
        "Cassandra idle {:.0}s after the warm-up",
        warmed.as_secs_f64()
    );
    let warm_settle = warmed.as_secs();
    let cpu_before = cassandra.cpu_seconds();
    loads.push(load(&scylla, &defs, &csv, "Cassandra 5.0, CSV").await?);
    let load_cpu = match (cpu_before, cassandra.cpu_seconds()) {
        (Some(before), Some(after)) => format!(
            "{:.1} s, {:.1} µs per row",
            after - before,
            (after - before) * 1e6 / rows as f64
        ),
        _ => "not measured (an outside node)".to_owned(),
    };
    println!("Cassandra CPU during the load: {load_cpu}");
    if only_load {
        drop(cassandra);
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(());
    }
    // Let Cassandra flush and compact what it just took in before reading:
    // wait until its process is idle (or a fixed time for an outside node).
    let settled = settle(
        &cassandra,
        Duration::from_secs(env_num("MLGW_BENCH_SETTLE_SECONDS", 180)),
    )
    .await;
    println!("Cassandra settled after {:.0}s", settled.as_secs_f64());
    let settle = settled.as_secs();
    uncached(
        &scylla,
        "Cassandra 5.0 (warm-up, not reported)",
        16,
        rows,
        10.0,
    )
    .await?;
    for readers in CONCURRENCY {
        cells.push(uncached(&scylla, "Cassandra 5.0", readers, rows, seconds).await?);
    }
    drop(cassandra);
    let _ = std::fs::remove_dir_all(&scratch);

    let mut out = String::new();
    writeln!(out, "# Feature-store benchmark\n")?;
    writeln!(
        out,
        "Command: `cargo bench -p benches --bench feature_store` (MLGW_BENCH_ROWS={rows}, MLGW_BENCH_SECONDS={seconds}). \
         Everything on one 2-core machine: the benchmark, and a single-node Cassandra 5.0 started by tests/rig/cassandra.sh \
         (the rig's JVM settings and Cassandra 5.0's recommended storage engine: trie memtables, BTI SSTables); writes in unlogged batches of {write_batch_rows} rows, {write_parallelism} in flight; \
         both paths are warmed up first (an untimed load of {warm_rows} rows, then a wait until Cassandra is idle, {warm_settle}s; 10 s of reads) and reads start once Cassandra is idle after the timed load ({settle}s). The timed load's Cassandra CPU: {load_cpu}. The file is the example `customer_profile` view (key + 5 features), {csv_mb:.1} MB of CSV.\n"
    )?;
    writeln!(
        out,
        "## Source parse rate (read, decode, type-check; nothing written)\n"
    )?;
    writeln!(
        out,
        "| format | file MB | rows | seconds | rows/s |\n| --- | ---: | ---: | ---: | ---: |"
    )?;
    for p in &parses {
        writeln!(
            out,
            "| {} | {:.1} | {} | {:.2} | {:.0} |",
            p.format,
            p.bytes as f64 / 1e6,
            p.rows,
            p.seconds,
            p.rows as f64 / p.seconds
        )?;
    }
    writeln!(
        out,
        "\n## Refresh load (parse, encode, write, batch switch)\n"
    )?;
    writeln!(
        out,
        "| backend | rows | seconds | rows/s |\n| --- | ---: | ---: | ---: |"
    )?;
    for l in &loads {
        writeln!(
            out,
            "| {} | {} | {:.2} | {:.0} |",
            l.backend,
            l.rows,
            l.seconds,
            l.rows as f64 / l.seconds
        )?;
    }
    writeln!(
        out,
        "\n## Cached read\n\nOne `FeatureReader::read` of a cached static row (moka lookup, batch check, resolution of 5 features with their freshness), \
         sequential, 10,000 hot keys: **{cached_ns:.0} ns/op** ({cached_loads} backend loads to warm the cache).\n"
    )?;
    writeln!(
        out,
        "## Uncached single-entity read\n\nOne prepared single-partition read of a random entity out of {rows}, closed loop, no cache.\n"
    )?;
    writeln!(
        out,
        "| backend | readers | reads/s | p50 µs | p99 µs | p99.9 µs | errors |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for c in &cells {
        writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            c.backend,
            c.readers,
            c.reads as f64 / c.seconds,
            c.p50_us,
            c.p99_us,
            c.p999_us,
            c.errors
        )?;
    }
    let path = workspace_root().join("benches/results/feature_store.md");
    std::fs::write(&path, &out)?;
    println!("\n{out}\nwritten to {}", path.display());
    Ok(())
}

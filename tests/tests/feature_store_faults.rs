//! The feature store through a Cassandra outage, on a real node the test owns
//! (started with `tests/rig/cassandra.sh` in its own RIG_DIR, so the shared
//! node of the other tests is never touched): while the node is down, cached
//! rows keep answering and every other read fails fast with a transient
//! typed error (no hang past the read timeout); once the node is back on the
//! same address, the same reader and store answer again, with no reconnect
//! by hand and no process restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use feature_store::definitions::FeatureValue;
use feature_store::freshness::{ResolvedView, ValueState};
use feature_store::reader::{FeatureReader, ReadError, ReaderConfig};
use feature_store::refresh::RefreshOutcome;
use feature_store::store::AnyStore;
use feature_store::store::prelude::*;
use feature_store::store::scylla::{ScyllaConfig, ScyllaStore};
use rig::store::{OUTAGE_DEFINITIONS, definitions, refresh_file, scylla_config};
use rig::{OwnCassandra, unique};

const PROFILES: &str = "user_id,score,tier\n\
                        u-a,0.25,gold\n\
                        u-b,0.75,silver\n\
                        u-c,1.5,bronze\n";

/// The deadline of one read, short so the outage shows quickly.
const READ_TIMEOUT: Duration = Duration::from_millis(300);
/// What a failing read may take: the deadline plus scheduling slack.
const FAIL_BOUND: Duration = Duration::from_millis(300 + 2000);
/// How long the node may take to answer our reads again after its restart
/// (the driver's reconnect backoff tops out at 10 s).
const RECOVERY_BOUND: Duration = Duration::from_secs(60);

fn feature(view: &ResolvedView, name: &str) -> Result<(FeatureValue, ValueState)> {
    let f = view
        .feature(name)
        .with_context(|| format!("{} has no feature {name}", view.view))?;
    Ok((f.value.clone(), f.state))
}

fn check_profile(view: &ResolvedView, score: f64, tier: &str) -> Result<()> {
    assert_eq!(
        feature(view, "score")?,
        (FeatureValue::Float64(score), ValueState::Present)
    );
    assert_eq!(
        feature(view, "tier")?,
        (FeatureValue::String(tier.to_owned()), ValueState::Present)
    );
    Ok(())
}

/// A read that must fail because the node is down: a store error that says a
/// retry may help, returned within [`FAIL_BOUND`].
fn check_outage_error<T: std::fmt::Debug>(
    what: &str,
    result: &Result<T, ReadError>,
    took: Duration,
) {
    match result {
        Err(e @ ReadError::Store(store)) => {
            assert!(
                store.is_transient(),
                "{what}: the error should be transient (timeout/unavailable), got {e:?}"
            );
        }
        other => panic!("{what}: expected a store error while Cassandra is down, got {other:?}"),
    }
    assert!(
        took < FAIL_BOUND,
        "{what}: failing took {took:?}, more than {FAIL_BOUND:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_outage_serves_cached_rows_fails_fast_and_recovers_after_restart() -> Result<()> {
    let test_started = Instant::now();
    let mut node = OwnCassandra::start().await?;
    let address = node.address()?;

    // Schema, one refresh, a pushed dynamic value, and entity A cached. The
    // store is the one the gateway deploys (AnyStore over ScyllaDB).
    let store = Arc::new(AnyStore::Scylla(Arc::new(
        ScyllaStore::connect(ScyllaConfig {
            read_timeout: READ_TIMEOUT,
            ..scylla_config(&address, unique("faults"))
        })
        .await?,
    )));
    store.apply_schema().await.context("applying the schema")?;
    let defs = Arc::new(definitions(OUTAGE_DEFINITIONS, "faults.toml")?);
    let csv = node.dir.join("profiles.csv");
    std::fs::write(&csv, PROFILES)?;
    let outcome = refresh_file(store.as_ref(), &defs, "profile_daily", &csv).await?;
    ensure!(
        matches!(outcome, RefreshOutcome::Loaded(_)),
        "expected a load, got {outcome:?}"
    );
    let reader =
        Arc::new(FeatureReader::new(Arc::clone(&store), defs, ReaderConfig::default()).await?);
    reader
        .push(
            "activity",
            "u-a",
            &[("clicks".to_owned(), FeatureValue::Int64(42))],
            SystemTime::now(),
        )
        .await?;
    check_profile(
        &reader.read("profile", "u-a", SystemTime::now()).await?,
        0.25,
        "gold",
    )?;
    let clicks = feature(
        &reader.read("activity", "u-a", SystemTime::now()).await?,
        "clicks",
    )?;
    assert_eq!(clicks, (FeatureValue::Int64(42), ValueState::Present));

    // Uncached (dynamic) reads keep going while the node is stopped under them.
    let stop_reading = Arc::new(AtomicBool::new(false));
    let background = tokio::spawn({
        let reader = Arc::clone(&reader);
        let stop_reading = Arc::clone(&stop_reading);
        async move {
            let mut seen = Vec::new();
            while !stop_reading.load(Ordering::Relaxed) {
                let started = Instant::now();
                // Keep the answer, not the view (which borrows the reader).
                let result = reader
                    .read("activity", "u-a", SystemTime::now())
                    .await
                    .map(|v| feature(&v, "clicks").map(|(value, _)| value).ok());
                seen.push((result, started.elapsed()));
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            seen
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.run("stop").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_reading.store(true, Ordering::Relaxed);
    let seen = background.await?;
    let ok = seen.iter().filter(|(r, _)| r.is_ok()).count();
    let slowest = seen.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let mut kinds: Vec<String> = seen
        .iter()
        .filter_map(|(r, _)| r.as_ref().err().map(ToString::to_string))
        .collect();
    kinds.sort();
    kinds.dedup();
    eprintln!(
        "fault test: {} reads across the stop: {ok} answered, {} failed, slowest {slowest:?}; errors: {kinds:#?}",
        seen.len(),
        seen.len() - ok
    );
    assert!(ok > 0, "no read answered before the stop");
    for (i, (result, took)) in seen.iter().enumerate() {
        match result {
            Ok(clicks) => assert_eq!(clicks, &Some(FeatureValue::Int64(42))),
            Err(_) => check_outage_error(&format!("read {i} across the stop"), result, *took),
        }
    }
    assert!(
        seen.last().is_some_and(|(r, _)| r.is_err()),
        "reads still answered 0.5 s after the node stopped"
    );

    // Down: the cached row answers, the rest fails fast every time.
    let hits_before = reader.cache_stats().hits;
    for _ in 0..3 {
        check_profile(
            &reader.read("profile", "u-a", SystemTime::now()).await?,
            0.25,
            "gold",
        )?;
    }
    assert_eq!(reader.cache_stats().hits, hits_before + 3);
    let mut latencies = Vec::new();
    for attempt in 0..5 {
        let started = Instant::now();
        let result = reader.read("profile", "u-b", SystemTime::now()).await;
        let took = started.elapsed();
        check_outage_error(&format!("static read {attempt}"), &result, took);
        latencies.push(took);
        let started = Instant::now();
        let result = reader.read("activity", "u-b", SystemTime::now()).await;
        let took = started.elapsed();
        check_outage_error(&format!("dynamic read {attempt}"), &result, took);
        latencies.push(took);
        if attempt == 0 {
            eprintln!(
                "fault test: while down, a read fails with: {}",
                result.err().map(|e| e.to_string()).unwrap_or_default()
            );
        }
    }
    eprintln!("fault test: failing read latencies while down: {latencies:?}");

    // Back on the same address with its data: the same objects recover.
    node.run("restart").await?;
    ensure!(
        node.address()? == address,
        "the node came back on another address"
    );
    let restarted = Instant::now();
    let mut attempts = 0;
    let profile = loop {
        attempts += 1;
        match reader.read("profile", "u-b", SystemTime::now()).await {
            Ok(view) => break view,
            Err(e) => {
                let transient = e.store_error().is_some_and(|s| s.is_transient());
                assert!(transient, "while recovering: {e:?}");
                if restarted.elapsed() > RECOVERY_BOUND {
                    bail!(
                        "reads did not recover within {RECOVERY_BOUND:?} of the restart \
                         ({attempts} attempts); last error: {e}"
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "fault test: reads recovered {:.1?} after the restart ({attempts} attempts)",
        restarted.elapsed()
    );
    check_profile(&profile, 0.75, "silver")?;
    let clicks = feature(
        &reader.read("activity", "u-a", SystemTime::now()).await?,
        "clicks",
    )?;
    assert_eq!(clicks, (FeatureValue::Int64(42), ValueState::Present));
    check_profile(
        &reader.read("profile", "u-c", SystemTime::now()).await?,
        1.5,
        "bronze",
    )?;

    eprintln!("fault test: took {:.1?} in all", test_started.elapsed());
    node.passed = true;
    Ok(())
}

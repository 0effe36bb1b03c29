//! The feature store's contract, run against both backends: the embedded redb
//! file and ScyllaDB (the rig's real Cassandra, one keyspace per test). Each
//! test drives the public interface the gateway and the CLI use: refresh jobs
//! from real files, pushes of dynamic values, reads through the row cache.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use feature_store::aggregate::{Event, EventRange};
use feature_store::definitions::{FeatureDefinitions, FeatureValue};
use feature_store::freshness::{StoredRow, ValueState};
use feature_store::log::{FeedbackRecord, LoggedOutput, Outcome, PredictionRecord};
use feature_store::reader::{FeatureReader, ReaderConfig};
use feature_store::refresh::{self, RefreshError, RefreshOptions, RefreshOutcome};
use feature_store::schedule::{RunRequest, ScheduleState};
use feature_store::store::embedded::EmbeddedStore;
use feature_store::store::prelude::*;
use feature_store::store::scylla::{ScyllaConfig, ScyllaStore};
use feature_store::store::{
    AnyStore, BatchRecord, BatchStatus, BatchStore, CurrentBatch, DynamicWrite, EncodedRow,
    EventQuery, EventWrite, IdempotencyClaim, Lease, LeaseOutcome, LogWindow, RequestRecord,
    RequestState, RoutingRecord, RowStore, ScanCursor, ScanPage, ScanPart, SchemaReport,
    ScoreEntry, ScoreKey, ScoreWrite, StaticKey, StaticScan, StaticWrite, StoreError,
    TopicPosition,
};
use feature_store::tuner::controller::{JobState, Policy, Window};
use feature_store::tuner::metric::{MetricKind, Sample};
use rig::store::{CONTRACT_DEFINITIONS, definitions, scylla_config};
use rig::{ScratchDir, rig_env, unique};

struct Fixture {
    store: AnyStore,
    defs: Arc<FeatureDefinitions>,
    scratch: ScratchDir,
}

impl Fixture {
    async fn reader(&self, config: ReaderConfig) -> Result<Arc<FeatureReader<AnyStore>>> {
        Ok(Arc::new(
            FeatureReader::new(Arc::new(self.store.clone()), Arc::clone(&self.defs), config)
                .await?,
        ))
    }

    async fn refresh(
        &self,
        name: &str,
        csv: &str,
        options: &RefreshOptions,
    ) -> Result<RefreshOutcome, RefreshError> {
        let path = self.scratch.file(name, csv.as_bytes()).map_err(|e| {
            RefreshError::Source(feature_store::source::SourceError::Io {
                path: name.to_owned(),
                error: std::io::Error::other(e.to_string()),
            })
        })?;
        refresh::run(
            &self.store,
            &self.defs,
            "profile_daily",
            None,
            &path,
            options,
            &|_| {},
        )
        .await
    }
}

async fn embedded() -> Result<Fixture> {
    let scratch = ScratchDir::new("mlgw_fs")?;
    let store = EmbeddedStore::open(&scratch.0.join("features.redb"))?;
    store.apply_schema().await?;
    fixture(AnyStore::Embedded(Arc::new(store)), scratch)
}

async fn scylla() -> Result<Fixture> {
    let addr = rig_env("MLGW_TEST_CASSANDRA")?;
    let config = ScyllaConfig {
        read_timeout: Duration::from_secs(5),
        ..scylla_config(&addr, unique("fs"))
    };
    let store = ScyllaStore::connect(config).await?;
    store.apply_schema().await.context("applying the schema")?;
    fixture(
        AnyStore::Scylla(Arc::new(store)),
        ScratchDir::new("mlgw_fs")?,
    )
}

fn fixture(store: AnyStore, scratch: ScratchDir) -> Result<Fixture> {
    let defs = definitions(CONTRACT_DEFINITIONS, "contract.toml")?;
    Ok(Fixture {
        store,
        defs: Arc::new(defs),
        scratch,
    })
}

fn quick() -> RefreshOptions {
    RefreshOptions {
        script_version: "test-1".into(),
        chunk_rows: 50,
        ..RefreshOptions::default()
    }
}

fn loaded(outcome: RefreshOutcome) -> Result<feature_store::store::BatchRecord> {
    match outcome {
        RefreshOutcome::Loaded(b) => Ok(*b),
        RefreshOutcome::Unchanged(c) => bail!("expected a load, got unchanged {c:?}"),
    }
}

// ---------------------------------------------------------------------------
// The contract.

async fn every_type_round_trips(f: Fixture) -> Result<()> {
    let batch = loaded(
        f.refresh(
            "p.csv",
            "user_id,ratio,amount,visits,vip,tier\n\
             u-1,0.25,12345.678901,-42,true,gold ★\n\
             u:2/weird key,,,,,\n",
            &quick(),
        )
        .await?,
    )?;
    let reader = f.reader(ReaderConfig::default()).await?;
    let now = SystemTime::now();
    let v = reader.read("profile", "u-1", now).await?;
    let values: Vec<(FeatureValue, ValueState)> = v
        .features
        .iter()
        .map(|x| (x.value.clone(), x.state))
        .collect();
    assert_eq!(
        values,
        vec![
            (FeatureValue::Float32(0.25), ValueState::Present),
            (FeatureValue::Float64(12345.678901), ValueState::Present),
            (FeatureValue::Int64(-42), ValueState::Present),
            (FeatureValue::Bool(true), ValueState::Present),
            (FeatureValue::String("gold ★".into()), ValueState::Present),
        ]
    );
    assert_eq!(v.batch_id.as_deref(), Some(batch.batch_id.as_str()));
    assert!(
        v.age.is_some_and(|a| a < Duration::from_secs(60)),
        "{:?}",
        v.age
    );
    // A row with only empty cells exists but every value is missing.
    let empty = reader.read("profile", "u:2/weird key", now).await?;
    assert!(empty.age.is_some());
    assert!(
        empty
            .features
            .iter()
            .all(|x| x.state == ValueState::MissingValue)
    );
    Ok(())
}

async fn missing_entity_gets_defaults_flagged(f: Fixture) -> Result<()> {
    let reader = f.reader(ReaderConfig::default()).await?;
    // Before any refresh, and after one that lacks the entity.
    let before = reader.read("profile", "nobody", SystemTime::now()).await?;
    assert!(
        before
            .features
            .iter()
            .all(|x| x.state == ValueState::MissingRow)
    );
    f.refresh("p.csv", "user_id,visits\nu-1,3\n", &quick())
        .await?;
    reader.refresh_current().await?;
    let after = reader.read("profile", "nobody", SystemTime::now()).await?;
    assert_eq!(after.age, None);
    assert_eq!(after.defaulted().count(), 5);
    assert_eq!(
        after.feature("visits").map(|x| x.value.clone()),
        Some(FeatureValue::Int64(7))
    );
    assert_eq!(
        after.feature("tier").map(|x| x.value.clone()),
        Some(FeatureValue::String("none".into()))
    );
    Ok(())
}

async fn stale_value_is_flagged(f: Fixture) -> Result<()> {
    f.refresh("p.csv", "user_id,visits\nu-1,3\n", &quick())
        .await?;
    let reader = f.reader(ReaderConfig::default()).await?;
    let fresh = reader.read("profile", "u-1", SystemTime::now()).await?;
    assert_eq!(
        fresh.feature("visits").map(|x| x.state),
        Some(ValueState::Present)
    );
    // The same stored row, looked at after the view's max_age (1h).
    let later = SystemTime::now() + Duration::from_secs(3601);
    let stale = reader.read("profile", "u-1", later).await?;
    assert!(stale.features.iter().all(|x| x.state == ValueState::Stale));
    assert_eq!(
        stale.feature("visits").map(|x| x.value.clone()),
        Some(FeatureValue::Int64(7))
    );
    assert!(stale.age.is_some_and(|a| a > Duration::from_secs(3600)));
    Ok(())
}

/// The `activity` values of a push: `clicks` = `n`.
fn clicks(n: i64) -> Vec<(String, FeatureValue)> {
    vec![("clicks".to_owned(), FeatureValue::Int64(n))]
}

async fn dynamic_value_expires_after_its_ttl(f: Fixture) -> Result<()> {
    let reader = f.reader(ReaderConfig::default()).await?;
    let now = SystemTime::now();
    // Observed 1s ago with a 4s TTL: readable now, gone about 3s from now.
    let ago = |s| now - Duration::from_secs(s);
    reader.push("activity", "u-1", &clicks(5), ago(1)).await?;
    // Observed longer ago than the TTL: accepted and never visible.
    reader.push("activity", "u-2", &clicks(9), ago(10)).await?;
    let v = reader.read("activity", "u-1", SystemTime::now()).await?;
    assert_eq!(
        v.feature("clicks").map(|x| (x.value.clone(), x.state)),
        Some((FeatureValue::Int64(5), ValueState::Present))
    );
    let gone = reader.read("activity", "u-2", SystemTime::now()).await?;
    assert_eq!(gone.age, None, "an event older than the TTL is not stored");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let v = reader.read("activity", "u-1", SystemTime::now()).await?;
        if v.age.is_none() {
            assert_eq!(
                v.feature("clicks").map(|x| x.state),
                Some(ValueState::MissingRow)
            );
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the dynamic value outlived its TTL by 10s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

async fn older_event_does_not_overwrite_newer(f: Fixture) -> Result<()> {
    let reader = f.reader(ReaderConfig::default()).await?;
    let t = SystemTime::now();
    reader.push("activity", "u-1", &clicks(2), t).await?;
    reader
        .push(
            "activity",
            "u-1",
            &clicks(1),
            t - Duration::from_millis(500),
        )
        .await?;
    let v = reader.read("activity", "u-1", SystemTime::now()).await?;
    assert_eq!(
        v.feature("clicks").map(|x| x.value.clone()),
        Some(FeatureValue::Int64(2)),
        "late older event lost"
    );
    // Features age independently: spend arrives later, clicks keeps its time.
    reader
        .push(
            "activity",
            "u-1",
            &[("spend".to_owned(), FeatureValue::Float64(9.5))],
            t + Duration::from_millis(10),
        )
        .await?;
    reader
        .push("activity", "u-1", &clicks(3), t + Duration::from_millis(20))
        .await?;
    let v = reader.read("activity", "u-1", SystemTime::now()).await?;
    assert_eq!(
        v.feature("clicks").map(|x| x.value.clone()),
        Some(FeatureValue::Int64(3))
    );
    assert_eq!(
        v.feature("spend").map(|x| x.value.clone()),
        Some(FeatureValue::Float64(9.5))
    );
    // Bad pushes are refused with the view and feature named.
    let err = reader
        .push(
            "activity",
            "u-1",
            &[("spend".to_owned(), FeatureValue::Int64(1))],
            t,
        )
        .await;
    assert_eq!(
        err.map_err(|e| e.to_string()).err().as_deref(),
        Some("feature activity.spend is float64, got a int64 value")
    );
    let err = reader.push("profile", "u-1", &clicks(1), t).await;
    assert!(err.is_err_and(|e| {
        e.to_string()
            .contains("static views are loaded by refresh jobs")
    }));
    Ok(())
}

async fn failed_refresh_leaves_previous_batch_served(f: Fixture) -> Result<()> {
    let first = loaded(
        f.refresh("p1.csv", "user_id,visits\nu-1,1\nu-2,2\n", &quick())
            .await?,
    )?;
    let reader = f.reader(ReaderConfig::default()).await?;
    assert_eq!(
        reader
            .read("profile", "u-1", SystemTime::now())
            .await?
            .feature("visits")
            .map(|x| x.value.clone()),
        Some(FeatureValue::Int64(1))
    );
    // A second file that breaks after 500 good rows (10 chunks written): the
    // bytes at the end are not UTF-8, so the CSV reader stops there.
    let mut bad = b"user_id,visits\n".to_vec();
    for i in 0..500 {
        bad.extend_from_slice(format!("u-{i},{}\n", 100 + i).as_bytes());
    }
    bad.extend_from_slice(b"u-x,\xff\xfe\n");
    let path = f.scratch.file("p2.csv", &bad)?;
    let err = refresh::run(
        &f.store,
        &f.defs,
        "profile_daily",
        None,
        &path,
        &quick(),
        &|_| {},
    )
    .await;
    let Err(RefreshError::Failed { batch, reason }) = err else {
        bail!("expected a failed batch, got {err:?}");
    };
    assert!(reason.contains("malformed CSV"), "{reason}");
    assert_eq!(batch.status, BatchStatus::Failed);
    assert_eq!(batch.rows_written, 500);
    reader.refresh_current().await?;
    let v = reader.read("profile", "u-1", SystemTime::now()).await?;
    assert_eq!(v.batch_id.as_deref(), Some(first.batch_id.as_str()));
    assert_eq!(
        v.feature("visits").map(|x| x.value.clone()),
        Some(FeatureValue::Int64(1))
    );
    let batches = f.store.list_batches("profile", 10).await?;
    let statuses: Vec<BatchStatus> = batches.iter().map(|b| b.status).collect();
    assert_eq!(
        statuses,
        vec![BatchStatus::Failed, BatchStatus::Done],
        "newest first"
    );
    assert!(
        batches[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("malformed CSV"))
    );
    Ok(())
}

async fn batch_metadata_is_recorded_and_reruns_are_idempotent(f: Fixture) -> Result<()> {
    let csv = "user_id,visits,ratio\nu-1,1,0.5\nu-2,oops,0.1\nu-3,3,0.2\nu-1,4,0.3\nu-4,4,0.4\n";
    let lenient = RefreshOptions {
        max_rejected_percent: 50.0,
        ..quick()
    };
    let before = SystemTime::now();
    let batch = loaded(f.refresh("p.csv", csv, &lenient).await?)?;
    let after = SystemTime::now();
    assert_eq!(
        (batch.job.as_str(), batch.view.as_str()),
        ("profile_daily", "profile")
    );
    assert_eq!(batch.script_version, "test-1");
    assert_eq!(batch.status, BatchStatus::Done);
    assert_eq!((batch.rows_written, batch.rows_rejected), (3, 2));
    let lines: Vec<(u64, &str)> = batch
        .rejections
        .iter()
        .map(|r| (r.line, r.reason.as_str()))
        .collect();
    assert_eq!(
        lines[0],
        (3, "column \"visits\": \"oops\" is not a valid int64")
    );
    assert_eq!(lines[1].0, 5);
    assert!(
        lines[1]
            .1
            .contains("repeats entity \"u-1\" first given on line 2"),
        "{}",
        lines[1].1
    );
    let started = batch.started_at.context("started_at")?;
    let finished = batch.finished_at.context("finished_at")?;
    assert!(
        before <= batch.ingested_at
            && batch.ingested_at <= started
            && started <= finished
            && finished <= after
    );
    let stored = f.store.list_batches("profile", 10).await?;
    assert_eq!(stored.len(), 1);
    // Same microsecond precision on every backend.
    assert_eq!(stored[0], batch);

    // The same input again: nothing is written.
    let again = f.refresh("p.csv", csv, &lenient).await?;
    assert!(
        matches!(again, RefreshOutcome::Unchanged(ref c) if c.batch_id == batch.batch_id),
        "{again:?}"
    );
    assert_eq!(f.store.list_batches("profile", 10).await?.len(), 1);
    // Forced: a new batch with the same content becomes current.
    let forced = loaded(
        f.refresh(
            "p.csv",
            csv,
            &RefreshOptions {
                force: true,
                ..lenient.clone()
            },
        )
        .await?,
    )?;
    assert!(
        forced.batch_id > batch.batch_id,
        "batch IDs are time-ordered"
    );
    let current = f.store.current_batches().await?;
    assert_eq!(
        current.get("profile").map(|c| c.batch_id.clone()),
        Some(forced.batch_id.clone())
    );
    // Too many bad rows under the default 1% limit: the batch fails.
    let strict = f
        .refresh(
            "p.csv",
            csv,
            &RefreshOptions {
                force: true,
                ..quick()
            },
        )
        .await;
    assert!(
        matches!(&strict, Err(RefreshError::Failed { reason, .. }) if reason.contains("2 of 5 rows rejected")),
        "{strict:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Windowed aggregates computed from raw events.

const MIN: Duration = Duration::from_secs(60);

/// A payment event `ago` before `now` (no ID: derived, so a replay is the
/// same event).
fn payment(now: SystemTime, ago: Duration, id: &str, amount: f64) -> Event {
    let at = feature_store::store::from_micros(feature_store::store::to_micros(now - ago));
    Event::new(
        "u-1",
        None,
        at,
        BTreeMap::from([
            ("payment_id".to_owned(), FeatureValue::String(id.to_owned())),
            ("amount".to_owned(), FeatureValue::Float64(amount)),
        ]),
    )
}

/// The error's text, empty when `result` is a success.
fn error_text<T>(result: Result<T, impl std::fmt::Display>) -> String {
    result.err().map(|e| e.to_string()).unwrap_or_default()
}

fn value_of(
    v: &feature_store::freshness::ResolvedView<'_>,
    name: &str,
) -> (FeatureValue, ValueState) {
    v.feature(name)
        .map(|x| (x.value.clone(), x.state))
        .unwrap_or((FeatureValue::Bool(false), ValueState::MissingRow))
}

async fn aggregates_count_sum_mean_max_min_over_their_windows(f: Fixture) -> Result<()> {
    let reader = f.reader(ReaderConfig::default()).await?;
    let now = SystemTime::now();
    // Inside 10m, inside 1h, inside 2h only, and past the ttl (never stored).
    for e in [
        payment(now, 5 * MIN, "p-1", 10.5),
        payment(now, 30 * MIN, "p-2", 20.25),
        payment(now, 90 * MIN, "p-3", 4.0),
        payment(now, 150 * MIN, "p-4", 1.0),
    ] {
        reader.push_event("payments", "u-1", &e).await?;
    }
    // A plain value of the same view works as before.
    reader
        .push(
            "payments",
            "u-1",
            &[("last_country".to_owned(), FeatureValue::String("NL".into()))],
            now - 20 * MIN,
        )
        .await?;
    let v = reader.read("payments", "u-1", now).await?;
    let present = ValueState::Present;
    for (name, want) in [
        ("n_10m", FeatureValue::Int64(1)),
        ("n_1h", FeatureValue::Int64(2)),
        ("sum_1h", FeatureValue::Float64(30.75)),
        ("mean_1h", FeatureValue::Float64(15.375)),
        ("max_1h", FeatureValue::Float32(20.25)),
        // 4.0, not 1.0: that event is past the ttl.
        ("min_2h", FeatureValue::Int64(4)),
        ("last_country", FeatureValue::String("NL".into())),
    ] {
        assert_eq!(value_of(&v, name), (want, present), "{name}");
    }
    // The row's age is the newest contribution's (the event 5 min ago).
    assert!(
        v.age.is_some_and(|a| a >= 5 * MIN && a < 6 * MIN),
        "{:?}",
        v.age
    );

    // Twenty minutes on, the 10-minute window is empty: the default, flagged
    // like a missing value; the wider windows still hold their events.
    let later = reader.read("payments", "u-1", now + 20 * MIN).await?;
    assert_eq!(
        value_of(&later, "n_10m"),
        (FeatureValue::Int64(0), ValueState::MissingValue)
    );
    assert!(later.defaulted().any(|d| d == "n_10m"));
    assert_eq!(value_of(&later, "n_1h"), (FeatureValue::Int64(2), present));
    // Forty-five minutes on, only the 2h window has anything left.
    let much_later = reader.read("payments", "u-1", now + 45 * MIN).await?;
    for (name, want) in [
        ("n_1h", FeatureValue::Int64(1)),
        ("sum_1h", FeatureValue::Float64(10.5)),
    ] {
        assert_eq!(value_of(&much_later, name), (want, present), "{name}");
    }

    // An entity without events or values: every feature defaulted, no row.
    let nobody = reader.read("payments", "u-2", now).await?;
    assert_eq!(nobody.age, None);
    assert!(
        nobody
            .features
            .iter()
            .all(|x| x.state == ValueState::MissingRow)
    );
    assert_eq!(value_of(&nobody, "sum_1h").0, FeatureValue::Float64(-1.0));
    Ok(())
}

async fn batched_events_are_checked_each_and_written_once(f: Fixture) -> Result<()> {
    use feature_store::reader::PushedEvent;
    let reader = f.reader(ReaderConfig::default()).await?;
    let now = SystemTime::now();
    let a = payment(now, MIN, "p-1", 8.0);
    let b = payment(now, 2 * MIN, "p-2", 5.0);
    let c = payment(now, 30 * MIN, "p-3", 2.0);
    let bad = Event::new(
        "u-1",
        None,
        now,
        BTreeMap::from([("amount".to_owned(), FeatureValue::String("12".into()))]),
    );
    fn push<'a>(view: &'a str, entity_key: &'a str, event: &'a Event) -> PushedEvent<'a> {
        PushedEvent {
            view,
            entity_key,
            event,
        }
    }
    let (a, b, c, bad) = (&a, &b, &c, &bad);
    // A redelivery within the batch and across batches is one event; a bad
    // event is refused alone, the rest are written.
    let outcomes = reader
        .push_events(&[
            push("payments", "u-1", a),
            push("payments", "u-1", bad),
            push("payments", "u-1", b),
            push("payments", "u-1", a),
            push("payments", "u-2", c),
            push("no_such_view", "u-1", c),
        ])
        .await?;
    let refused: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.as_ref().map(|_| i))
        .collect();
    assert_eq!(refused, [1, 5], "{outcomes:?}");
    reader
        .push_events(&[push("payments", "u-1", b), push("payments", "u-1", c)])
        .await?;
    let v = reader.read("payments", "u-1", now).await?;
    assert_eq!(value_of(&v, "n_1h").0, FeatureValue::Int64(3));
    assert_eq!(value_of(&v, "sum_1h").0, FeatureValue::Float64(15.0));
    let v = reader.read("payments", "u-2", now).await?;
    assert_eq!(value_of(&v, "n_1h").0, FeatureValue::Int64(1));
    Ok(())
}

async fn late_events_count_and_replays_count_once(f: Fixture) -> Result<()> {
    let reader = f.reader(ReaderConfig::default()).await?;
    let now = SystemTime::now();
    let newest = payment(now, MIN, "p-new", 8.0);
    reader.push_event("payments", "u-1", &newest).await?;
    // Older events arriving after a newer one are counted all the same.
    reader
        .push_event("payments", "u-1", &payment(now, 40 * MIN, "p-old", 2.0))
        .await?;
    reader
        .push_event("payments", "u-1", &payment(now, 3 * MIN, "p-mid", 5.0))
        .await?;
    // Replays: the same event again (derived ID), and an explicit ID twice
    // with different payloads: each is one event.
    reader.push_event("payments", "u-1", &newest).await?;
    let at = newest.event_time - MIN;
    let tagged = |amount: f64| {
        Event::new(
            "u-1",
            Some("evt-42".into()),
            at,
            BTreeMap::from([("amount".to_owned(), FeatureValue::Float64(amount))]),
        )
    };
    reader.push_event("payments", "u-1", &tagged(100.0)).await?;
    reader.push_event("payments", "u-1", &tagged(100.0)).await?;
    // The backend holds each replayed event once (same time and ID: one row).
    let stored = f
        .store
        .read_events(EventQuery {
            view: "payments",
            entity_key: "u-1",
            from: now - Duration::from_secs(3 * 3600),
            to: now,
            limit: 100,
        })
        .await?;
    assert_eq!(stored.events.len(), 4, "{stored:?}");
    let v = reader.read("payments", "u-1", now).await?;
    // payment_id is carried by three distinct events; amount by four.
    assert_eq!(value_of(&v, "n_1h").0, FeatureValue::Int64(3));
    assert_eq!(value_of(&v, "n_10m").0, FeatureValue::Int64(2));
    assert_eq!(value_of(&v, "sum_1h").0, FeatureValue::Float64(115.0));
    assert_eq!(value_of(&v, "max_1h").0, FeatureValue::Float32(100.0));
    assert_eq!(value_of(&v, "min_2h").0, FeatureValue::Int64(2));

    // Bad events are refused naming the field; nothing is written.
    let bad = |fields: Vec<(&str, FeatureValue)>| {
        Event::new(
            "u-1",
            None,
            now,
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        )
    };
    let err = reader
        .push_event(
            "payments",
            "u-1",
            &bad(vec![("amount", FeatureValue::String("12".into()))]),
        )
        .await
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "feature view \"payments\", event field \"amount\": expected a number, got a string value"
        )
    );
    let misspelt = bad(vec![("amont", FeatureValue::Int64(1))]);
    let err = error_text(reader.push_event("payments", "u-1", &misspelt).await);
    assert!(
        err.contains("its aggregates read amount, payment_id"),
        "{err}"
    );
    assert!(
        reader
            .push_event("payments", "u-1", &bad(vec![]))
            .await
            .is_err()
    );
    assert!(
        reader
            .push_event(
                "activity",
                "u-1",
                &bad(vec![("amount", FeatureValue::Int64(1))])
            )
            .await
            .is_err_and(|e| e.to_string().contains("declares no windowed aggregate"))
    );
    // A plain value of an aggregate feature is refused: only events feed it.
    let count = [("n_1h".to_owned(), FeatureValue::Int64(9))];
    let err = error_text(reader.push("payments", "u-1", &count, now).await);
    assert!(
        err.contains("computed by the feature store (count of payment_id over 60 min)"),
        "{err}"
    );
    let again = reader.read("payments", "u-1", now).await?;
    assert_eq!(value_of(&again, "n_1h").0, FeatureValue::Int64(3));
    assert_eq!(value_of(&again, "sum_1h").0, FeatureValue::Float64(115.0));
    Ok(())
}

async fn the_event_cap_bounds_a_read_and_is_reported(f: Fixture) -> Result<()> {
    let reader = f
        .reader(ReaderConfig {
            max_events_per_read: 5,
            ..ReaderConfig::default()
        })
        .await?;
    let now = SystemTime::now();
    for i in 0..8u32 {
        let e = payment(now, MIN * (i + 1), &format!("p-{i}"), f64::from(i));
        reader.push_event("payments", "u-1", &e).await?;
    }
    let before = reader.event_stats();
    assert_eq!(before.capped_reads, 0);
    let v = reader.read("payments", "u-1", now).await?;
    // The five newest events (1..5 min ago, amounts 0..4) are read.
    assert_eq!(value_of(&v, "n_1h").0, FeatureValue::Int64(5));
    assert_eq!(value_of(&v, "sum_1h").0, FeatureValue::Float64(10.0));
    let stats = reader.event_stats();
    assert_eq!((stats.reads, stats.events, stats.capped_reads), (1, 5, 1));
    // A window with fewer events than the cap is not reported.
    let narrow = reader.read("payments", "u-1", now - 5 * MIN).await?;
    assert!(value_of(&narrow, "n_1h").1 == ValueState::Present);
    assert_eq!(reader.event_stats().capped_reads, 1);
    // The store itself says when a range held more than the limit.
    let three_hours = now - Duration::from_secs(3 * 3600);
    let last_three_hours = |limit| {
        f.store.read_events(EventQuery {
            view: "payments",
            entity_key: "u-1",
            from: three_hours,
            to: now,
            limit,
        })
    };
    let range = last_three_hours(8).await?;
    assert_eq!((range.events.len(), range.truncated), (8, false));
    let times: Vec<SystemTime> = range.events.iter().map(|e| e.event_time).collect();
    assert!(times.windows(2).all(|w| w[0] > w[1]), "newest first");
    let range = last_three_hours(7).await?;
    assert_eq!((range.events.len(), range.truncated), (7, true));
    // Read together (from one snapshot where the backend can), the row and
    // the events are what the two reads give apart.
    let (row, together) = f
        .store
        .read_dynamic_window(EventQuery {
            view: "payments",
            entity_key: "u-1",
            from: three_hours,
            to: now,
            limit: 7,
        })
        .await?;
    assert_eq!(together, range);
    assert_eq!(row, f.store.read_dynamic("payments", "u-1").await?);
    Ok(())
}

// ---------------------------------------------------------------------------
// The prediction log and feedback.

/// A prediction record made `ago` before now, with a v7 ID of that time.
fn prediction_at(ago: Duration, entity: &str) -> Result<PredictionRecord> {
    let at = SystemTime::now() - ago;
    let since = at.duration_since(SystemTime::UNIX_EPOCH)?;
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
    Ok(PredictionRecord {
        prediction_id: uuid::Uuid::new_v7(ts).to_string(),
        at: feature_store::store::from_micros(feature_store::store::to_micros(at)),
        subject: "svc-checkout".into(),
        model: "fraud".into(),
        model_version: "2".into(),
        route: "stable".into(),
        entity: entity.into(),
        inputs: vec![0.25, -1.0, 3.5],
        view_ages_ms: BTreeMap::from([("profile".into(), Some(61_000)), ("clicks".into(), None)]),
        defaulted: vec!["clicks_5m".into()],
        outputs: vec![LoggedOutput {
            name: "probabilities".into(),
            label: Some("fraud".into()),
            score: 0.875,
        }],
        shadow_of: None,
        model_time_us: Some(850),
        source: feature_store::log::PredictionSource::Live,
    })
}

fn feedback_for(p: &PredictionRecord, outcome: Outcome) -> FeedbackRecord {
    let now = feature_store::store::now_micros();
    FeedbackRecord {
        prediction_id: p.prediction_id.clone(),
        outcome,
        observed_at: now,
        received_at: now,
        subject: "svc-chargebacks".into(),
    }
}

async fn prediction_log_joins_feedback(f: Fixture) -> Result<()> {
    let retention = Duration::from_secs(3600 * 24);
    // Three hours apart, so the window spans several hours (partitions).
    let old = prediction_at(Duration::from_secs(2 * 3600 + 5), "u-old")?;
    let mid = prediction_at(Duration::from_secs(3600), "u-mid")?;
    let new = prediction_at(Duration::from_millis(5), "u-new")?;
    f.store
        .write_predictions(&[mid.clone(), new.clone(), old.clone()], retention)
        .await?;

    // Read back by ID, exactly as written.
    assert_eq!(
        f.store.read_prediction(&mid.prediction_id).await?,
        Some(mid.clone())
    );
    let never = uuid::Uuid::now_v7().to_string();
    assert_eq!(f.store.read_prediction(&never).await?, None);

    // Feedback for two of them; the second write for `new` replaces the first.
    f.store
        .write_feedback(
            &feedback_for(&old, Outcome::Label("legit".into())),
            retention,
        )
        .await?;
    f.store
        .write_feedback(
            &feedback_for(&new, Outcome::Label("legit".into())),
            retention,
        )
        .await?;
    let corrected = feedback_for(&new, Outcome::Label("fraud".into()));
    f.store.write_feedback(&corrected, retention).await?;

    let from = SystemTime::now() - Duration::from_secs(3 * 3600);
    let to = SystemTime::now() + Duration::from_secs(1);
    let log = f
        .store
        .read_log(LogWindow {
            from,
            to,
            limit: 100,
        })
        .await?;
    let ids: Vec<&str> = log
        .iter()
        .map(|e| e.prediction.prediction_id.as_str())
        .collect();
    assert_eq!(
        ids,
        [&old.prediction_id, &mid.prediction_id, &new.prediction_id],
        "oldest first"
    );
    assert_eq!(log[0].prediction, old);
    assert_eq!(
        log[0].feedback.as_ref().map(|f| &f.outcome),
        Some(&Outcome::Label("legit".into()))
    );
    assert_eq!(log[1].feedback, None, "no feedback for the middle one");
    assert_eq!(
        log[2].feedback.as_ref(),
        Some(&corrected),
        "the later feedback wins"
    );

    // A window that starts after `old` leaves it out; the limit keeps the oldest.
    let recent = f
        .store
        .read_log(LogWindow {
            from: SystemTime::now() - Duration::from_secs(3600 + 60),
            to,
            limit: 100,
        })
        .await?;
    assert_eq!(recent.len(), 2);
    let first = f.store.read_log(LogWindow { from, to, limit: 1 }).await?;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].prediction.prediction_id, old.prediction_id);
    Ok(())
}

/// The tuner's state survives a restart: saved, read back by a new store
/// handle, equal, decisions and all.
async fn tuner_state_survives_a_restart(f: Fixture) -> Result<()> {
    let policy = Policy {
        metric: MetricKind::Auc,
        threshold: 0.88,
        min_interval: Duration::from_secs(900),
        max_interval: Duration::from_secs(86_400),
        good_windows: 1,
        cooldown_windows: 2,
        min_samples: 10,
        label_delay: Duration::ZERO,
    };
    let start = feature_store::store::now_micros();
    let mut state = JobState::new("profile_daily", Duration::from_secs(1800), &policy, start);
    // AUC 0.93 at every age of the 30-minute interval: positives score 0.5,
    // 93 % of the negatives 0.0 and the rest 1.0.
    let samples: Vec<Sample> = (0..2000u32)
        .map(|i| Sample {
            score: match i {
                0..930 => 0.0,
                930..1000 => 1.0,
                _ => 0.5,
            },
            outcome: f64::from(u8::from(i >= 1000)),
            age: Some(Duration::from_secs(u64::from(i % 8) * 225)),
        })
        .collect();
    let end = state.settled_at + Duration::from_secs(3600);
    let w = Window {
        start: state.settled_at,
        end,
        judged_at: end,
        samples: &samples,
        model_version: Some("1"),
    };
    state.observe(&policy, w);
    assert_eq!(state.interval, Duration::from_secs(3600));
    assert_eq!(f.store.get_tuner_state("profile_daily").await?, None);
    f.store.put_tuner_state(&state).await?;
    let reopened = match &f.store {
        AnyStore::Embedded(s) => AnyStore::Embedded(Arc::new(EmbeddedStore::open(s.path())?)),
        AnyStore::Scylla(s) => {
            AnyStore::Scylla(Arc::new(ScyllaStore::connect(s.config().clone()).await?))
        }
    };
    assert_eq!(
        reopened.get_tuner_state("profile_daily").await?,
        Some(state)
    );
    Ok(())
}

/// A scan of one view's batch, cut into parts and read in small pages,
/// returns every row of that batch exactly once, decoded as a point read
/// decodes it, and nothing of another batch or view.
async fn a_batch_scan_returns_each_row_once_across_parts_and_pages(f: Fixture) -> Result<()> {
    let value = FeatureValue::Int64(7);
    let rows = |prefix: &str, n: usize| -> Vec<EncodedRow> {
        (0..n)
            .map(|i| EncodedRow {
                entity_key: format!("{prefix}-{i}"),
                blob: feature_store::codec::encode([("txn_count_30d", &value)]),
            })
            .collect()
    };
    let written_at = feature_store::store::now_micros();
    let write = |view, batch_id, rows| StaticWrite {
        view,
        batch_id,
        written_at,
        retention: Duration::from_secs(3600),
        rows,
    };
    let wanted = rows("c", 101);
    f.store
        .write_static(write("customer_profile", "b-2", &wanted))
        .await?;
    let (old, other) = (rows("old", 40), rows("x", 40));
    f.store
        .write_static(write("customer_profile", "b-1", &old))
        .await?;
    f.store
        .write_static(write("other_view", "b-2", &other))
        .await?;
    let mut seen: Vec<String> = Vec::new();
    let count = 3;
    for index in 0..count {
        let mut after: Option<ScanCursor> = None;
        loop {
            let page = f
                .store
                .scan_static(StaticScan {
                    view: "customer_profile",
                    batch_id: "b-2",
                    part: ScanPart { index, count },
                    after: after.as_ref(),
                    limit: 7,
                })
                .await?;
            for (entity, row) in page.rows {
                let read = f
                    .store
                    .read_static(StaticKey {
                        view: "customer_profile",
                        batch_id: "b-2",
                        entity_key: &entity,
                    })
                    .await?;
                assert_eq!(read.as_ref(), Some(&row), "{entity}");
                seen.push(entity);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    seen.sort();
    let mut expected: Vec<String> = wanted.iter().map(|r| r.entity_key.clone()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    Ok(())
}

/// Precomputed predictions are read back by model, batch and key, exactly
/// as written (also after a reopen); another batch's, another model's or an
/// unscored key's lookup finds nothing, and writing an entry again replaces
/// it.
async fn precomputed_predictions_are_found_by_model_batch_and_key(f: Fixture) -> Result<()> {
    let scored_at = feature_store::store::now_micros();
    let entry = |key: &str, p: f64| ScoreEntry {
        key: key.to_owned(),
        model_version: "2".to_owned(),
        outputs: format!("{{\"probabilities\":[{p}]}}"),
        scored_at,
    };
    let written = [
        entry("c-1", 0.25),
        entry("c-2", 0.75),
        entry("1b28352081d72ec2d223b1b39410c6b3", 0.5),
    ];
    let write = |batch_id, entries| ScoreWrite {
        model: "fraud_detector",
        batch_id,
        entries,
        retention: Duration::from_secs(3600),
    };
    f.store.write_scores(write("b-1", &written)).await?;
    let at = |model, batch_id, key| ScoreKey {
        model,
        batch_id,
        key,
    };
    for e in &written {
        assert_eq!(
            f.store
                .read_score(at("fraud_detector", "b-1", &e.key))
                .await?
                .as_ref(),
            Some(e)
        );
    }
    assert_eq!(
        f.store
            .read_score(at("fraud_detector", "b-2", "c-1"))
            .await?,
        None
    );
    assert_eq!(
        f.store.read_score(at("other_model", "b-1", "c-1")).await?,
        None
    );
    assert_eq!(
        f.store
            .read_score(at("fraud_detector", "b-1", "c-3"))
            .await?,
        None
    );
    let rescored = [entry("c-1", 0.125)];
    f.store.write_scores(write("b-1", &rescored)).await?;
    let reopened = match &f.store {
        AnyStore::Embedded(s) => AnyStore::Embedded(Arc::new(EmbeddedStore::open(s.path())?)),
        AnyStore::Scylla(s) => {
            AnyStore::Scylla(Arc::new(ScyllaStore::connect(s.config().clone()).await?))
        }
    };
    assert_eq!(
        reopened
            .read_score(at("fraud_detector", "b-1", "c-1"))
            .await?
            .as_ref(),
        Some(&rescored[0])
    );
    Ok(())
}

/// Asynchronous requests: a pending record is replaced by its result and
/// read back whole; an unknown ID reads as nothing; an idempotency key is
/// claimed once, and the loser learns the winner's ID (also when two claim
/// at once).
async fn async_requests_and_idempotency_keys(f: Fixture) -> Result<()> {
    use feature_store::store::{from_micros, to_micros};
    let id = unique("req");
    // Times are kept to the microsecond.
    let later = from_micros(to_micros(SystemTime::now() + Duration::from_secs(600)));
    let record = |state, body: &[u8], position| RequestRecord {
        id: id.clone(),
        model: "fraud_detector".into(),
        subject: "svc-payments".into(),
        state,
        submitted_at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_765_000_000_123_456),
        expires_at: later,
        position,
        body: body.to_vec(),
    };
    f.store
        .put_requests(&[record(RequestState::Pending, b"request", None)])
        .await?;
    let pending = f.store.get_request(&id).await?.context("pending record")?;
    assert_eq!(pending.state, RequestState::Pending);
    assert_eq!(pending.body, b"request");
    let done = record(
        RequestState::Done,
        b"result",
        Some(TopicPosition {
            partition: 2,
            offset: 41,
        }),
    );
    f.store.put_requests(std::slice::from_ref(&done)).await?;
    assert_eq!(f.store.get_request(&id).await?.as_ref(), Some(&done));
    assert_eq!(f.store.get_request(&unique("never")).await?, None);

    let key = unique("svc-payments/fraud_detector/order");
    let claim = |id: &'static str| IdempotencyClaim {
        key: &key,
        id,
        expires_at: later,
    };
    let (a, b) = tokio::join!(
        f.store.claim_idempotency(claim("first")),
        f.store.claim_idempotency(claim("second"))
    );
    let (a, b) = (a?, b?);
    let winner = match (&a, &b) {
        (None, Some(w)) if w == "first" => "first",
        (Some(w), None) if w == "second" => "second",
        other => bail!("exactly one claim wins and the other names it: {other:?}"),
    };
    assert_eq!(
        f.store.claim_idempotency(claim("third")).await?.as_deref(),
        Some(winner)
    );
    Ok(())
}

/// The routing document is written compare-and-set: the first write needs
/// "nothing stored", each later one the revision it read; a writer holding a
/// stale revision changes nothing, also from a second store handle (another
/// gateway replica), and what is stored survives a reopen.
async fn routing_is_compare_and_set(f: Fixture) -> Result<()> {
    let model = "fraud_detector";
    assert_eq!(f.store.get_routing(model).await?, None);
    assert!(
        !f.store
            .put_routing(
                model,
                &RoutingRecord::after(Some(1), "{\"a\":0}".to_owned())
            )
            .await?
    );
    assert_eq!(f.store.get_routing(model).await?, None);
    assert!(
        f.store
            .put_routing(model, &RoutingRecord::after(None, "{\"a\":1}".to_owned()))
            .await?
    );
    assert!(
        !f.store
            .put_routing(model, &RoutingRecord::after(None, "{\"a\":2}".to_owned()))
            .await?
    );
    let other = match &f.store {
        AnyStore::Embedded(s) => AnyStore::Embedded(Arc::new(EmbeddedStore::open(s.path())?)),
        AnyStore::Scylla(s) => {
            AnyStore::Scylla(Arc::new(ScyllaStore::connect(s.config().clone()).await?))
        }
    };
    // Two writers read revision 1; only the first one's change lands.
    let seen = other.get_routing(model).await?.context("stored")?;
    assert_eq!((seen.revision, seen.document.as_str()), (1, "{\"a\":1}"));
    assert!(
        other
            .put_routing(
                model,
                &RoutingRecord::after(Some(1), "{\"a\":3}".to_owned())
            )
            .await?
    );
    assert!(
        !f.store
            .put_routing(
                model,
                &RoutingRecord::after(Some(1), "{\"a\":4}".to_owned())
            )
            .await?
    );
    let now = f.store.get_routing(model).await?.context("stored")?;
    assert_eq!((now.revision, now.document.as_str()), (2, "{\"a\":3}"));
    assert_eq!(other.get_routing("another_model").await?, None);
    Ok(())
}

/// The scheduler's lease: one holder at a time, renewable by its holder,
/// taken over only once expired, released only by its holder; and of many
/// concurrent takers exactly one wins.
async fn a_job_lease_has_one_holder_at_a_time(f: Fixture) -> Result<()> {
    let (t0, min) = (feature_store::store::now_micros(), Duration::from_secs(60));
    let lease = "refresh/profile_daily";
    assert_eq!(
        f.store
            .try_lease(&Lease::new(lease, "a", t0 + min), t0)
            .await?,
        LeaseOutcome::Acquired
    );
    match f
        .store
        .try_lease(&Lease::new(lease, "b", t0 + 2 * min), t0 + min / 2)
        .await?
    {
        LeaseOutcome::Held(l) => {
            assert_eq!((l.holder.as_str(), l.expires_at), ("a", t0 + min));
        }
        other => bail!("b took a's unexpired lease: {other:?}"),
    }
    // The holder renews; the other may not release it.
    assert_eq!(
        f.store
            .try_lease(&Lease::new(lease, "a", t0 + 3 * min), t0 + min / 2)
            .await?,
        LeaseOutcome::Acquired
    );
    assert!(!f.store.release_lease(lease, "b").await?);
    assert!(matches!(
        f.store
            .try_lease(&Lease::new(lease, "b", t0 + 4 * min), t0 + 2 * min)
            .await?,
        LeaseOutcome::Held(_)
    ));
    // Expired: taken over.
    assert_eq!(
        f.store
            .try_lease(&Lease::new(lease, "b", t0 + 4 * min), t0 + 3 * min)
            .await?,
        LeaseOutcome::Acquired
    );
    assert!(!f.store.release_lease(lease, "a").await?);
    assert!(f.store.release_lease(lease, "b").await?);
    // Released: free for anyone.
    assert_eq!(
        f.store
            .try_lease(&Lease::new(lease, "c", t0 + min), t0)
            .await?,
        LeaseOutcome::Acquired
    );

    // Eight schedulers race for a fresh lease: exactly one wins.
    let store = Arc::new(f.store.clone());
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .try_lease(
                        &Lease::new("refresh/race", &format!("host-{i}"), t0 + min),
                        t0,
                    )
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for r in racers {
        if r.await?? == LeaseOutcome::Acquired {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);

    // Schedules and run requests round-trip.
    let mut schedule = ScheduleState::new("profile_daily");
    schedule.anchor = Some(t0);
    f.store.put_schedule(&schedule).await?;
    assert_eq!(f.store.get_schedule("profile_daily").await?, Some(schedule));
    let request = RunRequest {
        job: "profile_daily".into(),
        by: "dana".into(),
        at: t0,
        reason: Some("upstream fix".into()),
    };
    f.store.put_run_request(&request).await?;
    assert_eq!(
        f.store.get_run_request("profile_daily").await?,
        Some(request)
    );
    assert_eq!(f.store.get_run_request("other").await?, None);
    Ok(())
}

// ---------------------------------------------------------------------------
// The row cache, over the real backend with a counter of backend reads.

/// Delegates to a real store and counts static reads.
struct Counting {
    inner: AnyStore,
    static_reads: AtomicU64,
}

/// The reader needs only rows and batches.
impl RowStore for Counting {
    async fn apply_schema(&self) -> Result<SchemaReport, StoreError> {
        self.inner.apply_schema().await
    }
    async fn read_static(&self, key: StaticKey<'_>) -> Result<Option<StoredRow>, StoreError> {
        self.static_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_static(key).await
    }
    async fn scan_static(&self, scan: StaticScan<'_>) -> Result<ScanPage, StoreError> {
        self.inner.scan_static(scan).await
    }
    async fn write_static(&self, write: StaticWrite<'_>) -> Result<(), StoreError> {
        self.inner.write_static(write).await
    }
    async fn read_dynamic(
        &self,
        view: &str,
        entity_key: &str,
    ) -> Result<Option<StoredRow>, StoreError> {
        self.inner.read_dynamic(view, entity_key).await
    }
    async fn write_dynamic(&self, write: DynamicWrite<'_>) -> Result<(), StoreError> {
        self.inner.write_dynamic(write).await
    }
    async fn write_event(&self, write: EventWrite<'_>) -> Result<(), StoreError> {
        self.inner.write_event(write).await
    }
    async fn write_events(&self, writes: &[EventWrite<'_>]) -> Result<(), StoreError> {
        self.inner.write_events(writes).await
    }
    async fn read_events(&self, query: EventQuery<'_>) -> Result<EventRange, StoreError> {
        self.inner.read_events(query).await
    }
}

impl BatchStore for Counting {
    async fn put_batch(&self, record: &BatchRecord) -> Result<(), StoreError> {
        self.inner.put_batch(record).await
    }
    async fn list_batches(&self, view: &str, limit: usize) -> Result<Vec<BatchRecord>, StoreError> {
        self.inner.list_batches(view, limit).await
    }
    async fn set_current(&self, record: &BatchRecord) -> Result<(), StoreError> {
        self.inner.set_current(record).await
    }
    async fn current_batches(&self) -> Result<BTreeMap<String, CurrentBatch>, StoreError> {
        self.inner.current_batches().await
    }
    async fn discard_batch(&self, view: &str, batch_id: &str) -> Result<(), StoreError> {
        self.inner.discard_batch(view, batch_id).await
    }
}

async fn counting_reader(
    f: &Fixture,
    config: ReaderConfig,
) -> Result<(Arc<Counting>, FeatureReader<Counting>)> {
    let counting = Arc::new(Counting {
        inner: f.store.clone(),
        static_reads: AtomicU64::new(0),
    });
    let reader = FeatureReader::new(Arc::clone(&counting), Arc::clone(&f.defs), config).await?;
    Ok((counting, reader))
}

async fn concurrent_misses_for_one_key_make_one_backend_read(f: Fixture) -> Result<()> {
    f.refresh("p.csv", "user_id,visits\nu-1,11\n", &quick())
        .await?;
    let (counting, reader) = counting_reader(&f, ReaderConfig::default()).await?;
    let now = SystemTime::now();
    let reads = (0..100).map(|_| reader.read("profile", "u-1", now));
    let results = futures_util::future::join_all(reads).await;
    for r in results {
        assert_eq!(
            r?.feature("visits").map(|x| x.value.clone()),
            Some(FeatureValue::Int64(11))
        );
    }
    assert_eq!(
        counting.static_reads.load(Ordering::SeqCst),
        1,
        "100 concurrent misses coalesce"
    );
    // Missing entities are cached too (negative caching).
    for _ in 0..10 {
        reader.read("profile", "ghost", now).await?;
    }
    assert_eq!(counting.static_reads.load(Ordering::SeqCst), 2);
    let stats = reader.cache_stats();
    // Whether a concurrent read counts as a hit or as a miss that waited on
    // the one load depends on scheduling; every read is counted either way.
    assert_eq!(stats.loads, 2, "{stats:?}");
    assert_eq!(stats.hits + stats.misses, 110, "{stats:?}");
    assert!(stats.hits >= 9, "{stats:?}");
    Ok(())
}

async fn cache_stays_within_its_byte_bound(f: Fixture) -> Result<()> {
    let mut csv = String::from("user_id,visits,tier\n");
    for i in 0..2000 {
        csv.push_str(&format!("user-{i:05},{i},tier-{i}\n"));
    }
    f.refresh("p.csv", &csv, &quick()).await?;
    let bound = 64 * 1024;
    let (counting, reader) = counting_reader(
        &f,
        ReaderConfig {
            cache_max_bytes: bound,
            ..ReaderConfig::default()
        },
    )
    .await?;
    let now = SystemTime::now();
    for i in 0..2000 {
        let v = reader.read("profile", &format!("user-{i:05}"), now).await?;
        assert_eq!(
            v.feature("visits").map(|x| x.value.clone()),
            Some(FeatureValue::Int64(i))
        );
    }
    reader.sync_cache().await;
    let stats = reader.cache_stats();
    assert!(stats.bytes <= bound, "{stats:?}");
    assert!(stats.evicted_size > 0 && stats.entries < 2000, "{stats:?}");
    assert!(
        stats.entries > 50,
        "the bound holds a useful number of rows: {stats:?}"
    );
    assert_eq!(counting.static_reads.load(Ordering::SeqCst), 2000);
    Ok(())
}

async fn completed_refresh_invalidates_cached_rows(f: Fixture) -> Result<()> {
    f.refresh("p1.csv", "user_id,visits\nu-1,1\n", &quick())
        .await?;
    let (counting, reader) = counting_reader(
        &f,
        ReaderConfig {
            batch_poll_interval: Duration::from_millis(100),
            ..ReaderConfig::default()
        },
    )
    .await?;
    let reader = Arc::new(reader);
    let watch = reader.watch_batches();
    let read = || reader.read("profile", "u-1", SystemTime::now());
    assert_eq!(
        read().await?.feature("visits").map(|x| x.value.clone()),
        Some(FeatureValue::Int64(1))
    );
    assert_eq!(
        read().await?.feature("visits").map(|x| x.value.clone()),
        Some(FeatureValue::Int64(1))
    );
    assert_eq!(
        counting.static_reads.load(Ordering::SeqCst),
        1,
        "second read is a hit"
    );
    // Another process (here: another call) completes a refresh; the reader's
    // watch notices within its poll interval and stops serving the old row.
    f.refresh("p2.csv", "user_id,visits\nu-1,2\n", &quick())
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = read().await?;
        if v.feature("visits").map(|x| x.value.clone()) == Some(FeatureValue::Int64(2)) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the cache kept serving the old batch 10s after the refresh");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reader.cache_stats().invalidations >= 1);
    watch.abort();
    Ok(())
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod embedded_backend {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::embedded().await?).await
                }
            )*
        }
        mod scylla_backend {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::scylla().await?).await
                }
            )*
        }
    };
}

contract!(
    every_type_round_trips,
    missing_entity_gets_defaults_flagged,
    stale_value_is_flagged,
    dynamic_value_expires_after_its_ttl,
    older_event_does_not_overwrite_newer,
    failed_refresh_leaves_previous_batch_served,
    batch_metadata_is_recorded_and_reruns_are_idempotent,
    concurrent_misses_for_one_key_make_one_backend_read,
    cache_stays_within_its_byte_bound,
    completed_refresh_invalidates_cached_rows,
    prediction_log_joins_feedback,
    tuner_state_survives_a_restart,
    routing_is_compare_and_set,
    a_job_lease_has_one_holder_at_a_time,
    aggregates_count_sum_mean_max_min_over_their_windows,
    late_events_count_and_replays_count_once,
    batched_events_are_checked_each_and_written_once,
    the_event_cap_bounds_a_read_and_is_reported,
    precomputed_predictions_are_found_by_model_batch_and_key,
    a_batch_scan_returns_each_row_once_across_parts_and_pages,
    async_requests_and_idempotency_keys,
);

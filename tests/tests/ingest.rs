//! Event ingest from Kafka into a dynamic view's windowed aggregates: a
//! generated stream (several entities over several partitions, times out of
//! order, redelivered records, malformed ones) is consumed, and the
//! aggregates read back equal a reference computed here over the same
//! events — also when the consumer process is killed (SIGKILL) mid-stream
//! and restarted, and when Kafka itself stops and comes back (a private
//! broker). Malformed records land in the dead-letter topic with their
//! reasons; a gateway with `[ingest]` counts them and reports the lag.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use feature_store::definitions::{FeatureDefinitions, FeatureValue};
use feature_store::ingest::{Ingest, IngestSettings};
use feature_store::reader::{FeatureReader, ReaderConfig};
use feature_store::store::embedded::EmbeddedStore;
use feature_store::store::prelude::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use rig::gateway::{DEV_AUTH, GatewayProcess, scratch};
use rig::kafka::{ACTIVITY_VIEW, OwnKafka, activity_definitions};
use rig::metrics::Page;
use rig::{ScratchDir, binary, rig_env, unique};

const ENTITIES: usize = 8;
const PER_ENTITY: usize = 30;
/// One generated event.
#[derive(Debug, Clone)]
struct Generated {
    entity: String,
    /// None: the ingest derives the ID from the content.
    id: Option<String>,
    at_ms: u64,
    /// A transaction (with this amount) or a failed authorisation.
    amount: Option<f64>,
}

impl Generated {
    fn json(&self) -> String {
        let mut o = serde_json::json!({"customer_id": self.entity, "event_time": self.at_ms});
        if let Some(id) = &self.id {
            o["event_id"] = id.clone().into();
        }
        match self.amount {
            Some(a) => {
                o["transaction_id"] = format!("t-{}", self.at_ms).into();
                o["amount"] = a.into();
            }
            None => o["failed_auth_id"] = format!("f-{}", self.at_ms).into(),
        }
        o.to_string()
    }
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

/// The stream: per entity, events spread over the last 45 h in shuffled
/// order (inside 1 h, inside 24 h, older), amounts in quarters (sums are
/// exact), every 7th without an ID. Times keep minutes away from the
/// windows' edges so the few seconds a test runs do not move them.
fn generate(seed: u64) -> Vec<Generated> {
    let mut x = seed;
    let mut next = move |n: u64| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % n
    };
    let now = now_ms();
    let mut out = Vec::new();
    for i in 0..PER_ENTITY * ENTITIES {
        let minutes = match next(3) {
            0 => 5 + next(50),
            1 => 70 + next(1300),
            _ => 1500 + next(1200),
        };
        let entity = format!("c-{}", next(ENTITIES as u64));
        let at_ms = now - minutes * 60_000 - next(60_000);
        out.push(Generated {
            id: (i % 7 != 0).then(|| format!("e-{seed}-{i}")),
            entity,
            at_ms,
            amount: (next(10) < 7).then(|| (next(4000) as f64) / 4.0),
        });
    }
    out
}

/// Per entity: txn_count_1h, amount_sum_1h, amount_max_24h,
/// failed_auth_count_24h, with the view's defaults where nothing counts.
fn reference(events: &[Generated]) -> BTreeMap<String, [f64; 4]> {
    let now = now_ms();
    let (hour, day) = (now - 3_600_000, now - 86_400_000);
    let mut seen = HashSet::new();
    let mut out: BTreeMap<String, [f64; 4]> = (0..ENTITIES)
        .map(|e| (format!("c-{e}"), [0.0; 4]))
        .collect();
    let mut max: BTreeMap<String, f64> = BTreeMap::new();
    for e in events {
        // A redelivered record is the same event.
        if !seen.insert((e.entity.clone(), e.at_ms, e.id.clone(), e.json())) {
            continue;
        }
        let agg = out.entry(e.entity.clone()).or_default();
        match e.amount {
            Some(a) if e.at_ms >= hour => {
                agg[0] += 1.0;
                agg[1] += a;
            }
            _ => {}
        }
        if let Some(a) = e.amount
            && e.at_ms >= day
        {
            let m = max.entry(e.entity.clone()).or_insert(f64::MIN);
            *m = m.max(a);
        }
        if e.amount.is_none() && e.at_ms >= day {
            agg[3] += 1.0;
        }
    }
    for (entity, m) in max {
        if let Some(agg) = out.get_mut(&entity) {
            agg[2] = m;
        }
    }
    out
}

/// Malformed records and the reason each must be dead-lettered with.
fn malformed() -> Vec<(String, &'static str)> {
    let t = now_ms() - 600_000;
    vec![
        ("this is not json".to_owned(), "undecodable"),
        (
            format!(r#"{{"event_time":{t},"amount":1.5}}"#),
            "missing_key",
        ),
        (
            r#"{"customer_id":"c-0","amount":1.5}"#.to_owned(),
            "bad_time",
        ),
        (
            format!(
                r#"{{"customer_id":"c-0","event_time":{t},"transaction_id":"x","amount":"ten"}}"#
            ),
            "bad_field",
        ),
        (
            format!(r#"{{"customer_id":"c-1","event_time":{t},"colour":"red"}}"#),
            "unknown_field",
        ),
        (
            format!(
                r#"{{"customer_id":"c-2","event_time":{t},"event_id":"{}","amount":2}}"#,
                "x".repeat(200)
            ),
            "bad_id",
        ),
    ]
}

fn client(broker: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker)
        .set("socket.timeout.ms", "10000");
    c
}

async fn create_topics(broker: &str, topics: &[(&str, i32)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(broker).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?
    {
        if let Err((name, code)) = r {
            bail!("creating topic {name}: {code}");
        }
    }
    Ok(())
}

fn producer(broker: &str) -> Result<FutureProducer> {
    Ok(client(broker)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()?)
}

async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, String)],
) -> Result<()> {
    let sends = records.iter().map(|(key, value)| {
        producer.send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
    });
    for r in futures_util::future::join_all(sends).await {
        r.map_err(|(e, _)| e)
            .context("a record was not acknowledged")?;
    }
    Ok(())
}

fn records(events: &[Generated]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e.entity.clone(), e.json()))
        .collect()
}

/// The dead-letter topic's records: (reason header, error header,
/// payload), at least `n` of them within 30 s.
async fn dead_letters(
    broker: &str,
    topic: &str,
    n: usize,
) -> Result<Vec<(String, String, String)>> {
    let consumer: StreamConsumer = client(broker)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let wait = if out.len() >= n {
            tokio::time::Instant::now() + Duration::from_secs(1)
        } else {
            deadline
        };
        let Ok(m) = tokio::time::timeout_at(wait, consumer.recv()).await else {
            break;
        };
        let m = m?;
        let header = |name: &str| -> String {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        out.push((
            header("mlgw-dead-letter-reason"),
            header("mlgw-dead-letter-error"),
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
        ));
    }
    ensure!(
        out.len() >= n,
        "{topic}: {} of {n} dead letters within 30 s",
        out.len()
    );
    Ok(out)
}

/// The group's committed offsets on `topic`'s partitions, summed (what
/// the consumer has written and committed).
async fn committed(broker: &str, group: &str, topic: &str, partitions: i32) -> Result<i64> {
    // Fetching offsets does not join the group, so the consumer under
    // test keeps its partitions.
    let consumer: BaseConsumer = client(broker).set("group.id", group).create()?;
    let mut asked = TopicPartitionList::new();
    for p in 0..partitions {
        asked.add_partition(topic, p);
    }
    let got = tokio::task::spawn_blocking(move || {
        consumer.committed_offsets(asked, Duration::from_secs(10))
    })
    .await??;
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .sum())
}

/// Every malformed record produced (`sent`) is in the dead-letter topic,
/// unchanged, with its reason and a message; nothing else is.
fn check_dead_letters(sent: &[(String, &'static str)], got: &[(String, String, String)]) {
    let expected: BTreeMap<String, &str> = sent.iter().cloned().collect();
    let mut found = BTreeSet::new();
    for (reason, error, payload) in got {
        let Some(want) = expected.get(payload) else {
            panic!("an unexpected dead letter ({reason}: {error}): {payload}");
        };
        assert_eq!(reason, want, "{payload}: {error}");
        assert!(!error.is_empty(), "{payload}: no error message");
        found.insert(payload.clone());
    }
    assert_eq!(
        found.len(),
        expected.len(),
        "every malformed record: {got:?}"
    );
}

fn values(features: &[(String, FeatureValue)]) -> [f64; 4] {
    let get = |name: &str| {
        features
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| match v {
                FeatureValue::Int64(i) => *i as f64,
                FeatureValue::Float64(f) => *f,
                FeatureValue::Float32(f) => f64::from(*f),
                _ => f64::NAN,
            })
            .unwrap_or(f64::NAN)
    };
    [
        get("txn_count_1h"),
        get("amount_sum_1h"),
        get("amount_max_24h"),
        get("failed_auth_count_24h"),
    ]
}

/// Reads every entity through `mlgw-features read --json`.
async fn read_cli(store_flags: &[String], defs: &Path) -> Result<BTreeMap<String, [f64; 4]>> {
    let mut out = BTreeMap::new();
    for e in 0..ENTITIES {
        let entity = format!("c-{e}");
        let o = tokio::process::Command::new(binary("mlgw-features")?)
            .args(store_flags)
            .args(["--json", "read", "-d"])
            .arg(defs)
            .args(["--entity", &entity])
            .output()
            .await?;
        ensure!(
            o.status.success(),
            "read {entity}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        let features: Vec<(String, FeatureValue)> = doc["views"][0]["features"]
            .as_array()
            .context("features")?
            .iter()
            .map(|f| {
                let v = &f["value"];
                let value = v
                    .as_i64()
                    .map(FeatureValue::Int64)
                    .unwrap_or_else(|| FeatureValue::Float64(v.as_f64().unwrap_or(f64::NAN)));
                (f["name"].as_str().unwrap_or_default().to_owned(), value)
            })
            .collect();
        out.insert(entity, values(&features));
    }
    Ok(out)
}

/// Reads every entity through an in-process reader.
async fn read_reader(reader: &FeatureReader<EmbeddedStore>) -> Result<BTreeMap<String, [f64; 4]>> {
    let mut out = BTreeMap::new();
    for e in 0..ENTITIES {
        let entity = format!("c-{e}");
        let resolved = reader
            .read(ACTIVITY_VIEW, &entity, SystemTime::now())
            .await?;
        let features: Vec<(String, FeatureValue)> = resolved
            .features
            .iter()
            .map(|f| (f.name.to_owned(), f.value.clone()))
            .collect();
        out.insert(entity, values(&features));
    }
    Ok(out)
}

fn same(got: &BTreeMap<String, [f64; 4]>, want: &BTreeMap<String, [f64; 4]>) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|((a, x), (b, y))| a == b && x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-9))
}

fn spawn_ingest(
    store_flags: &[String],
    defs: &Path,
    broker: &str,
    group: &str,
    dlq: &str,
) -> Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(binary("mlgw-features")?)
        .args(store_flags)
        .args(["ingest", "-d"])
        .arg(defs)
        .args([
            "--brokers",
            broker,
            "--group-id",
            group,
            "--dead-letter-topic",
            dlq,
        ])
        .args(["--session-timeout-ms", "6000", "--linger-ms", "10"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_equal_the_reference_across_a_killed_consumer_on_cassandra() -> Result<()> {
    let broker = rig_env("MLGW_TEST_KAFKA")?;
    let cassandra = rig_env("MLGW_TEST_CASSANDRA")?;
    let (topic, dlq, group) = (
        unique("ingest"),
        unique("ingest-dlq"),
        unique("ingest-group"),
    );
    create_topics(&broker, &[(&topic, 3), (&dlq, 1)]).await?;
    let dir = ScratchDir::new("mlgw_ingest_cql")?;
    let defs = dir.file("features.toml", activity_definitions(&topic))?;
    let flags: Vec<String> = vec![
        "--scylla".into(),
        cassandra,
        "--keyspace".into(),
        unique("ingest").replace('-', "_"),
    ];
    let schema = tokio::process::Command::new(binary("mlgw-features")?)
        .args(&flags)
        .args(["schema", "apply"])
        .output()
        .await?;
    ensure!(
        schema.status.success(),
        "{}",
        String::from_utf8_lossy(&schema.stderr)
    );

    let events = generate(1);
    let (first, second) = events.split_at(events.len() / 2);
    let producer = producer(&broker)?;
    let mut stream = records(first);
    // Made once: its times are relative to now, and the dead letters are
    // compared with exactly what was sent.
    let bad = malformed();
    stream.extend(bad.iter().map(|(p, _)| ("c-0".to_owned(), p.clone())));
    produce(&producer, &topic, &stream).await?;

    let mut ingest = spawn_ingest(&flags, &defs, &broker, &group, &dlq)?;
    // Killed mid-stream: once it has written and committed part of the
    // first half, the second half starts arriving and the consumer is
    // killed while it does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let at_kill = loop {
        let n = committed(&broker, &group, &topic, 3).await?;
        if n > 0 {
            break n;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the consumer committed nothing within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sender = {
        let (producer, topic, second) = (producer.clone(), topic.clone(), records(second));
        tokio::spawn(async move {
            for chunk in second.chunks(10) {
                produce(&producer, &topic, chunk).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    ingest.start_kill()?;
    ingest.wait().await?;
    eprintln!(
        "killed the consumer {} records after its first commit was seen",
        committed(&broker, &group, &topic, 3).await? - at_kill
    );
    sender.await??;
    // A producer retry redelivers part of the first half.
    produce(&producer, &topic, &records(&first[..40])).await?;
    let mut ingest = spawn_ingest(&flags, &defs, &broker, &group, &dlq)?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let (mut got, mut want);
    loop {
        got = read_cli(&flags, &defs).await?;
        want = reference(&events);
        if same(&got, &want) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(got, want, "aggregates read back vs the reference");
    check_dead_letters(&bad, &dead_letters(&broker, &dlq, bad.len()).await?);
    ingest.start_kill()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_ingest_counts_dead_letters_and_reports_lag() -> Result<()> {
    let broker = rig_env("MLGW_TEST_KAFKA")?;
    let (topic, dlq, group) = (
        unique("gw-ingest"),
        unique("gw-ingest-dlq"),
        unique("gw-group"),
    );
    create_topics(&broker, &[(&topic, 2), (&dlq, 1)]).await?;
    // The example definitions with the test's own topic.
    let fraud = std::fs::read_to_string(rig::gateway::definitions())?;
    ensure!(
        fraud.contains("mlgw.customer-activity"),
        "the example declares its topic"
    );
    let section = format!(
        "[ingest]\nenabled = true\nbrokers = \"{broker}\"\ngroup_id = \"{group}\"\ndead_letter_topic = \"{dlq}\"\nsession_timeout_ms = 6000\nlag_interval_ms = 200\n"
    );
    let (dir, config) = scratch("ingest", DEV_AUTH, |t| {
        t.replacen("[[model]]", &format!("{section}[[model]]"), 1)
    })
    .await?;
    let defs = dir.file(
        "fraud.toml",
        fraud.replace("mlgw.customer-activity", &topic),
    )?;
    let text = std::fs::read_to_string(&config)?;
    let first = text.lines().next().unwrap_or_default().to_owned();
    std::fs::write(
        &config,
        text.replacen(&first, &format!("definitions = \"{}\"", defs.display()), 1),
    )?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let http = reqwest::Client::new();

    let good: Vec<(String, String)> = (0..50)
        .map(|i| {
            let t = now_ms() - 60_000 * (i % 30 + 1);
            (
                format!("c-{}", i % 5),
                format!(r#"{{"customer_id":"c-{}","event_time":{t},"event_id":"g-{i}","transaction_id":"t-{i}","amount":{i}.5}}"#, i % 5),
            )
        })
        .collect();
    let mut stream = good.clone();
    let bad = malformed();
    stream.extend(bad.iter().map(|(p, _)| ("c-9".to_owned(), p.clone())));
    produce(&producer(&broker)?, &topic, &stream).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let page = loop {
        let text = http
            .get(format!("{}/metrics", gw.http))
            .send()
            .await?
            .text()
            .await?;
        let page = Page::parse(&text)?;
        let ingested = page
            .value(
                "mlgw_ingest_events_total",
                &[("view", "customer_activity"), ("result", "ingested")],
            )
            .unwrap_or(0.0);
        let lag: f64 = (0..2)
            .map(|p| {
                page.value(
                    "mlgw_ingest_lag",
                    &[("topic", topic.as_str()), ("partition", &p.to_string())],
                )
                .unwrap_or(f64::NAN)
            })
            .sum();
        if (ingested >= good.len() as f64 && lag == 0.0) || tokio::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let v = |name: &str, labels: &[(&str, &str)]| page.value(name, labels).unwrap_or(-1.0);
    assert_eq!(
        v(
            "mlgw_ingest_events_total",
            &[("view", "customer_activity"), ("result", "ingested")]
        ),
        good.len() as f64
    );
    assert_eq!(
        v(
            "mlgw_ingest_events_total",
            &[("view", "customer_activity"), ("result", "dead_lettered")]
        ),
        bad.len() as f64
    );
    for reason in bad.iter().map(|(_, r)| *r) {
        assert_eq!(
            v(
                "mlgw_ingest_dead_letters_total",
                &[("view", "customer_activity"), ("reason", reason)]
            ),
            1.0,
            "{reason}"
        );
    }
    for p in 0..2 {
        assert_eq!(
            v(
                "mlgw_ingest_lag",
                &[("topic", topic.as_str()), ("partition", &p.to_string())]
            ),
            0.0,
            "partition {p} caught up"
        );
    }
    check_dead_letters(&bad, &dead_letters(&broker, &dlq, bad.len()).await?);
    gw.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_resumes_from_committed_offsets_when_kafka_returns() -> Result<()> {
    let mut kafka = OwnKafka::start().await?;
    let broker = kafka.address()?;
    let (topic, dlq) = (unique("resume"), unique("resume-dlq"));
    create_topics(&broker, &[(&topic, 3), (&dlq, 1)]).await?;
    let dir = ScratchDir::new("mlgw_ingest_resume")?;
    let path = dir.file("features.toml", activity_definitions(&topic))?;
    let defs = Arc::new(FeatureDefinitions::load(&path)?);
    let store = EmbeddedStore::open(&dir.join("features.redb"))?;
    store.apply_schema().await?;
    let reader =
        Arc::new(FeatureReader::new(Arc::new(store), defs, ReaderConfig::default()).await?);
    let settings = IngestSettings {
        enabled: true,
        brokers: broker.clone(),
        group_id: unique("resume-group"),
        dead_letter_topic: dlq.clone(),
        session_timeout_ms: 6000,
        call_timeout_ms: 5000,
        retry_max_ms: 500,
        lag_interval_ms: 200,
        ..IngestSettings::default()
    };
    let ingest = Ingest::new(Arc::clone(&reader), &settings)?;
    let stats = ingest.stats();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(ingest.run(async move {
        let _ = stop_rx.await;
    }));
    // Caught up: `n` events written and every partition's lag (end offset
    // minus committed offset) measured at zero.
    let wait_for = |n: u64| {
        let stats = Arc::clone(&stats);
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
            loop {
                let lag = stats.lag();
                if stats.ingested() >= n && lag.len() == 3 && lag.values().all(|l| *l == 0) {
                    return anyhow::Ok(());
                }
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{} of {n} events ingested, lag {lag:?}",
                    stats.ingested()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    let events = generate(2);
    let (first, second) = events.split_at(events.len() / 2);
    produce(&producer(&broker)?, &topic, &records(first)).await?;
    wait_for(first.len() as u64).await?;

    kafka.run("stop").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka.run("restart").await?;
    // A fresh producer: the new records are written after the restart.
    produce(&producer(&broker)?, &topic, &records(second)).await?;
    wait_for(events.len() as u64).await?;
    // Resumed after the committed offsets, not from the beginning.
    assert_eq!(
        stats.ingested(),
        events.len() as u64,
        "nothing ingested twice after the restart"
    );
    assert_eq!(read_reader(&reader).await?, reference(&events));
    let _ = stop_tx.send(());
    running.await?;
    kafka.passed = true;
    Ok(())
}

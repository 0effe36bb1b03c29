//! The rig's Kafka broker (KRaft, started by tests/rig/kafka.sh) through the
//! client the product uses (rdkafka, the librdkafka bindings): a topic made
//! with the admin API, keyed records produced and acknowledged, a consumer
//! group that commits its offsets after reading part of them, and another
//! member of the group that resumes after the committed offsets — nothing
//! read twice, nothing lost, every key on one partition.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rig::{rig_env, unique};

const RECORDS: usize = 120;
const FIRST_READ: usize = 70;

fn config(broker: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker)
        .set("socket.timeout.ms", "10000");
    c
}

fn consumer(broker: &str, group: &str, topic: &str) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = config(broker)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Reads `n` records (key, value, partition) within 60 s.
async fn read(consumer: &StreamConsumer, n: usize) -> Result<Vec<(String, String, i32)>> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .with_context(|| format!("only {} of {n} records within 60 s", out.len()))??;
        let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
        out.push((text(m.key()), text(m.payload()), m.partition()));
    }
    Ok(out)
}

#[tokio::test]
async fn a_consumer_group_resumes_after_its_committed_offsets() -> Result<()> {
    let broker = rig_env("MLGW_TEST_KAFKA")?;
    let topic = unique("rig");
    let admin: AdminClient<DefaultClientContext> = config(&broker).create()?;
    let made = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in made {
        if let Err((name, code)) = r {
            bail!("creating topic {name}: {code}");
        }
    }

    let producer: FutureProducer = config(&broker)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()?;
    for i in 0..RECORDS {
        let (key, value) = (format!("c-{}", i % 10), format!("event-{i}"));
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("record {i} not acknowledged"))?;
    }

    let group = unique("group");
    let first = consumer(&broker, &group, &topic)?;
    let mut seen = read(&first, FIRST_READ).await?;
    first.commit_consumer_state(CommitMode::Sync)?;
    drop(first);
    // Another member of the group: it starts after the committed offsets.
    let second = consumer(&broker, &group, &topic)?;
    seen.extend(read(&second, RECORDS - FIRST_READ).await?);
    // Nothing more is waiting.
    let extra = tokio::time::timeout(Duration::from_secs(3), second.recv()).await;
    ensure!(extra.is_err(), "a record was delivered twice: {extra:?}");

    let values: BTreeSet<&str> = seen.iter().map(|(_, v, _)| v.as_str()).collect();
    assert_eq!(values.len(), RECORDS, "every record once");
    let mut partitions: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
    for (key, _, partition) in &seen {
        partitions.entry(key).or_default().insert(*partition);
    }
    assert!(
        partitions.values().all(|p| p.len() == 1),
        "each key on one partition: {partitions:?}"
    );
    admin.delete_topics(&[&topic], &AdminOptions::new()).await?;
    Ok(())
}

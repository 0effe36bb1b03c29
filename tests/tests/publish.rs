//! Predictions and feedback published downstream: a gateway with
//! `[publish]` on the rig's Kafka sends every answered prediction once to
//! the predictions topic and every feedback to the feedback topic, as the
//! documented protobuf records keyed by the prediction ID; with Kafka
//! unreachable the predictions are answered all the same and the records
//! that could not be delivered are counted.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use prost::Message as _;
use proto::gateway::v1 as pb;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rig::gateway::{DEV_AUTH, GatewayProcess, client_with_token, scratch};
use rig::metrics::Page;
use rig::{rig_env, unique};
use serde_json::{Value, json};

const PREDICTIONS: usize = 30;

fn publish_section(brokers: &str, predictions: &str, feedback: &str, timeout_ms: u64) -> String {
    format!(
        "[publish]\nenabled = true\nbrokers = \"{brokers}\"\npredictions_topic = \"{predictions}\"\nfeedback_topic = \"{feedback}\"\nlinger_ms = 5\nmessage_timeout_ms = {timeout_ms}\n"
    )
}

/// The config with `section` put before the first `[[model]]`.
fn with_section(text: String, section: &str) -> String {
    text.replacen("[[model]]", &format!("{section}[[model]]"), 1)
}

async fn predict(gw: &GatewayProcess, http: &reqwest::Client, i: usize) -> Result<Value> {
    let r = http
        .post(format!("{}/v1/models/fraud_detector/predict", gw.http))
        .json(&json!({"entity": {"customer_id": format!("c-{i}")},
            "request_features": {"amount": 10.0 + i as f64, "is_card_present": true, "hour_of_day": 12}}))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body: Value = r.json().await?;
    if status != 200 {
        bail!("predict {i}: {status} {body}");
    }
    Ok(body)
}

async fn counter(
    gw: &GatewayProcess,
    http: &reqwest::Client,
    stream: &str,
    result: &str,
) -> Result<f64> {
    let text = http
        .get(format!("{}/metrics", gw.http))
        .send()
        .await?
        .text()
        .await?;
    Ok(Page::parse(&text)?
        .value(
            "mlgw_publish_records_total",
            &[("stream", stream), ("result", result)],
        )
        .unwrap_or(0.0))
}

/// Reads `n` records of `topic` from the beginning: (key, payload).
async fn read(broker: &str, topic: &str, n: usize) -> Result<Vec<(String, Vec<u8>)>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .with_context(|| format!("{topic}: {} of {n} records within 60 s", out.len()))??;
        out.push((
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            m.payload().unwrap_or_default().to_vec(),
        ));
    }
    // Nothing more than was published.
    if let Ok(extra) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        bail!("{topic}: an extra record {:?}", extra.map(|m| m.offset()));
    }
    Ok(out)
}

#[tokio::test]
async fn every_prediction_and_feedback_is_published_once() -> Result<()> {
    let broker = rig_env("MLGW_TEST_KAFKA")?;
    let (predictions, feedback) = (unique("predictions"), unique("feedback"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .create()?;
    for r in admin
        .create_topics(
            &[
                NewTopic::new(&predictions, 3, TopicReplication::Fixed(1)),
                NewTopic::new(&feedback, 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?
    {
        if let Err((name, code)) = r {
            bail!("creating topic {name}: {code}");
        }
    }
    let section = publish_section(&broker, &predictions, &feedback, 30_000);
    let (_dir, config) = scratch("publish", DEV_AUTH, |t| with_section(t, &section)).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    let mut answered = BTreeMap::new();
    for i in 0..PREDICTIONS {
        let a = predict(&gw, &http, i).await?;
        let id = a["prediction_id"]
            .as_str()
            .context("prediction_id")?
            .to_owned();
        answered.insert(id, a);
    }
    let ids: Vec<String> = answered.keys().take(3).cloned().collect();
    for id in &ids {
        let r = http
            .post(format!("{}/v1/feedback", gw.http))
            .json(&json!({"prediction_id": id, "label": "fraud"}))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    }

    let published = read(&broker, &predictions, PREDICTIONS).await?;
    let mut seen = BTreeMap::new();
    for (key, payload) in &published {
        let event = pb::PredictionEvent::decode(payload.as_slice())?;
        assert_eq!(key, &event.prediction_id, "keyed by the prediction ID");
        assert_eq!(
            (event.model.as_str(), event.source.as_str()),
            ("fraud_detector", "live")
        );
        assert_eq!(event.subject, "dev-user");
        assert!(event.entity.starts_with("c-"), "{event:?}");
        let answer = answered
            .get(&event.prediction_id)
            .with_context(|| format!("published a prediction never answered: {event:?}"))?;
        let p_fraud = answer["outputs"]
            .as_array()
            .and_then(|o| o.iter().find(|x| x["name"] == "probabilities"))
            .and_then(|o| o["score"].as_f64());
        let out = event.outputs.iter().find(|o| o.name == "probabilities");
        assert_eq!(out.map(|o| o.score), p_fraud, "{event:?}");
        assert!(
            seen.insert(event.prediction_id.clone(), ()).is_none(),
            "published twice"
        );
    }
    assert_eq!(seen.len(), PREDICTIONS);
    let fed = read(&broker, &feedback, ids.len()).await?;
    for (key, payload) in &fed {
        let event = pb::FeedbackEvent::decode(payload.as_slice())?;
        assert_eq!(key, &event.prediction_id);
        assert!(ids.contains(&event.prediction_id));
        assert_eq!(
            event.outcome,
            Some(pb::feedback_event::Outcome::Label("fraud".into()))
        );
    }
    assert_eq!(
        counter(&gw, &http, "predictions", "delivered").await?,
        PREDICTIONS as f64
    );
    assert_eq!(
        counter(&gw, &http, "feedback", "delivered").await?,
        ids.len() as f64
    );
    admin
        .delete_topics(&[&predictions, &feedback], &AdminOptions::new())
        .await?;
    Ok(())
}

/// Kafka unreachable: every prediction is answered as usual; the records
/// that could not be delivered within the timeout are counted as failed.
#[tokio::test]
async fn an_unreachable_kafka_never_holds_up_a_prediction() -> Result<()> {
    // Port 1 on 127.0.0.1: nothing listens, connections are refused.
    let section = publish_section("127.0.0.1:1", "mlgw.predictions", "mlgw.feedback", 1_000);
    let (_dir, config) = scratch("publish_down", DEV_AUTH, |t| with_section(t, &section)).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    for i in 0..10 {
        predict(&gw, &http, i).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let failed = counter(&gw, &http, "predictions", "failed").await?;
        if failed == 10.0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{failed} of 10 undelivered records counted as failed after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(counter(&gw, &http, "predictions", "delivered").await?, 0.0);
    Ok(())
}

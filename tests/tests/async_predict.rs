//! Asynchronous predictions against real Kafka: requests accepted with 202
//! are scored by the gateway's workers, every result is retrievable by
//! poll and present once on the result topic, also across a worker killed
//! with SIGKILL and restarted; an idempotency key never causes a second
//! prediction; a submit is checked at once like a synchronous call; a
//! result is visible only to its submitter or an admin; Kafka away means
//! 503 for submits while synchronous predictions go on, and nothing
//! accepted is lost when it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures_util::{StreamExt as _, stream};
use prost::Message as _;
use proto::gateway::v1 as pb;
use proto::gateway::v1::prediction_service_client::PredictionServiceClient;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rig::gateway::{DEV_AUTH, GatewayProcess, client_with_token, example_grpc_request, scratch};
use rig::kafka::OwnKafka;
use rig::metrics::Page;
use rig::sso::{client_credentials, oidc_auth};
use rig::{rig_env, unique};
use serde_json::{Value, json};

const MODEL: &str = "fraud_detector";

/// `[async_predict]` on `brokers` with topics and group of this test only.
fn async_section(brokers: &str, prefix: &str) -> String {
    format!(
        "[async_predict]\nenabled = true\nbrokers = \"{brokers}\"\n\
         request_topic = \"{prefix}.requests.{{model}}\"\nresult_topic = \"{prefix}.results.{{model}}\"\n\
         partitions = 3\ngroup_id = \"{prefix}-workers\"\nbatch_linger_ms = 5\nsubmit_timeout_ms = 2000\n"
    )
}

fn with_section(text: String, section: &str) -> String {
    text.replacen("[[model]]", &format!("{section}[[model]]"), 1)
}

fn body(i: usize) -> Value {
    json!({"entity": {"customer_id": format!("c-{}", i % 500)},
        "request_features": {"amount": 10.0 + (i % 97) as f64, "is_card_present": i.is_multiple_of(2), "hour_of_day": (i % 24) as i64}})
}

/// Submits one request: (status, answer).
async fn submit(
    gw: &str,
    http: &reqwest::Client,
    body: &Value,
    key: Option<&str>,
) -> Result<(u16, Value)> {
    let mut r = http.post(format!("{gw}/v1/models/{MODEL}/predict-async"));
    if let Some(k) = key {
        r = r.header("Idempotency-Key", k);
    }
    let r = r.json(body).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

async fn accepted(gw: &str, http: &reqwest::Client, body: &Value) -> Result<String> {
    let (status, a) = submit(gw, http, body, None).await?;
    ensure!(status == 202, "submit: {status} {a}");
    a["id"].as_str().map(str::to_owned).context("no id")
}

/// The first submit accepted: topics are made in the background at start,
/// and until they exist a submit is refused with 503 `queue_unavailable`.
async fn first_accepted(gw: &str, http: &reqwest::Client, body: &Value) -> Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, a) = submit(gw, http, body, None).await?;
        if s == 202 {
            return a["id"].as_str().map(str::to_owned).context("no id");
        }
        ensure!(
            s == 503 && a["code"] == "queue_unavailable",
            "submit: {s} {a}"
        );
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no submit accepted: {s} {a}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn poll(gw: &str, http: &reqwest::Client, id: &str) -> Result<(u16, Value)> {
    let r = http.get(format!("{gw}/v1/predictions/{id}")).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// Polls every ID until none is pending (at most `limit`); the answers.
async fn wait_all(
    gw: &str,
    http: &reqwest::Client,
    ids: &[String],
    limit: Duration,
) -> Result<BTreeMap<String, Value>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut answers = BTreeMap::new();
    let mut left: Vec<String> = ids.to_vec();
    while !left.is_empty() {
        let polled: Vec<Result<(String, u16, Value)>> = stream::iter(left.clone())
            .map(|id| async move {
                let (s, v) = poll(gw, http, &id).await?;
                Ok((id, s, v))
            })
            .buffer_unordered(32)
            .collect()
            .await;
        left.clear();
        for p in polled {
            let (id, status, v) = p?;
            ensure!(status == 200, "poll {id}: {status} {v}");
            if v["state"] == "pending" {
                left.push(id);
            } else {
                answers.insert(id, v);
            }
        }
        if !left.is_empty() {
            if tokio::time::Instant::now() > deadline {
                bail!("{} requests still pending after {limit:?}", left.len());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(answers)
}

/// Every record of `topic` as a read-committed consumer sees it, until
/// `quiet` passes without one: (key, result).
async fn results(
    broker: &str,
    topic: &str,
    quiet: Duration,
) -> Result<Vec<(String, pb::AsyncPrediction)>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    while let Ok(m) = tokio::time::timeout(quiet, consumer.recv()).await {
        let m = m?;
        out.push((
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            pb::AsyncPrediction::decode(m.payload().unwrap_or_default())?,
        ));
    }
    Ok(out)
}

async fn done_count(gw: &str) -> Result<f64> {
    let text = reqwest::get(format!("{gw}/metrics")).await?.text().await?;
    Ok(Page::parse(&text)?
        .value("mlgw_async_results_total", &[("state", "done")])
        .unwrap_or(0.0))
}

#[tokio::test]
async fn ten_thousand_requests_survive_a_worker_killed_mid_run() -> Result<()> {
    const N: usize = 10_000;
    let broker = rig_env("MLGW_TEST_KAFKA")?;
    let prefix = unique("async");
    // Time enough for every request to wait for the worker's restart.
    let section = format!(
        "{}default_deadline_ms = 600000\n",
        async_section(&broker, &prefix)
    );
    let (_dir, config) = scratch("async_kill", DEV_AUTH, |t| with_section(t, &section)).await?;
    let started = std::time::Instant::now();
    let mut gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    let url = gw.http.clone();

    // The same idempotency key twice: one ID, one prediction.
    let (s1, first) = submit(&url, &http, &body(0), Some("order-17")).await?;
    let (s2, again) = submit(&url, &http, &body(1), Some("order-17")).await?;
    assert_eq!((s1, s2), (202, 202), "{first} {again}");
    assert_eq!(first["id"], again["id"]);
    assert_eq!(
        (first["duplicate"].as_bool(), again["duplicate"].as_bool()),
        (Some(false), Some(true))
    );
    let keyed = first["id"].as_str().context("id")?.to_owned();

    let submitted: Vec<Result<String>> = stream::iter(1..N)
        .map(|i| {
            let (url, http) = (&url, &http);
            async move { accepted(url, http, &body(i)).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut ids = submitted.into_iter().collect::<Result<Vec<_>>>()?;
    ids.push(keyed.clone());
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        N,
        "every ID is new"
    );

    // Kill the worker while it is scoring, then start it again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while done_count(&url).await? < 500.0 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no results within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_kill = done_count(&url).await?;
    gw.child.start_kill()?;
    gw.child.wait().await?;
    eprintln!(
        "{N} accepted and killed the worker after {before_kill} results in {:.1?}",
        started.elapsed()
    );
    ensure!(
        before_kill < N as f64,
        "everything was scored before the kill; the test proves nothing"
    );
    let gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;

    let answers = wait_all(&gw.http, &http, &ids, Duration::from_secs(300)).await?;
    eprintln!(
        "all {N} done {:.1?} after the first submit",
        started.elapsed()
    );
    for (id, a) in &answers {
        assert_eq!(a["state"], "done", "{id}: {a}");
        assert_eq!(a["prediction"]["model"], MODEL, "{a}");
        assert!(
            a["prediction"]["outputs"]
                .as_array()
                .is_some_and(|o| !o.is_empty()),
            "{a}"
        );
    }
    let published = results(
        &broker,
        &format!("{prefix}.results.{MODEL}"),
        Duration::from_secs(5),
    )
    .await?;
    let mut once = BTreeMap::new();
    for (key, r) in &published {
        assert_eq!(key, &r.id, "keyed by the request ID");
        assert_eq!(r.state, "done", "{r:?}");
        *once.entry(r.id.clone()).or_insert(0) += 1;
    }
    let twice: Vec<_> = once.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    assert_eq!(
        once.keys().cloned().collect::<BTreeSet<_>>(),
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        "every accepted request has its one result on the topic"
    );
    // The polled prediction is the published one.
    let keyed_published = published.iter().find(|(k, _)| k == &keyed).map(|(_, r)| r);
    assert_eq!(
        keyed_published
            .and_then(|r| r.prediction.as_ref())
            .map(|p| p.prediction_id.clone()),
        answers[&keyed]["prediction"]["prediction_id"]
            .as_str()
            .map(str::to_owned)
    );
    gw.stop().await
}

#[tokio::test]
async fn submits_are_checked_at_once_and_results_are_private() -> Result<()> {
    let issuer = rig_env("MLGW_TEST_OIDC_ISSUER")?;
    let broker = rig_env("MLGW_TEST_KAFKA")?;
    let prefix = unique("async_auth");
    let auth = oidc_auth(
        &issuer,
        "[[auth.allow]]\napi = \"admin\"\ngroups = [\"mlgw-admins\"]\nscopes = [\"admin\"]\n",
    );
    let section = async_section(&broker, &prefix);
    let (_dir, config) = scratch("async_auth", &auth, |t| with_section(t, &section)).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let service = client_with_token(&client_credentials(&issuer, "mlgw-service", None).await?)?;
    let pilot = client_with_token(&client_credentials(&issuer, "mlgw-pilot", None).await?)?;
    let admin = client_with_token(&client_credentials(&issuer, "mlgw-admin", None).await?)?;
    let nogroups = client_with_token(&client_credentials(&issuer, "mlgw-nogroups", None).await?)?;
    let url = gw.http.as_str();

    // Refused at once, as a synchronous call would be.
    let (s, a) = submit(
        url,
        &service,
        &json!({"entity": {"customer_id": "c-1"},
        "request_features": {"amount": "lots"}}),
        None,
    )
    .await?;
    assert_eq!(
        (s, a["code"].as_str()),
        (400, Some("invalid_argument")),
        "{a}"
    );
    let (s, a) = submit(url, &service, &json!({"entity": {"account": "c-1"}}), None).await?;
    assert_eq!(
        (s, a["code"].as_str()),
        (400, Some("invalid_argument")),
        "{a}"
    );
    let (s, a) = submit(url, &nogroups, &body(1), None).await?;
    assert_eq!(
        (s, a["code"].as_str()),
        (403, Some("permission_denied")),
        "{a}"
    );
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/models/{MODEL}/predict-async"))
        .json(&body(1))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    let r = service
        .post(format!("{url}/v1/models/no_such_model/predict-async"))
        .json(&body(1))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 404);

    // Only the submitter and an admin see a result.
    let id = first_accepted(url, &service, &body(7)).await?;
    let done = wait_all(
        url,
        &service,
        std::slice::from_ref(&id),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(done[&id]["state"], "done", "{}", done[&id]);
    let (s, a) = poll(url, &pilot, &id).await?;
    assert_eq!(
        (s, a["code"].as_str()),
        (404, Some("request_not_found")),
        "{a}"
    );
    let (s, a) = poll(url, &admin, &id).await?;
    assert_eq!((s, a["state"].as_str()), (200, Some("done")), "{a}");
    let (s, _) = poll(url, &service, "0190f5b2-8c1e-7c3a-9d7e-2f1a3b4c5d6e").await?;
    assert_eq!(s, 404);

    // A request not taken by a worker within its deadline fails instead of
    // being scored late.
    let mut late = body(8);
    late["deadline_ms"] = json!(1);
    let (s, a) = submit(url, &service, &late, None).await?;
    assert_eq!(s, 202, "{a}");
    let late_id = a["id"].as_str().context("id")?.to_owned();
    let failed = wait_all(
        url,
        &service,
        std::slice::from_ref(&late_id),
        Duration::from_secs(60),
    )
    .await?;
    let f = &failed[&late_id];
    assert_eq!(
        (f["state"].as_str(), f["error"]["code"].as_str()),
        (Some("failed"), Some("deadline_exceeded")),
        "{f}"
    );
    assert!(f.get("prediction").is_none(), "{f}");

    // The same over gRPC.
    let token = client_credentials(&issuer, "mlgw-service", None).await?;
    let mut client = PredictionServiceClient::new(gw.channel().await?);
    let mut req = tonic::Request::new(pb::PredictAsyncRequest {
        request: Some(example_grpc_request()),
        idempotency_key: unique("grpc-key"),
        deadline_ms: 0,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let accepted = client.predict_async(req).await?.into_inner();
    assert!(!accepted.duplicate);
    let state = loop {
        let mut req = tonic::Request::new(pb::GetPredictionRequest {
            id: accepted.id.clone(),
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let p = client.get_prediction(req).await?.into_inner();
        if p.state != "pending" {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(state.state, "done");
    assert_eq!(state.prediction.map(|p| p.model), Some(MODEL.to_owned()));
    gw.stop().await
}

#[tokio::test]
async fn kafka_away_refuses_submits_and_nothing_accepted_is_lost() -> Result<()> {
    let mut kafka = OwnKafka::start().await?;
    let broker = kafka.address()?;
    let prefix = unique("async_down");
    let section = async_section(&broker, &prefix);
    let (_dir, config) = scratch("async_down", DEV_AUTH, |t| with_section(t, &section)).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    let url = gw.http.as_str();
    let mut ids = vec![first_accepted(url, &http, &body(0)).await?];
    for i in 1..50 {
        ids.push(accepted(url, &http, &body(i)).await?);
    }

    kafka.run("stop").await?;
    let mut refused = 0;
    for i in 0..20 {
        let sync = http
            .post(format!("{url}/v1/models/{MODEL}/predict"))
            .json(&body(i))
            .send()
            .await?;
        assert_eq!(sync.status().as_u16(), 200, "synchronous predictions go on");
        let (s, a) = submit(url, &http, &body(i), None).await?;
        assert_eq!(
            (s, a["code"].as_str()),
            (503, Some("queue_unavailable")),
            "{a}"
        );
        refused += 1;
    }
    assert_eq!(refused, 20);

    kafka.run("restart").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (s, a) = submit(url, &http, &body(99), None).await?;
        if s == 202 {
            ids.push(a["id"].as_str().context("id")?.to_owned());
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "Kafka is back, but submits are refused: {s} {a}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let answers = wait_all(url, &http, &ids, Duration::from_secs(120)).await?;
    assert_eq!(answers.len(), ids.len());
    assert!(
        answers.values().all(|a| a["state"] == "done"),
        "{answers:?}"
    );
    gw.stop().await?;
    kafka.passed = true;
    Ok(())
}

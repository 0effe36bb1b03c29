//! Telemetry end to end: a local OTLP/gRPC receiver (the collector's
//! TraceService, run by the test) gets the spans of a real gateway and a real
//! model-server; a REST and a gRPC prediction that carry a caller's
//! `traceparent` each come back as one trace, with the caller's trace ID,
//! spans from both services, every stage by name and consistent parent links.
//! Both `/metrics` pages parse as Prometheus text and move with requests.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use proto::gateway::v1::prediction_service_client::PredictionServiceClient;
use rig::gateway::{DEV_AUTH, GatewayProcess, config_text};
use rig::metrics::Page;
use rig::{ModelServerProcess, example_repository};
use serde_json::json;

/// One received span: (service.name, trace ID, span ID, parent span ID, name).
#[derive(Debug, Clone)]
struct Got {
    service: String,
    trace: String,
    id: String,
    parent: String,
    name: String,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut got = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .and_then(|v| match v {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        service: service.clone(),
                        trace: hex(&s.trace_id),
                        id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                    });
                }
            }
        }
        if let Ok(mut spans) = self.spans.lock() {
            spans.extend(got);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts the receiver on a free port; returns its endpoint URL.
async fn receiver() -> Result<(String, Receiver, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let r = Receiver::default();
    let service = TraceServiceServer::new(r.clone());
    let task = tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            eprintln!("otlp receiver: {e}");
        }
    });
    Ok((format!("http://{addr}"), r, task))
}

async fn stack(tag: &str, otlp: Option<&str>) -> Result<(ModelServerProcess, GatewayProcess)> {
    let mut args = vec!["--otel-batch-delay-ms", "200"];
    if let Some(e) = otlp {
        args.extend(["--otlp-endpoint", e]);
    }
    let mut ms = ModelServerProcess::start(&example_repository(), &args).await?;
    ms.wait_ready(Duration::from_secs(60)).await?;
    use feature_store::store::prelude::*;
    let dir = std::env::temp_dir().join(format!("mlgw_otel_{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    feature_store::store::embedded::EmbeddedStore::open(&dir.join("features.redb"))?
        .apply_schema()
        .await?;
    let mut text = config_text(&ms.grpc_url, DEV_AUTH);
    if let Some(e) = otlp {
        text.push_str(&format!(
            "\n[telemetry]\notlp_endpoint = \"{e}\"\nbatch_delay_ms = 200\n"
        ));
    }
    let config = dir.join("gateway.toml");
    std::fs::write(&config, text)?;
    let gw = GatewayProcess::start_ready(&config).await?;
    Ok((ms, gw))
}

fn body() -> serde_json::Value {
    json!({"entity": {"customer_id": "c-1"}, "request_features":
        {"amount": 980.0, "is_card_present": false, "hour_of_day": 3, "distance_from_home_km": 1200.0}})
}

const GATEWAY_STAGES: [&str; 8] = [
    "request",
    "auth",
    "route",
    "enrich",
    "feature_read",
    "infer",
    "postprocess",
    "log",
];
const MODEL_SERVER_STAGES: [&str; 5] =
    ["model_infer", "decode", "queue_wait", "inference", "encode"];

/// Checks one caller's trace: both services, every stage, parents inside the
/// trace (the gateway's root under the caller's span).
fn check_trace(spans: &[Got], trace: &str, caller_span: &str) -> Result<()> {
    let mine: Vec<&Got> = spans.iter().filter(|s| s.trace == trace).collect();
    let names = |svc: &str| -> HashSet<&str> {
        mine.iter()
            .filter(|s| s.service == svc)
            .map(|s| s.name.as_str())
            .collect()
    };
    let (gw, ms) = (names("mlgw-gateway"), names("mlgw-model-server"));
    for stage in GATEWAY_STAGES {
        if !gw.contains(stage) {
            bail!("gateway span {stage:?} missing from trace {trace}: {gw:?}");
        }
    }
    for stage in MODEL_SERVER_STAGES {
        if !ms.contains(stage) {
            bail!("model-server span {stage:?} missing from trace {trace}: {ms:?}");
        }
    }
    let ids: HashMap<&str, &Got> = mine.iter().map(|s| (s.id.as_str(), *s)).collect();
    for s in &mine {
        if s.parent == caller_span {
            assert_eq!(
                s.name, "request",
                "only the gateway's request span hangs under the caller"
            );
            continue;
        }
        let parent = ids.get(s.parent.as_str()).with_context(|| {
            format!("span {} has parent {} outside the trace", s.name, s.parent)
        })?;
        if s.name == "model_infer" {
            assert_eq!(
                parent.name, "infer",
                "the model-server continues the gateway's infer span"
            );
            assert_eq!(parent.service, "mlgw-gateway");
        }
    }
    Ok(())
}

#[tokio::test]
async fn one_trace_spans_gateway_and_model_server() -> Result<()> {
    let (endpoint, received, task) = receiver().await?;
    let (ms, gw) = stack("trace", Some(&endpoint)).await?;
    let token = gw.token()?.to_owned();

    let rest_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let rest_parent = "00f067aa0ba902b7";
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/models/fraud_detector/predict", gw.http))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{rest_trace}-{rest_parent}-01"))
        .json(&body())
        .send()
        .await?;
    assert_eq!(answer.status(), 200, "{}", answer.text().await?);

    let grpc_trace = "0af7651916cd43dd8448eb211c80319c";
    let grpc_parent = "b7ad6b7169203331";
    let channel = gw.channel().await?;
    let mut client = PredictionServiceClient::new(channel);
    let mut request = tonic::Request::new(rig::gateway::example_grpc_request());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{grpc_trace}-{grpc_parent}-01").parse()?,
    );
    client.predict(request).await?;

    // Spans leave in batches every 200 ms; wait (bounded) for both traces.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = received.spans.lock().map(|s| s.clone()).unwrap_or_default();
        let rest = check_trace(&spans, rest_trace, rest_parent);
        let grpc = check_trace(&spans, grpc_trace, grpc_parent);
        match (rest, grpc) {
            (Ok(()), Ok(())) => break,
            (r, g) if Instant::now() > deadline => {
                bail!("traces incomplete after 20 s: rest {r:?}, grpc {g:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    drop(gw);
    ms.stop().await?;
    task.abort();
    Ok(())
}

/// The first series of `metric` whose labels include `labels`: counters and
/// gauges as they are, histograms by count.
fn value(page: &Page, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.matching(&format!("{metric}_count"), labels)
        .next()
        .or_else(|| page.matching(metric, labels).next())
}

async fn scrape(url: &str) -> Result<Page> {
    Page::scrape(&reqwest::Client::new(), url).await
}

#[tokio::test]
async fn metrics_parse_and_move() -> Result<()> {
    let (ms, gw) = stack("metrics", None).await?;
    let token = gw.token()?.to_owned();
    let (g0, m0) = (scrape(&gw.http).await?, scrape(&ms.http_url).await?);
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let a = client
            .post(format!("{}/v1/models/fraud_detector/predict", gw.http))
            .bearer_auth(&token)
            .json(&body())
            .send()
            .await?;
        assert_eq!(a.status(), 200);
    }
    let (g1, m1) = (scrape(&gw.http).await?, scrape(&ms.http_url).await?);
    let moved = |a: &Page, b: &Page, m: &str, l: &[(&str, &str)]| {
        let before = value(a, m, l).unwrap_or(0.0);
        let after = value(b, m, l).with_context(|| format!("{m} {l:?} missing"))?;
        anyhow::ensure!(after >= before + 3.0, "{m} {l:?}: {before} → {after}");
        Ok::<_, anyhow::Error>(())
    };
    moved(&g0, &g1, "mlgw_predict_seconds", &[])?;
    moved(&g0, &g1, "mlgw_gateway_overhead_seconds", &[])?;
    moved(
        &g0,
        &g1,
        "mlgw_request_seconds",
        &[
            ("front", "rest"),
            ("api", "predict"),
            ("model", "fraud_detector"),
        ],
    )?;
    moved(
        &g0,
        &g1,
        "mlgw_requests_total",
        &[("front", "rest"), ("route", "predict"), ("code", "ok")],
    )?;
    let model = [("model", "fraud_detector"), ("front", "grpc")];
    moved(&m0, &m1, "mlgw_model_server_request_seconds", &model)?;
    moved(
        &m0,
        &m1,
        "mlgw_model_server_queue_wait_seconds",
        &model[..1],
    )?;
    moved(&m0, &m1, "mlgw_model_server_batch_rows", &model[..1])?;
    moved(&m0, &m1, "mlgw_model_server_inference_seconds", &model[..1])?;
    for stage in GATEWAY_STAGES {
        moved(&g0, &g1, "mlgw_stage_seconds", &[("stage", stage)])?;
    }
    for stage in MODEL_SERVER_STAGES {
        moved(
            &m0,
            &m1,
            "mlgw_model_server_stage_seconds",
            &[("stage", stage)],
        )?;
    }
    assert!(value(&g1, "mlgw_feature_cache_hit_ratio", &[]).is_some());
    // The families an operator alerts on are there (and parse) from the start.
    assert_eq!(
        value(&g1, "mlgw_model_circuit_state", &[("pool", "callers")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &g1,
            "mlgw_feature_store_errors_total",
            &[("op", "read"), ("kind", "timeout")]
        ),
        Some(0.0)
    );
    assert_eq!(value(&g1, "mlgw_refresh_jobs_read", &[]), Some(1.0));
    assert!(value(&g1, "mlgw_prediction_log_batch_records", &[]).is_some());
    assert_eq!(
        value(&m1, "mlgw_model_server_requests_in_flight", &[]),
        Some(0.0)
    );
    drop(gw);
    ms.stop().await?;
    Ok(())
}

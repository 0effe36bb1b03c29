//! The gateway as a process, with a real model-server and the embedded
//! feature store: predictions over REST and gRPC equal the model-server's own
//! answer for the same feature values, defaults are reported, a pushed
//! dynamic value changes the next prediction, errors carry clear codes, and a
//! stopped model-server gives 503 / UNAVAILABLE quickly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use feature_store::definitions::FeatureDefinitions;
use feature_store::store::LogWindow;
use feature_store::store::embedded::EmbeddedStore;
use feature_store::store::prelude::*;
use feature_store::store::scylla::ScyllaStore;
use gateway::model::infer::{BreakerConfig, ModelClient};
use proto::gateway::v1 as pb;
use proto::gateway::v1::prediction_service_client::PredictionServiceClient;
use rig::gateway::{
    Bearer, DEV_AUTH, GatewayProcess, assert_refused, challenge, client_with_token, config_text,
    definitions, p_fraud,
};
use rig::store::{refresh_file, scylla_config};
use rig::{ModelServerProcess, ScratchDir, binary, example_repository};
use serde_json::{Value, json};

/// A scratch gateway config with the dev issuer, each `(from, to)` of
/// `edits` replaced in its text.
async fn scratch_gateway(tag: &str, edits: &[(&str, &str)]) -> Result<(ScratchDir, PathBuf)> {
    rig::gateway::scratch(tag, DEV_AUTH, |mut text| {
        for (from, to) in edits {
            text = text.replace(from, to);
        }
        text
    })
    .await
}

fn request_features() -> Value {
    json!({"amount": 980.0, "is_card_present": false, "hour_of_day": 3, "distance_from_home_km": 1200.0})
}

#[tokio::test]
async fn predictions_through_the_gateway() -> Result<()> {
    let dir = ScratchDir::new("mlgw_gw")?;
    // Feature data: a profile batch for c-1 in the embedded store.
    let defs = Arc::new(FeatureDefinitions::load(&definitions())?);
    let store = Arc::new(EmbeddedStore::open(&dir.join("features.redb"))?);
    store.apply_schema().await?;
    let csv = dir.join("profile.csv");
    std::fs::write(
        &csv,
        "customer_id,account_age_days,avg_txn_amount_30d,txn_count_30d,chargeback_count_1y,home_country_risk\nc-1,30,40.5,2,1,0.7\n",
    )?;
    refresh_file(&*store, &defs, "customer_profile_daily", &csv).await?;

    let mut model_server = ModelServerProcess::start(&example_repository(), &[]).await?;
    model_server.wait_ready(Duration::from_secs(60)).await?;
    let config = dir.join("gateway.toml");
    std::fs::write(&config, config_text(&model_server.grpc_url, DEV_AUTH))?;
    let mut gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    let predict = |body: Value| {
        let http = http.clone();
        let url = format!("{}/v1/models/fraud_detector/predict", gw.http);
        async move {
            let r = http.post(url).json(&body).send().await?;
            let status = r.status().as_u16();
            anyhow::Ok((status, r.json::<Value>().await?))
        }
    };

    // 0. No token, no prediction; health, readiness, metrics and the
    // OpenAPI document stay open.
    let anonymous = reqwest::Client::new();
    let r = anonymous
        .post(format!("{}/v1/models/fraud_detector/predict", gw.http))
        .json(&json!({"entity": {"customer_id": "c-1"}, "request_features": request_features()}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    assert!(challenge(&r).is_some_and(|v| v.contains("error=\"invalid_token\"")));
    assert_eq!(r.json::<Value>().await?["code"], "invalid_token");
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let status = anonymous
            .get(format!("{}{open}", gw.http))
            .send()
            .await?
            .status();
        assert_eq!(status.as_u16(), 200, "{open}");
    }

    // 1. A known customer: the answer equals the model-server's own answer
    // for the same row, assembled here from the values we loaded.
    let (status, answer) =
        predict(json!({"entity": {"customer_id": "c-1"}, "request_features": request_features()}))
            .await?;
    assert_eq!(status, 200, "{answer}");
    let row: Vec<f32> = vec![
        30.0, 40.5, 2.0, 1.0, 0.7, 0.0, 0.0, 0.0, 0.0, 1440.0, 980.0, 0.21, 0.0, 3.0, 1200.0,
    ];
    let direct = ModelClient::new(
        &model_server.grpc_url,
        Duration::from_secs(2),
        BreakerConfig::default(),
    )?
    .infer(
        "fraud_detector",
        "",
        "features",
        &row,
        15,
        Duration::from_secs(2),
    )
    .await?;
    let want = direct
        .outputs
        .iter()
        .find(|o| o.name == "probabilities")
        .context("probabilities")?
        .values[1];
    assert!(
        (p_fraud(&answer)? - want).abs() < 1e-6,
        "{answer} vs {want}"
    );
    assert_eq!(answer["model_version"], direct.model_version);
    let label = if want >= 0.5 { "fraud" } else { "legit" };
    assert_eq!(answer["outputs"][1]["label"], label);
    assert!(
        answer["prediction_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
    );
    let fresh = &answer["freshness"];
    assert!(
        fresh["view_age_ms"]["customer_profile"]
            .as_i64()
            .is_some_and(|a| a >= 0)
    );
    assert_eq!(
        fresh["view_age_ms"]["customer_activity"], -1,
        "no activity row yet"
    );
    let defaulted: Vec<&str> = fresh["defaulted_features"]
        .as_array()
        .context("defaulted")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        defaulted.contains(&"request.merchant_category_risk")
            && defaulted.contains(&"customer_activity.txn_count_1h")
    );
    assert!(!defaulted.iter().any(|d| d.starts_with("customer_profile.")));

    // 2. An unknown customer: every profile feature defaulted and flagged.
    let (status, unknown) = predict(
        json!({"entity": {"customer_id": "c-404"}, "request_features": request_features()}),
    )
    .await?;
    assert_eq!(status, 200, "{unknown}");
    assert_eq!(unknown["freshness"]["view_age_ms"]["customer_profile"], -1);
    let defaulted = unknown["freshness"]["defaulted_features"].to_string();
    assert!(
        defaulted.contains("customer_profile.account_age_days"),
        "{defaulted}"
    );

    // 3. A value pushed through the gateway changes the next prediction.
    let pushed = http
        .post(format!("{}/v1/features/customer_activity/push", gw.http))
        .json(
            &json!({"rows": [{"entity": {"customer_id": "c-1"}, "values": {
            "distinct_merchants_24h": 12, "minutes_since_last_txn": 0.5}}]}),
        )
        .send()
        .await?;
    assert_eq!(pushed.status().as_u16(), 200);
    assert_eq!(pushed.json::<Value>().await?["rows_written"], 1);
    let refused = http
        .post(format!("{}/v1/features/customer_activity/push", gw.http))
        .json(&json!({"rows": [{"entity": {"customer_id": "c-1"}, "values": {"distinct_merchants_24h": "many"}}]}))
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 400);
    let refused = refused.json::<Value>().await?;
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("rows[0].values.distinct_merchants_24h: expected int64")),
        "{refused}"
    );
    let unknown_view = http
        .post(format!("{}/v1/features/customer_profile/push", gw.http))
        .json(&json!({"rows": []}))
        .send()
        .await?;
    assert_eq!(
        unknown_view.status().as_u16(),
        404,
        "static views are not pushed"
    );
    let (_, after) =
        predict(json!({"entity": {"customer_id": "c-1"}, "request_features": request_features()}))
            .await?;
    assert_ne!(
        p_fraud(&after)?,
        p_fraud(&answer)?,
        "the push changed nothing"
    );
    assert!(
        after["freshness"]["view_age_ms"]["customer_activity"]
            .as_i64()
            .is_some_and(|a| a >= 0)
    );

    // 4. gRPC gives the same answer as REST.
    let channel = gw.channel().await?;
    let mut grpc = PredictionServiceClient::with_interceptor(channel, Bearer::new(gw.token()?)?);
    let request = rig::gateway::example_grpc_request();
    let g = grpc.predict(request.clone()).await?.into_inner();
    let g_p = g
        .outputs
        .iter()
        .find(|o| o.name == "probabilities")
        .context("grpc probabilities")?
        .values[1];
    assert!(
        (g_p - p_fraud(&after)?).abs() < 1e-9,
        "gRPC {g_p} vs REST {}",
        p_fraud(&after)?
    );
    assert_eq!(
        g.freshness.map(|f| f.defaulted_features.len()),
        Some(
            after["freshness"]["defaulted_features"]
                .as_array()
                .map_or(0, Vec::len)
        )
    );

    // 4b. A batch over REST answers each entity as the single call does.
    let batch = http
        .post(format!(
            "{}/v1/models/fraud_detector/predict-batch",
            gw.http
        ))
        .json(&json!({"requests": [
            {"entity": {"customer_id": "c-1"}, "request_features": request_features()},
            {"entity": {"customer_id": "c-404"}, "request_features": request_features()}]}))
        .send()
        .await?;
    assert_eq!(batch.status().as_u16(), 200);
    let batch = batch.json::<Value>().await?;
    assert!(
        (p_fraud(&batch["responses"][0])? - p_fraud(&after)?).abs() < 1e-9,
        "{batch}"
    );
    assert!(
        (p_fraud(&batch["responses"][1])? - p_fraud(&unknown)?).abs() < 1e-9,
        "{batch}"
    );
    let metrics = metrics_text(&http, &gw.http).await?;
    assert!(
        metrics.contains("mlgw_requests_total{front=\"rest\",route=\"predict\",code=\"ok\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mlgw_requests_total{front=\"grpc\",route=\"predict\",code=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mlgw_predict_seconds_count 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mlgw_feature_cache_hits_total"),
        "{metrics}"
    );
    // Latency per front, API and model; the batch's size; the breaker closed.
    for (series, at_least) in [
        (
            "mlgw_request_seconds_count{front=\"rest\",api=\"predict\",model=\"fraud_detector\"}",
            3.0,
        ),
        (
            "mlgw_request_seconds_count{front=\"rest\",api=\"predict_batch\",model=\"fraud_detector\"}",
            1.0,
        ),
        ("mlgw_predict_batch_entities_bucket{le=\"2\"}", 1.0),
    ] {
        let v = series_value(&metrics, series).with_context(|| format!("{series} in {metrics}"))?;
        assert!(v >= at_least, "{series} = {v}");
    }
    assert_eq!(
        series_value(&metrics, "mlgw_predict_batch_entities_bucket{le=\"1\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        series_value(
            &metrics,
            &format!(
                "mlgw_model_circuit_state{{pool=\"callers\",endpoint=\"{}\"}}",
                model_server.grpc_url
            )
        ),
        Some(0.0),
        "{metrics}"
    );
    assert_series_shapes(&metrics)?;

    // The OpenAPI document describes every REST route the gateway serves.
    let doc = rig::get_json(&http, &format!("{}/openapi.json", gw.http)).await?;
    for route in [
        "/v1/models/{model}/predict",
        "/v1/models/{model}/predict-batch",
        "/v1/features/{view}/push",
        "/v1/feedback",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            doc["paths"][route].is_object(),
            "{route} missing from /openapi.json"
        );
        let post = &doc["paths"][route]["post"];
        if route.starts_with("/v1/") {
            assert_eq!(post["security"], json!([{"bearerAuth": []}]), "{route}");
            assert!(
                post["responses"]["401"].is_object() && post["responses"]["403"].is_object(),
                "{route}"
            );
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );

    // 5. Errors carry stable codes and name the field.
    let (status, e) = predict(json!({"entity": {"customer_id": "c-1"}, "request_features": {"amount": 1.0, "is_card_present": "no", "hour_of_day": 3}})).await?;
    assert_refused(status, &e, 400, "invalid_argument");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("request_features.is_card_present")),
        "{e}"
    );
    let r = http
        .post(format!("{}/v1/models/nope/predict", gw.http))
        .json(&json!({"entity": {}}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.json::<Value>().await?["code"], "unknown_model");
    let mut bad = request.clone();
    bad.entity = Some(pb::EntityKey {
        keys: HashMap::from([("user".into(), "c-1".into())]),
    });
    let status = grpc.predict(bad).await.err().context("expected an error")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("entity.keys: unknown key \"user\""),
        "{}",
        status.message()
    );
    assert_eq!(
        http.get(format!("{}/readyz", gw.http))
            .send()
            .await?
            .status()
            .as_u16(),
        200
    );

    // 6. The model-server goes away: 503 with a clear code, quickly; not ready.
    let model_server_url = model_server.grpc_url.clone();
    model_server.stop().await?;
    for _ in 0..3 {
        let t = Instant::now();
        let (status, e) = predict(
            json!({"entity": {"customer_id": "c-1"}, "request_features": request_features()}),
        )
        .await?;
        assert_refused(status, &e, 503, "model_unavailable");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    assert_eq!(
        http.get(format!("{}/readyz", gw.http))
            .send()
            .await?
            .status()
            .as_u16(),
        503
    );
    let status = grpc
        .predict(request)
        .await
        .err()
        .context("expected an error")?;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    // Five failures in a row opened the breaker: /metrics says so.
    for _ in 0..2 {
        let (status, _) = predict(
            json!({"entity": {"customer_id": "c-1"}, "request_features": request_features()}),
        )
        .await?;
        assert_eq!(status, 503);
    }
    let metrics = metrics_text(&http, &gw.http).await?;
    let circuit = |family: &str| {
        series_value(
            &metrics,
            &format!("{family}{{pool=\"callers\",endpoint=\"{model_server_url}\"}}"),
        )
    };
    assert_eq!(circuit("mlgw_model_circuit_state"), Some(1.0), "{metrics}");
    assert_eq!(
        circuit("mlgw_model_circuit_opens_total"),
        Some(1.0),
        "{metrics}"
    );

    // 7. SIGTERM: the gateway exits cleanly.
    let pid = gw.child.id().context("pid")?;
    sigterm(pid)?;
    let exit = tokio::time::timeout(Duration::from_secs(10), gw.child.wait()).await??;
    if !exit.success() {
        bail!("gateway exited with {exit:?} after SIGTERM");
    }
    Ok(())
}

/// The gateway's `/metrics` text.
async fn metrics_text(http: &reqwest::Client, gateway: &str) -> Result<String> {
    Ok(http
        .get(format!("{gateway}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// Every series the gateway's `/metrics` may expose: name (histograms under
/// their own name and as `_sum`, `_count`) and label names. Dashboards, the
/// deploy files and these tests read them, so none may be renamed, relabelled
/// or added by accident.
const GATEWAY_SERIES: &[(&str, &[&str])] = &[
    ("mlgw_requests_total", &["code", "front", "route"]),
    ("mlgw_request_seconds", &["api", "front", "model"]),
    ("mlgw_predict_seconds", &[]),
    ("mlgw_model_call_seconds", &[]),
    ("mlgw_gateway_overhead_seconds", &[]),
    ("mlgw_predict_batch_entities", &[]),
    ("mlgw_requests_in_flight", &[]),
    ("mlgw_requests_limit", &[]),
    ("mlgw_feature_cache_entries", &[]),
    ("mlgw_feature_cache_bytes", &[]),
    ("mlgw_feature_cache_hits_total", &[]),
    ("mlgw_feature_cache_misses_total", &[]),
    ("mlgw_feature_cache_loads_total", &[]),
    ("mlgw_feature_cache_load_errors_total", &[]),
    ("mlgw_feature_cache_evictions_total", &[]),
    ("mlgw_feature_cache_expirations_total", &[]),
    ("mlgw_feature_cache_invalidations_total", &[]),
    ("mlgw_feature_cache_hit_ratio", &[]),
    ("mlgw_feature_cache_load_seconds_total", &[]),
    ("mlgw_feature_store_errors_total", &["kind", "op"]),
    ("mlgw_feature_event_reads_total", &[]),
    ("mlgw_feature_events_read_total", &[]),
    ("mlgw_feature_event_reads_capped_total", &[]),
    ("mlgw_auth_failures_total", &["front", "reason"]),
    ("mlgw_auth_denied_total", &["api", "front"]),
    ("mlgw_config_reloads_total", &["result"]),
    ("mlgw_model_circuit_state", &["endpoint", "pool"]),
    ("mlgw_model_circuit_opens_total", &["endpoint", "pool"]),
    ("mlgw_model_calls_total", &["endpoint", "pool"]),
    ("mlgw_model_call_rows_total", &["endpoint", "pool"]),
    (
        "mlgw_model_coalesced_calls_refused_total",
        &["endpoint", "pool"],
    ),
    ("mlgw_prediction_log_records_total", &["result"]),
    ("mlgw_prediction_log_writes_total", &[]),
    ("mlgw_prediction_log_queued", &[]),
    ("mlgw_prediction_log_batch_records", &[]),
    ("mlgw_auth_signing_keys", &[]),
    ("mlgw_auth_key_fetches_total", &["result"]),
    ("mlgw_auth_keys_fetched_timestamp_seconds", &[]),
    ("mlgw_auth_tokens_total", &["source"]),
    ("mlgw_routing_revision", &["model"]),
    ("mlgw_routing_share_percent", &["model", "role", "version"]),
    ("mlgw_shadow_calls_total", &["model", "result", "version"]),
    ("mlgw_shadow_in_flight", &[]),
    ("mlgw_stage_seconds", &["stage"]),
    ("mlgw_refresh_jobs_read", &[]),
    ("mlgw_refresh_interval_seconds", &["job", "view"]),
    ("mlgw_refresh_last_good_interval_seconds", &["job", "view"]),
    ("mlgw_refresh_pinned", &["job", "view"]),
    (
        "mlgw_refresh_last_batch_finished_timestamp_seconds",
        &["job", "view"],
    ),
    ("mlgw_refresh_last_batch_failed", &["job", "view"]),
    ("mlgw_refresh_next_run_timestamp_seconds", &["job", "view"]),
    ("mlgw_precomputed_total", &["model", "outcome"]),
    ("mlgw_publish_records_total", &["result", "stream"]),
    // Only with `[ingest]` on (tests/tests/ingest.rs reads them).
    ("mlgw_ingest_events_total", &["result", "view"]),
    ("mlgw_ingest_dead_letters_total", &["reason", "view"]),
    ("mlgw_ingest_retries_total", &["step"]),
    ("mlgw_ingest_commit_failures_total", &[]),
    ("mlgw_ingest_lag", &["partition", "topic"]),
    ("mlgw_scoring_jobs_read", &[]),
    ("mlgw_scoring_alarm", &["job", "kind"]),
    ("mlgw_scoring_last_run_refused", &["job"]),
    ("mlgw_scoring_served_batch_timestamp_seconds", &["job"]),
];

/// Series every page of this test's gateway shows (the others appear once
/// something happened: a refusal, a reload, a shadow copy…).
const ALWAYS: &[&str] = &[
    "mlgw_requests_total",
    "mlgw_request_seconds",
    "mlgw_predict_seconds",
    "mlgw_predict_batch_entities",
    "mlgw_requests_limit",
    "mlgw_feature_cache_hits_total",
    "mlgw_feature_cache_load_seconds_total",
    "mlgw_feature_store_errors_total",
    "mlgw_feature_event_reads_total",
    "mlgw_model_circuit_state",
    "mlgw_model_calls_total",
    "mlgw_auth_signing_keys",
    "mlgw_auth_key_fetches_total",
    "mlgw_auth_tokens_total",
    "mlgw_shadow_in_flight",
    "mlgw_refresh_jobs_read",
    "mlgw_scoring_jobs_read",
    "mlgw_scoring_alarm",
];

/// Checks the page's series against [`GATEWAY_SERIES`]: each known, with
/// its label names, and the [`ALWAYS`] ones present.
fn assert_series_shapes(text: &str) -> Result<()> {
    let shapes = rig::metrics::Page::parse(text)?.series_shapes();
    let known = |name: &str, labels: &[String]| {
        GATEWAY_SERIES.iter().any(|(n, l)| {
            let base = name
                .strip_suffix("_sum")
                .or_else(|| name.strip_suffix("_count"))
                .filter(|b| *b == *n)
                .unwrap_or(name);
            base == *n && l.iter().copied().eq(labels.iter().map(String::as_str))
        })
    };
    for (name, labels) in shapes.iter().filter(|(n, _)| n.starts_with("mlgw_")) {
        assert!(
            known(name, labels),
            "unexpected series {name} {labels:?}: {text}"
        );
    }
    for name in ALWAYS {
        assert!(
            shapes.iter().any(|(n, _)| n == name),
            "{name} missing: {text}"
        );
    }
    Ok(())
}

/// The value of one series (`name{labels}` as exposed) in a Prometheus
/// text exposition.
fn series_value(text: &str, series: &str) -> Option<f64> {
    rig::metrics::Page::parse(text).ok()?.get(series)
}

/// Runs the gateway on `config`, expects it to refuse to start (exit 1) and
/// returns what it printed on stderr.
async fn refusal(config: &std::path::Path) -> Result<String> {
    let out = tokio::process::Command::new(binary("gateway")?)
        .arg("--config")
        .arg(config)
        .output()
        .await?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "the gateway did not refuse {config:?}"
    );
    Ok(String::from_utf8(out.stderr)?)
}

/// Sends SIGTERM (what Kubernetes sends) to `pid`.
fn sigterm(pid: u32) -> std::io::Result<std::process::ExitStatus> {
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
}

#[tokio::test]
async fn gateway_refuses_to_start_when_the_model_does_not_match() -> Result<()> {
    let scores = (
        "scores_output = \"probabilities\"",
        "scores_output = \"scores\"",
    );
    let (_dir, config) = scratch_gateway("bad", &[scores]).await?;
    let err = refusal(&config).await?;
    assert!(
        err.contains("postprocess.scores_output \"scores\" is not an output; the server's outputs are [\"label\", \"probabilities\"]"),
        "{err}"
    );
    // A production config (the default environment) refuses the dev issuer.
    let production = std::fs::read_to_string(&config)?
        .replace(
            "scores_output = \"scores\"",
            "scores_output = \"probabilities\"",
        )
        .replace("environment = \"development\"\n", "");
    std::fs::write(&config, &production)?;
    let err = refusal(&config).await?;
    assert!(
        err.contains("gateway.toml: auth.mode: the dev issuer is refused when server.environment = \"production\""),
        "{err}"
    );
    let bad = production.replace("timeout_ms = 1000", "timeout_ms = 0");
    std::fs::write(&config, bad)?;
    let err = refusal(&config).await?;
    assert!(
        err.contains("gateway.toml: model[0].timeout_ms: must be at least 1"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn overload_is_shed_at_once_and_admitted_requests_succeed() -> Result<()> {
    let limit = (
        "request_timeout_ms = 2000",
        "request_timeout_ms = 2000\nmax_concurrent_requests = 2",
    );
    let (_dir, config) = scratch_gateway("shed", &[limit]).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    let url = format!("{}/v1/models/fraud_detector/predict", gw.http);
    let body = json!({"entity": {"customer_id": "c-1"}, "request_features": request_features()});
    let calls = (0..200).map(|_| {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        async move {
            let t = Instant::now();
            let r = http.post(url).json(&body).send().await?;
            let status = r.status().as_u16();
            let v: Value = r.json().await?;
            anyhow::Ok((status, v, t.elapsed()))
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let (mut ok, mut shed) = (0, 0);
    for r in results {
        let (status, v, took) = r?;
        match status {
            200 => ok += 1,
            429 => {
                assert_eq!(v["code"], "overloaded", "{v}");
                assert!(
                    took < Duration::from_secs(1),
                    "a shed request waited {took:?}"
                );
                shed += 1;
            }
            other => bail!("unexpected {other}: {v}"),
        }
    }
    assert!(
        ok > 0 && shed > 0,
        "ok {ok}, shed {shed}: 200 concurrent calls over a limit of 2"
    );

    // The same stack sheds gRPC, while the health probe stays open.
    let channel = gw.channel().await?;
    let grpc = PredictionServiceClient::with_interceptor(channel, Bearer::new(gw.token()?)?);
    let request = pb::PredictRequest {
        model: "fraud_detector".into(),
        entity: Some(pb::EntityKey {
            keys: HashMap::from([("customer_id".into(), "c-1".into())]),
        }),
        request_features: HashMap::from([
            (
                "amount".into(),
                pb::FeatureValue {
                    kind: Some(pb::feature_value::Kind::DoubleValue(12.0)),
                },
            ),
            (
                "is_card_present".into(),
                pb::FeatureValue {
                    kind: Some(pb::feature_value::Kind::BoolValue(true)),
                },
            ),
            (
                "hour_of_day".into(),
                pb::FeatureValue {
                    kind: Some(pb::feature_value::Kind::Int64Value(9)),
                },
            ),
        ]),
        ..pb::PredictRequest::default()
    };
    let calls = (0..200).map(|_| {
        let (mut grpc, request) = (grpc.clone(), request.clone());
        async move { grpc.predict(request).await }
    });
    let health = async {
        let channel = gw.channel().await?;
        let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
        let r = h
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await?;
        let up = http.get(format!("{}/healthz", gw.http)).send().await?;
        anyhow::Ok((r.into_inner().status, up.status().as_u16()))
    };
    let (results, probes) = tokio::join!(futures_util::future::join_all(calls), health);
    let (grpc_status, http_status) = probes?;
    assert_eq!(grpc_status, 1, "gRPC health while shedding");
    assert_eq!(http_status, 200, "/healthz while shedding");
    let (mut grpc_ok, mut grpc_shed) = (0, 0);
    for r in results {
        match r {
            Ok(_) => grpc_ok += 1,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    s.message().contains("limit of concurrent requests"),
                    "{s:?}"
                );
                grpc_shed += 1;
            }
            Err(s) => bail!("unexpected gRPC status {s:?}"),
        }
    }
    assert!(
        grpc_ok > 0 && grpc_shed > 0,
        "gRPC: ok {grpc_ok}, shed {grpc_shed}"
    );
    let metrics = metrics_text(&http, &gw.http).await?;
    assert!(
        metrics.contains(&format!(
            "mlgw_requests_total{{front=\"rest\",route=\"predict\",code=\"overloaded\"}} {shed}"
        )),
        "{metrics}"
    );
    drop(gw);
    Ok(())
}

#[tokio::test]
async fn feedback_joins_its_logged_prediction_and_sigterm_loses_none() -> Result<()> {
    let (dir, config) = scratch_gateway("log", &[]).await?;
    let mut gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    let predict_url = format!("{}/v1/models/fraud_detector/predict", gw.http);
    let body = json!({"entity": {"customer_id": "c-7"}, "request_features": request_features()});
    let first: Value = http
        .post(&predict_url)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    let id = first["prediction_id"]
        .as_str()
        .with_context(|| format!("no prediction_id in {first}"))?
        .to_owned();

    // Feedback over gRPC for the prediction just made (still in the log's
    // buffer, or already written: either way it is found).
    let channel = gw.channel().await?;
    let mut feedback =
        proto::gateway::v1::feedback_service_client::FeedbackServiceClient::with_interceptor(
            channel,
            Bearer::new(gw.token()?)?,
        );
    feedback
        .feedback(pb::FeedbackRequest {
            prediction_id: id.clone(),
            outcome: Some(pb::feedback_request::Outcome::Label("fraud".into())),
            observed_at_ms: 0,
        })
        .await?;

    // Bad feedback over REST: each refused with a code and the field named.
    let feedback_url = format!("{}/v1/feedback", gw.http);
    let unknown = uuid::Uuid::now_v7().to_string();
    for (body, status, code, says) in [
        (
            json!({"prediction_id": unknown, "label": "fraud"}),
            404,
            "prediction_not_found",
            "no prediction",
        ),
        (
            json!({"prediction_id": "p-123", "label": "fraud"}),
            400,
            "invalid_argument",
            "prediction_id: \"p-123\" is not a prediction ID",
        ),
        (
            json!({"prediction_id": id, "label": "maybe"}),
            400,
            "invalid_argument",
            "its labels are legit, fraud",
        ),
        (
            json!({"prediction_id": id}),
            400,
            "invalid_argument",
            "outcome: send `label`",
        ),
        (
            json!({"prediction_id": id, "label": "fraud", "value": 1.0}),
            400,
            "invalid_argument",
            "not both",
        ),
    ] {
        let r = http.post(&feedback_url).json(&body).send().await?;
        let got_status = r.status().as_u16();
        let v: Value = r.json().await?;
        assert_eq!(
            (got_status, v["code"].as_str()),
            (status, Some(code)),
            "{body} -> {v}"
        );
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(says)),
            "{body} -> {v}"
        );
    }

    // Predictions in flight when SIGTERM arrives: every answered one is in
    // the log after the gateway exits.
    let answered = Arc::new(std::sync::Mutex::new(vec![id.clone()]));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pid = gw.child.id().context("pid")?;
    let killer = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            while done.load(std::sync::atomic::Ordering::SeqCst) < 60 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sigterm(pid)
        })
    };
    let calls = futures_util::stream::iter(0..400).map(|i| {
        let (http, url, answered, done) = (
            http.clone(),
            predict_url.clone(),
            Arc::clone(&answered),
            Arc::clone(&done),
        );
        async move {
            let body = json!({"entity": {"customer_id": format!("c-{i}")}, "request_features": request_features()});
            if let Ok(r) = http.post(url).json(&body).send().await
                && r.status().as_u16() == 200
                && let Ok(v) = r.json::<Value>().await
                && let Some(id) = v["prediction_id"].as_str()
            {
                answered
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(id.to_owned());
            }
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            anyhow::Ok(())
        }
    });
    use futures_util::StreamExt as _;
    let results: Vec<Result<()>> = calls.buffer_unordered(16).collect().await;
    for r in results {
        r?;
    }
    killer.await??;
    let exit = tokio::time::timeout(Duration::from_secs(20), gw.child.wait()).await??;
    assert!(exit.success(), "gateway exited with {exit:?} after SIGTERM");

    let answered = answered
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert!(answered.len() > 60, "only {} answered", answered.len());
    let store = EmbeddedStore::open(&dir.join("features.redb"))?;
    let now = std::time::SystemTime::now();
    let log = store
        .read_log(LogWindow {
            from: now - Duration::from_secs(3600),
            to: now + Duration::from_secs(60),
            limit: 100_000,
        })
        .await?;
    let logged: std::collections::HashSet<&str> = log
        .iter()
        .map(|e| e.prediction.prediction_id.as_str())
        .collect();
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !logged.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered predictions are not in the log, e.g. {:?}",
        missing.len(),
        answered.len(),
        missing.first()
    );
    // The first prediction joins its feedback.
    let entry = log
        .iter()
        .find(|e| e.prediction.prediction_id == id)
        .context("first prediction not logged")?;
    assert_eq!(entry.prediction.model, "fraud_detector");
    assert_eq!(entry.prediction.subject, "dev-user", "the token's subject");
    assert_eq!(
        entry.feedback.as_ref().map(|f| f.subject.as_str()),
        Some("dev-user")
    );
    assert_eq!(entry.prediction.entity, "c-7");
    assert_eq!(entry.prediction.inputs.len(), 15);
    assert!(
        entry
            .prediction
            .defaulted
            .iter()
            .any(|d| d.starts_with("customer_profile.")),
        "c-7 has no profile row: {:?}",
        entry.prediction.defaulted
    );
    assert_eq!(
        entry.feedback.as_ref().map(|f| &f.outcome),
        Some(&feature_store::log::Outcome::Label("fraud".into()))
    );
    Ok(())
}

/// The logged input row of the prediction `id` (the log is written off the
/// request path, so wait a little for it).
async fn logged_inputs(store: &EmbeddedStore, id: &str) -> Result<Vec<f32>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(record) = store.read_prediction(id).await? {
            return Ok(record.inputs);
        }
        if Instant::now() > deadline {
            bail!("prediction {id} was not logged within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Transaction events pushed through REST and gRPC are aggregated by the
/// feature store: the next prediction's input (as the prediction log records
/// it) carries `txn_count_1h` / `txn_amount_sum_1h` / `failed_auth_count_24h`
/// over their windows; an event outside the window, a replayed event and a bad
/// event change nothing, and bad input names the field.
#[tokio::test]
async fn pushed_events_feed_the_windowed_aggregates_of_the_next_prediction() -> Result<()> {
    // Columns of the model input (fraud.toml's [[model]] order).
    const TXN_COUNT_1H: usize = 5;
    const TXN_SUM_1H: usize = 6;
    const FAILED_AUTH_24H: usize = 8;
    let (dir, config) = scratch_gateway("agg", &[]).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let store = EmbeddedStore::open(&dir.join("features.redb"))?;
    let http = client_with_token(gw.token()?)?;
    let predict = || {
        let http = http.clone();
        let url = format!("{}/v1/models/fraud_detector/predict", gw.http);
        let body =
            json!({"entity": {"customer_id": "c-77"}, "request_features": request_features()});
        async move {
            let r = http.post(url).json(&body).send().await?;
            let status = r.status().as_u16();
            let v: Value = r.json().await?;
            anyhow::ensure!(status == 200, "predict answered {status}: {v}");
            anyhow::Ok(v)
        }
    };
    let id_of = |v: &Value| {
        v["prediction_id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no prediction_id in {v}"))
    };

    // Before any event: the aggregates are their defaults, flagged.
    let before = predict().await?;
    let inputs = logged_inputs(&store, &id_of(&before)?).await?;
    assert_eq!(
        (
            inputs[TXN_COUNT_1H],
            inputs[TXN_SUM_1H],
            inputs[FAILED_AUTH_24H]
        ),
        (0.0, 0.0, 0.0)
    );
    assert!(
        before["freshness"]["defaulted_features"]
            .to_string()
            .contains("customer_activity.txn_count_1h"),
        "{before}"
    );

    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let min_ms = 60_000;
    let push_url = format!("{}/v1/features/customer_activity/push", gw.http);
    let c77 = json!({"customer_id": "c-77"});
    // Over REST: two transactions in the last hour, one two hours ago
    // (outside 1h, inside the 48h ttl), a failed authorisation, and the first
    // transaction again (same event_id): one event.
    let pushed = http
        .post(&push_url)
        .json(&json!({"events": [
            {"entity": c77, "event_id": "t-1", "event_time_ms": now_ms - 10 * min_ms,
             "fields": {"transaction_id": "t-1", "amount": 120.5}},
            {"entity": c77, "event_id": "t-2", "event_time_ms": now_ms - 2 * min_ms,
             "fields": {"transaction_id": "t-2", "amount": 30.25}},
            {"entity": c77, "event_id": "t-0", "event_time_ms": now_ms - 120 * min_ms,
             "fields": {"transaction_id": "t-0", "amount": 999.0}},
            {"entity": c77, "event_time_ms": now_ms - 5 * min_ms,
             "fields": {"failed_auth_id": "f-1"}},
            {"entity": c77, "event_id": "t-1", "event_time_ms": now_ms - 10 * min_ms,
             "fields": {"transaction_id": "t-1", "amount": 120.5}},
        ]}))
        .send()
        .await?;
    assert_eq!(pushed.status().as_u16(), 200);
    assert_eq!(
        pushed.json::<Value>().await?,
        json!({"rows_written": 0, "events_written": 5})
    );

    // Over gRPC: a late transaction (older than the REST ones) without an ID,
    // sent twice: the derived ID makes the replay the same event.
    let channel = gw.channel().await?;
    let mut features =
        proto::gateway::v1::feature_service_client::FeatureServiceClient::with_interceptor(
            channel,
            Bearer::new(gw.token()?)?,
        );
    use pb::feature_value::Kind;
    let fv = |k: Kind| pb::FeatureValue { kind: Some(k) };
    let late = pb::FeatureEvent {
        entity: Some(pb::EntityKey {
            keys: HashMap::from([("customer_id".into(), "c-77".into())]),
        }),
        event_id: String::new(),
        event_time_ms: now_ms - 30 * min_ms,
        fields: HashMap::from([
            ("transaction_id".into(), fv(Kind::StringValue("t-3".into()))),
            ("amount".into(), fv(Kind::DoubleValue(50.0))),
        ]),
    };
    let answer = features
        .push_features(pb::PushFeaturesRequest {
            view: "customer_activity".into(),
            rows: vec![],
            events: vec![late.clone(), late.clone()],
        })
        .await?
        .into_inner();
    assert_eq!((answer.rows_written, answer.events_written), (0, 2));

    // The next prediction: 3 transactions in the hour (t-1, t-2, t-3), their
    // amounts summed, one failed authorisation in 24h.
    let after = predict().await?;
    let inputs = logged_inputs(&store, &id_of(&after)?).await?;
    assert_eq!(
        (
            inputs[TXN_COUNT_1H],
            inputs[TXN_SUM_1H],
            inputs[FAILED_AUTH_24H]
        ),
        (3.0, 200.75, 1.0),
        "{inputs:?}"
    );
    let defaulted = after["freshness"]["defaulted_features"].to_string();
    assert!(
        !defaulted.contains("txn_count_1h") && !defaulted.contains("failed_auth_count_24h"),
        "{defaulted}"
    );
    assert!(
        after["freshness"]["view_age_ms"]["customer_activity"]
            .as_i64()
            .is_some_and(|a| (2 * min_ms..3 * min_ms).contains(&a)),
        "the newest contributing event is 2 min old: {after}"
    );
    assert_ne!(
        p_fraud(&after)?,
        p_fraud(&before)?,
        "the events changed nothing"
    );

    // Bad events are refused, naming the field, over both fronts.
    for (body, says) in [
        (
            json!({"events": [{"entity": c77, "fields": {"transaction_id": "t-9", "amount": "lots"}}]}),
            "events[0].fields.amount: expected a number, got a string value",
        ),
        (
            json!({"events": [{"entity": c77, "fields": {"amout": 3}}]}),
            "events[0].fields.amout: no aggregate of the view reads this field",
        ),
        (
            json!({"events": [{"entity": c77, "fields": {}}]}),
            "events[0].fields: empty",
        ),
        (
            json!({"events": [{"entity": {"user": "u"}, "fields": {"amount": 1}}]}),
            "events[0].entity.keys: unknown key \"user\"",
        ),
        (
            json!({"rows": [{"entity": c77, "values": {"txn_count_1h": 3}}]}),
            "rows[0].values.txn_count_1h: computed by the feature store",
        ),
    ] {
        let r = http.post(&push_url).json(&body).send().await?;
        let status = r.status().as_u16();
        let v: Value = r.json().await?;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("invalid_argument")),
            "{body} -> {v}"
        );
        assert!(
            v["message"].as_str().is_some_and(|m| m.starts_with(says)),
            "{body} -> {v}"
        );
    }
    let mut bad = late.clone();
    bad.fields
        .insert("amount".into(), fv(Kind::BoolValue(true)));
    let status = features
        .push_features(pb::PushFeaturesRequest {
            view: "customer_activity".into(),
            rows: vec![],
            events: vec![bad],
        })
        .await
        .err()
        .context("a bool amount must be refused")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("events[0].fields.amount: expected a number, got a bool value"),
        "{}",
        status.message()
    );
    // Nothing refused was counted.
    let again = predict().await?;
    let inputs = logged_inputs(&store, &id_of(&again)?).await?;
    assert_eq!((inputs[TXN_COUNT_1H], inputs[TXN_SUM_1H]), (3.0, 200.75));
    // The event reads are in /metrics.
    let metrics = metrics_text(&http, &gw.http).await?;
    assert!(
        series_value(&metrics, "mlgw_feature_event_reads_total").is_some_and(|v| v >= 3.0),
        "{metrics}"
    );
    assert_eq!(
        series_value(&metrics, "mlgw_feature_event_reads_capped_total"),
        Some(0.0)
    );
    drop(gw);
    Ok(())
}

/// The gateway on ScyllaDB (a Cassandra node of this test alone) through an
/// outage: rows already cached keep answering, a cache miss fails fast with
/// 503 `feature_store_unavailable`, and the same process recovers when the
/// node is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_outage_cached_predictions_answer_misses_fail_fast() -> Result<()> {
    let mut node = rig::OwnCassandra::start().await?;
    let address = node.address()?;
    let keyspace = rig::unique("gwfaults");
    let store = ScyllaStore::connect(scylla_config(&address, keyspace.clone())).await?;
    store.apply_schema().await.context("applying the schema")?;
    let defs = FeatureDefinitions::load(&definitions())?;
    let csv = node.dir.join("profile.csv");
    std::fs::write(
        &csv,
        "customer_id,account_age_days,avg_txn_amount_30d,txn_count_30d,chargeback_count_1y,home_country_risk\n\
         c-1,30,40.5,2,1,0.7\nc-2,900,12.0,40,0,0.1\n",
    )?;
    refresh_file(&store, &defs, "customer_profile_daily", &csv).await?;

    let dir = node.dir.join("gateway");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("gateway.toml");
    let text = config_text(&rig::rig_env("MLGW_TEST_MODEL_SERVER_GRPC")?, DEV_AUTH)
        .replace(
            "backend = \"embedded\"\npath = \"features.redb\"",
            &format!(
                "backend = \"scylla\"\nnodes = [\"{address}\"]\nkeyspace = \"{keyspace}\"\n\
                 read_timeout_ms = 300\nwrite_timeout_ms = 2000"
            ),
        )
        // Dynamic rows cached too, so a fully cached entity needs no read.
        .replace(
            "batch_poll_ms = 200",
            "batch_poll_ms = 200\ndynamic_ttl_ms = 600000",
        );
    std::fs::write(&config, text)?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    let predict = |customer: &str| {
        let (http, url) = (
            http.clone(),
            format!("{}/v1/models/fraud_detector/predict", gw.http),
        );
        let body =
            json!({"entity": {"customer_id": customer}, "request_features": request_features()});
        async move {
            let t = Instant::now();
            let r = http.post(url).json(&body).send().await?;
            let status = r.status().as_u16();
            anyhow::Ok((status, r.json::<Value>().await?, t.elapsed()))
        }
    };
    // c-1 gets activity values, so both its rows are cached as present (a
    // missing row is only remembered for the short negative TTL).
    let pushed = http
        .post(format!("{}/v1/features/customer_activity/push", gw.http))
        .json(&json!({"rows": [{"entity": {"customer_id": "c-1"}, "values": {"distinct_merchants_24h": 3}}]}))
        .send()
        .await?;
    assert_eq!(pushed.status().as_u16(), 200, "{:?}", pushed.text().await);
    let (status, warm, _) = predict("c-1").await?;
    assert_eq!(status, 200, "{warm}");
    assert!(
        warm["freshness"]["view_age_ms"]["customer_profile"]
            .as_i64()
            .is_some_and(|a| a >= 0),
        "{warm}"
    );

    node.run("stop").await?;
    for _ in 0..3 {
        let (status, again, took) = predict("c-1").await?;
        assert_eq!(status, 200, "a cached entity must still answer: {again}");
        assert!((p_fraud(&again)? - p_fraud(&warm)?).abs() < 1e-9);
        assert!(took < Duration::from_secs(1), "cached answer took {took:?}");
    }
    for _ in 0..3 {
        let (status, e, took) = predict("c-2").await?;
        assert_refused(status, &e, 503, "feature_store_unavailable");
        assert!(
            took < Duration::from_millis(2300),
            "a miss took {took:?} to fail"
        );
    }
    // The failed reads (and batch polls) are counted by op and kind.
    let metrics = metrics_text(&http, &gw.http).await?;
    let read_failures: f64 = ["timeout", "unavailable", "error"]
        .iter()
        .filter_map(|kind| {
            series_value(
                &metrics,
                &format!("mlgw_feature_store_errors_total{{op=\"read\",kind=\"{kind}\"}}"),
            )
        })
        .sum();
    assert!(read_failures >= 3.0, "3 failed misses counted: {metrics}");

    node.run("restart").await?;
    let restarted = Instant::now();
    loop {
        let (status, v, _) = predict("c-2").await?;
        if status == 200 {
            assert!(
                v["freshness"]["view_age_ms"]["customer_profile"]
                    .as_i64()
                    .is_some_and(|a| a >= 0),
                "{v}"
            );
            break;
        }
        assert_eq!(v["code"], "feature_store_unavailable", "{v}");
        if restarted.elapsed() > Duration::from_secs(60) {
            bail!("the gateway did not recover within 60 s of the restart: {v}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(gw);
    node.passed = true;
    Ok(())
}

/// A gateway whose `[[model]]` gets `[model.coalesce] max_in_flight = 1`,
/// `max_rows = 8` and the model timeout `timeout_ms`, in front of
/// `model_grpc` (None: the rig's shared model-server).
async fn coalescing_gateway(
    tag: &str,
    model_grpc: Option<&str>,
    timeout_ms: u64,
) -> Result<(ScratchDir, GatewayProcess)> {
    let shared = rig::rig_env("MLGW_TEST_MODEL_SERVER_GRPC")?;
    let endpoint = model_grpc.unwrap_or(&shared);
    let coalesce =
        format!("timeout_ms = {timeout_ms}\n[model.coalesce]\nmax_in_flight = 1\nmax_rows = 8\n");
    let edits = [
        (shared.as_str(), endpoint),
        ("timeout_ms = 1000\n", &coalesce),
    ];
    let (dir, config) = scratch_gateway(tag, &edits).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    Ok((dir, gw))
}

/// REST predict bodies for customers `c-0`… with request features that
/// differ per row (so every row is a different tensor).
fn distinct_bodies(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"entity": {"customer_id": format!("c-{i}")}, "request_features": {
                "amount": 25.0 * i as f64, "is_card_present": i.is_multiple_of(2),
                "hour_of_day": i % 24, "distance_from_home_km": 37.0 * i as f64}})
        })
        .collect()
}

/// Sends every body to `url` at once; each must answer 200. Returns each
/// answer's P(fraud), in order.
async fn p_fraud_all_at_once(
    http: &reqwest::Client,
    url: &str,
    bodies: &[Value],
) -> Result<Vec<f64>> {
    let calls: Vec<_> = bodies
        .iter()
        .map(|body| {
            let (http, url, body) = (http.clone(), url.to_owned(), body.clone());
            tokio::spawn(async move {
                let r = http.post(url).json(&body).send().await?;
                anyhow::Ok((r.status().as_u16(), r.json::<Value>().await?))
            })
        })
        .collect();
    let mut p = Vec::with_capacity(calls.len());
    for call in calls {
        let (status, answer) = call.await??;
        assert_eq!(status, 200, "{answer}");
        p.push(p_fraud(&answer)?);
    }
    Ok(p)
}

/// Sends each body alone, one after the other, and checks its P(fraud)
/// equals `together` (what it got when sent with the others).
async fn assert_each_answers_as_alone(
    http: &reqwest::Client,
    url: &str,
    bodies: &[Value],
    together: &[f64],
) -> Result<()> {
    for (i, (body, p)) in bodies.iter().zip(together).enumerate() {
        let r = http.post(url).json(body).send().await?;
        let alone = p_fraud(&r.json::<Value>().await?)?;
        assert!(
            (alone - p).abs() < 1e-6,
            "row {i}: {p} together, {alone} alone"
        );
    }
    Ok(())
}

/// `[model.coalesce]`: predictions that arrive while the model-server is
/// busy go to it together, and each still gets the answer for its own row.
#[tokio::test]
async fn predictions_sent_together_answer_as_if_each_went_alone() -> Result<()> {
    let (_dir, gw) = coalescing_gateway("coalesce", None, 1000).await?;
    let http = client_with_token(gw.token()?)?;
    let url = format!("{}/v1/models/fraud_detector/predict", gw.http);
    let calls_series = |name: &str| -> Result<String> {
        Ok(format!(
            "{name}{{pool=\"callers\",endpoint=\"{}\"}}",
            rig::rig_env("MLGW_TEST_MODEL_SERVER_GRPC")?
        ))
    };
    // 48 different rows, all at once.
    let bodies = distinct_bodies(48);
    let together = p_fraud_all_at_once(&http, &url, &bodies).await?;
    let metrics = metrics_text(&http, &gw.http).await?;
    let (calls, rows) = (
        series_value(&metrics, &calls_series("mlgw_model_calls_total")?)
            .context("no mlgw_model_calls_total")?,
        series_value(&metrics, &calls_series("mlgw_model_call_rows_total")?)
            .context("no mlgw_model_call_rows_total")?,
    );
    assert_eq!(rows, 48.0, "every prediction's row sent once");
    assert!(
        calls < rows,
        "some predictions went together: {calls} calls"
    );
    // The same rows one at a time: each goes alone, and answers the same.
    assert_each_answers_as_alone(&http, &url, &bodies, &together).await?;
    let metrics = metrics_text(&http, &gw.http).await?;
    assert_eq!(
        series_value(&metrics, &calls_series("mlgw_model_calls_total")?),
        Some(calls + 48.0),
        "one call each when sent one at a time"
    );
    drop(gw);
    Ok(())
}

/// A hung model-server (frozen: its connections stay open, nothing answers)
/// behind `[model.coalesce]`: the predictions queued behind the hung call
/// give up at their own deadline with a clear code instead of waiting
/// without bound, and the gateway answers again once the server thaws.
#[tokio::test]
async fn queued_predictions_behind_a_hung_model_server_time_out_and_recover() -> Result<()> {
    let mut model_server = ModelServerProcess::start(&example_repository(), &[]).await?;
    model_server.wait_ready(Duration::from_secs(60)).await?;
    let (_dir, gw) = coalescing_gateway("hung", Some(&model_server.grpc_url), 300).await?;
    let http = client_with_token(gw.token()?)?;
    let url = format!("{}/v1/models/fraud_detector/predict", gw.http);
    let body = json!({"entity": {"customer_id": "c-1"}, "request_features": request_features()});
    let predict = || {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        async move {
            let t = Instant::now();
            let r = http.post(url).json(&body).send().await?;
            let status = r.status().as_u16();
            let answer = r.json::<Value>().await?;
            anyhow::Ok((status, answer, t.elapsed()))
        }
    };
    assert_eq!(predict().await?.0, 200);

    model_server.freeze(true)?;
    let calls: Vec<_> = (0..24).map(|_| tokio::spawn(predict())).collect();
    for call in calls {
        let (status, answer, took) = call.await??;
        assert!(
            matches!(
                (status, answer["code"].as_str()),
                (504, Some("deadline_exceeded")) | (503, Some("model_unavailable"))
            ),
            "{status} {answer}"
        );
        assert!(
            took < Duration::from_millis(1500),
            "answered after {took:?}"
        );
    }

    model_server.freeze(false)?;
    // The circuit breaker opened on the timeouts; after its cool-down one
    // probe goes through and the lane's slot is free again.
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, answer, _) = predict().await?;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < until, "no recovery: {status} {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answers: Vec<_> = (0..8).map(|_| tokio::spawn(predict())).collect();
    for a in answers {
        let (status, answer, _) = a.await??;
        assert_eq!(status, 200, "{answer}");
    }
    drop(gw);
    model_server.stop().await?;
    Ok(())
}

/// `[model.coalesce] max_rows` above the model's max batch size (which V2
/// metadata does not tell): the model-server refuses the larger calls, and
/// the gateway sends those rows again alone, so every prediction answers.
#[tokio::test]
async fn max_rows_above_the_models_max_batch_size_costs_no_prediction() -> Result<()> {
    let repo =
        rig::example_repository_with(|c| c.replace("max_batch_size = 64", "max_batch_size = 2"))?;
    let mut model_server = ModelServerProcess::start(&repo.path, &[]).await?;
    model_server.wait_ready(Duration::from_secs(60)).await?;
    let private = model_server.grpc_url.clone();
    let (_dir, gw) = coalescing_gateway("max_rows", Some(&private), 1000).await?;
    let http = client_with_token(gw.token()?)?;
    let url = format!("{}/v1/models/fraud_detector/predict", gw.http);
    let bodies = distinct_bodies(32);
    let together = p_fraud_all_at_once(&http, &url, &bodies).await?;
    // The model-server did refuse calls: larger ones were tried first.
    let refused = metrics_text(&http, &model_server.http_url).await?;
    let refused = series_value(
        &refused,
        "mlgw_model_server_request_errors_total{model=\"fraud_detector\",front=\"grpc\"}",
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{refused:?}");
    // ... and the gateway counted each one it re-sent alone.
    let counted = metrics_text(&http, &gw.http).await?;
    let counted = series_value(
        &counted,
        &format!(
            "mlgw_model_coalesced_calls_refused_total{{pool=\"callers\",endpoint=\"{private}\"}}"
        ),
    );
    assert_eq!(
        counted, refused,
        "the gateway's count equals the server's refusals"
    );
    assert_each_answers_as_alone(&http, &url, &bodies, &together).await?;
    drop(gw);
    model_server.stop().await?;
    Ok(())
}

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
use feature_store::refresh::{self, RefreshOptions};
use feature_store::store::FeatureStore;
use feature_store::store::embedded::EmbeddedStore;
use gateway::infer::{BreakerConfig, ModelClient};
use proto::gateway::v1 as pb;
use proto::gateway::v1::prediction_service_client::PredictionServiceClient;
use rig::gateway::{Bearer, DEV_AUTH, GatewayProcess, client_with_token, config_text, definitions};
use rig::{ModelServerProcess, binary, example_repository};
use serde_json::{Value, json};

async fn scratch_gateway(tag: &str, edit: impl Fn(String) -> String) -> Result<(PathBuf, PathBuf)> {
    rig::gateway::scratch(tag, DEV_AUTH, edit).await
}

fn request_features() -> Value {
    json!({"amount": 980.0, "is_card_present": false, "hour_of_day": 3, "distance_from_home_km": 1200.0})
}

fn p_fraud(answer: &Value) -> Result<f64> {
    answer["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|x| x["name"] == "probabilities"))
        .and_then(|o| o["values"][1].as_f64())
        .with_context(|| format!("no probabilities in {answer}"))
}

#[tokio::test]
async fn predictions_through_the_gateway() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mlgw_gw_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Feature data: a profile batch for c-1 in the embedded store.
    let defs = Arc::new(FeatureDefinitions::load(&definitions())?);
    let store = Arc::new(EmbeddedStore::open(&dir.join("features.redb"))?);
    store.apply_schema().await?;
    let csv = dir.join("profile.csv");
    std::fs::write(
        &csv,
        "customer_id,account_age_days,avg_txn_amount_30d,txn_count_30d,chargeback_count_1y,home_country_risk\nc-1,30,40.5,2,1,0.7\n",
    )?;
    refresh::run(
        &*store,
        &defs,
        "customer_profile_daily",
        None,
        &csv,
        &RefreshOptions::default(),
        &|_| {},
    )
    .await?;

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
    assert!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("error=\"invalid_token\""))
    );
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
            "txn_count_1h": 12, "failed_auth_count_24h": 6, "minutes_since_last_txn": 0.5}}]}),
        )
        .send()
        .await?;
    assert_eq!(pushed.status().as_u16(), 200);
    assert_eq!(pushed.json::<Value>().await?["rows_written"], 1);
    let refused = http
        .post(format!("{}/v1/features/customer_activity/push", gw.http))
        .json(&json!({"rows": [{"entity": {"customer_id": "c-1"}, "values": {"txn_count_1h": "many"}}]}))
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 400);
    let refused = refused.json::<Value>().await?;
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("rows[0].values.txn_count_1h: expected int64")),
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
    let channel = tonic::transport::Endpoint::from_shared(gw.grpc.clone())?
        .connect()
        .await?;
    let mut grpc = PredictionServiceClient::with_interceptor(channel, Bearer::new(gw.token()?)?);
    let fv = |k: pb::feature_value::Kind| pb::FeatureValue { kind: Some(k) };
    use pb::feature_value::Kind;
    let request = pb::PredictRequest {
        model: "fraud_detector".into(),
        model_version: String::new(),
        entity: Some(pb::EntityKey {
            keys: HashMap::from([("customer_id".into(), "c-1".into())]),
        }),
        request_features: HashMap::from([
            ("amount".into(), fv(Kind::DoubleValue(980.0))),
            ("is_card_present".into(), fv(Kind::BoolValue(false))),
            ("hour_of_day".into(), fv(Kind::Int64Value(3))),
            (
                "distance_from_home_km".into(),
                fv(Kind::DoubleValue(1200.0)),
            ),
        ]),
    };
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
    let metrics = http
        .get(format!("{}/metrics", gw.http))
        .send()
        .await?
        .text()
        .await?;
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

    // The OpenAPI document describes every REST route the gateway serves.
    let doc: Value = http
        .get(format!("{}/openapi.json", gw.http))
        .send()
        .await?
        .json()
        .await?;
    for route in [
        "/v1/models/{model}/predict",
        "/v1/models/{model}/predict-batch",
        "/v1/features/{view}/push",
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
    assert_eq!(
        (status, e["code"].as_str()),
        (400, Some("invalid_argument")),
        "{e}"
    );
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
    model_server.stop().await?;
    for _ in 0..3 {
        let t = Instant::now();
        let (status, e) = predict(
            json!({"entity": {"customer_id": "c-1"}, "request_features": request_features()}),
        )
        .await?;
        assert_eq!(
            (status, e["code"].as_str()),
            (503, Some("model_unavailable")),
            "{e}"
        );
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

    // 7. SIGTERM: the gateway exits cleanly.
    let pid = gw.child.id().context("pid")?;
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    let exit = tokio::time::timeout(Duration::from_secs(10), gw.child.wait()).await??;
    if !exit.success() {
        bail!("gateway exited with {exit:?} after SIGTERM");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn gateway_refuses_to_start_when_the_model_does_not_match() -> Result<()> {
    let (dir, config) = scratch_gateway("bad", |c| {
        c.replace(
            "scores_output = \"probabilities\"",
            "scores_output = \"scores\"",
        )
    })
    .await?;
    let out = tokio::process::Command::new(binary("gateway")?)
        .arg("--config")
        .arg(&config)
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
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
    let out = tokio::process::Command::new(binary("gateway")?)
        .arg("--config")
        .arg(&config)
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("gateway.toml: auth.mode: the dev issuer is refused when server.environment = \"production\""),
        "{err}"
    );
    let bad = production.replace("timeout_ms = 1000", "timeout_ms = 0");
    std::fs::write(&config, bad)?;
    let out = tokio::process::Command::new(binary("gateway")?)
        .arg("--config")
        .arg(&config)
        .output()
        .await?;
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("gateway.toml: model[0].timeout_ms: must be at least 1"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn overload_is_shed_at_once_and_admitted_requests_succeed() -> Result<()> {
    let (dir, config) = scratch_gateway("shed", |c| {
        c.replace(
            "request_timeout_ms = 2000",
            "request_timeout_ms = 2000\nmax_concurrent_requests = 2",
        )
    })
    .await?;
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
    let metrics = http
        .get(format!("{}/metrics", gw.http))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(&format!(
            "mlgw_requests_total{{front=\"rest\",route=\"predict\",code=\"overloaded\"}} {shed}"
        )),
        "{metrics}"
    );
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

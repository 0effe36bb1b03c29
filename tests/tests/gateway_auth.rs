//! SSO on a running gateway process: tokens from the real oidc-provider are
//! accepted, and its key rotation is followed without a restart; a provider
//! that is down at start delays readiness, not the start; pilot groups and
//! scopes decide who may call what (403); and an attack corpus of bad tokens
//! is refused with 401 on both fronts while the gateway stays healthy.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use proto::gateway::v1 as pb;
use proto::gateway::v1::prediction_service_client::PredictionServiceClient;
use rig::gateway::{Bearer, GatewayProcess, assert_refused, challenge, client_with_token, scratch};
use rig::rig_env;
use rig::sso::{
    OidcProvider, TestIssuer, TestKey, client_credentials, kid_of, oidc_auth, sign_raw,
};
use serde_json::{Value, json};

const PREDICT_BODY: &str = r#"{"entity": {"customer_id": "c-1"}, "request_features": {"amount": 12.5, "is_card_present": true, "hour_of_day": 14}}"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// POSTs a prediction with `auth` as the Authorization header (None: none).
async fn predict(
    gw: &GatewayProcess,
    auth: Option<&str>,
    version: &str,
) -> Result<(u16, Value, Option<String>)> {
    let mut body: Value = serde_json::from_str(PREDICT_BODY)?;
    body["model_version"] = json!(version);
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/models/fraud_detector/predict", gw.http))
        .json(&body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let challenge = challenge(&r);
    Ok((status, r.json().await?, challenge))
}

fn grpc_request(version: &str) -> pb::PredictRequest {
    use pb::feature_value::Kind;
    let fv = |k: Kind| pb::FeatureValue { kind: Some(k) };
    pb::PredictRequest {
        model: "fraud_detector".into(),
        model_version: version.into(),
        entity: Some(pb::EntityKey {
            keys: HashMap::from([("customer_id".into(), "c-1".into())]),
        }),
        request_features: HashMap::from([
            ("amount".into(), fv(Kind::DoubleValue(12.5))),
            ("is_card_present".into(), fv(Kind::BoolValue(true))),
            ("hour_of_day".into(), fv(Kind::Int64Value(14))),
        ]),
    }
}

/// A gRPC Predict with these `authorization` metadata values.
async fn grpc_predict(
    gw: &GatewayProcess,
    auth: &[&str],
    version: &str,
) -> Result<Result<pb::PredictResponse, tonic::Status>> {
    let channel = gw.channel().await?;
    let mut client = PredictionServiceClient::new(channel);
    let mut req = tonic::Request::new(grpc_request(version));
    for a in auth {
        req.metadata_mut().append("authorization", a.parse()?);
    }
    Ok(client.predict(req).await.map(tonic::Response::into_inner))
}

async fn metrics(gw: &GatewayProcess) -> Result<String> {
    Ok(reqwest::get(format!("{}/metrics", gw.http))
        .await?
        .text()
        .await?)
}

#[tokio::test]
async fn provider_tokens_are_accepted_and_key_rotation_needs_no_restart() -> Result<()> {
    let provider = OidcProvider::start("rotate").await?;
    let auth = oidc_auth(&provider.issuer, "").replace(
        "jwks_min_refetch_s = 1",
        "jwks_min_refetch_s = 1\njwks_refresh_s = 2",
    );
    let (_dir, config) = scratch("rotate", &auth, |c| c).await?;
    let gw = GatewayProcess::start_ready(&config).await?;

    // A client-credentials token from the provider is accepted on both fronts.
    let old = client_credentials(&provider.issuer, "mlgw-service", None).await?;
    let (status, answer, _) = predict(&gw, Some(&format!("Bearer {old}")), "").await?;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["prediction_id"].is_string(), "{answer}");
    let g = grpc_predict(&gw, &[&format!("Bearer {old}")], "").await?;
    assert!(g.is_ok(), "{g:?}");

    // The provider rotates: a new key signs, the old one is still published.
    provider.rotate().await?;
    let new = client_credentials(&provider.issuer, "mlgw-service", None).await?;
    ensure!(kid_of(&new) != kid_of(&old), "the provider did not rotate");
    let t = Instant::now();
    let (status, answer, _) = predict(&gw, Some(&format!("Bearer {new}")), "").await?;
    assert_eq!(status, 200, "a token with the new kid, first try: {answer}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let (status, answer, _) = predict(&gw, Some(&format!("Bearer {old}")), "").await?;
    assert_eq!(status, 200, "the old key is still published: {answer}");

    // The old key leaves the JWKS: old tokens stop verifying at the next
    // refresh (every 2 s here), new ones keep working.
    provider.retire().await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, answer, _) = predict(&gw, Some(&format!("Bearer {old}")), "").await?;
        if status == 401 {
            assert_eq!(answer["code"], "invalid_token", "{answer}");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the retired key still verifies: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, answer, _) = predict(&gw, Some(&format!("Bearer {new}")), "").await?;
    assert_eq!(status, 200, "{answer}");

    // Provider outage: the cached keys keep serving, the gateway stays ready.
    provider.stop().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, answer, _) = predict(&gw, Some(&format!("Bearer {new}")), "").await?;
    assert_eq!(status, 200, "cached keys during an outage: {answer}");
    let ready = reqwest::get(format!("{}/readyz", gw.http))
        .await?
        .status()
        .as_u16();
    assert_eq!(ready, 200);
    let text = metrics(&gw).await?;
    let errors = rig::metrics::Page::parse(&text)?
        .value("mlgw_auth_key_fetches_total", &[("result", "error")]);
    assert!(errors.is_some_and(|n| n >= 1.0), "{text}");
    drop(gw);
    Ok(())
}

#[tokio::test]
async fn a_provider_down_at_start_delays_readiness_not_the_start() -> Result<()> {
    let provider = OidcProvider::start("down").await?;
    let token = client_credentials(&provider.issuer, "mlgw-service", None).await?;
    provider.stop().await?;
    let (_dir, config) = scratch("down", &oidc_auth(&provider.issuer, ""), |c| c).await?;
    let gw = GatewayProcess::start(&config).await?;
    let health = reqwest::get(format!("{}/healthz", gw.http))
        .await?
        .status()
        .as_u16();
    assert_eq!(health, 200, "the gateway serves without keys");
    let r = reqwest::get(format!("{}/readyz", gw.http)).await?;
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.text().await?.contains("signing keys are not loaded"));
    let (status, answer, _) = predict(&gw, Some(&format!("Bearer {token}")), "").await?;
    assert_refused(status, &answer, 503, "auth_unavailable");

    // The provider comes back: the retry loop (1, 2, 4 … s) loads the keys.
    provider.start_again().await?;
    gw.wait_ready(Duration::from_secs(40)).await?;
    let (status, answer, _) = predict(&gw, Some(&format!("Bearer {token}")), "").await?;
    assert_eq!(status, 200, "{answer}");
    drop(gw);
    Ok(())
}

#[tokio::test]
async fn pilot_groups_and_scopes_decide_who_may_call_what() -> Result<()> {
    let issuer = rig_env("MLGW_TEST_OIDC_ISSUER")?;
    // Version 1 is stable; version 2 is a pilot that members reach only
    // when they ask for it.
    let (_dir, config) = scratch("policy", &oidc_auth(&issuer, ""), |c| {
        c.replace(
            "[model.postprocess]",
            "[model.routing]\nstable = \"1\"\n[[model.routing.pilot]]\nversion = \"2\"\ngroups = [\"pilot-fraud-v2\"]\nauto = false\n[model.postprocess]",
        )
    })
    .await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let bearer = |t: &str| format!("Bearer {t}");
    let service = client_credentials(&issuer, "mlgw-service", None).await?;
    let pilot = client_credentials(&issuer, "mlgw-pilot", None).await?;
    let admin = client_credentials(&issuer, "mlgw-admin", None).await?;
    let nogroups = client_credentials(&issuer, "mlgw-nogroups", None).await?;

    // The pinned version is open to the team; the pilot version only to the pilot group.
    let (status, a, _) = predict(&gw, Some(&bearer(&service)), "").await?;
    assert_eq!(
        (status, a["model_version"].as_str()),
        (200, Some("1")),
        "{a}"
    );
    let (status, a, challenge) = predict(&gw, Some(&bearer(&service)), "2").await?;
    assert_refused(status, &a, 403, "permission_denied");
    assert_eq!(
        a["message"],
        "caller 'mlgw-service' is not in a pilot group of model 'fraud_detector' version '2'"
    );
    assert!(challenge.is_some_and(|c| c.contains("insufficient_scope")));
    let g = grpc_predict(&gw, &[&bearer(&service)], "2").await?;
    assert_eq!(
        g.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );
    let (status, a, _) = predict(&gw, Some(&bearer(&pilot)), "2").await?;
    assert_eq!(
        (status, a["model_version"].as_str()),
        (200, Some("2")),
        "{a}"
    );
    let g = grpc_predict(&gw, &[&bearer(&pilot)], "2").await?;
    assert_eq!(g.map(|r| r.model_version).ok().as_deref(), Some("2"));

    // No group that may predict.
    let (status, a, _) = predict(&gw, Some(&bearer(&nogroups)), "").await?;
    assert_eq!(status, 403);
    assert_eq!(
        a["message"],
        "caller 'mlgw-nogroups' is not in a group allowed to predict with model 'fraud_detector'"
    );
    // A token narrowed to the feedback scope cannot predict.
    let narrow = client_credentials(&issuer, "mlgw-service", Some("feedback")).await?;
    let (status, a, _) = predict(&gw, Some(&bearer(&narrow)), "").await?;
    assert_eq!(status, 403, "{a}");
    assert!(
        a["message"]
            .as_str()
            .is_some_and(|m| m.contains("lacks a scope allowed to predict")),
        "{a}"
    );

    // Allowed to predict is not allowed to push features: that needs the push scope.
    let push = json!({"rows": [{"entity": {"customer_id": "c-1"}, "values": {"distinct_merchants_24h": 2}}]});
    let url = format!("{}/v1/features/customer_activity/push", gw.http);
    let r = client_with_token(&service)?
        .post(&url)
        .json(&push)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await?;
    assert_eq!(
        body["message"],
        "caller 'mlgw-service' lacks a scope allowed to push features"
    );
    let r = client_with_token(&admin)?
        .post(&url)
        .json(&push)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await?);
    let channel = gw.channel().await?;
    let mut features =
        proto::gateway::v1::feature_service_client::FeatureServiceClient::with_interceptor(
            channel,
            Bearer::new(&service)?,
        );
    let denied = features
        .push_features(pb::PushFeaturesRequest {
            view: "customer_activity".into(),
            rows: vec![],
            events: vec![],
        })
        .await
        .err();
    assert_eq!(
        denied.map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );

    let text = metrics(&gw).await?;
    assert!(
        text.contains("mlgw_auth_denied_total{front=\"rest\",api=\"predict\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("mlgw_auth_denied_total{front=\"rest\",api=\"push\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mlgw_auth_denied_total{front=\"grpc\",api=\"push\"} 1"),
        "{text}"
    );
    drop(gw);
    Ok(())
}

/// How a corpus entry presents itself.
enum Presented {
    /// No Authorization header.
    Nothing,
    /// One Authorization header.
    Header(String),
    /// Two Authorization headers.
    Twice(String),
    /// A token in the query string, no header.
    Query(String),
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn an_attack_corpus_is_refused_with_401_and_the_gateway_stays_healthy() -> Result<()> {
    let key = TestKey::generate("k1")?;
    let attacker = TestKey::generate("k1")?; // same kid, other key
    let other = TestKey::generate("k-other")?;
    let issuer = TestIssuer::start(&[key.jwk()]).await?;
    let other_issuer = TestIssuer::start(&[other.jwk()]).await?;
    let auth = format!(
        r#"
[auth]
mode = "oidc"
issuer = "{}"
audience = "mlgw-gateway"
[[auth.allow]]
api = "predict"
groups = ["fraud-team"]
scopes = ["predict"]
"#,
        issuer.issuer
    );
    let (_dir, config) = scratch("corpus", &auth, |c| c).await?;
    let gw = GatewayProcess::start_ready(&config).await?;

    let t = now();
    let iss = issuer.issuer.clone();
    let claims = |edit: &dyn Fn(&mut Value)| {
        let mut c = json!({"iss": iss, "aud": "mlgw-gateway", "sub": "svc-a", "iat": t, "exp": t + 300,
            "groups": ["fraud-team"], "scope": "predict"});
        edit(&mut c);
        c
    };
    let header = |edit: &dyn Fn(&mut Value)| {
        let mut h = json!({"alg": "RS256", "typ": "JWT", "kid": "k1"});
        edit(&mut h);
        h.to_string()
    };
    let signed_h =
        |edit: &dyn Fn(&mut Value)| key.sign_raw(&header(edit), &claims(&|_| {}).to_string());
    let signed_c = |edit: &dyn Fn(&mut Value)| key.sign(&claims(edit));

    // Sanity: the well-formed token passes, so each refusal below is the attack's doing.
    let good = signed_c(&|_| {})?;
    let (status, a, _) = predict(&gw, Some(&format!("Bearer {good}")), "").await?;
    assert_eq!(status, 200, "{a}");

    let body = b64(&claims(&|_| {}).to_string());
    let good_parts: Vec<&str> = good.split('.').collect();
    let mut flipped = good_parts[2].to_owned();
    let last = if flipped.ends_with('A') { "B" } else { "A" };
    flipped.replace_range(flipped.len() - 1.., last);
    let hs = |secret: &[u8]| {
        sign_raw(
            &json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}).to_string(),
            &claims(&|_| {}).to_string(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
    };
    let n_text = key.jwk()["n"].as_str().unwrap_or_default().to_owned();

    let bearer = |t: String| Presented::Header(format!("Bearer {t}"));
    let corpus: Vec<(&str, Presented)> = vec![
        ("alg none, empty signature", bearer(format!("{}.{body}.", b64(r#"{"alg":"none","typ":"JWT"}"#)))),
        ("alg none with a signature", bearer(format!("{}.{body}.{}", b64(r#"{"alg":"none","kid":"k1"}"#), good_parts[2]))),
        ("alg None (case)", bearer(format!("{}.{body}.{}", b64(r#"{"alg":"None","kid":"k1"}"#), good_parts[2]))),
        ("HS256 keyed with the public key (DER)", bearer(hs(&key.public_der)?)),
        ("HS256 keyed with the JWK's n", bearer(hs(n_text.as_bytes())?)),
        ("RS512 is not an allowed algorithm", bearer(key_sign_alg(&key, "RS512", &claims(&|_| {}))?)),
        ("PS256 is not an allowed algorithm", bearer(key_sign_alg(&key, "PS256", &claims(&|_| {}))?)),
        ("unknown kid", bearer(signed_h(&|h| h["kid"] = json!("nope"))?)),
        ("kid with path traversal", bearer(signed_h(&|h| h["kid"] = json!("../../../../etc/passwd"))?)),
        ("kid is a number", bearer(signed_h(&|h| h["kid"] = json!(1))?)),
        ("jku to another JWKS", bearer(signed_h(&|h| h["jku"] = json!(format!("{}/jwks", other_issuer.issuer)))?)),
        ("x5u header", bearer(signed_h(&|h| h["x5u"] = json!("http://127.0.0.1:9/cert.pem"))?)),
        ("embedded jwk of the attacker", bearer(attacker.sign_raw(&header(&|h| h["jwk"] = attacker.jwk()), &claims(&|_| {}).to_string())?)),
        ("x5c chain", bearer(signed_h(&|h| h["x5c"] = json!(["MIIB"]))?)),
        ("crit header", bearer(signed_h(&|h| h["crit"] = json!(["exp"]))?)),
        ("nested JWT (cty)", bearer(signed_h(&|h| h["cty"] = json!("JWT"))?)),
        ("enc header on a JWS", bearer(signed_h(&|h| h["enc"] = json!("A256GCM"))?)),
        ("zip header", bearer(signed_h(&|h| h["zip"] = json!("DEF"))?)),
        ("duplicate header member", bearer(key.sign_raw(r#"{"alg":"RS256","kid":"k1","alg":"none"}"#, &claims(&|_| {}).to_string())?)),
        ("header is not JSON", bearer(format!("{}.{body}.{}", b64("not json"), good_parts[2]))),
        ("JWE-shaped (5 parts)", bearer(format!("{}.a.b.c.d", b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)))),
        ("expired", bearer(signed_c(&|c| { c["iat"] = json!(t - 7200); c["exp"] = json!(t - 3600); })?)),
        ("nbf in the future", bearer(signed_c(&|c| c["nbf"] = json!(t + 3600))?)),
        ("exp as a string", bearer(signed_c(&|c| c["exp"] = json!((t + 300).to_string()))?)),
        ("expired exp as a string", bearer(signed_c(&|c| c["exp"] = json!((t - 3600).to_string()))?)),
        ("nbf as a string", bearer(signed_c(&|c| c["nbf"] = json!((t + 3600).to_string()))?)),
        ("exp as a float", bearer(signed_c(&|c| c["exp"] = json!(t as f64 + 300.5))?)),
        ("negative exp", bearer(signed_c(&|c| c["exp"] = json!(-1))?)),
        ("wrong iss", bearer(signed_c(&|c| c["iss"] = json!("https://evil.example"))?)),
        ("iss as an array", bearer(signed_c(&|c| c["iss"] = json!([iss, "https://evil.example"]))?)),
        ("wrong aud", bearer(signed_c(&|c| c["aud"] = json!("other-service"))?)),
        ("aud is a number", bearer(signed_c(&|c| c["aud"] = json!(7))?)),
        ("missing exp", bearer(signed_c(&|c| { c.as_object_mut().map(|m| m.remove("exp")); })?)),
        ("missing sub", bearer(signed_c(&|c| { c.as_object_mut().map(|m| m.remove("sub")); })?)),
        ("empty sub", bearer(signed_c(&|c| c["sub"] = json!(""))?)),
        ("missing iss", bearer(signed_c(&|c| { c.as_object_mut().map(|m| m.remove("iss")); })?)),
        ("missing aud", bearer(signed_c(&|c| { c.as_object_mut().map(|m| m.remove("aud")); })?)),
        ("lifetime of 48 h", bearer(signed_c(&|c| c["exp"] = json!(t + 48 * 3600))?)),
        ("no iat and 48 h to go", bearer(signed_c(&|c| { c.as_object_mut().map(|m| m.remove("iat")); c["exp"] = json!(t + 48 * 3600); })?)),
        ("iat in the future", bearer(signed_c(&|c| { c["iat"] = json!(t + 3600); c["exp"] = json!(t + 3900); })?)),
        ("groups is not a list", bearer(signed_c(&|c| c["groups"] = json!({"a": 1}))?)),
        ("duplicate claims", bearer(key.sign_raw(&header(&|_| {}), &format!(
            r#"{{"iss":"{iss}","aud":"mlgw-gateway","sub":"svc-a","iat":{t},"exp":{},"groups":["fraud-team"],"scope":"predict","sub":"admin"}}"#, t + 300))?)),
        ("claims are not an object", bearer(key.sign_raw(&header(&|_| {}), "[1,2,3]")?)),
        ("signature stripped (2 parts)", bearer(format!("{}.{}", good_parts[0], good_parts[1]))),
        ("signature stripped (empty)", bearer(format!("{}.{}.", good_parts[0], good_parts[1]))),
        ("signature altered", bearer(format!("{}.{}.{flipped}", good_parts[0], good_parts[1]))),
        ("claims altered after signing", bearer(format!("{}.{}.{}", good_parts[0], b64(&claims(&|c| c["sub"] = json!("admin")).to_string()), good_parts[2]))),
        ("signed by another key with the same kid", bearer(attacker.sign(&claims(&|_| {}))?)),
        ("another issuer's valid token", bearer(other.sign(&claims(&|c| c["iss"] = json!(other_issuer.issuer)))?)),
        ("another issuer's key, our iss", bearer(other.sign(&claims(&|_| {}))?)),
        ("truncated", bearer(good[..good.len() / 2].to_owned())),
        ("not base64", bearer("eyJ!!.###.$$$".to_owned())),
        ("padded base64", bearer(format!("{}=.{}.{}", good_parts[0], good_parts[1], good_parts[2]))),
        ("oversized", bearer(signed_c(&|c| c["pad"] = json!("x".repeat(9000)))?)),
        ("no Authorization header", Presented::Nothing),
        ("Basic scheme", Presented::Header("Basic bWxndzpzZWNyZXQ=".to_owned())),
        ("token without a scheme", Presented::Header(good.clone())),
        ("Bearer with no token", Presented::Header("Bearer ".to_owned())),
        ("two Authorization headers", Presented::Twice(format!("Bearer {good}"))),
        ("token in the query string", Presented::Query(good.clone())),
    ];
    assert!(corpus.len() >= 30, "{}", corpus.len());
    let fetches_before = issuer.jwks_fetches();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/models/fraud_detector/predict", gw.http);
    let mut failures = Vec::new();
    for (name, presented) in &corpus {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .body(PREDICT_BODY);
        let mut grpc_auth: Vec<String> = Vec::new();
        let mut secret = None;
        match presented {
            Presented::Nothing => {}
            Presented::Header(h) => {
                req = req.header("authorization", h);
                grpc_auth.push(h.clone());
                secret = h.strip_prefix("Bearer ").map(str::to_owned);
            }
            Presented::Twice(h) => {
                req = req.header("authorization", h).header("authorization", h);
                grpc_auth.extend([h.clone(), h.clone()]);
            }
            Presented::Query(tok) => {
                req = http
                    .post(format!("{url}?access_token={tok}"))
                    .header("content-type", "application/json")
                    .body(PREDICT_BODY);
            }
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let challenge = challenge(&r);
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let leaks = secret
            .as_deref()
            .is_some_and(|s| s.len() > 20 && body.to_string().contains(s));
        if status != 401
            || body["code"] != "invalid_token"
            || !challenge
                .as_deref()
                .is_some_and(|c| c.starts_with("Bearer ") && c.contains("error=\"invalid_token\""))
            || leaks
        {
            failures.push(format!("REST {name}: {status} {body} {challenge:?}"));
        }
        if !matches!(presented, Presented::Query(_)) {
            let refs: Vec<&str> = grpc_auth.iter().map(String::as_str).collect();
            match grpc_predict(&gw, &refs, "").await? {
                Err(s) if s.code() == tonic::Code::Unauthenticated => {}
                other => failures.push(format!("gRPC {name}: {other:?}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "accepted or mis-answered:\n{}",
        failures.join("\n")
    );

    // A flood of unknown kids costs the issuer at most a refetch per 10 s.
    let extra = issuer.jwks_fetches() - fetches_before;
    assert!(extra <= 2, "{extra} JWKS fetches during the corpus");

    // Still healthy, still serving the good token, and the refusals are counted.
    let health = reqwest::get(format!("{}/healthz", gw.http))
        .await?
        .status()
        .as_u16();
    assert_eq!(health, 200);
    let (status, a, _) = predict(&gw, Some(&format!("Bearer {good}")), "").await?;
    assert_eq!(status, 200, "{a}");
    let text = metrics(&gw).await?;
    for reason in [
        "algorithm",
        "unknown_kid",
        "key_reference",
        "expired",
        "signature",
        "claims",
        "too_large",
        "missing",
        "scheme",
        "issuer",
        "audience",
        "lifetime",
        "crit",
        "encrypted",
    ] {
        assert!(
            text.contains(&format!(
                "mlgw_auth_failures_total{{front=\"rest\",reason=\"{reason}\"}}"
            )),
            "no {reason} in\n{text}"
        );
    }
    drop(gw);
    Ok(())
}

/// `claims` signed by `key` with another RSA algorithm.
fn key_sign_alg(key: &TestKey, alg: &str, claims: &Value) -> Result<String> {
    let header = json!({"alg": alg, "typ": "JWT", "kid": key.kid}).to_string();
    key.sign_raw_with(
        &header,
        &claims.to_string(),
        match alg {
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            _ => bail!("{alg}"),
        },
    )
    .context("sign")
}

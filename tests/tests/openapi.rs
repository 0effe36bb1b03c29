//! The served OpenAPI document against the real gateway: it is the committed
//! `gateway/openapi.json`, every route it lists is served (and the dev
//! issuer's routes, left out on purpose, are served too), and real answers
//! (predictions, a batch, a push, feedback, 400, 401, 403, 404, the admin
//! list) fit the schema the document declares for their path, method and
//! status; and the document passes the OpenAPI 3.1 schema checks of
//! openapi-spec-validator (in the rig's deploy venv).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rig::gateway::{DEV_AUTH, GatewayProcess, client_with_token};
use serde_json::{Value, json};

/// The schema the document declares for an answer, with the document's
/// components beside it so that `#/components/...` references resolve.
fn response_schema(doc: &Value, path: &str, method: &str, status: u16) -> Result<Value> {
    let mut response = &doc["paths"][path][method]["responses"][status.to_string()];
    if let Some(r) = response["$ref"].as_str() {
        let name = r
            .strip_prefix("#/components/responses/")
            .context("a response reference outside components")?;
        response = &doc["components"]["responses"][name];
    }
    let schema = &response["content"]["application/json"]["schema"];
    if !schema.is_object() {
        bail!("no JSON schema for {method} {path} {status}");
    }
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    Ok(root)
}

/// Fails when `body` does not fit the schema of `method path status`.
fn check(doc: &Value, method: &str, path: &str, status: u16, body: &Value) -> Result<()> {
    let schema = response_schema(doc, path, method, status)?;
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .map_err(|e| anyhow::anyhow!("schema of {method} {path} {status}: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if !errors.is_empty() {
        bail!("{method} {path} {status}: {body} does not fit: {errors:?}");
    }
    Ok(())
}

/// Sends a request and returns its status and JSON body.
async fn call(
    http: &reqwest::Client,
    method: &str,
    url: String,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let mut r = match method {
        "get" => http.get(url),
        _ => http.post(url),
    };
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json::<Value>().await?))
}

/// A documented path with its parameters filled in: the example model and
/// view, and a tuner job that does not exist.
fn example_path(path: &str) -> String {
    path.replace("{model}", "fraud_detector")
        .replace("{view}", "customer_activity")
        .replace("{job}", "no_such_job")
}

/// Sends a request, asserts the answer's status is the operation's
/// (method, documented path, status) and that its body fits the schema the
/// document declares for it; returns the body.
async fn answers_as_documented(
    http: &reqwest::Client,
    doc: &Value,
    (method, path, status): (&str, &str, u16),
    url: String,
    body: Option<Value>,
) -> Result<Value> {
    let (got, answer) = call(http, method, url, body).await?;
    assert_eq!(got, status, "{method} {path}: {answer}");
    check(doc, method, path, status, &answer)?;
    Ok(answer)
}

#[tokio::test]
async fn answers_fit_the_document() -> Result<()> {
    // Admin is granted to the dev token here, so the admin list answers.
    let admin = format!("{DEV_AUTH}[[auth.allow]]\napi = \"admin\"\ngroups = [\"fraud-team\"]\n");
    let (_dir, config) = rig::gateway::scratch("openapi", &admin, |t| t).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    let served = reqwest::get(format!("{}/openapi.json", gw.http)).await?;
    assert_eq!(served.status().as_u16(), 200);
    let text = served.text().await?;
    let committed = std::fs::read_to_string(rig::workspace_root().join("gateway/openapi.json"))?;
    assert!(
        text == committed,
        "the served document is not gateway/openapi.json"
    );
    let doc: Value = serde_json::from_str(&text)?;
    let base = gw.http.clone();
    let features = json!({"amount": 980.0, "is_card_present": false, "hour_of_day": 3, "distance_from_home_km": 1200.0});

    let predict = "/v1/models/{model}/predict";
    let url = format!("{base}/v1/models/fraud_detector/predict");
    let one = json!({"entity": {"customer_id": "c-1"}, "request_features": features});
    let answer = answers_as_documented(
        &http,
        &doc,
        ("post", predict, 200),
        url.clone(),
        Some(one.clone()),
    )
    .await?;
    let prediction_id = answer["prediction_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let anonymous = reqwest::Client::new();
    let batch = json!({"requests": [one.clone(), {"entity": {"customer_id": "c-2"}, "request_features": features}]});
    let push = json!({"rows": [{"entity": {"customer_id": "c-1"}, "values": {"distinct_merchants_24h": 12}}]});
    let feedback = json!({"prediction_id": prediction_id, "label": "fraud"});
    // 400: an unknown field in the body; 401: no token; 404: an unknown model.
    let unknown_field = Some(json!({"entity": {}, "x": 1}));
    answers_as_documented(
        &http,
        &doc,
        ("post", predict, 400),
        url.clone(),
        unknown_field,
    )
    .await?;
    let no_token = ("post", predict, 401);
    answers_as_documented(&anonymous, &doc, no_token, url, Some(one.clone())).await?;
    let unknown_model = format!("{base}/v1/models/no_such_model/predict");
    answers_as_documented(
        &http,
        &doc,
        ("post", predict, 404),
        unknown_model,
        Some(one),
    )
    .await?;
    // 200 from every other operation, on the example model and view.
    let cases = [
        ("post", "/v1/models/{model}/predict-batch", Some(batch)),
        ("post", "/v1/features/{view}/push", Some(push)),
        ("post", "/v1/feedback", Some(feedback)),
        ("get", "/v1/admin/models", None),
        ("get", "/v1/admin/models/{model}/routing", None),
        ("get", "/healthz", None),
        ("get", "/readyz", None),
    ];
    for (method, path, body) in cases {
        let url = format!("{base}{}", example_path(path));
        answers_as_documented(&http, &doc, (method, path, 200), url, body).await?;
    }
    // Asynchronous predictions are off in this config: 501, as documented.
    let submit = "/v1/models/{model}/predict-async";
    let url = format!("{base}{}", example_path(submit));
    answers_as_documented(&http, &doc, ("post", submit, 501), url, Some(json!({}))).await?;
    // A scoring run started here (202), then its batch listed (200).
    let run = "/v1/admin/scoring/jobs/{job}/run";
    let url = format!("{base}/v1/admin/scoring/jobs/customer_risk_daily/run");
    answers_as_documented(&http, &doc, ("post", run, 202), url, None).await?;
    let batches = "/v1/admin/scoring/jobs/{job}/batches";
    let url = format!("{base}/v1/admin/scoring/jobs/customer_risk_daily/batches");
    let listed = answers_as_documented(&http, &doc, ("get", batches, 200), url, None).await?;
    assert!(listed["batches"].is_array(), "{listed}");
    let jobs = "/v1/admin/scoring/jobs";
    let url = format!("{base}{jobs}");
    let listed = answers_as_documented(&http, &doc, ("get", jobs, 200), url, None).await?;
    assert!(
        listed["jobs"]
            .as_array()
            .is_some_and(|j| j.iter().any(|j| j["job"] == "customer_risk_daily")),
        "{listed}"
    );
    drop(gw);

    // 403: the same token without the admin grant.
    let (_dir, config) = rig::gateway::scratch("openapi_403", DEV_AUTH, |t| t).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    let url = format!("{}/v1/admin/models", gw.http);
    answers_as_documented(&http, &doc, ("get", "/v1/admin/models", 403), url, None).await?;
    drop(gw);
    Ok(())
}

/// Router ⇄ document: every operation the document lists is served (no
/// route-not-found, no wrong method), and the routes it leaves out on
/// purpose (the dev issuer's) are served but not listed. The router and
/// the document come from one route table, so no other route exists.
#[tokio::test]
async fn the_router_serves_what_the_document_lists() -> Result<()> {
    let (_dir, config) = rig::gateway::scratch("openapi_routes", DEV_AUTH, |t| t).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    let doc = rig::get_json(&http, &format!("{}/openapi.json", gw.http)).await?;
    let paths = doc["paths"].as_object().context("no paths")?;
    assert_eq!(
        paths
            .values()
            .map(|p| p.as_object().map_or(0, |o| o.len()))
            .sum::<usize>(),
        23
    );
    for (path, item) in paths {
        let url = format!("{}{}", gw.http, example_path(path));
        for method in item.as_object().context("path item")?.keys() {
            let r = match method.as_str() {
                "get" => http.get(&url),
                "post" => http.post(&url).json(&json!({})),
                other => bail!("unexpected method {other}"),
            }
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
            let status = r.status().as_u16();
            let body = r.text().await?;
            assert_ne!(status, 405, "{method} {path}: {body}");
            assert!(
                !body.contains("no such route"),
                "{method} {path} is listed but not served"
            );
        }
        // The other methods are not served on a listed path.
        for method in ["get", "post"] {
            if item.get(method).is_none() {
                let r = match method {
                    "get" => http.get(&url),
                    _ => http.post(&url),
                }
                .send()
                .await?;
                assert_eq!(
                    r.status().as_u16(),
                    405,
                    "{method} {path} is served but not listed"
                );
            }
        }
    }
    // Served (whatever they answer to an empty request), never listed.
    for (method, path, _why) in gateway::front::rest::UNDOCUMENTED
        .iter()
        .chain(gateway::console::ROUTES)
    {
        assert!(paths.get(*path).is_none(), "{path} is listed");
        let r = match *method {
            "GET" => http.get(format!("{}{path}", gw.http)),
            "POST" => http.post(format!("{}{path}", gw.http)),
            other => bail!("unexpected method {other}"),
        }
        .send()
        .await?;
        assert!(
            ![404, 405].contains(&r.status().as_u16()),
            "{method} {path} is not served: {}",
            r.status()
        );
    }
    drop(gw);
    Ok(())
}

/// Runs the OpenAPI Initiative's schema checks (openapi-spec-validator, in
/// the rig's deploy venv) on `doc`; the validator's message on failure.
fn validate_with_openapi_spec_validator(
    doc: &Value,
    tag: &str,
) -> Result<std::result::Result<(), String>> {
    let python = rig::rig_env("MLGW_TEST_DEPLOY_PYTHON")?;
    let file = std::env::temp_dir().join(format!("mlgw-openapi-{tag}-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec(doc)?)?;
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))",
        ])
        .arg(&file)
        .output()
        .with_context(|| format!("running {python}"))?;
    std::fs::remove_file(&file)?;
    Ok(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

#[tokio::test]
async fn the_served_document_is_valid_for_the_openapi_version_it_declares() -> Result<()> {
    let (_dir, config) = rig::gateway::scratch("openapi_valid", DEV_AUTH, |t| t).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let http = client_with_token(gw.token()?)?;
    let doc = rig::get_json(&http, &format!("{}/openapi.json", gw.http)).await?;
    assert_eq!(doc["openapi"], "3.1.0");
    if let Err(why) = validate_with_openapi_spec_validator(&doc, "served")? {
        bail!("the served document is not valid OpenAPI 3.1:\n{why}");
    }
    // The validator does refuse a broken document (a schema of no type).
    let mut broken = doc.clone();
    broken["components"]["schemas"]
        .as_object_mut()
        .context("component schemas")?
        .insert("Broken".into(), json!({"type": "nope"}));
    let refused = validate_with_openapi_spec_validator(&broken, "broken")?;
    assert!(
        refused.as_ref().is_err_and(|why| why.contains("nope")),
        "{refused:?}"
    );
    Ok(())
}

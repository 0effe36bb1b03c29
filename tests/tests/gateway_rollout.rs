//! Rollout stages on running processes (gateway, model-servers, the rig's
//! oidc-provider): a sticky canary split over 10,000 entities and a weight
//! change that moves only stable callers; shadow versions that are compared
//! in a report but never reach, slow or fail a caller (also when their
//! model-server is stopped or hangs), with drops counted; pilot versions for
//! their groups only; the admin API for the admin scope only, on both fronts;
//! rollback in one call; routing that follows the config file and other
//! replicas, and survives a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use feature_store::store::LogWindow;
use feature_store::store::embedded::EmbeddedStore;
use feature_store::store::prelude::*;
use futures_util::StreamExt as _;
use proto::gateway::v1 as pb;
use rig::gateway::{
    Bearer, DEV_AUTH, GatewayProcess, assert_admin_routes_documented, assert_refused,
    client_with_token, scratch,
};
use rig::metrics::Page;
use rig::sso::{client_credentials, oidc_auth};
use rig::{ModelServerProcess, binary, example_repository, rig_env};
use serde_json::{Value, json};

/// The dev token may also use the admin API.
fn dev_auth_with_admin() -> String {
    format!("{DEV_AUTH}[[auth.allow]]\napi = \"admin\"\ngroups = [\"fraud-team\"]\n")
}

/// `[model.routing]` (and more model keys) put in front of the model's
/// post-processing table of the rig's config text.
fn with_model(extra: &str) -> impl Fn(String) -> String {
    let extra = extra.to_owned();
    move |c: String| {
        c.replace(
            "[model.postprocess]",
            &format!("{extra}\n[model.postprocess]"),
        )
    }
}

/// A prediction request; the request features vary with the entity's
/// number, so different entities are different inputs.
fn body(entity: &str) -> Value {
    let n: u64 = entity
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0);
    json!({"entity": {"customer_id": entity},
           "request_features": {"amount": 5.0 + (n * 37 % 1500) as f64, "is_card_present": !n.is_multiple_of(3),
                                "hour_of_day": n % 24, "distance_from_home_km": (n * 13 % 900) as f64}})
}

/// One REST prediction: (status, answer).
async fn predict(client: &reqwest::Client, gw: &GatewayProcess, b: &Value) -> Result<(u16, Value)> {
    let r = client
        .post(format!("{}/v1/models/fraud_detector/predict", gw.http))
        .json(b)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

/// Predicts for every entity (32 at a time); entity → (version, route).
async fn versions_of(
    client: &reqwest::Client,
    gw: &GatewayProcess,
    entities: &[String],
) -> Result<HashMap<String, (String, String)>> {
    let answers: Vec<Result<(String, (String, String))>> =
        futures_util::stream::iter(entities.iter().cloned())
            .map(|e| async move {
                let (status, a) = predict(client, gw, &body(&e)).await?;
                ensure!(status == 200, "{e}: {status} {a}");
                let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
                Ok((e, (s("model_version"), s("route"))))
            })
            .buffer_unordered(32)
            .collect()
            .await;
    answers.into_iter().collect()
}

/// `POST /v1/admin/models/fraud_detector/routing` with `action`.
async fn change(
    client: &reqwest::Client,
    gw: &GatewayProcess,
    action: Value,
) -> Result<(u16, Value)> {
    let r = client
        .post(format!(
            "{}/v1/admin/models/fraud_detector/routing",
            gw.http
        ))
        .json(&action)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

fn canary_share(v: &HashMap<String, (String, String)>) -> f64 {
    let canary = v.values().filter(|(_, route)| route == "canary").count();
    canary as f64 * 100.0 / v.len() as f64
}

/// Asserts that the routing change `action` is refused with `status` and
/// error `code`.
async fn change_refused(
    client: &reqwest::Client,
    gw: &GatewayProcess,
    action: Value,
    status: u16,
    code: &str,
) -> Result<()> {
    let (got, answer) = change(client, gw, action).await?;
    assert_refused(got, &answer, status, code);
    Ok(())
}

#[tokio::test]
async fn the_canary_split_is_sticky_and_a_higher_weight_moves_only_stable_callers() -> Result<()> {
    let routing = "[model.routing]\nstable = \"1\"\ncanary = \"2\"\ncanary_percent = 10\nsticky_by = \"entity\"";
    let (dir, config) = scratch("canary", &dev_auth_with_admin(), with_model(routing)).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let client = client_with_token(gw.token()?)?;
    let entities: Vec<String> = (0..10_000).map(|i| format!("c-{i:05}")).collect();

    let first = versions_of(&client, &gw, &entities).await?;
    let share = canary_share(&first);
    assert!((share - 10.0).abs() <= 1.5, "canary share {share:.2} %");
    for (e, (version, route)) in &first {
        let want = if route == "canary" { "2" } else { "1" };
        assert_eq!(
            (
                version.as_str(),
                ["canary", "stable"].contains(&route.as_str())
            ),
            (want, true),
            "{e}"
        );
    }
    // The same callers again: each gets the version it had.
    let again = versions_of(&client, &gw, &entities[..1000]).await?;
    for (e, v) in &again {
        assert_eq!(Some(v), first.get(e), "{e} changed version");
    }

    // 10 % → 20 %: callers move from stable to canary only.
    let (status, a) = change(
        &client,
        &gw,
        json!({"action": "set_canary_percent", "percent": 20, "reason": "metrics look good"}),
    )
    .await?;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["current"]["canary"]["percent"], 20.0);
    let last = &a["history"][a["history"].as_array().map_or(0, Vec::len) - 1];
    assert_eq!(last["what"], "canary '2' at 10% → 20%");
    assert_eq!(
        (last["by"].as_str(), last["reason"].as_str()),
        (Some("dev-user"), Some("metrics look good"))
    );
    let second = versions_of(&client, &gw, &entities).await?;
    let share = canary_share(&second);
    assert!(
        (share - 20.0).abs() <= 1.5,
        "canary share {share:.2} % after raising to 20"
    );
    let mut moved = 0;
    for (e, (_, route)) in &first {
        let now = &second[e].1;
        if route == "canary" {
            assert_eq!(now, "canary", "{e} went back from canary to stable");
        } else if now == "canary" {
            moved += 1;
        }
    }
    assert!(moved > 500, "only {moved} callers moved to the canary");

    // Every answer is in the prediction log with its routing decision.
    let log = EmbeddedStore::open(&dir.join("features.redb"))?;
    // The log is written in batches: wait until every record is there.
    let deadline = Instant::now() + Duration::from_secs(20);
    let routes = loop {
        let to = std::time::SystemTime::now() + Duration::from_secs(1);
        let entries = log
            .read_log(LogWindow {
                from: to - Duration::from_secs(3600),
                to,
                limit: 100_000,
            })
            .await?;
        let mut routes: BTreeMap<(String, String), usize> = BTreeMap::new();
        for e in &entries {
            *routes
                .entry((
                    e.prediction.route.clone(),
                    e.prediction.model_version.clone(),
                ))
                .or_default() += 1;
        }
        if entries.len() >= 21_000 || Instant::now() > deadline {
            break routes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let logged_canary = routes
        .get(&("canary".to_owned(), "2".to_owned()))
        .copied()
        .unwrap_or(0);
    let answered_canary = [&first, &again, &second]
        .iter()
        .map(|m| m.values().filter(|(_, r)| r == "canary").count())
        .sum::<usize>();
    assert_eq!(logged_canary, answered_canary, "{routes:?}");
    assert_eq!(
        routes
            .keys()
            .map(|(r, _)| r.as_str())
            .filter(|r| !["canary", "stable"].contains(r))
            .count(),
        0,
        "{routes:?}"
    );
    drop(gw);
    Ok(())
}

/// A TCP port that accepts connections and never answers: a hung
/// model-server.
fn black_hole() -> Result<(std::net::TcpListener, String)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", l.local_addr()?);
    Ok((l, url))
}

/// The gateway's `/metrics`, parsed.
async fn metrics(gw: &GatewayProcess) -> Result<Page> {
    Page::scrape(&reqwest::Client::new(), &gw.http).await
}

/// Waits until the series written `series` (`name{labels}` as exposed)
/// reaches `at_least`, and returns its value.
async fn wait_metric(gw: &GatewayProcess, series: &str, at_least: f64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page = metrics(gw).await?;
        let v = page.get(series).unwrap_or(0.0);
        if v >= at_least {
            return Ok(v);
        }
        if Instant::now() > deadline {
            // With the metric's other series (e.g. the other results).
            let name = series.split('{').next().unwrap_or(series);
            let others: Vec<_> = page.series(name).collect();
            bail!("{series} is {v}, expected at least {at_least}; {others:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn admin_cli(gw: &GatewayProcess, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(binary("mlgw-admin")?)
        .args(["--url", &gw.http, "--token", gw.token()?])
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "mlgw-admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn shadows_are_compared_but_never_reach_slow_or_fail_a_caller() -> Result<()> {
    // Version 2 as a shadow on a model-server of its own; version 3 "runs"
    // on a model-server that hangs.
    let mut shadow_server = ModelServerProcess::start(&example_repository(), &[]).await?;
    shadow_server.wait_ready(Duration::from_secs(60)).await?;
    let (_hole, hung) = black_hole()?;
    let model = format!(
        "[model.endpoints]\n\"2\" = \"{}\"\n\"3\" = \"{hung}\"\n[model.routing]\nstable = \"1\"",
        shadow_server.grpc_url
    );
    let (_dir, config) = scratch("shadow", &dev_auth_with_admin(), |c| {
        with_model(&model)(c).replace(
            "[cache]",
            "[rollout]\nshadow_concurrency = 4\nshadow_timeout_ms = 1500\n[cache]",
        )
    })
    .await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let client = client_with_token(gw.token()?)?;
    let entities: Vec<String> = (0..60).map(|i| format!("c-{i:04}")).collect();
    let score = |a: &Value| a["outputs"][0]["score"].as_f64();
    let mut baseline = HashMap::new();
    for e in &entities {
        let (status, a) = predict(&client, &gw, &body(e)).await?;
        assert_eq!(status, 200, "{a}");
        baseline.insert(e.clone(), (score(&a), a["model_version"].clone()));
    }

    // A real shadow: callers' answers do not change; the report pairs them.
    let out = admin_cli(
        &gw,
        &[
            "shadow",
            "add",
            "fraud_detector",
            "2",
            "--reason",
            "silent test of v2",
        ],
    )?;
    assert!(
        out.starts_with("changed (revision 2): added shadow '2'"),
        "{out}"
    );
    for (i, e) in entities.iter().enumerate() {
        let (status, a) = predict(&client, &gw, &body(e)).await?;
        assert_eq!(status, 200, "{a}");
        assert_eq!(
            (
                a["route"].as_str(),
                &(score(&a), a["model_version"].clone())
            ),
            (Some("stable"), &baseline[e]),
            "{e}"
        );
        // One copy at a time, so the pool of 4 never fills and none is
        // dropped on a loaded machine (the hung shadow below is the test of
        // dropping).
        wait_metric(
            &gw,
            "mlgw_shadow_calls_total{model=\"fraud_detector\",version=\"2\",result=\"ok\"}",
            (i + 1) as f64,
        )
        .await?;
    }
    let report = admin_cli(
        &gw,
        &["shadow-report", "fraud_detector", "--window-s", "600"],
    )?;
    assert!(
        report.contains("shadow '2' vs {\"1\":60}: 60 records, 60 paired"),
        "{report}"
    );
    assert!(report.contains("label agreement"), "{report}");
    let json_report: Value = serde_json::from_str(&admin_cli(
        &gw,
        &["--json", "shadow-report", "fraud_detector"],
    )?)?;
    let agreement = json_report["shadows"][0]["label_agreement"]
        .as_f64()
        .context("agreement")?;
    assert!(
        agreement > 0.8,
        "v1 and v2 agree on {agreement} of the labels: {json_report}"
    );
    println!("{report}");

    // Its model-server stops: callers see nothing; the failures are counted.
    shadow_server.stop().await?;
    for e in &entities {
        let (status, a) = predict(&client, &gw, &body(e)).await?;
        assert_eq!((status, score(&a)), (200, baseline[e].0), "{a}");
    }
    wait_metric(
        &gw,
        "mlgw_shadow_calls_total{model=\"fraud_detector\",version=\"2\",result=\"failed\"}",
        1.0,
    )
    .await?;

    // A hung shadow: 40 callers at once each answer normally; the pool of 4
    // is soon full, so most copies are dropped and counted, never queued.
    // (Added through the config file: the admin API refuses a version whose
    // model-server cannot answer its metadata check.)
    let shadow_3 = json!({"action": "add_shadow", "version": "3"});
    change_refused(&client, &gw, shadow_3, 400, "routing_refused").await?;
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        text.replace("stable = \"1\"", "stable = \"1\"\nshadow = [\"3\"]"),
    )?;
    wait_routing(&client, &gw, |t| t["shadows"] == json!(["3"])).await?;
    let answers = versions_of(&client, &gw, &entities[..40]).await?;
    assert!(
        answers.values().all(|(v, r)| v == "1" && r == "stable"),
        "{answers:?}"
    );
    let dropped = wait_metric(
        &gw,
        "mlgw_shadow_calls_total{model=\"fraud_detector\",version=\"3\",result=\"dropped\"}",
        1.0,
    )
    .await?;
    println!("hung shadow: {dropped} of 40 copies dropped");
    drop(gw);
    Ok(())
}

/// Polls the routing until `ok(current)` holds and `gw` serves it (at most
/// 10 s).
async fn wait_routing(
    client: &reqwest::Client,
    gw: &GatewayProcess,
    ok: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = client
            .get(format!(
                "{}/v1/admin/models/fraud_detector/routing",
                gw.http
            ))
            .send()
            .await?
            .json()
            .await?;
        // The stored routing fits, and this gateway serves that revision.
        if ok(&v["current"]) && v["served_revision"] == v["revision"] {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("routing did not change in time: {v}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rollout_oidc(issuer: &str) -> String {
    oidc_auth(
        issuer,
        "[[auth.allow]]\napi = \"admin\"\ngroups = [\"mlgw-admins\"]\nscopes = [\"admin\"]\n",
    )
}

#[tokio::test]
async fn pilots_admin_scope_and_rollback_in_one_call() -> Result<()> {
    let issuer = rig_env("MLGW_TEST_OIDC_ISSUER")?;
    let routing = "[model.routing]\nstable = \"1\"\n[[model.routing.pilot]]\nversion = \"2\"\ngroups = [\"pilot-fraud-v2\"]";
    let (_dir, config) = scratch("pilot", &rollout_oidc(&issuer), with_model(routing)).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let service = client_with_token(&client_credentials(&issuer, "mlgw-service", None).await?)?;
    let pilot = client_with_token(&client_credentials(&issuer, "mlgw-pilot", None).await?)?;
    let admin_token = client_credentials(&issuer, "mlgw-admin", None).await?;
    let admin = client_with_token(&admin_token)?;
    let version_route = |a: &Value| (a["model_version"].clone(), a["route"].clone());

    // The pilot group is routed to its version; everyone else to stable.
    let (s, a) = predict(&pilot, &gw, &body("c-1")).await?;
    assert_eq!(
        (s, version_route(&a)),
        (200, (json!("2"), json!("pilot"))),
        "{a}"
    );
    let (s, a) = predict(&service, &gw, &body("c-1")).await?;
    assert_eq!(
        (s, version_route(&a)),
        (200, (json!("1"), json!("stable"))),
        "{a}"
    );
    // Asking for the pilot version without being in its group: 403.
    let mut ask = body("c-1");
    ask["model_version"] = json!("2");
    let (s, a) = predict(&service, &gw, &ask).await?;
    assert_refused(s, &a, 403, "permission_denied");
    assert_eq!(
        a["message"],
        "caller 'mlgw-service' is not in a pilot group of model 'fraud_detector' version '2'"
    );
    let (s, a) = predict(&pilot, &gw, &ask).await?;
    assert_eq!(
        (s, version_route(&a)),
        (200, (json!("2"), json!("explicit"))),
        "{a}"
    );
    ask["model_version"] = json!("9");
    let (s, a) = predict(&service, &gw, &ask).await?;
    assert_refused(s, &a, 404, "unknown_version");

    // The admin API is for the admin scope only, on both fronts.
    let remove_pilot = json!({"action": "remove_pilot", "version": "2"});
    change_refused(&service, &gw, remove_pilot, 403, "permission_denied").await?;
    let channel = gw.channel().await?;
    let service_token = client_credentials(&issuer, "mlgw-service", None).await?;
    let mut denied = pb::routing_admin_service_client::RoutingAdminServiceClient::with_interceptor(
        channel.clone(),
        Bearer::new(&service_token)?,
    );
    let e = denied.list_routing(pb::ListRoutingRequest {}).await.err();
    assert_eq!(e.map(|s| s.code()), Some(tonic::Code::PermissionDenied));
    let mut grpc_admin =
        pb::routing_admin_service_client::RoutingAdminServiceClient::with_interceptor(
            channel,
            Bearer::new(&admin_token)?,
        );
    let listed = grpc_admin
        .list_routing(pb::ListRoutingRequest {})
        .await?
        .into_inner();
    assert_eq!(listed.models.len(), 1);
    assert_eq!(
        listed.models[0].current.as_ref().map(|t| t.stable.as_str()),
        Some("1")
    );

    // Remove the pilot over gRPC: the very next call of a pilot member is stable.
    use pb::change_routing_request::Action;
    let state = grpc_admin
        .change_routing(pb::ChangeRoutingRequest {
            model: "fraud_detector".into(),
            reason: "pilot over".into(),
            action: Some(Action::RemovePilot(pb::RemovePilot {
                version: "2".into(),
            })),
        })
        .await?
        .into_inner();
    assert_eq!(
        state
            .history
            .last()
            .map(|c| (c.by.as_str(), c.what.as_str())),
        Some(("mlgw-admin", "removed pilot '2'"))
    );
    let (_, a) = predict(&pilot, &gw, &body("c-1")).await?;
    assert_eq!(version_route(&a), (json!("1"), json!("stable")), "{a}");
    let bad = grpc_admin
        .change_routing(pb::ChangeRoutingRequest {
            model: "fraud_detector".into(),
            reason: String::new(),
            action: Some(Action::Promote(pb::Promote {})),
        })
        .await
        .err();
    assert_eq!(
        bad.as_ref().map(|s| (s.code(), s.message())),
        Some((
            tonic::Code::FailedPrecondition,
            "there is no canary to promote"
        ))
    );

    // Roll back in one REST call: the very next request has the pilot again.
    let (s, a) = change(&admin, &gw, json!({"action": "rollback"})).await?;
    assert_eq!(s, 200, "{a}");
    let (_, a) = predict(&pilot, &gw, &body("c-1")).await?;
    assert_eq!(version_route(&a), (json!("2"), json!("pilot")), "{a}");
    let out = std::process::Command::new(binary("mlgw-admin")?)
        .args([
            "--url",
            &gw.http,
            "--token",
            &admin_token,
            "history",
            "fraud_detector",
        ])
        .output()?;
    let history = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 4, "{history}");
    assert!(
        lines[1].contains("config-file")
            && lines[1].ends_with("initial routing from the config file"),
        "{history}"
    );
    assert!(
        lines[2].contains("mlgw-admin") && lines[2].ends_with("removed pilot '2' — pilot over"),
        "{history}"
    );
    assert!(
        lines[3].ends_with("rolled back revision 2 (removed pilot '2') by mlgw-admin"),
        "{history}"
    );
    // The OpenAPI document describes the admin routes, behind the token.
    let doc = assert_admin_routes_documented(
        &gw.http,
        &[
            ("/v1/admin/models", "get"),
            ("/v1/admin/models/{model}/routing", "get"),
            ("/v1/admin/models/{model}/routing", "post"),
            ("/v1/admin/models/{model}/shadow-report", "get"),
        ],
    )
    .await?;
    assert!(doc["components"]["schemas"]["PredictResponse"]["properties"]["route"].is_object());
    // A token without the admin scope cannot use the CLI either.
    let out = std::process::Command::new(binary("mlgw-admin")?)
        .args(["--url", &gw.http, "--token", &service_token, "models"])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission_denied (403 Forbidden)"));
    drop(gw);
    Ok(())
}

async fn version_for(client: &reqwest::Client, gw: &GatewayProcess) -> Result<String> {
    let (s, a) = predict(client, gw, &body("c-7")).await?;
    ensure!(s == 200, "{a}");
    Ok(a["model_version"].as_str().unwrap_or_default().to_owned())
}

async fn wait_version(
    client: &reqwest::Client,
    gw: &GatewayProcess,
    want: &str,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if version_for(client, gw).await? == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("{} still does not serve version {want}", gw.http);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn second_config(config: &Path) -> Result<PathBuf> {
    // The same store and routing, its own ports.
    let second = config.with_file_name("gateway-b.toml");
    std::fs::copy(config, &second)?;
    Ok(second)
}

#[tokio::test]
async fn routing_follows_other_replicas_and_the_config_file_and_survives_restarts() -> Result<()> {
    let (_dir, config) = scratch("replicas", &dev_auth_with_admin(), |c| {
        with_model("[model.routing]\nstable = \"1\"")(c).replace(
            "[cache]",
            "[rollout]\npoll_ms = 200\nconfig_watch_ms = 200\n[cache]",
        )
    })
    .await?;
    let a = GatewayProcess::start_ready(&config).await?;
    let b = GatewayProcess::start_ready(&second_config(&config)?).await?;
    let ca = client_with_token(a.token()?)?;
    let cb = client_with_token(b.token()?)?;
    assert_eq!(
        (version_for(&ca, &a).await?, version_for(&cb, &b).await?),
        ("1".into(), "1".into())
    );

    // A change through replica A is served by A at once and by B soon after.
    let (s, r) = change(&ca, &a, json!({"action": "set_stable", "version": "2"})).await?;
    assert_eq!(s, 200, "{r}");
    assert_eq!(version_for(&ca, &a).await?, "2");
    let took = wait_version(&cb, &b, "2").await?;
    println!("replica B served the change after {took:?}");

    // An edit of the config file's routing is applied by both.
    let text = std::fs::read_to_string(&config)?;
    let edited = text.replace(
        "stable = \"1\"",
        "stable = \"1\"\ncanary = \"2\"\ncanary_percent = 100",
    );
    std::fs::write(&config, &edited)?;
    std::fs::write(config.with_file_name("gateway-b.toml"), &edited)?;
    let v = wait_routing(&ca, &a, |t| t["canary"]["version"] == "2").await?;
    let history = v["history"].as_array().context("history")?;
    assert_eq!(
        history.last().map(|c| c["by"].clone()),
        Some(json!("config-file"))
    );
    wait_routing(&cb, &b, |t| t["canary"]["version"] == "2").await?;
    // Everyone is in the 100 % canary.
    let (_, p) = predict(&cb, &b, &body("c-8")).await?;
    assert_eq!(
        (p["model_version"].as_str(), p["route"].as_str()),
        (Some("2"), Some("canary"))
    );
    // An invalid edit is ignored (and counted); the routing stays.
    std::fs::write(
        &config,
        edited.replace("canary_percent = 100", "canary_percent = 0"),
    )?;
    wait_metric(&a, "mlgw_config_reloads_total{result=\"invalid\"}", 1.0).await?;
    assert_eq!(version_for(&ca, &a).await?, "2");
    std::fs::write(&config, &edited)?;

    // An admin change survives a restart with the same file.
    let (s, r) = change(&ca, &a, json!({"action": "remove_canary"})).await?;
    assert_eq!(s, 200, "{r}");
    drop(a);
    drop(b);
    let a = GatewayProcess::start_ready(&config).await?;
    let ca = client_with_token(a.token()?)?;
    let (_, p) = predict(&ca, &a, &body("c-8")).await?;
    assert_eq!(
        (p["model_version"].as_str(), p["route"].as_str()),
        (Some("1"), Some("stable")),
        "{p}"
    );
    drop(a);
    Ok(())
}

//! The refresh tuner end to end on real processes: a gateway hosting the
//! scheduler (`[scheduler] enabled = true`) runs a declared refresh job
//! through the built-in loader, serves predictions on the rows it loaded,
//! takes feedback, judges the window's AUC from the prediction log and
//! doubles the job's interval — no hand-run command in between. A second
//! gateway on the same store serves the admin API (REST and gRPC) to an
//! admin caller: list, show, pin, unpin, run now (which the first gateway's
//! scheduler then runs); the first gateway refuses the admin API (403 /
//! PERMISSION_DENIED) because no rule grants it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use proto::gateway::v1 as pb;
use proto::gateway::v1::tuner_admin_service_client::TunerAdminServiceClient;
use rig::gateway::{
    Bearer, DEV_AUTH, GatewayProcess, client_with_token, definitions, p_fraud, profile_csv,
};
use serde_json::{Value, json};

const JOB: &str = "customer_profile_daily";

/// The example definitions with the example `[[refresh_job]]` replaced by
/// one that loads `profile.csv` beside them every 30 seconds and judges
/// 30-second windows (the interval doubles only after good windows that
/// span a whole interval).
fn definitions_with_job() -> Result<String> {
    rig::gateway::definitions_with_refresh_job(&format!(
        r#"[[refresh_job]]
name = "{JOB}"
script_version = "e2e-v1"
interval = "30s"
timeout = "1m"
[refresh_job.source]
file = "profile.csv"
[refresh_job.tuner]
model = "fraud_detector"
metric = "auc"
positive_label = "fraud"
threshold = 0.6
min_interval = "15s"
max_interval = "8h"
good_windows = 1
cooldown_windows = 2
min_samples = 100
window = "30s"
"#
    ))
}

/// Polls `probe` every 250 ms until it gives Some, for at most `limit`.
async fn until<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let began = Instant::now();
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if began.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn the_scheduler_runs_a_real_job_and_the_tuner_changes_its_interval_from_real_feedback()
-> Result<()> {
    let (dir, config) = rig::gateway::scratch("tuner_e2e", DEV_AUTH, |c| c).await?;
    let csv = profile_csv((0..120).map(|i| {
        let (age, amount, count) = (30 + i * 7, 20 + i, i % 40);
        format!("c-{i},{age},{amount}.5,{count},{},0.{}", i % 3, i % 10)
    }));
    std::fs::write(dir.join("profile.csv"), csv)?;
    let defs = dir.join("features.toml");
    std::fs::write(&defs, definitions_with_job()?)?;
    let base = std::fs::read_to_string(&config)?.replace(
        &format!("definitions = \"{}\"", definitions().display()),
        &format!("definitions = \"{}\"", defs.display()),
    );
    assert!(base.contains("features.toml"), "{base}");
    // Gateway A: hosts the scheduler; no rule grants the admin API.
    let scheduled = dir.join("gateway-scheduler.toml");
    std::fs::write(
        &scheduled,
        format!("{base}\n[scheduler]\nenabled = true\npoll = \"1s\"\n"),
    )?;
    // Gateway B, same store: the admin API for the fraud team's admins.
    let admin_config = dir.join("gateway-admin.toml");
    std::fs::write(
        &admin_config,
        format!(
            "{base}\n[[auth.allow]]\napi = \"admin\"\ngroups = [\"fraud-team\"]\nscopes = [\"admin\"]\n"
        ),
    )?;
    let gw = GatewayProcess::start_ready(&scheduled).await?;
    let admin_gw = GatewayProcess::start_ready(&admin_config).await?;
    let http = client_with_token(gw.token()?)?;
    let admin = client_with_token(admin_gw.token()?)?;
    let job_url = format!("{}/v1/admin/tuner/jobs/{JOB}", admin_gw.http);
    let show = async || -> Result<Value> {
        let r = admin.get(&job_url).send().await?;
        let status = r.status().as_u16();
        let v: Value = r.json().await?;
        if status != 200 {
            bail!("GET {job_url}: {status} {v}");
        }
        Ok(v)
    };

    // 1. The scheduler's first run loads the file through the built-in
    // loader (there was no batch).
    let first = until(
        "the scheduler's first run",
        Duration::from_secs(30),
        async || {
            let v = show().await?;
            Ok((v["runs"].as_array().map_or(0, Vec::len) >= 1).then_some(v))
        },
    )
    .await?;
    let run = &first["runs"][0];
    assert_eq!(run["trigger"]["kind"], "first", "{first}");
    assert_eq!(run["outcome"], "loaded", "{first}");
    assert_eq!(first["last_batch"]["status"], "done", "{first}");
    assert_eq!(first["last_batch"]["rows_written"], 120, "{first}");
    assert_eq!(first["last_batch"]["script_version"], "e2e-v1", "{first}");
    assert_eq!(first["interval_s"], 30, "{first}");
    let first_batch = run["batch_id"].as_str().context("no batch")?.to_owned();

    // 2. Predictions on the loaded rows, then ground truth that mostly
    // agrees with the model (the riskier half is fraud, every 8th flipped);
    // all within the first window, which began with the first run.
    let mut scored = Vec::new();
    for i in 0..120 {
        let body = json!({"entity": {"customer_id": format!("c-{i}")}, "request_features": {
            "amount": 20.0 + 40.0 * f64::from(i), "is_card_present": i % 2 == 0,
            "hour_of_day": i % 24, "distance_from_home_km": 5.0 * f64::from(i)}});
        let v: Value = http
            .post(format!("{}/v1/models/fraud_detector/predict", gw.http))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        assert!(
            v["freshness"]["view_age_ms"]["customer_profile"]
                .as_i64()
                .is_some_and(|a| a >= 0),
            "the scheduler's batch must be served: {v}"
        );
        let id = v["prediction_id"]
            .as_str()
            .with_context(|| format!("{v}"))?
            .to_owned();
        scored.push((id, p_fraud(&v)?));
    }
    let mut sorted: Vec<f64> = scored.iter().map(|(_, p)| *p).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    for (i, (id, p)) in scored.iter().enumerate() {
        let fraud = (*p >= median) != (i % 8 == 0);
        let r = http
            .post(format!("{}/v1/feedback", gw.http))
            .json(&json!({"prediction_id": id, "label": if fraud { "fraud" } else { "legit" }}))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    }

    // 3. Within a window or two the scheduler judges the AUC of those
    // predictions and doubles the interval.
    let doubled = until(
        "the tuner's doubling",
        Duration::from_secs(60),
        async || {
            let v = show().await?;
            Ok(v["decisions"]
                .as_array()
                .and_then(|d| d.iter().find(|d| d["action"] == "doubled").cloned())
                .map(|d| (d, v)))
        },
    )
    .await?;
    let (decision, state) = doubled;
    // Judged on this test's labelled predictions: all 120, or, when a slow
    // machine spread them over two windows, at least min_samples of them.
    assert!(
        decision["samples"]
            .as_u64()
            .is_some_and(|n| (100..=120).contains(&n)),
        "{decision}"
    );
    let auc = decision["metric"].as_f64().context("no metric")?;
    assert!(auc > 0.6 && auc < 1.0, "AUC {auc}: {decision}");
    assert_eq!(
        (decision["from_s"].as_u64(), decision["to_s"].as_u64()),
        (Some(30), Some(60))
    );
    assert!(
        decision["reason"]
            .as_str()
            .is_some_and(|r| r.contains("doubled 30 s → 1 min: AUC")),
        "{decision}"
    );
    // 120 predictions made within seconds: too few ages for the metric by
    // feature age, and labels come within the window, so the window's own
    // metric decided.
    assert_eq!(decision["basis"], "window", "{decision}");
    assert!(decision["judged_at"].is_string(), "{decision}");
    assert_eq!(state["interval_s"], 60, "{state}");
    assert_eq!(state["last_good_s"], 30, "{state}");

    // 4. REST list: interval, metric of the last window, last batch, next run.
    let list = rig::get_json(&admin, &format!("{}/v1/admin/tuner/jobs", admin_gw.http)).await?;
    let listed = &list["jobs"][0];
    assert_eq!(listed["job"], JOB, "{list}");
    assert_eq!(listed["interval_s"], 60, "{list}");
    assert_eq!(listed["metric"]["name"], "AUC", "{list}");
    assert!(listed["last_window"]["metric"].is_number(), "{list}");
    assert_eq!(
        listed["last_batch"]["batch_id"],
        first_batch.as_str(),
        "{list}"
    );
    assert!(listed["next_run"].is_string(), "{list}");

    // 5. Pin over REST (who = the caller's subject), bounds enforced.
    let pinned: Value = admin
        .post(format!("{job_url}/pin"))
        .json(&json!({"interval": "4h", "reason": "quarter close"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(pinned["interval_s"], 14_400, "{pinned}");
    assert_eq!(pinned["pin"]["by"], "dev-user", "{pinned}");
    assert_eq!(pinned["pin"]["reason"], "quarter close", "{pinned}");
    // /metrics shows the interval in force and the pin, per job.
    let metrics = admin
        .get(format!("{}/metrics", admin_gw.http))
        .send()
        .await?
        .text()
        .await?;
    let view = listed["view"].as_str().context("view")?;
    let page = rig::metrics::Page::parse(&metrics)?;
    let labels = [("job", JOB), ("view", view)];
    for (family, expected) in [
        ("mlgw_refresh_interval_seconds", 14400.0),
        ("mlgw_refresh_pinned", 1.0),
        ("mlgw_refresh_last_batch_failed", 0.0),
    ] {
        assert_eq!(
            page.value(family, &labels),
            Some(expected),
            "{family}: {metrics}"
        );
    }
    assert!(
        page.value("mlgw_refresh_last_good_interval_seconds", &labels)
            .is_some(),
        "mlgw_refresh_last_good_interval_seconds missing: {metrics}"
    );
    let r = admin
        .post(format!("{job_url}/pin"))
        .json(&json!({"interval": "1d"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().await?;
    assert_eq!(e["code"], "invalid_argument", "{e}");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("bounds")),
        "{e}"
    );

    // 6. gRPC: list shows the pin; unpin; run now.
    let channel = tonic::transport::Endpoint::from_shared(admin_gw.grpc.clone())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let mut grpc =
        TunerAdminServiceClient::with_interceptor(channel, Bearer::new(admin_gw.token()?)?);
    let jobs = grpc
        .list_jobs(pb::ListJobsRequest {})
        .await?
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].interval_s, 14_400);
    assert_eq!(
        jobs[0].pin.as_ref().map(|p| p.by.as_str()),
        Some("dev-user")
    );
    assert_eq!(jobs[0].metric, "AUC");
    // The detail lists the view's batches, the served one marked.
    let detail = grpc
        .get_job(pb::GetJobRequest {
            job: JOB.into(),
            limit: 10,
        })
        .await?
        .into_inner();
    let served: Vec<&str> = detail
        .batches
        .iter()
        .filter(|b| b.current)
        .map(|b| b.batch_id.as_str())
        .collect();
    assert_eq!(served, [first_batch.as_str()], "{:?}", detail.batches);
    assert_eq!(detail.batches[0].rows_written, 120);
    let unpinned = grpc
        .unpin_job(pb::UnpinJobRequest { job: JOB.into() })
        .await?
        .into_inner();
    assert!(unpinned.pin.is_none());
    // Tuning resumes from the pinned interval.
    assert_eq!(unpinned.interval_s, 14_400);
    let queued = grpc
        .run_job(pb::RunJobRequest {
            job: JOB.into(),
            reason: "upstream fix".into(),
        })
        .await?
        .into_inner();
    assert_eq!(queued.requested_by, "dev-user");
    // Gateway B runs no scheduler; it says so.
    assert_eq!(queued.expected_by_ms, 0);
    assert!(queued.message.contains("no scheduler"), "{queued:?}");
    let status = grpc
        .get_job(pb::GetJobRequest {
            job: "nightly_typo".into(),
            limit: 0,
        })
        .await
        .err()
        .context("an undeclared job must be NOT_FOUND")?;
    assert_eq!(status.code(), tonic::Code::NotFound);

    // 7. Gateway A's scheduler picks the request up and reloads the file.
    let forced = until("the forced run", Duration::from_secs(30), async || {
        let v = show().await?;
        Ok(v["runs"].as_array().and_then(|runs| {
            runs.iter()
                .find(|r| r["trigger"]["kind"] == "forced" && r["outcome"] != Value::Null)
                .cloned()
        }))
    })
    .await?;
    assert_eq!(forced["trigger"]["by"], "dev-user", "{forced}");
    assert_eq!(forced["outcome"], "loaded", "{forced}");
    assert_ne!(forced["batch_id"], first_batch.as_str(), "{forced}");
    let history = show().await?;
    let reasons: Vec<&str> = history["decisions"]
        .as_array()
        .map(|d| d.iter().filter_map(|x| x["reason"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("pinned at 4 h by dev-user: quarter close")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("unpinned by dev-user")),
        "{reasons:?}"
    );

    // 8. No admin rule on gateway A: 403 over REST, PERMISSION_DENIED over
    // gRPC, for the same token that predicts there.
    let r = http
        .get(format!("{}/v1/admin/tuner/jobs", gw.http))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.json::<Value>().await?["code"], "permission_denied");
    let r = http
        .post(format!("{}/v1/admin/tuner/jobs/{JOB}/run", gw.http))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403);
    let channel = tonic::transport::Endpoint::from_shared(gw.grpc.clone())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let mut denied = TunerAdminServiceClient::with_interceptor(channel, Bearer::new(gw.token()?)?);
    let status = denied
        .pin_job(pb::PinJobRequest {
            job: JOB.into(),
            interval_s: 7200,
            reason: String::new(),
        })
        .await
        .err()
        .context("a caller without the admin rule must be refused")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    // And without a token at all: 401.
    let r = reqwest::Client::new().get(&job_url).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    // Unknown job over REST: 404 unknown_job.
    let r = admin
        .get(format!(
            "{}/v1/admin/tuner/jobs/nightly_typo",
            admin_gw.http
        ))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.json::<Value>().await?["code"], "unknown_job");

    // 9. The OpenAPI document describes the admin routes.
    rig::gateway::assert_admin_routes_documented(
        &gw.http,
        &[
            ("/v1/admin/tuner/jobs", "get"),
            ("/v1/admin/tuner/jobs/{job}", "get"),
            ("/v1/admin/tuner/jobs/{job}/pin", "post"),
            ("/v1/admin/tuner/jobs/{job}/unpin", "post"),
            ("/v1/admin/tuner/jobs/{job}/run", "post"),
        ],
    )
    .await?;

    // 10. The CLI's SVG report of the job's stored history.
    let svg = dir.join("report.svg");
    let out = std::process::Command::new(rig::binary("mlgw-features")?)
        .arg("--embedded")
        .arg(dir.join("features.redb"))
        .args(["tuner", "report", "-d"])
        .arg(&defs)
        .args(["--job", JOB, "--out"])
        .arg(&svg)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg)?;
    assert!(text.starts_with("<svg") && text.contains("AUC"), "{text}");

    drop(admin_gw);
    drop(gw);
    Ok(())
}

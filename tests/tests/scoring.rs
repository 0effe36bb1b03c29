//! Batch scoring end to end, on the embedded store and on Cassandra: the
//! `mlgw-score` CLI (and the admin API) scores with the rig's model-server
//! into the prediction store; a gateway answers scored keys from it with
//! the outputs the live path gives, goes live for the rest, and keeps the
//! previous batch when a run is killed, refused by the cardinality watch,
//! or scores another version than the one routed to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use feature_store::definitions::FeatureDefinitions;
use feature_store::store::prelude::*;
use feature_store::store::scylla::ScyllaStore;
use feature_store::store::{
    AnyStore, BatchStore, CoordinationStore, Lease, LeaseOutcome, embedded::EmbeddedStore,
    score_target,
};
use rig::gateway::{DEV_AUTH, GatewayProcess, client_with_token, config_text};
use rig::metrics::Page;
use rig::store::{refresh_file, scylla_config};
use rig::{ScratchDir, binary, rig_env, unique};
use serde_json::{Value, json};

/// Where a test's store is.
#[derive(Clone)]
enum Backend {
    Embedded,
    Scylla { address: String, keyspace: String },
}

/// A scratch folder with definitions, a loaded profile and a gateway config
/// serving the three example models.
struct Setup {
    dir: ScratchDir,
    backend: Backend,
    config: PathBuf,
    definitions: PathBuf,
    /// The model-server's gRPC endpoint (the rig's, unless a test starts
    /// its own).
    endpoint: String,
}

/// The example definitions with `edit` applied, in `dir`.
fn write_definitions(dir: &Path, edit: impl Fn(String) -> String) -> Result<PathBuf> {
    let text = std::fs::read_to_string(rig::gateway::definitions())?;
    let path = dir.join("definitions.toml");
    std::fs::write(&path, edit(text))?;
    Ok(path)
}

/// `n` customers `c-0` … with distinct profiles.
fn profile(n: usize) -> String {
    rig::gateway::profile_csv((0..n).map(|i| {
        format!(
            "c-{i},{},{:.2},{},{},{:.3}",
            1 + (i * 37) % 3000,
            5.0 + (i % 97) as f64 * 3.5,
            i % 60,
            i % 3,
            (i % 100) as f64 / 100.0
        )
    }))
}

async fn open(backend: &Backend, dir: &Path) -> Result<AnyStore> {
    Ok(match backend {
        Backend::Embedded => AnyStore::Embedded(std::sync::Arc::new(EmbeddedStore::open(
            &dir.join("features.redb"),
        )?)),
        Backend::Scylla { address, keyspace } => AnyStore::Scylla(std::sync::Arc::new(
            ScyllaStore::connect(scylla_config(address, keyspace.clone())).await?,
        )),
    })
}

impl Setup {
    async fn new(
        tag: &str,
        backend: Backend,
        customers: usize,
        defs_edit: impl Fn(String) -> String,
    ) -> Result<Setup> {
        let dir = ScratchDir::new(&format!("mlgw_score_{tag}"))?;
        let definitions = write_definitions(&dir, defs_edit)?;
        {
            let store = open(&backend, &dir).await?;
            store.apply_schema().await.context("applying the schema")?;
            let defs = FeatureDefinitions::load(&definitions)?;
            let csv = dir.join("profile.csv");
            std::fs::write(&csv, profile(customers))?;
            refresh_file(&store, &defs, "customer_profile_daily", &csv).await?;
        }
        let setup = Setup {
            config: dir.join("gateway.toml"),
            dir,
            backend,
            definitions,
            endpoint: rig_env("MLGW_TEST_MODEL_SERVER_GRPC")?,
        };
        setup.write_config("first")?;
        Ok(setup)
    }

    /// The gateway config: the three models, `precomputed` for the two
    /// scored ones.
    fn write_config(&self, precomputed: &str) -> Result<()> {
        let mut text = config_text(&self.endpoint, DEV_AUTH);
        text = text.replace(
            &format!(
                "definitions = \"{}\"",
                rig::gateway::definitions().display()
            ),
            &format!("definitions = \"{}\"", self.definitions.display()),
        );
        if let Backend::Scylla { address, keyspace } = &self.backend {
            text = text.replace(
                "backend = \"embedded\"\npath = \"features.redb\"",
                &format!(
                    "backend = \"scylla\"\nnodes = [\"{address}\"]\nkeyspace = \"{keyspace}\"\nread_timeout_ms = 2000\nwrite_timeout_ms = 5000"
                ),
            );
        }
        let endpoint = &self.endpoint;
        for model in ["customer_risk", "txn_pattern"] {
            text.push_str(&format!(
                r#"
[[model]]
name = "{model}"
endpoint = "{endpoint}"
timeout_ms = 1000
precomputed = "{precomputed}"
[model.routing]
stable = "1"
[model.postprocess]
scores_output = "probabilities"
labels = ["legit", "fraud"]
positive_label = "fraud"
threshold = 0.5
"#
            ));
        }
        text.push_str("[[auth.allow]]\napi = \"admin\"\ngroups = [\"fraud-team\"]\n");
        std::fs::write(&self.config, text)?;
        Ok(())
    }

    /// `mlgw-score --config … ARGS --json`.
    fn score(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(binary("mlgw-score")?);
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .arg("--json");
        Ok(cmd.output()?)
    }

    /// A run of `job` that must be served; its JSON report.
    fn run_served(&self, job: &str) -> Result<Value> {
        let out = self.score(&["run", job])?;
        ensure!(
            out.status.success(),
            "mlgw-score run {job}: {:?}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(report["outcome"], "served", "{report}");
        Ok(report)
    }

    /// The batch the model's prediction store serves.
    async fn served_batch(&self, model: &str) -> Result<Option<String>> {
        let store = open(&self.backend, &self.dir).await?;
        Ok(store
            .current_batches()
            .await?
            .remove(&score_target(model))
            .map(|b| b.batch_id))
    }
}

async fn embedded() -> Result<Backend> {
    Ok(Backend::Embedded)
}

async fn cassandra() -> Result<Backend> {
    Ok(Backend::Scylla {
        address: rig_env("MLGW_TEST_CASSANDRA")?,
        keyspace: unique("score"),
    })
}

/// A prediction of `model` over REST: (status, answer).
async fn predict(
    gw: &GatewayProcess,
    http: &reqwest::Client,
    model: &str,
    body: Value,
) -> Result<(u16, Value)> {
    let r = http
        .post(format!("{}/v1/models/{model}/predict", gw.http))
        .json(&body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

/// The answer for `customer_risk` of `id` once it comes from the store
/// (a run just ended; the gateway may learn the batch at its next poll),
/// or the last answer after 15 s.
async fn until_precomputed(gw: &GatewayProcess, http: &reqwest::Client, id: &str) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let a = predict(gw, http, "customer_risk", customer(id)).await?.1;
        if a["source"] == "precomputed" || tokio::time::Instant::now() > deadline {
            return Ok(a);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway's `/metrics` page.
async fn metrics(gw: &GatewayProcess, http: &reqwest::Client) -> Result<Page> {
    Page::parse(
        &http
            .get(format!("{}/metrics", gw.http))
            .send()
            .await?
            .text()
            .await?,
    )
}

fn customer(id: &str) -> Value {
    json!({"entity": {"customer_id": id}})
}

/// What must equal between a precomputed and a live answer.
fn outputs(answer: &Value) -> Value {
    answer["outputs"].clone()
}

/// Scored customers are answered from the store with the live path's
/// outputs; an unknown one goes live; counted by outcome.
async fn scored_entities_answer_as_live(backend: Backend) -> Result<()> {
    let s = Setup::new("entity", backend, 300, |t| t).await?;
    let report = s.run_served("customer_risk_daily")?;
    assert_eq!(report["scored"], 300, "{report}");
    assert_eq!(report["rejected"], 0, "{report}");
    assert_eq!(report["model_version"], "1");
    let batch = report["batch_id"].as_str().context("batch_id")?.to_owned();
    assert_eq!(
        s.served_batch("customer_risk").await?.as_deref(),
        Some(batch.as_str())
    );

    let ids = ["c-0", "c-1", "c-42", "c-299"];
    let mut precomputed = BTreeMap::new();
    {
        let gw = GatewayProcess::start_ready(&s.config).await?;
        let http = client_with_token(gw.token()?)?;
        for id in ids {
            let (status, a) = predict(&gw, &http, "customer_risk", customer(id)).await?;
            assert_eq!(status, 200, "{a}");
            assert_eq!(a["source"], "precomputed", "{a}");
            assert_eq!(a["precomputed"]["batch_id"], batch.as_str(), "{a}");
            assert!(
                a["precomputed"]["age_ms"]
                    .as_i64()
                    .is_some_and(|ms| ms >= 0),
                "{a}"
            );
            assert_eq!(a["model_version"], "1");
            precomputed.insert(id, outputs(&a));
        }
        // Not in the profile: scored by no run, answered live.
        let (status, a) = predict(&gw, &http, "customer_risk", customer("c-new")).await?;
        assert_eq!((status, &a["source"]), (200, &json!("live")), "{a}");
        assert!(a.get("precomputed").is_none(), "{a}");
        let page = metrics(&gw, &http).await?;
        let count = |outcome: &str| {
            page.value(
                "mlgw_precomputed_total",
                &[("model", "customer_risk"), ("outcome", outcome)],
            )
            .unwrap_or(0.0)
        };
        assert_eq!(count("hit"), ids.len() as f64);
        assert_eq!(count("miss"), 1.0);
    }
    // The same customers with the store turned off: the live path's answers.
    s.write_config("off")?;
    let gw = GatewayProcess::start_ready(&s.config).await?;
    let http = client_with_token(gw.token()?)?;
    for id in ids {
        let (status, a) = predict(&gw, &http, "customer_risk", customer(id)).await?;
        assert_eq!((status, &a["source"]), (200, &json!("live")), "{a}");
        assert_eq!(outputs(&a), precomputed[id], "customer {id}");
    }
    Ok(())
}

/// A run killed with SIGKILL while it writes leaves the previous batch
/// served; its batch stays `processing`, never served, and the next run
/// serves a complete one.
async fn a_killed_run_leaves_the_previous_batch_served(backend: Backend) -> Result<()> {
    let s = Setup::new("killed", backend, 40_000, |t| t).await?;
    let first = s.run_served("customer_risk_daily")?;
    let first_batch = first["batch_id"].as_str().context("batch_id")?.to_owned();

    let mut child = Command::new(binary("mlgw-score")?)
        .arg("--config")
        .arg(&s.config)
        .args([
            "run",
            "customer_risk_daily",
            "--batch-rows",
            "1",
            "--in-flight",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Let it write a while (40,000 rows one call and one write each take
    // far longer).
    let store_has_part = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(status) = child.try_wait()? {
                bail!("the run ended before it could be killed: {status}");
            }
        }
        Ok(())
    };
    store_has_part.await?;
    child.kill()?;
    child.wait()?;

    assert_eq!(
        s.served_batch("customer_risk").await?.as_deref(),
        Some(first_batch.as_str()),
        "the killed run's batch must not be served"
    );
    let listed: Value = serde_json::from_slice(&s.score(&["runs", "customer_risk_daily"])?.stdout)?;
    let batches = listed.as_array().context("a list")?;
    assert_eq!(batches.len(), 2, "{listed}");
    assert_eq!(batches[0]["status"], "processing", "{listed}");
    assert_eq!(batches[0]["served"], false, "{listed}");
    assert_eq!(batches[1]["batch_id"], first_batch.as_str());
    assert_eq!(batches[1]["served"], true, "{listed}");
    {
        let gw = GatewayProcess::start_ready(&s.config).await?;
        let http = client_with_token(gw.token()?)?;
        let (_, a) = predict(&gw, &http, "customer_risk", customer("c-7")).await?;
        assert_eq!(a["precomputed"]["batch_id"], first_batch.as_str(), "{a}");
    }
    // The killed run still holds the job's lease: another run is refused
    // until it lapses.
    let refused = s.score(&["run", "customer_risk_daily"])?;
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("is going on"), "{said}");
    // As if the lease had lapsed: taken over an hour later, and given up.
    {
        let store = open(&s.backend, &s.dir).await?;
        let later = std::time::SystemTime::now() + Duration::from_secs(3600);
        let name = "scoring-job:customer_risk_daily";
        let taken = store
            .try_lease(
                &Lease::new(name, "test", later + Duration::from_secs(60)),
                later,
            )
            .await?;
        assert_eq!(taken, LeaseOutcome::Acquired);
        assert!(store.release_lease(name, "test").await?);
    }
    let again = s.run_served("customer_risk_daily")?;
    assert_eq!(again["scored"], 40_000);
    assert_eq!(
        s.served_batch("customer_risk").await?.as_deref(),
        again["batch_id"].as_str()
    );
    // The next run marked the killed run's batch failed (abandoned).
    let listed: Value = serde_json::from_slice(&s.score(&["runs", "customer_risk_daily"])?.stdout)?;
    assert_eq!(listed[1]["status"], "failed", "{listed}");
    assert!(
        listed[1]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("abandoned")),
        "{listed}"
    );
    Ok(())
}

/// Entries scored by version 1 are not served once routing makes version 2
/// stable: those calls go live to version 2 (counted as `version`), until a
/// run scores version 2.
async fn another_stable_version_falls_back_live(backend: Backend) -> Result<()> {
    // A model-server of its own, serving customer_risk as versions 1 and 2.
    let repo = rig::TempRepo::new()?;
    repo.add_model_as("customer_risk", "1", &["1", "2"])?;
    repo.add_model_as("txn_pattern", "1", &["1"])?;
    repo.add_example_model("fraud_detector", str::to_owned)?;
    let mut server = rig::ModelServerProcess::start(&repo.path, &[]).await?;
    server.wait_ready(Duration::from_secs(60)).await?;
    let mut s = Setup::new("version", backend, 50, |t| t).await?;
    s.endpoint = server.grpc_url.clone();
    s.write_config("first")?;
    let first = s.run_served("customer_risk_daily")?;
    assert_eq!(first["model_version"], "1");

    let gw = GatewayProcess::start_ready(&s.config).await?;
    let http = client_with_token(gw.token()?)?;
    let (_, a) = predict(&gw, &http, "customer_risk", customer("c-1")).await?;
    assert_eq!(
        (&a["source"], &a["model_version"]),
        (&json!("precomputed"), &json!("1")),
        "{a}"
    );
    let r = http
        .post(format!("{}/v1/admin/models/customer_risk/routing", gw.http))
        .json(&json!({"action": "set_stable", "version": "2", "reason": "v2 trained"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    let (_, a) = predict(&gw, &http, "customer_risk", customer("c-1")).await?;
    assert_eq!(
        (&a["source"], &a["model_version"]),
        (&json!("live"), &json!("2")),
        "{a}"
    );
    let page = metrics(&gw, &http).await?;
    assert_eq!(
        page.value(
            "mlgw_precomputed_total",
            &[("model", "customer_risk"), ("outcome", "version")]
        ),
        Some(1.0)
    );
    // A run now scores the stable version, 2, inside the gateway.
    let r = http
        .post(format!(
            "{}/v1/admin/scoring/jobs/customer_risk_daily/run",
            gw.http
        ))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);
    let a = until_precomputed(&gw, &http, "c-1").await?;
    assert_eq!(
        (&a["source"], &a["model_version"]),
        (&json!("precomputed"), &json!("2")),
        "{a}"
    );
    assert_ne!(a["precomputed"]["batch_id"], first["batch_id"], "{a}");
    Ok(())
}

/// Shards of one run (as the pods of a Kubernetes Indexed Job) score one
/// batch together: each its part, the last to finish switches, and every
/// customer is answered from that batch. On Cassandra they run at once; the
/// embedded file has one writer at a time, so there they run in turn.
async fn shards_score_one_batch_together(backend: Backend) -> Result<()> {
    let s = Setup::new("shards", backend.clone(), 900, |t| t).await?;
    let shard = |i: u32| -> Result<std::process::Child> {
        Ok(Command::new(binary("mlgw-score")?)
            .arg("--config")
            .arg(&s.config)
            .args(["run", "customer_risk_daily", "--json", "--run", "nightly-1"])
            .arg("--shard")
            .arg(format!("{i}/3"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    };
    let mut reports = Vec::new();
    let finish = |child: std::process::Child| -> Result<Value> {
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    if matches!(backend, Backend::Embedded) {
        for i in 0..3 {
            reports.push(finish(shard(i)?)?);
        }
    } else {
        let children = (0..3).map(shard).collect::<Result<Vec<_>>>()?;
        for child in children {
            reports.push(finish(child)?);
        }
    }
    let batch = reports[0]["batch_id"].as_str().context("batch")?.to_owned();
    assert!(
        reports.iter().all(|r| r["batch_id"] == batch.as_str()),
        "{reports:?}"
    );
    let scored: u64 = reports.iter().filter_map(|r| r["scored"].as_u64()).sum();
    assert_eq!(scored, 900);
    assert!(
        reports.iter().all(|r| r["scored"].as_u64() < Some(900)),
        "{reports:?}"
    );
    let served = reports.iter().filter(|r| r["outcome"] == "served").count();
    assert!(served >= 1, "{reports:?}");
    assert_eq!(
        s.served_batch("customer_risk").await?.as_deref(),
        Some(batch.as_str())
    );
    let listed: Value = serde_json::from_slice(&s.score(&["runs", "customer_risk_daily"])?.stdout)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["rows"], 900, "{listed}");
    let gw = GatewayProcess::start_ready(&s.config).await?;
    let http = client_with_token(gw.token()?)?;
    for id in ["c-0", "c-1", "c-2", "c-898"] {
        let (_, a) = predict(&gw, &http, "customer_risk", customer(id)).await?;
        assert_eq!(a["precomputed"]["batch_id"], batch.as_str(), "{a}");
    }
    Ok(())
}

/// The request features of one `txn_pattern` call.
fn pattern(mcc: i64, country: i64, amount: f64, hour: i64, present: bool) -> Value {
    json!({"request_features": {
        "merchant_category": mcc, "merchant_country": country,
        "amount": amount, "hour_of_day": hour, "is_card_present": present
    }})
}

/// Combinations the gateway answered live are counted in the log, scored
/// by a run, and then answered from the store: any amount and hour in the
/// same bins gets the answer the live model gave; another combination goes
/// live.
async fn logged_combinations_are_scored_and_answered(backend: Backend) -> Result<()> {
    let s = Setup::new("combination", backend, 10, |t| t).await?;
    let seen = [
        (5411, 840, 30.0, 9, true),
        (5812, 826, 75.0, 13, false),
        (7995, 566, 450.0, 23, false),
        (5732, 276, 1500.0, 2, true),
    ];
    let mut live = Vec::new();
    {
        let gw = GatewayProcess::start_ready(&s.config).await?;
        let http = client_with_token(gw.token()?)?;
        for (mcc, country, amount, hour, present) in seen {
            for _ in 0..3 {
                let (status, a) = predict(
                    &gw,
                    &http,
                    "txn_pattern",
                    pattern(mcc, country, amount, hour, present),
                )
                .await?;
                assert_eq!((status, &a["source"]), (200, &json!("live")), "{a}");
                live.push(outputs(&a));
            }
        }
        let page = metrics(&gw, &http).await?;
        assert_eq!(
            page.value(
                "mlgw_precomputed_total",
                &[("model", "txn_pattern"), ("outcome", "no_batch")]
            ),
            Some(12.0)
        );
        // Stopping flushes the prediction log.
        gw.stop().await?;
    }
    let report = s.run_served("txn_pattern_hourly")?;
    assert_eq!(report["scored"], seen.len(), "{report}");
    let features: Vec<&str> = report["cardinality"]["features"]
        .as_array()
        .context("features")?
        .iter()
        .filter_map(|f| f["feature"].as_str())
        .collect();
    assert_eq!(
        features,
        ["is_card_present", "merchant_category", "merchant_country"]
    );

    let gw = GatewayProcess::start_ready(&s.config).await?;
    let http = client_with_token(gw.token()?)?;
    // The same bins, other amounts and hours.
    let nearby = [
        (5411, 840, 45.5, 11, true),
        (5812, 826, 199.0, 17, false),
        (7995, 566, 200.0, 22, false),
        (5732, 276, 9000.0, 5, true),
    ];
    for (i, (mcc, country, amount, hour, present)) in nearby.into_iter().enumerate() {
        let (status, a) = predict(
            &gw,
            &http,
            "txn_pattern",
            pattern(mcc, country, amount, hour, present),
        )
        .await?;
        assert_eq!((status, &a["source"]), (200, &json!("precomputed")), "{a}");
        assert_eq!(outputs(&a), live[i * 3], "combination {i}");
    }
    // Another amount bin: not scored.
    let (_, a) = predict(&gw, &http, "txn_pattern", pattern(5411, 840, 5.0, 9, true)).await?;
    assert_eq!(a["source"], "live", "{a}");
    Ok(())
}

/// A key file's bad rows are rejected with line and reason and counted; a
/// spike of new categories raises the alarm (served all the same); a run
/// over the hard cap is refused and the previous batch stays served.
async fn key_files_rejections_and_cardinality_alarms(backend: Backend) -> Result<()> {
    let s = Setup::new("cardinality", backend, 10, |t| {
        t.replace(
            "top_combinations = 50_000\nwindow = \"7d\"",
            "file = \"keys.csv\"",
        )
        .replace("max_keys = 200_000", "max_keys = 12")
        .replace("new_category_factor = 3.0 ", "new_category_factor = 2.0 ")
    })
    .await?;
    let header = "merchant_category,merchant_country,amount,hour_of_day,is_card_present\n";
    let keys = |rows: &[&str]| -> Result<()> {
        std::fs::write(
            s.dir.join("keys.csv"),
            format!("{header}{}\n", rows.join("\n")),
        )?;
        Ok(())
    };
    keys(&[
        "5411,840,30.0,9,true",
        "5411,840,abc,9,true",
        "5812,826,75.0,13,false",
        "5812,,75.0,13,false",
        "5411,840,300.0,20,true",
    ])?;
    let first = s.run_served("txn_pattern_hourly")?;
    assert_eq!(
        (first["scored"].as_u64(), first["rejected"].as_u64()),
        (Some(3), Some(2)),
        "{first}"
    );
    let lines: Vec<u64> = first["rejections"]
        .as_array()
        .context("rejections")?
        .iter()
        .filter_map(|r| r["line"].as_u64())
        .collect();
    assert_eq!(lines, [3, 5], "{first}");
    assert!(
        first["rejections"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("amount")),
        "{first}"
    );
    let listed: Value = serde_json::from_slice(&s.score(&["runs", "txn_pattern_hourly"])?.stdout)?;
    assert_eq!(listed[0]["rejected"], 2, "{listed}");
    assert_eq!(listed[0]["rejections"][1]["line"], 5, "{listed}");

    // Seven merchant categories never seen before: more than 2 × the two
    // of the first run.
    let spike: Vec<String> = (0..7)
        .map(|i| format!("{},840,30.0,9,true", 6000 + i))
        .collect();
    keys(&spike.iter().map(String::as_str).collect::<Vec<_>>())?;
    let second = s.run_served("txn_pattern_hourly")?;
    let alarms = second["cardinality"]["alarms"]
        .as_array()
        .context("alarms")?;
    assert_eq!(alarms.len(), 1, "{second}");
    assert_eq!(alarms[0]["kind"], "new_categories");
    assert_eq!(alarms[0]["feature"], "merchant_category");
    let served = second["batch_id"].as_str().context("batch")?.to_owned();

    // Thirteen keys (amount and hour in one bin each): over the cap of
    // twelve.
    let over: Vec<String> = (0..13)
        .map(|i| format!("{},840,{},9,true", 5000 + i, 30.0 + f64::from(i)))
        .collect();
    keys(&over.iter().map(String::as_str).collect::<Vec<_>>())?;
    let out = s.score(&["run", "txn_pattern_hourly"])?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let third: Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        third["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("refused")),
        "{third}"
    );
    assert_eq!(
        s.served_batch("txn_pattern").await?.as_deref(),
        Some(served.as_str())
    );
    let listed: Value = serde_json::from_slice(&s.score(&["runs", "txn_pattern_hourly"])?.stdout)?;
    assert_eq!(listed[0]["status"], "failed", "{listed}");
    assert!(
        listed[0]["alarms"][0]
            .as_str()
            .is_some_and(|a| a.contains("exceed the cap of 12")),
        "{listed}"
    );
    // The alarm as a gauge an alert rule can watch.
    let gw = GatewayProcess::start_ready(&s.config).await?;
    let http = client_with_token(gw.token()?)?;
    let page = metrics(&gw, &http).await?;
    let gauge = |name: &str, labels: &[(&str, &str)]| page.value(name, labels);
    let job = ("job", "txn_pattern_hourly");
    assert_eq!(
        gauge("mlgw_scoring_alarm", &[job, ("kind", "too_many_keys")]),
        Some(1.0)
    );
    // Thirteen new codes are not over 2 × the spike's seven.
    assert_eq!(
        gauge("mlgw_scoring_alarm", &[job, ("kind", "new_categories")]),
        Some(0.0)
    );
    assert_eq!(gauge("mlgw_scoring_last_run_refused", &[job]), Some(1.0));
    assert!(
        gauge("mlgw_scoring_served_batch_timestamp_seconds", &[job]).is_some_and(|t| t > 1.7e9)
    );
    assert_eq!(
        gauge(
            "mlgw_scoring_alarm",
            &[("job", "customer_risk_daily"), ("kind", "too_many_keys")]
        ),
        Some(0.0)
    );
    Ok(())
}

/// The admin API runs a job inside the gateway (the embedded store's only
/// writer), refuses a second run while one goes on, and lists the batch.
#[tokio::test]
async fn the_admin_api_runs_a_job_in_the_gateway() -> Result<()> {
    let s = Setup::new("admin", Backend::Embedded, 500, |t| t).await?;
    let gw = GatewayProcess::start_ready(&s.config).await?;
    let http = client_with_token(gw.token()?)?;
    let url = |p: &str| format!("{}/v1/admin/scoring/jobs/{p}", gw.http);
    let r = http.post(url("customer_risk_daily/run")).send().await?;
    assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);
    let r = http.post(url("no_such_job/run")).send().await?;
    assert_eq!(r.status().as_u16(), 404);
    let mut listed = Value::Null;
    for _ in 0..200 {
        listed = http
            .get(url("customer_risk_daily/batches"))
            .send()
            .await?
            .json()
            .await?;
        if listed["batches"][0]["served"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let batch = &listed["batches"][0];
    assert_eq!(
        (batch["status"].as_str(), batch["rows"].as_u64()),
        (Some("done"), Some(500)),
        "{listed}"
    );
    let (_, a) = predict(&gw, &http, "customer_risk", customer("c-3")).await?;
    assert_eq!(a["source"], "precomputed", "{a}");
    assert_eq!(a["precomputed"]["batch_id"], batch["batch_id"], "{a}");
    Ok(())
}

/// With `[scheduler]` enabled the gateway scores a job that is due (no
/// batch yet) by itself, and answers from the batch.
#[tokio::test]
async fn the_hosted_scheduler_scores_a_due_job() -> Result<()> {
    let s = Setup::new("scheduler", Backend::Embedded, 200, |t| t).await?;
    let mut text = std::fs::read_to_string(&s.config)?;
    text.push_str("[scheduler]\nenabled = true\npoll = \"1s\"\n");
    std::fs::write(&s.config, text)?;
    let gw = GatewayProcess::start_ready(&s.config).await?;
    let http = client_with_token(gw.token()?)?;
    let a = until_precomputed(&gw, &http, "c-9").await?;
    assert_eq!(a["source"], "precomputed", "{a}");
    let listed: Value = http
        .get(format!(
            "{}/v1/admin/scoring/jobs/customer_risk_daily/batches",
            gw.http
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["batches"][0]["rows"], 200, "{listed}");
    // Not due again within its interval: still one batch a few polls later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let listed: Value = http
        .get(format!(
            "{}/v1/admin/scoring/jobs/customer_risk_daily/batches",
            gw.http
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        listed["batches"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    Ok(())
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded_backend {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::embedded().await?).await
                }
            )*
        }
        mod cassandra_backend {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::cassandra().await?).await
                }
            )*
        }
    };
}

both_backends!(
    scored_entities_answer_as_live,
    another_stable_version_falls_back_live,
    shards_score_one_batch_together,
    a_killed_run_leaves_the_previous_batch_served,
    logged_combinations_are_scored_and_answered,
    key_files_rejections_and_cardinality_alarms,
);

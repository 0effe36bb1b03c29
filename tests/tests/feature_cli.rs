//! `mlgw-features`, the data engineers' CLI, run as a process the way a person
//! or a scheduler runs it: on the embedded store, and on the rig's Cassandra.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, Result};
use rig::gateway::definitions;
use rig::{ScratchDir, binary, rig_env};
use serde_json::Value;

struct Cli {
    store_args: Vec<String>,
    dir: ScratchDir,
}

impl Cli {
    fn new(store_args: Vec<String>) -> Result<Self> {
        let dir = ScratchDir::new("mlgw_cli")?;
        Ok(Cli { store_args, dir })
    }

    fn embedded() -> Result<Self> {
        let mut cli = Cli::new(Vec::new())?;
        cli.store_args = vec![
            "--embedded".into(),
            cli.dir.0.join("f.redb").display().to_string(),
        ];
        Ok(cli)
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        let out = std::process::Command::new(binary("mlgw-features")?)
            .args(&self.store_args)
            .args(args)
            .env_remove("MLGW_FEATURES_EMBEDDED")
            .env_remove("MLGW_SCYLLA_NODES")
            .output()
            .context("running mlgw-features")?;
        Ok(out)
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all)?;
        anyhow::ensure!(
            out.status.success(),
            "mlgw-features {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn file(&self, name: &str, content: &str) -> Result<String> {
        Ok(self.dir.file(name, content)?.display().to_string())
    }

    /// `read` of `entity`'s `customer_profile` row.
    fn read_profile(&self, defs: &str, entity: &str) -> Result<Value> {
        self.json(&[
            "read",
            "-d",
            defs,
            "--entity",
            entity,
            "--view",
            "customer_profile",
        ])
    }

    /// `batches reap` of `customer_profile`.
    fn reap(&self) -> Result<Value> {
        self.json(&["batches", "reap", "--view", "customer_profile"])
    }
}

/// `push` to `entity`'s `customer_activity`, then `rest`.
fn push_activity<'a>(defs: &'a str, entity: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "push",
        "-d",
        defs,
        "--view",
        "customer_activity",
        "--entity",
        entity,
    ];
    args.extend_from_slice(rest);
    args
}

/// `refresh run` of the `customer_profile_daily` job on `file`, then `rest`.
fn refresh_profile<'a>(defs: &'a str, file: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "refresh",
        "run",
        "-d",
        defs,
        "--job",
        "customer_profile_daily",
        "--file",
        file,
    ];
    args.extend_from_slice(rest);
    args
}

const PROFILE: &str = "customer_id,account_age_days,avg_txn_amount_30d,txn_count_30d,chargeback_count_1y,home_country_risk\n\
c-1,400,52.5,31,0,0.1\n\
c-2,12,8.25,3,1,0.4\n\
c-3,abc,1,1,1,1\n";

fn a_day_in_the_life(cli: &Cli) -> Result<()> {
    let defs = definitions();
    let defs = defs.to_str().context("path")?;
    let schema = cli.json(&["schema", "apply"])?;
    // Both backends are at the same schema version.
    assert_eq!(
        feature_store::store::embedded::SCHEMA_VERSION,
        feature_store::store::scylla::SCHEMA_VERSION
    );
    assert_eq!(
        schema["report"]["to_version"],
        feature_store::store::embedded::SCHEMA_VERSION
    );
    let file = cli.file("profile.csv", PROFILE)?;
    let refresh = refresh_profile(
        defs,
        &file,
        &[
            "--script-version",
            "profile-v7",
            "--max-rejected-percent",
            "50",
        ],
    );
    let loaded = cli.json(&refresh)?;
    assert_eq!(loaded["outcome"], "loaded");
    let batch = &loaded["batch"];
    assert_eq!(batch["status"], "done");
    assert_eq!(batch["rows_written"], 2);
    assert_eq!(batch["rows_rejected"], 1);
    assert_eq!(batch["script_version"], "profile-v7");
    assert_eq!(batch["rejections"][0]["line"], 4);
    let batch_id = batch["batch_id"].as_str().context("batch_id")?.to_owned();
    // The same input again does nothing.
    assert_eq!(cli.json(&refresh)?["outcome"], "unchanged");

    let listed = cli.json(&["batches", "list", "--view", "customer_profile"])?;
    assert_eq!(listed["batches"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["batches"][0]["batch_id"], batch_id.as_str());

    let pushed = cli.json(&push_activity(
        defs,
        "c-1",
        &[
            "--set",
            "distinct_merchants_24h=4",
            "--set",
            "minutes_since_last_txn=3.5",
        ],
    ))?;
    assert_eq!(pushed["written"], 2);
    // Raw events feed the windowed aggregates; the same event twice (same
    // event time, derived ID) counts once.
    let now_s = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            - 60
    );
    for _ in 0..2 {
        let event = cli.json(&push_activity(
            defs,
            "c-1",
            &[
                "--field",
                "transaction_id=t-1",
                "--field",
                "amount=12.5",
                "--event-time",
                &now_s,
            ],
        ))?;
        assert!(
            event["event_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("sha256:")),
            "{event}"
        );
    }
    cli.json(&push_activity(
        defs,
        "c-1",
        &["--field", "amount=7.25", "--event-id", "t-2"],
    ))?;

    let read = cli.json(&["read", "-d", defs, "--entity", "c-1"])?;
    let profile = &read["views"][0];
    assert_eq!(profile["view"], "customer_profile");
    assert_eq!(profile["batch_id"], batch_id.as_str());
    assert_eq!(profile["features"][1]["value"], 52.5);
    assert_eq!(profile["features"][1]["state"], "present");
    let activity = &read["views"][1];
    // txn_count_1h: events carrying transaction_id; txn_amount_sum_1h: both.
    assert_eq!(activity["features"][0]["value"], 1, "{activity}");
    assert_eq!(activity["features"][0]["state"], "present");
    assert_eq!(activity["features"][1]["value"], 19.75, "{activity}");
    assert_eq!(activity["features"][2]["value"], 4);
    assert_eq!(activity["features"][3]["state"], "default (no value)");
    let missing = cli.read_profile(defs, "c-404")?;
    assert_eq!(
        missing["views"][0]["features"][0]["state"],
        "default (no row)"
    );
    assert_eq!(
        missing["views"][0]["features"][0]["value"], 1,
        "declared default"
    );

    // Human output names things a person recognises.
    let out = cli.run(&["batches", "list", "--view", "customer_profile"])?;
    let text = String::from_utf8(out.stdout)?;
    assert!(
        text.contains(&batch_id) && text.contains("*current"),
        "{text}"
    );

    // A failing batch: exit 1, the reason on stderr, the old batch still served.
    let bad = cli.file("bad.csv", "customer_id,account_age_days\nc-1,x\nc-2,y\n")?;
    let out = cli.run(&refresh_profile(defs, &bad, &[]))?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("2 of 2 rows rejected") && err.contains("keeps serving its previous batch"),
        "{err}"
    );
    let read = cli.read_profile(defs, "c-2")?;
    assert_eq!(read["views"][0]["batch_id"], batch_id.as_str());
    Ok(())
}

/// Waits `d` on this (test) thread: a receive that never gets a message.
fn pause(d: std::time::Duration) {
    let (_keep, wait) = std::sync::mpsc::channel::<()>();
    let _ = wait.recv_timeout(d);
}

/// A refresh killed midway (SIGKILL: it cannot say anything) leaves its batch
/// `processing`; the previous batch keeps being served; once the run's
/// liveness has lapsed, `batches reap` fails the batch as interrupted and
/// discards its rows, and the next run starts clean.
fn a_killed_refresh(cli: &Cli) -> Result<()> {
    let defs = definitions();
    let defs = defs.to_str().context("path")?;
    cli.json(&["schema", "apply"])?;
    let small = cli.file("small.csv", PROFILE)?;
    // A short liveness, so the killed run's lease lapses within the test.
    let leased = ["--max-rejected-percent", "50", "--liveness", "3s"];
    let first = cli.json(&refresh_profile(defs, &small, &leased))?;
    let served = first["batch"]["batch_id"]
        .as_str()
        .context("batch_id")?
        .to_owned();

    // Big enough that the load is still writing when it is killed.
    let mut big = String::from(PROFILE.lines().next().context("header")?);
    big.push('\n');
    for i in 0..1_000_000 {
        big.push_str(&format!(
            "k-{i},{},{}.5,{},0,0.2\n",
            i % 900,
            i % 70,
            i % 40
        ));
    }
    let big = cli.file("big.csv", &big)?;
    let mut child = std::process::Command::new(binary("mlgw-features")?)
        .args(&cli.store_args)
        .args(refresh_profile(defs, &big, &leased))
        .env_remove("MLGW_FEATURES_EMBEDDED")
        .env_remove("MLGW_SCYLLA_NODES")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let list = || cli.json(&["batches", "list", "--view", "customer_profile"]);
    let started = std::time::Instant::now();
    let interrupted = loop {
        let listed = list()?;
        let running = listed["batches"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["batch_id"] != served.as_str()))
            .cloned();
        if let Some(b) = running
            && b["status"] == "processing"
        {
            break b["batch_id"].as_str().context("batch_id")?.to_owned();
        }
        anyhow::ensure!(
            child.try_wait()?.is_none(),
            "the big refresh ended before it could be killed; make the file bigger"
        );
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the big refresh never started processing: {listed}"
        );
        pause(std::time::Duration::from_millis(50));
    };
    child.kill()?;
    child.wait()?;

    // Right after: still processing, and nobody serves it.
    let listed = list()?;
    let status_of = |listed: &Value, id: &str| {
        listed["batches"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["batch_id"] == id))
            .map(|b| b["status"].clone())
    };
    assert_eq!(status_of(&listed, &interrupted), Some("processing".into()));
    let read = cli.read_profile(defs, "c-1")?;
    assert_eq!(read["views"][0]["batch_id"], served.as_str());
    // Its lease has not lapsed yet: a reap now leaves it alone.
    let early = cli.reap()?;
    assert_eq!(early["reaped"].as_array().map(Vec::len), Some(0), "{early}");

    pause(std::time::Duration::from_millis(3500));
    let reaped = cli.reap()?;
    assert_eq!(
        reaped["reaped"].as_array().map(Vec::len),
        Some(1),
        "{reaped}"
    );
    assert_eq!(reaped["reaped"][0]["batch_id"], interrupted.as_str());
    assert_eq!(reaped["reaped"][0]["status"], "failed");
    let why = reaped["reaped"][0]["error"].as_str().unwrap_or_default();
    assert!(why.starts_with("interrupted"), "{why}");
    let listed = list()?;
    assert_eq!(status_of(&listed, &interrupted), Some("failed".into()));
    assert_eq!(status_of(&listed, &served), Some("done".into()));
    // An entity only the interrupted batch had is not served from it.
    let read = cli.read_profile(defs, "k-7")?;
    assert_ne!(read["views"][0]["batch_id"], interrupted.as_str());
    assert_eq!(
        read["views"][0]["features"][0]["state"], "default (no row)",
        "{read}"
    );
    // A second reap finds nothing more.
    let again = cli.reap()?;
    assert_eq!(again["reaped"].as_array().map(Vec::len), Some(0));
    Ok(())
}

#[test]
fn data_engineer_workflow_on_the_embedded_store() -> Result<()> {
    a_day_in_the_life(&Cli::embedded()?)
}

#[test]
fn killed_refresh_on_the_embedded_store() -> Result<()> {
    a_killed_refresh(&Cli::embedded()?)
}

#[test]
fn killed_refresh_on_cassandra() -> Result<()> {
    a_killed_refresh(&cassandra_cli()?)
}

fn cassandra_cli() -> Result<Cli> {
    let addr = rig_env("MLGW_TEST_CASSANDRA")?;
    Cli::new(vec![
        "--scylla".into(),
        addr,
        "--keyspace".into(),
        rig::unique("cli"),
        "--read-timeout-ms".into(),
        "5000".into(),
    ])
}

#[test]
fn data_engineer_workflow_on_cassandra() -> Result<()> {
    a_day_in_the_life(&cassandra_cli()?)
}

#[test]
fn mistakes_get_messages_a_person_can_act_on() -> Result<()> {
    let cli = Cli::embedded()?;
    let defs = definitions();
    let defs = defs.to_str().context("path")?;
    let broken = cli.file(
        "broken.toml",
        &std::fs::read_to_string(Path::new(defs))?
            .replace("type = \"int64\"", "type = \"integer\""),
    )?;
    let cases: [(Vec<&str>, &str); 7] = [
        (vec!["validate", "-d", &broken], "broken.toml"),
        (
            vec![
                "refresh", "run", "-d", defs, "--job", "nightly", "--file", "x.csv",
            ],
            "no static view is refreshed by job \"nightly\"; jobs: \"customer_profile_daily\"",
        ),
        (
            vec!["batches", "list", "--view", "customer_profile"],
            "run `mlgw-features schema apply`",
        ),
        (
            push_activity(defs, "c", &["--set", "distinct_merchants_24h=many"]),
            "\"many\" is not a valid int64",
        ),
        (
            push_activity(defs, "c", &["--set", "txn_count_1h=3"]),
            "computed by the feature store",
        ),
        (
            push_activity(defs, "c", &["--field", "amount=lots"]),
            "--field \"amount=lots\": \"lots\" is not a number",
        ),
        (
            vec!["read", "-d", defs, "--entity", "c", "--view", "nope"],
            "unknown feature view \"nope\"",
        ),
    ];
    for (args, needle) in cases {
        let out = cli.run(&args)?;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr)?;
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should contain {needle:?}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    cli.run(&["schema", "apply"])?;
    let csv = cli.file("p.txt", "a,b\n")?;
    let out = cli.run(&refresh_profile(defs, &csv, &[]))?;
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("expected a .csv or .parquet file"), "{err}");
    Ok(())
}

fn merchant_definitions() -> PathBuf {
    rig::workspace_root().join("feature-store/definitions/merchants.toml")
}

/// `refresh run` of the merchant embeddings job on `file`, rejecting up to
/// every row; the JSON report (a run whose rows are all rejected fails but
/// still reports its batch).
fn refresh_merchants(cli: &Cli, defs: &str, file: &str) -> Result<Value> {
    let out = cli.run(&[
        "--json",
        "refresh",
        "run",
        "-d",
        defs,
        "--job",
        "merchant_embedding_weekly",
        "--file",
        file,
        "--max-rejected-percent",
        "100",
    ])?;
    serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The example merchant embeddings load as `vector(64)` values and read back
/// exactly; rows with a wrong length, a non-finite value or text are
/// rejected with their line and the reason.
fn embeddings_load_as_vectors(cli: &Cli) -> Result<()> {
    let defs = merchant_definitions();
    let defs = defs.to_str().context("path")?;
    cli.json(&["schema", "apply"])?;
    let csv =
        rig::workspace_root().join("feature-store/definitions/exports/merchant_embedding.csv");
    let text = std::fs::read_to_string(&csv)?;
    let loaded = refresh_merchants(cli, defs, csv.to_str().context("path")?)?;
    assert_eq!(loaded["outcome"], "loaded", "{loaded}");
    assert_eq!(loaded["batch"]["rows_written"], 2000, "{loaded}");
    assert_eq!(loaded["batch"]["rows_rejected"], 0, "{loaded}");
    // The view declares an index: the refresh built it from the new batch.
    assert_eq!(loaded["index"]["outcome"], "built", "{loaded}");
    assert_eq!(loaded["index"]["report"]["vectors"], 2000, "{loaded}");
    assert_eq!(
        loaded["index"]["report"]["source_batch"], loaded["batch"]["batch_id"],
        "{loaded}"
    );
    // Its answers agree with brute force over the file's vectors.
    let vectors = rig::example_embeddings()?;
    let mut hits = 0;
    for id in ["m-00042", "m-00777", "m-01500", "m-01999"] {
        let answer = cli.json(&[
            "index",
            "query",
            "-d",
            defs,
            "--view",
            "merchant_embedding",
            "--entity",
            id,
            "--k",
            "10",
        ])?;
        let got: Vec<&str> = answer["neighbours"]
            .as_array()
            .context("neighbours")?
            .iter()
            .filter_map(|n| n["entity"].as_str())
            .collect();
        assert!(!got.contains(&id), "{answer}");
        let truth = rig::cosine_top(&vectors, id, 10)?;
        hits += got.iter().filter(|g| truth.iter().any(|t| t == *g)).count();
    }
    assert!(hits >= 38, "{hits} of 40 true neighbours found");

    // m-00042 reads back with the file's 64 numbers.
    let line = text
        .lines()
        .find(|l| l.starts_with("m-00042,"))
        .context("m-00042 in the file")?;
    let cell = line.split('"').nth(1).context("quoted vector")?;
    let expected: Vec<f64> = cell
        .split_whitespace()
        .map(|x| x.parse::<f32>().map(f64::from))
        .collect::<Result<_, _>>()?;
    assert_eq!(expected.len(), 64);
    let read = cli.json(&[
        "read",
        "-d",
        defs,
        "--entity",
        "m-00042",
        "--view",
        "merchant_embedding",
    ])?;
    let embedding = read["views"][0]["features"]
        .as_array()
        .context("features")?
        .iter()
        .find(|f| f["name"] == "embedding")
        .context("embedding feature")?;
    let got: Vec<f64> = embedding["value"]
        .as_array()
        .context("vector as a JSON array")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert_eq!(got, expected, "{read}");

    let bad = cli.file(
        "bad_embedding.csv",
        "merchant_id,category,region,embedding\n\
         m-1,travel,FR,\"0.5 0.5\"\n\
         m-2,travel,FR,\"[0.1, 0.2]\"\n",
    )?;
    let out = refresh_merchants(cli, defs, &bad)?;
    let rejections = out["batch"]["rejections"]
        .as_array()
        .context("rejections")?;
    assert_eq!(rejections.len(), 2, "{out}");
    assert_eq!(rejections[0]["line"], 2);
    let reason = rejections[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("embedding")
            && reason.contains("has 2 components; the feature is vector(64)"),
        "{reason}"
    );
    let mut row = vec!["0.1"; 64];
    row[9] = "NaN";
    let mut texty = vec!["0.1"; 64];
    texty[3] = "x";
    let bad = cli.file(
        "bad_values.csv",
        &format!(
            "merchant_id,category,region,embedding\nm-3,travel,FR,\"{}\"\nm-4,travel,FR,\"{}\"\n",
            row.join(" "),
            texty.join(",")
        ),
    )?;
    let out = refresh_merchants(cli, defs, &bad)?;
    let reasons: Vec<&str> = out["batch"]["rejections"]
        .as_array()
        .context("rejections")?
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert!(
        reasons[0].contains("component 10 is NaN, not a finite number"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("component 4 is \"x\", not a number"),
        "{reasons:?}"
    );
    Ok(())
}

#[test]
fn embeddings_load_as_vectors_on_the_embedded_store() -> Result<()> {
    embeddings_load_as_vectors(&Cli::embedded()?)
}

/// `index size` on the example: a table from 64 dimensions down, recall
/// falling with the dimension, a recommendation that holds the view's
/// threshold, and the table and plot written to the folder given.
#[test]
fn index_sizing_recommends_a_dimension_with_a_table_and_a_plot() -> Result<()> {
    let cli = Cli::embedded()?;
    let defs = merchant_definitions();
    let defs = defs.to_str().context("path")?;
    cli.json(&["schema", "apply"])?;
    let csv =
        rig::workspace_root().join("feature-store/definitions/exports/merchant_embedding.csv");
    refresh_merchants(&cli, defs, csv.to_str().context("path")?)?;
    let scratch = PathBuf::from(cli.file("sizing.keep", "")?);
    let folder = scratch.parent().context("folder")?.join("sizing");
    let folder = folder.as_path();
    let sizing = cli.json(&[
        "index",
        "size",
        "-d",
        defs,
        "--view",
        "merchant_embedding",
        "--dims",
        "32,16,8",
        "--queries",
        "200",
        "--out",
        folder.to_str().context("path")?,
    ])?;
    let rows = sizing["rows"].as_array().context("rows")?;
    let dims: Vec<u64> = rows
        .iter()
        .filter_map(|r| r["dimensions"].as_u64())
        .collect();
    assert_eq!(dims, [64, 32, 16, 8], "{sizing}");
    let recall: Vec<f64> = rows.iter().filter_map(|r| r["recall"].as_f64()).collect();
    assert!(recall[0] >= 0.95, "{sizing}");
    assert!(
        recall.windows(2).all(|w| w[0] > w[1]),
        "recall should fall with the dimension: {recall:?}"
    );
    let recommended = sizing["recommended"].as_u64().context("a recommendation")?;
    let at = dims
        .iter()
        .position(|&d| d == recommended)
        .context("recommended row")?;
    assert!(recall[at] >= 0.95, "{sizing}");
    assert!(
        dims.iter()
            .zip(&recall)
            .all(|(&d, &r)| d >= recommended || r < 0.95)
    );
    let table = std::fs::read_to_string(folder.join("sizing.md"))?;
    assert!(
        table.contains("| dimensions |") && table.contains("Recommended:"),
        "{table}"
    );
    let svg = std::fs::read_to_string(folder.join("sizing.svg"))?;
    assert!(
        svg.starts_with("<svg") && svg.contains("recall@10"),
        "{svg}"
    );
    Ok(())
}

#[test]
fn embeddings_load_as_vectors_on_cassandra() -> Result<()> {
    embeddings_load_as_vectors(&cassandra_cli()?)
}

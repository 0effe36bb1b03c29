//! Similarity lookups end to end on Cassandra: the example merchant
//! embeddings are loaded and indexed by the build job, a real gateway
//! serves `POST /v1/similar/{view}` and gRPC `Similar` with SSO tokens, its
//! answers agree with brute force, a new batch's index is swapped in while
//! callers query without a failed or mixed answer, and bad input gets the
//! status and message a caller can act on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use feature_store::definitions::FeatureDefinitions;
use feature_store::similarity;
use feature_store::store::scylla::ScyllaStore;
use feature_store::store::{BatchStore as _, RowStore as _};
use proto::gateway::v1 as pb;
use rig::gateway::{Bearer, DEV_AUTH, GatewayProcess, client_with_token, config_text};
use rig::store::{refresh_file, scylla_config};
use serde_json::{Value, json};

const VIEW: &str = "merchant_embedding";
const JOB: &str = "merchant_embedding_weekly";

fn example_definitions() -> PathBuf {
    rig::workspace_root().join("feature-store/definitions/example.toml")
}

fn embeddings_csv() -> PathBuf {
    rig::workspace_root().join("feature-store/definitions/exports/merchant_embedding.csv")
}

/// The example file with every merchant's vector moved to the next
/// merchant: a batch whose neighbours differ from the original's.
fn rotated_csv(dir: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(embeddings_csv())?;
    let mut lines = text.lines();
    let header = lines.next().context("header")?;
    let rows: Vec<&str> = lines.collect();
    let cells: Vec<&str> = rows
        .iter()
        .map(|l| l.split('"').nth(1).unwrap_or_default())
        .collect();
    let mut out = format!("{header}\n");
    for (i, row) in rows.iter().enumerate() {
        let prefix = row.split('"').next().unwrap_or_default();
        let moved = cells[(i + 1) % cells.len()];
        out.push_str(&format!("{prefix}\"{moved}\"\n"));
    }
    let path = dir.join("rotated.csv");
    std::fs::write(&path, out)?;
    Ok(path)
}

struct Rig {
    store: ScyllaStore,
    defs: FeatureDefinitions,
    gw: GatewayProcess,
    http: reqwest::Client,
    dir: rig::ScratchDir,
}

impl Rig {
    async fn start() -> Result<Self> {
        let address = rig::rig_env("MLGW_TEST_CASSANDRA")?;
        let keyspace = rig::unique("similar");
        let store = ScyllaStore::connect(scylla_config(&address, keyspace.clone())).await?;
        store.apply_schema().await.context("applying the schema")?;
        let defs = FeatureDefinitions::load(&example_definitions())?;
        refresh_file(&store, &defs, JOB, &embeddings_csv()).await?;
        let built = similarity::build(&store, &defs, VIEW, 2, false).await?;
        ensure!(built.built && built.vectors == 2000, "{built:?}");

        let dir = rig::ScratchDir::new("similar")?;
        let auth =
            format!("{DEV_AUTH}[[auth.allow]]\napi = \"similar\"\ngroups = [\"fraud-team\"]\n");
        let text = config_text(&rig::rig_env("MLGW_TEST_MODEL_SERVER_GRPC")?, &auth)
            .replace(
                &format!("{}", rig::gateway::definitions().display()),
                &format!("{}", example_definitions().display()),
            )
            .replace(
                "backend = \"embedded\"\npath = \"features.redb\"",
                &format!(
                    "backend = \"scylla\"\nnodes = [\"{address}\"]\nkeyspace = \"{keyspace}\"\n\
                     read_timeout_ms = 2000\nwrite_timeout_ms = 5000"
                ),
            );
        let config = dir.file("gateway.toml", text)?;
        let gw = GatewayProcess::start_ready(&config).await?;
        let http = client_with_token(gw.token()?)?;
        Ok(Rig {
            store,
            defs,
            gw,
            http,
            dir,
        })
    }

    async fn similar(&self, body: &Value) -> Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}/v1/similar/{VIEW}", self.gw.http))
            .json(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }
}

fn neighbours(answer: &Value) -> Vec<String> {
    answer["neighbours"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|x| x["entity"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// REST and gRPC answer with the index's neighbours, which agree with brute
/// force; the query entity is left out unless asked for; bad input gets 400
/// or 404 naming what is wrong; no token gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similar_merchants_over_rest_and_grpc_agree_with_brute_force() -> Result<()> {
    let rig = Rig::start().await?;
    let vectors = rig::example_embeddings()?;

    // REST by entity: recall@10 against brute force over 50 merchants.
    let mut hits = 0;
    for i in (0..2000).step_by(40) {
        let id = format!("m-{i:05}");
        let (status, answer) = rig
            .similar(&json!({"entity": {"merchant_id": id}, "k": 10}))
            .await?;
        ensure!(status == 200, "{status} {answer}");
        let got = neighbours(&answer);
        ensure!(got.len() == 10 && !got.contains(&id), "{answer}");
        let truth: BTreeSet<String> = rig::cosine_top(&vectors, &id, 10)?.into_iter().collect();
        hits += got.iter().filter(|g| truth.contains(*g)).count();
        assert_eq!(answer["distance"], "cosine");
        assert_eq!(answer["view"], VIEW);
        let d: Vec<f64> = answer["neighbours"]
            .as_array()
            .context("neighbours")?
            .iter()
            .filter_map(|n| n["distance"].as_f64())
            .collect();
        ensure!(
            d.windows(2).all(|w| w[0] <= w[1] + 1e-6),
            "not nearest first: {d:?}"
        );
    }
    let recall = hits as f64 / 500.0;
    assert!(recall >= 0.95, "recall@10 {recall} against brute force");

    // The answer says which batch and how old it is.
    let current = rig.store.current_batches().await?;
    let batch = &current.get(VIEW).context("current batch")?.batch_id;
    let (_, answer) = rig
        .similar(&json!({"entity": {"merchant_id": "m-00042"}, "k": 3, "include_query": true}))
        .await?;
    assert_eq!(
        answer["batch_id"].as_str(),
        Some(batch.as_str()),
        "{answer}"
    );
    assert!(
        answer["index_age_s"].as_f64().is_some_and(|a| a >= 0.0),
        "{answer}"
    );
    // With include_query, a merchant is its own nearest neighbour.
    assert_eq!(
        neighbours(&answer).first().map(String::as_str),
        Some("m-00042")
    );

    // By vector: m-00042's own vector finds m-00042 first.
    let v42 = &vectors
        .iter()
        .find(|(m, _)| m == "m-00042")
        .context("m-00042")?
        .1;
    // (An approximate search: found among the five, not always first, as
    // its near-twins are a few thousandths away.)
    let (status, answer) = rig.similar(&json!({"vector": v42, "k": 5})).await?;
    assert_eq!(status, 200, "{answer}");
    assert!(
        neighbours(&answer).iter().any(|m| m == "m-00042"),
        "{answer}"
    );

    // gRPC, with the same token: the same neighbours as REST.
    let channel = rig.gw.channel().await?;
    let mut grpc = pb::similarity_service_client::SimilarityServiceClient::with_interceptor(
        channel,
        Bearer::new(rig.gw.token()?)?,
    );
    let entity = pb::EntityKey {
        keys: [("merchant_id".to_owned(), "m-00042".to_owned())].into(),
    };
    let answer = grpc
        .similar(pb::SimilarRequest {
            view: VIEW.into(),
            query: Some(pb::similar_request::Query::Entity(entity.clone())),
            k: 10,
            include_query: false,
        })
        .await?
        .into_inner();
    let (_, rest) = rig
        .similar(&json!({"entity": {"merchant_id": "m-00042"}, "k": 10}))
        .await?;
    let grpc_ids: Vec<String> = answer.neighbours.iter().map(|n| n.entity.clone()).collect();
    assert_eq!(grpc_ids, neighbours(&rest));
    assert_eq!(answer.batch_id, *batch);

    // Bad input over REST.
    let refused = |status: u16, answer: &Value, want: u16, code: &str, says: &str| {
        assert_eq!(status, want, "{answer}");
        assert_eq!(answer["code"], code, "{answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{message:?} should say {says:?}");
    };
    let (s, a) = rig
        .similar(&json!({"entity": {"merchant_id": "m-99999"}}))
        .await?;
    refused(s, &a, 404, "unknown_entity", "\"m-99999\"");
    let (s, a) = rig.similar(&json!({"vector": [0.1, 0.2, 0.3]})).await?;
    refused(
        s,
        &a,
        400,
        "invalid_argument",
        "has 3 values; this index holds vectors of 64",
    );
    let mut huge = vec![0.1f64; 64];
    huge[7] = 1e39;
    let (s, a) = rig.similar(&json!({"vector": huge})).await?;
    refused(
        s,
        &a,
        400,
        "invalid_argument",
        "value 7 of the vector is inf",
    );
    let (s, a) = rig
        .similar(&json!({"entity": {"merchant_id": "m-00042"}, "k": 101}))
        .await?;
    refused(
        s,
        &a,
        400,
        "invalid_argument",
        "ask for 1 to 100 neighbours",
    );
    let (s, a) = rig
        .similar(&json!({"entity": {"merchant_id": "m-1"}, "vector": v42}))
        .await?;
    refused(s, &a, 400, "invalid_argument", "either `entity`");
    let (s, a) = rig
        .similar(&json!({"entity": {"customer_id": "c-1"}}))
        .await?;
    refused(
        s,
        &a,
        400,
        "invalid_argument",
        "unknown key column \"customer_id\"",
    );
    let r = rig
        .http
        .post(format!("{}/v1/similar/customer_profile", rig.gw.http))
        .json(&json!({"entity": {"customer_id": "c-1"}}))
        .send()
        .await?;
    let (s, a) = (r.status().as_u16(), r.json::<Value>().await?);
    refused(
        s,
        &a,
        404,
        "unknown_index",
        "indexed views: merchant_embedding",
    );
    let anonymous = reqwest::Client::new()
        .post(format!("{}/v1/similar/{VIEW}", rig.gw.http))
        .json(&json!({"entity": {"merchant_id": "m-00042"}}))
        .send()
        .await?;
    assert_eq!(anonymous.status().as_u16(), 401);

    // Bad input over gRPC: a NaN and an unknown entity.
    let mut nan = vec![0.1f32; 64];
    nan[3] = f32::NAN;
    let status = grpc
        .similar(pb::SimilarRequest {
            view: VIEW.into(),
            query: Some(pb::similar_request::Query::Vector(pb::QueryVector {
                values: nan,
            })),
            k: 5,
            include_query: false,
        })
        .await
        .err()
        .context("a NaN must be refused")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("NaN"), "{status:?}");
    let status = grpc
        .similar(pb::SimilarRequest {
            view: VIEW.into(),
            query: Some(pb::similar_request::Query::Entity(pb::EntityKey {
                keys: [("merchant_id".to_owned(), "m-77777".to_owned())].into(),
            })),
            k: 5,
            include_query: false,
        })
        .await
        .err()
        .context("an unknown entity must be refused")?;
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let _ = &rig.defs;
    let _ = &rig.dir;
    rig.gw.stop().await
}

/// A new batch's index is built while callers keep querying: every answer
/// succeeds, each comes whole from one index (old or new), and the new one
/// answers within a few polls of being made current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_index_is_swapped_in_under_load_without_a_failed_or_mixed_answer() -> Result<()> {
    let rig = Arc::new(Rig::start().await?);
    let queries: Vec<String> = (0..2000).step_by(97).map(|i| format!("m-{i:05}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..8 {
        let (rig, stop, queries) = (Arc::clone(&rig), Arc::clone(&stop), queries.clone());
        callers.push(tokio::spawn(async move {
            // (index ID, query) → the neighbours seen, and every failure.
            let mut seen: Vec<(String, String, Vec<String>)> = Vec::new();
            let mut failures = Vec::new();
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let q = &queries[i % queries.len()];
                i += 1;
                match rig
                    .similar(&json!({"entity": {"merchant_id": q}, "k": 10}))
                    .await
                {
                    Ok((200, a)) => seen.push((
                        a["index_id"].as_str().unwrap_or_default().to_owned(),
                        q.clone(),
                        neighbours(&a),
                    )),
                    Ok((s, a)) => failures.push(format!("{s} {a}")),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (seen, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rig.store.current_batches().await?;
    let old_index = before
        .get(&similarity::index_target(VIEW))
        .context("current index")?
        .batch_id
        .clone();
    let rotated = rotated_csv(&rig.dir.0)?;
    refresh_file(&rig.store, &rig.defs, JOB, &rotated).await?;
    let built = similarity::build(&rig.store, &rig.defs, VIEW, 2, false).await?;
    ensure!(built.built, "{built:?}");
    let made_current = Instant::now();
    // Wait until the gateway answers from the new index.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, a) = rig
            .similar(&json!({"entity": {"merchant_id": "m-00000"}, "k": 10}))
            .await?;
        if s == 200 && a["index_id"] == built.index_batch.as_str() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the new index {} never answered: {a}", built.index_batch);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let swap_seen = made_current.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers: BTreeMap<(String, String), BTreeSet<Vec<String>>> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut total = 0;
    for c in callers {
        let (seen, failed) = c.await?;
        total += seen.len();
        failures.extend(failed);
        for (index, q, n) in seen {
            answers.entry((index, q)).or_default().insert(n);
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed answers: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let indexes: BTreeSet<&str> = answers.keys().map(|(i, _)| i.as_str()).collect();
    assert_eq!(
        indexes,
        [old_index.as_str(), built.index_batch.as_str()].into(),
        "answers came from {indexes:?}"
    );
    // One index, one answer per query: nothing mixed.
    for ((index, q), variants) in &answers {
        assert_eq!(
            variants.len(),
            1,
            "{q} got {} different answers from index {index}",
            variants.len()
        );
    }
    // The rotated batch really answers differently.
    let differ = queries
        .iter()
        .filter(|q| {
            answers.get(&(old_index.clone(), (*q).clone()))
                != answers.get(&(built.index_batch.clone(), (*q).clone()))
        })
        .count();
    assert!(
        differ > queries.len() / 2,
        "only {differ} queries changed with the new batch"
    );
    eprintln!(
        "{total} answers during the swap, new index answering {swap_seen:.2?} after it was made current"
    );
    // Both indexes' artifacts are kept (the current and the one before).
    Arc::try_unwrap(rig)
        .map_err(|_| anyhow::anyhow!("callers still hold the rig"))?
        .gw
        .stop()
        .await
}

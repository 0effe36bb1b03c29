//! End-to-end tests of the live model repository: versions added and removed
//! while a client keeps calling, a broken version reported and never served,
//! a file still being written left alone until complete, the V2 repository
//! extension (index, load, unload) and `default_version`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use proto::inference as pb;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use rig::{ModelServerProcess, TempRepo, example_repository_with, reference};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

const TOLERANCE: f32 = 1e-5;
/// Short, so versions show up quickly; the tests wait with deadlines.
const POLL_MS: &str = "200";
const WAIT: Duration = Duration::from_secs(30);

async fn start(repo: &TempRepo) -> Result<ModelServerProcess> {
    let mut server = ModelServerProcess::start(
        &repo.path,
        &["--repository-poll-ms", POLL_MS, "--instances", "1"],
    )
    .await?;
    server.wait_ready(Duration::from_secs(60)).await?;
    Ok(server)
}

async fn grpc(server: &ModelServerProcess) -> Result<GrpcInferenceServiceClient<Channel>> {
    Ok(GrpcInferenceServiceClient::connect(server.grpc_url.clone()).await?)
}

fn infer_request(version: &str, rows: &[Vec<f32>]) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "fraud_detector".into(),
        model_version: version.into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![rows.len() as i64, 15],
            parameters: Default::default(),
            contents: Some(pb::InferTensorContents {
                fp32_contents: rows.iter().flatten().copied().collect(),
                ..Default::default()
            }),
        }],
        ..Default::default()
    }
}

/// Labels and probabilities of a typed (non-raw) answer.
fn outputs(r: &pb::ModelInferResponse) -> Result<(Vec<i64>, Vec<f32>)> {
    let contents = |name: &str| {
        r.outputs
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.contents.clone())
            .with_context(|| format!("no {name} output"))
    };
    Ok((
        contents("label")?.int64_contents,
        contents("probabilities")?.fp32_contents,
    ))
}

/// Runs the reference rows of `reference_version` through `version` and
/// compares them with onnxruntime's outputs.
async fn assert_answers_like(
    client: &mut GrpcInferenceServiceClient<Channel>,
    version: &str,
    reference_version: u32,
) -> Result<()> {
    let reference = reference(reference_version)?;
    let (mut labels, mut probs) = (Vec::new(), Vec::new());
    for chunk in reference.inputs.chunks(64) {
        let r = client
            .model_infer(infer_request(version, chunk))
            .await?
            .into_inner();
        ensure!(
            r.model_version == version,
            "answered by {}",
            r.model_version
        );
        let (l, p) = outputs(&r)?;
        labels.extend(l);
        probs.extend(p);
    }
    ensure!(
        labels == reference.outputs.label,
        "labels differ from v{reference_version}"
    );
    let expected = reference.outputs.flat_probabilities();
    let worst = rig::max_abs_diff(&probs, &expected);
    ensure!(
        probs.len() == expected.len() && worst <= TOLERANCE,
        "probabilities differ from v{reference_version}: max abs diff {worst}"
    );
    Ok(())
}

/// Publishes `model.onnx` bytes as `version` the recommended way: written
/// under a dot-folder, then renamed in.
fn publish(repo: &TempRepo, version: &str, model: &[u8]) -> Result<()> {
    let folder = repo.path.join("fraud_detector");
    let staging = folder.join(format!(".{version}"));
    std::fs::create_dir_all(&staging)?;
    std::fs::write(staging.join("model.onnx"), model)?;
    std::fs::rename(&staging, folder.join(version))?;
    Ok(())
}

fn example_model(version: &str) -> Result<Vec<u8>> {
    let path = rig::example_repository().join(format!("fraud_detector/{version}/model.onnx"));
    std::fs::read(&path).with_context(|| format!("read {}", path.display()))
}

/// Polls `check` every 100 ms until it returns Some, failing after `WAIT`
/// with `what` and the server's log tail.
async fn wait_for<T, F, Fut>(server: &ModelServerProcess, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = check().await? {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: not within {WAIT:?}; log tail:\n{}",
                server.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metadata(http: &reqwest::Client, server: &ModelServerProcess) -> Result<Value> {
    Ok(http
        .get(format!("{}/v2/models/fraud_detector", server.http_url))
        .send()
        .await?
        .json()
        .await?)
}

async fn index(http: &reqwest::Client, server: &ModelServerProcess, body: Value) -> Result<Value> {
    let answer = http
        .post(format!("{}/v2/repository/index", server.http_url))
        .json(&body)
        .send()
        .await?;
    ensure!(answer.status() == 200, "index: {}", answer.status());
    Ok(answer.json().await?)
}

fn index_entry<'a>(index: &'a Value, version: &str) -> Option<&'a Value> {
    index
        .as_array()?
        .iter()
        .find(|e| e["name"] == "fraud_detector" && e["version"] == version)
}

fn versions(meta: &Value) -> Vec<String> {
    meta["versions"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn status(http: &reqwest::Client, url: String) -> Result<u16> {
    Ok(http.get(url).send().await?.status().as_u16())
}

/// What the background client saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    wrong_version: AtomicU64,
}

/// Calls unversioned (expecting `default`) and `versions` one after another
/// until `stop`, counting answers and failures.
fn keep_calling(
    mut client: GrpcInferenceServiceClient<Channel>,
    default: &'static str,
    versions: &'static [&'static str],
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let row = match reference(2) {
            Ok(r) => r.inputs[0].clone(),
            Err(e) => return vec![e.to_string()],
        };
        let mut errors = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for (asked, want) in
                std::iter::once(("", default)).chain(versions.iter().map(|v| (*v, *v)))
            {
                match client
                    .model_infer(infer_request(asked, std::slice::from_ref(&row)))
                    .await
                {
                    Ok(r) if r.get_ref().model_version == want => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        tally.wrong_version.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!(
                            "asked {asked:?}, answered by {}",
                            r.get_ref().model_version
                        ));
                    }
                    Err(status) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("asked {asked:?}: {status}"));
                    }
                }
            }
        }
        errors
    })
}

/// A copy of the example repository with versions 1 and 2 only (its own
/// default_version, 2), so these tests can publish 3 and 4 themselves.
fn tract_versions_only() -> Result<TempRepo> {
    let repo = example_repository_with(str::to_owned)?;
    for version in ["3", "4"] {
        std::fs::remove_dir_all(repo.path.join("fraud_detector").join(version))?;
    }
    Ok(repo)
}

/// Version 3 is published (dot-folder + rename), loaded, warmed and served
/// while a client keeps calling; version 1 is removed and answers not-found;
/// a garbage version 9 is reported FAILED and never served. The versions
/// that stay answer every call throughout, unversioned ones by the declared
/// `default_version`.
#[tokio::test]
async fn versions_come_and_go_while_callers_keep_calling() -> Result<()> {
    let repo = tract_versions_only()?;
    let server = start(&repo).await?;
    let http = reqwest::Client::new();
    let mut client = grpc(&server).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let background = keep_calling(
        grpc(&server).await?,
        "2",
        &["2"],
        stop.clone(),
        tally.clone(),
    );

    // Added: served only once ready, with version 2's answers (same file).
    publish(&repo, "3", &example_model("2")?)?;
    wait_for(&server, "metadata lists version 3", || async {
        Ok(versions(&metadata(&http, &server).await?)
            .contains(&"3".to_owned())
            .then_some(()))
    })
    .await?;
    let url = format!(
        "{}/v2/models/fraud_detector/versions/3/ready",
        server.http_url
    );
    ensure!(status(&http, url).await? == 200, "version 3 ready");
    assert_answers_like(&mut client, "3", 2).await?;
    let meta = metadata(&http, &server).await?;
    assert_eq!(meta["default_version"], "2", "{meta}");
    assert_eq!(versions(&meta), ["1", "2", "3"]);

    // Removed: gone from the metadata, then not found.
    std::fs::remove_dir_all(repo.path.join("fraud_detector/1"))?;
    wait_for(&server, "metadata drops version 1", || async {
        Ok((!versions(&metadata(&http, &server).await?).contains(&"1".to_owned())).then_some(()))
    })
    .await?;
    let gone = client
        .model_infer(infer_request("1", &reference(1)?.inputs[..1]))
        .await
        .err()
        .context("a removed version must not answer")?;
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert!(
        gone.message().contains("no version \"1\""),
        "{}",
        gone.message()
    );
    let url = format!(
        "{}/v2/models/fraud_detector/versions/1/ready",
        server.http_url
    );
    assert_eq!(status(&http, url).await?, 404);
    wait_for(&server, "the log says version 1 was unloaded", || async {
        Ok(server
            .log_tail()
            .contains("model version unloaded")
            .then_some(()))
    })
    .await?;

    // Garbage: FAILED with a reason in the index and the metadata, never served.
    publish(&repo, "9", b"this is not an ONNX graph")?;
    let failed = wait_for(&server, "the index reports version 9", || async {
        let index = index(&http, &server, json!({})).await?;
        Ok(index_entry(&index, "9")
            .filter(|e| e["state"] == "FAILED")
            .cloned())
    })
    .await?;
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("model.onnx"), "{failed}");
    let meta = metadata(&http, &server).await?;
    assert_eq!(versions(&meta), ["2", "3"], "{meta}");
    let states = meta["version_states"]
        .as_array()
        .context("version_states")?;
    assert!(
        states
            .iter()
            .any(|s| s["version"] == "9" && s["state"] == "FAILED" && s["reason"] == reason),
        "{meta}"
    );
    let refused = client
        .model_infer(infer_request("9", &reference(2)?.inputs[..1]))
        .await
        .err()
        .context("a failed version must not answer")?;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("failed to load"),
        "{}",
        refused.message()
    );
    let ready_only = index(&http, &server, json!({"ready": true})).await?;
    let listed: Vec<&str> = ready_only
        .as_array()
        .context("index is an array")?
        .iter()
        .filter_map(|e| e["version"].as_str())
        .collect();
    assert_eq!(listed, ["2", "3"]);
    let url = format!("{}/v2/health/ready", server.http_url);
    assert_eq!(status(&http, url).await?, 200, "still ready");
    let page = rig::metrics::Page::scrape(&http, &server.http_url).await?;
    let failures = page.value(
        "mlgw_model_server_version_load_failures_total",
        &[("model", "fraud_detector")],
    );
    assert_eq!(failures, Some(1.0));
    let state = |v: &str, s: &str| {
        page.value(
            "mlgw_model_server_version_state",
            &[("model", "fraud_detector"), ("version", v), ("state", s)],
        )
    };
    assert_eq!(state("9", "FAILED"), Some(1.0));
    assert_eq!(state("3", "READY"), Some(1.0));
    assert_eq!(state("1", "READY"), None, "a removed version has no series");

    stop.store(true, Ordering::Relaxed);
    let errors = background.await?;
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(errors.is_empty(), "the background client saw: {errors:?}");
    assert!(ok > 20, "only {ok} background calls answered");
    Ok(())
}

/// A `model.onnx` still being written (in place, against the advice) is not
/// loaded half-way: it waits until the file stops changing, then serves.
#[tokio::test]
async fn a_version_still_being_written_waits_until_complete() -> Result<()> {
    let repo = tract_versions_only()?;
    let server = start(&repo).await?;
    let http = reqwest::Client::new();
    let model = example_model("2")?;
    let folder = repo.path.join("fraud_detector/4");
    std::fs::create_dir_all(&folder)?;
    let path = folder.join("model.onnx");
    // Appended in 20 pieces over ~2 s: ten poll intervals with the file
    // changing in each.
    let piece = model.len().div_ceil(20);
    for chunk in model.chunks(piece) {
        append(&path, chunk)?;
        let index = index(&http, &server, json!({})).await?;
        if let Some(e) = index_entry(&index, "4") {
            ensure!(e["state"] == "LOADING", "while written: {e}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(&server, "version 4 is served", || async {
        let index = index(&http, &server, json!({})).await?;
        Ok(index_entry(&index, "4")
            .filter(|e| e["state"] == "READY")
            .map(|_| ()))
    })
    .await?;
    let mut client = grpc(&server).await?;
    assert_answers_like(&mut client, "4", 2).await?;
    let page = rig::metrics::Page::scrape(&http, &server.http_url).await?;
    assert_eq!(
        page.value(
            "mlgw_model_server_version_load_failures_total",
            &[("model", "fraud_detector")],
        ),
        Some(0.0),
        "no half-written load was tried"
    );
    Ok(())
}

fn append(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(bytes)?;
    Ok(())
}

async fn post(http: &reqwest::Client, url: String) -> Result<(u16, Value)> {
    let answer = http.post(url).send().await?;
    let status = answer.status().as_u16();
    let text = answer.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Unload stops serving (and polls do not bring the model back); load
/// rescans and serves again, or says which version failed.
#[tokio::test]
async fn unload_and_load_round_trip() -> Result<()> {
    let repo = example_repository_with(str::to_owned)?;
    let server = start(&repo).await?;
    let http = reqwest::Client::new();
    let mut client = grpc(&server).await?;
    let repo_url = |model: &str, call: &str| {
        format!("{}/v2/repository/models/{model}/{call}", server.http_url)
    };

    let (code, _) = post(&http, repo_url("fraud_detector", "unload")).await?;
    assert_eq!(code, 200);
    // Several poll intervals: polls leave an unloaded model alone.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let index_now = index(&http, &server, json!({})).await?;
    let line = index_now
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == "fraud_detector"))
        .context("fraud_detector in the index")?;
    assert_eq!(line["state"], "UNAVAILABLE", "{index_now}");
    assert!(
        index_now.as_array().is_some_and(|a| a
            .iter()
            .all(|e| e["name"] != "fraud_detector" || e["version"] == "")),
        "no version after unload: {index_now}"
    );
    let refused = client
        .model_infer(infer_request("", &reference(2)?.inputs[..1]))
        .await
        .err()
        .context("an unloaded model must not answer")?;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("unloaded"),
        "{}",
        refused.message()
    );
    let refused = client
        .model_infer(infer_request("1", &reference(1)?.inputs[..1]))
        .await
        .err()
        .context("an unloaded model's versions must not answer")?;
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");

    // A broken version makes the load call fail, naming it; the good ones serve.
    publish(&repo, "9", b"garbage")?;
    let (code, body) = post(&http, repo_url("fraud_detector", "load")).await?;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["code"], "load_failed", "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("version 9"), "{body}");
    assert_answers_like(&mut client, "1", 1).await?;
    let r = client
        .model_infer(infer_request("", &reference(2)?.inputs[..1]))
        .await?;
    assert_eq!(r.get_ref().model_version, "2", "the highest ready version");

    std::fs::remove_dir_all(repo.path.join("fraud_detector/9"))?;
    let (code, body) = post(&http, repo_url("fraud_detector", "load")).await?;
    assert_eq!(code, 200, "{body}");
    let index_now = index(&http, &server, json!({"ready": true})).await?;
    let listed: Vec<&str> = index_now
        .as_array()
        .context("index is an array")?
        .iter()
        .filter_map(|e| e["version"].as_str())
        .collect();
    assert_eq!(listed, ["1", "2", "3", "4"], "{index_now}");

    let (code, body) = post(&http, repo_url("no_such_model", "load")).await?;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["code"], "model_not_found", "{body}");
    let answer = http
        .post(format!("{}/v2/repository/index", server.http_url))
        .body("{\"ready\": \"yes\"}")
        .send()
        .await?;
    assert_eq!(answer.status(), 400);
    Ok(())
}

/// `default_version` pins what unversioned calls get; a declared default
/// missing at start refuses the repository, and one removed at runtime
/// gives unversioned calls a clear error (and the server turns unready)
/// instead of another version's answers.
#[tokio::test]
async fn default_version_pins_unversioned_calls() -> Result<()> {
    let missing =
        example_repository_with(|c| c.replace("default_version = 2", "default_version = 5"))?;
    let Err(err) = ModelServerProcess::start(&missing.path, &[]).await else {
        bail!("a missing default_version must stop the server at start");
    };
    let text = format!("{err:#}");
    assert!(
        text.contains("fraud_detector")
            && text.contains("default_version 5")
            && text.contains("1, 2"),
        "{text}"
    );

    let repo =
        example_repository_with(|c| c.replace("default_version = 2", "default_version = 1"))?;
    let server = start(&repo).await?;
    let http = reqwest::Client::new();
    let mut client = grpc(&server).await?;
    let r = client
        .model_infer(infer_request("", &reference(1)?.inputs[..1]))
        .await?;
    assert_eq!(r.get_ref().model_version, "1");
    let meta = client
        .model_metadata(pb::ModelMetadataRequest {
            name: "fraud_detector".into(),
            version: String::new(),
        })
        .await?;
    let header = meta
        .metadata()
        .get("mlgw-default-version")
        .and_then(|v| v.to_str().ok());
    assert_eq!(header, Some("1"));
    assert_eq!(meta.get_ref().versions, ["1", "2", "3", "4"]);

    std::fs::remove_dir_all(repo.path.join("fraud_detector/1"))?;
    let refused = wait_for(&server, "unversioned calls refused", || async {
        let mut client = grpc(&server).await?;
        Ok(client
            .model_infer(infer_request("", &reference(1)?.inputs[..1]))
            .await
            .err())
    })
    .await?;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("default_version") && refused.message().contains("version 1"),
        "{}",
        refused.message()
    );
    let url = format!("{}/v2/health/ready", server.http_url);
    assert_eq!(
        status(&http, url).await?,
        503,
        "the default version is gone"
    );
    let r = client
        .model_infer(infer_request("2", &reference(2)?.inputs[..1]))
        .await?;
    assert_eq!(
        r.get_ref().model_version,
        "2",
        "version 2 still answers by name"
    );
    Ok(())
}

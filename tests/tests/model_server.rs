//! End-to-end tests of the model-server binary over gRPC and REST, with the real
//! example ONNX models (tract's and the native tree runtime's): readiness,
//! reference outputs, bad input, batching, shedding.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use proto::inference as pb;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use rig::{ModelServerProcess, TempRepo, example_repository, example_repository_with, reference};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

const TOLERANCE: f32 = 1e-5;

async fn ready_server(extra: &[&str]) -> Result<ModelServerProcess> {
    let mut server = ModelServerProcess::start(&example_repository(), extra).await?;
    server.wait_ready(Duration::from_secs(60)).await?;
    Ok(server)
}

/// A ready server on a copy of the example repository whose config `edit`
/// rewrites; the copy lives as long as the returned `TempRepo`.
async fn ready_server_with(
    edit: impl Fn(&str) -> String,
    extra: &[&str],
) -> Result<(TempRepo, ModelServerProcess)> {
    let repo = example_repository_with(edit)?;
    let mut server = ModelServerProcess::start(&repo.path, extra).await?;
    server.wait_ready(Duration::from_secs(60)).await?;
    Ok((repo, server))
}

async fn grpc(server: &ModelServerProcess) -> Result<GrpcInferenceServiceClient<Channel>> {
    Ok(GrpcInferenceServiceClient::connect(server.grpc_url.clone()).await?)
}

fn features_tensor(
    rows: &[Vec<f32>],
    raw: bool,
) -> (pb::model_infer_request::InferInputTensor, Option<Vec<u8>>) {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let tensor = pb::model_infer_request::InferInputTensor {
        name: "features".into(),
        datatype: "FP32".into(),
        shape: vec![rows.len() as i64, 15],
        parameters: Default::default(),
        contents: (!raw).then(|| pb::InferTensorContents {
            fp32_contents: flat.clone(),
            ..Default::default()
        }),
    };
    let bytes = raw.then(|| flat.iter().flat_map(|x| x.to_le_bytes()).collect());
    (tensor, bytes)
}

fn infer_request(version: &str, rows: &[Vec<f32>], raw: bool) -> pb::ModelInferRequest {
    let (tensor, bytes) = features_tensor(rows, raw);
    pb::ModelInferRequest {
        model_name: "fraud_detector".into(),
        model_version: version.into(),
        id: "req-1".into(),
        inputs: vec![tensor],
        raw_input_contents: bytes.into_iter().map(Into::into).collect(),
        ..Default::default()
    }
}

/// (labels, probabilities) from a gRPC response in either encoding.
fn decode_outputs(r: &pb::ModelInferResponse) -> Result<(Vec<i64>, Vec<f32>)> {
    let mut labels = None;
    let mut probs = None;
    for (i, out) in r.outputs.iter().enumerate() {
        let raw = r.raw_output_contents.get(i);
        match out.name.as_str() {
            "label" => {
                labels = Some(match raw {
                    Some(b) => b
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect(),
                    None => out
                        .contents
                        .as_ref()
                        .context("no contents")?
                        .int64_contents
                        .clone(),
                })
            }
            "probabilities" => {
                probs = Some(match raw {
                    Some(b) => b
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
                        .collect(),
                    None => out
                        .contents
                        .as_ref()
                        .context("no contents")?
                        .fp32_contents
                        .clone(),
                })
            }
            other => anyhow::bail!("unexpected output {other}"),
        }
    }
    Ok((
        labels.context("no label output")?,
        probs.context("no probabilities output")?,
    ))
}

fn assert_matches_reference(version: u32, labels: &[i64], probs: &[f32]) -> Result<()> {
    let reference = reference(version)?;
    assert!(
        reference.inputs.len() >= 200,
        "reference must have at least 200 rows"
    );
    assert_eq!(
        labels,
        reference.outputs.label.as_slice(),
        "labels differ from onnxruntime (v{version})"
    );
    let expected = reference.outputs.flat_probabilities();
    assert_eq!(probs.len(), expected.len());
    let worst = rig::max_abs_diff(probs, &expected);
    assert!(
        worst <= TOLERANCE,
        "v{version}: max abs diff {worst} > {TOLERANCE}"
    );
    Ok(())
}

#[tokio::test]
async fn reference_outputs_match_onnxruntime_over_grpc_raw_and_typed() -> Result<()> {
    let server = ready_server(&[]).await?;
    let mut client = grpc(&server).await?;
    for version in [1u32, 2, 3, 4] {
        let rows = reference(version)?.inputs;
        // One row per request (as callers do) and all rows in chunks of 64.
        for raw in [true, false] {
            let mut labels = Vec::new();
            let mut probs = Vec::new();
            for chunk in rows.chunks(64) {
                let r = client
                    .model_infer(infer_request(&version.to_string(), chunk, raw))
                    .await?
                    .into_inner();
                assert_eq!(r.model_version, version.to_string());
                assert_eq!(r.id, "req-1");
                assert_eq!(r.raw_output_contents.is_empty(), !raw, "raw in → raw out");
                let (l, p) = decode_outputs(&r)?;
                labels.extend(l);
                probs.extend(p);
            }
            assert_matches_reference(version, &labels, &probs)?;
        }
        let mut labels = Vec::new();
        let mut probs = Vec::new();
        for row in &rows {
            let r = client
                .model_infer(infer_request(
                    &version.to_string(),
                    std::slice::from_ref(row),
                    true,
                ))
                .await?
                .into_inner();
            let (l, p) = decode_outputs(&r)?;
            labels.extend(l);
            probs.extend(p);
        }
        assert_matches_reference(version, &labels, &probs)?;
    }
    // No version: the highest one answers.
    let r = client
        .model_infer(infer_request("", &reference(2)?.inputs[..1], false))
        .await?;
    assert_eq!(r.into_inner().model_version, "2");
    Ok(())
}

#[tokio::test]
async fn reference_outputs_match_onnxruntime_over_rest() -> Result<()> {
    let server = ready_server(&[]).await?;
    let http = reqwest::Client::new();
    for version in [1u32, 2, 3, 4] {
        let rows = reference(version)?.inputs;
        let mut labels = Vec::new();
        let mut probs = Vec::new();
        for chunk in rows.chunks(64) {
            // Nested rows, as most JSON clients send them.
            let body = json!({
                "id": "rest-1",
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [chunk.len(), 15], "data": chunk}],
            });
            let url = format!(
                "{}/v2/models/fraud_detector/versions/{version}/infer",
                server.http_url
            );
            let resp = http.post(url).json(&body).send().await?;
            assert_eq!(resp.status(), 200);
            let v: Value = resp.json().await?;
            assert_eq!(v["model_version"], version.to_string());
            assert_eq!(v["id"], "rest-1");
            for out in v["outputs"].as_array().context("outputs")? {
                let data = out["data"].as_array().context("data")?;
                match out["name"].as_str() {
                    Some("label") => labels.extend(data.iter().filter_map(Value::as_i64)),
                    Some("probabilities") => {
                        probs.extend(data.iter().filter_map(|x| x.as_f64().map(|f| f as f32)))
                    }
                    other => anyhow::bail!("unexpected output {other:?}"),
                }
            }
        }
        assert_matches_reference(version, &labels, &probs)?;
    }
    // Requesting a single output returns only that one.
    let body = json!({
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 15], "data": reference(1)?.inputs[0]}],
        "outputs": [{"name": "probabilities"}],
    });
    let v: Value = http
        .post(format!(
            "{}/v2/models/fraud_detector/infer",
            server.http_url
        ))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["outputs"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["outputs"][0]["name"], "probabilities");
    assert_eq!(v["outputs"][0]["shape"], json!([1, 2]));
    Ok(())
}

#[tokio::test]
async fn metadata_and_health_over_both_fronts() -> Result<()> {
    let server = ready_server(&[]).await?;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", server.http_url)).send();
    assert_eq!(get("/v2/health/live").await?.status(), 200);
    assert_eq!(get("/v2/health/ready").await?.status(), 200);
    assert_eq!(get("/v2/models/fraud_detector/ready").await?.status(), 200);
    assert_eq!(
        get("/v2/models/fraud_detector/versions/1/ready")
            .await?
            .status(),
        200
    );
    let meta: Value = get("/v2/models/fraud_detector").await?.json().await?;
    assert_eq!(meta["versions"], json!(["1", "2", "3", "4"]));
    assert_eq!(meta["platform"], "onnx");
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "features", "datatype": "FP32", "shape": [-1, 15]})
    );
    let server_meta: Value = get("/v2").await?.json().await?;
    assert_eq!(server_meta["name"], "mlgw-model-server");

    let mut client = grpc(&server).await?;
    assert!(
        client
            .server_live(pb::ServerLiveRequest {})
            .await?
            .into_inner()
            .live
    );
    assert!(
        client
            .server_ready(pb::ServerReadyRequest {})
            .await?
            .into_inner()
            .ready
    );
    let ready = client
        .model_ready(pb::ModelReadyRequest {
            name: "fraud_detector".into(),
            version: "2".into(),
        })
        .await?;
    assert!(ready.into_inner().ready);
    let meta = client
        .model_metadata(pb::ModelMetadataRequest {
            name: "fraud_detector".into(),
            version: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(meta.versions, vec!["1", "2", "3", "4"]);
    assert_eq!(
        meta.outputs
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["label", "probabilities"]
    );
    Ok(())
}

#[tokio::test]
async fn readiness_turns_true_only_after_warm_up() -> Result<()> {
    // Enough warm-up work (64-row batches) that the not-ready window lasts
    // seconds; versions load one after another, so v2 waits behind v1.
    let repo = example_repository_with(|c| {
        c.replace(
            "[warmup]\niterations = 3",
            "[warmup]\niterations = 50000\nbatch_size = 64",
        )
    })?;
    // The tree versions would stretch the window past the test's patience
    // (a debug build); two versions show the same thing.
    for version in ["3", "4"] {
        std::fs::remove_dir_all(repo.path.join("fraud_detector").join(version))?;
    }
    let mut server = ModelServerProcess::start(&repo.path, &[]).await?;
    let http = reqwest::Client::new();
    let live = http
        .get(format!("{}/v2/health/live", server.http_url))
        .send()
        .await?;
    assert_eq!(live.status(), 200, "live as soon as it serves");
    let ready = http
        .get(format!("{}/v2/health/ready", server.http_url))
        .send()
        .await?;
    assert_eq!(ready.status(), 503, "not ready while warming up");
    let mut client = grpc(&server).await?;
    assert!(
        !client
            .server_ready(pb::ServerReadyRequest {})
            .await?
            .into_inner()
            .ready
    );
    // An inference before readiness is refused with a clear status, not queued.
    let early = client
        .model_infer(infer_request("2", &reference(2)?.inputs[..1], true))
        .await;
    let status = early
        .err()
        .context("an inference before readiness must be refused")?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("not ready"),
        "{}",
        status.message()
    );
    server.wait_ready(Duration::from_secs(120)).await?;
    assert!(
        client
            .server_ready(pb::ServerReadyRequest {})
            .await?
            .into_inner()
            .ready
    );
    assert!(
        server.log_tail().contains("warmed up"),
        "log says warm-up ran"
    );
    Ok(())
}

fn grpc_err(
    r: std::result::Result<tonic::Response<pb::ModelInferResponse>, tonic::Status>,
) -> tonic::Status {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(s) => s,
    }
}

#[tokio::test]
async fn bad_grpc_input_gets_a_precise_status() -> Result<()> {
    let server = ready_server(&[]).await?;
    let mut client = grpc(&server).await?;
    let row = reference(1)?.inputs[0].clone();
    let good = infer_request("1", std::slice::from_ref(&row), true);

    let mut cases: Vec<(&str, pb::ModelInferRequest, Code, &str)> = Vec::new();
    let mut r = good.clone();
    r.model_name = "no_such_model".into();
    cases.push((
        "unknown model",
        r,
        Code::NotFound,
        "unknown model \"no_such_model\"",
    ));
    let mut r = good.clone();
    r.model_version = "7".into();
    cases.push(("unknown version", r, Code::NotFound, "no version \"7\""));
    let mut r = good.clone();
    r.inputs[0].name = "feats".into();
    cases.push((
        "wrong tensor name",
        r,
        Code::InvalidArgument,
        "unexpected input \"feats\"",
    ));
    let mut r = good.clone();
    r.inputs[0].datatype = "FP64".into();
    r.raw_input_contents[0] = row
        .iter()
        .flat_map(|x| f64::from(*x).to_le_bytes())
        .collect::<Vec<u8>>()
        .into();
    cases.push((
        "wrong dtype",
        r,
        Code::InvalidArgument,
        "datatype FP64 does not match the model's FP32",
    ));
    let mut r = good.clone();
    r.inputs[0].datatype = "FLOAT".into();
    cases.push((
        "unknown dtype",
        r,
        Code::InvalidArgument,
        "unknown datatype \"FLOAT\"",
    ));
    let mut r = good.clone();
    r.inputs[0].shape = vec![1, 14];
    r.raw_input_contents[0] = r.raw_input_contents[0].slice(..56);
    cases.push((
        "wrong shape",
        r,
        Code::InvalidArgument,
        "shape [1, 14] does not match the model's [-1, 15]",
    ));
    let mut r = good.clone();
    r.raw_input_contents[0] = r.raw_input_contents[0].slice(..58);
    cases.push((
        "raw byte length",
        r,
        Code::InvalidArgument,
        "expected 60 bytes",
    ));
    let mut r = good.clone();
    r.raw_input_contents.clear();
    r.inputs[0].contents = Some(pb::InferTensorContents {
        fp32_contents: row[..14].to_vec(),
        ..Default::default()
    });
    cases.push((
        "too few values",
        r,
        Code::InvalidArgument,
        "needs 15 values, got 14",
    ));
    let mut r = good.clone();
    let mut nan_row = row.clone();
    nan_row[3] = f32::NAN;
    r.raw_input_contents[0] = nan_row
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect::<Vec<u8>>()
        .into();
    cases.push(("NaN", r, Code::InvalidArgument, "NaN at flat index 3"));
    let mut r = good.clone();
    r.inputs[0].shape = vec![-1, 15];
    cases.push((
        "negative dim",
        r,
        Code::InvalidArgument,
        "negative dimension",
    ));
    let mut r = good.clone();
    r.inputs.clear();
    r.raw_input_contents.clear();
    cases.push((
        "missing input",
        r,
        Code::InvalidArgument,
        "missing input \"features\"",
    ));
    let mut r = good.clone();
    r.outputs
        .push(pb::model_infer_request::InferRequestedOutputTensor {
            name: "score".into(),
            ..Default::default()
        });
    cases.push((
        "unknown output",
        r,
        Code::InvalidArgument,
        "unknown output \"score\"",
    ));
    let rows65 = vec![row.clone(); 65];
    cases.push((
        "over max_batch_size",
        infer_request("1", &rows65, true),
        Code::InvalidArgument,
        "exceed the model's max_batch_size 64",
    ));
    let mut r = good.clone();
    r.inputs[0].shape = vec![4_000_000_000, 4_000_000_000, 4_000_000_000];
    cases.push(("overflowing shape", r, Code::InvalidArgument, "features"));

    for (what, request, code, needle) in cases {
        let status = grpc_err(client.model_infer(request).await);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{what}: message {:?} should contain {needle:?}",
            status.message()
        );
    }
    // The server is still healthy after all of that.
    assert!(client.model_infer(good).await.is_ok());
    Ok(())
}

#[tokio::test]
async fn bad_rest_input_gets_a_precise_status() -> Result<()> {
    let server = ready_server(&[]).await?;
    let http = reqwest::Client::new();
    let row = reference(1)?.inputs[0].clone();
    let url = |model: &str| format!("{}/v2/models/{model}/infer", server.http_url);
    let post = |u: String, body: String| {
        http.post(u)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        ("unknown model", url("nope"), json!({"inputs": []}).to_string(), 404, "unknown model \"nope\""),
        ("unknown version", format!("{}/v2/models/fraud_detector/versions/9/infer", server.http_url),
            json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 15], "data": row}]}).to_string(), 404, "no version \"9\""),
        ("not JSON", url("fraud_detector"), "{inputs: oops".into(), 400, "not a valid V2 inference request"),
        ("wrong name", url("fraud_detector"),
            json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 15], "data": row}]}).to_string(), 400, "unexpected input \"x\""),
        ("wrong dtype", url("fraud_detector"),
            json!({"inputs": [{"name": "features", "datatype": "INT64", "shape": [1, 15], "data": vec![1; 15]}]}).to_string(), 400, "datatype INT64 does not match"),
        ("wrong count", url("fraud_detector"),
            json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 15], "data": &row[..10]}]}).to_string(), 400, "needs 15 values, \"data\" has 10"),
        ("string value", url("fraud_detector"),
            json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 2], "data": [1.0, "NaN"]}]}).to_string(), 400, "data[1] = \"NaN\" is not a number"),
        ("lying shape", url("fraud_detector"),
            json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1_000_000_000u64, 15], "data": row}]}).to_string(), 400, "needs 15000000000 values"),
    ];
    for (what, u, body, status, needle) in cases {
        let resp = post(u, body).await?;
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let v: Value = resp.json().await?;
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{what}: {msg:?} should contain {needle:?}"
        );
        assert!(v["code"].is_string(), "{what}: stable code present");
    }
    let resp = http
        .get(format!("{}/v2/models/nope/ready", server.http_url))
        .send()
        .await?;
    assert_eq!(resp.status(), 404);
    let resp = http
        .get(format!(
            "{}/v2/models/fraud_detector/infer",
            server.http_url
        ))
        .send()
        .await?;
    assert_eq!(resp.status(), 405);
    let v: Value = resp.json().await?;
    assert_eq!(v["code"], "method_not_allowed");
    Ok(())
}

/// 64 concurrent callers: the batching server answers each caller with exactly
/// the rows the unbatched server gives.
#[tokio::test]
async fn batching_on_and_off_give_the_same_outputs() -> Result<()> {
    // A long queue delay makes sure concurrent callers really are gathered.
    let (_repo, batched) = ready_server_with(
        |c| c.replace("max_queue_delay_ms = 2", "max_queue_delay_ms = 20"),
        &[],
    )
    .await?;
    let unbatched = ready_server(&["--disable-batching"]).await?;
    let rows = reference(2)?.inputs;
    let run = |url: String| {
        let rows = rows.clone();
        async move {
            let channel = Channel::from_shared(url)?.connect().await?;
            let mut tasks = Vec::new();
            for caller in 0..64usize {
                let mut client = GrpcInferenceServiceClient::new(channel.clone());
                // Each caller sends 1..=3 rows so batches mix request sizes.
                let start = (caller * 4) % (rows.len() - 3);
                let mine = rows[start..start + 1 + caller % 3].to_vec();
                tasks.push(tokio::spawn(async move {
                    let r = client
                        .model_infer(infer_request("2", &mine, caller % 2 == 0))
                        .await?
                        .into_inner();
                    decode_outputs(&r)
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await??);
            }
            anyhow::Ok(out)
        }
    };
    let (a, b) = tokio::join!(
        run(batched.grpc_url.clone()),
        run(unbatched.grpc_url.clone())
    );
    let (a, b) = (a?, b?);
    assert_eq!(a.len(), 64);
    for (i, ((la, pa), (lb, pb))) in a.iter().zip(&b).enumerate() {
        assert_eq!(la, lb, "caller {i}: labels");
        assert_eq!(la.len(), 1 + i % 3, "caller {i} got its own rows back");
        let worst = pa
            .iter()
            .zip(pb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= TOLERANCE,
            "caller {i}: probabilities differ by {worst}"
        );
    }
    Ok(())
}

/// A full queue refuses at once with RESOURCE_EXHAUSTED / 429 instead of queueing.
#[tokio::test]
async fn a_full_queue_sheds_with_resource_exhausted() -> Result<()> {
    // One inference thread, room for one waiting request, no gathering, and
    // requests of 20,000 rows (~10 ms of work each): a burst must overflow.
    const ROWS: usize = 20_000;
    let (_repo, server) = ready_server_with(
        |c| {
            c.replace(
                "max_batch_size = 64",
                "max_batch_size = 20000\ninstances = 1",
            )
            .replace("max_queue_size = 1024", "max_queue_size = 1")
        },
        &["--disable-batching"],
    )
    .await?;
    let channel = Channel::from_shared(server.grpc_url.clone())?
        .connect()
        .await?;
    let row = reference(2)?.inputs[0].clone();
    let rows = vec![row.clone(); ROWS];
    let request = infer_request("2", &rows, true);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let mut client = GrpcInferenceServiceClient::new(channel.clone());
        let request = request.clone();
        tasks.push(tokio::spawn(
            async move { client.model_infer(request).await },
        ));
    }
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        match t.await? {
            Ok(r) => {
                assert_eq!(decode_outputs(&r.into_inner())?.0.len(), ROWS);
                ok += 1;
            }
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("overloaded"), "{}", s.message());
                shed += 1;
            }
            Err(s) => anyhow::bail!("unexpected status {s:?}"),
        }
    }
    assert!(ok >= 1, "some calls are served");
    assert!(
        shed >= 1,
        "some calls are shed at once (ok={ok}, shed={shed})"
    );
    // REST sheds with 429 too (binary tensor extension keeps parsing cheap).
    let http = reqwest::Client::new();
    let raw: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let header = json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [ROWS, 15],
                                    "parameters": {"binary_data_size": raw.len()}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&raw);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let request = http
            .post(format!(
                "{}/v2/models/fraud_detector/versions/2/infer",
                server.http_url
            ))
            .header("Inference-Header-Content-Length", header.len())
            .body(body.clone());
        tasks.push(tokio::spawn(async move {
            request.send().await.map(|r| r.status().as_u16())
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await??);
    }
    assert!(statuses.contains(&429), "REST sheds with 429: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    Ok(())
}

/// A bad model config stops the server before it serves, naming file and key.
#[tokio::test]
async fn a_bad_config_fails_at_start_naming_the_key() -> Result<()> {
    let repo =
        example_repository_with(|c| c.replace("datatype = \"FP32\"", "datatype = \"FLOAT32\""))?;
    let result = ModelServerProcess::start(&repo.path, &[]).await;
    let Err(err) = result else {
        anyhow::bail!("server started with a bad config")
    };
    let text = format!("{err:#}");
    assert!(
        text.contains("input[0].datatype") && text.contains("config.toml"),
        "{text}"
    );
    Ok(())
}

/// Several models, each with several versions, served side by side; the second
/// has no dynamic_batching section, so its requests run alone.
#[tokio::test]
async fn several_models_and_versions_are_served_at_once() -> Result<()> {
    let repo = TempRepo::new()?;
    repo.add_example_model("fraud_detector", str::to_owned)?;
    repo.add_example_model("fraud_detector_eu", |c| {
        c.replace(
            "[dynamic_batching]\nmax_queue_delay_ms = 2\nmax_queue_size = 1024\n",
            "",
        )
    })?;
    let mut server = ModelServerProcess::start(&repo.path, &[]).await?;
    server.wait_ready(Duration::from_secs(60)).await?;
    let mut client = grpc(&server).await?;
    let row = reference(1)?.inputs[0].clone();
    for model in ["fraud_detector", "fraud_detector_eu"] {
        for version in ["1", "2"] {
            let mut request = infer_request(version, std::slice::from_ref(&row), false);
            request.model_name = model.into();
            let r = client.model_infer(request).await?.into_inner();
            assert_eq!(
                (r.model_name.as_str(), r.model_version.as_str()),
                (model, version)
            );
            let (labels, probs) = decode_outputs(&r)?;
            assert_eq!((labels.len(), probs.len()), (1, 2));
        }
    }
    Ok(())
}

/// The binary tensor extension on REST (what tritonclient's HTTP client sends):
/// raw input bytes after the JSON header, raw outputs asked with binary_data.
#[tokio::test]
async fn rest_binary_tensor_extension_round_trips() -> Result<()> {
    let server = ready_server(&[]).await?;
    let reference_v1 = reference(1)?;
    let rows = &reference_v1.inputs[..64];
    let raw: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let header = json!({
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [64, 15],
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": true}},
                    {"name": "probabilities", "parameters": {"binary_data": false}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&raw);
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v2/models/fraud_detector/versions/1/infer",
        server.http_url
    );
    let resp = http
        .post(&url)
        .header("Inference-Header-Content-Length", header.len())
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let json_len: usize = resp
        .headers()
        .get("inference-header-content-length")
        .context("binary response names its JSON length")?
        .to_str()?
        .parse()?;
    let bytes = resp.bytes().await?;
    let (head, blob) = bytes.split_at(json_len);
    let head: Value = serde_json::from_slice(head)?;
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 64 * 8);
    let labels: Vec<i64> = blob
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    assert_eq!(labels, reference_v1.outputs.label[..64]);
    let probs: Vec<f32> = head["outputs"][1]["data"]
        .as_array()
        .context("probabilities as JSON")?
        .iter()
        .filter_map(|v| v.as_f64().map(|f| f as f32))
        .collect();
    let expected: Vec<f32> = reference_v1.outputs.probabilities[..64]
        .iter()
        .flatten()
        .copied()
        .collect();
    let worst = rig::max_abs_diff(&probs, &expected);
    assert!(worst <= TOLERANCE, "max abs diff {worst}");

    // A binary size that does not match the shape is named.
    let mut short = header.clone().into_bytes();
    short.extend_from_slice(&raw[..raw.len() - 4]);
    let resp = http
        .post(&url)
        .header("Inference-Header-Content-Length", header.len())
        .body(short)
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await?;
    assert!(
        v["error"].as_str().unwrap_or_default().contains("exceeds"),
        "{v}"
    );
    Ok(())
}

/// An idle server does not hold a lone request for a batch to fill: with a
/// 0.9 s batching window, a request sent while nothing else runs is answered
/// at once; with `wait_when_idle` it waits out the window.
#[tokio::test]
async fn an_idle_server_runs_a_lone_request_at_once() -> Result<()> {
    let row = reference(1)?.inputs[0].clone();
    let timed = |wait: bool| {
        let row = row.clone();
        async move {
            let (_repo, server) = ready_server_with(
                |c| {
                    c.replace(
                        "max_queue_delay_ms = 2",
                        &format!("max_queue_delay_ms = 900\nwait_when_idle = {wait}"),
                    )
                },
                &[],
            )
            .await?;
            let mut client = grpc(&server).await?;
            let started = std::time::Instant::now();
            client
                .model_infer(infer_request("2", std::slice::from_ref(&row), true))
                .await?;
            anyhow::Ok(started.elapsed())
        }
    };
    let idle = timed(false).await?;
    assert!(
        idle < Duration::from_millis(600),
        "a lone request waited {idle:?} for a batch on an idle server"
    );
    let waited = timed(true).await?;
    assert!(
        waited >= Duration::from_millis(900),
        "wait_when_idle = true answered after {waited:?}, before its 0.9 s window"
    );
    Ok(())
}

/// The model-server's `mlgw_model_server_inline_runs_total` for the example model.
async fn inline_runs(server: &ModelServerProcess) -> Result<u64> {
    let page = rig::metrics::Page::scrape(&reqwest::Client::new(), &server.http_url).await?;
    let runs = page
        .value(
            "mlgw_model_server_inline_runs_total",
            &[("model", "fraud_detector")],
        )
        .context("no mlgw_model_server_inline_runs_total series for fraud_detector")?;
    Ok(runs as u64)
}

/// A short request that finds its version idle runs on the thread that
/// decoded it, with the same answer as on an inference thread; a request
/// whose run is expected to be long, or every request with `inline_max_us = 0`,
/// still goes through the inference threads.
#[tokio::test]
async fn lone_short_requests_run_inline_with_the_same_answers() -> Result<()> {
    let reference = reference(2)?;
    let rows = &reference.inputs[..60];
    for inline_max_us in [1000, 0] {
        let (_repo, server) = ready_server_with(
            |c| {
                c.replace(
                    "max_batch_size = 64",
                    &format!("max_batch_size = 20000\ninline_max_us = {inline_max_us}"),
                )
            },
            &[],
        )
        .await?;
        let mut client = grpc(&server).await?;
        for (i, row) in rows.iter().enumerate() {
            let answer = client
                .model_infer(infer_request("2", std::slice::from_ref(row), i % 2 == 0))
                .await?
                .into_inner();
            let (labels, probs) = decode_outputs(&answer)?;
            assert_eq!(labels, [reference.outputs.label[i]], "row {i}");
            let worst = rig::max_abs_diff(&probs, &reference.outputs.probabilities[i]);
            assert!(
                worst <= TOLERANCE,
                "row {i}: probabilities differ by {worst}"
            );
        }
        let after_lone = inline_runs(&server).await?;
        if inline_max_us == 0 {
            assert_eq!(after_lone, 0, "inline_max_us = 0 never runs inline");
        } else {
            // One after another on an idle server: all of them, unless a run
            // of this small model took over 1 ms on a starved host.
            assert!(
                after_lone >= 54,
                "only {after_lone} of 60 lone one-row requests ran inline"
            );
        }
        // 20,000 rows are expected to take far longer than 1 ms.
        let big = vec![rows[0].clone(); 20_000];
        let answer = client
            .model_infer(infer_request("2", &big, true))
            .await?
            .into_inner();
        assert_eq!(decode_outputs(&answer)?.0.len(), 20_000);
        assert_eq!(
            inline_runs(&server).await?,
            after_lone,
            "a 20,000-row request ran inline"
        );
    }
    Ok(())
}

/// A worker holding a batch open stops waiting once the version's other
/// inferences are done: 32 callers sending one request after another keep
/// both workers busy in turns, so a worker often starts a batch while the
/// other runs; with a 0.9 s window every call is still answered at once,
/// each with its own row's answer.
#[tokio::test]
async fn a_short_batch_runs_once_the_other_inference_ends() -> Result<()> {
    let (_repo, server) = ready_server_with(
        |c| c.replace("max_queue_delay_ms = 2", "max_queue_delay_ms = 900"),
        &["--instances", "2"],
    )
    .await?;
    let client = grpc(&server).await?;
    let reference = Arc::new(reference(2)?);
    let n = reference.inputs.len();
    let started = std::time::Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..32usize {
        let mut client = client.clone();
        let reference = Arc::clone(&reference);
        callers.spawn(async move {
            let mut slowest = Duration::ZERO;
            for j in 0..8usize {
                let i = (caller * 8 + j) % n;
                let row = &reference.inputs[i];
                let started = std::time::Instant::now();
                let answer = client
                    .model_infer(infer_request("2", std::slice::from_ref(row), false))
                    .await?;
                slowest = slowest.max(started.elapsed());
                let (labels, _) = decode_outputs(&answer.into_inner())?;
                anyhow::ensure!(
                    labels == [reference.outputs.label[i]],
                    "row {i}: {labels:?}"
                );
            }
            anyhow::Ok(slowest)
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(joined) = callers.join_next().await {
        slowest = slowest.max(joined??);
    }
    assert!(
        slowest < Duration::from_millis(600),
        "a call waited {slowest:?}: a batch was held for the 0.9 s window after the \
         other inference had ended (256 calls took {:?})",
        started.elapsed()
    );
    Ok(())
}

/// The server's cap and the caller's gRPC deadline (and the server's REST
/// timeout) bound the wait: a request held in a long batching window answers
/// DEADLINE_EXCEEDED / 504 at the deadline, not after the window.
#[tokio::test]
async fn deadlines_are_enforced_with_deadline_exceeded() -> Result<()> {
    let (_repo, server) = ready_server_with(
        |c| {
            c.replace(
                "max_queue_delay_ms = 2",
                "max_queue_delay_ms = 800\nwait_when_idle = true",
            )
        },
        &["--request-timeout-ms", "200"],
    )
    .await?;
    let mut client = grpc(&server).await?;
    let row = reference(1)?.inputs[0].clone();

    // The server's 200 ms cap binds a caller who would wait 400 ms. tonic's own
    // timers (client and server) fire at the caller's 400 ms, far enough away
    // that the server's answer always wins, with its status and message.
    let mut request = tonic::Request::new(infer_request("1", std::slice::from_ref(&row), true));
    request.set_timeout(Duration::from_millis(400));
    let started = std::time::Instant::now();
    let status = grpc_err(client.model_infer(request).await);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("deadline exceeded"),
        "{}",
        status.message()
    );
    assert!(
        started.elapsed() < Duration::from_millis(380),
        "answered after {:?}, not at the server's 200 ms cap",
        started.elapsed()
    );

    // A caller's shorter deadline binds too. The server answers 10 ms before
    // it; on a loaded machine tonic's timer at the deadline itself may win that
    // race and answer CANCELLED "Timeout expired": either way the caller is
    // answered at its deadline, not after the 800 ms window.
    let mut request = tonic::Request::new(infer_request("1", std::slice::from_ref(&row), true));
    request.set_timeout(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let status = grpc_err(client.model_infer(request).await);
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "answered after {:?}, after the batch window rather than at the 100 ms deadline",
        started.elapsed()
    );

    let body = json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 15], "data": row}]});
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/v2/models/fraud_detector/infer",
            server.http_url
        ))
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 504);
    let v: Value = resp.json().await?;
    assert_eq!(v["code"], "deadline_exceeded");
    Ok(())
}

/// SIGTERM drains: a request already waiting in a batch window is answered,
/// new connections are refused, and the process exits 0.
#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_cleanly() -> Result<()> {
    let (_repo, mut server) = ready_server_with(
        |c| {
            c.replace(
                "max_queue_delay_ms = 2",
                "max_queue_delay_ms = 400\nwait_when_idle = true",
            )
        },
        &[],
    )
    .await?;
    let mut client = grpc(&server).await?;
    let row = reference(1)?.inputs[0].clone();
    let in_flight = tokio::spawn(async move {
        client
            .model_infer(infer_request("1", std::slice::from_ref(&row), true))
            .await
    });
    // Let the request reach the batch window, then ask the server to stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = server.terminate(Duration::from_secs(10)).await?;
    let answer = in_flight.await?;
    assert!(answer.is_ok(), "in-flight request was answered: {answer:?}");
    assert!(status.success(), "clean exit: {status}");
    assert!(
        server.log_tail().contains("draining"),
        "{}",
        server.log_tail()
    );
    let refused = GrpcInferenceServiceClient::connect(server.grpc_url.clone()).await;
    assert!(refused.is_err(), "a stopped server accepts no connection");
    Ok(())
}

/// gRPC server reflection lists the inference API (and only it), so grpcurl
/// works against the model-server without .proto files.
#[tokio::test]
async fn grpc_reflection_lists_the_inference_service() -> Result<()> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = ready_server(&[]).await?;
    let channel = Channel::from_shared(server.grpc_url.clone())?
        .connect()
        .await?;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await?
        .into_inner();
    let response = stream.message().await?.context("a reflection answer")?;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        anyhow::bail!("unexpected reflection answer {response:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"inference.GRPCInferenceService"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("gateway.")),
        "{names:?}"
    );
    Ok(())
}

/// A tree model whose file carries an attribute the native runtime does not
/// know is refused at load with the attribute named, and never served; the
/// other versions serve.
#[tokio::test]
async fn a_tree_model_with_an_unsupported_attribute_is_refused_by_name() -> Result<()> {
    use prost::Message as _;
    use tract_onnx::pb::{AttributeProto, ModelProto, attribute_proto::AttributeType};

    let repo = example_repository_with(str::to_owned)?;
    let models = repo.path.join("fraud_detector");
    let bytes = std::fs::read(models.join("3/model.onnx"))?;
    let mut model = ModelProto::decode(bytes.as_slice())?;
    let ensemble = model
        .graph
        .as_mut()
        .context("graph")?
        .node
        .iter_mut()
        .find(|n| n.op_type == "TreeEnsembleClassifier")
        .context("the boosted model's ensemble node")?;
    ensemble.attribute.push(AttributeProto {
        name: "classlabels_strings".into(),
        r#type: AttributeType::Strings as i32,
        strings: vec![b"legit".to_vec(), b"fraud".to_vec()],
        ..Default::default()
    });
    std::fs::create_dir_all(models.join("5"))?;
    std::fs::write(models.join("5/model.onnx"), model.encode_to_vec())?;

    let mut server = ModelServerProcess::start(&repo.path, &[]).await?;
    server.wait_ready(Duration::from_secs(60)).await?;
    let http = reqwest::Client::new();
    let ready = http
        .get(format!(
            "{}/v2/models/fraud_detector/versions/5/ready",
            server.http_url
        ))
        .send()
        .await?;
    assert_ne!(ready.status(), 200, "a refused version is not ready");
    let body = json!({
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 15], "data": reference(3)?.inputs[0]}],
    });
    let resp = http
        .post(format!(
            "{}/v2/models/fraud_detector/versions/5/infer",
            server.http_url
        ))
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 503);
    let text = resp.text().await?;
    assert!(
        text.contains("classlabels_strings") && text.contains("not supported"),
        "the error names the attribute: {text}"
    );
    let resp = http
        .post(format!(
            "{}/v2/models/fraud_detector/versions/3/infer",
            server.http_url
        ))
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 200, "the unaltered tree version serves");
    Ok(())
}

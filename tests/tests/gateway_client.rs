//! The gateway's model-server client against the real model-server: answers
//! equal onnxruntime's reference, metadata, deadlines, and the circuit breaker
//! while the server is down and after it comes back, and the same calls over
//! the model-server's Unix socket.

use std::time::{Duration, Instant};

use anyhow::Result;
use gateway::model::infer::{BreakerConfig, InferError, InferOutputs, ModelClient};
use gateway::postprocess::PostProcess;
use rig::{ModelServerProcess, example_repository, reference, rig_env};

fn fraud_postprocess() -> PostProcess {
    PostProcess {
        scores_output: "probabilities".into(),
        labels: vec!["legit".into(), "fraud".into()],
        positive_label: Some("fraud".into()),
        threshold: Some(0.5),
        top_k: None,
        platt: None,
    }
}

#[tokio::test]
async fn client_answers_equal_the_reference_model() -> Result<()> {
    let endpoint = rig_env("MLGW_TEST_MODEL_SERVER_GRPC")?;
    let client = ModelClient::new(&endpoint, Duration::from_secs(2), BreakerConfig::default())?;
    for version in [1u32, 2] {
        let reference = reference(version)?;
        let rows: Vec<f32> = reference
            .inputs
            .iter()
            .take(32)
            .flatten()
            .copied()
            .collect();
        let out = client
            .infer(
                "fraud_detector",
                &version.to_string(),
                "features",
                &rows,
                15,
                Duration::from_secs(5),
            )
            .await?;
        assert_eq!(out.model_version, version.to_string());
        let post = fraud_postprocess();
        for i in 0..32 {
            let p = post.apply(&out.outputs, i).map_err(anyhow::Error::msg)?;
            let scores = p
                .iter()
                .find(|o| o.name == "probabilities")
                .map(|o| o.values.clone());
            let want = reference.outputs.probabilities[i];
            let got = scores.unwrap_or_default();
            assert!(
                (got[1] - f64::from(want[1])).abs() < 1e-4,
                "v{version} row {i}: {got:?} vs {want:?}"
            );
            let label = p
                .iter()
                .find(|o| o.name == "probabilities")
                .map(|o| o.label.clone());
            let want_label = if reference.outputs.label[i] == 1 {
                "fraud"
            } else {
                "legit"
            };
            assert_eq!(label.as_deref(), Some(want_label), "v{version} row {i}");
        }
    }
    let meta = client
        .metadata("fraud_detector", "", Duration::from_secs(2))
        .await?;
    assert_eq!(meta.inputs[0].name, "features");
    assert_eq!(meta.inputs[0].shape, vec![-1, 15]);
    assert!(
        client
            .ready("fraud_detector", "2", Duration::from_secs(2))
            .await
    );
    // The model-server's own refusal is reported, not retried, and does not
    // count against the breaker.
    let err = client
        .infer(
            "fraud_detector",
            "",
            "features",
            &[0.0; 14],
            14,
            Duration::from_secs(2),
        )
        .await
        .err();
    assert!(
        matches!(&err, Some(InferError::Refused { detail, .. }) if detail.contains("does not match the model's [-1, 15]")),
        "{err:?}"
    );
    assert!(!client.breaker_open());
    Ok(())
}

#[tokio::test]
async fn breaker_fails_fast_while_the_server_is_down_and_recovers() -> Result<()> {
    // It comes back on the same port after seconds down.
    let port = rig::restartable_port()?.to_string();
    let mut server =
        ModelServerProcess::start(&example_repository(), &["--grpc-port", &port]).await?;
    server.wait_ready(Duration::from_secs(60)).await?;
    let breaker = BreakerConfig {
        failures_to_open: 3,
        cool_down: Duration::from_millis(500),
    };
    let client = ModelClient::new(&server.grpc_url, Duration::from_millis(500), breaker)?;
    let row = reference(1)?.inputs[0].clone();
    let call = || {
        client.infer(
            "fraud_detector",
            "1",
            "features",
            &row,
            15,
            Duration::from_secs(1),
        )
    };
    call().await?;
    // Stop it: the next calls fail as unavailable within the deadline, then
    // the breaker opens and calls fail at once without touching the network.
    server.stop().await?;
    for _ in 0..3 {
        let t = Instant::now();
        let err = call().await.err();
        assert!(
            matches!(
                err,
                Some(InferError::Unavailable { .. } | InferError::DeadlineExceeded { .. })
            ),
            "{err:?}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
    }
    assert!(client.breaker_open());
    // A call that reached the network would wait for the refused connection
    // and the 500 ms connect timeout; 100 ms leaves room for a loaded CI box.
    let t = Instant::now();
    let err = call().await.err();
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "open breaker answers at once: {:?}",
        t.elapsed()
    );
    assert!(err.is_some_and(|e| e.to_string().contains("circuit open")));

    // Bring a server back on the same port; after the cool-down one probe
    // goes through and closes the breaker.
    let mut again =
        ModelServerProcess::start(&example_repository(), &["--grpc-port", &port]).await?;
    again.wait_ready(Duration::from_secs(60)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Ok(out) => {
                assert_eq!(out.model_version, "1");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    assert!(!client.breaker_open());
    again.stop().await?;
    Ok(())
}

/// The model-server's gRPC Unix socket (a sidecar's transport): the client
/// over `unix:/path` gets the same answers as over TCP; a stale socket file is
/// replaced, a live one or a plain file is refused, and the file is gone after
/// a SIGTERM.
#[tokio::test]
async fn the_unix_socket_serves_the_same_answers_and_is_cleaned_up() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mlgw_uds_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("ms.sock");
    // A socket file left by a server that is gone.
    drop(std::os::unix::net::UnixListener::bind(&path)?);
    assert!(path.exists());
    let socket_arg = path.display().to_string();
    let mut server =
        ModelServerProcess::start(&example_repository(), &["--grpc-socket", &socket_arg]).await?;
    server.wait_ready(Duration::from_secs(60)).await?;
    let endpoint = server
        .grpc_socket_url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no grpc_socket= in the listening line"))?;
    assert_eq!(endpoint, format!("unix:{socket_arg}"));

    let over_socket =
        ModelClient::new(&endpoint, Duration::from_secs(2), BreakerConfig::default())?;
    let over_tcp = ModelClient::new(
        &server.grpc_url,
        Duration::from_secs(2),
        BreakerConfig::default(),
    )?;
    let rows: Vec<f32> = reference(2)?
        .inputs
        .iter()
        .take(16)
        .flatten()
        .copied()
        .collect();
    async fn infer(client: &ModelClient, rows: &[f32]) -> Result<InferOutputs, InferError> {
        client
            .infer(
                "fraud_detector",
                "2",
                "features",
                rows,
                15,
                Duration::from_secs(5),
            )
            .await
    }
    let (a, b) = (
        infer(&over_socket, &rows).await?,
        infer(&over_tcp, &rows).await?,
    );
    assert_eq!(a.outputs, b.outputs, "same model, same rows, same answer");
    assert_eq!(a.model_version, "2");
    assert!(
        over_socket
            .ready("fraud_detector", "2", Duration::from_secs(2))
            .await
    );

    // A second server may not take over a socket a live server answers on.
    let taken = ModelServerProcess::start(&example_repository(), &["--grpc-socket", &socket_arg])
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        taken.contains("another server is listening on it"),
        "{taken}"
    );
    // Nor replace a file that is not a socket.
    let plain = dir.join("notes.txt");
    std::fs::write(&plain, "keep me")?;
    let plain_arg = plain.display().to_string();
    let refused = ModelServerProcess::start(&example_repository(), &["--grpc-socket", &plain_arg])
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(refused.contains("is not a socket"), "{refused}");
    assert_eq!(std::fs::read_to_string(&plain)?, "keep me");
    // The first server still answers on its socket.
    infer(&over_socket, &rows).await?;

    let status = server.terminate(Duration::from_secs(10)).await?;
    assert!(status.success(), "{status}");
    assert!(!path.exists(), "the socket file is removed at exit");
    let err = infer(&over_socket, &rows).await.err();
    assert!(
        matches!(&err, Some(InferError::Unavailable { detail, .. }) if detail.contains(&endpoint)),
        "{err:?}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

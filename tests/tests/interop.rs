//! Interoperability with other servers' clients: NVIDIA Triton's official Python
//! client (`tritonclient`, gRPC and HTTP) drives the shared model-server started
//! by `tests/run.sh` and checks health, metadata, inference against the
//! onnxruntime reference, and error statuses (tests/interop/tritonclient_check.py).

use std::time::Duration;

use anyhow::{Context, Result};
use rig::{rig_env, workspace_root};

#[tokio::test]
async fn tritonclient_grpc_and_http_work_against_our_model_server() -> Result<()> {
    let python = rig_env("MLGW_TEST_INTEROP_PYTHON")?;
    let grpc = rig_env("MLGW_TEST_MODEL_SERVER_GRPC")?;
    let http = rig_env("MLGW_TEST_MODEL_SERVER_HTTP")?;
    let script = workspace_root().join("tests/interop/tritonclient_check.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .args([&grpc, &http])
        .current_dir(workspace_root())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .context("tritonclient check timed out after 180 s")?
        .with_context(|| format!("cannot run {python} {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tritonclient check failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("tritonclient interop:") && stdout.contains("checks passed"),
        "no closing line from the check:\n{stdout}"
    );
    Ok(())
}

//! Tree-ensemble benchmark: the example's boosted trees (fraud_detector v3,
//! 300 trees of depth 6) and random forest (v4, 100 trees of depth 12) on the
//! model-server's native tree runtime, side by side with onnxruntime on one
//! thread on the same file and rows in the same run; then single-row gRPC
//! calls to the release model-server.
//!
//! - in process: `OnnxModel::run` as the server's inference threads call it,
//!   64-row batches (rows/s) and single rows (latency per call);
//! - onnxruntime: `model-server/training/ort_bench.py` in the training venv
//!   (`model-server/training/train.sh` creates it; the bench fails without it);
//! - through the server: one caller, closed loop, single-row `ModelInfer`.
//!
//! Run: `cargo build --release -p model-server && cargo bench -p benches --bench trees`.
//! Results: benches/results/trees.md. Knob: MLGW_BENCH_SECONDS (per phase,
//! default 3).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use benches::demo::row_request;
use benches::knobs::env_num;
use benches::report::{commit, machine, markdown_table};
use hdrhistogram::Histogram;
use model_server::config::{ConfigOverrides, ModelSpec};
use model_server::datatype::TensorData;
use model_server::runtime::OnnxModel;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use rig::{ModelServerProcess, example_repository, reference, workspace_root};

const BATCH: usize = 64;
const TARGET_ROWS_PER_S: f64 = 50_000.0;
const TARGET_P99_US: f64 = 500.0;

struct Measured {
    rows_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn in_process(version: u32, seconds: f64) -> Result<Measured> {
    let root = workspace_root().join("model-server/models/fraud_detector");
    let spec = ModelSpec::load(
        &root.join("config.toml"),
        "fraud_detector",
        ConfigOverrides {
            disable_batching: false,
            default_instances: 1,
        },
    )?;
    let model = OnnxModel::load(&root.join(format!("{version}/model.onnx")), &spec)?;
    let rows = reference(version)?.inputs;
    let flat: Vec<f32> = rows.concat();
    let width = rows[0].len();
    let phase = Duration::from_secs_f64(seconds);

    let started = Instant::now();
    let (mut done, mut at) = (0usize, 0usize);
    while started.elapsed() < phase {
        let take = BATCH.min(rows.len() - at);
        let x = flat[at * width..(at + take) * width].to_vec();
        let out = model
            .run(&spec, &[(vec![take, width], TensorData::F32(x))])
            .map_err(anyhow::Error::msg)?;
        std::hint::black_box(out);
        done += take;
        at = (at + take) % rows.len();
    }
    let rows_per_s = done as f64 / started.elapsed().as_secs_f64();

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    let mut i = 0usize;
    while started.elapsed() < phase || hist.len() < 1000 {
        let x = rows[i % rows.len()].clone();
        let t = Instant::now();
        let out = model
            .run(&spec, &[(vec![1, width], TensorData::F32(x))])
            .map_err(anyhow::Error::msg)?;
        hist.record(t.elapsed().as_nanos().max(1) as u64)?;
        std::hint::black_box(out);
        i += 1;
    }
    Ok(Measured {
        rows_per_s,
        p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

fn onnxruntime(version: u32, seconds: f64) -> Result<(Measured, String)> {
    let venv = std::env::var_os("MLGW_TRAIN_VENV").map_or_else(
        || {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_default()
                .join("mlgw/train-venv")
        },
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    if !python.is_file() {
        bail!(
            "no training venv at {} (run model-server/training/train.sh once to create it)",
            venv.display()
        );
    }
    let root = workspace_root();
    let out = std::process::Command::new(&python)
        .arg(root.join("model-server/training/ort_bench.py"))
        .arg("--model")
        .arg(root.join(format!(
            "model-server/models/fraud_detector/{version}/model.onnx"
        )))
        .arg("--input-json")
        .arg(root.join(format!(
            "model-server/training/reference/fraud_detector_v{version}.json"
        )))
        .args([
            "--batch",
            &BATCH.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .output()
        .context("run ort_bench.py")?;
    if !out.status.success() {
        bail!(
            "ort_bench.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("ort_bench.py output")?;
    let num = |p: &str| {
        line.pointer(p)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("ort_bench.py output lacks {p}"))
    };
    let version_text = line
        .get("onnxruntime")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?")
        .to_owned();
    Ok((
        Measured {
            rows_per_s: num("/batched/rows_per_s")?,
            p50_us: num("/single_row/p50_us")?,
            p99_us: num("/single_row/p99_us")?,
        },
        version_text,
    ))
}

async fn through_server(
    server: &ModelServerProcess,
    version: u32,
    seconds: f64,
) -> Result<Measured> {
    let mut client = GrpcInferenceServiceClient::connect(server.grpc_url.clone()).await?;
    let rows = reference(version)?.inputs;
    let label = version.to_string();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(500) {
        client.model_infer(row_request(&label, &rows[0])).await?;
    }
    let started = Instant::now();
    let mut i = 0usize;
    while started.elapsed() < Duration::from_secs_f64(seconds) {
        let t = Instant::now();
        client
            .model_infer(row_request(&label, &rows[i % rows.len()]))
            .await
            .with_context(|| format!("v{version} call"))?;
        hist.record(t.elapsed().as_nanos().max(1) as u64)?;
        i += 1;
    }
    Ok(Measured {
        rows_per_s: i as f64 / started.elapsed().as_secs_f64(),
        p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let seconds = env_num("MLGW_BENCH_SECONDS", 3.0)?;
    let mut table = Vec::new();
    let mut verdicts = Vec::new();
    let mut ort_version = String::new();
    let mut native = Vec::new();
    for (version, what) in [
        (3u32, "v3 boosted, 300 trees × depth 6"),
        (4, "v4 forest, 100 trees × depth 12"),
    ] {
        let ours = in_process(version, seconds)?;
        let (ort, v) = onnxruntime(version, seconds)?;
        ort_version = v;
        eprintln!(
            "{what}: native {:.0} rows/s, single p50 {:.1} µs p99 {:.1} µs; onnxruntime {:.0} rows/s, p50 {:.1} µs p99 {:.1} µs",
            ours.rows_per_s, ours.p50_us, ours.p99_us, ort.rows_per_s, ort.p50_us, ort.p99_us
        );
        table.push(vec![
            what.to_owned(),
            format!("{:.0}", ours.rows_per_s),
            format!("{:.0}", ort.rows_per_s),
            format!("{:.2}×", ours.rows_per_s / ort.rows_per_s),
            format!("{:.1} / {:.1}", ours.p50_us, ours.p99_us),
            format!("{:.1} / {:.1}", ort.p50_us, ort.p99_us),
        ]);
        if version == 3 {
            let met = |ok: bool| if ok { "met" } else { "MISSED" };
            verdicts.push(format!(
                "- ≥ {TARGET_ROWS_PER_S:.0} rows/s in 64-row batches: {:.0} — {}",
                ours.rows_per_s,
                met(ours.rows_per_s >= TARGET_ROWS_PER_S)
            ));
            verdicts.push(format!(
                "- single-row p99 ≤ {TARGET_P99_US:.0} µs inside the server: {:.1} µs — {}",
                ours.p99_us,
                met(ours.p99_us <= TARGET_P99_US)
            ));
            verdicts.push(format!(
                "- at least onnxruntime's single-thread speed: batched {:.2}×, single-row p50 {:.2}× — {}",
                ours.rows_per_s / ort.rows_per_s,
                ort.p50_us / ours.p50_us,
                met(ours.rows_per_s >= ort.rows_per_s && ours.p50_us <= ort.p50_us)
            ));
        }
        native.push((version, what));
    }

    let mut server = ModelServerProcess::start(&example_repository(), &[]).await?;
    server.wait_ready(Duration::from_secs(120)).await?;
    let mut served = Vec::new();
    for (version, what) in &native {
        let m = through_server(&server, *version, seconds).await?;
        eprintln!(
            "{what} over gRPC: {:.0} calls/s, p50 {:.1} µs p99 {:.1} µs",
            m.rows_per_s, m.p50_us, m.p99_us
        );
        served.push(vec![
            (*what).to_owned(),
            format!("{:.0}", m.rows_per_s),
            format!("{:.1}", m.p50_us),
            format!("{:.1}", m.p99_us),
        ]);
    }
    drop(server);

    let (cores, cpu) = machine();
    let mut out = String::new();
    writeln!(out, "# Tree ensembles: native runtime vs onnxruntime\n")?;
    writeln!(
        out,
        "Commit `{}`. Command: `cargo build --release -p model-server && MLGW_BENCH_SECONDS={seconds} cargo bench -p benches --bench trees` (source: benches/benches/trees.rs).\n",
        commit()
    )?;
    writeln!(
        out,
        "Machine: one {cores}-core machine ({cpu}); everything in one run, one after the other. Rows: the 256 reference rows of each version (model-server/training/reference), cycled. **Native**: `OnnxModel::run` in process (release), as the model-server's inference threads call it (input copy and output tensors included), one thread. **onnxruntime {ort_version}**: `model-server/training/ort_bench.py`, `intra_op_num_threads = inter_op_num_threads = 1`, same file, same rows. Batched: {BATCH}-row calls for {seconds} s; single row: one-row calls for {seconds} s, each timed.\n"
    )?;
    writeln!(
        out,
        "{}",
        markdown_table(
            &[
                ("model", false),
                ("native rows/s (64-row batches)", true),
                ("onnxruntime rows/s", true),
                ("native / onnxruntime", true),
                ("native single row p50 / p99 µs", true),
                ("onnxruntime single row p50 / p99 µs", true),
            ],
            table,
        )
    )?;
    writeln!(out, "Targets (v3, the 300-tree boosted ensemble):\n")?;
    for v in &verdicts {
        writeln!(out, "{v}")?;
    }
    writeln!(
        out,
        "\n**Through the release model-server** (default config of the example repository, dynamic batching on): one caller, closed loop, single-row gRPC `ModelInfer` over 127.0.0.1, version named in the call:\n"
    )?;
    writeln!(
        out,
        "{}",
        markdown_table(
            &[
                ("model", false),
                ("calls/s", true),
                ("p50 µs", true),
                ("p99 µs", true)
            ],
            served,
        )
    )?;
    print!("{out}");
    let path = workspace_root().join("benches/results/trees.md");
    std::fs::write(&path, out).with_context(|| format!("write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

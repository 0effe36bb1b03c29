//! Model hot-add benchmark: a paced open-loop load of single-row V2 gRPC
//! `ModelInfer` calls (unversioned, so they follow the highest ready
//! version) on `fraud_detector` while a new version is published into the
//! live repository (written under a dot-folder, then renamed in). Reports
//! failed calls (target 0), the time from the rename to the new version's
//! first answer (target ≤ 5 s), and latency before, during and after.
//!
//! Run (release build of the server first):
//!   cargo build --release -p model-server && cargo bench -p benches --bench model_hot_add
//! Results are printed and written to benches/results/model_hot_add.md.
//! Knobs: MLGW_BENCH_RATE (calls/s, default 5000), MLGW_BENCH_SECONDS
//! (default 20), MLGW_BENCH_ADD_AT (seconds, default 5).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use benches::demo::row_request;
use benches::knobs::env_num;
use benches::report::{commit, machine};
use hdrhistogram::Histogram;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use rig::{ModelServerProcess, example_repository, example_repository_with, reference};
use tonic::transport::Channel;

/// Callers share this many HTTP/2 connections, as a client pool would.
const CONNECTIONS: usize = 4;
/// Calls in flight beyond this are not sent but counted (an overloaded run
/// must not exhaust the machine).
const MAX_OUTSTANDING: u64 = 20_000;
/// The server's poll interval (its default).
const POLL_MS: &str = "1000";

/// One call: when it was due (from the run's start), how long it took from
/// then, and which version answered (None: it failed, with the status).
struct Sample {
    due: Duration,
    latency: Duration,
    done: Instant,
    answer: Result<String, String>,
}

/// Latency percentiles of one phase.
struct Phase {
    name: &'static str,
    span: String,
    calls: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn phase(name: &'static str, span: String, samples: &[&Sample]) -> Result<Phase> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    for s in samples {
        h.record((s.latency.as_micros() as u64).max(1))?;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Phase {
        name,
        span,
        calls: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    if benches::process::invoked_as_test() {
        return Ok(());
    }
    let rate = env_num("MLGW_BENCH_RATE", 5000.0)?;
    let seconds = env_num("MLGW_BENCH_SECONDS", 20.0)?;
    let add_at = Duration::from_secs_f64(env_num("MLGW_BENCH_ADD_AT", 5.0)?);
    // Versions 1 and 2 without a declared default, so unversioned calls
    // follow the highest ready version and move to the published one.
    let repo = example_repository_with(|c| c.replace("default_version = 2\n", ""))?;
    for version in ["3", "4"] {
        std::fs::remove_dir_all(repo.path.join("fraud_detector").join(version))?;
    }
    let mut server =
        ModelServerProcess::start(&repo.path, &["--repository-poll-ms", POLL_MS]).await?;
    server.wait_ready(Duration::from_secs(120)).await?;
    let channels = benches::grpc_client::channels(&server.grpc_url, CONNECTIONS).await?;
    let clients: Arc<Vec<GrpcInferenceServiceClient<Channel>>> = Arc::new(
        channels
            .into_iter()
            .map(GrpcInferenceServiceClient::new)
            .collect(),
    );
    let rows = Arc::new(reference(2)?.inputs);

    // The pacing thread sends call i at start + i / rate, whether or not
    // earlier ones have answered; latency runs from that due time.
    let total = (seconds * rate).round() as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let runtime = tokio::runtime::Handle::current();
    let outstanding = Arc::new(AtomicU64::new(0));
    let backlog = Arc::new(AtomicU64::new(0));
    let pacer = {
        let (clients, rows, outstanding, backlog) = (
            clients.clone(),
            rows.clone(),
            outstanding.clone(),
            backlog.clone(),
        );
        std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || {
                // A precise sleep: a channel nobody sends on (clippy's rule
                // against thread::sleep targets runtime threads).
                let (_keep, wait) = std::sync::mpsc::channel::<()>();
                for i in 0..total {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    let now = Instant::now();
                    if due > now {
                        let _ = wait.recv_timeout(due - now);
                    }
                    if outstanding.load(Ordering::Relaxed) >= MAX_OUTSTANDING {
                        backlog.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    outstanding.fetch_add(1, Ordering::Relaxed);
                    let mut client = clients[i as usize % clients.len()].clone();
                    let request = row_request("", &rows[i as usize % rows.len()]);
                    let (tx, outstanding) = (tx.clone(), outstanding.clone());
                    runtime.spawn(async move {
                        let answer = client
                            .model_infer(request)
                            .await
                            .map(|r| r.into_inner().model_version)
                            .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
                        let done = Instant::now();
                        outstanding.fetch_sub(1, Ordering::Relaxed);
                        let _ = tx.send(Sample {
                            due: due - start,
                            latency: done.saturating_duration_since(due),
                            done,
                            answer,
                        });
                    });
                }
            })?
    };

    // At add_at: publish version 3, the boosted trees, the recommended way.
    let publisher = {
        let folder = repo.path.join("fraud_detector");
        let source = example_repository().join("fraud_detector/3/model.onnx");
        tokio::spawn(async move {
            tokio::time::sleep_until((start + add_at).into()).await;
            let staging = folder.join(".3");
            std::fs::create_dir_all(&staging)?;
            std::fs::copy(&source, staging.join("model.onnx"))?;
            std::fs::rename(&staging, folder.join("3"))?;
            anyhow::Ok(Instant::now())
        })
    };

    let mut samples = Vec::with_capacity(total as usize);
    while let Some(s) = rx.recv().await {
        samples.push(s);
    }
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacing thread panicked"))?;
    let renamed = publisher.await??;
    let log = server.log_tail();
    server.stop().await?;

    let failures: Vec<&String> = samples
        .iter()
        .filter_map(|s| s.answer.as_ref().err())
        .collect();
    let first_new = samples
        .iter()
        .filter(|s| s.answer.as_deref() == Ok("3"))
        .map(|s| s.done)
        .min()
        .with_context(|| format!("version 3 never answered; log tail:\n{log}"))?;
    let to_serve = first_new.saturating_duration_since(renamed);
    let renamed_at = renamed - start;
    let first_at = first_new - start;
    let old_after = samples
        .iter()
        .filter(|s| s.done > first_new && s.answer.as_deref() == Ok("2"))
        .count();
    // Phases by due time; the first WARMUP second is left out.
    let warmup = Duration::from_secs(1);
    let pick = |from: Duration, to: Duration| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| s.answer.is_ok() && s.due >= from && s.due < to)
            .collect()
    };
    let end = Duration::from_secs_f64(seconds);
    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let phases = [
        phase(
            "before",
            format!("{}–{}", secs(warmup), secs(renamed_at)),
            &pick(warmup, renamed_at),
        )?,
        phase(
            "during (rename → first v3 answer)",
            format!("{}–{}", secs(renamed_at), secs(first_at)),
            &pick(renamed_at, first_at),
        )?,
        phase(
            "after",
            format!("{}–{}", secs(first_at), secs(end)),
            &pick(first_at, end),
        )?,
    ];
    let sent = samples.len() as u64;
    let backlog = backlog.load(Ordering::Relaxed);

    let (cores, cpu) = machine();
    let mut out = String::new();
    writeln!(out, "# Model hot-add: publishing a version under load\n")?;
    // Say how this run was really built: the load generator may be a dev
    // build (dependencies at opt-level 2) pointed at a release server.
    let server_bin = std::env::var("MLGW_MODEL_SERVER_BIN")
        .map(|b| format!("MLGW_MODEL_SERVER_BIN={b} "))
        .unwrap_or_default();
    let profile = if cfg!(debug_assertions) {
        " --profile dev"
    } else {
        ""
    };
    writeln!(
        out,
        "Commit `{}`. Command: `cargo build --release -p model-server && {server_bin}MLGW_BENCH_RATE={rate} MLGW_BENCH_SECONDS={seconds} MLGW_BENCH_ADD_AT={} cargo bench{profile} -p benches --bench model_hot_add` \
         (source: benches/benches/model_hot_add.rs).\n",
        commit(),
        add_at.as_secs_f64()
    )?;
    writeln!(
        out,
        "Machine: {cores} cores, {cpu}; the load generator and the model-server (release, `--repository-poll-ms {POLL_MS}`, \
         other flags default: one inference thread per core per version, the shipped fraud_detector config without \
         its default_version, versions 1 and 2) share it. Load: open loop at {rate:.0} single-row gRPC ModelInfer calls/s over {CONNECTIONS} HTTP/2 \
         connections, unversioned (the highest ready version answers), latency from each call's due time. At \
         {:.1} s version 3 (the boosted trees' file) is copied into `fraud_detector/.3/` and renamed to `3`; the server must find it, \
         wait until its file is stable, load and warm it on a background thread, and then answer unversioned calls with it.\n",
        add_at.as_secs_f64()
    )?;
    writeln!(out, "| measure | result | target |")?;
    writeln!(out, "| --- | ---: | --- |")?;
    writeln!(
        out,
        "| calls sent | {sent} (+{backlog} not sent: client backlog) | {total} |"
    )?;
    writeln!(out, "| failed calls | {} | 0 |", failures.len())?;
    writeln!(
        out,
        "| rename → first answer by v3 | {:.2} s | ≤ 5 s |",
        to_serve.as_secs_f64()
    )?;
    writeln!(
        out,
        "| answers by v2 completing after v3's first | {old_after} | (calls already in flight or routed before the switch) |"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| phase | due between | calls | p50 ms | p99 ms | max ms |"
    )?;
    writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: |")?;
    for p in &phases {
        writeln!(
            out,
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            p.name, p.span, p.calls, p.p50_ms, p.p99_ms, p.max_ms
        )?;
    }
    if !failures.is_empty() {
        writeln!(
            out,
            "\nFirst failures: {:?}",
            &failures[..failures.len().min(5)]
        )?;
    }
    println!("{out}");
    let dir = rig::workspace_root().join("benches/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("model_hot_add.md"), out)?;
    Ok(())
}

//! Model-server load benchmark: throughput and latency percentiles of single-row
//! gRPC `ModelInfer` calls at 1, 8, 32 and 64 concurrent callers, dynamic batching
//! on and off, for each version of the example model; plus the server's resident
//! memory. Closed loop: each caller sends its next request when the last returns.
//!
//! Run (release build of the server first):
//!   cargo build --release -p model-server && cargo bench -p benches --bench model_server
//! Results are printed and written to benches/results/model_server.md.
//! Knobs: MLGW_BENCH_SECONDS (per cell, default 4).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use benches::demo::row_request;
use hdrhistogram::Histogram;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use rig::{
    ModelServerProcess, example_repository, example_repository_with, reference, workspace_root,
};
use tonic::transport::Channel;

const CONCURRENCY: [usize; 4] = [1, 8, 32, 64];
/// Callers share this many HTTP/2 connections, as a client pool would.
const CONNECTIONS: usize = 4;

struct Cell {
    version: &'static str,
    batching: &'static str,
    callers: usize,
    requests: u64,
    errors: u64,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

async fn run_cell(
    channels: &[Channel],
    version: &'static str,
    batching: &'static str,
    callers: usize,
    rows: &[Vec<f32>],
    duration: Duration,
) -> Result<Cell> {
    // Warm the connections and the path before measuring.
    let warm_until = Instant::now() + Duration::from_millis(500);
    let end = warm_until + duration;
    let mut tasks = Vec::with_capacity(callers);
    for c in 0..callers {
        let mut client = GrpcInferenceServiceClient::new(channels[c % channels.len()].clone());
        let rows = rows.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut i, mut errors) = (c, 0u64);
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let req = row_request(version, &rows[i % rows.len()]);
                i += callers;
                let t = Instant::now();
                let ok = client.model_infer(req).await.is_ok();
                let us = t.elapsed().as_micros() as u64;
                if now >= warm_until {
                    if ok {
                        hist.record(us.max(1))?;
                    } else {
                        errors += 1;
                    }
                }
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        all.add(h)?;
        errors += e;
    }
    Ok(Cell {
        version,
        batching,
        callers,
        requests: all.len(),
        errors,
        seconds: duration.as_secs_f64(),
        p50_us: all.value_at_quantile(0.50),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
    })
}

fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::main]
async fn main() -> Result<()> {
    if benches::process::invoked_as_test() {
        return Ok(());
    }
    let seconds: f64 = std::env::var("MLGW_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let duration = Duration::from_secs_f64(seconds);
    let rows = reference(2)?.inputs;
    let mut cells = Vec::new();
    let mut memory = Vec::new();
    // The shipped config (max_queue_delay 2 ms), the same with no wait (batches
    // form only from requests already queued), and no batching at all.
    let greedy =
        example_repository_with(|c| c.replace("max_queue_delay_ms = 2", "max_queue_delay_ms = 0"))?;
    let shipped = example_repository();
    let modes: [(&'static str, &std::path::Path, &[&str]); 3] = [
        ("on, 2 ms", &shipped, &[]),
        ("on, 0 ms", &greedy.path, &[]),
        ("off", &shipped, &["--disable-batching"]),
    ];
    for (batching, repo, args) in modes {
        let mut server = ModelServerProcess::start(repo, args).await?;
        server.wait_ready(Duration::from_secs(120)).await?;
        let pid = server.pid().context("server pid")?;
        let mut channels = Vec::new();
        for _ in 0..CONNECTIONS {
            channels.push(
                Channel::from_shared(server.grpc_url.clone())?
                    .connect()
                    .await?,
            );
        }
        for version in ["1", "2"] {
            for callers in CONCURRENCY {
                let cell = run_cell(&channels, version, batching, callers, &rows, duration).await?;
                eprintln!(
                    "v{version} batching={batching} callers={callers}: {:.0} req/s p50={}us p99={}us errors={}",
                    cell.requests as f64 / cell.seconds,
                    cell.p50_us,
                    cell.p99_us,
                    cell.errors
                );
                cells.push(cell);
            }
        }
        memory.push((batching, rss_kb(pid)));
        server.stop().await?;
    }

    let mut out = String::new();
    writeln!(out, "# Model-server load benchmark\n")?;
    writeln!(
        out,
        "Command: `cargo build --release -p model-server && cargo bench -p benches --bench model_server` \
         (MLGW_BENCH_SECONDS={seconds}). Single-row gRPC ModelInfer calls (raw FP32 input, 15 features), \
         closed loop, {CONNECTIONS} HTTP/2 connections, client and server on the same {}-core machine. \
         v1 = LogisticRegression, v2 = MLP (32, 16). Batching: max_batch_size 64 with max_queue_delay 2 ms (as shipped) \
         or 0 ms (only requests already queued join a batch), or off (--disable-batching); 2 inference threads per version.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    writeln!(
        out,
        "| version | batching | callers | req/s | p50 ms | p99 ms | p99.9 ms | errors |"
    )?;
    writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for c in &cells {
        writeln!(
            out,
            "| v{} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            c.version,
            c.batching,
            c.callers,
            c.requests as f64 / c.seconds,
            c.p50_us as f64 / 1000.0,
            c.p99_us as f64 / 1000.0,
            c.p999_us as f64 / 1000.0,
            c.errors
        )?;
    }
    writeln!(out)?;
    for (batching, (rss, hwm)) in memory {
        writeln!(
            out,
            "Server memory, batching {batching}: resident {:.1} MB at the end, peak {:.1} MB.",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        )?;
    }
    println!("{out}");
    let dir = workspace_root().join("benches/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("model_server.md"), out)?;
    Ok(())
}

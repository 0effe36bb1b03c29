//! `model-server` binary: flags, logging, then the library's bind and run.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use model_server::cli::Cli;
use model_server::server::ModelServer;

/// mimalloc instead of the system allocator, as in the gateway: many small
/// per-call buffers across the IO and inference threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("model-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line (file, key, what to do), no backtrace: this is the
            // message a person fixing a config or a busy port needs.
            eprintln!("model-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&cli.telemetry())?;
    let served = serve_traced(cli).await;
    // The exporter blocks while it sends the last spans (bounded by its
    // deadline); the runtime must still run for its gRPC channel.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown(Duration::from_secs(5))).await;
    served
}

async fn serve_traced(cli: Cli) -> anyhow::Result<()> {
    let config = cli.server_config();
    let server = ModelServer::bind(&config).await?;
    let (http, grpc) = (server.http_addr(), server.grpc_addr());
    // One stable line on stdout so scripts and tests can find the bound ports.
    let socket = server
        .grpc_socket()
        .map(|p| format!(" grpc_socket={}", p.display()))
        .unwrap_or_default();
    println!(
        "model-server listening http={} grpc={}{socket}",
        http.map_or_else(|| "?".into(), |a| a.to_string()),
        grpc.map_or_else(|| "?".into(), |a| a.to_string())
    );
    // When every model is warm, print a ready-to-paste request for the first one.
    let mut ready = server.ready_signal();
    let engine = server.engine();
    tokio::spawn(async move {
        if ready.wait_for(|r| *r).await.is_err() {
            return;
        }
        let Some((model, body, http)) = engine
            .model_names()
            .next()
            .and_then(|m| Some((m.to_owned(), engine.example_request(m)?, http?)))
        else {
            return;
        };
        println!("model-server ready; try:");
        println!(
            "  curl -s http://{http}/v2/models/{model}/infer -H 'content-type: application/json' -d '{body}'"
        );
    });
    server.run(telemetry::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

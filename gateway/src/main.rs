//! `gateway`: reads the config, starts tracing, binds, prints the bound
//! addresses and a ready `curl` line, serves until SIGTERM or Ctrl-C;
//! `--check-config` only validates the config and its definitions.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gateway::config::GatewayConfig;
use gateway::server::GatewayServer;

/// mimalloc instead of the system allocator: a call allocates and frees many
/// small buffers across two worker threads (HTTP/2 frames, protobuf
/// messages, tasks), and glibc's malloc spent about a fifth of the
/// gateway's CPU on them under load (`benches/results/gateway.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serve predictions over gRPC and REST: enrich entity IDs with features,
/// call the model-server, post-process.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Cli {
    /// The gateway config file (TOML).
    #[arg(long, env = "MLGW_GATEWAY_CONFIG")]
    config: PathBuf,
    /// Override the config's REST port (0: a free port).
    #[arg(long, env = "MLGW_GATEWAY_HTTP_PORT")]
    http_port: Option<u16>,
    /// Override the config's gRPC port (0: a free port).
    #[arg(long, env = "MLGW_GATEWAY_GRPC_PORT")]
    grpc_port: Option<u16>,
    /// Load and validate the config and its feature definitions, print a
    /// summary and exit (0: valid, 1: the error) without serving or
    /// connecting to anything.
    #[arg(long)]
    check_config: bool,
    /// Log JSON lines (with `trace_id`/`span_id` when exporting) instead of
    /// text; same as `[telemetry] log_json = true`.
    #[arg(long, env = "MLGW_LOG_JSON")]
    log_json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check_config {
        return match check_config(&cli.config) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gateway: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: the checks `bind` makes before it touches the network —
/// the config, the definitions it names, and a model input declared there for
/// every `[[model]]`.
fn check_config(path: &std::path::Path) -> anyhow::Result<String> {
    let config = GatewayConfig::load(path)?;
    let defs = feature_store::definitions::FeatureDefinitions::load(&config.definitions)?;
    for m in &config.models {
        anyhow::ensure!(
            defs.model(&m.name).is_some(),
            "{}: model {:?} is not declared in the definitions {}",
            path.display(),
            m.name,
            config.definitions.display()
        );
    }
    let models: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
    Ok(format!(
        "config OK: {} (definitions {}, models {})",
        path.display(),
        config.definitions.display(),
        models.join(", ")
    ))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = GatewayConfig::load(&cli.config)?;
    // --- telemetry (issue 9): logs, and trace export when configured ---
    let mut settings = config.telemetry.clone();
    settings.log_json |= cli.log_json;
    let telemetry = telemetry::init(&settings)?;
    let served = serve(cli, config).await;
    // Sends the spans still queued (bounded); the runtime must still run.
    let _ = tokio::task::spawn_blocking(move || {
        telemetry.shutdown(std::time::Duration::from_secs(5));
    })
    .await;
    served
}

async fn serve(cli: Cli, mut config: GatewayConfig) -> anyhow::Result<()> {
    if let Some(p) = cli.http_port {
        config.server.http_port = p;
    }
    if let Some(p) = cli.grpc_port {
        config.server.grpc_port = p;
    }
    let server = GatewayServer::bind(&config).await?;
    let (http, grpc) = (server.http_addr(), server.grpc_addr());
    let show =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "?".to_owned(), |a| a.to_string());
    println!("gateway listening http={} grpc={}", show(http), show(grpc));
    let dev = server.dev_token();
    if let Some(dev) = dev {
        println!(
            "dev token (subject {}, expires {}): {}",
            dev.subject,
            gateway::auth::dev_issuer::utc_timestamp(dev.expires_unix),
            dev.token
        );
    }
    if let (Some(model), Some(http)) = (config.models.first(), http) {
        let bearer = dev.map_or("$TOKEN", |d| d.token.as_str());
        println!(
            "ready: curl -s {http}/v1/models/{}/predict -H 'authorization: Bearer {bearer}' -H 'content-type: application/json' -d '{{\"entity\": {{...}}, \"request_features\": {{...}}}}'",
            model.name
        );
    }
    server.run(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

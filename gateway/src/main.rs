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

/// mimalloc keeps the memory it frees instead of returning it to the OS a
/// second later (its `purge_delay`, 1000 ms by default). The embedded
/// store's commits free and re-allocate page buffers every few milliseconds;
/// with purging, each re-use faulted in and zeroed a fresh 2-MiB huge page
/// inside the write transaction, and the paced p99 at 5,000 req/s was about
/// 1.2 ms worse (median; measured with the gateway bench, see
/// `benches/results/gateway.md`). The cost: the process keeps its high-water mark of memory.
/// `MIMALLOC_PURGE_DELAY` in the environment wins over this.
#[allow(unsafe_code)]
mod allocator {
    use std::ffi::{c_int, c_long};

    /// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (mimalloc v3,
    /// as built by libmimalloc-sys 0.1).
    const PURGE_DELAY: c_int = 15;
    /// mimalloc v3's default for it: checked first, so that an option table
    /// laid out differently is left alone rather than set blindly.
    const DEFAULT_PURGE_DELAY_MS: c_long = 1000;

    unsafe extern "C" {
        fn mi_option_get(option: c_int) -> c_long;
        fn mi_option_set(option: c_int, value: c_long);
    }

    /// Turns purging off unless the environment sets it; says whether it did.
    pub fn keep_freed_memory() -> bool {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return false;
        }
        // SAFETY: both functions only read and write an entry of mimalloc's
        // option table (linked in by the `mimalloc` crate, the global
        // allocator); they take any option index and any value, and are safe
        // to call at any time from any thread.
        unsafe {
            if mi_option_get(PURGE_DELAY) != DEFAULT_PURGE_DELAY_MS {
                return false;
            }
            mi_option_set(PURGE_DELAY, -1);
        }
        true
    }
}

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
    let kept = allocator::keep_freed_memory();
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
    match runtime.block_on(run(cli, kept)) {
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

async fn run(cli: Cli, kept: bool) -> anyhow::Result<()> {
    let config = GatewayConfig::load(&cli.config)?;
    // Logs, and trace export when configured.
    let mut settings = config.telemetry.clone();
    settings.log_json |= cli.log_json;
    let telemetry = telemetry::init(&settings)?;
    tracing::debug!(
        purge = if kept {
            "off"
        } else {
            "mimalloc's default or MIMALLOC_PURGE_DELAY"
        },
        "allocator"
    );
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
    server.run(telemetry::shutdown_signal()).await?;
    Ok(())
}

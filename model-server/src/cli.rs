//! Command-line flags; the names follow Triton's (`--model-repository`,
//! `--http-port`, `--grpc-port`) so operators find them familiar.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::server::ServerConfig;

/// Serve ONNX models over the Open Inference Protocol (KServe V2), gRPC and REST.
#[derive(Debug, Parser)]
// A flag given twice takes the last value (scripts append overrides).
#[command(name = "model-server", version, args_override_self = true)]
pub struct Cli {
    /// Model repository: DIR/<model>/config.toml and DIR/<model>/<version>/model.onnx.
    #[arg(long, env = "MLGW_MODEL_REPOSITORY")]
    pub model_repository: PathBuf,
    /// HTTP (REST) port; 0 picks a free port.
    #[arg(long, default_value_t = 8000, env = "MLGW_HTTP_PORT")]
    pub http_port: u16,
    /// gRPC port; 0 picks a free port.
    #[arg(long, default_value_t = 8001, env = "MLGW_GRPC_PORT")]
    pub grpc_port: u16,
    /// Address to listen on (0.0.0.0 in a container).
    #[arg(long, default_value = "127.0.0.1", env = "MLGW_HOST")]
    pub host: IpAddr,
    /// Run every request alone, ignoring the models' dynamic_batching sections.
    #[arg(long, env = "MLGW_DISABLE_BATCHING")]
    pub disable_batching: bool,
    /// Inference threads per model version when its config does not set `instances`
    /// (default: the number of CPU cores).
    #[arg(long, env = "MLGW_INSTANCES")]
    pub instances: Option<usize>,
    /// Longest an inference may take, in milliseconds; gRPC callers may ask for less
    /// with their deadline.
    #[arg(long, default_value_t = 10_000, env = "MLGW_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: u64,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "MLGW_LOG_JSON")]
    pub log_json: bool,
}

impl Cli {
    /// The server config these flags describe.
    pub fn server_config(&self) -> ServerConfig {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ServerConfig {
            model_repository: self.model_repository.clone(),
            host: self.host,
            http_port: self.http_port,
            grpc_port: self.grpc_port,
            disable_batching: self.disable_batching,
            default_instances: self.instances.unwrap_or(cores).max(1),
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
        }
    }
}

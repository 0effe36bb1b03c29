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
    /// Also serve gRPC on this Unix-domain socket, for a gateway on the same
    /// host (a sidecar): the gateway's endpoint is then `unix:PATH`. A stale
    /// socket file is replaced; it is removed at exit.
    #[arg(long, env = "MLGW_GRPC_SOCKET")]
    pub grpc_socket: Option<PathBuf>,
    /// Address to listen on (0.0.0.0 in a container).
    #[arg(long, default_value = "127.0.0.1", env = "MLGW_HOST")]
    pub host: IpAddr,
    /// Rescan the model repository this often, in milliseconds, to load
    /// versions added and unload versions removed while serving; 0 turns
    /// polling off (the repository API's load call still rescans a model).
    #[arg(long, default_value_t = 1000, env = "MLGW_REPOSITORY_POLL_MS")]
    pub repository_poll_ms: u64,
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
    /// Log as JSON lines instead of text (with `trace_id`/`span_id` when
    /// exporting).
    #[arg(long, env = "MLGW_LOG_JSON")]
    pub log_json: bool,
    /// Export spans over OTLP/gRPC to this collector, e.g.
    /// `http://127.0.0.1:4317`; unset: no export.
    #[arg(long, env = "MLGW_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    #[arg(
        long,
        default_value = "mlgw-model-server",
        env = "MLGW_OTEL_SERVICE_NAME"
    )]
    pub otel_service_name: String,
    /// Share of new traces recorded (0 to 1); a caller's decision is followed.
    #[arg(long, default_value_t = 1.0, env = "MLGW_OTEL_SAMPLE_RATIO")]
    pub otel_sample_ratio: f64,
    /// Deadline of one span export to the collector, in milliseconds.
    #[arg(long, default_value_t = 3000, env = "MLGW_OTEL_EXPORT_TIMEOUT_MS")]
    pub otel_export_timeout_ms: u64,
    /// Longest a finished span waits before it is sent, in milliseconds.
    #[arg(long, default_value_t = 1000, env = "MLGW_OTEL_BATCH_DELAY_MS")]
    pub otel_batch_delay_ms: u64,
}

impl Cli {
    /// The logging and trace-export settings these flags describe.
    pub fn telemetry(&self) -> telemetry::TelemetrySettings {
        telemetry::TelemetrySettings {
            otlp_endpoint: self.otlp_endpoint.clone().filter(|e| !e.is_empty()),
            service_name: self.otel_service_name.clone(),
            sample_ratio: self.otel_sample_ratio,
            export_timeout: Duration::from_millis(self.otel_export_timeout_ms.max(1)),
            batch_delay: Duration::from_millis(self.otel_batch_delay_ms.max(1)),
            log_json: self.log_json,
            stages: &["model_infer", "decode", "queue_wait", "inference", "encode"],
        }
    }

    /// The server config these flags describe.
    pub fn server_config(&self) -> ServerConfig {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ServerConfig {
            model_repository: self.model_repository.clone(),
            host: self.host,
            http_port: self.http_port,
            grpc_port: self.grpc_port,
            grpc_socket: self.grpc_socket.clone(),
            disable_batching: self.disable_batching,
            default_instances: self.instances.unwrap_or(cores).max(1),
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            repository_poll: (self.repository_poll_ms > 0)
                .then(|| Duration::from_millis(self.repository_poll_ms)),
        }
    }
}

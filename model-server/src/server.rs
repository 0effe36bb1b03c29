//! Builds and runs the model-server: scans the repository (refusing a bad one
//! before serving), binds the gRPC and HTTP listeners, loads and warms models in
//! the background, and serves both fronts until the shutdown future resolves.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigOverrides;
use crate::engine::Engine;
use crate::grpc::InferenceService;
use crate::repository::{self, RepositoryError};

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model repository folder.
    pub model_repository: PathBuf,
    /// Address to listen on.
    pub host: IpAddr,
    /// HTTP port (0 picks a free one).
    pub http_port: u16,
    /// gRPC port (0 picks a free one).
    pub grpc_port: u16,
    /// Turn dynamic batching off for every model.
    pub disable_batching: bool,
    /// Worker threads per model version when a config does not say.
    pub default_instances: usize,
    /// Longest an inference call may wait (gRPC callers may ask for less).
    pub request_timeout: Duration,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The model repository is unusable.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// A port could not be bound.
    #[error("cannot listen on {addr} (is another process using the port?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The embedded protobuf descriptors could not be served for reflection.
    #[error("cannot build gRPC reflection from the embedded descriptors: {0}")]
    Reflection(tonic_reflection::server::Error),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// A model-server with its listeners bound, ready to run.
pub struct ModelServer {
    engine: Arc<Engine>,
    ready: tokio::sync::watch::Sender<bool>,
    http: TcpListener,
    grpc: TcpListener,
    request_timeout: Duration,
}

async fn bind(host: IpAddr, port: u16) -> Result<TcpListener, ServerError> {
    let addr = SocketAddr::new(host, port);
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

impl ModelServer {
    /// Validates the repository and binds both ports; loads no model yet.
    ///
    /// # Errors
    /// `Repository` for a bad repository or config; `Bind` for a busy port.
    pub async fn bind(config: &ServerConfig) -> Result<ModelServer, ServerError> {
        let overrides = ConfigOverrides {
            disable_batching: config.disable_batching,
            default_instances: config.default_instances,
        };
        let models = repository::scan(&config.model_repository, overrides)?;
        Ok(ModelServer {
            engine: Arc::new(Engine::new(models)),
            ready: tokio::sync::watch::Sender::new(false),
            http: bind(config.host, config.http_port).await?,
            grpc: bind(config.host, config.grpc_port).await?,
            request_timeout: config.request_timeout,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr().ok()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }

    /// Turns true once every model version is loaded and warmed up.
    pub fn ready_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The engine (for in-process benches and tests).
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    /// Serves until `shutdown` resolves, then drains in-flight calls.
    ///
    /// Liveness is true at once; models load and warm up in the background and
    /// readiness turns true when every version has answered its warm-up.
    ///
    /// # Errors
    /// The first server error.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let token = CancellationToken::new();
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_not_serving::<GrpcInferenceServiceServer<InferenceService>>()
            .await;

        let loader = {
            let engine = self.engine.clone();
            let health = health.clone();
            let ready = self.ready.clone();
            tokio::spawn(async move {
                let loaded = tokio::task::spawn_blocking({
                    let engine = engine.clone();
                    move || engine.load_all()
                })
                .await;
                if engine.is_ready() {
                    health
                        .set_serving::<GrpcInferenceServiceServer<InferenceService>>()
                        .await;
                    tracing::info!("all models loaded and warm: ready");
                    ready.send_replace(true);
                } else {
                    tracing::error!(join_error = ?loaded.err(), "some model failed to load; the server stays not ready");
                }
            })
        };

        let service = InferenceService::new(self.engine.clone(), self.request_timeout);
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::INFERENCE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(ServerError::Reflection)?;
        let grpc = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                GrpcInferenceServiceServer::new(service)
                    .max_decoding_message_size(crate::http::MAX_BODY_BYTES),
            )
            .serve_with_incoming_shutdown(
                // Small frames must not wait for Nagle + delayed ACK (~40 ms tails).
                tonic::transport::server::TcpIncoming::from(self.grpc).with_nodelay(Some(true)),
                token.clone().cancelled_owned(),
            );
        let app = crate::http::router(self.engine.clone(), self.request_timeout);
        let listener = self.http.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY on an HTTP connection");
            }
        });
        let http =
            axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());

        let trigger = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutdown requested: draining in-flight calls");
            trigger.cancel();
        });
        let (grpc, http) = tokio::join!(grpc, http);
        loader.abort();
        grpc?;
        http.map_err(ServerError::Http)?;
        Ok(())
    }
}

//! Builds and runs the model-server: scans the repository (refusing a bad one
//! before serving), binds the gRPC and HTTP listeners, loads and warms models in
//! the background, then keeps polling the repository (the live repository) and
//! keeps `grpc.health.v1` in step with readiness, and serves both fronts until
//! the shutdown future resolves.

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
use crate::live::LiveRepository;
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
    /// Also serve gRPC on this Unix-domain socket (for a gateway on the same
    /// host: the same API without the loopback TCP stack).
    pub grpc_socket: Option<PathBuf>,
    /// Turn dynamic batching off for every model.
    pub disable_batching: bool,
    /// Worker threads per model version when a config does not say.
    pub default_instances: usize,
    /// Longest an inference call may wait (gRPC callers may ask for less).
    pub request_timeout: Duration,
    /// How often the repository is rescanned for added and removed versions
    /// (None: never; the load call still rescans a model).
    pub repository_poll: Option<Duration>,
}

/// How often readiness is re-checked for `grpc.health.v1` when the
/// repository is not polled.
const READINESS_CHECK: Duration = Duration::from_secs(1);

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
    /// The gRPC Unix-domain socket could not be bound.
    #[error("cannot listen on the Unix socket {path}: {detail}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// What went wrong.
        detail: String,
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
    repository: Arc<LiveRepository>,
    repository_poll: Option<Duration>,
    ready: tokio::sync::watch::Sender<bool>,
    http: TcpListener,
    grpc: TcpListener,
    grpc_socket: Option<SocketListener>,
    request_timeout: Duration,
}

/// The bound gRPC Unix socket.
struct SocketListener {
    #[cfg(unix)]
    listener: tokio::net::UnixListener,
    file: SocketFile,
}

/// A socket's file, removed when the server stops.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the gRPC socket file");
        }
    }
}

/// Binds the gRPC Unix socket at `path`. A socket file left by a server that
/// is gone is replaced; one a live server answers on, or any other file, is
/// an error (never removed).
#[cfg(unix)]
async fn bind_socket(path: &std::path::Path) -> Result<SocketListener, ServerError> {
    use std::os::unix::fs::FileTypeExt;
    let fail = |detail: String| ServerError::Socket {
        path: path.to_owned(),
        detail,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(fail(
                    "another server is listening on it (stop it, or pick another path)".into(),
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| fail(format!("cannot remove the stale socket file: {e}")))?;
        }
        Ok(_) => {
            return Err(fail(
                "the path exists and is not a socket (refusing to replace it)".into(),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| fail(e.to_string()))?;
    Ok(SocketListener {
        listener,
        file: SocketFile(path.to_owned()),
    })
}

#[cfg(not(unix))]
async fn bind_socket(path: &std::path::Path) -> Result<SocketListener, ServerError> {
    Err(ServerError::Socket {
        path: path.to_owned(),
        detail: "Unix-domain sockets need a Unix host".into(),
    })
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
        let http = bind(config.host, config.http_port).await?;
        let grpc = bind(config.host, config.grpc_port).await?;
        let grpc_socket = match &config.grpc_socket {
            Some(path) => Some(bind_socket(path).await?),
            None => None,
        };
        let configs = models
            .iter()
            .map(|(name, m)| (name.clone(), m.config_text.clone()))
            .collect();
        let engine = Arc::new(Engine::new(models));
        let repository = Arc::new(LiveRepository::new(
            config.model_repository.clone(),
            engine.clone(),
            configs,
            config.repository_poll,
        ));
        Ok(ModelServer {
            engine,
            repository,
            repository_poll: config.repository_poll,
            ready: tokio::sync::watch::Sender::new(false),
            http,
            grpc,
            grpc_socket,
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

    /// The path of the gRPC Unix socket, if one is served.
    pub fn grpc_socket(&self) -> Option<&std::path::Path> {
        self.grpc_socket.as_ref().map(|s| s.file.0.as_path())
    }

    /// Turns true once the versions found at start have been tried and every
    /// model's default version is loaded and warmed up.
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
    /// readiness turns true when every model's default version has answered
    /// its warm-up (see [`Engine::is_ready`]). Then the repository is polled.
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
            let repository = self.repository.clone();
            let health = health.clone();
            let ready = self.ready.clone();
            let poll = self.repository_poll;
            let stop = token.clone();
            tokio::spawn(async move {
                let loaded = tokio::task::spawn_blocking({
                    let engine = engine.clone();
                    move || engine.load_all()
                })
                .await;
                if let Err(e) = loaded {
                    tracing::error!(error = %e, "loading the repository panicked");
                }
                let mut was_ready = None;
                loop {
                    let now = engine.is_ready();
                    if was_ready != Some(now) {
                        if now {
                            health
                                .set_serving::<GrpcInferenceServiceServer<InferenceService>>()
                                .await;
                            tracing::info!(
                                "every model's default version is loaded and warm: ready"
                            );
                        } else {
                            health
                                .set_not_serving::<GrpcInferenceServiceServer<InferenceService>>()
                                .await;
                            tracing::error!(
                                "a model's default version is not ready (see POST /v2/repository/index): not ready"
                            );
                        }
                        ready.send_replace(now);
                        was_ready = Some(now);
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(poll.unwrap_or(READINESS_CHECK)) => {}
                    }
                    if poll.is_some() {
                        let repository = repository.clone();
                        if let Err(e) = tokio::task::spawn_blocking(move || repository.poll()).await
                        {
                            tracing::error!(error = %e, "a repository scan panicked");
                        }
                    }
                }
            })
        };

        let service = InferenceService::new(self.engine.clone(), self.request_timeout);
        let routes = |service: InferenceService| -> Result<tonic::service::Routes, ServerError> {
            let reflection = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::INFERENCE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .map_err(ServerError::Reflection)?;
            let mut routes = tonic::service::RoutesBuilder::default();
            routes
                .add_service(health_service.clone())
                .add_service(reflection)
                .add_service(
                    GrpcInferenceServiceServer::new(service)
                        .max_decoding_message_size(crate::http::MAX_BODY_BYTES),
                );
            Ok(routes.routes())
        };
        let grpc = tonic::transport::Server::builder()
            .add_routes(routes(service.clone())?)
            .serve_with_incoming_shutdown(
                // Small frames must not wait for Nagle + delayed ACK (~40 ms tails).
                tonic::transport::server::TcpIncoming::from(self.grpc).with_nodelay(Some(true)),
                token.clone().cancelled_owned(),
            );
        // The same services on the Unix socket, if one is bound; the socket
        // file goes when this future ends.
        let socket_routes = match &self.grpc_socket {
            Some(_) => Some(routes(service)?),
            None => None,
        };
        let grpc_socket = {
            let socket = self.grpc_socket;
            let cancelled = token.clone().cancelled_owned();
            async move {
                match (socket, socket_routes) {
                    #[cfg(unix)]
                    (Some(SocketListener { listener, file }), Some(routes)) => {
                        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                        let served = tonic::transport::Server::builder()
                            .add_routes(routes)
                            .serve_with_incoming_shutdown(incoming, cancelled)
                            .await;
                        drop(file);
                        served.map_err(ServerError::Grpc)
                    }
                    _ => Ok(()),
                }
            }
        };
        let app = crate::http::router(self.repository.clone(), self.request_timeout);
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
        let (grpc, grpc_socket, http) = tokio::join!(grpc, grpc_socket, http);
        loader.abort();
        grpc?;
        grpc_socket?;
        http.map_err(ServerError::Http)?;
        Ok(())
    }
}

//! Building and running the gateway: the store, the reader and its batch
//! watch, the core, the REST and gRPC fronts on bound listeners (port 0 picks
//! a free port), health and reflection, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use feature_store::definitions::FeatureDefinitions;
use feature_store::reader::FeatureReader;
use feature_store::store::AnyStore;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::GatewayConfig;
use crate::core::Gateway;
use crate::error::GatewayError;

/// What both fronts share: the core and the admission limit.
pub struct Shared<S> {
    /// The core.
    pub gateway: Gateway<S>,
    /// At most this many requests are served at once.
    limit: Arc<Semaphore>,
    /// Entities per PredictBatch call.
    pub max_batch_entities: usize,
    /// Request counters and latencies.
    pub metrics: crate::metrics::Metrics,
    limit_total: usize,
}

impl<S: feature_store::store::FeatureStore> Shared<S> {
    /// The `/metrics` text.
    pub fn render_metrics(&self) -> String {
        let in_flight = self
            .limit_total
            .saturating_sub(self.limit.available_permits());
        let cache = self.gateway.enricher().reader().cache_stats();
        let mut out = self.metrics.render(&cache, in_flight, self.limit_total);
        if let Some(log) = self.gateway.prediction_log() {
            log.stats().render(&mut out);
        }
        out
    }
}

impl<S> Shared<S> {
    /// Counts a finished request and, for a prediction, its latencies.
    pub fn record<T>(
        &self,
        front: &'static str,
        route: &'static str,
        result: &Result<T, GatewayError>,
    ) {
        let code = match result {
            Ok(_) => "ok",
            Err(e) => e.code().code,
        };
        self.metrics.request(front, route, code);
    }
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The definitions file is invalid.
    #[error(transparent)]
    Definitions(#[from] feature_store::definitions::DefinitionsError),
    /// The store cannot be opened or reached.
    #[error("feature store: {0}")]
    Store(String),
    /// A model check failed.
    #[error(transparent)]
    Start(#[from] crate::core::StartError),
    /// A port cannot be bound.
    #[error("cannot listen on {addr} (is another process using the port?): {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A server failed while running.
    #[error("server error: {0}")]
    Serve(String),
}

/// A gateway with bound listeners, ready to run.
pub struct GatewayServer {
    shared: Arc<Shared<AnyStore>>,
    reader: Arc<FeatureReader<AnyStore>>,
    http: TcpListener,
    grpc: TcpListener,
}

impl GatewayServer {
    /// Opens the store, checks every model against its model-server, binds
    /// both ports.
    ///
    /// # Errors
    /// [`ServeError`] saying what to fix.
    pub async fn bind(config: &GatewayConfig) -> Result<Self, ServeError> {
        let defs = Arc::new(FeatureDefinitions::load(&config.definitions)?);
        let store = config
            .store
            .connect()
            .await
            .map_err(|e| ServeError::Store(e.to_string()))?;
        let reader = Arc::new(
            FeatureReader::new(Arc::new(store), defs, config.cache.clone())
                .await
                .map_err(|e| ServeError::Store(e.to_string()))?,
        );
        let gateway = Gateway::new(config, Arc::clone(&reader))?;
        gateway.check_models(Duration::from_secs(10)).await?;
        let bind = |port: u16| {
            let addr = format!("{}:{port}", config.server.host);
            async move {
                TcpListener::bind(&addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })
            }
        };
        let http = bind(config.server.http_port).await?;
        let grpc = bind(config.server.grpc_port).await?;
        Ok(GatewayServer {
            shared: Arc::new(Shared {
                gateway,
                limit: Arc::new(Semaphore::new(config.server.max_concurrent_requests)),
                max_batch_entities: config.server.max_batch_entities,
                metrics: crate::metrics::Metrics::default(),
                limit_total: config.server.max_concurrent_requests,
            }),
            reader,
            http,
            grpc,
        })
    }

    /// The bound REST address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr().ok()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    ///
    /// # Errors
    /// [`ServeError::Serve`] if a front fails.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let watch = self.reader.watch_batches();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        // The tower stack, one definition for both fronts (crate::layers).
        let metrics = Arc::clone(&self.shared);
        let on_refused: crate::layers::OnRefused =
            Arc::new(move |front, route, e: &GatewayError| {
                metrics.metrics.request(front, route, e.code().code);
            });
        let timeout = self.shared.gateway.request_timeout();
        let app =
            crate::http::router(Arc::clone(&self.shared)).layer(crate::layers::GatewayLayer::new(
                Arc::clone(&self.shared.limit),
                timeout,
                "rest",
                crate::layers::RestReject,
                Arc::clone(&on_refused),
            ));
        let listener = self.http.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY on an HTTP connection");
            }
        });
        let http = axum::serve(listener, app).with_graceful_shutdown(stop(rx.clone()));

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<proto::gateway::v1::prediction_service_server::PredictionServiceServer<
                crate::grpc::PredictionGrpc<AnyStore>,
            >>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::GATEWAY_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Serve(e.to_string()))?;
        // Small frames must not wait for Nagle + delayed ACK (~40 ms tails).
        let incoming =
            tonic::transport::server::TcpIncoming::from(self.grpc).with_nodelay(Some(true));
        let grpc = tonic::transport::Server::builder()
            .layer(crate::layers::GatewayLayer::new(
                Arc::clone(&self.shared.limit),
                timeout,
                "grpc",
                crate::layers::GrpcReject,
                Arc::clone(&on_refused),
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                proto::gateway::v1::prediction_service_server::PredictionServiceServer::new(
                    crate::grpc::PredictionGrpc::new(Arc::clone(&self.shared)),
                ),
            )
            .add_service(
                proto::gateway::v1::feature_service_server::FeatureServiceServer::new(
                    crate::grpc::FeatureGrpc::new(Arc::clone(&self.shared)),
                ),
            )
            .add_service(
                proto::gateway::v1::feedback_service_server::FeedbackServiceServer::new(
                    crate::grpc::FeedbackGrpc::new(Arc::clone(&self.shared)),
                ),
            )
            .serve_with_incoming_shutdown(incoming, stop(rx));
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        let (h, g) = tokio::join!(http.into_future(), grpc);
        watch.abort();
        // Both fronts have drained: every answered prediction is queued.
        let log_deadline = Duration::from_secs(10);
        if !self.shared.gateway.close_log(log_deadline).await {
            tracing::error!(
                "prediction log: not everything was written within {log_deadline:?} of shutdown"
            );
        }
        h.map_err(|e| ServeError::Serve(format!("REST: {e}")))?;
        g.map_err(|e| ServeError::Serve(format!("gRPC: {e}")))?;
        Ok(())
    }
}

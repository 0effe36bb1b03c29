//! The server on top of everything: [`GatewayServer::bind`] opens the
//! store, builds the state (prediction path, auth, metrics), checks every
//! model and binds both ports (port 0 picks a free one);
//! [`GatewayServer::run`] composes the REST and gRPC fronts with the admin
//! APIs, health and reflection behind the shared tower stack, hosts the
//! background tasks (key refresh, routing poll, config watch, scheduler) and
//! shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use feature_store::definitions::FeatureDefinitions;
use feature_store::reader::FeatureReader;
use feature_store::store::AnyStore;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin::routing::RoutingAdminGrpc;
use crate::admin::tuner::TunerAdminGrpc;
use crate::async_predict::AsyncPredictions;
use crate::auth::dev_issuer::{DevIssuer, DevIssuerError, DevToken};
use crate::auth::keys::KeyFamilies;
use crate::auth::keys::{FetchError, IssuerKeys};
use crate::auth::verify::TokenFamilies;
use crate::auth::{AuthMode, Authenticator, Authorizer, Policy, Verifier};
use crate::config::GatewayConfig;
use crate::front::grpc::{FeatureGrpc, FeedbackGrpc, PredictionGrpc, SimilarityGrpc};
use crate::front::layers::{GatewayLayer, GrpcReject, RestReject};
use crate::metrics::{Admission, Front, Metrics, Sampled, StoreFamilies};
use crate::scoring::host::ScoringHost;
use crate::scoring::{Scorer, ScoringSettings};
use crate::serve::Core;
use crate::similar::Similarity;
use crate::state::{AppState, DevIssuerState, MetricsPage};

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The definitions file is invalid.
    #[error(transparent)]
    Definitions(#[from] feature_store::definitions::DefinitionsError),
    /// The store cannot be opened or reached.
    #[error("feature store: {0}")]
    StoreSettings(#[source] feature_store::config::SettingsError),
    /// The store cannot be read.
    #[error("feature store: {0}")]
    Store(#[source] feature_store::store::StoreError),
    /// A model check failed.
    #[error(transparent)]
    Start(#[from] crate::serve::StartError),
    /// The dev issuer could not be made.
    #[error("auth: {0}")]
    DevIssuer(#[source] DevIssuerError),
    /// The issuer's keys cannot be fetched from its URL.
    #[error("auth: {0}")]
    Keys(#[source] FetchError),
    /// `[ingest]` is on but cannot start.
    #[error(transparent)]
    Ingest(feature_store::ingest::IngestError),
    /// A start-up task failed.
    #[error("auth: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// A port cannot be bound.
    #[error("cannot listen on {addr} (is another process using the port?): {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// gRPC reflection could not be built.
    #[error("server error: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The REST server failed while running.
    #[error("server error: REST: {0}")]
    Rest(#[source] std::io::Error),
    /// The OpenAPI document could not be encoded.
    #[error("server error: OpenAPI document: {0}")]
    OpenApi(#[source] serde_json::Error),
    /// Asynchronous predictions cannot start.
    #[error(transparent)]
    Async(crate::async_predict::AsyncError),
    /// The gRPC server failed while running.
    #[error("server error: gRPC: {0}")]
    Grpc(#[source] tonic::transport::Error),
}

/// A gateway with bound listeners, ready to run.
pub struct GatewayServer {
    state: Arc<AppState<AnyStore>>,
    reader: Arc<FeatureReader<AnyStore>>,
    http: TcpListener,
    grpc: TcpListener,
    keys: Arc<IssuerKeys>,
    key_refresh: Duration,
    dev_token: Option<DevToken>,
    config: GatewayConfig,
    /// The Kafka ingest of dynamic-feature events (`[ingest]`).
    ingest: Option<feature_store::ingest::Ingest<AnyStore>>,
    /// The issuer tokens come from (the dev issuer's URL in dev mode).
    issuer: String,
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
            .map_err(ServeError::StoreSettings)?;
        let reader = Arc::new(
            FeatureReader::new(Arc::new(store), defs, config.cache.clone())
                .await
                .map_err(ServeError::Store)?,
        );
        let models: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
        let metrics = Arc::new(Metrics::new(&models));
        let auth = &config.auth;
        let authz = Arc::new(Authorizer::new(
            Policy::new(auth.rules.clone(), auth.pilots.clone()),
            Arc::clone(&metrics),
        ));
        let core = Core::new(
            config,
            Arc::clone(&reader),
            Arc::clone(&authz),
            Arc::clone(&metrics),
        )
        .await?;
        core.check_models(Duration::from_secs(10)).await?;
        let core = Arc::new(core);
        let queue = if config.async_predict.enabled {
            Some(Arc::new(
                AsyncPredictions::start(
                    &config.async_predict,
                    Arc::clone(reader.store()),
                    &models,
                    config.server.request_timeout,
                )
                .map_err(ServeError::Async)?,
            ))
        } else {
            None
        };
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
        let (issuer, dev_issuer, dev_token) = match &auth.mode {
            AuthMode::Oidc { issuer } => (issuer.trim_end_matches('/').to_owned(), None, None),
            AuthMode::Dev(dev) => {
                // The gateway serves the dev issuer on its own REST port and
                // fetches it from there like any issuer.
                let port = http
                    .local_addr()
                    .map_err(|source| ServeError::Bind {
                        addr: config.server.host.clone(),
                        source,
                    })?
                    .port();
                let url = format!("http://127.0.0.1:{port}{}", crate::auth::dev_issuer::PATH);
                let dev = dev.clone();
                let issuer = tokio::task::spawn_blocking(move || DevIssuer::generate(dev))
                    .await
                    .map_err(ServeError::Task)?
                    .map_err(ServeError::DevIssuer)?;
                let token = issuer
                    .mint(&url, &auth.audience)
                    .map_err(ServeError::DevIssuer)?;
                (
                    url.clone(),
                    Some(Arc::new(DevIssuerState {
                        issuer,
                        url,
                        audience: auth.audience.clone(),
                    })),
                    Some(token),
                )
            }
        };
        let keys = Arc::new(
            IssuerKeys::for_issuer(
                &issuer,
                auth.algorithms.clone(),
                auth.fetch_timeout,
                auth.jwks_min_refetch,
            )
            .map_err(ServeError::Keys)?,
        );
        let verifier = Arc::new(Verifier::new(
            auth.verify_settings(&issuer),
            Arc::clone(&keys),
        ));
        let limit = Arc::new(Semaphore::new(config.server.max_concurrent_requests));
        let mut page = metrics_page(&metrics, &reader, &core, &keys, &limit, config);
        page.registry
            .register_collector(Box::new(TokenFamilies(verifier.stats())));
        if let Some(q) = &queue {
            page.registry.register_collector(Box::new(q.families()));
        }
        let ingest = crate::ingest::start(&config.ingest, &reader).map_err(ServeError::Ingest)?;
        let similar = Arc::new(Similarity::new(
            Arc::clone(reader.store()),
            Arc::clone(&reader),
        ));
        // Indexes current at start are loaded before the ports answer.
        similar.sync().await;
        if !similar.is_empty() {
            page.registry
                .register_collector(Box::new(crate::similar::SimilarityFamilies(Arc::clone(
                    &similar,
                ))));
        }
        if let Some(i) = &ingest {
            page.registry
                .register_collector(Box::new(crate::ingest::IngestFamilies(i.stats())));
        }
        Ok(GatewayServer {
            state: Arc::new(AppState {
                core,
                queue,
                authn: Authenticator {
                    verifier,
                    metrics: Arc::clone(&metrics),
                },
                authz,
                metrics,
                page,
                limit,
                limit_total: config.server.max_concurrent_requests,
                dev_issuer,
                scheduler_poll: config.scheduler.poll(),
                scoring: Arc::new(ScoringHost::new(Scorer::new(
                    Arc::clone(&reader),
                    &config.models,
                    ScoringSettings::default(),
                ))),
                similar,
            }),
            reader,
            http,
            grpc,
            keys,
            key_refresh: auth.jwks_refresh,
            dev_token,
            config: config.clone(),
            ingest,
            issuer,
        })
    }

    /// The token the dev issuer minted at start (`mode = "dev"` only).
    pub fn dev_token(&self) -> Option<&DevToken> {
        self.dev_token.as_ref()
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
    /// [`ServeError`] if a front fails.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let watch = self.reader.watch_batches();
        let index_watch = (!self.state.similar.is_empty()).then(|| {
            self.state
                .similar
                .watch(self.config.cache.batch_poll_interval)
        });
        // Keys load in the background: a provider that is down at start only
        // delays readiness (and answers 503 auth_unavailable), it does not
        // stop the gateway.
        let key_refresh = self.keys.spawn_refresh(self.key_refresh);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        // Routing changes made through other replicas, and edits of the
        // config file's routing, reach this gateway while it runs.
        let routing_poll = {
            let state = Arc::clone(&self.state);
            let (interval, stopped) = (self.config.rollout.poll, stop(rx.clone()));
            tokio::spawn(async move { state.core.routing().watch(interval, stopped).await })
        };
        let config_watch = self.config.rollout.config_watch.map(|interval| {
            let state = Arc::clone(&self.state);
            let (config, stopped) = (self.config.clone(), stop(rx.clone()));
            tokio::spawn(async move { watch_config(&state, config, interval, stopped).await })
        });
        let state = &self.state;
        // The tower stack, one definition for both fronts.
        fn stack<R>(state: &AppState<AnyStore>, front: Front, reject: R) -> GatewayLayer<R> {
            GatewayLayer::new(
                Arc::clone(&state.limit),
                state.core.request_timeout(),
                front,
                reject,
                Arc::clone(&state.metrics),
            )
        }
        let mut app =
            crate::front::rest::router(Arc::clone(state), crate::admin::rest_routes::<AnyStore>())
                .map_err(ServeError::OpenApi)?;
        if self.config.console.enabled {
            let console = crate::console::Console::new(
                self.config.console.clone(),
                &self.issuer,
                state.authn.clone(),
                Arc::clone(&state.authz),
                self.config.auth.fetch_timeout,
            );
            app = app.merge(crate::console::router(Arc::new(console)));
        }
        let app = app.layer(stack(state, Front::Rest, RestReject));
        let listener = self.http.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY on an HTTP connection");
            }
        });
        let http = axum::serve(listener, app).with_graceful_shutdown(stop(rx.clone()));

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<proto::gateway::v1::prediction_service_server::PredictionServiceServer<
                PredictionGrpc<AnyStore>,
            >>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::GATEWAY_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(ServeError::Reflection)?;
        // Small frames must not wait for Nagle + delayed ACK (~40 ms tails).
        let incoming =
            tonic::transport::server::TcpIncoming::from(self.grpc).with_nodelay(Some(true));
        let grpc = tonic::transport::Server::builder()
            .layer(stack(state, Front::Grpc, GrpcReject))
            .layer(crate::front::authn::GrpcAuthLayer::new(state.authn.clone()))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                proto::gateway::v1::prediction_service_server::PredictionServiceServer::new(
                    PredictionGrpc::new(Arc::clone(state)),
                ),
            )
            .add_service(
                proto::gateway::v1::feature_service_server::FeatureServiceServer::new(
                    FeatureGrpc::new(Arc::clone(state)),
                ),
            )
            .add_service(
                proto::gateway::v1::feedback_service_server::FeedbackServiceServer::new(
                    FeedbackGrpc::new(Arc::clone(state)),
                ),
            )
            .add_service(
                proto::gateway::v1::similarity_service_server::SimilarityServiceServer::new(
                    SimilarityGrpc::new(Arc::clone(state)),
                ),
            )
            .add_service(
                proto::gateway::v1::routing_admin_service_server::RoutingAdminServiceServer::new(
                    RoutingAdminGrpc::new(Arc::clone(state)),
                ),
            )
            .add_service(
                proto::gateway::v1::tuner_admin_service_server::TunerAdminServiceServer::new(
                    TunerAdminGrpc::new(Arc::clone(state)),
                ),
            )
            .serve_with_incoming_shutdown(incoming, stop(rx.clone()));
        let scheduler =
            crate::scheduler::spawn(&self.config.scheduler, &self.reader, stop(rx.clone()));
        let workers = self
            .state
            .queue
            .as_ref()
            .filter(|q| q.settings().workers)
            .map(|q| {
                tokio::spawn(crate::async_predict::worker::run(
                    Arc::clone(q),
                    Arc::clone(&state.core),
                    self.config.models.iter().map(|m| m.name.clone()).collect(),
                    stop(rx.clone()),
                ))
            });
        let scoring =
            self.config.scheduler.poll().map(|poll| {
                tokio::spawn(Arc::clone(&state.scoring).schedule(poll, stop(rx.clone())))
            });
        let ingest = self
            .ingest
            .take()
            .map(|i| tokio::spawn(i.run(stop(rx.clone()))));
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        let (h, g) = tokio::join!(http.into_future(), grpc);
        if let Some(scheduler) = scheduler
            && let Err(e) = scheduler.await
        {
            tracing::error!(error = %e, "the refresh scheduler's task failed");
        }
        if let Some(scoring) = scoring {
            let _ = scoring.await;
        }
        // The workers finish the batch in hand (its results stored and
        // committed) before the log closes.
        if let Some(workers) = workers {
            let _ = workers.await;
        }
        if let Some(ingest) = ingest
            && let Err(e) = ingest.await
        {
            tracing::error!(error = %e, "the ingest task failed");
        }
        watch.abort();
        if let Some(w) = index_watch {
            w.abort();
        }
        key_refresh.abort();
        routing_poll.abort();
        if let Some(w) = config_watch {
            w.abort();
        }
        // Shadow copies still running queue their records before the log closes.
        if !self
            .state
            .core
            .shadows()
            .drain(self.config.rollout.shadow_timeout)
            .await
        {
            tracing::warn!("shadow calls still running at shutdown were abandoned");
        }
        // Both fronts have drained: every answered prediction is queued.
        let log_deadline = Duration::from_secs(10);
        if !self.state.core.close_log(log_deadline).await {
            tracing::error!(
                "prediction log: not everything was written within {log_deadline:?} of shutdown"
            );
        }
        h.map_err(ServeError::Rest)?;
        g.map_err(ServeError::Grpc)?;
        Ok(())
    }
}

/// Re-reads the config file every `interval`; when it changed and is valid,
/// applies its routing (recorded as a change by `config-file`). Other edits
/// need a restart and say so; an invalid file is logged and ignored.
async fn watch_config(
    state: &AppState<AnyStore>,
    mut applied: GatewayConfig,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let path = applied.source.clone();
    let mut last_text = read_file(&path).await.ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let text = match read_file(&path).await {
            Ok(t) => t,
            Err(e) => {
                if last_text.take().is_some() {
                    tracing::warn!(path = %path.display(), "cannot read the config file; keeping the running config: {e}");
                }
                continue;
            }
        };
        if last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        last_text = Some(text.clone());
        let next = match GatewayConfig::parse(&text, &path) {
            Ok(c) => c,
            Err(e) => {
                state.metrics.config_reload("invalid");
                tracing::error!(
                    "config file changed but is invalid; keeping the running config: {e}"
                );
                continue;
            }
        };
        let without_routing = |c: &GatewayConfig| {
            let mut models = c.models.clone();
            for m in &mut models {
                m.routing = crate::rollout::RoutingTable::stable("");
            }
            (models, c.server.clone(), c.definitions.clone())
        };
        if without_routing(&next) != without_routing(&applied) {
            tracing::warn!(
                "the config file changed outside [model.routing]; those changes need a restart"
            );
        }
        let tables: Vec<(String, crate::rollout::RoutingTable)> = next
            .models
            .iter()
            .map(|m| (m.name.clone(), m.routing.clone()))
            .collect();
        match state.core.routing().apply_file(&tables).await {
            Ok(changed) => {
                state.metrics.config_reload("applied");
                tracing::info!(models = ?changed, "config file reloaded");
                applied = next;
            }
            Err(e) => {
                state.metrics.config_reload("failed");
                // Try again at the next tick.
                last_text = None;
                tracing::error!("config file changed but its routing could not be stored: {e}");
            }
        }
    }
}

/// Reads a (small) file off the async threads.
async fn read_file(path: &std::path::Path) -> std::io::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
        .await
        .map_err(std::io::Error::other)?
}

/// The one `/metrics` registry: the gateway's counters, the admission
/// gauges, the feature store's stats, the prediction log, the signing keys,
/// the stage latencies, and the slots of the families sampled at each
/// scrape (refresh jobs, model clients, rollout).
fn metrics_page(
    metrics: &Arc<Metrics>,
    reader: &Arc<FeatureReader<AnyStore>>,
    core: &Core<AnyStore>,
    keys: &Arc<IssuerKeys>,
    limit: &Arc<Semaphore>,
    config: &GatewayConfig,
) -> MetricsPage {
    let mut registry = telemetry::prom::Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(Admission {
        limit: Arc::clone(limit),
        total: config.server.max_concurrent_requests,
    }));
    let (jobs, clients, rollout) = (Sampled::new(), Sampled::new(), Sampled::new());
    registry.register_collector(Box::new(StoreFamilies::new(
        Arc::clone(reader),
        jobs.clone(),
    )));
    registry.register_collector(Box::new(clients.clone()));
    if let Some(log) = core.prediction_log() {
        registry.register_collector(Box::new(log.families()));
    }
    if let Some(p) = core.publisher() {
        registry.register_collector(Box::new(p.families()));
    }
    registry.register_collector(Box::new(KeyFamilies(Arc::clone(keys))));
    registry.register_collector(Box::new(rollout.clone()));
    let scoring = Sampled::new();
    registry.register_collector(Box::new(scoring.clone()));
    // Stage latencies timed from the request's spans.
    registry.register_collector(telemetry::stages::collector(
        "mlgw_stage_seconds",
        "Wall time of each request stage (the span of that name).",
    ));
    MetricsPage {
        registry,
        jobs,
        clients,
        rollout,
        scoring,
    }
}

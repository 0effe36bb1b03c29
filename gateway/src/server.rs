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

use crate::auth::dev_issuer::{DevIssuer, DevToken};
use crate::auth::keys::IssuerKeys;
use crate::auth::layer::AuthState;
use crate::auth::{Access, AuthMode, Caller, Policy, Verifier};
use crate::config::GatewayConfig;
use crate::core::Gateway;
use crate::error::GatewayError;

/// The dev issuer as served by this gateway.
pub struct DevIssuerState {
    /// The key pair.
    pub issuer: DevIssuer,
    /// Its issuer URL (`http://127.0.0.1:PORT/dev-issuer`).
    pub url: String,
}

/// What both fronts share: the core, the admission limit, auth.
pub struct Shared<S> {
    /// The core.
    pub gateway: Gateway<S>,
    /// At most this many requests are served at once.
    limit: Arc<Semaphore>,
    /// Entities per PredictBatch call.
    pub max_batch_entities: usize,
    /// Request counters and latencies.
    pub metrics: Arc<crate::metrics::Metrics>,
    limit_total: usize,
    /// Token verification (used by the auth layers).
    pub auth: AuthState,
    /// Who may call what.
    pub policy: Policy,
    /// The dev issuer, in `mode = "dev"`.
    pub dev_issuer: Option<Arc<DevIssuerState>>,
    /// The hosted scheduler's poll interval (None: `[scheduler]` disabled).
    pub scheduler_poll: Option<Duration>,
}

/// How long a `/metrics` scrape waits for the refresh jobs' state.
const METRICS_STORE_DEADLINE: Duration = Duration::from_secs(1);

impl<S: feature_store::store::FullStore> Shared<S> {
    /// The `/metrics` text, with the refresh jobs' state read from the store
    /// under a deadline (a scrape never waits on a slow store for long).
    pub async fn render_metrics_with_jobs(&self) -> String {
        let reader = self.gateway.enricher().reader();
        let jobs = tokio::time::timeout(
            METRICS_STORE_DEADLINE,
            feature_store::schedule::jobs::list(&**reader.store(), reader.definitions()),
        )
        .await
        .ok()
        .and_then(Result::ok);
        let mut out = self.render_metrics();
        self.metrics.render_refresh_jobs(&mut out, jobs.as_deref());
        out
    }

    /// The `/metrics` text without the refresh jobs (no store call).
    pub fn render_metrics(&self) -> String {
        let in_flight = self
            .limit_total
            .saturating_sub(self.limit.available_permits());
        let reader = self.gateway.enricher().reader();
        let cache = reader.cache_stats();
        let mut out = self.metrics.render(&cache, in_flight, self.limit_total);
        self.metrics
            .render_store_errors(&mut out, &reader.store_error_stats());
        self.metrics
            .render_event_reads(&mut out, &reader.event_stats());
        self.metrics
            .render_model_clients(&mut out, &self.gateway.model_clients());
        if let Some(log) = self.gateway.prediction_log() {
            log.stats().render(&mut out);
        }
        self.metrics
            .render_auth(&mut out, &self.auth.verifier.keys().stats);
        self.metrics
            .render_rollout(&mut out, self.gateway.routing(), self.gateway.shadows());
        // telemetry (issue 9): stage latencies timed from the request's spans.
        if let Some(stages) = telemetry::stages::global() {
            stages.render(
                &mut out,
                "mlgw_stage_seconds",
                "Wall time of each request stage (the span of that name).",
            );
        }
        out
    }
}

impl<S> Shared<S> {
    /// Counts a finished request and times it under `api` and `model` (`-`
    /// for APIs not about one model).
    pub fn record_timed<T>(
        &self,
        front: &'static str,
        api: &'static str,
        model: &str,
        started: std::time::Instant,
        result: &Result<T, GatewayError>,
    ) {
        self.record(front, api, result);
        self.metrics
            .request_latency(front, api, model, started.elapsed());
    }

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

    /// Checks the access policy for an authenticated caller (`None`: the
    /// request did not pass the auth layer, which is refused too).
    ///
    /// # Errors
    /// [`GatewayError::PermissionDenied`] saying what the caller lacks.
    pub fn authorize(
        &self,
        front: &'static str,
        caller: Option<&Caller>,
        access: Access<'_>,
    ) -> Result<(), GatewayError> {
        let caller = caller.ok_or(GatewayError::Unauthenticated(
            crate::auth::AuthError::Missing,
        ))?;
        self.policy.check(caller, access).map_err(|message| {
            let api = access.api().as_str();
            self.metrics.auth_denied(front, api);
            tracing::info!(front, api, caller = %caller.subject, "request denied: {message}");
            GatewayError::PermissionDenied(message)
        })
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
    /// The auth setup failed.
    #[error("auth: {0}")]
    Auth(String),
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
    keys: Arc<IssuerKeys>,
    key_refresh: Duration,
    dev_token: Option<DevToken>,
    config: GatewayConfig,
    scheduler: crate::tuner_admin::SchedulerSettings,
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
        let gateway = Gateway::new(config, Arc::clone(&reader)).await?;
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
        let auth = &config.auth;
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
                    .map_err(|e| ServeError::Auth(e.to_string()))?
                    .map_err(|e| ServeError::Auth(e.to_string()))?;
                let token = issuer
                    .mint(&url, &auth.audience)
                    .map_err(|e| ServeError::Auth(e.to_string()))?;
                (
                    url.clone(),
                    Some(Arc::new(DevIssuerState { issuer, url })),
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
            .map_err(|e| ServeError::Auth(e.to_string()))?,
        );
        let verifier = Arc::new(Verifier::new(
            auth.verify_settings(&issuer),
            Arc::clone(&keys),
        ));
        let metrics = Arc::new(crate::metrics::Metrics::default());
        Ok(GatewayServer {
            shared: Arc::new(Shared {
                gateway,
                limit: Arc::new(Semaphore::new(config.server.max_concurrent_requests)),
                max_batch_entities: config.server.max_batch_entities,
                metrics: Arc::clone(&metrics),
                limit_total: config.server.max_concurrent_requests,
                auth: AuthState { verifier, metrics },
                policy: Policy::new(auth.rules.clone(), auth.pilots.clone()),
                dev_issuer,
                scheduler_poll: config.scheduler.enabled.then_some(config.scheduler.poll),
            }),
            reader,
            http,
            grpc,
            keys,
            key_refresh: auth.jwks_refresh,
            dev_token,
            config: config.clone(),
            scheduler: config.scheduler.clone(),
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
    /// [`ServeError::Serve`] if a front fails.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let watch = self.reader.watch_batches();
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
            let shared = Arc::clone(&self.shared);
            let (interval, stopped) = (self.config.rollout.poll, stop(rx.clone()));
            tokio::spawn(async move { shared.gateway.routing().watch(interval, stopped).await })
        };
        let config_watch = self.config.rollout.config_watch.map(|interval| {
            let shared = Arc::clone(&self.shared);
            let (config, stopped) = (self.config.clone(), stop(rx.clone()));
            tokio::spawn(async move { watch_config(&shared, config, interval, stopped).await })
        });
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
            .layer(crate::auth::layer::GrpcAuthLayer::new(
                self.shared.auth.clone(),
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
            .add_service(
                proto::gateway::v1::routing_admin_service_server::RoutingAdminServiceServer::new(
                    crate::routing_admin::RoutingAdminGrpc::new(Arc::clone(&self.shared)),
                ),
            )
            // --- refresh tuner admin API (crate::tuner_admin) ---
            .add_service(
                proto::gateway::v1::tuner_admin_service_server::TunerAdminServiceServer::new(
                    crate::tuner_admin::TunerAdminGrpc::new(Arc::clone(&self.shared)),
                ),
            )
            // --- end refresh tuner admin API ---
            .serve_with_incoming_shutdown(incoming, stop(rx.clone()));
        // --- refresh scheduler (crate::tuner_admin) ---
        let scheduler = self.scheduler.enabled.then(|| {
            let scheduler = Arc::new(
                feature_store::schedule::Scheduler::new(
                    Arc::clone(self.reader.store()),
                    Arc::new(self.reader.definitions().clone()),
                    feature_store::schedule::SchedulerConfig {
                        poll: self.scheduler.poll,
                        lease_margin: self.scheduler.lease_margin,
                        ..feature_store::schedule::SchedulerConfig::for_this_process()
                    },
                )
                .serving(&self.reader),
            );
            tracing::info!(
                holder = scheduler.config().holder,
                "refresh scheduler started (every {:?})",
                self.scheduler.poll
            );
            tokio::spawn(scheduler.run(
                Arc::new(feature_store::schedule::SystemClock),
                stop(rx.clone()),
                feature_store::schedule::log_event,
            ))
        });
        // --- end refresh scheduler ---
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
        watch.abort();
        key_refresh.abort();
        routing_poll.abort();
        if let Some(w) = config_watch {
            w.abort();
        }
        // Shadow copies still running queue their records before the log closes.
        if !self
            .shared
            .gateway
            .shadows()
            .drain(self.config.rollout.shadow_timeout)
            .await
        {
            tracing::warn!("shadow calls still running at shutdown were abandoned");
        }
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

/// Re-reads the config file every `interval`; when it changed and is valid,
/// applies its routing (recorded as a change by `config-file`). Other edits
/// need a restart and say so; an invalid file is logged and ignored.
async fn watch_config(
    shared: &Shared<AnyStore>,
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
                shared.metrics.config_reload("invalid");
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
        match shared.gateway.routing().apply_file(&tables).await {
            Ok(changed) => {
                shared.metrics.config_reload("applied");
                tracing::info!(models = ?changed, "config file reloaded");
                applied = next;
            }
            Err(e) => {
                shared.metrics.config_reload("failed");
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

//! [`AppState`]: what the handlers of both fronts and the admin APIs share,
//! built once by the server. Plain data: the checks and the recording live
//! with their owners (auth, the tower stack, the prediction path).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::async_predict::AsyncPredictions;
use crate::auth::dev_issuer::DevIssuer;
use crate::auth::{Authenticator, Authorizer};
use crate::error::GatewayError;
use crate::metrics::{Metrics, RefreshJobs, Sampled};
use crate::model::stats::ClientFamilies;
use crate::rollout::stats::RolloutFamilies;
use crate::scoring::host::ScoringHost;
use crate::scoring::stats::ScoringFamilies;
use crate::serve::Core;
use crate::similar::Similarity;

/// The dev issuer as served by this gateway.
pub struct DevIssuerState {
    /// The key pair.
    pub issuer: DevIssuer,
    /// Its issuer URL (`http://127.0.0.1:PORT/dev-issuer`).
    pub url: String,
    /// The audience of the tokens it mints (`auth.audience`).
    pub audience: String,
}

/// The `/metrics` registry, built once at start, and the slots of the
/// families handed over before each scrape (read asynchronously from the
/// store, or from state the prediction path owns).
pub struct MetricsPage {
    /// Every component's metrics and collectors.
    pub registry: telemetry::prom::Registry,
    /// The refresh jobs' state, read from the store under a deadline.
    pub jobs: Sampled<RefreshJobs>,
    /// The model-server clients' breakers and call counts.
    pub clients: Sampled<ClientFamilies>,
    /// The routing per model and the shadow pool's counts.
    pub rollout: Sampled<RolloutFamilies>,
    /// The scoring jobs' latest runs, read from the store under a deadline.
    pub scoring: Sampled<ScoringFamilies>,
}

/// What every handler may use.
pub struct AppState<S> {
    /// The prediction path (shared with the asynchronous workers).
    pub core: Arc<Core<S>>,
    /// Asynchronous predictions (None: `[async_predict]` is off).
    pub queue: Option<Arc<AsyncPredictions<S>>>,
    /// Token verification (the authentication layers).
    pub authn: Authenticator,
    /// The access policy, one check per API kind.
    pub authz: Arc<Authorizer>,
    /// The gateway's own counters.
    pub metrics: Arc<Metrics>,
    /// The `/metrics` registry and its sampled families.
    pub page: MetricsPage,
    /// The admission limit (requests served at once).
    pub limit: Arc<Semaphore>,
    /// Its size.
    pub limit_total: usize,
    /// The dev issuer, in `mode = "dev"`.
    pub dev_issuer: Option<Arc<DevIssuerState>>,
    /// The hosted scheduler's poll interval (None: `[scheduler]` disabled).
    pub scheduler_poll: Option<Duration>,
    /// Batch-scoring runs started by the admin API or the scheduler.
    pub scoring: Arc<ScoringHost<S>>,
    /// The similarity indexes of the indexed views.
    pub similar: Arc<Similarity<S>>,
}

impl<S> AppState<S> {
    /// Asynchronous predictions, or why there are none (501).
    ///
    /// # Errors
    /// [`GatewayError::AsyncDisabled`] when `[async_predict]` is off.
    pub fn queue(&self) -> Result<&Arc<AsyncPredictions<S>>, GatewayError> {
        self.queue.as_ref().ok_or(GatewayError::AsyncDisabled)
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> usize {
        self.limit_total
            .saturating_sub(self.limit.available_permits())
    }
}

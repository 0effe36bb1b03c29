//! The checks a front runs once per request: [`Authenticator`] turns the
//! `Authorization` header into a [`Caller`] (failures counted by reason),
//! and [`Authorizer`] has one check per API kind (denials counted by API).

use std::sync::Arc;

use tracing::Instrument as _;

use super::policy::{Access, Api, Denied, Policy};
use super::{AuthError, Caller, Verifier};
use crate::metrics::{Front, Metrics};

/// Token verification with its failures counted, shared by both fronts'
/// authentication layers.
#[derive(Clone)]
pub struct Authenticator {
    /// The verifier.
    pub verifier: Arc<Verifier>,
    /// Where failures are counted.
    pub metrics: Arc<Metrics>,
}

impl Authenticator {
    /// The caller of a request with these `headers`.
    ///
    /// # Errors
    /// [`AuthError`] saying why the token was refused (counted).
    pub async fn caller(
        &self,
        front: Front,
        headers: &http::HeaderMap,
    ) -> Result<Caller, AuthError> {
        self.counted(front, self.verifier.authenticate(headers))
            .await
    }

    /// The caller of a browser session's `token` (the console's cookie),
    /// verified exactly as a bearer token.
    ///
    /// # Errors
    /// [`AuthError`] saying why the token was refused (counted).
    pub async fn session(&self, front: Front, token: &str) -> Result<Caller, AuthError> {
        self.counted(front, self.verifier.verify(token)).await
    }

    async fn counted(
        &self,
        front: Front,
        check: impl std::future::Future<Output = Result<Caller, AuthError>>,
    ) -> Result<Caller, AuthError> {
        let front_label = front.as_str();
        check
            // The token check is its own stage.
            .instrument(tracing::info_span!("auth", front = front_label))
            .await
            .inspect_err(|e| {
                self.metrics.auth_failure(front, e.reason());
                tracing::info!(
                    front = front_label,
                    reason = e.reason(),
                    "request refused: {e}"
                );
            })
    }
}

/// The access policy, one check per API kind; each denial is counted and
/// logged.
#[derive(Debug)]
pub struct Authorizer {
    policy: Policy,
    metrics: Arc<Metrics>,
}

impl Authorizer {
    /// Checks `policy`, counting denials in `metrics`.
    pub fn new(policy: Policy, metrics: Arc<Metrics>) -> Self {
        Authorizer { policy, metrics }
    }

    /// Whether `caller` may predict with `model`.
    ///
    /// # Errors
    /// [`Denied`] saying what the caller lacks.
    pub fn predict(&self, front: Front, caller: &Caller, model: &str) -> Result<(), Denied> {
        self.check(front, caller, Access::Predict { model })
    }

    /// Whether `caller` may push feature values and events.
    ///
    /// # Errors
    /// [`Denied`] saying what the caller lacks.
    pub fn push(&self, front: Front, caller: &Caller) -> Result<(), Denied> {
        self.check(front, caller, Access::Push)
    }

    /// Whether `caller` may send feedback.
    ///
    /// # Errors
    /// [`Denied`] saying what the caller lacks.
    pub fn feedback(&self, front: Front, caller: &Caller) -> Result<(), Denied> {
        self.check(front, caller, Access::Feedback)
    }

    /// Whether `caller` may use the admin APIs (routing, tuner).
    ///
    /// # Errors
    /// [`Denied`] saying what the caller lacks.
    pub fn admin(&self, front: Front, caller: &Caller) -> Result<(), Denied> {
        self.check(front, caller, Access::Admin)
    }

    /// Whether `caller` may read what the admin APIs show (granted by
    /// `view` or `admin` rules).
    ///
    /// # Errors
    /// [`Denied`] saying what the caller lacks.
    pub fn view(&self, front: Front, caller: &Caller) -> Result<(), Denied> {
        self.check(front, caller, Access::View)
    }

    /// Whether `caller` may look up similar entities.
    ///
    /// # Errors
    /// [`Denied`] saying what the caller lacks.
    pub fn similar(&self, front: Front, caller: &Caller) -> Result<(), Denied> {
        self.check(front, caller, Access::Similar)
    }

    /// Counts a denial decided elsewhere (a pilot version asked for by a
    /// caller outside its groups), so all denials are counted alike.
    pub fn count_denied(&self, front: Front, api: Api) {
        self.metrics.auth_denied(front, api.as_str());
    }

    /// Whether `caller` is an admin, asked without counting a denial (an
    /// owner reading its own record is not denied anything; the console
    /// hides a viewer's actions).
    pub fn is_admin(&self, caller: &Caller) -> bool {
        self.policy.check(caller, Access::Admin).is_ok()
    }

    /// Whether `caller` may read the admin APIs, asked without counting a
    /// denial.
    pub fn is_viewer(&self, caller: &Caller) -> bool {
        self.policy.check(caller, Access::View).is_ok()
    }

    fn check(&self, front: Front, caller: &Caller, access: Access<'_>) -> Result<(), Denied> {
        self.policy.check(caller, access).inspect_err(|denied| {
            let api = access.api().as_str();
            self.metrics.auth_denied(front, api);
            tracing::info!(front = front.as_str(), api, caller = %caller.subject, "request denied: {denied}");
        })
    }
}

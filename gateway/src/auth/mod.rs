//! SSO authentication and scoped access.
//!
//! - [`keys`]: the issuer's discovery document and JWKS, cached and refreshed.
//! - [`verify`]: token checks → [`Caller`], or an [`AuthError`] (401; 503
//!   while no key was ever loaded).
//! - [`claims`]: strict JSON (duplicate members refused), registered claims
//!   with their types, configurable group/scope claim paths.
//! - [`policy`]: which groups/scopes may call which API and model; pilots.
//! - [`authorize`]: [`Authenticator`] (header → [`Caller`], failures
//!   counted) and [`Authorizer`] (one check per API kind, denials counted),
//!   what the fronts call once per request.
//! - [`settings`]: the `[auth]` section's validation.
//! - [`session`]: the browser session cookie (the console's login) and its
//!   CSRF check.
//! - [`dev_issuer`]: the local issuer for the demo (`mode = "dev"`), with a
//!   sign-in page for the console.
//!
//! **For handlers and the prediction log:** every request that passed the
//! authentication layer carries exactly one [`Caller`] in its extensions — axum:
//! `Extension<Caller>`; tonic: `request.extensions().get::<Caller>()`. Record
//! `caller.subject`; never the token (the gateway never keeps it).

pub mod authorize;
pub mod claims;
pub mod dev_issuer;
pub mod keys;
pub mod policy;
pub mod session;
pub mod settings;
pub mod verify;

use std::time::Duration;

pub use authorize::{Authenticator, Authorizer};
pub use policy::{Access, Api, Denied, Policy};
pub use verify::{AuthError, Verifier, VerifySettings};

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    /// The token's `sub` (a user or service ID): what logs and the
    /// prediction log record.
    pub subject: String,
    /// Groups from the configured groups claim.
    pub groups: Vec<String>,
    /// Scopes from the configured scopes claim.
    pub scopes: Vec<String>,
}

impl Caller {
    /// The caller the authentication layer put into a request's
    /// `extensions`.
    ///
    /// # Errors
    /// [`AuthError::Missing`] when there is none (the layer was not
    /// installed in front of this handler).
    pub fn of(extensions: &http::Extensions) -> Result<&Caller, AuthError> {
        extensions.get::<Caller>().ok_or(AuthError::Missing)
    }
}

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthMode {
    /// A real OIDC provider at this issuer URL.
    Oidc {
        /// The issuer (`iss`), e.g. `https://login.example.com/oauth2/default`.
        issuer: String,
    },
    /// The gateway's own ephemeral dev issuer.
    Dev(dev_issuer::DevSettings),
}

/// The validated `[auth]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    /// Where the keys come from.
    pub mode: AuthMode,
    /// This gateway's audience.
    pub audience: String,
    /// Accepted algorithms (asymmetric only).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Clock skew allowed.
    pub leeway: Duration,
    /// Longest accepted token lifetime.
    pub max_lifetime: Duration,
    /// Largest accepted token.
    pub max_token_bytes: usize,
    /// How often the JWKS is refetched.
    pub jwks_refresh: Duration,
    /// Least time between two refetches triggered by unknown kids.
    pub jwks_min_refetch: Duration,
    /// Deadline of one discovery or JWKS request.
    pub fetch_timeout: Duration,
    /// Where the caller's groups are.
    pub groups_claim: claims::ClaimPath,
    /// Where the caller's scopes are.
    pub scopes_claim: claims::ClaimPath,
    /// Verified tokens remembered (0: verify every request).
    pub token_cache_entries: u64,
    /// Refused tokens remembered (0: check every one again).
    pub refused_cache_entries: u64,
    /// Allow rules.
    pub rules: Vec<policy::Rule>,
    /// Pilots.
    pub pilots: Vec<policy::Pilot>,
}

impl AuthSettings {
    /// The verifier's settings once the issuer URL is known.
    pub fn verify_settings(&self, issuer: &str) -> VerifySettings {
        VerifySettings {
            issuer: issuer.to_owned(),
            audience: self.audience.clone(),
            algorithms: self.algorithms.clone(),
            leeway: self.leeway,
            max_lifetime: self.max_lifetime,
            max_token_bytes: self.max_token_bytes,
            groups_claim: self.groups_claim.clone(),
            scopes_claim: self.scopes_claim.clone(),
            cache_entries: self.token_cache_entries,
            refused_cache_entries: self.refused_cache_entries,
        }
    }
}

//! The web console under `/console`: pages for operators and data engineers
//! over the admin APIs (models and rollouts, refresh jobs and the tuner,
//! live figures from `/metrics`). The page is three static files built into
//! the binary (plain HTML, CSS and JavaScript modules: no build step, no
//! Node at run time) that call the same REST routes as every other client.
//!
//! [`login`] signs a person in through the company SSO (authorization code
//! flow with PKCE against the configured issuer, or the dev issuer) and
//! leaves the access token in the session cookie of `auth::session`; the
//! REST front accepts that cookie beside `Authorization: Bearer`, so the
//! console sees and may do exactly what the caller's groups and scopes
//! allow through the API.

pub mod login;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

pub use login::Console;

/// `[console]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// Whether `/console` is served (default true).
    pub enabled: bool,
    /// The OIDC client registered for the console at the issuer (a
    /// browser client with this gateway's `/console/callback` as redirect
    /// URI; in dev mode any name does).
    pub client_id: String,
    /// The environment variable holding the client's secret, for a
    /// confidential client (empty: a public client, PKCE only).
    pub client_secret_env: String,
    /// The URL people reach this gateway at (e.g.
    /// `https://mlgw.example.com`); the callback is under it. Empty: taken
    /// from the request's `Host` (`http://` on loopback, `https://`
    /// elsewhere).
    pub public_url: String,
    /// Scopes asked of the issuer.
    pub scopes: Vec<String>,
    /// The resource indicator (RFC 8707) to ask the token for, when the
    /// issuer needs one to give a token for this gateway's audience.
    pub resource: String,
    /// Longest a session lasts, seconds (the token's own expiry ends it
    /// sooner).
    pub session_max_s: u64,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            enabled: true,
            client_id: "mlgw-console".to_owned(),
            client_secret_env: String::new(),
            public_url: String::new(),
            scopes: vec!["openid".to_owned()],
            resource: String::new(),
            session_max_s: 8 * 3600,
        }
    }
}

impl ConsoleSettings {
    /// Checks the settings; `(key, message)` of the first problem.
    ///
    /// # Errors
    /// The key (relative to `[console]`) and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.enabled {
            return Ok(());
        }
        if self.client_id.trim().is_empty() {
            return Err((
                "client_id",
                "name the OIDC client registered for the console".into(),
            ));
        }
        if !self.public_url.is_empty()
            && !self.public_url.starts_with("https://")
            && !self.public_url.starts_with("http://")
        {
            return Err((
                "public_url",
                format!(
                    "{:?} is not an http(s) URL, e.g. \"https://mlgw.example.com\"",
                    self.public_url
                ),
            ));
        }
        if self.session_max_s == 0 {
            return Err(("session_max_s", "must be at least 1".into()));
        }
        if !self.client_secret_env.is_empty() && std::env::var(&self.client_secret_env).is_err() {
            return Err((
                "client_secret_env",
                format!("the variable {} is not set", self.client_secret_env),
            ));
        }
        Ok(())
    }

    /// The longest session.
    pub fn session_max(&self) -> Duration {
        Duration::from_secs(self.session_max_s)
    }
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What the console's pages may load: only this origin, no inline script,
/// never inside another site's frame.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // A new binary may bring new assets: always ask again.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// The console's routes (pages, sign-in, session), to be served beside the
/// REST API behind the same tower stack.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(index))
        .route("/console/app.js", get(app_js))
        .route("/console/app.css", get(app_css))
        .route("/console/login", get(login::start))
        .route("/console/callback", get(login::callback))
        .route("/console/session", get(login::session_info))
        .route("/console/logout", post(login::logout))
        .with_state(console)
}

/// The routes [`router`] serves, for the REST front's list of routes the
/// OpenAPI document leaves out: (method, path, why).
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/console", "the web console: a page, not an API"),
    ("GET", "/console/", "the web console: a page, not an API"),
    ("GET", "/console/app.js", "the web console's script"),
    ("GET", "/console/app.css", "the web console's style sheet"),
    (
        "GET",
        "/console/login",
        "the console's sign-in: a redirect to the SSO",
    ),
    (
        "GET",
        "/console/callback",
        "the console's sign-in: the SSO's redirect back",
    ),
    (
        "GET",
        "/console/session",
        "the console's session: who is signed in",
    ),
    ("POST", "/console/logout", "the console's sign-out"),
];

//! Signing a person in to the console: the OAuth 2.0 authorization code
//! flow with PKCE (RFC 7636) against the configured issuer's endpoints
//! (from its discovery document), then the session cookie.
//!
//! `/console/login` makes a state and a verifier, keeps them here for ten
//! minutes (keyed by the state, bounded), binds the browser to the state
//! with a short `SameSite=Lax` cookie (so nobody can finish a sign-in they
//! did not start in this browser) and redirects to the issuer.
//! `/console/callback` checks both, exchanges the code at the token
//! endpoint within the issuer fetch deadline, verifies the access token
//! exactly as a bearer token (issuer, audience, signature, lifetime) and
//! checks the policy lets the caller read the console, then sets the
//! session cookie. The token never reaches page scripts; they get the CSRF
//! value from `/console/session`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::RwLock;

use super::ConsoleSettings;
use crate::auth::dev_issuer::random_token;
use crate::auth::{AuthError, Authenticator, Authorizer, session};
use crate::metrics::Front;

/// The cookie that binds a sign-in to the browser that started it.
const LOGIN_COOKIE: &str = "mlgw_login";
/// How long a started sign-in may take.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Sign-ins in progress kept at most (the oldest go first).
const PENDING_MAX: u64 = 10_000;
/// How long the issuer's endpoints are used before they are read again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

/// Why a sign-in or a session request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// The issuer's discovery document could not be read.
    #[error("the sign-in provider's discovery document could not be read: {0}")]
    Discovery(String),
    /// The issuer refused the sign-in or the code.
    #[error("the sign-in provider refused: {error}: {description}")]
    Provider {
        /// The OAuth error code.
        error: String,
        /// The provider's description.
        description: String,
    },
    /// The token endpoint could not be reached or answered nonsense.
    #[error("the sign-in provider's token endpoint failed: {0}")]
    TokenEndpoint(String),
    /// The state is unknown, expired, used, or not this browser's.
    #[error("this sign-in is unknown, expired or was started in another browser: sign in again")]
    UnknownSignIn,
    /// The provider's token is not one this gateway accepts.
    #[error("the provider's token is not accepted here: {0}")]
    Token(#[source] AuthError),
    /// The caller may not read the console.
    #[error("signed in as '{0}', whose groups and scopes do not allow the console")]
    NotAllowed(String),
    /// The request's `Host` cannot make a callback URL.
    #[error("the Host header {0:?} cannot make the callback URL; set [console] public_url")]
    Host(String),
    /// The random generator failed.
    #[error("the system random generator failed")]
    Random,
}

impl ConsoleError {
    fn status(&self) -> StatusCode {
        match self {
            ConsoleError::Discovery(_) | ConsoleError::TokenEndpoint(_) => StatusCode::BAD_GATEWAY,
            ConsoleError::Provider { .. }
            | ConsoleError::UnknownSignIn
            | ConsoleError::Token(_)
            | ConsoleError::Host(_) => StatusCode::BAD_REQUEST,
            ConsoleError::NotAllowed(_) => StatusCode::FORBIDDEN,
            ConsoleError::Random => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A page saying what went wrong, with a way to start again.
    fn page(&self) -> Response {
        tracing::info!("console sign-in failed: {self}");
        let text = self
            .to_string()
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        (
            self.status(),
            Html(format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign-in failed</title>\
                 <link rel=\"stylesheet\" href=\"/console/app.css\"></head><body><main class=\"narrow\">\
                 <h1>Sign-in failed</h1><p id=\"error\">{text}</p>\
                 <p><a href=\"/console/login\">Sign in again</a></p></main></body></html>"
            )),
        )
            .into_response()
    }
}

/// The issuer's endpoints the console uses.
#[derive(Debug, Clone)]
struct Endpoints {
    authorization: String,
    token: String,
}

/// A sign-in in progress.
#[derive(Debug, Clone)]
struct Pending {
    verifier: String,
    redirect_uri: String,
    secure: bool,
}

/// The console's sign-in state and what it checks with.
pub struct Console {
    settings: ConsoleSettings,
    client_secret: Option<String>,
    issuer: String,
    authn: Authenticator,
    authz: Arc<Authorizer>,
    http: reqwest::Client,
    fetch_timeout: Duration,
    endpoints: RwLock<Option<(Endpoints, Instant)>>,
    pending: moka::sync::Cache<String, Pending>,
}

impl Console {
    /// The console of a gateway whose tokens come from `issuer`, checked by
    /// `authn` and `authz`; the issuer is asked within `fetch_timeout`.
    pub fn new(
        settings: ConsoleSettings,
        issuer: &str,
        authn: Authenticator,
        authz: Arc<Authorizer>,
        fetch_timeout: Duration,
    ) -> Self {
        let client_secret = (!settings.client_secret_env.is_empty())
            .then(|| std::env::var(&settings.client_secret_env).ok())
            .flatten();
        Console {
            settings,
            client_secret,
            issuer: issuer.trim_end_matches('/').to_owned(),
            authn,
            authz,
            http: reqwest::Client::builder()
                .timeout(fetch_timeout)
                // The issuer's answers are read here, never followed.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            fetch_timeout,
            endpoints: RwLock::new(None),
            pending: moka::sync::Cache::builder()
                .max_capacity(PENDING_MAX)
                .time_to_live(LOGIN_TTL)
                .build(),
        }
    }

    async fn endpoints(&self) -> Result<Endpoints, ConsoleError> {
        if let Some((e, at)) = &*self.endpoints.read().await
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(e.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let doc: serde_json::Value = async {
            self.http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|e| ConsoleError::Discovery(format!("{url}: {e}")))?;
        let field = |name: &str| {
            doc[name]
                .as_str()
                .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
                .map(str::to_owned)
                .ok_or_else(|| ConsoleError::Discovery(format!("{url}: no {name}")))
        };
        let e = Endpoints {
            authorization: field("authorization_endpoint")?,
            token: field("token_endpoint")?,
        };
        *self.endpoints.write().await = Some((e.clone(), Instant::now()));
        Ok(e)
    }

    /// `http(s)://host` this request reached, for the callback URL.
    fn base_url(&self, headers: &HeaderMap) -> Result<String, ConsoleError> {
        if !self.settings.public_url.is_empty() {
            return Ok(self.settings.public_url.trim_end_matches('/').to_owned());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let authority_chars = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
        if host.is_empty() || !host.chars().all(authority_chars) {
            return Err(ConsoleError::Host(host.to_owned()));
        }
        let name = host
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(name, _)| name);
        let loopback = matches!(name, "127.0.0.1" | "localhost" | "[::1]");
        Ok(format!(
            "{}://{host}",
            if loopback { "http" } else { "https" }
        ))
    }
}

/// The login cookie (`SameSite=Lax`: the issuer's redirect back is a
/// navigation from its site).
fn login_cookie(state: &str, max_age_s: u64, secure: bool) -> HeaderValue {
    let text = session::set_cookie_named(
        LOGIN_COOKIE,
        state,
        "/console/callback",
        max_age_s,
        "Lax",
        secure,
    );
    // Every part is base64url or fixed text.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `GET /console/login`: to the issuer's sign-in.
pub async fn start(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match start_inner(&console, &headers).await {
        Ok(r) => r,
        Err(e) => e.page(),
    }
}

async fn start_inner(console: &Console, headers: &HeaderMap) -> Result<Response, ConsoleError> {
    let endpoints = console.endpoints().await?;
    let base = console.base_url(headers)?;
    let redirect_uri = format!("{base}/console/callback");
    let secure = base.starts_with("https://");
    let state = random_token().ok_or(ConsoleError::Random)?;
    let verifier = random_token().ok_or(ConsoleError::Random)?;
    let challenge = URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
    );
    let mut params = vec![
        ("response_type", "code".to_owned()),
        ("client_id", console.settings.client_id.clone()),
        ("redirect_uri", redirect_uri.clone()),
        ("scope", console.settings.scopes.join(" ")),
        ("state", state.clone()),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256".to_owned()),
    ];
    if !console.settings.resource.is_empty() {
        params.push(("resource", console.settings.resource.clone()));
    }
    let location = reqwest::Url::parse_with_params(&endpoints.authorization, &params)
        .map_err(|e| ConsoleError::Discovery(format!("authorization_endpoint: {e}")))?;
    console.pending.insert(
        state.clone(),
        Pending {
            verifier,
            redirect_uri,
            secure,
        },
    );
    let mut response = Redirect::to(location.as_str()).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        login_cookie(&state, LOGIN_TTL.as_secs(), secure),
    );
    Ok(response)
}

/// The issuer's redirect back.
#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// `GET /console/callback`: the code for a token, the token for a session.
pub async fn callback(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| ConsoleError::Provider {
            error: "invalid_request".into(),
            description: e.body_text(),
        })?;
        finish(&console, &headers, q).await
    }
    .await;
    match result {
        Ok(r) => r,
        Err(e) => e.page(),
    }
}

async fn finish(
    console: &Console,
    headers: &HeaderMap,
    q: CallbackQuery,
) -> Result<Response, ConsoleError> {
    let state = q.state.unwrap_or_default();
    // The state is spent whatever happens next: a code is tried once.
    let pending = console
        .pending
        .remove(&state)
        .ok_or(ConsoleError::UnknownSignIn)?;
    if session::cookie(headers, LOGIN_COOKIE) != Some(state.as_str()) {
        return Err(ConsoleError::UnknownSignIn);
    }
    if let Some(error) = q.error {
        return Err(ConsoleError::Provider {
            error,
            description: q.error_description.unwrap_or_default(),
        });
    }
    let code = q.code.ok_or_else(|| ConsoleError::Provider {
        error: "invalid_request".into(),
        description: "the redirect carries no code".into(),
    })?;
    let endpoints = console.endpoints().await?;
    let mut form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code),
        ("redirect_uri", pending.redirect_uri.clone()),
        ("client_id", console.settings.client_id.clone()),
        ("code_verifier", pending.verifier.clone()),
    ];
    if !console.settings.resource.is_empty() {
        form.push(("resource", console.settings.resource.clone()));
    }
    let mut request = console.http.post(&endpoints.token).form(&form);
    if let Some(secret) = &console.client_secret {
        request = request.basic_auth(&console.settings.client_id, Some(secret));
    }
    let answer = tokio::time::timeout(console.fetch_timeout, async {
        let r = request.send().await?;
        let status = r.status();
        Ok::<_, reqwest::Error>((status, r.json::<serde_json::Value>().await?))
    })
    .await
    .map_err(|_| {
        ConsoleError::TokenEndpoint(format!(
            "no answer within {} ms",
            console.fetch_timeout.as_millis()
        ))
    })?
    .map_err(|e| ConsoleError::TokenEndpoint(format!("{}: {e}", endpoints.token)))?;
    let (status, body) = answer;
    if !status.is_success() {
        return Err(ConsoleError::Provider {
            error: body["error"].as_str().unwrap_or("token_error").to_owned(),
            description: body["error_description"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        });
    }
    let token = body["access_token"]
        .as_str()
        .ok_or_else(|| ConsoleError::TokenEndpoint("the answer has no access_token".into()))?;
    let caller = console
        .authn
        .session(Front::Rest, token)
        .await
        .map_err(ConsoleError::Token)?;
    if !console.authz.is_viewer(&caller) {
        return Err(ConsoleError::NotAllowed(caller.subject));
    }
    let lifetime = body["expires_in"]
        .as_u64()
        .map_or(console.settings.session_max_s, |s| {
            s.min(console.settings.session_max_s)
        });
    tracing::info!(caller = %caller.subject, "console: signed in");
    let mut response = Redirect::to("/console/").into_response();
    let headers = response.headers_mut();
    let session_cookie =
        HeaderValue::from_str(&session::set_cookie(token, lifetime, pending.secure)).map_err(
            |_| ConsoleError::TokenEndpoint("the access token is not cookie text".into()),
        )?;
    headers.append(header::SET_COOKIE, session_cookie);
    headers.append(header::SET_COOKIE, login_cookie("", 0, pending.secure));
    Ok(response)
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

/// `GET /console/session`: who is signed in, what they may do, and the
/// CSRF value for changes; 401 without a valid session.
pub async fn session_info(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(token) = session::token(&headers) else {
        return json_error(StatusCode::UNAUTHORIZED, "invalid_token", "not signed in");
    };
    if let Err(e) = session::check(&Method::GET, &headers, token) {
        return json_error(StatusCode::FORBIDDEN, "csrf_rejected", &e.to_string());
    }
    match console.authn.session(Front::Rest, token).await {
        Ok(caller) => {
            let mut r = Json(json!({
                "subject": caller.subject,
                "groups": caller.groups,
                "scopes": caller.scopes,
                "may_view": console.authz.is_viewer(&caller),
                "may_change": console.authz.is_admin(&caller),
                "csrf": session::csrf_value(token),
            }))
            .into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => json_error(StatusCode::UNAUTHORIZED, "invalid_token", &e.to_string()),
    }
}

/// `POST /console/logout` (with the CSRF header): the session cookie is
/// removed.
pub async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let secure = console
        .base_url(&headers)
        .is_ok_and(|b| b.starts_with("https://"));
    if let Some(token) = session::token(&headers)
        && let Err(e) = session::check(&Method::POST, &headers, token)
    {
        return json_error(StatusCode::FORBIDDEN, "csrf_rejected", &e.to_string());
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(secure)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("mlgw_loginx=a; mlgw_login=b"),
        );
        assert_eq!(session::cookie(&h, LOGIN_COOKIE), Some("b"));
        let c = login_cookie("s", 600, false);
        assert_eq!(
            c.to_str().ok(),
            Some("mlgw_login=s; Path=/console/callback; Max-Age=600; HttpOnly; SameSite=Lax")
        );
    }
}

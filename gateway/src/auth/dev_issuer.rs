//! The local dev issuer (`[auth] mode = "dev"`): an RSA-2048 key pair made at
//! start (aws-lc-rs, the backend jsonwebtoken verifies with), whose
//! discovery document and JWKS the gateway serves itself under `/dev-issuer/`
//! and then fetches over HTTP like any issuer's — the same path as
//! production, no bypass. It mints one token at start for the demo, and
//! signs the console in as the dev user through the same authorization code
//! flow with PKCE a company provider runs (a sign-in page, one-time codes,
//! a token endpoint). Refused when `server.environment = "production"`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// The path prefix the dev issuer is served under.
pub const PATH: &str = "/dev-issuer";

/// What the dev token says (from `[auth.dev]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSettings {
    /// `sub` of the dev token.
    pub subject: String,
    /// `groups` of the dev token.
    pub groups: Vec<String>,
    /// `scope` of the dev token (space-separated when minted).
    pub scopes: Vec<String>,
    /// Lifetime of the dev token.
    pub token_ttl: Duration,
}

/// Why the dev issuer cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevIssuerError {
    /// Key generation or encoding failed.
    #[error("dev issuer: cannot make a key: {0}")]
    Key(String),
    /// Signing failed.
    #[error("dev issuer: cannot sign the dev token: {0}")]
    Sign(String),
}

/// A minted token.
#[derive(Debug, Clone)]
pub struct DevToken {
    /// The JWT.
    pub token: String,
    /// Its `exp`, Unix seconds.
    pub expires_unix: u64,
    /// Its subject.
    pub subject: String,
}

/// The ephemeral issuer.
pub struct DevIssuer {
    kid: String,
    encoding: EncodingKey,
    jwks: String,
    settings: DevSettings,
    /// Authorization codes not yet exchanged (one use, one minute).
    codes: moka::sync::Cache<String, CodeGrant>,
}

/// What an authorization code was granted for.
#[derive(Debug, Clone)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
}

/// An authorization request (the query of `GET /dev-issuer/authorize`, the
/// form of its `POST`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct AuthorizeRequest {
    /// Must be `code`.
    #[serde(default)]
    pub response_type: String,
    /// The client.
    #[serde(default)]
    pub client_id: String,
    /// Where the browser goes back with the code: a console's callback.
    #[serde(default)]
    pub redirect_uri: String,
    /// The client's state, returned as is.
    #[serde(default)]
    pub state: String,
    /// PKCE: base64url SHA-256 of the client's verifier.
    #[serde(default)]
    pub code_challenge: String,
    /// Must be `S256`.
    #[serde(default)]
    pub code_challenge_method: String,
    /// Requested scopes (the dev user's are granted whatever is asked).
    #[serde(default)]
    pub scope: Option<String>,
    /// `deny` when the person declined (the form's second button).
    #[serde(default)]
    pub decision: Option<String>,
}

/// A token request (the form of `POST /dev-issuer/token`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct TokenRequest {
    /// Must be `authorization_code`.
    #[serde(default)]
    pub grant_type: String,
    /// The code.
    #[serde(default)]
    pub code: String,
    /// The same redirect URI as in the authorization request.
    #[serde(default)]
    pub redirect_uri: String,
    /// The same client.
    #[serde(default)]
    pub client_id: String,
    /// PKCE: the verifier whose hash the challenge was.
    #[serde(default)]
    pub code_verifier: String,
}

/// A refused authorization or token request, as OAuth 2.0 names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    /// The OAuth error code (`invalid_request`, `invalid_grant`, …).
    pub error: &'static str,
    /// What is wrong, for a person.
    pub description: String,
}

impl OAuthError {
    /// A malformed request (`invalid_request`).
    pub fn invalid(description: impl Into<String>) -> Self {
        oauth("invalid_request", description)
    }
}

fn oauth(error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        error,
        description: description.into(),
    }
}

/// Text safe inside HTML (element content and quoted attributes).
fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `base` with `pairs` added to its query, percent-encoded.
fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = base.to_owned();
    let mut sep = if base.contains('?') { '&' } else { '?' };
    for (k, v) in pairs {
        url.push(sep);
        url.push_str(k);
        url.push('=');
        url.push_str(&percent_encode(v));
        sep = '&';
    }
    url
}

/// RFC 3986 unreserved characters kept, everything else `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl DevIssuer {
    /// Makes a fresh RSA-2048 key pair (CPU work: call on a blocking thread).
    ///
    /// # Errors
    /// [`DevIssuerError::Key`].
    pub fn generate(settings: DevSettings) -> Result<Self, DevIssuerError> {
        let key = RsaKey::generate()?;
        let kid = format!("dev-{}", key.n.chars().rev().take(12).collect::<String>());
        let jwks = json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": key.n, "e": key.e,
        }]})
        .to_string();
        Ok(DevIssuer {
            kid,
            encoding: key.encoding,
            jwks,
            settings,
            codes: moka::sync::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        })
    }

    /// Checks an authorization request: the code flow with PKCE (S256), a
    /// state, and a redirect to a console's callback.
    ///
    /// # Errors
    /// [`OAuthError`] naming the parameter that is wrong.
    pub fn check_authorize(&self, r: &AuthorizeRequest) -> Result<(), OAuthError> {
        if r.response_type != "code" {
            return Err(oauth(
                "unsupported_response_type",
                "response_type must be 'code' (the authorization code flow)",
            ));
        }
        if r.client_id.is_empty() || r.state.is_empty() {
            return Err(oauth("invalid_request", "client_id and state are required"));
        }
        if r.code_challenge_method != "S256" || r.code_challenge.len() != 43 {
            return Err(oauth(
                "invalid_request",
                "PKCE is required: code_challenge (43 base64url characters) with code_challenge_method=S256",
            ));
        }
        let callback = r
            .redirect_uri
            .strip_prefix("http://")
            .or_else(|| r.redirect_uri.strip_prefix("https://"))
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, path)| path);
        if callback != Some("console/callback") {
            return Err(oauth(
                "invalid_request",
                "redirect_uri must be a console's callback (http(s)://HOST/console/callback)",
            ));
        }
        Ok(())
    }

    /// The sign-in page for a checked request: who the person signs in as,
    /// and a form that posts the request back with the decision.
    pub fn sign_in_page(&self, action: &str, r: &AuthorizeRequest) -> String {
        let hidden = [
            ("response_type", &r.response_type),
            ("client_id", &r.client_id),
            ("redirect_uri", &r.redirect_uri),
            ("state", &r.state),
            ("code_challenge", &r.code_challenge),
            ("code_challenge_method", &r.code_challenge_method),
        ]
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                escape_html(v)
            )
        })
        .collect::<String>();
        let scope = r.scope.as_deref().map(escape_html).unwrap_or_default();
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>mlgw dev sign-in</title><meta name=\"viewport\" content=\"width=device-width\">\
             <style>body{{font:16px system-ui,sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem}}\
             dt{{font-weight:600}}button{{font:inherit;padding:.5rem 1rem;margin-right:.5rem}}</style></head>\
             <body><main><h1>Dev sign-in</h1>\
             <p>This gateway runs its own dev issuer (<code>[auth] mode = \"dev\"</code>). \
             <b>{client}</b> asks to sign you in as the dev user:</p>\
             <dl><dt>Subject</dt><dd id=\"subject\">{sub}</dd><dt>Groups</dt><dd>{groups}</dd>\
             <dt>Scopes</dt><dd>{scopes}</dd></dl>\
             <form method=\"post\" action=\"{action}\">{hidden}\
             <input type=\"hidden\" name=\"scope\" value=\"{scope}\">\
             <button type=\"submit\" name=\"decision\" value=\"allow\" id=\"sign-in\">Sign in</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\">Cancel</button></form></main></body></html>",
            client = escape_html(&r.client_id),
            sub = escape_html(&self.settings.subject),
            groups = escape_html(&self.settings.groups.join(", ")),
            scopes = escape_html(&self.settings.scopes.join(" ")),
            action = escape_html(action),
        )
    }

    /// The person's decision on a checked request: where the browser goes
    /// (the callback with a one-time code, or with `access_denied`).
    ///
    /// # Errors
    /// [`OAuthError`] when the request does not pass [`Self::check_authorize`].
    pub fn decide(&self, r: &AuthorizeRequest) -> Result<String, OAuthError> {
        self.check_authorize(r)?;
        if r.decision.as_deref() != Some("allow") {
            return Ok(with_query(
                &r.redirect_uri,
                &[("error", "access_denied"), ("state", &r.state)],
            ));
        }
        let code = random_token()
            .ok_or_else(|| oauth("server_error", "the system random generator failed"))?;
        self.codes.insert(
            code.clone(),
            CodeGrant {
                client_id: r.client_id.clone(),
                redirect_uri: r.redirect_uri.clone(),
                code_challenge: r.code_challenge.clone(),
            },
        );
        Ok(with_query(
            &r.redirect_uri,
            &[("code", &code), ("state", &r.state)],
        ))
    }

    /// Exchanges a code for the dev user's access token (the token
    /// endpoint's JSON answer). A code works once.
    ///
    /// # Errors
    /// [`OAuthError`]: unknown or used code, another client or redirect,
    /// a verifier that does not match the challenge.
    pub fn exchange(
        &self,
        issuer: &str,
        audience: &str,
        r: &TokenRequest,
    ) -> Result<serde_json::Value, OAuthError> {
        if r.grant_type != "authorization_code" {
            return Err(oauth(
                "unsupported_grant_type",
                "grant_type must be 'authorization_code'",
            ));
        }
        let grant = self
            .codes
            .remove(&r.code)
            .ok_or_else(|| oauth("invalid_grant", "unknown, expired or already used code"))?;
        if grant.client_id != r.client_id || grant.redirect_uri != r.redirect_uri {
            return Err(oauth(
                "invalid_grant",
                "client_id or redirect_uri differ from the authorization request",
            ));
        }
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, r.code_verifier.as_bytes());
        if URL_SAFE_NO_PAD.encode(digest.as_ref()) != grant.code_challenge {
            return Err(oauth(
                "invalid_grant",
                "code_verifier does not match the code_challenge",
            ));
        }
        let token = self
            .mint(issuer, audience)
            .map_err(|e| oauth("server_error", e.to_string()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(json!({
            "access_token": token.token,
            "token_type": "Bearer",
            "expires_in": token.expires_unix.saturating_sub(now),
            "scope": self.settings.scopes.join(" "),
        }))
    }

    /// The discovery document for `issuer` (this gateway's `/dev-issuer` URL).
    pub fn discovery(issuer: &str) -> String {
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
        .to_string()
    }

    /// The public JWKS.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// Mints the dev token for `issuer` and `audience`.
    ///
    /// # Errors
    /// [`DevIssuerError::Sign`].
    pub fn mint(&self, issuer: &str, audience: &str) -> Result<DevToken, DevIssuerError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.mint_at(issuer, audience, now)
    }

    /// [`Self::mint`] as if issued at `now` (Unix seconds).
    pub(crate) fn mint_at(
        &self,
        issuer: &str,
        audience: &str,
        now: u64,
    ) -> Result<DevToken, DevIssuerError> {
        let exp = now + self.settings.token_ttl.as_secs();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let claims = json!({
            "iss": issuer, "aud": audience, "sub": self.settings.subject,
            "iat": now, "exp": exp,
            "groups": self.settings.groups, "scope": self.settings.scopes.join(" "),
        });
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| DevIssuerError::Sign(e.to_string()))?;
        Ok(DevToken {
            token,
            expires_unix: exp,
            subject: self.settings.subject.clone(),
        })
    }
}

/// A fresh RSA-2048 key pair to sign tokens with, and its public parts.
pub struct RsaKey {
    /// The private key, as jsonwebtoken signs with it.
    pub encoding: EncodingKey,
    /// The modulus, base64url (the JWK's `n`).
    pub n: String,
    /// The public exponent, base64url (the JWK's `e`).
    pub e: String,
    /// The public key as X.509 SubjectPublicKeyInfo DER.
    pub public_der: Vec<u8>,
}

impl RsaKey {
    /// Generates the pair with aws-lc-rs (CPU work: tens of milliseconds).
    ///
    /// # Errors
    /// [`DevIssuerError::Key`].
    pub fn generate() -> Result<Self, DevIssuerError> {
        let key_err = |what: &str| DevIssuerError::Key(what.to_owned());
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| key_err("RSA-2048 generation failed"))?;
        let pkcs8 = pair
            .as_der()
            .map_err(|_| key_err("cannot encode the private key"))?;
        // jsonwebtoken signs RSA with PKCS#1 DER; its PEM reader takes the
        // PKCS#8 that aws-lc-rs exports and unwraps it.
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(pkcs8.as_ref())
        );
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| DevIssuerError::Key(format!("cannot load the private key: {e}")))?;
        let public = pair.public_key();
        let public_der = public
            .as_der()
            .map_err(|_| key_err("cannot encode the public key"))?
            .as_ref()
            .to_vec();
        Ok(RsaKey {
            encoding,
            n: URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            e: URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            public_der,
        })
    }
}

/// 256 random bits, base64url: codes, states, verifiers (None when the
/// system's random generator fails: never answer with a guessable value).
pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// `2026-11-25T15:04:05Z` for Unix seconds (UTC), for the start-up line.
pub fn utc_timestamp(unix: u64) -> String {
    feature_store::clock::utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> DevIssuer {
        DevIssuer::generate(DevSettings {
            subject: "dev-user".into(),
            groups: vec!["mlgw-admins".into()],
            scopes: vec!["admin".into()],
            token_ttl: Duration::from_secs(600),
        })
        .expect("key")
    }

    fn request(verifier: &str) -> AuthorizeRequest {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
        AuthorizeRequest {
            response_type: "code".into(),
            client_id: "mlgw-console".into(),
            redirect_uri: "http://127.0.0.1:8080/console/callback".into(),
            state: "s t&".into(),
            code_challenge: URL_SAFE_NO_PAD.encode(digest.as_ref()),
            code_challenge_method: "S256".into(),
            scope: Some("openid admin".into()),
            decision: Some("allow".into()),
        }
    }

    fn code_of(location: &str) -> String {
        let (_, q) = location.split_once('?').expect("query");
        assert!(q.ends_with("&state=s%20t%26"), "{q}");
        q.trim_start_matches("code=")
            .split('&')
            .next()
            .expect("code")
            .to_owned()
    }

    #[test]
    fn a_code_is_exchanged_once_with_its_verifier() {
        let dev = issuer();
        let verifier = "v".repeat(43);
        let code = code_of(&dev.decide(&request(&verifier)).expect("decide"));
        let token = |code: &str, verifier: &str| {
            dev.exchange(
                "http://i",
                "mlgw-gateway",
                &TokenRequest {
                    grant_type: "authorization_code".into(),
                    code: code.into(),
                    redirect_uri: "http://127.0.0.1:8080/console/callback".into(),
                    client_id: "mlgw-console".into(),
                    code_verifier: verifier.into(),
                },
            )
        };
        // A wrong verifier spends the code: an intercepted code is worth one try.
        let wrong = token(&code, "w").expect_err("wrong verifier");
        assert_eq!(wrong.error, "invalid_grant");
        let code = code_of(&dev.decide(&request(&verifier)).expect("decide"));
        let answer = token(&code, &verifier).expect("token");
        assert_eq!(answer["token_type"], "Bearer");
        assert!(
            answer["access_token"]
                .as_str()
                .is_some_and(|t| t.split('.').count() == 3)
        );
        assert_eq!(
            token(&code, &verifier).expect_err("reuse").error,
            "invalid_grant"
        );
    }

    #[test]
    fn requests_without_pkce_or_to_other_places_are_refused() {
        let dev = issuer();
        let mut r = request("x");
        r.code_challenge_method = "plain".into();
        assert_eq!(
            dev.check_authorize(&r).expect_err("plain").error,
            "invalid_request"
        );
        let mut r = request("x");
        r.redirect_uri = "http://evil.example/steal".into();
        assert!(dev.decide(&r).is_err());
        let mut r = request("x");
        r.decision = Some("deny".into());
        let back = dev.decide(&r).expect("deny");
        assert!(back.contains("error=access_denied"), "{back}");
        let page = dev.sign_in_page("/dev-issuer/authorize", &request("<x>"));
        assert!(
            page.contains("s t&amp;") && !page.contains("\"s t&\""),
            "{page}"
        );
    }

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(1_764_083_045), "2025-11-25T15:04:05Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
    }
}

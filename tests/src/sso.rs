//! SSO test support: tokens from the rig's oidc-provider (client
//! credentials), a provider instance of a test's own (for key rotation and
//! outages), and forged tokens signed with keys the test makes, published by
//! a tiny issuer (discovery + JWKS) served from the test itself.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use crate::workspace_root;

/// An access token for `client_id` (secret `<client_id>-secret`) from the
/// oidc-provider at `issuer`, by the client-credentials grant.
///
/// # Errors
/// When the provider refuses or cannot be reached.
pub async fn client_credentials(
    issuer: &str,
    client_id: &str,
    scope: Option<&str>,
) -> Result<String> {
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    let r = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .basic_auth(client_id, Some(format!("{client_id}-secret")))
        .form(&form)
        .send()
        .await
        .with_context(|| format!("POST {issuer}/token"))?;
    let status = r.status();
    let body: Value = r.json().await?;
    if !status.is_success() {
        bail!("token for {client_id}: HTTP {status}: {body}");
    }
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no access_token in {body}"))
}

/// The `kid` in a token's header.
pub fn kid_of(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["kid"].as_str().map(str::to_owned)
}

/// An oidc-provider of a test's own (its own `RIG_DIR`), stopped when dropped.
pub struct OidcProvider {
    rig_dir: PathBuf,
    /// Its issuer URL.
    pub issuer: String,
}

impl OidcProvider {
    fn script() -> PathBuf {
        workspace_root().join("tests/rig/oidc.sh")
    }

    async fn run(&self, cmd: &str) -> Result<()> {
        let out = tokio::process::Command::new(Self::script())
            .arg(cmd)
            .env("RIG_DIR", &self.rig_dir)
            .env_remove("OIDC_PORT")
            .env_remove("OIDC_JWKS_FILE")
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "oidc.sh {cmd} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts one on a free port.
    ///
    /// # Errors
    /// When it does not start (the script's log tail is in the error).
    pub async fn start(tag: &str) -> Result<Self> {
        let rig_dir = std::env::temp_dir().join(format!("mlgw-oidc-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&rig_dir)?;
        let mut me = OidcProvider {
            rig_dir,
            issuer: String::new(),
        };
        me.run("start").await?;
        me.issuer = me.env("MLGW_TEST_OIDC_ISSUER")?;
        Ok(me)
    }

    fn env(&self, key: &str) -> Result<String> {
        let text = std::fs::read_to_string(self.rig_dir.join("oidc.env"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .with_context(|| format!("no {key} in oidc.env"))
    }

    /// Restarts it on the same port with a new signing key first and the
    /// current keys still published.
    ///
    /// # Errors
    /// When the script fails.
    pub async fn rotate(&self) -> Result<()> {
        self.run("rotate").await
    }

    /// Restarts it publishing only the newest key.
    ///
    /// # Errors
    /// When the script fails.
    pub async fn retire(&self) -> Result<()> {
        self.run("retire").await
    }

    /// Stops it (the issuer's port goes silent).
    ///
    /// # Errors
    /// When the script fails.
    pub async fn stop(&self) -> Result<()> {
        self.run("stop").await
    }

    /// Starts it again after [`Self::stop`], on the same port and keys.
    ///
    /// # Errors
    /// When the script fails.
    pub async fn start_again(&self) -> Result<()> {
        // `retire` restarts on the recorded port; with one key it changes nothing,
        // but stop removed the env file, so start with the port explicitly.
        let port = self
            .issuer
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        let keys = self.rig_dir.join("oidc-keys.json");
        let out = tokio::process::Command::new(Self::script())
            .arg("start")
            .env("RIG_DIR", &self.rig_dir)
            .env("OIDC_PORT", port)
            .env("OIDC_JWKS_FILE", keys)
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "oidc.sh start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::script())
            .arg("stop")
            .env("RIG_DIR", &self.rig_dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.rig_dir);
    }
}

/// An RSA-2048 key pair the test signs with.
pub struct TestKey {
    /// Its kid.
    pub kid: String,
    encoding: EncodingKey,
    n: String,
    e: String,
    /// The public key as X.509 SubjectPublicKeyInfo DER (for the "HMAC keyed
    /// with the public key" confusion attack).
    pub public_der: Vec<u8>,
}

impl TestKey {
    /// A fresh key named `kid`.
    ///
    /// # Errors
    /// When key generation fails.
    pub fn generate(kid: &str) -> Result<Self> {
        let key = gateway::auth::dev_issuer::RsaKey::generate()?;
        Ok(TestKey {
            kid: kid.to_owned(),
            encoding: key.encoding,
            n: key.n,
            e: key.e,
            public_der: key.public_der,
        })
    }

    /// The public JWK.
    pub fn jwk(&self) -> Value {
        json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "n": self.n, "e": self.e})
    }

    /// A JWS over exactly these header and claims texts, signed RS256.
    ///
    /// # Errors
    /// When signing fails.
    pub fn sign_raw(&self, header: &str, claims: &str) -> Result<String> {
        sign_raw(header, claims, &self.encoding, Algorithm::RS256)
    }

    /// A JWS over exactly these texts, signed with `alg` (an RSA algorithm).
    ///
    /// # Errors
    /// When signing fails.
    pub fn sign_raw_with(&self, header: &str, claims: &str, alg: Algorithm) -> Result<String> {
        sign_raw(header, claims, &self.encoding, alg)
    }

    /// A token with header `{"alg":"RS256","typ":"JWT","kid":<kid>}` and `claims`.
    ///
    /// # Errors
    /// When signing fails.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}).to_string();
        self.sign_raw(&header, &claims.to_string())
    }
}

/// A JWS over exactly these texts with `key` and `alg`.
///
/// # Errors
/// When signing fails.
pub fn sign_raw(header: &str, claims: &str, key: &EncodingKey, alg: Algorithm) -> Result<String> {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg)?;
    Ok(format!("{message}.{signature}"))
}

/// A tiny issuer served from the test: discovery + a JWKS the test sets.
pub struct TestIssuer {
    /// The issuer URL (`http://127.0.0.1:PORT`).
    pub issuer: String,
    jwks: Arc<RwLock<String>>,
    jwks_fetches: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    /// Serves `keys` (public JWKs).
    ///
    /// # Errors
    /// When it cannot listen.
    pub async fn start(keys: &[Value]) -> Result<Self> {
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let issuer = format!("http://{}", listener.local_addr()?);
        let jwks = Arc::new(RwLock::new(json!({ "keys": keys }).to_string()));
        let jwks_fetches = Arc::new(AtomicU64::new(0));
        let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}).to_string();
        let (j, f) = (Arc::clone(&jwks), Arc::clone(&jwks_fetches));
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || {
                    let d = discovery.clone();
                    async move { d }
                }),
            )
            .route(
                "/jwks",
                get(move || {
                    let (j, f) = (Arc::clone(&j), Arc::clone(&f));
                    async move {
                        f.fetch_add(1, Ordering::SeqCst);
                        j.read().map(|s| s.clone()).unwrap_or_default()
                    }
                }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(TestIssuer {
            issuer,
            jwks,
            jwks_fetches,
            task,
        })
    }

    /// Publishes `keys` from now on.
    pub fn set_keys(&self, keys: &[Value]) {
        if let Ok(mut j) = self.jwks.write() {
            *j = json!({ "keys": keys }).to_string();
        }
    }

    /// How often the JWKS was fetched.
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `[auth]` for a real OIDC issuer at `issuer` with the rig's clients in
/// mind: predict for group `fraud-team` with scope `predict`, push for scope
/// `push`, feedback for scope `feedback`; `extra` appended (pilots, …).
pub fn oidc_auth(issuer: &str, extra: &str) -> String {
    format!(
        r#"
[auth]
mode = "oidc"
issuer = "{issuer}"
audience = "mlgw-gateway"
jwks_min_refetch_s = 1
[[auth.allow]]
api = "predict"
groups = ["fraud-team"]
scopes = ["predict"]
[[auth.allow]]
api = "push"
scopes = ["push"]
[[auth.allow]]
api = "feedback"
scopes = ["feedback"]
{extra}"#
    )
}

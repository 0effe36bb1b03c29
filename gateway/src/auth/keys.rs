//! The issuer's signing keys: discovery (`{issuer}/.well-known/openid-configuration`
//! → `jwks_uri`) and the JWKS, fetched with a deadline, filtered to signing
//! keys of an allowed type and size, cached; refreshed periodically and, at most
//! once per `min_refetch`, when a token names an unknown `kid`. A failed fetch
//! keeps the cached keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Deserialize;

/// Largest discovery document or JWKS read (a provider is not a firehose).
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;

/// Why the keys could not be fetched (the cached ones stay in use).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The request failed or timed out.
    #[error("GET {url}: {detail}")]
    Transport {
        /// The URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The provider answered with an error status.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The document is larger than the gateway reads.
    #[error("GET {url}: larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge {
        /// The URL.
        url: String,
    },
    /// The discovery document is unusable.
    #[error("discovery document {url}: {detail}")]
    Discovery {
        /// The URL.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// The JWKS holds no key this gateway may verify with.
    #[error("JWKS {url}: no usable signing key ({detail})")]
    NoUsableKeys {
        /// The URL.
        url: String,
        /// Why each key was dropped.
        detail: String,
    },
}

/// One verification key from the JWKS.
#[derive(Clone)]
pub struct SigningKey {
    /// `kid`, when the JWKS gives one.
    pub kid: Option<String>,
    /// The algorithms this key may verify (its `alg`, else every allowed
    /// algorithm of its type and curve).
    pub algorithms: Vec<Algorithm>,
    /// The key.
    pub key: Arc<DecodingKey>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// A JWKS entry as published (RFC 7517); unknown members ignored.
#[derive(Debug, Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parses an algorithm name as it appears in a JWS header or a JWK.
pub fn algorithm_named(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

/// Whether `alg` is an asymmetric signature algorithm the gateway can pin.
pub fn is_asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The algorithms a key of this type and curve can verify.
fn fits(alg: Algorithm, kty: &str, crv: Option<&str>) -> bool {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => kty == "RSA",
        Algorithm::ES256 => kty == "EC" && crv == Some("P-256"),
        Algorithm::ES384 => kty == "EC" && crv == Some("P-384"),
        Algorithm::EdDSA => kty == "OKP" && crv == Some("Ed25519"),
        _ => false,
    }
}

fn rsa_bits(n_b64: &str) -> Option<usize> {
    let n = URL_SAFE_NO_PAD.decode(n_b64.trim_end_matches('=')).ok()?;
    let first = n.iter().position(|b| *b != 0)?;
    let n = &n[first..];
    Some(n.len() * 8 - n[0].leading_zeros() as usize)
}

/// Parses a JWKS and keeps the keys that may verify one of `allowed`:
/// signing keys (`use` absent or `sig`, `key_ops` absent or with `verify`) of
/// a fitting type and curve, RSA at least 2048 bits. Returns the keys and one
/// line per dropped key.
///
/// # Errors
/// When the document is not a JWKS at all.
pub fn parse_jwks(
    json: &[u8],
    allowed: &[Algorithm],
) -> Result<(Vec<SigningKey>, Vec<String>), String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    let mut dropped = Vec::new();
    for (i, raw) in set.keys.into_iter().enumerate() {
        let jwk: RawJwk = match serde_json::from_value(raw) {
            Ok(j) => j,
            Err(e) => {
                dropped.push(format!("keys[{i}]: malformed ({e})"));
                continue;
            }
        };
        let name = jwk
            .kid
            .clone()
            .map_or_else(|| format!("keys[{i}]"), |k| format!("kid {k:?}"));
        match usable(&jwk, allowed) {
            Ok((algorithms, key)) => keys.push(SigningKey {
                kid: jwk.kid,
                algorithms,
                key: Arc::new(key),
            }),
            Err(why) => dropped.push(format!("{name}: {why}")),
        }
    }
    Ok((keys, dropped))
}

fn usable(jwk: &RawJwk, allowed: &[Algorithm]) -> Result<(Vec<Algorithm>, DecodingKey), String> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err(format!(
            "use {:?} is not \"sig\"",
            jwk.use_.as_deref().unwrap_or_default()
        ));
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
    {
        return Err("key_ops has no \"verify\"".into());
    }
    let kty = jwk.kty.as_deref().ok_or("no kty")?;
    let crv = jwk.crv.as_deref();
    let algorithms: Vec<Algorithm> = match jwk.alg.as_deref() {
        Some(name) => {
            let alg =
                algorithm_named(name).ok_or_else(|| format!("alg {name:?} is not supported"))?;
            if !allowed.contains(&alg) {
                return Err(format!("alg {name} is not in auth.algorithms"));
            }
            if !fits(alg, kty, crv) {
                return Err(format!("alg {name} does not fit a {kty} key"));
            }
            vec![alg]
        }
        None => allowed
            .iter()
            .copied()
            .filter(|a| fits(*a, kty, crv))
            .collect(),
    };
    if algorithms.is_empty() {
        return Err(format!(
            "a {kty} key{} fits none of auth.algorithms",
            crv.map(|c| format!(" on {c}")).unwrap_or_default()
        ));
    }
    let missing = |m: &str| format!("{kty} key without {m:?}");
    let key = match kty {
        "RSA" => {
            let n = jwk.n.as_deref().ok_or_else(|| missing("n"))?;
            let e = jwk.e.as_deref().ok_or_else(|| missing("e"))?;
            let bits = rsa_bits(n).ok_or("n is not base64url")?;
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA key of {bits} bits (at least {MIN_RSA_BITS})"));
            }
            DecodingKey::from_rsa_components(n, e).map_err(|e| format!("bad RSA key: {e}"))?
        }
        "EC" => {
            let x = jwk.x.as_deref().ok_or_else(|| missing("x"))?;
            let y = jwk.y.as_deref().ok_or_else(|| missing("y"))?;
            DecodingKey::from_ec_components(x, y).map_err(|e| format!("bad EC key: {e}"))?
        }
        "OKP" => {
            let x = jwk.x.as_deref().ok_or_else(|| missing("x"))?;
            DecodingKey::from_ed_components(x).map_err(|e| format!("bad OKP key: {e}"))?
        }
        other => return Err(format!("kty {other:?} is not a signature key type")),
    };
    Ok((algorithms, key))
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The key to verify with.
    Found(Arc<DecodingKey>),
    /// No keys were ever loaded (provider down since start).
    NoKeysYet,
    /// No key with this kid (or none fitting the algorithm).
    Unknown,
    /// No kid in the token and several keys fit.
    Ambiguous,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct KeyStats {
    /// Successful fetches.
    pub fetches_ok: AtomicU64,
    /// Failed fetches.
    pub fetches_failed: AtomicU64,
    /// Keys in use.
    pub keys: AtomicU64,
    /// Unix seconds of the last successful fetch (0: never).
    pub last_ok_unix: AtomicU64,
}

/// The signing keys' state as a `prometheus-client` collector, read at
/// each scrape.
pub struct KeyFamilies(pub Arc<IssuerKeys>);

impl std::fmt::Debug for KeyFamilies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyFamilies")
    }
}

impl Collector for KeyFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let stats = &self.0.stats;
        let load = |a: &AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let gauge = |a: &AtomicU64| ConstGauge::new(i64::try_from(load(a)).unwrap_or(i64::MAX));
        gauge(&stats.keys).encode(encoder.encode_descriptor(
            "mlgw_auth_signing_keys",
            "Signing keys of the issuer in use.",
            None,
            MetricType::Gauge,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "mlgw_auth_key_fetches",
            "Discovery + JWKS fetches by result.",
            None,
            MetricType::Counter,
        )?;
        for (result, c) in [("ok", &stats.fetches_ok), ("error", &stats.fetches_failed)] {
            ConstCounter::new(load(c)).encode(family.encode_family(&[("result", result)])?)?;
        }
        gauge(&stats.last_ok_unix).encode(encoder.encode_descriptor(
            "mlgw_auth_keys_fetched_timestamp_seconds",
            "When the signing keys were last fetched (0: never).",
            None,
            MetricType::Gauge,
        )?)
    }
}

/// Where the keys come from.
enum Source {
    /// An OIDC issuer, fetched over HTTP(S).
    Issuer {
        issuer: String,
        client: reqwest::Client,
    },
    /// Given once (benches, unit tests).
    Fixed,
}

/// The issuer's keys, shared by every request.
pub struct IssuerKeys {
    source: Source,
    allowed: Vec<Algorithm>,
    current: RwLock<Option<Arc<Vec<SigningKey>>>>,
    /// Serialises fetches (single flight); holds when the last fetch
    /// *triggered by an unknown kid* started. Periodic refreshes do not
    /// count: a scheduled fetch that ran just before a rotation must not
    /// block the fetch that finds the new key.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
    /// Bumped whenever keys are installed, so verifications cached under
    /// an older key set are redone (a key that left the JWKS stops
    /// verifying at once).
    generation: AtomicU64,
    /// Counters.
    pub stats: KeyStats,
}

impl IssuerKeys {
    /// Keys of `issuer`, not fetched yet (call [`Self::refresh`] or
    /// [`Self::spawn_refresh`]). Every fetch is bounded by `fetch_timeout`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn for_issuer(
        issuer: &str,
        allowed: Vec<Algorithm>,
        fetch_timeout: Duration,
        min_refetch: Duration,
    ) -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .timeout(fetch_timeout)
            .connect_timeout(fetch_timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            // Fetches are minutes apart: a pooled connection would mostly be
            // a stale one (e.g. after the provider restarted).
            .pool_max_idle_per_host(0)
            .user_agent(concat!("mlgw-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Transport {
                url: issuer.to_owned(),
                detail: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(IssuerKeys {
            source: Source::Issuer {
                issuer: issuer.trim_end_matches('/').to_owned(),
                client,
            },
            allowed,
            current: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(None),
            min_refetch,
            generation: AtomicU64::new(0),
            stats: KeyStats::default(),
        })
    }

    /// Fixed keys from a JWKS document (never refetched).
    ///
    /// # Errors
    /// When no key is usable.
    pub fn fixed(jwks: &[u8], allowed: Vec<Algorithm>) -> Result<Self, FetchError> {
        let (keys, dropped) =
            parse_jwks(jwks, &allowed).map_err(|detail| FetchError::NoUsableKeys {
                url: "(fixed)".into(),
                detail,
            })?;
        if keys.is_empty() {
            return Err(FetchError::NoUsableKeys {
                url: "(fixed)".into(),
                detail: dropped.join("; "),
            });
        }
        let me = IssuerKeys {
            source: Source::Fixed,
            allowed,
            current: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(None),
            min_refetch: Duration::MAX,
            generation: AtomicU64::new(0),
            stats: KeyStats::default(),
        };
        me.install(keys);
        Ok(me)
    }

    fn install(&self, keys: Vec<SigningKey>) {
        self.stats.keys.store(keys.len() as u64, Ordering::Relaxed);
        if let Ok(mut cur) = self.current.write() {
            *cur = Some(Arc::new(keys));
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes whenever a key set is installed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> Option<Arc<Vec<SigningKey>>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// Whether keys have been loaded.
    pub fn loaded(&self) -> bool {
        self.snapshot().is_some()
    }

    /// The key for a token's `kid` and `alg`.
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let Some(keys) = self.snapshot() else {
            return Lookup::NoKeysYet;
        };
        let mut fitting = keys.iter().filter(|k| k.algorithms.contains(&alg));
        match kid {
            Some(kid) => fitting
                .find(|k| k.kid.as_deref() == Some(kid))
                .map_or(Lookup::Unknown, |k| Lookup::Found(Arc::clone(&k.key))),
            None => match (fitting.next(), fitting.next()) {
                (Some(k), None) => Lookup::Found(Arc::clone(&k.key)),
                (None, _) => Lookup::Unknown,
                (Some(_), Some(_)) => Lookup::Ambiguous,
            },
        }
    }

    /// After a token named an unknown kid: fetches again unless such a
    /// fetch started less than `min_refetch` ago (so a flood of bad kids costs
    /// the provider at most one extra fetch per interval, on top of the
    /// periodic refresh). Waits for a fetch already
    /// under way. Returns whether this call fetched successfully.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let mut last = self.fetching.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refetch) {
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch_and_install().await {
            Ok(n) => {
                tracing::info!(keys = n, "signing keys refetched after an unknown kid");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "refetching signing keys failed; keeping the cached keys");
                false
            }
        }
    }

    /// Fetches now (serialised with other fetches) and installs the keys.
    ///
    /// # Errors
    /// [`FetchError`]; the cached keys stay.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let _single_flight = self.fetching.lock().await;
        self.fetch_and_install().await
    }

    async fn fetch_and_install(&self) -> Result<usize, FetchError> {
        let Source::Issuer { issuer, client } = &self.source else {
            return Ok(self.snapshot().map_or(0, |k| k.len()));
        };
        let result = fetch(client, issuer, &self.allowed).await;
        match result {
            Ok(keys) => {
                let n = keys.len();
                self.install(keys);
                self.stats.fetches_ok.fetch_add(1, Ordering::Relaxed);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.stats.last_ok_unix.store(now, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                self.stats.fetches_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Spawns the refresh loop: fetch now, then every `every`; while no key
    /// has ever loaded, retry after 1 s, 2 s, … up to 30 s. Failures are
    /// logged and keep the cached keys. Abort the handle to stop it.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let wait = match me.refresh().await {
                    Ok(n) => {
                        tracing::info!(keys = n, "signing keys loaded from the issuer");
                        backoff = Duration::from_secs(1);
                        every
                    }
                    Err(e) if me.loaded() => {
                        tracing::warn!(error = %e, "refreshing signing keys failed; keeping the cached keys");
                        backoff.min(every)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, retry_in = ?backoff, "no signing keys yet: the issuer cannot be reached; tokens are refused with 503 until it can");
                        backoff
                    }
                };
                backoff = (backoff * 2).min(Duration::from_secs(30));
                tokio::time::sleep(wait).await;
            }
        })
    }
}

async fn get_limited(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, FetchError> {
    let transport = |e: reqwest::Error| FetchError::Transport {
        url: url.to_owned(),
        detail: if e.is_timeout() {
            "timed out".to_owned()
        } else {
            e.to_string()
        },
    };
    let mut resp = client.get(url).send().await.map_err(transport)?;
    if !resp.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: resp.status().as_u16(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether `url` is https, or http to this machine (tests, the dev issuer).
pub fn url_allowed(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let name = if host.starts_with('[') {
        host.split(']').next().map(|h| h.trim_start_matches('['))
    } else {
        host.split(':').next()
    };
    matches!(name, Some("127.0.0.1" | "localhost" | "::1"))
}

async fn fetch(
    client: &reqwest::Client,
    issuer: &str,
    allowed: &[Algorithm],
) -> Result<Vec<SigningKey>, FetchError> {
    #[derive(Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let url = format!("{issuer}/.well-known/openid-configuration");
    let bad = |detail: String| FetchError::Discovery {
        url: url.clone(),
        detail,
    };
    let body = get_limited(client, &url).await?;
    let doc: Discovery =
        serde_json::from_slice(&body).map_err(|e| bad(format!("not a discovery document: {e}")))?;
    // OpenID Connect Discovery §4.3: the issuer in the document must be the
    // one asked for, or another party could hand out its keys.
    if doc.issuer.trim_end_matches('/') != issuer {
        return Err(bad(format!(
            "names issuer {:?}, not the configured {issuer:?}",
            doc.issuer
        )));
    }
    if !url_allowed(&doc.jwks_uri) {
        return Err(bad(format!(
            "jwks_uri {:?} is not https (plain http only to 127.0.0.1/localhost)",
            doc.jwks_uri
        )));
    }
    let body = get_limited(client, &doc.jwks_uri).await?;
    let (keys, dropped) =
        parse_jwks(&body, allowed).map_err(|detail| FetchError::NoUsableKeys {
            url: doc.jwks_uri.clone(),
            detail,
        })?;
    for d in &dropped {
        tracing::warn!(jwks = %doc.jwks_uri, "JWKS key dropped: {d}");
    }
    if keys.is_empty() {
        return Err(FetchError::NoUsableKeys {
            url: doc.jwks_uri,
            detail: dropped.join("; "),
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_2048_N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
    const RSA_1024_N: &str = "1A7-zhnDpnQ0KrcRgb-bj-hnvMmFAHmJQDT6gBcLeGRasfXdDKMFdCoGB6DGlz3bMjk8kqXjmYS_RuKUVVG6TRdhzRp3XuLJHaqIE-8kGY6RQ_QYUnhbUQRGxqp9yt3cJIf6_sMwpc1ckaGt9a5oFPIgPkrTwYhALWC1DJtvO9k";

    fn jwks(keys: serde_json::Value) -> Vec<u8> {
        serde_json::json!({ "keys": keys }).to_string().into_bytes()
    }

    #[test]
    fn only_signing_keys_of_allowed_type_and_size_are_kept() {
        let set = jwks(serde_json::json!([
            {"kty":"RSA","kid":"good","use":"sig","alg":"RS256","n":RSA_2048_N,"e":"AQAB"},
            {"kty":"RSA","kid":"noalg","n":RSA_2048_N,"e":"AQAB"},
            {"kty":"RSA","kid":"small","n":RSA_1024_N,"e":"AQAB"},
            {"kty":"RSA","kid":"enc","use":"enc","n":RSA_2048_N,"e":"AQAB"},
            {"kty":"RSA","kid":"hs","alg":"HS256","n":RSA_2048_N,"e":"AQAB"},
            {"kty":"oct","kid":"sym","k":"c2VjcmV0"},
            {"kty":"EC","kid":"ec","crv":"P-256","x":"AAAA","y":"AAAA"},
            {"kty":"RSA","kid":"wrongalg","alg":"ES256","n":RSA_2048_N,"e":"AQAB"},
            {"kty":"RSA","kid":"ops","key_ops":["encrypt"],"n":RSA_2048_N,"e":"AQAB"},
            "not an object"
        ]));
        let (keys, dropped) = parse_jwks(&set, &[Algorithm::RS256]).unwrap_or_default();
        let kids: Vec<_> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, ["good", "noalg"]);
        let text = dropped.join("\n");
        for want in [
            "kid \"small\": RSA key of 1024 bits",
            "kid \"enc\": use \"enc\"",
            "kid \"hs\": alg HS256 is not in auth.algorithms",
            "kid \"sym\": a oct key fits none",
            "kid \"ec\": a EC key on P-256 fits none",
            "kid \"wrongalg\": alg ES256 is not in auth.algorithms",
            "kid \"ops\": key_ops has no \"verify\"",
            "keys[9]: malformed",
        ] {
            assert!(text.contains(want), "{want} not in:\n{text}");
        }
        assert!(parse_jwks(b"{\"keys\": 3}", &[Algorithm::RS256]).is_err());
    }

    #[test]
    fn lookup_by_kid_and_algorithm() {
        let set = jwks(serde_json::json!([
            {"kty":"RSA","kid":"a","alg":"RS256","n":RSA_2048_N,"e":"AQAB"},
        ]));
        let keys = IssuerKeys::fixed(&set, vec![Algorithm::RS256, Algorithm::PS256]);
        let Ok(keys) = keys else { panic!("fixed keys") };
        assert!(matches!(
            keys.lookup(Some("a"), Algorithm::RS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            keys.lookup(None, Algorithm::RS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            keys.lookup(Some("b"), Algorithm::RS256),
            Lookup::Unknown
        ));
        // The key says RS256: a PS256 token cannot use it.
        assert!(matches!(
            keys.lookup(Some("a"), Algorithm::PS256),
            Lookup::Unknown
        ));
    }

    #[test]
    fn urls_must_be_https_except_to_this_machine() {
        assert!(url_allowed("https://login.example.com/x"));
        assert!(url_allowed("http://127.0.0.1:8080/dev-issuer"));
        assert!(url_allowed("http://localhost/jwks"));
        assert!(url_allowed("http://[::1]:9/jwks"));
        assert!(!url_allowed("http://login.example.com/jwks"));
        assert!(!url_allowed("http://127.0.0.1.evil.example/jwks"));
        assert!(!url_allowed("http://evil.example@x.example/"));
        assert!(!url_allowed("file:///etc/passwd"));
    }
}

//! Token checks, cheapest first: the `Authorization: Bearer` header, size,
//! shape, the JOSE header (pinned algorithms; no key URLs, embedded keys,
//! `crit`, nested or encrypted tokens), the key by `kid`, the signature and
//! the standard claims (jsonwebtoken), then our own: `iss` a string, `iat` not
//! in the future, a bounded lifetime, groups and scopes from their claims.
//! Verdicts are remembered both ways: verified tokens by their text, and
//! refusals that cost a signature check by the token's SHA-256, so neither a
//! returning caller nor a replayed forgery pays for RSA again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use serde_json::Value;

use super::Caller;
use super::claims::{ClaimError, ClaimPath, ClaimProblem, Registered, StrictValue, TokenClaims};
use super::keys::{IssuerKeys, Lookup, algorithm_named};

/// Why a caller was not authenticated. Each has a stable `reason` label
/// (for `/metrics`) and a message that says what is wrong without echoing
/// the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no bearer token: send the header 'Authorization: Bearer <token>'")]
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`, or several.
    #[error("the Authorization header is not 'Bearer <token>'")]
    Scheme,
    /// Larger than `max_token_bytes`.
    #[error("token is larger than {0} bytes")]
    TooLarge(usize),
    /// Not three base64url parts.
    #[error("token is not a signed JWT (three base64url parts)")]
    Malformed,
    /// Five parts: an encrypted JWE, or a nested token.
    #[error("encrypted or nested tokens are not accepted")]
    Encrypted,
    /// The header is not a JSON object with a string `alg`, or repeats a member.
    #[error("token header is malformed: {0}")]
    Header(&'static str),
    /// `alg` is not one of `auth.algorithms`.
    #[error("token algorithm {0} is not accepted (allowed: {1})")]
    Algorithm(String, String),
    /// `jku`, `x5u`, `jwk` or `x5c`: keys are only taken from the issuer's JWKS.
    #[error("token header carries '{0}': keys are taken only from the issuer's JWKS")]
    KeyReference(&'static str),
    /// A `crit` header: no extension is understood.
    #[error("token header has 'crit': no critical extension is supported")]
    Critical,
    /// No key of the issuer has this kid (after a refetch).
    #[error("token is signed with a key the issuer does not publish (unknown kid)")]
    UnknownKey,
    /// No kid and several keys could fit.
    #[error("token has no kid and the issuer publishes several keys")]
    AmbiguousKey,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    Signature,
    /// `exp` passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is ahead.
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    /// `iat` is ahead.
    #[error("token is issued in the future (iat)")]
    IssuedInFuture,
    /// `exp - iat` (or `exp - now` without `iat`) exceeds the maximum.
    #[error("token lifetime exceeds the {0} s this gateway accepts")]
    Lifetime(u64),
    /// `iss` is not the configured issuer.
    #[error("token issuer is not the configured issuer")]
    Issuer,
    /// `aud` does not name this gateway.
    #[error("token audience does not include {0:?}")]
    Audience(String),
    /// A claim is missing or mistyped.
    #[error("token claims are invalid: {0}")]
    Claims(#[from] ClaimError),
    /// The claims are not a JSON object of unique members (e.g. a repeated
    /// claim).
    #[error("token claims are invalid: {0}")]
    ClaimsJson(JsonError),
    /// The issuer's keys were never loaded (provider down since start): the
    /// token cannot be judged; 503, not 401.
    #[error("the SSO issuer's signing keys are not loaded yet; retry shortly")]
    KeysUnavailable,
}

impl AuthError {
    /// The `/metrics` label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Scheme => "scheme",
            AuthError::TooLarge(_) => "too_large",
            AuthError::Malformed => "malformed",
            AuthError::Encrypted => "encrypted",
            AuthError::Header(_) => "header",
            AuthError::Algorithm(..) => "algorithm",
            AuthError::KeyReference(_) => "key_reference",
            AuthError::Critical => "crit",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::AmbiguousKey => "ambiguous_kid",
            AuthError::Signature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::Lifetime(_) => "lifetime",
            AuthError::Issuer => "issuer",
            AuthError::Audience(_) => "audience",
            AuthError::Claims(_) | AuthError::ClaimsJson(_) => "claims",
            AuthError::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// The claims' JSON error, shared by the clones of one [`AuthError`]; two
/// are equal when they say the same.
#[derive(Debug, Clone)]
pub struct JsonError(pub Arc<serde_json::Error>);

impl PartialEq for JsonError {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for JsonError {}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What the verifier checks (from `[auth]`).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifySettings {
    /// The issuer (`iss` must equal it exactly).
    pub issuer: String,
    /// This gateway's audience (`aud` must include it).
    pub audience: String,
    /// Accepted signature algorithms (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`.
    pub leeway: Duration,
    /// Longest accepted `exp - iat`.
    pub max_lifetime: Duration,
    /// Largest accepted token, checked before any decoding.
    pub max_token_bytes: usize,
    /// Where the caller's groups are.
    pub groups_claim: ClaimPath,
    /// Where the caller's scopes are.
    pub scopes_claim: ClaimPath,
    /// Verified tokens remembered (0: verify every time).
    pub cache_entries: u64,
    /// Refused tokens remembered (0: check every one again).
    pub refused_cache_entries: u64,
}

/// A token that verified: who, until when, under which key set.
#[derive(Clone)]
struct Verified {
    caller: Caller,
    exp: u64,
    generation: u64,
}

/// A token refused after its signature was checked, and under which key set.
#[derive(Clone)]
struct Refused {
    error: AuthError,
    generation: u64,
}

/// The SHA-256 of a token's text: what the refused cache is keyed by, so a
/// flood of large forged tokens holds 32 bytes each, not their text.
type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    let mut out = [0; 32];
    out.copy_from_slice(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref(),
    );
    out
}

/// Where each token's verdict came from, counted since start.
#[derive(Debug, Default)]
pub struct TokenStats {
    /// Answered by the verified-token cache.
    pub verified_hits: AtomicU64,
    /// Answered by the refused-token cache.
    pub refused_hits: AtomicU64,
    /// Checked in full (up to the signature and claims, or a cheaper refusal).
    pub checked: AtomicU64,
}

/// [`TokenStats`] as a `prometheus-client` collector, read at each scrape.
#[derive(Debug)]
pub struct TokenFamilies(pub Arc<TokenStats>);

impl Collector for TokenFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "mlgw_auth_tokens",
            "Bearer tokens judged, by where the verdict came from: the verified \
             cache, the refused cache, or a full check.",
            None,
            MetricType::Counter,
        )?;
        let s = &self.0;
        for (source, c) in [
            ("verified_cache", &s.verified_hits),
            ("refused_cache", &s.refused_hits),
            ("checked", &s.checked),
        ] {
            ConstCounter::new(c.load(Ordering::Relaxed))
                .encode(family.encode_family(&[("source", source)])?)?;
        }
        Ok(())
    }
}

/// Verifies tokens against the issuer's keys.
pub struct Verifier {
    settings: VerifySettings,
    /// Token text → its verification. Only tokens that passed every check
    /// get in; a hit still checks `exp` and that the key set is unchanged.
    cache: Option<moka::sync::Cache<String, Verified>>,
    /// Token digest → why it was refused, for refusals that cost a signature
    /// check and stay true (bad signature, expired, wrong issuer or
    /// audience, bad claims): replaying a forged token costs a hash, not an
    /// RSA operation. Its own bounded cache, so a flood of forgeries cannot
    /// evict verified callers; a hit holds only under the same key set.
    refused: Option<moka::sync::Cache<TokenDigest, Refused>>,
    stats: Arc<TokenStats>,
    /// One `Validation` per allowed algorithm (jsonwebtoken pins one family).
    validations: Vec<(Algorithm, Validation)>,
    keys: std::sync::Arc<IssuerKeys>,
    allowed_names: String,
}

/// Refusals worth remembering: reached only after the signature check (or
/// the attempt), and true of the same token until the key set changes.
/// Refusals that depend on the clock (`nbf`, `iat` ahead) or on the issuer
/// being reachable are not; the cheap ones cost less than the lookup.
fn stays_refused(error: &AuthError) -> bool {
    matches!(
        error,
        AuthError::Signature
            | AuthError::Expired
            | AuthError::Lifetime(_)
            | AuthError::Issuer
            | AuthError::Audience(_)
            | AuthError::Claims(_)
            | AuthError::ClaimsJson(_)
    )
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Verifier {
    /// A verifier for `settings` using `keys`.
    pub fn new(settings: VerifySettings, keys: std::sync::Arc<IssuerKeys>) -> Self {
        let validations = settings
            .algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.algorithms = vec![*alg];
                v.leeway = settings.leeway.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_audience(&[&settings.audience]);
                v.set_issuer(&[&settings.issuer]);
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                (*alg, v)
            })
            .collect();
        let allowed_names = settings
            .algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let cache = (settings.cache_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(settings.cache_entries)
                .time_to_live(Duration::from_secs(300))
                .build()
        });
        let refused = (settings.refused_cache_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(settings.refused_cache_entries)
                .time_to_live(Duration::from_secs(300))
                .build()
        });
        Verifier {
            settings,
            cache,
            refused,
            stats: Arc::default(),
            validations,
            keys,
            allowed_names,
        }
    }

    /// Where verdicts came from, for `/metrics`.
    pub fn stats(&self) -> Arc<TokenStats> {
        Arc::clone(&self.stats)
    }

    /// The issuer's keys.
    pub fn keys(&self) -> &std::sync::Arc<IssuerKeys> {
        &self.keys
    }

    /// The caller of a request, from its headers: exactly one
    /// `Authorization: Bearer <token>` (nothing else is read: no query
    /// parameter, no cookie).
    ///
    /// # Errors
    /// [`AuthError`] saying what is wrong.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, AuthError> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthError::Missing)?;
        if values.next().is_some() {
            return Err(AuthError::Scheme);
        }
        let value = value.to_str().map_err(|_| AuthError::Scheme)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Scheme)?;
        let token = token.trim_start_matches(' ');
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(AuthError::Scheme);
        }
        self.verify(token).await
    }

    /// Verifies one token.
    ///
    /// # Errors
    /// [`AuthError`] saying what is wrong.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        if token.len() > self.settings.max_token_bytes {
            return Err(AuthError::TooLarge(self.settings.max_token_bytes));
        }
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(token) {
                let now = now_unix();
                if hit.generation == self.keys.generation()
                    && hit.exp.saturating_add(self.settings.leeway.as_secs()) >= now
                {
                    self.stats.verified_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(hit.caller);
                }
                cache.invalidate(token);
            }
            let generation = self.keys.generation();
            let (caller, exp) = self.verify_remembering_refusals(token).await?;
            cache.insert(
                token.to_owned(),
                Verified {
                    caller: caller.clone(),
                    exp,
                    generation,
                },
            );
            return Ok(caller);
        }
        self.verify_remembering_refusals(token)
            .await
            .map(|(caller, _)| caller)
    }

    /// [`Self::verify_uncached`] behind the refused cache.
    async fn verify_remembering_refusals(&self, token: &str) -> Result<(Caller, u64), AuthError> {
        let Some(refused) = &self.refused else {
            return self.verify_uncached(token).await;
        };
        let key = digest(token);
        if let Some(hit) = refused.get(&key) {
            if hit.generation == self.keys.generation() {
                self.stats.refused_hits.fetch_add(1, Ordering::Relaxed);
                return Err(hit.error);
            }
            refused.invalidate(&key);
        }
        let generation = self.keys.generation();
        let result = self.verify_uncached(token).await;
        if let Err(error) = &result
            && stays_refused(error)
        {
            refused.insert(
                key,
                Refused {
                    error: error.clone(),
                    generation,
                },
            );
        }
        result
    }

    /// Every check, no cache; the caller and the token's `exp`.
    async fn verify_uncached(&self, token: &str) -> Result<(Caller, u64), AuthError> {
        self.stats.checked.fetch_add(1, Ordering::Relaxed);
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(AuthError::Malformed);
        }
        let parts: Vec<&str> = token.split('.').collect();
        match parts.len() {
            3 => {}
            5 => return Err(AuthError::Encrypted),
            _ => return Err(AuthError::Malformed),
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(AuthError::Malformed);
        }
        let (alg, kid) = self.check_header(parts[0])?;
        let key = match self.keys.lookup(kid.as_deref(), alg) {
            Lookup::Found(k) => k,
            Lookup::NoKeysYet => {
                // Maybe the provider is back: one rate-limited try.
                self.keys.refetch_for_unknown_kid().await;
                match self.keys.lookup(kid.as_deref(), alg) {
                    Lookup::Found(k) => k,
                    Lookup::NoKeysYet => return Err(AuthError::KeysUnavailable),
                    Lookup::Ambiguous => return Err(AuthError::AmbiguousKey),
                    Lookup::Unknown => return Err(AuthError::UnknownKey),
                }
            }
            Lookup::Ambiguous => return Err(AuthError::AmbiguousKey),
            Lookup::Unknown => {
                // Maybe the issuer rotated its keys: refetch (rate-limited).
                self.keys.refetch_for_unknown_kid().await;
                match self.keys.lookup(kid.as_deref(), alg) {
                    Lookup::Found(k) => k,
                    Lookup::Ambiguous => return Err(AuthError::AmbiguousKey),
                    _ => return Err(AuthError::UnknownKey),
                }
            }
        };
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or_else(|| AuthError::Algorithm(format!("{alg:?}"), self.allowed_names.clone()))?;
        let data = jsonwebtoken::decode::<TokenClaims>(token, &key, validation).map_err(|e| {
            match e.kind() {
                ErrorKind::InvalidSignature => AuthError::Signature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::Issuer,
                ErrorKind::InvalidAudience => AuthError::Audience(self.settings.audience.clone()),
                ErrorKind::MissingRequiredClaim(c) => {
                    ClaimError::new(c, ClaimProblem::Missing).into()
                }
                ErrorKind::InvalidClaimFormat(c) => {
                    ClaimError::new(c, ClaimProblem::NotNumber).into()
                }
                ErrorKind::Json(j) => AuthError::ClaimsJson(JsonError(Arc::clone(j))),
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                    AuthError::Algorithm(format!("{alg:?}"), self.allowed_names.clone())
                }
                ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                    AuthError::Malformed
                }
                // Key/crypto errors: the key cannot check this token.
                _ => AuthError::Signature,
            }
        })?;
        let claims = data.claims.0;
        let reg = Registered::from_claims(&claims)?;
        if reg.iss != self.settings.issuer {
            return Err(AuthError::Issuer);
        }
        if !reg.aud.contains(&self.settings.audience) {
            return Err(AuthError::Audience(self.settings.audience.clone()));
        }
        let now = now_unix();
        let leeway = self.settings.leeway.as_secs();
        // jsonwebtoken checked exp and nbf with the leeway; iat and the
        // lifetime are ours.
        if reg.iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(AuthError::IssuedInFuture);
        }
        let max = self.settings.max_lifetime.as_secs();
        let start = reg.iat.unwrap_or(now);
        if reg.exp.saturating_sub(start) > max {
            return Err(AuthError::Lifetime(max));
        }
        let groups = self.settings.groups_claim.strings(&claims)?;
        let scopes = self.settings.scopes_claim.strings(&claims)?;
        Ok((
            Caller {
                subject: reg.sub,
                groups,
                scopes,
            },
            reg.exp,
        ))
    }

    fn check_header(&self, part: &str) -> Result<(Algorithm, Option<String>), AuthError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| AuthError::Header("not base64url"))?;
        let header = serde_json::from_slice::<StrictValue>(&bytes)
            .map_err(|_| AuthError::Header("not a JSON object with unique members"))?
            .0;
        let Value::Object(h) = header else {
            return Err(AuthError::Header("not a JSON object"));
        };
        for name in ["jku", "x5u", "jwk", "x5c"] {
            if h.contains_key(name) {
                return Err(AuthError::KeyReference(match name {
                    "jku" => "jku",
                    "x5u" => "x5u",
                    "jwk" => "jwk",
                    _ => "x5c",
                }));
            }
        }
        if h.contains_key("crit") {
            return Err(AuthError::Critical);
        }
        if h.contains_key("enc") || h.contains_key("zip") || h.contains_key("cty") {
            return Err(AuthError::Encrypted);
        }
        let alg = match h.get("alg") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(AuthError::Header("no string 'alg'")),
        };
        let known = algorithm_named(alg).filter(|a| self.settings.algorithms.contains(a));
        let Some(alg) = known else {
            // Echo only a short, printable name.
            let shown = if alg.len() <= 16 && alg.bytes().all(|b| b.is_ascii_alphanumeric()) {
                alg.to_owned()
            } else {
                "(unrecognised)".to_owned()
            };
            return Err(AuthError::Algorithm(shown, self.allowed_names.clone()));
        };
        let kid = match h.get("kid") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(AuthError::Header("'kid' is not a string")),
        };
        Ok((alg, kid))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::dev_issuer::{DevIssuer, DevSettings};

    fn setup(cache_entries: u64) -> (DevIssuer, Verifier) {
        let dev = DevIssuer::generate(DevSettings {
            subject: "svc-a".into(),
            groups: vec!["g".into()],
            scopes: vec!["predict".into()],
            token_ttl: Duration::from_secs(1),
        });
        let Ok(dev) = dev else {
            panic!("key generation")
        };
        let keys = IssuerKeys::fixed(dev.jwks().as_bytes(), vec![Algorithm::RS256]);
        let Ok(keys) = keys else { panic!("fixed keys") };
        let settings = VerifySettings {
            issuer: "https://i.example".into(),
            audience: "gw".into(),
            algorithms: vec![Algorithm::RS256],
            leeway: Duration::ZERO,
            max_lifetime: Duration::from_secs(60),
            max_token_bytes: 8192,
            groups_claim: ClaimPath::new("groups").unwrap_or_else(|| panic!("path")),
            scopes_claim: ClaimPath::new("scope").unwrap_or_else(|| panic!("path")),
            cache_entries,
            refused_cache_entries: cache_entries,
        };
        (dev, Verifier::new(settings, Arc::new(keys)))
    }

    /// The same token with one character of its signature changed.
    fn forged(token: &str) -> String {
        let at = token.rfind('.').map_or(0, |dot| dot + 10);
        let swap = if token.as_bytes().get(at) == Some(&b'A') {
            "B"
        } else {
            "A"
        };
        let mut forged = token.to_owned();
        forged.replace_range(at..=at, swap);
        forged
    }

    #[tokio::test]
    async fn a_replayed_forgery_is_refused_from_memory() {
        let (dev, verifier) = setup(100);
        let token = dev
            .mint("https://i.example", "gw")
            .map(|t| t.token)
            .unwrap_or_default();
        let forged = forged(&token);
        for _ in 0..3 {
            assert_eq!(verifier.verify(&forged).await, Err(AuthError::Signature));
        }
        let stats = verifier.stats();
        assert_eq!(stats.checked.load(Ordering::Relaxed), 1);
        assert_eq!(stats.refused_hits.load(Ordering::Relaxed), 2);
        // The genuine token is not refused by its forgery's entry, and
        // remembered on its own.
        assert!(verifier.verify(&token).await.is_ok());
        assert!(verifier.verify(&token).await.is_ok());
        assert_eq!(stats.checked.load(Ordering::Relaxed), 2);
        assert_eq!(stats.verified_hits.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn refusals_that_depend_on_the_clock_are_not_remembered() {
        let (dev, verifier) = setup(100);
        let ahead = dev
            .mint_at("https://i.example", "gw", now_unix() + 3600)
            .map(|t| t.token)
            .unwrap_or_default();
        for _ in 0..2 {
            assert_eq!(
                verifier.verify(&ahead).await,
                Err(AuthError::IssuedInFuture)
            );
        }
        assert_eq!(verifier.stats().checked.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn without_a_refused_cache_every_forgery_is_checked() {
        let (dev, verifier) = setup(0);
        let token = dev
            .mint("https://i.example", "gw")
            .map(|t| t.token)
            .unwrap_or_default();
        let forged = forged(&token);
        for _ in 0..3 {
            assert_eq!(verifier.verify(&forged).await, Err(AuthError::Signature));
        }
        assert_eq!(verifier.stats().checked.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_cached_verification_still_expires() {
        for cache in [0, 100] {
            let (dev, verifier) = setup(cache);
            let token = dev
                .mint("https://i.example", "gw")
                .map(|t| t.token)
                .unwrap_or_default();
            let want = Caller {
                subject: "svc-a".into(),
                groups: vec!["g".into()],
                scopes: vec!["predict".into()],
            };
            assert_eq!(verifier.verify(&token).await, Ok(want.clone()));
            assert_eq!(verifier.verify(&token).await, Ok(want), "cache {cache}");
            // exp = iat + 1 s, no leeway: two seconds later it is refused,
            // cached or not.
            tokio::time::sleep(Duration::from_millis(2100)).await;
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::Expired),
                "cache {cache}"
            );
        }
    }

    #[tokio::test]
    async fn the_token_must_name_this_issuer_and_audience() {
        let (dev, verifier) = setup(100);
        let other_iss = dev
            .mint("https://other.example", "gw")
            .map(|t| t.token)
            .unwrap_or_default();
        assert_eq!(verifier.verify(&other_iss).await, Err(AuthError::Issuer));
        let other_aud = dev
            .mint("https://i.example", "not-gw")
            .map(|t| t.token)
            .unwrap_or_default();
        assert_eq!(
            verifier.verify(&other_aud).await,
            Err(AuthError::Audience("gw".into()))
        );
    }
}

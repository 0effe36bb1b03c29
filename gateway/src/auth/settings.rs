//! The `[auth]` settings as the config file writes them ([`RawAuth`]) and
//! their validation into [`AuthSettings`]: algorithms, claim paths, the
//! issuer mode, access rules and pilots, each error naming its key.

use std::time::Duration;

use serde::Deserialize;

use super::claims::ClaimPath;
use super::dev_issuer::DevSettings;
use super::keys::{algorithm_named, is_asymmetric, url_allowed};
use super::policy::{Api, Pilot, Rule};
use super::{AuthMode, AuthSettings};

/// `[auth]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    mode: String,
    issuer: Option<String>,
    audience: String,
    #[serde(default = "default_algorithms")]
    algorithms: Vec<String>,
    #[serde(default = "default_leeway_s")]
    leeway_s: u64,
    #[serde(default = "default_max_lifetime_s")]
    max_token_lifetime_s: u64,
    #[serde(default = "default_max_token_bytes")]
    max_token_bytes: usize,
    #[serde(default = "default_jwks_refresh_s")]
    jwks_refresh_s: u64,
    #[serde(default = "default_jwks_min_refetch_s")]
    jwks_min_refetch_s: u64,
    #[serde(default = "default_fetch_timeout_ms")]
    fetch_timeout_ms: u64,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default = "default_scopes_claim")]
    scopes_claim: String,
    #[serde(default = "default_token_cache_entries")]
    token_cache_entries: u64,
    #[serde(default = "default_token_cache_entries")]
    refused_cache_entries: u64,
    dev: Option<RawDev>,
    #[serde(default)]
    allow: Vec<RawAllow>,
    #[serde(default)]
    pilot: Vec<RawPilot>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDev {
    #[serde(default = "default_dev_subject")]
    subject: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default = "default_dev_scopes")]
    scopes: Vec<String>,
    #[serde(default = "default_dev_ttl_s")]
    token_ttl_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    api: String,
    models: Option<Vec<String>>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPilot {
    model: String,
    version: Option<String>,
    groups: Vec<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned()]
}
fn default_leeway_s() -> u64 {
    30
}
fn default_max_lifetime_s() -> u64 {
    86_400
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_jwks_refresh_s() -> u64 {
    300
}
fn default_jwks_min_refetch_s() -> u64 {
    10
}
fn default_fetch_timeout_ms() -> u64 {
    2000
}
fn default_groups_claim() -> String {
    "groups".to_owned()
}
fn default_scopes_claim() -> String {
    "scope".to_owned()
}
fn default_token_cache_entries() -> u64 {
    10_000
}
fn default_dev_subject() -> String {
    "dev-user".to_owned()
}
fn default_dev_scopes() -> Vec<String> {
    ["predict", "push", "feedback", "admin"]
        .map(str::to_owned)
        .to_vec()
}
fn default_dev_ttl_s() -> u64 {
    12 * 3600
}

/// Validates `[auth]` for a gateway serving `models` (`production`
/// refuses the dev issuer).
///
/// # Errors
/// The key path (`auth.…`) and what is wrong there.
pub(crate) fn validate(
    a: RawAuth,
    production: bool,
    models: &[&str],
) -> Result<AuthSettings, (String, String)> {
    let e = |k: &str, m: String| (k.to_owned(), m);
    let mut algorithms = Vec::with_capacity(a.algorithms.len());
    for (i, name) in a.algorithms.iter().enumerate() {
        let alg = algorithm_named(name)
            .filter(|alg| is_asymmetric(*alg))
            .ok_or_else(|| {
                e(
                    &format!("auth.algorithms[{i}]"),
                    format!("{name:?} is not accepted; use asymmetric ones: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"),
                )
            })?;
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    if algorithms.is_empty() {
        return Err(e("auth.algorithms", "name at least one algorithm".into()));
    }
    let mode = match a.mode.as_str() {
        "oidc" => {
            if a.dev.is_some() {
                return Err(e("auth.dev", "only with mode = \"dev\"".into()));
            }
            let issuer = a.issuer.clone().ok_or_else(|| {
                e(
                    "auth.issuer",
                    "missing: the OIDC issuer URL (the tokens' iss)".into(),
                )
            })?;
            if !url_allowed(&issuer) {
                return Err(e(
                    "auth.issuer",
                    format!(
                        "{issuer:?} is not an https URL (plain http only to 127.0.0.1/localhost)"
                    ),
                ));
            }
            AuthMode::Oidc { issuer }
        }
        "dev" => {
            if production {
                return Err(e(
                    "auth.mode",
                    "the dev issuer is refused when server.environment = \"production\" (the default); use mode = \"oidc\" with your SSO issuer, or set environment = \"development\" on a laptop".into(),
                ));
            }
            if a.issuer.is_some() {
                return Err(e(
                    "auth.issuer",
                    "not used with mode = \"dev\" (the gateway is the issuer)".into(),
                ));
            }
            if !algorithms.contains(&jsonwebtoken::Algorithm::RS256) {
                return Err(e(
                    "auth.algorithms",
                    "mode = \"dev\" signs with RS256; include it".into(),
                ));
            }
            let d = a.dev.unwrap_or(RawDev {
                subject: default_dev_subject(),
                groups: Vec::new(),
                scopes: default_dev_scopes(),
                token_ttl_s: default_dev_ttl_s(),
            });
            if d.subject.is_empty() {
                return Err(e("auth.dev.subject", "must not be empty".into()));
            }
            if d.token_ttl_s == 0 || d.token_ttl_s > a.max_token_lifetime_s {
                return Err(e(
                    "auth.dev.token_ttl_s",
                    format!(
                        "must be 1..={} (auth.max_token_lifetime_s)",
                        a.max_token_lifetime_s
                    ),
                ));
            }
            AuthMode::Dev(DevSettings {
                subject: d.subject,
                groups: d.groups,
                scopes: d.scopes,
                token_ttl: Duration::from_secs(d.token_ttl_s),
            })
        }
        other => {
            return Err(e(
                "auth.mode",
                format!(
                    "{other:?}: write \"oidc\" (a real SSO issuer) or \"dev\" (the local dev issuer)"
                ),
            ));
        }
    };
    if a.audience.is_empty() {
        return Err(e("auth.audience", "must not be empty".into()));
    }
    if a.max_token_lifetime_s == 0 {
        return Err(e("auth.max_token_lifetime_s", "must be at least 1".into()));
    }
    if !(256..=65_536).contains(&a.max_token_bytes) {
        return Err(e("auth.max_token_bytes", "must be 256..=65536".into()));
    }
    if a.leeway_s > 300 {
        return Err(e(
            "auth.leeway_s",
            "at most 300 (clock skew, not a grace period)".into(),
        ));
    }
    if a.jwks_refresh_s == 0 {
        return Err(e("auth.jwks_refresh_s", "must be at least 1".into()));
    }
    if a.jwks_min_refetch_s == 0 {
        return Err(e(
            "auth.jwks_min_refetch_s",
            "must be at least 1 (it protects the provider from floods of unknown kids)".into(),
        ));
    }
    if a.fetch_timeout_ms == 0 {
        return Err(e("auth.fetch_timeout_ms", "must be at least 1".into()));
    }
    let groups_claim = ClaimPath::new(&a.groups_claim).ok_or_else(|| {
        e(
            "auth.groups_claim",
            format!("{:?} is not a claim name or dotted path", a.groups_claim),
        )
    })?;
    let scopes_claim = ClaimPath::new(&a.scopes_claim).ok_or_else(|| {
        e(
            "auth.scopes_claim",
            format!("{:?} is not a claim name or dotted path", a.scopes_claim),
        )
    })?;
    let known = |m: &str| models.contains(&m);
    let mut rules = Vec::with_capacity(a.allow.len());
    for (i, r) in a.allow.into_iter().enumerate() {
        let key = |k: &str| format!("auth.allow[{i}].{k}");
        let api = Api::named(&r.api).ok_or_else(|| {
            e(
                &key("api"),
                format!(
                    "{:?}: write predict, push, feedback, similar or admin",
                    r.api
                ),
            )
        })?;
        if let Some(ms) = &r.models {
            if api != Api::Predict {
                return Err(e(&key("models"), "only for api = \"predict\"".into()));
            }
            if let Some(m) = ms.iter().find(|m| !known(m)) {
                return Err(e(
                    &key("models"),
                    format!("{m:?} is not a configured [[model]]"),
                ));
            }
        }
        if r.groups.is_empty() && r.scopes.is_empty() {
            return Err(e(
                &format!("auth.allow[{i}]"),
                "name groups, scopes or both (a rule must say who)".into(),
            ));
        }
        rules.push(Rule {
            api,
            models: r.models,
            groups: r.groups,
            scopes: r.scopes,
        });
    }
    let mut pilots = Vec::with_capacity(a.pilot.len());
    for (i, p) in a.pilot.into_iter().enumerate() {
        let key = |k: &str| format!("auth.pilot[{i}].{k}");
        let Some(model) = models.iter().find(|m| **m == p.model) else {
            return Err(e(
                &key("model"),
                format!("{:?} is not a configured [[model]]", p.model),
            ));
        };
        if p.groups.is_empty() {
            return Err(e(&key("groups"), "name the pilot groups".into()));
        }
        if p.version.is_some() {
            return Err(e(
                &key("version"),
                format!(
                    "moved: a pilot version is part of the model's routing; write [[model.routing.pilot]] version = ... groups = [...] under model {:?} (it can then change at run time); [[auth.pilot]] without a version keeps the whole model to its groups",
                    model
                ),
            ));
        }
        pilots.push(Pilot {
            model: p.model,
            groups: p.groups,
        });
    }
    Ok(AuthSettings {
        mode,
        audience: a.audience,
        algorithms,
        leeway: Duration::from_secs(a.leeway_s),
        max_lifetime: Duration::from_secs(a.max_token_lifetime_s),
        max_token_bytes: a.max_token_bytes,
        jwks_refresh: Duration::from_secs(a.jwks_refresh_s),
        jwks_min_refetch: Duration::from_secs(a.jwks_min_refetch_s),
        fetch_timeout: Duration::from_millis(a.fetch_timeout_ms),
        groups_claim,
        scopes_claim,
        token_cache_entries: a.token_cache_entries,
        refused_cache_entries: a.refused_cache_entries,
        rules,
        pilots,
    })
}

//! Token verification cost per request with the issuer's key cached: the
//! gateway's `Verifier` on an RS256 access token shaped like the
//! oidc-provider's (kid, iss, aud, sub, iat, exp, scope, groups), through the
//! whole check (header, size, shape, JOSE header, key lookup, signature,
//! claims, groups/scopes) — the work the auth layer adds to each request.
//! Also the cost of refusing cheap-to-spot and expensive-to-spot bad tokens,
//! of a forged token replayed (the refused-token cache), and of many callers
//! each bringing their own token (each seen once, as after a deploy).
//!
//! Run: `cargo bench -p benches --bench auth`
//! Results are printed and written to benches/results/auth.md.
//! Knobs: MLGW_BENCH_ITERATIONS (per case, default 20000),
//! MLGW_BENCH_DISTINCT_TOKENS (the many-callers case, default 5000).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use benches::report::{commit, markdown_table};
use gateway::auth::claims::ClaimPath;
use gateway::auth::keys::IssuerKeys;
use gateway::auth::{Verifier, VerifySettings};
use hdrhistogram::Histogram;
use jsonwebtoken::Algorithm;
use rig::sso::TestKey;
use rig::workspace_root;
use serde_json::json;

struct Row {
    case: &'static str,
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
    per_sec: f64,
}

async fn measure(
    verifier: &Verifier,
    case: &'static str,
    headers: &http::HeaderMap,
    want_ok: bool,
    iterations: u64,
) -> Result<Row> {
    // Warm up (and check the case does what it says).
    for _ in 0..200 {
        let ok = verifier.authenticate(headers).await.is_ok();
        anyhow::ensure!(ok == want_ok, "{case}: expected ok={want_ok}");
    }
    measure_each(
        verifier,
        case,
        std::iter::repeat_n(headers, iterations as usize),
        want_ok,
    )
    .await
}

/// Times one call per header set, in order (no warm-up: each may be new).
async fn measure_each<'a>(
    verifier: &Verifier,
    case: &'static str,
    headers: impl Iterator<Item = &'a http::HeaderMap>,
    want_ok: bool,
) -> Result<Row> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let started = Instant::now();
    let mut calls = 0u64;
    for h in headers {
        let t = Instant::now();
        let r = verifier.authenticate(h).await;
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        anyhow::ensure!(
            r.is_ok() == want_ok,
            "{case}: expected ok={want_ok}, got {r:?}"
        );
        hist.record(ns.max(1))?;
        calls += 1;
    }
    let total = started.elapsed();
    Ok(Row {
        case,
        mean_us: hist.mean() / 1e3,
        p50_us: hist.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1e3,
        per_sec: calls as f64 / total.as_secs_f64(),
    })
}

fn bearer(token: &str) -> Result<http::HeaderMap> {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    Ok(h)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let iterations: u64 = std::env::var("MLGW_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let distinct: u64 = std::env::var("MLGW_BENCH_DISTINCT_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let key = TestKey::generate("rs256-bench")?;
    let other = TestKey::generate("rs256-bench")?;
    let issuer = "https://sso.example.com/oauth2/default";
    let jwks = json!({"keys": [key.jwk()]}).to_string();
    let keys = Arc::new(IssuerKeys::fixed(jwks.as_bytes(), vec![Algorithm::RS256])?);
    let settings = VerifySettings {
        issuer: issuer.into(),
        audience: "mlgw-gateway".into(),
        algorithms: vec![Algorithm::RS256],
        leeway: Duration::from_secs(30),
        max_lifetime: Duration::from_secs(86_400),
        max_token_bytes: 8192,
        groups_claim: ClaimPath::new("groups").context("path")?,
        scopes_claim: ClaimPath::new("scope").context("path")?,
        cache_entries: 0,
        refused_cache_entries: 0,
    };
    // Every check on every call (a token seen for the first time) …
    let verifier = Verifier::new(settings.clone(), Arc::clone(&keys));
    // … and as the gateway runs: verified and refused tokens remembered
    // (the shipped defaults).
    let cached = Verifier::new(
        VerifySettings {
            cache_entries: 10_000,
            refused_cache_entries: 10_000,
            ..settings
        },
        keys,
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = json!({"iss": issuer, "aud": "mlgw-gateway", "sub": "mlgw-service",
        "client_id": "mlgw-service", "jti": "dAPkvxyN9qQfSjcgYPnYp7_3kbrXF9WGyeD1wUtIXqr",
        "iat": now, "exp": now + 600, "scope": "predict feedback", "groups": ["fraud-team"]});
    let good = key.sign(&claims)?;
    let forged = other.sign(&claims)?;
    let mut expired_claims = claims.clone();
    expired_claims["exp"] = json!(now - 3600);
    expired_claims["iat"] = json!(now - 4000);
    let expired = key.sign(&expired_claims)?;
    // Many callers, one token each, every one new to the gateway.
    let mut many = Vec::new();
    for i in 0..distinct {
        let mut c = claims.clone();
        c["sub"] = json!(format!("user-{i}"));
        c["jti"] = json!(format!("jti-{i}"));
        many.push(bearer(&key.sign(&c)?)?);
    }

    // (verifier, case, headers, accepted), measured in this order.
    let cases = [
        (
            &cached,
            "valid RS256 token, seen before (cache hit, as served)",
            bearer(&good)?,
            true,
        ),
        (
            &verifier,
            "valid RS256 token, first sight (full verification)",
            bearer(&good)?,
            true,
        ),
        (
            &verifier,
            "bad signature, same kid (refused)",
            bearer(&forged)?,
            false,
        ),
        (
            &cached,
            "bad signature, replayed (refused cache hit, as served)",
            bearer(&forged)?,
            false,
        ),
        (
            &verifier,
            "expired (refused after the signature)",
            bearer(&expired)?,
            false,
        ),
        (
            &verifier,
            "alg none (refused at the header)",
            bearer("eyJhbGciOiJub25lIn0.e30.x")?,
            false,
        ),
        (
            &verifier,
            "no Authorization header",
            http::HeaderMap::new(),
            false,
        ),
    ];
    let mut rows = Vec::new();
    for (v, case, headers, want_ok) in cases {
        rows.push(measure(v, case, &headers, want_ok, iterations).await?);
    }
    rows.push(
        measure_each(
            &cached,
            "valid RS256 tokens of distinct callers, each seen once (as served)",
            many.iter(),
            true,
        )
        .await?,
    );
    let table = markdown_table(
        &[
            ("case", false),
            ("mean µs", true),
            ("p50 µs", true),
            ("p99 µs", true),
            ("per second (1 core)", true),
        ],
        rows.iter().map(|r| {
            let us = [r.mean_us, r.p50_us, r.p99_us].map(|v| format!("{v:.1}"));
            [r.case.to_owned()]
                .into_iter()
                .chain(us)
                .chain([format!("{:.0}", r.per_sec)])
        }),
    );
    println!("{table}");
    let doc = format!(
        "# Auth benchmark: token verification per request\n\n\
Commit {commit}. Command: `cargo bench -p benches --bench auth` \
(MLGW_BENCH_ITERATIONS={iterations}, MLGW_BENCH_DISTINCT_TOKENS={distinct}). \
The gateway's `Verifier::authenticate` on one `Authorization: Bearer` header, key cached \
(RSA-2048, RS256, jsonwebtoken 11 with the aws-lc-rs backend), one thread, \
{} bytes of token shaped like the oidc-provider's access tokens. \
Timed per call (Instant around each call), release build, on the 2-core dev machine. \
\"As served\" rows use the shipped defaults: verified tokens remembered \
(`auth.token_cache_entries = 10000`; a hit still checks `exp` and that the key set is \
unchanged) and refusals that cost a signature check remembered by the token's SHA-256 \
(`auth.refused_cache_entries = 10000`, same key set only). The other rows turn both \
caches off: every check on every call.\n\n{table}",
        good.len(),
        commit = commit(),
    );
    let path = workspace_root().join("benches/results/auth.md");
    std::fs::write(&path, doc).with_context(|| format!("write {}", path.display()))?;
    println!("written to {}", path.display());
    Ok(())
}

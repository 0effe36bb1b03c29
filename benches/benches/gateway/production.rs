//! The gateway as people deploy it: the shipped `gateway/config/gateway.toml`
//! (routing to version 1 with versions 2 and 3 shadowed, the prediction log
//! on, the shipped cache and coalescing settings) with its store switched to
//! Cassandra and its SSO to an issuer this bench runs, the dynamic view
//! holding events inside its windows, callers on both fronts and with tokens
//! of their own. Afterwards, the prediction log's books are checked: every
//! record queued (answers and shadow answers) written, or the losses shown.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use benches::cassandra::Cassandra;
use benches::demo::{Keys, load_activity, load_profiles};
use benches::grpc_client::{Bearer, channels, direct_clients, gateway_clients};
use benches::load::{Call, Load, closed_loop};
use benches::process::{CpuProbe, GatewayProcess};
use benches::prometheus::scrape;
use benches::report::ms;
use rig::metrics::Page;
use rig::sso::{TestIssuer, TestKey};
use rig::workspace_root;
use serde_json::json;
use tonic::metadata::{Ascii, MetadataValue};

use super::{CONNECTIONS, Knobs, Runner, Step, Target, find};

/// The store column of these steps.
pub const BACKEND: &str = "Cassandra";
/// The headline load: 32 callers offering this many calls a second.
pub const PACED_RATE: f64 = 2000.0;
/// The rate the routing and REST comparisons are made at.
pub const COMPARE_RATE: f64 = 1000.0;

/// What the production run needs from the bench.
pub struct ProductionSetup<'a> {
    pub knobs: &'a Knobs,
    pub node: &'a Cassandra,
    pub model_url: &'a str,
    pub ms_pid: &'a str,
    pub scratch: &'a Path,
    pub configs: &'a Path,
}

/// What the report says of the production run beyond its steps.
pub struct ProductionNotes {
    /// Seconds to load the static rows, and the events.
    pub load_seconds: (f64, f64),
    /// Seconds waited for the node to go quiet after the load.
    pub settled_seconds: f64,
    /// The prediction log's books, one line per gateway.
    pub log_books: Vec<String>,
    /// Where token verdicts came from in the per-user steps.
    pub tokens: String,
}

/// The shipped gateway config with the store, SSO and model-server of this
/// run; `shadows: false` drops the shadow versions (the A/B of routing).
fn shipped_config(
    dir: &Path,
    model_url: &str,
    store: &str,
    issuer: &str,
    shadows: bool,
) -> Result<std::path::PathBuf> {
    let shipped_path = workspace_root().join("gateway/config/gateway.toml");
    let shipped = std::fs::read_to_string(&shipped_path)
        .with_context(|| format!("read {}", shipped_path.display()))?;
    let definitions = workspace_root().join("feature-store/definitions/example.toml");
    let mut out = String::new();
    let mut skipping = false;
    let mut edits = 0;
    for line in shipped.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            skipping = false;
        }
        let replaced = if t.starts_with("[store]") {
            skipping = true;
            Some(store.to_owned())
        } else if t.starts_with("[auth.dev]") {
            skipping = true;
            Some(String::new())
        } else if skipping {
            None
        } else if t.starts_with("definitions =") {
            Some(format!("definitions = \"{}\"", definitions.display()))
        } else if t.starts_with("http_port =") {
            Some("http_port = 0".into())
        } else if t.starts_with("grpc_port =") {
            Some("grpc_port = 0".into())
        } else if t.starts_with("endpoint =") {
            Some(format!("endpoint = \"{model_url}\""))
        } else if t.starts_with("mode = \"dev\"") {
            Some(format!("mode = \"oidc\"\nissuer = \"{issuer}\""))
        } else if t.starts_with("shadow =") && !shadows {
            Some("shadow = []".into())
        } else {
            Some(line.to_owned())
        };
        if let Some(text) = replaced {
            if text != line {
                edits += 1;
            }
            out.push_str(&text);
            out.push('\n');
        }
    }
    // definitions, 2 ports, store, 3 endpoints, auth mode, auth.dev (+ shadow)
    let want = 9 + usize::from(!shadows);
    if edits < want {
        bail!(
            "{} no longer has the shape this bench edits ({edits} of {want} edits made)",
            shipped_path.display()
        );
    }
    let path = dir.join(format!(
        "gateway-shipped-{}.toml",
        if shadows { "shadows" } else { "no-shadows" }
    ));
    std::fs::write(&path, out)?;
    Ok(path)
}

/// `Bearer` values of `count` users' access tokens, each its own `sub`,
/// shaped like the oidc-provider's; signed on every core.
async fn user_tokens(
    key: &Arc<TestKey>,
    issuer: &str,
    count: u64,
) -> Result<Vec<MetadataValue<Ascii>>> {
    let lanes = 2;
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let (key, issuer) = (Arc::clone(key), issuer.to_owned());
        tasks.spawn_blocking(move || -> Result<Vec<(u64, MetadataValue<Ascii>)>> {
            let mut out = Vec::new();
            let mut i = lane;
            while i < count {
                let token = key.sign(&claims(&issuer, &format!("user-{i}")))?;
                out.push((i, MetadataValue::try_from(format!("Bearer {token}"))?));
                i += lanes;
            }
            Ok(out)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// An access token's claims for `sub`, valid for two hours.
fn claims(issuer: &str, sub: &str) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({"iss": issuer, "aud": "mlgw-gateway", "sub": sub, "client_id": "fraud-web",
        "jti": format!("{sub}-{now}"), "iat": now, "exp": now + 7200,
        "scope": "predict", "groups": ["fraud-team"]})
}

/// Waits for the log to drain, then compares what it wrote with what it was
/// given: every answered prediction and every answered shadow copy.
async fn log_books(http: &reqwest::Client, base: &str, name: &str) -> Result<String> {
    let mut page = scrape(http, base).await?;
    for _ in 0..100 {
        if page.sum("mlgw_prediction_log_queued", &[]) == 0.0
            && page.sum("mlgw_shadow_in_flight", &[]) == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        page = scrape(http, base).await?;
    }
    let records =
        |result: &str| page.sum("mlgw_prediction_log_records_total", &[("result", result)]);
    let answered = page.sum(
        "mlgw_requests_total",
        &[("route", "predict"), ("code", "ok")],
    );
    let shadows = page.sum("mlgw_shadow_calls_total", &[("result", "ok")]);
    let shadows_dropped = page.sum("mlgw_shadow_calls_total", &[("result", "dropped")]);
    let (written, dropped, failed) = (
        records("written"),
        records("dropped_buffer_full"),
        records("failed"),
    );
    let queued = page.sum("mlgw_prediction_log_queued", &[]);
    let writes = page.sum("mlgw_prediction_log_writes_total", &[]);
    // `+ 0.0`: a sum of nothing is -0.0, printed "-0".
    let (answered, shadows, shadows_dropped) =
        (answered + 0.0, shadows + 0.0, shadows_dropped + 0.0);
    let expected = answered + shadows;
    let verdict = if written == expected && dropped + failed == 0.0 {
        "every record written".to_owned()
    } else {
        format!(
            "**{:.0} records missing** (dropped {dropped:.0}, failed {failed:.0}, still queued {queued:.0})",
            expected - written
        )
    };
    Ok(format!(
        "{name}: {answered:.0} predictions answered + {shadows:.0} shadow answers = {expected:.0} records \
         queued; {written:.0} written in {writes:.0} store writes ({:.0} records per write): {verdict}. \
         Shadow copies not sent because the shadow pool was full: {shadows_dropped:.0}.",
        if writes > 0.0 { written / writes } else { 0.0 }
    ))
}

fn token_sources(before: &Page, after: &Page) -> String {
    let d = |source: &str| {
        let labels = [("source", source)];
        after.sum("mlgw_auth_tokens_total", &labels) - before.sum("mlgw_auth_tokens_total", &labels)
    };
    let (hits, checked) = (d("verified_cache"), d("checked"));
    format!(
        "over the per-user steps the gateway verified {checked:.0} tokens in full and answered {hits:.0} \
         from its verified-token cache ({:.1} % hits)",
        if hits + checked > 0.0 {
            100.0 * hits / (hits + checked)
        } else {
            0.0
        }
    )
}

/// Waits (up to two minutes) until the node has been nearly idle for two
/// seconds: after a bulk load it flushes and compacts for a while, and the
/// steps should measure serving, not that. Returns the seconds waited.
async fn settle(node: &Cassandra) -> f64 {
    let started = std::time::Instant::now();
    let Some(mut last) = node.cpu_seconds() else {
        return 0.0;
    };
    while started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(now) = node.cpu_seconds() else {
            break;
        };
        if (now - last) / 2.0 < 0.1 {
            break;
        }
        last = now;
    }
    started.elapsed().as_secs_f64()
}

/// Loads the data, runs the shipped config with and without its shadows,
/// and returns what the report needs beyond the steps.
pub async fn run_production(
    runner: &mut Runner,
    setup: &ProductionSetup<'_>,
) -> Result<ProductionNotes> {
    let knobs = setup.knobs;
    let customers = knobs.cassandra_customers;
    let keyspace = format!("bench_gw_{}", std::process::id());
    let store = benches::cassandra::store(&setup.node.addr, keyspace.clone()).await?;
    let static_s = load_profiles(&store, customers, setup.scratch).await?;
    let events_s = load_activity(&store, customers, knobs.events).await?;
    drop(store);
    eprintln!(
        "loaded {customers} customers into Cassandra in {static_s:.1} s and {} events each in {events_s:.1} s",
        knobs.events
    );

    // SSO: an issuer this bench serves, one signing key; the service's own
    // token and one token per user.
    let key = Arc::new(TestKey::generate("bench-sso")?);
    let issuer = TestIssuer::start(&[key.jwk()]).await?;
    let service_token = key.sign(&claims(&issuer.issuer, "svc-fraud-api"))?;
    let started = std::time::Instant::now();
    let tokens = user_tokens(&key, &issuer.issuer, knobs.users).await?;
    eprintln!(
        "signed {} user tokens in {:.1} s",
        tokens.len(),
        started.elapsed().as_secs_f64()
    );
    let settled = settle(setup.node).await;
    eprintln!("Cassandra settled after the load in {settled:.0} s");
    let store_section = format!(
        "[store]\nbackend = \"scylla\"\nnodes = [\"{}\"]\nkeyspace = \"{keyspace}\"",
        setup.node.addr
    );

    let mut notes = ProductionNotes {
        load_seconds: (static_s, events_s),
        settled_seconds: settled,
        log_books: Vec::new(),
        tokens: String::new(),
    };
    let model_direct = direct_clients(&channels(setup.model_url, CONNECTIONS).await?);
    let direct = Arc::new(Target::Direct {
        clients: model_direct,
        hot: knobs.hot_keys,
        version: "1",
    });
    let mut users = Some(tokens);
    for shadows in [true, false] {
        let config = shipped_config(
            setup.configs,
            setup.model_url,
            &store_section,
            &issuer.issuer,
            shadows,
        )?;
        let log = setup.scratch.join(format!(
            "gateway-cassandra-{}.log",
            if shadows { "shipped" } else { "no-shadows" }
        ));
        let gateway = GatewayProcess::start(&config, log).await?;
        let mut pids = vec![
            ("gateway", gateway.pid()?),
            ("model-server", setup.ms_pid.to_owned()),
            ("client", std::process::id().to_string()),
        ];
        if let Some(pid) = setup.node.pid() {
            pids.push(("cassandra", pid));
        }
        runner.probe = CpuProbe { pids };
        let chans = channels(&gateway.grpc, CONNECTIONS).await?;
        let service = gateway_clients(&chans, &Bearer::token(&service_token)?);
        let hot_keys = || Keys::Hot {
            count: knobs.hot_keys,
        };
        let hot = Arc::new(Target::Gateway {
            clients: service.clone(),
            keys: hot_keys(),
        });
        let fresh = Arc::new(Target::Gateway {
            clients: service.clone(),
            keys: Keys::fresh(customers),
        });
        if let Some(code) = hot.call(0).await.failure() {
            bail!(
                "a first call to the Cassandra gateway failed with {code}; see {}",
                gateway.log.display()
            );
        }
        // The hot set's rows into the cache; then, as a fresh JVM runs
        // interpreted for a while, its read path (and the gateway's) warmed
        // for 10 s, unmeasured. Not with `fresh`: its customers must stay
        // unread until the miss steps.
        for k in 0..knobs.hot_keys.max(2000) {
            if let Some(code) = hot.call(k).await.failure() {
                bail!("warming the cache: a call failed with {code}");
            }
        }
        closed_loop(Arc::clone(&hot), 16, None, 10.0).await?;
        let g = gateway.http.clone();
        let g = Some(g.as_str());
        if !shadows {
            // The routing A/B: the same loads as the shipped run's.
            let scenario = "hit, no shadows";
            runner
                .step(
                    BACKEND,
                    scenario,
                    &hot,
                    g,
                    Load::Open { rate: COMPARE_RATE },
                )
                .await?;
            runner
                .step(
                    BACKEND,
                    scenario,
                    &hot,
                    g,
                    Load::Closed {
                        callers: 32,
                        pace: Some(PACED_RATE),
                    },
                )
                .await?;
            notes
                .log_books
                .push(log_books(&runner.http, &gateway.http, "without shadows").await?);
            drop((hot, fresh, service, chans));
            gateway.stop().await?;
            break;
        }
        let rest = Arc::new(Target::Rest {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            url: format!("{}/v1/models/fraud_detector/predict", gateway.http),
            authorization: format!("Bearer {service_token}"),
            keys: hot_keys(),
        });
        if let Some(code) = rest.call(0).await.failure() {
            bail!("a first REST call failed with {code}");
        }
        let per_user = Arc::new(Target::Users {
            clients: gateway_clients(&chans, &Bearer::none()),
            tokens: users.take().unwrap_or_default(),
            next: AtomicU64::new(0),
            keys: hot_keys(),
        });
        let rates = &knobs.cassandra_rates;
        runner
            .rising(
                BACKEND,
                "hit",
                &hot,
                g,
                Some(&direct),
                rates,
                knobs.max_rate,
            )
            .await?;
        runner
            .rising(BACKEND, "hit REST", &rest, g, None, rates, knobs.max_rate)
            .await?;
        runner
            .rising(BACKEND, "miss", &fresh, g, None, rates, knobs.max_rate)
            .await?;
        let paced = Load::Closed {
            callers: 32,
            pace: Some(PACED_RATE),
        };
        runner.step(BACKEND, "hit", &hot, g, paced).await?;
        runner.step(BACKEND, "direct", &direct, None, paced).await?;
        runner.step(BACKEND, "hit REST", &rest, g, paced).await?;
        runner.step(BACKEND, "miss", &fresh, g, paced).await?;
        let before = scrape(&runner.http, &gateway.http).await?;
        runner
            .step(
                BACKEND,
                "hit, per-user tokens",
                &per_user,
                g,
                Load::Open { rate: COMPARE_RATE },
            )
            .await?;
        runner
            .step(BACKEND, "hit, per-user tokens", &per_user, g, paced)
            .await?;
        let after = scrape(&runner.http, &gateway.http).await?;
        notes.tokens = format!(
            "{} users' tokens against `token_cache_entries = 10000`: {}",
            knobs.users,
            token_sources(&before, &after)
        );
        for &callers in &knobs.concurrency {
            let unpaced = Load::Closed {
                callers,
                pace: None,
            };
            runner.step(BACKEND, "hit", &hot, g, unpaced).await?;
        }
        notes
            .log_books
            .push(log_books(&runner.http, &gateway.http, "shipped routing").await?);
        drop((hot, fresh, rest, per_user, service, chans));
        gateway.stop().await?;
    }
    Ok(notes)
}

/// The production run's rows of "against the targets".
pub fn targets(out: &mut String, steps: &[Step]) -> Result<()> {
    let paced = Load::Closed {
        callers: 32,
        pace: Some(PACED_RATE),
    };
    let open = Load::Open { rate: COMPARE_RATE };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    if let (Some(g), Some(d)) = (
        find(steps, BACKEND, "hit", paced),
        find(steps, BACKEND, "direct", paced),
    ) {
        writeln!(
            out,
            "| Cassandra, shipped config, 32 callers offering 2,000 req/s: ≥ 2,000 req/s at p99 ≤ 10 ms | {:.0} req/s, p50 {} ms, p99 {} ms; direct model-server run p99 {} ms, ratio {:.1}× |",
            g.m.achieved,
            ms(g.p(0.5)),
            ms(g.p(0.99)),
            ms(d.p(0.99)),
            ratio(g.p(0.99), d.p(0.99))
        )?;
    }
    if let (Some(with), Some(without)) = (
        find(steps, BACKEND, "hit", open),
        find(steps, BACKEND, "hit, no shadows", open),
    ) {
        writeln!(
            out,
            "| Cassandra at 1,000 req/s: shipped routing (v1, shadows v2 and v3) within 2× the p99 without shadows | p99 {} ms vs {} ms: {:.2}× |",
            ms(with.p(0.99)),
            ms(without.p(0.99)),
            ratio(with.p(0.99), without.p(0.99))
        )?;
    }
    if let (Some(rest), Some(grpc)) = (
        find(steps, BACKEND, "hit REST", open),
        find(steps, BACKEND, "hit", open),
    ) {
        writeln!(
            out,
            "| Cassandra at 1,000 req/s: REST within 1.5× of gRPC's p99 | p99 {} ms vs {} ms: {:.2}× |",
            ms(rest.p(0.99)),
            ms(grpc.p(0.99)),
            ratio(rest.p(0.99), grpc.p(0.99))
        )?;
    }
    for load in [open, paced] {
        if let (Some(users), Some(one)) = (
            find(steps, BACKEND, "hit, per-user tokens", load),
            find(steps, BACKEND, "hit", load),
        ) {
            writeln!(
                out,
                "| Cassandra, {}: each call with the next of many users' tokens | {:.0} req/s, p99 {} ms vs {} ms with one service token |",
                load.text(),
                users.m.achieved,
                ms(users.p(0.99)),
                ms(one.p(0.99))
            )?;
        }
    }
    Ok(())
}

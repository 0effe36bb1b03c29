//! The web console in a real browser: Debian's Chromium, driven through
//! ChromeDriver, against a gateway, the rig's oidc-provider (sign-in and
//! consent pages) and model-server. A person signs in, sees the models,
//! moves a canary share and sees it served, rolls back, sees a refresh
//! job's plot and pins it; a viewer sees no actions and the API refuses
//! them anyway; requests forged without the CSRF value or from another
//! origin change nothing.
//!
//! With `MLGW_CONSOLE_SCREENSHOTS=DIR` the pages are saved there as PNG
//! (how docs/console/ is made).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::StreamExt as _;
use rig::gateway::{
    DEV_AUTH, GatewayProcess, client_with_token, definitions, profile_csv, scratch,
};
use rig::sso::{client_credentials, oidc_auth};
use rig::{rig_env, unique};
use serde_json::{Value, json};

/// What a person may do: admins change, the fraud team looks.
const POLICY: &str = "[[auth.allow]]\napi = \"admin\"\ngroups = [\"mlgw-admins\"]\nscopes = [\"admin\"]\n\
                      [[auth.allow]]\napi = \"view\"\ngroups = [\"fraud-team\"]\n";

const CONSOLE: &str = "[console]\nclient_id = \"mlgw-console\"\nscopes = [\"openid\", \"admin\"]\n\
                       resource = \"urn:mlgw:gateway\"\n";

/// Version 1 stable, 2 the canary at 10 %, 3 a silent shadow (so the
/// shadow report has something to compare).
const ROUTING: &str = "[model.routing]\nstable = \"1\"\ncanary = \"2\"\ncanary_percent = 10\n\
                       sticky_by = \"entity\"\nshadow = [\"3\"]\n";

/// A headless Chromium of its own (its own profile folder, removed after).
struct Browser {
    client: Client,
    profile: PathBuf,
}

impl Browser {
    async fn start() -> Result<Self> {
        let webdriver = rig_env("MLGW_TEST_WEBDRIVER")?;
        let binary = rig_env("MLGW_TEST_CHROMIUM")?;
        let profile =
            PathBuf::from(rig_env("MLGW_TEST_CHROMIUM_PROFILES")?).join(unique("chromium-profile"));
        std::fs::create_dir_all(&profile)?;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": binary,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&webdriver)
            .await
            .context("ChromeDriver could not start Chromium")?;
        Ok(Browser { client, profile })
    }

    async fn close(self) -> Result<()> {
        self.client.close().await?;
        let _ = std::fs::remove_dir_all(&self.profile);
        Ok(())
    }

    /// The element's text once `ok` holds for it (at most 20 s).
    async fn text_when(&self, css: &str, ok: impl Fn(&str) -> bool) -> Result<String> {
        let until = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        loop {
            if let Ok(el) = self.client.find(Locator::Css(css)).await {
                last = el.text().await.unwrap_or_default();
                if ok(&last) {
                    return Ok(last);
                }
            }
            if Instant::now() > until {
                let url = self.client.current_url().await?;
                bail!("{css} on {url}: last text {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `action` on the element `css` once it is there, again while
    /// the page re-renders under it (stale element), at most 20 s.
    async fn on<F, Fut>(&self, css: &str, action: F) -> Result<()>
    where
        F: Fn(fantoccini::elements::Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let tried = match self.client.find(Locator::Css(css)).await {
                Ok(el) => action(el).await,
                Err(e) => Err(e),
            };
            match tried {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > until => {
                    let url = self.client.current_url().await?;
                    bail!("{css} on {url}: {e}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits until the element `css` is there (at most 20 s): pages render
    /// after their data arrives.
    async fn wait_for(&self, css: &str) -> Result<()> {
        self.on(css, |_| async { Ok(()) }).await
    }

    async fn click(&self, css: &str) -> Result<()> {
        self.on(css, |el| async move { el.click().await }).await
    }

    async fn fill(&self, css: &str, text: &str) -> Result<()> {
        self.on(css, |el| async move {
            el.clear().await?;
            el.send_keys(text).await
        })
        .await
    }

    async fn present(&self, css: &str) -> Result<bool> {
        Ok(!self.client.find_all(Locator::Css(css)).await?.is_empty())
    }

    /// Confirms the open dialog with `reason`.
    async fn confirm(&self, reason: &str) -> Result<()> {
        self.fill("#confirm-reason", reason).await?;
        self.click("#confirm-yes").await
    }

    /// A script's result (a returned promise is awaited).
    async fn run(&self, script: &str) -> Result<Value> {
        Ok(self.client.execute(script, vec![]).await?)
    }

    /// Saves the page as `name`.png when screenshots are asked for.
    async fn shot(&self, name: &str) -> Result<()> {
        if let Ok(dir) = std::env::var("MLGW_CONSOLE_SCREENSHOTS") {
            std::fs::create_dir_all(&dir)?;
            let png = self.client.screenshot().await?;
            std::fs::write(PathBuf::from(dir).join(format!("{name}.png")), png)?;
        }
        Ok(())
    }

    /// Signs in through the rig's oidc-provider as `login` (its sign-in
    /// and consent pages) and waits for the console to greet them.
    async fn sign_in(&self, gw: &GatewayProcess, login: &str) -> Result<()> {
        self.client.goto(&format!("{}/console/", gw.http)).await?;
        self.click("#sign-in").await?;
        self.fill("input[name=login]", login).await?;
        self.fill("input[name=password]", "any password").await?;
        self.click("button[type=submit]").await?;
        // The consent page: the console asks for openid and admin.
        self.click("button[type=submit]").await?;
        self.text_when("#subject", |t| t == login).await?;
        Ok(())
    }
}

fn body(i: usize) -> Value {
    json!({"entity": {"customer_id": format!("c-{i:05}")},
           "request_features": {"amount": 10.0 + (i % 97) as f64, "is_card_present": i.is_multiple_of(2), "hour_of_day": (i % 24) as i64}})
}

/// The share of 600 callers the canary answers, in percent.
async fn served_canary_share(gw: &GatewayProcess, http: &reqwest::Client) -> Result<f64> {
    let routes: Vec<Result<String>> = futures_util::stream::iter(0..600)
        .map(|i| async move {
            let r = http
                .post(format!("{}/v1/models/fraud_detector/predict", gw.http))
                .json(&body(i))
                .send()
                .await?;
            ensure!(r.status() == 200, "predict: {}", r.status());
            let a: Value = r.json().await?;
            Ok(a["route"].as_str().unwrap_or_default().to_owned())
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut canary = 0;
    for r in routes {
        if r? == "canary" {
            canary += 1;
        }
    }
    Ok(f64::from(canary) * 100.0 / 600.0)
}

/// A gateway signing people in through the rig's oidc-provider, with a
/// canary at 10 %. With `refresh`, its scheduler runs the example refresh
/// job from a CSV of 50 customers (so the job has runs and batches).
async fn oidc_gateway(
    tag: &str,
    refresh: bool,
) -> Result<(rig::ScratchDir, rig::ScratchDir, GatewayProcess)> {
    let issuer = rig_env("MLGW_TEST_OIDC_ISSUER")?;
    let auth = oidc_auth(&issuer, POLICY);
    let data = rig::ScratchDir::new(&format!("{tag}_data"))?;
    let csv = data.file(
        "profile.csv",
        profile_csv(
            (0..50).map(|i| format!("c-{i:05},{},{}.5,{},0,0.{}", 30 + i, 20 + i, i % 9, i % 10)),
        ),
    )?;
    let defs = data.file(
        "features.toml",
        std::fs::read_to_string(definitions())?.replace(
            "file = \"exports/profile.parquet\"",
            &format!("file = \"{}\"", csv.display()),
        ),
    )?;
    let (dir, config) = scratch(tag, &auth, |t| {
        let t = t
            .replace(
                "[model.postprocess]",
                &format!("{ROUTING}[model.postprocess]"),
            )
            .replacen("[[model]]", &format!("{CONSOLE}[[model]]"), 1);
        if refresh {
            t.replace(
                &format!("definitions = \"{}\"", definitions().display()),
                &format!("definitions = \"{}\"", defs.display()),
            ) + "[scheduler]\nenabled = true\npoll = \"1s\"\n"
        } else {
            t
        }
    })
    .await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    Ok((dir, data, gw))
}

#[tokio::test]
async fn an_admin_moves_a_canary_sees_it_served_rolls_back_and_pins_a_job() -> Result<()> {
    let (_dir, _data, gw) = oidc_gateway("console_admin", true).await?;
    let issuer = rig_env("MLGW_TEST_OIDC_ISSUER")?;
    let service = client_with_token(&client_credentials(&issuer, "mlgw-service", None).await?)?;
    let b = Browser::start().await?;
    b.client.goto(&format!("{}/console/", gw.http)).await?;
    b.text_when("#sign-in", |t| t == "Sign in").await?;
    b.shot("sign-in").await?;
    b.sign_in(&gw, "ana").await?;
    assert_eq!(b.text_when("#role", |t| !t.is_empty()).await?, "admin");
    // The token stays out of page scripts.
    let cookies = b.run("return document.cookie").await?;
    assert!(
        !cookies
            .as_str()
            .unwrap_or_default()
            .contains("mlgw_session"),
        "{cookies}"
    );

    // The models, then one model with its roles.
    b.text_when("#models", |t| t.contains("fraud_detector"))
        .await?;
    b.shot("models").await?;
    b.click("#models a").await?;
    b.text_when("#canary", |t| t == "2 at 10% of callers")
        .await?;
    let share = served_canary_share(&gw, &service).await?;
    assert!((share - 10.0).abs() < 6.0, "canary share {share}");

    // Move the canary to 50 %: a confirmation with a reason, then served.
    b.fill("#canary-percent", "50").await?;
    b.click("#set-canary").await?;
    b.confirm("more traffic for v2").await?;
    b.text_when("#canary", |t| t == "2 at 50% of callers")
        .await?;
    b.text_when("#history", |t| {
        t.contains("more traffic for v2") && t.contains("ana")
    })
    .await?;
    let share = served_canary_share(&gw, &service).await?;
    assert!((share - 50.0).abs() < 8.0, "canary share {share}");
    // The shadow's copies reach the report once the log has written them.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        b.client.refresh().await?;
        let report = b.text_when("#shadow-report", |t| !t.is_empty()).await?;
        if report.lines().any(|l| l.starts_with("3 ")) {
            break;
        }
        ensure!(Instant::now() < until, "no shadow in the report: {report}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.shot("model").await?;

    // A forged change: the session cookie goes along, the CSRF value does
    // not; refused, nothing changes.
    let forged = b
        .run(
            "return fetch('/v1/admin/models/fraud_detector/routing', {method: 'POST', \
             credentials: 'same-origin', headers: {'Content-Type': 'application/json'}, \
             body: JSON.stringify({action: 'rollback', reason: 'forged'})}).then(async r => [r.status, await r.json()])",
        )
        .await?;
    assert_eq!(forged[0], 403, "{forged}");
    assert_eq!(forged[1]["code"], "csrf_rejected", "{forged}");

    // Roll back: the canary is back at 10 %, and so is what is served.
    b.click("#rollback").await?;
    b.confirm("back to 10 %").await?;
    b.text_when("#canary", |t| t == "2 at 10% of callers")
        .await?;
    let share = served_canary_share(&gw, &service).await?;
    assert!((share - 10.0).abs() < 6.0, "canary share {share}");

    // A refresh job (the scheduler loaded its CSV at start): its plot,
    // runs and batches, then a pin.
    let admin = service_admin(&issuer).await?;
    wait_for_batch(&gw, &admin).await?;
    b.client
        .goto(&format!("{}/console/#/jobs", gw.http))
        .await?;
    b.text_when("#jobs", |t| t.contains("customer_profile"))
        .await?;
    b.shot("jobs").await?;
    b.click("#jobs a").await?;
    b.wait_for("#tuner-plot").await?;
    b.text_when("#batches", |t| {
        t.contains("done") && t.contains("served") && t.contains("50")
    })
    .await?;
    b.text_when("#runs", |t| t.contains("loaded") && t.contains("first run"))
        .await?;
    b.fill("#pin-interval", "4h").await?;
    b.click("#pin").await?;
    b.confirm("hold while the source is migrated").await?;
    b.text_when("#pinned", |t| t.starts_with("at 4h by ana"))
        .await?;
    b.shot("job").await?;
    // The prediction store's scoring jobs.
    b.client
        .goto(&format!("{}/console/#/scoring", gw.http))
        .await?;
    b.text_when("#scoring-jobs", |t| t.contains("customer_risk_daily"))
        .await?;
    b.shot("scoring").await?;
    b.client
        .goto(&format!("{}/console/#/live", gw.http))
        .await?;
    b.text_when("#live-requests", |t| t.chars().any(|c| c.is_ascii_digit()))
        .await?;
    b.shot("live").await?;

    // A page of another origin (the issuer's) posting to the gateway with
    // the browser's cookie: refused by origin, nothing changes.
    let revision_before = routing_revision(&gw, &admin).await?;
    b.client
        .goto(&format!("{issuer}/.well-known/openid-configuration"))
        .await?;
    let cross = b
        .run(&format!(
            "return fetch('{}/v1/admin/models/fraud_detector/routing', {{method: 'POST', mode: 'no-cors', \
             credentials: 'include', headers: {{'Content-Type': 'text/plain'}}, \
             body: JSON.stringify({{action: 'rollback', reason: 'cross-site'}})}}).then(r => r.type)",
            gw.http
        ))
        .await?;
    assert_eq!(cross, "opaque");
    assert_eq!(routing_revision(&gw, &admin).await?, revision_before);
    b.close().await?;
    gw.stop().await
}

/// Waits (at most 60 s) until the example job's first batch is served.
async fn wait_for_batch(gw: &GatewayProcess, admin: &reqwest::Client) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = admin
            .get(format!(
                "{}/v1/admin/tuner/jobs/customer_profile_daily",
                gw.http
            ))
            .send()
            .await?
            .json()
            .await?;
        if v["batches"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["current"] == true))
        {
            return Ok(());
        }
        ensure!(Instant::now() < until, "no batch served: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn service_admin(issuer: &str) -> Result<reqwest::Client> {
    client_with_token(&client_credentials(issuer, "mlgw-admin", None).await?)
}

async fn routing_revision(gw: &GatewayProcess, admin: &reqwest::Client) -> Result<i64> {
    let v: Value = admin
        .get(format!(
            "{}/v1/admin/models/fraud_detector/routing",
            gw.http
        ))
        .send()
        .await?
        .json()
        .await?;
    v["revision"].as_i64().with_context(|| format!("{v}"))
}

#[tokio::test]
async fn a_viewer_sees_no_actions_and_the_api_refuses_them_anyway() -> Result<()> {
    let (_dir, _data, gw) = oidc_gateway("console_viewer", false).await?;
    let b = Browser::start().await?;
    b.sign_in(&gw, "victor").await?;
    assert_eq!(b.text_when("#role", |t| !t.is_empty()).await?, "viewer");
    b.text_when("#models", |t| t.contains("fraud_detector"))
        .await?;
    b.click("#models a").await?;
    b.text_when("#canary", |t| t == "2 at 10% of callers")
        .await?;
    b.wait_for("#read-only").await?;
    for button in ["#set-canary", "#promote", "#rollback"] {
        ensure!(!b.present(button).await?, "a viewer sees {button}");
    }
    b.client
        .goto(&format!("{}/console/#/jobs", gw.http))
        .await?;
    b.click("#jobs a").await?;
    b.wait_for("#tuner-plot").await?;
    ensure!(!b.present("#pin").await?, "a viewer sees the pin button");
    // With the right CSRF value, the policy still says no.
    let refused = b
        .run(
            "return fetch('/console/session').then(r => r.json()).then(s => \
             fetch('/v1/admin/models/fraud_detector/routing', {method: 'POST', credentials: 'same-origin', \
             headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf}, \
             body: JSON.stringify({action: 'set_canary_percent', percent: 90, reason: 'viewer'})})) \
             .then(async r => [r.status, await r.json()])",
        )
        .await?;
    assert_eq!(refused[0], 403, "{refused}");
    assert_eq!(refused[1]["code"], "permission_denied", "{refused}");
    // Signing out ends the session.
    b.click("#sign-out").await?;
    b.text_when("#sign-in", |t| t == "Sign in").await?;
    let after = b
        .run("return fetch('/v1/admin/models').then(r => r.status)")
        .await?;
    assert_eq!(after, 401);
    b.close().await?;
    gw.stop().await
}

#[tokio::test]
async fn the_dev_issuer_signs_the_console_in_the_same_way() -> Result<()> {
    let auth = format!(
        "{DEV_AUTH}[auth.dev]\nsubject = \"dev-admin\"\ngroups = [\"fraud-team\", \"mlgw-admins\"]\nscopes = [\"admin\", \"predict\"]\n{POLICY}"
    );
    let auth = auth.replacen("[auth.dev]\ngroups = [\"fraud-team\"]\n", "", 1);
    let (_dir, config) = scratch("console_dev", &auth, |t| t).await?;
    let gw = GatewayProcess::start_ready(&config).await?;
    let b = Browser::start().await?;
    b.client.goto(&format!("{}/console/", gw.http)).await?;
    b.click("#sign-in").await?;
    // The dev issuer's own sign-in page, then back with a code.
    b.text_when("#subject", |t| t == "dev-admin").await?;
    b.shot("dev-sign-in").await?;
    b.click("#sign-in").await?;
    b.text_when("#role", |t| t == "admin").await?;
    b.text_when("#models", |t| t.contains("fraud_detector"))
        .await?;
    b.close().await?;

    // A callback nobody started in this browser is refused.
    let r = reqwest::get(format!(
        "{}/console/callback?code=stolen&state=unknown",
        gw.http
    ))
    .await?;
    assert_eq!(r.status(), 400);
    assert!(r.text().await?.contains("sign in again"));
    gw.stop().await
}

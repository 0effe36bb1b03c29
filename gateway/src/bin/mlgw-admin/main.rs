//! `mlgw-admin`: the data and ML engineers' command line for a running
//! gateway's rollout stages. Every command is one call of the admin REST API
//! (`/v1/admin/models/…`), so it needs only the gateway's address and an
//! admin-scope token, never the store's credentials.

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mlgw-admin: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mlgw-admin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn token(cli: &Cli) -> Result<String> {
    if let Some(t) = &cli.token {
        return Ok(t.trim().to_owned());
    }
    if let Some(f) = &cli.token_file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the token file {}", f.display()))?;
        return Ok(t.trim().to_owned());
    }
    bail!("no token: pass --token, set MLGW_TOKEN, or --token-file FILE (an admin-scope token)")
}

async fn run(cli: Cli) -> Result<String> {
    let token = token(&cli)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(cli.timeout_ms))
        .build()?;
    let base = cli.url.trim_end_matches('/').to_owned();
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let request = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(&token);
        let request = match body {
            Some(b) => request.json(&b),
            None => request,
        };
        let url = format!("{base}{path}");
        async move {
            let response = request
                .send()
                .await
                .with_context(|| format!("cannot reach the gateway at {url}"))?;
            let status = response.status();
            let text = response.text().await.context("reading the answer")?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{url} answered {status} with non-JSON: {text}"))?;
            if !status.is_success() {
                bail!(
                    "{} ({status}): {}",
                    v["code"].as_str().unwrap_or("error"),
                    v["message"].as_str().unwrap_or(&text)
                );
            }
            Ok(v)
        }
    };
    let change = |model: &str, action: Value, reason: &Option<String>| {
        let mut body = action;
        if let Some(r) = reason {
            body["reason"] = json!(r);
        }
        call(
            reqwest::Method::POST,
            format!("/v1/admin/models/{model}/routing"),
            Some(body),
        )
    };
    let get = |path: String| call(reqwest::Method::GET, path, None);
    let (answer, kind) = match &cli.command {
        Command::Models => (get("/v1/admin/models".into()).await?, Kind::Models),
        Command::Show { model } => (
            get(format!("/v1/admin/models/{model}/routing?history_limit=5")).await?,
            Kind::Routing,
        ),
        Command::History { model, limit } => (
            get(format!(
                "/v1/admin/models/{model}/routing?history_limit={limit}"
            ))
            .await?,
            Kind::History,
        ),
        Command::Stable {
            model,
            version,
            reason,
        } => (
            change(
                model,
                json!({"action": "set_stable", "version": version}),
                reason,
            )
            .await?,
            Kind::Changed,
        ),
        Command::Canary {
            model,
            version,
            percent,
            reason,
        } => (
            change(
                model,
                json!({"action": "set_canary", "version": version, "percent": percent}),
                reason,
            )
            .await?,
            Kind::Changed,
        ),
        Command::Weight {
            model,
            percent,
            reason,
        } => (
            change(
                model,
                json!({"action": "set_canary_percent", "percent": percent}),
                reason,
            )
            .await?,
            Kind::Changed,
        ),
        Command::Promote { model, reason } => (
            change(model, json!({"action": "promote"}), reason).await?,
            Kind::Changed,
        ),
        Command::RemoveCanary { model, reason } => (
            change(model, json!({"action": "remove_canary"}), reason).await?,
            Kind::Changed,
        ),
        Command::Shadow {
            op,
            model,
            version,
            reason,
        } => {
            let action = if op == "add" {
                "add_shadow"
            } else {
                "remove_shadow"
            };
            (
                change(model, json!({"action": action, "version": version}), reason).await?,
                Kind::Changed,
            )
        }
        Command::Pilot {
            op,
            model,
            version,
            groups,
            manual_only,
            reason,
        } => {
            let action = if op == "add" {
                if groups.is_empty() {
                    bail!("pilot add needs --groups a,b");
                }
                json!({"action": "add_pilot", "version": version, "groups": groups, "auto": !manual_only})
            } else {
                json!({"action": "remove_pilot", "version": version})
            };
            (change(model, action, reason).await?, Kind::Changed)
        }
        Command::Rollback { model, reason } => (
            change(model, json!({"action": "rollback"}), reason).await?,
            Kind::Changed,
        ),
        Command::ShadowReport { model, window_s } => (
            get(format!(
                "/v1/admin/models/{model}/shadow-report?window_s={window_s}"
            ))
            .await?,
            Kind::Report,
        ),
    };
    if cli.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&answer)?));
    }
    Ok(match kind {
        Kind::Models => answer["models"]
            .as_array()
            .map(|ms| ms.iter().map(routing_text).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default(),
        Kind::Routing => format!("{}{}", routing_text(&answer), history_text(&answer)),
        Kind::History => history_text(&answer),
        Kind::Changed => {
            let last = answer["history"]
                .as_array()
                .and_then(|h| h.last())
                .map(|c| format!("changed (revision {}): {}\n", c["revision"], s(&c["what"])))
                .unwrap_or_default();
            format!("{last}{}", routing_text(&answer))
        }
        Kind::Report => report_text(&answer),
    })
}

enum Kind {
    Models,
    Routing,
    History,
    Changed,
    Report,
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| format!("'{}'", s(x)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn routing_text(v: &Value) -> String {
    let c = &v["current"];
    let mut out = format!("{}  (revision {})\n", s(&v["model"]), v["revision"]);
    let stable = s(&c["stable"]);
    out.push_str(&format!(
        "  stable   {}\n",
        if stable.is_empty() {
            "the model-server's default version".to_owned()
        } else {
            format!("'{stable}'")
        }
    ));
    if c["canary"].is_object() {
        out.push_str(&format!(
            "  canary   '{}' for {} of callers (sticky by {})\n",
            s(&c["canary"]["version"]),
            s(&c["canary"]["share"]),
            s(&c["sticky_by"])
        ));
    }
    if c["shadows"].as_array().is_some_and(|a| !a.is_empty()) {
        out.push_str(&format!("  shadows  {}\n", list(&c["shadows"])));
    }
    for p in c["pilots"].as_array().into_iter().flatten() {
        let how = if p["auto"].as_bool() == Some(false) {
            ", when asked for"
        } else {
            ""
        };
        out.push_str(&format!(
            "  pilot    '{}' for groups {}{how}\n",
            s(&p["version"]),
            list(&p["groups"])
        ));
    }
    out
}

fn history_text(v: &Value) -> String {
    let mut out = String::from("history (oldest first):\n");
    for c in v["history"].as_array().into_iter().flatten() {
        let at = c["at_ms"].as_u64().unwrap_or(0) / 1000;
        let reason = c["reason"]
            .as_str()
            .map(|r| format!(" — {r}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  r{:<4} {}  {:<16} {}{reason}\n",
            c["revision"].as_i64().unwrap_or(0),
            gateway::auth::dev_issuer::utc_timestamp(at),
            s(&c["by"]),
            s(&c["what"])
        ));
    }
    out
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

fn report_text(v: &Value) -> String {
    let mut out = format!(
        "shadow report for {} over the last {} s: {} primary predictions\n",
        s(&v["model"]),
        v["window_s"],
        v["primary_records"]
    );
    let shadows = v["shadows"].as_array().cloned().unwrap_or_default();
    if shadows.is_empty() {
        out.push_str("  no shadow records in the window\n");
    }
    for sh in shadows {
        let ms = |k: &str, i: usize| num(&sh[k][i], 2);
        out.push_str(&format!(
            "  shadow '{}' vs {}: {} records, {} paired\n    label agreement {}  |score diff| mean {} p99 {} max {}\n    model-server ms p50/p99: shadow {}/{}  primary {}/{}\n",
            s(&sh["version"]),
            sh["against"],
            sh["shadow_records"],
            sh["pairs"],
            sh["label_agreement"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |a| format!("{:.2}%", a * 100.0)),
            num(&sh["mean_abs_score_diff"], 4),
            num(&sh["p99_abs_score_diff"], 4),
            num(&sh["max_abs_score_diff"], 4),
            ms("shadow_model_ms", 0),
            ms("shadow_model_ms", 1),
            ms("primary_model_ms", 0),
            ms("primary_model_ms", 1),
        ));
    }
    out
}

//! The gateway as a child process for the end-to-end tests: a config writer
//! (with an `[auth]` section), start-up that reads the bound ports and the
//! dev token from stdout, HTTP/gRPC clients that send a bearer token, the
//! example profile export the tests load, and checks of what the gateway
//! answers (P(fraud), error codes, the auth challenge, the admin routes in
//! the OpenAPI document).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{ScratchDir, banner_field, binary, workspace_root};

/// `[auth]` for the gateway's own dev issuer: the dev token is in group
/// `fraud-team` with every scope; predict, push and feedback are granted to it.
pub const DEV_AUTH: &str = r#"
[auth]
mode = "dev"
audience = "mlgw-gateway"
[auth.dev]
groups = ["fraud-team"]
[[auth.allow]]
api = "predict"
groups = ["fraud-team"]
scopes = ["predict"]
[[auth.allow]]
api = "push"
groups = ["fraud-team"]
scopes = ["push"]
[[auth.allow]]
api = "feedback"
groups = ["fraud-team"]
scopes = ["feedback"]
"#;

/// The example feature definitions.
pub fn definitions() -> PathBuf {
    workspace_root().join("feature-store/definitions/fraud.toml")
}

/// The example definitions with their `[[refresh_job]]` replaced by `job`
/// (TOML from `[[refresh_job]]` on), for tests that tune a job of their own.
///
/// # Errors
/// When the example definitions cannot be read or declare no job.
pub fn definitions_with_refresh_job(job: &str) -> Result<String> {
    let text = std::fs::read_to_string(definitions())?;
    let at = text
        .find("[[refresh_job]]")
        .context("the example definitions declare no [[refresh_job]]")?;
    Ok(format!("{}{job}", &text[..at]))
}

/// A gateway config for the example model on `model_grpc`, an embedded
/// store `features.redb` beside the config, and `auth` as its `[auth]`
/// section (e.g. [`DEV_AUTH`]).
pub fn config_text(model_grpc: &str, auth: &str) -> String {
    let environment = if auth.contains("mode = \"dev\"") {
        "environment = \"development\"\n"
    } else {
        ""
    };
    format!(
        r#"definitions = "{defs}"
[server]
{environment}http_port = 0
grpc_port = 0
request_timeout_ms = 2000
[store]
backend = "embedded"
path = "features.redb"
[cache]
batch_poll_ms = 200
[[model]]
name = "fraud_detector"
endpoint = "{model_grpc}"
timeout_ms = 1000
[model.postprocess]
scores_output = "probabilities"
labels = ["legit", "fraud"]
positive_label = "fraud"
threshold = 0.5
top_k = 2
{auth}"#,
        defs = definitions().display()
    )
}

/// P(fraud) in a prediction answer: the second value of its `probabilities`
/// output.
///
/// # Errors
/// When the answer has no such output.
pub fn p_fraud(answer: &serde_json::Value) -> Result<f64> {
    answer["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|x| x["name"] == "probabilities"))
        .and_then(|o| o["values"][1].as_f64())
        .with_context(|| format!("no probabilities in {answer}"))
}

/// The header of the example `customer_profile` export, then `rows` (CSV
/// lines without their newline).
pub fn profile_csv(rows: impl IntoIterator<Item = String>) -> String {
    let mut csv = String::from(
        "customer_id,account_age_days,avg_txn_amount_30d,txn_count_30d,chargeback_count_1y,home_country_risk\n",
    );
    for row in rows {
        csv.push_str(&row);
        csv.push('\n');
    }
    csv
}

/// The `WWW-Authenticate` challenge of an answer, if any.
pub fn challenge(answer: &reqwest::Response) -> Option<String> {
    answer
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Asserts that an answer (`got` status, JSON body) is `status` with error
/// code `code`.
#[track_caller]
pub fn assert_refused(got: u16, answer: &serde_json::Value, status: u16, code: &str) {
    assert_eq!(
        (got, answer["code"].as_str()),
        (status, Some(code)),
        "{answer}"
    );
}

/// Fetches the gateway's OpenAPI document and asserts that each of the admin
/// `routes` (path, method) is documented as needing a bearer token and as
/// answering 403 to one without the right scope; returns the document.
///
/// # Errors
/// When the document cannot be fetched.
pub async fn assert_admin_routes_documented(
    gateway: &str,
    routes: &[(&str, &str)],
) -> Result<serde_json::Value> {
    let doc: serde_json::Value = reqwest::get(format!("{gateway}/openapi.json"))
        .await?
        .json()
        .await?;
    for (route, method) in routes {
        let op = &doc["paths"][route][method];
        assert_eq!(
            op["security"],
            serde_json::json!([{"bearerAuth": []}]),
            "{method} {route}"
        );
        assert!(op["responses"]["403"].is_object(), "{method} {route}");
    }
    Ok(doc)
}

/// A running gateway; killed when dropped.
pub struct GatewayProcess {
    /// The child.
    pub child: tokio::process::Child,
    /// REST base URL.
    pub http: String,
    /// gRPC endpoint URL.
    pub grpc: String,
    /// The dev issuer's token, when the config uses `mode = "dev"`.
    pub dev_token: Option<String>,
}

impl GatewayProcess {
    /// Sends SIGTERM and waits (up to 30 s) for a clean exit: in-flight
    /// calls answered, the prediction log flushed.
    ///
    /// # Errors
    /// When it cannot be signalled, does not exit in time or exits with
    /// an error.
    pub async fn stop(mut self) -> Result<()> {
        let pid = self.child.id().context("the gateway has already exited")?;
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("the gateway did not exit within 30 s of SIGTERM")??;
        anyhow::ensure!(
            status.success(),
            "the gateway exited with {status} after SIGTERM"
        );
        Ok(())
    }

    /// Starts the gateway on `config` and reads its start-up lines (ports,
    /// dev token) without waiting for readiness.
    ///
    /// # Errors
    /// When it does not start or exits first.
    pub async fn start(config: &Path) -> Result<Self> {
        Self::start_with_args(config, &[]).await
    }

    /// [`Self::start`] with more flags after `--config` (e.g. port overrides).
    ///
    /// # Errors
    /// When it does not start or exits first.
    pub async fn start_with_args(config: &Path, extra_args: &[String]) -> Result<Self> {
        let mut child = tokio::process::Command::new(binary("gateway")?)
            .arg("--config")
            .arg(config)
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut http, mut grpc, mut dev_token) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(left, lines.next_line())
                .await
                .context("the gateway did not report its ports in 60 s")??
                .context("the gateway exited before listening")?;
            let field = |k: &str| banner_field(&line, k).ok().map(|a| format!("http://{a}"));
            if line.starts_with("gateway listening") {
                http = field("http=");
                grpc = field("grpc=");
            } else if line.starts_with("dev token") {
                dev_token = line.rsplit(' ').next().map(str::to_owned);
            } else if line.starts_with("ready:") {
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(GatewayProcess {
            child,
            http: http.context("no http= in the listening line")?,
            grpc: grpc.context("no grpc= in the listening line")?,
            dev_token,
        })
    }

    /// [`Self::start`], then waits until `/readyz` answers 200 (models ready
    /// and the issuer's keys loaded).
    ///
    /// # Errors
    /// When it does not become ready within 30 s.
    pub async fn start_ready(config: &Path) -> Result<Self> {
        let gw = Self::start(config).await?;
        gw.wait_ready(Duration::from_secs(30)).await?;
        Ok(gw)
    }

    /// Polls `/readyz` until 200.
    ///
    /// # Errors
    /// After `timeout`, with the last answer.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            let r = client.get(format!("{}/readyz", self.http)).send().await;
            let last = match r {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!("gateway not ready after {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A gRPC channel to the gateway.
    ///
    /// # Errors
    /// When it cannot connect.
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        Ok(tonic::transport::Endpoint::from_shared(self.grpc.clone())?
            .connect()
            .await?)
    }

    /// The dev token.
    ///
    /// # Errors
    /// When the gateway printed none (not `mode = "dev"`).
    pub fn token(&self) -> Result<&str> {
        self.dev_token
            .as_deref()
            .context("the gateway printed no dev token")
    }
}

/// An HTTP client that sends `Authorization: Bearer <token>` on every request.
///
/// # Errors
/// When the token is not a valid header value.
pub fn client_with_token(token: &str) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// A tonic interceptor adding `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    /// For `token`.
    ///
    /// # Errors
    /// When the token is not valid metadata.
    pub fn new(token: &str) -> Result<Self> {
        Ok(Bearer(format!("Bearer {token}").parse()?))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A scratch folder (removed when dropped) with a config for the rig's
/// shared model-server (text edited by `edit`) and an empty embedded store
/// with its schema; and the config's path.
///
/// # Errors
/// On I/O or store errors, or when the rig's model-server is not set.
pub async fn scratch(
    tag: &str,
    auth: &str,
    edit: impl Fn(String) -> String,
) -> Result<(ScratchDir, PathBuf)> {
    use feature_store::store::prelude::*;
    let dir = ScratchDir::new(&format!("mlgw_gw_{tag}"))?;
    let text = config_text(&crate::rig_env("MLGW_TEST_MODEL_SERVER_GRPC")?, auth);
    let config = dir.join("gateway.toml");
    std::fs::write(&config, edit(text))?;
    // The embedded store needs its schema, as the demo's setup applies.
    feature_store::store::embedded::EmbeddedStore::open(&dir.join("features.redb"))?
        .apply_schema()
        .await?;
    Ok((dir, config))
}

/// The gRPC form of the README's example call: customer `c-1`, a 980.0 card-
/// not-present payment at 3 am, 1,200 km from home.
pub fn example_grpc_request() -> proto::gateway::v1::PredictRequest {
    use pb::feature_value::Kind;
    use proto::gateway::v1 as pb;
    let fv = |k: Kind| pb::FeatureValue { kind: Some(k) };
    pb::PredictRequest {
        model: "fraud_detector".into(),
        model_version: String::new(),
        entity: Some(pb::EntityKey {
            keys: std::collections::HashMap::from([("customer_id".into(), "c-1".into())]),
        }),
        request_features: std::collections::HashMap::from([
            ("amount".into(), fv(Kind::DoubleValue(980.0))),
            ("is_card_present".into(), fv(Kind::BoolValue(false))),
            ("hour_of_day".into(), fv(Kind::Int64Value(3))),
            (
                "distance_from_home_km".into(),
                fv(Kind::DoubleValue(1200.0)),
            ),
        ]),
    }
}

//! The real parts started by `tests/run.sh` answer as the product will use them:
//! a row written and read back in Cassandra through the `scylla` driver, a signed
//! JWT access token from oidc-provider, the shared model-server ready and serving.

use std::time::Duration;

use anyhow::{Context, Result};
use rig::{get_ok, rig_env};
use scylla::client::session_builder::SessionBuilder;
use serde_json::Value;

#[tokio::test]
async fn cassandra_round_trips_a_row_through_the_scylla_driver() -> Result<()> {
    let addr = rig_env("MLGW_TEST_CASSANDRA")?;
    let session = tokio::time::timeout(
        Duration::from_secs(30),
        SessionBuilder::new().known_node(&addr).build(),
    )
    .await
    .context("connecting to Cassandra timed out")??;
    // A keyspace of its own, so tests never interfere with each other.
    let keyspace = rig::unique("rig");
    session
        .query_unpaged(
            format!("CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
            &[],
        )
        .await?;
    session
        .query_unpaged(
            format!("CREATE TABLE {keyspace}.customer_features (customer_id text PRIMARY KEY, account_age_days float, chargeback_count_1y int)"),
            &[],
        )
        .await?;
    let insert = session
        .prepare(format!("INSERT INTO {keyspace}.customer_features (customer_id, account_age_days, chargeback_count_1y) VALUES (?, ?, ?)"))
        .await?;
    session
        .execute_unpaged(&insert, ("c-1042", 731.5f32, 2i32))
        .await?;
    let select = session
        .prepare(format!("SELECT account_age_days, chargeback_count_1y FROM {keyspace}.customer_features WHERE customer_id = ?"))
        .await?;
    let rows = session
        .execute_unpaged(&select, ("c-1042",))
        .await?
        .into_rows_result()?;
    let row: (f32, i32) = rows.single_row()?;
    assert_eq!(row, (731.5, 2));
    let missing = session
        .execute_unpaged(&select, ("c-0000",))
        .await?
        .into_rows_result()?;
    assert_eq!(missing.rows_num(), 0, "an unknown entity has no row");
    session
        .query_unpaged(format!("DROP KEYSPACE {keyspace}"), &[])
        .await?;
    Ok(())
}

fn jwt_part(token: &str, index: usize) -> Result<Value> {
    let part = token
        .split('.')
        .nth(index)
        .context("token is not a JWS compact serialization")?;
    Ok(serde_json::from_slice(&base64url_decode(part)?)?)
}

fn base64url_decode(s: &str) -> Result<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .context("not base64url")? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[tokio::test]
async fn oidc_provider_issues_a_signed_jwt_with_groups() -> Result<()> {
    let issuer = rig_env("MLGW_TEST_OIDC_ISSUER")?;
    let http = rig::probe_client()?;
    let discovery: Value = get_ok(&http, &format!("{issuer}/.well-known/openid-configuration"))
        .await?
        .json()
        .await?;
    assert_eq!(discovery["issuer"], issuer.as_str());
    let token_endpoint = discovery["token_endpoint"]
        .as_str()
        .context("token_endpoint")?;
    let jwks_uri = discovery["jwks_uri"].as_str().context("jwks_uri")?;

    let response: Value = http
        .post(token_endpoint)
        .basic_auth("mlgw-pilot", Some("mlgw-pilot-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = response["access_token"].as_str().context("access_token")?;
    let header = jwt_part(token, 0)?;
    let claims = jwt_part(token, 1)?;
    assert_eq!(header["alg"], "RS256");
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["aud"], "mlgw-gateway");
    assert_eq!(claims["sub"], "mlgw-pilot");
    assert_eq!(
        claims["groups"],
        serde_json::json!(["fraud-team", "pilot-fraud-v2"])
    );
    assert!(claims["exp"].as_i64() > claims["iat"].as_i64());

    let jwks: Value = get_ok(&http, jwks_uri).await?.json().await?;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .context("keys")?
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(
        kids.contains(&header["kid"].as_str().unwrap_or_default()),
        "token kid {} in JWKS {kids:?}",
        header["kid"]
    );
    assert!(
        jwks["keys"]
            .as_array()
            .is_some_and(|ks| ks.iter().all(|k| k.get("d").is_none())),
        "JWKS exposes no private key"
    );

    let refused = http
        .post(token_endpoint)
        .basic_auth("mlgw-pilot", Some("wrong-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    Ok(())
}

#[tokio::test]
async fn the_shared_model_server_is_ready_and_serving() -> Result<()> {
    let url = rig_env("MLGW_TEST_MODEL_SERVER_HTTP")?;
    let http = rig::probe_client()?;
    assert_eq!(
        get_ok(&http, &format!("{url}/v2/health/ready"))
            .await?
            .status(),
        200
    );
    let row = rig::reference(1)?.inputs.swap_remove(0);
    let body = serde_json::json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 15], "data": row}]});
    let v: Value = http
        .post(format!("{url}/v2/models/fraud_detector/infer"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(v["model_version"], "2");
    Ok(())
}

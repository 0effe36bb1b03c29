//! Feature-store set-up shared by the tests that drive a store directly: a
//! ScyllaDB config with timeouts fit for the rig's busy machine, a refresh of
//! one file with the default options, and the definitions files the contract
//! and outage tests are written against (in `tests/fixtures/`).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use feature_store::definitions::FeatureDefinitions;
use feature_store::refresh::{self, RefreshOptions, RefreshOutcome};
use feature_store::store::scylla::ScyllaConfig;
use feature_store::store::{BatchStore, CoordinationStore, RowStore};

/// Entity `user` with a static `profile` view of every value type, a
/// dynamic `activity` view with a 4 s TTL, and `payments`, whose windowed
/// aggregates the store computes from raw events.
pub const CONTRACT_DEFINITIONS: &str = include_str!("../fixtures/contract_definitions.toml");

/// Entity `user` with a static `profile` view (`score`, `tier`) and a dynamic
/// `activity` view (`clicks`) that outlives a node restart.
pub const OUTAGE_DEFINITIONS: &str = include_str!("../fixtures/outage_definitions.toml");

/// Parses one of the definitions above; `name` is the file name its errors
/// mention.
///
/// # Errors
/// When the text does not parse.
pub fn definitions(text: &str, name: &str) -> Result<FeatureDefinitions> {
    Ok(FeatureDefinitions::parse(text, Path::new(name))?)
}

/// A config for `keyspace` on the node at `address`: schema changes on a busy
/// 2-core machine can take seconds, and so can the first connection.
pub fn scylla_config(address: &str, keyspace: String) -> ScyllaConfig {
    ScyllaConfig {
        nodes: vec![address.to_owned()],
        keyspace,
        write_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(10),
        ..ScyllaConfig::default()
    }
}

/// Runs refresh `job` on the file at `path` with the default options.
///
/// # Errors
/// When the refresh fails.
pub async fn refresh_file<S: RowStore + BatchStore + CoordinationStore>(
    store: &S,
    definitions: &FeatureDefinitions,
    job: &str,
    path: &Path,
) -> Result<RefreshOutcome> {
    Ok(refresh::run(
        store,
        definitions,
        job,
        None,
        path,
        &RefreshOptions::default(),
        &|_| {},
    )
    .await?)
}

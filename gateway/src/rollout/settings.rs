//! A model's `[model.routing]` as the config file writes it and its
//! validation into a [`RoutingTable`].

use serde::Deserialize;

use super::{Canary, PilotVersion, RoutingTable, StickyBy, basis_points};

/// `[model.routing]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouting {
    #[serde(default)]
    stable: String,
    canary: Option<String>,
    canary_percent: Option<f64>,
    #[serde(default)]
    shadow: Vec<String>,
    #[serde(default)]
    pilot: Vec<RawRoutingPilot>,
    #[serde(default)]
    sticky_by: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutingPilot {
    version: String,
    groups: Vec<String>,
    #[serde(default = "default_true")]
    auto: bool,
}

fn default_true() -> bool {
    true
}

/// Validates a model's `[model.routing]` (absent: the configured version
/// alone).
///
/// # Errors
/// The key under `routing` and what is wrong there.
pub(crate) fn validate(r: Option<RawRouting>) -> Result<RoutingTable, (String, String)> {
    let Some(r) = r else {
        return Ok(RoutingTable::stable(""));
    };
    let canary = match (r.canary, r.canary_percent) {
        (None, None) => None,
        (Some(version), Some(p)) => Some(Canary {
            version,
            basis_points: basis_points(p)
                .map_err(|e| ("canary_percent".to_owned(), e.to_string()))?,
        }),
        (Some(_), None) => {
            return Err((
                "canary_percent".into(),
                "missing: the share of callers the canary gets, e.g. 10".into(),
            ));
        }
        (None, Some(_)) => {
            return Err((
                "canary".into(),
                "missing: the canary version that canary_percent is for".into(),
            ));
        }
    };
    let sticky_by = match r.sticky_by.as_deref() {
        None | Some("subject") => StickyBy::Subject,
        Some("entity") => StickyBy::Entity,
        Some(other) => {
            return Err((
                "sticky_by".into(),
                format!(
                    "{other:?}: write \"subject\" (the caller's token subject) or \"entity\" (the entity key)"
                ),
            ));
        }
    };
    let table = RoutingTable {
        stable: r.stable,
        canary,
        shadows: r.shadow,
        pilots: r
            .pilot
            .into_iter()
            .map(|p| PilotVersion {
                version: p.version,
                groups: p.groups,
                auto: p.auto,
            })
            .collect(),
        sticky_by,
    };
    table
        .validate()
        .map_err(|e| (String::new(), e.to_string()))?;
    Ok(table)
}

//! Routing changes: the operations an admin (or an edited config file)
//! applies to a model's [`RoutingTable`], and the stored
//! [`RoutingDocument`] that keeps the current routing with a history of
//! every change (who, when, what, before and after), so a rollback is one
//! call and the history can be shown.

use serde::{Deserialize, Serialize};

use super::{Canary, PilotVersion, RoutingTable, RuleError, ShareError, basis_points, percent};

/// Changes kept in a model's history (oldest dropped first).
pub const HISTORY_LIMIT: usize = 200;

/// One operation on a model's routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum RoutingAction {
    /// Make `version` the stable version (a canary, pilot or shadow role it
    /// had is dropped).
    SetStable {
        /// The version.
        version: String,
    },
    /// Make `version` the canary at `percent` of callers (replacing another
    /// canary; a pilot or shadow role it had is dropped).
    SetCanary {
        /// The version.
        version: String,
        /// Share of callers, `(0, 100]`.
        percent: f64,
    },
    /// Change the canary's share.
    SetCanaryPercent {
        /// Share of callers, `(0, 100]`.
        percent: f64,
    },
    /// The canary becomes stable; nothing is canary after.
    Promote {},
    /// Stop the canary: its callers go back to stable.
    RemoveCanary {},
    /// Send a silent copy of every call to `version`.
    AddShadow {
        /// The version.
        version: String,
    },
    /// Stop shadowing `version`.
    RemoveShadow {
        /// The version.
        version: String,
    },
    /// Make `version` a pilot for `groups` (replacing its groups if it is
    /// one already).
    AddPilot {
        /// The version.
        version: String,
        /// Groups that reach it.
        groups: Vec<String>,
        /// Route members to it without asking (default true).
        #[serde(default = "super::yes")]
        auto: bool,
    },
    /// Stop the pilot of `version`.
    RemovePilot {
        /// The version.
        version: String,
    },
    /// Go back to the routing before the latest change.
    Rollback {},
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingChange {
    /// The document's revision this change produced.
    pub revision: i64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// Who: the caller's subject, or `config-file`.
    pub by: String,
    /// What, for a person ("canary '2' at 10% → 20%").
    pub what: String,
    /// Why, if the caller said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The routing before (None for the first).
    pub before: Option<RoutingTable>,
    /// The routing after.
    pub after: RoutingTable,
}

/// What the store keeps per model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingDocument {
    /// The routing served.
    pub current: RoutingTable,
    /// The config file's routing when it was last applied: a file edited
    /// since (while running, or while the gateway was down) is applied once,
    /// otherwise admin changes stand across restarts.
    pub from_file: RoutingTable,
    /// Changes, oldest first, at most [`HISTORY_LIMIT`].
    pub history: Vec<RoutingChange>,
}

/// Why a change cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// The action does not fit the current routing (e.g. promote without a
    /// canary).
    #[error("{0}")]
    Invalid(String),
    /// The percent is not a canary's share.
    #[error("percent: {0}")]
    Share(#[from] ShareError),
    /// The result would break a rule of [`RoutingTable::validate`].
    #[error("the change would leave an invalid routing: {0}")]
    Rule(#[from] RuleError),
}

fn remove_role(t: &mut RoutingTable, version: &str) -> Option<&'static str> {
    if t.canary.as_ref().is_some_and(|c| c.version == version) {
        t.canary = None;
        return Some("canary");
    }
    if let Some(i) = t.pilots.iter().position(|p| p.version == version) {
        t.pilots.remove(i);
        return Some("pilot");
    }
    if let Some(i) = t.shadows.iter().position(|s| s == version) {
        t.shadows.remove(i);
        return Some("shadow");
    }
    None
}

fn was(role: Option<&'static str>) -> String {
    role.map_or(String::new(), |r| format!(" (was {r})"))
}

fn nonempty(version: &str) -> Result<(), ChangeError> {
    if version.trim().is_empty() {
        Err(ChangeError::Invalid(
            "version: empty; name the model-server version, e.g. \"2\"".into(),
        ))
    } else {
        Ok(())
    }
}

impl RoutingAction {
    /// Versions this action brings into service (to check on the
    /// model-server before applying).
    pub fn new_versions(&self) -> Vec<&str> {
        match self {
            RoutingAction::SetStable { version }
            | RoutingAction::SetCanary { version, .. }
            | RoutingAction::AddShadow { version }
            | RoutingAction::AddPilot { version, .. } => vec![version.as_str()],
            _ => Vec::new(),
        }
    }

    /// The routing after this action, and what it did in words.
    ///
    /// # Errors
    /// [`ChangeError`] saying why it does not apply.
    pub fn apply(&self, doc: &RoutingDocument) -> Result<(RoutingTable, String), ChangeError> {
        let cur = &doc.current;
        let mut t = cur.clone();
        let what = match self {
            RoutingAction::SetStable { version } => {
                nonempty(version)?;
                if *version == cur.stable {
                    return Err(ChangeError::Invalid(format!(
                        "version '{version}' is already stable"
                    )));
                }
                let role = remove_role(&mut t, version);
                t.stable.clone_from(version);
                format!("stable '{}' → '{version}'{}", cur.stable, was(role))
            }
            RoutingAction::SetCanary {
                version,
                percent: p,
            } => {
                nonempty(version)?;
                let bp = basis_points(*p)?;
                if *version == cur.stable {
                    return Err(ChangeError::Invalid(format!(
                        "version '{version}' is stable; a canary is a different version"
                    )));
                }
                let replaced = cur.canary.as_ref().filter(|c| c.version != *version);
                let role = remove_role(&mut t, version);
                t.canary = Some(Canary {
                    version: version.clone(),
                    basis_points: bp,
                });
                match (replaced, role) {
                    (Some(old), _) => format!(
                        "canary '{}' at {} → '{version}' at {}",
                        old.version,
                        percent(old.basis_points),
                        percent(bp)
                    ),
                    (None, Some("canary")) => format!(
                        "canary '{version}' at {} → {}",
                        cur.canary
                            .as_ref()
                            .map_or(String::new(), |c| percent(c.basis_points)),
                        percent(bp)
                    ),
                    (None, role) => format!("canary '{version}' at {}{}", percent(bp), was(role)),
                }
            }
            RoutingAction::SetCanaryPercent { percent: p } => {
                let bp = basis_points(*p)?;
                let Some(c) = t.canary.as_mut() else {
                    return Err(ChangeError::Invalid(
                        "there is no canary; set one first (set_canary with a version)".into(),
                    ));
                };
                if c.basis_points == bp {
                    return Err(ChangeError::Invalid(format!(
                        "the canary is already at {}",
                        percent(bp)
                    )));
                }
                let from = c.basis_points;
                c.basis_points = bp;
                format!(
                    "canary '{}' at {} → {}",
                    c.version,
                    percent(from),
                    percent(bp)
                )
            }
            RoutingAction::Promote {} => {
                let Some(c) = t.canary.take() else {
                    return Err(ChangeError::Invalid("there is no canary to promote".into()));
                };
                let old = std::mem::replace(&mut t.stable, c.version.clone());
                format!(
                    "promoted canary '{}' (at {}) to stable; '{old}' is no longer served",
                    c.version,
                    percent(c.basis_points)
                )
            }
            RoutingAction::RemoveCanary {} => {
                let Some(c) = t.canary.take() else {
                    return Err(ChangeError::Invalid("there is no canary to remove".into()));
                };
                format!(
                    "removed canary '{}' (was at {}); its callers are back on stable '{}'",
                    c.version,
                    percent(c.basis_points),
                    t.stable
                )
            }
            RoutingAction::AddShadow { version } => {
                nonempty(version)?;
                if cur.shadows.contains(version) {
                    return Err(ChangeError::Invalid(format!(
                        "version '{version}' is already a shadow"
                    )));
                }
                if *version == cur.stable {
                    return Err(ChangeError::Invalid(format!(
                        "version '{version}' is stable; a shadow is a version callers do not get"
                    )));
                }
                let role = remove_role(&mut t, version);
                t.shadows.push(version.clone());
                format!("added shadow '{version}'{}", was(role))
            }
            RoutingAction::RemoveShadow { version } => {
                let Some(i) = t.shadows.iter().position(|s| s == version) else {
                    return Err(ChangeError::Invalid(format!(
                        "version '{version}' is not a shadow; shadows: {}",
                        list(&cur.shadows)
                    )));
                };
                t.shadows.remove(i);
                format!("removed shadow '{version}'")
            }
            RoutingAction::AddPilot {
                version,
                groups,
                auto,
            } => {
                nonempty(version)?;
                if groups.is_empty() || groups.iter().any(|g| g.trim().is_empty()) {
                    return Err(ChangeError::Invalid(
                        "groups: name at least one group, none empty".into(),
                    ));
                }
                if *version == cur.stable {
                    return Err(ChangeError::Invalid(format!(
                        "version '{version}' is stable, so everyone has it already"
                    )));
                }
                let role = remove_role(&mut t, version);
                t.pilots.push(PilotVersion {
                    version: version.clone(),
                    groups: groups.clone(),
                    auto: *auto,
                });
                let how = if *auto { "" } else { ", when asked for" };
                format!(
                    "pilot '{version}' for groups {}{how}{}",
                    groups.join(", "),
                    was(role)
                )
            }
            RoutingAction::RemovePilot { version } => {
                let Some(i) = t.pilots.iter().position(|p| p.version == *version) else {
                    return Err(ChangeError::Invalid(format!(
                        "version '{version}' is not a pilot; pilots: {}",
                        list(
                            &cur.pilots
                                .iter()
                                .map(|p| p.version.clone())
                                .collect::<Vec<_>>()
                        )
                    )));
                };
                t.pilots.remove(i);
                format!("removed pilot '{version}'")
            }
            RoutingAction::Rollback {} => {
                let Some(last) = doc.history.last() else {
                    return Err(ChangeError::Invalid(
                        "there is no change to roll back".into(),
                    ));
                };
                let Some(before) = &last.before else {
                    return Err(ChangeError::Invalid(
                        "the only change is the initial routing; there is nothing before it".into(),
                    ));
                };
                t = before.clone();
                format!(
                    "rolled back revision {} ({}) by {}",
                    last.revision, last.what, last.by
                )
            }
        };
        t.validate()?;
        Ok((t, what))
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl RoutingDocument {
    /// The first document: `table` from the config file.
    pub fn initial(table: RoutingTable, at_ms: u64) -> Self {
        RoutingDocument {
            current: table.clone(),
            from_file: table.clone(),
            history: vec![RoutingChange {
                revision: 1,
                at_ms,
                by: "config-file".to_owned(),
                what: "initial routing from the config file".to_owned(),
                reason: None,
                before: None,
                after: table,
            }],
        }
    }

    /// This document with `after` served, recorded as a change made by
    /// `by` at `at_ms` that becomes `revision`.
    pub fn with_change(
        &self,
        after: RoutingTable,
        what: String,
        by: &str,
        reason: Option<String>,
        at_ms: u64,
        revision: i64,
    ) -> Self {
        let mut next = self.clone();
        next.history.push(RoutingChange {
            revision,
            at_ms,
            by: by.to_owned(),
            what,
            reason,
            before: Some(self.current.clone()),
            after: after.clone(),
        });
        if next.history.len() > HISTORY_LIMIT {
            let extra = next.history.len() - HISTORY_LIMIT;
            next.history.drain(..extra);
        }
        next.current = after;
        next
    }
}

/// A short text of a table for logs and the CLI: `stable '1', canary '2'
/// at 10%, shadows '3', pilots '4' (pilot-x)`.
pub fn describe(t: &RoutingTable) -> String {
    let mut parts = vec![if t.stable.is_empty() {
        "stable = the model-server's default".to_owned()
    } else {
        format!("stable '{}'", t.stable)
    }];
    if let Some(c) = &t.canary {
        parts.push(format!(
            "canary '{}' at {}",
            c.version,
            percent(c.basis_points)
        ));
    }
    if !t.shadows.is_empty() {
        parts.push(format!("shadows {}", list(&t.shadows)));
    }
    for p in &t.pilots {
        parts.push(format!("pilot '{}' ({})", p.version, p.groups.join(", ")));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> RoutingDocument {
        RoutingDocument::initial(RoutingTable::stable("1"), 0)
    }

    fn step(d: &RoutingDocument, a: RoutingAction) -> RoutingDocument {
        let (t, what) = a.apply(d).unwrap();
        let rev = d.history.last().map_or(1, |c| c.revision + 1);
        d.with_change(t, what, "dana", None, 1, rev)
    }

    #[test]
    fn a_rollout_from_shadow_to_stable() {
        let d = doc();
        let d = step(
            &d,
            RoutingAction::AddShadow {
                version: "2".into(),
            },
        );
        assert_eq!(d.current.shadows, vec!["2".to_owned()]);
        let d = step(
            &d,
            RoutingAction::AddPilot {
                version: "2".into(),
                groups: vec!["pilot-x".into()],
                auto: true,
            },
        );
        assert!(d.current.shadows.is_empty());
        assert_eq!(
            d.history.last().unwrap().what,
            "pilot '2' for groups pilot-x (was shadow)"
        );
        let d = step(
            &d,
            RoutingAction::SetCanary {
                version: "2".into(),
                percent: 10.0,
            },
        );
        assert!(d.current.pilots.is_empty());
        let d = step(&d, RoutingAction::SetCanaryPercent { percent: 20.0 });
        assert_eq!(d.history.last().unwrap().what, "canary '2' at 10% → 20%");
        let d = step(&d, RoutingAction::Promote {});
        assert_eq!(d.current, RoutingTable::stable("2"));
        assert_eq!(d.history.len(), 6);
        assert_eq!(
            d.history.iter().map(|c| c.revision).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn rollback_restores_the_routing_before_the_latest_change() {
        let d = step(
            &doc(),
            RoutingAction::SetCanary {
                version: "2".into(),
                percent: 10.0,
            },
        );
        let before = d.current.clone();
        let d = step(&d, RoutingAction::SetCanaryPercent { percent: 50.0 });
        let d = step(&d, RoutingAction::Rollback {});
        assert_eq!(d.current, before);
        assert_eq!(
            d.history.last().unwrap().what,
            "rolled back revision 3 (canary '2' at 10% → 50%) by dana"
        );
        assert!(
            RoutingAction::Rollback {}
                .apply(&doc())
                .is_err_and(|e| e.to_string().contains("initial routing"))
        );
    }

    #[test]
    fn actions_that_do_not_fit_are_refused_with_a_reason() {
        let d = doc();
        let refused = |a: RoutingAction| a.apply(&d).unwrap_err().to_string();
        assert_eq!(
            refused(RoutingAction::Promote {}),
            "there is no canary to promote"
        );
        assert!(refused(RoutingAction::SetCanaryPercent { percent: 5.0 }).contains("no canary"));
        assert!(
            refused(RoutingAction::SetCanary {
                version: "1".into(),
                percent: 5.0
            })
            .contains("is stable")
        );
        assert!(
            refused(RoutingAction::SetCanary {
                version: "2".into(),
                percent: 0.0
            })
            .starts_with("percent:")
        );
        assert!(
            refused(RoutingAction::RemoveShadow {
                version: "9".into()
            })
            .contains("not a shadow")
        );
        assert!(
            refused(RoutingAction::AddPilot {
                version: "2".into(),
                groups: vec![],
                auto: true
            })
            .starts_with("groups:")
        );
        let unpinned = RoutingDocument::initial(RoutingTable::stable(""), 0);
        assert!(
            RoutingAction::AddShadow {
                version: "2".into()
            }
            .apply(&unpinned)
            .unwrap_err()
            .to_string()
            .contains("pinned stable")
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut d = step(
            &doc(),
            RoutingAction::SetCanary {
                version: "2".into(),
                percent: 1.0,
            },
        );
        for i in 0..(HISTORY_LIMIT + 10) {
            d = step(
                &d,
                RoutingAction::SetCanaryPercent {
                    percent: 2.0 + (i % 50) as f64,
                },
            );
        }
        assert_eq!(d.history.len(), HISTORY_LIMIT);
        assert_eq!(
            d.history.last().unwrap().revision,
            (HISTORY_LIMIT + 12) as i64
        );
    }

    #[test]
    fn actions_parse_from_json() {
        let a: RoutingAction =
            serde_json::from_str(r#"{"action": "set_canary", "version": "2", "percent": 10}"#)
                .unwrap();
        assert_eq!(
            a,
            RoutingAction::SetCanary {
                version: "2".into(),
                percent: 10.0
            }
        );
        assert!(serde_json::from_str::<RoutingAction>(r#"{"action": "promote", "x": 1}"#).is_err());
        assert!(serde_json::from_str::<RoutingAction>(r#"{"action": "launch"}"#).is_err());
    }
}

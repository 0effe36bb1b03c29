//! Who may call what: `[[auth.allow]]` rules per API (and, for predictions,
//! per model) name the groups and scopes that grant it; `[[auth.pilot]]`
//! entries close a whole model to all but their groups (pilots of one
//! version are routing, see `crate::rollout`). Nothing is allowed that no
//! rule grants (deny by default).

use super::Caller;

/// An API a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// Predict and PredictBatch.
    Predict,
    /// PushFeatures.
    Push,
    /// Feedback (ground truth).
    Feedback,
    /// The admin API.
    Admin,
    /// The admin API's reads (routing, shadow reports, refresh jobs,
    /// batches): what the console shows a viewer. A rule granting `admin`
    /// grants this too.
    View,
    /// Similarity lookups (`/v1/similar/{view}`, `Similar`).
    Similar,
}

impl Api {
    /// Parses the config name.
    pub fn named(s: &str) -> Option<Self> {
        Some(match s {
            "predict" => Api::Predict,
            "push" => Api::Push,
            "feedback" => Api::Feedback,
            "admin" => Api::Admin,
            "view" => Api::View,
            "similar" => Api::Similar,
            _ => return None,
        })
    }

    /// The config and metrics name.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Predict => "predict",
            Api::Push => "push",
            Api::Feedback => "feedback",
            Api::Admin => "admin",
            Api::View => "view",
            Api::Similar => "similar",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Api::Predict => "predict",
            Api::Push => "push features",
            Api::Feedback => "send feedback",
            Api::Admin => "use the admin API",
            Api::View => "read the admin API",
            Api::Similar => "look up similar entities",
        }
    }
}

/// One `[[auth.allow]]` rule: callers in any of `groups` (empty: any group)
/// holding any of `scopes` (empty: any scope) may call `api` (on `models`,
/// `None` = every model). At least one of the two lists is non-empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The API.
    pub api: Api,
    /// Models this rule covers (predict only); `None` = all.
    pub models: Option<Vec<String>>,
    /// Groups that qualify.
    pub groups: Vec<String>,
    /// Scopes that qualify.
    pub scopes: Vec<String>,
}

/// One `[[auth.pilot]]`: `model` is reachable only by callers in `groups`
/// (who still need an allow rule to predict). Pilots of one version are part
/// of the model's routing ([`crate::rollout`]), which can change at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pilot {
    /// The model.
    pub model: String,
    /// The pilot groups.
    pub groups: Vec<String>,
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// Predict with `model` (the version is the routing's business).
    Predict {
        /// The model.
        model: &'a str,
    },
    /// Push features to a view.
    Push,
    /// Send feedback.
    Feedback,
    /// Use the admin API.
    Admin,
    /// Read what the admin API shows.
    View,
    /// Look up similar entities.
    Similar,
}

impl Access<'_> {
    /// The API.
    pub fn api(&self) -> Api {
        match self {
            Access::Predict { .. } => Api::Predict,
            Access::Push => Api::Push,
            Access::Feedback => Api::Feedback,
            Access::Admin => Api::Admin,
            Access::View => Api::View,
            Access::Similar => Api::Similar,
        }
    }
}

/// A caller the policy refuses, with a message saying what it lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl From<&str> for Denied {
    fn from(message: &str) -> Self {
        Denied(message.to_owned())
    }
}

/// The access policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    pilots: Vec<Pilot>,
}

fn any_in(have: &[String], want: &[String]) -> bool {
    want.iter().any(|w| have.contains(w))
}

impl Policy {
    /// A policy (validated by the config loader).
    pub fn new(rules: Vec<Rule>, pilots: Vec<Pilot>) -> Self {
        Policy { rules, pilots }
    }

    /// Whether `caller` may do `access`.
    ///
    /// # Errors
    /// [`Denied`] saying what the caller lacks.
    pub fn check(&self, caller: &Caller, access: Access<'_>) -> Result<(), Denied> {
        let api = access.api();
        let who = &caller.subject;
        let target = match access {
            Access::Predict { model } => {
                for p in &self.pilots {
                    if p.model == model && !any_in(&caller.groups, &p.groups) {
                        return Err(Denied(format!(
                            "caller '{who}' is not in a pilot group of model '{model}'"
                        )));
                    }
                }
                format!(" with model '{model}'")
            }
            _ => String::new(),
        };
        let model = match access {
            Access::Predict { model, .. } => Some(model),
            _ => None,
        };
        let covering: Vec<&Rule> = self
            .rules
            .iter()
            // Whoever may change may also look.
            .filter(|r| r.api == api || (api == Api::View && r.api == Api::Admin))
            .filter(|r| match (&r.models, model) {
                (None, _) => true,
                (Some(ms), Some(m)) => ms.iter().any(|x| x == m),
                (Some(_), None) => false,
            })
            .collect();
        let verb = api.verb();
        if covering.is_empty() {
            return Err(Denied(format!(
                "caller '{who}' may not {verb}{target}: no access rule grants it"
            )));
        }
        let in_group = |r: &&&Rule| r.groups.is_empty() || any_in(&caller.groups, &r.groups);
        let has_scope = |r: &&&Rule| r.scopes.is_empty() || any_in(&caller.scopes, &r.scopes);
        if covering.iter().any(|r| in_group(&r) && has_scope(&r)) {
            return Ok(());
        }
        if !covering.iter().any(|r| in_group(&r)) {
            Err(Denied(format!(
                "caller '{who}' is not in a group allowed to {verb}{target}"
            )))
        } else {
            Err(Denied(format!(
                "caller '{who}' lacks a scope allowed to {verb}{target}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(sub: &str, groups: &[&str], scopes: &[&str]) -> Caller {
        Caller {
            subject: sub.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn policy() -> Policy {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Policy::new(
            vec![
                Rule {
                    api: Api::Predict,
                    models: None,
                    groups: s(&["fraud-team"]),
                    scopes: s(&["predict"]),
                },
                Rule {
                    api: Api::Predict,
                    models: Some(s(&["churn"])),
                    groups: s(&["growth"]),
                    scopes: vec![],
                },
                Rule {
                    api: Api::Push,
                    models: None,
                    groups: vec![],
                    scopes: s(&["push"]),
                },
            ],
            vec![Pilot {
                model: "beta".into(),
                groups: s(&["beta-testers"]),
            }],
        )
    }

    fn predict(model: &str) -> Access<'_> {
        Access::Predict { model }
    }

    #[test]
    fn admin_rules_grant_reading_and_view_rules_only_reading() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = Policy::new(
            vec![
                Rule {
                    api: Api::Admin,
                    models: None,
                    groups: s(&["ops"]),
                    scopes: s(&["admin"]),
                },
                Rule {
                    api: Api::View,
                    models: None,
                    groups: s(&["fraud-team"]),
                    scopes: vec![],
                },
            ],
            vec![],
        );
        let admin = caller("ann", &["ops"], &["admin"]);
        let viewer = caller("vic", &["fraud-team"], &["predict"]);
        let outsider = caller("oz", &["growth"], &["admin"]);
        assert_eq!(p.check(&admin, Access::View), Ok(()));
        assert_eq!(p.check(&admin, Access::Admin), Ok(()));
        assert_eq!(p.check(&viewer, Access::View), Ok(()));
        assert!(p.check(&viewer, Access::Admin).is_err());
        assert_eq!(
            p.check(&outsider, Access::View),
            Err(Denied(
                "caller 'oz' is not in a group allowed to read the admin API".into()
            ))
        );
    }

    #[test]
    fn groups_and_scopes_grant_apis() {
        let p = policy();
        let svc = caller("svc-a", &["fraud-team"], &["predict"]);
        assert_eq!(p.check(&svc, predict("fraud_detector")), Ok(()));
        assert_eq!(
            p.check(&svc, Access::Push),
            Err("caller 'svc-a' lacks a scope allowed to push features".into())
        );
        let other = caller("svc-b", &["marketing"], &["predict"]);
        assert_eq!(
            p.check(&other, predict("fraud_detector")),
            Err(
                "caller 'svc-b' is not in a group allowed to predict with model 'fraud_detector'"
                    .into()
            )
        );
        let no_scope = caller("svc-c", &["fraud-team"], &["feedback"]);
        assert!(
            p.check(&no_scope, predict("fraud_detector"))
                .is_err_and(|m| m.0.contains("lacks a scope"))
        );
        // A rule limited to a model covers only that model.
        let growth = caller("g", &["growth"], &[]);
        assert_eq!(p.check(&growth, predict("churn")), Ok(()));
        assert!(p.check(&growth, predict("fraud_detector")).is_err());
        // No rule at all: denied by default.
        assert_eq!(
            p.check(&svc, Access::Admin),
            Err("caller 'svc-a' may not use the admin API: no access rule grants it".into())
        );
    }

    #[test]
    fn similarity_lookups_are_their_own_api() {
        let rules = vec![Rule {
            api: Api::Similar,
            models: None,
            groups: vec!["search".into()],
            scopes: vec![],
        }];
        let p = Policy::new(rules, vec![]);
        assert_eq!(
            p.check(&caller("s", &["search"], &[]), Access::Similar),
            Ok(())
        );
        assert_eq!(
            p.check(&caller("f", &["fraud-team"], &["predict"]), Access::Similar),
            Err("caller 'f' is not in a group allowed to look up similar entities".into())
        );
        // Granting similar grants nothing else.
        assert!(
            p.check(&caller("s", &["search"], &[]), Access::Push)
                .is_err()
        );
        assert_eq!(Api::named("similar"), Some(Api::Similar));
    }

    #[test]
    fn pilots_are_reachable_only_by_their_groups() {
        let p = policy();
        let svc = caller("svc-a", &["fraud-team"], &["predict"]);
        assert_eq!(p.check(&svc, predict("fraud_detector")), Ok(()));
        // A whole-model pilot; pilot membership alone does not grant predict.
        let tester = caller("t", &["beta-testers"], &["predict"]);
        assert!(
            p.check(&svc, predict("beta"))
                .is_err_and(|m| m.0.contains("pilot group of model 'beta'"))
        );
        assert!(
            p.check(&tester, predict("beta"))
                .is_err_and(|m| m.0.contains("not in a group allowed"))
        );
    }
}

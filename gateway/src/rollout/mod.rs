//! Rollout stages per model: which version answers a call. One stable
//! version; optionally a canary with a share of callers; pilot versions only
//! for named groups; shadow versions that get a silent copy of the input.
//!
//! - [`RoutingTable`] is the routing of one model and [`choose`] the
//!   decision for one call: explicit version (if the caller may have it) →
//!   pilot (caller in its groups) → canary (sticky bucket below its share) →
//!   stable.
//! - [`bucket`] makes the split sticky: a stable hash of the model and the
//!   caller's subject (or entity key) gives a bucket in `0..10_000`; the
//!   canary owns the buckets below its share, so raising the share only moves
//!   callers from stable to canary, never back and forth.
//! - [`change`]: the operations an admin applies (weights, promote, shadows,
//!   pilots, rollback) and the stored document with its history.
//! - [`live`]: the routing the gateway serves from, kept in the store (shared
//!   by replicas, compare-and-set), polled, and fed by the config file.
//! - [`shadow`]: the bounded, off-the-hot-path copies to shadow versions.
//! - [`report`]: shadow-vs-primary comparison from the prediction log.
//! - [`stats`]: the routing and shadow counts `/metrics` shows.
//! - [`settings`]: `[model.routing]` in the config file, validated.

pub mod change;
pub mod live;
pub mod report;
pub mod settings;
pub mod shadow;
pub mod stats;

use serde::{Deserialize, Serialize};

/// Buckets of the sticky split: a share is kept in hundredths of a percent.
pub const BUCKETS: u32 = 10_000;

/// What decides a caller's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StickyBy {
    /// The token's subject: one caller sees one version.
    #[default]
    Subject,
    /// The entity key: one customer (say) is scored by one version,
    /// whoever asks.
    Entity,
}

impl StickyBy {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StickyBy::Subject => "subject",
            StickyBy::Entity => "entity",
        }
    }
}

/// A canary version and its share of callers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The version.
    pub version: String,
    /// Its share in hundredths of a percent (`1000` = 10 %), `1..=10_000`.
    pub basis_points: u32,
}

/// A pilot version: reachable only by callers in `groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PilotVersion {
    /// The version.
    pub version: String,
    /// The pilot groups.
    pub groups: Vec<String>,
    /// Whether members are routed to it without asking (`false`: only when
    /// they ask for the version explicitly).
    #[serde(default = "yes")]
    pub auto: bool,
}

fn yes() -> bool {
    true
}

/// The routing of one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    /// The version everyone gets by default ("": the model-server's default;
    /// only without canary, pilots and shadows).
    pub stable: String,
    /// The canary, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Versions that get a silent copy of every call.
    #[serde(default)]
    pub shadows: Vec<String>,
    /// Versions only some groups reach.
    #[serde(default)]
    pub pilots: Vec<PilotVersion>,
    /// What the sticky split hashes.
    #[serde(default)]
    pub sticky_by: StickyBy,
}

impl RoutingTable {
    /// Only a stable version.
    pub fn stable(version: &str) -> Self {
        RoutingTable {
            stable: version.to_owned(),
            canary: None,
            shadows: Vec::new(),
            pilots: Vec::new(),
            sticky_by: StickyBy::Subject,
        }
    }

    /// Every version that answers callers (stable, canary, pilots), each
    /// once, stable first.
    pub fn serving_versions(&self) -> Vec<&str> {
        let mut out = vec![self.stable.as_str()];
        if let Some(c) = &self.canary {
            out.push(c.version.as_str());
        }
        out.extend(self.pilots.iter().map(|p| p.version.as_str()));
        out.dedup();
        out
    }

    /// Every version named, with its role (`stable`, `canary`, `pilot`,
    /// `shadow`).
    pub fn roles(&self) -> Vec<(&str, &'static str)> {
        let mut out = vec![(self.stable.as_str(), "stable")];
        if let Some(c) = &self.canary {
            out.push((c.version.as_str(), "canary"));
        }
        out.extend(self.pilots.iter().map(|p| (p.version.as_str(), "pilot")));
        out.extend(self.shadows.iter().map(|v| (v.as_str(), "shadow")));
        out
    }

    /// The role of `version`, if it has one.
    pub fn role_of(&self, version: &str) -> Option<&'static str> {
        self.roles()
            .into_iter()
            .find(|(v, _)| *v == version)
            .map(|(_, r)| r)
    }

    /// Checks the table's rules: each version has one role; canary share
    /// `1..=10_000`; shadows, canary and pilots need a pinned stable version
    /// (else the server's default could be any of them); pilots name groups.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), RuleError> {
        let roles = self.roles();
        for (i, (v, role)) in roles.iter().enumerate() {
            if i > 0 && v.is_empty() {
                return Err(RuleError::EmptyVersion { role });
            }
            if let Some((_, other)) = roles[..i].iter().find(|(w, _)| w == v) {
                return Err(RuleError::TwoRoles {
                    version: (*v).to_owned(),
                    first: other,
                    second: role,
                });
            }
        }
        if self.stable.is_empty() && roles.len() > 1 {
            return Err(RuleError::UnpinnedStable);
        }
        if let Some(c) = &self.canary
            && !(1..=BUCKETS).contains(&c.basis_points)
        {
            return Err(RuleError::CanaryShare {
                share: percent(c.basis_points),
            });
        }
        if let Some(p) = self.pilots.iter().find(|p| p.groups.is_empty()) {
            return Err(RuleError::PilotWithoutGroups {
                version: p.version.clone(),
            });
        }
        Ok(())
    }
}

/// A rule of [`RoutingTable::validate`] that a table breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A canary, pilot or shadow named `""`.
    #[error("a {role} version cannot be \"\"")]
    EmptyVersion {
        /// The role.
        role: &'static str,
    },
    /// One version in two roles.
    #[error("version {version:?} cannot be both {first} and {second}; a version has one role")]
    TwoRoles {
        /// The version.
        version: String,
        /// Its first role.
        first: &'static str,
        /// Its second role.
        second: &'static str,
    },
    /// A canary, pilot or shadow beside an unpinned stable version.
    #[error(
        "a canary, pilot or shadow needs a pinned stable version (stable = \"1\"), so default traffic never lands on one of them"
    )]
    UnpinnedStable,
    /// A canary share outside 1..=10,000 basis points.
    #[error("canary share {share} is outside 0.01 %..100 %")]
    CanaryShare {
        /// The share, as a percentage.
        share: String,
    },
    /// A pilot version without groups.
    #[error("pilot version {version:?} names no groups")]
    PilotWithoutGroups {
        /// The version.
        version: String,
    },
}

/// A share in percent that cannot be a canary's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// Not a number in `(0, 100]` (the number as given).
    #[error("{0} is not a share in percent above 0 and at most 100")]
    OutOfRange(String),
    /// Below one basis point (the number as given).
    #[error("{0} % is below the smallest share, 0.01 %")]
    TooSmall(String),
}

/// `1000` → `"10%"`, `1250` → `"12.5%"`.
pub fn percent(basis_points: u32) -> String {
    let whole = basis_points / 100;
    let frac = basis_points % 100;
    if frac == 0 {
        format!("{whole}%")
    } else if frac.is_multiple_of(10) {
        format!("{whole}.{}%", frac / 10)
    } else {
        format!("{whole}.{frac:02}%")
    }
}

/// A share given in percent (config and admin API) as basis points.
///
/// # Errors
/// When not a number in `(0, 100]` with at most two decimals' worth of
/// precision.
pub fn basis_points(percent: f64) -> Result<u32, ShareError> {
    if !percent.is_finite() || percent <= 0.0 || percent > 100.0 {
        return Err(ShareError::OutOfRange(percent.to_string()));
    }
    let bp = (percent * 100.0).round();
    if bp < 1.0 {
        return Err(ShareError::TooSmall(percent.to_string()));
    }
    // In range: 1.0 ..= 10_000.0.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked to be in 1..=10_000 above"
    )]
    Ok(bp as u32)
}

/// How the answering version was chosen; logged with every prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// The stable version.
    Stable,
    /// The canary, by the caller's bucket.
    Canary,
    /// A pilot version, for a member of its groups.
    Pilot,
    /// The version the caller asked for.
    Explicit,
    /// A silent copy (never answers a caller).
    Shadow,
}

impl RouteKind {
    /// The stable name (`stable`, `canary`, `pilot`, `explicit`, `shadow`).
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Stable => "stable",
            RouteKind::Canary => "canary",
            RouteKind::Pilot => "pilot",
            RouteKind::Explicit => "explicit",
            RouteKind::Shadow => "shadow",
        }
    }
}

/// Who is calling, as far as routing cares.
#[derive(Debug, Clone, Copy)]
pub struct RouteKey<'a> {
    /// The token's subject.
    pub subject: &'a str,
    /// The caller's groups.
    pub groups: &'a [String],
    /// The entity key (values joined in the entity's key order).
    pub entity: &'a str,
    /// The version asked for ("" = let the routing choose).
    pub explicit: &'a str,
}

/// Why a call cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The caller asked for a pilot version it is not a member of.
    #[error("caller '{subject}' is not in a pilot group of model '{model}' version '{version}'")]
    NotPilot {
        /// The caller.
        subject: String,
        /// The model.
        model: String,
        /// The version.
        version: String,
    },
    /// The caller asked for a version the routing does not serve.
    #[error(
        "model '{model}' does not serve version '{version}' to callers{detail}; it serves {served}"
    )]
    NotServed {
        /// The model.
        model: String,
        /// The version.
        version: String,
        /// E.g. " (it runs only as a shadow)".
        detail: String,
        /// The served versions with their roles.
        served: String,
    },
}

/// The sticky bucket (`0..BUCKETS`) of `key` for `model`: FNV-1a over the
/// model name, a separator and the key, then the SplitMix64 finaliser so
/// close keys (`c-0001`, `c-0002`) spread evenly. Fixed by this code, not by
/// a library or the Rust version, so every replica and every release puts a
/// caller in the same bucket.
pub fn bucket(model: &str, key: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in model.as_bytes().iter().chain(&[0xff]).chain(key.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // The remainder is below BUCKETS, so it fits.
    u32::try_from(h % u64::from(BUCKETS)).unwrap_or(0)
}

/// The version that answers this call and why.
///
/// # Errors
/// [`RouteError`] when the caller asked for a version it may not have.
pub fn choose<'t>(
    table: &'t RoutingTable,
    model: &str,
    key: RouteKey<'_>,
) -> Result<(&'t str, RouteKind), RouteError> {
    let member = |p: &PilotVersion| p.groups.iter().any(|g| key.groups.contains(g));
    if !key.explicit.is_empty() {
        let v = key.explicit;
        if v == table.stable || table.canary.as_ref().is_some_and(|c| c.version == v) {
            let version = if v == table.stable {
                table.stable.as_str()
            } else {
                table.canary.as_ref().map_or("", |c| c.version.as_str())
            };
            return Ok((version, RouteKind::Explicit));
        }
        if let Some(p) = table.pilots.iter().find(|p| p.version == v) {
            return if member(p) {
                Ok((p.version.as_str(), RouteKind::Explicit))
            } else {
                Err(RouteError::NotPilot {
                    subject: key.subject.to_owned(),
                    model: model.to_owned(),
                    version: v.to_owned(),
                })
            };
        }
        let detail = if table.shadows.iter().any(|s| s == v) {
            " (it runs only as a silent shadow)".to_owned()
        } else {
            String::new()
        };
        let served = {
            let mut parts = vec![format!("'{}' (stable)", table.stable)];
            if let Some(c) = &table.canary {
                parts.push(format!("'{}' (canary)", c.version));
            }
            parts.join(" and ")
        };
        return Err(RouteError::NotServed {
            model: model.to_owned(),
            version: v.to_owned(),
            detail,
            served,
        });
    }
    if let Some(p) = table.pilots.iter().find(|p| p.auto && member(p)) {
        return Ok((p.version.as_str(), RouteKind::Pilot));
    }
    if let Some(c) = &table.canary {
        let sticky = match table.sticky_by {
            StickyBy::Subject => key.subject,
            StickyBy::Entity => key.entity,
        };
        if bucket(model, sticky) < c.basis_points {
            return Ok((c.version.as_str(), RouteKind::Canary));
        }
    }
    Ok((table.stable.as_str(), RouteKind::Stable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(canary_bp: u32) -> RoutingTable {
        RoutingTable {
            stable: "1".into(),
            canary: Some(Canary {
                version: "2".into(),
                basis_points: canary_bp,
            }),
            shadows: vec!["3".into()],
            pilots: vec![PilotVersion {
                version: "4".into(),
                groups: vec!["pilot".into()],
                auto: true,
            }],
            sticky_by: StickyBy::Subject,
        }
    }

    fn key<'a>(subject: &'a str, groups: &'a [String], explicit: &'a str) -> RouteKey<'a> {
        RouteKey {
            subject,
            groups,
            entity: "c-1",
            explicit,
        }
    }

    #[test]
    fn canary_share_is_close_to_its_weight_and_sticky() {
        let t = table(1000);
        let callers: Vec<String> = (0..10_000).map(|i| format!("svc-{i}")).collect();
        let canary = callers
            .iter()
            .filter(|c| choose(&t, "m", key(c, &[], "")) == Ok(("2", RouteKind::Canary)))
            .count();
        let share = canary as f64 / 100.0;
        assert!((share - 10.0).abs() <= 1.5, "canary share {share} %");
        for c in callers.iter().take(500) {
            let first = choose(&t, "m", key(c, &[], ""));
            for _ in 0..3 {
                assert_eq!(choose(&t, "m", key(c, &[], "")), first);
            }
        }
    }

    #[test]
    fn raising_the_weight_only_moves_stable_callers() {
        let (low, high) = (table(1000), table(2000));
        let mut moved = 0;
        for i in 0..10_000 {
            let c = format!("user-{i}");
            let before = choose(&low, "m", key(&c, &[], "")).map(|x| x.1);
            let after = choose(&high, "m", key(&c, &[], "")).map(|x| x.1);
            if before == Ok(RouteKind::Canary) {
                assert_eq!(after, Ok(RouteKind::Canary), "{c} moved back to stable");
            } else if after == Ok(RouteKind::Canary) {
                moved += 1;
            }
        }
        assert!((800..=1200).contains(&moved), "{moved} callers moved");
    }

    #[test]
    fn pilots_explicit_versions_and_shadows() {
        let t = table(1);
        let pilot = vec!["pilot".to_owned()];
        assert_eq!(
            choose(&t, "m", key("a", &pilot, "")),
            Ok(("4", RouteKind::Pilot))
        );
        assert_eq!(
            choose(&t, "m", key("a", &pilot, "4")),
            Ok(("4", RouteKind::Explicit))
        );
        assert_eq!(
            choose(&t, "m", key("b", &[], "4")),
            Err(RouteError::NotPilot {
                subject: "b".into(),
                model: "m".into(),
                version: "4".into()
            })
        );
        assert_eq!(
            choose(&t, "m", key("b", &[], "2")),
            Ok(("2", RouteKind::Explicit))
        );
        let e = choose(&t, "m", key("b", &[], "3")).map(|x| x.0);
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("model 'm' does not serve version '3' to callers (it runs only as a silent shadow); it serves '1' (stable) and '2' (canary)".to_owned())
        );
        let mut manual = t.clone();
        manual.pilots[0].auto = false;
        assert_eq!(
            choose(&manual, "m", key("zz-not-canary", &pilot, "")).map(|x| x.1),
            choose(&manual, "m", key("zz-not-canary", &[], "")).map(|x| x.1)
        );
    }

    #[test]
    fn entity_stickiness_ignores_the_subject() {
        let mut t = table(5000);
        t.sticky_by = StickyBy::Entity;
        let first = choose(&t, "m", key("a", &[], ""));
        for s in ["b", "c", "d", "e", "f"] {
            assert_eq!(choose(&t, "m", key(s, &[], "")), first);
        }
    }

    #[test]
    fn tables_are_validated() {
        assert_eq!(table(1000).validate(), Ok(()));
        let mut t = table(1000);
        t.shadows.push("2".into());
        assert_eq!(
            t.validate().map_err(|e| e.to_string()),
            Err("version \"2\" cannot be both canary and shadow; a version has one role".into())
        );
        let mut t = table(1000);
        t.stable = String::new();
        assert_eq!(t.validate(), Err(RuleError::UnpinnedStable));
        assert_eq!(RoutingTable::stable("").validate(), Ok(()));
        let mut t = table(0);
        assert!(
            t.validate()
                .is_err_and(|e| e.to_string().contains("outside"))
        );
        t = table(1000);
        t.pilots[0].groups.clear();
        assert!(
            t.validate()
                .is_err_and(|e| e.to_string().contains("names no groups"))
        );
    }

    #[test]
    fn shares_convert_both_ways() {
        assert_eq!(basis_points(10.0), Ok(1000));
        assert_eq!(basis_points(12.5), Ok(1250));
        assert_eq!(basis_points(0.01), Ok(1));
        assert_eq!(basis_points(100.0), Ok(10_000));
        assert!(basis_points(0.0).is_err());
        assert!(basis_points(0.001).is_err());
        assert!(basis_points(101.0).is_err());
        assert!(basis_points(f64::NAN).is_err());
        assert_eq!(percent(1000), "10%");
        assert_eq!(percent(1250), "12.5%");
        assert_eq!(percent(1), "0.01%");
    }

    #[test]
    fn buckets_are_fixed_by_this_code() {
        // A change here re-buckets every caller of every deployment.
        assert_eq!(
            bucket("fraud_detector", "svc-a"),
            bucket("fraud_detector", "svc-a")
        );
        assert_ne!(bucket("fraud_detector", "svc-a"), bucket("other", "svc-a"));
        let pinned: Vec<u32> = ["a", "b", "c"].iter().map(|k| bucket("m", k)).collect();
        assert_eq!(pinned, vec![9754, 5191, 4363]);
    }
}

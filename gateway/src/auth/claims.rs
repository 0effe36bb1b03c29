//! The token's JSON, decoded strictly: a duplicate member anywhere (header or
//! claims) fails the token, registered claims must have their RFC 7519 types
//! (`exp`/`nbf`/`iat` integer NumericDates, `iss`/`sub` strings, `aud` a string
//! or an array of strings), and the caller's groups and scopes are read from
//! configurable claim paths.

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A JSON value decoded with every object's members unique: serde_json's
/// `Value` keeps the last of duplicate members, which lets a token say two
/// things at once (`"sub":"a", ..., "sub":"admin"`). This refuses it.
#[derive(Debug, Clone, PartialEq)]
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                // The name is the sender's text: not echoed.
                return Err(A::Error::custom("duplicate member in a JSON object"));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// The claims of a token: a JSON object with unique members. Handed to
/// `jsonwebtoken::decode`, which only decodes it after the signature checked.
#[derive(Debug, Clone)]
pub struct TokenClaims(pub Map<String, Value>);

impl<'de> Deserialize<'de> for TokenClaims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StrictValue::deserialize(d)?.0 {
            Value::Object(m) => Ok(TokenClaims(m)),
            _ => Err(D::Error::custom("the claims are not a JSON object")),
        }
    }
}

/// The registered claims the gateway relies on, with their RFC 7519 types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// `iss`: a single string.
    pub iss: String,
    /// `sub`: a non-empty string.
    pub sub: String,
    /// `aud`: one or more audiences.
    pub aud: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// `nbf`, when present.
    pub nbf: Option<u64>,
    /// `iat`, when present.
    pub iat: Option<u64>,
}

/// A claim that is missing or does not have the type it must have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("claim '{claim}' {problem}")]
pub struct ClaimError {
    /// The claim (or the path into the claims).
    pub claim: String,
    /// What is wrong with it.
    pub problem: ClaimProblem,
}

/// What is wrong with a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimProblem {
    /// Absent.
    #[error("is missing")]
    Missing,
    /// Not a string, or empty.
    #[error("is not a non-empty string")]
    NotNonEmptyString,
    /// Not a number.
    #[error("is not a number")]
    NotNumber,
    /// A number, but not whole seconds.
    #[error("is not a whole number of seconds")]
    NotWholeSeconds,
    /// Neither a string nor an array.
    #[error("is not a string or an array of strings")]
    NotStrings,
    /// An array holding something other than strings.
    #[error("holds something other than strings")]
    NotAllStrings,
}

impl ClaimError {
    /// `problem` with `claim`.
    pub fn new(claim: &str, problem: ClaimProblem) -> Self {
        Self {
            claim: claim.to_owned(),
            problem,
        }
    }
}

impl Registered {
    /// Reads and type-checks the registered claims.
    ///
    /// # Errors
    /// The first claim that is missing or mistyped.
    pub fn from_claims(c: &Map<String, Value>) -> Result<Self, ClaimError> {
        let string = |name: &str| match c.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(ClaimError::new(name, ClaimProblem::NotNonEmptyString)),
            None => Err(ClaimError::new(name, ClaimProblem::Missing)),
        };
        let date = |name: &str| match c.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| ClaimError::new(name, ClaimProblem::NotWholeSeconds)),
            Some(_) => Err(ClaimError::new(name, ClaimProblem::NotNumber)),
        };
        let not_strings = || ClaimError::new("aud", ClaimProblem::NotStrings);
        let aud = match c.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(not_strings)?,
            Some(_) => return Err(not_strings()),
            None => return Err(ClaimError::new("aud", ClaimProblem::Missing)),
        };
        Ok(Registered {
            iss: string("iss")?,
            sub: string("sub")?,
            aud,
            exp: date("exp")?.ok_or_else(|| ClaimError::new("exp", ClaimProblem::Missing))?,
            nbf: date("nbf")?,
            iat: date("iat")?,
        })
    }
}

/// Where in the claims a list lives: a top-level claim name (`groups`,
/// `roles`, `scp`, even one with dots such as a namespaced
/// `https://example.com/groups`), else a dotted path into nested objects
/// (Keycloak's `realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(String);

impl ClaimPath {
    /// A path; `None` when empty or with an empty segment.
    pub fn new(path: &str) -> Option<Self> {
        (!path.is_empty() && path.split('.').all(|s| !s.is_empty()))
            .then(|| ClaimPath(path.to_owned()))
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The strings at this path: an array of strings, or a string split at
    /// spaces (OAuth's `scope`). Absent = empty.
    ///
    /// # Errors
    /// When the value has another type.
    pub fn strings(&self, claims: &Map<String, Value>) -> Result<Vec<String>, ClaimError> {
        let value = match claims.get(&self.0) {
            Some(v) => Some(v),
            None => {
                let mut parts = self.0.split('.');
                let first = parts.next().and_then(|p| claims.get(p));
                parts
                    .try_fold(first, |v, p| Some(v.and_then(|v| v.get(p))))
                    .flatten()
            }
        };
        match value {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(s
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ClaimError::new(&self.0, ClaimProblem::NotAllStrings)),
            Some(_) => Err(ClaimError::new(&self.0, ClaimProblem::NotStrings)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Result<TokenClaims, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn duplicate_members_are_refused_at_any_depth() {
        assert!(claims(r#"{"sub":"a","exp":1}"#).is_ok());
        let top = claims(r#"{"sub":"a","exp":1,"sub":"admin"}"#).err();
        assert!(top.is_some_and(|e| e.to_string().contains("duplicate member")));
        assert!(claims(r#"{"realm_access":{"roles":["a"],"roles":["admin"]}}"#).is_err());
        assert!(claims(r#"{"groups":["a"],"groups":["admin"]}"#).is_err());
        assert!(claims(r#"["not", "an", "object"]"#).is_err());
    }

    #[test]
    fn a_derived_struct_refuses_duplicate_fields_too() {
        // The typed header/claims structs serde derives (without `flatten`)
        // refuse a repeated field; this pins the serde_json behaviour we rely on.
        #[derive(Debug, serde::Deserialize)]
        #[expect(dead_code, reason = "only decoding is under test")]
        struct Typed {
            sub: String,
        }
        let e = serde_json::from_str::<Typed>(r#"{"sub":"a","sub":"b"}"#).err();
        assert!(e.is_some_and(|e| e.to_string().contains("duplicate field `sub`")));
    }

    #[test]
    fn registered_claims_must_have_their_types() {
        let ok = claims(r#"{"iss":"i","sub":"s","aud":["x","y"],"exp":10,"iat":5}"#)
            .map(|c| Registered::from_claims(&c.0));
        assert!(matches!(
            ok,
            Ok(Ok(Registered {
                exp: 10,
                iat: Some(5),
                ..
            }))
        ));
        for (json, want) in [
            (
                r#"{"iss":"i","sub":"s","aud":"x","exp":"10"}"#,
                "claim 'exp' is not a number",
            ),
            (
                r#"{"iss":"i","sub":"s","aud":"x","exp":10,"nbf":"1"}"#,
                "claim 'nbf' is not a number",
            ),
            (
                r#"{"iss":"i","sub":"s","aud":"x","exp":10.5}"#,
                "claim 'exp' is not a whole number",
            ),
            (
                r#"{"iss":["i"],"sub":"s","aud":"x","exp":10}"#,
                "claim 'iss' is not a non-empty string",
            ),
            (
                r#"{"iss":"i","aud":"x","exp":10}"#,
                "claim 'sub' is missing",
            ),
            (
                r#"{"iss":"i","sub":"s","exp":10}"#,
                "claim 'aud' is missing",
            ),
            (
                r#"{"iss":"i","sub":"s","aud":[1],"exp":10}"#,
                "claim 'aud' is not a string",
            ),
            (
                r#"{"iss":"i","sub":"s","aud":"x"}"#,
                "claim 'exp' is missing",
            ),
        ] {
            let got = claims(json).map(|c| Registered::from_claims(&c.0));
            match got {
                Ok(Err(e)) => assert!(e.to_string().starts_with(want), "{json}: {e}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn groups_and_scopes_come_from_configurable_paths() {
        let c = claims(
            r#"{"groups":["g1","g2"],"scope":"predict  feedback","scp":["a"],
                "realm_access":{"roles":["r1"]},"https://x.example/groups":["n1"],"bad":3}"#,
        )
        .map(|c| c.0)
        .unwrap_or_default();
        let at = |p: &str| ClaimPath::new(p).map(|p| p.strings(&c));
        assert_eq!(at("groups"), Some(Ok(vec!["g1".into(), "g2".into()])));
        assert_eq!(
            at("scope"),
            Some(Ok(vec!["predict".into(), "feedback".into()]))
        );
        assert_eq!(at("scp"), Some(Ok(vec!["a".into()])));
        assert_eq!(at("realm_access.roles"), Some(Ok(vec!["r1".into()])));
        assert_eq!(at("https://x.example/groups"), Some(Ok(vec!["n1".into()])));
        assert_eq!(at("roles"), Some(Ok(vec![])));
        assert!(matches!(at("bad"), Some(Err(_))));
        assert!(ClaimPath::new("a..b").is_none());
    }
}

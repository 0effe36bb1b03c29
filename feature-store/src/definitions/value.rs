//! Feature types and typed values: what a feature holds and the default it takes
//! when its value is missing or stale.

use std::fmt;

use serde::Deserialize;

/// The type of one feature, as written in a definition file (`type = "float32"`,
/// `type = "vector(64)"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum FeatureType {
    /// 32-bit float.
    Float32,
    /// 64-bit float.
    Float64,
    /// 64-bit signed integer.
    Int64,
    /// `true` / `false`.
    Bool,
    /// UTF-8 text.
    String,
    /// A fixed number (1 to [`MAX_VECTOR_DIMENSION`]) of finite float32
    /// values, e.g. an embedding.
    Vector(u16),
}

/// The longest vector a feature may hold.
pub const MAX_VECTOR_DIMENSION: u16 = 4096;

/// A vector written as text: `n` finite numbers separated by spaces and/or
/// commas, optionally inside `[ ]` (a refresh file's cell, a pushed value);
/// the reason when it is not one.
///
/// # Errors
/// Which component is not a finite number, or how many there are.
pub fn parse_vector(text: &str, n: u16) -> Result<Vec<f32>, String> {
    let inner = text.trim();
    let inner = inner
        .strip_prefix('[')
        .and_then(|c| c.strip_suffix(']'))
        .unwrap_or(inner);
    let mut values = Vec::with_capacity(usize::from(n));
    for (i, part) in inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        match part.parse::<f32>() {
            Ok(x) if x.is_finite() => values.push(x),
            Ok(_) => {
                return Err(format!(
                    "component {} is {part}, not a finite number",
                    i + 1
                ));
            }
            Err(_) => return Err(format!("component {} is {part:?}, not a number", i + 1)),
        }
    }
    if values.len() != usize::from(n) {
        return Err(format!(
            "has {} components; the feature is vector({n})",
            values.len()
        ));
    }
    Ok(values)
}

impl TryFrom<String> for FeatureType {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Ok(match name.as_str() {
            "float32" => FeatureType::Float32,
            "float64" => FeatureType::Float64,
            "int64" => FeatureType::Int64,
            "bool" => FeatureType::Bool,
            "string" => FeatureType::String,
            other => {
                let dimension = other
                    .strip_prefix("vector(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .and_then(|n| n.trim().parse::<u16>().ok())
                    .filter(|n| (1..=MAX_VECTOR_DIMENSION).contains(n));
                match dimension {
                    Some(n) => FeatureType::Vector(n),
                    None => {
                        return Err(format!(
                            "unknown type {other:?}: expected float32, float64, int64, bool, string or vector(N) with N from 1 to {MAX_VECTOR_DIMENSION}"
                        ));
                    }
                }
            }
        })
    }
}

impl FeatureType {
    /// The name used in definition files; `vector` without its dimension
    /// (the `Display` form has it).
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureType::Float32 => "float32",
            FeatureType::Float64 => "float64",
            FeatureType::Int64 => "int64",
            FeatureType::Bool => "bool",
            FeatureType::String => "string",
            FeatureType::Vector(_) => "vector",
        }
    }

    /// Whether values of this type are numbers (ints or floats; not bool).
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            FeatureType::Float32 | FeatureType::Float64 | FeatureType::Int64
        )
    }

    /// How to write a default of this type, for error messages.
    pub(super) fn default_example(self) -> &'static str {
        match self {
            FeatureType::Float32 => {
                "a finite number such as 0.0 (whole numbers up to 2^24 are accepted too)"
            }
            FeatureType::Float64 => {
                "a finite number such as 0.0 (whole numbers up to 2^53 are accepted too)"
            }
            FeatureType::Int64 => "a whole number such as 0, without a decimal point",
            FeatureType::Bool => "true or false, without quotes",
            FeatureType::String => "quoted text such as \"unknown\"",
            FeatureType::Vector(_) => {
                "a number every component takes (0.0: the zero vector) or an array with one finite number per component"
            }
        }
    }

    /// The TOML `value` as a value of this type, or None when it does not fit.
    ///
    /// Whole numbers are accepted for float types when they convert exactly, so
    /// `default = 0` works for a float; floats are never accepted for `int64`.
    pub(super) fn typed_value(self, value: &toml::Value) -> Option<FeatureValue> {
        /// Largest whole numbers f32 and f64 hold exactly.
        const F32_EXACT: u64 = 1 << 24;
        const F64_EXACT: u64 = 1 << 53;
        match (self, value) {
            (FeatureType::Float32, toml::Value::Float(f))
                if f.is_finite() && f.abs() <= f64::from(f32::MAX) =>
            {
                Some(FeatureValue::Float32(*f as f32))
            }
            (FeatureType::Float32, toml::Value::Integer(i)) if i.unsigned_abs() <= F32_EXACT => {
                Some(FeatureValue::Float32(*i as f32))
            }
            (FeatureType::Float64, toml::Value::Float(f)) if f.is_finite() => {
                Some(FeatureValue::Float64(*f))
            }
            (FeatureType::Float64, toml::Value::Integer(i)) if i.unsigned_abs() <= F64_EXACT => {
                Some(FeatureValue::Float64(*i as f64))
            }
            (FeatureType::Int64, toml::Value::Integer(i)) => Some(FeatureValue::Int64(*i)),
            (FeatureType::Bool, toml::Value::Boolean(b)) => Some(FeatureValue::Bool(*b)),
            (FeatureType::String, toml::Value::String(s)) => Some(FeatureValue::String(s.clone())),
            (FeatureType::Vector(n), toml::Value::Float(_) | toml::Value::Integer(_)) => {
                match FeatureType::Float32.typed_value(value)? {
                    FeatureValue::Float32(x) => Some(FeatureValue::Vector(vec![x; usize::from(n)])),
                    _ => None,
                }
            }
            (FeatureType::Vector(n), toml::Value::Array(items))
                if items.len() == usize::from(n) =>
            {
                let mut v = Vec::with_capacity(items.len());
                for item in items {
                    match FeatureType::Float32.typed_value(item)? {
                        FeatureValue::Float32(x) => v.push(x),
                        _ => return None,
                    }
                }
                Some(FeatureValue::Vector(v))
            }
            _ => None,
        }
    }
}

impl fmt::Display for FeatureType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeatureType::Vector(n) => write!(f, "vector({n})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// One typed feature value (a declared default, for now).
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue {
    /// A `float32` value.
    Float32(f32),
    /// A `float64` value.
    Float64(f64),
    /// An `int64` value.
    Int64(i64),
    /// A `bool` value.
    Bool(bool),
    /// A `string` value.
    String(String),
    /// A `vector(N)` value: N finite float32 components.
    Vector(Vec<f32>),
}

impl FeatureValue {
    /// The type of this value.
    pub fn feature_type(&self) -> FeatureType {
        match self {
            FeatureValue::Float32(_) => FeatureType::Float32,
            FeatureValue::Float64(_) => FeatureType::Float64,
            FeatureValue::Int64(_) => FeatureType::Int64,
            FeatureValue::Bool(_) => FeatureType::Bool,
            FeatureValue::String(_) => FeatureType::String,
            FeatureValue::Vector(v) => {
                FeatureType::Vector(u16::try_from(v.len()).unwrap_or(u16::MAX))
            }
        }
    }

    /// The value as an FP32 tensor element: floats narrowed, integers converted
    /// (exact up to 2^24), `true`/`false` as 1/0. None for strings, vectors
    /// and a float64 beyond the f32 range.
    pub fn to_f32(&self) -> Option<f32> {
        match self {
            FeatureValue::Float32(v) => Some(*v),
            FeatureValue::Float64(v) => {
                let narrowed = *v as f32;
                narrowed.is_finite().then_some(narrowed)
            }
            FeatureValue::Int64(v) => Some(*v as f32),
            FeatureValue::Bool(v) => Some(if *v { 1.0 } else { 0.0 }),
            FeatureValue::String(_) | FeatureValue::Vector(_) => None,
        }
    }
}

impl fmt::Display for FeatureValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeatureValue::Float32(v) => write!(f, "{v}"),
            FeatureValue::Float64(v) => write!(f, "{v}"),
            FeatureValue::Int64(v) => write!(f, "{v}"),
            FeatureValue::Bool(v) => write!(f, "{v}"),
            FeatureValue::String(v) => write!(f, "{v:?}"),
            FeatureValue::Vector(v) => {
                // The first few components: enough to recognise it in a message.
                let shown: Vec<String> = v.iter().take(4).map(f32::to_string).collect();
                let more = if v.len() > 4 { " …" } else { "" };
                write!(f, "[{}{more}] ({} values)", shown.join(" "), v.len())
            }
        }
    }
}

/// A TOML value as a person would recognise it in an error message.
pub(super) fn describe_toml(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?} (text)"),
        toml::Value::Integer(i) => format!("{i} (whole number)"),
        toml::Value::Float(x) => format!("{x} (float)"),
        toml::Value::Boolean(b) => format!("{b} (bool)"),
        toml::Value::Datetime(d) => format!("{d} (date-time)"),
        toml::Value::Array(_) => "an array".to_owned(),
        toml::Value::Table(_) => "a table".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_convert_only_when_they_fit() {
        let int = toml::Value::Integer(3);
        let big = toml::Value::Integer((1 << 24) + 1);
        let float = toml::Value::Float(0.5);
        assert_eq!(
            FeatureType::Float32.typed_value(&int),
            Some(FeatureValue::Float32(3.0))
        );
        assert_eq!(FeatureType::Float32.typed_value(&big), None);
        assert_eq!(
            FeatureType::Float64.typed_value(&big),
            Some(FeatureValue::Float64(16_777_217.0))
        );
        assert_eq!(FeatureType::Int64.typed_value(&float), None);
        assert_eq!(FeatureType::Bool.typed_value(&int), None);
        assert_eq!(
            FeatureType::Float32.typed_value(&toml::Value::Float(f64::NAN)),
            None
        );
        assert_eq!(
            FeatureType::Float32.typed_value(&toml::Value::Float(1e39)),
            None
        );
    }

    #[test]
    fn fp32_conversion() {
        assert_eq!(FeatureValue::Bool(true).to_f32(), Some(1.0));
        assert_eq!(FeatureValue::Int64(-7).to_f32(), Some(-7.0));
        assert_eq!(FeatureValue::Float64(1e300).to_f32(), None);
        assert_eq!(FeatureValue::String("x".into()).to_f32(), None);
    }
}

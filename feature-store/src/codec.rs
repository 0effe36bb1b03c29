//! The byte encoding of a row's feature values, shared by every backend.
//!
//! A row is stored as one blob of `(name, typed value)` pairs so that a view can
//! gain or lose features without a schema change: a feature missing from an old
//! row reads as missing (its default applies), a feature no longer declared is
//! ignored. Layout (little-endian): `u16` count, then per value a `u8` name
//! length, the UTF-8 name, a `u8` type tag and the payload (`f32`, `f64`, `i64`,
//! one byte for a bool, a `u32` length and UTF-8 bytes for a string, or a
//! `u16` length and that many `f32` for a vector).

use std::collections::BTreeMap;

use crate::definitions::FeatureValue;

const TAG_F32: u8 = 1;
const TAG_F64: u8 = 2;
const TAG_I64: u8 = 3;
const TAG_BOOL: u8 = 4;
const TAG_STRING: u8 = 5;
const TAG_VECTOR: u8 = 6;

/// A stored blob that cannot be decoded (written by something else, or damaged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt feature blob at byte {offset}: {what}")]
pub struct CodecError {
    /// Where decoding stopped.
    pub offset: usize,
    /// What was wrong there.
    pub what: &'static str,
}

/// Encodes `(name, value)` pairs. Names longer than 255 bytes cannot occur:
/// definitions restrict names to short identifiers.
pub fn encode<'a>(values: impl IntoIterator<Item = (&'a str, &'a FeatureValue)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0, 0]);
    let mut count: u16 = 0;
    for (name, value) in values {
        let name = &name.as_bytes()[..name.len().min(255)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        match value {
            FeatureValue::Float32(v) => {
                out.push(TAG_F32);
                out.extend_from_slice(&v.to_le_bytes());
            }
            FeatureValue::Float64(v) => {
                out.push(TAG_F64);
                out.extend_from_slice(&v.to_le_bytes());
            }
            FeatureValue::Int64(v) => {
                out.push(TAG_I64);
                out.extend_from_slice(&v.to_le_bytes());
            }
            FeatureValue::Bool(v) => {
                out.push(TAG_BOOL);
                out.push(u8::from(*v));
            }
            FeatureValue::String(s) => {
                out.push(TAG_STRING);
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            FeatureValue::Vector(v) => {
                // Definitions bound a vector to MAX_VECTOR_DIMENSION components.
                let len = v.len().min(usize::from(u16::MAX));
                out.push(TAG_VECTOR);
                out.extend_from_slice(&(len as u16).to_le_bytes());
                for x in &v[..len] {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        count = count.saturating_add(1);
    }
    out[..2].copy_from_slice(&count.to_le_bytes());
    out
}

/// Encodes one value (a dynamic feature is stored value by value).
pub fn encode_value(value: &FeatureValue) -> Vec<u8> {
    let mut out = encode([("", value)]);
    // Drop the count and the empty name: a single value is tag + payload.
    out.drain(..3);
    out
}

/// Decodes a blob written by [`encode`].
///
/// # Errors
/// [`CodecError`] if the blob is truncated or holds an unknown tag.
pub fn decode(bytes: &[u8]) -> Result<BTreeMap<String, FeatureValue>, CodecError> {
    let mut r = Reader::new(bytes);
    let count = u16::from_le_bytes(r.array::<2>()?);
    let mut values = BTreeMap::new();
    for _ in 0..count {
        let len = usize::from(r.array::<1>()?[0]);
        let name = std::str::from_utf8(r.take(len)?).map_err(|_| r.err("name is not UTF-8"))?;
        let name = name.to_owned();
        let value = r.value()?;
        values.insert(name, value);
    }
    Ok(values)
}

/// Decodes a blob written by [`encode_value`].
///
/// # Errors
/// [`CodecError`] if the blob is truncated or holds an unknown tag.
pub fn decode_value(bytes: &[u8]) -> Result<FeatureValue, CodecError> {
    Reader::new(bytes).value()
}

/// A bounds-checked cursor over stored bytes; also used by the prediction
/// log's record layout (`log`).
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    pub(crate) fn err(&self, what: &'static str) -> CodecError {
        CodecError {
            offset: self.at,
            what,
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.err("truncated"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn value(&mut self) -> Result<FeatureValue, CodecError> {
        let tag = self.array::<1>()?[0];
        Ok(match tag {
            TAG_F32 => FeatureValue::Float32(f32::from_le_bytes(self.array()?)),
            TAG_F64 => FeatureValue::Float64(f64::from_le_bytes(self.array()?)),
            TAG_I64 => FeatureValue::Int64(i64::from_le_bytes(self.array()?)),
            TAG_BOOL => FeatureValue::Bool(self.array::<1>()?[0] != 0),
            TAG_STRING => {
                let len = u32::from_le_bytes(self.array()?) as usize;
                let text = std::str::from_utf8(self.take(len)?)
                    .map_err(|_| self.err("text is not UTF-8"))?;
                FeatureValue::String(text.to_owned())
            }
            TAG_VECTOR => {
                let len = usize::from(u16::from_le_bytes(self.array()?));
                let bytes = self.take(len * 4)?;
                FeatureValue::Vector(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            }
            _ => return Err(self.err("unknown type tag")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_type() -> Vec<(String, FeatureValue)> {
        vec![
            ("a".into(), FeatureValue::Float32(-1.5)),
            ("b".into(), FeatureValue::Float64(1e300)),
            ("c".into(), FeatureValue::Int64(i64::MIN)),
            ("d".into(), FeatureValue::Bool(true)),
            ("e".into(), FeatureValue::String("näive \u{1f} text".into())),
            ("f".into(), FeatureValue::String(String::new())),
            ("g".into(), FeatureValue::Vector(vec![0.5, -1.25, f32::MAX])),
            ("h".into(), FeatureValue::Vector(Vec::new())),
        ]
    }

    #[test]
    fn every_type_round_trips() {
        let values = every_type();
        let blob = encode(values.iter().map(|(k, v)| (k.as_str(), v)));
        let decoded = decode(&blob).unwrap();
        assert_eq!(decoded, values.into_iter().collect::<BTreeMap<_, _>>());
        for (_, v) in every_type() {
            assert_eq!(decode_value(&encode_value(&v)).unwrap(), v);
        }
        assert!(decode(&encode([])).unwrap().is_empty());
    }

    #[test]
    fn damaged_blobs_are_errors_not_panics() {
        let values = every_type();
        let blob = encode(values.iter().map(|(k, v)| (k.as_str(), v)));
        for cut in 0..blob.len() {
            assert!(decode(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = encode([("x", &FeatureValue::Bool(false))]);
        bad[4] = 99;
        assert_eq!(decode(&bad).unwrap_err().what, "unknown type tag");
    }
}

//! Combination keys: the key under which a precomputed prediction for an
//! ordered combination of feature values is stored and looked up. The same
//! values in the same order give the same key in every process, on every
//! platform and in every release; another order, another feature name or
//! another value gives another key.
//!
//! A continuous feature takes part as the index of its bin among declared
//! edges ([`Bins`]), a categorical one as its text. The key is computed from a
//! canonical byte encoding (version 1):
//!
//! ```text
//! encoding = "mlgw.combination.v1" 0x00
//!            u32(number of parts)
//!            for each part, in order:
//!              u32(byte length of the feature name) name (UTF-8)
//!              0x00                                      a missing value
//!            | 0x01 u32(byte length of the text) text    a category (UTF-8, as given)
//!            | 0x02 u32(bin index)                       a binned number
//! key      = lowercase hex of the first 16 bytes of SHA-256(encoding)
//! ```
//!
//! `u32` is four bytes, big-endian. Test vectors other implementations can
//! check themselves against: `feature-store/testdata/combination_keys.json`,
//! made by the independent implementation next to it
//! (`feature-store/testdata/combination_keys.py`).

use std::fmt;

use sha2::{Digest, Sha256};

/// The encoding's first bytes: its name and version.
const DOMAIN: &[u8] = b"mlgw.combination.v1\0";

/// The declared edges of a continuous feature's bins.
///
/// With edges `e0 < e1 < … < e(n-1)`, a value `x` falls in bin `i` = the
/// number of edges `<= x`: bin 0 below `e0`, bin `i` for `e(i-1) <= x <
/// e(i)`, bin `n` from `e(n-1)` up. NaN falls in no bin (a missing value).
#[derive(Debug, Clone, PartialEq)]
pub struct Bins {
    edges: Vec<f64>,
}

/// Edges that cannot make bins.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BinsError {
    /// No edges at all.
    #[error("bin edges are empty; declare at least one edge")]
    Empty,
    /// An edge that is NaN or infinite.
    #[error("bin edge {index} ({value}) is not a finite number")]
    NotFinite {
        /// Its position.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// An edge not above the one before it.
    #[error("bin edges must increase: edge {index} ({value}) is not above {previous}")]
    NotIncreasing {
        /// Its position.
        index: usize,
        /// Its value.
        value: f64,
        /// The edge before it.
        previous: f64,
    },
}

impl Bins {
    /// Bins from strictly increasing, finite edges.
    ///
    /// # Errors
    /// [`BinsError`] naming the first bad edge.
    pub fn new(edges: Vec<f64>) -> Result<Self, BinsError> {
        if edges.is_empty() {
            return Err(BinsError::Empty);
        }
        for (index, &value) in edges.iter().enumerate() {
            if !value.is_finite() {
                return Err(BinsError::NotFinite { index, value });
            }
            if let Some(&previous) = index.checked_sub(1).and_then(|i| edges.get(i))
                && value <= previous
            {
                return Err(BinsError::NotIncreasing {
                    index,
                    value,
                    previous,
                });
            }
        }
        Ok(Self { edges })
    }

    /// The edges as declared.
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// How many bins the edges make (one more than the edges).
    pub fn count(&self) -> usize {
        self.edges.len() + 1
    }

    /// The bin of `x`; `None` for NaN.
    pub fn bin(&self, x: f64) -> Option<u32> {
        if x.is_nan() {
            return None;
        }
        let index = self.edges.partition_point(|&e| e <= x);
        // At most edges.len(), which a definitions file keeps far below u32.
        Some(u32::try_from(index).unwrap_or(u32::MAX))
    }
}

/// One feature's value as it takes part in a combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyValue<'a> {
    /// No value (absent, or NaN before binning).
    Missing,
    /// A categorical value, as given (no case folding or normalisation).
    Category(&'a str),
    /// A continuous value's bin (see [`Bins::bin`]).
    Bin(u32),
}

/// The key of one combination: 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CombinationKey(String);

impl CombinationKey {
    /// The key of the ordered `(feature name, value)` parts.
    pub fn of(parts: &[(&str, KeyValue<'_>)]) -> Self {
        let digest = Sha256::digest(encode(parts));
        let mut hex = String::with_capacity(32);
        for byte in &digest[..16] {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        Self(hex)
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CombinationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The canonical encoding of the ordered parts (see the module docs).
pub fn encode(parts: &[(&str, KeyValue<'_>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 4 + parts.len() * 24);
    out.extend_from_slice(DOMAIN);
    push_len(&mut out, parts.len());
    for &(name, value) in parts {
        push_text(&mut out, name);
        match value {
            KeyValue::Missing => out.push(0x00),
            KeyValue::Category(text) => {
                out.push(0x01);
                push_text(&mut out, text);
            }
            KeyValue::Bin(index) => {
                out.push(0x02);
                out.extend_from_slice(&index.to_be_bytes());
            }
        }
    }
    out
}

fn push_text(out: &mut Vec<u8>, text: &str) {
    push_len(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// A length as u32; longer texts than 4 GiB cannot reach a key (a feature
/// value is bounded far below that by the request and file limits).
fn push_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_count_the_edges_at_or_below_a_value() {
        let bins = Bins::new(vec![10.0, 50.0, 200.0]).expect("valid edges");
        let got: Vec<_> = [
            -1.0,
            9.99,
            10.0,
            49.0,
            50.0,
            199.9,
            200.0,
            1e9,
            f64::INFINITY,
        ]
        .iter()
        .map(|&x| bins.bin(x))
        .collect();
        assert_eq!(
            got,
            [0, 0, 1, 1, 2, 2, 3, 3, 3].map(Some).to_vec(),
            "edges belong to the bin above them"
        );
        assert_eq!(bins.bin(f64::NAN), None);
        assert_eq!(bins.count(), 4);
    }

    #[test]
    fn bad_edges_are_refused_with_the_edge_named() {
        assert_eq!(Bins::new(vec![]), Err(BinsError::Empty));
        assert!(matches!(
            Bins::new(vec![1.0, f64::NAN]),
            Err(BinsError::NotFinite { index: 1, .. })
        ));
        let e = Bins::new(vec![1.0, 5.0, 5.0]).expect_err("not increasing");
        assert_eq!(
            e.to_string(),
            "bin edges must increase: edge 2 (5) is not above 5"
        );
    }

    #[test]
    fn order_names_and_values_all_change_the_key() {
        let (de, f, cat) = (
            ("country", KeyValue::Category("DE")),
            ("gender", KeyValue::Category("f")),
            ("category", KeyValue::Category("grocery")),
        );
        let key = CombinationKey::of(&[de, f, cat]);
        assert_eq!(key, CombinationKey::of(&[de, f, cat]), "deterministic");
        assert_ne!(key, CombinationKey::of(&[cat, de, f]), "order counts");
        assert_ne!(
            key,
            CombinationKey::of(&[("country", KeyValue::Category("DEf")), cat]),
            "lengths keep values apart"
        );
        assert_ne!(
            CombinationKey::of(&[("amount_bin", KeyValue::Bin(1))]),
            CombinationKey::of(&[("amount_bin", KeyValue::Category("1"))]),
            "a bin is not the text of its index"
        );
        assert_ne!(
            CombinationKey::of(&[("country", KeyValue::Missing)]),
            CombinationKey::of(&[("country", KeyValue::Category(""))]),
            "missing is not empty"
        );
        assert_eq!(key.as_str().len(), 32);
        assert!(key.as_str().bytes().all(|b| HEX.contains(&b)));
    }
}

//! Tensor data types of the Open Inference Protocol and typed tensor buffers.
//!
//! `TensorData` holds one tensor's elements in row-major order, typed by the V2
//! datatype. Both wire forms decode into it: typed `contents` and little-endian
//! `raw_*_contents`; batching concatenates and splits it along the first axis.

use std::fmt;
use std::str::FromStr;

/// A V2 tensor datatype that this server can carry.
///
/// FP16 and BYTES are valid V2 names but no model here takes them; they parse so
/// that the error can say "not supported" rather than "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `BOOL`
    Bool,
    /// `UINT8`
    U8,
    /// `UINT16`
    U16,
    /// `UINT32`
    U32,
    /// `UINT64`
    U64,
    /// `INT8`
    I8,
    /// `INT16`
    I16,
    /// `INT32`
    I32,
    /// `INT64`
    I64,
    /// `FP16` (parsed, not supported by the runtime)
    F16,
    /// `FP32`
    F32,
    /// `FP64`
    F64,
    /// `BYTES` (parsed, not supported by the runtime)
    Bytes,
}

impl DataType {
    /// The V2 wire name, e.g. `FP32`.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Size of one element in the raw little-endian encoding; `None` for BYTES.
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::U8 | DataType::I8 => Some(1),
            DataType::U16 | DataType::I16 | DataType::F16 => Some(2),
            DataType::U32 | DataType::I32 | DataType::F32 => Some(4),
            DataType::U64 | DataType::I64 | DataType::F64 => Some(8),
            DataType::Bytes => None,
        }
    }

    /// Whether tensors of this type can be fed to or read from a model here.
    pub fn is_supported(self) -> bool {
        !matches!(self, DataType::F16 | DataType::Bytes)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The datatype string is not one of the V2 names.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown datatype \"{0}\"; expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES"
)]
pub struct UnknownDataType(pub String);

impl FromStr for DataType {
    type Err = UnknownDataType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "BOOL" => DataType::Bool,
            "UINT8" => DataType::U8,
            "UINT16" => DataType::U16,
            "UINT32" => DataType::U32,
            "UINT64" => DataType::U64,
            "INT8" => DataType::I8,
            "INT16" => DataType::I16,
            "INT32" => DataType::I32,
            "INT64" => DataType::I64,
            "FP16" => DataType::F16,
            "FP32" => DataType::F32,
            "FP64" => DataType::F64,
            "BYTES" => DataType::Bytes,
            other => return Err(UnknownDataType(other.to_owned())),
        })
    }
}

/// One tensor's elements, row-major, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `BOOL`
    Bool(Vec<bool>),
    /// `UINT8`
    U8(Vec<u8>),
    /// `UINT16`
    U16(Vec<u16>),
    /// `UINT32`
    U32(Vec<u32>),
    /// `UINT64`
    U64(Vec<u64>),
    /// `INT8`
    I8(Vec<i8>),
    /// `INT16`
    I16(Vec<i16>),
    /// `INT32`
    I32(Vec<i32>),
    /// `INT64`
    I64(Vec<i64>),
    /// `FP32`
    F32(Vec<f32>),
    /// `FP64`
    F64(Vec<f64>),
}

/// Applies `$body` to the vector inside any variant, binding it to `$v`.
macro_rules! each_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::U16($v) => $body,
            TensorData::U32($v) => $body,
            TensorData::U64($v) => $body,
            TensorData::I8($v) => $body,
            TensorData::I16($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
        }
    };
}
pub(crate) use each_variant;

/// Like `each_variant!`, but rebuilds the same variant from the expression's result.
macro_rules! map_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::U8($v) => TensorData::U8($body),
            TensorData::U16($v) => TensorData::U16($body),
            TensorData::U32($v) => TensorData::U32($body),
            TensorData::U64($v) => TensorData::U64($body),
            TensorData::I8($v) => TensorData::I8($body),
            TensorData::I16($v) => TensorData::I16($body),
            TensorData::I32($v) => TensorData::I32($body),
            TensorData::I64($v) => TensorData::I64($body),
            TensorData::F32($v) => TensorData::F32($body),
            TensorData::F64($v) => TensorData::F64($body),
        }
    };
}

/// Raw bytes whose length is not a whole number of elements of the expected count.
#[derive(Debug, Clone, thiserror::Error)]
#[error("expected {expected} bytes ({elements} elements of {datatype}), got {actual}")]
pub struct RawLengthMismatch {
    /// Bytes the shape and datatype call for.
    pub expected: usize,
    /// Bytes received.
    pub actual: usize,
    /// Elements the shape calls for.
    pub elements: usize,
    /// The tensor's datatype.
    pub datatype: DataType,
}

impl TensorData {
    /// The datatype of the elements held.
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::U8(_) => DataType::U8,
            TensorData::U16(_) => DataType::U16,
            TensorData::U32(_) => DataType::U32,
            TensorData::U64(_) => DataType::U64,
            TensorData::I8(_) => DataType::I8,
            TensorData::I16(_) => DataType::I16,
            TensorData::I32(_) => DataType::I32,
            TensorData::I64(_) => DataType::I64,
            TensorData::F32(_) => DataType::F32,
            TensorData::F64(_) => DataType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty buffer of `datatype` with room for `capacity` elements.
    ///
    /// Returns `None` for datatypes the runtime does not carry (FP16, BYTES).
    pub fn with_capacity(datatype: DataType, capacity: usize) -> Option<TensorData> {
        Some(match datatype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DataType::U8 => TensorData::U8(Vec::with_capacity(capacity)),
            DataType::U16 => TensorData::U16(Vec::with_capacity(capacity)),
            DataType::U32 => TensorData::U32(Vec::with_capacity(capacity)),
            DataType::U64 => TensorData::U64(Vec::with_capacity(capacity)),
            DataType::I8 => TensorData::I8(Vec::with_capacity(capacity)),
            DataType::I16 => TensorData::I16(Vec::with_capacity(capacity)),
            DataType::I32 => TensorData::I32(Vec::with_capacity(capacity)),
            DataType::I64 => TensorData::I64(Vec::with_capacity(capacity)),
            DataType::F32 => TensorData::F32(Vec::with_capacity(capacity)),
            DataType::F64 => TensorData::F64(Vec::with_capacity(capacity)),
            DataType::F16 | DataType::Bytes => return None,
        })
    }

    /// Appends `other` (same datatype) to the end; returns false on a type mismatch.
    pub fn extend_from(&mut self, other: &TensorData) -> bool {
        macro_rules! ext {
            ($($var:ident),*) => {
                match (self, other) {
                    $((TensorData::$var(a), TensorData::$var(b)) => { a.extend_from_slice(b); true })*
                    _ => false,
                }
            };
        }
        ext!(Bool, U8, U16, U32, U64, I8, I16, I32, I64, F32, F64)
    }

    /// Elements `start..end` as a new buffer (callers keep the range in bounds).
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        map_variant!(self, v => v.get(start..end).map(<[_]>::to_vec).unwrap_or_default())
    }

    /// Index of the first NaN element, for float tensors.
    pub fn first_nan(&self) -> Option<usize> {
        match self {
            TensorData::F32(v) => v.iter().position(|x| x.is_nan()),
            TensorData::F64(v) => v.iter().position(|x| x.is_nan()),
            _ => None,
        }
    }

    /// Decodes row-major little-endian bytes holding exactly `elements` values.
    ///
    /// # Errors
    /// `RawLengthMismatch` when the byte count is not `elements * element_size`.
    /// Returns `Ok(None)` for datatypes the runtime does not carry.
    pub fn from_le_bytes(
        datatype: DataType,
        bytes: &[u8],
        elements: usize,
    ) -> Result<Option<TensorData>, RawLengthMismatch> {
        let Some(size) = datatype.element_size().filter(|_| datatype.is_supported()) else {
            return Ok(None);
        };
        let expected = elements.saturating_mul(size);
        if bytes.len() != expected {
            return Err(RawLengthMismatch {
                expected,
                actual: bytes.len(),
                elements,
                datatype,
            });
        }
        macro_rules! decode {
            ($t:ty, $n:literal) => {
                bytes
                    .chunks_exact($n)
                    .map(|c| {
                        let mut a = [0u8; $n];
                        a.copy_from_slice(c);
                        <$t>::from_le_bytes(a)
                    })
                    .collect()
            };
        }
        Ok(Some(match datatype {
            DataType::Bool => TensorData::Bool(bytes.iter().map(|b| *b != 0).collect()),
            DataType::U8 => TensorData::U8(bytes.to_vec()),
            DataType::I8 => TensorData::I8(bytes.iter().map(|b| i8::from_le_bytes([*b])).collect()),
            DataType::U16 => TensorData::U16(decode!(u16, 2)),
            DataType::I16 => TensorData::I16(decode!(i16, 2)),
            DataType::U32 => TensorData::U32(decode!(u32, 4)),
            DataType::I32 => TensorData::I32(decode!(i32, 4)),
            DataType::F32 => TensorData::F32(decode!(f32, 4)),
            DataType::U64 => TensorData::U64(decode!(u64, 8)),
            DataType::I64 => TensorData::I64(decode!(i64, 8)),
            DataType::F64 => TensorData::F64(decode!(f64, 8)),
            DataType::F16 | DataType::Bytes => return Ok(None),
        }))
    }

    /// Encodes the elements as row-major little-endian bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        macro_rules! encode {
            ($v:expr) => {
                $v.iter().flat_map(|x| x.to_le_bytes()).collect()
            };
        }
        match self {
            TensorData::Bool(v) => v.iter().map(|b| u8::from(*b)).collect(),
            TensorData::U8(v) => v.clone(),
            TensorData::I8(v) => encode!(v),
            TensorData::U16(v) => encode!(v),
            TensorData::I16(v) => encode!(v),
            TensorData::U32(v) => encode!(v),
            TensorData::I32(v) => encode!(v),
            TensorData::U64(v) => encode!(v),
            TensorData::I64(v) => encode!(v),
            TensorData::F32(v) => encode!(v),
            TensorData::F64(v) => encode!(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip_keeps_every_type() {
        let cases = [
            TensorData::Bool(vec![true, false, true]),
            TensorData::I8(vec![-3, 0, 7]),
            TensorData::U16(vec![1, 65535]),
            TensorData::I32(vec![-1, 2]),
            TensorData::I64(vec![i64::MIN, 5]),
            TensorData::F32(vec![1.5, -0.25, f32::MAX]),
            TensorData::F64(vec![std::f64::consts::PI]),
        ];
        for data in cases {
            let bytes = data.to_le_bytes();
            let back = TensorData::from_le_bytes(data.datatype(), &bytes, data.len());
            assert_eq!(back.ok().flatten(), Some(data));
        }
    }

    #[test]
    fn raw_length_must_match_shape() {
        let err = TensorData::from_le_bytes(DataType::F32, &[0u8; 10], 3);
        let Err(err) = err else {
            panic!("10 bytes cannot be 3 FP32 values")
        };
        assert_eq!(err.expected, 12);
        assert!(err.to_string().contains("expected 12 bytes"));
    }

    #[test]
    fn datatype_names_round_trip() {
        for name in ["BOOL", "UINT8", "INT64", "FP32", "FP64", "BYTES", "FP16"] {
            assert_eq!(
                name.parse::<DataType>().map(|d| d.as_str()).ok(),
                Some(name)
            );
        }
        assert!("float32".parse::<DataType>().is_err());
    }

    #[test]
    fn concat_and_slice_split_rows_back() {
        let mut a = TensorData::F32(vec![1.0, 2.0]);
        assert!(a.extend_from(&TensorData::F32(vec![3.0, 4.0])));
        assert!(!a.extend_from(&TensorData::I64(vec![1])));
        assert_eq!(a.slice(2, 4), TensorData::F32(vec![3.0, 4.0]));
        assert_eq!(TensorData::F32(vec![0.0, f32::NAN]).first_nan(), Some(1));
    }
}

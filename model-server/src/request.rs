//! The wire-neutral inference request and response that both fronts (gRPC and
//! REST) decode into and encode from, and the checks of a request against the
//! model's declared inputs.

use crate::config::{ModelSpec, TensorSpec};
use crate::datatype::{DataType, TensorData};
use crate::error::InferError;
use crate::runtime::OutputTensor;

/// One input tensor as the caller sent it, already decoded.
#[derive(Debug, Clone)]
pub struct InputTensor {
    /// Tensor name.
    pub name: String,
    /// Datatype the caller declared.
    pub datatype: DataType,
    /// Shape the caller declared (checked non-negative).
    pub shape: Vec<usize>,
    /// Elements, row-major; their count matches `shape`.
    pub data: TensorData,
}

/// An output the caller asked for.
#[derive(Debug, Clone)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// `binary_data` parameter: Some(true) asks for raw bytes, Some(false) for
    /// typed contents, None leaves it to the front's default.
    pub binary: Option<bool>,
}

/// An inference request, independent of the wire it came on.
#[derive(Debug, Clone)]
pub struct InferRequest {
    /// Model name.
    pub model: String,
    /// Version asked for; None (or empty on the wire) is the highest version.
    pub version: Option<String>,
    /// Caller's request ID, echoed back.
    pub id: String,
    /// Inputs.
    pub inputs: Vec<InputTensor>,
    /// Outputs wanted; empty means all.
    pub outputs: Vec<RequestedOutput>,
}

/// A named output tensor in a response.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedOutput {
    /// Output name.
    pub name: String,
    /// The tensor.
    pub tensor: OutputTensor,
}

/// An inference response, independent of the wire it goes on.
#[derive(Debug, Clone)]
pub struct InferResponse {
    /// Model name.
    pub model: String,
    /// Version that answered.
    pub version: String,
    /// The caller's request ID.
    pub id: String,
    /// Outputs in the order asked for (or declared, when none was asked for).
    pub outputs: Vec<NamedOutput>,
}

/// Number of elements a shape holds, refusing overflow.
///
/// # Errors
/// `InvalidInput` naming the tensor when the product overflows.
pub fn element_count(tensor: &str, shape: &[usize]) -> Result<usize, InferError> {
    shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| {
            InferError::InvalidInput(format!("input \"{tensor}\": shape {shape:?} is too large"))
        })
}

/// Converts wire dimensions to sizes, refusing negative ones.
///
/// # Errors
/// `InvalidInput` naming the tensor and the bad dimension.
pub fn checked_shape(tensor: &str, shape: &[i64]) -> Result<Vec<usize>, InferError> {
    shape
        .iter()
        .map(|d| {
            usize::try_from(*d).map_err(|_| {
                InferError::InvalidInput(format!(
                    "input \"{tensor}\": shape {shape:?} has negative dimension {d}; send the concrete shape of the data"
                ))
            })
        })
        .collect()
}

/// What a caller declared for one input before its data is decoded.
#[derive(Debug, Clone)]
pub struct InputHeader {
    /// Parsed datatype.
    pub datatype: DataType,
    /// Checked (non-negative) shape.
    pub shape: Vec<usize>,
    /// Elements the shape holds.
    pub count: usize,
}

/// Parses an input's datatype and shape as sent on either wire.
///
/// # Errors
/// `InvalidInput` naming the tensor for an unknown datatype or a bad shape.
pub fn input_header(name: &str, datatype: &str, shape: &[i64]) -> Result<InputHeader, InferError> {
    let datatype: DataType = datatype
        .parse()
        .map_err(|e: crate::datatype::UnknownDataType| {
            InferError::InvalidInput(format!("input \"{name}\": {e}"))
        })?;
    let shape = checked_shape(name, shape)?;
    let count = element_count(name, &shape)?;
    Ok(InputHeader {
        datatype,
        shape,
        count,
    })
}

/// Decodes an input's raw little-endian bytes; `source` names where they came
/// from (e.g. `raw_input_contents[0]`) in the error.
///
/// # Errors
/// `InvalidInput` naming the tensor when the byte length does not match the
/// shape, or the datatype is not supported.
pub fn decode_raw(
    name: &str,
    header: &InputHeader,
    bytes: &[u8],
    source: &str,
) -> Result<TensorData, InferError> {
    TensorData::from_le_bytes(header.datatype, bytes, header.count)
        .map_err(|e| {
            InferError::InvalidInput(format!(
                "input \"{name}\": {source} length mismatch for shape {:?}: {e}",
                header.shape
            ))
        })?
        .ok_or_else(|| unsupported(name, header.datatype))
}

/// The error for a datatype this server does not carry (FP16, BYTES).
pub fn unsupported(name: &str, datatype: DataType) -> InferError {
    InferError::InvalidInput(format!(
        "input \"{name}\": datatype {datatype} is not supported by this server"
    ))
}

/// Inputs checked against the model, ordered as the model declares them.
#[derive(Debug)]
pub struct CheckedInputs {
    /// (shape, data) per declared input.
    pub tensors: Vec<(Vec<usize>, TensorData)>,
    /// Rows along the batch dimension (1 for models without one).
    pub rows: usize,
}

/// Checks the request's inputs against `spec`: names, datatypes, shapes, NaN,
/// batch size. Every message names the tensor and what was expected.
///
/// # Errors
/// `InvalidInput` for the first problem found.
pub fn check_inputs(
    spec: &ModelSpec,
    inputs: Vec<InputTensor>,
) -> Result<CheckedInputs, InferError> {
    let expected_names = || {
        spec.inputs
            .iter()
            .map(|t| format!("\"{}\"", t.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut slots: Vec<Option<(Vec<usize>, TensorData)>> = vec![None; spec.inputs.len()];
    for input in inputs {
        let Some(idx) = spec.inputs.iter().position(|t| t.name == input.name) else {
            return Err(InferError::InvalidInput(format!(
                "unexpected input \"{}\" for model \"{}\"; expected inputs: {}",
                input.name,
                spec.name,
                expected_names()
            )));
        };
        if slots[idx].is_some() {
            return Err(InferError::InvalidInput(format!(
                "input \"{}\" is given more than once",
                input.name
            )));
        }
        let declared = &spec.inputs[idx];
        check_one(declared, &input, spec)?;
        slots[idx] = Some((input.shape, input.data));
    }
    let mut tensors = Vec::with_capacity(slots.len());
    for (slot, declared) in slots.into_iter().zip(&spec.inputs) {
        let Some(t) = slot else {
            return Err(InferError::InvalidInput(format!(
                "missing input \"{}\" ({} {:?}) for model \"{}\"",
                declared.name, declared.datatype, declared.shape, spec.name
            )));
        };
        tensors.push(t);
    }
    let rows = if spec.batched_dims {
        let rows = tensors
            .first()
            .and_then(|(s, _)| s.first().copied())
            .unwrap_or(0);
        for ((shape, _), declared) in tensors.iter().zip(&spec.inputs) {
            if shape.first().copied() != Some(rows) {
                return Err(InferError::InvalidInput(format!(
                    "input \"{}\" has {} rows but \"{}\" has {rows}; all inputs need the same batch size",
                    declared.name,
                    shape.first().copied().unwrap_or(0),
                    spec.inputs[0].name
                )));
            }
        }
        rows
    } else {
        1
    };
    Ok(CheckedInputs { tensors, rows })
}

fn check_one(
    declared: &TensorSpec,
    input: &InputTensor,
    spec: &ModelSpec,
) -> Result<(), InferError> {
    let name = &declared.name;
    if input.datatype != declared.datatype {
        return Err(InferError::InvalidInput(format!(
            "input \"{name}\": datatype {} does not match the model's {}",
            input.datatype, declared.datatype
        )));
    }
    let dims_ok = input.shape.len() == declared.shape.len()
        && input
            .shape
            .iter()
            .zip(&declared.shape)
            .all(|(got, want)| *want < 0 || usize::try_from(*want).ok() == Some(*got));
    if !dims_ok {
        return Err(InferError::InvalidInput(format!(
            "input \"{name}\": shape {:?} does not match the model's {:?} (-1 = any size)",
            input.shape, declared.shape
        )));
    }
    if spec.batched_dims {
        let rows = input.shape.first().copied().unwrap_or(0);
        if rows == 0 {
            return Err(InferError::InvalidInput(format!(
                "input \"{name}\": batch dimension is 0; send at least one row"
            )));
        }
        if rows > spec.max_batch_size {
            return Err(InferError::InvalidInput(format!(
                "input \"{name}\": {rows} rows exceed the model's max_batch_size {}; split the request",
                spec.max_batch_size
            )));
        }
    }
    let count = element_count(name, &input.shape)?;
    if input.data.len() != count {
        return Err(InferError::InvalidInput(format!(
            "input \"{name}\": shape {:?} needs {count} values, got {}",
            input.shape,
            input.data.len()
        )));
    }
    if !declared.allow_nan
        && let Some(i) = input.data.first_nan()
    {
        return Err(InferError::InvalidInput(format!(
            "input \"{name}\": NaN at flat index {i} (row {}, column {}); this model does not accept NaN — send a value or the feature's default",
            i / row_width(&input.shape),
            i % row_width(&input.shape)
        )));
    }
    Ok(())
}

fn row_width(shape: &[usize]) -> usize {
    shape.iter().skip(1).product::<usize>().max(1)
}

/// Resolves which outputs to return, in order, as (declared index, spec).
///
/// # Errors
/// `InvalidInput` naming an output the model does not have.
pub fn select_outputs<'a>(
    spec: &'a ModelSpec,
    requested: &[RequestedOutput],
) -> Result<Vec<(usize, &'a TensorSpec)>, InferError> {
    if requested.is_empty() {
        return Ok(spec.outputs.iter().enumerate().collect());
    }
    for (i, r) in requested.iter().enumerate() {
        if requested[..i].iter().any(|o| o.name == r.name) {
            return Err(InferError::InvalidInput(format!(
                "output \"{}\" is requested more than once",
                r.name
            )));
        }
    }
    requested
        .iter()
        .map(|r| {
            spec.outputs
                .iter()
                .enumerate()
                .find(|(_, t)| t.name == r.name)
                .ok_or_else(|| {
                    InferError::InvalidInput(format!(
                        "unknown output \"{}\" for model \"{}\"; it has {}",
                        r.name,
                        spec.name,
                        spec.outputs
                            .iter()
                            .map(|t| format!("\"{}\"", t.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
        })
        .collect()
}

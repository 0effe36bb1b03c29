//! Generated protobuf and gRPC code: the Open Inference Protocol (KServe V2) spoken
//! between gateway and model-server, and the gateway's public `gateway.v1` API.

/// Open Inference Protocol (KServe V2) messages and the `GRPCInferenceService`.
// Generated code: the .proto file documents it; lints do not apply.
#[allow(missing_docs, clippy::all)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// The gateway API, version 1.
pub mod gateway {
    /// `gateway.v1`: prediction, feature push and feedback services.
    // Generated code: the .proto file documents it; lints do not apply.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("gateway.v1");
    }
}

/// Serialized `FileDescriptorSet` of the Open Inference Protocol, for gRPC
/// server reflection on the model-server.
pub const INFERENCE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));

/// Serialized `FileDescriptorSet` of the gateway API, for gRPC server
/// reflection on the gateway.
pub const GATEWAY_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/gateway_descriptor.bin"));

/// The caller's deadline from a gRPC request's `grpc-timeout` header (at most
/// 8 digits and a unit H, M, S, m, u or n, per the gRPC HTTP/2 spec); None
/// when absent or malformed.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

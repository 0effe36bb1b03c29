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

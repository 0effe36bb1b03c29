//! Compiles the .proto files with protox (a pure-Rust protobuf compiler), so a
//! fresh machine needs no system `protoc`, and feeds the descriptors to tonic.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let inference = ["proto/inference/grpc_predict_v2.proto"];
    let gateway = [
        "proto/gateway/v1/gateway.proto",
        "proto/gateway/v1/routing_admin.proto",
        // The refresh tuner's admin API (served by the gateway).
        "proto/gateway/v1/tuner_admin.proto",
        // Dynamic-feature events as streamed from Kafka (no service).
        "proto/gateway/v1/events.proto",
    ];
    let files: Vec<&str> = inference.iter().chain(&gateway).copied().collect();
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // One descriptor set per API, for gRPC server reflection (grpcurl works
    // without local .proto files); each server advertises only its own API.
    for (api, name) in [(&inference[..], "inference"), (&gateway[..], "gateway")] {
        let set = protox::compile(api, ["proto"])?;
        std::fs::write(
            out_dir.join(format!("{name}_descriptor.bin")),
            prost::Message::encode_to_vec(&set),
        )?;
    }
    let descriptors = protox::compile(&files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(descriptors)?;
    Ok(())
}

//! Compiles the .proto files with protox (a pure-Rust protobuf compiler), so a
//! fresh machine needs no system `protoc`, and feeds the descriptors to tonic.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/inference/grpc_predict_v2.proto",
        "proto/gateway/v1/gateway.proto",
        // The refresh tuner's admin API (served by the gateway).
        "proto/gateway/v1/tuner_admin.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // One descriptor set per API, for gRPC server reflection (grpcurl works
    // without local .proto files); each server advertises only its own API.
    for (api_files, name) in [
        (&files[..1], "inference"),
        // Every gateway.v1 file in one set.
        (&files[1..], "gateway"),
    ] {
        let set = protox::compile(api_files, ["proto"])?;
        std::fs::write(
            out_dir.join(format!("{name}_descriptor.bin")),
            prost::Message::encode_to_vec(&set),
        )?;
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(descriptors)?;
    Ok(())
}

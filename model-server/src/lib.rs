//! A standalone Open Inference Protocol (KServe V2) server for ONNX models: gRPC
//! and REST fronts over one engine, models run in pure Rust (tract, and a
//! native runtime for tree ensembles), with dynamic batching, warm-up-gated
//! readiness and a live model repository (versions added and removed while
//! it serves).
//!
//! `main.rs` only parses flags and calls [`server::ModelServer::bind`] then `run`.

pub mod batcher;
pub mod cli;
pub mod config;
pub mod datatype;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod http;
pub mod live;
pub mod metrics;
pub mod native;
pub mod repository;
pub mod request;
pub mod runtime;
pub mod server;

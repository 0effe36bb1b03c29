//! Gateway: the gRPC + REST front (auth, routing, enrichment, inference client,
//! post-processing, prediction log, feedback, admin API).
//!
//! Built so far (issue 5, in steps): [`enrich`] assembles a model's input row
//! from the feature store and the caller's request features, with freshness;
//! [`infer`] is the Open Inference Protocol gRPC client with deadlines and a
//! circuit breaker; [`postprocess`] turns scores into labels, decisions, top-k
//! and calibrated scores. Not built yet: the config file, the gRPC and REST
//! fronts, the tower stack, the prediction log and feedback, auth (issue 6)
//! and rollout (issue 8). No code stands in for them.

pub mod config;
pub mod core;
pub mod enrich;
pub mod error;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod postprocess;
pub mod server;

//! Gateway: the gRPC + REST front (auth, routing, enrichment, inference client,
//! post-processing, prediction log, feedback, admin API).
//!
//! Built so far (issue 5, in steps): [`config`] (the TOML file), [`core`]
//! (route → [`enrich`] → [`infer`] → [`postprocess`], pushes, the start-up
//! model check), [`error`] (the one error table), the [`http`] and [`grpc`]
//! fronts, [`metrics`], [`auth`] (SSO tokens, the access policy, the dev
//! issuer; issue 6) and the [`server`] that runs them. Not built yet: the
//! prediction log and feedback, admission as a tower layer (a shared semaphore
//! today) and rollout (issue 8). No code stands in for them.

pub mod auth;
pub mod config;
pub mod core;
pub mod enrich;
pub mod error;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod metrics;
pub mod postprocess;
pub mod server;

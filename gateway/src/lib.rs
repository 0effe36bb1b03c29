//! Gateway: the gRPC + REST front (auth, routing, enrichment, inference client,
//! post-processing, prediction log, feedback, admin API).
//!
//! Built so far (issue 5, in steps): [`config`] (the TOML file), [`core`]
//! (route → [`enrich`] → [`infer`] → [`postprocess`], pushes, the start-up
//! model check), [`error`] (the one error table), the [`http`] and [`grpc`]
//! fronts, [`metrics`], the [`predlog`] prediction log writer (feedback joins
//! to it), the tower stack in [`layers`] (span, shedding, concurrency limit,
//! timeout), [`auth`] (SSO tokens, the access policy, the dev issuer) and the
//! [`server`] that runs them, [`rollout`] (stable, canary, pilot and shadow
//! versions, sticky split, changes at run time) with its admin API in
//! [`routing_admin`], and [`tuner_admin`] (the refresh tuner's admin API and
//! the hosted scheduler).

pub mod auth;
pub mod coalesce;
pub mod config;
pub mod core;
pub mod enrich;
pub mod error;
pub mod grpc;
pub mod h2conn;
pub mod http;
pub mod infer;
pub mod layers;
pub mod metrics;
pub mod postprocess;
pub mod predlog;
pub mod rollout;
pub mod routing_admin;
pub mod server;
pub mod tuner_admin;

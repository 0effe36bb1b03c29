//! Gateway: the gRPC + REST front of the ML platform.
//!
//! Rooms, from the edge inwards:
//! - [`server`]: binds, builds [`state::AppState`], runs and shuts down.
//! - [`front`]: the REST ([`front::rest`]) and gRPC ([`front::grpc`])
//!   fronts, their shared [`front::wire`] conversions, authentication
//!   layers and the tower stack ([`front::layers`]: shedding, timeout,
//!   request metrics).
//! - [`admin`]: the routing and tuner admin APIs, beside the fronts.
//! - [`console`]: the web console over the admin APIs, and its SSO
//!   sign-in (code flow with PKCE, session cookie).
//! - [`apidoc`]: the frame of the REST API's OpenAPI document (info,
//!   bearer scheme, error answers); the routes add their own paths.
//! - [`serve`]: the prediction path both fronts call: predict (with
//!   shadows), push, feedback, start-up checks and readiness.
//! - [`enrich`] (features from the store and the request), [`model`] (the
//!   model-server client: [`model::infer`], [`model::coalesce`],
//!   [`model::h2conn`]), [`postprocess`], [`predlog`] (the prediction log),
//!   [`publish`] (predictions and feedback published to Kafka),
//!   [`rollout`] (stable, canary, pilot and shadow versions).
//! - [`auth`] (tokens, the access policy, the dev issuer), [`error`] (the
//!   one error table), [`metrics`] (the gateway's counters), [`config`]
//!   (the TOML file), [`scheduler`] (the hosted refresh scheduler),
//!   [`ingest`] (the hosted Kafka ingest of dynamic-feature events).
//! - [`scoring`]: batch scoring into the prediction store, with the live
//!   path's enrichment, model client and post-processing.
//! - [`async_predict`]: predictions queued on Kafka and polled, scored by
//!   the gateway's workers through the same path.
//!
//! A request's way: the tower stack admits and times it → the front
//! authenticates the caller and converts the wire form → [`serve::Core`]
//! checks the policy, routes to a version, enriches, calls the model,
//! post-processes and logs → the front converts the answer (or the error,
//! through [`error`]'s table) back to its wire form.

pub mod admin;
pub mod apidoc;
pub mod async_predict;
pub mod auth;
pub mod config;
pub mod console;
pub mod enrich;
pub mod error;
pub mod front;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod postprocess;
pub mod predlog;
pub mod publish;
pub mod rollout;
pub mod scheduler;
pub mod scoring;
pub mod serve;
pub mod server;
pub mod similar;
pub mod state;

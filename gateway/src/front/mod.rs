//! The two fronts over one prediction path: [`rest`] (axum, JSON) and
//! [`grpc`] (tonic, protobuf), with what they share: [`wire`] conversions,
//! the authentication layers ([`authn`]), the tower stack that sheds,
//! times out and records each request ([`layers`]), and the `/metrics`
//! page ([`scrape`]).

pub mod authn;
pub mod grpc;
pub mod layers;
pub mod rest;
pub mod scrape;
pub mod wire;

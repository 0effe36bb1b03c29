//! The model-server client: [`infer`] makes Open Inference Protocol (KServe
//! V2) calls with a circuit breaker, over the HTTP/2 connections of
//! [`h2conn`]; [`coalesce`] sends single-row predictions through a
//! [`coalesce::RowClient`], together while the model-server is busy.
//! Dependencies point one way: `coalesce` → `infer` → `h2conn`.

pub mod coalesce;
pub mod h2conn;
pub mod infer;
pub mod stats;

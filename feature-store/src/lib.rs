//! Feature store: feature definitions, the `FeatureStore` read/write interface with
//! its ScyllaDB and embedded backends, the moka row cache, static refresh jobs and
//! the refresh auto-tuner.
//!
//! What exists now: [`definitions`], the TOML file data engineers edit (entities,
//! static and dynamic feature views with types, defaults, ages, ttls and windowed
//! aggregates, request features, and each model's ordered input columns), loaded
//! and validated with errors that name the file and key path; and [`freshness`],
//! which resolves a stored row against its view at a given time into one value
//! per feature, telling present, stale, missing and wrongly typed values apart
//! and applying the declared defaults; and [`source`], which streams a static
//! view's refresh file (CSV or Parquet) as typed rows, rejecting bad rows with
//! their line or row number and reason.
//!
//! Not built yet (issue 4, feature store; issue 7, auto-tuner): the
//! `FeatureStore` interface and its backends, the row cache, refresh jobs with
//! batch metadata, the dynamic-feature ingest (which will compute the declared
//! aggregates), the tuner and the data engineers' CLI. No code stands in for
//! them.

pub mod cli;
pub mod codec;
pub mod config;
pub mod definitions;
pub mod freshness;
pub mod reader;
pub mod refresh;
pub mod source;
pub mod store;

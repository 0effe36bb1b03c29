//! Feature store: feature definitions, the `FeatureStore` read/write interface with
//! its ScyllaDB and embedded backends, the moka row cache, static refresh jobs and
//! the refresh auto-tuner.
//!
//! Modules: [`definitions`] (the TOML file data engineers edit, validated with
//! errors naming file and key path); [`source`] (CSV and Parquet refresh files
//! streamed as typed rows, bad rows rejected with line and reason); [`codec`]
//! (the stored byte form of a row); [`aggregate`] (raw events of dynamic
//! views and the windowed aggregates computed from them); [`log`] (prediction log and feedback
//! records); [`store`] (the [`store::FeatureStore`]
//! interface, the ScyllaDB and embedded redb backends); [`freshness`] (present,
//! missing, stale, wrong type; defaults applied); [`reader`] (the moka row
//! cache, current-batch watch, dynamic pushes); [`refresh`] (refresh runs with
//! batch metadata); [`config`] (backend settings); [`cli`] (the `mlgw-features`
//! flags).
//!
//! [`tuner`] holds the refresh auto-tuner's metric, controller and
//! simulation (issue 7, first part: no scheduler or admin API yet).

pub mod aggregate;
pub mod cli;
pub mod codec;
pub mod config;
pub mod definitions;
pub mod freshness;
pub mod log;
pub mod reader;
pub mod refresh;
pub mod schedule;
pub mod source;
pub mod store;
pub mod tuner;

//! Feature store: the feature definitions data engineers write, the storage
//! behind them (ScyllaDB, or an embedded redb file), the reader the gateway
//! serves features from, refresh runs that load static views, the refresh
//! scheduler and the auto-tuner that picks each job's interval.
//!
//! Modules, lowest layer first (none uses a module listed after it):
//! - [`clock`]: time as the store keeps it; [`definitions`]: the TOML
//!   definitions, validated with errors naming file and key path (including
//!   how each refresh job is tuned); [`source`]: CSV and Parquet refresh files as
//!   typed rows, bad rows rejected with line and reason; [`codec`]: the
//!   stored byte form of a row; [`combination`]: the stable key of an
//!   ordered feature-value combination (precomputed predictions).
//! - [`cardinality`]: a scoring run's distinct keys and categories, judged
//!   against its job's limits;
//!   [`freshness`]: present, missing, stale, wrong type, defaults applied;
//!   [`aggregate`]: raw events of dynamic views and their windowed
//!   aggregates; [`log`]: prediction log and feedback records; [`runs`]: the
//!   scheduler's stored records; [`tuner`]: the auto-tuner's metric,
//!   controller, simulation and plot (pure computation).
//! - [`store`]: one trait per storage concern, the two backends (a folder of
//!   files by concern each) and [`store::AnyStore`].
//! - [`reader`]: the row cache, current-batch watch and dynamic pushes;
//!   [`refresh`]: refresh runs with batch records; [`config`]: backend
//!   settings.
//! - [`ingest`]: dynamic views' events consumed from Kafka through the
//!   reader's batched event writes, bad records dead-lettered.
//! - [`schedule`]: the refresh scheduler, the tuner's steps against the
//!   store, and the job operations shared by the CLI and the admin API;
//!   [`cli`]: the `mlgw-features` flags.

pub mod aggregate;
pub mod cardinality;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod combination;
pub mod config;
pub mod definitions;
pub mod freshness;
pub mod ingest;
pub mod log;
pub mod reader;
pub mod refresh;
pub mod runs;
pub mod schedule;
pub mod similarity;
pub mod source;
pub mod store;
pub mod tuner;

//! The data engineers' command line, `mlgw-features`: flags and commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{StoreSettings, default_embedded_path};

/// Manage the feature store: schema, definitions, refresh jobs, batches, reads.
#[derive(Debug, Parser)]
#[command(name = "mlgw-features", version)]
pub struct Cli {
    /// Print JSON instead of text (one document on stdout).
    #[arg(long, global = true)]
    pub json: bool,
    /// Where the features are stored.
    #[command(flatten)]
    pub store: StoreFlags,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Backend selection: the embedded file by default, ScyllaDB with `--scylla`.
#[derive(Debug, Args)]
pub struct StoreFlags {
    /// Embedded store file (default: $XDG_DATA_HOME/mlgw/features.redb).
    #[arg(
        long,
        global = true,
        env = "MLGW_FEATURES_EMBEDDED",
        conflicts_with = "scylla"
    )]
    pub embedded: Option<PathBuf>,
    /// Use ScyllaDB/Cassandra at these contact points (comma-separated host:port).
    #[arg(long, global = true, env = "MLGW_SCYLLA_NODES", value_delimiter = ',')]
    pub scylla: Vec<String>,
    /// ScyllaDB keyspace.
    #[arg(
        long,
        global = true,
        env = "MLGW_SCYLLA_KEYSPACE",
        default_value = "mlgw_features"
    )]
    pub keyspace: String,
    /// Replication map used when `schema apply` creates the keyspace.
    #[arg(long, global = true, env = "MLGW_SCYLLA_REPLICATION")]
    pub replication: Option<String>,
    /// Read consistency level.
    #[arg(long, global = true, env = "MLGW_SCYLLA_READ_CONSISTENCY")]
    pub read_consistency: Option<String>,
    /// Per-call deadline of reads, in milliseconds.
    #[arg(long, global = true, env = "MLGW_SCYLLA_READ_TIMEOUT_MS")]
    pub read_timeout_ms: Option<u64>,
}

impl StoreFlags {
    /// The backend these flags choose.
    pub fn settings(&self) -> StoreSettings {
        if self.scylla.is_empty() {
            StoreSettings::Embedded {
                path: self.embedded.clone().unwrap_or_else(default_embedded_path),
                cache_mib: None,
            }
        } else {
            StoreSettings::Scylla {
                nodes: self.scylla.clone(),
                keyspace: Some(self.keyspace.clone()),
                replication: self.replication.clone(),
                read_consistency: self.read_consistency.clone(),
                write_consistency: None,
                read_timeout_ms: self.read_timeout_ms,
                write_timeout_ms: None,
            }
        }
    }
}

/// The definitions file, for commands that need it.
#[derive(Debug, Args)]
pub struct DefinitionsFlag {
    /// Feature definitions file (TOML).
    #[arg(long, short = 'd', env = "MLGW_FEATURE_DEFINITIONS")]
    pub definitions: PathBuf,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the store's tables (idempotent).
    Schema {
        /// Schema action.
        #[command(subcommand)]
        action: SchemaAction,
    },
    /// Check a definitions file and summarise it.
    Validate {
        /// The file.
        #[command(flatten)]
        definitions: DefinitionsFlag,
    },
    /// Refresh jobs.
    Refresh {
        /// Refresh action.
        #[command(subcommand)]
        action: RefreshAction,
    },
    /// Refresh batches.
    Batches {
        /// Batch action.
        #[command(subcommand)]
        action: BatchesAction,
    },
    /// Similarity indexes of vector features: build, query, size by recall.
    Index {
        /// Index action.
        #[command(subcommand)]
        action: IndexAction,
    },
    /// Read an entity's features with their freshness.
    Read {
        /// The file.
        #[command(flatten)]
        definitions: DefinitionsFlag,
        /// Views to read (comma-separated; default: every view of the entity).
        #[arg(long, value_delimiter = ',')]
        view: Vec<String>,
        /// The entity key (compound keys: parts joined by `|`).
        #[arg(long)]
        entity: String,
    },
    /// The refresh auto-tuner: list jobs, judge a window, show, history,
    /// pin, unpin, run now, SVG report.
    Tuner {
        /// What to do.
        #[command(subcommand)]
        action: TunerAction,
    },
    /// The refresh scheduler (also hosted by the gateway with
    /// `[scheduler] enabled = true`).
    Scheduler {
        /// What to do.
        #[command(subcommand)]
        action: SchedulerAction,
    },
    /// Write fresh values of a dynamic view for one entity, and/or one raw
    /// event behind its windowed aggregates (`--field`).
    Push {
        /// The file.
        #[command(flatten)]
        definitions: DefinitionsFlag,
        /// The dynamic view.
        #[arg(long)]
        view: String,
        /// The entity key.
        #[arg(long)]
        entity: String,
        /// A value, `feature=value` (repeat for several).
        #[arg(long = "set", required_unless_present = "fields")]
        values: Vec<String>,
        /// A field of one raw event, `field=value` (repeat for several), for
        /// views whose features are windowed aggregates.
        #[arg(long = "field")]
        fields: Vec<String>,
        /// The event's ID (default: derived from the entity, event time and
        /// fields, so pushing the same event twice counts it once).
        #[arg(long, requires = "fields")]
        event_id: Option<String>,
        /// Event time in seconds since the Unix epoch, fractions allowed
        /// (default: now).
        #[arg(long)]
        event_time: Option<String>,
    },
    /// Consume the dynamic views' Kafka topics (each view's `source`) into
    /// the store until Ctrl-C / SIGTERM (also hosted by the gateway with
    /// `[ingest] enabled = true`).
    Ingest(IngestFlags),
}

/// `mlgw-features ingest`: the gateway's `[ingest]` settings as flags.
#[derive(Debug, Args)]
pub struct IngestFlags {
    /// The file.
    #[command(flatten)]
    pub definitions: DefinitionsFlag,
    /// Kafka bootstrap servers, `host:port,host:port`.
    #[arg(long, env = "MLGW_INGEST_BROKERS")]
    pub brokers: String,
    /// The consumer group.
    #[arg(long, env = "MLGW_INGEST_GROUP_ID", default_value = "mlgw-ingest")]
    pub group_id: String,
    /// Where refused records go, with the reason in headers.
    #[arg(
        long,
        env = "MLGW_INGEST_DEAD_LETTER_TOPIC",
        default_value = "mlgw.ingest.dead-letter"
    )]
    pub dead_letter_topic: String,
    /// Records written per batch at most.
    #[arg(long, default_value_t = 5000)]
    pub batch_max: usize,
    /// How long a batch waits to fill after its first record, ms.
    #[arg(long, default_value_t = 20)]
    pub linger_ms: u64,
    /// A member silent this long leaves the group, ms.
    #[arg(long, default_value_t = 10_000)]
    pub session_timeout_ms: u64,
}

/// A declared refresh job (its `[[refresh_job]]` holds the schedule and the
/// tuner's policy).
#[derive(Debug, Args)]
pub struct JobFlags {
    /// The feature definitions.
    #[command(flatten)]
    pub definitions: DefinitionsFlag,
    /// The refresh job (a `[[refresh_job]]` name).
    #[arg(long)]
    pub job: String,
}

/// `mlgw-features tuner …`.
#[derive(Debug, Subcommand)]
pub enum TunerAction {
    /// Every declared job: interval, last good, last window's metric, last
    /// batch, next run, pin.
    List {
        /// The feature definitions.
        #[command(flatten)]
        definitions: DefinitionsFlag,
    },
    /// Judge the last window of a job now and change its interval if due
    /// (the scheduler does this every window).
    Evaluate {
        /// The job.
        #[command(flatten)]
        job: JobFlags,
    },
    /// A job's interval, last good interval, pin and decisions.
    Show {
        /// The refresh job.
        #[arg(long)]
        job: String,
        /// Decisions to show, newest last.
        #[arg(long, default_value_t = 20)]
        history: usize,
    },
    /// A job's decisions and runs, oldest first.
    History {
        /// The job.
        #[command(flatten)]
        job: JobFlags,
        /// Entries to show, newest last.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Hold a job at an interval until unpinned.
    Pin {
        /// The job.
        #[command(flatten)]
        job: JobFlags,
        /// The interval, e.g. "4h".
        #[arg(long)]
        to: String,
        /// Who pins (kept in the history).
        #[arg(long, env = "USER")]
        by: String,
        /// Why (kept in the history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let the tuner decide again.
    Unpin {
        /// The job.
        #[command(flatten)]
        job: JobFlags,
        /// Who unpins (kept in the history).
        #[arg(long, env = "USER")]
        by: String,
    },
    /// Ask the scheduler to run a job at its next poll (identical input is
    /// reloaded).
    Run {
        /// The job.
        #[command(flatten)]
        job: JobFlags,
        /// Who asks (kept in the run's record).
        #[arg(long, env = "USER")]
        by: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Write an SVG plot of a job's interval and metric over time, from its
    /// stored history.
    Report {
        /// The job.
        #[command(flatten)]
        job: JobFlags,
        /// The SVG file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `mlgw-features scheduler …`.
#[derive(Debug, Subcommand)]
pub enum SchedulerAction {
    /// Run the declared refresh jobs at their intervals until Ctrl-C/SIGTERM.
    Run {
        /// The feature definitions.
        #[command(flatten)]
        definitions: DefinitionsFlag,
        /// How often to look for due work, e.g. "5s".
        #[arg(long, default_value = "5s")]
        poll: String,
        /// Look once, wait for the runs started, and exit.
        #[arg(long)]
        once: bool,
    },
}

/// `schema` actions.
#[derive(Debug, Subcommand)]
pub enum SchemaAction {
    /// Create missing tables and record the schema version.
    Apply,
}

/// `refresh` actions.
#[derive(Debug, Subcommand)]
pub enum RefreshAction {
    /// Load a CSV or Parquet file as a new batch of a static view.
    Run {
        /// The file.
        #[command(flatten)]
        definitions: DefinitionsFlag,
        /// The refresh job (as named by a static view's `refresh_job`).
        #[arg(long)]
        job: String,
        /// The view, when the job refreshes several.
        #[arg(long)]
        view: Option<String>,
        /// The CSV or Parquet file.
        #[arg(long)]
        file: PathBuf,
        /// Version of the script that produced the file (recorded in the batch).
        #[arg(long, default_value = "unversioned", env = "MLGW_SCRIPT_VERSION")]
        script_version: String,
        /// Load even if the current batch came from identical input.
        #[arg(long)]
        force: bool,
        /// Fail the batch when more than this percentage of rows is rejected.
        #[arg(long, default_value_t = 1.0)]
        max_rejected_percent: f64,
        /// A run silent for longer than this (no progress renewing its lease
        /// in the store) counts as interrupted, e.g. killed; its batch is then
        /// failed by the next run of the view or `batches reap`.
        #[arg(long, default_value = "60s", value_parser = crate::definitions::parse_duration)]
        liveness: std::time::Duration,
    },
}

/// `index` actions.
#[derive(Debug, Subcommand)]
pub enum IndexAction {
    /// Build a view's index from its current batch and make it current
    /// (refresh runs do this on their own; skipped when the current index
    /// is already of that batch, unless --force).
    Build {
        /// The file.
        #[command(flatten)]
        definitions: DefinitionsFlag,
        /// The static view declaring `[static_view.index]`.
        #[arg(long)]
        view: String,
        /// Threads adding vectors.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Rebuild even if the current index is of the current batch.
        #[arg(long)]
        force: bool,
    },
    /// The k nearest neighbours of an entity (or of a vector) in the view's
    /// current index, as the gateway would answer.
    Query {
        /// The file.
        #[command(flatten)]
        definitions: DefinitionsFlag,
        /// The view.
        #[arg(long)]
        view: String,
        /// The query entity's key (compound keys: parts joined by `|`).
        #[arg(long, conflicts_with = "vector", required_unless_present = "vector")]
        entity: Option<String>,
        /// A query vector: its numbers separated by spaces or commas.
        #[arg(long)]
        vector: Option<String>,
        /// How many neighbours.
        #[arg(long, default_value_t = 10)]
        k: usize,
    },
    /// Measure smaller dimensions (PCA of the view's vectors): recall@k
    /// against exact search, query p50/p99, memory per vector; recommend the
    /// smallest dimension whose recall holds the view's threshold. Writes
    /// sizing.md and sizing.svg into --out.
    Size {
        /// The file.
        #[command(flatten)]
        definitions: DefinitionsFlag,
        /// The view.
        #[arg(long)]
        view: String,
        /// Dimensions to try below the full one.
        #[arg(long, value_delimiter = ',', default_value = "48,32,24,16,12,8")]
        dims: Vec<usize>,
        /// Neighbours per query (recall@k).
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Queries per dimension (vectors of the batch, left out of their own answers).
        #[arg(long, default_value_t = 500)]
        queries: usize,
        /// Folder for sizing.md and sizing.svg.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Read the vectors from this refresh file (CSV or Parquet) instead
        /// of the view's current batch in the store.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// `batches` actions.
#[derive(Debug, Subcommand)]
pub enum BatchesAction {
    /// List a view's batches, newest first.
    List {
        /// The static view.
        #[arg(long)]
        view: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Fail the view's batches whose runs stopped without finishing (killed,
    /// machine lost): `ingested`/`processing` batches whose run has not
    /// renewed its liveness lease within `--liveness`. Their rows are
    /// discarded; the current batch is untouched.
    Reap {
        /// The static view.
        #[arg(long)]
        view: String,
        /// How long a reaped batch's lease is then held (a run that wakes up
        /// finds it taken and stops).
        #[arg(long, default_value = "60s", value_parser = crate::definitions::parse_duration)]
        liveness: std::time::Duration,
    },
}

//! `mlgw-score`'s flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Batch scoring: precompute a model's predictions into its prediction
/// store, as declared by a `[[scoring_job]]` in the feature definitions.
#[derive(Debug, Parser)]
#[command(name = "mlgw-score", version)]
pub struct Cli {
    /// The gateway config file (TOML): the store, the models' endpoints and
    /// post-processing, the feature definitions.
    #[arg(long, env = "MLGW_GATEWAY_CONFIG")]
    pub config: PathBuf,
    /// Print the result as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score a job's keys and switch its model to the new batch when
    /// complete. Exit status: 0 served (or this shard's part done), 1
    /// failed, 3 refused by the cardinality watch (the previous batch stays
    /// served).
    Run {
        /// The `[[scoring_job]]` name.
        job: String,
        /// This process's part of a sharded run, INDEX/COUNT (e.g. 2/4); in
        /// a Kubernetes Indexed Job, the completion index over the
        /// completions.
        #[arg(long, env = "MLGW_SCORE_SHARD")]
        shard: Option<String>,
        /// The name every shard of one run shares (e.g. the Job's name);
        /// needed with --shard.
        #[arg(long, env = "MLGW_SCORE_RUN")]
        run: Option<String>,
        /// Rows per model-server call (at most the model's max batch size).
        #[arg(long, default_value_t = 256)]
        batch_rows: usize,
        /// Model-server calls in flight at once.
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
    },
    /// The job's recent scoring batches: status, rows, rejected rows and
    /// cardinality alarms.
    Runs {
        /// The `[[scoring_job]]` name.
        job: String,
        /// How many batches.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
}

//! The flags of `mlgw-admin`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Change and inspect a running gateway's model routing (rollout stages)
/// through its admin API. Needs a token with the admin scope.
#[derive(Debug, Parser)]
#[command(name = "mlgw-admin", version)]
pub struct Cli {
    /// The gateway's REST address.
    #[arg(long, env = "MLGW_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A bearer token with the admin scope.
    #[arg(
        long,
        env = "MLGW_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// A file holding the token (e.g. target/mlgw-demo/dev-token).
    #[arg(long, env = "MLGW_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the gateway's JSON answer instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline of the call.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every model with the routing it serves.
    Models,
    /// One model's routing and its latest changes.
    Show {
        /// The model.
        model: String,
    },
    /// One model's history of routing changes (who, when, what).
    History {
        /// The model.
        model: String,
        /// Newest changes to show (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Make VERSION the stable version.
    Stable {
        /// The model.
        model: String,
        /// The version.
        version: String,
        /// Why (kept in the history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Make VERSION the canary at PERCENT of callers (sticky per caller).
    Canary {
        /// The model.
        model: String,
        /// The version.
        version: String,
        /// Share of callers, e.g. 10.
        #[arg(long)]
        percent: f64,
        /// Why (kept in the history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Change the canary's share of callers.
    Weight {
        /// The model.
        model: String,
        /// Share of callers, e.g. 20.
        percent: f64,
        /// Why (kept in the history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// The canary becomes stable.
    Promote {
        /// The model.
        model: String,
        /// Why (kept in the history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Stop the canary; its callers go back to stable.
    RemoveCanary {
        /// The model.
        model: String,
        /// Why (kept in the history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Add or remove a shadow version (a silent copy of every call).
    Shadow {
        /// `add` or `remove`.
        #[arg(value_parser = ["add", "remove"])]
        op: String,
        /// The model.
        model: String,
        /// The version.
        version: String,
        /// Why (kept in the history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Add or remove a pilot version (reachable only by some groups).
    Pilot {
        /// `add` or `remove`.
        #[arg(value_parser = ["add", "remove"])]
        op: String,
        /// The model.
        model: String,
        /// The version.
        version: String,
        /// The pilot groups (add), comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Members reach it only when they ask for the version (add).
        #[arg(long)]
        manual_only: bool,
        /// Why (kept in the history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Go back to the routing before the latest change.
    Rollback {
        /// The model.
        model: String,
        /// Why (kept in the history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Shadow versions compared with the answers they shadowed.
    ShadowReport {
        /// The model.
        model: String,
        /// The window ending now, in seconds.
        #[arg(long, default_value_t = 3600)]
        window_s: u64,
    },
}

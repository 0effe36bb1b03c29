//! `mlgw-score`: runs a batch-scoring job against the store and the
//! model-servers a gateway config names (as a cron job, a Kubernetes
//! (Indexed) Job, or by hand), and lists a job's scoring batches.

mod cli;

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use feature_store::definitions::FeatureDefinitions;
use feature_store::reader::FeatureReader;
use gateway::config::GatewayConfig;
use gateway::scoring::{
    Progress, RunOptions, RunOutcome, RunReport, Scorer, ScoringSettings, Shard,
};
use serde_json::json;

use cli::{Cli, Command};

/// Exit status of a run the cardinality watch refused.
const REFUSED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mlgw-score: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mlgw-score: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let config = GatewayConfig::load(&cli.config)?;
    let _telemetry = telemetry::init(&telemetry::TelemetrySettings {
        log_json: cli.json || config.telemetry.log_json,
        ..telemetry::TelemetrySettings::logs_only("mlgw-score")
    })?;
    let defs = Arc::new(FeatureDefinitions::load(&config.definitions)?);
    let store = Arc::new(
        config
            .store
            .connect()
            .await
            .context("cannot open the feature store")?,
    );
    match cli.command {
        Command::Runs { job, limit } => {
            let reader =
                Arc::new(FeatureReader::new(Arc::clone(&store), defs, config.cache.clone()).await?);
            let scorer = Scorer::new(reader, &config.models, ScoringSettings::default());
            let batches = scorer.batches(&job, limit).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&batches)?);
            } else if batches.is_empty() {
                println!("{job}: no scoring batch yet");
            } else {
                for b in &batches {
                    let mut line = format!(
                        "{} {:<10} {:>9} rows {:>6} rejected  {}",
                        b.batch_id, b.status, b.rows, b.rejected, b.scored_with
                    );
                    if b.served {
                        line.push_str("  SERVED");
                    }
                    if !b.alarms.is_empty() {
                        line.push_str(&format!("  alarms: {}", b.alarms.join("; ")));
                    }
                    if let Some(e) = &b.error {
                        line.push_str(&format!("  error: {e}"));
                    }
                    println!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            job,
            shard,
            run,
            batch_rows,
            in_flight,
        } => {
            if batch_rows == 0 || in_flight == 0 {
                bail!("--batch-rows and --in-flight must be at least 1");
            }
            let shard = shard
                .as_deref()
                .map(Shard::parse)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let reader =
                Arc::new(FeatureReader::new(Arc::clone(&store), defs, config.cache.clone()).await?);
            let scorer = Scorer::new(
                reader,
                &config.models,
                ScoringSettings {
                    batch_rows,
                    in_flight,
                    ..ScoringSettings::default()
                },
            );
            let meter = Meter::new(!cli.json && std::io::stderr().is_terminal());
            let report = scorer
                .run(&job, &RunOptions { shard, run }, &|p| meter.tick(p))
                .await?;
            meter.finish();
            print_report(&report, cli.json)?;
            Ok(match report.outcome {
                RunOutcome::Switched | RunOutcome::ShardDone { .. } => ExitCode::SUCCESS,
                RunOutcome::Refused => ExitCode::from(REFUSED),
                RunOutcome::ShardFailed { .. } => ExitCode::FAILURE,
            })
        }
    }
}

/// Progress on a terminal (a bar with rows/s), or a plain line every
/// 10 seconds otherwise.
struct Meter {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: std::sync::Mutex<Instant>,
}

impl Meter {
    fn new(terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos} rows scored  {per_sec}  {elapsed}  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Meter {
            bar,
            started: Instant::now(),
            last_line: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn tick(&self, p: Progress) {
        if let Some(bar) = &self.bar {
            bar.set_position(p.scored);
            if p.rejected > 0 {
                bar.set_message(format!("{} rejected", p.rejected));
            }
            return;
        }
        let Ok(mut last) = self.last_line.lock() else {
            return;
        };
        if last.elapsed() >= Duration::from_secs(10) {
            *last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            eprintln!(
                "scored {} rows ({} rejected), {:.0} rows/s",
                p.scored,
                p.rejected,
                p.scored as f64 / secs
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_report(r: &RunReport, json: bool) -> Result<()> {
    let outcome = match &r.outcome {
        RunOutcome::Switched => "served".to_owned(),
        RunOutcome::Refused => {
            "refused by the cardinality watch; the previous batch stays served".to_owned()
        }
        RunOutcome::ShardDone { done, of } => format!("shard done ({done} of {of} parts done)"),
        RunOutcome::ShardFailed { part } => format!("not served: part {part} failed"),
    };
    let alarms: Vec<String> = r
        .cardinality
        .iter()
        .flat_map(|c| c.alarms.iter().map(ToString::to_string))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "job": r.job,
                "model": r.model,
                "model_version": r.model_version,
                "batch_id": r.batch_id,
                "shard": r.shard.to_string(),
                "scored": r.scored,
                "rejected": r.rejected,
                "rejections": r.rejections,
                "rows_per_second": r.rows_per_second(),
                "elapsed_s": r.elapsed.as_secs_f64(),
                "outcome": outcome,
                "cardinality": r.cardinality,
            }))?
        );
        return Ok(());
    }
    println!(
        "{} batch {} (model {} version {}, shard {}): {} rows scored, {} rejected in {:.1?} ({:.0} rows/s): {}",
        r.job,
        r.batch_id,
        r.model,
        r.model_version,
        r.shard,
        r.scored,
        r.rejected,
        r.elapsed,
        r.rows_per_second(),
        outcome
    );
    for row in r.rejections.iter().take(10) {
        println!("  rejected line {}: {}", row.line, row.reason);
    }
    if let Some(c) = &r.cardinality {
        println!("  distinct keys: {}", c.keys);
        for f in &c.features {
            println!(
                "  {}: {} distinct values, {} new (previous run: {} new)",
                f.feature, f.distinct, f.new, f.previous_new
            );
        }
    }
    for a in &alarms {
        println!("  ALARM: {a}");
    }
    Ok(())
}

//! The CLI's commands: each connects what it needs, does one thing and prints
//! text for a person or, with `--json`, one JSON document for a script.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use feature_store::cli::{
    BatchesAction, Cli, Command, IndexAction, IngestFlags, RefreshAction, SchedulerAction,
    SchemaAction, TunerAction,
};
use feature_store::clock::utc;
use feature_store::definitions::{FeatureDefinitions, FeatureType, FeatureValue, ViewKind};
use feature_store::freshness::{ResolvedView, ValueState};
use feature_store::ingest::{Ingest, IngestSettings};
use feature_store::reader::{FeatureReader, ReaderConfig};
use feature_store::refresh::{self, RefreshError, RefreshOptions, RefreshOutcome};
use feature_store::schedule::jobs::{self, JobDetail, JobOverview};
use feature_store::schedule::{Clock, Scheduler, SchedulerConfig, SystemClock, TickEvent};
use feature_store::source::KEY_SEPARATOR;
use feature_store::store::{
    AnyStore, ArtifactStore, BatchRecord, BatchStore, RowStore, TunerStore, to_micros,
};
use feature_store::tuner::TunedJob;
use feature_store::tuner::controller::{JobState, human as tuner_human};
use serde_json::{Value, json};

/// `println!` that ignores a closed stdout (`mlgw-features … | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let json = cli.json;
    match &cli.command {
        Command::Validate { definitions } => validate(&definitions.definitions, json),
        Command::Schema {
            action: SchemaAction::Apply,
        } => {
            let store = connect(&cli).await?;
            let report = store.apply_schema().await?;
            if json {
                print_json(&json!({ "store": cli.store.settings().describe(), "report": report }));
            } else {
                out!(
                    "{}: schema version {} -> {}",
                    cli.store.settings().describe(),
                    report.from_version,
                    report.to_version
                );
                for line in &report.applied {
                    out!("  {line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Refresh {
            action:
                RefreshAction::Run {
                    definitions,
                    job,
                    view,
                    file,
                    script_version,
                    force,
                    max_rejected_percent,
                    liveness,
                },
        } => {
            let defs = load_definitions(&definitions.definitions)?;
            let store = connect(&cli).await?;
            let options = RefreshOptions {
                script_version: script_version.clone(),
                force: *force,
                max_rejected_percent: *max_rejected_percent,
                liveness: *liveness,
                ..RefreshOptions::default()
            };
            refresh_run(&store, &defs, job, view.as_deref(), file, &options, json).await
        }
        Command::Index { action } => index(&cli, action, json).await,
        Command::Batches {
            action: BatchesAction::Reap { view, liveness },
        } => {
            let store = connect(&cli).await?;
            let reaped = feature_store::refresh::reap_interrupted(&store, view, *liveness).await?;
            if json {
                print_json(
                    &json!({ "view": view, "reaped": reaped.iter().map(batch_json).collect::<Vec<_>>() }),
                );
            } else if reaped.is_empty() {
                out!("view {view:?}: no interrupted refresh run");
            } else {
                for b in &reaped {
                    out!(
                        "batch {} failed: {}",
                        b.batch_id,
                        b.error.as_deref().unwrap_or("interrupted")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Batches {
            action: BatchesAction::List { view, limit },
        } => {
            let store = connect(&cli).await?;
            let batches = store.list_batches(view, *limit).await?;
            if json {
                print_json(
                    &json!({ "view": view, "batches": batches.iter().map(batch_json).collect::<Vec<_>>() }),
                );
            } else if batches.is_empty() {
                out!("view {view:?} has no refresh batches");
            } else {
                let current = store
                    .current_batches()
                    .await?
                    .remove(view)
                    .map(|c| c.batch_id);
                out!(
                    "{:<38} {:<10} {:>10} {:>9}  {:<20} {:<12} job",
                    "batch",
                    "status",
                    "rows",
                    "rejected",
                    "ingested (UTC)",
                    "took"
                );
                for b in &batches {
                    let mark = if current.as_deref() == Some(b.batch_id.as_str()) {
                        " *current"
                    } else {
                        ""
                    };
                    let took = match (b.started_at, b.finished_at) {
                        (Some(s), Some(f)) => {
                            human_duration(f.duration_since(s).unwrap_or_default())
                        }
                        _ => "-".to_owned(),
                    };
                    out!(
                        "{:<38} {:<10} {:>10} {:>9}  {:<20} {:<12} {}{mark}",
                        b.batch_id,
                        b.status.as_str(),
                        b.rows_written,
                        b.rows_rejected,
                        utc(b.ingested_at),
                        took,
                        b.job
                    );
                    if let Some(e) = &b.error {
                        out!("    error: {e}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Read {
            definitions,
            view,
            entity,
        } => {
            let defs = Arc::new(load_definitions(&definitions.definitions)?);
            if let Some(unknown) = view.iter().find(|v| defs.view(v).is_none()) {
                bail!("unknown feature view {unknown:?}");
            }
            let store = connect(&cli).await?;
            read(store, defs, view, entity, json).await
        }
        Command::Ingest(flags) => ingest(&cli, flags, json).await,
        Command::Tuner { action } => tuner(&cli, action, json).await,
        Command::Scheduler { action } => scheduler(&cli, action, json).await,
        Command::Push {
            definitions,
            view,
            entity,
            values,
            fields,
            event_id,
            event_time,
        } => {
            let defs = Arc::new(load_definitions(&definitions.definitions)?);
            let store = connect(&cli).await?;
            push(
                store,
                defs,
                PushArgs {
                    view_name: view,
                    entity,
                    assignments: values,
                    fields,
                    event_id: event_id.as_deref(),
                    event_time: event_time.as_deref(),
                },
                json,
            )
            .await
        }
    }
}

fn duration_flag(flag: &str, text: &str) -> Result<Duration> {
    feature_store::definitions::parse_duration(text).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

fn state_json(s: &JobState, history: usize) -> Value {
    let skip = s.history.len().saturating_sub(history);
    json!({
        "job": s.job,
        "interval_s": s.interval.as_secs(),
        "last_good_s": s.last_good.as_secs(),
        "cooldown_left": s.cooldown_left,
        "pin": s.pin.as_ref().map(jobs::pin_json),
        "history": s.history.iter().skip(skip).map(jobs::decision_json).collect::<Vec<_>>(),
    })
}

fn print_state(s: &JobState, history: usize) {
    out!(
        "job {}: interval {}, last good {}{}",
        s.job,
        tuner_human(s.interval),
        tuner_human(s.last_good),
        s.pin.as_ref().map_or_else(String::new, |p| format!(
            ", pinned at {} by {}",
            tuner_human(p.interval),
            p.by
        ))
    );
    let skip = s.history.len().saturating_sub(history);
    for d in s.history.iter().skip(skip) {
        out!("  {}  {}", utc(d.at), d.reason);
    }
}

fn print_overview(o: &JobOverview) {
    let metric = match (&o.metric, &o.last_window) {
        (Some((name, threshold)), Some(d)) => format!(
            "{name} {} (threshold {threshold}, {} labels, {})",
            d.metric
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.3}")),
            d.samples,
            utc(d.at)
        ),
        (Some((name, threshold)), None) => {
            format!("{name}: no window judged yet (threshold {threshold})")
        }
        (None, _) => "fixed interval (no tuner)".to_owned(),
    };
    out!(
        "{}  (view {})\n  interval {}{}{}\n  metric   {metric}",
        o.job,
        o.view,
        tuner_human(o.interval),
        o.last_good
            .map_or_else(String::new, |g| format!(", last good {}", tuner_human(g))),
        o.pin.as_ref().map_or_else(String::new, |p| format!(
            ", PINNED by {} at {}{}",
            p.by,
            utc(p.at),
            p.reason
                .as_deref()
                .map_or_else(String::new, |r| format!(" ({r})"))
        ))
    );
    match &o.last_batch {
        Some(b) => out!(
            "  batch    {} {} ({} rows, {}){}",
            b.batch_id,
            b.status.as_str(),
            b.rows_written,
            utc(b.ingested_at),
            b.error
                .as_deref()
                .map_or_else(String::new, |e| format!(": {e}"))
        ),
        None => out!("  batch    none yet"),
    }
    if let Some(r) = &o.last_run {
        out!(
            "  last run {} {}: {}",
            utc(r.started_at),
            r.outcome.as_str(),
            r.message
        );
    }
    match (&o.pending_request, o.next_run) {
        (Some(r), _) => out!(
            "  next run at the scheduler's next poll (requested by {} at {})",
            r.by,
            utc(r.at)
        ),
        (None, Some(t)) => out!("  next run {}", utc(t)),
        (None, None) => out!("  next run at the scheduler's next poll (never run)"),
    }
}

/// A job's decisions and runs merged by time, oldest first.
fn history_lines(d: &JobDetail) -> Vec<(SystemTime, String)> {
    let mut lines: Vec<(SystemTime, String)> = d
        .decisions
        .iter()
        .map(|x| (x.at, format!("tuner  {}", x.reason)))
        .chain(d.runs.iter().map(|r| {
            let code = r
                .exit_code
                .map_or_else(String::new, |c| format!(" [exit {c}]"));
            (
                r.started_at,
                format!(
                    "run    {} ({}){code}: {}",
                    r.outcome.as_str(),
                    r.trigger.describe(),
                    r.message
                ),
            )
        }))
        .collect();
    lines.sort_by_key(|(t, _)| *t);
    lines
}

async fn tuner(cli: &Cli, action: &TunerAction, json: bool) -> Result<ExitCode> {
    match action {
        TunerAction::List { definitions } => {
            let defs = load_definitions(&definitions.definitions)?;
            let store = connect(cli).await?;
            let list = jobs::list(&store, &defs).await?;
            if json {
                print_json(
                    &json!({"jobs": list.iter().map(jobs::overview_json).collect::<Vec<_>>()}),
                );
            } else if list.is_empty() {
                out!(
                    "{} declares no [[refresh_job]]",
                    definitions.definitions.display()
                );
            } else {
                for o in &list {
                    print_overview(o);
                }
            }
        }
        TunerAction::Evaluate { job } => {
            let defs = load_definitions(&job.definitions.definitions)?;
            let spec = jobs::spec(&defs, &job.job)?;
            let tuned = TunedJob::from_spec(spec).with_context(|| {
                format!(
                    "refresh job {:?} has no [refresh_job.tuner]; nothing to evaluate",
                    job.job
                )
            })?;
            let store = connect(cli).await?;
            let evaluation = feature_store::schedule::tuning::evaluate(
                &store,
                &tuned,
                feature_store::store::now_micros(),
            )
            .await?;
            if json {
                print_json(&json!({
                    "job": tuned.job,
                    "view": tuned.view,
                    "decision": jobs::decision_json(&evaluation.matured),
                    "early_look": evaluation.early.as_ref().map(jobs::decision_json),
                }));
            } else {
                for decision in evaluation.decisions() {
                    out!("{}: {}", tuned.job, decision.reason);
                }
            }
        }
        TunerAction::Show { job, history } => {
            let store = connect(cli).await?;
            let Some(state) = store.get_tuner_state(job).await? else {
                bail!(
                    "job {job:?} has no tuner state yet; the scheduler creates it (`mlgw-features scheduler run`), or run `mlgw-features tuner evaluate`"
                );
            };
            if json {
                print_json(&state_json(&state, *history));
            } else {
                print_state(&state, *history);
            }
        }
        TunerAction::History { job, limit } => {
            let defs = load_definitions(&job.definitions.definitions)?;
            let store = connect(cli).await?;
            let detail = jobs::detail(&store, &defs, &job.job).await?;
            if json {
                print_json(&jobs::detail_json(&detail, *limit));
            } else {
                print_overview(&detail.overview);
                let lines = history_lines(&detail);
                for (at, line) in lines.iter().skip(lines.len().saturating_sub(*limit)) {
                    out!("  {}  {line}", utc(*at));
                }
            }
        }
        TunerAction::Pin {
            job,
            to,
            by,
            reason,
        } => {
            let defs = load_definitions(&job.definitions.definitions)?;
            let interval = duration_flag("to", to)?;
            let store = connect(cli).await?;
            let state = jobs::pin(&store, &defs, &job.job, interval, by, reason.clone()).await?;
            if json {
                print_json(&state_json(&state, 1));
            } else {
                print_state(&state, 1);
            }
        }
        TunerAction::Unpin { job, by } => {
            let defs = load_definitions(&job.definitions.definitions)?;
            let store = connect(cli).await?;
            let state = jobs::unpin(&store, &defs, &job.job, by).await?;
            if json {
                print_json(&state_json(&state, 1));
            } else {
                print_state(&state, 1);
            }
        }
        TunerAction::Run { job, by, reason } => {
            let defs = load_definitions(&job.definitions.definitions)?;
            let store = connect(cli).await?;
            let request = jobs::request_run(&store, &defs, &job.job, by, reason.clone()).await?;
            if json {
                print_json(
                    &json!({"job": request.job, "requested_by": request.by, "requested_at": utc(request.at), "runs": "at the scheduler's next poll"}),
                );
            } else {
                out!(
                    "run of {} requested by {} at {}; a running scheduler starts it at its next poll",
                    request.job,
                    request.by,
                    utc(request.at)
                );
            }
        }
        TunerAction::Report { job, out } => {
            let defs = load_definitions(&job.definitions.definitions)?;
            let store = connect(cli).await?;
            let detail = jobs::detail(&store, &defs, &job.job).await?;
            let spec = jobs::spec(&defs, &job.job)?;
            let svg = jobs::report_svg(spec, &detail)?;
            std::fs::write(out, svg).with_context(|| format!("cannot write {}", out.display()))?;
            if json {
                print_json(
                    &json!({"job": job.job, "out": out.display().to_string(), "decisions": detail.decisions.len()}),
                );
            } else {
                out!(
                    "{}: {} decisions plotted to {}",
                    job.job,
                    detail.decisions.len(),
                    out.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn ingest(cli: &Cli, flags: &IngestFlags, json: bool) -> Result<ExitCode> {
    let settings = IngestSettings {
        enabled: true,
        brokers: flags.brokers.clone(),
        group_id: flags.group_id.clone(),
        dead_letter_topic: flags.dead_letter_topic.clone(),
        batch_max: flags.batch_max,
        linger_ms: flags.linger_ms,
        session_timeout_ms: flags.session_timeout_ms,
        ..IngestSettings::default()
    };
    settings
        .validate()
        .map_err(|(key, problem)| anyhow::anyhow!("--{}: {problem}", key.replace('_', "-")))?;
    let defs = Arc::new(load_definitions(&flags.definitions.definitions)?);
    let store = Arc::new(connect(cli).await?);
    let reader = Arc::new(FeatureReader::new(store, defs, ReaderConfig::default()).await?);
    let ingest = Ingest::new(reader, &settings)?;
    let stats = ingest.stats();
    if !json {
        out!(
            "ingest: group {} consuming {}; Ctrl-C stops it",
            settings.group_id,
            stats
                .views
                .iter()
                .map(|v| format!("{} → {}", v.topic, v.view))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    ingest.run(telemetry::shutdown_signal()).await;
    if json {
        print_json(&json!({
            "ingested": stats.ingested(),
            "dead_lettered": stats.dead_lettered(),
        }));
    } else {
        out!(
            "ingest: stopped after {} event(s) written, {} dead-lettered",
            stats.ingested(),
            stats.dead_lettered()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn scheduler(cli: &Cli, action: &SchedulerAction, json: bool) -> Result<ExitCode> {
    let SchedulerAction::Run {
        definitions,
        poll,
        once,
    } = action;
    let defs = Arc::new(load_definitions(&definitions.definitions)?);
    if defs.job_specs().is_empty() {
        bail!(
            "{} declares no [[refresh_job]]; nothing to schedule",
            definitions.definitions.display()
        );
    }
    let store = Arc::new(connect(cli).await?);
    let config = SchedulerConfig {
        poll: duration_flag("poll", poll)?,
        ..SchedulerConfig::for_this_process()
    };
    let jobs_count = defs.job_specs().len();
    let print = move |e: &TickEvent| {
        if json {
            out!("{}", event_json(e));
        } else {
            out!("{}", event_text(e));
        }
    };
    let scheduler = Arc::new(Scheduler::new(store, defs, config));
    if *once {
        for e in scheduler.tick(SystemClock.now()).await {
            print(&e);
        }
        scheduler.wait_runs().await;
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        out!(
            "scheduler {} running {jobs_count} job(s), looking every {poll}; Ctrl-C stops it",
            scheduler.config().holder,
        );
    }
    scheduler
        .run(Arc::new(SystemClock), telemetry::shutdown_signal(), print)
        .await;
    Ok(ExitCode::SUCCESS)
}

fn event_text(e: &TickEvent) -> String {
    let now = utc(SystemClock.now());
    match e {
        TickEvent::Started { job, trigger } => {
            format!("{now} {job}: run started ({})", trigger.describe())
        }
        TickEvent::Skipped { job, missed, next } => {
            format!(
                "{now} {job}: skipped {missed} missed run(s); next {}",
                utc(*next)
            )
        }
        TickEvent::LeaseHeld { job, holder, until } => {
            format!("{now} {job}: held by {holder} until {}", utc(*until))
        }
        TickEvent::Evaluated { job, decision } => format!("{now} {job}: {}", decision.reason),
        TickEvent::Error { job, message } => format!("{now} {job}: error: {message}"),
    }
}

fn event_json(e: &TickEvent) -> Value {
    match e {
        TickEvent::Started { job, trigger } => {
            json!({"event": "started", "job": job, "trigger": trigger})
        }
        TickEvent::Skipped { job, missed, next } => {
            json!({"event": "skipped", "job": job, "missed": missed, "next": utc(*next)})
        }
        TickEvent::LeaseHeld { job, holder, until } => {
            json!({"event": "lease_held", "job": job, "holder": holder, "until": utc(*until)})
        }
        TickEvent::Evaluated { job, decision } => {
            json!({"event": "evaluated", "job": job, "decision": jobs::decision_json(decision)})
        }
        TickEvent::Error { job, message } => {
            json!({"event": "error", "job": job, "message": message})
        }
    }
}

async fn connect(cli: &Cli) -> Result<AnyStore> {
    let settings = cli.store.settings();
    settings
        .connect()
        .await
        .with_context(|| format!("cannot open the {}", settings.describe()))
}

fn load_definitions(path: &Path) -> Result<FeatureDefinitions> {
    Ok(FeatureDefinitions::load(path)?)
}

fn print_json(value: &Value) {
    out!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn validate(path: &Path, json: bool) -> Result<ExitCode> {
    let defs = load_definitions(path)?;
    if json {
        print_json(&json!({
            "file": path.display().to_string(),
            "valid": true,
            "entities": defs.entities().iter().map(|e| json!({"name": e.name, "keys": e.keys})).collect::<Vec<_>>(),
            "views": defs.views().iter().map(|v| json!({
                "name": v.name,
                "kind": if v.is_static() { "static" } else { "dynamic" },
                "entity": v.entity,
                "features": v.features.len(),
                "max_age_seconds": v.max_age.as_secs(),
                "refresh_job": v.refresh_job().map(|j| j.as_str().to_owned()),
                "ttl_seconds": v.ttl().map(|t| t.as_secs()),
            })).collect::<Vec<_>>(),
            "request_features": defs.request_features().iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            "models": defs.models().iter().map(|m| json!({"name": m.name(), "input": m.input().name(), "width": m.input().width()})).collect::<Vec<_>>(),
        }));
    } else {
        out!("{}: valid", path.display());
        for e in defs.entities() {
            out!("  entity {} (keys: {})", e.name, e.keys.join(", "));
        }
        for v in defs.views() {
            let kind = match &v.kind {
                ViewKind::Static { refresh_job } => format!("static, job {}", refresh_job.as_str()),
                ViewKind::Dynamic { ttl } => format!("dynamic, ttl {}", human_duration(*ttl)),
            };
            out!(
                "  view {} ({kind}, max_age {}): {} features",
                v.name,
                human_duration(v.max_age),
                v.features.len()
            );
        }
        out!("  request features: {}", defs.request_features().len());
        for m in defs.models() {
            out!(
                "  model {}: input {:?} [batch, {}]",
                m.name(),
                m.input().name(),
                m.input().width()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn refresh_run(
    store: &AnyStore,
    defs: &FeatureDefinitions,
    job: &str,
    view: Option<&str>,
    file: &Path,
    options: &RefreshOptions,
    json: bool,
) -> Result<ExitCode> {
    let bar = if !json && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} rows  {per_sec}  {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let progress = |n: u64| {
        if let Some(bar) = &bar {
            bar.set_position(n);
        }
    };
    let outcome = refresh::run(store, defs, job, view, file, options, &progress).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    // The view's index follows its batch (unless nothing was loaded).
    let index = match (&outcome, refresh::job_view(defs, job, view)) {
        (Ok(_), Ok(v)) => feature_store::similarity::after_refresh(store, defs, &v.name).await,
        _ => None,
    };
    let index_json = index.as_ref().map(|built| match built {
        Ok(r) => json!({"outcome": if r.built { "built" } else { "unchanged" }, "report": r}),
        Err(e) => json!({"outcome": "failed", "reason": e.to_string()}),
    });
    let index_line = || {
        if let (Some(built), false) = (&index, json) {
            out!("{}", feature_store::similarity::summary(built));
        }
    };
    match outcome {
        Ok(RefreshOutcome::Loaded(batch)) => {
            if json {
                print_json(
                    &json!({"outcome": "loaded", "batch": batch_json(&batch), "index": index_json}),
                );
            } else {
                let secs = match (batch.started_at, batch.finished_at) {
                    (Some(s), Some(f)) => f.duration_since(s).unwrap_or_default().as_secs_f64(),
                    _ => 0.0,
                };
                out!(
                    "batch {} done: view {}, {} rows written, {} rejected, {:.2}s ({:.0} rows/s); now current",
                    batch.batch_id,
                    batch.view,
                    batch.rows_written,
                    batch.rows_rejected,
                    secs,
                    batch.rows_written as f64 / secs.max(1e-9)
                );
                print_rejections(&batch);
            }
            index_line();
            Ok(ExitCode::SUCCESS)
        }
        Ok(RefreshOutcome::Unchanged(current)) => {
            if json {
                print_json(
                    &json!({"outcome": "unchanged", "current_batch": current.batch_id, "fingerprint": current.fingerprint, "index": index_json}),
                );
            } else {
                out!(
                    "unchanged: the current batch {} was loaded from identical input; nothing written (use --force to reload)",
                    current.batch_id
                );
            }
            index_line();
            Ok(ExitCode::SUCCESS)
        }
        Err(RefreshError::Failed { batch, reason }) => {
            if json {
                print_json(
                    &json!({"outcome": "failed", "reason": reason, "batch": batch_json(&batch)}),
                );
            } else {
                print_rejections(&batch);
            }
            bail!(
                "batch {} failed: {reason}; view {:?} keeps serving its previous batch",
                batch.batch_id,
                batch.view
            )
        }
        Err(e) => Err(e.into()),
    }
}

async fn index(cli: &Cli, action: &IndexAction, json: bool) -> Result<ExitCode> {
    use feature_store::similarity;
    match action {
        IndexAction::Build {
            definitions,
            view,
            threads,
            force,
        } => {
            let defs = load_definitions(&definitions.definitions)?;
            let store = connect(cli).await?;
            let built = similarity::build(&store, &defs, view, *threads, *force).await;
            if json {
                match &built {
                    Ok(r) => print_json(
                        &json!({"outcome": if r.built { "built" } else { "unchanged" }, "report": r}),
                    ),
                    Err(e) => print_json(&json!({"outcome": "failed", "reason": e.to_string()})),
                }
            } else {
                out!("{}", similarity::summary(&built));
            }
            built?;
            Ok(ExitCode::SUCCESS)
        }
        IndexAction::Query {
            definitions,
            view,
            entity,
            vector,
            k,
        } => {
            let defs = load_definitions(&definitions.definitions)?;
            let store = connect(cli).await?;
            let index = current_index(&store, view).await?;
            let (query, exclude) = match (entity, vector) {
                (Some(e), _) => {
                    let key = entity_key(e);
                    let v = index.vector_of(&key).with_context(|| {
                        format!("entity {e:?} has no vector in view {view:?}'s current index")
                    })?;
                    (v, Some(key))
                }
                (None, Some(text)) => {
                    let dims = u16::try_from(index.header().dimensions).unwrap_or(u16::MAX);
                    let v = feature_store::definitions::parse_vector(text, dims)
                        .map_err(|why| anyhow::anyhow!("--vector: {why}"))?;
                    (v, None)
                }
                (None, None) => bail!("give --entity or --vector"),
            };
            let spec = defs
                .view(view)
                .and_then(|v| v.index.as_ref())
                .with_context(|| format!("view {view:?} declares no [static_view.index]"))?;
            if *k > spec.max_k {
                bail!("--k {k} is above the view's max_k of {}", spec.max_k);
            }
            let found = index.search(&query, *k, exclude.as_deref())?;
            if json {
                print_json(&json!({
                    "view": view,
                    "batch_id": index.header().source_batch,
                    "neighbours": found.iter().map(|n| json!({"entity": n.entity_key, "distance": n.distance})).collect::<Vec<_>>(),
                }));
            } else {
                for n in &found {
                    out!("{:<24} {:.4}", n.entity_key, n.distance);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        IndexAction::Size {
            definitions,
            view,
            dims,
            k,
            queries,
            out: folder,
            file,
        } => {
            let defs = load_definitions(&definitions.definitions)?;
            let spec = defs
                .view(view)
                .and_then(|v| v.index.as_ref())
                .with_context(|| format!("view {view:?} declares no [static_view.index]"))?;
            let (vectors, source) = match file {
                Some(path) => (
                    similarity::file_vectors(&defs, view, path)?,
                    format!("File {}", path.display()),
                ),
                None => {
                    let store = connect(cli).await?;
                    let batch = store
                        .current_batches()
                        .await?
                        .remove(view)
                        .with_context(|| {
                            format!("view {view:?} has no current batch; load it first")
                        })?;
                    (
                        similarity::batch_vectors(&store, view, &batch.batch_id, spec).await?,
                        format!("Batch {}", batch.batch_id),
                    )
                }
            };
            let (view_name, spec, dims, k, queries) =
                (view.clone(), spec.clone(), dims.clone(), *k, *queries);
            let sizing = tokio::task::spawn_blocking(move || {
                similarity::sizing::size(&view_name, &spec, &vectors.vectors, &dims, k, queries)
            })
            .await??;
            let table = similarity::sizing::table(&sizing);
            if let Some(dir) = folder {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let md = dir.join("sizing.md");
                let svg = dir.join("sizing.svg");
                let command: Vec<String> = std::env::args().collect();
                std::fs::write(
                    &md,
                    format!(
                        "# Index sizing: {view}\n\n{source} ({} vectors), measured {}.\nCommand: `{}`\n\n{table}",
                        sizing.vectors,
                        utc(SystemTime::now()),
                        command.join(" ")
                    ),
                )
                    .with_context(|| format!("cannot write {}", md.display()))?;
                std::fs::write(&svg, similarity::sizing::svg(&sizing))
                    .with_context(|| format!("cannot write {}", svg.display()))?;
            }
            if json {
                print_json(&serde_json::to_value(&sizing)?);
            } else {
                out!("{table}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The view's current index, read from the store.
async fn current_index(
    store: &AnyStore,
    view: &str,
) -> Result<feature_store::similarity::VectorIndex> {
    use feature_store::similarity;
    let current = store
        .current_batches()
        .await?
        .remove(&similarity::index_target(view))
        .with_context(|| {
            format!("view {view:?} has no index yet; run `mlgw-features index build`")
        })?;
    let bytes = store
        .get_artifact(&similarity::artifact_name(view, &current.batch_id))
        .await?
        .with_context(|| format!("the artifact of index {} is missing", current.batch_id))?;
    Ok(tokio::task::spawn_blocking(move || similarity::VectorIndex::from_bytes(&bytes)).await??)
}

fn print_rejections(batch: &BatchRecord) {
    if batch.rows_rejected == 0 {
        return;
    }
    out!(
        "rejected rows (first {} of {}):",
        batch.rejections.len(),
        batch.rows_rejected
    );
    for r in &batch.rejections {
        out!("  line {}: {}", r.line, r.reason);
    }
}

fn batch_json(b: &BatchRecord) -> Value {
    json!({
        "batch_id": b.batch_id,
        "job": b.job,
        "view": b.view,
        "status": b.status,
        "ingested_at": utc(b.ingested_at),
        "started_at": b.started_at.map(utc),
        "finished_at": b.finished_at.map(utc),
        "source": b.source,
        "fingerprint": b.fingerprint,
        "script_version": b.script_version,
        "rows_written": b.rows_written,
        "rows_rejected": b.rows_rejected,
        "rejections": b.rejections,
        "error": b.error,
    })
}

fn entity_key(text: &str) -> String {
    text.replace('|', &KEY_SEPARATOR.to_string())
}

async fn read(
    store: AnyStore,
    defs: Arc<FeatureDefinitions>,
    views: &[String],
    entity: &str,
    json: bool,
) -> Result<ExitCode> {
    let names: Vec<String> = if views.is_empty() {
        defs.views().iter().map(|v| v.name.clone()).collect()
    } else {
        views.to_vec()
    };
    let config = ReaderConfig::default();
    let reader = FeatureReader::new(Arc::new(store), Arc::clone(&defs), config).await?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let resolved = reader
        .read_many(&refs, &entity_key(entity), SystemTime::now())
        .await?;
    if json {
        print_json(
            &json!({"entity": entity, "views": resolved.iter().map(view_json).collect::<Vec<_>>()}),
        );
    } else {
        for v in &resolved {
            let age = v.age.map_or_else(
                || "no row".to_owned(),
                |a| format!("age {}", human_duration(a)),
            );
            let batch = v
                .batch_id
                .as_deref()
                .map(|b| format!(", batch {b}"))
                .unwrap_or_default();
            out!("{} ({age}{batch})", v.view);
            for f in &v.features {
                out!(
                    "  {:<28} {:<16} {}",
                    f.name,
                    f.value.to_string(),
                    state(f.state)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn state(s: ValueState) -> &'static str {
    match s {
        ValueState::Present => "present",
        ValueState::MissingRow => "default (no row)",
        ValueState::MissingValue => "default (no value)",
        ValueState::Stale => "default (stale)",
        ValueState::WrongType => "default (stored value has another type)",
    }
}

fn view_json(v: &ResolvedView) -> Value {
    json!({
        "view": v.view,
        "age_seconds": v.age.map(|a| a.as_secs_f64()),
        "batch_id": v.batch_id.as_deref(),
        "features": v.features.iter().map(|f| json!({
            "name": f.name,
            "value": value_json(&f.value),
            "state": state(f.state),
            "defaulted": f.state.is_defaulted(),
        })).collect::<Vec<_>>(),
    })
}

fn value_json(v: &FeatureValue) -> Value {
    match v {
        FeatureValue::Float32(x) => json!(x),
        FeatureValue::Float64(x) => json!(x),
        FeatureValue::Int64(x) => json!(x),
        FeatureValue::Bool(x) => json!(x),
        FeatureValue::String(x) => json!(x),
        FeatureValue::Vector(x) => json!(x),
    }
}

fn parse_value(text: &str, ty: FeatureType) -> Option<FeatureValue> {
    Some(match ty {
        FeatureType::Float32 => FeatureValue::Float32(text.parse().ok()?),
        FeatureType::Float64 => FeatureValue::Float64(text.parse().ok()?),
        FeatureType::Int64 => FeatureValue::Int64(text.parse().ok()?),
        FeatureType::Bool => FeatureValue::Bool(match text {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return None,
        }),
        FeatureType::String => FeatureValue::String(text.to_owned()),
        FeatureType::Vector(n) => {
            FeatureValue::Vector(feature_store::definitions::parse_vector(text, n).ok()?)
        }
    })
}

struct PushArgs<'a> {
    view_name: &'a str,
    entity: &'a str,
    assignments: &'a [String],
    fields: &'a [String],
    event_id: Option<&'a str>,
    event_time: Option<&'a str>,
}

/// An event field's text as a value: a number where the view's aggregates
/// need one (sum, mean, max, min), else a whole number if it is one, else text.
fn parse_event_field(text: &str, numeric: bool) -> Option<FeatureValue> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(FeatureValue::Int64(i));
    }
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => Some(FeatureValue::Float64(x)),
        _ if numeric => None,
        _ => Some(FeatureValue::String(text.to_owned())),
    }
}

async fn push(
    store: AnyStore,
    defs: Arc<FeatureDefinitions>,
    args: PushArgs<'_>,
    json: bool,
) -> Result<ExitCode> {
    let view_name = args.view_name;
    let view = defs
        .view(view_name)
        .with_context(|| format!("unknown feature view {view_name:?}"))?;
    let mut values = Vec::with_capacity(args.assignments.len());
    for a in args.assignments {
        let (name, text) = a
            .split_once('=')
            .with_context(|| format!("--set {a:?}: write feature=value"))?;
        let spec = view
            .feature(name)
            .with_context(|| format!("--set {a:?}: view {view_name:?} has no feature {name:?}"))?;
        if let Some(agg) = &spec.aggregate {
            bail!(
                "--set {a:?}: {name} is computed by the feature store ({} of {} over {}); push events with --field {}=…",
                agg.function,
                agg.of,
                tuner_human(agg.window),
                agg.of
            );
        }
        let value = parse_value(text, spec.feature_type).with_context(|| {
            format!("--set {a:?}: {text:?} is not a valid {}", spec.feature_type)
        })?;
        values.push((name.to_owned(), value));
    }
    let mut fields = std::collections::BTreeMap::new();
    for a in args.fields {
        let (name, text) = a
            .split_once('=')
            .with_context(|| format!("--field {a:?}: write field=value"))?;
        let numeric =
            view.event_field(name) == Some(feature_store::definitions::EventFieldUse::Numeric);
        let value = parse_event_field(text, numeric)
            .with_context(|| format!("--field {a:?}: {text:?} is not a number"))?;
        fields.insert(name.to_owned(), value);
    }
    let at = match args.event_time {
        None => feature_store::store::now_micros(),
        Some(t) => {
            let secs: f64 = t
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .with_context(|| {
                    format!("--event-time {t:?}: give seconds since the Unix epoch")
                })?;
            SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)
        }
    };
    let reader =
        FeatureReader::new(Arc::new(store), Arc::clone(&defs), ReaderConfig::default()).await?;
    let key = entity_key(args.entity);
    let event = (!fields.is_empty()).then(|| {
        feature_store::aggregate::Event::new(&key, args.event_id.map(str::to_owned), at, fields)
    });
    if !values.is_empty() {
        reader.push(view_name, &key, &values, at).await?;
    }
    if let Some(event) = &event {
        reader.push_event(view_name, &key, event).await?;
    }
    let entity = args.entity;
    if json {
        print_json(&json!({
            "view": view_name,
            "entity": entity,
            "written": values.len(),
            "event_id": event.as_ref().map(|e| e.event_id.as_str()),
            "event_time_us": to_micros(at),
        }));
    } else {
        if !values.is_empty() {
            out!(
                "{} value(s) written to {view_name} for {entity}",
                values.len()
            );
        }
        if let Some(event) = &event {
            out!(
                "event {} written to {view_name} for {entity}",
                event.event_id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `2h13m`, `45s`, `1d2h`, `350ms`.
fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (days, hours, mins, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(days, "d"), (hours, "h"), (mins, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_print_for_people() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_611_958)),
            "2026-11-25T13:05:58Z"
        );
        assert_eq!(
            human_duration(Duration::from_secs(2 * 3600 + 13 * 60)),
            "2h13m"
        );
        assert_eq!(human_duration(Duration::from_millis(350)), "350ms");
        assert_eq!(human_duration(Duration::from_secs(90_000)), "1d1h");
    }
}

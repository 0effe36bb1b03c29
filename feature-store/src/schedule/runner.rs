//! One run of a refresh job under its lease: the built-in loader on the
//! declared file, a command that writes that file first, or a command that
//! does the whole load — all within the job's timeout; the outcome, exit
//! code and the end of the output go into the job's [`ScheduleState`], and
//! the lease is released.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncReadExt;

use super::{RunOutcome, RunRecord, ScheduleState, Trigger, run_lease};
use crate::definitions::{FeatureDefinitions, JobSource, RefreshJobSpec};
use crate::reader::FeatureReader;
use crate::refresh::{self, RefreshError, RefreshOptions, RefreshOutcome};
use crate::store::{BatchStatus, FullStore};

/// Bytes of a command's output kept in its run record (the end of it).
pub const OUTPUT_TAIL: usize = 4096;

/// How long a killed command's output pipes may take to close (a grandchild
/// that left the process group may hold them).
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// Everything one run needs; [`JobRun::run`] consumes it.
pub(super) struct JobRun<S> {
    pub store: Arc<S>,
    pub defs: Arc<FeatureDefinitions>,
    pub spec: RefreshJobSpec,
    pub trigger: Trigger,
    pub started_at: SystemTime,
    pub holder: String,
    pub schedule: ScheduleState,
    /// This process's reader, refreshed after a load (see the module docs
    /// of [`super`]).
    pub reader: Option<Weak<FeatureReader<S>>>,
}

/// What the run produced before it is recorded.
struct Ended {
    outcome: RunOutcome,
    batch_id: Option<String>,
    exit_code: Option<i32>,
    output: String,
    message: String,
}

impl Ended {
    /// How a command that loads nothing itself ended: loaded when it exited
    /// with 0 in time.
    fn command(r: CommandResult, message: String) -> Self {
        Ended {
            outcome: if r.timed_out {
                RunOutcome::TimedOut
            } else if r.exit_code == Some(0) {
                RunOutcome::Loaded
            } else {
                RunOutcome::Failed
            },
            batch_id: None,
            exit_code: r.exit_code,
            output: r.output,
            message,
        }
    }

    fn failed(message: String) -> Self {
        Ended {
            outcome: RunOutcome::Failed,
            batch_id: None,
            exit_code: None,
            output: String::new(),
            message,
        }
    }
}

impl<S: FullStore> JobRun<S> {
    /// Runs, records, releases the lease. Never panics; failures are
    /// recorded as the run's outcome or logged.
    pub async fn run(mut self) {
        let clock = Instant::now();
        let deadline = tokio::time::Instant::now() + self.spec.timeout;
        let ended = self.execute(deadline).await;
        let finished_at = self.started_at + clock.elapsed();
        let job = self.spec.name.clone();
        match ended.outcome {
            RunOutcome::Failed | RunOutcome::TimedOut => {
                tracing::warn!(job, "refresh run failed: {}", ended.message);
            }
            _ => tracing::info!(job, "refresh run ended: {}", ended.message),
        }
        if ended.outcome == RunOutcome::Loaded
            && let Some(reader) = self.reader.as_ref().and_then(Weak::upgrade)
            && let Err(e) = reader.refresh_current().await
        {
            // The batch poll picks it up later.
            tracing::warn!(job, error = %e, "cannot re-read the current batches after the run; the next batch poll will");
        }
        self.schedule.anchor = Some(self.started_at);
        self.schedule.push(RunRecord {
            started_at: self.started_at,
            finished_at,
            trigger: self.trigger.clone(),
            outcome: ended.outcome,
            batch_id: ended.batch_id,
            exit_code: ended.exit_code,
            output: ended.output,
            message: ended.message,
            holder: self.holder.clone(),
        });
        // Recording must not be lost to one transient store error.
        let mut saved = self.store.put_schedule(&self.schedule).await;
        for wait in [1, 4] {
            match &saved {
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    saved = self.store.put_schedule(&self.schedule).await;
                }
                _ => break,
            }
        }
        if let Err(e) = saved {
            tracing::error!(job, error = %e, "cannot record the refresh run; the lease lapses on its own");
            return;
        }
        if let Err(e) = self
            .store
            .release_lease(&run_lease(&job), &self.holder)
            .await
        {
            tracing::warn!(job, error = %e, "cannot release the job's lease; it lapses on its own");
        }
    }

    async fn execute(&self, deadline: tokio::time::Instant) -> Ended {
        let dir = self
            .defs
            .source()
            .parent()
            .unwrap_or(Path::new("."))
            .to_owned();
        let forced = matches!(self.trigger, Trigger::Forced { .. });
        match &self.spec.source {
            JobSource::File(file) => self.load(file, forced, deadline).await,
            JobSource::Command(command) => {
                let r = run_command(command, &self.spec, None, forced, &dir, deadline).await;
                let message = match (r.timed_out, r.exit_code) {
                    (true, _) => format!(
                        "command {:?} stopped: it ran past the job's timeout of {:?}",
                        command[0], self.spec.timeout
                    ),
                    (false, Some(0)) => format!("command {:?} loaded the view", command[0]),
                    (false, code) => r.failure.clone().unwrap_or_else(|| {
                        format!("command {:?} failed with exit code {code:?}", command[0])
                    }),
                };
                Ended::command(r, message)
            }
            JobSource::CommandThenFile { command, file } => {
                let r = run_command(command, &self.spec, Some(file), forced, &dir, deadline).await;
                if r.timed_out || r.exit_code != Some(0) {
                    let message = if r.timed_out {
                        format!(
                            "command {:?} stopped before writing {}: it ran past the job's timeout of {:?}",
                            command[0],
                            file.display(),
                            self.spec.timeout
                        )
                    } else {
                        r.failure.clone().unwrap_or_else(|| {
                            format!(
                                "command {:?} failed with exit code {:?}; nothing loaded",
                                command[0], r.exit_code
                            )
                        })
                    };
                    return Ended::command(r, message);
                }
                let mut ended = self.load(file, forced, deadline).await;
                ended.exit_code = r.exit_code;
                ended.output = r.output;
                ended
            }
        }
    }

    /// The built-in loader on `file`, stopped at `deadline`.
    async fn load(&self, file: &Path, forced: bool, deadline: tokio::time::Instant) -> Ended {
        let options = RefreshOptions {
            script_version: self.spec.script_version.clone(),
            force: forced,
            max_rejected_percent: self.spec.max_rejected_percent,
            ..RefreshOptions::default()
        };
        let begun = crate::clock::now_micros();
        let run = refresh::run(
            &*self.store,
            &self.defs,
            &self.spec.name,
            Some(&self.spec.view),
            file,
            &options,
            &|_| {},
        );
        let mut ended = match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok(RefreshOutcome::Loaded(batch))) => Ended {
                outcome: RunOutcome::Loaded,
                message: format!(
                    "batch {} loaded from {}: {} rows, {} rejected; now current",
                    batch.batch_id,
                    file.display(),
                    batch.rows_written,
                    batch.rows_rejected
                ),
                batch_id: Some(batch.batch_id),
                exit_code: None,
                output: String::new(),
            },
            Ok(Ok(RefreshOutcome::Unchanged(current))) => Ended {
                outcome: RunOutcome::Unchanged,
                message: format!(
                    "{} is identical to the current batch {}; nothing written",
                    file.display(),
                    current.batch_id
                ),
                batch_id: Some(current.batch_id),
                exit_code: None,
                output: String::new(),
            },
            Ok(Err(RefreshError::Failed { batch, reason })) => Ended {
                batch_id: Some(batch.batch_id.clone()),
                ..Ended::failed(format!(
                    "batch {} failed: {reason}; the previous batch stays current",
                    batch.batch_id
                ))
            },
            Ok(Err(e)) => Ended::failed(e.to_string()),
            Err(_) => {
                let batch_id = self.fail_unfinished(begun).await;
                Ended {
                    outcome: RunOutcome::TimedOut,
                    message: format!(
                        "loading {} stopped: it ran past the job's timeout of {:?}; the previous batch stays current",
                        file.display(),
                        self.spec.timeout
                    ),
                    batch_id,
                    exit_code: None,
                    output: String::new(),
                }
            }
        };
        if matches!(ended.outcome, RunOutcome::Loaded | RunOutcome::Unchanged) {
            // The view's index follows its batch; a failed build leaves the
            // previous index serving and does not fail the load.
            if let Some(built) =
                crate::similarity::after_refresh(&*self.store, &self.defs, &self.spec.view).await
            {
                if let Err(e) = &built {
                    tracing::warn!(job = self.spec.name, error = %e, "index build failed");
                }
                ended.message.push_str("; ");
                ended.message.push_str(&crate::similarity::summary(&built));
            }
        }
        ended
    }

    /// Marks the batch a stopped load left unfinished as failed and drops
    /// its rows; returns its ID.
    async fn fail_unfinished(&self, begun: SystemTime) -> Option<String> {
        let batches = match self.store.list_batches(&self.spec.view, 5).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(job = self.spec.name, error = %e, "cannot find the stopped batch");
                return None;
            }
        };
        let mut record = batches.into_iter().find(|b| {
            b.job == self.spec.name
                && b.ingested_at >= begun
                && matches!(b.status, BatchStatus::Ingested | BatchStatus::Processing)
        })?;
        record.status = BatchStatus::Failed;
        record.finished_at = Some(crate::clock::now_micros());
        record.error = Some(format!(
            "stopped by the scheduler: the job's timeout of {:?} passed",
            self.spec.timeout
        ));
        if let Err(e) = self.store.put_batch(&record).await {
            tracing::warn!(batch = record.batch_id, error = %e, "cannot mark the stopped batch failed");
        }
        if let Err(e) = self
            .store
            .discard_batch(&record.view, &record.batch_id)
            .await
        {
            tracing::warn!(batch = record.batch_id, error = %e, "cannot discard the stopped batch's rows");
        }
        Some(record.batch_id)
    }
}

/// How a command ended.
struct CommandResult {
    exit_code: Option<i32>,
    timed_out: bool,
    output: String,
    /// Why it could not start or was killed by a signal.
    failure: Option<String>,
}

/// Runs `command` in `dir` with the job's environment until it exits or
/// `deadline` passes (then its whole process group is killed).
async fn run_command(
    command: &[String],
    spec: &RefreshJobSpec,
    file: Option<&Path>,
    forced: bool,
    dir: &Path,
    deadline: tokio::time::Instant,
) -> CommandResult {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .current_dir(dir)
        .env("MLGW_REFRESH_JOB", &spec.name)
        .env("MLGW_REFRESH_VIEW", &spec.view)
        .env("MLGW_SCRIPT_VERSION", &spec.script_version)
        .env("MLGW_REFRESH_FORCED", if forced { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so a timeout stops the children it started.
        .process_group(0);
    if let Some(f) = file {
        cmd.env("MLGW_REFRESH_FILE", f);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return CommandResult {
                exit_code: None,
                timed_out: false,
                output: String::new(),
                failure: Some(format!(
                    "cannot start command {:?} in {}: {e}",
                    command[0],
                    dir.display()
                )),
            };
        }
    };
    let stdout = child.stdout.take().map(|p| tokio::spawn(read_tail(p)));
    let stderr = child.stderr.take().map(|p| tokio::spawn(read_tail(p)));
    let (exit_code, timed_out, mut failure) =
        match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(Ok(status)) => (
                status.code(),
                false,
                status
                    .code()
                    .is_none()
                    .then(|| format!("command {:?} was killed by a signal", command[0])),
            ),
            Ok(Err(e)) => (
                None,
                false,
                Some(format!("waiting for {:?}: {e}", command[0])),
            ),
            Err(_) => {
                kill_group(&child).await;
                let _ = child.kill().await;
                (None, true, None)
            }
        };
    let mut output = String::new();
    for (name, task) in [("stdout", stdout), ("stderr", stderr)] {
        let Some(mut task) = task else { continue };
        match tokio::time::timeout(PIPE_DRAIN, &mut task).await {
            Ok(Ok(text)) if !text.is_empty() => {
                output.push_str(&format!("[{name}]\n{text}"));
                if !text.ends_with('\n') {
                    output.push('\n');
                }
            }
            Ok(_) => {}
            Err(_) => {
                task.abort();
                failure.get_or_insert_with(|| {
                    format!("{name} of {:?} stayed open after it ended", command[0])
                });
            }
        }
    }
    CommandResult {
        exit_code,
        timed_out,
        output,
        failure,
    }
}

/// Kills the process group of `child` (it leads its own group). Done with
/// the `kill` program: this crate has no `unsafe`, which `libc::kill` needs.
async fn kill_group(child: &tokio::process::Child) {
    let Some(pid) = child.id() else { return };
    let killed = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(PIPE_DRAIN, killed).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(pid, error = %e, "cannot kill the command's process group"),
        Err(_) => tracing::warn!(pid, "`kill` of the command's process group did not return"),
    }
}

/// Reads a pipe to its end, keeping the last [`OUTPUT_TAIL`] bytes.
async fn read_tail(mut pipe: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > OUTPUT_TAIL * 2 {
                    let cut = kept.len() - OUTPUT_TAIL;
                    kept.drain(..cut);
                }
            }
        }
    }
    if kept.len() > OUTPUT_TAIL {
        let cut = kept.len() - OUTPUT_TAIL;
        kept.drain(..cut);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

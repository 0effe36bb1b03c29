//! The scheduler with explicit times (the fake clock) over a real embedded
//! store, real files and real processes: interval, no overlap, missed-run
//! policies, timeout, failed commands, forced runs, a lease held elsewhere,
//! tuner windows.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::store::Lease;
use crate::store::embedded::EmbeddedStore;
use crate::store::prelude::*;

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

const VIEWS: &str = r#"
[[entity]]
name = "user"
keys = ["user_id"]

[[static_view]]
name = "profile"
entity = "user"
refresh_job = "profile_daily"
max_age = "48h"

[[static_view.feature]]
name = "visits"
type = "int64"
default = 0

[[model]]
name = "scorer"
input = "x"
dtype = "FP32"
features = ["profile.visits"]
"#;

struct Fixture {
    dir: PathBuf,
    store: Arc<EmbeddedStore>,
    scheduler: Scheduler<EmbeddedStore>,
    defs: Arc<FeatureDefinitions>,
    t0: SystemTime,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A scheduler of one job `profile_daily` declared by `job` (the
/// `[[refresh_job]]` body after its name), in a fresh folder holding
/// `profile.csv`.
async fn fixture(job: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("mlgw-schedule-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("profile.csv"), "user_id,visits\nu-1,1\nu-2,2\n").unwrap();
    let text = format!("{VIEWS}\n[[refresh_job]]\nname = \"profile_daily\"\n{job}");
    let defs_path = dir.join("features.toml");
    std::fs::write(&defs_path, &text).unwrap();
    let defs = Arc::new(FeatureDefinitions::load(&defs_path).unwrap_or_else(|e| panic!("{e}")));
    let store = Arc::new(EmbeddedStore::open(&dir.join("features.redb")).unwrap());
    store.apply_schema().await.unwrap();
    let config = SchedulerConfig {
        holder: "test-host/1".to_owned(),
        poll: Duration::from_secs(1),
        lease_margin: MIN,
        shutdown_grace: Duration::from_secs(5),
    };
    Fixture {
        scheduler: Scheduler::new(Arc::clone(&store), Arc::clone(&defs), config),
        defs,
        store,
        dir,
        t0: crate::clock::now_micros(),
    }
}

const FILE_JOB: &str = r#"
interval = "1h"
timeout = "1m"
missed_run = "run_once"
[refresh_job.source]
file = "profile.csv"
"#;

fn started(events: &[TickEvent]) -> Vec<Trigger> {
    events
        .iter()
        .filter_map(|e| match e {
            TickEvent::Started { trigger, .. } => Some(trigger.clone()),
            _ => None,
        })
        .collect()
}

impl Fixture {
    async fn tick(&self, after: Duration) -> Vec<TickEvent> {
        let events = self.scheduler.tick(self.t0 + after).await;
        assert!(
            !events.iter().any(|e| matches!(e, TickEvent::Error { .. })),
            "{events:?}"
        );
        self.scheduler.wait_runs().await;
        events
    }

    async fn runs(&self) -> Vec<RunRecord> {
        self.store
            .get_schedule("profile_daily")
            .await
            .unwrap()
            .map(|s| s.runs)
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn a_loaded_run_is_served_by_this_process_at_once() {
    let mut f = fixture(FILE_JOB).await;
    let reader = |store: &Arc<EmbeddedStore>| {
        crate::reader::FeatureReader::new(
            Arc::clone(store),
            Arc::clone(&f.defs),
            crate::reader::ReaderConfig::default(),
        )
    };
    let served = Arc::new(reader(&f.store).await.unwrap());
    let other = reader(&f.store).await.unwrap();
    assert!(served.current_batch("profile").is_none());
    f.scheduler = Scheduler::new(
        Arc::clone(&f.store),
        Arc::clone(&f.defs),
        f.scheduler.config().clone(),
    )
    .serving(&served);
    f.tick(Duration::ZERO).await;
    let runs = f.runs().await;
    assert_eq!(runs[0].outcome, RunOutcome::Loaded, "{runs:?}");
    assert!(runs[0].batch_id.is_some());
    // The scheduler's reader serves the batch without waiting for a poll;
    // a reader it was not told of learns it only when it polls.
    assert_eq!(
        served.current_batch("profile").map(|b| b.batch_id.clone()),
        runs[0].batch_id
    );
    assert!(other.current_batch("profile").is_none());
    other.refresh_current().await.unwrap();
    assert_eq!(
        other.current_batch("profile").map(|b| b.batch_id.clone()),
        runs[0].batch_id
    );
}

#[tokio::test]
async fn a_job_runs_once_per_interval_through_the_built_in_loader() {
    let f = fixture(FILE_JOB).await;
    assert_eq!(started(&f.tick(Duration::ZERO).await), [Trigger::First]);
    let runs = f.runs().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome, RunOutcome::Loaded, "{runs:?}");
    let current = f.store.current_batches().await.unwrap().remove("profile");
    assert_eq!(
        runs[0].batch_id.as_deref(),
        current.as_ref().map(|c| c.batch_id.as_str())
    );
    // The batch carries the declared script version.
    let batches = f.store.list_batches("profile", 5).await.unwrap();
    assert_eq!(batches[0].script_version, "unversioned");

    // Not before the interval has passed.
    assert!(started(&f.tick(30 * MIN).await).is_empty());
    assert!(started(&f.tick(59 * MIN).await).is_empty());
    assert_eq!(started(&f.tick(HOUR).await), [Trigger::Scheduled]);
    let runs = f.runs().await;
    assert_eq!(runs.len(), 2);
    // The same file again: nothing written.
    assert_eq!(runs[1].outcome, RunOutcome::Unchanged, "{runs:?}");
    assert_eq!(runs[1].started_at, f.t0 + HOUR);
    // The lease was released.
    assert_eq!(
        f.store
            .try_lease(
                &Lease::new(&run_lease("profile_daily"), "someone-else", f.t0 + MIN),
                f.t0
            )
            .await
            .unwrap(),
        LeaseOutcome::Acquired
    );
}

#[tokio::test]
async fn after_downtime_run_once_catches_up_with_one_run() {
    let f = fixture(FILE_JOB).await;
    f.tick(Duration::ZERO).await;
    // A new scheduler (a restart) after 5.5 hours without one.
    let restarted = Scheduler::new(
        Arc::clone(&f.store),
        Arc::clone(&f.scheduler.defs),
        f.scheduler.config.clone(),
    );
    let events = restarted.tick(f.t0 + 5 * HOUR + 30 * MIN).await;
    restarted.wait_runs().await;
    assert_eq!(started(&events), [Trigger::CatchUp { missed: 5 }]);
    // One run, and the schedule counts from it.
    assert!(started(&restarted.tick(f.t0 + 6 * HOUR).await).is_empty());
    assert_eq!(
        started(&restarted.tick(f.t0 + 6 * HOUR + 30 * MIN).await),
        [Trigger::Scheduled]
    );
    restarted.wait_runs().await;
    assert_eq!(f.runs().await.len(), 3);
}

#[tokio::test]
async fn after_downtime_skip_waits_for_the_next_slot() {
    let f = fixture(&FILE_JOB.replace("run_once", "skip")).await;
    f.tick(Duration::ZERO).await;
    let events = f.tick(5 * HOUR + 30 * MIN).await;
    assert!(started(&events).is_empty(), "{events:?}");
    assert!(
        events.contains(&TickEvent::Skipped {
            job: "profile_daily".into(),
            missed: 5,
            next: f.t0 + 6 * HOUR
        }),
        "{events:?}"
    );
    let runs = f.runs().await;
    assert_eq!(runs.last().map(|r| r.outcome), Some(RunOutcome::Skipped));
    assert!(
        runs[1].message.contains("skipped 5 missed run(s)"),
        "{runs:?}"
    );
    assert!(started(&f.tick(5 * HOUR + 59 * MIN).await).is_empty());
    assert_eq!(started(&f.tick(6 * HOUR).await), [Trigger::Scheduled]);
}

#[tokio::test]
async fn a_run_in_flight_is_never_started_twice() {
    let f = fixture(
        r#"
interval = "1h"
timeout = "1m"
[refresh_job.source]
command = ["sh", "-c", "sleep 1; echo done"]
"#,
    )
    .await;
    let first = f.scheduler.tick(f.t0).await;
    assert_eq!(started(&first), [Trigger::First]);
    assert!(f.scheduler.is_running("profile_daily").await);
    // Hours later by the clock, but the run is still going.
    let again = f.scheduler.tick(f.t0 + 3 * HOUR).await;
    assert!(started(&again).is_empty(), "{again:?}");
    // A second scheduler process sees the lease.
    let other = Scheduler::new(
        Arc::clone(&f.store),
        Arc::clone(&f.scheduler.defs),
        SchedulerConfig {
            holder: "other-host/2".into(),
            ..f.scheduler.config.clone()
        },
    );
    // (Within the lease: timeout 1 min + margin 1 min.)
    let events = other.tick(f.t0 + MIN).await;
    assert!(
        matches!(&events[..], [TickEvent::LeaseHeld { holder, .. }] if holder == "test-host/1"),
        "{events:?}"
    );
    f.scheduler.wait_runs().await;
    let runs = f.runs().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome, RunOutcome::Loaded);
    assert_eq!(runs[0].exit_code, Some(0));
    assert!(runs[0].output.contains("done"), "{runs:?}");
}

#[tokio::test]
async fn a_lease_held_by_another_scheduler_blocks_until_it_expires() {
    let f = fixture(FILE_JOB).await;
    let lease = run_lease("profile_daily");
    assert_eq!(
        f.store
            .try_lease(&Lease::new(&lease, "crashed-host/9", f.t0 + 10 * MIN), f.t0)
            .await
            .unwrap(),
        LeaseOutcome::Acquired
    );
    let events = f.tick(Duration::ZERO).await;
    assert_eq!(
        events,
        [TickEvent::LeaseHeld {
            job: "profile_daily".into(),
            holder: "crashed-host/9".into(),
            until: f.t0 + 10 * MIN
        }]
    );
    assert!(f.runs().await.is_empty());
    // The holder never came back: its lease lapsed.
    assert_eq!(started(&f.tick(10 * MIN).await), [Trigger::First]);
    assert_eq!(f.runs().await.len(), 1);
}

#[tokio::test]
async fn a_run_past_its_timeout_is_stopped_with_its_children() {
    let f = fixture(
        r#"
interval = "1h"
timeout = "1s"
[refresh_job.source]
command = ["sh", "-c", "sleep 30 & echo $! > child.pid; echo started; wait"]
"#,
    )
    .await;
    let began = std::time::Instant::now();
    f.tick(Duration::ZERO).await;
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    let runs = f.runs().await;
    assert_eq!(runs[0].outcome, RunOutcome::TimedOut, "{runs:?}");
    assert_eq!(runs[0].exit_code, None);
    assert!(runs[0].message.contains("timeout"), "{runs:?}");
    assert!(runs[0].output.contains("started"), "{runs:?}");
    // The command's child was killed with it.
    let pid = std::fs::read_to_string(f.dir.join("child.pid")).unwrap();
    let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
    let mut gone = false;
    for _ in 0..50 {
        let alive = std::fs::read_to_string(proc.join("stat")).is_ok_and(|s| !s.contains(") Z "));
        if !alive {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "the command's child {} survived the timeout",
        pid.trim()
    );
}

#[tokio::test]
async fn a_failing_command_is_recorded_with_its_exit_code_and_output() {
    let f = fixture(
        r#"
interval = "1h"
timeout = "30s"
[refresh_job.source]
command = ["sh", "-c", "echo reading warehouse; echo 'permission denied' >&2; exit 3"]
"#,
    )
    .await;
    f.tick(Duration::ZERO).await;
    let runs = f.runs().await;
    assert_eq!(runs[0].outcome, RunOutcome::Failed);
    assert_eq!(runs[0].exit_code, Some(3));
    assert!(runs[0].output.contains("reading warehouse"), "{runs:?}");
    assert!(runs[0].output.contains("permission denied"), "{runs:?}");
    assert!(runs[0].message.contains("exit code"), "{runs:?}");
}

/// A failed run is tried again after an eighth of the interval, then after
/// twice as long with each failure in a row, never later than the next
/// slot; a run that works brings back the normal interval.
#[tokio::test]
async fn a_failed_run_is_retried_before_the_next_slot() {
    let f = fixture(
        r#"
interval = "1h"
timeout = "30s"
[refresh_job.source]
command = ["sh", "-c", "test -f source-ready || { echo 'warehouse not ready' >&2; exit 3; }"]
"#,
    )
    .await;
    assert_eq!(started(&f.tick(Duration::ZERO).await), [Trigger::First]);
    assert!(started(&f.tick(7 * MIN).await).is_empty());
    // 7.5 min: an eighth of the hour.
    assert_eq!(
        started(&f.tick(8 * MIN).await),
        [Trigger::Retry { failed: 1 }]
    );
    assert!(started(&f.tick(22 * MIN).await).is_empty());
    // 15 min after the retry that failed.
    assert_eq!(
        started(&f.tick(23 * MIN).await),
        [Trigger::Retry { failed: 2 }]
    );
    assert!(started(&f.tick(52 * MIN).await).is_empty());
    std::fs::write(f.dir.join("source-ready"), "").unwrap();
    assert_eq!(
        started(&f.tick(53 * MIN).await),
        [Trigger::Retry { failed: 3 }]
    );
    let runs = f.runs().await;
    assert_eq!(
        runs.last().map(|r| r.outcome),
        Some(RunOutcome::Loaded),
        "{runs:?}"
    );
    assert_eq!(
        runs.last().map(|r| r.trigger.describe()).as_deref(),
        Some("retry after 3 failed run(s)")
    );
    assert!(started(&f.tick(112 * MIN).await).is_empty());
    assert_eq!(started(&f.tick(113 * MIN).await), [Trigger::Scheduled]);
    // The fourth retry in a row would wait the whole interval: that is the
    // next slot.
    assert_eq!(wait_after(HOUR, 4), HOUR);
    assert_eq!(wait_after(2 * MIN, 1), Duration::from_secs(30));
    assert_eq!(wait_after(HOUR, 0), HOUR);
}

#[tokio::test]
async fn a_command_can_write_the_file_the_loader_reads() {
    let f = fixture(
        r#"
interval = "1h"
timeout = "30s"
script_version = "export-v2"
[refresh_job.source]
file = "exported.csv"
command = ["sh", "-c", "printf 'user_id,visits\nu-7,7\n' > \"$MLGW_REFRESH_FILE\"; echo \"$MLGW_SCRIPT_VERSION\""]
"#,
    )
    .await;
    f.tick(Duration::ZERO).await;
    let runs = f.runs().await;
    assert_eq!(runs[0].outcome, RunOutcome::Loaded, "{runs:?}");
    assert!(runs[0].output.contains("export-v2"), "{runs:?}");
    let batches = f.store.list_batches("profile", 1).await.unwrap();
    assert_eq!(batches[0].rows_written, 1);
    assert_eq!(batches[0].script_version, "export-v2");
    assert!(batches[0].source.ends_with("exported.csv"));
}

#[tokio::test]
async fn a_forced_run_happens_at_the_next_tick_and_reloads() {
    let f = fixture(FILE_JOB).await;
    f.tick(Duration::ZERO).await;
    f.store
        .put_run_request(&RunRequest {
            job: "profile_daily".into(),
            by: "dana".into(),
            at: f.t0 + 10 * MIN,
            reason: Some("upstream fix".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        started(&f.tick(11 * MIN).await),
        [Trigger::Forced { by: "dana".into() }]
    );
    let runs = f.runs().await;
    // Forced: the identical file is loaded again as a new batch.
    assert_eq!(runs[1].outcome, RunOutcome::Loaded, "{runs:?}");
    assert_ne!(runs[0].batch_id, runs[1].batch_id);
    // Handled once; the interval counts from the forced run.
    assert!(started(&f.tick(12 * MIN).await).is_empty());
    assert!(started(&f.tick(HOUR).await).is_empty());
    assert_eq!(
        started(&f.tick(HOUR + 11 * MIN).await),
        [Trigger::Scheduled]
    );
}

const TUNED_JOB: &str = r#"
interval = "1h"
timeout = "1m"
[refresh_job.source]
file = "profile.csv"
[refresh_job.tuner]
model = "scorer"
metric = "auc"
positive_label = "fraud"
threshold = 0.8
min_interval = "30m"
max_interval = "8h"
min_samples = 10
window = "1h"
"#;

/// The tuner's decisions among a tick's events.
fn evaluated(events: &[TickEvent]) -> Vec<crate::tuner::controller::Decision> {
    events
        .iter()
        .filter_map(|e| match e {
            TickEvent::Evaluated { decision, .. } => Some(decision.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_tuner_is_judged_every_window_and_its_interval_drives_the_schedule() {
    let f = fixture(TUNED_JOB).await;
    assert!(evaluated(&f.tick(Duration::ZERO).await).is_empty());
    let state = f
        .store
        .get_tuner_state("profile_daily")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        state.history.last().map(|d| d.action),
        Some(crate::tuner::controller::Action::Started)
    );
    assert!(evaluated(&f.tick(59 * MIN).await).is_empty());
    let events = f.tick(HOUR).await;
    let judged = evaluated(&events);
    assert_eq!(judged.len(), 1, "{judged:?}");
    assert_eq!(started(&events), [Trigger::Scheduled]);
    // No predictions were logged: no decision.
    assert_eq!(
        judged[0].action,
        crate::tuner::controller::Action::TooFewLabels
    );
    assert!(evaluated(&f.tick(HOUR + MIN).await).is_empty());

    // A pin of 4 h moves the next run.
    let defs = Arc::clone(&f.scheduler.defs);
    jobs::pin(&*f.store, &defs, "profile_daily", 4 * HOUR, "dana", None)
        .await
        .unwrap();
    assert!(started(&f.tick(4 * HOUR + 59 * MIN).await).is_empty());
    assert_eq!(started(&f.tick(5 * HOUR).await), [Trigger::Scheduled]);
    let detail = jobs::detail(&*f.store, &defs, "profile_daily")
        .await
        .unwrap();
    assert_eq!(detail.overview.interval, 4 * HOUR);
    assert_eq!(detail.overview.next_run, Some(f.t0 + 9 * HOUR));
    assert_eq!(detail.runs.len(), 3);
    // Out of bounds and unknown jobs are refused with what to do.
    let e = jobs::pin(&*f.store, &defs, "profile_daily", 9 * HOUR, "dana", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bounds [30 min, 8 h]"), "{e}");
    let e = jobs::request_run(&*f.store, &defs, "nightly", "dana", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("\"profile_daily\""), "{e}");
}

/// A logged prediction of `scorer` at `at` whose "profile" rows were `age`
/// old, scored `fraud_score`, and its label.
fn labelled(
    at: SystemTime,
    age: Duration,
    fraud_score: f64,
    fraud: bool,
) -> (crate::log::PredictionRecord, crate::log::FeedbackRecord) {
    use crate::log::{FeedbackRecord, LoggedOutput, Outcome, PredictionRecord, PredictionSource};
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
    let id = uuid::Uuid::new_v7(ts).to_string();
    let prediction = PredictionRecord {
        prediction_id: id.clone(),
        at,
        subject: "svc".to_owned(),
        model: "scorer".to_owned(),
        model_version: "1".to_owned(),
        route: "stable".to_owned(),
        entity: "user_id=u-1".to_owned(),
        inputs: vec![0.0],
        view_ages_ms: std::collections::BTreeMap::from([(
            "profile".to_owned(),
            Some(u64::try_from(age.as_millis()).unwrap()),
        )]),
        defaulted: Vec::new(),
        outputs: vec![LoggedOutput {
            name: "probabilities".to_owned(),
            label: Some("fraud".to_owned()),
            score: fraud_score,
        }],
        shadow_of: None,
        model_time_us: None,
        source: PredictionSource::Live,
    };
    let feedback = FeedbackRecord {
        prediction_id: id,
        outcome: Outcome::Label(if fraud { "fraud" } else { "legit" }.to_owned()),
        observed_at: at,
        received_at: at,
        subject: "svc".to_owned(),
    };
    (prediction, feedback)
}

/// Labels declared a week late: the scheduler also looks at the window of
/// 21 hours ago on the labels it has so far, and shortens the interval on
/// them instead of waiting for the week.
#[tokio::test]
async fn the_scheduler_looks_early_at_labels_that_arrived_so_far() {
    let job = TUNED_JOB.replace("window = \"1h\"", "window = \"1h\"\nlabel_delay = \"7d\"");
    let f = fixture(&job).await;
    f.tick(Duration::ZERO).await;
    // The first hour's predictions rank fraud no better than chance.
    let mut predictions = Vec::new();
    for i in 0..40u32 {
        let (p, l) = labelled(
            f.t0 + i * MIN,
            30 * MIN,
            f64::from(i % 2) * 0.5 + 0.25,
            i % 4 < 2,
        );
        f.store
            .write_feedback(&l, Duration::from_secs(30 * 86_400))
            .await
            .unwrap();
        predictions.push(p);
    }
    f.store
        .write_predictions(&predictions, Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    let decisions = evaluated(&f.tick(22 * HOUR).await);
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    // The matured window (a week ago) had nothing; the early look acted.
    assert_eq!(
        decisions[0].action,
        crate::tuner::controller::Action::TooFewLabels
    );
    let early = &decisions[1];
    assert_eq!(early.action, crate::tuner::controller::Action::Shortened);
    assert_eq!(early.basis, crate::tuner::controller::Basis::EarlyLabels);
    assert_eq!((early.from, early.to), (HOUR, 30 * MIN));
    assert_eq!(early.samples, 40);
    assert!(
        early.reason.contains("arrived within 21 h"),
        "{}",
        early.reason
    );
    let state = f
        .store
        .get_tuner_state("profile_daily")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.interval, 30 * MIN);
}

/// A scheduled refresh of a view with a similarity index builds the index
/// from the batch it loaded, and a rerun of identical input leaves it be.
#[tokio::test]
async fn a_scheduled_refresh_rebuilds_the_views_index() {
    let dir = std::env::temp_dir().join(format!("mlgw-schedule-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("items.csv"),
        "item_id,embedding\ni-1,\"1 0\"\ni-2,\"0 1\"\ni-3,\"0.9 0.1\"\n",
    )
    .unwrap();
    let text = r#"
[[entity]]
name = "item"
keys = ["item_id"]

[[static_view]]
name = "item_embedding"
entity = "item"
refresh_job = "items_daily"
max_age = "48h"

[[static_view.feature]]
name = "embedding"
type = "vector(2)"
default = 0.0

[static_view.index]
feature = "embedding"
distance = "cosine"

[[refresh_job]]
name = "items_daily"
interval = "1h"
timeout = "1m"
missed_run = "run_once"
[refresh_job.source]
file = "items.csv"
"#;
    let defs_path = dir.join("features.toml");
    std::fs::write(&defs_path, text).unwrap();
    let defs = Arc::new(FeatureDefinitions::load(&defs_path).unwrap_or_else(|e| panic!("{e}")));
    let store = Arc::new(EmbeddedStore::open(&dir.join("features.redb")).unwrap());
    store.apply_schema().await.unwrap();
    let config = SchedulerConfig {
        holder: "test-host/1".to_owned(),
        poll: Duration::from_secs(1),
        lease_margin: MIN,
        shutdown_grace: Duration::from_secs(5),
    };
    let scheduler = Scheduler::new(Arc::clone(&store), Arc::clone(&defs), config);
    let t0 = crate::clock::now_micros();
    scheduler.tick(t0).await;
    scheduler.wait_runs().await;
    let current = store.current_batches().await.unwrap();
    let batch = &current["item_embedding"];
    let index = &current[&crate::similarity::index_target("item_embedding")];
    assert_eq!(
        index.fingerprint, batch.batch_id,
        "the index is of the loaded batch"
    );
    let runs = store
        .get_schedule("items_daily")
        .await
        .unwrap()
        .unwrap()
        .runs;
    let message = &runs.last().unwrap().message;
    assert!(
        message.contains("index") && message.contains("3 vectors"),
        "{message}"
    );
    // An hour later the same file: nothing loaded, the index is not rebuilt.
    scheduler.tick(t0 + HOUR + MIN).await;
    scheduler.wait_runs().await;
    let again = store.current_batches().await.unwrap();
    assert_eq!(
        again[&crate::similarity::index_target("item_embedding")].batch_id,
        index.batch_id
    );
    let _ = std::fs::remove_dir_all(&dir);
}

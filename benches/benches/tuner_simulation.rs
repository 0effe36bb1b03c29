//! The refresh tuner in many simulated worlds (see `feature_store::tuner::sim`):
//! late labels (hours to 30 days), refresh runs that fail, drift that rises
//! and falls or follows the week, label volume from sparse to plentiful,
//! labels that stop, a model version change; each world with the shipped
//! policy (fraud.toml's `customer_profile_daily` tuner, in a world whose
//! features drift slowly) and the fast one (15 min … 24 h, in a world ten
//! times faster), 26 weeks, 20 seeds. Every hour is judged by the world's
//! ground truth. Writes `benches/results/tuner_simulation.md` and one SVG
//! per world (the shipped policy's first seed).
//!
//!     cargo bench -p benches --bench tuner_simulation
//!
//! Knobs: MLGW_SIM_SEEDS (default 20), MLGW_SIM_WEEKS (26), MLGW_SIM_ONLY
//! (a world's name: run only that one).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use benches::knobs::env_num;
use benches::report::{commit, machine, median, range};
use feature_store::definitions::FeatureDefinitions;
use feature_store::tuner::TunedJob;
use feature_store::tuner::controller::{Policy, human};
use feature_store::tuner::metric::MetricKind;
use feature_store::tuner::sim::{self, Drift, ModelChange, SimConfig};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const WEEK: Duration = Duration::from_secs(7 * 86_400);
/// The share of hours at or above the threshold a schedule must keep.
const TARGET: f64 = 0.99;

/// A world: its name, what it changes, and the change.
struct World {
    name: &'static str,
    what: &'static str,
    apply: fn(&mut SimConfig),
}

fn worlds() -> Vec<World> {
    vec![
        World {
            name: "steady",
            what: "steady drift, labels within 6 h, 1,000 an hour",
            apply: |_| {},
        },
        World {
            name: "chargebacks",
            what: "labels 1 to 30 days late (log-uniform), declared maturity 30 d",
            apply: |c| c.label_delay = (DAY, 30 * DAY),
        },
        World {
            name: "sparse",
            what: "120 labels an hour (judged over 6-hour windows), labels within 2 d",
            apply: |c| {
                c.labels_per_hour = 120;
                c.window = 6 * HOUR;
                c.label_delay = (Duration::ZERO, 2 * DAY);
            },
        },
        World {
            name: "plentiful",
            what: "4,000 labels an hour, labels within 1 d",
            apply: |c| {
                c.labels_per_hour = 4000;
                c.label_delay = (Duration::ZERO, DAY);
            },
        },
        World {
            name: "rise-and-fall",
            what: "drift ×3 from week 8 to week 14, labels 1 h to 7 d late",
            apply: |c| {
                c.drift = Drift::RiseAndFall {
                    from: 8 * WEEK,
                    to: 14 * WEEK,
                    factor: 3.0,
                };
                c.label_delay = (HOUR, 7 * DAY);
            },
        },
        World {
            name: "weekly",
            what: "drift ×2.5 on the last two days of every week, labels within 1 d",
            apply: |c| {
                c.drift = Drift::Weekends { factor: 2.5 };
                c.label_delay = (Duration::ZERO, DAY);
            },
        },
        World {
            name: "failing-refreshes",
            what: "15 % of refresh runs fail, a run takes 20 min, labels within 1 d",
            apply: |c| {
                c.refresh_failure = 0.15;
                c.refresh_time = Duration::from_secs(20 * 60);
                c.label_delay = (Duration::ZERO, DAY);
            },
        },
        World {
            name: "labels-stop",
            what: "no label arrives in weeks 10 and 11, labels within 1 d",
            apply: |c| {
                c.label_outage = Some((10 * WEEK, 12 * WEEK));
                c.label_delay = (Duration::ZERO, DAY);
            },
        },
        World {
            name: "model-change",
            what: "model v2 from week 12: sharper (fresh AUC ≈ 0.97), drifts 1.5× faster; labels within 1 d",
            apply: |c| {
                c.model_change = Some(ModelChange {
                    at: 12 * WEEK,
                    signal: 1.33,
                    drift_factor: 1.5,
                });
                c.label_delay = (Duration::ZERO, DAY);
            },
        },
    ]
}

/// The two policies: (name, policy, first interval, base drift per hour).
fn policies() -> Result<Vec<(&'static str, Policy, Duration, f64)>> {
    let path = rig::workspace_root().join("feature-store/definitions/fraud.toml");
    let defs = FeatureDefinitions::load(&path)?;
    let shipped = defs
        .job_specs()
        .iter()
        .find_map(TunedJob::from_spec)
        .context("fraud.toml declares no tuned refresh job")?;
    let fast = Policy {
        metric: MetricKind::Auc,
        threshold: shipped.policy.threshold,
        min_interval: Duration::from_secs(15 * 60),
        max_interval: DAY,
        good_windows: 6,
        cooldown_windows: 24,
        min_samples: 500,
        label_delay: Duration::ZERO,
    };
    Ok(vec![
        (
            "shipped",
            shipped.policy.clone(),
            shipped.current_interval,
            0.005,
        ),
        ("fast", fast, Duration::from_secs(15 * 60), 0.05),
    ])
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    runs: u64,
    fixed_15: u64,
    best_fixed: Option<Duration>,
    best_fixed_runs: Option<u64>,
    best_ladder: Option<Duration>,
    best_ladder_runs: Option<u64>,
    share: f64,
    worst: usize,
}

fn one(config: &SimConfig) -> Outcome {
    let result = sim::run(config, None);
    let policy = &config.policy;
    let best_fixed = sim::best_fixed(config, Duration::from_secs(15 * 60), TARGET);
    let best_ladder = sim::best_on_ladder(config, TARGET);
    Outcome {
        runs: result.runs,
        fixed_15: sim::fixed_runs(config, Duration::from_secs(15 * 60)),
        best_fixed,
        best_fixed_runs: best_fixed.map(|d| sim::fixed_runs(config, d)),
        best_ladder,
        best_ladder_runs: best_ladder.map(|d| sim::fixed_runs(config, d)),
        share: result.share_meeting(policy),
        worst: result.worst_breaches_once_observable(policy, policy.label_delay, config.window),
    }
}

fn config_for(
    world: &World,
    policy: &Policy,
    start: Duration,
    drift: f64,
    seed: u64,
    weeks: u64,
) -> SimConfig {
    let mut c = SimConfig {
        seed,
        duration: WEEK * weeks as u32,
        drift_per_hour: drift,
        start_interval: start,
        policy: policy.clone(),
        ..SimConfig::example()
    };
    (world.apply)(&mut c);
    // The job declares its labels mature when the slowest has arrived.
    c.policy.label_delay = c.label_delay.1;
    c
}

fn main() -> Result<()> {
    let seeds = env_num("MLGW_SIM_SEEDS", 20.0)? as u64;
    let weeks = env_num("MLGW_SIM_WEEKS", 26.0)? as u64;
    let only = std::env::var("MLGW_SIM_ONLY").ok();
    let worlds: Vec<World> = worlds()
        .into_iter()
        .filter(|w| only.as_deref().is_none_or(|o| o == w.name))
        .collect();
    let policies = policies()?;
    let started = Instant::now();

    // Every (world, policy, seed) on the machine's cores.
    let jobs: Vec<(usize, usize, u64)> = (0..worlds.len())
        .flat_map(|w| (0..policies.len()).flat_map(move |p| (1..=seeds).map(move |s| (w, p, s))))
        .collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, usize, u64, Outcome)>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(w, p, seed)) = jobs.get(i) else {
                        break;
                    };
                    let (_, policy, start, drift) = &policies[p];
                    let config = config_for(&worlds[w], policy, *start, *drift, seed, weeks);
                    let outcome = one(&config);
                    if let Ok(mut r) = results.lock() {
                        r.push((w, p, seed, outcome));
                    }
                    eprint!(".");
                }
            });
        }
    });
    eprintln!();
    let results = results.into_inner().unwrap_or_default();
    let elapsed = started.elapsed();

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir)?;
    let (cores, cpu) = machine();
    let mut md = String::new();
    writeln!(md, "# Refresh tuner simulation\n")?;
    let mut cmd = String::new();
    for var in ["MLGW_SIM_SEEDS", "MLGW_SIM_WEEKS", "MLGW_SIM_ONLY"] {
        if let Ok(v) = std::env::var(var) {
            write!(cmd, "{var}={v} ")?;
        }
    }
    writeln!(
        md,
        "Command: `{cmd}cargo bench -p benches --bench tuner_simulation` at {}; {weeks} weeks, seeds 1–{seeds} per world and policy; computed in {:.0} s on {cores} cores ({cpu}).\n",
        commit(),
        elapsed.as_secs_f64()
    )?;
    writeln!(
        md,
        "**The world** (feature_store::tuner::sim): a binary model, fresh-feature AUC ≈ 0.95 (30 % positives), whose signal decays as e^(−λ·age); AUC threshold {}. Each hour is judged by the world's ground truth (the exact AUC of its predictions in expectation, feature ages sampled every 5 minutes), whether or not its labels ever arrive. Labels are drawn per prediction and arrive after a random delay; a window is judged once its declared maturity (the longest delay) has passed, and looked at early, an eighth of that after its end, on the labels that have arrived by then (an early look may only shorten the interval).\n",
        policies[0].1.threshold
    )?;
    for (name, p, start, drift) in &policies {
        writeln!(
            md,
            "- **{name} policy**: start {}, {} … {}, double after {} good windows spanning a cycle, cool-down {} windows, ≥ {} labels per window; its worlds drift at λ = {drift} per hour.",
            human(*start),
            human(p.min_interval),
            human(p.max_interval),
            p.good_windows,
            p.cooldown_windows,
            p.min_samples
        )?;
    }
    writeln!(
        md,
        "\nColumns (medians over seeds; worst seed in brackets): refresh runs of the tuned schedule; fewer than a fixed 15-minute schedule; the best fixed interval in hindsight (the longest multiple of 15 min keeping ≥ 99 % of hours at the threshold in that world and seed) and the tuned runs against its runs; the same against the best interval on the doubling ladder; hours at or above the threshold; the longest run of breaching hours after a breach could be seen (its labels matured and its window was judged).\n"
    )?;
    writeln!(
        md,
        "Targets: ≥ 80 % fewer runs than 15 min where the world allows it; ≥ 99 % of hours at the threshold; no run of more than 2 breaching hours once observable; within 10 % of the runs of the best fixed interval.\n"
    )?;

    for (wi, world) in worlds.iter().enumerate() {
        writeln!(md, "## {}: {}\n", world.name, world.what)?;
        writeln!(
            md,
            "| policy | runs | fewer than 15 min | best fixed | runs vs best fixed | best on ladder | runs vs ladder | hours ≥ threshold | breaches once seen |"
        )?;
        writeln!(
            md,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for (pi, (pname, _, _, _)) in policies.iter().enumerate() {
            let outs: Vec<Outcome> = results
                .iter()
                .filter(|r| r.0 == wi && r.1 == pi)
                .map(|r| r.3)
                .collect();
            if outs.is_empty() {
                continue;
            }
            let runs_of = |fixed: Option<u64>, o: &Outcome| fixed.map(|f| o.runs as f64 / f as f64);
            let fewer: Vec<f64> = outs
                .iter()
                .map(|o| 1.0 - o.runs as f64 / o.fixed_15 as f64)
                .collect();
            let vs_best: Vec<f64> = outs
                .iter()
                .filter_map(|o| runs_of(o.best_fixed_runs, o))
                .collect();
            let vs_ladder: Vec<f64> = outs
                .iter()
                .filter_map(|o| runs_of(o.best_ladder_runs, o))
                .collect();
            let best: Vec<f64> = outs
                .iter()
                .filter_map(|o| o.best_fixed.map(|d| d.as_secs_f64()))
                .collect();
            let ladder: Vec<f64> = outs
                .iter()
                .filter_map(|o| o.best_ladder.map(|d| d.as_secs_f64()))
                .collect();
            let share: Vec<f64> = outs.iter().map(|o| o.share).collect();
            let worst: Vec<f64> = outs.iter().map(|o| o.worst as f64).collect();
            let max = |v: &[f64]| range(v).1;
            let min = |v: &[f64]| range(v).0;
            let dur = |s: f64| {
                if s.is_finite() {
                    human(Duration::from_secs_f64(s))
                } else {
                    "none".to_owned()
                }
            };
            writeln!(
                md,
                "| {pname} | {:.0} | {:.1} % [{:.1} %] | {} | {:.2}× [{:.2}×] | {} | {:.2}× [{:.2}×] | {:.2} % [{:.2} %] | {:.0} [{:.0}] |",
                median(outs.iter().map(|o| o.runs as f64).collect()),
                median(fewer.clone()) * 100.0,
                min(&fewer) * 100.0,
                dur(median(best)),
                median(vs_best.clone()),
                max(&vs_best),
                dur(median(ladder)),
                median(vs_ladder.clone()),
                max(&vs_ladder),
                median(share.clone()) * 100.0,
                min(&share) * 100.0,
                median(worst.clone()),
                max(&worst),
            )?;
        }
        // One run drawn, with its decisions.
        let (_, policy, start, drift) = &policies[0];
        let config = config_for(world, policy, *start, *drift, 1, weeks);
        let result = sim::run(&config, None);
        let svg_name = format!("tuner_simulation_{}.svg", world.name);
        std::fs::write(
            dir.join(&svg_name),
            sim::svg(&config, &result, &format!("{}, shipped policy", world.name)),
        )?;
        writeln!(
            md,
            "\n![{} with the shipped policy, seed 1]({svg_name})\n",
            world.name
        )?;
        let changes: Vec<_> = sim::changes(&result).collect();
        writeln!(
            md,
            "<details><summary>Shipped policy, seed 1: {} interval decisions</summary>\n\n| day | judged on day | decision |\n| --- | --- | --- |",
            changes.len()
        )?;
        let epoch = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = |t: std::time::SystemTime| {
            t.duration_since(epoch)
                .map_or(0.0, |d| d.as_secs_f64() / 86_400.0)
        };
        for d in changes.iter().take(40) {
            writeln!(
                md,
                "| {:.1} | {:.1} | {} |",
                day(d.at),
                day(d.judged()),
                d.reason
            )?;
        }
        writeln!(md, "\n</details>\n")?;
    }
    print!("{md}");
    std::fs::write(dir.join("tuner_simulation.md"), &md)?;
    eprintln!("wrote {}", dir.join("tuner_simulation.md").display());
    Ok(())
}

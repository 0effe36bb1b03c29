//! The refresh tuner against a deterministic synthetic world (see
//! `feature_store::tuner::sim`): six simulated weeks of hourly windows with
//! 2,000 labelled predictions each, the drift rate ×4 after five weeks.
//! Prints the summary and every interval change, and writes
//! `benches/results/tuner_simulation.md` and `.svg`.
//!
//!     cargo bench -p benches --bench tuner_simulation
//!
//! Knobs: MLGW_SIM_SEED, MLGW_SIM_WEEKS, MLGW_SIM_PREDICTIONS (per window).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;
use feature_store::tuner::controller::{Action, human};
use feature_store::tuner::sim::{self, SimConfig};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let mut config = SimConfig::example();
    config.seed = env_u64("MLGW_SIM_SEED", config.seed);
    let weeks = env_u64("MLGW_SIM_WEEKS", 6);
    config.duration = Duration::from_secs(weeks * 7 * 86_400);
    config.drift_change_at = Some(Duration::from_secs((weeks.saturating_sub(1)) * 7 * 86_400));
    config.predictions_per_window =
        usize::try_from(env_u64("MLGW_SIM_PREDICTIONS", 2000)).unwrap_or(2000);
    let started = Instant::now();
    let result = sim::run(&config, None);
    let change = config.drift_change_at.unwrap_or(config.duration);
    let settle_from = Duration::from_secs(7 * 86_400).min(change);
    let settled = result.dominant_interval(settle_from, change);
    let feasible = sim::largest_feasible(&config, settle_from, change);
    let after = result.dominant_interval(change + Duration::from_secs(2 * 86_400), config.duration);
    let feasible_after = sim::largest_feasible(
        &config,
        change + Duration::from_secs(86_400),
        config.duration,
    );
    // Windows from the drift change to the first decision that shortens.
    let reaction = result
        .windows
        .iter()
        .filter(|w| w.end > change)
        .position(|w| matches!(w.decision.action, Action::Reverted | Action::Shortened))
        .map(|i| i + 1);
    let meeting = result.share_meeting(&config.policy);
    let fewer = 1.0 - result.tuned_runs as f64 / result.fixed_runs as f64;
    let p = &config.policy;

    let mut md = String::new();
    let _ = writeln!(md, "# Refresh tuner simulation\n");
    let _ = writeln!(
        md,
        "Command: `cargo bench -p benches --bench tuner_simulation` (seed {}, {} weeks, {} labelled predictions per 1-hour window; computed in {:.1?}).\n",
        config.seed,
        weeks,
        config.predictions_per_window,
        started.elapsed()
    );
    let _ = writeln!(
        md,
        "World: binary model, fresh-feature AUC ≈ 0.95, drift {} per hour of feature age (×{} from day {}). Policy: {} ≥ {}, interval {} … {} on a doubling ladder, double after {} good windows, cool-down {} windows (doubling per repeated failure), ≥ {} labels per window.\n",
        config.drift_per_hour,
        config.drift_factor,
        change.as_secs() / 86_400,
        p.metric.name(),
        p.threshold,
        human(p.min_interval),
        human(p.max_interval),
        p.good_windows,
        p.cooldown_windows,
        p.min_samples
    );
    let show = |d: Option<Duration>| d.map_or_else(|| "none".to_owned(), human);
    let _ = writeln!(md, "| measure | result | goal |\n| --- | --- | --- |");
    let _ = writeln!(
        md,
        "| interval settled at (days 7 … {}) | {} | largest feasible on the ladder: {} |",
        change.as_secs() / 86_400,
        show(settled),
        show(feasible)
    );
    let _ = writeln!(
        md,
        "| refresh runs: tuned vs fixed 15 min | {} vs {} ({:.1} % fewer) | ≥ 80 % fewer |",
        result.tuned_runs,
        result.fixed_runs,
        fewer * 100.0
    );
    let _ = writeln!(
        md,
        "| windows with {} ≥ {} | {:.2} % of {} | ≥ 99 % |",
        p.metric.name(),
        p.threshold,
        meeting * 100.0,
        result.windows.len()
    );
    let _ = writeln!(
        md,
        "| windows from the drift rise to the first shortening | {} | bounded |",
        reaction.map_or_else(|| "never".to_owned(), |n| n.to_string())
    );
    let _ = writeln!(
        md,
        "| interval after the drift rise (from day {}) | {} | largest feasible: {} |",
        change.as_secs() / 86_400 + 2,
        show(after),
        show(feasible_after)
    );
    let _ = writeln!(
        md,
        "\n## Interval changes\n\n| day | hour | decision |\n| --- | --- | --- |"
    );
    for w in &result.windows {
        if w.decision.from != w.decision.to {
            let h = w.end.as_secs() / 3600;
            let _ = writeln!(md, "| {} | {} | {} |", h / 24, h % 24, w.decision.reason);
        }
    }
    let _ = writeln!(
        md,
        "\n## Windows below the threshold\n\n| day | hour | interval | {} | decision |\n| --- | --- | --- | --- | --- |",
        p.metric.name()
    );
    for w in &result.windows {
        if let Some(m) = w.metric.filter(|m| !p.metric.meets(*m, p.threshold)) {
            let h = w.end.as_secs() / 3600;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {m:.3} | {:?} |",
                h / 24,
                h % 24,
                human(w.interval),
                w.decision.action
            );
        }
    }
    let _ = writeln!(md, "\n![interval and metric](tuner_simulation.svg)");
    print!("{md}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tuner_simulation.md"), &md)?;
    std::fs::write(dir.join("tuner_simulation.svg"), sim::svg(&config, &result))?;
    eprintln!("wrote {}", dir.join("tuner_simulation.md").display());
    Ok(())
}

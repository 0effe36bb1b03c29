//! Benchmark knobs from the environment (`MLGW_BENCH_…`): a number or a
//! comma-separated list, with a default when unset.

use anyhow::{Context, Result};

/// `name` as a number, `default` when unset.
///
/// # Errors
/// When set but not a number.
pub fn env_num(name: &str, default: f64) -> Result<f64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// `name` as a comma-separated list of numbers, `default` when unset.
///
/// # Errors
/// When set and an item is not a number.
pub fn env_list(name: &str, default: &[f64]) -> Result<Vec<f64>> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<f64>()
                    .with_context(|| format!("{name}={v:?}: {s:?} is not a number"))
            })
            .collect(),
        Err(_) => Ok(default.to_vec()),
    }
}

/// `1000,2000` for a list of rates or counts.
pub fn list_text(values: &[f64]) -> String {
    values
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(",")
}

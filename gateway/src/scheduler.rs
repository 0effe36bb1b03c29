//! The refresh scheduler hosted in the gateway: its `[scheduler]` settings
//! (validated here) and [`spawn`], which runs
//! [`feature_store::schedule::Scheduler`] until the server stops.

use std::sync::Arc;
use std::time::Duration;

use feature_store::reader::FeatureReader;
use feature_store::store::AnyStore;
use serde::Deserialize;

/// `[scheduler]`: run the declared refresh jobs inside this gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Whether the gateway runs the scheduler (default false; run
    /// `mlgw-features scheduler run` elsewhere instead).
    #[serde(default)]
    pub enabled: bool,
    /// How often it looks for due work, e.g. "5s".
    #[serde(default = "default_poll", with = "duration_text")]
    pub poll: Duration,
    /// A run's lease lasts its timeout plus this, e.g. "1m".
    #[serde(default = "default_margin", with = "duration_text")]
    pub lease_margin: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            enabled: false,
            poll: default_poll(),
            lease_margin: default_margin(),
        }
    }
}

fn default_poll() -> Duration {
    Duration::from_secs(5)
}

fn default_margin() -> Duration {
    Duration::from_secs(60)
}

mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        feature_store::definitions::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

impl SchedulerSettings {
    /// The poll interval when the scheduler runs here (None: disabled).
    pub fn poll(&self) -> Option<Duration> {
        self.enabled.then_some(self.poll)
    }
}

/// Starts the scheduler over `reader`'s store and definitions when enabled;
/// it stops when `stop` completes.
pub fn spawn(
    settings: &SchedulerSettings,
    reader: &Arc<FeatureReader<AnyStore>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    if !settings.enabled {
        return None;
    }
    let scheduler = Arc::new(
        feature_store::schedule::Scheduler::new(
            Arc::clone(reader.store()),
            Arc::new(reader.definitions().clone()),
            feature_store::schedule::SchedulerConfig {
                poll: settings.poll,
                lease_margin: settings.lease_margin,
                ..feature_store::schedule::SchedulerConfig::for_this_process()
            },
        )
        .serving(reader),
    );
    tracing::info!(
        holder = scheduler.config().holder,
        "refresh scheduler started (every {:?})",
        settings.poll
    );
    Some(tokio::spawn(scheduler.run(
        Arc::new(feature_store::schedule::SystemClock),
        stop,
        feature_store::schedule::log_event,
    )))
}

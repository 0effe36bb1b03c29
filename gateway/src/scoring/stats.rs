//! What `/metrics` shows of batch scoring, read from the store before each
//! scrape into [`ScoringFamilies`]: per job, the alarms its latest judged run
//! raised (an alert rule's input), whether that run was refused, and when
//! the batch the model serves was scored.

use std::time::{SystemTime, UNIX_EPOCH};

use feature_store::cardinality::Alarm;
use feature_store::store::{FullStore, StoreError, score_target};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Scorer;

/// The alarm kinds, as the `kind` label names them.
const KINDS: [&str; 2] = ["too_many_keys", "new_categories"];

/// One job as a scrape saw it.
#[derive(Debug)]
struct Job {
    job: String,
    /// Kinds raised by the latest judged run.
    alarms: Vec<&'static str>,
    /// Whether that run was refused (its batch not served).
    refused: bool,
    /// When the served batch's run started (None: nothing served).
    served_at: Option<SystemTime>,
}

/// The scoring jobs as one scrape saw them (`None`: the store could not be
/// read in time).
#[derive(Debug)]
pub struct ScoringFamilies(Option<Vec<Job>>);

impl ScoringFamilies {
    /// Nothing read (the store was too slow).
    pub fn unread() -> Self {
        ScoringFamilies(None)
    }

    /// Every declared job's latest run (read from the store) and served
    /// batch.
    ///
    /// # Errors
    /// The store's failure.
    pub async fn take<S: FullStore>(scorer: &Scorer<S>) -> Result<Self, StoreError> {
        let store = scorer.store();
        // The served batches as this gateway's reader knows them (it polls
        // them anyway): no store read for them here.
        let reader = scorer.enricher.reader();
        let mut jobs = Vec::new();
        for spec in scorer.definitions().scoring_jobs() {
            let runs = store.scoring_runs(&spec.name, 16).await?;
            let last = runs.iter().find(|r| !r.batch_id.contains('/'));
            jobs.push(Job {
                job: spec.name.clone(),
                alarms: last.map_or_else(Vec::new, |r| {
                    r.alarms
                        .iter()
                        .map(|a| match a {
                            Alarm::TooManyKeys { .. } => KINDS[0],
                            Alarm::NewCategories { .. } => KINDS[1],
                        })
                        .collect()
                }),
                refused: last.is_some_and(|r| !r.switched),
                served_at: reader
                    .current_batch(&score_target(&spec.model))
                    .map(|b| b.written_at),
            });
        }
        Ok(ScoringFamilies(Some(jobs)))
    }
}

impl Collector for ScoringFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        ConstGauge::new(i64::from(self.0.is_some())).encode(encoder.encode_descriptor(
            "mlgw_scoring_jobs_read",
            "Whether this scrape could read the scoring jobs' runs from the store (1) or not (0: their series are missing).",
            None,
            MetricType::Gauge,
        )?)?;
        let Some(jobs) = &self.0 else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "mlgw_scoring_alarm",
            "1 while the latest judged run of a scoring job raised this cardinality alarm (too_many_keys: its batch was not served; new_categories: a spike of values never seen before).",
            None,
            MetricType::Gauge,
        )?;
        for j in jobs {
            for kind in KINDS {
                let labels = [("job", j.job.as_str()), ("kind", kind)];
                ConstGauge::new(i64::from(j.alarms.contains(&kind)))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "mlgw_scoring_last_run_refused",
            "1 when a scoring job's latest judged run was refused by the cardinality watch (the previous batch stays served).",
            None,
            MetricType::Gauge,
        )?;
        for j in jobs {
            ConstGauge::new(i64::from(j.refused))
                .encode(family.encode_family(&[("job", j.job.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "mlgw_scoring_served_batch_timestamp_seconds",
            "When the run of the batch a scoring job's model serves started (Unix time); absent while none is served.",
            None,
            MetricType::Gauge,
        )?;
        for j in jobs {
            if let Some(t) = j.served_at {
                let secs = t
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                ConstGauge::new(secs).encode(family.encode_family(&[("job", j.job.as_str())])?)?;
            }
        }
        Ok(())
    }
}

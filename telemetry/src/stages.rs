//! Per-stage latency histograms taken from the `tracing` spans themselves: a
//! layer notes when a span of a named stage opens and observes its wall time
//! when it closes, so the stage timings in `/metrics` and in the traces are
//! the same spans and no request path carries timing code. Only the names
//! given at start are timed (bounded labels); other spans cost one lookup.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use tracing::span;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::prom::{Histogram, LATENCY_BUCKETS};

/// The timed stages and their histograms.
#[derive(Debug, Clone)]
pub struct Stages {
    names: &'static [&'static str],
    histograms: Vec<Histogram>,
}

static GLOBAL: OnceLock<Arc<Stages>> = OnceLock::new();

impl Stages {
    /// Histograms for the spans named `names`.
    pub fn new(names: &'static [&'static str]) -> Self {
        Stages {
            names,
            histograms: names
                .iter()
                .map(|_| Histogram::new(LATENCY_BUCKETS))
                .collect(),
        }
    }

    fn encode(
        &self,
        mut encoder: DescriptorEncoder<'_>,
        name: &str,
        help: &str,
    ) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (stage, h) in self.names.iter().zip(&self.histograms) {
            h.encode(family.encode_family(&[("stage", *stage)])?)?;
        }
        Ok(())
    }
}

/// The family `name` (help `help`, written as given: end it with a period)
/// of the stages installed by [`crate::init`], read at each scrape; nothing
/// when no stages are installed. Register it with
/// [`Registry::register_collector`](crate::prom::Registry::register_collector).
pub fn collector(name: &str, help: &str) -> Box<dyn Collector> {
    Box::new(StageFamily {
        stages: None,
        name: name.to_owned(),
        help: help.to_owned(),
    })
}

/// A stage family for a registry: given stages, or the global ones.
#[derive(Debug)]
struct StageFamily {
    stages: Option<Arc<Stages>>,
    name: String,
    help: String,
}

impl Collector for StageFamily {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        match self.stages.as_ref().or_else(|| global()) {
            Some(stages) => stages.encode(encoder, &self.name, &self.help),
            None => Ok(()),
        }
    }
}

/// The stages installed by [`crate::init`], if any.
pub fn global() -> Option<&'static Arc<Stages>> {
    GLOBAL.get()
}

pub(crate) fn install(stages: Arc<Stages>) -> StageLayer {
    let stages = GLOBAL.get_or_init(|| stages).clone();
    StageLayer { stages }
}

/// When a timed span opened, and which stage it is.
struct Opened(usize, Instant);

/// The layer that feeds [`Stages`].
pub struct StageLayer {
    stages: Arc<Stages>,
}

impl<S> Layer<S> for StageLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let name = attrs.metadata().name();
        if let Some(i) = self.stages.names.iter().position(|n| *n == name)
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(Opened(i, Instant::now()));
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(Opened(i, at)) = span.extensions().get::<Opened>()
            && let Some(h) = self.stages.histograms.get(*i)
        {
            h.observe_duration(at.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::Registry;

    #[test]
    fn each_stage_is_one_labelled_histogram() -> std::fmt::Result {
        let stages = Stages::new(&["decode", "encode"]);
        stages.histograms[1].observe(0.002);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StageFamily {
            stages: Some(Arc::new(stages)),
            name: "s_seconds".to_owned(),
            help: "Stage time.".to_owned(),
        }));
        let out = crate::prom::encode(&registry)?;
        assert!(
            out.starts_with("# HELP s_seconds Stage time.\n# TYPE s_seconds histogram\n"),
            "{out}"
        );
        assert!(
            out.contains("s_seconds_count{stage=\"decode\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("s_seconds_bucket{stage=\"encode\",le=\"0.002\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("s_seconds_count{stage=\"encode\"} 1\n"),
            "{out}"
        );
        Ok(())
    }
}

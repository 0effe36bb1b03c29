//! Per-stage latency histograms taken from the `tracing` spans themselves: a
//! layer notes when a span of a named stage opens and observes its wall time
//! when it closes, so the stage timings in `/metrics` and in the traces are
//! the same spans and no request path carries timing code. Only the names
//! given at start are timed (bounded labels); other spans cost one lookup.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tracing::span;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::prom::{self, Histogram, LATENCY_BUCKETS};

/// The timed stages and their histograms.
#[derive(Debug)]
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

    /// Writes the family `name` with one `stage` label per timed span name.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        prom::header(out, name, "histogram", help);
        for (stage, h) in self.names.iter().zip(&self.histograms) {
            h.render(out, name, &format!("stage=\"{stage}\""));
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

//! Process setup shared by the servers: the tracing subscriber (text or
//! JSON lines, the JSON ones carrying `trace_id`/`span_id`), optional export
//! of spans over OTLP/gRPC to a collector, W3C trace-context (`traceparent`,
//! `tracestate`) extraction and injection, per-stage latency histograms timed
//! from the spans ([`stages`]), Prometheus metrics on `prometheus-client`
//! ([`prom`]) and the shutdown signal ([`shutdown_signal`]).
//!
//! Export is off unless an endpoint is configured. Off, no exporter, no
//! OpenTelemetry layer and no propagation work are set up: [`enabled`] is
//! false and the helpers here return at once, so a request costs what its
//! `tracing` spans cost and nothing more.

pub mod fields;
pub mod prom;
pub mod shutdown;
pub mod stages;
pub mod throttle;

pub use shutdown::shutdown_signal;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, Registry};

/// How a process logs and exports its spans.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; `None`: no export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces (no sampled caller) that are recorded, 0 to 1;
    /// a caller's sampling decision is always followed.
    pub sample_ratio: f64,
    /// Deadline of one export call to the collector.
    pub export_timeout: Duration,
    /// Longest a finished span waits in the batch before it is sent.
    pub batch_delay: Duration,
    /// JSON lines (with `trace_id`/`span_id`) instead of text.
    pub log_json: bool,
    /// Span names timed into per-stage histograms ([`stages::global`]).
    pub stages: &'static [&'static str],
}

impl TelemetrySettings {
    /// Logging only: text lines, no export.
    pub fn logs_only(service_name: &str) -> Self {
        TelemetrySettings {
            otlp_endpoint: None,
            service_name: service_name.to_owned(),
            sample_ratio: 1.0,
            export_timeout: Duration::from_secs(3),
            batch_delay: Duration::from_millis(1000),
            log_json: false,
            stages: &[],
        }
    }

    /// Checks the endpoint and ratio.
    ///
    /// # Errors
    /// [`TelemetryError::Endpoint`] or [`TelemetryError::SampleRatio`].
    pub fn validate(&self) -> Result<(), TelemetryError> {
        if let Some(e) = &self.otlp_endpoint
            && !e.starts_with("http://")
        {
            return Err(TelemetryError::Endpoint(e.clone()));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(TelemetryError::SampleRatio(self.sample_ratio));
        }
        Ok(())
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The endpoint is not a plain-HTTP/2 URL the exporter can dial.
    #[error(
        "otlp_endpoint {0:?} must be an http:// URL of an OTLP/gRPC collector, e.g. http://127.0.0.1:4317 (TLS to the collector is not built in: use a local or sidecar collector)"
    )]
    Endpoint(String),
    /// The ratio is outside 0..=1.
    #[error("sample_ratio {0} must be between 0 (no new trace recorded) and 1 (all)")]
    SampleRatio(f64),
    /// The exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Another subscriber was installed first.
    #[error("a tracing subscriber is already installed in this process: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (and trace context is propagated).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] sends what is queued.
#[derive(Debug)]
#[must_use = "dropping it without shutdown loses the spans still queued"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the queued spans (at most `deadline`) and stops the exporter.
    /// Blocks: call it from `spawn_blocking` or outside the runtime's workers,
    /// while the runtime still runs (the gRPC channel lives on it).
    pub fn shutdown(self, deadline: Duration) {
        if let Some(p) = self.provider {
            ENABLED.store(false, Ordering::Relaxed);
            if let Err(e) = p.shutdown_with_timeout(deadline) {
                eprintln!("telemetry: spans not all exported at shutdown: {e}");
            }
        }
    }
}

/// Installs the global subscriber: `MLGW_LOG` filter (default `info`), text or
/// JSON lines on stderr, and with an endpoint the OpenTelemetry layer and a
/// batch exporter. Must run inside a Tokio runtime when exporting (the gRPC
/// channel spawns its connection task there).
///
/// # Errors
/// An invalid setting, an exporter that cannot be built, or a subscriber
/// already installed.
pub fn init(settings: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    use std::io::IsTerminal as _;
    settings.validate()?;
    let filter = log_filter(std::env::var("MLGW_LOG").ok().as_deref()).boxed();
    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => Some(provider(settings, endpoint)?),
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("mlgw"))
            .with_tracked_inactivity(false)
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(!settings.log_json && std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = if settings.log_json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .fmt_fields(fields::NoSpanFields)
            .map_event_format(TraceIds)
            .boxed()
    } else {
        fmt.fmt_fields(fields::PlainFields).boxed()
    };
    let stages = (!settings.stages.is_empty())
        .then(|| stages::install(std::sync::Arc::new(stages::Stages::new(settings.stages))));
    tracing_subscriber::registry()
        .with(filter)
        .with(stages)
        .with(otel)
        .with(fmt)
        .try_init()?;
    ENABLED.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { provider })
}

/// The log filter for `spec` (`MLGW_LOG`; unset means `info`). A plain list
/// of `target=level` directives, the usual case, becomes a [`Targets`]
/// filter, which decides per callsite and keeps no state per span; span and
/// field directives (`target[span{field=value}]=level`) need an
/// [`EnvFilter`], which takes a shared lock on every span's enter and exit.
/// A spec neither accepts is reported on stderr and `info` is used.
fn log_filter(spec: Option<&str>) -> LogFilter {
    let spec = spec
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    if !spec.contains(['[', '{'])
        && let Ok(targets) = spec.parse::<Targets>()
    {
        return LogFilter::Targets(targets);
    }
    match EnvFilter::try_new(spec) {
        Ok(filter) => LogFilter::Env(Box::new(filter)),
        Err(e) => {
            eprintln!("MLGW_LOG={spec:?} is not a log filter ({e}); logging at info");
            LogFilter::Targets(
                Targets::new().with_default(tracing::level_filters::LevelFilter::INFO),
            )
        }
    }
}

enum LogFilter {
    Targets(Targets),
    Env(Box<EnvFilter>),
}

impl LogFilter {
    fn boxed(self) -> Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync> {
        match self {
            LogFilter::Targets(t) => t.boxed(),
            LogFilter::Env(e) => e.boxed(),
        }
    }
}

fn provider(
    settings: &TelemetrySettings,
    endpoint: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(settings.export_timeout)
        .build()?;
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(settings.batch_delay)
                .build(),
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// Wraps a JSON event format and appends the current span's `trace_id` and
/// `span_id` (when export is on and the event is inside a span).
struct TraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for TraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let ids = if enabled() {
            ctx.lookup_current().and_then(|span| {
                tracing::dispatcher::get_default(|d| {
                    tracing_opentelemetry::get_otel_context(&span.id(), d)
                })
            })
        } else {
            None
        };
        let sc = ids.as_ref().map(|cx| cx.span().span_context().clone());
        match (sc, line.trim_end().strip_suffix('}')) {
            (Some(sc), Some(head)) if sc.is_valid() => writeln!(
                writer,
                "{head},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
                sc.trace_id(),
                sc.span_id()
            ),
            _ => writer.write_str(&line),
        }
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Makes `span` a child of the caller's trace when `headers` carry a valid
/// `traceparent` (+ `tracestate`); gRPC metadata are these headers too. No-op
/// when export is off.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !enabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    if cx.span().span_context().is_valid() {
        // Fails only when the span is already started or disabled.
        let _ = span.set_parent(cx);
    }
}

/// Writes `span`'s context as `traceparent`/`tracestate` into `headers` (the
/// metadata of an outgoing gRPC call), so the callee continues the trace.
/// No-op when export is off.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(headers));
    }
}

/// Same as [`inject`] for a tonic request's metadata.
pub fn inject_metadata(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    if !enabled() {
        return;
    }
    let mut headers = http::HeaderMap::new();
    inject(span, &mut headers);
    for (k, v) in &headers {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(k.as_str().as_bytes()),
            tonic::metadata::MetadataValue::try_from(v.as_bytes()),
        ) {
            metadata.insert(k, v);
        }
    }
}

/// Links `span` to another span's trace (a batch run for several requests:
/// one parent, the others linked). No-op when export is off.
pub fn link(span: &tracing::Span, other: &tracing::Span) {
    if !enabled() {
        return;
    }
    let cx = other.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
}

/// The current trace ID as 32 hex digits, when export is on and a span is
/// sampled.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let mut s = TelemetrySettings::logs_only("x");
        assert!(s.validate().is_ok());
        s.otlp_endpoint = Some("127.0.0.1:4317".into());
        assert!(matches!(s.validate(), Err(TelemetryError::Endpoint(_))));
        s.otlp_endpoint = Some("http://127.0.0.1:4317".into());
        s.sample_ratio = 1.5;
        assert!(matches!(s.validate(), Err(TelemetryError::SampleRatio(_))));
    }

    #[test]
    fn plain_filters_need_no_span_state() {
        let is_targets = |spec: Option<&str>| matches!(log_filter(spec), LogFilter::Targets(_));
        assert!(is_targets(None));
        assert!(is_targets(Some("warn")));
        assert!(is_targets(Some("info,gateway::auth=debug,h2=off")));
        assert!(!is_targets(Some("info,gateway[request{caller=dev}]=debug")));
        // Not a filter: reported, and `info` is used.
        assert!(is_targets(Some("gateway=loud")));
    }

    #[test]
    fn off_means_no_propagation() {
        let mut headers = http::HeaderMap::new();
        inject(&tracing::Span::none(), &mut headers);
        assert!(headers.is_empty());
    }
}

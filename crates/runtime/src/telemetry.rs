//! Tracing and OpenTelemetry: logs to stderr, spans exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C trace context carried in NATS
//! headers and gRPC metadata so one message is one trace across services.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, global};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter, TracerProviderBuilder};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built from the `OTEL_*` variables.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("tracing subscriber already installed")]
    AlreadyInstalled,
}

/// Keeps the tracer provider alive; flushes spans on drop.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Install logging and tracing for this process.
///
/// `json` selects JSON log lines; `filter` is a log filter such as
/// `info,tern_delivery=debug` (`TERN_LOG`; empty: `RUST_LOG`, else `info`).
/// OTLP export is on only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
/// traces-specific variable) is set.
pub fn init(
    service_name: &str,
    json: bool,
    filter: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    install(service_name, json, filter, |b| b)
}

/// Like [`init`], also sending every span to `exporter` as it ends (tests
/// use an in-memory exporter to read spans back).
pub fn init_with_exporter<E: SpanExporter + 'static>(
    service_name: &str,
    json: bool,
    exporter: E,
) -> Result<TelemetryGuard, TelemetryError> {
    install(service_name, json, "", move |b| {
        b.with_simple_exporter(exporter)
    })
}

/// Like [`init`], also exporting every span over OTLP/gRPC to `endpoint`
/// (batched, as in production). Tests point this at their own receiver.
pub fn init_with_otlp(
    service_name: &str,
    json: bool,
    endpoint: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    install(service_name, json, "", move |b| {
        b.with_batch_exporter(exporter)
    })
}

impl TelemetryGuard {
    /// Export every finished span now (blocks until the exporters answer).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

fn install(
    service_name: &str,
    json: bool,
    filter: &str,
    extra: impl FnOnce(TracerProviderBuilder) -> TracerProviderBuilder,
) -> Result<TelemetryGuard, TelemetryError> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_string()),
        )
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let otlp_on = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()));
    if otlp_on {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = extra(builder).build();
    global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("tern");

    let filter = (!filter.is_empty())
        .then(|| EnvFilter::try_new(filter).ok())
        .flatten()
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,async_nats=warn"));
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .event_format(crate::logfmt::Json)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .event_format(crate::logfmt::Text(tracing_subscriber::fmt::format()))
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

/// The W3C trace id of the current span, as 32 hex digits (empty if none).
pub fn current_trace_id() -> String {
    use opentelemetry::trace::TraceContextExt;
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

struct NatsInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct NatsExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Write the current span's trace context into NATS message headers.
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut NatsInjector(headers)));
}

/// Header a retried job carries: the W3C `traceparent` of the attempt that
/// deferred it, so the retry's span links to the earlier attempt.
pub const PREVIOUS_ATTEMPT_HEADER: &str = "Tern-Previous-Attempt";

/// Make `span` a child of the trace context in NATS headers, if any, and
/// link it to the earlier attempt when the message is a retry.
pub fn link_nats_parent(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    use opentelemetry::trace::TraceContextExt;
    let Some(h) = headers else { return };
    let cx = global::get_text_map_propagator(|p| p.extract(&NatsExtractor(h)));
    set_parent(span, cx);
    if let Some(prev) = h.get(PREVIOUS_ATTEMPT_HEADER) {
        let mut one = async_nats::HeaderMap::new();
        one.insert("traceparent", prev.as_str());
        let cx = global::get_text_map_propagator(|p| p.extract(&NatsExtractor(&one)));
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            span.add_link(sc);
        }
    }
}

struct GrpcInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for GrpcInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct GrpcExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for GrpcExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// A tonic client interceptor that adds the current trace context to every request.
pub fn grpc_inject(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut GrpcInjector(req.metadata_mut()))
    });
    Ok(req)
}

/// Make `span` a child of the trace context in a gRPC request's metadata.
pub fn link_grpc_parent(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let cx = global::get_text_map_propagator(|p| p.extract(&GrpcExtractor(metadata)));
    set_parent(span, cx);
}

fn set_parent(span: &tracing::Span, cx: Context) {
    use opentelemetry::trace::TraceContextExt;
    if cx.span().span_context().is_valid() {
        // Fails only when the span was already started as a root; nothing to do then.
        let _ = span.set_parent(cx);
    }
}

/// Add a link from `span` to the current span (a new trace that remembers
/// where it came from: a message's transaction and its SMTP session, a retry
/// and the earlier attempt).
pub fn link_to_current(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt;
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
}

//! Logging and span export for both services (feature `telemetry`):
//! readable text by default, JSON lines with `LOG_FORMAT=json`. Spans of
//! HTTP requests, messages and transitions carry `trace_id`, so every line
//! says which order's trace it belongs to.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans are also exported
//! over OTLP/HTTP (protobuf, `<endpoint>/v1/traces`) by a batch span
//! processor (the standard `OTEL_BSP_*` settings apply), under the
//! service's name. An `https://` endpoint is reached over TLS (rustls,
//! ring), the collector verified against the system's roots or the CA
//! file `SSL_CERT_FILE` names. A span link is registered with [`crate::trace`], so the
//! exported trace is the one in the logs and on the wire, and every span's
//! parent is the one that caused it, in this service or across RabbitMQ.
//! Without the variable nothing of OpenTelemetry is installed.

use crate::trace::TraceContext;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The span exporter, when one is installed.
#[must_use = "shut it down at exit, or queued spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter (waits up to
    /// the SDK's 5 s). Call it once the service has stopped.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "spans not exported at shutdown");
            }
        }
    }
}

/// Installs the global subscriber, writing to `sink` (stderr in the binary),
/// and, when `exported_as` names the service, the span exporter for the
/// spans of the crate `target` (the service's, `env!("CARGO_CRATE_NAME")`)
/// and of this one.
/// Calling it twice is harmless: the second call changes nothing.
pub fn init<W>(
    filter: &str,
    format: LogFormat,
    exported_as: Option<&str>,
    target: &'static str,
    sink: W,
) -> Result<Telemetry, opentelemetry_otlp::ExporterBuildError>
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let Some(service_name) = exported_as else {
        // `try_init` fails only when a subscriber is already installed.
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(log_layer(format, sink))
            .try_init();
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    // This service's spans and the bus's, whatever RUST_LOG says of the
    // log; never the exporter's own HTTP client.
    let exported = Targets::new()
        .with_target(target, tracing::Level::INFO)
        .with_target(env!("CARGO_CRATE_NAME"), tracing::Level::INFO);
    let installed = tracing_subscriber::registry()
        .with(log_layer(format, sink).with_filter(filter))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(target))
                .with_filter(exported),
        )
        .try_init()
        .is_ok();
    if installed {
        crate::trace::link_spans(link);
    }
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Each line has the event's fields at the top level and the spans it
/// happened in (with `trace_id`, `order_id`, `fulfillment_id`, ...) in
/// `span` and `spans`.
fn log_layer<S, W>(format: LogFormat, sink: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(sink);
    match format {
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
        LogFormat::Pretty => layer.boxed(),
    }
}

/// The [`crate::trace::SpanLink`] for the OpenTelemetry layer:
/// `span`'s exported parent is `parent` (a root without one), and its own
/// position is handed on.
fn link(span: &tracing::Span, parent: Option<&TraceContext>) -> Option<TraceContext> {
    let parent_cx = match parent {
        Some(parent) => {
            opentelemetry::Context::new().with_remote_span_context(parent.span_context().clone())
        }
        None => opentelemetry::Context::new(),
    };
    span.set_parent(parent_cx).ok()?;
    TraceContext::from_span_context(span.context().span().span_context().clone())
}

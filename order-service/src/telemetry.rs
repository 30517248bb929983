//! Logging: readable text by default, JSON lines with `LOG_FORMAT=json`.
//! Spans of HTTP requests, messages and transitions carry `trace_id`, so
//! every line says which order's trace it belongs to.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber, writing to `sink` (stderr in the binary).
/// Calling it twice is harmless: the second call changes nothing.
pub fn init<W>(filter: &str, format: LogFormat, sink: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink);
    let _ = match format {
        // Each line has the event's fields at the top level and the spans
        // it happened in (with `trace_id`, `order_id`, ...) in `span` and
        // `spans`.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

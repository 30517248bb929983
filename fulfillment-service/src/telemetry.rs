//! Logs through `tracing`: JSON for machines (`LOG_FORMAT=json`), text for
//! people. Spans of HTTP requests, messages and transitions carry
//! `trace_id`, so every line says which order's trace it belongs to.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber, filtered by `RUST_LOG` (default `info`).
/// Writes to stderr, so a test harness that ignores it stays quiet.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already installed.
    let _ = match format {
        // Each line has the event's fields at the top level and the spans
        // it happened in (with `trace_id`, `fulfillment_id`, ...) in
        // `span` and `spans`.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

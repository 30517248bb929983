//! W3C trace context (`traceparent`), just enough to follow one order
//! across both services without an OpenTelemetry SDK.
//!
//! A trace id is minted when an order is created (or taken from the
//! caller's `traceparent` HTTP header), kept with the order and the
//! fulfillment, and carried by every message they cause: in the envelope's
//! `traceparent` field (so it survives the outbox) and in the AMQP
//! `traceparent` header. Services put `trace_id` on their spans, so every
//! log line of one order, in both services, names the same trace.
//!
//! Format: `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.

use rand::Rng;

/// One position in a trace: the trace id and the span that is the parent
/// of whatever is done next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: String,
    span_id: String,
    flags: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    loop {
        let s: String = (0..bytes)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect();
        // All zeros is invalid in W3C trace context.
        if s.bytes().any(|b| b != b'0') {
            return s;
        }
    }
}

impl TraceContext {
    /// A new trace (sampled).
    pub fn new_root() -> Self {
        Self {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            flags: "01".into(),
        }
    }

    /// Parses a `traceparent` value; `None` when it is not valid version-00
    /// W3C trace context (then the caller starts a new trace).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || version != "00"
            || !is_hex(trace_id, 32)
            || !is_hex(span_id, 16)
            || !is_hex(flags, 2)
            || trace_id.bytes().all(|b| b == b'0')
            || span_id.bytes().all(|b| b == b'0')
        {
            return None;
        }
        Some(Self {
            trace_id: trace_id.into(),
            span_id: span_id.into(),
            flags: flags.into(),
        })
    }

    /// Continues `value` when it is valid, else starts a new trace.
    pub fn continue_or_new(value: Option<&str>) -> Self {
        value
            .and_then(Self::parse)
            .map(|t| t.child())
            .unwrap_or_else(Self::new_root)
    }

    /// The same trace, a new span id (for a message or request sent from
    /// here).
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            span_id: random_hex(8),
            flags: self.flags.clone(),
        }
    }

    /// 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    pub fn span_id(&self) -> &str {
        &self.span_id
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `work` with `context` as the current trace (an HTTP request's), so
/// that whatever it sends can carry it (see [`current`]).
pub async fn scope<F: std::future::Future>(context: TraceContext, work: F) -> F::Output {
    CURRENT.scope(context, work).await
}

/// The current trace, inside [`scope`].
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// A `traceparent` for a message sent now: a child of the current trace,
/// or `None` outside any.
pub fn current_child() -> Option<String> {
    current().map(|t| t.child().traceparent())
}

/// The trace id of a `traceparent` value, or `""` when there is none (for
/// span fields).
pub fn trace_id_of(traceparent: Option<&str>) -> String {
    traceparent
        .and_then(TraceContext::parse)
        .map(|t| t.trace_id)
        .unwrap_or_default()
}

/// A child `traceparent` of `traceparent` for a message sent now, or
/// `None` when there is no trace to continue.
pub fn child_of(traceparent: Option<&str>) -> Option<String> {
    traceparent
        .and_then(TraceContext::parse)
        .map(|t| t.child().traceparent())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_children_keep_the_trace() {
        let root = TraceContext::new_root();
        let parsed = TraceContext::parse(&root.traceparent()).expect("valid");
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id(), root.span_id());
        assert_eq!(root.trace_id().len(), 32);
    }

    #[test]
    fn rejects_what_is_not_trace_context() {
        for bad in [
            "",
            "00-abc-def-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of(Some(ok)),
            "4bf92f3577b34da6a3ce929d0e0e4736".to_string()
        );
        let continued = TraceContext::continue_or_new(Some(ok));
        assert_eq!(continued.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(
            TraceContext::continue_or_new(Some("junk")).trace_id(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[tokio::test]
    async fn the_current_trace_is_seen_inside_its_scope_only() {
        assert!(current().is_none());
        let root = TraceContext::new_root();
        let inside = scope(root.clone(), async { current_child() }).await;
        assert_eq!(trace_id_of(inside.as_deref()), root.trace_id());
        assert!(current_child().is_none());
    }
}

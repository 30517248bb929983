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
//!
//! A service that exports its spans (OpenTelemetry) registers a
//! [`SpanLink`] at start-up with [`link_spans`]. Spans that begin from a
//! remote or stored position ([`start`], [`follow`]) are then parented on
//! that position in the exporter, and the position handed on names the
//! span itself, so every `traceparent` sent points at a span that is
//! exported. Without a link this module works alone, as described above.

use std::sync::OnceLock;

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

    /// 2 lowercase hex digits (`01`: sampled).
    pub fn flags(&self) -> &str {
        &self.flags
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// What a span exporter registers with [`link_spans`]: given a span just
/// created and the remote position it continues (`None`: it starts a new
/// trace), makes that position the span's parent in the exporter and
/// answers the span's own position (the same trace, the span's own id).
/// `None` when the exporter does not see the span (e.g. filtered out).
pub type SpanLink = fn(&tracing::Span, Option<&TraceContext>) -> Option<TraceContext>;

static LINK: OnceLock<SpanLink> = OnceLock::new();

/// Registers the exporter's [`SpanLink`], once per process, at start-up.
/// Answers `false`, changing nothing, when one is registered already.
pub fn link_spans(link: SpanLink) -> bool {
    LINK.set(link).is_ok()
}

fn link() -> Option<SpanLink> {
    LINK.get().copied()
}

/// Begins `span` (an HTTP request's, with an empty `trace_id` field) in
/// the caller's trace `traceparent` when it is valid, else in a new trace.
/// Records `trace_id` and answers the position to make current for the
/// request: linked, the span's own; otherwise a new child of the caller's.
pub fn start(span: &tracing::Span, traceparent: Option<&str>) -> TraceContext {
    start_with(link(), span, traceparent)
}

fn start_with(
    link: Option<SpanLink>,
    span: &tracing::Span,
    traceparent: Option<&str>,
) -> TraceContext {
    let parent = traceparent.and_then(TraceContext::parse);
    let context = link
        .and_then(|link| link(span, parent.as_ref()))
        .unwrap_or_else(|| parent.map_or_else(TraceContext::new_root, |p| p.child()));
    span.record("trace_id", context.trace_id());
    context
}

/// Continues in `span` (with an empty `trace_id` field) the trace
/// `traceparent`, a message's or the one stored with an entity, when there
/// is one; never starts a new trace. Records `trace_id` (empty without a
/// trace) and answers the `traceparent` for what `span` does and sends:
/// linked, the span's own position; otherwise `traceparent` as it is.
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) -> Option<String> {
    follow_with(link(), span, traceparent)
}

fn follow_with(
    link: Option<SpanLink>,
    span: &tracing::Span,
    traceparent: Option<&str>,
) -> Option<String> {
    let linked = match (link, traceparent.and_then(TraceContext::parse)) {
        (Some(link), Some(parent)) => link(span, Some(&parent)),
        _ => None,
    };
    let traceparent = match linked {
        Some(own) => Some(own.traceparent()),
        None => traceparent.map(str::to_owned),
    };
    span.record("trace_id", trace_id_of(traceparent.as_deref()).as_str());
    traceparent
}

impl TraceContext {
    /// The position a message sent now from `self` carries. Without a
    /// link, a new span id stands for the send; linked, `self` already
    /// names the exported span that sends it, and is kept.
    fn for_send(&self, linked: bool) -> Self {
        if linked {
            self.clone()
        } else {
            self.child()
        }
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

/// A `traceparent` for a message sent now: a child of the current trace
/// (linked: the current position itself), or `None` outside any.
pub fn current_child() -> Option<String> {
    current().map(|t| t.for_send(link().is_some()).traceparent())
}

/// The trace id of a `traceparent` value, or `""` when there is none (for
/// span fields).
pub fn trace_id_of(traceparent: Option<&str>) -> String {
    traceparent
        .and_then(TraceContext::parse)
        .map(|t| t.trace_id)
        .unwrap_or_default()
}

/// A child `traceparent` of `traceparent` for a message sent now (linked:
/// `traceparent` itself, the span that sends), or `None` when there is no
/// trace to continue.
pub fn child_of(traceparent: Option<&str>) -> Option<String> {
    traceparent
        .and_then(TraceContext::parse)
        .map(|t| t.for_send(link().is_some()).traceparent())
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

    const THEIRS: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Stands in for an exporter: the span's own id is always `..aa`.
    fn fake_link(_: &tracing::Span, parent: Option<&TraceContext>) -> Option<TraceContext> {
        let own = parent.cloned().unwrap_or_else(TraceContext::new_root);
        Some(TraceContext {
            span_id: "00000000000000aa".into(),
            ..own
        })
    }

    fn unseen(_: &tracing::Span, _: Option<&TraceContext>) -> Option<TraceContext> {
        None
    }

    #[test]
    fn unlinked_spans_continue_the_caller_or_start_a_trace() {
        let span = tracing::Span::none();
        let continued = start_with(None, &span, Some(THEIRS));
        assert_eq!(continued.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(continued.span_id(), "00f067aa0ba902b7");
        assert_ne!(
            start_with(None, &span, None).trace_id(),
            continued.trace_id()
        );
        // A span the exporter does not see behaves as unlinked.
        let hidden = start_with(Some(unseen), &span, Some(THEIRS));
        assert_eq!(hidden.trace_id(), continued.trace_id());
        assert_ne!(hidden.span_id(), "00f067aa0ba902b7");
        // A message or a stored trace is kept as it is.
        assert_eq!(
            follow_with(None, &span, Some(THEIRS)).as_deref(),
            Some(THEIRS)
        );
        assert_eq!(follow_with(None, &span, None), None);
        assert_eq!(
            follow_with(Some(unseen), &span, Some("junk")).as_deref(),
            Some("junk")
        );
    }

    #[test]
    fn linked_spans_hand_on_their_own_position() {
        let span = tracing::Span::none();
        let own = start_with(Some(fake_link), &span, Some(THEIRS));
        assert_eq!(own.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(own.span_id(), "00000000000000aa");
        let root = start_with(Some(fake_link), &span, None);
        assert_eq!(root.span_id(), "00000000000000aa");
        assert_ne!(root.trace_id(), own.trace_id());
        assert_eq!(
            follow_with(Some(fake_link), &span, Some(THEIRS)).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00000000000000aa-01")
        );
        // Following never starts a trace.
        assert_eq!(follow_with(Some(fake_link), &span, None), None);
        // Sent from a linked span, a message names that span.
        assert_eq!(own.for_send(true), own);
        let sent = own.for_send(false);
        assert_eq!(sent.trace_id(), own.trace_id());
        assert_ne!(sent.span_id(), own.span_id());
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

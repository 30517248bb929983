//! W3C trace context (`traceparent`), carried so one order's spans in both
//! services share one trace.
//!
//! A trace is begun when an order is created (or the caller's
//! `traceparent` HTTP header is continued), kept with the order and the
//! fulfillment, and carried by every message they cause: in the envelope's
//! `traceparent` field (so it survives the outbox) and in the AMQP
//! `traceparent` header. Services put `trace_id` on their spans, so every
//! log line of one order, in both services, names the same trace.
//!
//! The values are read and written by OpenTelemetry's
//! [`TraceContextPropagator`]: from and to one stored string, and from and
//! to AMQP headers through [`HeaderExtractor`] and [`HeaderInjector`].
//!
//! A service that exports its spans (OpenTelemetry) registers a
//! [`SpanLink`] at start-up with [`link_spans`]. Spans that begin from a
//! remote or stored position ([`start`], [`follow`], [`follow_cause`]) are
//! then parented on that position in the exporter, and the position handed
//! on names the span itself, so every `traceparent` sent points at a span
//! that is exported. Without a link this module works alone: it keeps the
//! trace id and mints span ids for what is sent.
//!
//! A consumer's handler runs with its delivery's position as the current
//! trace ([`current`]), as an HTTP handler runs with its request's: work it
//! causes elsewhere (an actor's transition) is parented under the message
//! span ([`follow_cause`]).

use std::sync::OnceLock;

use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

/// The header (AMQP and HTTP) and envelope field that carry the trace.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// One position in a trace: the trace id and the span that is the parent
/// of whatever is done next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext(SpanContext);

impl TraceContext {
    /// A new trace (sampled).
    pub fn new_root() -> Self {
        let ids = RandomIdGenerator::default();
        // A zero id is invalid; the generator makes one once in 2^64 draws.
        let context = std::iter::repeat_with(|| {
            SpanContext::new(
                ids.new_trace_id(),
                ids.new_span_id(),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )
        })
        .find(SpanContext::is_valid)
        .expect("an endless iterator finds a valid context");
        Self(context)
    }

    /// Reads a `traceparent` value; `None` when the propagator finds no
    /// valid trace context in it (then the caller starts a new trace).
    pub fn parse(value: &str) -> Option<Self> {
        let cx = TraceContextPropagator::new().extract(&Traceparent(value));
        Self::from_span_context(cx.span().span_context().clone())
    }

    /// The position `context` names, when it is valid.
    pub fn from_span_context(context: SpanContext) -> Option<Self> {
        context.is_valid().then_some(Self(context))
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
        let ids = RandomIdGenerator::default();
        let span_id = std::iter::repeat_with(|| ids.new_span_id())
            .find(|id| *id != opentelemetry::trace::SpanId::INVALID)
            .expect("an endless iterator finds a valid span id");
        Self(SpanContext::new(
            self.0.trace_id(),
            span_id,
            self.0.trace_flags(),
            true,
            self.0.trace_state().clone(),
        ))
    }

    /// 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        self.0.trace_id().to_string()
    }

    /// The position as OpenTelemetry holds it (a remote span context).
    pub fn span_context(&self) -> &SpanContext {
        &self.0
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        let mut written = Written(None);
        TraceContextPropagator::new().inject_context(
            &Context::new().with_remote_span_context(self.0.clone()),
            &mut written,
        );
        written
            .0
            .expect("a valid span context is always written as a traceparent")
    }

    /// In the same trace as `other`?
    fn same_trace(&self, other: &Self) -> bool {
        self.0.trace_id() == other.0.trace_id()
    }
}

/// One `traceparent` value, read by the propagator.
struct Traceparent<'a>(&'a str);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT_HEADER).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT_HEADER]
    }
}

/// The `traceparent` value the propagator writes (`tracestate` is not
/// kept: nothing in this system sets one).
struct Written(Option<String>);

impl Injector for Written {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT_HEADER {
            self.0 = Some(value);
        }
    }
}

/// AMQP message headers, written by a propagator. Empty values (a
/// `tracestate` without entries) are left out.
pub struct HeaderInjector<'a>(pub &'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0
                .insert(key.to_owned().into(), AMQPValue::LongString(value.into()));
        }
    }
}

/// AMQP message headers, read by a propagator: string values only.
pub struct HeaderExtractor<'a>(pub &'a FieldTable);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
            AMQPValue::ShortString(value) => Some(value.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|key| key.as_str()).collect()
    }
}

/// Writes the trace context `traceparent` (when it is valid) into the
/// headers of a message about to be published.
pub fn inject(traceparent: Option<&str>, headers: &mut FieldTable) {
    if let Some(context) = traceparent.and_then(TraceContext::parse) {
        TraceContextPropagator::new().inject_context(
            &Context::new().with_remote_span_context(context.0),
            &mut HeaderInjector(headers),
        );
    }
}

/// The `traceparent` a delivery's headers carry, when they carry a valid
/// one.
pub fn extract(headers: &FieldTable) -> Option<String> {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    TraceContext::from_span_context(cx.span().span_context().clone()).map(|t| t.traceparent())
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
    span.record("trace_id", context.trace_id().as_str());
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

/// [`follow`] for work done for an entity that keeps its trace (`stored`)
/// and was caused by `cause` (a delivery's position, or an HTTP
/// request's; `None` for a timer): `span` is parented under the cause
/// when the cause is in the entity's trace, so a transition a message
/// causes hangs under that message's span. A cause in another trace (a
/// person's request that began its own) does not move the entity out of
/// its trace: `span` is then parented on the stored position, as it is
/// without a cause.
pub fn follow_cause(
    span: &tracing::Span,
    stored: Option<&str>,
    cause: Option<&str>,
) -> Option<String> {
    follow(span, parent_of(stored, cause))
}

/// The parent [`follow_cause`] chooses.
fn parent_of<'a>(stored: Option<&'a str>, cause: Option<&'a str>) -> Option<&'a str> {
    match (
        stored.and_then(TraceContext::parse),
        cause.and_then(TraceContext::parse),
    ) {
        (Some(entity), Some(caused)) if entity.same_trace(&caused) => cause,
        (Some(_), _) | (None, None) => stored,
        (None, Some(_)) => cause,
    }
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

/// Runs `work` with `context` as the current trace (an HTTP request's, a
/// delivery's), so that whatever it sends or causes can carry it (see
/// [`current`]).
pub async fn scope<F: std::future::Future>(context: TraceContext, work: F) -> F::Output {
    CURRENT.scope(context, work).await
}

/// Runs `work` at once with `context`, when there is one, as the current
/// trace.
pub fn sync_scope<R>(context: Option<TraceContext>, work: impl FnOnce() -> R) -> R {
    match context {
        Some(context) => CURRENT.sync_scope(context, work),
        None => work(),
    }
}

/// The current trace, inside [`scope`] or [`sync_scope`].
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
        .map(|t| t.trace_id())
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

    const THEIRS: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const THEIR_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn round_trips_and_children_keep_the_trace() {
        let root = TraceContext::new_root();
        let parsed = TraceContext::parse(&root.traceparent()).expect("valid");
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(
            child.span_context().span_id(),
            root.span_context().span_id()
        );
        assert_eq!(root.trace_id().len(), 32);
        assert_eq!(
            TraceContext::parse(THEIRS).expect("valid").traceparent(),
            THEIRS
        );
    }

    #[test]
    fn rejects_what_is_not_trace_context() {
        for bad in [
            "",
            "junk",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(trace_id_of(Some(THEIRS)), THEIR_TRACE);
        let continued = TraceContext::continue_or_new(Some(THEIRS));
        assert_eq!(continued.trace_id(), THEIR_TRACE);
        assert_ne!(
            TraceContext::continue_or_new(Some("junk")).trace_id(),
            THEIR_TRACE
        );
    }

    #[test]
    fn amqp_headers_carry_traceparent_alone() {
        let mut headers = FieldTable::default();
        inject(Some(THEIRS), &mut headers);
        let names: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, [TRACEPARENT_HEADER]);
        assert_eq!(extract(&headers).as_deref(), Some(THEIRS));

        let mut none = FieldTable::default();
        inject(Some("junk"), &mut none);
        inject(None, &mut none);
        assert!(none.inner().is_empty());
        assert_eq!(extract(&none), None);

        let mut short = FieldTable::default();
        short.insert(
            TRACEPARENT_HEADER.into(),
            AMQPValue::ShortString(THEIRS.into()),
        );
        assert_eq!(extract(&short).as_deref(), Some(THEIRS));
    }

    /// Stands in for an exporter: the span's own id is always `..aa`.
    fn fake_link(_: &tracing::Span, parent: Option<&TraceContext>) -> Option<TraceContext> {
        let own = parent.cloned().unwrap_or_else(TraceContext::new_root);
        TraceContext::parse(&format!("00-{}-00000000000000aa-01", own.trace_id()))
    }

    fn unseen(_: &tracing::Span, _: Option<&TraceContext>) -> Option<TraceContext> {
        None
    }

    #[test]
    fn unlinked_spans_continue_the_caller_or_start_a_trace() {
        let span = tracing::Span::none();
        let their_span = TraceContext::parse(THEIRS)
            .expect("valid")
            .span_context()
            .span_id();
        let continued = start_with(None, &span, Some(THEIRS));
        assert_eq!(continued.trace_id(), THEIR_TRACE);
        assert_ne!(continued.span_context().span_id(), their_span);
        assert_ne!(
            start_with(None, &span, None).trace_id(),
            continued.trace_id()
        );
        // A span the exporter does not see behaves as unlinked.
        let hidden = start_with(Some(unseen), &span, Some(THEIRS));
        assert_eq!(hidden.trace_id(), continued.trace_id());
        assert_ne!(hidden.span_context().span_id(), their_span);
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
        assert_eq!(
            own.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00000000000000aa-01"
        );
        let root = start_with(Some(fake_link), &span, None);
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
        assert_ne!(sent, own);
    }

    #[test]
    fn a_cause_in_the_entitys_trace_is_the_parent() {
        let stored = THEIRS;
        let message = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
        let elsewhere = TraceContext::new_root().traceparent();
        assert_eq!(parent_of(Some(stored), Some(message)), Some(message));
        // A person's request in a trace of its own leaves the entity's.
        assert_eq!(parent_of(Some(stored), Some(&elsewhere)), Some(stored));
        assert_eq!(parent_of(Some(stored), None), Some(stored));
        assert_eq!(parent_of(Some(stored), Some("junk")), Some(stored));
        // An entity without a trace takes the cause's.
        assert_eq!(parent_of(None, Some(message)), Some(message));
        assert_eq!(parent_of(None, None), None);
    }

    #[tokio::test]
    async fn the_current_trace_is_seen_inside_its_scope_only() {
        assert!(current().is_none());
        let root = TraceContext::new_root();
        let inside = scope(root.clone(), async { current_child() }).await;
        assert_eq!(trace_id_of(inside.as_deref()), root.trace_id());
        assert!(current_child().is_none());
        let now = sync_scope(Some(root.clone()), current);
        assert_eq!(now, Some(root));
        assert_eq!(sync_scope(None, current), None);
    }
}

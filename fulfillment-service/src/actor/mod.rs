//! One actix actor per running fulfillment, and the registry that finds it.
//!
//! The actor is a thin shell over [`crate::workflow`]: it feeds an input
//! in, has the new state stored with its events (one transaction, shared
//! with other actors' writes by the [`Writer`]'s group commit), and only
//! then updates its memory, arms or cancels its step timer and answers.
//! While its write is in flight the actor takes no other input, so inputs
//! apply one at a time, in order. The step timer is an actor timer
//! (`run_later`, or at once when the step delay is 0) whose handle is
//! cancelled on pause and cancel, so a step in progress is interrupted
//! and, on resume, run again from its start. A fulfillment that reaches a
//! final status stops its actor; its state stays readable from the store.

mod registry;

use std::sync::Arc;
use std::time::Duration;

use actix::fut::{self, ActorFutureExt, LocalBoxActorFuture, WrapFuture};
use actix::{
    Actor, ActorContext, AsyncContext, AtomicResponse, Context, Handler, Message, SpawnHandle,
};
use chrono::Utc;
use message_bus::outbox::OutboxSignal;
use message_bus::trace;
use message_bus::Route;
use service_kit::actors::Leave;
use shared_messages::Envelope;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::metrics::METRICS;

use crate::store::{Store, StoreError, Write, Writer};
use crate::workflow::{self, DecisionExt as _, Fulfillment, Input, Reply, Timing};

pub use registry::{Recovered, Registry};

/// After a failed write, wait at least this long before the step is tried
/// again, so a broken disk does not turn a zero step delay into a hot loop.
const STORE_RETRY: Duration = Duration::from_millis(500);

/// What actors share.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    /// Where running actors' transitions are stored (group commit).
    pub writer: Writer,
    pub outbox: OutboxSignal,
    pub timing: Timing,
}

impl Deps {
    /// Stores a decision's state and events at once, outside the group
    /// commit (a signal to a finished fulfillment); nudges the relay.
    async fn persist(&self, decision: &workflow::Decision) -> Result<(), StoreError> {
        if let Some(write) = Write::of(decision) {
            let started = std::time::Instant::now();
            let result = self.store.save_all(std::slice::from_ref(&write)).await;
            METRICS.store_write_took("save", started);
            result?;
            if !decision.messages.is_empty() {
                self.outbox.notify();
            }
        }
        Ok(())
    }
}

/// A signal for one fulfillment.
#[derive(Message)]
#[rtype(result = "Result<Reply, StoreError>")]
pub struct Signal {
    pub message_id: Option<Uuid>,
    /// The sender's trace; a fulfillment created by this signal keeps it.
    pub traceparent: Option<String>,
    pub input: Input,
}

/// A fulfillment whose creation is not stored yet: the events it causes,
/// the answer to its creating signal, and who waits for that answer.
pub struct Creation {
    pub messages: Vec<(Route, Envelope)>,
    pub history: Vec<workflow::Entry>,
    pub reply: Reply,
    pub answer: oneshot::Sender<Result<Reply, StoreError>>,
    /// The span of the creating signal (its message, in the order's trace).
    pub span: tracing::Span,
}

pub struct FulfillmentActor {
    state: Fulfillment,
    deps: Deps,
    registry: Registry,
    /// The armed step timer and the step it completes.
    timer: Option<(u32, SpawnHandle)>,
    /// Set until a new fulfillment's first write has committed.
    creation: Option<Creation>,
}

impl FulfillmentActor {
    /// The actor of a stored fulfillment.
    pub fn new(state: Fulfillment, deps: Deps, registry: Registry) -> Self {
        Self {
            state,
            deps,
            registry,
            timer: None,
            creation: None,
        }
    }

    /// The actor of a fulfillment just decided on: it stores it (group
    /// commit) before it takes any signal, answers `creation`, and stops
    /// if the write fails.
    pub fn creating(
        state: Fulfillment,
        creation: Creation,
        deps: Deps,
        registry: Registry,
    ) -> Self {
        Self {
            creation: Some(creation),
            ..Self::new(state, deps, registry)
        }
    }

    /// Stores a new fulfillment; until then its mailbox waits.
    fn store_creation(&mut self, creation: Creation, ctx: &mut Context<Self>) {
        let write = Write {
            state: self.state.clone(),
            events: creation.messages,
            history: creation.history,
            clears_tombstone: false,
        };
        let writer = self.deps.writer.clone();
        let work = async move { writer.save(write).await }
            .into_actor(self)
            .map(move |stored, act, ctx| match stored {
                Ok(_) => {
                    let _entered = creation.span.enter();
                    tracing::info!(
                        fulfillment_id = %act.state.id,
                        order_id = %act.state.order_id,
                        status = %act.state.status,
                        trace_id = %trace::trace_id_of(act.state.traceparent.as_deref()),
                        "fulfillment created"
                    );
                    let _ = creation.answer.send(Ok(creation.reply));
                    act.arm(ctx, None);
                }
                Err(error) => {
                    // Signals queued behind it fail over to the registry,
                    // which decides them again against the store.
                    let _ = creation.answer.send(Err(error.into()));
                    ctx.stop();
                }
            });
        ctx.wait(work);
    }

    /// Decides `input` and stores the outcome; the returned future, run
    /// with `ctx.wait` (directly or as an [`AtomicResponse`]), holds every
    /// other input back until the write has committed, then takes the new
    /// state and answers.
    fn apply(
        &mut self,
        message_id: Option<Uuid>,
        traceparent: Option<&str>,
        input: Input,
    ) -> LocalBoxActorFuture<Self, Result<Reply, StoreError>> {
        let span = tracing::info_span!(
            "fulfillment_input",
            fulfillment_id = %self.state.id,
            order_id = %self.state.order_id,
            status = %self.state.status,
            trace_id = tracing::field::Empty,
        );
        // In the fulfillment's own trace (the one it was created in), which
        // a signal from another trace does not change; under the signal's
        // message span when it is in that trace.
        let position = trace::follow_cause(&span, self.state.traceparent.as_deref(), traceparent);
        let mut decision = span.in_scope(|| {
            workflow::decide(
                &self.state,
                input,
                workflow::Context {
                    message_id,
                    now: Utc::now(),
                    timing: self.deps.timing,
                },
            )
            .traced(traceparent)
        });
        // Events name this span as their sender when spans are exported.
        for (_, event) in &mut decision.messages {
            event.traceparent = trace::child_of(position.as_deref());
        }
        let reply = decision.reply.clone();
        let Some(write) = Write::of(&decision) else {
            return Box::pin(fut::ready(()).map(move |(), act: &mut Self, ctx| {
                act.arm(ctx, None);
                Ok(reply)
            }));
        };
        let writer = self.deps.writer.clone();
        Box::pin(
            async move { writer.save(write).await }
                .into_actor(self)
                .map(move |stored, act, ctx| {
                    let _entered = span.enter();
                    act.take(stored?.state, ctx);
                    Ok(reply)
                }),
        )
    }

    /// Makes a stored state the actor's own.
    fn take(&mut self, state: Fulfillment, ctx: &mut Context<Self>) {
        if state.status != self.state.status || state.step != self.state.step {
            tracing::info!(
                fulfillment_id = %state.id,
                status = %state.status,
                step = state.step,
                "fulfillment transition"
            );
        }
        if state.status != self.state.status {
            let (from, to) = (self.state.status.as_str(), state.status.as_str());
            METRICS.transition(from, to);
        }
        self.state = state;
        self.arm(ctx, None);
        if self.state.status.is_final() {
            ctx.stop();
        }
    }

    /// Completes step `step`; when its write fails, the step runs again
    /// after a pause.
    fn step_done(&mut self, step: u32, ctx: &mut Context<Self>) {
        self.timer = None;
        let work = self
            .apply(None, None, Input::StepDone { step })
            .map(|result, act, ctx| {
                if let Err(error) = result {
                    tracing::error!(fulfillment_id = %act.state.id, %error, "cannot store a completed step; retrying");
                    let retry = act.deps.timing.step_delay.max(STORE_RETRY);
                    act.arm(ctx, Some(retry));
                }
            });
        ctx.wait(work);
    }

    /// Makes the timer match the state: one timer for the step in hand
    /// while running, none otherwise.
    fn arm(&mut self, ctx: &mut Context<Self>, delay: Option<Duration>) {
        let wanted = self.state.is_running().then_some(self.state.step);
        if self.timer.as_ref().map(|(s, _)| *s) == wanted {
            return;
        }
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(step) = wanted {
            let delay = delay.unwrap_or(self.deps.timing.step_delay);
            let handle = if delay.is_zero() {
                // At once, without a 1 ms timer tick; still cancellable.
                ctx.spawn(
                    fut::ready(()).map(move |(), act: &mut Self, ctx| act.step_done(step, ctx)),
                )
            } else {
                ctx.run_later(delay, move |act, ctx| act.step_done(step, ctx))
            };
            self.timer = Some((step, handle));
        }
    }
}

impl Actor for FulfillmentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.registry.started(self.state.status.as_str());
        match self.creation.take() {
            Some(creation) => self.store_creation(creation, ctx),
            // A recovered fulfillment runs its current step again from the start.
            None => self.arm(ctx, None),
        }
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let status = self.state.status.as_str();
        self.registry
            .stopped(&self.state.id, status, &ctx.address());
    }
}

impl Handler<Signal> for FulfillmentActor {
    type Result = AtomicResponse<Self, Result<Reply, StoreError>>;

    fn handle(&mut self, msg: Signal, _ctx: &mut Self::Context) -> Self::Result {
        AtomicResponse::new(self.apply(msg.message_id, msg.traceparent.as_deref(), msg.input))
    }
}

/// Leaves at once: the partition goes to another replica ([`Leave`]).
impl Handler<Leave> for FulfillmentActor {
    type Result = ();

    fn handle(&mut self, _: Leave, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

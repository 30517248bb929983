//! One actix actor per running fulfillment, and the registry that finds it.
//!
//! The actor is a thin shell over [`crate::workflow`]: it feeds an input
//! in, stores the new state with its events (one transaction), and only
//! then updates its memory, arms or cancels its step timer and answers.
//! The step timer is an actor timer (`run_later`) whose handle is cancelled
//! on pause and cancel, so a step in progress is interrupted and, on resume,
//! run again from its start. A fulfillment that reaches a final status
//! stops its actor; its state stays readable from the store.

mod registry;

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, SpawnHandle};
use chrono::Utc;
use shared_messages::bus::outbox::OutboxSignal;
use shared_messages::trace;
use uuid::Uuid;

use crate::metrics::{TransitionLabels, METRICS};

use crate::store::{Store, StoreError};
use crate::workflow::{self, Fulfillment, Input, Reply, Timing};

pub use registry::Registry;

/// After a failed write, wait at least this long before the step is tried
/// again, so a broken disk does not turn a zero step delay into a hot loop.
const STORE_RETRY: Duration = Duration::from_millis(500);

/// What actors share.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub outbox: OutboxSignal,
    pub timing: Timing,
}

impl Deps {
    /// Stores a decision's state and events; nudges the relay.
    fn persist(&self, decision: &workflow::Decision) -> Result<(), StoreError> {
        if let Some(state) = &decision.state {
            METRICS.store_write("save", || self.store.save(state, &decision.events))?;
            if !decision.events.is_empty() {
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

pub struct FulfillmentActor {
    state: Fulfillment,
    deps: Deps,
    registry: Registry,
    /// The armed step timer and the step it completes.
    timer: Option<(u32, SpawnHandle)>,
}

impl FulfillmentActor {
    pub fn new(state: Fulfillment, deps: Deps, registry: Registry) -> Self {
        Self {
            state,
            deps,
            registry,
            timer: None,
        }
    }

    fn apply(
        &mut self,
        ctx: &mut Context<Self>,
        message_id: Option<Uuid>,
        traceparent: Option<&str>,
        input: Input,
    ) -> Result<Reply, StoreError> {
        let span = tracing::info_span!(
            "fulfillment_input",
            fulfillment_id = %self.state.id,
            order_id = %self.state.order_id,
            status = %self.state.status,
            trace_id = tracing::field::Empty,
        );
        // In the fulfillment's own trace (the one it was created in), which
        // a signal from another trace does not change.
        let position = trace::follow(&span, self.state.traceparent.as_deref().or(traceparent));
        let _entered = span.enter();
        let mut decision = workflow::decide(
            &self.state,
            &input,
            message_id,
            Utc::now(),
            self.deps.timing,
        )
        .traced(traceparent);
        // Events name this span as their sender when spans are exported.
        for (_, event) in &mut decision.events {
            event.traceparent = trace::child_of(position.as_deref());
        }
        self.deps.persist(&decision)?;
        if let Some(state) = decision.state {
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
                METRICS
                    .transitions
                    .get_or_create(&TransitionLabels {
                        from: from.into(),
                        to: to.into(),
                    })
                    .inc();
                METRICS.actor(from, -1);
                METRICS.actor(to, 1);
            }
            self.state = state;
        }
        self.arm(ctx, None);
        if self.state.status.is_final() {
            ctx.stop();
        }
        Ok(decision.reply)
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
            let handle = ctx.run_later(delay, move |act, ctx| {
                act.timer = None;
                if let Err(error) = act.apply(ctx, None, None, Input::StepDone { step }) {
                    tracing::error!(fulfillment_id = %act.state.id, %error, "cannot store a completed step; retrying");
                    let retry = act.deps.timing.step_delay.max(STORE_RETRY);
                    act.arm(ctx, Some(retry));
                }
            });
            self.timer = Some((step, handle));
        }
    }
}

impl Actor for FulfillmentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        METRICS.actor(self.state.status.as_str(), 1);
        // A recovered fulfillment runs its current step again from the start.
        self.arm(ctx, None);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        METRICS.actor(self.state.status.as_str(), -1);
        self.registry.forget(&self.state.id, &ctx.address());
    }
}

impl Handler<Signal> for FulfillmentActor {
    type Result = Result<Reply, StoreError>;

    fn handle(&mut self, msg: Signal, ctx: &mut Self::Context) -> Self::Result {
        self.apply(ctx, msg.message_id, msg.traceparent.as_deref(), msg.input)
    }
}

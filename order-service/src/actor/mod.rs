//! One actix actor per open order, and the registry that finds them.
//!
//! The actor is a thin shell over [`crate::workflow`]: it feeds an input
//! in, has the decision's state stored together with its messages and
//! history (one transaction, shared with other actors' writes by the group
//! commit; the outbox relay publishes the messages), and only then
//! performs its effects (arm a timer, take the next step, poll
//! fulfillment) and answers its reply. While its write is in flight the
//! actor takes no other input. A finished order's actor stops; its final
//! state stays in the store.

mod events;
mod registry;
#[cfg(test)]
pub(crate) mod testing;

pub use registry::{ApplyError, Orders, Quarantined, Timings};

use std::time::{Duration, Instant};

use actix::fut::{self, LocalBoxActorFuture};
use actix::prelude::*;
use chrono::Utc;
use message_bus::trace;
use message_bus::Route;
use rand::Rng;
use service_kit::actors::Leave;
use shared_messages::messages::{GetFulfillmentStatus, ReplyErrorCode};
use shared_messages::{Envelope, Message as WireMessage};

use crate::metrics::{ActivityLabels, METRICS};
use crate::store::{StoreError, Write};
use crate::workflow::{self, Accepted, Effect, Input, OrderState, Timer};
use crate::{bus, inventory, payment};

/// Wait before retrying a step whose state could not be stored.
const STORE_RETRY: Duration = Duration::from_secs(1);

pub struct OrderActor {
    state: OrderState,
    orders: Orders,
    polling: Option<SpawnHandle>,
    poll_in_flight: bool,
    /// When fulfillment last told this order something (event or poll).
    last_heard: Option<Instant>,
    deadline: Option<SpawnHandle>,
}

/// Feed one input to the order; answers the order after it and how the
/// input was taken, or why not. The second field is the position in a
/// trace of what caused the input (the delivery or request it came with;
/// see `trace::follow_cause`).
#[derive(Message)]
#[rtype(result = "Result<Applied, ApplyError>")]
pub struct Apply(pub Input, pub Option<String>);

/// An input taken: the order as it is after it, and the decision's reply.
#[derive(Debug, Clone)]
pub struct Applied {
    pub state: OrderState,
    pub reply: Accepted,
}

impl OrderActor {
    pub fn new(state: OrderState, orders: Orders) -> Self {
        Self {
            state,
            orders,
            polling: None,
            poll_in_flight: false,
            last_heard: None,
            deadline: None,
        }
    }

    /// Feeds `input` to the workflow and has the outcome stored; the
    /// returned future, run with `ctx.wait` (directly or as an
    /// [`AtomicResponse`]), holds every other input back until the write
    /// has committed, then takes the new state, performs its effects and
    /// answers it.
    ///
    /// The transition is computed when the future first runs, not when it
    /// is queued: two inputs queued together (an HTTP cancel and a timer's
    /// next step in the same turn) then each start from the state the
    /// other stored, never both from the same one.
    fn apply(
        &mut self,
        input: Input,
        cause: Option<String>,
    ) -> LocalBoxActorFuture<Self, Result<Applied, ApplyError>> {
        Box::pin(fut::ready(()).then(move |(), act: &mut Self, _ctx| act.apply_now(input, cause)))
    }

    fn apply_now(
        &mut self,
        input: Input,
        cause: Option<String>,
    ) -> LocalBoxActorFuture<Self, Result<Applied, ApplyError>> {
        let span = tracing::info_span!(
            "order_input",
            order_id = %self.state.order_id,
            fulfillment_id = self.state.fulfillment_workflow_id.as_deref().unwrap_or(""),
            status = %self.state.status,
            trace_id = tracing::field::Empty,
        );
        // In the order's trace: under the message or request that caused
        // this input when it is in that trace (a fulfillment event), else
        // under the request that created the order; what this input sends
        // names this span when spans are exported.
        let traceparent =
            trace::follow_cause(&span, self.state.traceparent.as_deref(), cause.as_deref());
        if matches!(input, Input::Fulfillment { .. }) {
            self.last_heard = Some(Instant::now());
        }
        let decision = span
            .in_scope(|| workflow::decide(&self.state, input, workflow::Context::at(Utc::now())));
        let reply = match decision.reply {
            Ok(reply) => reply,
            Err(rejection) => return Box::pin(fut::ready(Err(ApplyError::Rejected(rejection)))),
        };
        let Some(state) = decision.state else {
            return Box::pin(fut::ready(Ok(Applied {
                state: self.state.clone(),
                reply,
            })));
        };
        let outbox: Vec<(Route, Envelope)> = decision
            .messages
            .into_iter()
            .map(|(route, envelope)| {
                (
                    route,
                    envelope.traced(trace::child_of(traceparent.as_deref())),
                )
            })
            .collect();
        let write = Write {
            state,
            outbox,
            events: decision.history,
            insert: false,
        };
        let effects = decision.effects;
        let writer = self.orders.writer().clone();
        Box::pin(
            async move { writer.save(write).await }
                .into_actor(self)
                .map(move |stored, act, ctx| {
                    let _entered = span.enter();
                    let stored = stored.map_err(|e| ApplyError::Store(e.into()))?;
                    act.take(stored.state, effects, ctx);
                    Ok(Applied {
                        state: act.state.clone(),
                        reply,
                    })
                }),
        )
    }

    /// Makes a stored state the actor's own and performs its effects.
    fn take(&mut self, state: OrderState, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        if state.status != self.state.status {
            let (from, to) = (self.state.status.as_str(), state.status.as_str());
            tracing::info!(
                order_id = %self.state.order_id,
                from,
                to,
                "order transition"
            );
            METRICS.transition(from, to);
            self.orders.status_changed(&state.order_id);
        }
        if state.overdue && !self.state.overdue {
            tracing::warn!(order_id = %state.order_id, "fulfillment overdue");
            METRICS.overdue.inc();
        }
        self.state = state;
        self.perform(effects, ctx);
        if self.state.status.is_final() {
            ctx.stop();
        }
    }

    /// Applies an input that nobody waits for (a timer's); when the store
    /// fails, the step is tried again later.
    fn apply_internal(&mut self, input: Input, ctx: &mut Context<Self>) {
        let work = self.apply(input, None).map(|result, act, ctx| match result {
            Ok(_) | Err(ApplyError::Rejected(_)) => {}
            Err(ApplyError::Store(StoreError::Fenced(fenced))) => {
                // Another replica owns the order now and resumes it from
                // what is stored.
                tracing::warn!(order_id = %act.state.order_id, %fenced, "step refused: the order's partition is another replica's now; its actor stops");
                ctx.stop();
            }
            Err(error) => {
                tracing::error!(order_id = %act.state.order_id, %error, "step not stored; retrying");
                ctx.run_later(STORE_RETRY, |act, ctx| {
                    let effects = workflow::resume(&act.state);
                    act.perform(effects, ctx);
                });
            }
        });
        ctx.wait(work);
    }

    /// Runs `f` after `delay`, or at once (without a timer tick) when the
    /// delay is zero.
    fn after(
        ctx: &mut Context<Self>,
        delay: Duration,
        f: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        if delay.is_zero() {
            ctx.spawn(fut::ready(()).map(move |(), act: &mut Self, ctx| f(act, ctx)));
        } else {
            ctx.run_later(delay, f);
        }
    }

    fn perform(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::Schedule(Timer::CheckStock) => {
                    let delay = self.activity_delay(Timer::CheckStock);
                    Self::after(ctx, delay, |act, ctx| {
                        let timings = act.orders.timings();
                        let input = match transient_failure(
                            Timer::CheckStock,
                            timings.inventory_transient_failure_rate,
                            timings.inventory_retry,
                        ) {
                            Some(failed) => failed,
                            None => Input::InventoryChecked(inventory::reserve(
                                &act.state.order_id,
                                &act.state.details.items,
                            )),
                        };
                        act.apply_internal(input, ctx);
                    });
                }
                Effect::Schedule(Timer::ChargePayment) => {
                    let delay = self.activity_delay(Timer::ChargePayment);
                    Self::after(ctx, delay, |act, ctx| {
                        let timings = act.orders.timings();
                        let input = match transient_failure(
                            Timer::ChargePayment,
                            timings.payment_transient_failure_rate,
                            timings.payment_retry,
                        ) {
                            Some(failed) => failed,
                            None => {
                                let roll: f64 = rand::rng().random();
                                let d = &act.state.details;
                                Input::PaymentProcessed(payment::charge(
                                    &act.state.order_id,
                                    &d.payment_method,
                                    d.total_amount(),
                                    timings.payment_decline_rate,
                                    roll,
                                ))
                            }
                        };
                        act.apply_internal(input, ctx);
                    });
                }
                Effect::Advance => {
                    Self::after(ctx, Duration::ZERO, |act, ctx| {
                        act.apply_internal(Input::Advance, ctx)
                    });
                }
                Effect::PollNow => self.poll_now(ctx),
                Effect::StartPolling => {
                    self.arm_deadline(ctx);
                    if self.polling.is_none() {
                        let every = self.orders.timings().poll_interval;
                        // A random first delay spreads the polls of many
                        // orders (e.g. all recovered at once) over the interval.
                        let first = every.mul_f64(rand::rng().random_range(0.5..1.0));
                        self.polling = Some(ctx.run_later(first, move |act, ctx| {
                            act.poll(ctx);
                            act.polling = Some(ctx.run_interval(every, |act, ctx| act.poll(ctx)));
                        }));
                    }
                }
            }
        }
    }

    /// How long until the activity runs: its pending retry's due time
    /// (kept in the state, so a restart keeps it), else its usual delay.
    fn activity_delay(&self, activity: Timer) -> Duration {
        match &self.state.retry {
            Some(retry) if retry.activity == activity => (retry.due_at - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO),
            _ => match activity {
                Timer::CheckStock => self.orders.timings().inventory_delay,
                Timer::ChargePayment => self.orders.timings().payment_delay,
            },
        }
    }

    /// Marks the order overdue when its fulfillment has not finished
    /// `FULFILLMENT_DEADLINE_MS` after the hand-over (counted from the
    /// stored hand-over time, so a restart keeps it).
    fn arm_deadline(&mut self, ctx: &mut Context<Self>) {
        if self.deadline.is_some() || self.state.overdue {
            return;
        }
        let Some(started) = self
            .state
            .step_done(workflow::STEP_START_FULFILLMENT)
            .map(|s| s.at)
        else {
            return;
        };
        let deadline = self.orders.timings().fulfillment_deadline;
        let elapsed = (Utc::now() - started).to_std().unwrap_or(Duration::ZERO);
        let remaining = deadline.saturating_sub(elapsed);
        self.deadline = Some(ctx.run_later(remaining, |act, ctx| {
            act.apply_internal(Input::DeadlinePassed, ctx);
        }));
    }

    /// Reconciliation: asks fulfillment for its status. Events usually get
    /// here first; this catches anything they missed. Timeouts are normal
    /// while fulfillment-service is down and are ignored.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.poll_in_flight || !self.state.status.is_waiting_on_fulfillment() {
            return;
        }
        // Events keep the order current; poll only when they have been
        // quiet for half an interval or more (a paused fulfillment, lost events,
        // fulfillment-service down). This keeps polling cheap with many
        // open orders.
        let interval = self.orders.timings().poll_interval;
        if self
            .last_heard
            .is_some_and(|at| at.elapsed() < interval / 2)
        {
            return;
        }
        self.poll_now(ctx);
    }

    /// Asks fulfillment for its status at once (unless a poll is in flight).
    fn poll_now(&mut self, ctx: &mut Context<Self>) {
        if self.poll_in_flight || !self.state.status.is_waiting_on_fulfillment() {
            return;
        }
        let Some(fulfillment_id) = self.state.fulfillment_workflow_id.clone() else {
            return;
        };
        let bus = self.orders.bus().clone();
        if !bus.is_connected() {
            return;
        }
        self.poll_in_flight = true;
        let timeout = self.orders.timings().query_timeout;
        let traceparent = trace::child_of(self.state.traceparent.as_deref());
        let request = async move {
            let query = WireMessage::GetFulfillmentStatus(GetFulfillmentStatus {});
            bus::query(&bus, &fulfillment_id, query, traceparent, timeout).await
        };
        ctx.spawn(request.into_actor(self).map(|result, act, ctx| {
            act.poll_in_flight = false;
            match result {
                Ok(reply) => match reply.message {
                    WireMessage::FulfillmentStatusReply(view) => {
                        let input = Input::Fulfillment {
                            message_id: None,
                            view,
                            progress: None,
                        };
                        act.apply_internal(input, ctx);
                    }
                    WireMessage::QueryFailed(error) if error.code == ReplyErrorCode::NotFound => {
                        tracing::warn!(order_id = %act.state.order_id, "poll: no such fulfillment; sending its start again");
                        act.apply_internal(Input::FulfillmentNotFound, ctx);
                    }
                    WireMessage::QueryFailed(error) => {
                        tracing::debug!(order_id = %act.state.order_id, ?error, "poll: fulfillment answered with an error");
                    }
                    other => {
                        tracing::warn!(order_id = %act.state.order_id, reply = other.type_name(), "poll: unexpected reply");
                    }
                },
                Err(error) => {
                    tracing::debug!(order_id = %act.state.order_id, %error, "poll: no answer");
                }
            }
        }));
    }
}

/// A simulated transient failure of `activity`, at `rate`: the input that
/// reports it (to be retried as `policy` says), or `None` to run it.
fn transient_failure(activity: Timer, rate: f64, policy: workflow::RetryPolicy) -> Option<Input> {
    if rate <= 0.0 || rand::rng().random::<f64>() >= rate {
        return None;
    }
    METRICS
        .activity_failures
        .get_or_create(&ActivityLabels {
            activity: activity.activity_name().into(),
        })
        .inc();
    Some(Input::ActivityFailed {
        activity,
        error: format!(
            "{} service unavailable (simulated transient failure)",
            activity.activity_name()
        ),
        policy,
    })
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.orders.started(self.state.status.as_str());
        let effects = workflow::resume(&self.state);
        self.perform(effects, ctx);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let status = self.state.status.as_str();
        self.orders
            .stopped(&self.state.order_id, status, &ctx.address());
    }
}

/// Leaves at once: the partition goes to another replica ([`Leave`]).
impl Handler<Leave> for OrderActor {
    type Result = ();

    fn handle(&mut self, _: Leave, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Apply> for OrderActor {
    type Result = AtomicResponse<Self, Result<Applied, ApplyError>>;

    fn handle(&mut self, msg: Apply, _ctx: &mut Self::Context) -> Self::Result {
        AtomicResponse::new(self.apply(msg.0, msg.1))
    }
}

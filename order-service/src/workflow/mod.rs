//! The order saga as a pure state machine:
//! `decide(state, input, context) -> Decision`.
//!
//! Nothing here touches the broker, the store or the clock on its own: the
//! actor ([`crate::actor`]) feeds inputs in (timer results, fulfillment
//! reports, HTTP commands), stores the decision's state together with its
//! messages (one transaction, the outbox) and history, then performs its
//! effects and answers its reply.
//!
//! ```text
//! PENDING -> INVENTORY_RESERVED -> PAYMENT_PROCESSING -> PAYMENT_CONFIRMED
//!   -> CONFIRMED -> FULFILLMENT_STARTED -> FULFILLMENT_IN_PROGRESS -> SHIPPED
//! before the hand-over: cancel -> CANCELLED (after compensation)
//! after it: cancel -> CANCELLING -> CANCELLED (the fulfillment confirmed,
//!   then compensation) | SHIPPED (it had shipped: nothing is refunded)
//! any non-final state -> FAILED (after compensation)
//! ```
//!
//! [`decide`] hands each input to the module of its group:
//!
//! | module | inputs |
//! |---|---|
//! | [`creation`] | a new order ([`create`]) |
//! | [`activities`] | stock and payment results, transient failures, the next automatic step (up to the hand-over) |
//! | [`fulfillment`] | fulfillment reports (events and poll answers), a fulfillment not found |
//! | [`control`] | a person's requests: cancel, new details, pause and resume of the fulfillment |
//! | [`timers`] | the fulfillment deadline |
//!
//! Every decision also yields its history entries ([`Decision::history`]),
//! stored in the same transaction as the state: an input that changes
//! nothing yields none.

mod activities;
mod control;
mod creation;
mod fulfillment;
#[cfg(test)]
mod testing;
mod timers;

pub use control::check_email;
pub use creation::create;

use std::time::Duration;

use chrono::{DateTime, Utc};
use message_bus::Route;
use serde::{Deserialize, Serialize};
use service_kit::workflow::AppliedMessages;
use shared_messages::history::HistoryEvent;
use shared_messages::ids::{effect_message_id, fulfillment_workflow_id};
use shared_messages::messages::{
    Address, CancelFulfillment, FulfillmentProgressView, FulfillmentRequest, FulfillmentStatus,
    FulfillmentStatusView, OrderItem, PauseFulfillment, ResumeFulfillment, StartFulfillment,
};
use shared_messages::topology::{FULFILLMENT_SIGNALS_EXCHANGE, FULFILLMENT_SIGNAL_KEY};
use shared_messages::{Envelope, Message};
use uuid::Uuid;

/// Longest string accepted in any field, so one order cannot bloat the store.
pub const MAX_FIELD: usize = 500;

/// The least time between two re-sends of a start a poll found missing:
/// while fulfillment-service works through a backlog, starts still queued
/// also answer "not found", and a re-send per poll would only add to it.
pub const START_RESEND_INTERVAL_SECS: i64 = 60;

/// The states of an order, with the original demo's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    InventoryReserved,
    PaymentProcessing,
    PaymentConfirmed,
    Confirmed,
    FulfillmentStarted,
    FulfillmentInProgress,
    /// A cancel was asked of the fulfillment; its answer decides.
    Cancelling,
    Shipped,
    Cancelled,
    Failed,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 11] = [
        Self::Pending,
        Self::InventoryReserved,
        Self::PaymentProcessing,
        Self::PaymentConfirmed,
        Self::Confirmed,
        Self::FulfillmentStarted,
        Self::FulfillmentInProgress,
        Self::Cancelling,
        Self::Shipped,
        Self::Cancelled,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::InventoryReserved => "INVENTORY_RESERVED",
            Self::PaymentProcessing => "PAYMENT_PROCESSING",
            Self::PaymentConfirmed => "PAYMENT_CONFIRMED",
            Self::Confirmed => "CONFIRMED",
            Self::FulfillmentStarted => "FULFILLMENT_STARTED",
            Self::FulfillmentInProgress => "FULFILLMENT_IN_PROGRESS",
            Self::Cancelling => "CANCELLING",
            Self::Shipped => "SHIPPED",
            Self::Cancelled => "CANCELLED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Shipped, cancelled and failed orders never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Shipped | Self::Cancelled | Self::Failed)
    }

    /// The order has handed over to fulfillment and follows it (a
    /// cancelling order waits for the fulfillment's answer).
    pub fn is_waiting_on_fulfillment(self) -> bool {
        matches!(
            self,
            Self::FulfillmentStarted | Self::FulfillmentInProgress | Self::Cancelling
        )
    }

    /// What the order is doing, for people.
    pub fn step_name(self) -> &'static str {
        match self {
            Self::Pending => "Checking inventory",
            Self::InventoryReserved => "Inventory reserved",
            Self::PaymentProcessing => "Processing payment",
            Self::PaymentConfirmed => "Payment confirmed",
            Self::Confirmed => "Order confirmed",
            Self::FulfillmentStarted => "Waiting for fulfillment",
            Self::FulfillmentInProgress => "Fulfillment in progress",
            Self::Cancelling => "Cancelling: waiting for the fulfillment to confirm",
            Self::Shipped => "Shipped",
            Self::Cancelled => "Cancelled",
            Self::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The saga's forward steps, in order, as shown by the progress route.
pub const MAIN_STEPS: [&str; 6] = [
    STEP_RESERVE,
    STEP_PAYMENT,
    STEP_CONFIRM,
    STEP_START_FULFILLMENT,
    STEP_FULFILLMENT,
    STEP_SHIP,
];
pub const STEP_RESERVE: &str = "Reserve inventory";
pub const STEP_PAYMENT: &str = "Process payment";
pub const STEP_CONFIRM: &str = "Confirm order";
pub const STEP_START_FULFILLMENT: &str = "Start fulfillment";
pub const STEP_FULFILLMENT: &str = "Fulfillment in progress";
pub const STEP_SHIP: &str = "Ship order";
/// Compensation steps, recorded when they run.
pub const STEP_RELEASE: &str = "Release inventory";
pub const STEP_REFUND: &str = "Refund payment";
pub const STEP_CANCEL_FULFILLMENT: &str = "Cancel fulfillment";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Completed,
    Failed,
}

/// A step that has run, with when and, for failures, why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub name: String,
    pub status: StepStatus,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a customer ordered: the input of the saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderDetails {
    pub customer_id: String,
    pub customer_email: String,
    pub customer_name: String,
    pub items: Vec<OrderItem>,
    pub shipping_address: Address,
    pub payment_method: String,
}

impl OrderDetails {
    pub fn total_amount(&self) -> f64 {
        let cents: f64 = self
            .items
            .iter()
            .map(|i| (i.price * 100.0).round() * f64::from(i.quantity))
            .sum();
        cents / 100.0
    }
}

/// Everything the order knows; stored as JSON, one row per order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderState {
    pub order_id: String,
    pub workflow_id: String,
    pub details: OrderDetails,
    pub status: OrderStatus,
    pub reservation_ids: Vec<String>,
    /// The reservation is still held (set when reserved, cleared on release).
    pub reservation_held: bool,
    pub payment_id: Option<String>,
    /// The payment is still captured (cleared on refund).
    pub payment_captured: bool,
    pub fulfillment_workflow_id: Option<String>,
    pub fulfillment_status: Option<FulfillmentStatus>,
    /// `updatedAt` of the newest fulfillment report applied; older reports
    /// are stale and ignored.
    pub fulfillment_updated_at: Option<DateTime<Utc>>,
    pub fulfillment_progress: Option<FulfillmentProgressView>,
    pub tracking_number: Option<String>,
    pub cancellation_reason: Option<String>,
    pub error: Option<String>,
    pub history: Vec<StepRecord>,
    /// Ids of fulfillment events already applied (bounded).
    pub processed_messages: AppliedMessages,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// W3C trace context of the request that created the order; every
    /// message the order sends carries a child of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The `seq` of the newest history entry stored.
    #[serde(default)]
    pub history_seq: u64,
    /// An activity (inventory, payment) waiting to be tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<PendingRetry>,
    /// The fulfillment has not finished within `FULFILLMENT_DEADLINE_MS`.
    #[serde(default)]
    pub overdue: bool,
    /// Why a cancel was refused (the fulfillment had shipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_refused: Option<String>,
    /// When the start was last sent again after a poll found no fulfillment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_resent_at: Option<DateTime<Utc>>,
    /// History entries of the decision being made; taken out into
    /// [`Decision::history`], never stored with the state.
    #[serde(skip)]
    recorded: Vec<HistoryEvent>,
}

/// An activity that failed transiently and runs again at `due_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingRetry {
    pub activity: Timer,
    /// Attempts that have failed so far.
    pub attempt: u32,
    pub due_at: DateTime<Utc>,
}

/// A retry policy in Temporal's terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The wait before the first retry.
    pub initial_interval: Duration,
    /// Each wait is the previous one times this (at least 1).
    pub backoff_coefficient: f64,
    /// No wait is longer than this.
    pub maximum_interval: Duration,
    /// Attempts in all, the first included; 0 means no limit.
    pub maximum_attempts: u32,
}

impl Default for RetryPolicy {
    /// 1 s, doubling, at most 30 s apart, 10 attempts.
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            maximum_interval: Duration::from_secs(30),
            maximum_attempts: 10,
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failed`-th failed attempt (1-based).
    pub fn delay_after(&self, failed: u32) -> Duration {
        let exponent = i32::try_from(failed.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.backoff_coefficient.max(1.0).powi(exponent);
        let secs =
            (self.initial_interval.as_secs_f64() * factor).min(self.maximum_interval.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(self.maximum_interval)
    }

    /// Whether another attempt may follow the `failed`-th failure.
    pub fn allows_retry_after(&self, failed: u32) -> bool {
        self.maximum_attempts == 0 || failed < self.maximum_attempts
    }
}

impl OrderState {
    pub fn new(order_id: &str, details: OrderDetails, now: DateTime<Utc>) -> Self {
        Self {
            order_id: order_id.into(),
            workflow_id: shared_messages::ids::order_workflow_id(order_id),
            details,
            status: OrderStatus::Pending,
            reservation_ids: Vec::new(),
            reservation_held: false,
            payment_id: None,
            payment_captured: false,
            fulfillment_workflow_id: None,
            fulfillment_status: None,
            fulfillment_updated_at: None,
            fulfillment_progress: None,
            tracking_number: None,
            cancellation_reason: None,
            error: None,
            history: Vec::new(),
            processed_messages: AppliedMessages::default(),
            created_at: now,
            updated_at: now,
            traceparent: None,
            history_seq: 0,
            retry: None,
            overdue: false,
            cancel_refused: None,
            start_resent_at: None,
            recorded: Vec::new(),
        }
    }

    /// Adds a history entry to the transition being made.
    fn emit(
        &mut self,
        kind: &str,
        message_id: Option<Uuid>,
        detail: serde_json::Value,
        now: DateTime<Utc>,
    ) {
        self.history_seq += 1;
        self.recorded.push(HistoryEvent {
            seq: self.history_seq,
            kind: kind.into(),
            at: now,
            message_id,
            detail,
        });
    }

    pub fn step_done(&self, name: &str) -> Option<&StepRecord> {
        self.history.iter().find(|s| s.name == name)
    }

    fn record(
        &mut self,
        name: &str,
        status: StepStatus,
        detail: Option<String>,
        now: DateTime<Utc>,
    ) {
        self.history.push(StepRecord {
            name: name.into(),
            status,
            at: now,
            detail,
        });
    }

    fn remember(&mut self, id: Uuid) {
        self.processed_messages.remember(id);
    }
}

/// Something that happened to an order.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The simulated inventory answered: reservation ids, or why not.
    InventoryChecked(Result<Vec<String>, String>),
    /// The simulated payment answered: payment id, or why declined.
    PaymentProcessed(Result<String, String>),
    /// Take the next automatic step (no outside answer needed).
    Advance,
    /// Fulfillment reported its state: an event (with its message id) or
    /// the answer to a poll (no id).
    Fulfillment {
        message_id: Option<Uuid>,
        view: Box<FulfillmentStatusView>,
        progress: Option<Box<FulfillmentProgressView>>,
    },
    /// An activity failed in a way that may pass (a timeout, a 503): it
    /// is tried again as `policy` says, until its attempts run out.
    ActivityFailed {
        activity: Timer,
        error: String,
        policy: RetryPolicy,
    },
    /// A poll found no such fulfillment: its start was lost.
    FulfillmentNotFound,
    /// `FULFILLMENT_DEADLINE_MS` has passed since the hand-over.
    DeadlinePassed,
    /// Cancel the order (HTTP).
    Cancel { reason: Option<String> },
    /// Change contact details or the address before fulfillment starts.
    UpdateDetails(DetailsUpdate),
    /// Pause the order's fulfillment (HTTP); the fulfillment decides.
    PauseFulfillment,
    /// Resume the order's paused fulfillment (HTTP); the fulfillment decides.
    ResumeFulfillment,
}

/// The body of `PATCH /orders/{workflowId}`: any of these, at least one.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetailsUpdate {
    pub customer_email: Option<String>,
    pub customer_name: Option<String>,
    pub shipping_address: Option<Address>,
}

/// The activities the actor runs after a delay, each on a timer of its
/// own. The stored names (`inventory`, `payment`) are those of the
/// activities, kept so stored orders still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Timer {
    /// Check and reserve stock after `INVENTORY_DELAY_MS`.
    #[serde(rename = "inventory")]
    CheckStock,
    /// Charge the payment after `PAYMENT_DELAY_MS`.
    #[serde(rename = "payment")]
    ChargePayment,
}

/// What the actor does once a decision is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Run this activity when its timer runs out.
    Schedule(Timer),
    /// Feed [`Input::Advance`] right away.
    Advance,
    /// Poll fulfillment by query until the order is final.
    StartPolling,
    /// Ask fulfillment for its status now: a cancel waits on its answer,
    /// and the event that would bring it may be late.
    PollNow,
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("order is already {0} and cannot be cancelled")]
    AlreadyFinal(OrderStatus),
    #[error("order details cannot change once fulfillment has started; the order is {0}")]
    FulfillmentStarted(OrderStatus),
    /// Pause or resume before the hand-over: there is no fulfillment yet.
    #[error("fulfillment has not started yet; the order is in {0}")]
    FulfillmentNotStarted(OrderStatus),
    #[error("{0}")]
    Invalid(String),
}

/// How an input was taken.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Applied (or it changed nothing); the order as it is now answers.
    Applied,
    /// A request the order's fulfillment decides (pause, resume): send it
    /// `signal` and answer its verdict.
    Forward {
        fulfillment_id: String,
        signal: Box<Message>,
    },
}

/// The answer to whoever sent the input.
pub type Reply = Result<Accepted, Rejection>;

/// What a decision is made with besides the state and the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub now: DateTime<Utc>,
}

impl Context {
    pub fn at(now: DateTime<Utc>) -> Self {
        Self { now }
    }
}

/// The outcome of one input.
pub type Decision = service_kit::workflow::Decision<OrderState, Effect, HistoryEvent, Reply>;

/// Taken, changing nothing.
fn nothing() -> Decision {
    Decision::unchanged(Ok(Accepted::Applied))
}

/// Refused, changing nothing.
fn rejected(rejection: Rejection) -> Decision {
    Decision::unchanged(Err(rejection))
}

impl Timer {
    pub fn activity_name(self) -> &'static str {
        match self {
            Self::CheckStock => "inventory",
            Self::ChargePayment => "payment",
        }
    }

    /// The status the order waits in while this activity runs.
    fn status(self) -> OrderStatus {
        match self {
            Self::CheckStock => OrderStatus::Pending,
            Self::ChargePayment => OrderStatus::PaymentProcessing,
        }
    }

    fn step(self) -> &'static str {
        match self {
            Self::CheckStock => STEP_RESERVE,
            Self::ChargePayment => STEP_PAYMENT,
        }
    }
}

/// The route of every signal to fulfillment.
pub fn fulfillment_signal_route() -> Route {
    Route::new(FULFILLMENT_SIGNALS_EXCHANGE, FULFILLMENT_SIGNAL_KEY, true)
}

/// What to do for an order loaded from the store (or just created): re-arm
/// the timer of its step, or resume following its fulfillment.
pub fn resume(state: &OrderState) -> Vec<Effect> {
    match state.status {
        OrderStatus::Pending => vec![Effect::Schedule(Timer::CheckStock)],
        OrderStatus::PaymentProcessing => vec![Effect::Schedule(Timer::ChargePayment)],
        OrderStatus::InventoryReserved | OrderStatus::PaymentConfirmed | OrderStatus::Confirmed => {
            vec![Effect::Advance]
        }
        OrderStatus::FulfillmentStarted
        | OrderStatus::FulfillmentInProgress
        | OrderStatus::Cancelling => {
            vec![Effect::StartPolling]
        }
        OrderStatus::Shipped | OrderStatus::Cancelled | OrderStatus::Failed => Vec::new(),
    }
}

/// Decides one input; the module of its group does.
pub fn decide(state: &OrderState, input: Input, ctx: Context) -> Decision {
    let now = ctx.now;
    match input {
        Input::InventoryChecked(result) => activities::stock_checked(state, result, now),
        Input::PaymentProcessed(result) => activities::payment_processed(state, result, now),
        Input::ActivityFailed {
            activity,
            error,
            policy,
        } => activities::failed(state, activity, &error, policy, now),
        Input::Advance => activities::advance(state, now),
        Input::Fulfillment {
            message_id,
            view,
            progress,
        } => fulfillment::reported(state, message_id, &view, progress, now),
        Input::FulfillmentNotFound => fulfillment::not_found(state, now),
        Input::DeadlinePassed => timers::deadline_passed(state, now),
        Input::Cancel { reason } => control::cancel(state, reason, now),
        Input::UpdateDetails(update) => control::update_details(state, update, now),
        Input::PauseFulfillment => {
            control::forward(state, Message::PauseFulfillment(PauseFulfillment {}))
        }
        Input::ResumeFulfillment => {
            control::forward(state, Message::ResumeFulfillment(ResumeFulfillment {}))
        }
    }
}

/// A decision being made: the next state, with what it sends and causes.
struct Draft {
    next: OrderState,
    messages: Vec<(Route, Envelope)>,
    effects: Vec<Effect>,
}

impl Draft {
    fn from(state: &OrderState) -> Self {
        let mut next = state.clone();
        next.recorded.clear();
        Self {
            next,
            messages: Vec::new(),
            effects: Vec::new(),
        }
    }

    fn send(&mut self, envelope: Envelope) {
        self.messages.push((fulfillment_signal_route(), envelope));
    }

    /// Closes the decision: a change of status gets its `StatusChanged`
    /// entry, the entries move out of the state, and `updated_at` moves
    /// when anything changed. A draft that changed nothing stores nothing
    /// and causes nothing.
    fn finish(self, state: &OrderState, now: DateTime<Utc>) -> Decision {
        let Self {
            mut next,
            messages,
            effects,
        } = self;
        if next.status != state.status {
            next.emit(
                "StatusChanged",
                None,
                serde_json::json!({ "from": state.status, "to": next.status }),
                now,
            );
        }
        let history = std::mem::take(&mut next.recorded);
        if next == *state {
            return nothing();
        }
        next.updated_at = now;
        Decision {
            state: Some(next),
            messages,
            effects,
            history,
            reply: Ok(Accepted::Applied),
        }
    }
}

/// The signal-with-start of the order's fulfillment; the same message id
/// every time it is sent, so a re-send is recognised as the same.
fn start_signal(state: &OrderState) -> (String, Envelope) {
    let fulfillment_id = fulfillment_workflow_id(&state.order_id);
    let request = FulfillmentRequest {
        order_id: state.order_id.clone(),
        customer_id: state.details.customer_id.clone(),
        customer_name: Some(state.details.customer_name.clone()),
        customer_email: Some(state.details.customer_email.clone()),
        items: state.details.items.clone(),
        shipping_address: state.details.shipping_address.clone(),
    };
    let envelope = Envelope::with_id(
        effect_message_id(&state.workflow_id, "start-fulfillment"),
        fulfillment_id.clone(),
        Message::StartFulfillment(StartFulfillment { request }),
    );
    (fulfillment_id, envelope)
}

/// The request to cancel the order's fulfillment (one message id per order).
fn cancel_signal(fulfillment_id: &str, state: &OrderState, reason: &str) -> Envelope {
    Envelope::with_id(
        effect_message_id(&state.workflow_id, "cancel-fulfillment"),
        fulfillment_id.to_owned(),
        Message::CancelFulfillment(CancelFulfillment {
            reason: reason.to_owned(),
        }),
    )
}

/// Undoes what was done: releases the reservation, refunds the payment.
/// Each happens at most once (the flags are cleared with it).
fn compensate(state: &mut OrderState, now: DateTime<Utc>) {
    if state.payment_captured {
        state.payment_captured = false;
        let detail = state.payment_id.as_ref().map(|p| format!("refunded {p}"));
        state.record(STEP_REFUND, StepStatus::Completed, detail, now);
        let detail = serde_json::json!({
            "paymentId": state.payment_id,
            "amount": state.details.total_amount(),
        });
        state.emit("PaymentRefunded", None, detail, now);
    }
    if state.reservation_held {
        state.reservation_held = false;
        let detail = Some(format!("released {}", state.reservation_ids.join(", ")));
        state.record(STEP_RELEASE, StepStatus::Completed, detail, now);
        let detail = serde_json::json!({ "reservationIds": state.reservation_ids });
        state.emit("StockReleased", None, detail, now);
    }
}

fn fail(state: &mut OrderState, reason: String, now: DateTime<Utc>) {
    compensate(state, now);
    state.status = OrderStatus::Failed;
    state.error = Some(reason);
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn resume_rearms_each_step() {
        let mut s = new_order();
        for (status, expected) in [
            (
                OrderStatus::Pending,
                vec![Effect::Schedule(Timer::CheckStock)],
            ),
            (OrderStatus::InventoryReserved, vec![Effect::Advance]),
            (
                OrderStatus::PaymentProcessing,
                vec![Effect::Schedule(Timer::ChargePayment)],
            ),
            (OrderStatus::Confirmed, vec![Effect::Advance]),
            (
                OrderStatus::FulfillmentInProgress,
                vec![Effect::StartPolling],
            ),
            (OrderStatus::Cancelled, vec![]),
        ] {
            s.status = status;
            assert_eq!(resume(&s), expected, "{status}");
        }
    }

    #[test]
    fn statuses_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).expect("json"), format!("\"{s}\""));
        }
        assert_eq!(OrderStatus::parse("SHIPPED!"), None);
    }

    #[test]
    fn timers_keep_their_stored_names() {
        for (timer, name) in [
            (Timer::CheckStock, "inventory"),
            (Timer::ChargePayment, "payment"),
        ] {
            assert_eq!(
                serde_json::to_value(timer).expect("json"),
                serde_json::json!(name)
            );
            assert_eq!(timer.activity_name(), name);
        }
    }

    #[test]
    fn total_is_exact_in_cents() {
        let mut d = details();
        d.items.push(shared_messages::messages::OrderItem {
            product_id: "product-2".into(),
            product_name: "Watch".into(),
            quantity: 1,
            price: 79.99,
        });
        assert_eq!(d.total_amount(), 139.97);
    }
}

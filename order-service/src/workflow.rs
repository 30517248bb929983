//! The order saga as a pure state machine: `(state, input) -> (state, effects)`.
//!
//! Nothing here touches the broker, the store or the clock on its own: the
//! actor ([`crate::actor`]) feeds inputs in (timer results, fulfillment
//! reports, HTTP commands), stores the new state together with the signals
//! it causes (one transaction, the outbox), and then performs the effects.
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
//! Every transition also yields its history entries (`Transition::events`),
//! stored in the same transaction as the state: an input that changes
//! nothing yields none.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use message_bus::Route;
use serde::{Deserialize, Serialize};
use shared_messages::history::HistoryEvent;
use shared_messages::ids::{effect_message_id, fulfillment_workflow_id};
use shared_messages::messages::{
    Address, CancelFulfillment, FulfillmentProgressView, FulfillmentRequest, FulfillmentStatus,
    FulfillmentStatusView, OrderItem, StartFulfillment,
};
use shared_messages::topology::{FULFILLMENT_SIGNALS_EXCHANGE, FULFILLMENT_SIGNAL_KEY};
use shared_messages::{Envelope, Message};
use uuid::Uuid;

/// How many processed event ids an order remembers. Duplicates arrive
/// close together (a redelivery after a lost ack), so a short memory is
/// enough; the monotonic status check covers anything older.
pub const REMEMBERED_MESSAGES: usize = 64;

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
    pub processed_messages: VecDeque<Uuid>,
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
    /// History entries of the transition being made; taken out into
    /// [`Transition::events`], never stored with the state.
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
            processed_messages: VecDeque::new(),
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
        self.processed_messages.push_back(id);
        while self.processed_messages.len() > REMEMBERED_MESSAGES {
            self.processed_messages.pop_front();
        }
    }
}

/// A new order and its first history entry (`OrderCreated`).
pub fn create(
    order_id: &str,
    details: OrderDetails,
    now: DateTime<Utc>,
) -> (OrderState, Vec<HistoryEvent>) {
    let mut state = OrderState::new(order_id, details, now);
    let detail = serde_json::json!({
        "orderId": order_id,
        "customerId": state.details.customer_id,
        "items": state.details.items.len(),
        "totalAmount": state.details.total_amount(),
    });
    state.emit("OrderCreated", None, detail, now);
    let events = std::mem::take(&mut state.recorded);
    (state, events)
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
}

/// The body of `PATCH /orders/{workflowId}`: any of these, at least one.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetailsUpdate {
    pub customer_email: Option<String>,
    pub customer_name: Option<String>,
    pub shipping_address: Option<Address>,
}

/// Timers the actor arms: the activities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Timer {
    /// The simulated inventory check (`INVENTORY_DELAY_MS`).
    Inventory,
    /// The simulated payment (`PAYMENT_DELAY_MS`).
    Payment,
}

/// What the actor does after storing a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Schedule(Timer),
    /// Feed [`Input::Advance`] right away.
    Advance,
    /// A signal to fulfillment; stored in the outbox with the state.
    Signal(Route, Box<Envelope>),
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
    #[error("{0}")]
    Invalid(String),
}

impl Timer {
    pub fn activity_name(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::Payment => "payment",
        }
    }

    /// The status the order waits in while this activity runs.
    fn status(self) -> OrderStatus {
        match self {
            Self::Inventory => OrderStatus::Pending,
            Self::Payment => OrderStatus::PaymentProcessing,
        }
    }

    fn step(self) -> &'static str {
        match self {
            Self::Inventory => STEP_RESERVE,
            Self::Payment => STEP_PAYMENT,
        }
    }
}

/// The result of one input: the new state (equal to the old one when the
/// input changed nothing), what to do next, and the history entries to
/// store with the state.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: OrderState,
    pub effects: Vec<Effect>,
    pub changed: bool,
    pub events: Vec<HistoryEvent>,
}

/// The route of every signal to fulfillment.
pub fn fulfillment_signal_route() -> Route {
    Route::new(FULFILLMENT_SIGNALS_EXCHANGE, FULFILLMENT_SIGNAL_KEY, true)
}

/// What to do for an order loaded from the store (or just created): re-arm
/// the timer of its step, or resume following its fulfillment.
pub fn resume(state: &OrderState) -> Vec<Effect> {
    match state.status {
        OrderStatus::Pending => vec![Effect::Schedule(Timer::Inventory)],
        OrderStatus::PaymentProcessing => vec![Effect::Schedule(Timer::Payment)],
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

/// Applies one input.
pub fn handle(
    state: &OrderState,
    input: Input,
    now: DateTime<Utc>,
) -> Result<Transition, Rejection> {
    let mut next = state.clone();
    next.recorded.clear();
    let mut effects = Vec::new();
    match input {
        Input::InventoryChecked(result) => {
            if state.status != OrderStatus::Pending {
                return Ok(unchanged(state));
            }
            next.retry = None;
            match result {
                Ok(reservations) => {
                    next.emit(
                        "StockReserved",
                        None,
                        serde_json::json!({ "reservationIds": reservations }),
                        now,
                    );
                    next.reservation_ids = reservations;
                    next.reservation_held = true;
                    next.status = OrderStatus::InventoryReserved;
                    next.record(STEP_RESERVE, StepStatus::Completed, None, now);
                    effects.push(Effect::Advance);
                }
                Err(reason) => {
                    next.emit(
                        "StockUnavailable",
                        None,
                        serde_json::json!({ "reason": reason }),
                        now,
                    );
                    next.record(STEP_RESERVE, StepStatus::Failed, Some(reason.clone()), now);
                    fail(&mut next, reason, now);
                }
            }
        }
        Input::PaymentProcessed(result) => {
            if state.status != OrderStatus::PaymentProcessing {
                return Ok(unchanged(state));
            }
            next.retry = None;
            match result {
                Ok(payment_id) => {
                    next.emit(
                        "PaymentCharged",
                        None,
                        serde_json::json!({
                            "paymentId": payment_id,
                            "amount": state.details.total_amount(),
                        }),
                        now,
                    );
                    next.payment_id = Some(payment_id);
                    next.payment_captured = true;
                    next.status = OrderStatus::PaymentConfirmed;
                    next.record(STEP_PAYMENT, StepStatus::Completed, None, now);
                    effects.push(Effect::Advance);
                }
                Err(reason) => {
                    next.emit(
                        "PaymentDeclined",
                        None,
                        serde_json::json!({ "reason": reason }),
                        now,
                    );
                    next.record(STEP_PAYMENT, StepStatus::Failed, Some(reason.clone()), now);
                    fail(&mut next, reason, now);
                }
            }
        }
        Input::ActivityFailed {
            activity,
            error,
            policy,
        } => {
            if state.status != activity.status() {
                return Ok(unchanged(state));
            }
            let failed = state
                .retry
                .as_ref()
                .filter(|r| r.activity == activity)
                .map_or(0, |r| r.attempt)
                + 1;
            let retry = policy.allows_retry_after(failed);
            let due_at = now
                + chrono::Duration::from_std(policy.delay_after(failed))
                    .unwrap_or_else(|_| chrono::Duration::seconds(30));
            next.emit(
                "ActivityAttemptFailed",
                None,
                serde_json::json!({
                    "activity": activity.activity_name(),
                    "attempt": failed,
                    "error": error,
                    "retry": retry,
                    "nextAttemptAt": retry.then_some(due_at),
                }),
                now,
            );
            if retry {
                next.retry = Some(PendingRetry {
                    activity,
                    attempt: failed,
                    due_at,
                });
                effects.push(Effect::Schedule(activity));
            } else {
                next.retry = None;
                let reason = format!(
                    "{} failed after {failed} attempts: {error}",
                    activity.activity_name()
                );
                next.record(
                    activity.step(),
                    StepStatus::Failed,
                    Some(reason.clone()),
                    now,
                );
                fail(&mut next, reason, now);
            }
        }
        Input::Advance => match state.status {
            OrderStatus::InventoryReserved => {
                next.status = OrderStatus::PaymentProcessing;
                effects.push(Effect::Schedule(Timer::Payment));
            }
            OrderStatus::PaymentConfirmed => {
                next.status = OrderStatus::Confirmed;
                next.record(STEP_CONFIRM, StepStatus::Completed, None, now);
                effects.push(Effect::Advance);
            }
            OrderStatus::Confirmed => {
                let (fulfillment_id, envelope) = start_signal(state);
                next.emit(
                    "FulfillmentRequested",
                    Some(envelope.message_id),
                    serde_json::json!({ "fulfillmentWorkflowId": fulfillment_id }),
                    now,
                );
                next.fulfillment_workflow_id = Some(fulfillment_id);
                next.status = OrderStatus::FulfillmentStarted;
                next.record(STEP_START_FULFILLMENT, StepStatus::Completed, None, now);
                effects.push(Effect::Signal(
                    fulfillment_signal_route(),
                    Box::new(envelope),
                ));
                effects.push(Effect::StartPolling);
            }
            _ => return Ok(unchanged(state)),
        },
        Input::FulfillmentNotFound => {
            if !state.status.is_waiting_on_fulfillment() {
                return Ok(unchanged(state));
            }
            if state
                .start_resent_at
                .is_some_and(|at| now - at < chrono::Duration::seconds(START_RESEND_INTERVAL_SECS))
            {
                return Ok(unchanged(state));
            }
            next.start_resent_at = Some(now);
            let (fulfillment_id, envelope) = start_signal(state);
            next.emit(
                "FulfillmentRequested",
                Some(envelope.message_id),
                serde_json::json!({
                    "fulfillmentWorkflowId": fulfillment_id,
                    "resent": true,
                    "why": "the fulfillment was not found",
                }),
                now,
            );
            effects.push(Effect::Signal(
                fulfillment_signal_route(),
                Box::new(envelope),
            ));
            if state.status == OrderStatus::Cancelling {
                // The cancel may have been refused for want of a fulfillment:
                // ask again, after the start.
                let reason = state
                    .cancellation_reason
                    .clone()
                    .unwrap_or_else(|| "Cancelled on request".into());
                let envelope = cancel_signal(&fulfillment_id, state, &reason);
                effects.push(Effect::Signal(
                    fulfillment_signal_route(),
                    Box::new(envelope),
                ));
            }
        }
        Input::DeadlinePassed => {
            if !state.status.is_waiting_on_fulfillment() || state.overdue {
                return Ok(unchanged(state));
            }
            next.overdue = true;
            next.emit(
                "FulfillmentOverdue",
                None,
                serde_json::json!({
                    "fulfillmentWorkflowId": state.fulfillment_workflow_id,
                    "fulfillmentStatus": state.fulfillment_status,
                }),
                now,
            );
        }
        Input::Fulfillment {
            message_id,
            view,
            progress,
        } => {
            if let Some(id) = message_id {
                if state.processed_messages.contains(&id) {
                    return Ok(unchanged(state));
                }
            }
            if state.fulfillment_workflow_id.as_deref()
                != Some(view.fulfillment_workflow_id.as_str())
            {
                // Not handed over yet, or another fulfillment.
                return Ok(unchanged(state));
            }
            if state.status == OrderStatus::Cancelled {
                // The order is over, but its fulfillment may still be
                // winding down: keep the order's view of it current,
                // nothing else.
                if is_stale(state, &view) {
                    return Ok(unchanged(state));
                }
                if let Some(id) = message_id {
                    next.remember(id);
                }
                next.fulfillment_status = Some(view.status);
                next.fulfillment_updated_at = Some(view.updated_at);
                if let Some(progress) = progress {
                    next.fulfillment_progress = Some(*progress);
                }
                return Ok(finish(state, next, effects, now));
            }
            if !state.status.is_waiting_on_fulfillment() {
                // Shipped and failed orders take nothing more.
                return Ok(unchanged(state));
            }
            if let Some(id) = message_id {
                next.remember(id);
            }
            if is_stale(state, &view) {
                return Ok(finish(state, next, effects, now));
            }
            if state.fulfillment_status != Some(view.status) {
                next.emit(
                    "FulfillmentStatusReported",
                    message_id,
                    serde_json::json!({
                        "fulfillmentStatus": view.status,
                        "via": if message_id.is_some() { "event" } else { "poll" },
                    }),
                    now,
                );
            }
            next.fulfillment_status = Some(view.status);
            next.fulfillment_updated_at = Some(view.updated_at);
            if let Some(progress) = progress {
                next.fulfillment_progress = Some(*progress);
            }
            if view.tracking_number.is_some() {
                next.tracking_number = view.tracking_number.clone();
            }
            let cancelling = state.status == OrderStatus::Cancelling;
            match view.status {
                FulfillmentStatus::Waiting => {}
                FulfillmentStatus::Picking
                | FulfillmentStatus::Packing
                | FulfillmentStatus::ReadyToShip
                | FulfillmentStatus::Paused => {
                    if next.status == OrderStatus::FulfillmentStarted {
                        next.status = OrderStatus::FulfillmentInProgress;
                        next.record(STEP_FULFILLMENT, StepStatus::Completed, None, now);
                    }
                }
                FulfillmentStatus::Shipped => {
                    if next.step_done(STEP_FULFILLMENT).is_none() {
                        next.record(STEP_FULFILLMENT, StepStatus::Completed, None, now);
                    }
                    if cancelling {
                        // The goods left: the cancel lost, nothing is undone.
                        let refusal = format!(
                            "the cancel was refused: fulfillment {} has already shipped{}",
                            view.fulfillment_workflow_id,
                            view.tracking_number
                                .as_deref()
                                .map(|t| format!(" (tracking number {t})"))
                                .unwrap_or_default()
                        );
                        next.emit(
                            "CancelRefused",
                            message_id,
                            serde_json::json!({
                                "reason": refusal,
                                "requestedReason": state.cancellation_reason,
                            }),
                            now,
                        );
                        next.cancel_refused = Some(refusal);
                        next.cancellation_reason = None;
                    }
                    next.status = OrderStatus::Shipped;
                    next.record(STEP_SHIP, StepStatus::Completed, None, now);
                }
                FulfillmentStatus::Cancelled => {
                    // Our own request confirmed (keep its reason), or a
                    // cancel made on the fulfillment's side (take its).
                    let reason = if cancelling {
                        state.cancellation_reason.clone()
                    } else {
                        None
                    }
                    .or_else(|| view.cancellation_reason.clone())
                    .unwrap_or_else(|| "fulfillment was cancelled".into());
                    next.emit(
                        "FulfillmentCancelled",
                        message_id,
                        serde_json::json!({ "reason": view.cancellation_reason }),
                        now,
                    );
                    compensate(&mut next, now);
                    next.status = OrderStatus::Cancelled;
                    next.cancellation_reason = Some(reason);
                }
                FulfillmentStatus::Failed => {
                    let reason = view
                        .error
                        .clone()
                        .unwrap_or_else(|| "fulfillment failed".into());
                    next.record(
                        STEP_FULFILLMENT,
                        StepStatus::Failed,
                        Some(reason.clone()),
                        now,
                    );
                    fail(&mut next, format!("fulfillment failed: {reason}"), now);
                }
            }
        }
        Input::Cancel { reason } => {
            if state.status.is_final() {
                return Err(Rejection::AlreadyFinal(state.status));
            }
            if state.status == OrderStatus::Cancelling {
                // Asked already; the fulfillment's answer decides.
                return Ok(unchanged(state));
            }
            let reason = reason
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "Cancelled on request".into());
            match (
                state.status.is_waiting_on_fulfillment(),
                &state.fulfillment_workflow_id,
            ) {
                (true, Some(fulfillment_id)) => {
                    // The fulfillment owns the goods: ask, and undo nothing
                    // until it confirms.
                    let envelope = cancel_signal(fulfillment_id, state, &reason);
                    next.emit(
                        "CancelRequested",
                        Some(envelope.message_id),
                        serde_json::json!({
                            "reason": reason,
                            "fulfillmentWorkflowId": fulfillment_id,
                        }),
                        now,
                    );
                    effects.push(Effect::Signal(
                        fulfillment_signal_route(),
                        Box::new(envelope),
                    ));
                    effects.push(Effect::PollNow);
                    next.record(STEP_CANCEL_FULFILLMENT, StepStatus::Completed, None, now);
                    next.status = OrderStatus::Cancelling;
                    next.cancellation_reason = Some(reason);
                }
                _ => {
                    next.emit(
                        "CancelRequested",
                        None,
                        serde_json::json!({ "reason": reason }),
                        now,
                    );
                    next.retry = None;
                    compensate(&mut next, now);
                    next.status = OrderStatus::Cancelled;
                    next.cancellation_reason = Some(reason);
                }
            }
        }
        Input::UpdateDetails(update) => {
            if state.status.is_final()
                || state.status.is_waiting_on_fulfillment()
                || state.fulfillment_workflow_id.is_some()
            {
                return Err(Rejection::FulfillmentStarted(state.status));
            }
            let mut changed_fields = Vec::new();
            if let Some(email) = update.customer_email {
                crate::validation::email(&email).map_err(Rejection::Invalid)?;
                next.details.customer_email = email;
                changed_fields.push("customerEmail");
            }
            if let Some(name) = update.customer_name {
                if name.trim().is_empty() {
                    return Err(Rejection::Invalid("customerName must not be empty".into()));
                }
                next.details.customer_name = name;
                changed_fields.push("customerName");
            }
            if let Some(address) = update.shipping_address {
                address.validate().map_err(Rejection::Invalid)?;
                next.details.shipping_address = address;
                changed_fields.push("shippingAddress");
            }
            if next.details != state.details {
                next.emit(
                    "DetailsUpdated",
                    None,
                    serde_json::json!({ "fields": changed_fields }),
                    now,
                );
            }
        }
    }
    Ok(finish(state, next, effects, now))
}

/// Closes a transition: a change of status gets its `StatusChanged`
/// entry, the entries move out of the state, and `updated_at` moves when
/// anything changed.
fn finish(
    state: &OrderState,
    mut next: OrderState,
    effects: Vec<Effect>,
    now: DateTime<Utc>,
) -> Transition {
    if next.status != state.status {
        next.emit(
            "StatusChanged",
            None,
            serde_json::json!({ "from": state.status, "to": next.status }),
            now,
        );
    }
    let events = std::mem::take(&mut next.recorded);
    let changed = next != *state;
    if changed {
        next.updated_at = now;
    }
    Transition {
        state: next,
        effects,
        changed,
        events,
    }
}

fn unchanged(state: &OrderState) -> Transition {
    let mut state = state.clone();
    state.recorded.clear();
    Transition {
        state,
        effects: Vec::new(),
        changed: false,
        events: Vec::new(),
    }
}

/// Rank of a fulfillment status along its forward path; a report never
/// moves the order's view backwards.
fn rank(status: FulfillmentStatus) -> u8 {
    match status {
        FulfillmentStatus::Waiting => 0,
        FulfillmentStatus::Picking | FulfillmentStatus::Paused => 1,
        FulfillmentStatus::Packing => 2,
        FulfillmentStatus::ReadyToShip => 3,
        FulfillmentStatus::Shipped | FulfillmentStatus::Cancelled | FulfillmentStatus::Failed => 4,
    }
}

/// A report older than what is known, or one that would move a final
/// fulfillment backwards, changes nothing. A final status (shipped,
/// cancelled, failed) always applies over a non-final one: a fulfillment
/// never leaves it, so it is the truth even when an event of a step that
/// was in flight carries a later time.
fn is_stale(state: &OrderState, view: &FulfillmentStatusView) -> bool {
    if let Some(known) = state.fulfillment_status {
        if known.is_final() {
            return true;
        }
        if view.status.is_final() {
            return false;
        }
        if let Some(at) = state.fulfillment_updated_at {
            if view.updated_at < at {
                return true;
            }
            if view.updated_at == at && rank(view.status) < rank(known) {
                return true;
            }
        }
    }
    false
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
    use super::*;
    use chrono::Duration;

    pub(crate) fn details() -> OrderDetails {
        OrderDetails {
            customer_id: "c-1".into(),
            customer_email: "a@example.com".into(),
            customer_name: "Ann".into(),
            items: vec![OrderItem {
                product_id: "product-1".into(),
                product_name: "Headphones".into(),
                quantity: 2,
                price: 29.99,
            }],
            shipping_address: Address {
                street: "1 Main St".into(),
                city: "Town".into(),
                state: "CA".into(),
                zip_code: "90210".into(),
                country: "USA".into(),
            },
            payment_method: "credit_card".into(),
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("valid")
            .with_timezone(&Utc)
    }

    fn step(state: &OrderState, input: Input) -> Transition {
        handle(state, input, t0() + Duration::seconds(1)).expect("accepted")
    }

    fn new_order() -> OrderState {
        OrderState::new("ORD-1", details(), t0())
    }

    /// Drives an order to FULFILLMENT_STARTED, checking each stop.
    fn started() -> OrderState {
        let s = new_order();
        assert_eq!(resume(&s), vec![Effect::Schedule(Timer::Inventory)]);
        let t = step(
            &s,
            Input::InventoryChecked(Ok(vec!["RES-ORD-1-product-1".into()])),
        );
        assert_eq!(t.state.status, OrderStatus::InventoryReserved);
        assert_eq!(t.effects, vec![Effect::Advance]);
        let t = step(&t.state, Input::Advance);
        assert_eq!(t.state.status, OrderStatus::PaymentProcessing);
        assert_eq!(t.effects, vec![Effect::Schedule(Timer::Payment)]);
        let t = step(&t.state, Input::PaymentProcessed(Ok("PAY-ORD-1".into())));
        assert_eq!(t.state.status, OrderStatus::PaymentConfirmed);
        let t = step(&t.state, Input::Advance);
        assert_eq!(t.state.status, OrderStatus::Confirmed);
        let t = step(&t.state, Input::Advance);
        assert_eq!(t.state.status, OrderStatus::FulfillmentStarted);
        assert_eq!(
            t.state.fulfillment_workflow_id.as_deref(),
            Some("fulfillment-ORD-1")
        );
        let signals: Vec<&Envelope> = t
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Signal(_, env) => Some(env.as_ref()),
                _ => None,
            })
            .collect();
        assert_eq!(
            signals.len(),
            1,
            "one signal-with-start, never two messages"
        );
        assert_eq!(signals[0].message_type(), "StartFulfillment");
        assert_eq!(signals[0].entity_id, "fulfillment-ORD-1");
        assert_eq!(
            signals[0].message_id,
            effect_message_id("order-workflow-ORD-1", "start-fulfillment")
        );
        assert!(t.effects.contains(&Effect::StartPolling));
        t.state
    }

    fn view(status: FulfillmentStatus, at_secs: i64) -> Box<FulfillmentStatusView> {
        Box::new(FulfillmentStatusView {
            fulfillment_workflow_id: "fulfillment-ORD-1".into(),
            order_id: "ORD-1".into(),
            status,
            current_step: "x".into(),
            tracking_number: (status == FulfillmentStatus::Shipped).then(|| "TRK123".into()),
            shipping_carrier: None,
            estimated_delivery: None,
            is_paused: status == FulfillmentStatus::Paused,
            shipping_address: None,
            cancellation_reason: (status == FulfillmentStatus::Cancelled)
                .then(|| "warehouse closed".into()),
            error: (status == FulfillmentStatus::Failed).then(|| "label printer".into()),
            created_at: t0(),
            updated_at: t0() + Duration::seconds(at_secs),
        })
    }

    fn event(status: FulfillmentStatus, at_secs: i64) -> (Uuid, Input) {
        let id = Uuid::new_v4();
        (
            id,
            Input::Fulfillment {
                message_id: Some(id),
                view: view(status, at_secs),
                progress: None,
            },
        )
    }

    #[test]
    fn happy_path_ships_with_tracking_number() {
        let s = started();
        let (_, e) = event(FulfillmentStatus::Picking, 10);
        let t = step(&s, e);
        assert_eq!(t.state.status, OrderStatus::FulfillmentInProgress);
        let (_, e) = event(FulfillmentStatus::Shipped, 20);
        let t = step(&t.state, e);
        assert_eq!(t.state.status, OrderStatus::Shipped);
        assert_eq!(t.state.tracking_number.as_deref(), Some("TRK123"));
        assert_eq!(resume(&t.state), vec![]);
        for name in MAIN_STEPS {
            assert!(t.state.step_done(name).is_some(), "{name} recorded");
        }
    }

    #[test]
    fn waiting_keeps_the_order_started() {
        let s = started();
        let (_, e) = event(FulfillmentStatus::Waiting, 5);
        let t = step(&s, e);
        assert_eq!(t.state.status, OrderStatus::FulfillmentStarted);
    }

    #[test]
    fn out_of_order_and_duplicate_events_never_move_backwards() {
        let s = started();
        let (_, shipped) = event(FulfillmentStatus::Shipped, 20);
        let t = step(&s, shipped.clone());
        let shipped_state = t.state;
        // an older PICKING after SHIPPED changes nothing (the order is final)
        let (_, picking) = event(FulfillmentStatus::Picking, 10);
        let t = step(&shipped_state, picking);
        assert!(!t.changed);
        assert_eq!(t.state.status, OrderStatus::Shipped);

        // while in progress: a stale event is ignored
        let (_, packing) = event(FulfillmentStatus::Packing, 15);
        let in_progress = step(&s, packing).state;
        let (_, old) = event(FulfillmentStatus::Picking, 12);
        let t = step(&in_progress, old);
        assert_eq!(t.state.fulfillment_status, Some(FulfillmentStatus::Packing));

        // the same event twice: the second changes nothing
        let (id, e) = event(FulfillmentStatus::ReadyToShip, 16);
        let once = step(&in_progress, e.clone()).state;
        assert!(once.processed_messages.contains(&id));
        let twice = step(&once, e);
        assert!(!twice.changed);
    }

    #[test]
    fn processed_ids_are_bounded() {
        let mut s = started();
        for i in 0..(REMEMBERED_MESSAGES as i64 + 10) {
            let (_, e) = event(FulfillmentStatus::Picking, 10 + i);
            s = step(&s, e).state;
        }
        assert_eq!(s.processed_messages.len(), REMEMBERED_MESSAGES);
    }

    #[test]
    fn paused_then_resumed_fulfillment_is_followed() {
        let s = started();
        let s = step(&s, event(FulfillmentStatus::Picking, 10).1).state;
        let s = step(&s, event(FulfillmentStatus::Paused, 11).1).state;
        assert_eq!(s.fulfillment_status, Some(FulfillmentStatus::Paused));
        let s = step(&s, event(FulfillmentStatus::Picking, 12).1).state;
        assert_eq!(s.fulfillment_status, Some(FulfillmentStatus::Picking));
        assert_eq!(s.status, OrderStatus::FulfillmentInProgress);
    }

    #[test]
    fn poll_answers_apply_like_events() {
        let s = started();
        let t = step(
            &s,
            Input::Fulfillment {
                message_id: None,
                view: view(FulfillmentStatus::Shipped, 30),
                progress: None,
            },
        );
        assert_eq!(t.state.status, OrderStatus::Shipped);
        assert!(t.state.processed_messages.is_empty());
    }

    #[test]
    fn decline_fails_and_releases_the_reservation() {
        let s = new_order();
        let s = step(
            &s,
            Input::InventoryChecked(Ok(vec!["RES-ORD-1-product-1".into()])),
        )
        .state;
        let s = step(&s, Input::Advance).state;
        let t = step(&s, Input::PaymentProcessed(Err("card declined".into())));
        assert_eq!(t.state.status, OrderStatus::Failed);
        assert_eq!(t.state.error.as_deref(), Some("card declined"));
        assert!(!t.state.reservation_held);
        assert!(t.state.step_done(STEP_RELEASE).is_some());
        assert!(
            t.state.step_done(STEP_REFUND).is_none(),
            "nothing was charged"
        );
        assert!(t.effects.is_empty());
    }

    #[test]
    fn shortage_fails_without_compensation() {
        let s = new_order();
        let t = step(
            &s,
            Input::InventoryChecked(Err("insufficient stock for product-5".into())),
        );
        assert_eq!(t.state.status, OrderStatus::Failed);
        assert_eq!(
            t.state.error.as_deref(),
            Some("insufficient stock for product-5")
        );
        assert!(t.state.step_done(STEP_RELEASE).is_none());
    }

    #[test]
    fn cancel_before_fulfillment_compensates_without_signal() {
        let s = new_order();
        let s = step(&s, Input::InventoryChecked(Ok(vec!["R".into()]))).state;
        let s = step(&s, Input::Advance).state;
        let s = step(&s, Input::PaymentProcessed(Ok("PAY-ORD-1".into()))).state;
        let t = step(&s, Input::Cancel { reason: None });
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert_eq!(
            t.state.cancellation_reason.as_deref(),
            Some("Cancelled on request")
        );
        assert!(t.state.step_done(STEP_REFUND).is_some());
        assert!(t.state.step_done(STEP_RELEASE).is_some());
        assert!(t.effects.is_empty());
        // a late timer result changes nothing
        let late = step(&t.state, Input::Advance);
        assert!(!late.changed);
    }

    fn kinds(t: &Transition) -> Vec<&str> {
        t.events.iter().map(|e| e.kind.as_str()).collect()
    }

    fn cancel(state: &OrderState, reason: &str) -> Transition {
        step(
            state,
            Input::Cancel {
                reason: Some(reason.into()),
            },
        )
    }

    #[test]
    fn cancel_during_fulfillment_asks_and_undoes_nothing_yet() {
        let s = started();
        let t = cancel(&s, "Customer requested cancellation");
        assert_eq!(t.state.status, OrderStatus::Cancelling);
        assert!(
            t.state.payment_captured,
            "no refund before the fulfillment confirms"
        );
        assert!(t.state.reservation_held);
        let Some(Effect::Signal(route, env)) = t.effects.first() else {
            panic!("expected a signal, got {:?}", t.effects);
        };
        assert_eq!(route, &fulfillment_signal_route());
        assert_eq!(
            env.message_id,
            effect_message_id("order-workflow-ORD-1", "cancel-fulfillment")
        );
        assert!(
            matches!(&env.message, Message::CancelFulfillment(c) if c.reason == "Customer requested cancellation")
        );
        assert_eq!(kinds(&t), vec!["CancelRequested", "StatusChanged"]);
        assert_eq!(t.events[0].message_id, Some(env.message_id));
        assert_eq!(resume(&t.state), vec![Effect::StartPolling]);
        // asked again: nothing new
        let again = cancel(&t.state, "twice");
        assert!(!again.changed);
        assert!(again.events.is_empty());
        // details cannot change while cancelling
        assert!(handle(
            &t.state,
            Input::UpdateDetails(DetailsUpdate {
                customer_name: Some("B".into()),
                ..Default::default()
            }),
            t0()
        )
        .is_err());
    }

    #[test]
    fn each_status_answers_cancel_as_the_goods_allow() {
        // before the hand-over: compensated at once
        let pending = new_order();
        let t = cancel(&pending, "r");
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert!(t.effects.is_empty());
        assert_eq!(kinds(&t), vec!["CancelRequested", "StatusChanged"]);
        let reserved = step(&pending, Input::InventoryChecked(Ok(vec!["R".into()]))).state;
        let processing = step(&reserved, Input::Advance).state;
        let confirmed_payment =
            step(&processing, Input::PaymentProcessed(Ok("PAY-ORD-1".into()))).state;
        let confirmed = step(&confirmed_payment, Input::Advance).state;
        assert_eq!(confirmed.status, OrderStatus::Confirmed);
        for (s, refunds) in [
            (&reserved, false),
            (&processing, false),
            (&confirmed_payment, true),
            (&confirmed, true),
        ] {
            let t = cancel(s, "r");
            assert_eq!(t.state.status, OrderStatus::Cancelled, "{}", s.status);
            assert!(!t.state.reservation_held && !t.state.payment_captured);
            assert_eq!(
                kinds(&t).contains(&"PaymentRefunded"),
                refunds,
                "{}",
                s.status
            );
            assert!(kinds(&t).contains(&"StockReleased"));
            assert!(t.effects.is_empty(), "nothing to ask: no fulfillment yet");
        }
        // after it: a request
        let started = started();
        let in_progress = step(&started, event(FulfillmentStatus::Picking, 10).1).state;
        for s in [&started, &in_progress] {
            let t = cancel(s, "r");
            assert_eq!(t.state.status, OrderStatus::Cancelling, "{}", s.status);
            assert!(t.state.payment_captured);
        }
        // final: refused
        let shipped = step(&started, event(FulfillmentStatus::Shipped, 9).1).state;
        let cancelled = cancel(&pending, "r").state;
        let failed = step(&pending, Input::InventoryChecked(Err("x".into()))).state;
        for s in [&shipped, &cancelled, &failed] {
            assert_eq!(
                handle(s, Input::Cancel { reason: None }, t0()),
                Err(Rejection::AlreadyFinal(s.status))
            );
        }
    }

    #[test]
    fn a_confirmed_cancel_compensates_once_with_the_requested_reason() {
        let s = started();
        let s = step(&s, event(FulfillmentStatus::Picking, 10).1).state;
        let cancelling = cancel(&s, "changed my mind").state;
        let (id, confirmed) = event(FulfillmentStatus::Cancelled, 20);
        let t = step(&cancelling, confirmed.clone());
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert_eq!(
            t.state.cancellation_reason.as_deref(),
            Some("changed my mind")
        );
        assert!(!t.state.payment_captured && !t.state.reservation_held);
        let k = kinds(&t);
        assert_eq!(k.iter().filter(|k| **k == "PaymentRefunded").count(), 1);
        assert_eq!(k.iter().filter(|k| **k == "StockReleased").count(), 1);
        assert_eq!(k.last(), Some(&"StatusChanged"));
        assert!(t.effects.is_empty());
        // the same event again, or a poll saying the same: nothing
        let again = step(&t.state, confirmed);
        assert!(!again.changed && again.events.is_empty());
        assert!(t.state.processed_messages.contains(&id));
        let polled = step(
            &t.state,
            Input::Fulfillment {
                message_id: None,
                view: view(FulfillmentStatus::Cancelled, 20),
                progress: None,
            },
        );
        assert!(!polled.changed && polled.events.is_empty());
        // an older report after it: nothing
        let late = step(&t.state, event(FulfillmentStatus::Picking, 15).1);
        assert!(!late.changed);
    }

    #[test]
    fn shipped_while_cancelling_ends_shipped_and_refunds_nothing() {
        let s = started();
        let cancelling = cancel(&s, "too late").state;
        let t = step(&cancelling, event(FulfillmentStatus::Shipped, 30).1);
        assert_eq!(t.state.status, OrderStatus::Shipped);
        assert!(t.state.payment_captured, "nothing refunded");
        assert!(t.state.reservation_held);
        assert_eq!(t.state.cancellation_reason, None);
        assert!(t
            .state
            .cancel_refused
            .as_deref()
            .is_some_and(|r| r.contains("shipped")));
        let k = kinds(&t);
        assert!(k.contains(&"CancelRefused"));
        assert!(!k.contains(&"PaymentRefunded"));
        assert_eq!(t.state.tracking_number.as_deref(), Some("TRK123"));
        // a cancelled report arriving after (out of order) changes nothing
        let late = step(&t.state, event(FulfillmentStatus::Cancelled, 40).1);
        assert!(!late.changed);
        // progress reports while cancelling keep it cancelling
        let t = step(&cancelling, event(FulfillmentStatus::Packing, 20).1);
        assert_eq!(t.state.status, OrderStatus::Cancelling);
        assert!(t.state.payment_captured);
        assert_eq!(t.state.fulfillment_status, Some(FulfillmentStatus::Packing));
    }

    #[test]
    fn a_final_report_applies_over_a_later_step_event() {
        let s = started();
        let cancelling = cancel(&s, "r").state;
        // a step that was in flight reports with a later time...
        let late_step = step(&cancelling, event(FulfillmentStatus::ReadyToShip, 30).1).state;
        // ...but the fulfillment is cancelled: the poll says so, and wins
        let t = step(
            &late_step,
            Input::Fulfillment {
                message_id: None,
                view: view(FulfillmentStatus::Cancelled, 20),
                progress: None,
            },
        );
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert!(!t.state.payment_captured);
    }

    #[test]
    fn a_failed_fulfillment_while_cancelling_fails_and_compensates() {
        let cancelling = cancel(&started(), "r").state;
        let t = step(&cancelling, event(FulfillmentStatus::Failed, 9).1);
        assert_eq!(t.state.status, OrderStatus::Failed);
        assert!(!t.state.payment_captured);
    }

    #[test]
    fn a_cancelled_order_still_records_its_fulfillment_winding_down() {
        let s = started();
        let s = step(&s, event(FulfillmentStatus::Picking, 10).1).state;
        let cancelled = step(
            &cancel(&s, "changed my mind").state,
            event(FulfillmentStatus::Cancelled, 20).1,
        )
        .state;
        let steps = cancelled.history.len();
        let t = step(&cancelled, event(FulfillmentStatus::Cancelled, 25).1);
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert_eq!(t.state.history.len(), steps, "no second compensation");
        assert!(t.effects.is_empty());
        assert!(t.events.is_empty());
    }

    #[test]
    fn not_found_resends_the_start_with_the_same_id() {
        let s = started();
        let t = step(&s, Input::FulfillmentNotFound);
        let ids: Vec<Uuid> = t
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Signal(_, env) => Some(env.message_id),
                _ => None,
            })
            .collect();
        assert_eq!(
            ids,
            vec![effect_message_id(
                "order-workflow-ORD-1",
                "start-fulfillment"
            )]
        );
        assert_eq!(kinds(&t), vec!["FulfillmentRequested"]);
        assert_eq!(t.state.status, OrderStatus::FulfillmentStarted);
        // not again at every poll: once per START_RESEND_INTERVAL_SECS
        let soon = handle(
            &t.state,
            Input::FulfillmentNotFound,
            t0() + Duration::seconds(30),
        )
        .expect("accepted");
        assert!(!soon.changed && soon.effects.is_empty());
        let later = handle(
            &t.state,
            Input::FulfillmentNotFound,
            t0() + Duration::seconds(1 + START_RESEND_INTERVAL_SECS),
        )
        .expect("accepted");
        assert_eq!(kinds(&later), vec!["FulfillmentRequested"]);
        // while cancelling, the cancel follows the start
        let c = cancel(&s, "r").state;
        let t = step(&c, Input::FulfillmentNotFound);
        let types: Vec<&str> = t
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Signal(_, env) => Some(env.message_type()),
                _ => None,
            })
            .collect();
        assert_eq!(types, vec!["StartFulfillment", "CancelFulfillment"]);
        // before the hand-over or once final: nothing
        assert!(!step(&new_order(), Input::FulfillmentNotFound).changed);
        let shipped = step(&s, event(FulfillmentStatus::Shipped, 9).1).state;
        assert!(!step(&shipped, Input::FulfillmentNotFound).changed);
    }

    #[test]
    fn the_deadline_marks_an_order_overdue_once() {
        let s = started();
        let t = step(&s, Input::DeadlinePassed);
        assert!(t.state.overdue);
        assert_eq!(t.state.status, OrderStatus::FulfillmentStarted);
        assert_eq!(kinds(&t), vec!["FulfillmentOverdue"]);
        assert!(!step(&t.state, Input::DeadlinePassed).changed);
        assert!(!step(&new_order(), Input::DeadlinePassed).changed);
    }

    fn policy(max: u32) -> RetryPolicy {
        RetryPolicy {
            initial_interval: std::time::Duration::from_millis(100),
            backoff_coefficient: 2.0,
            maximum_interval: std::time::Duration::from_millis(300),
            maximum_attempts: max,
        }
    }

    #[test]
    fn a_policy_backs_off_to_its_cap() {
        let p = policy(3);
        let ms = |n| p.delay_after(n).as_millis();
        assert_eq!((ms(1), ms(2), ms(3), ms(9)), (100, 200, 300, 300));
        assert!(p.allows_retry_after(2));
        assert!(!p.allows_retry_after(3));
        assert!(policy(0).allows_retry_after(1_000_000));
    }

    #[test]
    fn transient_failures_retry_then_succeed_or_give_up() {
        let s = new_order();
        let failed = |s: &OrderState| {
            step(
                s,
                Input::ActivityFailed {
                    activity: Timer::Inventory,
                    error: "503".into(),
                    policy: policy(3),
                },
            )
        };
        let t = failed(&s);
        assert_eq!(t.state.status, OrderStatus::Pending);
        assert_eq!(t.effects, vec![Effect::Schedule(Timer::Inventory)]);
        let retry = t.state.retry.clone().expect("a pending retry");
        assert_eq!(retry.attempt, 1);
        assert_eq!(
            retry.due_at,
            t0() + Duration::seconds(1) + Duration::milliseconds(100)
        );
        assert_eq!(kinds(&t), vec!["ActivityAttemptFailed"]);
        assert_eq!(t.events[0].detail["attempt"], 1);
        // the pending retry is stored: a restart re-arms it
        assert_eq!(resume(&t.state), vec![Effect::Schedule(Timer::Inventory)]);
        let t2 = failed(&t.state);
        assert_eq!(t2.state.retry.as_ref().map(|r| r.attempt), Some(2));
        // success clears it
        let ok = step(&t2.state, Input::InventoryChecked(Ok(vec!["R".into()])));
        assert_eq!(ok.state.retry, None);
        assert_eq!(ok.state.status, OrderStatus::InventoryReserved);
        // the third failure is the last
        let t3 = failed(&t2.state);
        assert_eq!(t3.state.status, OrderStatus::Failed);
        assert!(t3
            .state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("after 3 attempts")));
        // a failure of another activity than the running one: nothing
        let other = step(
            &s,
            Input::ActivityFailed {
                activity: Timer::Payment,
                error: "x".into(),
                policy: policy(3),
            },
        );
        assert!(!other.changed);
    }

    #[test]
    fn a_decline_is_final_even_with_retries_left() {
        let s = step(&new_order(), Input::InventoryChecked(Ok(vec!["R".into()]))).state;
        let s = step(&s, Input::Advance).state;
        let s = step(
            &s,
            Input::ActivityFailed {
                activity: Timer::Payment,
                error: "timeout".into(),
                policy: policy(5),
            },
        )
        .state;
        let t = step(&s, Input::PaymentProcessed(Err("card declined".into())));
        assert_eq!(t.state.status, OrderStatus::Failed);
        assert_eq!(t.state.retry, None);
        assert_eq!(
            kinds(&t),
            vec!["PaymentDeclined", "StockReleased", "StatusChanged"]
        );
    }

    #[test]
    fn history_is_numbered_and_only_what_changed_adds_to_it() {
        let (s, created) = create("ORD-1", details(), t0());
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].kind, "OrderCreated");
        assert_eq!((created[0].seq, s.history_seq), (1, 1));
        let t = step(&s, Input::InventoryChecked(Ok(vec!["R".into()])));
        let seqs: Vec<u64> = t.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 3]);
        assert_eq!(kinds(&t), vec!["StockReserved", "StatusChanged"]);
        // the same input again changes nothing and adds nothing
        let again = step(&t.state, Input::InventoryChecked(Ok(vec!["R".into()])));
        assert!(!again.changed && again.events.is_empty());
        // the entries never travel inside the stored state
        let json = serde_json::to_value(&t.state).expect("json");
        assert_eq!(json["historySeq"], 3);
        assert!(json.get("recorded").is_none());
    }

    #[test]
    fn cancel_is_refused_once_final() {
        let s = started();
        let shipped = step(&s, event(FulfillmentStatus::Shipped, 9).1).state;
        assert_eq!(
            handle(&shipped, Input::Cancel { reason: None }, t0()),
            Err(Rejection::AlreadyFinal(OrderStatus::Shipped))
        );
        let failed = step(&new_order(), Input::InventoryChecked(Err("x".into()))).state;
        assert!(handle(&failed, Input::Cancel { reason: None }, t0()).is_err());
    }

    #[test]
    fn fulfillment_cancelled_on_its_side_cancels_and_compensates() {
        let s = started();
        let t = step(&s, event(FulfillmentStatus::Cancelled, 9).1);
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert_eq!(
            t.state.cancellation_reason.as_deref(),
            Some("warehouse closed")
        );
        assert!(t.state.step_done(STEP_REFUND).is_some());
        assert!(t.state.step_done(STEP_RELEASE).is_some());
        assert!(
            t.effects.is_empty(),
            "no cancel signal back to a cancelled fulfillment"
        );
    }

    #[test]
    fn fulfillment_failure_fails_the_order() {
        let s = started();
        let t = step(&s, event(FulfillmentStatus::Failed, 9).1);
        assert_eq!(t.state.status, OrderStatus::Failed);
        assert!(t
            .state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("label printer")));
    }

    #[test]
    fn details_change_only_before_fulfillment() {
        let s = new_order();
        let update = DetailsUpdate {
            customer_email: Some("b@example.com".into()),
            ..Default::default()
        };
        let t = step(&s, Input::UpdateDetails(update.clone()));
        assert_eq!(t.state.details.customer_email, "b@example.com");
        let bad = DetailsUpdate {
            customer_email: Some("nope".into()),
            ..Default::default()
        };
        assert!(matches!(
            handle(&s, Input::UpdateDetails(bad), t0()),
            Err(Rejection::Invalid(_))
        ));
        let s = started();
        assert_eq!(
            handle(&s, Input::UpdateDetails(update), t0()),
            Err(Rejection::FulfillmentStarted(
                OrderStatus::FulfillmentStarted
            ))
        );
    }

    #[test]
    fn events_for_another_fulfillment_or_before_handover_are_ignored() {
        let s = new_order();
        let t = step(&s, event(FulfillmentStatus::Shipped, 9).1);
        assert!(!t.changed);
    }

    #[test]
    fn resume_rearms_each_step() {
        let mut s = new_order();
        for (status, expected) in [
            (
                OrderStatus::Pending,
                vec![Effect::Schedule(Timer::Inventory)],
            ),
            (OrderStatus::InventoryReserved, vec![Effect::Advance]),
            (
                OrderStatus::PaymentProcessing,
                vec![Effect::Schedule(Timer::Payment)],
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
    fn total_is_exact_in_cents() {
        let mut d = details();
        d.items.push(OrderItem {
            product_id: "product-2".into(),
            product_name: "Watch".into(),
            quantity: 1,
            price: 79.99,
        });
        assert_eq!(d.total_amount(), 139.97);
    }
}

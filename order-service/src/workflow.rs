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
//! any non-final state -> CANCELLED | FAILED (after compensation)
//! ```

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared_messages::bus::Route;
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
    Shipped,
    Cancelled,
    Failed,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 10] = [
        Self::Pending,
        Self::InventoryReserved,
        Self::PaymentProcessing,
        Self::PaymentConfirmed,
        Self::Confirmed,
        Self::FulfillmentStarted,
        Self::FulfillmentInProgress,
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

    /// The order has handed over to fulfillment and follows it.
    pub fn is_waiting_on_fulfillment(self) -> bool {
        matches!(self, Self::FulfillmentStarted | Self::FulfillmentInProgress)
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
        }
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

/// Timers the actor arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The result of one input: the new state (equal to the old one when the
/// input changed nothing) and what to do next.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: OrderState,
    pub effects: Vec<Effect>,
    pub changed: bool,
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
        OrderStatus::FulfillmentStarted | OrderStatus::FulfillmentInProgress => {
            vec![Effect::StartPolling]
        }
        OrderStatus::Shipped | OrderStatus::Cancelled | OrderStatus::Failed => Vec::new(),
    }
}

/// Applies one input.
pub fn handle(
    state: &OrderState,
    input: Input,
    now: DateTime<Utc>,
) -> Result<Transition, Rejection> {
    let mut next = state.clone();
    let mut effects = Vec::new();
    match input {
        Input::InventoryChecked(result) => {
            if state.status != OrderStatus::Pending {
                return Ok(unchanged(state));
            }
            match result {
                Ok(reservations) => {
                    next.reservation_ids = reservations;
                    next.reservation_held = true;
                    next.status = OrderStatus::InventoryReserved;
                    next.record(STEP_RESERVE, StepStatus::Completed, None, now);
                    effects.push(Effect::Advance);
                }
                Err(reason) => {
                    next.record(STEP_RESERVE, StepStatus::Failed, Some(reason.clone()), now);
                    fail(&mut next, reason, now);
                }
            }
        }
        Input::PaymentProcessed(result) => {
            if state.status != OrderStatus::PaymentProcessing {
                return Ok(unchanged(state));
            }
            match result {
                Ok(payment_id) => {
                    next.payment_id = Some(payment_id);
                    next.payment_captured = true;
                    next.status = OrderStatus::PaymentConfirmed;
                    next.record(STEP_PAYMENT, StepStatus::Completed, None, now);
                    effects.push(Effect::Advance);
                }
                Err(reason) => {
                    next.record(STEP_PAYMENT, StepStatus::Failed, Some(reason.clone()), now);
                    fail(&mut next, reason, now);
                }
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
                // winding down (the cancel signal on its way): keep the
                // order's view of it current, nothing else.
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
                let changed = next != *state;
                if changed {
                    next.updated_at = now;
                }
                return Ok(Transition {
                    state: next,
                    effects,
                    changed,
                });
            }
            if !state.status.is_waiting_on_fulfillment() {
                // Shipped and failed orders take nothing more.
                return Ok(unchanged(state));
            }
            if let Some(id) = message_id {
                next.remember(id);
            }
            if is_stale(state, &view) {
                return Ok(Transition {
                    changed: next != *state,
                    state: next,
                    effects,
                });
            }
            next.fulfillment_status = Some(view.status);
            next.fulfillment_updated_at = Some(view.updated_at);
            if let Some(progress) = progress {
                next.fulfillment_progress = Some(*progress);
            }
            if view.tracking_number.is_some() {
                next.tracking_number = view.tracking_number.clone();
            }
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
                    next.status = OrderStatus::Shipped;
                    next.record(STEP_SHIP, StepStatus::Completed, None, now);
                }
                FulfillmentStatus::Cancelled => {
                    let reason = view
                        .cancellation_reason
                        .clone()
                        .unwrap_or_else(|| "fulfillment was cancelled".into());
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
            let reason = reason
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "Cancelled on request".into());
            if state.status.is_waiting_on_fulfillment() {
                if let Some(fulfillment_id) = &state.fulfillment_workflow_id {
                    let envelope = Envelope::with_id(
                        effect_message_id(&state.workflow_id, "cancel-fulfillment"),
                        fulfillment_id.clone(),
                        Message::CancelFulfillment(CancelFulfillment {
                            reason: reason.clone(),
                        }),
                    );
                    effects.push(Effect::Signal(
                        fulfillment_signal_route(),
                        Box::new(envelope),
                    ));
                    next.record(STEP_CANCEL_FULFILLMENT, StepStatus::Completed, None, now);
                }
            }
            compensate(&mut next, now);
            next.status = OrderStatus::Cancelled;
            next.cancellation_reason = Some(reason);
        }
        Input::UpdateDetails(update) => {
            if state.status.is_final()
                || state.status.is_waiting_on_fulfillment()
                || state.fulfillment_workflow_id.is_some()
            {
                return Err(Rejection::FulfillmentStarted(state.status));
            }
            if let Some(email) = update.customer_email {
                crate::validation::email(&email).map_err(Rejection::Invalid)?;
                next.details.customer_email = email;
            }
            if let Some(name) = update.customer_name {
                if name.trim().is_empty() {
                    return Err(Rejection::Invalid("customerName must not be empty".into()));
                }
                next.details.customer_name = name;
            }
            if let Some(address) = update.shipping_address {
                address.validate().map_err(Rejection::Invalid)?;
                next.details.shipping_address = address;
            }
        }
    }
    let changed = next != *state;
    if changed {
        next.updated_at = now;
    }
    Ok(Transition {
        state: next,
        effects,
        changed,
    })
}

fn unchanged(state: &OrderState) -> Transition {
    Transition {
        state: state.clone(),
        effects: Vec::new(),
        changed: false,
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
/// fulfillment backwards, changes nothing.
fn is_stale(state: &OrderState, view: &FulfillmentStatusView) -> bool {
    if let Some(known) = state.fulfillment_status {
        if known.is_final() {
            return true;
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
fn compensate(state: &mut OrderState, now: DateTime<Utc>) {
    if state.payment_captured {
        state.payment_captured = false;
        let detail = state.payment_id.as_ref().map(|p| format!("refunded {p}"));
        state.record(STEP_REFUND, StepStatus::Completed, detail, now);
    }
    if state.reservation_held {
        state.reservation_held = false;
        let detail = Some(format!("released {}", state.reservation_ids.join(", ")));
        state.record(STEP_RELEASE, StepStatus::Completed, detail, now);
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

    #[test]
    fn cancel_during_fulfillment_signals_cancel_with_a_deterministic_id() {
        let s = started();
        let t = step(
            &s,
            Input::Cancel {
                reason: Some("Customer requested cancellation".into()),
            },
        );
        assert_eq!(t.state.status, OrderStatus::Cancelled);
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
        assert!(t.state.step_done(STEP_CANCEL_FULFILLMENT).is_some());
    }

    #[test]
    fn a_cancelled_order_still_records_its_fulfillment_winding_down() {
        let s = started();
        let s = step(&s, event(FulfillmentStatus::Picking, 10).1).state;
        let cancelled = step(
            &s,
            Input::Cancel {
                reason: Some("changed my mind".into()),
            },
        )
        .state;
        let steps = cancelled.history.len();
        let t = step(&cancelled, event(FulfillmentStatus::Cancelled, 20).1);
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert_eq!(
            t.state.fulfillment_status,
            Some(FulfillmentStatus::Cancelled)
        );
        assert_eq!(
            t.state.cancellation_reason.as_deref(),
            Some("changed my mind")
        );
        assert_eq!(t.state.history.len(), steps, "no second compensation");
        assert!(t.effects.is_empty());
        // older reports change nothing
        let late = step(&t.state, event(FulfillmentStatus::Picking, 15).1);
        assert!(!late.changed);
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

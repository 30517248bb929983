//! What the workflow's tests share: an order, a clock, and a step that
//! shows a decision as the state the actor would hold after it.

use chrono::{DateTime, Duration, Utc};
use message_bus::Route;
use shared_messages::history::HistoryEvent;
use shared_messages::ids::effect_message_id;
use shared_messages::messages::{Address, FulfillmentStatus, FulfillmentStatusView, OrderItem};
use shared_messages::Envelope;
use uuid::Uuid;

use super::*;

/// A decision as the actor sees it: the state after it (the old one when
/// nothing changed) and what it sends, causes and records.
#[derive(Debug, Clone)]
pub struct Step {
    pub state: OrderState,
    pub changed: bool,
    pub messages: Vec<(Route, Envelope)>,
    pub effects: Vec<Effect>,
    pub events: Vec<HistoryEvent>,
    pub reply: Reply,
}

pub fn details() -> OrderDetails {
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

pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

/// The decision on `input` at `now`, whatever its reply.
pub fn decide_at(state: &OrderState, input: Input, now: DateTime<Utc>) -> Step {
    let d = decide(state, input, Context::at(now));
    Step {
        changed: d.state.is_some(),
        state: d.state.unwrap_or_else(|| state.clone()),
        messages: d.messages,
        effects: d.effects,
        events: d.history,
        reply: d.reply,
    }
}

/// An input that must be accepted, a second after `t0`.
pub fn step(state: &OrderState, input: Input) -> Step {
    let s = decide_at(state, input, t0() + Duration::seconds(1));
    assert!(s.reply.is_ok(), "accepted: {:?}", s.reply);
    s
}

/// The reply to `input` at `t0`.
pub fn reply(state: &OrderState, input: Input) -> Reply {
    decide_at(state, input, t0()).reply
}

pub fn new_order() -> OrderState {
    OrderState::new("ORD-1", details(), t0())
}

/// The envelopes of a step's messages.
pub fn signals(t: &Step) -> Vec<&Envelope> {
    t.messages.iter().map(|(_, env)| env).collect()
}

/// Drives an order to FULFILLMENT_STARTED, checking each stop.
pub fn started() -> OrderState {
    let s = new_order();
    assert_eq!(resume(&s), vec![Effect::Schedule(Timer::CheckStock)]);
    let t = step(
        &s,
        Input::InventoryChecked(Ok(vec!["RES-ORD-1-product-1".into()])),
    );
    assert_eq!(t.state.status, OrderStatus::InventoryReserved);
    assert_eq!(t.effects, vec![Effect::Advance]);
    let t = step(&t.state, Input::Advance);
    assert_eq!(t.state.status, OrderStatus::PaymentProcessing);
    assert_eq!(t.effects, vec![Effect::Schedule(Timer::ChargePayment)]);
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
    let signals = signals(&t);
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
    assert_eq!(t.messages[0].0, fulfillment_signal_route());
    assert!(t.effects.contains(&Effect::StartPolling));
    t.state
}

pub fn view(status: FulfillmentStatus, at_secs: i64) -> Box<FulfillmentStatusView> {
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

pub fn event(status: FulfillmentStatus, at_secs: i64) -> (Uuid, Input) {
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

pub fn kinds(t: &Step) -> Vec<&str> {
    t.events.iter().map(|e| e.kind.as_str()).collect()
}

pub fn cancel(state: &OrderState, reason: &str) -> Step {
    step(
        state,
        Input::Cancel {
            reason: Some(reason.into()),
        },
    )
}

pub fn policy(max: u32) -> RetryPolicy {
    RetryPolicy {
        initial_interval: std::time::Duration::from_millis(100),
        backoff_coefficient: 2.0,
        maximum_interval: std::time::Duration::from_millis(300),
        maximum_attempts: max,
    }
}

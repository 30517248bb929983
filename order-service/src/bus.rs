//! What order-service sends and consumes, on the shared AMQP layer.
//!
//! - Consumes `order-service.fulfillment-events` (every fulfillment status
//!   change) and gives each event to its order (an [`EventSink`]: the
//!   orders of [`crate::actor`]); the delivery is settled by [`settle`]
//!   once the order has stored the result. Events for orders this service
//!   does not know are acked and ignored: other systems may start
//!   fulfillments too.
//! - Signals to fulfillment that follow from a decision (start, cancel)
//!   go through the outbox (see [`crate::store`]); signals a person waits
//!   on (pause, resume, new address) and queries go with
//!   [`Bus::request`](message_bus::Bus::request).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tracing::Instrument;

use message_bus::trace;
use message_bus::{Bus, BusError, Handler, Incoming, Outcome, Route};
use shared_messages::messages::FulfillmentStatus;
use shared_messages::topology::{FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY};
use shared_messages::{Envelope, Message};
use uuid::Uuid;

use crate::workflow::Input;

/// Where queries to fulfillment go: to every fulfillment-service replica's
/// own query queue. Mandatory, so with no replica running a query is
/// returned unroutable at once (HTTP 503), not timed out.
pub fn query_route() -> Route {
    Route::new(FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY, true)
}

/// What became of an event given to its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventResult {
    /// The order took it: stored, or it changed nothing (a redelivery, a
    /// stale report).
    Taken,
    /// The order refused it.
    Refused,
    /// This service has no such order.
    UnknownOrder,
    /// It could not be stored now (the store failed, or the order's actor
    /// was restarting): it may be next time.
    NotStored(String),
}

/// Where fulfillment events go: the orders.
pub trait EventSink: Clone + Send + Sync + 'static {
    /// Gives `input` to order `order_id`; resolves once the outcome is
    /// stored.
    fn apply_event(&self, order_id: &str, input: Input) -> BoxFuture<'static, EventResult>;
}

/// The consumer of `order-service.fulfillment-events`.
pub fn event_handler(orders: impl EventSink) -> Handler {
    Arc::new(move |incoming: Incoming| {
        let orders = orders.clone();
        Box::pin(async move { handle_event(&orders, incoming).await })
    })
}

/// The order an ingress message belongs to, whose partition it is
/// forwarded to ([`service_kit::partitions::Owner::key`]): a fulfillment
/// event's envelope names the fulfillment, so its order comes from the
/// payload; anything else keeps its entity (its handler dead-letters it).
pub fn order_key(envelope: &Envelope) -> String {
    match &envelope.message {
        Message::FulfillmentStatusChanged(event) => event.fulfillment.order_id.clone(),
        _ => envelope.entity_id.clone(),
    }
}

/// The consumer of a partition queue (`order-service.partition.p<nn>`, as
/// one of several replicas): fulfillment events, as [`event_handler`];
/// order commands from the other replicas, by `commands`.
pub fn partition_handler(orders: impl EventSink, commands: Handler) -> Handler {
    let events = event_handler(orders);
    Arc::new(move |incoming: Incoming| {
        if matches!(incoming.envelope.message, Message::OrderCommand(_)) {
            commands(incoming)
        } else {
            events(incoming)
        }
    })
}

/// A fulfillment event, as the input of the order it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub order_id: String,
    pub fulfillment_id: String,
    pub status: FulfillmentStatus,
    pub input: Input,
}

/// The event a message is; anything else does not belong on the queue
/// (the error says why).
pub fn event_of(message: Message, message_id: Uuid) -> Result<Event, String> {
    let event = match message {
        Message::FulfillmentStatusChanged(event) => *event,
        other => {
            return Err(format!(
                "order-service.fulfillment-events takes FulfillmentStatusChanged, not {}",
                other.type_name()
            ))
        }
    };
    Ok(Event {
        order_id: event.fulfillment.order_id.clone(),
        fulfillment_id: event.fulfillment.fulfillment_workflow_id.clone(),
        status: event.fulfillment.status,
        input: Input::Fulfillment {
            message_id: Some(message_id),
            view: Box::new(event.fulfillment),
            progress: Some(Box::new(event.progress)),
        },
    })
}

/// How an event delivery is settled once its order has it: acked when
/// the order took it, refused it or does not exist here (nothing would
/// change next time), delivered again when it could not be stored.
pub fn settle(result: &EventResult) -> Outcome {
    match result {
        EventResult::Taken | EventResult::Refused | EventResult::UnknownOrder => Outcome::Ack,
        EventResult::NotStored(error) => Outcome::Retry(error.clone()),
    }
}

/// Applies one fulfillment event to its order.
pub async fn handle_event(orders: &impl EventSink, incoming: Incoming) -> Outcome {
    let message_id = incoming.envelope.message_id;
    let event = match event_of(incoming.envelope.message, message_id) {
        Ok(event) => event,
        Err(reason) => return Outcome::DeadLetter(reason),
    };
    let Event {
        order_id,
        fulfillment_id,
        status,
        input,
    } = event;
    let span = tracing::info_span!(
        "fulfillment_event",
        %order_id,
        %fulfillment_id,
        %message_id,
        %status,
        redelivered = incoming.redelivered,
    );
    let result = orders
        .apply_event(&order_id, input)
        .instrument(span.clone())
        .await;
    if result == EventResult::UnknownOrder {
        span.in_scope(|| {
            tracing::debug!(%order_id, %fulfillment_id, "event for an order this service does not know; ignored");
        });
    }
    settle(&result)
}

/// Asks fulfillment a query (`GetFulfillmentStatus`,
/// `GetFulfillmentProgress`) about `fulfillment_id`, within the trace
/// `traceparent`.
pub async fn query(
    bus: &Bus,
    fulfillment_id: &str,
    query: Message,
    traceparent: Option<String>,
    timeout: Duration,
) -> Result<Envelope, BusError> {
    let envelope = Envelope::new(fulfillment_id, query).traced(traceparent);
    bus.request(&query_route(), &envelope, timeout, false).await
}

/// Sends a signal and waits for fulfillment's verdict. The signal is
/// persistent: when no answer comes in time it stays queued and runs when
/// fulfillment-service returns.
pub async fn signal_with_reply(
    bus: &Bus,
    fulfillment_id: &str,
    message: Message,
    timeout: Duration,
) -> Result<Envelope, BusError> {
    let envelope = Envelope::new(fulfillment_id, message).traced(trace::current_child());
    bus.request(
        &crate::workflow::fulfillment_signal_route(),
        &envelope,
        timeout,
        true,
    )
    .await
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::Utc;
    use shared_messages::messages::{
        FulfillmentProgressView, FulfillmentStatusChanged, FulfillmentStatusView, PauseFulfillment,
    };

    use super::*;

    /// The event of `order_id`'s fulfillment shipping.
    pub(crate) fn shipped(order_id: &str) -> Message {
        let now = Utc::now();
        let fulfillment_workflow_id = format!("fulfillment-{order_id}");
        Message::FulfillmentStatusChanged(Box::new(FulfillmentStatusChanged {
            previous_status: Some(FulfillmentStatus::ReadyToShip),
            fulfillment: FulfillmentStatusView {
                fulfillment_workflow_id: fulfillment_workflow_id.clone(),
                order_id: order_id.into(),
                status: FulfillmentStatus::Shipped,
                current_step: "Shipped".into(),
                tracking_number: Some("TRK-1".into()),
                shipping_carrier: None,
                estimated_delivery: None,
                is_paused: false,
                shipping_address: None,
                cancellation_reason: None,
                error: None,
                created_at: now,
                updated_at: now,
            },
            progress: FulfillmentProgressView {
                fulfillment_workflow_id,
                order_id: order_id.into(),
                status: FulfillmentStatus::Shipped,
                current_step: 6,
                step_name: "Shipped".into(),
                total_steps: 6,
                percentage: 100,
                items_picked: 2,
                total_items: 2,
                estimated_completion: None,
                completed_steps: Vec::new(),
            },
        }))
    }

    #[test]
    fn each_settlement() {
        assert_eq!(settle(&EventResult::Taken), Outcome::Ack);
        assert_eq!(settle(&EventResult::Refused), Outcome::Ack);
        assert_eq!(settle(&EventResult::UnknownOrder), Outcome::Ack);
        assert_eq!(
            settle(&EventResult::NotStored("disk full".into())),
            Outcome::Retry("disk full".into())
        );
    }

    #[test]
    fn a_status_event_is_its_orders_input() {
        let id = Uuid::new_v4();
        let event = event_of(shipped("ORD-1"), id).expect("an event");
        assert_eq!(event.order_id, "ORD-1");
        assert_eq!(event.fulfillment_id, "fulfillment-ORD-1");
        assert_eq!(event.status, FulfillmentStatus::Shipped);
        let Input::Fulfillment {
            message_id,
            view,
            progress,
        } = event.input
        else {
            panic!("a fulfillment report, not {:?}", event.input);
        };
        assert_eq!(message_id, Some(id));
        assert_eq!(view.tracking_number.as_deref(), Some("TRK-1"));
        assert_eq!(progress.map(|p| p.percentage), Some(100));
    }

    #[test]
    fn a_fulfillment_event_belongs_to_its_orders_partition() {
        let event = Envelope::new("fulfillment-ORD-7", shipped("ORD-7"));
        assert_eq!(order_key(&event), "ORD-7");
        let other = Envelope::new(
            "fulfillment-ORD-7",
            Message::PauseFulfillment(PauseFulfillment {}),
        );
        assert_eq!(order_key(&other), "fulfillment-ORD-7");
    }

    #[test]
    fn anything_else_is_dead_lettered_with_why() {
        let err = event_of(
            Message::PauseFulfillment(PauseFulfillment {}),
            Uuid::new_v4(),
        )
        .expect_err("not an event");
        assert!(err.contains("PauseFulfillment"), "{err}");
    }
}

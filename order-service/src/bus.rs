//! What order-service sends and consumes, on the shared AMQP layer.
//!
//! - Consumes `order-service.fulfillment-events` (every fulfillment status
//!   change) and feeds each event to its order's actor; the delivery is
//!   acked only after the actor has stored the result. Events for orders
//!   this service does not know are acked and ignored: other systems may
//!   start fulfillments too.
//! - Signals to fulfillment that follow from a transition (start, cancel)
//!   go through the outbox (see [`crate::store`]); signals a person waits
//!   on (pause, resume, new address) and queries go with
//!   [`Bus::request`](shared_messages::bus::Bus::request).

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use shared_messages::bus::{Bus, BusError, Handler, Incoming, Outcome, Route};
use shared_messages::topology::{FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY};
use shared_messages::trace;
use shared_messages::{Envelope, Message};

use crate::actor::{ApplyError, Orders};
use crate::workflow::Input;

/// Where queries to fulfillment go: to every fulfillment-service replica's
/// own query queue. Mandatory, so with no replica running a query is
/// returned unroutable at once (HTTP 503), not timed out.
pub fn query_route() -> Route {
    Route::new(FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY, true)
}

/// The consumer of `order-service.fulfillment-events`.
pub fn event_handler(orders: Orders) -> Handler {
    Arc::new(move |incoming: Incoming| {
        let orders = orders.clone();
        Box::pin(async move { handle_event(&orders, incoming).await })
    })
}

/// Applies one fulfillment event to its order.
pub async fn handle_event(orders: &Orders, incoming: Incoming) -> Outcome {
    let message_id = incoming.envelope.message_id;
    let event = match incoming.envelope.message {
        Message::FulfillmentStatusChanged(event) => event,
        other => {
            return Outcome::DeadLetter(format!(
                "order-service.fulfillment-events takes FulfillmentStatusChanged, not {}",
                other.type_name()
            ))
        }
    };
    let order_id = event.fulfillment.order_id.clone();
    let fulfillment_id = event.fulfillment.fulfillment_workflow_id.clone();
    let span = tracing::info_span!(
        "fulfillment_event",
        %order_id,
        %fulfillment_id,
        %message_id,
        status = %event.fulfillment.status,
        redelivered = incoming.redelivered,
    );
    let event = *event;
    let input = Input::Fulfillment {
        message_id: Some(message_id),
        view: Box::new(event.fulfillment),
        progress: Some(Box::new(event.progress)),
    };
    let result = orders.apply(&order_id, input).instrument(span).await;
    match result {
        Ok(_) | Err(ApplyError::Rejected(_)) => Outcome::Ack,
        Err(ApplyError::NotFound) => {
            tracing::debug!(%order_id, %fulfillment_id, "event for an order this service does not know; ignored");
            Outcome::Ack
        }
        Err(error @ (ApplyError::Store(_) | ApplyError::Unavailable)) => {
            Outcome::Retry(error.to_string())
        }
    }
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
mod tests {
    use std::sync::Arc;

    use chrono::Utc;
    use shared_messages::bus::outbox::OutboxSignal;
    use shared_messages::bus::BusConfig;
    use shared_messages::messages::{
        FulfillmentProgressView, FulfillmentStatus, FulfillmentStatusChanged,
        FulfillmentStatusView, PauseFulfillment,
    };

    use super::*;
    use crate::actor::Timings;
    use crate::config::StoreLocation;
    use crate::store::{SqliteStore, Store};
    use crate::validation::demo_order;
    use crate::workflow::{OrderState, OrderStatus};

    fn orders() -> Orders {
        let store =
            Arc::new(SqliteStore::open(&StoreLocation::SqliteMemory).expect("memory store"));
        let bus = Bus::new(BusConfig::new(
            "amqp://127.0.0.1:1/%2f",
            "order-service-test",
            shared_messages::topology::order_service(),
        ));
        let timings = Timings {
            inventory_delay: Duration::from_secs(60),
            payment_delay: Duration::from_secs(60),
            poll_interval: Duration::from_secs(60),
            query_timeout: Duration::from_millis(100),
            payment_decline_rate: 0.0,
            ..Timings::default()
        };
        Orders::new(
            actix::Arbiter::current(),
            store as Arc<dyn Store>,
            bus,
            OutboxSignal::new(),
            timings,
        )
        .expect("the store writer thread starts")
    }

    fn incoming(message: Message) -> Incoming {
        Incoming {
            envelope: Envelope::new("fulfillment-ORD-1", message),
            reply_to: None,
            redelivered: false,
            traceparent: None,
        }
    }

    fn shipped(order_id: &str) -> Message {
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

    #[actix_web::test]
    async fn events_are_applied_ignored_or_dead_lettered() {
        let orders = orders();
        // not ours: acked and ignored
        assert_eq!(
            handle_event(&orders, incoming(shipped("ORD-unknown"))).await,
            Outcome::Ack
        );
        // not an event: dead-lettered with the reason
        let outcome = handle_event(
            &orders,
            incoming(Message::PauseFulfillment(PauseFulfillment {})),
        )
        .await;
        assert!(matches!(outcome, Outcome::DeadLetter(r) if r.contains("PauseFulfillment")));

        // an order waiting on fulfillment ships, stored before the ack
        let mut order = OrderState::new("ORD-1", demo_order(), Utc::now());
        order.status = OrderStatus::FulfillmentInProgress;
        order.fulfillment_workflow_id = Some("fulfillment-ORD-1".into());
        orders.store().insert(&order, &[]).expect("insert");
        orders.recover().expect("recover");
        let event = incoming(shipped("ORD-1"));
        assert_eq!(handle_event(&orders, event.clone()).await, Outcome::Ack);
        let stored = orders.store().get("ORD-1").expect("get").expect("exists");
        assert_eq!(stored.status, OrderStatus::Shipped);
        assert_eq!(stored.tracking_number.as_deref(), Some("TRK-1"));
        assert_eq!(stored.fulfillment_progress.map(|p| p.percentage), Some(100));
        // the same event again (redelivery): acked, nothing changes
        assert_eq!(handle_event(&orders, event).await, Outcome::Ack);
        assert_eq!(
            orders
                .store()
                .get("ORD-1")
                .expect("get")
                .map(|o| o.updated_at),
            Some(stored.updated_at)
        );
    }
}

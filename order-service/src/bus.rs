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

use shared_messages::bus::{Bus, BusError, Handler, Incoming, Outcome, Route};
use shared_messages::messages::{GetFulfillmentProgress, GetFulfillmentStatus};
use shared_messages::topology::{FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY};
use shared_messages::{Envelope, Message};

use crate::actor::{ApplyError, Orders};
use crate::workflow::Input;

/// Where queries to fulfillment go.
pub fn query_route() -> Route {
    Route::new(FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY, false)
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
    let span = tracing::debug_span!("fulfillment_event", %order_id, %fulfillment_id, %message_id, status = %event.fulfillment.status);
    let _guard = span.enter();
    let event = *event;
    let input = Input::Fulfillment {
        message_id: Some(message_id),
        view: Box::new(event.fulfillment),
        progress: Some(Box::new(event.progress)),
    };
    drop(_guard);
    match orders.apply(&order_id, input).await {
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

/// Asks fulfillment for the status of `fulfillment_id`.
pub async fn query_status(
    bus: &Bus,
    fulfillment_id: &str,
    timeout: Duration,
) -> Result<Envelope, BusError> {
    let envelope = Envelope::new(
        fulfillment_id,
        Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
    );
    bus.request(&query_route(), &envelope, timeout, false).await
}

/// Asks fulfillment for the progress of `fulfillment_id`.
pub async fn query_progress(
    bus: &Bus,
    fulfillment_id: &str,
    timeout: Duration,
) -> Result<Envelope, BusError> {
    let envelope = Envelope::new(
        fulfillment_id,
        Message::GetFulfillmentProgress(GetFulfillmentProgress {}),
    );
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
    let envelope = Envelope::new(fulfillment_id, message);
    bus.request(
        &crate::workflow::fulfillment_signal_route(),
        &envelope,
        timeout,
        true,
    )
    .await
}

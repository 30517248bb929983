//! The orders as the place fulfillment events go ([`bus::EventSink`]).

use futures::future::{BoxFuture, FutureExt};

use super::{ApplyError, Orders};
use crate::bus::{self, EventResult};
use crate::workflow::Input;

impl bus::EventSink for Orders {
    fn apply_event(&self, order_id: &str, input: Input) -> BoxFuture<'static, EventResult> {
        let orders = self.clone();
        let order_id = order_id.to_owned();
        async move { event_result(orders.apply(&order_id, input).await.map(|_| ())) }.boxed()
    }
}

/// What an order's answer to an event means for its delivery.
fn event_result(result: Result<(), ApplyError>) -> EventResult {
    match result {
        Ok(()) => EventResult::Taken,
        Err(ApplyError::Rejected(_)) => EventResult::Refused,
        Err(ApplyError::NotFound) => EventResult::UnknownOrder,
        Err(error @ (ApplyError::Store(_) | ApplyError::Unavailable)) => {
            EventResult::NotStored(error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use message_bus::{Incoming, Outcome};
    use shared_messages::messages::PauseFulfillment;
    use shared_messages::{Envelope, Message};

    use super::*;
    use crate::bus::handle_event;
    use crate::bus::tests::shipped;
    use crate::store::StoreError;
    use crate::validation::demo_order;
    use crate::workflow::{OrderState, OrderStatus, Rejection};

    fn orders() -> Orders {
        crate::actor::testing::orders()
    }

    fn incoming(message: Message) -> Incoming {
        Incoming {
            envelope: Envelope::new("fulfillment-ORD-1", message),
            reply_to: None,
            redelivered: false,
            traceparent: None,
            original: None,
        }
    }

    #[test]
    fn each_answer_of_an_order_has_its_result() {
        assert_eq!(event_result(Ok(())), EventResult::Taken);
        assert_eq!(
            event_result(Err(ApplyError::Rejected(Rejection::AlreadyFinal(
                OrderStatus::Shipped
            )))),
            EventResult::Refused
        );
        assert_eq!(
            event_result(Err(ApplyError::NotFound)),
            EventResult::UnknownOrder
        );
        assert!(matches!(
            event_result(Err(ApplyError::Unavailable)),
            EventResult::NotStored(_)
        ));
        assert!(matches!(
            event_result(Err(ApplyError::Store(StoreError::Unavailable("down".into())))),
            EventResult::NotStored(e) if e.contains("down")
        ));
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
        orders.store().insert(&order, &[]).await.expect("insert");
        orders.recover().await.expect("recover");
        let event = incoming(shipped("ORD-1"));
        assert_eq!(handle_event(&orders, event.clone()).await, Outcome::Ack);
        let stored = orders
            .store()
            .get("ORD-1")
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(stored.status, OrderStatus::Shipped);
        assert_eq!(stored.tracking_number.as_deref(), Some("TRK-1"));
        assert_eq!(stored.fulfillment_progress.map(|p| p.percentage), Some(100));
        // the same event again (redelivery): acked, nothing changes
        assert_eq!(handle_event(&orders, event).await, Outcome::Ack);
        assert_eq!(
            orders
                .store()
                .get("ORD-1")
                .await
                .expect("get")
                .map(|o| o.updated_at),
            Some(stored.updated_at)
        );
    }
}

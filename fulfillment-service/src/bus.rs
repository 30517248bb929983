//! What fulfillment-service consumes from RabbitMQ and how it answers.
//!
//! - `fulfillment.signals`: start, pause, resume, cancel, re-address. Each
//!   goes to its fulfillment's actor (enqueued before the first await, so
//!   per-fulfillment order is the queue's order) and is acked once the
//!   outcome is stored. A signal with `reply_to` is answered with a
//!   `SignalReply`. How each delivery is settled is the workflow's
//!   decision ([`workflow::settle`], [`workflow::check_entity`]): a
//!   signal whose envelope and payload name different fulfillments, or
//!   one for nothing, is dead-lettered with why.
//! - `fulfillment.queries.<replica>`: this replica's own query queue
//!   (exclusive to its connection, bound to `fulfillment.queries` with the
//!   `query` key): status and progress, answered from the store. Every
//!   replica answers every query; the requester keeps the first reply.
//!
//! Events do not go out from here: every transition writes its
//! `FulfillmentStatusChanged` to the outbox in the same transaction as the
//! state, and [`shared_messages::bus::outbox::relay`] publishes them.

use std::sync::Arc;

use futures::future::{self, BoxFuture, FutureExt};
use shared_messages::bus::{Bus, BusConfig, Incoming, Outcome, ReplyTo};
use shared_messages::messages::{ReplyError, SignalReply};
use shared_messages::topology::{self, FULFILLMENT_QUERIES_QUEUE, FULFILLMENT_SIGNALS_QUEUE};
use shared_messages::{Envelope, Message};
use tracing::Instrument;

use crate::actor::Registry;
use crate::store::StoreError;
use crate::workflow::{self, Handled, Input, Settle};

/// The bus with both consumers registered (not started); `replica` names
/// this replica's query queue.
pub fn connect(amqp_url: &str, replica: &str, registry: Registry) -> Bus {
    let bus = Bus::new(BusConfig::new(
        amqp_url,
        "fulfillment-service",
        topology::fulfillment_service_replica(replica),
    ));
    let (signals_bus, signals_registry) = (bus.clone(), registry.clone());
    bus.consume(
        FULFILLMENT_SIGNALS_QUEUE,
        Arc::new(move |incoming| handle_signal(&signals_registry, &signals_bus, incoming)),
    );
    let queries_bus = bus.clone();
    bus.consume(
        &topology::fulfillment_query_queue(replica),
        Arc::new(move |incoming| handle_query(&registry, &queries_bus, incoming)),
    );
    bus
}

/// The workflow input a signal stands for, or why it is not a signal.
fn input_of(message: Message) -> Result<Input, String> {
    Ok(match message {
        Message::StartFulfillmentWorkflow(m) => Input::Create {
            order_id: m.order_id,
        },
        Message::StartFulfillment(m) => Input::Start(m.request),
        Message::PauseFulfillment(_) => Input::Pause,
        Message::ResumeFulfillment(_) => Input::Resume,
        Message::CancelFulfillment(m) => Input::Cancel { reason: m.reason },
        Message::UpdateShippingAddress(m) => Input::UpdateAddress(m.address),
        other => {
            return Err(format!(
                "{} is not a fulfillment signal and does not belong on {FULFILLMENT_SIGNALS_QUEUE}",
                other.type_name()
            ))
        }
    })
}

/// Handles one signal delivery.
pub fn handle_signal(
    registry: &Registry,
    bus: &Bus,
    incoming: Incoming,
) -> BoxFuture<'static, Outcome> {
    let Incoming {
        envelope,
        reply_to,
        redelivered: incoming_redelivered,
        traceparent,
    } = incoming;
    let traceparent = traceparent.or_else(|| envelope.traceparent.clone());
    let message_type = envelope.message_type();
    let input = match input_of(envelope.message) {
        Ok(input) => input,
        Err(reason) => return future::ready(Outcome::DeadLetter(reason)).boxed(),
    };
    if let Err(reason) = workflow::check_entity(&envelope.entity_id, &input) {
        tracing::warn!(entity_id = %envelope.entity_id, message_id = %envelope.message_id, %reason, "signal dead-lettered");
        return future::ready(Outcome::DeadLetter(reason)).boxed();
    }
    let fulfillment_id = envelope.entity_id;
    let message_id = envelope.message_id;
    let span = tracing::info_span!(
        "signal",
        fulfillment_id = %fulfillment_id,
        message_id = %message_id,
        message_type,
        redelivered = incoming_redelivered,
    );
    // Enqueued now, in delivery order.
    let outcome =
        span.in_scope(|| registry.signal(&fulfillment_id, Some(message_id), traceparent, input));
    let bus = bus.clone();
    let registry = registry.clone();
    async move {
        let result = outcome.await;
        let handled = match &result {
            Ok(reply) => Handled::Decided(reply),
            Err(error) => Handled::StoreFailed {
                permanent: matches!(error, StoreError::Corrupt { .. }),
                error: error.to_string(),
            },
        };
        let settled = workflow::settle(handled, reply_to.is_some(), message_type);
        let reply = match (settled, result) {
            (Settle::Reply, Ok(reply)) => reply,
            (Settle::Ack, Ok(Err(error))) => {
                tracing::warn!(%fulfillment_id, %message_id, message_type, reason = %error.message, "signal refused");
                return Outcome::Ack;
            }
            (Settle::Ack, _) => return Outcome::Ack,
            (Settle::DeadLetter(reason), _) => return Outcome::DeadLetter(reason),
            (Settle::Retry(error), _) => {
                tracing::error!(%fulfillment_id, %message_id, %error, "cannot store a signal's outcome");
                return Outcome::Retry(error);
            }
            // settle() answers store failures before replies.
            (Settle::Reply, Err(error)) => return Outcome::Retry(error.to_string()),
        };
        let answer = match &reply {
            Ok(accepted) => SignalReply::accepted(accepted.status),
            Err(error) => {
                // The status as it is now, when the fulfillment exists.
                let status = registry.load(&fulfillment_id).ok().flatten().map(|f| f.status);
                SignalReply::rejected(error.clone(), status)
            }
        };
        if let Some(to) = reply_to {
            send_reply(&bus, &to, &fulfillment_id, Message::SignalReply(answer)).await;
        }
        Outcome::Ack
    }
    .instrument(span)
    .boxed()
}

/// Handles one query delivery.
pub fn handle_query(
    registry: &Registry,
    bus: &Bus,
    incoming: Incoming,
) -> BoxFuture<'static, Outcome> {
    let Incoming {
        envelope, reply_to, ..
    } = incoming;
    let Some(to) = reply_to else {
        return future::ready(Outcome::DeadLetter(format!(
            "{} without reply_to: nobody to answer",
            envelope.message_type()
        )))
        .boxed();
    };
    let progress = match envelope.message {
        Message::GetFulfillmentStatus(_) => false,
        Message::GetFulfillmentProgress(_) => true,
        other => {
            return future::ready(Outcome::DeadLetter(format!(
                "{} is not a fulfillment query and does not belong on {FULFILLMENT_QUERIES_QUEUE}",
                other.type_name()
            )))
            .boxed()
        }
    };
    let fulfillment_id = envelope.entity_id;
    let span = tracing::debug_span!(
        "query",
        fulfillment_id = %fulfillment_id,
        message_id = %envelope.message_id,
        progress,
    );
    let loaded = registry.load(&fulfillment_id);
    let timing = registry.timing();
    let bus = bus.clone();
    async move {
        let answer = match loaded {
            // A row that cannot be read will not be readable on retry.
            Err(error @ StoreError::Corrupt { .. }) => {
                return Outcome::DeadLetter(error.to_string())
            }
            Err(error) => return Outcome::Retry(error.to_string()),
            Ok(None) => Message::QueryFailed(ReplyError::not_found(format!(
                "no fulfillment {fulfillment_id}"
            ))),
            Ok(Some(state)) if progress => Message::FulfillmentProgressReply(Box::new(
                state.progress_view(chrono::Utc::now(), timing),
            )),
            Ok(Some(state)) => Message::FulfillmentStatusReply(Box::new(state.status_view())),
        };
        send_reply(&bus, &to, &fulfillment_id, answer).await;
        Outcome::Ack
    }
    .instrument(span)
    .boxed()
}

async fn send_reply(bus: &Bus, to: &ReplyTo, fulfillment_id: &str, message: Message) {
    let envelope = Envelope::new(fulfillment_id, message);
    if let Err(error) = bus.reply(to, &envelope).await {
        // The requester times out; nothing else to do.
        tracing::warn!(%fulfillment_id, %error, "cannot send a reply");
    }
}

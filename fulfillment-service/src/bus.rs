//! What fulfillment-service consumes from RabbitMQ and how it answers.
//!
//! - `fulfillment.signals`: start, pause, resume, cancel, re-address. Each
//!   goes to its fulfillment's actor (enqueued before the first await, so
//!   per-fulfillment order is the queue's order) and is acked once the
//!   outcome is stored. A signal with `reply_to` is answered with a
//!   `SignalReply`. How each delivery is settled is decided by [`settle`]
//!   from the workflow's reply (or the store's failure): a signal for
//!   nothing, or an invalid one nobody waits on, is dead-lettered with
//!   why, as is one whose envelope and payload name different
//!   fulfillments ([`workflow::check_entity`]).
//! - `fulfillment.queries.<replica>`: this replica's own query queue
//!   (exclusive to its connection, bound to `fulfillment.queries` with the
//!   `query` key): status and progress, answered from the store. Every
//!   replica answers every query; the requester keeps the first reply.
//!
//! Events do not go out from here: every transition writes its
//! `FulfillmentStatusChanged` to the outbox in the same transaction as the
//! state, and [`message_bus::outbox::relay`] publishes them.

use std::sync::Arc;

use futures::future::{self, BoxFuture, FutureExt};
use message_bus::{Bus, BusConfig, BusError, Handler, Incoming, Outcome, ReplyTo, Route};
use shared_messages::messages::{ReplyError, ReplyErrorCode, SignalReply};
use shared_messages::topology::{
    self, FULFILLMENT_PARTITIONS_EXCHANGE, FULFILLMENT_QUERIES_QUEUE, FULFILLMENT_SIGNALS_QUEUE,
};
use shared_messages::{Envelope, Message};
use tracing::Instrument;

use crate::actor::Registry;
use crate::store::StoreError;
use crate::workflow::{self, Input, Reply};

/// The bus (not started) with its query consumer; `replica` names this
/// replica's query queue. On a store of its own (`partitions` is `None`)
/// it consumes `fulfillment.signals` itself; as one of several replicas it
/// declares the partition queues, and [`service_kit::partitions::Owner`]
/// consumes those it owns with [`signal_handler`].
pub fn connect(amqp_url: &str, replica: &str, registry: Registry, partitions: Option<u16>) -> Bus {
    let mut declared = topology::fulfillment_service_replica(replica);
    if let Some(partitions) = partitions {
        declared = declared.merge(topology::fulfillment_partitions(partitions));
    }
    let bus = Bus::new(BusConfig::new(amqp_url, "fulfillment-service", declared));
    if partitions.is_none() {
        bus.consume(FULFILLMENT_SIGNALS_QUEUE, signal_handler(&bus, &registry));
    }
    let queries_bus = bus.clone();
    bus.consume(
        &topology::fulfillment_query_queue(replica),
        Arc::new(move |incoming| handle_query(&registry, &queries_bus, incoming)),
    );
    bus
}

/// Handles signal deliveries with [`handle_signal`].
pub fn signal_handler(bus: &Bus, registry: &Registry) -> Handler {
    let (bus, registry) = (bus.clone(), registry.clone());
    Arc::new(move |incoming| handle_signal(&registry, &bus, incoming))
}

/// Sends `input` for fulfillment `id` to the replica that owns it, through
/// its partition queue, and waits up to `timeout` for its answer (an HTTP
/// request that reached a replica that does not own the fulfillment).
pub async fn signal_owner(
    bus: &Bus,
    partition: u16,
    id: &str,
    input: Input,
    timeout: std::time::Duration,
) -> Result<Reply, BusError> {
    let Some(message) = message_of(input) else {
        return Ok(Err(ReplyError::invalid("not a signal")));
    };
    let route = Route::new(
        FULFILLMENT_PARTITIONS_EXCHANGE,
        &topology::partition_key(partition),
        true,
    );
    let mut envelope = Envelope::new(id, message);
    envelope.traceparent = message_bus::trace::current_child();
    let answer = bus.request(&route, &envelope, timeout, true).await?;
    Ok(match answer.message {
        Message::SignalReply(reply) => reply_of(reply),
        other => Err(ReplyError::invalid(format!(
            "the owner answered {} instead of a SignalReply",
            other.type_name()
        ))),
    })
}

/// The signal an input is sent as (the timer's is none).
fn message_of(input: Input) -> Option<Message> {
    use shared_messages::messages::{
        CancelFulfillment, PauseFulfillment, ResumeFulfillment, StartFulfillment,
        StartFulfillmentWorkflow, UpdateShippingAddress,
    };
    Some(match input {
        Input::Create { order_id } => {
            Message::StartFulfillmentWorkflow(StartFulfillmentWorkflow { order_id })
        }
        Input::Start(request) => Message::StartFulfillment(StartFulfillment { request }),
        Input::Pause => Message::PauseFulfillment(PauseFulfillment {}),
        Input::Resume => Message::ResumeFulfillment(ResumeFulfillment {}),
        Input::Cancel { reason } => Message::CancelFulfillment(CancelFulfillment { reason }),
        Input::UpdateAddress(address) => {
            Message::UpdateShippingAddress(UpdateShippingAddress { address })
        }
        Input::StepDone { .. } => return None,
    })
}

/// The workflow's reply a `SignalReply` carries.
fn reply_of(reply: SignalReply) -> Reply {
    match (reply.accepted, reply.status, reply.error) {
        (true, Some(status), _) => Ok(workflow::Accepted {
            status,
            created: false,
        }),
        (_, _, Some(error)) => Err(error),
        _ => Err(ReplyError::invalid(
            "the owner's reply names no status and no error",
        )),
    }
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
        ..
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
        let reply = match settle(outcome.await, reply_to.is_some(), message_type) {
            Settle::Reply(reply) => reply,
            Settle::Ack => return Outcome::Ack,
            Settle::Refused(reason) => {
                tracing::warn!(%fulfillment_id, %message_id, message_type, %reason, "signal refused");
                return Outcome::Ack;
            }
            Settle::DeadLetter(reason) => return Outcome::DeadLetter(reason),
            Settle::Retry(error) => {
                tracing::error!(%fulfillment_id, %message_id, %error, "cannot store a signal's outcome");
                return Outcome::Retry(error);
            }
        };
        let answer = match &reply {
            Ok(accepted) => SignalReply::accepted(accepted.status),
            Err(error) => {
                // The status as it is now, when the fulfillment exists.
                let status = registry.load(&fulfillment_id).await.ok().flatten().map(|f| f.status);
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

/// How a signal delivery is settled once its outcome is known.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    /// Done and stored: ack.
    Ack,
    /// Refused, with nobody waiting to be told (the fulfillment recorded
    /// it and said so in its status event): ack, and log why.
    Refused(String),
    /// Answer the sender with this (accepted or rejected), then ack.
    Reply(Reply),
    /// It can never succeed: to the dead-letter queue with this reason.
    DeadLetter(String),
    /// The store failed: deliver again later.
    Retry(String),
}

/// How a signal delivery is settled: a store failure is retried, unless
/// retrying cannot help (an unreadable stored row: dead-lettered); a
/// sender that waits for an answer is answered (accepted or rejected,
/// never dead-lettered); without one, a signal for nothing or an invalid
/// one is dead-lettered with why, and any other refusal (e.g. a cancel of
/// a shipped fulfillment) is acked.
pub fn settle(
    outcome: Result<Reply, StoreError>,
    has_reply_to: bool,
    message_type: &str,
) -> Settle {
    let reply = match outcome {
        Err(error @ StoreError::Corrupt { .. }) => {
            return Settle::DeadLetter(format!("{message_type} cannot be applied: {error}"))
        }
        Err(error) => return Settle::Retry(error.to_string()),
        Ok(reply) => reply,
    };
    if has_reply_to {
        return Settle::Reply(reply);
    }
    match reply {
        Ok(_) => Settle::Ack,
        Err(error) if error.code == ReplyErrorCode::NotFound => Settle::DeadLetter(error.message),
        Err(error) if error.code == ReplyErrorCode::Invalid => {
            Settle::DeadLetter(format!("{message_type} rejected: {}", error.message))
        }
        Err(error) => Settle::Refused(error.message),
    }
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
    let query = match query_of(envelope.message) {
        Ok(query) => query,
        Err(reason) => return future::ready(Outcome::DeadLetter(reason)).boxed(),
    };
    let fulfillment_id = envelope.entity_id;
    let span = tracing::debug_span!(
        "query",
        fulfillment_id = %fulfillment_id,
        message_id = %envelope.message_id,
        progress = query == Query::Progress,
    );
    let registry = registry.clone();
    let timing = registry.timing();
    let bus = bus.clone();
    async move {
        let loaded = registry.load(&fulfillment_id).await;
        let answer = match answer_query(&fulfillment_id, query, loaded, chrono::Utc::now(), timing)
        {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        send_reply(&bus, &to, &fulfillment_id, answer).await;
        Outcome::Ack
    }
    .instrument(span)
    .boxed()
}

/// What a query asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Status,
    Progress,
}

/// The query a message is, or why it does not belong on the queue.
fn query_of(message: Message) -> Result<Query, String> {
    match message {
        Message::GetFulfillmentStatus(_) => Ok(Query::Status),
        Message::GetFulfillmentProgress(_) => Ok(Query::Progress),
        other => Err(format!(
            "{} is not a fulfillment query and does not belong on {FULFILLMENT_QUERIES_QUEUE}",
            other.type_name()
        )),
    }
}

/// The answer to a query from what the store holds, or how the delivery
/// is settled without one: a row that cannot be read is dead-lettered (it
/// will not be readable on retry), any other store failure is retried; a
/// fulfillment that does not exist is answered as not found.
fn answer_query(
    fulfillment_id: &str,
    query: Query,
    loaded: Result<Option<workflow::Fulfillment>, StoreError>,
    now: chrono::DateTime<chrono::Utc>,
    timing: workflow::Timing,
) -> Result<Message, Outcome> {
    Ok(match loaded {
        Err(error @ StoreError::Corrupt { .. }) => {
            return Err(Outcome::DeadLetter(error.to_string()))
        }
        Err(error) => return Err(Outcome::Retry(error.to_string())),
        Ok(None) => Message::QueryFailed(ReplyError::not_found(format!(
            "no fulfillment {fulfillment_id}"
        ))),
        Ok(Some(state)) => match query {
            Query::Progress => {
                Message::FulfillmentProgressReply(Box::new(state.progress_view(now, timing)))
            }
            Query::Status => Message::FulfillmentStatusReply(Box::new(state.status_view())),
        },
    })
}

async fn send_reply(bus: &Bus, to: &ReplyTo, fulfillment_id: &str, message: Message) {
    let envelope = Envelope::new(fulfillment_id, message);
    if let Err(error) = bus.reply(to, &envelope).await {
        // The requester times out; nothing else to do.
        tracing::warn!(%fulfillment_id, %error, "cannot send a reply");
    }
}

#[cfg(test)]
mod tests {
    use shared_messages::messages::{FulfillmentStatus, GetFulfillmentStatus, PauseFulfillment};

    use super::*;
    use crate::workflow::Accepted;

    #[test]
    fn deliveries_are_settled_by_their_outcome() {
        let ok: Reply = Ok(Accepted {
            status: FulfillmentStatus::Picking,
            created: false,
        });
        let not_found: Reply = Err(ReplyError::not_found("no fulfillment f"));
        let invalid: Reply = Err(ReplyError::invalid("items must not be empty"));
        let conflict: Reply = Err(ReplyError::conflict("it has already shipped"));
        let t = "PauseFulfillment";
        assert_eq!(settle(Ok(ok.clone()), false, t), Settle::Ack);
        assert_eq!(settle(Ok(ok.clone()), true, t), Settle::Reply(ok));
        assert_eq!(
            settle(Ok(not_found.clone()), false, t),
            Settle::DeadLetter("no fulfillment f".into())
        );
        assert_eq!(
            settle(Ok(not_found.clone()), true, t),
            Settle::Reply(not_found)
        );
        assert_eq!(
            settle(Ok(invalid.clone()), false, t),
            Settle::DeadLetter("PauseFulfillment rejected: items must not be empty".into())
        );
        assert_eq!(settle(Ok(invalid.clone()), true, t), Settle::Reply(invalid));
        // A refused cancel of a shipped one: recorded, acked, never dead-lettered.
        assert_eq!(
            settle(Ok(conflict.clone()), false, t),
            Settle::Refused("it has already shipped".into())
        );
        assert_eq!(
            settle(Ok(conflict.clone()), true, t),
            Settle::Reply(conflict)
        );
        // The store failed: again later, whoever waits.
        for has_reply_to in [false, true] {
            assert_eq!(
                settle(Err(StoreError::Unavailable("disk".into())), has_reply_to, t),
                Settle::Retry("store unavailable: disk".into())
            );
        }
        // A row that cannot be read will not be readable next time either.
        let corrupt = StoreError::Corrupt {
            id: "f".into(),
            reason: "bad json".into(),
        };
        assert!(matches!(
            settle(Err(corrupt), true, t),
            Settle::DeadLetter(reason) if reason.contains("PauseFulfillment") && reason.contains("bad json")
        ));
    }

    #[test]
    fn queries_are_answered_from_the_store_or_settled_without_an_answer() {
        let timing = workflow::Timing {
            step_delay: std::time::Duration::from_secs(1),
        };
        let now = chrono::Utc::now();
        let answer = |query, loaded| answer_query("f-1", query, loaded, now, timing);
        assert!(matches!(
            answer(Query::Status, Ok(None)),
            Ok(Message::QueryFailed(e)) if e.code == ReplyErrorCode::NotFound && e.message.contains("f-1")
        ));
        assert_eq!(
            answer(Query::Progress, Err(StoreError::Unavailable("disk".into()))),
            Err(Outcome::Retry("store unavailable: disk".into()))
        );
        let corrupt = StoreError::Corrupt {
            id: "f-1".into(),
            reason: "bad json".into(),
        };
        assert!(matches!(
            answer(Query::Status, Err(corrupt)),
            Err(Outcome::DeadLetter(reason)) if reason.contains("bad json")
        ));
        assert_eq!(
            query_of(Message::GetFulfillmentProgress(
                shared_messages::messages::GetFulfillmentProgress {}
            )),
            Ok(Query::Progress)
        );
        // a stored one: its status, or its progress as of now
        let request = shared_messages::messages::FulfillmentRequest {
            order_id: "ORD-1".into(),
            customer_id: "c-1".into(),
            customer_name: None,
            customer_email: None,
            items: vec![shared_messages::messages::OrderItem {
                product_id: "p".into(),
                product_name: "Thing".into(),
                quantity: 1,
                price: 1.0,
            }],
            shipping_address: shared_messages::messages::Address {
                street: "1 Main St".into(),
                city: "Springfield".into(),
                state: "IL".into(),
                zip_code: "62701".into(),
                country: "USA".into(),
            },
        };
        let ctx = workflow::Context {
            message_id: None,
            now,
            timing,
        };
        let stored = workflow::create("fulfillment-ORD-1", &Input::Start(request), ctx).state;
        assert!(stored.is_some());
        assert!(matches!(
            answer(Query::Status, Ok(stored.clone())),
            Ok(Message::FulfillmentStatusReply(v)) if v.status == FulfillmentStatus::Picking
        ));
        assert!(matches!(
            answer(Query::Progress, Ok(stored)),
            Ok(Message::FulfillmentProgressReply(p)) if p.total_steps == 5 && p.estimated_completion.is_some()
        ));
        let err = query_of(Message::PauseFulfillment(PauseFulfillment {}))
            .expect_err("a signal is not a query");
        assert!(err.contains(FULFILLMENT_QUERIES_QUEUE), "{err}");
    }

    #[test]
    fn only_signals_are_inputs() {
        assert_eq!(
            input_of(Message::PauseFulfillment(PauseFulfillment {})),
            Ok(Input::Pause)
        );
        let err = input_of(Message::GetFulfillmentStatus(GetFulfillmentStatus {}))
            .expect_err("a query is not a signal");
        assert!(
            err.contains("GetFulfillmentStatus") && err.contains(FULFILLMENT_SIGNALS_QUEUE),
            "{err}"
        );
    }
}

//! Requests for orders another replica owns (several replicas on one
//! PostgreSQL database, `service_kit::partitions`).
//!
//! Reads (status, list, history, progress) answer from the store, which
//! every replica shares. What changes an order, or waits for its changes
//! (cancel, update, pause and resume of its fulfillment, `waitFor`), is
//! done by the replica that owns the order: a replica that does not sends
//! the request as an [`OrderCommand`] to the order's partition queue
//! (`order-service.partitions`, keyed by the partition) and answers the
//! client exactly what the owner answered ([`OrderCommandReply`]: status
//! and body). A new order gets an id in a partition the replica holds;
//! one that holds none sends the creation to an owner.
//!
//! On the owner, [`command_handler`] runs each command as the HTTP route
//! would and replies. A command for an order this replica no longer owns
//! (its partition was just handed over) goes on to the queue of the
//! order's partition, for its owner; one that nobody waits for (no
//! `reply_to`) is dead-lettered.

use std::sync::Arc;
use std::time::Duration;

use actix::ArbiterHandle;
use actix_web::body::MessageBody;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use futures::FutureExt;
use message_bus::{Handler, Incoming, Outcome, Route};
use serde_json::Value;
use service_kit::http::{ApiError, Reply};
use shared_messages::messages::{OrderAction, OrderCommand, OrderCommandReply};
use shared_messages::topology::{partition_key, ORDER_PARTITIONS_EXCHANGE};
use shared_messages::{Envelope, Message};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::orders::{self, order_id};
use super::AppState;
use crate::ids;
use crate::workflow::{DetailsUpdate, Input, OrderDetails};

/// Where the commands for partition `n` go: its queue, consumed by its
/// owner. Mandatory: the partition queues always exist once declared.
fn route(partition: u16) -> Route {
    Route::new(ORDER_PARTITIONS_EXCHANGE, &partition_key(partition), true)
}

/// When another replica owns the order `workflow_id` names: the owner's
/// answer to `action`. `None` when this replica owns it (or is the only
/// one): the caller handles it here. `waits` is how long the owner may
/// take beyond the usual (a `waitFor`, a cancel awaiting fulfillment).
pub(super) async fn elsewhere(
    state: &AppState,
    workflow_id: &str,
    action: OrderAction,
    waits: Duration,
) -> Option<Reply> {
    let held = state.orders.held()?;
    let id = order_id(workflow_id);
    if held.owns(id) {
        return None;
    }
    let partition = held.partition_of(id);
    // A wait is a query; a change stays queued until an owner takes it.
    let persistent = !matches!(action, OrderAction::WaitFor { .. });
    let command = OrderCommand {
        workflow_id: workflow_id.to_owned(),
        action,
        expires_at: None,
    };
    Some(send(state, partition, id, command, waits, persistent).await)
}

/// When this replica holds no partition to create an order in: the answer
/// of the owner of some partition, which creates it in one of its own.
pub(super) async fn create_elsewhere(state: &AppState, details: &OrderDetails) -> Option<Reply> {
    let held = state.orders.held()?;
    if !held.owned().is_empty() {
        return None;
    }
    let candidate = ids::new_order_id(chrono::Utc::now());
    let partition = held.partition_of(&candidate);
    let details = match serde_json::to_value(details) {
        Ok(details) => details,
        Err(e) => {
            return Some(Err(ApiError::internal(format!(
                "order details as JSON: {e}"
            ))))
        }
    };
    let command = OrderCommand {
        workflow_id: candidate.clone(),
        action: OrderAction::Create { details },
        expires_at: None,
    };
    // Expiring with the wait: a creation nobody answered in time must not
    // happen later behind the client's back.
    Some(send(state, partition, &candidate, command, Duration::ZERO, false).await)
}

/// Sends `command` to the owner of `partition` and turns its reply into
/// the response.
async fn send(
    state: &AppState,
    partition: u16,
    order_id: &str,
    mut command: OrderCommand,
    waits: Duration,
    persistent: bool,
) -> Reply {
    if state
        .orders
        .held()
        .is_some_and(|held| held.owned().is_empty())
    {
        // Every replica shares the database. A replica holding no
        // partition may have lost them because the database does not
        // answer it; then no owner could act either, and the command
        // would only expire in its queue: answer as the store does.
        if let Err(error) = state.orders.store().ping().await {
            return Err(ApiError::store(error));
        }
    }
    // The owner may itself wait up to QUERY_TIMEOUT_MS for fulfillment.
    let timeout = state.query_timeout * 2 + waits;
    if !persistent {
        // Dropped by the owner once nobody waits for it. Not a broker
        // TTL: a message expiring in a partition queue would be
        // dead-lettered, and an unanswered wait is no poison message.
        command.expires_at = chrono::Duration::from_std(timeout)
            .ok()
            .map(|t| chrono::Utc::now() + t);
    }
    let envelope = Envelope::new(order_id, Message::OrderCommand(command))
        .traced(message_bus::trace::current_child());
    let bus = state.orders.bus();
    let answer = bus
        .request(&route(partition), &envelope, timeout, true)
        .await
        .map_err(|e| ApiError::from_bus(e, "the order's owner", timeout.as_millis(), persistent))?;
    match answer.message {
        Message::OrderCommandReply(OrderCommandReply { status, body }) => {
            let status = StatusCode::from_u16(status).map_err(|_| {
                ApiError::BadReply(format!("the order's owner answered status {status}"))
            })?;
            Ok(HttpResponse::build(status).json(body))
        }
        other => Err(ApiError::BadReply(format!(
            "the order's owner answered {} to a command",
            other.type_name()
        ))),
    }
}

/// Handles the [`OrderCommand`]s of the partitions this replica owns: each
/// runs on `arbiter` (where the HTTP handlers' work runs) as its route
/// would, and its response goes back to the sender.
pub fn command_handler(state: web::Data<AppState>, arbiter: ArbiterHandle) -> Handler {
    Arc::new(move |incoming: Incoming| {
        let (Some(to), Message::OrderCommand(command)) =
            (incoming.reply_to.clone(), &incoming.envelope.message)
        else {
            let reason = match incoming.reply_to {
                None => "without reply_to: nobody to answer",
                Some(_) => "is not an order command",
            };
            let message_type = incoming.envelope.message_type();
            return futures::future::ready(Outcome::DeadLetter(format!("{message_type} {reason}")))
                .boxed();
        };
        let command = command.clone();
        if expired(&command, chrono::Utc::now()) {
            // Its sender gave up waiting: nothing to do, nobody to answer.
            tracing::debug!(order_id = %incoming.envelope.entity_id, "an order command past its expiry dropped");
            return futures::future::ready(Outcome::Ack).boxed();
        }
        if let Some(partition) = elsewhere_now(&state, &command) {
            // The partition was handed over (or the command sent to the
            // wrong one): on to the queue of the order's partition, whose
            // owner answers it.
            let bus = state.orders.bus().clone();
            return async move {
                match bus.forward(&route(partition), &incoming).await {
                    Ok(()) => Outcome::Ack,
                    Err(error) => Outcome::Retry(format!(
                        "forwarding a command to partition {partition}: {error}"
                    )),
                }
            }
            .boxed();
        }
        let entity_id = incoming.envelope.entity_id;
        // In the trace of the request the command stands for.
        let traceparent = incoming
            .traceparent
            .or_else(|| incoming.envelope.traceparent.clone());
        let (done, answered) = oneshot::channel();
        let state = state.clone();
        arbiter.spawn_fn(move || {
            actix_rt::spawn(async move {
                let span = tracing::info_span!(
                    "order_command",
                    order_id = %entity_id,
                    trace_id = tracing::field::Empty,
                );
                let context = message_bus::trace::start(&span, traceparent.as_deref());
                let work = run_here(&state, command).instrument(span);
                let response = message_bus::trace::scope(context, work).await;
                let (status, body) = parts(response);
                let reply = Envelope::new(
                    entity_id.as_str(),
                    Message::OrderCommandReply(OrderCommandReply { status, body }),
                );
                if let Err(error) = state.orders.bus().reply(&to, &reply).await {
                    // The sender times out; nothing else to do.
                    tracing::warn!(order_id = %entity_id, %error, "cannot send a command's reply");
                }
                let _ = done.send(());
            });
        });
        async move {
            match answered.await {
                Ok(()) => Outcome::Ack,
                Err(_) => Outcome::Retry("the command's task ended without answering".into()),
            }
        }
        .boxed()
    })
}

/// The partition to send `command` on to when this replica cannot run it
/// now: the order's is not held (a creation: no partition is held).
/// Whether nobody waits for `command`'s answer any more at `now`.
fn expired(command: &OrderCommand, now: chrono::DateTime<chrono::Utc>) -> bool {
    command.expires_at.is_some_and(|at| at <= now)
}

fn elsewhere_now(state: &AppState, command: &OrderCommand) -> Option<u16> {
    let held = state.orders.held()?;
    let id = match &command.action {
        OrderAction::Create { .. } if !held.owned().is_empty() => return None,
        _ => order_id(&command.workflow_id),
    };
    (!held.owns(id)).then(|| held.partition_of(id))
}

/// Runs `command` as its HTTP route would on this replica.
async fn run_here(state: &AppState, command: OrderCommand) -> HttpResponse {
    let path = command.workflow_id.as_str();
    let reply = match command.action {
        OrderAction::Create { details } => match serde_json::from_value::<OrderDetails>(details) {
            Ok(details) => orders::created_here(state, details).await,
            Err(e) => Err(ApiError::InvalidBody(format!("the order's details: {e}"))),
        },
        OrderAction::Cancel { reason } => orders::cancel_here(state, path, reason).await,
        OrderAction::Update { update } => match serde_json::from_value::<DetailsUpdate>(update) {
            Ok(update) => orders::update_here(state, path, update).await,
            Err(e) => Err(ApiError::InvalidBody(format!("the update: {e}"))),
        },
        OrderAction::PauseFulfillment => {
            orders::control(state, path, Input::PauseFulfillment, "Fulfillment paused").await
        }
        OrderAction::ResumeFulfillment => {
            orders::control(state, path, Input::ResumeFulfillment, "Fulfillment resumed").await
        }
        OrderAction::WaitFor {
            wait_for,
            timeout_ms,
        } => orders::status_here(state, path, Some(&wait_for), timeout_ms).await,
    };
    reply.unwrap_or_else(|error| error.error_response())
}

/// A response's status and JSON body (`null` for an empty one).
fn parts(response: HttpResponse) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = match response.into_body().try_into_bytes() {
        Ok(bytes) if bytes.is_empty() => Value::Null,
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_expiry_is_expired_and_one_without_never() {
        let now = chrono::Utc::now();
        let mut command = OrderCommand {
            workflow_id: "ORD-1".into(),
            action: OrderAction::PauseFulfillment,
            expires_at: None,
        };
        assert!(!expired(&command, now), "a change waits for its owner");
        command.expires_at = Some(now + chrono::Duration::seconds(1));
        assert!(!expired(&command, now));
        command.expires_at = Some(now - chrono::Duration::milliseconds(1));
        assert!(expired(&command, now));
    }

    #[test]
    fn a_response_travels_as_its_status_and_json_body() {
        let ok = HttpResponse::Created().json(serde_json::json!({"orderId": "ORD-1"}));
        assert_eq!(parts(ok), (201, serde_json::json!({"orderId": "ORD-1"})));
        let refused = ApiError::Conflict("it has already shipped".into()).error_response();
        assert_eq!(
            parts(refused),
            (
                409,
                serde_json::json!({"error": "conflict", "message": "it has already shipped"})
            )
        );
        assert_eq!(
            parts(HttpResponse::NoContent().finish()),
            (204, Value::Null)
        );
    }
}

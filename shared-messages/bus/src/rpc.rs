//! Request/reply over RabbitMQ's direct reply-to.
//!
//! Every request gets a fresh correlation id and a slot in the pending map;
//! the reply consumer (one per connection, on the same channel requests are
//! published on, as direct reply-to requires) hands each reply to its slot.
//! A reply whose slot is gone (timed out) is dropped. Requests are published
//! in confirm mode with the route's `mandatory` flag, so a refused or
//! unroutable request fails at once; when the connection drops, every
//! pending slot is dropped and its request fails with
//! [`BusError::NotConnected`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::Consumer;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::channels::Session;
use super::{Bus, BusError, Inner, Route};
use shared_messages::envelope::Envelope;

pub(super) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

pub(super) async fn request(
    bus: &Bus,
    session: &Session,
    route: &Route,
    envelope: &Envelope,
    timeout: Duration,
    persistent: bool,
) -> Result<Envelope, BusError> {
    let correlation_id = Uuid::new_v4().to_string();
    let (tx, rx) = oneshot::channel();
    bus.inner
        .pending
        .lock()
        .expect("pending lock is never poisoned")
        .insert(correlation_id.clone(), tx);
    // Whatever happens below, the slot goes: a late reply finds nothing.
    let _slot = SlotGuard {
        inner: bus.inner.clone(),
        correlation_id: correlation_id.clone(),
    };

    let mut properties = bus
        .properties(envelope, persistent)
        .with_correlation_id(correlation_id.as_str().into())
        .with_reply_to(DIRECT_REPLY_TO.into());
    if !persistent {
        properties = properties.with_expiration(timeout.as_millis().to_string().into());
    }
    let outcome = tokio::time::timeout(timeout, async {
        // Confirmed, and returned when nothing is bound (`mandatory` on the
        // route): a signal that reached no queue is an error at once, not a
        // timeout.
        let confirm = route
            .publish_on(&session.rpc, &envelope.to_json(), properties)
            .await?;
        super::confirmed(route, envelope, confirm.await)?;
        let reply = rx.await.map_err(|_| BusError::NotConnected)?;
        reply.map_err(BusError::BadReply)
    })
    .await;
    match outcome {
        Ok(reply) => reply,
        Err(_) => Err(BusError::Timeout(timeout)),
    }
}

struct SlotGuard {
    inner: Arc<Inner>,
    correlation_id: String,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.remove(&self.correlation_id);
        }
    }
}

/// Hands replies to their waiting requests until the connection ends.
pub(super) async fn route_replies(inner: Arc<Inner>, mut replies: Consumer) {
    while let Some(Ok(delivery)) = replies.next().await {
        let Some(correlation_id) = delivery.properties.correlation_id().as_ref() else {
            tracing::warn!("reply without correlation id dropped");
            continue;
        };
        let slot = inner
            .pending
            .lock()
            .expect("pending lock is never poisoned")
            .remove(correlation_id.as_str());
        let Some(slot) = slot else {
            tracing::debug!(%correlation_id, "late reply dropped");
            continue;
        };
        let _ = slot.send(Envelope::from_json(&delivery.data));
    }
}

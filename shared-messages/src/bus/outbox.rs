//! The transactional outbox relay.
//!
//! A service stores each state transition together with the messages it
//! causes (its "effects") in one transaction, in its own store. The relay
//! then publishes what is stored, with confirms, and deletes each row only
//! once the broker has confirmed it. So a crash between the two loses
//! nothing: the rows are still there at the next start and go out then. A
//! row may go out twice (crash after publish, before delete); its message id
//! is deterministic, and receivers ignore ids they have seen.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::{Bus, BusError, Route};
use crate::envelope::Envelope;

/// One stored message waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// Position in the outbox; rows are published in this order.
    pub seq: i64,
    pub route: Route,
    pub envelope: Envelope,
}

/// The store side of the outbox, implemented by each service's store.
pub trait OutboxStore: Send + Sync + 'static {
    /// Up to `limit` of the oldest rows.
    fn pending(&self, limit: usize) -> Result<Vec<OutboxMessage>, String>;
    /// Removes rows that the broker has confirmed.
    fn remove(&self, seqs: &[i64]) -> Result<(), String>;
}

/// Messages published per batch; confirms within a batch are pipelined.
const BATCH: usize = 256;
/// How often the relay looks at the outbox when nobody nudges it, and how
/// long it waits after a failure before trying again.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Wakes the relay when new rows are stored.
#[derive(Clone, Default)]
pub struct OutboxSignal(Arc<Notify>);

impl OutboxSignal {
    pub fn new() -> Self {
        Self::default()
    }
    /// Call after committing rows to the outbox.
    pub fn notify(&self) {
        self.0.notify_one();
    }
}

/// Publishes stored messages until shutdown. Spawn it once per process.
pub async fn relay(bus: Bus, store: Arc<dyn OutboxStore>, signal: OutboxSignal) {
    let mut shutdown = bus.inner.shutdown.subscribe();
    loop {
        let drained = match publish_batch(&bus, &store).await {
            Ok(n) => n == BATCH,
            Err(error) => {
                tracing::debug!(%error, "outbox relay waiting for the broker");
                false
            }
        };
        if drained {
            continue;
        }
        tokio::select! {
            _ = signal.0.notified() => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = super::stopping(&mut shutdown) => break,
        }
    }
    // Last chance to send what is stored before the connection closes.
    let _ = publish_batch(&bus, &store).await;
}

/// Runs a store call on tokio's blocking pool, so the thread the relay
/// shares with the service's actors does not wait on the disk.
async fn blocking<T: Send + 'static>(
    store: &Arc<dyn OutboxStore>,
    call: impl FnOnce(&dyn OutboxStore) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .unwrap_or_else(|e| Err(format!("outbox store call failed: {e}")))
}

async fn publish_batch(bus: &Bus, store: &Arc<dyn OutboxStore>) -> Result<usize, BusError> {
    if !bus.is_connected() {
        return Err(BusError::NotConnected);
    }
    let rows = blocking(store, |s| s.pending(BATCH)).await.map_err(|e| {
        tracing::error!(error = %e, "cannot read the outbox");
        BusError::NotConnected
    })?;
    if rows.is_empty() {
        return Ok(0);
    }
    let messages: Vec<(Route, Envelope)> = rows
        .iter()
        .map(|r| (r.route.clone(), r.envelope.clone()))
        .collect();
    match bus.publish_all(&messages).await {
        Ok(()) => {}
        Err(BusError::Unroutable {
            exchange,
            routing_key,
        }) => {
            // Nothing is bound to receive these (e.g. events nobody
            // subscribes to); keeping them would block the outbox forever.
            tracing::warn!(%exchange, %routing_key, "outbox message had no route; dropped");
        }
        Err(error) => return Err(error),
    }
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    if let Err(error) = blocking(store, move |s| s.remove(&seqs)).await {
        tracing::error!(%error, "cannot clear published outbox rows; they will be sent again");
    }
    Ok(rows.len())
}

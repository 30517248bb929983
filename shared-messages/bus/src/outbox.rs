//! The transactional outbox relay.
//!
//! A service stores each state transition together with the messages it
//! causes (its "effects") in one transaction, in its own store. The relay
//! then publishes what is stored, with confirms, and deletes each row only
//! once the broker has confirmed it. So a crash between the two loses
//! nothing: the rows are still there at the next start and go out then. A
//! row may go out twice (crash after publish, before delete); its message id
//! is deterministic, and receivers ignore ids they have seen.
//!
//! A row the broker refuses (nack) or cannot route (a mandatory signal
//! with no queue bound) is never deleted: it is logged, counted
//! (`outbox_publish_failures`), kept back and tried again with capped
//! exponential backoff ([`Held`]), while the rest of its batch goes out and
//! is deleted as usual.
//!
//! A row that cannot be decoded never blocks the relay and is never
//! dropped: the store moves it out of the outbox into its quarantine (kept
//! with its reason and listed on the service's `GET /quarantine`), logs it
//! and counts it (`outbox_rows_quarantined`), see [`Undecodable`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::backoff::Backoff;
use super::{Bus, BusError, Route};
use shared_messages::envelope::Envelope;

/// One stored message waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// Position in the outbox; rows are published in this order.
    pub seq: i64,
    pub route: Route,
    pub envelope: Envelope,
}

/// An outbox row whose stored message does not decode. The store moves it
/// out of the outbox into its quarantine, under [`Undecodable::entity_id`]
/// with [`Undecodable::reason`] (which keeps the route and the stored body),
/// in one transaction, then calls [`Undecodable::reported`].
#[derive(Debug, Clone, PartialEq)]
pub struct Undecodable {
    pub seq: i64,
    pub reason: String,
}

impl Undecodable {
    /// Describes row `seq` whose `body` failed to decode with `error`.
    pub fn new(
        seq: i64,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        error: &dyn std::fmt::Display,
    ) -> Self {
        Self {
            seq,
            reason: format!(
                "outbox message to exchange '{exchange}' with routing key '{routing_key}' cannot be decoded: {error}; stored body: {}",
                String::from_utf8_lossy(body)
            ),
        }
    }

    /// Decodes one stored row: the message to publish, or, when its body
    /// does not decode, the row to move to the quarantine.
    pub fn decode(
        seq: i64,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
    ) -> Result<OutboxMessage, Self> {
        match Envelope::from_json(body) {
            Ok(envelope) => Ok(OutboxMessage {
                seq,
                route: Route::new(exchange, routing_key, mandatory),
                envelope,
            }),
            Err(error) => Err(Self::new(seq, exchange, routing_key, body, &error)),
        }
    }

    /// The quarantine's key for this row.
    pub fn entity_id(&self) -> String {
        format!("outbox row {}", self.seq)
    }

    /// Logs and counts the row once it has been moved to the quarantine.
    pub fn reported(&self) {
        tracing::error!(
            seq = self.seq,
            reason = %self.reason,
            "undecodable outbox row moved to the quarantine"
        );
        super::metrics::METRICS.outbox_quarantined.inc();
    }
}

/// The store side of the outbox, implemented by each service's store.
/// Its calls are async: the relay shares its thread with the service's
/// actors, which must not wait on the disk or the database server.
pub trait OutboxStore: Send + Sync + 'static {
    /// Up to `limit` of the oldest rows. A row that does not decode is
    /// moved to the store's quarantine ([`Undecodable`]) and left out.
    fn pending(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxMessage>, String>>;
    /// Removes rows that the broker has confirmed.
    fn remove<'a>(&'a self, seqs: &'a [i64]) -> BoxFuture<'a, Result<(), String>>;
}

/// Messages published per batch; confirms within a batch are pipelined.
const BATCH: usize = 256;
/// How often the relay looks at the outbox when nobody nudges it, and how
/// long it waits after a failure before trying again.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Longest wait before a refused or unroutable row is tried again.
const HELD_MAX: Duration = Duration::from_secs(30);
/// Most rows kept back at once: past this many, the oldest batch is read
/// without skipping any, so held rows cannot starve newer ones forever
/// and cannot grow the read without bound either.
const HELD_CAP: usize = 4 * BATCH;

/// Outbox rows whose publish failed, and when each may be tried again.
#[derive(Debug, Default)]
pub(crate) struct Held {
    rows: HashMap<i64, (Backoff, Instant)>,
}

impl Held {
    /// May row `seq` be published at `now`?
    pub(crate) fn due(&self, seq: i64, now: Instant) -> bool {
        self.rows.get(&seq).is_none_or(|(_, at)| *at <= now)
    }

    /// Row `seq` failed at `now`; returns how long it is kept back.
    pub(crate) fn failed(&mut self, seq: i64, now: Instant) -> Duration {
        let (backoff, at) = self
            .rows
            .entry(seq)
            .or_insert_with(|| (Backoff::new(IDLE_POLL, HELD_MAX), now));
        let delay = backoff.next_delay();
        *at = now + delay;
        delay
    }

    /// Row `seq` went out (or is gone): forget it.
    pub(crate) fn forget(&mut self, seq: i64) {
        self.rows.remove(&seq);
    }

    /// Keeps only rows still in the outbox.
    pub(crate) fn retain(&mut self, present: &HashSet<i64>) {
        self.rows.retain(|seq, _| present.contains(seq));
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }
}

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
    let mut held = Held::default();
    loop {
        let drained = match publish_batch(&bus, &store, &mut held).await {
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
    let _ = publish_batch(&bus, &store, &mut held).await;
}

/// Publishes the oldest rows that are due, deletes those confirmed, and
/// keeps back those refused or unroutable. Returns how many were sent.
async fn publish_batch(
    bus: &Bus,
    store: &Arc<dyn OutboxStore>,
    held: &mut Held,
) -> Result<usize, BusError> {
    if !bus.is_connected() {
        return Err(BusError::NotConnected);
    }
    let limit = BATCH + held.len().min(HELD_CAP);
    let rows = store.pending(limit).await.map_err(|e| {
        tracing::error!(error = %e, "cannot read the outbox");
        BusError::NotConnected
    })?;
    held.retain(&rows.iter().map(|r| r.seq).collect());
    let now = Instant::now();
    let skip_held = held.len() < HELD_CAP;
    let due: Vec<&OutboxMessage> = rows
        .iter()
        .filter(|r| !skip_held || held.due(r.seq, now))
        .take(BATCH)
        .collect();
    if due.is_empty() {
        return Ok(0);
    }
    let messages: Vec<(Route, Envelope)> = due
        .iter()
        .map(|r| (r.route.clone(), r.envelope.clone()))
        .collect();
    let results = bus.publish_each(&messages).await;
    let mut sent = Vec::with_capacity(due.len());
    let mut connection_error = None;
    for (row, result) in due.iter().zip(results) {
        match result {
            Ok(()) => {
                held.forget(row.seq);
                sent.push(row.seq);
            }
            Err(error @ (BusError::Unroutable { .. } | BusError::Nacked)) => {
                let retry_in = held.failed(row.seq, now);
                super::metrics::METRICS
                    .outbox_failures
                    .get_or_create(&super::metrics::RouteLabels {
                        exchange: row.route.exchange.clone(),
                        routing_key: row.route.routing_key.clone(),
                    })
                    .inc();
                tracing::warn!(
                    seq = row.seq,
                    message_id = %row.envelope.message_id,
                    exchange = %row.route.exchange,
                    routing_key = %row.route.routing_key,
                    %error,
                    ?retry_in,
                    "outbox message not accepted by the broker; kept and retried"
                );
            }
            Err(error) => {
                // The channel or connection failed: the row is fine, the
                // next round sends it again.
                connection_error.get_or_insert(error);
            }
        }
    }
    super::metrics::METRICS.outbox_held.set(held.len() as i64);
    if !sent.is_empty() {
        if let Err(error) = store.remove(&sent).await {
            tracing::error!(%error, "cannot clear published outbox rows; they will be sent again");
        }
    }
    match connection_error {
        Some(error) => Err(error),
        None => Ok(due.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_row_is_held_back_with_growing_waits() {
        let mut held = Held::default();
        let t0 = Instant::now();
        assert!(held.due(7, t0));
        let first = held.failed(7, t0);
        assert_eq!(first, IDLE_POLL);
        assert!(!held.due(7, t0));
        assert!(held.due(8, t0), "other rows are not held");
        assert!(held.due(7, t0 + first));
        let second = held.failed(7, t0 + first);
        assert_eq!(second, IDLE_POLL * 2);
        for _ in 0..20 {
            held.failed(7, t0);
        }
        assert_eq!(held.failed(7, t0), HELD_MAX);
    }

    #[test]
    fn rows_sent_or_gone_are_forgotten() {
        let mut held = Held::default();
        let t0 = Instant::now();
        held.failed(1, t0);
        held.failed(2, t0);
        held.failed(3, t0);
        held.forget(1);
        held.retain(&[3].into_iter().collect());
        assert_eq!(held.len(), 1);
        assert!(held.due(1, t0) && held.due(2, t0) && !held.due(3, t0));
    }
}

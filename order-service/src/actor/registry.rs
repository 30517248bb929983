//! The registry: order id -> the address of its running actor.
//!
//! Only open orders have actors. A lookup that misses loads the order from
//! the store and, when it is still open, spawns its actor (so an actor that
//! stopped or was never started after a restart is brought back); finished
//! orders are answered from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use futures::future::BoxFuture;
use message_bus::outbox::OutboxSignal;
use message_bus::Bus;
use service_kit::actors::Actors;
use service_kit::partitions::{Held, Ids, Workflows};
use tokio::sync::oneshot;

use super::{Applied, Apply, OrderActor};
use crate::metrics::METRICS;
use service_kit::store::group_commit::CommitError;

use crate::ids;
use crate::store::{Batched, Store, StoreError, Write, Writer};
use crate::workflow::{self, Input, OrderDetails, OrderState, Rejection, RetryPolicy};

/// Step durations, intervals and retry policies the actors use.
#[derive(Debug, Clone)]
pub struct Timings {
    pub inventory_delay: Duration,
    pub payment_delay: Duration,
    pub poll_interval: Duration,
    pub query_timeout: Duration,
    pub payment_decline_rate: f64,
    /// How long after the hand-over an unfinished fulfillment makes its
    /// order overdue.
    pub fulfillment_deadline: Duration,
    pub inventory_retry: RetryPolicy,
    pub payment_retry: RetryPolicy,
    /// Simulated transient failures of each activity (0 to 1).
    pub inventory_transient_failure_rate: f64,
    pub payment_transient_failure_rate: f64,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            inventory_delay: Duration::ZERO,
            payment_delay: Duration::ZERO,
            poll_interval: Duration::from_secs(5),
            query_timeout: Duration::from_secs(5),
            payment_decline_rate: 0.0,
            fulfillment_deadline: Duration::from_secs(15 * 60),
            inventory_retry: RetryPolicy::default(),
            payment_retry: RetryPolicy::default(),
            inventory_transient_failure_rate: 0.0,
            payment_transient_failure_rate: 0.0,
        }
    }
}

pub use crate::store::Quarantined;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no such order")]
    NotFound,
    #[error(transparent)]
    Rejected(Rejection),
    #[error(transparent)]
    Store(StoreError),
    #[error("the order's actor is restarting; try again")]
    Unavailable,
}

struct Inner {
    actors: Actors<OrderActor>,
    /// Who waits for an order's next change of status (`waitFor`).
    watchers: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    quarantine: Mutex<Vec<Quarantined>>,
    finished_writes: tokio::sync::Mutex<()>,
    arbiter: ArbiterHandle,
    store: Arc<dyn Store>,
    /// Where actors' transitions are stored (group commit).
    writer: Writer,
    bus: Bus,
    outbox: OutboxSignal,
    timings: Timings,
    /// The partitions this replica holds, as one of several replicas on
    /// PostgreSQL (unset on a store of its own: every order is its own).
    held: OnceLock<Arc<Held>>,
}

/// Creates orders, finds their actors and feeds them. Cheap to clone.
#[derive(Clone)]
pub struct Orders {
    inner: Arc<Inner>,
}

enum Lookup {
    Running(Addr<OrderActor>),
    Finished,
    Missing,
}

impl Orders {
    /// Actors run on `arbiter` (the main system's), whoever creates them;
    /// their writes go through a group commit (a task of its own).
    pub fn new(
        arbiter: ArbiterHandle,
        store: Arc<dyn Store>,
        bus: Bus,
        outbox: OutboxSignal,
        timings: Timings,
    ) -> std::io::Result<Self> {
        let writer = Writer::start("store-writer", Batched(store.clone()), outbox.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                actors: Actors::new(&METRICS),
                watchers: Mutex::new(HashMap::new()),
                quarantine: Mutex::new(Vec::new()),
                finished_writes: tokio::sync::Mutex::new(()),
                arbiter,
                store,
                writer,
                bus,
                outbox,
                timings,
                held: OnceLock::new(),
            }),
        })
    }

    /// Makes this one of several replicas: it creates orders only in the
    /// partitions `held` names (once; a second call is ignored).
    pub fn partitioned(&self, held: Arc<Held>) {
        let _ = self.inner.held.set(held);
    }

    /// The partitions held, when this is one of several replicas.
    pub fn held(&self) -> Option<&Arc<Held>> {
        self.inner.held.get()
    }

    /// Whether order `order_id` is this replica's to change (always, on a
    /// store of its own).
    pub fn owns(&self, order_id: &str) -> bool {
        self.held().is_none_or(|held| held.owns(order_id))
    }

    /// A new order id this replica may write: one in a partition it holds
    /// (ids are random, so a few tries find one); `None` when it holds no
    /// partition.
    fn new_order_id(&self) -> Option<String> {
        let Some(held) = self.held() else {
            return Some(ids::new_order_id(Utc::now()));
        };
        let owned = held.owned();
        if owned.is_empty() {
            return None;
        }
        // Each try lands in a held partition with probability
        // owned / PARTITIONS: this many tries miss only if it lost them all.
        for _ in 0..100_000 {
            let id = ids::new_order_id(Utc::now());
            if owned.contains(&held.partition_of(&id)) {
                return Some(id);
            }
        }
        None
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }
    pub fn writer(&self) -> &Writer {
        &self.inner.writer
    }
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }
    pub fn outbox_signal(&self) -> &OutboxSignal {
        &self.inner.outbox
    }
    pub fn timings(&self) -> &Timings {
        &self.inner.timings
    }

    fn actors(&self) -> MutexGuard<'_, HashMap<String, Addr<OrderActor>>> {
        self.inner.actors.lock()
    }

    /// Open orders with a running actor.
    pub fn running(&self) -> usize {
        self.inner.actors.len()
    }

    fn spawn(&self, state: OrderState) -> Addr<OrderActor> {
        let orders = self.clone();
        OrderActor::start_in_arbiter(&self.inner.arbiter, move |_| OrderActor::new(state, orders))
    }

    /// Stores a new order (through the group commit) and starts its saga,
    /// in the trace `traceparent` (the creating request's).
    pub async fn create(
        &self,
        details: OrderDetails,
        traceparent: Option<String>,
    ) -> Result<OrderState, StoreError> {
        let state = loop {
            let now = Utc::now();
            let Some(id) = self.new_order_id() else {
                return Err(StoreError::Unavailable(
                    "this replica holds no partition to create the order in".into(),
                ));
            };
            let (mut state, events) = workflow::create(&id, details.clone(), now);
            state.traceparent = traceparent.clone();
            let write = Write {
                state,
                outbox: Vec::new(),
                events,
                insert: true,
            };
            match self.inner.writer.save(write).await {
                Ok(stored) => break stored.state,
                // 36^9 ids per millisecond: a clash is vanishingly rare.
                Err(CommitError::Store(StoreError::Duplicate(_))) => continue,
                Err(error) => return Err(error.into()),
            }
        };
        // A lookup may have found it in the store and spawned it already.
        self.inner
            .actors
            .spawn_missing([state.clone()], |o| &o.order_id, |o| self.spawn(o));
        tracing::info!(
            order_id = %state.order_id,
            trace_id = %message_bus::trace::trace_id_of(state.traceparent.as_deref()),
            "order created"
        );
        Ok(state)
    }

    /// Respawns every open order from the store, at its step. An order
    /// that cannot be read is quarantined (logged, counted, listed on
    /// `GET /quarantine`) and the rest recover.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        self.recover_where(|_| true).await
    }

    /// [`Orders::recover`] for the open orders whose ids `mine` accepts:
    /// those of a partition this replica has just taken.
    pub async fn recover_where(&self, mine: impl Fn(&str) -> bool) -> Result<usize, StoreError> {
        let mut open = self.inner.store.unfinished().await?;
        open.orders.retain(|o| mine(&o.order_id));
        open.unreadable.retain(|u| mine(&u.order_id));
        if !open.unreadable.is_empty() {
            let now = Utc::now();
            let mut quarantine = self
                .inner
                .quarantine
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for row in open.unreadable {
                tracing::error!(order_id = %row.order_id, reason = %row.reason, "stored order cannot be read; quarantined");
                METRICS.quarantined.inc();
                if !quarantine.iter().any(|q| q.entity_id == row.order_id) {
                    quarantine.push(Quarantined {
                        entity_id: row.order_id,
                        reason: row.reason,
                        quarantined_at: now,
                    });
                }
            }
        }
        let count = open.orders.len();
        self.inner
            .actors
            .spawn_missing(open.orders, |o| &o.order_id, |o| self.spawn(o));
        Ok(count)
    }

    /// Stored orders recovery could not read, then outbox rows that did
    /// not decode (kept in the store).
    pub async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let mut items = self
            .inner
            .quarantine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        items.extend(self.inner.store.quarantined().await?);
        Ok(items)
    }

    /// Drops the watchers of `order_id` nobody waits on any more (their
    /// waits ended), and the entry with them when none is left.
    pub fn unwatch(&self, order_id: &str) {
        let mut watchers = self
            .inner
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(waiting) = watchers.get_mut(order_id) {
            waiting.retain(|w| !w.is_closed());
            if waiting.is_empty() {
                watchers.remove(order_id);
            }
        }
    }

    /// Orders with someone waiting on them (bounded by open requests).
    pub fn watched(&self) -> usize {
        self.inner
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Resolves at the order's next stored change of status (or never, if
    /// there is none). Register before reading the status, so a change in
    /// between is not missed; call [`Orders::unwatch`] when the wait ends.
    pub fn watch(&self, order_id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut watchers = self
            .inner
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let waiting = watchers.entry(order_id.to_owned()).or_default();
        // Waits that timed out leave closed senders behind.
        waiting.retain(|w| !w.is_closed());
        waiting.push(tx);
        rx
    }

    /// Wakes whoever waits for `order_id`'s status to change (after the
    /// change is stored).
    pub(super) fn status_changed(&self, order_id: &str) {
        let waiting = self
            .inner
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(order_id);
        for watcher in waiting.into_iter().flatten() {
            let _ = watcher.send(());
        }
    }

    /// Called by an actor as it stops.
    pub(super) fn stopped(&self, order_id: &str, status: &str, addr: &Addr<OrderActor>) {
        self.inner.actors.stopped(order_id, status, addr);
    }

    /// Called by an actor as it starts.
    pub(super) fn started(&self, status: &str) {
        self.inner.actors.started(status);
    }

    async fn lookup(&self, order_id: &str) -> Result<Lookup, StoreError> {
        let running = |actors: &HashMap<String, Addr<OrderActor>>| {
            actors.get(order_id).filter(|a| a.connected()).cloned()
        };
        if let Some(addr) = running(&self.actors()) {
            return Ok(Lookup::Running(addr));
        }
        match self.inner.store.get(order_id).await? {
            None => Ok(Lookup::Missing),
            Some(state) if state.status.is_final() => Ok(Lookup::Finished),
            Some(state) => {
                let mut actors = self.actors();
                // Another lookup (or the creation) may have spawned it
                // while the store was read.
                if let Some(addr) = running(&actors) {
                    return Ok(Lookup::Running(addr));
                }
                let addr = self.spawn(state);
                actors.insert(order_id.into(), addr.clone());
                Ok(Lookup::Running(addr))
            }
        }
    }

    /// A finished order has no actor: the pure workflow says whether the
    /// input is refused, a no-op or forwarded, or (a cancelled order
    /// hearing from its fulfillment) updates what the order knows of it.
    /// One lock serialises these rare writes so two events cannot
    /// overwrite each other.
    async fn apply_finished(&self, order_id: &str, input: Input) -> Result<Applied, ApplyError> {
        let _one_at_a_time = self.inner.finished_writes.lock().await;
        let state = self
            .inner
            .store
            .get(order_id)
            .await
            .map_err(ApplyError::Store)?
            .ok_or(ApplyError::NotFound)?;
        let decision = workflow::decide(&state, input, workflow::Context::at(Utc::now()));
        let reply = decision.reply.map_err(ApplyError::Rejected)?;
        let Some(next) = decision.state else {
            return Ok(Applied { state, reply });
        };
        // Final orders send nothing, so there is no outbox to write.
        let started = std::time::Instant::now();
        let saved = self.inner.store.save(&next, &[], &decision.history).await;
        METRICS.store_write_took("save", started);
        saved.map_err(ApplyError::Store)?;
        Ok(Applied { state: next, reply })
    }

    /// Feeds `input` to the order and answers the order after it with the
    /// decision's reply.
    pub async fn apply(&self, order_id: &str, input: Input) -> Result<Applied, ApplyError> {
        // What caused the input: the delivery or request being handled.
        let cause = message_bus::trace::current().map(|t| t.traceparent());
        for _ in 0..3 {
            match self.lookup(order_id).await.map_err(ApplyError::Store)? {
                Lookup::Missing => return Err(ApplyError::NotFound),
                Lookup::Finished => return self.apply_finished(order_id, input).await,
                Lookup::Running(addr) => match addr.send(Apply(input.clone(), cause.clone())).await
                {
                    Ok(result) => return result,
                    // It stopped between lookup and send (just finished):
                    // look again.
                    Err(_) => continue,
                },
            }
        }
        Err(ApplyError::Unavailable)
    }
}

/// The orders of a partition, as its owner takes and leaves them
/// ([`service_kit::partitions::Owner`]).
impl Workflows for Orders {
    fn take<'a>(&'a self, ids: Ids<'a>) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(self.recover_where(ids))
    }

    fn leave<'a>(&'a self, ids: Ids<'a>) -> BoxFuture<'a, usize> {
        Box::pin(self.inner.actors.leave_where(ids))
    }
}

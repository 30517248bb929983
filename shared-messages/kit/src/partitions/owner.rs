//! A service's side of the leases: which partitions it holds now (the
//! fences its writes must pass), and the task that applies each
//! [`Change`] to its consumers and workflows.
//!
//! For each partition it holds, a replica consumes that partition's queue
//! and runs its workflows. The replica holding partition 0 also consumes
//! the service's shared ingress queues (what other services send to it,
//! as they always did) and forwards each message, unchanged, to the queue
//! of the partition its workflow belongs to ([`Owner::key`]): one
//! forwarder at a time, so messages for one workflow keep their order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures::future::{BoxFuture, FutureExt};
use message_bus::{Bus, ConsumerHandle, Handler, Outcome, Route};
use shared_messages::topology::partition_key;
use shared_messages::Envelope;
use tokio::sync::mpsc;

use prometheus_client::metrics::gauge::Gauge;

use super::{check_fences, partition_of, Change, Fence, Fenced, Leases, Settings};
use crate::store::{Postgres, StoreError, WriteGuard};

/// The partitions this replica holds, at the epochs it was given: what
/// its writes are fenced with. Shared by the store (the
/// [`WriteGuard`]) and the [`Owner`] task.
pub struct Held {
    replica: String,
    partitions: u16,
    epochs: RwLock<BTreeMap<u16, i64>>,
}

impl Held {
    /// Nothing held yet, for `replica` with `partitions` partitions.
    pub fn new(replica: impl Into<String>, partitions: u16) -> Arc<Self> {
        Arc::new(Self {
            replica: replica.into(),
            partitions,
            epochs: RwLock::new(BTreeMap::new()),
        })
    }

    /// The partition of `entity_id`.
    pub fn partition_of(&self, entity_id: &str) -> u16 {
        partition_of(entity_id, self.partitions)
    }

    /// Whether the workflow `entity_id` is this replica's now.
    pub fn owns(&self, entity_id: &str) -> bool {
        self.read().contains_key(&self.partition_of(entity_id))
    }

    /// The partitions held, lowest first.
    pub fn owned(&self) -> Vec<u16> {
        self.read().keys().copied().collect()
    }

    fn insert(&self, fence: Fence) {
        self.write().insert(fence.partition, fence.epoch);
    }

    fn remove(&self, partition: u16) {
        self.write().remove(&partition);
    }

    /// The fences of the partitions of `entity_ids`, or [`Fenced`] for the
    /// first one not held (nothing to ask the database then).
    fn fences(&self, entity_ids: &[&str]) -> Result<Vec<Fence>, StoreError> {
        let held = self.read();
        let mut fences: Vec<Fence> = Vec::with_capacity(entity_ids.len());
        for id in entity_ids {
            let partition = self.partition_of(id);
            let Some(&epoch) = held.get(&partition) else {
                return Err(StoreError::Fenced(Fenced {
                    replica: self.replica.clone(),
                    fence: Fence {
                        partition,
                        epoch: 0,
                    },
                    epoch: None,
                    owner: None,
                }));
            };
            fences.push(Fence { partition, epoch });
        }
        fences.sort_unstable();
        fences.dedup();
        Ok(fences)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u16, i64>> {
        // Single inserts and removes: consistent under a panic.
        self.epochs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u16, i64>> {
        self.epochs.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A write passes only for workflows of partitions held, at the epochs
/// held ([`check_fences`] in the write's transaction).
impl WriteGuard for Held {
    fn check<'a>(
        &'a self,
        tx: &'a crate::store::postgres::Transaction<'_>,
        entity_ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let fences = self.fences(entity_ids)?;
            check_fences(tx, &self.replica, &fences).await
        }
        .boxed()
    }
}

/// The workflows a [`Workflows`] call is about, by id: those of one
/// partition.
pub type Ids<'a> = &'a (dyn Fn(&str) -> bool + Send + Sync);

/// What a service does with the workflows of one partition.
pub trait Workflows: Send + Sync + 'static {
    /// The partition is this replica's: resume its unfinished workflows
    /// (those `ids` accepts) from the store (their timers run again).
    /// Answers how many.
    fn take<'a>(&'a self, ids: Ids<'a>) -> BoxFuture<'a, Result<usize, StoreError>>;
    /// The partition goes: stop its workflows (those `ids` accepts), each
    /// once its write in flight is stored. Answers how many stopped.
    fn leave<'a>(&'a self, ids: Ids<'a>) -> BoxFuture<'a, usize>;
}

/// How a service consumes its partitions.
pub struct Owner {
    pub bus: Bus,
    pub held: Arc<Held>,
    /// The queue of partition `n` (declared in the bus's topology).
    pub partition_queue: fn(u16) -> String,
    /// Handles a delivery from any partition queue.
    pub handler: Handler,
    /// The service's shared queues, consumed by the holder of partition 0
    /// and forwarded to `partitions_exchange` under the entity's
    /// partition ([`partition_key`]).
    pub ingress: Vec<String>,
    pub partitions_exchange: String,
    /// The workflow an ingress message belongs to, whose partition it is
    /// forwarded to ([`entity_key`]: the envelope's entity, when that is
    /// the workflow's id).
    pub key: fn(&Envelope) -> String,
    pub workflows: Arc<dyn Workflows>,
}

/// The key of a message whose envelope names its workflow: its
/// `entity_id`.
pub fn entity_key(envelope: &Envelope) -> String {
    envelope.entity_id.clone()
}

/// How often a partition's recovery is tried before its workflows are
/// left to resume as their next message arrives.
const TAKE_ATTEMPTS: u32 = 5;

impl Owner {
    /// Runs this replica's share of the partitions on `pg`: fences the
    /// store's writes by the partitions held, takes a share of the leases
    /// ([`Leases::start`], `owned_gauge` counting them), applies their
    /// changes in a task of its own ([`Owner::run`]) and answers once the
    /// partitions claimed at start are taken ([`settle`]).
    pub async fn start(
        self,
        pg: &Postgres,
        settings: Settings,
        owned_gauge: Gauge,
    ) -> Result<Leases, StoreError> {
        let held = self.held.clone();
        pg.guard_writes(held.clone())?;
        let (leases, changes) =
            Leases::start(pg, held.replica.as_str(), settings, owned_gauge).await?;
        tokio::spawn(self.run(changes));
        settle(&leases, &held, settings.lease_ttl).await;
        Ok(leases)
    }

    /// Applies `changes` until the lease manager ends (after its
    /// shutdown has released everything).
    pub async fn run(self, mut changes: mpsc::UnboundedReceiver<Change>) {
        let mut consumers: HashMap<u16, ConsumerHandle> = HashMap::new();
        let mut ingress: Vec<ConsumerHandle> = Vec::new();
        while let Some(change) = changes.recv().await {
            match change {
                Change::Acquired(fence) => {
                    let p = fence.partition;
                    self.held.insert(fence);
                    self.take(p).await;
                    let queue = (self.partition_queue)(p);
                    consumers.insert(p, self.bus.consume_until(&queue, self.handler.clone()));
                    if p == 0 {
                        ingress = self.consume_ingress();
                    }
                    tracing::info!(partition = p, epoch = fence.epoch, "partition taken");
                }
                Change::Release(p, done) => {
                    // Drained before the lease goes: the next owner loads
                    // the last state stored.
                    self.hand_over(p, &mut consumers, &mut ingress).await;
                    self.held.remove(p);
                    let _ = done.send(());
                    tracing::info!(partition = p, "partition handed over");
                }
                Change::Lost(p) => {
                    // Writes for it are refused from now on.
                    self.held.remove(p);
                    self.hand_over(p, &mut consumers, &mut ingress).await;
                    tracing::warn!(partition = p, "partition lost (its lease ran out)");
                }
            }
        }
    }

    /// Recovers partition `p`'s workflows, retrying a store that fails.
    async fn take(&self, p: u16) {
        for attempt in 1..=TAKE_ATTEMPTS {
            match self
                .workflows
                .take(&|id| self.held.partition_of(id) == p)
                .await
            {
                Ok(resumed) => {
                    tracing::info!(partition = p, resumed, "partition's workflows resumed");
                    return;
                }
                Err(error) if attempt < TAKE_ATTEMPTS => {
                    tracing::warn!(partition = p, %error, attempt, "cannot load a partition's workflows; again shortly");
                    tokio::time::sleep(std::time::Duration::from_millis(500 * u64::from(attempt)))
                        .await;
                }
                Err(error) => {
                    tracing::error!(partition = p, %error, "cannot load a partition's workflows; each resumes when its next message arrives");
                }
            }
        }
    }

    /// Stops consuming partition `p` (and the ingress with partition 0),
    /// letting what is in flight finish, then stops its workflows.
    async fn hand_over(
        &self,
        p: u16,
        consumers: &mut HashMap<u16, ConsumerHandle>,
        ingress: &mut Vec<ConsumerHandle>,
    ) {
        if p == 0 {
            for consumer in ingress.drain(..) {
                consumer.stop().await;
            }
        }
        if let Some(consumer) = consumers.remove(&p) {
            consumer.stop().await;
        }
        let left = self
            .workflows
            .leave(&|id| self.held.partition_of(id) == p)
            .await;
        tracing::debug!(partition = p, left, "partition's workflows stopped");
    }

    fn consume_ingress(&self) -> Vec<ConsumerHandle> {
        self.ingress
            .iter()
            .map(|queue| {
                let forward = forwarder(
                    self.bus.clone(),
                    self.partitions_exchange.clone(),
                    self.held.clone(),
                    self.key,
                );
                self.bus.consume_until(queue, forward)
            })
            .collect()
    }
}

/// Waits (at most `limit`) until the partitions this replica claimed at
/// start are taken: their workflows recovered and their queues consumed.
/// So a replica that says it is ready has resumed what it owns. A replica
/// that claims nothing (the others hold every partition and will hand
/// some over) goes on after `limit`.
pub async fn settle(leases: &Leases, held: &Held, limit: std::time::Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        let claimed: Vec<u16> = leases.owned().iter().map(|f| f.partition).collect();
        let taken = held.owned();
        if !claimed.is_empty() && claimed.iter().all(|p| taken.contains(p)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Moves each message of an ingress queue to the partition queue of the
/// workflow `key` names, unchanged, and acks it once the broker has
/// confirmed the copy; a failed copy is tried again (never dead-lettered:
/// it is transient).
fn forwarder(bus: Bus, exchange: String, held: Arc<Held>, key: fn(&Envelope) -> String) -> Handler {
    Arc::new(move |incoming| {
        let partition = held.partition_of(&key(&incoming.envelope));
        let route = Route::new(&exchange, &partition_key(partition), true);
        let bus = bus.clone();
        async move {
            match bus.forward(&route, &incoming).await {
                Ok(()) => Outcome::Ack,
                Err(error) => {
                    Outcome::Retry(format!("forwarding to partition {partition}: {error}"))
                }
            }
        }
        .boxed()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_fenced_by_the_partitions_held_and_refused_for_the_others() {
        let held = Held::new("replica-a", 4);
        let ids = [
            "fulfillment-ORD-1",
            "fulfillment-ORD-2",
            "fulfillment-ORD-3",
        ];
        let partitions: Vec<u16> = ids.iter().map(|id| held.partition_of(id)).collect();
        assert!(matches!(
            held.fences(&ids[..1]),
            Err(StoreError::Fenced(Fenced { epoch: None, .. }))
        ));
        for (n, p) in partitions.iter().enumerate() {
            held.insert(Fence {
                partition: *p,
                epoch: 10 + n as i64,
            });
        }
        assert!(ids.iter().all(|id| held.owns(id)));
        let fences = held.fences(&ids).expect("all held");
        let mut expected: Vec<u16> = partitions.clone();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(
            fences.iter().map(|f| f.partition).collect::<Vec<_>>(),
            expected,
            "one fence per partition, in order"
        );
        held.remove(partitions[0]);
        assert!(!held.owns(ids[0]));
        assert!(
            held.fences(&ids).is_err(),
            "one partition gone fences the write"
        );
        assert_eq!(held.owned().len(), expected.len() - 1);
    }
}

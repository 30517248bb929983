//! The lease manager: a task per replica that keeps its share of the
//! partitions' leases, and tells the service what it gained and lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Object;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_postgres::Client;

use super::{table, Fence, Settings};
use crate::store::{Postgres, StoreError};

/// Longest a handover waits for the service to drain a partition it is
/// asked to release. After it the lease is released anyway and the
/// service told [`Change::Lost`]: fencing keeps that safe, and a service
/// that never answers must not keep a partition from the others.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the service hears from its [`Leases`], in the order it happened.
#[derive(Debug)]
pub enum Change {
    /// The partition is this replica's, at this epoch: consume its work
    /// and write with this fence.
    Acquired(Fence),
    /// The lease is gone (another replica holds it, or it could not be
    /// renewed within its lifetime): stop the partition's work at once
    /// and write nothing more for it. May name a partition the service no
    /// longer has; ignore those.
    Lost(u16),
    /// The partition goes to another replica (balance, or shutdown): stop
    /// taking its work, finish what is in flight, then send `()` (or drop
    /// the sender). The lease is released only then, and is renewed until
    /// then.
    Release(u16, oneshot::Sender<()>),
}

/// A running lease manager. Dropping it without [`Leases::shutdown`]
/// stops the task as a crash would: the leases run out after the TTL.
pub struct Leases {
    replica: String,
    lease_ttl: Duration,
    owned: watch::Receiver<Vec<Fence>>,
    stop: watch::Sender<bool>,
    /// `true` while this replica stands aside ([`Leases::stand_aside`]).
    aside: Arc<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
    /// Held by each tick; a test holds it to freeze the manager.
    #[cfg(any(test, feature = "test-support"))]
    gate: Arc<Mutex<()>>,
}

impl Leases {
    /// Creates the lease tables if needed (refusing a database set up for
    /// another `PARTITIONS`), and starts the manager for `replica` (unique
    /// among the service's replicas: `REPLICA_ID`). The first tick runs
    /// at once. `owned_gauge` follows the number of partitions held (the
    /// service's `<service>_partitions_owned`; `Gauge::default()` if
    /// unused). The manager keeps one connection of `pg`'s pool.
    pub async fn start(
        pg: &Postgres,
        replica: impl Into<String>,
        settings: Settings,
        owned_gauge: Gauge,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Change>), StoreError> {
        let replica = replica.into();
        let mut client = pg.client().await?;
        table::create(&mut client, &settings).await?;
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let (drained_tx, drained_rx) = mpsc::unbounded_channel();
        let (owned_tx, owned) = watch::channel(Vec::new());
        let (stop, stop_rx) = watch::channel(false);
        let (aside, aside_rx) = watch::channel(false);
        let gate = Arc::new(Mutex::new(()));
        let manager = Manager {
            pg: pg.clone(),
            client: Some(client),
            state: State {
                replica: replica.clone(),
                settings,
                held: BTreeMap::new(),
                draining: BTreeMap::new(),
                to_free: Vec::new(),
                renewed_at: Instant::now(),
                stopping: false,
                aside: false,
                changes,
                drained_tx,
                owned: owned_tx,
                gauge: owned_gauge,
            },
        };
        tracing::info!(
            replica,
            partitions = settings.partitions,
            lease_ttl_ms = settings.ttl_ms(),
            "partition leases"
        );
        let task = tokio::spawn(manager.run(stop_rx, aside_rx, drained_rx, gate.clone()));
        Ok((
            Self {
                replica,
                lease_ttl: settings.lease_ttl,
                owned,
                stop,
                aside: Arc::new(aside),
                task: Some(task),
                #[cfg(any(test, feature = "test-support"))]
                gate,
            },
            changes_rx,
        ))
    }

    /// The leases held now, in partition order (for `/readyz`), including
    /// those being handed over.
    pub fn owned(&self) -> Vec<Fence> {
        self.owned.borrow().clone()
    }

    /// This replica's name, as the lease rows carry it (what
    /// [`check_fences`](super::check_fences) takes).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Stands this replica aside (`true`) or back in (`false`). Aside, it
    /// counts as not live, hands every partition over as on SIGTERM and
    /// claims none, but keeps running: back in, it heartbeats and claims
    /// its share again. For a replica that cannot do its partitions' work
    /// for now ([`Leases::follow_broker`]).
    pub fn stand_aside(&self, aside: bool) {
        self.aside
            .send_if_modified(|now| std::mem::replace(now, aside) != aside);
    }

    /// Stands aside while `bus` has been disconnected for a whole lease,
    /// and back in once it is connected again. Cut off from the broker, a
    /// replica cannot consume its partitions' queues, so their messages
    /// would wait for it; standing aside lets the replicas that still
    /// reach the broker take them over. A shorter outage (a broker node
    /// restarting, the bus reconnecting) moves nothing. Ends with the
    /// manager.
    pub fn follow_broker(&self, bus: message_bus::Bus) {
        let aside = self.aside.clone();
        let grace = self.lease_ttl;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            let mut down_since: Option<Instant> = None;
            // Ends when the manager has stopped (its receiver is gone).
            while !aside.is_closed() {
                every.tick().await;
                if bus.is_connected() {
                    down_since = None;
                    if aside.send_if_modified(|now| std::mem::replace(now, false)) {
                        tracing::info!(
                            "connected to the broker again: claiming a share of the partitions"
                        );
                    }
                    continue;
                }
                let since = *down_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= grace
                    && aside.send_if_modified(|now| !std::mem::replace(now, true))
                {
                    tracing::warn!(
                        after_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                        "cut off from the broker for a whole lease: handing every partition over"
                    );
                }
            }
        });
    }

    /// Leaves (on SIGTERM): stops counting as live, hands every partition
    /// over through [`Change::Release`] and releases each lease as soon
    /// as it is drained, so the others claim them at their next tick
    /// instead of after the TTL; then stops. Keep consuming the changes
    /// until this returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            if let Err(error) = task.await {
                tracing::error!(%error, "the partition lease manager failed");
            }
        }
    }

    /// Stops the manager where it is, as SIGSTOP would (no renewal, no
    /// release, no heartbeat), until the answer is dropped. Waits for a
    /// tick under way to end.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn freeze(&self) -> Frozen {
        Frozen(self.gate.clone().lock_owned().await)
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A frozen manager ([`Leases::freeze`]); it runs again when this drops.
#[cfg(any(test, feature = "test-support"))]
pub struct Frozen(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>);

/// A handover answered: the service drained `fence`'s partition
/// (`in_time`), or did not answer within [`DRAIN_TIMEOUT`].
struct Drained {
    fence: Fence,
    in_time: bool,
}

/// The task: its connection, and the rest.
struct Manager {
    pg: Postgres,
    /// Kept from tick to tick, so that a busy pool never delays a
    /// renewal; replaced after any failure.
    client: Option<Object>,
    state: State,
}

impl Manager {
    async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut aside: watch::Receiver<bool>,
        mut drained: mpsc::UnboundedReceiver<Drained>,
        gate: Arc<Mutex<()>>,
    ) {
        let mut ticks = tokio::time::interval(self.state.settings.renew_every());
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let stopping = self.state.stopping;
            // Wake at the local end of the leases too: if renewals keep
            // failing, they are given up then.
            let deadline = self.state.deadline();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.changed(), if !stopping => self.state.stopping = true,
                Ok(()) = aside.changed() => self.state.aside = *aside.borrow_and_update(),
                Some(answer) = drained.recv() => self.state.drained(answer),
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {}
            }
            let _gate = gate.lock().await;
            while let Ok(answer) = drained.try_recv() {
                self.state.drained(answer);
            }
            let ok = self.tick().await;
            let state = &self.state;
            if state.stopping && state.held.is_empty() && (state.to_free.is_empty() || !ok) {
                tracing::info!(replica = state.replica, "partition leases handed over");
                return;
            }
        }
    }

    /// One round against the database, at most a tick long. A failure
    /// drops the connection; once the last successful renewal started
    /// more than a lease ago (by this process's monotonic clock, which
    /// runs behind the database's expiry), every lease is given up.
    async fn tick(&mut self) -> bool {
        let started = Instant::now();
        let limit = self.state.settings.renew_every();
        let result = tokio::time::timeout(limit, async {
            if self.client.is_none() {
                self.client = Some(self.pg.client().await?);
            }
            let client = self.client.as_ref().expect("a connection was just set");
            self.state.tick(client, started).await
        })
        .await;
        let error = match result {
            Ok(Ok(())) => {
                self.state.publish();
                return true;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {} ms", limit.as_millis()),
        };
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
        let state = &mut self.state;
        tracing::warn!(
            replica = state.replica,
            error,
            "partition leases not renewed"
        );
        if !state.held.is_empty() && Instant::now() >= state.renewed_at + state.settings.lease_ttl {
            tracing::warn!(
                replica = state.replica,
                "no renewal for a whole lease: giving up every partition"
            );
            state.lose_all();
        }
        state.publish();
        false
    }
}

/// What the manager knows and does, apart from its connection.
struct State {
    replica: String,
    settings: Settings,
    /// The leases held, by partition: their epochs (with those being
    /// handed over).
    held: BTreeMap<u16, i64>,
    /// Handovers asked for and not yet answered: partition, epoch.
    draining: BTreeMap<u16, i64>,
    /// Drained leases whose rows are still to be released.
    to_free: Vec<Fence>,
    /// When the last successful renewal started, by this process's clock.
    renewed_at: Instant,
    /// Shutting down: no heartbeat, no claims, everything handed over.
    stopping: bool,
    /// Standing aside ([`Leases::stand_aside`]): as `stopping`, until
    /// asked back in.
    aside: bool,
    changes: mpsc::UnboundedSender<Change>,
    drained_tx: mpsc::UnboundedSender<Drained>,
    owned: watch::Sender<Vec<Fence>>,
    gauge: Gauge,
}

impl State {
    /// Heartbeat (or leave), renew, release what was drained, then move
    /// towards this replica's share: hand over extras, claim missing ones.
    async fn tick(&mut self, client: &Client, started: Instant) -> Result<(), StoreError> {
        let ttl = self.settings.ttl_ms();
        let leaving = self.stopping || self.aside;
        if leaving {
            table::leave(client, &self.replica).await?;
        } else {
            table::heartbeat(client, &self.replica, ttl).await?;
        }
        let kept = table::renew(client, &self.replica, &self.held, ttl).await?;
        self.renewed_at = started;
        let gone: Vec<u16> = self
            .held
            .keys()
            .copied()
            .filter(|p| !kept.contains(p))
            .collect();
        for partition in gone {
            self.lose(partition, "claimed by another replica");
        }
        while let Some(&fence) = self.to_free.last() {
            table::release(client, &self.replica, fence).await?;
            self.to_free.pop();
        }
        if leaving {
            self.hand_over_extras(0);
            return Ok(());
        }
        let live = table::live(client, ttl).await?;
        let target = share(&live, &self.replica, self.settings.partitions);
        self.hand_over_extras(target);
        let missing = target.saturating_sub(self.held.len());
        if missing > 0 {
            for fence in table::claim(client, &self.replica, ttl, missing).await? {
                self.acquired(fence);
            }
        }
        Ok(())
    }

    /// The local end of the leases held: when the last successful
    /// renewal started, plus the lease; `None` when none is held.
    fn deadline(&self) -> Option<Instant> {
        (!self.held.is_empty()).then(|| self.renewed_at + self.settings.lease_ttl)
    }

    /// Asks the service to drain the highest partitions above `target`
    /// (those not already being handed over).
    fn hand_over_extras(&mut self, target: usize) {
        let wanted = self.held.len().saturating_sub(target);
        let more = wanted.saturating_sub(self.draining.len());
        let extras: Vec<Fence> = self
            .held
            .iter()
            .rev()
            .filter(|(p, _)| !self.draining.contains_key(p))
            .take(more)
            .map(|(&partition, &epoch)| Fence { partition, epoch })
            .collect();
        for fence in extras {
            self.hand_over(fence);
        }
    }

    fn hand_over(&mut self, fence: Fence) {
        let (done, answer) = oneshot::channel();
        self.draining.insert(fence.partition, fence.epoch);
        tracing::info!(
            replica = self.replica,
            partition = fence.partition,
            epoch = fence.epoch,
            "handing a partition over"
        );
        // A service that stopped listening dropped `done` with the message.
        let _ = self.changes.send(Change::Release(fence.partition, done));
        let drained = self.drained_tx.clone();
        tokio::spawn(async move {
            // A dropped sender counts as drained: the service let go.
            let in_time = tokio::time::timeout(DRAIN_TIMEOUT, answer).await.is_ok();
            let _ = drained.send(Drained { fence, in_time });
        });
    }

    /// A handover answered: the lease leaves `held`, and its row is freed
    /// at the tick that follows at once.
    fn drained(&mut self, Drained { fence, in_time }: Drained) {
        let Fence { partition, epoch } = fence;
        if self.draining.get(&partition) != Some(&epoch)
            || self.held.get(&partition) != Some(&epoch)
        {
            return; // lost while draining: already told
        }
        self.draining.remove(&partition);
        self.held.remove(&partition);
        if in_time {
            tracing::info!(
                replica = self.replica,
                partition,
                epoch,
                "partition released"
            );
        } else {
            tracing::warn!(
                replica = self.replica,
                partition,
                epoch,
                "partition released without the service draining it in time"
            );
            let _ = self.changes.send(Change::Lost(partition));
        }
        self.to_free.push(fence);
    }

    fn acquired(&mut self, fence: Fence) {
        self.held.insert(fence.partition, fence.epoch);
        tracing::info!(
            replica = self.replica,
            partition = fence.partition,
            epoch = fence.epoch,
            "partition acquired"
        );
        let _ = self.changes.send(Change::Acquired(fence));
    }

    fn lose(&mut self, partition: u16, why: &str) {
        self.held.remove(&partition);
        self.draining.remove(&partition);
        tracing::warn!(replica = self.replica, partition, why, "partition lost");
        let _ = self.changes.send(Change::Lost(partition));
    }

    fn lose_all(&mut self) {
        let all: Vec<u16> = self.held.keys().copied().collect();
        for partition in all {
            self.lose(partition, "the lease could not be renewed in time");
        }
    }

    /// Makes the leases held visible: [`Leases::owned`] and the gauge.
    fn publish(&self) {
        let fences: Vec<Fence> = self
            .held
            .iter()
            .map(|(&partition, &epoch)| Fence { partition, epoch })
            .collect();
        self.gauge
            .set(i64::try_from(fences.len()).unwrap_or(i64::MAX));
        self.owned.send_replace(fences);
    }
}

/// This replica's share with the replicas `live` (sorted; `me` counts
/// even if missing): `P / R`, plus one for the first `P % R` in id order,
/// so the shares add up to `P` exactly.
fn share(live: &[String], me: &str, partitions: u16) -> usize {
    let rank = live.iter().filter(|r| r.as_str() < me).count();
    let count = live.len() + usize::from(!live.iter().any(|r| r == me));
    let partitions = usize::from(partitions);
    partitions / count + usize::from(rank < partitions % count)
}

#[cfg(test)]
mod tests {
    use super::share;

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for replicas in 1..=20usize {
            let live: Vec<String> = (0..replicas).map(|n| format!("r{n:02}")).collect();
            let shares: Vec<usize> = live.iter().map(|me| share(&live, me, 16)).collect();
            assert_eq!(shares.iter().sum::<usize>(), 16, "{shares:?}");
            let (min, max) = (shares.iter().min(), shares.iter().max());
            assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{shares:?}");
        }
        assert_eq!(share(&ids(&["a", "b", "c"]), "a", 16), 6);
        assert_eq!(share(&ids(&["a", "b", "c"]), "c", 16), 5);
    }

    #[test]
    fn a_replica_missing_from_the_list_counts_itself() {
        assert_eq!(share(&[], "a", 16), 16);
        assert_eq!(share(&ids(&["a", "c"]), "b", 16), 5);
        assert_eq!(share(&ids(&["a"]), "z", 3), 1);
    }
}

//! Finds the actor of a fulfillment, spawning or creating it as needed.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use actix::{Actor, Addr};
use actix_rt::ArbiterHandle;
use chrono::Utc;
use futures::future::{self, BoxFuture, FutureExt};
use service_kit::actors::Actors;
use service_kit::partitions::{partition_of, Ids, Workflows};
use uuid::Uuid;

use tokio::sync::oneshot;

use super::{Creation, Deps, FulfillmentActor, Signal};
use crate::metrics::METRICS;
use crate::store::{Found, StoreError};
use crate::workflow::{self, DecisionExt as _, Fulfillment, Input, Reply, Timing};

/// What [`Registry::recover`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub resumed: usize,
    pub quarantined: usize,
}

/// Maps fulfillment ids to the actors of running fulfillments. Cheap to
/// clone, usable from any thread; actors all live on one arbiter.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    actors: Actors<FulfillmentActor>,
    /// Held while a signal to an actor that is not running reads the
    /// stored state and decides (creates, spawns or stores at once): one
    /// of [`CREATION_LOCKS`], by id ([`Registry::creation_lock`]).
    creating: Vec<tokio::sync::Mutex<()>>,
    deps: Deps,
    arbiter: ArbiterHandle,
}

/// How many creation locks the ids are spread over.
const CREATION_LOCKS: usize = 64;

impl Registry {
    /// A registry whose actors run on `arbiter`.
    pub fn new(deps: Deps, arbiter: ArbiterHandle) -> Self {
        Self {
            inner: Arc::new(Inner {
                actors: Actors::new(&METRICS),
                creating: (0..CREATION_LOCKS)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                deps,
                arbiter,
            }),
        }
    }

    /// The creation lock of `id`: two signals to one id take the same
    /// lock, signals to different ids seldom do, so fulfillments created
    /// together read the store together.
    fn creation_lock(&self, id: &str) -> &tokio::sync::Mutex<()> {
        let lock = partition_of(id, CREATION_LOCKS as u16);
        &self.inner.creating[usize::from(lock)]
    }

    fn actors(&self) -> MutexGuard<'_, HashMap<String, Addr<FulfillmentActor>>> {
        self.inner.actors.lock()
    }

    /// Re-spawns every unfinished fulfillment where it stopped. A row that
    /// cannot be read is quarantined (logged, counted, listed on
    /// `/quarantine`) and the others recover regardless.
    pub async fn recover(&self) -> Result<Recovered, StoreError> {
        let store = &self.inner.deps.store;
        let unfinished = store.unfinished().await?;
        let recovered = Recovered {
            resumed: unfinished.states.len(),
            quarantined: unfinished.unreadable.len(),
        };
        for (id, reason) in &unfinished.unreadable {
            tracing::error!(fulfillment_id = %id, %reason, "unreadable stored fulfillment quarantined; it is not resumed");
            METRICS.quarantined_rows.inc();
            if let Err(error) = store.quarantine(id, reason).await {
                tracing::error!(fulfillment_id = %id, %error, "cannot record the quarantined row");
            }
        }
        self.inner
            .actors
            .spawn_missing(unfinished.states, |f| &f.id, |f| self.spawn(f));
        Ok(recovered)
    }

    /// Re-spawns the unfinished fulfillments whose ids `mine` accepts:
    /// those of a partition this replica has just taken over.
    pub async fn recover_where(
        &self,
        mine: impl Fn(&str) -> bool,
    ) -> Result<Recovered, StoreError> {
        let store = &self.inner.deps.store;
        let mut unfinished = store.unfinished().await?;
        unfinished.states.retain(|f| mine(&f.id));
        unfinished.unreadable.retain(|(id, _)| mine(id));
        for (id, reason) in &unfinished.unreadable {
            tracing::error!(fulfillment_id = %id, %reason, "unreadable stored fulfillment quarantined; it is not resumed");
            METRICS.quarantined_rows.inc();
            if let Err(error) = store.quarantine(id, reason).await {
                tracing::error!(fulfillment_id = %id, %error, "cannot record the quarantined row");
            }
        }
        let recovered = Recovered {
            resumed: unfinished.states.len(),
            quarantined: unfinished.unreadable.len(),
        };
        self.inner
            .actors
            .spawn_missing(unfinished.states, |f| &f.id, |f| self.spawn(f));
        Ok(recovered)
    }

    /// Running actors.
    pub fn live(&self) -> usize {
        self.inner.actors.len()
    }

    fn spawn(&self, state: Fulfillment) -> Addr<FulfillmentActor> {
        let deps = self.inner.deps.clone();
        let registry = self.clone();
        FulfillmentActor::start_in_arbiter(&self.inner.arbiter, move |_| {
            FulfillmentActor::new(state, deps, registry)
        })
    }

    /// Spawns the actor of a new fulfillment, which stores it first; the
    /// future answers once it is stored.
    fn spawn_new(
        &self,
        decision: workflow::Decision,
        state: Fulfillment,
    ) -> (
        Addr<FulfillmentActor>,
        BoxFuture<'static, Result<Reply, StoreError>>,
    ) {
        let (answer, outcome) = oneshot::channel();
        let creation = Creation {
            messages: decision.messages,
            history: decision.history,
            reply: decision.reply,
            answer,
            span: tracing::Span::current(),
        };
        let deps = self.inner.deps.clone();
        let registry = self.clone();
        let addr = FulfillmentActor::start_in_arbiter(&self.inner.arbiter, move |_| {
            FulfillmentActor::creating(state, creation, deps, registry)
        });
        let stored = async move {
            outcome.await.unwrap_or_else(|_| {
                Err(StoreError::unavailable(
                    "the new fulfillment's actor stopped",
                ))
            })
        };
        (addr, stored.boxed())
    }

    /// Called by an actor as it stops.
    pub(super) fn stopped(&self, id: &str, status: &str, addr: &Addr<FulfillmentActor>) {
        self.inner.actors.stopped(id, status, addr);
    }

    /// Called by an actor as it starts.
    pub(super) fn started(&self, status: &str) {
        self.inner.actors.started(status);
    }

    /// Newest first, optionally of one status.
    pub async fn list(
        &self,
        status: Option<shared_messages::messages::FulfillmentStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Fulfillment>, StoreError> {
        self.inner.deps.store.list(status, limit, offset).await
    }

    pub fn store(&self) -> &dyn crate::store::Store {
        self.inner.deps.store.as_ref()
    }

    pub async fn ping_store(&self) -> Result<(), StoreError> {
        self.inner.deps.store.ping().await
    }

    pub fn timing(&self) -> Timing {
        self.inner.deps.timing
    }

    /// The stored state of a fulfillment, running or finished.
    pub async fn load(&self, id: &str) -> Result<Option<Fulfillment>, StoreError> {
        self.inner.deps.store.load(id).await
    }

    /// Applies a signal. To a running actor, the message is handed to its
    /// mailbox before this returns, so signals keep the order of the calls;
    /// otherwise the stored state is read under the id's creation lock (taken in
    /// the order the futures are first polled) and the message handed on
    /// before the lock is let go. The future resolves once the outcome is
    /// stored.
    pub fn signal(
        &self,
        id: &str,
        message_id: Option<Uuid>,
        traceparent: Option<String>,
        input: Input,
    ) -> BoxFuture<'static, Result<Reply, StoreError>> {
        if let Some(addr) = self.actors().get(id).filter(|a| a.connected()) {
            return self.send(addr, id, message_id, traceparent, input);
        }
        let registry = self.clone();
        let id = id.to_owned();
        async move {
            // Not running: finished, not yet spawned, or unknown. The id's
            // creation lock is held so two creators of one id cannot race.
            // Waiting for the outcome (a commit) happens after the lock is
            // let go, so creations of many fulfillments share commits.
            let outcome = {
                let _creating = registry.creation_lock(&id).lock().await;
                registry
                    .signal_stored(&id, message_id, traceparent, input)
                    .await?
            };
            outcome.await
        }
        .boxed()
    }

    /// [`Registry::signal`] to a fulfillment without a running actor, under
    /// the creation lock: decides, stores what is stored at once, and gives
    /// back the outcome still to wait for (an actor's answer).
    async fn signal_stored(
        &self,
        id: &str,
        message_id: Option<Uuid>,
        traceparent: Option<String>,
        input: Input,
    ) -> Result<BoxFuture<'static, Result<Reply, StoreError>>, StoreError> {
        let running = self.actors().get(id).filter(|a| a.connected()).cloned();
        if let Some(addr) = running {
            return Ok(self.send(&addr, id, message_id, traceparent, input));
        }
        let deps = &self.inner.deps;
        let ctx = workflow::Context {
            message_id,
            now: Utc::now(),
            timing: deps.timing,
        };
        let decision = match deps.store.load_or_tombstone(id).await? {
            Found::State(state) if !state.status.is_final() => {
                let addr = self.spawn(*state);
                let request = self.send(&addr, id, message_id, traceparent, input);
                self.actors().insert(id.to_owned(), addr);
                return Ok(request);
            }
            Found::State(state) => {
                workflow::decide(&state, input, ctx).traced(traceparent.as_deref())
            }
            // A cancel that came first makes it start cancelled.
            Found::Absent(tombstone) if input.creates() => {
                let decision = workflow::create_after(id, &input, ctx, tombstone.as_ref())
                    .traced(traceparent.as_deref());
                if decision.state.as_ref().is_some_and(|s| s.status.is_final()) {
                    // Born final (cancelled): stored at once, no actor.
                    tracing::info!(fulfillment_id = %id, "fulfillment created cancelled: its cancel came first");
                    deps.persist(&decision).await?;
                    return Ok(future::ready(Ok(decision.reply)).boxed());
                }
                let mut decision = decision;
                let Some(state) = decision.state.take() else {
                    // Refused (e.g. invalid): nothing to store.
                    return Ok(future::ready(Ok(decision.reply)).boxed());
                };
                // In the map at once, so the signals after this one queue
                // behind the creation instead of creating it again.
                let (addr, stored) = self.spawn_new(decision, state);
                self.actors().insert(id.to_owned(), addr);
                return Ok(stored);
            }
            Found::Absent(_) => {
                return match workflow::absent(id, &input, ctx) {
                    Ok((tombstone, history, reply)) => {
                        let added = deps.store.put_tombstone(&tombstone, &history).await?;
                        if added {
                            tracing::info!(fulfillment_id = %id, reason = %tombstone.reason, "cancel before start: tombstone left");
                        }
                        Ok(future::ready(Ok(reply)).boxed())
                    }
                    Err(reply) => Ok(future::ready(Ok(reply)).boxed()),
                };
            }
        };
        // A signal to a finished fulfillment: at most a remembered message
        // id, stored at once.
        deps.persist(&decision).await?;
        Ok(future::ready(Ok(decision.reply)).boxed())
    }

    fn send(
        &self,
        addr: &Addr<FulfillmentActor>,
        id: &str,
        message_id: Option<Uuid>,
        traceparent: Option<String>,
        input: Input,
    ) -> BoxFuture<'static, Result<Reply, StoreError>> {
        let request = addr.send(Signal {
            message_id,
            traceparent: traceparent.clone(),
            input: input.clone(),
        });
        let registry = self.clone();
        let id = id.to_owned();
        async move {
            match request.await {
                Ok(outcome) => outcome,
                // The actor stopped (it just finished) before it took the
                // message: decide again against the stored state.
                Err(_) => registry.signal(&id, message_id, traceparent, input).await,
            }
        }
        .boxed()
    }
}

/// The fulfillments of a partition, as its owner takes and leaves them
/// ([`service_kit::partitions::Owner`]).
impl Workflows for Registry {
    fn take<'a>(&'a self, ids: Ids<'a>) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move { Ok(self.recover_where(ids).await?.resumed) })
    }

    fn leave<'a>(&'a self, ids: Ids<'a>) -> BoxFuture<'a, usize> {
        Box::pin(self.inner.actors.leave_where(ids))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use message_bus::outbox::OutboxSignal;
    use shared_messages::messages::{Address, FulfillmentRequest, FulfillmentStatus, OrderItem};

    use super::*;
    use crate::store::{Batched, SqliteStore, Store, Writer};
    use crate::workflow::Accepted;

    fn registry(store: Arc<dyn Store>) -> Registry {
        let outbox = OutboxSignal::new();
        let deps = Deps {
            writer: Writer::start("test-writer", Batched(store.clone()), outbox.clone())
                .expect("writer thread"),
            store,
            outbox,
            timing: Timing {
                step_delay: Duration::from_secs(60),
            },
        };
        Registry::new(deps, actix::System::current().arbiter().clone())
    }

    fn start() -> Input {
        Input::Start(FulfillmentRequest {
            order_id: "ORD-1".into(),
            customer_id: "c-1".into(),
            customer_name: None,
            customer_email: None,
            items: vec![OrderItem {
                product_id: "p-1".into(),
                product_name: "Widget".into(),
                quantity: 1,
                price: 1.0,
            }],
            shipping_address: Address {
                street: "1 Main St".into(),
                city: "Springfield".into(),
                state: "IL".into(),
                zip_code: "62701".into(),
                country: "USA".into(),
            },
        })
    }

    #[actix_web::test]
    async fn a_signal_sent_while_its_fulfillment_is_being_created_applies_after_the_creation() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(":memory:").expect("store"));
        let registry = registry(store.clone());
        let id = "fulfillment-ORD-1";
        // Both are sent before either is stored.
        let created = registry.signal(id, Some(Uuid::new_v4()), None, start());
        let paused = registry.signal(id, Some(Uuid::new_v4()), None, Input::Pause);
        let (created, paused) = futures::join!(created, paused);
        assert_eq!(
            created.expect("stored"),
            Ok(Accepted {
                status: FulfillmentStatus::Picking,
                created: true
            })
        );
        assert_eq!(
            paused.expect("stored").map(|a| a.status),
            Ok(FulfillmentStatus::Paused)
        );
        let stored = store.load(id).await.expect("reads").expect("stored");
        assert_eq!(stored.status, FulfillmentStatus::Paused);
        assert_eq!(registry.live(), 1, "one actor, not two");
    }

    #[actix_web::test]
    async fn a_cancel_before_the_start_makes_the_start_create_it_cancelled_without_an_actor() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(":memory:").expect("store"));
        let registry = registry(store.clone());
        let id = "fulfillment-ORD-1";
        let cancel = Input::Cancel {
            reason: "changed my mind".into(),
        };
        let answer = registry
            .signal(id, Some(Uuid::new_v4()), None, cancel.clone())
            .await
            .expect("stored");
        assert_eq!(answer.map(|a| a.status), Ok(FulfillmentStatus::Cancelled));
        assert!(store.tombstone(id).await.expect("reads").is_some());
        // Over HTTP (no message id) a cancel of nothing is still not found.
        let http = registry
            .signal("fulfillment-ORD-2", None, None, cancel)
            .await
            .expect("answered");
        assert!(http.is_err());
        let created = registry
            .signal(id, Some(Uuid::new_v4()), None, start())
            .await
            .expect("stored");
        assert_eq!(
            created,
            Ok(Accepted {
                status: FulfillmentStatus::Cancelled,
                created: true
            })
        );
        let stored = store.load(id).await.expect("reads").expect("stored");
        assert_eq!(stored.status, FulfillmentStatus::Cancelled);
        assert_eq!(
            stored.cancellation_reason.as_deref(),
            Some("changed my mind")
        );
        assert_eq!(store.tombstone(id).await.expect("reads"), None, "applied");
        assert_eq!(registry.live(), 0, "a cancelled fulfillment needs no actor");
    }

    /// Signals to fulfillments without a running actor, all sent at once
    /// (24 ids over the 64 creation locks, so some ids share one), end as
    /// the same signals sent one at a time: the same answers, the same
    /// stored states, one actor per running fulfillment. Two creators of
    /// one id that raced would create it twice or spawn two actors.
    #[actix_web::test]
    async fn signals_sent_at_once_to_fulfillments_without_actors_end_as_one_at_a_time() {
        use rand::{Rng, SeedableRng};
        for seed in 0..20u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let signals: Vec<(String, Uuid, Input)> = (0..120)
                .map(|_| {
                    let id = format!("fulfillment-ORD-{}", rng.random_range(0..24));
                    let input = match rng.random_range(0..4) {
                        0 | 1 => start(),
                        2 => Input::Pause,
                        _ => Input::Cancel {
                            reason: format!("seed {seed}"),
                        },
                    };
                    (id, Uuid::new_v4(), input)
                })
                .collect();
            let send = |registry: &Registry, (id, message_id, input): &(String, Uuid, Input)| {
                registry.signal(id, Some(*message_id), None, input.clone())
            };
            let together: Arc<dyn Store> = Arc::new(SqliteStore::open(":memory:").expect("store"));
            let at_once = registry(together.clone());
            let answers =
                futures::future::join_all(signals.iter().map(|s| send(&at_once, s))).await;
            let alone: Arc<dyn Store> = Arc::new(SqliteStore::open(":memory:").expect("store"));
            let one_by_one = registry(alone.clone());
            let mut expected = Vec::new();
            for signal in &signals {
                expected.push(send(&one_by_one, signal).await);
            }
            assert_eq!(
                format!("{answers:?}"),
                format!("{expected:?}"),
                "seed {seed}: every signal answered as when sent alone"
            );
            let mut running = 0;
            for n in 0..24 {
                let id = format!("fulfillment-ORD-{n}");
                let stored = together.load(&id).await.expect("reads");
                running += usize::from(stored.as_ref().is_some_and(|f| !f.status.is_final()));
                let status =
                    |f: Option<Fulfillment>| f.map(|f| (f.status, f.seq, f.cancellation_reason));
                assert_eq!(
                    status(stored),
                    status(alone.load(&id).await.expect("reads")),
                    "seed {seed}: {id} stored as when its signals came one at a time"
                );
            }
            assert_eq!(
                at_once.live(),
                running,
                "seed {seed}: one actor per running fulfillment"
            );
        }
    }
}

//! Where fulfillments live between messages and across restarts.
//!
//! One small interface, [`Store`]: a transition and the events it causes
//! are written in one transaction ([`Store::save`]), and the outbox half
//! ([`OutboxStore`], the service kit's) is what the relay publishes from.
//! [`sqlite`] is the default implementation, [`postgres`] the one for
//! shared state; [`open`] picks one from `STORE_URL`. Every call is async:
//! SQLite runs on tokio's blocking pool, PostgreSQL on a connection pool.
//! Errors are the kit's [`StoreError`]; schemas are in `migrations/`.

pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use message_bus::Route;
use service_kit::store::sqlite::SqliteWrites;
use shared_messages::messages::FulfillmentStatus;
use shared_messages::Envelope;

use shared_messages::history::HistoryEvent;

use crate::config;
use crate::metrics::METRICS;
use crate::workflow::{DecisionExt as _, Entry, Fulfillment, Tombstone};

pub use service_kit::store::{OnDatabase, Postgres, Quarantined, StoreError};
pub use sqlite::SqliteStore;

/// One transition to store: the new state, the events it causes and its
/// history entries.
#[derive(Debug, Clone)]
pub struct Write {
    pub state: Fulfillment,
    pub events: Vec<(Route, Envelope)>,
    pub history: Vec<Entry>,
    /// Remove the fulfillment's tombstone (it was just applied).
    pub clears_tombstone: bool,
}

impl Write {
    /// The write of a decision that changed the state.
    pub fn of(decision: &crate::workflow::Decision) -> Option<Self> {
        decision.state.as_ref().map(|state| Self {
            state: state.clone(),
            events: decision.messages.clone(),
            history: decision.history.clone(),
            clears_tombstone: decision.clears_tombstone(),
        })
    }
}

/// What recovery reads: the unfinished fulfillments, and the rows that
/// could not be read (id, why).
pub type Unfinished = service_kit::store::entities::Unfinished<Fulfillment>;

service_kit::group_commit_adapter! {
    store: Store, write: Write, messages: events, metrics: METRICS
}

/// What is stored for one fulfillment id ([`Store::load_or_tombstone`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    State(Box<Fulfillment>),
    /// No fulfillment; the tombstone a cancel that came first left, if any.
    Absent(Option<Tombstone>),
}

/// The fulfillment store; the outbox, the quarantine and `ping` are the
/// kit's ([`OnDatabase`]).
#[async_trait]
pub trait Store: OnDatabase {
    /// One fulfillment, finished or not.
    async fn load(&self, id: &str) -> Result<Option<Fulfillment>, StoreError>;
    /// Stores `state` and appends `events` to the outbox, atomically.
    async fn save(
        &self,
        state: &Fulfillment,
        events: &[(Route, Envelope)],
    ) -> Result<(), StoreError> {
        self.save_all(&[Write {
            state: state.clone(),
            events: events.to_vec(),
            history: Vec::new(),
            clears_tombstone: false,
        }])
        .await
    }
    /// Stores every write (state, outbox events, history entries, tombstone
    /// removal) in one transaction: all of them or none (the group commit
    /// of [`Writer`]).
    async fn save_all(&self, writes: &[Write]) -> Result<(), StoreError>;
    /// On SQLite, how a batch of writes is saved on the SQLite thread, so
    /// the group commit runs there (`None`: it awaits `save_all`).
    fn sqlite_writes(&self) -> Option<SqliteWrites<Write>> {
        None
    }
    /// Every fulfillment that has not reached a final status, and the
    /// unfinished rows that cannot be read.
    async fn unfinished(&self) -> Result<Unfinished, StoreError>;
    /// Stores a tombstone with its history entries unless the id has one
    /// already; true when it was new.
    async fn put_tombstone(
        &self,
        tombstone: &Tombstone,
        history: &[Entry],
    ) -> Result<bool, StoreError>;
    /// The tombstone left for `id`, if any.
    async fn tombstone(&self, id: &str) -> Result<Option<Tombstone>, StoreError>;
    /// The fulfillment `id` or, when there is none, the tombstone left for
    /// it: what a signal to a fulfillment with no actor needs. On SQLite
    /// one call to the store's thread instead of two.
    async fn load_or_tombstone(&self, id: &str) -> Result<Found, StoreError> {
        Ok(match self.load(id).await? {
            Some(state) => Found::State(Box::new(state)),
            None => Found::Absent(self.tombstone(id).await?),
        })
    }
    /// The history of `id`, oldest first.
    async fn history(&self, id: &str) -> Result<Vec<HistoryEvent>, StoreError>;
    /// Newest first, optionally of one status.
    async fn list(
        &self,
        status: Option<FulfillmentStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Fulfillment>, StoreError>;
    /// How many fulfillments there are of each stored status.
    async fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError>;
}

service_kit::embed_schema!("fulfill");

/// An open store, seen as the fulfillment store and as the relay's outbox.
pub type Opened = service_kit::store::Opened<dyn Store>;

/// Opens (creating and migrating) the store named by `url`.
pub async fn open(url: &str) -> Result<Opened, StoreError> {
    Ok(open_shared(url).await?.0)
}

/// [`open`], and on PostgreSQL the pool too: the database several replicas
/// share, where their partition leases live.
pub async fn open_shared(url: &str) -> Result<(Opened, Option<Postgres>), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pg = SCHEMA.open_postgres(url).await?;
        return Ok((Opened::new(Arc::new(pg.clone())), Some(pg)));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| {
            StoreError::Open(format!(
                "unsupported STORE_URL {:?}: use sqlite://<path> or postgres://...",
                config::redact(url)
            ))
        })?;
    Ok((Opened::new(Arc::new(SqliteStore::open(path)?)), None))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use crate::workflow::{create, Context, Input, Timing};
    use chrono::Utc;
    use message_bus::outbox::{OutboxMessage, OutboxSignal};
    use service_kit::store::testing;
    use shared_messages::messages::{Address, FulfillmentRequest, OrderItem};
    use std::sync::Arc;
    use std::time::Duration;

    /// A fulfillment request for the order `ORD-<n>`.
    pub(crate) fn request(n: usize) -> FulfillmentRequest {
        FulfillmentRequest {
            order_id: format!("ORD-{n}"),
            customer_id: "c-1".into(),
            customer_name: None,
            customer_email: None,
            items: vec![OrderItem {
                product_id: "p".into(),
                product_name: "Thing".into(),
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
        }
    }

    /// Now, with no message id and steps that take no time.
    pub(crate) fn now() -> Context {
        Context {
            message_id: None,
            now: Utc::now(),
            timing: Timing {
                step_delay: Duration::ZERO,
            },
        }
    }

    pub(crate) fn write(n: usize) -> Write {
        let decision = create(
            &format!("fulfillment-ORD-{n}"),
            &Input::Start(request(n)),
            now(),
        );
        Write::of(&decision).expect("created")
    }

    /// Stores three transitions, each with its event: `f-1` created and
    /// then cancelled, `f-2` created.
    pub(crate) async fn save_three_transitions(store: &dyn Store) {
        let d = create("f-1", &Input::Start(request(1)), now());
        let state = d.state.expect("created");
        store.save(&state, &d.messages).await.expect("save");
        let d = crate::workflow::decide(&state, Input::Cancel { reason: "r".into() }, now());
        store
            .save(d.state.as_ref().expect("cancelled"), &d.messages)
            .await
            .expect("save");
        let c = create("f-2", &Input::Start(request(2)), now());
        store
            .save(c.state.as_ref().expect("created"), &c.messages)
            .await
            .expect("save");
    }

    /// What `store` (reopened) reads back after [`save_three_transitions`]:
    /// the last state of each, the unfinished one, pages, counts, and the
    /// three events in the outbox in order. Answers those (now claimed).
    pub(crate) async fn reads_back_three_transitions(store: &dyn Store) -> Vec<OutboxMessage> {
        assert_eq!(
            store.load("f-1").await.expect("load").map(|f| f.status),
            Some(FulfillmentStatus::Cancelled),
            "the last saved state wins"
        );
        assert_eq!(store.load("nope").await.expect("load"), None);
        let unfinished: Vec<String> = store
            .unfinished()
            .await
            .expect("unfinished")
            .states
            .into_iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(unfinished, vec!["f-2".to_owned()]);
        let cancelled = store
            .list(Some(FulfillmentStatus::Cancelled), 10, 0)
            .await
            .expect("list");
        assert_eq!(cancelled.len(), 1);
        assert_eq!(store.list(None, 1, 1).await.expect("list").len(), 1);
        let mut counts = store.count_by_status().await.expect("counts");
        counts.sort();
        assert_eq!(counts, vec![("CANCELLED".into(), 1), ("PICKING".into(), 1)]);
        store.ping().await.expect("ping");

        let pending = store.outbox().pending(10).await.expect("pending");
        assert_eq!(pending.len(), 3, "every event of the three transitions");
        assert_eq!(store.outbox_len().await.expect("count"), 3);
        assert!(
            pending.windows(2).all(|w| w[0].seq < w[1].seq),
            "in seq order"
        );
        assert_eq!(pending[1].route.routing_key, "fulfillment.status.cancelled");
        pending
    }

    /// The first of `pending` sent and removed, the other two remain.
    pub(crate) async fn removes_what_was_sent(store: &dyn Store, pending: &[OutboxMessage]) {
        store
            .outbox()
            .remove(&[pending[0].seq])
            .await
            .expect("remove");
        assert_eq!(store.outbox().pending(10).await.expect("pending").len(), 2);
    }

    #[tokio::test]
    async fn concurrent_writes_are_all_stored_with_their_events() {
        let store = Arc::new(SqliteStore::open(":memory:").expect("opens"));
        let writer = Writer::start("test-writer", Batched(store.clone()), OutboxSignal::new())
            .expect("starts");
        let saves = (0..50).map(|n| writer.save(write(n)));
        let stored = futures::future::join_all(saves).await;
        for (n, result) in stored.into_iter().enumerate() {
            let state = result.expect("stored").state;
            assert_eq!(state.id, format!("fulfillment-ORD-{n}"));
            assert_eq!(
                store.load(&state.id).await.expect("reads"),
                Some(state),
                "stored as given"
            );
        }
        assert_eq!(
            store.outbox().pending(100).await.expect("reads").len(),
            50,
            "one event each"
        );
    }

    /// History, tombstones and quarantine as both stores must keep them.
    pub(crate) async fn history_tombstones_and_quarantine(store: &dyn Store) {
        use crate::workflow::{absent, create_after, decide};
        let timing = Timing {
            step_delay: Duration::ZERO,
        };
        let id = "fulfillment-ORD-7";
        let cancel_id = uuid::Uuid::new_v4();
        let (tombstone, history, _) = absent(
            id,
            &Input::Cancel {
                reason: "first".into(),
            },
            Context {
                message_id: Some(cancel_id),
                now: Utc::now(),
                timing,
            },
        )
        .expect("a tombstone");
        assert!(store
            .put_tombstone(&tombstone, &history)
            .await
            .expect("put"));
        assert!(
            !store
                .put_tombstone(&tombstone, &history)
                .await
                .expect("put again"),
            "a redelivered cancel adds nothing"
        );
        let found = store.tombstone(id).await.expect("read").expect("stored");
        assert_eq!(
            (found.reason.as_str(), found.message_id),
            ("first", cancel_id)
        );
        assert_eq!(
            store.load_or_tombstone(id).await.expect("read"),
            Found::Absent(Some(found.clone())),
            "no fulfillment yet: its tombstone"
        );
        assert_eq!(
            store
                .load_or_tombstone("fulfillment-ORD-none")
                .await
                .expect("read"),
            Found::Absent(None),
            "neither"
        );

        let mut request = write(7).state.request.expect("a request");
        request.order_id = "ORD-7".into();
        let d = create_after(
            id,
            &Input::Start(request),
            Context {
                message_id: None,
                now: Utc::now(),
                timing,
            },
            Some(&found),
        );
        store
            .save_all(&[Write::of(&d).expect("created")])
            .await
            .expect("save");
        assert_eq!(
            store.tombstone(id).await.expect("read"),
            None,
            "applied, removed"
        );
        let f = d.state.expect("created");
        assert_eq!(
            store.load_or_tombstone(id).await.expect("read"),
            Found::State(Box::new(f.clone())),
            "the fulfillment, not its applied tombstone"
        );
        let d = decide(
            &f,
            Input::Cancel {
                reason: "again".into(),
            },
            Context {
                message_id: Some(uuid::Uuid::new_v4()),
                now: Utc::now(),
                timing,
            },
        );
        store
            .save_all(&[Write::of(&d).expect("remembered")])
            .await
            .expect("save");
        let history = store.history(id).await.expect("history");
        let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "CancelFulfillment",
                "StartFulfillment",
                "FulfillmentCreated",
                "TombstoneApplied",
                "StatusChanged",
                "CancelFulfillment"
            ]
        );
        let seqs: Vec<u64> = history.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        assert_eq!(history[0].message_id, Some(cancel_id));
        assert_eq!(history[4].detail["to"], "CANCELLED");
        assert!(store.history("nobody").await.expect("history").is_empty());

        assert!(store.quarantined().await.expect("list").is_empty());
        store
            .quarantine("f-bad", "missing field")
            .await
            .expect("quarantine");
        store.quarantine("f-bad", "still bad").await.expect("again");
        let items = store.quarantined().await.expect("list");
        assert_eq!(items.len(), 1);
        assert_eq!(
            (items[0].entity_id.as_str(), items[0].reason.as_str()),
            ("f-bad", "still bad")
        );
    }

    /// One transaction with two writes of one fulfillment, beside another
    /// fulfillment's: the last state of each stored, the history numbered
    /// 1..n in the order written, after what was stored before, and the
    /// events of every write in the outbox in the order of the writes.
    pub(crate) async fn one_batch_with_two_writes_of_a_fulfillment(store: &dyn Store) {
        use crate::workflow::decide;
        let created = write(1);
        let paused = Write::of(&decide(&created.state, Input::Pause, now())).expect("paused");
        let other = write(2);
        let cancelled = Write::of(&decide(
            &paused.state,
            Input::Cancel { reason: "r".into() },
            now(),
        ))
        .expect("cancelled");
        let batch = [created, other, paused, cancelled];
        store.save_all(&batch).await.expect("one transaction");

        let id = &batch[0].state.id;
        assert_eq!(
            store.load(id).await.expect("load"),
            Some(batch[3].state.clone()),
            "the last write wins"
        );
        assert_eq!(
            store.load(&batch[1].state.id).await.expect("load"),
            Some(batch[1].state.clone())
        );
        let mine = [&batch[0], &batch[2], &batch[3]];
        let written: Vec<&str> = mine
            .iter()
            .flat_map(|w| w.history.iter().map(|e| e.kind))
            .collect();
        let history = store.history(id).await.expect("history");
        testing::history_is(&history, &written, "in the order written");

        let events = batch.iter().flat_map(|w| &w.events);
        let sent = testing::outbox_holds(store, events, "in the order of the writes").await;
        assert!(sent >= 3, "each write sends an event");

        let later: Vec<Write> = Write::of(&decide(&batch[2].state, Input::Resume, now()))
            .into_iter()
            .chain([batch[3].clone()])
            .collect();
        store.save_all(&later).await.expect("a later transaction");
        let more: usize = later.iter().map(|w| w.history.len()).sum();
        let seqs: Vec<u64> = store
            .history(id)
            .await
            .expect("history")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=(written.len() + more) as u64).collect::<Vec<_>>(),
            "numbered on after the stored entries"
        );
    }

    /// One transaction of many fulfillments: all stored, each with its
    /// history and its events.
    pub(crate) async fn a_batch_of_many_fulfillments_is_stored_whole(store: &dyn Store) {
        let batch: Vec<Write> = (0..300).map(write).collect();
        store.save_all(&batch).await.expect("one transaction");
        for w in &batch {
            assert_eq!(
                store.load(&w.state.id).await.expect("load"),
                Some(w.state.clone())
            );
            let stored = store.history(&w.state.id).await.expect("history");
            let written: Vec<&str> = w.history.iter().map(|e| e.kind).collect();
            testing::history_is(&stored, &written, &w.state.id);
        }
        let events = batch.iter().flat_map(|w| &w.events);
        testing::outbox_holds(store, events, "in the order of the writes").await;
    }

    /// Random transitions of a few fulfillments, stored in random batches:
    /// whatever the batches, the store holds what storing the writes one
    /// at a time in the same order would: each fulfillment's last state,
    /// its history entries in order numbered 1..n, and every event in the
    /// outbox in the order written. Seeded, so a failure repeats.
    pub(crate) async fn random_batches_store_what_writes_one_at_a_time_would(store: &dyn Store) {
        use crate::workflow::decide;
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let mut writes: Vec<Write> = Vec::new();
        // Every fulfillment made, by index; the last six are the open ones.
        let mut states: Vec<Fulfillment> = Vec::new();
        let mut open: Vec<usize> = Vec::new();
        while writes.len() < 200 {
            if open.len() < 6 {
                let w = write(1000 + states.len());
                open.push(states.len());
                states.push(w.state.clone());
                writes.push(w);
                continue;
            }
            let pick = rng.random_range(0..open.len());
            let n = open[pick];
            let state = &states[n];
            let input = match rng.random_range(0..5) {
                0 => Input::Pause,
                1 => Input::Resume,
                2 => Input::UpdateAddress(request(n).shipping_address),
                3 if rng.random_range(0..10) == 0 => Input::Cancel {
                    reason: "random".into(),
                },
                _ => Input::StepDone { step: state.step },
            };
            if let Some(w) = Write::of(&decide(state, input, now())) {
                if w.state.status.is_final() {
                    open.swap_remove(pick);
                }
                states[n] = w.state.clone();
                writes.push(w);
            }
        }
        for batch in testing::random_batches(&mut rng, &writes) {
            store.save_all(batch).await.expect("a batch stores");
        }

        for state in &states {
            assert_eq!(
                store.load(&state.id).await.expect("load").as_ref(),
                Some(state),
                "the last state of {}",
                state.id
            );
            let written: Vec<&str> = writes
                .iter()
                .filter(|w| w.state.id == state.id)
                .flat_map(|w| w.history.iter().map(|e| e.kind))
                .collect();
            let stored = store.history(&state.id).await.expect("history");
            let what = format!("the history of {}", state.id);
            testing::history_is(&stored, &written, &what);
        }
        let events = writes.iter().flat_map(|w| &w.events);
        testing::outbox_holds(store, events, "every event in the order written").await;
    }

    /// A commit whose outcome was lost is retried: the same creation stored
    /// twice succeeds both times and leaves one row.
    pub(crate) async fn creating_twice_stores_one_row(store: &dyn Store) {
        let w = write(3);
        store
            .save_all(std::slice::from_ref(&w))
            .await
            .expect("first commit");
        store
            .save_all(std::slice::from_ref(&w))
            .await
            .expect("the retried commit succeeds");
        assert_eq!(
            store.list(None, 10, 0).await.expect("list").len(),
            1,
            "one row"
        );
        assert_eq!(store.load(&w.state.id).await.expect("load"), Some(w.state));
    }

    /// With an outbox row that does not decode stored first, a good row is
    /// stored: the bad one is moved to the quarantine, counted, and the
    /// good one still comes out.
    pub(crate) async fn an_undecodable_outbox_row_is_quarantined(store: &dyn Store) {
        testing::store_undecodable_outbox_row(store.db()).await;
        let w = write(4);
        store
            .save_all(std::slice::from_ref(&w))
            .await
            .expect("save");
        service_kit::store::testing::an_undecodable_outbox_row_is_quarantined(store, &w.events)
            .await;
    }

    /// The checks on SQLite, each on a store in memory.
    mod on_sqlite {
        use super::super::tests;
        use super::SqliteStore;

        service_kit::store_checks!(
            |_| async { ((), SqliteStore::open(":memory:").expect("opens")) } => tests:
            history_tombstones_and_quarantine,
            creating_twice_stores_one_row,
        );
    }
}

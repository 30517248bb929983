//! Where orders live: one small interface, SQLite or PostgreSQL behind it.
//!
//! Each order is one row: its id, status, whether it is finished, and its
//! whole state as JSON. Signals an order sends are written to the outbox
//! table in the same transaction as the state that caused them; the
//! outbox relay (`message_bus::outbox`) publishes and removes them.
//! [`open`] picks the implementation from `STORE_URL`. Every call is async:
//! SQLite runs on tokio's blocking pool, PostgreSQL on a connection pool
//! (the service kit's [`service_kit::store`]). Errors are the kit's
//! [`StoreError`]; schemas are in `migrations/`.

#[cfg(test)]
mod fencing;
mod postgres;
mod sqlite;

pub use service_kit::store::{OnDatabase, Postgres, Quarantined, StoreError};
pub use sqlite::SqliteStore;

use std::sync::Arc;

use async_trait::async_trait;
use message_bus::Route;
use service_kit::store::entities;
use service_kit::store::sqlite::SqliteWrites;
use shared_messages::history::HistoryEvent;
use shared_messages::Envelope;

use crate::config::StoreLocation;
use crate::metrics::METRICS;
use crate::workflow::{OrderState, OrderStatus};

service_kit::embed_schema!("orders");

/// An open store, seen as the order store and as the relay's outbox.
pub type Opened = service_kit::store::Opened<dyn Store>;

/// Opens (creating and migrating) the store at `location`.
pub async fn open(location: &StoreLocation) -> Result<Opened, StoreError> {
    Ok(open_shared(location).await?.0)
}

/// [`open`], and on PostgreSQL the pool too: the database several replicas
/// share, where their partition leases live (and whose writes they fence).
pub async fn open_shared(
    location: &StoreLocation,
) -> Result<(Opened, Option<Postgres>), StoreError> {
    match location {
        StoreLocation::Postgres(url) => {
            let pg = SCHEMA.open_postgres(url).await?;
            Ok((Opened::new(Arc::new(pg.clone())), Some(pg)))
        }
        sqlite => Ok((Opened::new(Arc::new(SqliteStore::open(sqlite)?)), None)),
    }
}

/// One write for the group commit: a new order (`insert`, failing with
/// `Duplicate` when another order has the id; the same order stored again,
/// a write retried after its commit's outcome was lost, succeeds), or a transition of an existing one
/// with the signals it sends; either with its history entries.
#[derive(Debug, Clone)]
pub struct Write {
    pub state: OrderState,
    /// A new order rather than a transition of a stored one.
    pub insert: bool,
    /// The signals the transition sends, stored in the outbox.
    pub outbox: Vec<(Route, Envelope)>,
    /// Its history entries.
    pub events: Vec<HistoryEvent>,
}

/// A stored order that cannot be read (e.g. written by a version with
/// other fields); recovery sets it aside instead of failing.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub order_id: String,
    pub reason: String,
}

/// The open orders recovery restarts, and those it cannot read.
#[derive(Debug, Default)]
pub struct Unfinished {
    pub orders: Vec<OrderState>,
    pub unreadable: Vec<Unreadable>,
}

impl From<entities::Unfinished<OrderState>> for Unfinished {
    fn from(found: entities::Unfinished<OrderState>) -> Self {
        Self {
            orders: found.states,
            unreadable: found
                .unreadable
                .into_iter()
                .map(|(order_id, reason)| Unreadable { order_id, reason })
                .collect(),
        }
    }
}

/// An order's stored state.
fn encode(state: &OrderState) -> String {
    serde_json::to_string(state).expect("order state always serializes to JSON")
}

/// An order's state read back from its row.
fn decode(id: &str, json: &str) -> Result<OrderState, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        id: format!("order {id}"),
        reason: e.to_string(),
    })
}

/// Counts by stored status, as order statuses (an unknown one left out).
fn counts(stored: Vec<(String, u64)>) -> Vec<(OrderStatus, u64)> {
    stored
        .into_iter()
        .filter_map(|(status, n)| Some((OrderStatus::parse(&status)?, n)))
        .collect()
}

service_kit::group_commit_adapter! {
    store: Store, write: Write, messages: outbox, metrics: METRICS
}

/// One page of orders, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub orders: Vec<OrderState>,
    pub total: u64,
}

/// The order store; the outbox, the quarantine and `ping` are the kit's
/// ([`OnDatabase`]). Rows set aside because they cannot be read are
/// [`Quarantined`]: a stored order at recovery (kept in memory by the
/// registry) or an outbox row that does not decode (moved to the store's
/// `quarantine` table by the kit's outbox).
#[async_trait]
pub trait Store: OnDatabase {
    /// Stores a new order and its first history entries; fails with
    /// `Duplicate` when another order has the id. Idempotent: the same
    /// order stored again succeeds and leaves the one row as it is.
    async fn insert(&self, state: &OrderState, events: &[HistoryEvent]) -> Result<(), StoreError>;
    /// Stores a transition, the signals it causes and its history
    /// entries, atomically.
    async fn save(
        &self,
        state: &OrderState,
        outbox: &[(Route, Envelope)],
        events: &[HistoryEvent],
    ) -> Result<(), StoreError>;
    /// Stores every write (inserts and transitions) in one transaction:
    /// all of them or none (the group commit of [`Writer`]).
    async fn save_all(&self, writes: &[Write]) -> Result<(), StoreError>;
    /// On SQLite, how a batch of writes is saved on the SQLite thread, so
    /// the group commit runs there (`None`: it awaits `save_all`).
    fn sqlite_writes(&self) -> Option<SqliteWrites<Write>> {
        None
    }
    async fn get(&self, order_id: &str) -> Result<Option<OrderState>, StoreError>;
    async fn list(
        &self,
        status: Option<OrderStatus>,
        limit: u32,
        offset: u64,
    ) -> Result<Page, StoreError>;
    /// Every order that is not shipped, cancelled or failed; rows that
    /// cannot be read are listed apart, never fail the whole.
    async fn unfinished(&self) -> Result<Unfinished, StoreError>;
    /// The order's history, oldest first (empty for an unknown order).
    async fn history(&self, order_id: &str) -> Result<Vec<HistoryEvent>, StoreError>;
    /// How many orders are in each status (statuses with none are left out).
    async fn count_by_status(&self) -> Result<Vec<(OrderStatus, u64)>, StoreError>;
}

/// What both stores must do alike, as checks each backend's tests run on
/// a fresh store.
#[cfg(test)]
pub(crate) mod tests {
    use chrono::Utc;
    use service_kit::store::testing;
    use shared_messages::Envelope;

    use super::{Store, StoreError, Write};
    use crate::validation::demo_order;
    use crate::workflow::{self, Context, Input, OrderState, OrderStatus};

    /// An order inserted, read back, and another order with its id refused
    /// as a duplicate.
    pub(crate) async fn insert_get_and_duplicate(s: &dyn Store) {
        let order = OrderState::new("ORD-1", demo_order(), Utc::now());
        s.insert(&order, &[]).await.expect("insert");
        assert_eq!(s.get("ORD-1").await.expect("get"), Some(order.clone()));
        let other = OrderState::new(
            "ORD-1",
            demo_order(),
            Utc::now() + chrono::TimeDelta::seconds(1),
        );
        assert!(
            matches!(s.insert(&other, &[]).await, Err(StoreError::Duplicate(_))),
            "another order with a taken id is refused as a duplicate"
        );
        assert_eq!(s.get("ORD-1").await.expect("get"), Some(order));
        assert_eq!(s.get("ORD-2").await.expect("get"), None);
    }

    /// Five orders, three of them shipped: filtered and offset pages, the
    /// unfinished ones, the counts by status.
    pub(crate) async fn list_filters_paginates_and_counts(s: &dyn Store) {
        for i in 0..5 {
            let mut o = OrderState::new(&format!("ORD-{i}"), demo_order(), Utc::now());
            s.insert(&o, &[]).await.expect("insert");
            if i % 2 == 0 {
                o.status = OrderStatus::Shipped;
                s.save(&o, &[], &[]).await.expect("save");
            }
        }
        let page = s
            .list(Some(OrderStatus::Shipped), 2, 0)
            .await
            .expect("list");
        assert_eq!((page.total, page.orders.len()), (3, 2), "filtered page");
        assert_eq!(page.orders[0].order_id, "ORD-4", "newest first");
        let page = s.list(None, 10, 4).await.expect("list");
        assert_eq!((page.total, page.orders.len()), (5, 1), "offset page");
        assert_eq!(s.unfinished().await.expect("unfinished").orders.len(), 2);
        let mut counts = s.count_by_status().await.expect("counts");
        counts.sort_by_key(|(_, n)| *n);
        assert_eq!(
            counts,
            vec![(OrderStatus::Pending, 2), (OrderStatus::Shipped, 3)]
        );
        assert_eq!(s.outbox_len().await.expect("outbox"), 0);
        s.ping().await.expect("ping");
    }

    /// A commit whose outcome was lost is retried: the same order stored
    /// twice succeeds both times and leaves one row, one history.
    pub(crate) async fn creating_the_same_order_twice_stores_it_once(s: &dyn Store) {
        let (state, events) = workflow::create("ORD-1", demo_order(), Utc::now());
        let write = Write {
            state: state.clone(),
            outbox: Vec::new(),
            events: events.clone(),
            insert: true,
        };
        s.save_all(std::slice::from_ref(&write))
            .await
            .expect("first commit");
        s.save_all(std::slice::from_ref(&write))
            .await
            .expect("the retried commit succeeds");
        s.insert(&state, &events)
            .await
            .expect("and so does a single insert");
        let page = s.list(None, 10, 0).await.expect("list");
        assert_eq!(page.total, 1, "one row");
        assert_eq!(page.orders, vec![state]);
        assert_eq!(
            s.history("ORD-1").await.expect("history").len(),
            events.len(),
            "history written once"
        );
    }

    /// `ORD-1` stored, then advanced from `CONFIRMED`: its state saved with
    /// the one signal it sends. Answers what went to the outbox.
    pub(crate) async fn advance_a_confirmed_order(
        s: &dyn Store,
    ) -> Vec<(message_bus::Route, Envelope)> {
        let mut order = OrderState::new("ORD-1", demo_order(), Utc::now());
        s.insert(&order, &[]).await.expect("insert");
        order.status = OrderStatus::Confirmed;
        let t = workflow::decide(&order, Input::Advance, Context::at(Utc::now()));
        let (state, outbox) = (t.state.expect("advanced"), t.messages);
        assert_eq!(outbox.len(), 1, "advancing from CONFIRMED sends one signal");
        s.save(&state, &outbox, &t.history).await.expect("save");
        outbox
    }

    /// With an outbox row that does not decode stored first, a good row is
    /// stored: the bad one is moved to the quarantine and the good one
    /// still comes out.
    pub(crate) async fn an_undecodable_outbox_row_is_quarantined(s: &dyn Store) {
        testing::store_undecodable_outbox_row(s.db()).await;
        let outbox = advance_a_confirmed_order(s).await;
        service_kit::store::testing::an_undecodable_outbox_row_is_quarantined(s, &outbox).await;
    }

    /// The state and its outbox row are saved together; the row comes out
    /// as it went in (to a claiming reader, which reads its own claims
    /// again), and is gone once removed. `also` runs while the row is
    /// claimed.
    pub(crate) async fn state_and_outbox_are_saved_together(
        s: &dyn Store,
        also: impl std::future::Future<Output = ()>,
    ) {
        let outbox = advance_a_confirmed_order(s).await;
        assert_eq!(s.outbox_len().await.expect("outbox"), 1);
        let pending = s.outbox().pending(10).await.expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].envelope.message_id, outbox[0].1.message_id);
        assert_eq!(pending[0].route, outbox[0].0);
        assert_eq!(
            s.outbox().pending(10).await.expect("pending").len(),
            1,
            "the claiming store reads its own claimed rows again"
        );
        also.await;
        s.outbox().remove(&[pending[0].seq]).await.expect("remove");
        assert!(s.outbox().pending(10).await.expect("pending").is_empty());
        assert_eq!(
            s.get("ORD-1").await.expect("get").map(|o| o.status),
            Some(OrderStatus::FulfillmentStarted)
        );
    }

    /// History is written with the state, once even when the same write is
    /// committed again, numbered from 1.
    pub(crate) async fn history_is_written_with_the_state_once(s: &dyn Store) {
        let (order, created) = workflow::create("ORD-1", demo_order(), Utc::now());
        s.insert(&order, &created).await.expect("insert");
        let t = workflow::decide(
            &order,
            Input::Cancel { reason: None },
            Context::at(Utc::now()),
        );
        let state = t.state.expect("cancelled");
        s.save(&state, &[], &t.history).await.expect("save");
        // the same write again (a retried commit) adds nothing
        s.save(&state, &[], &t.history).await.expect("save again");
        let history = s.history("ORD-1").await.expect("history");
        let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["OrderCreated", "CancelRequested", "StatusChanged"]);
        let seqs: Vec<u64> = history.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert!(s.history("ORD-2").await.expect("history").is_empty());
    }

    /// Recovery with the row of `ORD-2` made unreadable by `corrupt` (after
    /// `ORD-2` and `ORD-3` are stored): it reads `ORD-3` and sets `ORD-2`
    /// aside.
    pub(crate) async fn an_unreadable_row_is_set_aside(s: &dyn Store, corrupt: impl FnOnce()) {
        for id in ["ORD-2", "ORD-3"] {
            s.insert(&OrderState::new(id, demo_order(), Utc::now()), &[])
                .await
                .expect("insert");
        }
        corrupt();
        let found = s.unfinished().await.expect("recovery reads the rest");
        let ids: Vec<&str> = found.orders.iter().map(|o| o.order_id.as_str()).collect();
        assert_eq!(ids, ["ORD-3"]);
        assert_eq!(found.unreadable.len(), 1);
        assert_eq!(found.unreadable[0].order_id, "ORD-2");
    }

    /// The write of `decision` of `state`: its next state (or `state`
    /// unchanged), its signals and its history.
    fn transition(state: &OrderState, input: Input) -> Write {
        let d = workflow::decide(state, input, Context::at(Utc::now()));
        Write {
            state: d.state.unwrap_or_else(|| state.clone()),
            insert: false,
            outbox: d.messages,
            events: d.history,
        }
    }

    /// One transaction with an order's insert and later transitions of
    /// it, beside another order's: each order's last state stored, its
    /// history numbered in order, the signals of all writes in the outbox
    /// in the order of the writes; two different new orders with one id in
    /// one transaction are refused.
    pub(crate) async fn one_batch_inserts_and_transitions_the_same_order(s: &dyn Store) {
        let (created, events) = workflow::create("ORD-1", demo_order(), Utc::now());
        let inserted = Write {
            state: created.clone(),
            insert: true,
            outbox: Vec::new(),
            events,
        };
        let cancelled = transition(&created, Input::Cancel { reason: None });
        let mut confirmed = OrderState::new("ORD-2", demo_order(), Utc::now());
        confirmed.status = OrderStatus::Confirmed;
        let other = Write {
            state: confirmed.clone(),
            insert: true,
            outbox: Vec::new(),
            events: Vec::new(),
        };
        let started = transition(&confirmed, Input::Advance);
        let cancelling = transition(
            &started.state,
            Input::Cancel {
                reason: Some("changed my mind".into()),
            },
        );
        let batch = [inserted, other, started, cancelled, cancelling];
        s.save_all(&batch).await.expect("one transaction");

        assert_eq!(
            s.get("ORD-1").await.expect("get"),
            Some(batch[3].state.clone())
        );
        assert_eq!(
            s.get("ORD-2").await.expect("get"),
            Some(batch[4].state.clone())
        );
        let written: Vec<&str> = [&batch[0], &batch[3]]
            .iter()
            .flat_map(|w| w.events.iter().map(|e| e.kind.as_str()))
            .collect();
        testing::history_is(
            &s.history("ORD-1").await.expect("history"),
            &written,
            "the insert's entries, then the transition's",
        );

        let sent = batch.iter().flat_map(|w| &w.outbox);
        let sent = testing::outbox_holds(s, sent, "in the order of the writes").await;
        assert!(sent >= 2, "both transitions of ORD-2 send a signal");

        let (a, _) = workflow::create("ORD-3", demo_order(), Utc::now());
        let mut b = OrderState::new("ORD-3", demo_order(), Utc::now());
        b.workflow_id = "another".into();
        let new = |state: OrderState| Write {
            state,
            insert: true,
            outbox: Vec::new(),
            events: Vec::new(),
        };
        assert!(
            matches!(
                s.save_all(&[new(a), new(b)]).await,
                Err(StoreError::Duplicate(_))
            ),
            "two orders with one id"
        );
        assert_eq!(s.get("ORD-3").await.expect("get"), None, "nothing stored");
    }

    /// New orders and random transitions of them, stored in random
    /// batches (an order's insert and its first transitions often in one):
    /// whatever the batches, the store holds what storing the writes one
    /// at a time in the same order would: each order's last state, its
    /// history in order numbered 1..n, and every signal in the outbox in
    /// the order written. Seeded, so a failure repeats.
    pub(crate) async fn random_batches_store_what_writes_one_at_a_time_would(s: &dyn Store) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let mut writes: Vec<Write> = Vec::new();
        // Every order made, by index; the last six are the open ones.
        let mut states: Vec<OrderState> = Vec::new();
        let mut open: Vec<usize> = Vec::new();
        let mut stalled: Vec<u32> = Vec::new();
        while writes.len() < 200 {
            if open.len() < 6 {
                let id = format!("ORD-R{}", states.len());
                let (state, events) = workflow::create(&id, demo_order(), Utc::now());
                open.push(states.len());
                states.push(state.clone());
                stalled.push(0);
                writes.push(Write {
                    state,
                    insert: true,
                    outbox: Vec::new(),
                    events,
                });
                continue;
            }
            let pick = rng.random_range(0..open.len());
            let n = open[pick];
            let input = match rng.random_range(0..7) {
                0 => Input::InventoryChecked(Ok(Vec::new())),
                1 => Input::PaymentProcessed(Ok(format!("tx-{n}"))),
                2 => Input::PauseFulfillment,
                3 => Input::ResumeFulfillment,
                4 => Input::UpdateDetails(workflow::DetailsUpdate {
                    customer_name: Some(format!("Customer {}", writes.len())),
                    ..workflow::DetailsUpdate::default()
                }),
                5 if rng.random_range(0..10) == 0 => Input::Cancel { reason: None },
                _ => Input::Advance,
            };
            let d = workflow::decide(&states[n], input, Context::at(Utc::now()));
            let Some(state) = d.state else {
                // An order waiting for what these inputs do not bring (its
                // fulfillment) is left where it is.
                stalled[n] += 1;
                if stalled[n] > 20 {
                    open.swap_remove(pick);
                }
                continue;
            };
            stalled[n] = 0;
            if state.status.is_final() {
                open.swap_remove(pick);
            }
            states[n] = state.clone();
            writes.push(Write {
                state,
                insert: false,
                outbox: d.messages,
                events: d.history,
            });
        }
        for batch in testing::random_batches(&mut rng, &writes) {
            s.save_all(batch).await.expect("a batch stores");
        }

        for state in &states {
            let id = &state.order_id;
            assert_eq!(
                s.get(id).await.expect("get").as_ref(),
                Some(state),
                "the last state of {id}"
            );
            let written: Vec<&str> = writes
                .iter()
                .filter(|w| &w.state.order_id == id)
                .flat_map(|w| w.events.iter().map(|e| e.kind.as_str()))
                .collect();
            let stored = s.history(id).await.expect("history");
            testing::history_is(&stored, &written, &format!("the history of {id}"));
        }
        let sent = writes.iter().flat_map(|w| &w.outbox);
        testing::outbox_holds(s, sent, "every signal in the order written").await;
    }

    /// One transaction with many new orders, each also transitioned: all
    /// stored, each with its whole history.
    pub(crate) async fn a_batch_of_many_orders_is_stored_whole(s: &dyn Store) {
        let mut batch = Vec::new();
        for n in 0..200 {
            let (state, events) = workflow::create(&format!("ORD-{n}"), demo_order(), Utc::now());
            let cancelled = transition(&state, Input::Cancel { reason: None });
            batch.push(Write {
                state,
                insert: true,
                outbox: Vec::new(),
                events,
            });
            batch.push(cancelled);
        }
        s.save_all(&batch).await.expect("one transaction");
        assert_eq!(s.list(None, 10, 0).await.expect("list").total, 200);
        for pair in batch.chunks(2) {
            let id = &pair[0].state.order_id;
            assert_eq!(s.get(id).await.expect("get"), Some(pair[1].state.clone()));
            let stored = s.history(id).await.expect("history").len();
            assert_eq!(stored, pair[0].events.len() + pair[1].events.len());
        }
    }
}

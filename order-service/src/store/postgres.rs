//! The PostgreSQL store, for state that several replicas share.
//!
//! The same tables and the same promises as the SQLite store: an order's
//! state and the signals it causes are written in one transaction. Calls
//! are async, on the service kit's connection pool ([`Postgres`]); the
//! outbox (claims, leases, quarantine) is the kit's. The store is the
//! kit's pool itself, opened by [`SCHEMA`](super::SCHEMA)`.open_postgres`.
//! Schema: `migrations/postgres`.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use message_bus::Route;
use service_kit::store::entities::{Entities, StateRow, StateRows};
use service_kit::store::postgres::{execute, pipeline, prepared, Statement};
use service_kit::store::{history, outbox, Postgres};
use shared_messages::history::HistoryEvent;
use shared_messages::Envelope;
use tokio_postgres::error::SqlState;

use super::{counts, decode, encode, Page, Store, StoreError, Unfinished, Write};
use crate::workflow::{OrderState, OrderStatus};

fn states(rows: Vec<tokio_postgres::Row>) -> Result<Vec<OrderState>, StoreError> {
    rows.iter()
        .map(|r| decode(r.get::<_, &str>(0), r.get::<_, &str>(1)))
        .collect()
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The history entries of a transaction, one array per column, with
/// their numbers. An entry already stored (a commit whose answer was
/// lost, retried) is left as it is.
const APPEND_HISTORY: &str =
    "INSERT INTO order_history (order_id, seq, kind, at, message_id, detail)
     SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[])
     ON CONFLICT (order_id, seq) DO NOTHING";
/// The new orders of a transaction, one array per column, each inserted
/// unless its id is taken. Answers the orders not inserted (by their
/// place in the arrays, from 1) with the row that holds their id (`NULL`
/// when it cannot be seen): the statement's reads see the table as it was
/// before it, so that is the row stored before. (`o.id = ANY($1)`, as
/// in [`UPDATE`], keeps the join on the index.)
const INSERT: &str = "WITH u AS (
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[],
                              $6::text[], $7::text[]) WITH ORDINALITY
             AS u(id, workflow_id, status, finished, state, created_at, updated_at, n)),
     added AS (
         INSERT INTO orders (id, workflow_id, status, finished, state, created_at, updated_at)
         SELECT id, workflow_id, status, finished, state,
                (created_at)::timestamptz, (updated_at)::timestamptz
         FROM u ORDER BY n
         ON CONFLICT (id) DO NOTHING
         RETURNING id)
     SELECT u.n, o.state FROM u LEFT JOIN orders o ON o.id = ANY($1::text[]) AND o.id = u.id
     WHERE u.id NOT IN (SELECT id FROM added)";
/// The stored orders of a transaction, one array per column, updated.
/// `o.id = ANY($1)` gives the planner the index condition whatever it
/// guesses of the arrays' length: a plan prepared while the table was
/// small joined by scanning every order.
const UPDATE: &str = "UPDATE orders AS o SET status = u.status, finished = u.finished,
         state = u.state, updated_at = (u.updated_at)::timestamptz
     FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::text[])
         AS u(id, status, finished, state, updated_at)
     WHERE o.id = ANY($1::text[]) AND o.id = u.id";

/// One write of a transaction, borrowed: a new order (`insert`) or a
/// transition of a stored one, with its signals and history entries.
struct Part<'a> {
    state: &'a OrderState,
    insert: bool,
    signals: &'a [(Route, Envelope)],
    events: &'a [HistoryEvent],
}

impl<'a> From<&'a Write> for Part<'a> {
    fn from(w: &'a Write) -> Self {
        Self {
            state: &w.state,
            insert: w.insert,
            signals: &w.outbox,
            events: &w.events,
        }
    }
}

fn duplicate(order_id: &str) -> StoreError {
    StoreError::Duplicate(format!("order {order_id}"))
}

/// The rows [`INSERT`] takes: each new order once, in the order given.
/// The same order twice is stored once; another order with an id taken
/// earlier in the transaction is a `Duplicate`.
struct Inserts<'a> {
    states: Vec<&'a OrderState>,
    rows: StateRows<'a>,
    workflow_ids: Vec<&'a str>,
}

/// An order's row, as the kit's arrays take it.
fn row(state: &OrderState) -> StateRow<'_> {
    StateRow {
        id: &state.order_id,
        status: state.status.as_str(),
        finished: state.status.is_final(),
        state: encode(state),
        created_at: &state.created_at,
        updated_at: &state.updated_at,
    }
}

impl<'a> Inserts<'a> {
    fn of(parts: &[Part<'a>]) -> Result<Self, StoreError> {
        let mut inserts = Inserts {
            states: Vec::new(),
            rows: StateRows::default(),
            workflow_ids: Vec::new(),
        };
        let mut seen: HashMap<&str, &OrderState> = HashMap::new();
        for state in parts.iter().filter(|p| p.insert).map(|p| p.state) {
            match seen.insert(&state.order_id, state) {
                Some(earlier) if earlier == state => continue,
                Some(_) => return Err(duplicate(&state.order_id)),
                None => {}
            }
            inserts.states.push(state);
            inserts.rows.push(row(state));
            inserts.workflow_ids.push(&state.workflow_id);
        }
        Ok(inserts)
    }

    /// Runs [`INSERT`]: `Duplicate` when an id is taken by another order.
    /// The same order stored again (the group commit retries a write
    /// whose commit's outcome was lost) succeeds and leaves the one row as
    /// it is.
    async fn run(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        insert: &tokio_postgres::Statement,
    ) -> Result<(), StoreError> {
        let result = tx
            .query(
                insert,
                &[
                    &self.rows.ids,
                    &self.workflow_ids,
                    &self.rows.statuses,
                    &self.rows.finished,
                    &self.rows.states,
                    &self.rows.created,
                    &self.rows.updated,
                ],
            )
            .await;
        let not_added = match result {
            Ok(rows) => rows,
            // Another order holds the workflow id.
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(StoreError::Duplicate(format!(
                    "order {}",
                    self.rows.ids.join(", ")
                )));
            }
            Err(e) => return Err(e.into()),
        };
        for row in not_added {
            let n: i64 = row.get(0);
            let stored: Option<&str> = row.get(1);
            let state = usize::try_from(n - 1)
                .ok()
                .and_then(|i| self.states.get(i))
                .ok_or_else(|| StoreError::unavailable("an inserted order's place was lost"))?;
            match stored.map(|json| decode(&state.order_id, json)) {
                Some(Ok(stored)) if stored == **state => {}
                _ => return Err(duplicate(&state.order_id)),
            }
        }
        Ok(())
    }
}

/// The rows [`UPDATE`] takes: the last state of each order written as a
/// transition (each write carries the whole state, and one statement
/// updates a row once), in id order, so that transactions lock rows in
/// one order.
fn updates<'a>(parts: &[Part<'a>]) -> StateRows<'a> {
    let last: BTreeMap<&str, &OrderState> = parts
        .iter()
        .filter(|p| !p.insert)
        .map(|p| (p.state.order_id.as_str(), p.state))
        .collect();
    let mut rows = StateRows::with_capacity(last.len());
    for state in last.into_values() {
        rows.push(row(state));
    }
    rows
}

/// The history entries of a transaction as the arrays [`APPEND_HISTORY`]
/// takes.
struct Entries<'a> {
    order_ids: Vec<&'a str>,
    seqs: Vec<i64>,
    kinds: Vec<&'a str>,
    ats: Vec<String>,
    message_ids: Vec<Option<String>>,
    details: Vec<String>,
}

impl<'a> Entries<'a> {
    fn of(parts: &[Part<'a>]) -> Self {
        let mut rows = Entries {
            order_ids: Vec::new(),
            seqs: Vec::new(),
            kinds: Vec::new(),
            ats: Vec::new(),
            message_ids: Vec::new(),
            details: Vec::new(),
        };
        for part in parts {
            for e in part.events {
                let c = history::columns(&e.at, e.message_id, &e.detail);
                rows.order_ids.push(&part.state.order_id);
                rows.seqs.push(i64::try_from(e.seq).unwrap_or(i64::MAX));
                rows.kinds.push(&e.kind);
                rows.ats.push(c.at);
                rows.message_ids.push(c.message_id);
                rows.details.push(c.detail);
            }
        }
        rows
    }
}

/// Stores `parts` in one transaction of `store`: one statement per table,
/// whatever their number (new orders, then transitions, history entries,
/// outbox rows), all in one pipeline beside the write guard's check.
async fn write(store: &Postgres, parts: &[Part<'_>]) -> Result<(), StoreError> {
    let inserts = Inserts::of(parts)?;
    let updates = updates(parts);
    let entries = Entries::of(parts);
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let [append_history, insert, update, insert_outbox] = prepared(
        &tx,
        [APPEND_HISTORY, INSERT, UPDATE, outbox::INSERT_POSTGRES],
    )
    .await?;
    let t: &tokio_postgres::Transaction<'_> = &tx;
    let mut statements: Vec<Statement<'_>> = Vec::new();
    // New orders before transitions: a transaction may hold an order's
    // insert and later transitions of it.
    if !inserts.rows.ids.is_empty() {
        statements.push(Box::pin(inserts.run(t, &insert)));
    }
    if !updates.ids.is_empty() {
        let (updates, update) = (&updates, &update);
        statements.push(execute(
            t,
            update,
            vec![
                &updates.ids,
                &updates.statuses,
                &updates.finished,
                &updates.states,
                &updates.updated,
            ],
        ));
    }
    if !entries.order_ids.is_empty() {
        let (entries, append_history) = (&entries, &append_history);
        statements.push(execute(
            t,
            append_history,
            vec![
                &entries.order_ids,
                &entries.seqs,
                &entries.kinds,
                &entries.ats,
                &entries.message_ids,
                &entries.details,
            ],
        ));
    }
    outbox::insert_pipelined(
        &mut statements,
        t,
        &insert_outbox,
        parts.iter().flat_map(|p| p.signals),
    );
    // With several replicas: only the owner of these orders commits
    // (checked beside the pipeline).
    let ids: Vec<&str> = parts.iter().map(|p| p.state.order_id.as_str()).collect();
    futures::try_join!(pipeline(statements), store.check_writes(&tx, &ids))?;
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl Store for Postgres {
    async fn insert(&self, state: &OrderState, events: &[HistoryEvent]) -> Result<(), StoreError> {
        write(
            self,
            &[Part {
                state,
                insert: true,
                signals: &[],
                events,
            }],
        )
        .await
    }

    async fn save(
        &self,
        state: &OrderState,
        signals: &[(Route, Envelope)],
        events: &[HistoryEvent],
    ) -> Result<(), StoreError> {
        write(
            self,
            &[Part {
                state,
                insert: false,
                signals,
                events,
            }],
        )
        .await
    }

    async fn save_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        let parts: Vec<Part<'_>> = writes.iter().map(Part::from).collect();
        write(self, &parts).await
    }

    async fn get(&self, order_id: &str) -> Result<Option<OrderState>, StoreError> {
        self.read_state("orders", order_id, decode).await
    }

    async fn list(
        &self,
        status: Option<OrderStatus>,
        limit: u32,
        offset: u64,
    ) -> Result<Page, StoreError> {
        let status = status.map(|s| s.as_str().to_owned());
        let (limit, offset) = (i64::from(limit), clamp(offset));
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, state FROM orders WHERE ($1::text IS NULL OR status = $1)
                 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
                &[&status, &limit, &offset],
            )
            .await?;
        let total: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM orders WHERE ($1::text IS NULL OR status = $1)",
                &[&status],
            )
            .await?
            .get(0);
        Ok(Page {
            orders: states(rows)?,
            total: u64::try_from(total).unwrap_or_default(),
        })
    }

    async fn unfinished(&self) -> Result<Unfinished, StoreError> {
        Ok(self.read_unfinished("orders", decode).await?.into())
    }

    async fn history(&self, order_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        let client = self.client().await?;
        history::read_postgres(&**client, "order_history", "order_id", order_id).await
    }

    async fn count_by_status(&self) -> Result<Vec<(OrderStatus, u64)>, StoreError> {
        Ok(counts(self.count_statuses("orders").await?))
    }
}

#[cfg(test)]
use service_kit::store::testdb;

#[cfg(test)]
mod tests {
    use super::testdb::TestDb;
    use super::*;
    use crate::store::{tests, OnDatabase, SCHEMA};
    use crate::validation::demo_order;
    use chrono::Utc;

    service_kit::store_checks!(
        |name| TestDb::open(name, &SCHEMA) => tests:
        insert_get_and_duplicate,
        list_filters_paginates_and_counts,
        creating_the_same_order_twice_stores_it_once,
        one_batch_inserts_and_transitions_the_same_order,
        random_batches_store_what_writes_one_at_a_time_would,
        a_batch_of_many_orders_is_stored_whole,
        an_undecodable_outbox_row_is_quarantined,
    );

    #[tokio::test]
    async fn state_and_outbox_are_saved_together_and_claims_are_exclusive() {
        let (db, s) = TestDb::open("orders_outbox", &SCHEMA).await;
        let other = SCHEMA.open_postgres(&db.url).await.expect("second replica");
        let other_takes_none =
            service_kit::store::testing::another_replica_takes_no_claimed_rows(&other);
        tests::state_and_outbox_are_saved_together(&s, other_takes_none).await;
    }

    #[tokio::test]
    async fn reopening_migrates_idempotently_and_keeps_orders() {
        let db = TestDb::create("orders_reopen");
        {
            let s = SCHEMA.open_postgres(&db.url).await.expect("open");
            s.insert(&OrderState::new("ORD-1", demo_order(), Utc::now()), &[])
                .await
                .expect("insert");
        }
        let s = SCHEMA.open_postgres(&db.url).await.expect("reopen");
        assert!(s.get("ORD-1").await.expect("get").is_some());
        service_kit::store::testing::has_outbox_claims_and_room_for(&s, "orders").await;
    }

    #[tokio::test]
    async fn the_store_reconnects_after_the_server_drops_its_connection() {
        let (db, s) = TestDb::open("orders_reconnect", &SCHEMA).await;
        s.ping().await.expect("ping");
        super::testdb::admin(
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = '{}' AND pid <> pg_backend_pid()",
                db.name
            ),
            "postgres",
        )
        .expect("terminating the store's connection");
        // The call that finds the connection dead fails; the next reconnects.
        let _ = s.ping().await;
        s.ping()
            .await
            .expect("a new connection after the old one was dropped");
        s.insert(&OrderState::new("ORD-1", demo_order(), Utc::now()), &[])
            .await
            .expect("insert on the new connection");
    }

    #[tokio::test]
    async fn history_is_written_with_the_state_once_and_bad_rows_are_set_aside() {
        let (db, s) = TestDb::open("orders_history", &SCHEMA).await;
        tests::history_is_written_with_the_state_once(&s).await;
        tests::an_unreadable_row_is_set_aside(&s, || {
            super::testdb::admin(
                "UPDATE orders SET state = '{}' WHERE id = 'ORD-2'".into(),
                &db.name,
            )
            .expect("corrupt a row")
        })
        .await;
    }

    #[tokio::test]
    async fn a_wrong_url_fails_at_open() {
        assert!(
            SCHEMA
                .open_postgres("postgres://postgres@127.0.0.1:1/none")
                .await
                .is_err(),
            "opening against a closed port fails at once"
        );
    }

    /// A database the previous migration runner made (its
    /// `schema_migrations` table) is taken over: it opens and keeps its
    /// orders.
    #[tokio::test]
    async fn a_database_of_the_previous_migration_runner_is_taken_over() {
        let db = TestDb::create("orders_takeover");
        let order = OrderState::new("ORD-1", demo_order(), Utc::now());
        super::testdb::admin(
            format!(
                "{}
                CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
                INSERT INTO schema_migrations (version) VALUES (1), (2), (3);
                INSERT INTO orders (id, workflow_id, status, finished, state, created_at, updated_at)
                VALUES ('{}', '{}', '{}', false, '{}', '{}', '{}');",
                service_kit::store::testing::migrations_up_to(SCHEMA.postgres, 3),
                order.order_id,
                order.workflow_id,
                order.status.as_str(),
                encode(&order),
                order.created_at.to_rfc3339(),
                order.updated_at.to_rfc3339(),
            ),
            &db.name,
        )
        .expect("the old schema");
        let s = SCHEMA.open_postgres(&db.url).await.expect("taken over");
        assert_eq!(s.get("ORD-1").await.expect("get"), Some(order));
        s.insert(&OrderState::new("ORD-2", demo_order(), Utc::now()), &[])
            .await
            .expect("insert");
        drop(s);
        let s = SCHEMA.open_postgres(&db.url).await.expect("reopens");
        assert_eq!(s.list(None, 10, 0).await.expect("list").total, 2);
    }
}

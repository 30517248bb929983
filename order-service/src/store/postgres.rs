//! The PostgreSQL store, for state that several replicas share.
//!
//! The same tables and the same promises as the SQLite store: an order's
//! state and the signals it causes are written in one transaction. Calls
//! are async, on the service kit's connection pool ([`Postgres`]); the
//! outbox (claims, leases, quarantine) is the kit's. The store is the
//! kit's pool itself, opened by [`SCHEMA`](super::SCHEMA)`.open_postgres`.
//! Schema: `migrations/postgres`.

use async_trait::async_trait;
use message_bus::Route;
use service_kit::store::entities::Entities;
use service_kit::store::postgres::{pipeline, prepared, Statement, Transaction};
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

const APPEND_HISTORY: &str =
    "INSERT INTO order_history (order_id, seq, kind, at, message_id, detail)
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id, seq) DO NOTHING";
const INSERT: &str =
    "INSERT INTO orders (id, workflow_id, status, finished, state, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6::text::timestamptz, $7::text::timestamptz)
     ON CONFLICT (id) DO NOTHING";
const UPDATE: &str = "UPDATE orders SET status = $2, finished = $3, state = $4,
     updated_at = $5::text::timestamptz WHERE id = $1";

/// The statements a write runs, prepared on the transaction's connection.
struct Prepared {
    append_history: tokio_postgres::Statement,
    insert: tokio_postgres::Statement,
    update: tokio_postgres::Statement,
    outbox: tokio_postgres::Statement,
}

impl Prepared {
    async fn on(tx: &Transaction<'_>) -> Result<Self, StoreError> {
        let [append_history, insert, update, outbox] = prepared(
            tx,
            [APPEND_HISTORY, INSERT, UPDATE, outbox::INSERT_POSTGRES],
        )
        .await?;
        Ok(Self {
            append_history,
            insert,
            update,
            outbox,
        })
    }
}

/// History entries, as statements of the caller's pipeline. An entry
/// already stored (a commit whose answer was lost, retried) is left as
/// it is.
fn append_in<'a>(
    into: &mut Vec<Statement<'a>>,
    (tx, p): (&'a tokio_postgres::Transaction<'_>, &'a Prepared),
    order_id: &'a str,
    events: &'a [HistoryEvent],
) {
    for e in events {
        into.push(Box::pin(async move {
            let c = history::columns(&e.at, e.message_id, &e.detail);
            let seq = i64::try_from(e.seq).unwrap_or(i64::MAX);
            tx.execute(
                &p.append_history,
                &[&order_id, &seq, &e.kind, &c.at, &c.message_id, &c.detail],
            )
            .await?;
            Ok(())
        }));
    }
}

/// A new order, as statements of the caller's pipeline; `Duplicate` when
/// its id is taken by another order (the transaction then rolls back,
/// history entries with it). The same order stored again (the group
/// commit retries a write whose commit's outcome was lost) succeeds and
/// leaves the one row as it is.
fn insert_in<'a>(
    into: &mut Vec<Statement<'a>>,
    (tx, p): (&'a tokio_postgres::Transaction<'_>, &'a Prepared),
    state: &'a OrderState,
    events: &'a [HistoryEvent],
) {
    into.push(Box::pin(async move {
        let result = tx
            .execute(
                &p.insert,
                &[
                    &state.order_id,
                    &state.workflow_id,
                    &state.status.as_str(),
                    &state.status.is_final(),
                    &encode(state),
                    &state.created_at.to_rfc3339(),
                    &state.updated_at.to_rfc3339(),
                ],
            )
            .await;
        match result {
            Ok(1) => Ok(()),
            Ok(_) => {
                let stored = tx
                    .query_opt("SELECT state FROM orders WHERE id = $1", &[&state.order_id])
                    .await?
                    .map(|row| decode(&state.order_id, row.get(0)))
                    .transpose();
                match stored {
                    Ok(Some(stored)) if stored == *state => Ok(()),
                    _ => Err(StoreError::Duplicate(format!("order {}", state.order_id))),
                }
            }
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(StoreError::Duplicate(format!("order {}", state.order_id)))
            }
            Err(e) => Err(e.into()),
        }
    }));
    append_in(into, (tx, p), &state.order_id, events);
}

fn save_in<'a>(
    into: &mut Vec<Statement<'a>>,
    (tx, p): (&'a tokio_postgres::Transaction<'_>, &'a Prepared),
    state: &'a OrderState,
    signals: &'a [(Route, Envelope)],
    events: &'a [HistoryEvent],
) {
    into.push(Box::pin(async move {
        tx.execute(
            &p.update,
            &[
                &state.order_id,
                &state.status.as_str(),
                &state.status.is_final(),
                &encode(state),
                &state.updated_at.to_rfc3339(),
            ],
        )
        .await?;
        Ok(())
    }));
    append_in(into, (tx, p), &state.order_id, events);
    outbox::insert_pipelined(into, tx, &p.outbox, signals);
}

#[async_trait]
impl Store for Postgres {
    async fn insert(&self, state: &OrderState, events: &[HistoryEvent]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let p = Prepared::on(&tx).await?;
        let mut statements = Vec::new();
        insert_in(&mut statements, (&*tx, &p), state, events);
        let ids = [state.order_id.as_str()];
        futures::try_join!(pipeline(statements), self.check_writes(&tx, &ids))?;
        tx.commit().await?;
        Ok(())
    }

    async fn save(
        &self,
        state: &OrderState,
        signals: &[(Route, Envelope)],
        events: &[HistoryEvent],
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let p = Prepared::on(&tx).await?;
        let mut statements = Vec::new();
        save_in(&mut statements, (&*tx, &p), state, signals, events);
        let ids = [state.order_id.as_str()];
        futures::try_join!(pipeline(statements), self.check_writes(&tx, &ids))?;
        tx.commit().await?;
        Ok(())
    }

    async fn save_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let p = Prepared::on(&tx).await?;
        // Every statement of the batch in one pipeline (sent together,
        // answered in order), not one round trip each.
        let mut statements = Vec::new();
        for w in writes {
            if w.insert {
                insert_in(&mut statements, (&*tx, &p), &w.state, &w.events);
            } else {
                save_in(&mut statements, (&*tx, &p), &w.state, &w.outbox, &w.events);
            }
        }
        // With several replicas: only the owner of these orders commits
        // (checked beside the pipeline).
        let ids: Vec<&str> = writes.iter().map(|w| w.state.order_id.as_str()).collect();
        futures::try_join!(pipeline(statements), self.check_writes(&tx, &ids))?;
        tx.commit().await?;
        Ok(())
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
    );

    #[tokio::test]
    async fn an_undecodable_outbox_row_is_quarantined_and_the_rest_go_out() {
        let (db, s) = TestDb::open("orders_outbox_quarantine", &SCHEMA).await;
        service_kit::store::testing::store_undecodable_outbox_row_postgres(&db)
            .expect("a garbage row");
        tests::an_undecodable_outbox_row_is_quarantined(&s).await;
    }

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
                "{}{}{}
                CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
                INSERT INTO schema_migrations (version) VALUES (1), (2), (3);
                INSERT INTO orders (id, workflow_id, status, finished, state, created_at, updated_at)
                VALUES ('{}', '{}', '{}', false, '{}', '{}', '{}');",
                include_str!("../../migrations/postgres/V1__orders_outbox.sql"),
                include_str!("../../migrations/postgres/V2__order_history.sql"),
                include_str!("../../migrations/postgres/V3__quarantine.sql"),
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

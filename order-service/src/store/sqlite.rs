//! The SQLite store (rusqlite, WAL, `synchronous=NORMAL`), on the service
//! kit's [`Sqlite`]: one connection, its calls and the group commit's
//! transactions on the store's own `sqlite` thread. The orders it
//! committed last are kept in memory ([`Recent`]), so a read of one needs
//! no call to that thread. Schema: `migrations/sqlite`.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use message_bus::Route;
use rusqlite::{params, Connection, OptionalExtension};
use service_kit::store::entities::Entities;
use service_kit::store::recent::{self, Recent};
use service_kit::store::sqlite::{SqliteWrite, SqliteWrites};
use service_kit::store::{history, outbox, Database, Sqlite};
use shared_messages::history::HistoryEvent;
use shared_messages::Envelope;

use super::{counts, decode, encode, OnDatabase, Page, Store, StoreError, Unfinished, Write};
use crate::config::StoreLocation;
use crate::workflow::{OrderState, OrderStatus};

pub struct SqliteStore {
    db: Sqlite,
    recent: Arc<Recent<OrderState>>,
}

impl SqliteStore {
    pub fn open(location: &StoreLocation) -> Result<Self, StoreError> {
        let path = match location {
            StoreLocation::SqliteMemory => Path::new(":memory:"),
            StoreLocation::SqliteFile(path) => path.as_path(),
            StoreLocation::Postgres(_) => {
                return Err(StoreError::Open("not a SQLite location".into()))
            }
        };
        Ok(Self {
            db: super::SCHEMA.open_sqlite(path)?,
            recent: Arc::default(),
        })
    }
}

/// The order a write stores, by its id (for [`Recent`]).
fn state(w: &Write) -> (&str, &OrderState) {
    (&w.state.order_id, &w.state)
}

fn rows(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<OrderState>, StoreError> {
    let raw: Vec<(String, String)> = stmt
        .query_map(params, |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    raw.iter().map(|(id, json)| decode(id, json)).collect()
}

/// History entries, inside the caller's transaction. An entry already
/// stored (same order, same seq) is left as it is.
fn append_in(conn: &Connection, order_id: &str, events: &[HistoryEvent]) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO order_history (order_id, seq, kind, at, message_id, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for e in events {
        let c = history::columns(&e.at, e.message_id, &e.detail);
        let seq = i64::try_from(e.seq).unwrap_or(i64::MAX);
        insert.execute(params![order_id, seq, e.kind, c.at, c.message_id, c.detail])?;
    }
    Ok(())
}

/// A new order; `Duplicate` when its id is taken by another order. The
/// same order stored again (a write retried after its commit's outcome was
/// lost) succeeds and leaves the one row as it is.
fn insert_in(
    conn: &Connection,
    state: &OrderState,
    events: &[HistoryEvent],
) -> Result<(), StoreError> {
    let result = conn
        .prepare_cached(
            "INSERT INTO orders (id, workflow_id, status, finished, state, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            state.order_id,
            state.workflow_id,
            state.status.as_str(),
            state.status.is_final(),
            encode(state),
            state.created_at.to_rfc3339(),
            state.updated_at.to_rfc3339(),
        ]);
    match result {
        Ok(1) => append_in(conn, &state.order_id, events),
        Ok(_) => {
            let stored: Option<String> = conn
                .prepare_cached("SELECT state FROM orders WHERE id = ?1")?
                .query_row([&state.order_id], |r| r.get(0))
                .optional()?;
            match stored
                .map(|json| decode(&state.order_id, &json))
                .transpose()
            {
                Ok(Some(stored)) if stored == *state => append_in(conn, &state.order_id, events),
                _ => Err(StoreError::Duplicate(format!("order {}", state.order_id))),
            }
        }
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::Duplicate(format!("order {}", state.order_id)))
        }
        Err(e) => Err(e.into()),
    }
}

/// One transition and its signals, inside the caller's transaction.
fn save_in(
    tx: &rusqlite::Transaction<'_>,
    state: &OrderState,
    signals: &[(Route, Envelope)],
    events: &[HistoryEvent],
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE orders SET status = ?2, finished = ?3, state = ?4, updated_at = ?5 WHERE id = ?1",
    )?
    .execute(params![
        state.order_id,
        state.status.as_str(),
        state.status.is_final(),
        encode(state),
        state.updated_at.to_rfc3339(),
    ])?;
    append_in(tx, &state.order_id, events)?;
    outbox::insert_sqlite(tx, signals)
}

/// One write of the group commit, inside the caller's transaction.
impl SqliteWrite for Write {
    fn store(tx: &rusqlite::Transaction<'_>, w: &Write) -> Result<(), StoreError> {
        if w.insert {
            insert_in(tx, &w.state, &w.events)
        } else {
            save_in(tx, &w.state, &w.outbox, &w.events)
        }
    }
}

impl OnDatabase for SqliteStore {
    fn db(&self) -> &dyn Database {
        &self.db
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert(&self, state: &OrderState, events: &[HistoryEvent]) -> Result<(), StoreError> {
        let (state, events, recent) = (state.clone(), events.to_vec(), self.recent.clone());
        self.db
            .call(move |conn| {
                let tx = conn.transaction()?;
                insert_in(&tx, &state, &events)?;
                tx.commit()?;
                recent.put(&state.order_id.clone(), state);
                Ok(())
            })
            .await
    }

    async fn save(
        &self,
        state: &OrderState,
        signals: &[(Route, Envelope)],
        events: &[HistoryEvent],
    ) -> Result<(), StoreError> {
        let (state, signals, events) = (state.clone(), signals.to_vec(), events.to_vec());
        let recent = self.recent.clone();
        self.db
            .call(move |conn| {
                let tx = conn.transaction()?;
                save_in(&tx, &state, &signals, &events)?;
                tx.commit()?;
                recent.put(&state.order_id.clone(), state);
                Ok(())
            })
            .await
    }

    async fn save_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        recent::save_all(&self.db, &self.recent, writes, state).await
    }

    fn sqlite_writes(&self) -> Option<SqliteWrites<Write>> {
        Some(recent::group_writes(&self.db, &self.recent, state))
    }

    async fn get(&self, order_id: &str) -> Result<Option<OrderState>, StoreError> {
        if let Some(state) = self.recent.get(order_id) {
            return Ok(Some(OrderState::clone(&state)));
        }
        self.db.read_state("orders", order_id, decode).await
    }

    async fn list(
        &self,
        status: Option<OrderStatus>,
        limit: u32,
        offset: u64,
    ) -> Result<Page, StoreError> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        self.db
            .call(move |conn| {
                let (orders, total) = match status {
                    Some(status) => {
                        let mut stmt = conn.prepare_cached(
                            "SELECT id, state FROM orders WHERE status = ?1
                             ORDER BY created_at DESC, id DESC LIMIT ?2 OFFSET ?3",
                        )?;
                        let orders = rows(&mut stmt, params![status.as_str(), limit, offset])?;
                        let total: i64 = conn.query_row(
                            "SELECT COUNT(*) FROM orders WHERE status = ?1",
                            [status.as_str()],
                            |r| r.get(0),
                        )?;
                        (orders, total)
                    }
                    None => {
                        let mut stmt = conn.prepare_cached(
                            "SELECT id, state FROM orders ORDER BY created_at DESC, id DESC LIMIT ?1 OFFSET ?2",
                        )?;
                        let orders = rows(&mut stmt, params![limit, offset])?;
                        let total: i64 =
                            conn.query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0))?;
                        (orders, total)
                    }
                };
                Ok(Page {
                    orders,
                    total: u64::try_from(total).unwrap_or_default(),
                })
            })
            .await
    }

    async fn unfinished(&self) -> Result<Unfinished, StoreError> {
        Ok(self.db.read_unfinished("orders", decode).await?.into())
    }

    async fn history(&self, order_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        let id = order_id.to_owned();
        self.db
            .call(move |conn| history::read_sqlite(conn, "order_history", "order_id", &id))
            .await
    }

    async fn count_by_status(&self) -> Result<Vec<(OrderStatus, u64)>, StoreError> {
        Ok(counts(self.db.count_statuses("orders").await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests;
    use crate::validation::demo_order;
    use chrono::Utc;

    fn store() -> SqliteStore {
        SqliteStore::open(&StoreLocation::SqliteMemory).expect("in-memory store")
    }

    service_kit::store_checks!(
        |_| async { ((), store()) } => tests:
        insert_get_and_duplicate,
        creating_the_same_order_twice_stores_it_once,
        list_filters_paginates_and_counts,
        history_is_written_with_the_state_once,
        one_batch_inserts_and_transitions_the_same_order,
        random_batches_store_what_writes_one_at_a_time_would,
        a_batch_of_many_orders_is_stored_whole,
        an_undecodable_outbox_row_is_quarantined,
    );

    /// An order this process committed (inserted, saved, or saved by the
    /// group commit) is read while the store's thread is busy: from
    /// memory, as stored.
    #[tokio::test]
    async fn committed_orders_are_read_while_the_thread_is_busy() {
        use service_kit::store::testing::{answers_at_once, HeldThread};
        let s = store();
        let first = OrderState::new("ORD-1", demo_order(), Utc::now());
        s.insert(&first, &[]).await.expect("insert");
        let mut saved = OrderState::new("ORD-2", demo_order(), Utc::now());
        s.insert(&saved, &[]).await.expect("insert");
        saved.status = OrderStatus::Confirmed;
        s.save(&saved, &[], &[]).await.expect("save");
        let held = HeldThread::hold(&s.db).await;
        for expected in [&first, &saved] {
            let read = answers_at_once(s.get(&expected.order_id)).await;
            assert_eq!(
                read.expect("answered").expect("get").as_ref(),
                Some(expected)
            );
        }
        assert!(
            answers_at_once(s.get("ORD-3")).await.is_none(),
            "needs the thread"
        );
        drop(held);
    }

    #[tokio::test]
    async fn a_group_commit_inserts_and_updates_together_or_not_at_all() {
        let s = store();
        let first = OrderState::new("ORD-1", demo_order(), Utc::now());
        let write = |state: &OrderState, insert| Write {
            state: state.clone(),
            outbox: Vec::new(),
            events: Vec::new(),
            insert,
        };
        s.save_all(&[write(&first, true)]).await.expect("insert");
        let mut moved = first.clone();
        moved.status = OrderStatus::Confirmed;
        let second = OrderState::new("ORD-2", demo_order(), Utc::now());
        // An id taken by another order fails the whole transaction, the
        // update with it.
        let taken = OrderState::new(
            "ORD-1",
            demo_order(),
            Utc::now() + chrono::TimeDelta::seconds(1),
        );
        assert!(matches!(
            s.save_all(&[write(&moved, false), write(&taken, true)])
                .await,
            Err(StoreError::Duplicate(_))
        ));
        assert_eq!(s.get("ORD-1").await.expect("get"), Some(first));
        s.save_all(&[write(&moved, false), write(&second, true)])
            .await
            .expect("both");
        assert_eq!(s.get("ORD-1").await.expect("get"), Some(moved));
        assert_eq!(s.get("ORD-2").await.expect("get"), Some(second));
    }

    #[tokio::test]
    async fn state_and_outbox_are_saved_together() {
        tests::state_and_outbox_are_saved_together(&store(), async {}).await;
    }

    #[tokio::test]
    async fn an_unreadable_row_is_set_aside_and_the_rest_recover() {
        let s = store();
        tests::an_unreadable_row_is_set_aside(&s, || {
            s.db.blocking(|c| {
                Ok(c.execute(
                    "UPDATE orders SET state = '{\"nope\": 1}' WHERE id = 'ORD-2'",
                    [],
                )?)
            })
            .expect("corrupt a row");
        })
        .await;
    }

    #[tokio::test]
    async fn a_file_store_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("order-store-{}", uuid::Uuid::new_v4()));
        let location = StoreLocation::SqliteFile(dir.join("nested/orders.db"));
        {
            let s = SqliteStore::open(&location).expect("open creates the directory");
            s.insert(&OrderState::new("ORD-1", demo_order(), Utc::now()), &[])
                .await
                .expect("insert");
        }
        let s = SqliteStore::open(&location).expect("reopen migrates idempotently");
        assert!(s.get("ORD-1").await.expect("get").is_some());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The schema as the hand-written runner left it: every migration run,
    /// recorded in `schema_migrations`, one order stored.
    fn old_schema_with_one_order(order: &OrderState) -> String {
        format!(
            "{}
            CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);
            INSERT INTO schema_migrations VALUES (1, 'then'), (2, 'then'), (3, 'then');
            INSERT INTO orders (id, workflow_id, status, finished, state, created_at, updated_at)
            VALUES ('{}', '{}', '{}', 0, '{}', '{}', '{}');",
            service_kit::store::testing::migrations_up_to(crate::store::SCHEMA.sqlite, 3),
            order.order_id,
            order.workflow_id,
            order.status.as_str(),
            encode(order),
            order.created_at.to_rfc3339(),
            order.updated_at.to_rfc3339(),
        )
    }

    /// A database the previous migration runner made is taken over, not
    /// migrated again: it opens, keeps its orders and takes new ones.
    #[tokio::test]
    async fn a_database_of_the_previous_migration_runner_is_taken_over() {
        let dir = std::env::temp_dir().join(format!("order-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let path = dir.join("orders.db");
        let order = OrderState::new("ORD-1", demo_order(), Utc::now());
        Connection::open(&path)
            .expect("opens")
            .execute_batch(&old_schema_with_one_order(&order))
            .expect("the old schema");
        let s = SqliteStore::open(&StoreLocation::SqliteFile(path.clone())).expect("taken over");
        assert_eq!(s.get("ORD-1").await.expect("get"), Some(order));
        s.insert(&OrderState::new("ORD-2", demo_order(), Utc::now()), &[])
            .await
            .expect("insert");
        drop(s);
        let s = SqliteStore::open(&StoreLocation::SqliteFile(path)).expect("reopens");
        assert_eq!(s.list(None, 10, 0).await.expect("list").total, 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! The SQLite store (rusqlite, WAL, `synchronous=NORMAL`).
//!
//! One connection behind a mutex: SQLite takes one writer at a time anyway,
//! and each statement here is a short indexed read or write. WAL with
//! `synchronous=NORMAL` survives a process crash (`kill -9`) without losing
//! a committed transaction; only a power loss may lose the last few.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use chrono::Utc;
use futures::future::BoxFuture;
use rusqlite::{params, Connection, OptionalExtension};
use shared_messages::bus::outbox::{OutboxMessage, OutboxStore, Undecodable};
use shared_messages::bus::Route;
use shared_messages::history::HistoryEvent;
use shared_messages::Envelope;

use super::{Page, Quarantined, Store, StoreError, Unfinished, Unreadable, Write};
use crate::config::StoreLocation;
use crate::workflow::{OrderState, OrderStatus};

/// Schema versions, applied in order; the applied ones are recorded in
/// `schema_migrations`.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE orders (
        id TEXT PRIMARY KEY,
        workflow_id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        finished INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX orders_unfinished ON orders (finished) WHERE finished = 0;
    CREATE INDEX orders_status_created ON orders (status, created_at);
    CREATE INDEX orders_created ON orders (created_at);
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        mandatory INTEGER NOT NULL,
        envelope BLOB NOT NULL,
        created_at TEXT NOT NULL
    );",
    ),
    (
        2,
        "CREATE TABLE order_history (
            order_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            at TEXT NOT NULL,
            message_id TEXT,
            detail TEXT NOT NULL,
            PRIMARY KEY (order_id, seq)
        );",
    ),
    (
        3,
        "CREATE TABLE quarantine (
            entity_id TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            quarantined_at TEXT NOT NULL
        );",
    ),
];

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(location: &StoreLocation) -> Result<Self, StoreError> {
        let conn = match location {
            StoreLocation::SqliteMemory => Connection::open_in_memory()?,
            StoreLocation::SqliteFile(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Open(format!("creating {}: {e}", dir.display()))
                    })?;
                }
                Connection::open(Path::new(path))?
            }
            StoreLocation::Postgres(_) => {
                return Err(StoreError::Open("not a SQLite location".into()))
            }
        };
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let store = Self {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        )?;
        for (version, sql) in MIGRATIONS {
            let tx = conn.transaction()?;
            let applied: Option<i64> = tx
                .query_row(
                    "SELECT version FROM schema_migrations WHERE version = ?1",
                    [version],
                    |r| r.get(0),
                )
                .optional()?;
            if applied.is_none() {
                tx.execute_batch(sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                    params![version, Utc::now().to_rfc3339()],
                )?;
                tracing::info!(version, "store schema migrated");
            }
            tx.commit()?;
        }
        Ok(())
    }
}

fn encode(state: &OrderState) -> String {
    serde_json::to_string(state).expect("order state always serializes to JSON")
}

fn decode(id: &str, json: &str) -> Result<OrderState, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        id: id.into(),
        reason: e.to_string(),
    })
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
        insert.execute(params![
            order_id,
            i64::try_from(e.seq).unwrap_or(i64::MAX),
            e.kind,
            e.at.to_rfc3339(),
            e.message_id.map(|m| m.to_string()),
            e.detail.to_string(),
        ])?;
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
                _ => Err(StoreError::Duplicate(state.order_id.clone())),
            }
        }
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::Duplicate(state.order_id.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

/// One transition and its signals, inside the caller's transaction.
fn save_in(
    tx: &rusqlite::Transaction<'_>,
    state: &OrderState,
    outbox: &[(Route, Envelope)],
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
    if outbox.is_empty() {
        return Ok(());
    }
    let now = Utc::now().to_rfc3339();
    let mut insert = tx.prepare_cached(
        "INSERT INTO outbox (exchange, routing_key, mandatory, envelope, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (route, envelope) in outbox {
        insert.execute(params![
            route.exchange,
            route.routing_key,
            route.mandatory,
            envelope.to_json(),
            now
        ])?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn insert(&self, state: &OrderState, events: &[HistoryEvent]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        insert_in(&tx, state, events)?;
        tx.commit()?;
        Ok(())
    }

    fn save(
        &self,
        state: &OrderState,
        outbox: &[(Route, Envelope)],
        events: &[HistoryEvent],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        save_in(&tx, state, outbox, events)?;
        tx.commit()?;
        Ok(())
    }

    fn save_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for w in writes {
            if w.insert {
                insert_in(&tx, &w.state, &w.events)?;
            } else {
                save_in(&tx, &w.state, &w.outbox, &w.events)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn get(&self, order_id: &str) -> Result<Option<OrderState>, StoreError> {
        let conn = self.conn();
        let json: Option<String> = conn
            .prepare_cached("SELECT state FROM orders WHERE id = ?1")?
            .query_row([order_id], |r| r.get(0))
            .optional()?;
        json.map(|j| decode(order_id, &j)).transpose()
    }

    fn list(
        &self,
        status: Option<OrderStatus>,
        limit: u32,
        offset: u64,
    ) -> Result<Page, StoreError> {
        let conn = self.conn();
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
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
                let total: i64 = conn.query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0))?;
                (orders, total)
            }
        };
        Ok(Page {
            orders,
            total: u64::try_from(total).unwrap_or_default(),
        })
    }

    fn unfinished(&self) -> Result<Unfinished, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, state FROM orders WHERE finished = 0 ORDER BY created_at")?;
        let raw: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut found = Unfinished::default();
        for (id, json) in raw {
            match decode(&id, &json) {
                Ok(state) => found.orders.push(state),
                Err(error) => found.unreadable.push(Unreadable {
                    order_id: id,
                    reason: error.to_string(),
                }),
            }
        }
        Ok(found)
    }

    fn history(&self, order_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, kind, at, message_id, detail FROM order_history
             WHERE order_id = ?1 ORDER BY seq",
        )?;
        let raw: Vec<(i64, String, String, Option<String>, String)> = stmt
            .query_map([order_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        raw.into_iter()
            .map(|(seq, kind, at, message_id, detail)| {
                super::history_event(order_id, seq, kind, &at, message_id.as_deref(), &detail)
            })
            .collect()
    }

    fn count_by_status(&self) -> Result<Vec<(OrderStatus, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT status, COUNT(*) FROM orders GROUP BY status")?;
        let raw: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(raw
            .into_iter()
            .filter_map(|(s, n)| {
                Some((
                    OrderStatus::parse(&s)?,
                    u64::try_from(n).unwrap_or_default(),
                ))
            })
            .collect())
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        let conn = self.conn();
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    fn ping(&self) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
        Ok(())
    }

    fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT entity_id, reason, quarantined_at FROM quarantine ORDER BY quarantined_at, entity_id",
        )?;
        let raw: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        raw.into_iter()
            .map(|(entity_id, reason, at)| {
                let quarantined_at = chrono::DateTime::parse_from_rfc3339(&at)
                    .map_err(|e| StoreError::Corrupt {
                        id: entity_id.clone(),
                        reason: e.to_string(),
                    })?
                    .with_timezone(&Utc);
                Ok(Quarantined {
                    entity_id,
                    reason,
                    quarantined_at,
                })
            })
            .collect()
    }
}

/// Moves an undecodable outbox row into the quarantine, in one transaction.
fn quarantine_outbox_row(conn: &mut Connection, bad: &Undecodable) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM outbox WHERE seq = ?1", [bad.seq])?;
    tx.execute(
        "INSERT INTO quarantine (entity_id, reason, quarantined_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (entity_id) DO UPDATE SET reason = excluded.reason,
             quarantined_at = excluded.quarantined_at",
        params![bad.entity_id(), bad.reason, Utc::now().to_rfc3339()],
    )?;
    tx.commit()?;
    Ok(())
}

impl OutboxStore for SqliteStore {
    // Answered on the caller's thread, as the calls are blocking.
    fn pending(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxMessage>, String>> {
        Box::pin(futures::future::ready(SqliteStore::pending(self, limit)))
    }

    fn remove<'a>(&'a self, seqs: &'a [i64]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(futures::future::ready(SqliteStore::remove(self, seqs)))
    }
}

impl SqliteStore {
    /// Up to `limit` of the oldest outbox rows (see [`OutboxStore::pending`]).
    pub fn pending(&self, limit: usize) -> Result<Vec<OutboxMessage>, String> {
        let mut conn = self.conn();
        let raw: Vec<(i64, String, String, bool, Vec<u8>)> = conn
            .prepare_cached(
                "SELECT seq, exchange, routing_key, mandatory, envelope FROM outbox ORDER BY seq LIMIT ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<Result<_, _>>()
            })
            .map_err(|e| e.to_string())?;
        let mut messages = Vec::with_capacity(raw.len());
        for (seq, exchange, routing_key, mandatory, body) in raw {
            match Undecodable::decode(seq, &exchange, &routing_key, mandatory, &body) {
                Ok(message) => messages.push(message),
                // Never let one bad row block the rest, nor drop it.
                Err(bad) => {
                    quarantine_outbox_row(&mut conn, &bad).map_err(|e| e.to_string())?;
                    bad.reported();
                }
            }
        }
        Ok(messages)
    }

    /// Removes confirmed outbox rows (see [`OutboxStore::remove`]).
    pub fn remove(&self, seqs: &[i64]) -> Result<(), String> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        for seq in seqs {
            tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")
                .and_then(|mut stmt| stmt.execute([seq]))
                .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::demo_order;
    use crate::workflow::{self, Effect, Input};

    fn store() -> SqliteStore {
        SqliteStore::open(&StoreLocation::SqliteMemory).expect("in-memory store")
    }

    #[test]
    fn insert_get_and_duplicate() {
        let s = store();
        let order = OrderState::new("ORD-1", demo_order(), Utc::now());
        s.insert(&order, &[]).expect("insert");
        assert_eq!(s.get("ORD-1").expect("get"), Some(order.clone()));
        let other = OrderState::new(
            "ORD-1",
            demo_order(),
            Utc::now() + chrono::TimeDelta::seconds(1),
        );
        assert!(matches!(
            s.insert(&other, &[]),
            Err(StoreError::Duplicate(_))
        ));
        assert_eq!(s.get("ORD-1").expect("get"), Some(order));
        assert_eq!(s.get("ORD-2").expect("get"), None);
    }

    /// A commit whose outcome was lost is retried: the same order stored
    /// twice succeeds both times and leaves one row, one history.
    #[test]
    fn creating_the_same_order_twice_stores_it_once() {
        let s = store();
        let (state, events) = workflow::create("ORD-1", demo_order(), Utc::now());
        let write = Write {
            state: state.clone(),
            outbox: Vec::new(),
            events: events.clone(),
            insert: true,
        };
        s.save_all(std::slice::from_ref(&write))
            .expect("first commit");
        s.save_all(std::slice::from_ref(&write))
            .expect("the retried commit succeeds");
        s.insert(&state, &events)
            .expect("and so does a single insert");
        let page = s.list(None, 10, 0).expect("list");
        assert_eq!(page.total, 1, "one row");
        assert_eq!(page.orders, vec![state]);
        assert_eq!(
            s.history("ORD-1").expect("history").len(),
            events.len(),
            "history written once"
        );
    }

    #[test]
    fn an_undecodable_outbox_row_is_quarantined_and_the_rest_go_out() {
        use shared_messages::bus::metrics::METRICS;
        let s = store();
        s.conn()
            .execute(
                "INSERT INTO outbox (exchange, routing_key, mandatory, envelope, created_at)
                 VALUES ('fulfillment.commands', 'fulfillment.start', 1, ?1, ?2)",
                params![b"not json".to_vec(), Utc::now().to_rfc3339()],
            )
            .expect("a garbage row");
        let mut order = OrderState::new("ORD-1", demo_order(), Utc::now());
        s.insert(&order, &[]).expect("insert");
        order.status = OrderStatus::Confirmed;
        let t = workflow::handle(&order, Input::Advance, Utc::now()).expect("advance");
        let outbox: Vec<_> = t
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Signal(r, env) => Some((r.clone(), (**env).clone())),
                _ => None,
            })
            .collect();
        s.save(&t.state, &outbox, &t.events).expect("save");
        let before = METRICS.outbox_quarantined.get();

        let pending = s.pending(10).expect("one bad row does not fail the read");
        assert_eq!(pending.len(), 1, "the good row still goes out");
        assert_eq!(pending[0].envelope.message_id, outbox[0].1.message_id);
        assert_eq!(
            s.outbox_len().expect("count"),
            1,
            "the bad row left the outbox"
        );
        assert!(METRICS.outbox_quarantined.get() > before, "counted");
        let items = s.quarantined().expect("quarantine");
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0].entity_id, "outbox row 1");
        assert!(items[0].reason.contains("cannot be decoded"), "{items:?}");
        assert!(
            items[0].reason.contains("not json"),
            "the body is kept: {items:?}"
        );
        assert_eq!(s.pending(10).expect("pending").len(), 1);
        assert_eq!(s.quarantined().expect("quarantine").len(), 1, "kept once");
    }

    #[test]
    fn a_group_commit_inserts_and_updates_together_or_not_at_all() {
        let s = store();
        let first = OrderState::new("ORD-1", demo_order(), Utc::now());
        let write = |state: &OrderState, insert| Write {
            state: state.clone(),
            outbox: Vec::new(),
            events: Vec::new(),
            insert,
        };
        s.save_all(&[write(&first, true)]).expect("insert");
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
            s.save_all(&[write(&moved, false), write(&taken, true)]),
            Err(StoreError::Duplicate(_))
        ));
        assert_eq!(s.get("ORD-1").expect("get"), Some(first));
        s.save_all(&[write(&moved, false), write(&second, true)])
            .expect("both");
        assert_eq!(s.get("ORD-1").expect("get"), Some(moved));
        assert_eq!(s.get("ORD-2").expect("get"), Some(second));
    }

    #[test]
    fn state_and_outbox_are_saved_together() {
        let s = store();
        let mut order = OrderState::new("ORD-1", demo_order(), Utc::now());
        s.insert(&order, &[]).expect("insert");
        order.status = OrderStatus::Confirmed;
        let t = workflow::handle(&order, Input::Advance, Utc::now()).expect("advance");
        let outbox: Vec<_> = t
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Signal(r, env) => Some((r.clone(), (**env).clone())),
                _ => None,
            })
            .collect();
        s.save(&t.state, &outbox, &t.events).expect("save");
        let pending = s.pending(10).expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].envelope.message_id, outbox[0].1.message_id);
        assert_eq!(pending[0].route, outbox[0].0);
        s.remove(&[pending[0].seq]).expect("remove");
        assert!(s.pending(10).expect("pending").is_empty());
        assert_eq!(
            s.get("ORD-1").expect("get").map(|o| o.status),
            Some(OrderStatus::FulfillmentStarted)
        );
    }

    #[test]
    fn list_filters_paginates_and_unfinished() {
        let s = store();
        for i in 0..5 {
            let mut o = OrderState::new(&format!("ORD-{i}"), demo_order(), Utc::now());
            s.insert(&o, &[]).expect("insert");
            if i % 2 == 0 {
                o.status = OrderStatus::Shipped;
                s.save(&o, &[], &[]).expect("save");
            }
        }
        let page = s.list(Some(OrderStatus::Shipped), 2, 0).expect("list");
        assert_eq!(page.total, 3);
        assert_eq!(page.orders.len(), 2);
        let page = s.list(None, 10, 4).expect("list");
        assert_eq!(page.total, 5);
        assert_eq!(page.orders.len(), 1);
        assert_eq!(s.unfinished().expect("unfinished").orders.len(), 2);
        let mut counts = s.count_by_status().expect("counts");
        counts.sort_by_key(|(_, n)| *n);
        assert_eq!(
            counts,
            vec![(OrderStatus::Pending, 2), (OrderStatus::Shipped, 3)]
        );
        assert_eq!(s.outbox_len().expect("outbox"), 0);
        s.ping().expect("ping");
    }

    #[test]
    fn history_is_written_with_the_state_once() {
        let s = store();
        let (order, created) = workflow::create("ORD-1", demo_order(), Utc::now());
        s.insert(&order, &created).expect("insert");
        let t =
            workflow::handle(&order, Input::Cancel { reason: None }, Utc::now()).expect("cancel");
        s.save(&t.state, &[], &t.events).expect("save");
        // the same write again (a retried commit) adds nothing
        s.save(&t.state, &[], &t.events).expect("save again");
        let history = s.history("ORD-1").expect("history");
        let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec!["OrderCreated", "CancelRequested", "StatusChanged"]
        );
        let seqs: Vec<u64> = history.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert!(s.history("ORD-2").expect("history").is_empty());
    }

    #[test]
    fn an_unreadable_row_is_set_aside_and_the_rest_recover() {
        let s = store();
        s.insert(&OrderState::new("ORD-1", demo_order(), Utc::now()), &[])
            .expect("insert");
        s.insert(&OrderState::new("ORD-2", demo_order(), Utc::now()), &[])
            .expect("insert");
        s.conn()
            .execute(
                "UPDATE orders SET state = '{\"nope\": 1}' WHERE id = 'ORD-1'",
                [],
            )
            .expect("corrupt a row");
        let found = s.unfinished().expect("recovery reads the rest");
        assert_eq!(found.orders.len(), 1);
        assert_eq!(found.orders[0].order_id, "ORD-2");
        assert_eq!(found.unreadable.len(), 1);
        assert_eq!(found.unreadable[0].order_id, "ORD-1");
    }

    #[test]
    fn a_file_store_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("order-store-{}", uuid::Uuid::new_v4()));
        let location = StoreLocation::SqliteFile(dir.join("nested/orders.db"));
        {
            let s = SqliteStore::open(&location).expect("open creates the directory");
            s.insert(&OrderState::new("ORD-1", demo_order(), Utc::now()), &[])
                .expect("insert");
        }
        let s = SqliteStore::open(&location).expect("reopen migrates idempotently");
        assert!(s.get("ORD-1").expect("get").is_some());
        let _ = std::fs::remove_dir_all(dir);
    }
}

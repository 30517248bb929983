//! The embedded SQLite store: one file, WAL journal, created on first start.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use message_bus::outbox::{OutboxMessage, OutboxStore, Undecodable};
use rusqlite::{params, Connection, OptionalExtension};
use shared_messages::messages::FulfillmentStatus;

use chrono::{DateTime, Utc};
use shared_messages::history::HistoryEvent;

use super::{Quarantined, Store, StoreError, Unfinished, Write};
use crate::workflow::{Entry, Fulfillment, Tombstone};

/// Schema versions, applied in order; `PRAGMA user_version` records how
/// many have run. Append, never edit.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE fulfillments (
        id         TEXT PRIMARY KEY,
        order_id   TEXT NOT NULL,
        status     TEXT NOT NULL,
        finished   INTEGER NOT NULL,
        state      TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX fulfillments_by_status ON fulfillments (status, created_at);
    CREATE INDEX fulfillments_unfinished ON fulfillments (finished);
    CREATE TABLE outbox (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        exchange    TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        mandatory   INTEGER NOT NULL,
        envelope    BLOB NOT NULL
    );
"#,
    r#"
    CREATE TABLE history (
        workflow_id TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        at          TEXT NOT NULL,
        message_id  TEXT,
        detail      TEXT NOT NULL,
        PRIMARY KEY (workflow_id, seq)
    );
    CREATE TABLE tombstones (
        id         TEXT PRIMARY KEY,
        reason     TEXT NOT NULL,
        message_id TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE quarantine (
        entity_id      TEXT PRIMARY KEY,
        reason         TEXT NOT NULL,
        quarantined_at TEXT NOT NULL
    );
"#,
];

/// How long a writer waits for a lock held by another connection.
const BUSY_TIMEOUT_MS: u64 = 5_000;

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating the file and its directory) and migrates.
    pub fn open(path: &str) -> Result<Self, StoreError> {
        let conn = if path == ":memory:" {
            Connection::open_in_memory()?
        } else {
            if let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            Connection::open(path)?
        };
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done
        // transaction behind (rusqlite rolls back on drop), so a poisoned
        // lock is still safe to use.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let done: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let done = usize::try_from(done).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn parse(id: &str, json: &str) -> Result<Fulfillment, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

fn time(id: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt {
            id: id.to_owned(),
            reason: format!("time {text:?}: {e}"),
        })
}

/// Appends history entries of `id`, numbered after its last one.
fn append_history(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    entries: &[Entry],
) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO history (workflow_id, seq, kind, at, message_id, detail)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM history WHERE workflow_id = ?1),
                 ?2, ?3, ?4, ?5)",
    )?;
    for e in entries {
        insert.execute(params![
            id,
            e.kind,
            e.at.to_rfc3339(),
            e.message_id.map(|m| m.to_string()),
            e.detail.to_string(),
        ])?;
    }
    Ok(())
}

/// One state with its events and history, inside the caller's transaction.
fn write(tx: &rusqlite::Transaction<'_>, w: &Write) -> Result<(), StoreError> {
    let Write {
        state,
        events,
        history,
        clears_tombstone,
    } = w;
    let json = serde_json::to_string(state).map_err(|e| StoreError::Corrupt {
        id: state.id.clone(),
        reason: e.to_string(),
    })?;
    tx.prepare_cached(
        "INSERT INTO fulfillments (id, order_id, status, finished, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status,
             finished = excluded.finished, state = excluded.state,
             updated_at = excluded.updated_at",
    )?
    .execute(params![
        state.id,
        state.order_id,
        state.status.as_str(),
        state.status.is_final(),
        json,
        state.created_at.to_rfc3339(),
        state.updated_at.to_rfc3339(),
    ])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO outbox (exchange, routing_key, mandatory, envelope) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (route, envelope) in events {
        insert.execute(params![
            route.exchange,
            route.routing_key,
            route.mandatory,
            envelope.to_json()
        ])?;
    }
    append_history(tx, &state.id, history)?;
    if *clears_tombstone {
        tx.prepare_cached("DELETE FROM tombstones WHERE id = ?1")?
            .execute([&state.id])?;
    }
    Ok(())
}

fn rows_to_states(
    rows: impl Iterator<Item = rusqlite::Result<(String, String)>>,
) -> Result<Vec<Fulfillment>, StoreError> {
    let mut out = Vec::new();
    for row in rows {
        let (id, json) = row?;
        match parse(&id, &json) {
            Ok(state) => out.push(state),
            // One bad row must not hide every other (see /quarantine).
            Err(error) => {
                tracing::warn!(fulfillment_id = %id, %error, "unreadable row left out of a list")
            }
        }
    }
    Ok(out)
}

impl Store for SqliteStore {
    fn load(&self, id: &str) -> Result<Option<Fulfillment>, StoreError> {
        let conn = self.conn();
        let json: Option<String> = conn
            .prepare_cached("SELECT state FROM fulfillments WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        json.map(|j| parse(id, &j)).transpose()
    }

    fn save_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for w in writes {
            write(&tx, w)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn unfinished(&self) -> Result<Unfinished, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, state FROM fulfillments WHERE finished = 0 ORDER BY created_at")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Unfinished::default();
        for row in rows {
            let (id, json) = row?;
            match parse(&id, &json) {
                Ok(state) => out.states.push(state),
                Err(error) => out.unreadable.push((id, error.to_string())),
            }
        }
        Ok(out)
    }

    fn put_tombstone(&self, tombstone: &Tombstone, history: &[Entry]) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let added = tx.execute(
            "INSERT INTO tombstones (id, reason, message_id, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO NOTHING",
            params![
                tombstone.id,
                tombstone.reason,
                tombstone.message_id.to_string(),
                tombstone.at.to_rfc3339()
            ],
        )? == 1;
        if added {
            append_history(&tx, &tombstone.id, history)?;
        }
        tx.commit()?;
        Ok(added)
    }

    fn tombstone(&self, id: &str) -> Result<Option<Tombstone>, StoreError> {
        let conn = self.conn();
        let row: Option<(String, String, String)> = conn
            .prepare_cached("SELECT reason, message_id, created_at FROM tombstones WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        row.map(|(reason, message_id, at)| {
            Ok(Tombstone {
                id: id.to_owned(),
                reason,
                message_id: message_id.parse().map_err(|e| StoreError::Corrupt {
                    id: id.to_owned(),
                    reason: format!("tombstone message id: {e}"),
                })?,
                at: time(id, &at)?,
            })
        })
        .transpose()
    }

    fn history(&self, id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, kind, at, message_id, detail FROM history WHERE workflow_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, kind, at, message_id, detail) = row?;
            out.push(HistoryEvent {
                seq: u64::try_from(seq).unwrap_or(0),
                kind,
                at: time(id, &at)?,
                message_id: message_id.and_then(|m| m.parse().ok()),
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            });
        }
        Ok(out)
    }

    fn quarantine(&self, id: &str, reason: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO quarantine (entity_id, reason, quarantined_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (entity_id) DO UPDATE SET reason = excluded.reason,
                 quarantined_at = excluded.quarantined_at",
            params![id, reason, Utc::now().to_rfc3339()],
        )?;
        Ok(())
    }

    fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT entity_id, reason, quarantined_at FROM quarantine ORDER BY quarantined_at, entity_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (entity_id, reason, at) = row?;
            let quarantined_at = time(&entity_id, &at)?;
            out.push(Quarantined {
                entity_id,
                reason,
                quarantined_at,
            });
        }
        Ok(out)
    }

    fn list(
        &self,
        status: Option<FulfillmentStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Fulfillment>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, state FROM fulfillments WHERE (?1 IS NULL OR status = ?1)
             ORDER BY created_at DESC, id LIMIT ?2 OFFSET ?3",
        )?;
        let rows = stmt.query_map(params![status.map(|s| s.as_str()), limit, offset], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        rows_to_states(rows)
    }

    fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM fulfillments GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (status, n) = row?;
            out.push((status, u64::try_from(n).unwrap_or(0)));
        }
        Ok(out)
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.conn().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
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
    fn pending(&self, limit: usize) -> Result<Vec<OutboxMessage>, String> {
        let mut conn = self.conn();
        let raw = {
            let mut stmt = conn
                .prepare(
                    "SELECT seq, exchange, routing_key, mandatory, envelope FROM outbox ORDER BY seq LIMIT ?1",
                )
                .map_err(|e| e.to_string())?;
            let rows = stmt
                .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, bool>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                    ))
                })
                .map_err(|e| e.to_string())?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?
        };
        let mut out = Vec::with_capacity(raw.len());
        for (seq, exchange, routing_key, mandatory, body) in raw {
            match Undecodable::decode(seq, &exchange, &routing_key, mandatory, &body) {
                Ok(message) => out.push(message),
                // Never let one bad row block the rest, nor drop it.
                Err(bad) => {
                    quarantine_outbox_row(&mut conn, &bad).map_err(|e| e.to_string())?;
                    bad.reported();
                }
            }
        }
        Ok(out)
    }

    fn remove(&self, seqs: &[i64]) -> Result<(), String> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        {
            let mut stmt = tx
                .prepare("DELETE FROM outbox WHERE seq = ?1")
                .map_err(|e| e.to_string())?;
            for seq in seqs {
                stmt.execute([seq]).map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{create, decide, Context, Input, Timing};
    use chrono::Utc;
    use shared_messages::messages::{Address, FulfillmentRequest, OrderItem};

    fn request() -> FulfillmentRequest {
        FulfillmentRequest {
            order_id: "ORD-1".into(),
            customer_id: "c".into(),
            customer_name: None,
            customer_email: None,
            items: vec![OrderItem {
                product_id: "p".into(),
                product_name: "P".into(),
                quantity: 1,
                price: 1.0,
            }],
            shipping_address: Address {
                street: "s".into(),
                city: "c".into(),
                state: "st".into(),
                zip_code: "z".into(),
                country: "co".into(),
            },
        }
    }

    const TIMING: Timing = Timing {
        step_delay: std::time::Duration::ZERO,
    };

    #[test]
    fn an_undecodable_outbox_row_is_quarantined_and_the_rest_go_out() {
        let store = SqliteStore::open(":memory:").expect("opens");
        crate::store::tests::an_undecodable_outbox_row_is_quarantined(&store, &|| {
            store
                .conn()
                .execute(
                    "INSERT INTO outbox (exchange, routing_key, mandatory, envelope)
                     VALUES ('fulfillment.events', 'fulfillment.status.picking', 0, ?1)",
                    [b"not json".to_vec()],
                )
                .expect("a garbage row");
        });
    }

    #[test]
    fn state_and_events_are_stored_together_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("fstore-{}", uuid::Uuid::new_v4()));
        let path = dir.join("nested").join("f.db");
        let path = path.to_str().expect("utf-8 path");
        {
            let store = SqliteStore::open(path).expect("open");
            let d = create(
                "f-1",
                &Input::Start(request()),
                Context {
                    message_id: None,
                    now: Utc::now(),
                    timing: TIMING,
                },
            );
            let state = d.state.expect("created");
            store.save(&state, &d.messages).expect("save");
            let d = decide(
                &state,
                Input::Cancel { reason: "r".into() },
                Context {
                    message_id: None,
                    now: Utc::now(),
                    timing: TIMING,
                },
            );
            store
                .save(d.state.as_ref().expect("cancelled"), &d.messages)
                .expect("save");
            let c = create(
                "f-2",
                &Input::Start(request()),
                Context {
                    message_id: None,
                    now: Utc::now(),
                    timing: TIMING,
                },
            );
            store
                .save(c.state.as_ref().expect("created"), &c.messages)
                .expect("save");
        }
        let store = SqliteStore::open(path).expect("reopen");
        assert_eq!(
            store.load("f-1").expect("load").map(|f| f.status),
            Some(FulfillmentStatus::Cancelled)
        );
        assert_eq!(store.load("nope").expect("load"), None);
        let unfinished: Vec<String> = store
            .unfinished()
            .expect("unfinished")
            .states
            .into_iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(unfinished, vec!["f-2".to_owned()]);
        let cancelled = store
            .list(Some(FulfillmentStatus::Cancelled), 10, 0)
            .expect("list");
        assert_eq!(cancelled.len(), 1);
        assert_eq!(store.list(None, 1, 1).expect("list").len(), 1);
        let pending = store.pending(10).expect("pending");
        assert_eq!(pending.len(), 3);
        assert_eq!(store.outbox_len().expect("count"), 3);
        let mut counts = store.count_by_status().expect("counts");
        counts.sort();
        assert_eq!(counts, vec![("CANCELLED".into(), 1), ("PICKING".into(), 1)]);
        assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(pending[1].route.routing_key, "fulfillment.status.cancelled");
        store.remove(&[pending[0].seq]).expect("remove");
        assert_eq!(store.pending(10).expect("pending").len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}

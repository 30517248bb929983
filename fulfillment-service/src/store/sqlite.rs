//! The embedded SQLite store: one file, WAL journal, created on first
//! start; its calls, and the group commit's transactions, run on the
//! store's own `sqlite` thread (the service kit's [`Sqlite`]). The
//! fulfillments it committed last are kept in memory ([`Recent`]), so a
//! read of one needs no call to that thread. Schema: `migrations/sqlite`.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use service_kit::store::entities::{self, Entities};
use service_kit::store::recent::{self, Recent};
use service_kit::store::sqlite::{SqliteWrite, SqliteWrites};
use service_kit::store::{history, outbox, Database, Sqlite};
use shared_messages::messages::FulfillmentStatus;

use chrono::{DateTime, Utc};
use shared_messages::history::HistoryEvent;

use super::{Found, OnDatabase, Store, StoreError, Unfinished, Write};
use crate::workflow::{Entry, Fulfillment, Tombstone};

pub struct SqliteStore {
    db: Sqlite,
    recent: Arc<Recent<Fulfillment>>,
}

impl SqliteStore {
    /// Opens (creating the file and its directory) and migrates.
    pub fn open(path: &str) -> Result<Self, StoreError> {
        Ok(Self {
            db: super::SCHEMA.open_sqlite(Path::new(path))?,
            recent: Arc::default(),
        })
    }
}

/// The fulfillment a write stores, by its id (for [`Recent`]).
fn state(w: &Write) -> (&str, &Fulfillment) {
    (&w.state.id, &w.state)
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
        let c = history::columns(&e.at, e.message_id, &e.detail);
        insert.execute(params![id, e.kind, c.at, c.message_id, c.detail])?;
    }
    Ok(())
}

/// One state with its events and history, inside the caller's transaction.
impl SqliteWrite for Write {
    fn store(tx: &rusqlite::Transaction<'_>, w: &Write) -> Result<(), StoreError> {
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
        outbox::insert_sqlite(tx, events)?;
        append_history(tx, &state.id, history)?;
        if *clears_tombstone {
            tx.prepare_cached("DELETE FROM tombstones WHERE id = ?1")?
                .execute([&state.id])?;
        }
        Ok(())
    }
}

/// The tombstone left for `id`, if any.
fn tombstone(conn: &rusqlite::Connection, id: &str) -> Result<Option<Tombstone>, StoreError> {
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

impl OnDatabase for SqliteStore {
    fn db(&self) -> &dyn Database {
        &self.db
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self, id: &str) -> Result<Option<Fulfillment>, StoreError> {
        if let Some(state) = self.recent.get(id) {
            return Ok(Some(Fulfillment::clone(&state)));
        }
        self.db.read_state("fulfillments", id, parse).await
    }

    async fn save_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        recent::save_all(&self.db, &self.recent, writes, state).await
    }

    fn sqlite_writes(&self) -> Option<SqliteWrites<Write>> {
        Some(recent::group_writes(&self.db, &self.recent, state))
    }

    async fn unfinished(&self) -> Result<Unfinished, StoreError> {
        self.db.read_unfinished("fulfillments", parse).await
    }

    async fn put_tombstone(
        &self,
        tombstone: &Tombstone,
        history: &[Entry],
    ) -> Result<bool, StoreError> {
        let (tombstone, history) = (tombstone.clone(), history.to_vec());
        self.db
            .call(move |conn| {
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
                    append_history(&tx, &tombstone.id, &history)?;
                }
                tx.commit()?;
                Ok(added)
            })
            .await
    }

    async fn tombstone(&self, id: &str) -> Result<Option<Tombstone>, StoreError> {
        let id = id.to_owned();
        self.db.call(move |conn| tombstone(conn, &id)).await
    }

    async fn load_or_tombstone(&self, id: &str) -> Result<Found, StoreError> {
        if let Some(state) = self.recent.get(id) {
            return Ok(Found::State(Box::new(Fulfillment::clone(&state))));
        }
        let id = id.to_owned();
        self.db
            .call(
                move |conn| match entities::state_sqlite(conn, "fulfillments", &id)? {
                    Some(json) => Ok(Found::State(Box::new(parse(&id, &json)?))),
                    None => Ok(Found::Absent(tombstone(conn, &id)?)),
                },
            )
            .await
    }

    async fn history(&self, id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        let id = id.to_owned();
        self.db
            .call(move |conn| history::read_sqlite(conn, "history", "workflow_id", &id))
            .await
    }

    async fn list(
        &self,
        status: Option<FulfillmentStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Fulfillment>, StoreError> {
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, state FROM fulfillments WHERE (?1 IS NULL OR status = ?1)
                     ORDER BY created_at DESC, id LIMIT ?2 OFFSET ?3",
                )?;
                let rows = stmt
                    .query_map(params![status.map(|s| s.as_str()), limit, offset], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                rows_to_states(rows)
            })
            .await
    }

    async fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.db.count_statuses("fulfillments").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{self, now, request};
    use crate::workflow::{create, Input};

    service_kit::store_checks!(
        |_| async { ((), SqliteStore::open(":memory:").expect("opens")) } => tests:
        one_batch_with_two_writes_of_a_fulfillment,
        a_batch_of_many_fulfillments_is_stored_whole,
        random_batches_store_what_writes_one_at_a_time_would,
        an_undecodable_outbox_row_is_quarantined,
    );

    /// Fulfillments moved on through the group commit while readers read
    /// them: a read never answers a state older than one the writer has
    /// already answered as stored, and what is read from memory is what the
    /// database holds. Seeded, so a failure repeats.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_never_go_back_behind_a_commit() {
        use crate::store::{Batched, Writer};
        use crate::workflow::decide;
        use message_bus::outbox::OutboxSignal;
        use rand::{Rng, SeedableRng};
        use std::sync::atomic::{AtomicU64, Ordering};

        const FULFILLMENTS: usize = 6;
        let store = Arc::new(SqliteStore::open(":memory:").expect("opens"));
        let writer = Writer::start("test-writer", Batched(store.clone()), OutboxSignal::new())
            .expect("starts");
        let committed: Arc<Vec<AtomicU64>> =
            Arc::new((0..FULFILLMENTS).map(|_| AtomicU64::new(0)).collect());
        let writers = (0..FULFILLMENTS).map(|n| {
            let (writer, committed) = (writer.clone(), committed.clone());
            tokio::spawn(async move {
                let mut write = tests::write(n);
                loop {
                    let stored = writer.save(write).await.expect("stored").state;
                    committed[n].store(stored.seq, Ordering::SeqCst);
                    let step = Input::StepDone { step: stored.step };
                    match Write::of(&decide(&stored, step, now())) {
                        Some(next) => write = next,
                        None => return stored,
                    }
                }
            })
        });
        let readers = (0..2u64).map(|seed| {
            let (store, committed) = (store.clone(), committed.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                for _ in 0..400 {
                    let n = rng.random_range(0..FULFILLMENTS);
                    let before = committed[n].load(Ordering::SeqCst);
                    let id = format!("fulfillment-ORD-{n}");
                    let read = store.load(&id).await.expect("reads");
                    let seq = read.map(|f| f.seq).unwrap_or(0);
                    assert!(
                        seq >= before,
                        "{id}: read seq {seq} after {before} was stored"
                    );
                    tokio::task::yield_now().await;
                }
            })
        });
        let readers = futures::future::join_all(readers);
        let last = futures::future::join_all(writers).await;
        for reader in readers.await {
            reader.expect("a reader");
        }
        for state in &last {
            let state = state.as_ref().expect("a writer");
            assert!(state.status.is_final(), "{:?}", state.status);
            let in_db = store.db.read_state("fulfillments", &state.id, parse).await;
            assert_eq!(in_db.expect("reads"), Some(state.clone()), "the database");
        }
        // What the group commit stored is read from memory: at once, with
        // the store's thread held busy.
        let held = service_kit::store::testing::HeldThread::hold(&store.db).await;
        for state in &last {
            let state = state.as_ref().expect("a writer");
            let read = service_kit::store::testing::answers_at_once(store.load(&state.id)).await;
            let read = read.expect("answered from memory").expect("reads");
            assert_eq!(read.as_ref(), Some(state), "memory, as the database");
        }
        drop(held);
    }

    /// A fulfillment this process committed is read while the store's
    /// thread is busy: from memory, not through the thread.
    #[tokio::test]
    async fn a_committed_state_is_read_while_the_thread_is_busy() {
        use service_kit::store::testing::{answers_at_once, HeldThread};
        let store = SqliteStore::open(":memory:").expect("opens");
        let w = tests::write(1);
        store
            .save_all(std::slice::from_ref(&w))
            .await
            .expect("saves");
        let held = HeldThread::hold(&store.db).await;
        let read = answers_at_once(store.load(&w.state.id)).await;
        assert_eq!(read.expect("answered").expect("reads"), Some(w.state));
        let unknown = answers_at_once(store.load("fulfillment-ORD-2")).await;
        assert!(unknown.is_none(), "an unknown id needs the thread");
        drop(held);
    }

    #[tokio::test]
    async fn state_and_events_are_stored_together_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("fstore-{}", uuid::Uuid::new_v4()));
        let path = dir.join("nested").join("f.db");
        let path = path.to_str().expect("utf-8 path");
        {
            let store = SqliteStore::open(path).expect("open");
            tests::save_three_transitions(&store).await;
        }
        let store = SqliteStore::open(path).expect("reopen");
        let pending = tests::reads_back_three_transitions(&store).await;
        tests::removes_what_was_sent(&store, &pending).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A database the previous runner made (`PRAGMA user_version` = 2) is
    /// taken over: it keeps its fulfillments, and the outbox gains the
    /// column the shared outbox SQL writes.
    #[tokio::test]
    async fn a_database_of_the_previous_migration_runner_is_taken_over() {
        let dir = std::env::temp_dir().join(format!("fstore-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let path = dir.join("f.db");
        let d = create("f-1", &Input::Start(request(1)), now());
        let state = d.state.expect("created");
        rusqlite::Connection::open(&path)
            .expect("opens")
            .execute_batch(&format!(
                "{}
                INSERT INTO fulfillments (id, order_id, status, finished, state, created_at, updated_at)
                VALUES ('f-1', 'ORD-1', '{}', 0, '{}', '{}', '{}');
                INSERT INTO outbox (exchange, routing_key, mandatory, envelope)
                VALUES ('fulfillment.events', 'fulfillment.status.picking', 0, CAST('{}' AS BLOB));
                PRAGMA user_version = 2;",
                service_kit::store::testing::migrations_up_to(crate::store::SCHEMA.sqlite, 2),
                state.status.as_str(),
                serde_json::to_string(&state).expect("json"),
                state.created_at.to_rfc3339(),
                state.updated_at.to_rfc3339(),
                String::from_utf8(d.messages[0].1.to_json()).expect("utf-8"),
            ))
            .expect("the old schema");
        let path = path.to_str().expect("utf-8 path");
        let store = SqliteStore::open(path).expect("taken over");
        assert_eq!(store.load("f-1").await.expect("load"), Some(state.clone()));
        store
            .save(&state, &d.messages)
            .await
            .expect("a save with events");
        assert_eq!(
            store.outbox().pending(10).await.expect("pending").len(),
            2,
            "the row stored before and the new one"
        );
        drop(store);
        SqliteStore::open(path).expect("reopens");
        let _ = std::fs::remove_dir_all(dir);
    }
}

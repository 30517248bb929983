//! The PostgreSQL store, for state that several replicas share.
//!
//! The same tables and the same promises as [`super::sqlite`]: a
//! fulfillment's state and the events it causes are written in one
//! transaction. Outbox rows are claimed before they are published
//! (`FOR UPDATE SKIP LOCKED`, then a short lease), so two replicas' relays
//! do not send the same rows at once; a replica that dies holding a claim
//! lets it lapse, and its rows go out from whoever reads next. Calls run on
//! the connection's own thread ([`super::pg_worker`]).

use message_bus::outbox::{OutboxMessage, OutboxStore, Undecodable};
use postgres::Client;
use shared_messages::messages::FulfillmentStatus;

use super::pg_worker::{Worker, WorkerGone};
use chrono::{DateTime, Utc};
use shared_messages::history::HistoryEvent;

use super::{Quarantined, Store, StoreError, Unfinished, Write};
use crate::workflow::{Entry, Fulfillment, Tombstone};

/// Schema versions, applied in order; the applied ones are recorded in
/// `schema_migrations`. Append, never edit.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE fulfillments (
        id         TEXT PRIMARY KEY,
        order_id   TEXT NOT NULL,
        status     TEXT NOT NULL,
        finished   BOOLEAN NOT NULL,
        state      TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX fulfillments_by_status ON fulfillments (status, created_at DESC, id);
    CREATE INDEX fulfillments_created ON fulfillments (created_at DESC, id);
    CREATE INDEX fulfillments_unfinished ON fulfillments (created_at) WHERE NOT finished;
    CREATE TABLE outbox (
        seq           BIGSERIAL PRIMARY KEY,
        exchange      TEXT NOT NULL,
        routing_key   TEXT NOT NULL,
        mandatory     BOOLEAN NOT NULL,
        envelope      BYTEA NOT NULL,
        created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
        claimed_by    TEXT,
        claimed_until TIMESTAMPTZ
    );",
    ),
    (
        2,
        "CREATE TABLE history (
        workflow_id TEXT NOT NULL,
        seq         BIGINT NOT NULL,
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
    );",
    ),
];

/// Serialises migrations of replicas that start together
/// (`pg_advisory_xact_lock`); any constant unique to this schema.
const MIGRATION_LOCK: i64 = 0x66_756c_6669_6c6c; // "fulfill"

/// How long a relay's claim on outbox rows keeps other replicas off them.
/// A batch is confirmed well within this; a claim left by a replica that
/// died delays its rows by at most this much.
const CLAIM_LEASE: &str = "10 seconds";

pub struct PostgresStore {
    worker: Worker,
    /// Marks this process's outbox claims; it re-reads its own at once.
    owner: String,
}

impl From<WorkerGone> for StoreError {
    fn from(_: WorkerGone) -> Self {
        StoreError::Unavailable("the PostgreSQL connection thread has stopped".into())
    }
}

impl PostgresStore {
    /// Connects to `url` and brings the schema up to date.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let worker = Worker::start(url, "fulfillment-store-pg")
            .map_err(|e| StoreError::Unavailable(format!("starting the PostgreSQL thread: {e}")))?;
        worker.call(migrate)?;
        Ok(Self {
            worker,
            owner: uuid::Uuid::new_v4().to_string(),
        })
    }
}

fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )?;
    for (version, sql) in MIGRATIONS {
        let applied = tx
            .query_opt(
                "SELECT version FROM schema_migrations WHERE version = $1",
                &[version],
            )?
            .is_some();
        if !applied {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )?;
            tracing::info!(version, "store schema migrated");
        }
    }
    tx.commit()?;
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
    tx: &mut postgres::Transaction<'_>,
    id: &str,
    entries: &[Entry],
) -> Result<(), StoreError> {
    for e in entries {
        tx.execute(
            "INSERT INTO history (workflow_id, seq, kind, at, message_id, detail)
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM history WHERE workflow_id = $1),
                     $2, $3, $4, $5)",
            &[
                &id,
                &e.kind,
                &e.at.to_rfc3339(),
                &e.message_id.map(|m| m.to_string()),
                &e.detail.to_string(),
            ],
        )?;
    }
    Ok(())
}

fn states(rows: Vec<postgres::Row>) -> Result<Vec<Fulfillment>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: &str = r.get(0);
        match parse(id, r.get(1)) {
            Ok(state) => out.push(state),
            // One bad row must not hide every other (see /quarantine).
            Err(error) => {
                tracing::warn!(fulfillment_id = %id, %error, "unreadable row left out of a list");
            }
        }
    }
    Ok(out)
}

impl Store for PostgresStore {
    fn load(&self, id: &str) -> Result<Option<Fulfillment>, StoreError> {
        let id = id.to_owned();
        self.worker.call(move |client| {
            let row = client.query_opt("SELECT state FROM fulfillments WHERE id = $1", &[&id])?;
            row.map(|r| parse(&id, r.get(0))).transpose()
        })
    }

    fn save_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        let rows = writes
            .iter()
            .map(|w| {
                let json = serde_json::to_string(&w.state).map_err(|e| StoreError::Corrupt {
                    id: w.state.id.clone(),
                    reason: e.to_string(),
                })?;
                Ok((w.clone(), json))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.worker.call(move |client| {
            let mut tx = client.transaction()?;
            for (Write { state, events, history, clears_tombstone }, json) in &rows {
                tx.execute(
                    "INSERT INTO fulfillments (id, order_id, status, finished, state, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6::text::timestamptz, $7::text::timestamptz)
                     ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                         finished = excluded.finished, state = excluded.state,
                         updated_at = excluded.updated_at",
                    &[
                        &state.id,
                        &state.order_id,
                        &state.status.as_str(),
                        &state.status.is_final(),
                        json,
                        &state.created_at.to_rfc3339(),
                        &state.updated_at.to_rfc3339(),
                    ],
                )?;
                for (route, envelope) in events {
                    tx.execute(
                        "INSERT INTO outbox (exchange, routing_key, mandatory, envelope) VALUES ($1, $2, $3, $4)",
                        &[
                            &route.exchange,
                            &route.routing_key,
                            &route.mandatory,
                            &envelope.to_json(),
                        ],
                    )?;
                }
                append_history(&mut tx, &state.id, history)?;
                if *clears_tombstone {
                    tx.execute("DELETE FROM tombstones WHERE id = $1", &[&state.id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn unfinished(&self) -> Result<Unfinished, StoreError> {
        self.worker.call(|client| {
            let rows = client.query(
                "SELECT id, state FROM fulfillments WHERE NOT finished ORDER BY created_at",
                &[],
            )?;
            let mut out = Unfinished::default();
            for row in rows {
                let id: &str = row.get(0);
                match parse(id, row.get(1)) {
                    Ok(state) => out.states.push(state),
                    Err(error) => out.unreadable.push((id.to_owned(), error.to_string())),
                }
            }
            Ok(out)
        })
    }

    fn put_tombstone(&self, tombstone: &Tombstone, history: &[Entry]) -> Result<bool, StoreError> {
        let (tombstone, history) = (tombstone.clone(), history.to_vec());
        self.worker.call(move |client| {
            let mut tx = client.transaction()?;
            let added = tx.execute(
                "INSERT INTO tombstones (id, reason, message_id, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO NOTHING",
                &[
                    &tombstone.id,
                    &tombstone.reason,
                    &tombstone.message_id.to_string(),
                    &tombstone.at.to_rfc3339(),
                ],
            )? == 1;
            if added {
                append_history(&mut tx, &tombstone.id, &history)?;
            }
            tx.commit()?;
            Ok(added)
        })
    }

    fn tombstone(&self, id: &str) -> Result<Option<Tombstone>, StoreError> {
        let id = id.to_owned();
        self.worker.call(move |client| {
            let row = client.query_opt(
                "SELECT reason, message_id, created_at FROM tombstones WHERE id = $1",
                &[&id],
            )?;
            row.map(|r| {
                Ok(Tombstone {
                    id: id.clone(),
                    reason: r.get(0),
                    message_id: r
                        .get::<_, &str>(1)
                        .parse()
                        .map_err(|e| StoreError::Corrupt {
                            id: id.clone(),
                            reason: format!("tombstone message id: {e}"),
                        })?,
                    at: time(&id, r.get(2))?,
                })
            })
            .transpose()
        })
    }

    fn history(&self, id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        let id = id.to_owned();
        self.worker.call(move |client| {
            let rows = client.query(
                "SELECT seq, kind, at, message_id, detail FROM history WHERE workflow_id = $1 ORDER BY seq",
                &[&id],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(HistoryEvent {
                        seq: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                        kind: r.get(1),
                        at: time(&id, r.get(2))?,
                        message_id: r.get::<_, Option<&str>>(3).and_then(|m| m.parse().ok()),
                        detail: serde_json::from_str(r.get(4)).unwrap_or(serde_json::Value::Null),
                    })
                })
                .collect()
        })
    }

    fn quarantine(&self, id: &str, reason: &str) -> Result<(), StoreError> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.worker.call(move |client| {
            client.execute(
                "INSERT INTO quarantine (entity_id, reason, quarantined_at) VALUES ($1, $2, $3)
                 ON CONFLICT (entity_id) DO UPDATE SET reason = excluded.reason,
                     quarantined_at = excluded.quarantined_at",
                &[&id, &reason, &Utc::now().to_rfc3339()],
            )?;
            Ok(())
        })
    }

    fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.worker.call(|client| {
            let rows = client.query(
                "SELECT entity_id, reason, quarantined_at FROM quarantine
                 ORDER BY quarantined_at, entity_id",
                &[],
            )?;
            rows.iter()
                .map(|r| {
                    let entity_id: String = r.get(0);
                    Ok(Quarantined {
                        quarantined_at: time(&entity_id, r.get(2))?,
                        reason: r.get(1),
                        entity_id,
                    })
                })
                .collect()
        })
    }

    fn list(
        &self,
        status: Option<FulfillmentStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Fulfillment>, StoreError> {
        let status = status.map(|s| s.as_str().to_owned());
        let (limit, offset) = (i64::from(limit), i64::from(offset));
        self.worker.call(move |client| {
            states(client.query(
                "SELECT id, state FROM fulfillments WHERE ($1::text IS NULL OR status = $1)
                 ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
                &[&status, &limit, &offset],
            )?)
        })
    }

    fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.worker.call(|client| {
            let rows = client.query(
                "SELECT status, COUNT(*) FROM fulfillments GROUP BY status",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
                .collect())
        })
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        self.worker.call(|client| {
            let n: i64 = client.query_one("SELECT COUNT(*) FROM outbox", &[])?.get(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.worker.call(|client| {
            client.query_one("SELECT 1", &[])?;
            Ok(())
        })
    }
}

impl OutboxStore for PostgresStore {
    fn pending(&self, limit: usize) -> Result<Vec<OutboxMessage>, String> {
        let owner = self.owner.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.worker
            .call(move |client| -> Result<_, StoreError> {
                let rows = client.query(
                    &format!(
                        "UPDATE outbox SET claimed_by = $1, claimed_until = now() + interval '{CLAIM_LEASE}'
                         WHERE seq IN (
                             SELECT seq FROM outbox
                             WHERE claimed_by IS NULL OR claimed_by = $1 OR claimed_until < now()
                             ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED)
                         RETURNING seq, exchange, routing_key, mandatory, envelope"
                    ),
                    &[&owner, &limit],
                )?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let seq: i64 = row.get(0);
                    match Undecodable::decode(seq, row.get(1), row.get(2), row.get(3), row.get(4)) {
                        Ok(message) => out.push(message),
                        Err(bad) => {
                            let mut tx = client.transaction()?;
                            tx.execute("DELETE FROM outbox WHERE seq = $1", &[&seq])?;
                            tx.execute(
                                "INSERT INTO quarantine (entity_id, reason, quarantined_at) VALUES ($1, $2, $3)
                                 ON CONFLICT (entity_id) DO UPDATE SET reason = excluded.reason,
                                     quarantined_at = excluded.quarantined_at",
                                &[&bad.entity_id(), &bad.reason, &Utc::now().to_rfc3339()],
                            )?;
                            tx.commit()?;
                            bad.reported();
                        }
                    }
                }
                // RETURNING keeps no order; the relay publishes in seq order.
                out.sort_by_key(|m| m.seq);
                Ok(out)
            })
            .map_err(|e| e.to_string())
    }

    fn remove(&self, seqs: &[i64]) -> Result<(), String> {
        let seqs = seqs.to_vec();
        self.worker
            .call(move |client| -> Result<_, StoreError> {
                client.execute("DELETE FROM outbox WHERE seq = ANY($1)", &[&seqs])?;
                Ok(())
            })
            .map_err(|e| e.to_string())
    }
}

/// Test databases on the local server, one per test.
#[cfg(test)]
mod testdb {
    use postgres::{Client, NoTls};

    /// The server tests use, without a database name.
    pub fn server() -> String {
        std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
    }

    /// A fresh database, dropped with this value.
    pub struct TestDb {
        pub name: String,
        pub url: String,
    }

    /// Runs `sql` on the server's `postgres` database, on a thread of its
    /// own so that async tests may call it too.
    fn admin(sql: String) -> Result<(), String> {
        let url = format!("{}/postgres", server());
        std::thread::spawn(move || {
            let mut client = Client::connect(&url, NoTls).map_err(|e| {
                format!("cannot reach PostgreSQL at {url} ({e}): run scripts/postgres.sh")
            })?;
            client
                .batch_execute(&sql)
                .map_err(|e| format!("{sql}: {e}"))
        })
        .join()
        .map_err(|_| "the admin thread panicked".to_owned())?
    }

    impl TestDb {
        pub fn create(label: &str) -> Self {
            let name = format!("test_{label}_{}", uuid::Uuid::new_v4().simple());
            if let Err(e) = admin(format!("CREATE DATABASE {name}")) {
                panic!("creating a test database: {e}");
            }
            let url = format!("{}/{name}", server());
            Self { name, url }
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let _ = admin(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testdb::TestDb;
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
    fn state_and_events_are_stored_together_and_survive_reopen() {
        let db = TestDb::create("fulfillment_store");
        {
            let store = PostgresStore::open(&db.url).expect("open");
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
        let store = PostgresStore::open(&db.url).expect("reopen migrates idempotently");
        assert_eq!(
            store.load("f-1").expect("load").map(|f| f.status),
            Some(FulfillmentStatus::Cancelled),
            "the last saved state wins"
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
        let mut counts = store.count_by_status().expect("counts");
        counts.sort();
        assert_eq!(counts, vec![("CANCELLED".into(), 1), ("PICKING".into(), 1)]);
        store.ping().expect("ping");

        let pending = store.pending(10).expect("pending");
        assert_eq!(pending.len(), 3, "every event of the three transitions");
        assert_eq!(store.outbox_len().expect("count"), 3);
        assert!(
            pending.windows(2).all(|w| w[0].seq < w[1].seq),
            "in seq order"
        );
        assert_eq!(pending[1].route.routing_key, "fulfillment.status.cancelled");
        let other = PostgresStore::open(&db.url).expect("second replica");
        assert!(
            other.pending(10).expect("pending").is_empty(),
            "another replica does not take rows under a live claim"
        );
        store.remove(&[pending[0].seq]).expect("remove");
        assert_eq!(store.pending(10).expect("pending").len(), 2);
    }

    #[test]
    fn keeps_history_tombstones_and_quarantine() {
        let db = TestDb::create("fulfillment_history");
        let store = PostgresStore::open(&db.url).expect("open");
        crate::store::tests::history_tombstones_and_quarantine(&store);
    }

    #[test]
    fn creates_idempotently() {
        let db = TestDb::create("fulfillment_idempotent");
        let store = PostgresStore::open(&db.url).expect("open");
        crate::store::tests::creating_twice_stores_one_row(&store);
    }

    #[test]
    fn an_undecodable_outbox_row_is_quarantined_and_the_rest_go_out() {
        let db = TestDb::create("fulfillment_outbox_quarantine");
        let store = PostgresStore::open(&db.url).expect("open");
        crate::store::tests::an_undecodable_outbox_row_is_quarantined(&store, &|| {
            let mut raw =
                postgres::Client::connect(&db.url, postgres::NoTls).expect("a plain connection");
            raw.execute(
                "INSERT INTO outbox (exchange, routing_key, mandatory, envelope)
                 VALUES ('fulfillment.events', 'fulfillment.status.picking', false, $1)",
                &[&&b"not json"[..]],
            )
            .expect("a garbage row");
        });
    }

    /// The reason for the worker thread: actors call the store from inside
    /// a tokio runtime, where the blocking client alone would panic.
    #[actix_rt::test]
    async fn works_when_called_from_inside_the_async_runtime() {
        let db = TestDb::create("fulfillment_in_runtime");
        let store = PostgresStore::open(&db.url).expect("open inside a runtime");
        let d = create(
            "f-1",
            &Input::Start(request()),
            Context {
                message_id: None,
                now: Utc::now(),
                timing: TIMING,
            },
        );
        store
            .save(d.state.as_ref().expect("created"), &d.messages)
            .expect("save inside a runtime");
        assert!(store.load("f-1").expect("load").is_some());
    }
}

//! The PostgreSQL store, for state that several replicas share.
//!
//! The same tables and the same promises as the SQLite store: an order's
//! state and the signals it causes are written in one transaction. Outbox
//! rows are claimed before they are published (`FOR UPDATE SKIP LOCKED`,
//! then a short lease), so two replicas' relays do not send the same rows
//! at once; a replica that dies holding a claim lets it lapse, and its rows
//! go out from whoever reads next. Calls run on the connection's own thread
//! ([`super::pg_worker`]).

use futures::future::BoxFuture;
use postgres::error::SqlState;
use postgres::{Client, GenericClient};
use shared_messages::bus::outbox::{OutboxMessage, OutboxStore, Undecodable};
use shared_messages::bus::Route;
use shared_messages::history::HistoryEvent;
use shared_messages::Envelope;

use super::pg_worker::{Worker, WorkerGone};
use super::{Page, Quarantined, Store, StoreError, Unfinished, Unreadable, Write};
use crate::workflow::{OrderState, OrderStatus};

/// Schema versions, applied in order; the applied ones are recorded in
/// `schema_migrations`. Append, never edit.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE orders (
        id TEXT PRIMARY KEY,
        workflow_id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        finished BOOLEAN NOT NULL,
        state TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX orders_unfinished ON orders (created_at) WHERE NOT finished;
    CREATE INDEX orders_status_created ON orders (status, created_at DESC, id DESC);
    CREATE INDEX orders_created ON orders (created_at DESC, id DESC);
    CREATE TABLE outbox (
        seq BIGSERIAL PRIMARY KEY,
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        mandatory BOOLEAN NOT NULL,
        envelope BYTEA NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        claimed_by TEXT,
        claimed_until TIMESTAMPTZ
    );",
    ),
    (
        2,
        "CREATE TABLE order_history (
            order_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
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

/// Serialises migrations of replicas that start together
/// (`pg_advisory_xact_lock`); any constant unique to this schema.
const MIGRATION_LOCK: i64 = 0x6f72_6465_7273; // "orders"

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
        StoreError::Open("the PostgreSQL connection thread has stopped".into())
    }
}

impl PostgresStore {
    /// Connects to `url` and brings the schema up to date.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let worker = Worker::start(url, "order-store-pg")
            .map_err(|e| StoreError::Open(format!("starting the PostgreSQL thread: {e}")))?;
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

fn encode(state: &OrderState) -> String {
    serde_json::to_string(state).expect("order state always serializes to JSON")
}

fn decode(id: &str, json: &str) -> Result<OrderState, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        id: id.into(),
        reason: e.to_string(),
    })
}

fn states(rows: Vec<postgres::Row>) -> Result<Vec<OrderState>, StoreError> {
    rows.iter()
        .map(|r| decode(r.get::<_, &str>(0), r.get::<_, &str>(1)))
        .collect()
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// History entries, inside the caller's transaction. An entry already
/// stored (a commit whose answer was lost, retried) is left as it is.
fn append_in(
    client: &mut impl GenericClient,
    order_id: &str,
    events: &[HistoryEvent],
) -> Result<(), postgres::Error> {
    for e in events {
        client.execute(
            "INSERT INTO order_history (order_id, seq, kind, at, message_id, detail)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id, seq) DO NOTHING",
            &[
                &order_id,
                &i64::try_from(e.seq).unwrap_or(i64::MAX),
                &e.kind,
                &e.at.to_rfc3339(),
                &e.message_id.map(|m| m.to_string()),
                &e.detail.to_string(),
            ],
        )?;
    }
    Ok(())
}

/// A new order; `Duplicate` when its id is taken by another order. The
/// same order stored again (the group commit retries a write whose
/// commit's outcome was lost) succeeds and leaves the one row as it is.
fn insert_in(
    client: &mut impl GenericClient,
    state: &OrderState,
    events: &[HistoryEvent],
) -> Result<(), StoreError> {
    let result = client.execute(
        "INSERT INTO orders (id, workflow_id, status, finished, state, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6::text::timestamptz, $7::text::timestamptz)
         ON CONFLICT (id) DO NOTHING",
        &[
            &state.order_id,
            &state.workflow_id,
            &state.status.as_str(),
            &state.status.is_final(),
            &encode(state),
            &state.created_at.to_rfc3339(),
            &state.updated_at.to_rfc3339(),
        ],
    );
    match result {
        Ok(1) => Ok(append_in(client, &state.order_id, events)?),
        Ok(_) => {
            let stored = client
                .query_opt("SELECT state FROM orders WHERE id = $1", &[&state.order_id])?
                .map(|row| decode(&state.order_id, row.get(0)))
                .transpose();
            match stored {
                Ok(Some(stored)) if stored == *state => {
                    Ok(append_in(client, &state.order_id, events)?)
                }
                _ => Err(StoreError::Duplicate(state.order_id.clone())),
            }
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Err(StoreError::Duplicate(state.order_id.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

fn save_in(
    client: &mut impl GenericClient,
    state: &OrderState,
    outbox: &[(Route, Envelope)],
    events: &[HistoryEvent],
) -> Result<(), postgres::Error> {
    client.execute(
        "UPDATE orders SET status = $2, finished = $3, state = $4,
             updated_at = $5::text::timestamptz WHERE id = $1",
        &[
            &state.order_id,
            &state.status.as_str(),
            &state.status.is_final(),
            &encode(state),
            &state.updated_at.to_rfc3339(),
        ],
    )?;
    append_in(client, &state.order_id, events)?;
    for (route, envelope) in outbox {
        client.execute(
            "INSERT INTO outbox (exchange, routing_key, mandatory, envelope) VALUES ($1, $2, $3, $4)",
            &[
                &route.exchange,
                &route.routing_key,
                &route.mandatory,
                &envelope.to_json(),
            ],
        )?;
    }
    Ok(())
}

impl Store for PostgresStore {
    fn insert(&self, state: &OrderState, events: &[HistoryEvent]) -> Result<(), StoreError> {
        let state = state.clone();
        let events = events.to_vec();
        self.worker.call(move |client| {
            let mut tx = client.transaction()?;
            insert_in(&mut tx, &state, &events)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn save(
        &self,
        state: &OrderState,
        outbox: &[(Route, Envelope)],
        events: &[HistoryEvent],
    ) -> Result<(), StoreError> {
        let state = state.clone();
        let outbox = outbox.to_vec();
        let events = events.to_vec();
        self.worker.call(move |client| {
            let mut tx = client.transaction()?;
            save_in(&mut tx, &state, &outbox, &events)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn save_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        let writes = writes.to_vec();
        self.worker.call(move |client| {
            let mut tx = client.transaction()?;
            for w in &writes {
                if w.insert {
                    insert_in(&mut tx, &w.state, &w.events)?;
                } else {
                    save_in(&mut tx, &w.state, &w.outbox, &w.events)?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn get(&self, order_id: &str) -> Result<Option<OrderState>, StoreError> {
        let id = order_id.to_owned();
        self.worker.call(move |client| {
            let row = client.query_opt("SELECT state FROM orders WHERE id = $1", &[&id])?;
            row.map(|r| decode(&id, r.get(0))).transpose()
        })
    }

    fn list(
        &self,
        status: Option<OrderStatus>,
        limit: u32,
        offset: u64,
    ) -> Result<Page, StoreError> {
        let status = status.map(|s| s.as_str().to_owned());
        let (limit, offset) = (i64::from(limit), clamp(offset));
        self.worker.call(move |client| {
            let rows = client.query(
                "SELECT id, state FROM orders WHERE ($1::text IS NULL OR status = $1)
                 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
                &[&status, &limit, &offset],
            )?;
            let total: i64 = client
                .query_one(
                    "SELECT COUNT(*) FROM orders WHERE ($1::text IS NULL OR status = $1)",
                    &[&status],
                )?
                .get(0);
            Ok(Page {
                orders: states(rows)?,
                total: u64::try_from(total).unwrap_or_default(),
            })
        })
    }

    fn unfinished(&self) -> Result<Unfinished, StoreError> {
        self.worker.call(|client| {
            let rows = client.query(
                "SELECT id, state FROM orders WHERE NOT finished ORDER BY created_at",
                &[],
            )?;
            let mut found = Unfinished::default();
            for row in rows {
                let id: &str = row.get(0);
                match decode(id, row.get(1)) {
                    Ok(state) => found.orders.push(state),
                    Err(error) => found.unreadable.push(Unreadable {
                        order_id: id.to_owned(),
                        reason: error.to_string(),
                    }),
                }
            }
            Ok(found)
        })
    }

    fn history(&self, order_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        let id = order_id.to_owned();
        self.worker.call(move |client| {
            let rows = client.query(
                "SELECT seq, kind, at, message_id, detail FROM order_history
                 WHERE order_id = $1 ORDER BY seq",
                &[&id],
            )?;
            rows.iter()
                .map(|r| {
                    super::history_event(&id, r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
                })
                .collect()
        })
    }

    fn count_by_status(&self) -> Result<Vec<(OrderStatus, u64)>, StoreError> {
        self.worker.call(|client| {
            let rows = client.query("SELECT status, COUNT(*) FROM orders GROUP BY status", &[])?;
            Ok(rows
                .iter()
                .filter_map(|r| {
                    Some((
                        OrderStatus::parse(r.get(0))?,
                        u64::try_from(r.get::<_, i64>(1)).unwrap_or_default(),
                    ))
                })
                .collect())
        })
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        self.worker.call(|client| {
            let n: i64 = client.query_one("SELECT COUNT(*) FROM outbox", &[])?.get(0);
            Ok(u64::try_from(n).unwrap_or_default())
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.worker.call(|client| {
            client.query_one("SELECT 1", &[])?;
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
                    let quarantined_at = chrono::DateTime::parse_from_rfc3339(r.get(2))
                        .map_err(|e| StoreError::Corrupt {
                            id: entity_id.clone(),
                            reason: e.to_string(),
                        })?
                        .with_timezone(&chrono::Utc);
                    Ok(Quarantined {
                        entity_id,
                        reason: r.get(1),
                        quarantined_at,
                    })
                })
                .collect()
        })
    }
}

impl OutboxStore for PostgresStore {
    // Answered on the caller's thread, as the calls are blocking.
    fn pending(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxMessage>, String>> {
        Box::pin(futures::future::ready(PostgresStore::pending(self, limit)))
    }

    fn remove<'a>(&'a self, seqs: &'a [i64]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(futures::future::ready(PostgresStore::remove(self, seqs)))
    }
}

impl PostgresStore {
    /// Up to `limit` of the oldest outbox rows (see [`OutboxStore::pending`]).
    pub fn pending(&self, limit: usize) -> Result<Vec<OutboxMessage>, String> {
        let owner = self.owner.clone();
        let limit = clamp(limit as u64);
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
                let mut messages = Vec::with_capacity(rows.len());
                for row in rows {
                    let seq: i64 = row.get(0);
                    match Undecodable::decode(seq, row.get(1), row.get(2), row.get(3), row.get(4)) {
                        Ok(message) => messages.push(message),
                        // Never let one bad row block the rest, nor drop it.
                        Err(bad) => {
                            let mut tx = client.transaction()?;
                            tx.execute("DELETE FROM outbox WHERE seq = $1", &[&seq])?;
                            tx.execute(
                                "INSERT INTO quarantine (entity_id, reason, quarantined_at) VALUES ($1, $2, $3)
                                 ON CONFLICT (entity_id) DO UPDATE SET reason = excluded.reason,
                                     quarantined_at = excluded.quarantined_at",
                                &[&bad.entity_id(), &bad.reason, &chrono::Utc::now().to_rfc3339()],
                            )?;
                            tx.commit()?;
                            bad.reported();
                        }
                    }
                }
                // RETURNING keeps no order; the relay publishes in seq order.
                messages.sort_by_key(|m| m.seq);
                Ok(messages)
            })
            .map_err(|e| e.to_string())
    }

    /// Removes confirmed outbox rows (see [`OutboxStore::remove`]).
    pub fn remove(&self, seqs: &[i64]) -> Result<(), String> {
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
pub(crate) mod testdb {
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
    pub fn admin(sql: String) -> Result<(), String> {
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
    use crate::validation::demo_order;
    use crate::workflow::{self, Effect, Input};
    use chrono::Utc;

    #[test]
    fn insert_get_duplicate_list_and_counts() {
        let db = TestDb::create("orders_crud");
        let s = PostgresStore::open(&db.url).expect("open");
        let order = OrderState::new("ORD-1", demo_order(), Utc::now());
        s.insert(&order, &[]).expect("insert");
        assert_eq!(s.get("ORD-1").expect("get"), Some(order.clone()));
        let other = OrderState::new(
            "ORD-1",
            demo_order(),
            Utc::now() + chrono::TimeDelta::seconds(1),
        );
        assert!(
            matches!(s.insert(&other, &[]), Err(StoreError::Duplicate(_))),
            "another order with a taken id is refused as a duplicate"
        );
        assert_eq!(s.get("ORD-1").expect("get"), Some(order.clone()));
        assert_eq!(s.get("ORD-2").expect("get"), None);
        for i in 2..6 {
            let mut o = OrderState::new(&format!("ORD-{i}"), demo_order(), Utc::now());
            s.insert(&o, &[]).expect("insert");
            if i % 2 == 0 {
                o.status = OrderStatus::Shipped;
                s.save(&o, &[], &[]).expect("save");
            }
        }
        let page = s.list(Some(OrderStatus::Shipped), 1, 0).expect("list");
        assert_eq!((page.total, page.orders.len()), (2, 1), "filtered page");
        assert_eq!(page.orders[0].order_id, "ORD-4", "newest first");
        let page = s.list(None, 10, 4).expect("list");
        assert_eq!((page.total, page.orders.len()), (5, 1), "offset page");
        assert_eq!(s.unfinished().expect("unfinished").orders.len(), 3);
        let mut counts = s.count_by_status().expect("counts");
        counts.sort_by_key(|(_, n)| *n);
        assert_eq!(
            counts,
            vec![(OrderStatus::Shipped, 2), (OrderStatus::Pending, 3)]
        );
        s.ping().expect("ping");
    }

    /// A commit whose outcome was lost is retried (by the group commit, one
    /// write at a time): the same order stored twice succeeds both times
    /// and leaves one row, one history.
    #[test]
    fn creating_the_same_order_twice_stores_it_once() {
        let db = TestDb::create("orders_idempotent");
        let s = PostgresStore::open(&db.url).expect("open");
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
        let db = TestDb::create("orders_outbox_quarantine");
        let s = PostgresStore::open(&db.url).expect("open");
        let mut raw = Client::connect(&db.url, postgres::NoTls).expect("a plain connection");
        raw.execute(
            "INSERT INTO outbox (exchange, routing_key, mandatory, envelope)
             VALUES ('fulfillment.commands', 'fulfillment.start', true, $1)",
            &[&&b"not json"[..]],
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
    fn state_and_outbox_are_saved_together_and_claims_are_exclusive() {
        let db = TestDb::create("orders_outbox");
        let s = PostgresStore::open(&db.url).expect("open");
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
        assert_eq!(outbox.len(), 1, "advancing from CONFIRMED sends one signal");
        s.save(&t.state, &outbox, &t.events).expect("save");
        assert_eq!(s.outbox_len().expect("outbox"), 1);

        let pending = s.pending(10).expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].envelope.message_id, outbox[0].1.message_id);
        assert_eq!(pending[0].route, outbox[0].0);
        assert_eq!(
            s.pending(10).expect("pending").len(),
            1,
            "the claiming store reads its own claimed rows again"
        );
        let other = PostgresStore::open(&db.url).expect("second replica");
        assert!(
            other.pending(10).expect("pending").is_empty(),
            "another replica does not take rows under a live claim"
        );
        s.remove(&[pending[0].seq]).expect("remove");
        assert!(s.pending(10).expect("pending").is_empty());
        assert_eq!(
            s.get("ORD-1").expect("get").map(|o| o.status),
            Some(OrderStatus::FulfillmentStarted)
        );
    }

    #[test]
    fn reopening_migrates_idempotently_and_keeps_orders() {
        let db = TestDb::create("orders_reopen");
        {
            let s = PostgresStore::open(&db.url).expect("open");
            s.insert(&OrderState::new("ORD-1", demo_order(), Utc::now()), &[])
                .expect("insert");
        }
        let s = PostgresStore::open(&db.url).expect("reopen");
        assert!(s.get("ORD-1").expect("get").is_some());
    }

    /// The reason for the worker thread: actors call the store from inside
    /// a tokio runtime, where the blocking client alone would panic.
    #[actix_rt::test]
    async fn works_when_called_from_inside_the_async_runtime() {
        let db = TestDb::create("orders_in_runtime");
        let s = PostgresStore::open(&db.url).expect("open inside a runtime");
        s.insert(&OrderState::new("ORD-1", demo_order(), Utc::now()), &[])
            .expect("insert inside a runtime");
        assert!(s.get("ORD-1").expect("get").is_some());
    }

    #[test]
    fn the_store_reconnects_after_the_server_drops_its_connection() {
        let db = TestDb::create("orders_reconnect");
        let s = PostgresStore::open(&db.url).expect("open");
        s.ping().expect("ping");
        super::testdb::admin(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name
        ))
        .expect("terminating the store's connection");
        // The call that finds the connection dead fails; the next reconnects.
        let _ = s.ping();
        s.ping()
            .expect("a new connection after the old one was dropped");
        s.insert(&OrderState::new("ORD-1", demo_order(), Utc::now()), &[])
            .expect("insert on the new connection");
    }

    #[test]
    fn history_is_written_with_the_state_once_and_bad_rows_are_set_aside() {
        let db = TestDb::create("orders_history");
        let s = PostgresStore::open(&db.url).expect("open");
        let (order, created) = workflow::create("ORD-1", demo_order(), Utc::now());
        s.insert(&order, &created).expect("insert");
        let t =
            workflow::handle(&order, Input::Cancel { reason: None }, Utc::now()).expect("cancel");
        s.save(&t.state, &[], &t.events).expect("save");
        // a commit retried after its answer was lost adds nothing
        s.save(&t.state, &[], &t.events).expect("save again");
        let kinds: Vec<String> = s
            .history("ORD-1")
            .expect("history")
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["OrderCreated", "CancelRequested", "StatusChanged"]);

        s.insert(&OrderState::new("ORD-2", demo_order(), Utc::now()), &[])
            .expect("insert");
        s.insert(&OrderState::new("ORD-3", demo_order(), Utc::now()), &[])
            .expect("insert");
        s.worker
            .call(|c| -> Result<_, StoreError> {
                Ok(c.execute("UPDATE orders SET state = '{}' WHERE id = 'ORD-2'", &[])?)
            })
            .expect("corrupt a row");
        let found = s.unfinished().expect("recovery reads the rest");
        let ids: Vec<&str> = found.orders.iter().map(|o| o.order_id.as_str()).collect();
        assert_eq!(ids, ["ORD-3"]);
        assert_eq!(found.unreadable.len(), 1);
        assert_eq!(found.unreadable[0].order_id, "ORD-2");
    }

    #[test]
    fn a_wrong_url_fails_at_open() {
        assert!(
            PostgresStore::open("postgres://postgres@127.0.0.1:1/none").is_err(),
            "opening against a closed port fails at once"
        );
    }
}

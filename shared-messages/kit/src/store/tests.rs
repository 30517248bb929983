//! The outbox, the quarantine and migrations on a SQLite file and on the
//! local PostgreSQL server (a database per test).

use message_bus::outbox::OutboxStore;
use message_bus::Route;
use refinery::{Migration, Runner};
use rusqlite::OptionalExtension;
use shared_messages::Envelope;

use super::*;

const SQLITE_V1: &str = "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange TEXT NOT NULL, routing_key TEXT NOT NULL, mandatory INTEGER NOT NULL,
    envelope BLOB NOT NULL, created_at TEXT NOT NULL);";
const SQLITE_V2: &str = "CREATE TABLE quarantine (entity_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL, quarantined_at TEXT NOT NULL);";
const PG_V1: &str = "CREATE TABLE outbox (seq BIGSERIAL PRIMARY KEY, exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL, mandatory BOOLEAN NOT NULL, envelope BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(), claimed_by TEXT,
    claimed_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity');";
const PG_V2: &str = SQLITE_V2;

fn runner(v1: &str, v2: &str) -> Runner {
    Runner::new(&[
        Migration::unapplied("V1__outbox", v1).expect("a migration"),
        Migration::unapplied("V2__quarantine", v2).expect("a migration"),
    ])
}

fn message(n: u32) -> (Route, Envelope) {
    let envelope = Envelope::new(
        format!("entity-{n}"),
        shared_messages::messages::Message::GetFulfillmentStatus(Default::default()),
    );
    (Route::new("test.exchange", "test.key", true), envelope)
}

#[tokio::test]
async fn sqlite_outbox_rows_go_out_in_order_and_a_bad_one_is_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Sqlite::open(
        &dir.path().join("nested/store.db"),
        &runner(SQLITE_V1, SQLITE_V2),
    )
    .expect("opens, creating the directory");
    db.blocking(|conn| {
        conn.execute(
            "INSERT INTO outbox (exchange, routing_key, mandatory, envelope, created_at)
             VALUES ('x', 'k', 1, X'6e6f74206a736f6e', 'now')",
            [],
        )?;
        outbox::insert_sqlite(conn, &[message(1), message(2)])
    })
    .expect("rows stored");
    let pending = db
        .pending(10)
        .await
        .expect("one bad row does not fail the read");
    assert_eq!(pending.len(), 2, "the good rows go out");
    assert!(pending[0].seq < pending[1].seq, "in order");
    let items = db
        .call(|conn| quarantine::list_sqlite(conn))
        .await
        .expect("list");
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].entity_id, "outbox row 1");
    assert!(
        items[0].reason.contains("not json"),
        "the body is kept: {items:?}"
    );
    db.remove(&[pending[0].seq]).await.expect("remove");
    assert_eq!(db.call(|c| outbox::len_sqlite(c)).await.expect("len"), 1);
}

/// A database migrated before refinery (a `schema_migrations` table, or
/// `PRAGMA user_version`) is taken over: what it records is not run again.
#[test]
fn sqlite_databases_migrated_before_refinery_are_taken_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, legacy) in [
        ("table.db", "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);
                      INSERT INTO schema_migrations VALUES (1, 'then');"),
        ("pragma.db", "PRAGMA user_version = 1;"),
    ] {
        let path = dir.path().join(name);
        let conn = rusqlite::Connection::open(&path).expect("opens");
        conn.execute_batch(SQLITE_V1).expect("v1 as the old runner ran it");
        conn.execute_batch(legacy).expect("the old record");
        drop(conn);
        let db = Sqlite::open(&path, &runner(SQLITE_V1, SQLITE_V2)).expect("taken over, v2 run");
        let versions: Vec<i64> = db
            .blocking(|c| {
                let mut stmt =
                    c.prepare("SELECT version FROM refinery_schema_history ORDER BY version")?;
                let v = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
                Ok(v)
            })
            .expect("history");
        assert_eq!(versions, [1, 2], "{name}");
        let quarantine: Option<String> = db
            .blocking(|c| {
                Ok(c.query_row(
                    "SELECT name FROM sqlite_master WHERE name = 'quarantine'",
                    [],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .expect("reads");
        assert!(quarantine.is_some(), "v2 ran on {name}");
        drop(db);
        Sqlite::open(&path, &runner(SQLITE_V1, SQLITE_V2)).expect("reopens as it is");
    }
}

use super::testdb as pg;

#[tokio::test]
async fn postgres_outbox_claims_are_exclusive_and_a_bad_row_is_quarantined() {
    let db = pg::TestDb::create("kit_outbox");
    let store = Postgres::open(&db.url, &runner(PG_V1, PG_V2), 1)
        .await
        .expect("opens");
    pg::admin(
        "INSERT INTO outbox (exchange, routing_key, mandatory, envelope) VALUES ('x', 'k', true, 'not json')".into(),
        &db.name,
    )
    .expect("a garbage row");
    let client = store.client().await.expect("a connection");
    outbox::insert_postgres(&**client, &[message(1), message(2)])
        .await
        .expect("rows stored");
    drop(client);
    let pending = store
        .pending(10)
        .await
        .expect("one bad row does not fail the read");
    assert_eq!(pending.len(), 2, "the good rows go out");
    assert!(pending[0].seq < pending[1].seq, "in seq order");
    assert_eq!(
        store.pending(10).await.expect("again").len(),
        2,
        "its own claims re-read"
    );
    let other = Postgres::open(&db.url, &runner(PG_V1, PG_V2), 1)
        .await
        .expect("a second replica");
    assert!(
        other.pending(10).await.expect("reads").is_empty(),
        "another replica does not take rows under a live claim"
    );
    let client = store.client().await.expect("a connection");
    let items = quarantine::list_postgres(&**client).await.expect("list");
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].entity_id, "outbox row 1");
    store.remove(&[pending[0].seq]).await.expect("remove");
    assert_eq!(outbox::len_postgres(&**client).await.expect("len"), 1);
}

/// A row is born claimed by the process that writes it: its relay reads
/// it at once, and another replica's sweep leaves it alone until the claim
/// lapses; a row nobody holds goes to the first relay that sweeps.
#[tokio::test]
async fn postgres_outbox_rows_are_born_claimed_by_their_writer() {
    let db = pg::TestDb::create("kit_outbox_writer");
    let migrations = runner(PG_V1, PG_V2);
    let open = || Postgres::open(&db.url, &migrations, 1);
    let (writer, other) = (open().await.expect("opens"), open().await.expect("opens"));
    let client = writer.client().await.expect("a connection");
    outbox::insert_postgres(&**client, &[message(1), message(2)])
        .await
        .expect("rows stored");
    let claims = client
        .query("SELECT claimed_by FROM outbox ORDER BY seq", &[])
        .await
        .expect("reads the claims");
    for claim in claims {
        assert_eq!(
            claim.get::<_, Option<String>>(0).as_deref(),
            Some(&*writer.owner)
        );
    }
    assert!(
        other.pending(10).await.expect("reads").is_empty(),
        "another replica leaves rows its writer holds"
    );
    assert_eq!(
        writer.pending(10).await.expect("reads").len(),
        2,
        "the writer's relay reads them"
    );

    pg::admin(
        "INSERT INTO outbox (exchange, routing_key, mandatory, envelope)
             SELECT exchange, routing_key, mandatory, envelope FROM outbox;
         UPDATE outbox SET claimed_until = now() - interval '1 second' WHERE seq = 1;"
            .into(),
        &db.name,
    )
    .expect("a lapsed claim and two rows nobody holds");
    tokio::time::sleep(outbox::SWEEP_EVERY).await;
    let seqs = |read: Vec<message_bus::outbox::OutboxMessage>| -> Vec<i64> {
        read.iter().map(|m| m.seq).collect()
    };
    assert_eq!(
        seqs(other.pending(10).await.expect("sweeps")),
        [1, 3, 4],
        "the sweep takes the lapsed claim and the rows nobody holds, in order"
    );
    assert_eq!(
        seqs(writer.pending(10).await.expect("reads")),
        [2],
        "the writer keeps what it still holds"
    );
}

/// Where a row's claim stands, as the test knows it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Claim {
    /// Held by this replica, its lease running.
    Live(usize),
    /// Its lease lapsed (its holder died or fell behind): anyone's.
    Lapsed,
}

/// Over seeded random writes by three replicas, random reads and sends
/// (some sends failing, so their rows stay), and random claims lapsing:
/// no replica ever gets a row another holds under a live claim, each read
/// is in seq order, and in the end every row written is sent.
#[tokio::test]
async fn random_writes_reads_and_lapses_share_no_live_claim_and_lose_no_row() {
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeMap, BTreeSet};
    let db = pg::TestDb::create("kit_outbox_random");
    let migrations = runner(PG_V1, PG_V2);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(
            Postgres::open(&db.url, &migrations, 1)
                .await
                .expect("opens"),
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let mut claims: BTreeMap<i64, Claim> = BTreeMap::new();
    let mut sent = BTreeSet::new();
    let mut next = 0u32;
    for step in 0..150 {
        if step == 75 {
            // Sweeps run at most once a second: let them run again.
            tokio::time::sleep(outbox::SWEEP_EVERY).await;
        }
        let r = rng.random_range(0..replicas.len());
        match rng.random_range(0..5) {
            0 | 1 => {
                let messages: Vec<_> = (0..rng.random_range(1..4))
                    .map(|_| {
                        next += 1;
                        message(next)
                    })
                    .collect();
                let client = replicas[r].client().await.expect("a connection");
                outbox::insert_postgres(&**client, &messages)
                    .await
                    .expect("rows stored");
                let last = claims.keys().next_back().copied().unwrap_or(0);
                for row in client
                    .query("SELECT seq FROM outbox WHERE seq > $1", &[&last])
                    .await
                    .expect("reads the new rows")
                {
                    claims.insert(row.get(0), Claim::Live(r));
                }
            }
            2 | 3 => {
                let read = replicas[r]
                    .pending(rng.random_range(1..6))
                    .await
                    .expect("reads");
                let seqs: Vec<i64> = read.iter().map(|m| m.seq).collect();
                assert!(
                    seqs.windows(2).all(|w| w[0] < w[1]),
                    "in seq order: {seqs:?}"
                );
                for seq in &seqs {
                    let claim = claims.get(seq).copied();
                    assert!(
                        matches!(claim, Some(Claim::Live(h)) if h == r)
                            || claim == Some(Claim::Lapsed),
                        "step {step}: replica {r} read row {seq}, {claim:?}"
                    );
                    // Taken by another's sweep, its claim is this one's now.
                    if claim == Some(Claim::Lapsed) {
                        let claimed_by = replicas[r].client().await.expect("a connection");
                        let owner: Option<String> = claimed_by
                            .query_one("SELECT claimed_by FROM outbox WHERE seq = $1", &[seq])
                            .await
                            .expect("reads the claim")
                            .get(0);
                        if owner.as_deref() == Some(&*replicas[r].owner) {
                            claims.insert(*seq, Claim::Live(r));
                        }
                    }
                }
                let confirmed: Vec<i64> = seqs
                    .into_iter()
                    .filter(|_| rng.random_range(0..4) > 0)
                    .collect();
                replicas[r].remove(&confirmed).await.expect("removes");
                for seq in confirmed {
                    claims.remove(&seq);
                    sent.insert(seq);
                }
            }
            _ => {
                let held: Vec<i64> = claims.keys().copied().collect();
                if let Some(&seq) = held.get(rng.random_range(0..held.len().max(1))) {
                    pg::admin(
                        format!(
                            "UPDATE outbox SET claimed_until = now() - interval '1 second' WHERE seq = {seq}"
                        ),
                        &db.name,
                    )
                    .expect("a claim lapses");
                    claims.insert(seq, Claim::Lapsed);
                }
            }
        }
    }
    // Every holder dies: all claims lapse, and the sweeps send the rest.
    pg::admin(
        "UPDATE outbox SET claimed_until = now() - interval '1 second'".into(),
        &db.name,
    )
    .expect("every claim lapses");
    tokio::time::sleep(outbox::SWEEP_EVERY).await;
    for replica in &replicas {
        let read: Vec<i64> = replica
            .pending(1000)
            .await
            .expect("reads")
            .iter()
            .map(|m| m.seq)
            .collect();
        replica.remove(&read).await.expect("removes");
        sent.extend(read);
    }
    let written: BTreeSet<i64> = (1..=i64::from(next)).collect();
    assert!(next > 50, "the run wrote rows ({next})");
    assert_eq!(sent, written, "every row written is sent");
}

/// Only the relay's own connections commit without waiting for the WAL
/// flush; every other connection of the store waits as the server says.
#[tokio::test]
async fn only_the_relay_commits_without_waiting_for_the_flush() {
    let db = pg::TestDb::create("kit_relay_commit");
    let store = Postgres::open(&db.url, &runner(PG_V1, PG_V2), 1)
        .await
        .expect("opens");
    let setting = |client: deadpool_postgres::Object| async move {
        let row = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .expect("shows the setting");
        row.get::<_, String>(0)
    };
    assert_eq!(
        setting(store.relay_client().await.expect("a relay connection")).await,
        "off"
    );
    let server = setting(store.client().await.expect("a connection")).await;
    assert_ne!(server, "off", "the workflows' commits wait for their flush");
}

/// A database migrated by the runner before refinery keeps its tables and
/// rows; only later versions run.
#[tokio::test]
async fn a_postgres_database_migrated_before_refinery_is_taken_over() {
    let db = pg::TestDb::create("kit_takeover");
    pg::admin(
        format!(
            "{PG_V1} CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
             INSERT INTO schema_migrations (version) VALUES (1);
             INSERT INTO outbox (exchange, routing_key, mandatory, envelope) VALUES ('x', 'k', true, 'kept');"
        ),
        &db.name,
    )
    .expect("a database as the old runner left it");
    let store = Postgres::open(&db.url, &runner(PG_V1, PG_V2), 1)
        .await
        .expect("taken over, v2 run");
    let client = store.client().await.expect("a connection");
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
        .expect("history")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(
        outbox::len_postgres(&**client).await.expect("len"),
        1,
        "rows kept"
    );
    quarantine::list_postgres(&**client)
        .await
        .expect("v2's table exists");
    drop(client);
    Postgres::open(&db.url, &runner(PG_V1, PG_V2), 1)
        .await
        .expect("reopens as it is");
}

#[tokio::test]
async fn a_closed_port_fails_at_open() {
    let result = Postgres::open(
        "postgres://postgres@127.0.0.1:1/none",
        &runner(PG_V1, PG_V2),
        1,
    )
    .await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{:?}",
        result.err()
    );
}

/// A SQLite store belongs to one process: a second open of the same file
/// is refused, saying why and what to do, until the first is closed.
#[tokio::test]
async fn a_sqlite_store_is_opened_by_one_owner_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let first = Sqlite::open(&path, &runner(SQLITE_V1, SQLITE_V2)).expect("opens");
    let Err(refused) = Sqlite::open(&path, &runner(SQLITE_V1, SQLITE_V2)) else {
        panic!("a second owner of {} was let in", path.display());
    };
    let said = refused.to_string();
    assert!(
        said.contains("in use by another process") && said.contains("PostgreSQL"),
        "{said}"
    );
    drop(first);
    let again = Sqlite::open(&path, &runner(SQLITE_V1, SQLITE_V2))
        .expect("opens once the first owner has closed it");
    assert_eq!(again.outbox_len().await.expect("answers"), 0);
}

/// Calls run on the SQLite thread; one that panics fails alone.
#[tokio::test]
async fn a_sqlite_call_that_panics_fails_alone() {
    let db = Sqlite::open(
        std::path::Path::new(":memory:"),
        &runner(SQLITE_V1, SQLITE_V2),
    )
    .expect("opens");
    let on = db
        .call(|_| Ok(std::thread::current().name().map(str::to_owned)))
        .await
        .expect("answers");
    assert_eq!(on.as_deref(), Some("sqlite"));
    let failed = db
        .call(|_| -> Result<(), StoreError> { panic!("a bug in a call") })
        .await;
    assert!(failed.is_err(), "the caller is told");
    let calls = (0..100).map(|n| db.call(move |_| Ok(n)));
    let answers = futures::future::try_join_all(calls)
        .await
        .expect("still serving");
    assert_eq!(answers, (0..100).collect::<Vec<_>>());
}

/// A pipeline's statements run in the order given, all in the
/// transaction; one that fails fails the pipeline, and the transaction
/// rolls back every statement, those before it included.
#[tokio::test]
async fn a_pipeline_runs_its_statements_in_order_and_a_failed_one_rolls_back_all() {
    let db = pg::TestDb::create("kit_pipeline");
    let store = Postgres::open(&db.url, &runner(PG_V1, PG_V2), 1)
        .await
        .expect("opens");
    let messages: Vec<(Route, Envelope)> = (0..50).map(message).collect();
    let mut client = store.client().await.expect("a connection");
    let tx = client.transaction().await.expect("begins");
    let [insert] = postgres::prepared(&tx, [outbox::INSERT_POSTGRES])
        .await
        .expect("prepared");
    let mut statements = Vec::new();
    outbox::insert_pipelined(&mut statements, &tx, &insert, &messages);
    postgres::pipeline(statements).await.expect("stored");
    tx.commit().await.expect("commits");
    let pending = store.pending(100).await.expect("reads");
    let stored: Vec<String> = pending
        .iter()
        .map(|m| m.envelope.message_id.to_string())
        .collect();
    let sent: Vec<String> = messages
        .iter()
        .map(|(_, e)| e.message_id.to_string())
        .collect();
    assert_eq!(
        stored, sent,
        "rows in the order their statements were given"
    );

    let tx = client.transaction().await.expect("begins");
    let [insert] = postgres::prepared(&tx, [outbox::INSERT_POSTGRES])
        .await
        .expect("from the cache");
    let mut statements = Vec::new();
    outbox::insert_pipelined(&mut statements, &tx, &insert, &messages[..10]);
    statements.push(Box::pin(async {
        tx.batch_execute("SELECT 1 / 0").await?;
        Ok(())
    }));
    outbox::insert_pipelined(&mut statements, &tx, &insert, &messages[10..20]);
    assert!(
        postgres::pipeline(statements).await.is_err(),
        "the failure is the answer"
    );
    drop(tx);
    assert_eq!(
        outbox::len_postgres(&**client).await.expect("len"),
        50,
        "nothing of the failed transaction stored"
    );
}

/// A transaction's outbox rows, however many and from however many
/// writes, are one statement, and the relay reads them back in the order
/// given, each with its own route.
#[tokio::test]
async fn a_transactions_outbox_rows_are_one_statement_and_keep_their_order() {
    let db = pg::TestDb::create("kit_outbox_batch");
    let store = Postgres::open(&db.url, &runner(PG_V1, PG_V2), 1)
        .await
        .expect("opens");
    let routed = |n: u32| {
        let (_, envelope) = message(n);
        let route = Route::new(
            "test.exchange",
            &format!("key.{}", n % 7),
            n.is_multiple_of(2),
        );
        (route, envelope)
    };
    // Writes of 0, 1, 2, ... messages each, one after another.
    let writes: Vec<Vec<(Route, Envelope)>> = (0..60u32)
        .map(|w| (0..w).map(|i| routed(w * 100 + i)).collect())
        .collect();
    let mut client = store.client().await.expect("a connection");
    let tx = client.transaction().await.expect("begins");
    let [insert] = postgres::prepared(&tx, [outbox::INSERT_POSTGRES])
        .await
        .expect("prepared");
    let mut statements = Vec::new();
    outbox::insert_pipelined(&mut statements, &tx, &insert, writes.iter().flatten());
    assert_eq!(statements.len(), 1, "one statement for every row");
    outbox::insert_pipelined(&mut statements, &tx, &insert, &[]);
    assert_eq!(statements.len(), 1, "none for no rows");
    postgres::pipeline(statements).await.expect("stored");
    tx.commit().await.expect("commits");
    let sent: Vec<(Route, String)> = writes
        .iter()
        .flatten()
        .map(|(r, e)| (r.clone(), e.message_id.to_string()))
        .collect();
    let pending = store.pending(10_000).await.expect("reads");
    let stored: Vec<(Route, String)> = pending
        .iter()
        .map(|m| (m.route.clone(), m.envelope.message_id.to_string()))
        .collect();
    assert_eq!(stored.len(), 60 * 59 / 2);
    assert_eq!(stored, sent, "in the order given, each with its route");
}

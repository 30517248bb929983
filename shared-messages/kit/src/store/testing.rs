//! What every service's store must do alike, as checks its tests run on
//! each backend (feature `test-support`).

use message_bus::metrics::METRICS;
use message_bus::Route;
use shared_messages::Envelope;

use super::testdb::{admin, TestDb};
use super::{OnDatabase, Sqlite, StoreError};

/// One `#[tokio::test]` per check, each on a store of its own:
/// `store_checks!(open => checks: insert_and_get, list_pages);` runs
/// `checks::insert_and_get(&store)` and so on, where `open(name)` (given
/// the check's name) makes `(keep, store)` and `keep` lives as long as the
/// check (a [`TestDb`], or `()`). For a service's store tests, once per
/// backend, over the checks written once for both.
#[macro_export]
macro_rules! store_checks {
    ($open:expr => $checks:ident: $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let (_keep, store) = ($open)(stringify!($check)).await;
                $checks::$check(&store).await;
            }
        )+
    };
}

/// An outbox row whose envelope is not JSON (`not json`), on SQLite.
pub fn store_undecodable_outbox_row_sqlite(db: &Sqlite) -> Result<(), StoreError> {
    db.blocking(|conn| {
        conn.execute(
            "INSERT INTO outbox (exchange, routing_key, mandatory, envelope, created_at)
             VALUES ('test.exchange', 'test.key', 1, ?1, ?2)",
            rusqlite::params![b"not json".to_vec(), chrono::Utc::now().to_rfc3339()],
        )?;
        Ok(())
    })
}

/// An outbox row whose envelope is not JSON (`not json`), in the test
/// database `db`.
pub fn store_undecodable_outbox_row_postgres(db: &TestDb) -> Result<(), String> {
    admin(
        "INSERT INTO outbox (exchange, routing_key, mandatory, envelope)
         VALUES ('test.exchange', 'test.key', true, 'not json')"
            .into(),
        &db.name,
    )
}

/// `other`, a second replica opened on the same database, takes none of
/// the rows another has claimed (while the claims are live).
pub async fn another_replica_takes_no_claimed_rows<S: OnDatabase + ?Sized>(other: &S) {
    assert!(
        other
            .outbox()
            .pending(10)
            .await
            .expect("pending")
            .is_empty(),
        "another replica does not take rows under a live claim"
    );
}

/// With an outbox row that does not decode stored first (row 1, the
/// caller's part, its body `not json`) and then a write that sends `sent`:
/// the bad row is moved to the quarantine, counted, and kept once; the
/// good rows still go out.
pub async fn an_undecodable_outbox_row_is_quarantined<S: OnDatabase + ?Sized>(
    store: &S,
    sent: &[(Route, Envelope)],
) {
    let before = METRICS.outbox_quarantined.get();
    let pending = store
        .outbox()
        .pending(10)
        .await
        .expect("one bad row does not fail the read");
    assert_eq!(pending.len(), sent.len(), "the good rows still go out");
    assert_eq!(pending[0].envelope.message_id, sent[0].1.message_id);
    assert_eq!(
        store.outbox_len().await.expect("count"),
        sent.len() as u64,
        "the bad row left the outbox"
    );
    assert!(METRICS.outbox_quarantined.get() > before, "counted");
    let items = store.quarantined().await.expect("quarantine");
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].entity_id, "outbox row 1");
    assert!(items[0].reason.contains("cannot be decoded"), "{items:?}");
    assert!(
        items[0].reason.contains("not json"),
        "the body is kept: {items:?}"
    );
    assert_eq!(
        store.outbox().pending(10).await.expect("pending").len(),
        sent.len()
    );
    assert_eq!(
        store.quarantined().await.expect("quarantine").len(),
        1,
        "kept once"
    );
}

/// The ids of the first `limit` messages waiting in `store`'s outbox, in
/// the order the relay would send them.
pub async fn pending_message_ids<S: OnDatabase + ?Sized>(
    store: &S,
    limit: usize,
) -> Vec<uuid::Uuid> {
    store
        .outbox()
        .pending(limit)
        .await
        .expect("the outbox reads")
        .into_iter()
        .map(|m| m.envelope.message_id)
        .collect()
}

/// `store`'s schema has the kit's `outbox_claims_and_room_for(table)`:
/// the outbox's claims on their indexes, `table` with room for rewrites
/// and its state compressed with lz4.
pub async fn has_outbox_claims_and_room_for(store: &super::Postgres, table: &str) {
    let client = store.client().await.expect("a connection");
    let indexes: Vec<String> = client
        .query(
            "SELECT indexname::TEXT FROM pg_indexes WHERE tablename = 'outbox' ORDER BY 1",
            &[],
        )
        .await
        .expect("reads the indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for index in ["outbox_claimed_by", "outbox_claimed_until"] {
        assert!(indexes.iter().any(|i| i == index), "{index} in {indexes:?}");
    }
    let row = client
        .query_one(
            "SELECT c.reloptions::TEXT, a.attcompression::TEXT FROM pg_class c
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'state'
             WHERE c.relname = $1",
            &[&table],
        )
        .await
        .expect("reads the table's settings");
    let (options, compression): (Option<String>, String) = (row.get(0), row.get(1));
    assert_eq!(options.as_deref(), Some("{fillfactor=70}"), "{table}");
    assert_eq!(compression, "l", "{table}.state compressed with lz4");
}

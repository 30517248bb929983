//! What every service's store must do alike, as checks its tests run on
//! each backend (feature `test-support`).

use message_bus::metrics::METRICS;
use message_bus::Route;
use shared_messages::history::HistoryEvent;
use shared_messages::Envelope;

use super::{Backend, Database, OnDatabase, StoreError};

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

/// Stores an outbox row whose envelope is not JSON (`not json`) in `db`.
pub async fn store_undecodable_outbox_row(db: &dyn Database) {
    match db.backend() {
        Backend::Sqlite(sqlite) => sqlite.blocking(|conn| {
            conn.execute(
                "INSERT INTO outbox (exchange, routing_key, mandatory, envelope, created_at)
                 VALUES ('test.exchange', 'test.key', 1, ?1, ?2)",
                rusqlite::params![b"not json".to_vec(), chrono::Utc::now().to_rfc3339()],
            )?;
            Ok(())
        }),
        Backend::Postgres(postgres) => {
            let client = postgres.client().await.expect("a connection");
            client
                .execute(
                    "INSERT INTO outbox (exchange, routing_key, mandatory, envelope)
                     VALUES ('test.exchange', 'test.key', true, 'not json')",
                    &[],
                )
                .await
                .map(drop)
                .map_err(StoreError::from)
        }
    }
    .expect("stores a row that does not decode");
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

/// `store`'s outbox holds the messages of `sent` (the `(route, envelope)`s
/// of some writes, in the order written) and nothing else, in the order
/// the relay sends them; answers how many.
pub async fn outbox_holds<'a, S: OnDatabase + ?Sized>(
    store: &S,
    sent: impl IntoIterator<Item = &'a (Route, Envelope)>,
    what: &str,
) -> usize {
    let sent: Vec<uuid::Uuid> = sent.into_iter().map(|(_, e)| e.message_id).collect();
    let pending: Vec<uuid::Uuid> = store
        .outbox()
        .pending(sent.len() + 1)
        .await
        .expect("the outbox reads")
        .into_iter()
        .map(|m| m.envelope.message_id)
        .collect();
    assert_eq!(pending, sent, "{what}");
    sent.len()
}

/// A history as stored is the entries `written`: the same kinds in the
/// same order, numbered from 1.
pub fn history_is(stored: &[HistoryEvent], written: &[&str], what: &str) {
    let kinds: Vec<&str> = stored.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, written, "{what}");
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    let numbered: Vec<u64> = (1..=written.len() as u64).collect();
    assert_eq!(seqs, numbered, "{what}: numbered from 1");
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

/// Checks that the migrations `schema` embeds are the ones `released`
/// lists (a service's `migrations/released.lock`): a line per migration,
/// `<backend> <name> <refinery checksum>`, in order of version, `#` for a
/// comment. Refinery refuses a database whose applied migrations have
/// changed, so a released migration is never edited, only followed by a
/// new one, which adds its line.
pub fn migrations_are_as_released(schema: &super::schema::Schema, released: &str) {
    let lines = |backend: &str, runner| -> Vec<String> {
        in_order(runner)
            .iter()
            .map(|m| format!("{backend} {m} {}", m.checksum()))
            .collect()
    };
    let mut embedded = lines("sqlite", schema.sqlite);
    embedded.extend(lines("postgres", schema.postgres));
    let released: Vec<&str> = released
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        embedded,
        released,
        "the migrations embedded, by checksum, against those released:\n{}",
        embedded.join("\n")
    );
}

/// The SQL of the migrations `runner` holds up to version `last`, in
/// order: the schema an older release left, for a test to build by hand.
pub fn migrations_up_to(runner: fn() -> refinery::Runner, last: i32) -> String {
    in_order(runner)
        .iter()
        .filter(|m| m.version() <= last)
        .filter_map(|m| m.sql())
        .collect()
}

/// The migrations of `runner` by version (embedded, they come in the
/// order their files were listed).
fn in_order(runner: fn() -> refinery::Runner) -> Vec<refinery::Migration> {
    let mut migrations = runner().get_migrations().clone();
    migrations.sort_by_key(|m| m.version());
    migrations
}

/// `writes` cut, in order, into batches of 1 to 12 whose sizes `rng`
/// draws: a group commit's transactions of any size, for a check that
/// the batches change nothing.
pub fn random_batches<'a, W>(rng: &mut impl rand::Rng, writes: &'a [W]) -> Vec<&'a [W]> {
    let mut batches = Vec::new();
    let mut rest = writes;
    while !rest.is_empty() {
        let (batch, after) = rest.split_at(rng.random_range(1..=rest.len().min(12)));
        batches.push(batch);
        rest = after;
    }
    batches
}

/// Holds the SQLite thread of `db` busy until dropped: a call that needs
/// the thread waits till then (for a check of what is answered without it).
pub struct HeldThread(Option<std::sync::mpsc::Sender<()>>);

impl HeldThread {
    /// Returns once the thread is busy.
    pub async fn hold(db: &super::Sqlite) -> Self {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, busy) = tokio::sync::oneshot::channel();
        let db = db.clone();
        tokio::spawn(async move {
            db.call(move |_| {
                let _ = started.send(());
                let _ = held.recv_timeout(std::time::Duration::from_secs(10));
                Ok(())
            })
            .await
        });
        busy.await.expect("the SQLite thread is held");
        Self(Some(release))
    }
}

impl Drop for HeldThread {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            let _ = release.send(());
        }
    }
}

/// Whether `read` answers within 200 ms (while a [`HeldThread`] holds the
/// store's thread: whether it needs that thread).
pub async fn answers_at_once<T>(read: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(std::time::Duration::from_millis(200), read)
        .await
        .ok()
}

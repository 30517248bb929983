//! The outbox table, written once for both services and both backends:
//! the rows a transaction adds ([`insert_sqlite`], [`insert_postgres`],
//! inside the caller's transaction) and what the relay reads and clears
//! ([`OutboxStore`] for [`Sqlite`] and [`Postgres`]).
//!
//! On PostgreSQL, every row is claimed by a short lease, so two replicas'
//! relays do not send the same rows at once. A row is born claimed by the
//! process that writes it ([`INSERT_POSTGRES`]), and that process's relay
//! reads its own rows without writing them again. Rows nobody holds (a
//! claim that lapsed because its process died or fell behind, a row
//! written by another client) are claimed by whichever relay sweeps next
//! (`FOR UPDATE SKIP LOCKED`, then the lease), at most every
//! [`SWEEP_EVERY`]. The relay's claims and deletes commit without waiting
//! for their WAL flush ([`Postgres::relay_client`](super::Postgres)):
//! losing one in a crash of PostgreSQL only sends rows again.

use chrono::Utc;
use futures::future::BoxFuture;
use message_bus::outbox::{OutboxMessage, OutboxStore, Undecodable};
use message_bus::Route;
use shared_messages::Envelope;

use super::{quarantine, Postgres, Sqlite, StoreError};

/// How long a claim on outbox rows keeps other replicas off them: the
/// claim a row is written with, and a sweep's. A batch is confirmed well
/// within this; a claim left by a replica that died delays its rows by at
/// most this much. (A macro, for the statements built with `concat!`.)
macro_rules! claim_lease {
    () => {
        "10 seconds"
    };
}

/// The setting that names, on each of a store's connections, the process
/// whose rows it writes ([`Postgres`](super::Postgres)'s `owner`).
pub(crate) const WRITER_SETTING: &str = "outbox.writer";

/// How often a relay looks for rows nobody holds: written by a process
/// that died, or whose claim lapsed. Its own rows it reads every round.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The messages a transition sends, inside the caller's SQLite
/// transaction.
pub fn insert_sqlite(
    conn: &rusqlite::Connection,
    messages: &[(Route, Envelope)],
) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    let now = Utc::now().to_rfc3339();
    let mut insert = conn.prepare_cached(
        "INSERT INTO outbox (exchange, routing_key, mandatory, envelope, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (route, envelope) in messages {
        insert.execute(rusqlite::params![
            route.exchange,
            route.routing_key,
            route.mandatory,
            envelope.to_json(),
            now
        ])?;
    }
    Ok(())
}

/// The messages a transition sends, inside the caller's PostgreSQL
/// transaction: one statement ([`INSERT_POSTGRES`]).
pub async fn insert_postgres(
    client: &impl tokio_postgres::GenericClient,
    messages: &[(Route, Envelope)],
) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    let columns = Columns::of(messages);
    client.execute(INSERT_POSTGRES, &columns.params()).await?;
    Ok(())
}

/// The statement [`insert_pipelined`] and [`insert_postgres`] run, to
/// prepare with [`prepared`](super::postgres::prepared): all the rows of a
/// transaction in one statement, one array per column. `INSERT ... SELECT`
/// over `unnest` inserts the rows in the order of the arrays and takes
/// each row's `seq` (its column default, `nextval`) as it inserts it, so
/// the rows get their `seq` in the order given, which is the order the
/// relay publishes them in. Each row is born claimed by the writing
/// process (its connection's `outbox.writer`; a connection without it
/// writes rows nobody holds: no `claimed_by`, `claimed_until` at
/// `-infinity`), so that process's relay reads it without claiming it
/// again.
pub const INSERT_POSTGRES: &str = concat!(
    "INSERT INTO outbox (exchange, routing_key, mandatory, envelope, claimed_by, claimed_until)
     SELECT u.*, current_setting('outbox.writer', true),
         CASE WHEN current_setting('outbox.writer', true) IS NULL THEN '-infinity'
              ELSE now() + interval '",
    claim_lease!(),
    "' END FROM unnest($1::text[], $2::text[], $3::bool[], $4::bytea[]) AS u"
);

/// The relay's read of the rows its own process holds: a walk along the
/// services' index on `(claimed_by, seq)`. A plain index scan marks the
/// entries of rows already deleted as it passes them, so the next read
/// skips them; a row whose claim lapsed is still read here until another
/// relay's sweep takes it.
const OWN_ROWS: &str = "SELECT seq, exchange, routing_key, mandatory, envelope FROM outbox
     WHERE claimed_by = $1 ORDER BY seq LIMIT $2";

/// The relay's sweep: claims the oldest rows nobody holds. A row without
/// a claim has `claimed_until` at `-infinity` (the column's default in the
/// services' schemas), so the sweep reads one column, which they index.
const SWEEP: &str = concat!(
    "UPDATE outbox SET claimed_by = $1, claimed_until = now() + interval '",
    claim_lease!(),
    "' WHERE seq IN (
         SELECT seq FROM outbox
         WHERE claimed_until <= now()
         ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED)
     RETURNING seq, exchange, routing_key, mandatory, envelope"
);

/// The outbox rows of a transaction as the arrays [`INSERT_POSTGRES`]
/// takes.
struct Columns<'m> {
    exchanges: Vec<&'m str>,
    routing_keys: Vec<&'m str>,
    mandatory: Vec<bool>,
    envelopes: Vec<Vec<u8>>,
}

impl<'m> Columns<'m> {
    fn of(messages: impl IntoIterator<Item = &'m (Route, Envelope)>) -> Self {
        let mut columns = Self {
            exchanges: Vec::new(),
            routing_keys: Vec::new(),
            mandatory: Vec::new(),
            envelopes: Vec::new(),
        };
        for (route, envelope) in messages {
            columns.exchanges.push(&route.exchange);
            columns.routing_keys.push(&route.routing_key);
            columns.mandatory.push(route.mandatory);
            columns.envelopes.push(envelope.to_json());
        }
        columns
    }

    fn is_empty(&self) -> bool {
        self.exchanges.is_empty()
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 4] {
        [
            &self.exchanges,
            &self.routing_keys,
            &self.mandatory,
            &self.envelopes,
        ]
    }
}

/// The messages of a transaction, in the order given (those of one write
/// after those of the write before), as one statement of the caller's
/// [`pipeline`](super::postgres::pipeline) in its transaction `tx`, none
/// when there are no messages; `insert` is [`INSERT_POSTGRES`] prepared.
pub fn insert_pipelined<'a, 'm>(
    into: &mut Vec<super::postgres::Statement<'a>>,
    tx: &'a tokio_postgres::Transaction<'_>,
    insert: &'a tokio_postgres::Statement,
    messages: impl IntoIterator<Item = &'m (Route, Envelope)>,
) where
    'm: 'a,
{
    let columns = Columns::of(messages);
    if columns.is_empty() {
        return;
    }
    into.push(Box::pin(async move {
        super::postgres::execute(tx, insert, columns.params().to_vec()).await
    }));
}

/// Rows stored and not yet confirmed by the broker, on SQLite.
pub fn len_sqlite(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// Rows stored and not yet confirmed by the broker, on PostgreSQL.
pub async fn len_postgres(client: &impl tokio_postgres::GenericClient) -> Result<u64, StoreError> {
    let n: i64 = client
        .query_one("SELECT COUNT(*) FROM outbox", &[])
        .await?
        .get(0);
    Ok(u64::try_from(n).unwrap_or_default())
}

fn pending_sqlite(
    conn: &mut rusqlite::Connection,
    limit: usize,
) -> Result<Vec<OutboxMessage>, StoreError> {
    let raw: Vec<(i64, String, String, bool, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT seq, exchange, routing_key, mandatory, envelope FROM outbox ORDER BY seq LIMIT ?1",
        )?
        .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut messages = Vec::with_capacity(raw.len());
    for (seq, exchange, routing_key, mandatory, body) in raw {
        match Undecodable::decode(seq, &exchange, &routing_key, mandatory, &body) {
            Ok(message) => messages.push(message),
            // Never let one bad row block the rest, nor drop it.
            Err(bad) => {
                let tx = conn.transaction()?;
                tx.execute("DELETE FROM outbox WHERE seq = ?1", [bad.seq])?;
                quarantine::put_sqlite(&tx, &bad.entity_id(), &bad.reason)?;
                tx.commit()?;
                bad.reported();
            }
        }
    }
    Ok(messages)
}

fn remove_sqlite(conn: &mut rusqlite::Connection, seqs: &[i64]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
        for seq in seqs {
            delete.execute([seq])?;
        }
    }
    tx.commit()?;
    Ok(())
}

impl OutboxStore for Sqlite {
    fn pending(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxMessage>, String>> {
        Box::pin(async move {
            self.call(move |conn| pending_sqlite(conn, limit))
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn remove<'a>(&'a self, seqs: &'a [i64]) -> BoxFuture<'a, Result<(), String>> {
        let seqs = seqs.to_vec();
        Box::pin(async move {
            self.call(move |conn| remove_sqlite(conn, &seqs))
                .await
                .map_err(|e| e.to_string())
        })
    }
}

async fn pending_postgres(
    store: &Postgres,
    limit: usize,
) -> Result<Vec<OutboxMessage>, StoreError> {
    let mut client = store.relay_client().await?;
    let wanted = i64::try_from(limit).unwrap_or(i64::MAX);
    let own = client.prepare_cached(OWN_ROWS).await?;
    let mut rows = client.query(&own, &[&store.owner, &wanted]).await?;
    // Due even while the process's own rows fill every batch, so rows left
    // by a replica that died are never starved; again at once while there
    // are more of them than a batch.
    if store.sweep_due() {
        let sweep = client.prepare_cached(SWEEP).await?;
        let swept = client.query(&sweep, &[&store.owner, &wanted]).await?;
        if swept.len() >= limit {
            store.sweep_again();
        }
        rows.extend(swept);
    }
    // RETURNING keeps no order; the relay publishes in seq order. An own
    // row whose claim lapsed is in both reads (the sweep renews it).
    rows.sort_by_key(|row| row.get::<_, i64>(0));
    rows.dedup_by_key(|row| row.get::<_, i64>(0));
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row.get(0);
        match Undecodable::decode(seq, row.get(1), row.get(2), row.get(3), row.get(4)) {
            Ok(message) => messages.push(message),
            // Never let one bad row block the rest, nor drop it.
            Err(bad) => {
                let tx = client.transaction().await?;
                tx.execute("DELETE FROM outbox WHERE seq = $1", &[&seq])
                    .await?;
                quarantine::put_postgres(&*tx, &bad.entity_id(), &bad.reason).await?;
                tx.commit().await?;
                bad.reported();
            }
        }
    }
    // What is past the limit stays claimed by this process, read next round.
    messages.truncate(limit);
    Ok(messages)
}

impl OutboxStore for Postgres {
    fn pending(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxMessage>, String>> {
        Box::pin(async move {
            pending_postgres(self, limit)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn remove<'a>(&'a self, seqs: &'a [i64]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let client = self.relay_client().await.map_err(|e| e.to_string())?;
            let delete = client
                .prepare_cached("DELETE FROM outbox WHERE seq = ANY($1)")
                .await
                .map_err(|e| e.to_string())?;
            client
                .execute(&delete, &[&seqs])
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

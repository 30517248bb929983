//! The reads every service makes of its entity table, a table of
//! `(id TEXT PRIMARY KEY, status TEXT, finished, state TEXT, created_at,
//! ...)` holding each entity's whole state as JSON: one state by id, the
//! unfinished ones for recovery, how many there are in each status. The
//! table's name is the service's; decoding the state is the service's.

use async_trait::async_trait;

use super::{Postgres, Sqlite, StoreError};

/// The unfinished entities recovery restarts, and the rows it cannot
/// read (id, why).
#[derive(Debug)]
pub struct Unfinished<T> {
    pub states: Vec<T>,
    pub unreadable: Vec<(String, String)>,
}

impl<T> Default for Unfinished<T> {
    fn default() -> Self {
        Self {
            states: Vec::new(),
            unreadable: Vec::new(),
        }
    }
}

impl<T> Unfinished<T> {
    /// Reads `rows` (id, state) with `decode`; a row it cannot read is
    /// listed apart, never fails the whole.
    pub fn decode(
        rows: Vec<(String, String)>,
        decode: impl Fn(&str, &str) -> Result<T, StoreError>,
    ) -> Self {
        let mut found = Self::default();
        for (id, json) in rows {
            match decode(&id, &json) {
                Ok(state) => found.states.push(state),
                Err(error) => found.unreadable.push((id, error.to_string())),
            }
        }
        found
    }
}

/// Entity rows as the column arrays a PostgreSQL `unnest` takes, one
/// statement for a whole transaction: the columns every entity table has
/// (`id`, `status`, `finished`, `state`, `created_at`, `updated_at`;
/// times as RFC 3339 text). A service keeps its own columns beside them.
#[derive(Debug, Default)]
pub struct StateRows<'a> {
    pub ids: Vec<&'a str>,
    pub statuses: Vec<&'static str>,
    pub finished: Vec<bool>,
    /// Each entity's whole state, as JSON.
    pub states: Vec<String>,
    pub created: Vec<String>,
    pub updated: Vec<String>,
}

/// One entity's row, as [`StateRows::push`] takes it.
pub struct StateRow<'a> {
    pub id: &'a str,
    pub status: &'static str,
    pub finished: bool,
    pub state: String,
    pub created_at: &'a chrono::DateTime<chrono::Utc>,
    pub updated_at: &'a chrono::DateTime<chrono::Utc>,
}

impl<'a> StateRows<'a> {
    /// Room for `n` rows.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            finished: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
            updated: Vec::with_capacity(n),
        }
    }

    /// Adds `row` at the end of every array.
    pub fn push(&mut self, row: StateRow<'a>) {
        self.ids.push(row.id);
        self.statuses.push(row.status);
        self.finished.push(row.finished);
        self.states.push(row.state);
        self.created.push(row.created_at.to_rfc3339());
        self.updated.push(row.updated_at.to_rfc3339());
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

/// The stored state (JSON) of `id` in `table`, on SQLite.
pub fn state_sqlite(
    conn: &rusqlite::Connection,
    table: &str,
    id: &str,
) -> Result<Option<String>, StoreError> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .prepare_cached(&format!("SELECT state FROM {table} WHERE id = ?1"))?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// The stored state (JSON) of `id` in `table`, on PostgreSQL.
pub async fn state_postgres(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
    id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(client
        .query_opt(&format!("SELECT state FROM {table} WHERE id = $1"), &[&id])
        .await?
        .map(|r| r.get(0)))
}

/// Every unfinished row of `table` (id, state), oldest first, on SQLite.
pub fn unfinished_sqlite(
    conn: &rusqlite::Connection,
    table: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = conn
        .prepare(&format!(
            "SELECT id, state FROM {table} WHERE finished = 0 ORDER BY created_at"
        ))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Every unfinished row of `table` (id, state), oldest first, on
/// PostgreSQL.
pub async fn unfinished_postgres(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(client
        .query(
            &format!("SELECT id, state FROM {table} WHERE NOT finished ORDER BY created_at"),
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// How many rows of `table` there are in each stored status, on SQLite.
pub fn counts_sqlite(
    conn: &rusqlite::Connection,
    table: &str,
) -> Result<Vec<(String, u64)>, StoreError> {
    let rows: Vec<(String, i64)> = conn
        .prepare_cached(&format!(
            "SELECT status, COUNT(*) FROM {table} GROUP BY status"
        ))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows.into_iter().map(|(s, n)| (s, count(n))).collect())
}

/// How many rows of `table` there are in each stored status, on
/// PostgreSQL.
pub async fn counts_postgres(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
) -> Result<Vec<(String, u64)>, StoreError> {
    Ok(client
        .query(
            &format!("SELECT status, COUNT(*) FROM {table} GROUP BY status"),
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), count(r.get(1))))
        .collect())
}

/// How a service reads its state JSON back (`id`, `json`); a row that
/// does not read is [`StoreError::Corrupt`].
pub type Decode<T> = fn(&str, &str) -> Result<T, StoreError>;

/// The entity-table reads, on either backend.
#[async_trait]
pub trait Entities {
    /// The state of `id` in `table`, if stored.
    async fn read_state<T: Send + 'static>(
        &self,
        table: &'static str,
        id: &str,
        decode: Decode<T>,
    ) -> Result<Option<T>, StoreError>;
    /// The unfinished entities of `table`, oldest first, and the rows
    /// that cannot be read.
    async fn read_unfinished<T: Send + 'static>(
        &self,
        table: &'static str,
        decode: Decode<T>,
    ) -> Result<Unfinished<T>, StoreError>;
    /// How many rows of `table` there are in each stored status.
    async fn count_statuses(&self, table: &'static str) -> Result<Vec<(String, u64)>, StoreError>;
}

#[async_trait]
impl Entities for Sqlite {
    async fn read_state<T: Send + 'static>(
        &self,
        table: &'static str,
        id: &str,
        decode: Decode<T>,
    ) -> Result<Option<T>, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            state_sqlite(conn, table, &id)?
                .map(|json| decode(&id, &json))
                .transpose()
        })
        .await
    }

    async fn read_unfinished<T: Send + 'static>(
        &self,
        table: &'static str,
        decode: Decode<T>,
    ) -> Result<Unfinished<T>, StoreError> {
        self.call(move |conn| Ok(Unfinished::decode(unfinished_sqlite(conn, table)?, decode)))
            .await
    }

    async fn count_statuses(&self, table: &'static str) -> Result<Vec<(String, u64)>, StoreError> {
        self.call(move |conn| counts_sqlite(conn, table)).await
    }
}

#[async_trait]
impl Entities for Postgres {
    async fn read_state<T: Send + 'static>(
        &self,
        table: &'static str,
        id: &str,
        decode: Decode<T>,
    ) -> Result<Option<T>, StoreError> {
        let client = self.client().await?;
        state_postgres(&**client, table, id)
            .await?
            .map(|json| decode(id, &json))
            .transpose()
    }

    async fn read_unfinished<T: Send + 'static>(
        &self,
        table: &'static str,
        decode: Decode<T>,
    ) -> Result<Unfinished<T>, StoreError> {
        let client = self.client().await?;
        let rows = unfinished_postgres(&**client, table).await?;
        Ok(Unfinished::decode(rows, decode))
    }

    async fn count_statuses(&self, table: &'static str) -> Result<Vec<(String, u64)>, StoreError> {
        let client = self.client().await?;
        counts_postgres(&**client, table).await
    }
}

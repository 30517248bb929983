//! The quarantine table: rows set aside because they cannot be read (an
//! outbox row that does not decode, a stored entity recovery cannot
//! read), kept with the reason and listed on `GET /quarantine`.
//!
//! ```sql
//! CREATE TABLE quarantine (entity_id TEXT PRIMARY KEY, reason TEXT NOT NULL,
//!     quarantined_at TEXT NOT NULL);
//! ```

use chrono::{DateTime, Utc};

use super::StoreError;

/// A row set aside because it cannot be read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quarantined {
    pub entity_id: String,
    pub reason: String,
    pub quarantined_at: DateTime<Utc>,
}

/// Records (or refreshes) `entity_id` with `reason`; `$1, $2, $3` (or
/// `?1..`) are the id, the reason and the time (RFC 3339).
const UPSERT_PG: &str =
    "INSERT INTO quarantine (entity_id, reason, quarantined_at) VALUES ($1, $2, $3)
     ON CONFLICT (entity_id) DO UPDATE SET reason = excluded.reason,
         quarantined_at = excluded.quarantined_at";
const UPSERT_SQLITE: &str =
    "INSERT INTO quarantine (entity_id, reason, quarantined_at) VALUES (?1, ?2, ?3)
     ON CONFLICT (entity_id) DO UPDATE SET reason = excluded.reason,
         quarantined_at = excluded.quarantined_at";
const LIST: &str =
    "SELECT entity_id, reason, quarantined_at FROM quarantine ORDER BY quarantined_at, entity_id";

fn item(entity_id: String, reason: String, at: &str) -> Result<Quarantined, StoreError> {
    let quarantined_at = DateTime::parse_from_rfc3339(at)
        .map_err(|e| StoreError::Corrupt {
            id: format!("quarantine entry {entity_id}"),
            reason: e.to_string(),
        })?
        .with_timezone(&Utc);
    Ok(Quarantined {
        entity_id,
        reason,
        quarantined_at,
    })
}

/// Records `entity_id` on SQLite, inside the caller's transaction if any.
pub fn put_sqlite(
    conn: &rusqlite::Connection,
    entity_id: &str,
    reason: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(UPSERT_SQLITE)?
        .execute(rusqlite::params![
            entity_id,
            reason,
            Utc::now().to_rfc3339()
        ])?;
    Ok(())
}

/// Every quarantined row on SQLite, oldest first.
pub fn list_sqlite(conn: &rusqlite::Connection) -> Result<Vec<Quarantined>, StoreError> {
    let raw: Vec<(String, String, String)> = conn
        .prepare_cached(LIST)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    raw.into_iter()
        .map(|(id, reason, at)| item(id, reason, &at))
        .collect()
}

/// Records `entity_id` on PostgreSQL, inside the caller's transaction if
/// any.
pub async fn put_postgres(
    client: &impl tokio_postgres::GenericClient,
    entity_id: &str,
    reason: &str,
) -> Result<(), StoreError> {
    client
        .execute(UPSERT_PG, &[&entity_id, &reason, &Utc::now().to_rfc3339()])
        .await?;
    Ok(())
}

/// Every quarantined row on PostgreSQL, oldest first.
pub async fn list_postgres(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<Quarantined>, StoreError> {
    client
        .query(LIST, &[])
        .await?
        .iter()
        .map(|r| item(r.get(0), r.get(1), r.get(2)))
        .collect()
}

//! History rows: each service keeps its entities' history in a table of
//! `(<key>, seq, kind, at, message_id, detail)`; how an entry's columns
//! are written ([`columns`]) and read back is the same on both backends
//! and in both services.

use shared_messages::history::HistoryEvent;

use super::StoreError;

/// An entry's stored `at`, `message_id` and `detail`.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    /// RFC 3339.
    pub at: String,
    pub message_id: Option<String>,
    /// JSON.
    pub detail: String,
}

/// The stored form of an entry's time, message id and detail.
pub fn columns(
    at: &chrono::DateTime<chrono::Utc>,
    message_id: Option<uuid::Uuid>,
    detail: &serde_json::Value,
) -> Columns {
    Columns {
        at: at.to_rfc3339(),
        message_id: message_id.map(|m| m.to_string()),
        detail: detail.to_string(),
    }
}

/// The columns read, in this order, from a history table.
const COLUMNS: &str = "seq, kind, at, message_id, detail";

/// One stored history row of `id` as a [`HistoryEvent`]; a row that does
/// not read back is [`StoreError::Corrupt`].
pub fn event(
    id: &str,
    seq: i64,
    kind: String,
    at: &str,
    message_id: Option<&str>,
    detail: &str,
) -> Result<HistoryEvent, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        id: format!("{id} (history entry {seq})"),
        reason,
    };
    Ok(HistoryEvent {
        seq: u64::try_from(seq).map_err(|e| corrupt(e.to_string()))?,
        kind,
        at: chrono::DateTime::parse_from_rfc3339(at)
            .map_err(|e| corrupt(e.to_string()))?
            .with_timezone(&chrono::Utc),
        message_id: message_id
            .map(uuid::Uuid::parse_str)
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?,
        detail: serde_json::from_str(detail).map_err(|e| corrupt(e.to_string()))?,
    })
}

/// The history of `id` in `table` (keyed by `key`), oldest first, on
/// SQLite.
pub fn read_sqlite(
    conn: &rusqlite::Connection,
    table: &str,
    key: &str,
    id: &str,
) -> Result<Vec<HistoryEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {table} WHERE {key} = ?1 ORDER BY seq"
    ))?;
    let raw: Vec<(i64, String, String, Option<String>, String)> = stmt
        .query_map([id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    raw.into_iter()
        .map(|(seq, kind, at, message_id, detail)| {
            event(id, seq, kind, &at, message_id.as_deref(), &detail)
        })
        .collect()
}

/// The history of `id` in `table` (keyed by `key`), oldest first, on
/// PostgreSQL.
pub async fn read_postgres(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
    key: &str,
    id: &str,
) -> Result<Vec<HistoryEvent>, StoreError> {
    client
        .query(
            &format!("SELECT {COLUMNS} FROM {table} WHERE {key} = $1 ORDER BY seq"),
            &[&id],
        )
        .await?
        .iter()
        .map(|r| event(id, r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

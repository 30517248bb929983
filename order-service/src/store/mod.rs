//! Where orders live: one small interface, SQLite or PostgreSQL behind it.
//!
//! Each order is one row: its id, status, whether it is finished, and its
//! whole state as JSON. Signals an order sends are written to the outbox
//! table in the same transaction as the state that caused them; the
//! outbox relay (`message_bus::outbox`) publishes and removes them.
//! [`open`] picks the implementation from `STORE_URL`.

mod pg_worker;
mod postgres;
mod sqlite;

pub use self::postgres::PostgresStore;
pub use sqlite::SqliteStore;

use std::sync::Arc;

use message_bus::group_commit::{BatchStore, CommitError, GroupCommit};
use message_bus::outbox::OutboxStore;
use message_bus::Route;
use shared_messages::history::HistoryEvent;
use shared_messages::Envelope;

use crate::config::StoreLocation;
use crate::metrics::METRICS;
use crate::workflow::{OrderState, OrderStatus};

/// An open store, seen as the order store and as the relay's outbox.
pub struct Opened {
    pub store: Arc<dyn Store>,
    pub outbox: Arc<dyn OutboxStore>,
}

/// Opens (creating and migrating) the store at `location`.
pub fn open(location: &StoreLocation) -> Result<Opened, StoreError> {
    fn both<S: Store>(store: S) -> Opened {
        let store = Arc::new(store);
        Opened {
            store: store.clone(),
            outbox: store,
        }
    }
    Ok(match location {
        StoreLocation::Postgres(url) => both(PostgresStore::open(url)?),
        sqlite => both(SqliteStore::open(sqlite)?),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("order {0} already exists")]
    Duplicate(String),
    #[error("store error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("store error: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("stored order {id} cannot be read: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("cannot open the store: {0}")]
    Open(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl From<CommitError<StoreError>> for StoreError {
    fn from(error: CommitError<StoreError>) -> Self {
        match error {
            CommitError::Store(error) => error,
            CommitError::Stopped => StoreError::Unavailable("the store writer has stopped".into()),
            CommitError::Panicked => {
                StoreError::Unavailable("the store failed while writing (a panic)".into())
            }
        }
    }
}

/// One write for the group commit: a new order (`insert`, failing with
/// `Duplicate` when another order has the id; the same order stored again,
/// a write retried after its commit's outcome was lost, succeeds), or a transition of an existing one
/// with the signals it sends; either with its history entries.
#[derive(Debug, Clone)]
pub struct Write {
    pub state: OrderState,
    pub outbox: Vec<(Route, Envelope)>,
    pub events: Vec<HistoryEvent>,
    pub insert: bool,
}

/// A stored order that cannot be read (e.g. written by a version with
/// other fields); recovery sets it aside instead of failing.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub order_id: String,
    pub reason: String,
}

/// The open orders recovery restarts, and those it cannot read.
#[derive(Debug, Default)]
pub struct Unfinished {
    pub orders: Vec<OrderState>,
    pub unreadable: Vec<Unreadable>,
}

/// The order store as the group commit sees it.
pub struct Batched(pub Arc<dyn Store>);

impl BatchStore for Batched {
    type Write = Write;
    type Error = StoreError;

    fn save_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        METRICS.store_write("save", || self.0.save_all(writes))
    }

    fn has_messages(write: &Write) -> bool {
        !write.outbox.is_empty()
    }
}

/// The group commit the actors write through (see
/// [`message_bus::group_commit`]).
pub type Writer = GroupCommit<Batched>;

/// One page of orders, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub orders: Vec<OrderState>,
    pub total: u64,
}

/// A row set aside because it cannot be read (`GET /quarantine`): a stored
/// order at recovery (kept in memory by the registry) or an outbox row that
/// does not decode (moved to the store's `quarantine` table).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quarantined {
    pub entity_id: String,
    pub reason: String,
    pub quarantined_at: chrono::DateTime<chrono::Utc>,
}

pub trait Store: OutboxStore {
    /// Stores a new order and its first history entries; fails with
    /// `Duplicate` when another order has the id. Idempotent: the same
    /// order stored again succeeds and leaves the one row as it is.
    fn insert(&self, state: &OrderState, events: &[HistoryEvent]) -> Result<(), StoreError>;
    /// Stores a transition, the signals it causes and its history
    /// entries, atomically.
    fn save(
        &self,
        state: &OrderState,
        outbox: &[(Route, Envelope)],
        events: &[HistoryEvent],
    ) -> Result<(), StoreError>;
    /// Stores every write (inserts and transitions) in one transaction:
    /// all of them or none (the group commit of [`Writer`]).
    fn save_all(&self, writes: &[Write]) -> Result<(), StoreError>;
    fn get(&self, order_id: &str) -> Result<Option<OrderState>, StoreError>;
    fn list(
        &self,
        status: Option<OrderStatus>,
        limit: u32,
        offset: u64,
    ) -> Result<Page, StoreError>;
    /// Every order that is not shipped, cancelled or failed; rows that
    /// cannot be read are listed apart, never fail the whole.
    fn unfinished(&self) -> Result<Unfinished, StoreError>;
    /// The order's history, oldest first (empty for an unknown order).
    fn history(&self, order_id: &str) -> Result<Vec<HistoryEvent>, StoreError>;
    /// How many orders are in each status (statuses with none are left out).
    fn count_by_status(&self) -> Result<Vec<(OrderStatus, u64)>, StoreError>;
    /// Signals stored and not yet confirmed by the broker.
    fn outbox_len(&self) -> Result<u64, StoreError>;
    /// Succeeds when the store answers.
    fn ping(&self) -> Result<(), StoreError>;
    /// Outbox rows moved to the quarantine because they do not decode,
    /// oldest first.
    fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError>;
}

/// A history row as read back from either store.
fn history_event(
    order_id: &str,
    seq: i64,
    kind: String,
    at: &str,
    message_id: Option<&str>,
    detail: &str,
) -> Result<HistoryEvent, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        id: format!("{order_id} (history entry {seq})"),
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

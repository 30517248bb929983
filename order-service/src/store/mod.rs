//! Where orders live: one small interface, SQLite or PostgreSQL behind it.
//!
//! Each order is one row: its id, status, whether it is finished, and its
//! whole state as JSON. Signals an order sends are written to the outbox
//! table in the same transaction as the state that caused them; the
//! outbox relay (`shared_messages::bus::outbox`) publishes and removes them.
//! [`open`] picks the implementation from `STORE_URL`.

mod pg_worker;
mod postgres;
mod sqlite;

pub use self::postgres::PostgresStore;
pub use sqlite::SqliteStore;

use std::sync::Arc;

use shared_messages::bus::group_commit::{BatchStore, CommitError, GroupCommit};
use shared_messages::bus::outbox::OutboxStore;
use shared_messages::bus::Route;
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
/// `Duplicate` when the id is taken), or a transition of an existing one
/// with the signals it sends.
#[derive(Debug, Clone)]
pub struct Write {
    pub state: OrderState,
    pub outbox: Vec<(Route, Envelope)>,
    pub insert: bool,
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
/// [`shared_messages::bus::group_commit`]).
pub type Writer = GroupCommit<Batched>;

/// One page of orders, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub orders: Vec<OrderState>,
    pub total: u64,
}

pub trait Store: OutboxStore {
    /// Stores a new order; fails with `Duplicate` when the id is taken.
    fn insert(&self, state: &OrderState) -> Result<(), StoreError>;
    /// Stores a transition and the signals it causes, atomically.
    fn save(&self, state: &OrderState, outbox: &[(Route, Envelope)]) -> Result<(), StoreError>;
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
    /// Every order that is not shipped, cancelled or failed.
    fn unfinished(&self) -> Result<Vec<OrderState>, StoreError>;
    /// How many orders are in each status (statuses with none are left out).
    fn count_by_status(&self) -> Result<Vec<(OrderStatus, u64)>, StoreError>;
    /// Signals stored and not yet confirmed by the broker.
    fn outbox_len(&self) -> Result<u64, StoreError>;
    /// Succeeds when the store answers.
    fn ping(&self) -> Result<(), StoreError>;
}

//! Where fulfillments live between messages and across restarts.
//!
//! One small interface, [`Store`]: a transition and the events it causes
//! are written in one transaction ([`Store::save`]), and the outbox half
//! ([`OutboxStore`]) is what the relay publishes from. [`sqlite`] is the
//! default implementation, [`postgres`] the one for shared state; [`open`]
//! picks one from `STORE_URL`.

mod pg_worker;
pub mod postgres;
pub mod sqlite;
pub mod writer;

use std::sync::Arc;

use shared_messages::bus::outbox::OutboxStore;
use shared_messages::bus::Route;
use shared_messages::messages::FulfillmentStatus;
use shared_messages::Envelope;

use crate::config;
use crate::workflow::Fulfillment;

pub use self::postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use writer::Writer;

/// One transition to store: the new state and the events it causes.
#[derive(Debug, Clone)]
pub struct Write {
    pub state: Fulfillment,
    pub events: Vec<(Route, Envelope)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store error: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored state of {id} cannot be read: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("unsupported STORE_URL {0:?}: use sqlite://<path> or postgres://...")]
    UnsupportedUrl(String),
    #[error("cannot create the store directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
}

/// The fulfillment store.
pub trait Store: OutboxStore {
    /// One fulfillment, finished or not.
    fn load(&self, id: &str) -> Result<Option<Fulfillment>, StoreError>;
    /// Stores `state` and appends `events` to the outbox, atomically.
    fn save(&self, state: &Fulfillment, events: &[(Route, Envelope)]) -> Result<(), StoreError>;
    /// Stores every write in one transaction: all of them or none (the
    /// group commit of [`Writer`]).
    fn save_all(&self, writes: &[Write]) -> Result<(), StoreError>;
    /// Every fulfillment that has not reached a final status.
    fn unfinished(&self) -> Result<Vec<Fulfillment>, StoreError>;
    /// Newest first, optionally of one status.
    fn list(
        &self,
        status: Option<FulfillmentStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Fulfillment>, StoreError>;
    /// How many fulfillments there are of each stored status.
    fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// Events stored but not yet confirmed by the broker.
    fn outbox_len(&self) -> Result<u64, StoreError>;
    /// The store answers.
    fn ping(&self) -> Result<(), StoreError>;
}

/// An open store, seen as the fulfillment store and as the relay's outbox.
pub struct Opened {
    pub store: Arc<dyn Store>,
    pub outbox: Arc<dyn OutboxStore>,
}

/// Opens (creating and migrating) the store named by `url`.
pub fn open(url: &str) -> Result<Opened, StoreError> {
    fn both<S: Store>(store: S) -> Opened {
        let store = Arc::new(store);
        Opened {
            store: store.clone(),
            outbox: store,
        }
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(both(PostgresStore::open(url)?));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::UnsupportedUrl(config::redact(url)))?;
    Ok(both(SqliteStore::open(path)?))
}

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

use std::sync::Arc;

use shared_messages::bus::group_commit::{BatchStore, CommitError, GroupCommit};
use shared_messages::bus::outbox::OutboxStore;
use shared_messages::bus::Route;
use shared_messages::messages::FulfillmentStatus;
use shared_messages::Envelope;

use crate::config;
use crate::metrics::METRICS;
use crate::workflow::Fulfillment;

pub use self::postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The group commit the actors write through (see
/// [`shared_messages::bus::group_commit`]).
pub type Writer = GroupCommit<Batched>;

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

/// The fulfillment store as the group commit sees it.
pub struct Batched(pub Arc<dyn Store>);

impl BatchStore for Batched {
    type Write = Write;
    type Error = StoreError;

    fn save_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        METRICS.store_write("save", || self.0.save_all(writes))
    }

    fn has_messages(write: &Write) -> bool {
        !write.events.is_empty()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use crate::workflow::{create, Input, Timing};
    use chrono::Utc;
    use shared_messages::bus::outbox::OutboxSignal;
    use shared_messages::bus::outbox::OutboxStore;
    use shared_messages::messages::{Address, FulfillmentRequest, OrderItem};
    use std::sync::Arc;
    use std::time::Duration;

    fn write(n: usize) -> Write {
        let request = FulfillmentRequest {
            order_id: format!("ORD-{n}"),
            customer_id: "c-1".into(),
            customer_name: None,
            customer_email: None,
            items: vec![OrderItem {
                product_id: "p".into(),
                product_name: "Thing".into(),
                quantity: 1,
                price: 1.0,
            }],
            shipping_address: Address {
                street: "1 Main St".into(),
                city: "Springfield".into(),
                state: "IL".into(),
                zip_code: "62701".into(),
                country: "USA".into(),
            },
        };
        let decision = create(
            &format!("fulfillment-ORD-{n}"),
            &Input::Start(request),
            None,
            Utc::now(),
            Timing {
                step_delay: Duration::ZERO,
            },
        );
        Write {
            state: decision.state.expect("created"),
            events: decision.events,
        }
    }

    #[tokio::test]
    async fn concurrent_writes_are_all_stored_with_their_events() {
        let store = Arc::new(SqliteStore::open(":memory:").expect("opens"));
        let writer = Writer::start("test-writer", Batched(store.clone()), OutboxSignal::new())
            .expect("starts");
        let saves = (0..50).map(|n| writer.save(write(n)));
        let stored = futures::future::join_all(saves).await;
        for (n, result) in stored.into_iter().enumerate() {
            let state = result.expect("stored").state;
            assert_eq!(state.id, format!("fulfillment-ORD-{n}"));
            assert_eq!(
                store.load(&state.id).expect("reads"),
                Some(state),
                "stored as given"
            );
        }
        assert_eq!(
            store.pending(100).expect("reads").len(),
            50,
            "one event each"
        );
    }
}

//! Where orders live: one small interface, SQLite or PostgreSQL behind it.
//!
//! Each order is one row: its id, status, whether it is finished, and its
//! whole state as JSON. Signals an order sends are written to the outbox
//! table in the same transaction as the state that caused them; the
//! outbox relay (`message_bus::outbox`) publishes and removes them.
//! [`open`] picks the implementation from `STORE_URL`. Every call is async:
//! SQLite runs on tokio's blocking pool, PostgreSQL on a connection pool
//! (the service kit's [`service_kit::store`]). Errors are the kit's
//! [`StoreError`]; schemas are in `migrations/`.

mod postgres;
mod sqlite;

pub use service_kit::store::{OnDatabase, Quarantined, StoreError};
pub use sqlite::SqliteStore;

use std::sync::Arc;

use async_trait::async_trait;
use message_bus::Route;
use service_kit::store::entities;
use shared_messages::history::HistoryEvent;
use shared_messages::Envelope;

use crate::config::StoreLocation;
use crate::metrics::METRICS;
use crate::workflow::{OrderState, OrderStatus};

service_kit::embed_schema!("orders");

/// An open store, seen as the order store and as the relay's outbox.
pub type Opened = service_kit::store::Opened<dyn Store>;

/// Opens (creating and migrating) the store at `location`.
pub async fn open(location: &StoreLocation) -> Result<Opened, StoreError> {
    let store: Arc<dyn Store> = match location {
        StoreLocation::Postgres(url) => Arc::new(SCHEMA.open_postgres(url).await?),
        sqlite => Arc::new(SqliteStore::open(sqlite)?),
    };
    Ok(Opened::new(store))
}

/// One write for the group commit: a new order (`insert`, failing with
/// `Duplicate` when another order has the id; the same order stored again,
/// a write retried after its commit's outcome was lost, succeeds), or a transition of an existing one
/// with the signals it sends; either with its history entries.
#[derive(Debug, Clone)]
pub struct Write {
    pub state: OrderState,
    /// A new order rather than a transition of a stored one.
    pub insert: bool,
    /// The signals the transition sends, stored in the outbox.
    pub outbox: Vec<(Route, Envelope)>,
    /// Its history entries.
    pub events: Vec<HistoryEvent>,
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

impl From<entities::Unfinished<OrderState>> for Unfinished {
    fn from(found: entities::Unfinished<OrderState>) -> Self {
        Self {
            orders: found.states,
            unreadable: found
                .unreadable
                .into_iter()
                .map(|(order_id, reason)| Unreadable { order_id, reason })
                .collect(),
        }
    }
}

/// An order's stored state.
fn encode(state: &OrderState) -> String {
    serde_json::to_string(state).expect("order state always serializes to JSON")
}

/// An order's state read back from its row.
fn decode(id: &str, json: &str) -> Result<OrderState, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        id: format!("order {id}"),
        reason: e.to_string(),
    })
}

/// Counts by stored status, as order statuses (an unknown one left out).
fn counts(stored: Vec<(String, u64)>) -> Vec<(OrderStatus, u64)> {
    stored
        .into_iter()
        .filter_map(|(status, n)| Some((OrderStatus::parse(&status)?, n)))
        .collect()
}

service_kit::group_commit_adapter! {
    store: Store, write: Write, messages: outbox, metrics: METRICS
}

/// One page of orders, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub orders: Vec<OrderState>,
    pub total: u64,
}

/// The order store; the outbox, the quarantine and `ping` are the kit's
/// ([`OnDatabase`]). Rows set aside because they cannot be read are
/// [`Quarantined`]: a stored order at recovery (kept in memory by the
/// registry) or an outbox row that does not decode (moved to the store's
/// `quarantine` table by the kit's outbox).
#[async_trait]
pub trait Store: OnDatabase {
    /// Stores a new order and its first history entries; fails with
    /// `Duplicate` when another order has the id. Idempotent: the same
    /// order stored again succeeds and leaves the one row as it is.
    async fn insert(&self, state: &OrderState, events: &[HistoryEvent]) -> Result<(), StoreError>;
    /// Stores a transition, the signals it causes and its history
    /// entries, atomically.
    async fn save(
        &self,
        state: &OrderState,
        outbox: &[(Route, Envelope)],
        events: &[HistoryEvent],
    ) -> Result<(), StoreError>;
    /// Stores every write (inserts and transitions) in one transaction:
    /// all of them or none (the group commit of [`Writer`]).
    async fn save_all(&self, writes: &[Write]) -> Result<(), StoreError>;
    async fn get(&self, order_id: &str) -> Result<Option<OrderState>, StoreError>;
    async fn list(
        &self,
        status: Option<OrderStatus>,
        limit: u32,
        offset: u64,
    ) -> Result<Page, StoreError>;
    /// Every order that is not shipped, cancelled or failed; rows that
    /// cannot be read are listed apart, never fail the whole.
    async fn unfinished(&self) -> Result<Unfinished, StoreError>;
    /// The order's history, oldest first (empty for an unknown order).
    async fn history(&self, order_id: &str) -> Result<Vec<HistoryEvent>, StoreError>;
    /// How many orders are in each status (statuses with none are left out).
    async fn count_by_status(&self) -> Result<Vec<(OrderStatus, u64)>, StoreError>;
}

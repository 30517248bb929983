//! What every store answers the same way, whatever its own tables: its
//! outbox (as the relay reads it and how long it is), the quarantine, and
//! whether the database answers. [`Database`] is implemented once per
//! backend ([`Sqlite`], [`Postgres`]); a service's store gets the same
//! calls by naming its database ([`OnDatabase::db`]).

use std::sync::Arc;

use async_trait::async_trait;
use message_bus::outbox::OutboxStore;

use super::{outbox, quarantine, Postgres, Quarantined, Sqlite, StoreError};

/// The calls a database answers the same way for every service.
#[async_trait]
pub trait Database: Send + Sync + 'static {
    /// The outbox, as the relay reads it.
    fn outbox(&self) -> Arc<dyn OutboxStore>;
    /// Messages stored and not yet confirmed by the broker.
    async fn outbox_len(&self) -> Result<u64, StoreError>;
    /// Succeeds when the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Records (or refreshes) a row set aside because it cannot be read.
    async fn quarantine(&self, entity_id: &str, reason: &str) -> Result<(), StoreError>;
    /// Every quarantined row, oldest first.
    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError>;
    /// Which database this is, for what only one backend does.
    fn backend(&self) -> Backend<'_>;
}

/// One of the kit's databases, by backend.
pub enum Backend<'a> {
    Sqlite(&'a Sqlite),
    Postgres(&'a Postgres),
}

/// A service's store on one of the kit's databases: the [`Database`]
/// calls, answered by that database.
#[async_trait]
pub trait OnDatabase: Send + Sync + 'static {
    /// The database the store's tables are in.
    fn db(&self) -> &dyn Database;
    /// The outbox half, as the relay reads it.
    fn outbox(&self) -> Arc<dyn OutboxStore> {
        self.db().outbox()
    }
    /// Messages stored and not yet confirmed by the broker.
    async fn outbox_len(&self) -> Result<u64, StoreError> {
        self.db().outbox_len().await
    }
    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<(), StoreError> {
        self.db().ping().await
    }
    /// Records (or refreshes) an unreadable row.
    async fn quarantine(&self, entity_id: &str, reason: &str) -> Result<(), StoreError> {
        self.db().quarantine(entity_id, reason).await
    }
    /// Rows set aside because they cannot be read (outbox rows that do
    /// not decode, stored entities recovery cannot read), oldest first.
    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.db().quarantined().await
    }
}

#[async_trait]
impl Database for Sqlite {
    fn outbox(&self) -> Arc<dyn OutboxStore> {
        Arc::new(self.clone())
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        self.call(|conn| outbox::len_sqlite(conn)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn quarantine(&self, entity_id: &str, reason: &str) -> Result<(), StoreError> {
        let (id, reason) = (entity_id.to_owned(), reason.to_owned());
        self.call(move |conn| quarantine::put_sqlite(conn, &id, &reason))
            .await
    }

    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.call(|conn| quarantine::list_sqlite(conn)).await
    }

    fn backend(&self) -> Backend<'_> {
        Backend::Sqlite(self)
    }
}

#[async_trait]
impl Database for Postgres {
    fn outbox(&self) -> Arc<dyn OutboxStore> {
        Arc::new(self.clone())
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        outbox::len_postgres(&**client).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn quarantine(&self, entity_id: &str, reason: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        quarantine::put_postgres(&**client, entity_id, reason).await
    }

    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let client = self.client().await?;
        quarantine::list_postgres(&**client).await
    }

    fn backend(&self) -> Backend<'_> {
        Backend::Postgres(self)
    }
}

/// A service's PostgreSQL store is the pool itself (its queries are on
/// the service's own store trait, implemented for [`Postgres`]).
impl OnDatabase for Postgres {
    fn db(&self) -> &dyn Database {
        self
    }
}

/// An open store, seen as the service's store (`S`, its `dyn Store`) and
/// as the relay's outbox.
pub struct Opened<S: ?Sized> {
    pub store: Arc<S>,
    pub outbox: Arc<dyn OutboxStore>,
}

impl<S: OnDatabase + ?Sized> Opened<S> {
    pub fn new(store: Arc<S>) -> Self {
        Self {
            outbox: store.outbox(),
            store,
        }
    }
}

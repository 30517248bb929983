//! One error vocabulary for both services' stores.

use super::group_commit::CommitError;

/// Why a store call failed. A service answers [`StoreError::Unavailable`]
/// (and [`StoreError::Open`]) with 503 `store unavailable`; a
/// [`StoreError::Corrupt`] row is its own kind (set aside, never retried
/// as if the store were down).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another entity already has the id.
    #[error("{0} already exists")]
    Duplicate(String),
    /// A stored row does not read back (written by a version with other
    /// fields, or damaged).
    #[error("stored {id} cannot be read: {reason}")]
    Corrupt { id: String, reason: String },
    /// The database did not answer, or refused the statement.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store cannot be opened (a bad location, a failed migration).
    #[error("cannot open the store: {0}")]
    Open(String),
    /// The write was refused because this replica no longer holds the
    /// partition's lease at the epoch it was given
    /// ([`check_fences`](crate::partitions::check_fences)). Not retried:
    /// the partition's work belongs to another replica now.
    #[error(transparent)]
    Fenced(#[from] crate::partitions::Fenced),
}

impl StoreError {
    /// A failure of the database, described by `reason`.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable(reason.into().into())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Unavailable(Box::new(error))
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Unavailable(Box::new(error))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Self::Unavailable(Box::new(error))
    }
}

impl From<CommitError<StoreError>> for StoreError {
    fn from(error: CommitError<StoreError>) -> Self {
        match error {
            CommitError::Store(error) => error,
            CommitError::Stopped => Self::unavailable("the store writer has stopped"),
            CommitError::Panicked => Self::unavailable("the store failed while writing (a panic)"),
        }
    }
}

//! The store plumbing both services share, for SQLite and PostgreSQL.
//!
//! A service's store holds its own tables and queries; what sits under
//! them is here, written once:
//!
//! | module | what |
//! |---|---|
//! | [`error`] | [`StoreError`], the one store error vocabulary |
//! | [`database`] | the calls every store answers alike (outbox, quarantine, ping), once per backend |
//! | [`sqlite`] | the SQLite connection (WAL), its calls on a thread of its own |
//! | [`postgres`] | the PostgreSQL pool (deadpool on tokio-postgres, TLS by `sslmode`), a transaction's statements as one pipeline |
//! | [`schema`] | a service's migrations and opening its store: connect, then migrate |
//! | [`migrate`] | schema migrations by refinery, taking over databases migrated before it |
//! | [`outbox`] | the outbox table's SQL and [`OutboxStore`](message_bus::outbox::OutboxStore) for both backends |
//! | [`entities`] | the reads every service makes of its entity table (state by id, unfinished, counts) |
//! | [`quarantine`] | the quarantine table: rows set aside because they cannot be read |
//! | [`history`] | reading history rows back into [`HistoryEvent`](shared_messages::history::HistoryEvent)s |
//! | [`group_commit`] | the writer (a task; on SQLite, on the `sqlite` thread) that stores many transitions in one transaction |
//! | `testdb` | a PostgreSQL database per test (feature `test-support`) |
//! | `testing` | checks every service's store must pass, on each backend (feature `test-support`) |

pub mod database;
pub mod entities;
pub mod error;
pub mod group_commit;
pub mod history;
pub mod migrate;
pub mod outbox;
pub mod postgres;
pub mod quarantine;
pub mod recent;
pub mod schema;
pub mod sqlite;
#[cfg(any(test, feature = "test-support"))]
pub mod testdb;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use database::{Backend, Database, OnDatabase, Opened};
pub use error::StoreError;
pub use postgres::{Postgres, WriteGuard};
pub use quarantine::Quarantined;
pub use schema::Schema;
pub use sqlite::Sqlite;

#[cfg(test)]
mod tests;

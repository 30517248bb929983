//! The SQLite connection both services' default store runs on.
//!
//! One connection behind a mutex: SQLite takes one writer at a time anyway,
//! and each statement is a short indexed read or write. Every call runs on
//! tokio's blocking pool ([`Sqlite::call`]), so no actor or HTTP thread
//! waits on the disk. WAL with `synchronous=NORMAL` survives a process
//! crash (`kill -9`) without losing a committed transaction; only a power
//! loss may lose the last few.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use refinery::Runner;
use rusqlite::Connection;

use super::{migrate, StoreError};

/// How long a writer waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An open SQLite database; cheap to clone (one shared connection).
#[derive(Clone)]
pub struct Sqlite {
    conn: Arc<Mutex<Connection>>,
}

impl Sqlite {
    /// Opens the database at `path` (`:memory:` for one in memory),
    /// creating the file and its directory, and brings its schema up to
    /// date with `migrations`.
    pub fn open(path: &Path, migrations: &Runner) -> Result<Self, StoreError> {
        let mut conn = if path == Path::new(":memory:") {
            Connection::open_in_memory()?
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Open(format!("creating {}: {e}", dir.display())))?;
            }
            Connection::open(path)?
        };
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrate::sqlite(&mut conn, migrations)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection, on tokio's blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&conn)))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::unavailable(format!(
                    "a SQLite call failed: {e}"
                )))
            })
    }

    /// Stores each of `writes` by `write`, all in one transaction (all of
    /// them or none), on tokio's blocking pool.
    pub async fn write_all<W: Send + 'static>(
        &self,
        writes: Vec<W>,
        write: fn(&rusqlite::Transaction<'_>, &W) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            for w in &writes {
                write(&tx, w)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Runs `f` on the connection on the calling thread (start-up, tests).
    pub fn blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&mut lock(&self.conn))
    }
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock cannot leave SQLite inconsistent
    // (transactions roll back on drop), so a poisoned lock is still usable.
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

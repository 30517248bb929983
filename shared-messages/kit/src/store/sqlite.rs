//! The SQLite connection both services' default store runs on.
//!
//! One connection, owned by one thread of its own (`sqlite`): SQLite takes
//! one writer at a time anyway, and each statement is a short indexed read
//! or write. [`Sqlite::call`] queues a closure for that thread and awaits
//! its answer, so no actor or HTTP thread waits on the disk. The thread
//! runs every call queued by the time it wakes before it sleeps again, so
//! under load one wake-up serves many calls (the group commit's
//! transactions, the relay's reads, status reads). The group commit's
//! writer itself runs here ([`SqliteWrites`]): one hand-off per
//! transaction, not two. On tokio's blocking pool, which hands each call
//! over on its own, the services made about a fifth fewer orders a second
//! (docs/performance.md).
//!
//! WAL with `synchronous=NORMAL` survives a process crash (`kill -9`)
//! without losing a committed transaction; only a power loss may lose the
//! last few. A SQLite store belongs to one process: [`Sqlite::open`] takes
//! an exclusive lock on `<file>.lock` (released by the OS when the process
//! ends, however it ends), and a second process refuses to start.

use std::fs::{File, TryLockError};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use refinery::Runner;
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{migrate, StoreError};

/// How long a writer waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A call queued for the SQLite thread; it answers through its own channel.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// How a store saves a batch of its group commit's writes on the SQLite
/// thread, all in one transaction (all or none). Given by a store on
/// SQLite ([`BatchStore::on_sqlite`](super::group_commit::BatchStore::on_sqlite)),
/// it lets the group commit's writer run on the SQLite thread itself.
pub struct SqliteWrites<W, E = StoreError> {
    pub db: Sqlite,
    pub save_all: SaveAll<W, E>,
    /// Told of each batch once it has committed, on the SQLite thread
    /// before the writes are answered (so in the order of the commits).
    pub stored: Option<Stored<W>>,
}

/// Saves a batch of writes in one transaction on the connection.
pub type SaveAll<W, E = StoreError> = fn(&mut Connection, &[W]) -> Result<(), E>;

/// Told of a batch of writes that committed.
pub type Stored<W> = Arc<dyn Fn(&[W]) + Send + Sync>;

/// A store's write of its group commit, as it is stored on SQLite.
pub trait SqliteWrite: Clone + Send + 'static {
    /// Stores `write` inside the caller's transaction.
    fn store(tx: &rusqlite::Transaction<'_>, write: &Self) -> Result<(), StoreError>;
}

/// Stores each of `writes` by `write` in one transaction: all or none.
pub fn in_one_transaction<W>(
    conn: &mut Connection,
    writes: &[W],
    write: fn(&rusqlite::Transaction<'_>, &W) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for w in writes {
        write(&tx, w)?;
    }
    tx.commit()?;
    Ok(())
}

/// An open SQLite database; cheap to clone (one shared connection). The
/// thread and the file lock go when the last clone is dropped.
#[derive(Clone)]
pub struct Sqlite {
    conn: Arc<Mutex<Connection>>,
    jobs: mpsc::Sender<Job>,
    /// Held (not read) for the lock on `<file>.lock`.
    _owner: Option<Arc<File>>,
}

impl Sqlite {
    /// Opens the database at `path` (`:memory:` for one in memory),
    /// creating the file and its directory, and brings its schema up to
    /// date with `migrations`. Refuses a file another process has open.
    pub fn open(path: &Path, migrations: &Runner) -> Result<Self, StoreError> {
        let (mut conn, owner) = if path == Path::new(":memory:") {
            (Connection::open_in_memory()?, None)
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Open(format!("creating {}: {e}", dir.display())))?;
            }
            let owner = lock_for_this_process(path)?;
            (Connection::open(path)?, Some(Arc::new(owner)))
        };
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrate::sqlite(&mut conn, migrations)?;
        let conn = Arc::new(Mutex::new(conn));
        let (jobs, queue) = mpsc::channel();
        let thread_conn = conn.clone();
        std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || serve(&thread_conn, &queue))
            .map_err(|e| StoreError::Open(format!("starting the SQLite thread: {e}")))?;
        Ok(Self {
            conn,
            jobs,
            _owner: owner,
        })
    }

    /// Runs `f` on the connection, on the SQLite thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The caller may have gone (a timed-out request); nothing to tell.
            let _ = answer.send(f(conn));
        });
        self.queue(job)?;
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::unavailable(
                "a SQLite call failed (it panicked)",
            ))
        })
    }

    /// Queues `job` for the SQLite thread without waiting for it; the job
    /// answers its caller itself.
    pub(crate) fn queue(&self, job: Job) -> Result<(), StoreError> {
        self.jobs
            .send(job)
            .map_err(|_| StoreError::unavailable("the SQLite thread has stopped"))
    }

    /// Stores each of `writes` by `write`, all in one transaction (all of
    /// them or none), on the SQLite thread.
    pub async fn write_all<W: Send + 'static>(
        &self,
        writes: Vec<W>,
        write: fn(&rusqlite::Transaction<'_>, &W) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.call(move |conn| in_one_transaction(conn, &writes, write))
            .await
    }

    /// Stores `writes` in one transaction ([`Sqlite::write_all`] of
    /// [`SqliteWrite::store`]).
    pub async fn save_all<W: SqliteWrite>(&self, writes: &[W]) -> Result<(), StoreError> {
        self.write_all(writes.to_vec(), W::store).await
    }

    /// How the group commit saves its batches of `W` here: each in one
    /// transaction on this database's thread.
    pub fn group_writes<W: SqliteWrite>(&self) -> SqliteWrites<W> {
        SqliteWrites {
            db: self.clone(),
            save_all: |conn, writes| in_one_transaction(conn, writes, W::store),
            stored: None,
        }
    }

    /// Runs `f` on the connection on the calling thread (start-up, tests).
    pub fn blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&mut lock(&self.conn))
    }
}

/// The SQLite thread: runs calls until every [`Sqlite`] clone is gone,
/// all those queued at a wake-up under one hold of the connection. A call
/// that panics fails alone (its caller gets an error); the thread goes on.
fn serve(conn: &Mutex<Connection>, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut conn = lock(conn);
        for job in std::iter::once(first).chain(queue.try_iter()) {
            if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err() {
                tracing::error!("a SQLite call panicked");
            }
        }
    }
}

/// Takes the exclusive lock on `<path>.lock` that says this process owns
/// the store, or says which file another process holds.
fn lock_for_this_process(path: &Path) -> Result<File, StoreError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = std::path::PathBuf::from(name);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Open(format!("opening {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Open(format!(
            "the SQLite store {} is in use by another process (it holds {}); \
             a SQLite store serves one replica: stop the other process, or run \
             several replicas on PostgreSQL (STORE_URL=postgres://...)",
            path.display(),
            lock_path.display()
        ))),
        Err(TryLockError::Error(e)) => Err(StoreError::Open(format!(
            "locking {}: {e}",
            lock_path.display()
        ))),
    }
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock cannot leave SQLite inconsistent
    // (transactions roll back on drop), so a poisoned lock is still usable.
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

//! Group commit, the write side of the outbox: actors hand their
//! transitions (a state and the messages it causes) to one writer task,
//! which stores whatever has queued up meanwhile in one transaction.
//!
//! Under load many workflows finish a step at about the same time; one
//! transaction for all of them divides the commit's cost (WAL pages, file
//! locks, the round trip to a database server) by the batch size, and the
//! actors go on with other work while the store works. A write is answered
//! only once its transaction has committed, so nothing is acked or
//! published before it is stored. A batch that fails is retried one write
//! at a time, so one bad write fails alone; a store that panics fails the
//! writes of that transaction and the writer goes on.
//!
//! On SQLite the writer is no task: the writes queue beside the store's
//! `sqlite` thread, which takes whatever has queued in one transaction
//! and answers each writer from there ([`BatchStore::on_sqlite`]). A
//! write then crosses to the store's thread once and back once, and the
//! thread goes from one transaction to the next without waiting for the
//! actors' thread in between. The first write queues the commit only
//! after the tasks ready beside it on its runtime have run, so that the
//! writes of every actor the last commit answered go in the next one.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use futures::future::BoxFuture;
use futures::FutureExt;
use message_bus::outbox::OutboxSignal;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::sqlite::{SaveAll, SqliteWrites, Stored};
use super::Sqlite;

/// The most writes one transaction takes.
pub const MAX_BATCH: usize = 256;

/// What a service's store does for the writer.
pub trait BatchStore: Send + Sync + 'static {
    /// One transition: the new state and its outbox messages.
    type Write: Send + Sync + 'static;
    type Error: Send + 'static;
    /// Stores every write in one transaction: all of them or none.
    fn save_all<'a>(&'a self, writes: &'a [Self::Write]) -> BoxFuture<'a, Result<(), Self::Error>>;
    /// The write has outbox messages (the relay is nudged after it).
    fn has_messages(write: &Self::Write) -> bool;
    /// A store on SQLite: how it saves a batch there, so that the writer
    /// runs on the SQLite thread (`None`: the writer is a tokio task that
    /// awaits [`save_all`](BatchStore::save_all)).
    fn on_sqlite(&self) -> Option<SqliteWrites<Self::Write, Self::Error>> {
        None
    }
    /// Told after each transaction on SQLite, with when it started (to
    /// time it; [`save_all`](BatchStore::save_all) times its own).
    fn committed(&self, _started: Instant) {}
}

/// Why a write was not stored.
#[derive(Debug)]
pub enum CommitError<E> {
    /// The store refused it.
    Store(E),
    /// The writer has stopped (the service is shutting down).
    Stopped,
    /// The store panicked while writing it; the writer goes on.
    Panicked,
}

type Answer<S> =
    oneshot::Sender<Result<<S as BatchStore>::Write, CommitError<<S as BatchStore>::Error>>>;

struct Job<S: BatchStore> {
    write: S::Write,
    done: Answer<S>,
}

/// The handle actors write through; cheap to clone. The writer stops
/// when the last handle is dropped, after storing what was sent.
pub struct GroupCommit<S: BatchStore> {
    writer: Writer<S>,
}

/// Where the writes go: a writer task, or the SQLite thread.
enum Writer<S: BatchStore> {
    Task(mpsc::UnboundedSender<Job<S>>),
    Sqlite(Arc<OnSqlite<S>>),
}

impl<S: BatchStore> Clone for GroupCommit<S> {
    fn clone(&self) -> Self {
        let writer = match &self.writer {
            Writer::Task(jobs) => Writer::Task(jobs.clone()),
            Writer::Sqlite(on) => Writer::Sqlite(on.clone()),
        };
        Self { writer }
    }
}

impl<S: BatchStore> GroupCommit<S> {
    /// Starts the writer, named `name` in its span: on the SQLite thread
    /// for a store on SQLite, else a task on the current tokio runtime. It
    /// nudges `outbox` after each commit that stored messages.
    pub fn start(name: &str, store: S, outbox: OutboxSignal) -> std::io::Result<Self> {
        let span = tracing::info_span!("group_commit", writer = %name);
        if let Some(SqliteWrites {
            db,
            save_all,
            stored,
        }) = store.on_sqlite()
        {
            let writer = Writer::Sqlite(Arc::new(OnSqlite {
                store,
                outbox,
                db,
                save_all,
                stored,
                span,
                pending: Mutex::new(Vec::new()),
                queued: AtomicBool::new(false),
            }));
            return Ok(Self { writer });
        }
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(store, outbox, queue).instrument(span));
        Ok(Self {
            writer: Writer::Task(jobs),
        })
    }

    /// Stores `write` (in the transaction of whatever else is queued) and
    /// gives it back once committed.
    pub async fn save(&self, write: S::Write) -> Result<S::Write, CommitError<S::Error>> {
        let (done, answer) = oneshot::channel();
        let job = Job { write, done };
        match &self.writer {
            Writer::Task(jobs) => jobs.send(job).map_err(|_| CommitError::Stopped)?,
            Writer::Sqlite(on) => on.push(job),
        }
        answer.await.unwrap_or(Err(CommitError::Stopped))
    }
}

/// Queues the commit when dropped: after the task that holds it has
/// yielded once, or when that task is dropped unrun (its runtime shutting
/// down), so a pending write is never left without a commit.
struct QueueCommit<S: BatchStore>(Arc<OnSqlite<S>>);

impl<S: BatchStore> Drop for QueueCommit<S> {
    fn drop(&mut self) {
        self.0.queue_commit();
    }
}

/// The writer on the SQLite thread: writes wait in `pending`; the first
/// one to arrive while no commit is queued queues one on the thread (once
/// its runtime has run the tasks ready with it), which takes every write
/// pending when it runs.
struct OnSqlite<S: BatchStore> {
    store: S,
    outbox: OutboxSignal,
    db: Sqlite,
    save_all: SaveAll<S::Write, S::Error>,
    stored: Option<Stored<S::Write>>,
    span: tracing::Span,
    pending: Mutex<Vec<Job<S>>>,
    /// A commit is queued on the SQLite thread (or about to be) and has
    /// not yet taken the pending writes.
    queued: AtomicBool,
}

impl<S: BatchStore> OnSqlite<S> {
    fn push(self: &Arc<Self>, job: Job<S>) {
        lock(&self.pending).push(job);
        if self.queued.swap(true, Ordering::AcqRel) {
            return; // the queued commit takes it
        }
        // Not at once: the actors' thread usually has more writes to
        // push in this turn (every actor answered by the last commit
        // writes its next step). A task that yields once queues the
        // commit after the runtime has run the tasks ready now, so they
        // share it; started at the first write, commits took half as
        // many writes each (docs/performance.md).
        let commit = QueueCommit(self.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move {
                tokio::task::yield_now().await;
                drop(commit);
            })),
            Err(_) => drop(commit),
        }
    }

    /// Queues a commit of the pending writes on the SQLite thread.
    fn queue_commit(self: &Arc<Self>) {
        let on = self.clone();
        if self
            .db
            .queue(Box::new(move |conn| on.commit_pending(conn)))
            .is_err()
        {
            // The thread has stopped: the pending writes are answered
            // `Stopped` as their senders are dropped.
            self.queued.store(false, Ordering::Release);
            drop(std::mem::take(&mut *lock(&self.pending)));
        }
    }

    /// On the SQLite thread: stores every pending write, [`MAX_BATCH`]
    /// to a transaction, and answers each.
    fn commit_pending(&self, conn: &mut Connection) {
        // Before taking: a write pushed from here on queues a commit of
        // its own (or finds this one), so none is left behind.
        self.queued.store(false, Ordering::Release);
        let mut jobs = std::mem::take(&mut *lock(&self.pending));
        let _span = self.span.enter();
        while !jobs.is_empty() {
            let rest = jobs.split_off(jobs.len().min(MAX_BATCH));
            let (writes, answers): (Vec<S::Write>, Vec<Answer<S>>) =
                jobs.into_iter().map(|j| (j.write, j.done)).unzip();
            let results = retried(&writes, |writes| self.save(conn, writes));
            answer::<S>(writes, answers, results, &self.outbox);
            jobs = rest;
        }
    }

    /// One transaction; a panic in the store fails it, not the thread.
    fn save(
        &self,
        conn: &mut Connection,
        writes: &[S::Write],
    ) -> Result<(), CommitError<S::Error>> {
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| (self.save_all)(conn, writes)));
        self.store.committed(started);
        if let (Ok(Ok(())), Some(stored)) = (&result, &self.stored) {
            stored(writes);
        }
        settled(result, writes.len())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only pushes and takes under the lock: never left half-done.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The result of each write of a batch saved by `save`: all from one
/// transaction, or, when it failed, each from a transaction of its own.
fn retried<W, E>(
    writes: &[W],
    mut save: impl FnMut(&[W]) -> Result<(), CommitError<E>>,
) -> Vec<Result<(), CommitError<E>>> {
    match save(writes) {
        Ok(()) => writes.iter().map(|_| Ok(())).collect(),
        Err(error) if writes.len() == 1 => vec![Err(error)],
        Err(_) => {
            tracing::warn!(
                writes = writes.len(),
                "group commit failed; storing one write at a time"
            );
            writes
                .iter()
                .map(|write| save(std::slice::from_ref(write)))
                .collect()
        }
    }
}

/// Gives each write back to its sender with its result, then nudges the
/// relay once if any stored write carries messages.
fn answer<S: BatchStore>(
    writes: Vec<S::Write>,
    answers: Vec<Answer<S>>,
    results: Vec<Result<(), CommitError<S::Error>>>,
    outbox: &OutboxSignal,
) {
    let mut stored_messages = false;
    for ((write, answer), result) in writes.into_iter().zip(answers).zip(results) {
        stored_messages |= result.is_ok() && S::has_messages(&write);
        // The caller may be gone (its actor stopping); nothing to tell.
        let _ = answer.send(result.map(|()| write));
    }
    if stored_messages {
        outbox.notify();
    }
}

/// One transaction; a panic in the store fails it instead of the writer.
async fn save<S: BatchStore>(store: &S, writes: &[S::Write]) -> Result<(), CommitError<S::Error>> {
    let result = AssertUnwindSafe(store.save_all(writes))
        .catch_unwind()
        .await;
    settled(result, writes.len())
}

/// A group commit's transaction of `writes` writes as its writers hear of
/// it: the store's error, or [`CommitError::Panicked`] if it panicked.
fn settled<E>(
    result: std::thread::Result<Result<(), E>>,
    writes: usize,
) -> Result<(), CommitError<E>> {
    match result {
        Ok(result) => result.map_err(CommitError::Store),
        Err(_) => {
            tracing::error!(writes, "the store panicked during a group commit");
            Err(CommitError::Panicked)
        }
    }
}

async fn run<S: BatchStore>(
    store: S,
    outbox: OutboxSignal,
    mut queue: mpsc::UnboundedReceiver<Job<S>>,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    // Whatever queued while the last transaction ran goes in the next.
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let (writes, answers): (Vec<S::Write>, Vec<Answer<S>>) =
            jobs.drain(..).map(|j| (j.write, j.done)).unzip();
        let results: Vec<Result<(), CommitError<S::Error>>> = match save(&store, &writes).await {
            Ok(()) => writes.iter().map(|_| Ok(())).collect(),
            Err(error) if writes.len() == 1 => vec![Err(error)],
            Err(_) => {
                tracing::warn!(
                    writes = writes.len(),
                    "group commit failed; storing one write at a time"
                );
                let mut results = Vec::with_capacity(writes.len());
                for write in &writes {
                    results.push(save(&store, std::slice::from_ref(write)).await);
                }
                results
            }
        };
        answer::<S>(writes, answers, results, &outbox);
    }
}

/// Declares a service's adapter between its store trait and the group
/// commit, and the writer the actors use:
///
/// ```ignore
/// service_kit::group_commit_adapter! {
///     store: Store, write: Write, messages: outbox, metrics: METRICS
/// }
/// ```
///
/// makes `pub struct Batched(pub Arc<dyn Store>)` (its commits call
/// `Store::save_all`, or on SQLite run what `Store::sqlite_writes` gives on
/// the SQLite thread, and are timed as the store write `save` in
/// `METRICS`, which derefs to [`Common`](crate::metrics::Common)), where a
/// write carries outbox messages when its field `outbox` is not empty,
/// and `pub type Writer = GroupCommit<Batched>`.
#[macro_export]
macro_rules! group_commit_adapter {
    (store: $store:ident, write: $write:ty, messages: $messages:ident, metrics: $metrics:path) => {
        /// The store as the group commit sees it (see
        /// [`service_kit::store::group_commit`]): each commit is timed as
        /// the store write `save`.
        pub struct Batched(pub ::std::sync::Arc<dyn $store>);

        impl $crate::store::group_commit::BatchStore for Batched {
            type Write = $write;
            type Error = $crate::store::StoreError;

            fn save_all<'a>(
                &'a self,
                writes: &'a [$write],
            ) -> $crate::store::group_commit::BoxFuture<'a, Result<(), Self::Error>> {
                Box::pin(async move {
                    let started = ::std::time::Instant::now();
                    let result = self.0.save_all(writes).await;
                    $metrics.store_write_took("save", started);
                    result
                })
            }

            fn has_messages(write: &$write) -> bool {
                !write.$messages.is_empty()
            }

            fn on_sqlite(&self) -> Option<$crate::store::sqlite::SqliteWrites<$write>> {
                self.0.sqlite_writes()
            }

            fn committed(&self, started: ::std::time::Instant) {
                $metrics.store_write_took("save", started);
            }
        }

        /// The group commit the actors write through (see
        /// [`service_kit::store::group_commit`]).
        pub type Writer = $crate::store::group_commit::GroupCommit<Batched>;
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    /// Records each transaction; refuses any that holds a negative write.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<i32>>>>);

    impl BatchStore for Recorder {
        type Write = i32;
        type Error = String;
        fn save_all<'a>(&'a self, writes: &'a [i32]) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async move {
                // A commit takes a while: writes sent meanwhile queue up.
                tokio::task::yield_now().await;
                if writes.iter().any(|w| *w < 0) {
                    return Err(format!("refused {writes:?}"));
                }
                self.0.lock().expect("lock").push(writes.to_vec());
                Ok(())
            })
        }
        fn has_messages(_: &i32) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn every_write_is_stored_once_and_a_bad_one_fails_alone() {
        let store = Recorder::default();
        let writer = GroupCommit::start("test-writer", store.clone(), OutboxSignal::new())
            .expect("task starts");
        let writes = (-1..100).map(|n| writer.save(n));
        let results = futures::future::join_all(writes).await;
        assert!(
            matches!(results[0], Err(CommitError::Store(_))),
            "-1 refused"
        );
        for (n, result) in (0..100).zip(&results[1..]) {
            assert_eq!(result.as_ref().ok(), Some(&n));
        }
        let mut stored: Vec<i32> = store.0.lock().expect("lock").concat();
        stored.sort_unstable();
        assert_eq!(stored, (0..100).collect::<Vec<_>>());
    }

    /// Writes sent together are stored in few transactions, not one each.
    #[tokio::test]
    async fn writes_sent_together_share_a_transaction() {
        let store = Recorder::default();
        let writer = GroupCommit::start("test-writer", store.clone(), OutboxSignal::new())
            .expect("task starts");
        let results = futures::future::join_all((0..600).map(|n| writer.save(n))).await;
        assert!(results.iter().all(Result::is_ok));
        let batches = store.0.lock().expect("lock").clone();
        assert!(
            batches.iter().all(|b| b.len() <= MAX_BATCH),
            "no transaction above MAX_BATCH"
        );
        assert!(
            batches.len() <= 4,
            "600 writes queued at once go in a few transactions, not {}",
            batches.len()
        );
    }

    /// Panics on 13; stores the rest.
    struct Fragile;

    impl BatchStore for Fragile {
        type Write = i32;
        type Error = String;
        fn save_all<'a>(&'a self, writes: &'a [i32]) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async move {
                assert!(!writes.contains(&13), "unlucky");
                Ok(())
            })
        }
        fn has_messages(_: &i32) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_goes_on() {
        let writer =
            GroupCommit::start("test-writer", Fragile, OutboxSignal::new()).expect("task starts");
        let results = futures::future::join_all([12, 13, 14].map(|n| writer.save(n))).await;
        assert!(matches!(results[1], Err(CommitError::Panicked)));
        assert_eq!(results[0].as_ref().ok(), Some(&12));
        assert_eq!(results[2].as_ref().ok(), Some(&14));
        assert_eq!(writer.save(15).await.ok(), Some(15), "still writing");
    }

    /// A table on SQLite through the writer on the SQLite thread: each
    /// commit records its size and thread; refuses negatives, panics on
    /// -13; keeps the numbers it is told were stored.
    struct OnTable(Sqlite, Arc<Mutex<Vec<i32>>>);

    fn save_on_table(conn: &mut Connection, writes: &[i32]) -> Result<(), StoreError> {
        let tx = conn.transaction()?;
        for &n in writes {
            assert!(n != -13, "unlucky");
            if n < 0 {
                return Err(StoreError::unavailable(format!("refused {n}")));
            }
            tx.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
        }
        let thread = std::thread::current().name().map(str::to_owned);
        tx.execute(
            "INSERT INTO commits (writes, thread) VALUES (?1, ?2)",
            rusqlite::params![writes.len(), thread],
        )?;
        tx.commit()?;
        Ok(())
    }

    impl BatchStore for OnTable {
        type Write = i32;
        type Error = StoreError;
        fn save_all<'a>(&'a self, writes: &'a [i32]) -> BoxFuture<'a, Result<(), StoreError>> {
            let writes = writes.to_vec();
            Box::pin(self.0.call(move |conn| save_on_table(conn, &writes)))
        }
        fn has_messages(_: &i32) -> bool {
            true
        }
        fn on_sqlite(&self) -> Option<SqliteWrites<i32>> {
            let told = self.1.clone();
            Some(SqliteWrites {
                db: self.0.clone(),
                save_all: save_on_table,
                stored: Some(Arc::new(move |writes| lock(&told).extend(writes))),
            })
        }
    }

    fn table() -> Sqlite {
        let db = Sqlite::open(
            std::path::Path::new(":memory:"),
            &refinery::Runner::new(&[refinery::Migration::unapplied(
                "V1__t",
                "CREATE TABLE t (n INTEGER PRIMARY KEY);
                 CREATE TABLE commits (writes INTEGER NOT NULL, thread TEXT);",
            )
            .expect("a migration")]),
        )
        .expect("opens");
        db
    }

    /// (the numbers stored, in order; each commit's size and thread)
    async fn stored(db: &Sqlite) -> (Vec<i32>, Vec<(usize, Option<String>)>) {
        db.call(|conn| {
            let numbers = conn
                .prepare("SELECT n FROM t ORDER BY n")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<i32>, _>>()?;
            let commits = conn
                .prepare("SELECT writes, thread FROM commits")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((numbers, commits))
        })
        .await
        .expect("reads")
    }

    /// [`table`] and its group commit.
    fn table_and_writer() -> (Sqlite, GroupCommit<OnTable>) {
        let db = table();
        let on = OnTable(db.clone(), Arc::default());
        let writer = GroupCommit::start("test-writer", on, OutboxSignal::new()).expect("starts");
        (db, writer)
    }

    #[tokio::test]
    async fn on_sqlite_every_write_is_stored_once_on_the_sqlite_thread_and_a_bad_one_fails_alone() {
        let db = table();
        let told = Arc::default();
        let on = OnTable(db.clone(), Arc::clone(&told));
        let writer = GroupCommit::start("test-writer", on, OutboxSignal::new()).expect("starts");
        let results = futures::future::join_all((-1..100).map(|n| writer.save(n))).await;
        assert!(
            matches!(results[0], Err(CommitError::Store(_))),
            "-1 refused"
        );
        for (n, result) in (0..100).zip(&results[1..]) {
            assert_eq!(result.as_ref().ok(), Some(&n));
        }
        let (numbers, commits) = stored(&db).await;
        assert_eq!(numbers, (0..100).collect::<Vec<_>>());
        let mut told = lock(&told).clone();
        told.sort_unstable();
        assert_eq!(
            told, numbers,
            "told of each write committed, once; not of -1"
        );
        assert!(
            commits.iter().all(|(_, t)| t.as_deref() == Some("sqlite")),
            "committed on the SQLite thread: {commits:?}"
        );
    }

    /// Writes sent together are stored in few transactions, not one each.
    #[tokio::test]
    async fn on_sqlite_writes_sent_together_share_a_transaction() {
        let (db, writer) = table_and_writer();
        let Writer::Sqlite(on) = &writer.writer else {
            panic!("a store on SQLite gets the writer on the SQLite thread")
        };
        // The SQLite thread busy until all 600 have queued.
        let (inside, entered) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let mut busy = std::pin::pin!(db.call(move |_| {
            let _ = inside.send(());
            let _ = released.recv();
            Ok(())
        }));
        assert!(futures::poll!(busy.as_mut()).is_pending());
        entered.recv().expect("the SQLite thread runs the call");
        let mut saves = std::pin::pin!(futures::future::join_all((0..600).map(|n| writer.save(n))));
        while lock(&on.pending).len() < 600 {
            assert!(futures::poll!(saves.as_mut()).is_pending());
        }
        release.send(()).expect("the call waits");
        busy.await.expect("answers");
        let results = saves.await;
        assert!(results.iter().all(Result::is_ok));
        let (numbers, commits) = stored(&db).await;
        assert_eq!(numbers.len(), 600);
        assert!(
            commits.iter().all(|(n, _)| *n <= MAX_BATCH),
            "no transaction above MAX_BATCH: {commits:?}"
        );
        assert!(
            commits.len() <= 4,
            "600 writes queued at once go in a few transactions, not {}",
            commits.len()
        );
    }

    /// Writes pushed by tasks that run in one turn of the runtime (the
    /// actors answered by one commit, each writing its next step) go in
    /// one transaction, not the first alone and the rest in the next.
    #[tokio::test]
    async fn on_sqlite_writes_of_tasks_ready_together_share_a_transaction() {
        let (db, writer) = table_and_writer();
        for round in 0..3 {
            let tasks: Vec<_> = (0..16)
                .map(|n| {
                    let writer = writer.clone();
                    tokio::spawn(async move { writer.save(round * 100 + n).await })
                })
                .collect();
            for task in tasks {
                assert!(task.await.expect("task runs").is_ok());
            }
        }
        let (numbers, commits) = stored(&db).await;
        assert_eq!(numbers.len(), 48);
        assert_eq!(
            commits.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![16, 16, 16],
            "one transaction per round"
        );
    }

    #[tokio::test]
    async fn on_sqlite_a_panicking_write_fails_alone_and_the_writer_goes_on() {
        let (db, writer) = table_and_writer();
        let results = futures::future::join_all([12, -13, 14].map(|n| writer.save(n))).await;
        assert!(matches!(results[1], Err(CommitError::Panicked)));
        assert_eq!(results[0].as_ref().ok(), Some(&12));
        assert_eq!(results[2].as_ref().ok(), Some(&14));
        assert_eq!(writer.save(15).await.ok(), Some(15), "still writing");
        assert_eq!(stored(&db).await.0, vec![12, 14, 15]);
    }

    #[tokio::test]
    async fn a_write_after_the_writer_stopped_is_refused() {
        let (jobs, queue) = mpsc::unbounded_channel::<Job<Recorder>>();
        drop(queue);
        let writer = GroupCommit {
            writer: Writer::Task(jobs),
        };
        assert!(matches!(writer.save(1).await, Err(CommitError::Stopped)));
    }
}

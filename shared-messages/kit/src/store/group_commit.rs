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

use std::panic::AssertUnwindSafe;

pub use futures::future::BoxFuture;
use futures::FutureExt;
use message_bus::outbox::OutboxSignal;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

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

/// The handle actors write through; cheap to clone. The writer task stops
/// when the last handle is dropped, after storing what was sent.
pub struct GroupCommit<S: BatchStore> {
    jobs: mpsc::UnboundedSender<Job<S>>,
}

impl<S: BatchStore> Clone for GroupCommit<S> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

impl<S: BatchStore> GroupCommit<S> {
    /// Spawns the writer task (on the current tokio runtime), named `name`
    /// in its span; it nudges `outbox` after each commit that stored
    /// messages.
    pub fn start(name: &str, store: S, outbox: OutboxSignal) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::unbounded_channel();
        let span = tracing::info_span!("group_commit", writer = %name);
        tokio::spawn(run(store, outbox, queue).instrument(span));
        Ok(Self { jobs })
    }

    /// Stores `write` (in the transaction of whatever else is queued) and
    /// gives it back once committed.
    pub async fn save(&self, write: S::Write) -> Result<S::Write, CommitError<S::Error>> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { write, done })
            .map_err(|_| CommitError::Stopped)?;
        answer.await.unwrap_or(Err(CommitError::Stopped))
    }
}

/// One transaction; a panic in the store fails it instead of the writer.
async fn save<S: BatchStore>(store: &S, writes: &[S::Write]) -> Result<(), CommitError<S::Error>> {
    match AssertUnwindSafe(store.save_all(writes))
        .catch_unwind()
        .await
    {
        Ok(result) => result.map_err(CommitError::Store),
        Err(_) => {
            tracing::error!(
                writes = writes.len(),
                "the store panicked during a group commit"
            );
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
/// `Store::save_all` and are timed as the store write `save` in
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
        }

        /// The group commit the actors write through (see
        /// [`service_kit::store::group_commit`]).
        pub type Writer = $crate::store::group_commit::GroupCommit<Batched>;
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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

    #[tokio::test]
    async fn a_write_after_the_writer_stopped_is_refused() {
        let (jobs, queue) = mpsc::unbounded_channel::<Job<Recorder>>();
        drop(queue);
        let writer = GroupCommit { jobs };
        assert!(matches!(writer.save(1).await, Err(CommitError::Stopped)));
    }
}

//! Consumers started and stopped while the bus runs
//! ([`super::Bus::consume_until`]): a partition's queue, consumed by the
//! replica that owns the partition for as long as it owns it.
//!
//! Such a consumer is the same supervised consumer as one registered
//! before start (`consumer.rs`); only who starts it differs. The
//! [`Registry`] holds the consumers not yet stopped. The session that
//! serves a connection starts every one of them when it begins, and, for
//! as long as it serves, is handed each one registered later
//! ([`Registry::serve`]); so a consumer runs on the connection of the
//! moment and on every later one, exactly once on each.
//!
//! Its [`ConsumerHandle`] stops it: the consumer is taken out of the
//! registry (no later connection starts it), told to stop, and waited for
//! (every task running it counts itself in [`Run`]): it cancels, lets the
//! handlers already called finish and settles their deliveries (for at
//! most `DRAIN`), then closes its channel, so what the broker had sent it
//! but no handler had seen goes back to the queue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::consumer::DRAIN;
use super::{ConsumerSpec, Inner};

/// How long [`ConsumerHandle::stop`] waits at most: the consumer's own
/// `DRAIN` for its handlers, and as long again for cancelling and closing
/// its channel on a broker slow to answer. Past it, stop returns (and
/// says so in the log); the consumer still ends on its own, and its
/// unsettled deliveries go back to the queue with its channel.
const STOP_MAX: Duration = Duration::from_secs(2 * DRAIN.as_secs());

/// The consumers started by [`super::Bus::consume_until`] and not stopped.
#[derive(Default)]
pub(super) struct Registry {
    consumers: BTreeMap<u64, Registered>,
    /// Where to send a consumer to start it on the connection being
    /// served; `None` between connections.
    serving: Option<mpsc::UnboundedSender<Start>>,
}

struct Registered {
    spec: ConsumerSpec,
    runs: Arc<watch::Sender<usize>>,
}

/// A consumer to start on the connection being served.
pub(super) struct Start {
    pub(super) spec: ConsumerSpec,
    /// Held by the task that runs it.
    pub(super) run: Run,
}

/// Counts one task running a consumer (or about to), for as long as it
/// lives: dropped when the task ends or is aborted, or with a [`Start`]
/// that never ran.
pub(super) struct Run(Arc<watch::Sender<usize>>);

impl Run {
    fn new(runs: &Arc<watch::Sender<usize>>) -> Self {
        runs.send_modify(|n| *n += 1);
        Self(runs.clone())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Registry {
    fn add(&mut self, spec: ConsumerSpec, runs: Arc<watch::Sender<usize>>) {
        if let Some(serving) = &self.serving {
            // Counted before it is sent, so a stop right after this waits
            // for the task even before it has begun.
            let start = Start {
                spec: spec.clone(),
                run: Run::new(&runs),
            };
            // A closed channel means the session is ending; the next one
            // starts the consumer from the registry.
            let _ = serving.send(start);
        }
        self.consumers.insert(spec.id, Registered { spec, runs });
    }

    fn remove(&mut self, id: u64) {
        self.consumers.remove(&id);
    }

    /// For a session beginning to serve a connection: every registered
    /// consumer to start now, and a receiver of those registered from now
    /// until [`Registry::unserve`].
    pub(super) fn serve(&mut self) -> (Vec<Start>, mpsc::UnboundedReceiver<Start>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.serving = Some(tx);
        let now = self
            .consumers
            .values()
            .map(|r| Start {
                spec: r.spec.clone(),
                run: Run::new(&r.runs),
            })
            .collect();
        (now, rx)
    }

    /// The session stops serving: registrations wait for the next one.
    pub(super) fn unserve(&mut self) {
        self.serving = None;
    }
}

/// Registers a consumer on `spec.queue` and answers its handle.
pub(super) fn register(inner: &Arc<Inner>, spec: ConsumerSpec) -> ConsumerHandle {
    let (release, asked) = watch::channel(false);
    let spec = ConsumerSpec {
        release: Some(asked),
        ..spec
    };
    let runs = Arc::new(watch::channel(0).0);
    let handle = ConsumerHandle {
        inner: inner.clone(),
        id: spec.id,
        queue: spec.queue.clone(),
        release: Some(release),
        runs: runs.clone(),
    };
    inner.register_consumer(&spec);
    inner
        .dynamic
        .lock()
        .expect("dynamic consumer lock is never poisoned")
        .add(spec, runs);
    handle
}

/// A consumer started by [`super::Bus::consume_until`]. It consumes until
/// [`ConsumerHandle::stop`]; dropping the handle stops it too, without
/// waiting for its handlers.
#[must_use = "dropping the handle stops the consumer"]
pub struct ConsumerHandle {
    inner: Arc<Inner>,
    id: u64,
    queue: String,
    /// Taken when the consumer is told to stop.
    release: Option<watch::Sender<bool>>,
    runs: Arc<watch::Sender<usize>>,
}

impl std::fmt::Debug for ConsumerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerHandle")
            .field("queue", &self.queue)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ConsumerHandle {
    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops consuming and returns once the consumer has ended: cancelled
    /// at the broker, every delivery already handed to the handler handled
    /// and settled (acked, dead-lettered, or requeued if its handler was
    /// still retrying), and its channel closed, which returns to the queue
    /// what the broker had sent but no handler had seen. Handlers still
    /// running after the consumer's drain time (5 s) are abandoned and
    /// their messages go back to the queue too. Readiness forgets the
    /// consumer at once. On a bus that is not connected, returns at once.
    pub async fn stop(mut self) {
        self.release();
        let mut runs = self.runs.subscribe();
        let ended = tokio::time::timeout(STOP_MAX, runs.wait_for(|n| *n == 0)).await;
        if ended.is_err() {
            tracing::warn!(queue = %self.queue, waited = ?STOP_MAX, "consumer still stopping; not waiting longer");
        }
    }

    /// Tells the consumer to stop, once: no connection starts it again, the
    /// running one ends, and readiness no longer counts it.
    fn release(&mut self) {
        let Some(release) = self.release.take() else {
            return;
        };
        self.inner
            .dynamic
            .lock()
            .expect("dynamic consumer lock is never poisoned")
            .remove(self.id);
        release.send_replace(true);
        self.inner.forget_consumer(self.id, &self.queue);
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn spec(id: u64) -> (ConsumerSpec, Arc<watch::Sender<usize>>) {
        let handler: super::super::Handler =
            Arc::new(|_| async { super::super::Outcome::Ack }.boxed());
        let spec = ConsumerSpec {
            id,
            queue: format!("q{id}"),
            handler,
            release: None,
        };
        (spec, Arc::new(watch::channel(0).0))
    }

    fn ids(starts: &[Start]) -> Vec<u64> {
        starts.iter().map(|s| s.spec.id).collect()
    }

    #[test]
    fn a_consumer_registered_between_connections_starts_on_the_next() {
        let mut registry = Registry::default();
        let (one, runs) = spec(1);
        registry.add(one, runs.clone());
        assert_eq!(*runs.borrow(), 0, "nothing runs it yet");
        let (now, _added) = registry.serve();
        assert_eq!(ids(&now), vec![1]);
        assert_eq!(*runs.borrow(), 1);
        drop(now);
        assert_eq!(*runs.borrow(), 0, "a start dropped unrun counts no more");
    }

    #[test]
    fn a_consumer_registered_while_serving_is_handed_to_the_session_once() {
        let mut registry = Registry::default();
        let (now, mut added) = registry.serve();
        assert!(now.is_empty());
        let (two, runs) = spec(2);
        registry.add(two, runs.clone());
        let start = added.try_recv().expect("handed over");
        assert_eq!(start.spec.id, 2);
        assert!(added.try_recv().is_err());
        assert_eq!(*runs.borrow(), 1, "counted before it is sent");
        // The connection goes; the next one starts it again.
        drop((start, added));
        registry.unserve();
        let (now, _added) = registry.serve();
        assert_eq!(ids(&now), vec![2]);
    }

    #[test]
    fn a_removed_consumer_is_started_by_no_later_connection() {
        let mut registry = Registry::default();
        let (one, runs_one) = spec(1);
        let (two, runs_two) = spec(2);
        registry.add(one, runs_one);
        registry.add(two, runs_two);
        registry.remove(1);
        let (now, _added) = registry.serve();
        assert_eq!(ids(&now), vec![2]);
    }
}

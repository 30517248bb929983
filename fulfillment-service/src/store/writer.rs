//! Group commit: the actors' transitions go to one writer thread, which
//! stores whatever has queued up meanwhile in one transaction.
//!
//! Under load many fulfillments finish a step at about the same time; one
//! transaction for all of them divides the commit's cost (WAL pages,
//! locks, the round trip to PostgreSQL) by the batch size, and the actors'
//! thread goes on with other fulfillments while the disk works. A write is
//! answered only once its transaction has committed, so nothing is acked
//! or published before it is stored. A batch that fails is retried one
//! write at a time, so one bad write fails alone.

use std::sync::{mpsc, Arc};
use std::thread;

use shared_messages::bus::outbox::OutboxSignal;
use tokio::sync::oneshot;

use super::{Store, StoreError, Write};
use crate::metrics::METRICS;
use crate::workflow::Fulfillment;

/// The most writes one transaction takes.
const MAX_BATCH: usize = 256;

struct Job {
    write: Write,
    done: oneshot::Sender<Result<Fulfillment, StoreError>>,
}

/// The handle actors write through; cheap to clone. The thread stops when
/// the last handle is dropped, after storing what was sent.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread; it nudges `outbox` after each commit that
    /// stored events.
    pub fn start(store: Arc<dyn Store>, outbox: OutboxSignal) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(store.as_ref(), &outbox, &queue))?;
        Ok(Self { jobs })
    }

    /// Stores `state` with `events` (in the transaction of whatever else is
    /// queued) and gives the state back once committed.
    pub async fn save(&self, write: Write) -> Result<Fulfillment, StoreError> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Job { write, done })
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?;
        result.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the store writer has stopped".into(),
            ))
        })
    }
}

fn run(store: &dyn Store, outbox: &OutboxSignal, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (writes, answers): (Vec<Write>, Vec<_>) =
            jobs.into_iter().map(|j| (j.write, j.done)).unzip();
        let stored = METRICS.store_write("save", || store.save_all(&writes));
        let results: Vec<Result<(), StoreError>> = match stored {
            Ok(()) => writes.iter().map(|_| Ok(())).collect(),
            Err(error) if writes.len() == 1 => vec![Err(error)],
            Err(error) => {
                tracing::warn!(%error, writes = writes.len(), "group commit failed; storing one at a time");
                writes
                    .iter()
                    .map(|w| {
                        METRICS.store_write("save", || store.save_all(std::slice::from_ref(w)))
                    })
                    .collect()
            }
        };
        let mut published = false;
        for ((write, answer), result) in writes.into_iter().zip(answers).zip(results) {
            published |= result.is_ok() && !write.events.is_empty();
            // The actor may be gone (its system stopping); nothing to tell.
            let _ = answer.send(result.map(|()| write.state));
        }
        if published {
            outbox.notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use crate::workflow::{create, Input, Timing};
    use chrono::Utc;
    use shared_messages::bus::outbox::OutboxStore;
    use shared_messages::messages::{Address, FulfillmentRequest, OrderItem};
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
        let writer = Writer::start(store.clone(), OutboxSignal::new()).expect("starts");
        let saves = (0..50).map(|n| writer.save(write(n)));
        let stored = futures::future::join_all(saves).await;
        for (n, result) in stored.into_iter().enumerate() {
            let state = result.expect("stored");
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

    #[tokio::test]
    async fn the_write_is_refused_when_the_writer_is_gone() {
        let (jobs, queue) = mpsc::channel();
        drop(queue);
        let writer = Writer { jobs };
        assert!(matches!(
            writer.save(write(1)).await,
            Err(StoreError::Unavailable(_))
        ));
    }
}

//! Finds the actor of a fulfillment, spawning or creating it as needed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use actix::{Actor, Addr};
use actix_rt::ArbiterHandle;
use chrono::Utc;
use futures::future::{self, BoxFuture, FutureExt};
use shared_messages::messages::ReplyError;
use uuid::Uuid;

use super::{Deps, FulfillmentActor, Signal};
use crate::store::StoreError;
use crate::workflow::{self, Fulfillment, Input, Reply, Timing};

/// Maps fulfillment ids to the actors of running fulfillments. Cheap to
/// clone, usable from any thread; actors all live on one arbiter.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    actors: Mutex<HashMap<String, Addr<FulfillmentActor>>>,
    deps: Deps,
    arbiter: ArbiterHandle,
}

impl Registry {
    /// A registry whose actors run on `arbiter`.
    pub fn new(deps: Deps, arbiter: ArbiterHandle) -> Self {
        Self {
            inner: Arc::new(Inner {
                actors: Mutex::new(HashMap::new()),
                deps,
                arbiter,
            }),
        }
    }

    fn actors(&self) -> MutexGuard<'_, HashMap<String, Addr<FulfillmentActor>>> {
        // The map stays consistent under a panic (single inserts/removes).
        self.inner.actors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-spawns every unfinished fulfillment where it stopped.
    pub fn recover(&self) -> Result<usize, StoreError> {
        let states = self.inner.deps.store.unfinished()?;
        let count = states.len();
        let mut actors = self.actors();
        for state in states {
            if !actors.contains_key(&state.id) {
                let id = state.id.clone();
                actors.insert(id, self.spawn(state));
            }
        }
        Ok(count)
    }

    /// Running actors.
    pub fn live(&self) -> usize {
        self.actors().len()
    }

    fn spawn(&self, state: Fulfillment) -> Addr<FulfillmentActor> {
        let deps = self.inner.deps.clone();
        let registry = self.clone();
        FulfillmentActor::start_in_arbiter(&self.inner.arbiter, move |_| {
            FulfillmentActor::new(state, deps, registry)
        })
    }

    pub(super) fn forget(&self, id: &str, addr: &Addr<FulfillmentActor>) {
        let mut actors = self.actors();
        if actors.get(id) == Some(addr) {
            actors.remove(id);
        }
    }

    /// Newest first, optionally of one status.
    pub fn list(
        &self,
        status: Option<shared_messages::messages::FulfillmentStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Fulfillment>, StoreError> {
        self.inner.deps.store.list(status, limit, offset)
    }

    pub fn store(&self) -> &dyn crate::store::Store {
        self.inner.deps.store.as_ref()
    }

    pub fn ping_store(&self) -> Result<(), StoreError> {
        self.inner.deps.store.ping()
    }

    pub fn timing(&self) -> Timing {
        self.inner.deps.timing
    }

    /// The stored state of a fulfillment, running or finished.
    pub fn load(&self, id: &str) -> Result<Option<Fulfillment>, StoreError> {
        self.inner.deps.store.load(id)
    }

    /// Applies a signal. The message is handed to the actor's mailbox
    /// before this returns, so signals keep the order of the calls; the
    /// future resolves once the outcome is stored.
    pub fn signal(
        &self,
        id: &str,
        message_id: Option<Uuid>,
        traceparent: Option<String>,
        input: Input,
    ) -> BoxFuture<'static, Result<Reply, StoreError>> {
        let mut actors = self.actors();
        if let Some(addr) = actors.get(id).filter(|a| a.connected()) {
            return self.send(addr, id, message_id, traceparent, input);
        }
        // Not running: finished, not yet spawned, or unknown. The lock is
        // held so two creators of one id cannot race.
        let deps = &self.inner.deps;
        let stored = match deps.store.load(id) {
            Ok(stored) => stored,
            Err(error) => return future::ready(Err(error)).boxed(),
        };
        let decision = match stored {
            Some(state) if !state.status.is_final() => {
                let addr = self.spawn(state);
                let request = self.send(&addr, id, message_id, traceparent, input);
                actors.insert(id.to_owned(), addr);
                return request;
            }
            Some(state) => workflow::decide(&state, &input, message_id, Utc::now(), deps.timing)
                .traced(traceparent.as_deref()),
            None if input.creates() => {
                workflow::create(id, &input, message_id, Utc::now(), deps.timing)
                    .traced(traceparent.as_deref())
            }
            None => {
                return future::ready(Ok(Err(ReplyError::not_found(format!(
                    "no fulfillment {id}"
                )))))
                .boxed()
            }
        };
        if let Err(error) = deps.persist(&decision) {
            return future::ready(Err(error)).boxed();
        }
        if let Some(state) = decision.state.filter(|s| !s.status.is_final()) {
            tracing::info!(
                fulfillment_id = %id,
                order_id = %state.order_id,
                status = %state.status,
                trace_id = %shared_messages::trace::trace_id_of(state.traceparent.as_deref()),
                "fulfillment created"
            );
            actors.insert(id.to_owned(), self.spawn(state));
        }
        future::ready(Ok(decision.reply)).boxed()
    }

    fn send(
        &self,
        addr: &Addr<FulfillmentActor>,
        id: &str,
        message_id: Option<Uuid>,
        traceparent: Option<String>,
        input: Input,
    ) -> BoxFuture<'static, Result<Reply, StoreError>> {
        let request = addr.send(Signal {
            message_id,
            traceparent: traceparent.clone(),
            input: input.clone(),
        });
        let registry = self.clone();
        let id = id.to_owned();
        async move {
            match request.await {
                Ok(outcome) => outcome,
                // The actor stopped (it just finished) before it took the
                // message: decide again against the stored state.
                Err(_) => registry.signal(&id, message_id, traceparent, input).await,
            }
        }
        .boxed()
    }
}

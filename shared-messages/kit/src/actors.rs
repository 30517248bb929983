//! The actors of running workflows by id: the map both services' registries
//! keep, so that one id has at most one actor and a stopping actor removes
//! only itself, and the `actors` gauge they move as they start and stop.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use actix::{Actor, Addr};

use crate::metrics::Common;

/// Workflow ids to the addresses of their running actors. Usable from any
/// thread.
pub struct Actors<A: Actor> {
    map: Mutex<HashMap<String, Addr<A>>>,
    metrics: &'static Common,
}

impl<A: Actor> Actors<A> {
    /// No actors yet; their count by status goes to `metrics`.
    pub fn new(metrics: &'static Common) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Called by an actor as it starts, its workflow in `status`.
    pub fn started(&self, status: &str) {
        self.metrics.actor(status, 1);
    }

    /// Called by an actor as it stops, its workflow in `status`: it is no
    /// longer counted, and leaves the map unless another actor has taken
    /// its id since.
    pub fn stopped(&self, id: &str, status: &str, addr: &Addr<A>) {
        self.metrics.actor(status, -1);
        let mut actors = self.lock();
        if actors.get(id) == Some(addr) {
            actors.remove(id);
        }
    }

    /// The map, locked. A lookup that may spawn holds the lock until the
    /// new actor is in, so two creators of one id cannot race.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, Addr<A>>> {
        // The map stays consistent under a panic (single inserts/removes).
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Running actors.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no actor runs.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Spawns an actor for each of `states` whose id (`id_of`) has none yet
    /// (recovery, or a creation a lookup may have spawned already).
    pub fn spawn_missing<S>(
        &self,
        states: impl IntoIterator<Item = S>,
        id_of: impl Fn(&S) -> &str,
        mut spawn: impl FnMut(S) -> Addr<A>,
    ) {
        let mut actors = self.lock();
        for state in states {
            let id = id_of(&state);
            if !actors.contains_key(id) {
                let id = id.to_owned();
                actors.insert(id, spawn(state));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, Nouns};
    use actix::Context;
    use std::sync::LazyLock;

    static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
        let nouns = Nouns {
            one: "thing",
            outbox: "Events",
            store_write: "a thing",
        };
        Metrics::new("test", nouns, |_| ()).0
    });

    struct Idle;

    impl Actor for Idle {
        type Context = Context<Self>;
    }

    #[actix::test]
    async fn one_actor_per_id_and_only_the_owner_removes_it() {
        let actors = Actors::<Idle>::new(&METRICS);
        let mut spawned = 0;
        actors.spawn_missing(
            ["a", "b"],
            |s| s,
            |_| {
                spawned += 1;
                Idle.start()
            },
        );
        actors.spawn_missing(
            ["a", "c"],
            |s| s,
            |_| {
                spawned += 1;
                Idle.start()
            },
        );
        assert_eq!((spawned, actors.len()), (3, 3));

        let stranger = Idle.start();
        actors.stopped("a", "RUNNING", &stranger);
        assert_eq!(actors.len(), 3);
        let owner = actors.lock()["a"].clone();
        actors.stopped("a", "RUNNING", &owner);
        assert_eq!(actors.len(), 2);
    }
}

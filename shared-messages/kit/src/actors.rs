//! The actors of running workflows by id: the map both services' registries
//! keep, so that one id has at most one actor and a stopping actor removes
//! only itself, and the `actors` gauge they move as they start and stop;
//! and [`Leave`], how they stop the actors of a partition that goes.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};

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

/// Stop running here: the workflow's partition goes to another replica.
/// It comes through the actor's mailbox, so it is taken after any write in
/// flight (writes hold the mailbox) and the state the next owner loads is
/// the last one stored; the actor's timers go with it and are armed again
/// by the next owner, which resumes the workflow from the store. Each
/// workflow actor handles it by stopping.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave;

impl<A> Actors<A>
where
    A: Actor + Handler<Leave>,
    A::Context: ToEnvelope<A, Leave>,
{
    /// Stops the actors whose ids `leaving` accepts, each once its write
    /// in flight has committed ([`Leave`]); answers how many, once all
    /// have stopped.
    pub async fn leave_where(&self, leaving: impl Fn(&str) -> bool) -> usize {
        let addrs: Vec<Addr<A>> = self
            .lock()
            .iter()
            .filter(|(id, _)| leaving(id))
            .map(|(_, addr)| addr.clone())
            .collect();
        // An actor that stopped meanwhile has nothing left to do.
        futures::future::join_all(addrs.iter().map(|a| a.send(Leave))).await;
        addrs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, Nouns};
    use actix::{ActorContext, Context};
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

    impl Handler<Leave> for Idle {
        type Result = ();

        fn handle(&mut self, _: Leave, ctx: &mut Self::Context) {
            ctx.stop();
        }
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

    #[actix::test]
    async fn the_actors_of_a_partition_that_goes_stop_and_the_others_run_on() {
        let actors = Actors::<Idle>::new(&METRICS);
        actors.spawn_missing(["a-1", "a-2", "b-1"], |s| s, |_| Idle.start());
        let a1 = actors.lock()["a-1"].clone();
        let b1 = actors.lock()["b-1"].clone();

        assert_eq!(actors.leave_where(|id| id.starts_with("a-")).await, 2);
        // Stopped, once their mailbox reached the message.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while a1.connected() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(!a1.connected(), "a leaving actor stops");
        assert!(b1.connected(), "an actor of a partition kept runs on");
        assert_eq!(actors.leave_where(|id| id == "nobody").await, 0);
    }
}

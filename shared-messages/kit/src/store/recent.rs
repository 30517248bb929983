//! The states this process committed last, kept in memory so that a read
//! of one of them needs no call to the store. On SQLite every call is a
//! hand-off to the store's thread and back (two wake-ups), which is most
//! of what a status read costs; the answer from memory is the same, as
//! long as this process is the only writer, which a SQLite file (locked
//! to one process) guarantees. So only stores on SQLite keep one; a store
//! several replicas write (PostgreSQL) reads the database every time.
//!
//! A state is put here on the store's thread right after the transaction
//! that wrote it commits, so puts come in the order of the commits and a
//! reader never sees a state older than one already answered as stored.

use std::sync::{Arc, Mutex};

use hashlink::LruCache;

use super::sqlite::{in_one_transaction, SqliteWrite, SqliteWrites};
use super::{Sqlite, StoreError};

/// How many states are kept: the most recently committed or read.
pub const RECENT_STATES: usize = 4096;

/// The last states committed, by id, the least recently used forgotten
/// first past [`RECENT_STATES`].
pub struct Recent<T> {
    states: Mutex<LruCache<String, Arc<T>>>,
}

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Self::with_capacity(RECENT_STATES)
    }
}

impl<T> Recent<T> {
    /// Keeps at most `capacity` states.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            states: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The state last committed for `id`, if it is kept.
    pub fn get(&self, id: &str) -> Option<Arc<T>> {
        self.lock().get(id).cloned()
    }

    /// Records `state` as the one committed for `id` (call it after the
    /// commit, in commit order).
    pub fn put(&self, id: &str, state: T) {
        self.lock().insert(id.to_owned(), Arc::new(state));
    }

    /// Records the state of each of `writes`, just committed, in order
    /// (`state` gives a write's id and state).
    pub fn remember<W>(&self, writes: &[W], state: fn(&W) -> (&str, &T))
    where
        T: Clone,
    {
        for write in writes {
            let (id, state) = state(write);
            self.put(id, state.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Arc<T>>> {
        // Only single map operations run under the lock: never half-done.
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Stores `writes` in one transaction on `db`'s thread and, once it has
/// committed and before any later call runs, records their states in
/// `recent` ([`Recent::remember`]).
pub async fn save_all<W, T>(
    db: &Sqlite,
    recent: &Arc<Recent<T>>,
    writes: &[W],
    state: fn(&W) -> (&str, &T),
) -> Result<(), StoreError>
where
    W: SqliteWrite,
    T: Clone + Send + Sync + 'static,
{
    let (writes, recent) = (writes.to_vec(), recent.clone());
    db.call(move |conn| {
        in_one_transaction(conn, &writes, W::store)?;
        recent.remember(&writes, state);
        Ok(())
    })
    .await
}

/// How the group commit saves batches of `W` on `db`'s thread
/// ([`Sqlite::group_writes`]), recording the states of each batch in
/// `recent` once it has committed.
pub fn group_writes<W, T>(
    db: &Sqlite,
    recent: &Arc<Recent<T>>,
    state: fn(&W) -> (&str, &T),
) -> SqliteWrites<W>
where
    W: SqliteWrite,
    T: Clone + Send + Sync + 'static,
{
    let recent = recent.clone();
    SqliteWrites {
        stored: Some(Arc::new(move |writes| recent.remember(writes, state))),
        ..db.group_writes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_put_wins_and_the_least_recently_used_goes_first() {
        let recent = Recent::with_capacity(2);
        recent.put("a", 1);
        recent.put("a", 2);
        recent.put("b", 3);
        assert_eq!(
            recent.get("a").as_deref(),
            Some(&2),
            "read: now the most recent"
        );
        recent.put("c", 4);
        assert_eq!(
            recent.get("b"),
            None,
            "the least recently used is forgotten"
        );
        assert_eq!(recent.get("a").as_deref(), Some(&2));
        assert_eq!(recent.get("c").as_deref(), Some(&4));
    }
}

//! Partitions: several replicas of a service on one PostgreSQL database,
//! each workflow owned by exactly one of them at a time.
//!
//! # Design: PostgreSQL row leases with an epoch for fencing
//!
//! There is no consensus of our own: PostgreSQL, which the replicas share
//! anyway, decides who owns what, row by row.
//!
//! - **Partitions.** A workflow belongs to partition
//!   [`partition_of`]`(entity_id, PARTITIONS)` (FNV-1a 64-bit of the id,
//!   modulo `PARTITIONS`; stable across processes, versions and
//!   languages). `PARTITIONS` (default 16) is the same on every replica;
//!   a replica started with another number refuses to start.
//! - **Leases.** Table `partition_leases` has one row per partition:
//!   `owner`, `epoch`, `expires_at`. A replica owns a partition while the
//!   row names it at the epoch it claimed (a row past `expires_at` may be
//!   claimed by another; until then it is still its owner's). Claiming a
//!   free or expired row
//!   sets the owner and increments the epoch; the owner renews its rows
//!   every `LEASE_TTL_MS / 3` (default 10 s / 3). Expiry is always judged
//!   by the database's clock (`now()`), never by comparing replicas'
//!   clocks.
//! - **Fencing.** An epoch names one ownership. Every write of a
//!   partition's state runs [`check_fences`] in its transaction: the lease
//!   row is read `FOR SHARE` and the write is refused ([`Fenced`]) unless
//!   the row still names this replica at the epoch it was given. The
//!   share lock keeps the row unchanged until the write commits (a claim
//!   skips a row under such a lock, a renewal or release waits for it),
//!   so a replica that was paused or cut off and wakes up after another
//!   one claimed its partition cannot commit anything: either its write
//!   commits before the claim, or it sees the new epoch and is refused.
//! - **Balance.** Each replica heartbeats a row in `partition_replicas`;
//!   the live ones are those seen within a lease. With `R` live replicas
//!   sorted by id, the one at rank `i` aims at `P / R` partitions, plus
//!   one if `i < P % R`: the shares add up to `P` and differ by at most
//!   one. Above its share a replica hands partitions over (highest
//!   first); below, it claims the free ones it lacks (lowest first, in one
//!   statement, `FOR UPDATE SKIP LOCKED` so replicas claiming together
//!   never wait on each other).
//! - **Handover.** A partition handed over is first drained by the
//!   service ([`Change::Release`]: stop consuming, finish what is in
//!   flight, answer), and only then is its row freed; the next replica
//!   below its share claims it at its next tick.
//!
//! # What happens when
//!
//! Each row names the test (in `partitions/tests.rs`, on the local
//! PostgreSQL, short leases) that shows it.
//!
//! | event | what happens | shown by |
//! |---|---|---|
//! | replicas start | create the tables if missing (advisory lock), heartbeat; the first claims what it can, the others' arrival makes it hand over its extras: balanced within a few ticks | `three_replicas_share_sixteen_partitions`, `a_thousand_partitions_are_claimed_and_shared` |
//! | a replica joins | the others see one more live replica, hand over their extras (drained first), it claims them | `a_fourth_replica_rebalances_and_a_graceful_leave_hands_over_at_once` |
//! | SIGTERM ([`Leases::shutdown`]) | its replica row is deleted (the others' shares grow at once), every partition is drained and released, so the others claim them at their next tick: no wait for the lease | the same |
//! | `kill -9`, a crash | its leases are not renewed; after the TTL the others count one replica fewer and claim the expired rows: within the TTL plus a tick | `fenced_writes_stay_ordered_through_random_freezes_joins_and_leaves` (its kills) |
//! | paused (SIGSTOP, a long GC) and woken after the TTL | the others claim its partitions after the TTL; its renewal then finds the rows at new epochs: [`Change::Lost`]; any write it tries before that is refused by [`check_fences`] | `a_frozen_replica_loses_its_partitions_and_its_writes_are_fenced` |
//! | a write races a claim | the claim waits for the write that checked the old fence; after it, the old fence is refused; over many random freezes, joins, leaves and kills, every committed write carries the fence its writer was given, and per partition the epochs of committed writes never go down | `a_claim_waits_for_a_write_that_checked_the_old_fence`, `fenced_writes_stay_ordered_through_random_freezes_joins_and_leaves` |
//! | cut off from the database | renewals fail (each tick gives up after a tick's time); once the last successful renewal started a whole lease ago by the local monotonic clock (which started before the database's expiry was set), every partition is [`Change::Lost`], at the latest a tick later; claimed anew once the database answers. Its writes could not commit anyway: they need the database, and [`check_fences`] refuses them once another replica claims | `a_replica_cut_off_from_the_database_gives_its_partitions_up_after_the_lease` |
//! | `PARTITIONS` differs from the tables | [`Leases::start`] fails and says so | `another_partition_count_refuses_to_start` |
//!
//! # The tables
//!
//! `partition_leases (partition INT PRIMARY KEY, owner TEXT NULL, epoch
//! BIGINT NOT NULL DEFAULT 0, expires_at TIMESTAMPTZ NULL)` and
//! `partition_replicas (replica TEXT PRIMARY KEY, seen_at TIMESTAMPTZ NOT
//! NULL)` are the kit's own: [`Leases::start`] creates them (`CREATE TABLE
//! IF NOT EXISTS` under an advisory lock), apart from the service's
//! refinery migrations.
//!
//! # Wiring it into a service
//!
//! ```text
//! let settings = partitions::Settings::from_lookup(&|k| std::env::var(k).ok())?;
//! let (leases, mut changes) =
//!     Leases::start(&pg, &common.replica_id, settings, metrics.partitions_owned.clone()).await?;
//! // a task applies the changes:
//! //   Acquired(fence) -> recover the partition's workflows, start consuming it, keep `fence`
//! //   Lost(p)         -> stop p's actors at once, write nothing more for p
//! //   Release(p, done)-> stop consuming p, finish in-flight work, done.send(())
//! // every write of entity `id`, in its transaction:
//! //   check_fences(&tx, leases.replica(), &[fence_of(partition_of(id, settings.partitions))]).await?
//! // /readyz: leases.owned(); on SIGTERM: leases.shutdown().await (keep applying changes meanwhile)
//! ```
//!
//! A service on the bus does the lease part of this with [`Owner::start`]:
//! it fences the store's writes, takes the share, applies the changes to
//! the partitions' queues and to the service's [`Workflows`] (resumed and
//! stopped by id), and answers once the partitions claimed at start are
//! taken.
//!
//! The changes come in order on one channel, which the service must keep
//! reading (a [`Change::Release`] not answered holds the handover up to
//! [`DRAIN_TIMEOUT`]). [`Change::Acquired`] comes after the claim has
//! committed: the previous owner's writes are all in the database by
//! then, so recovering the partition's workflows from it sees them. On
//! SQLite (one replica, no leases) a service owns every partition and
//! writes without fences.

mod fence;
mod hash;
mod manager;
mod owner;
mod settings;
mod table;

pub use fence::{check_fences, Fence, Fenced};
pub use hash::partition_of;
#[cfg(any(test, feature = "test-support"))]
pub use manager::Frozen;
pub use manager::{Change, Leases, DRAIN_TIMEOUT};
pub use owner::{entity_key, settle, Held, Ids, Owner, Workflows};
pub use settings::{
    Settings, DEFAULT_LEASE_TTL_MS, DEFAULT_PARTITIONS, MAX_LEASE_TTL_MS, MAX_PARTITIONS,
    MIN_LEASE_TTL_MS,
};
pub use table::CREATE_LOCK;

#[cfg(test)]
mod tests;

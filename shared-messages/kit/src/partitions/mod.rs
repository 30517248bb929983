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
//!   row names it and has not expired. Claiming a free or expired row
//!   sets the owner and increments the epoch; the owner renews its rows
//!   every `LEASE_TTL_MS / 3` (default 10 s / 3). Expiry is always judged
//!   by the database's clock (`now()`), never by comparing replicas'
//!   clocks.
//! - **Fencing.** An epoch names one ownership. Every write of a
//!   partition's state runs [`check_fences`] in its transaction: the lease
//!   row is read `FOR SHARE` and the write is refused ([`Fenced`]) unless
//!   the row still names this replica at the epoch it was given. The
//!   share lock keeps the row unchanged until the write commits, so a
//!   replica that was paused or cut off and wakes up after another one
//!   claimed its partition cannot commit anything: either its write
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
//! | event | what happens |
//! |---|---|
//! | a replica starts | creates the tables if missing (advisory lock), heartbeats; the others see one more live replica and hand over their extras, which it claims: balanced within a few ticks |
//! | SIGTERM ([`Leases::shutdown`]) | its replica row is deleted (the others' shares grow at once), every partition is drained and released, so the others claim them at their next tick: no wait for the lease |
//! | `kill -9`, a crash | its leases are not renewed; after the TTL the others count one replica fewer and claim the expired rows: within the TTL plus a tick |
//! | paused (SIGSTOP, a long GC) and woken after the TTL | its renewal finds the rows at new epochs: [`Change::Lost`]; any write it tries before that is refused by [`check_fences`] |
//! | cut off from the database | renewals fail; once the last successful one started a whole lease ago (local monotonic clock, which starts before the database's expiry), every partition is [`Change::Lost`] |
//! | `PARTITIONS` differs from the tables | [`Leases::start`] fails and says so |
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

mod fence;
mod hash;
mod manager;
mod settings;
mod table;

pub use fence::{check_fences, Fence, Fenced};
pub use hash::partition_of;
#[cfg(any(test, feature = "test-support"))]
pub use manager::Frozen;
pub use manager::{Change, Leases, DRAIN_TIMEOUT};
pub use settings::{
    Settings, DEFAULT_LEASE_TTL_MS, DEFAULT_PARTITIONS, MAX_LEASE_TTL_MS, MAX_PARTITIONS,
    MIN_LEASE_TTL_MS,
};
pub use table::CREATE_LOCK;

#[cfg(test)]
mod tests;

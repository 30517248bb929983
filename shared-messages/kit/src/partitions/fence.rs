//! Fencing: a write commits only while its replica still holds the lease
//! at the epoch it was given.

use serde::Serialize;

use super::table::partition;
use crate::store::postgres::Transaction;
use crate::store::StoreError;

/// A lease held: `partition` is this replica's since the claim that gave
/// it `epoch`. Every claim of a partition increments its epoch, so an
/// epoch names one ownership and never comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Fence {
    pub partition: u16,
    pub epoch: i64,
}

/// A write refused: `replica` no longer holds `fence` (another replica
/// claimed the partition, or it was released). Never worth retrying on
/// this replica: the partition's work belongs elsewhere now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fenced: {replica} no longer holds partition {} at epoch {} ({}); nothing was written", fence.partition, fence.epoch, self.lease())]
pub struct Fenced {
    pub replica: String,
    pub fence: Fence,
    /// The partition's epoch in the database now; `None` when it has no
    /// row (a partition number beyond `PARTITIONS`).
    pub epoch: Option<i64>,
    /// Who holds it now; `None` when nobody does.
    pub owner: Option<String>,
}

impl Fenced {
    /// The lease as the database has it, in words.
    fn lease(&self) -> String {
        match (self.epoch, &self.owner) {
            (None, _) => "no such partition".into(),
            (Some(epoch), Some(owner)) => format!("the lease is at epoch {epoch}, held by {owner}"),
            (Some(epoch), None) => format!("the lease is at epoch {epoch}, free"),
        }
    }
}

/// The leases of the partitions `$1`, locked until the transaction ends.
const READ_LEASES: &str = "SELECT partition, owner, epoch FROM partition_leases
     WHERE partition = ANY($1)
     ORDER BY partition
     FOR SHARE";

/// Refuses the write in `tx` unless `replica` holds every lease in
/// `fences` at its epoch. Call it inside the write's transaction, before
/// committing (any time before the commit will do).
///
/// The lease rows are read `FOR SHARE`, in partition order: until `tx`
/// ends, a claim, renewal or release of those partitions waits (a claim
/// skips them), so the lease cannot change between this check and the
/// commit. An old owner therefore never commits after a new owner's
/// claim: either its write commits first, or it sees the new epoch here.
///
/// Answers [`StoreError::Fenced`] when refused (roll back; the service
/// stops work on that partition), or the database's error. Run it in a
/// `READ COMMITTED` transaction (PostgreSQL's default): at stricter
/// levels a concurrent claim makes it fail with a serialization error
/// instead, which refuses the write as well.
pub async fn check_fences(
    tx: &Transaction<'_>,
    replica: &str,
    fences: &[Fence],
) -> Result<(), StoreError> {
    if fences.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = fences.iter().map(|f| i32::from(f.partition)).collect();
    // Prepared once per connection: one round trip per check after that.
    let read = tx.prepare_cached(READ_LEASES).await?;
    let rows = tx.query(&read, &[&partitions]).await?;
    let leases: Vec<(u16, Option<String>, i64)> = rows
        .iter()
        .map(|r| (partition(r.get(0)), r.get(1), r.get(2)))
        .collect();
    for fence in fences {
        let lease = leases.iter().find(|(p, _, _)| *p == fence.partition);
        let holds = matches!(lease, Some((_, Some(owner), epoch)) if owner == replica && *epoch == fence.epoch);
        if !holds {
            return Err(StoreError::Fenced(Fenced {
                replica: replica.to_owned(),
                fence: *fence,
                epoch: lease.map(|(_, _, epoch)| *epoch),
                owner: lease.and_then(|(_, owner, _)| owner.clone()),
            }));
        }
    }
    Ok(())
}

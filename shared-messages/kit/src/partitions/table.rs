//! The kit's own two tables and every statement on them.
//!
//! They are not in a service's migrations: the lease manager creates them
//! itself ([`create`]), the same for every service, with `CREATE TABLE IF
//! NOT EXISTS` under an advisory lock of their own, so they sit beside a
//! service's refinery migrations without taking part in them.
//!
//! Every comparison with the time is made with the database's clock
//! (`now()`): replicas' clocks may disagree, the database's is one.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::{Fence, Settings};
use crate::store::StoreError;

/// The advisory lock creating the tables: the bytes of `leases` read as
/// one number, as [`Schema::lock`](crate::store::Schema::lock) makes a
/// service's, so the two never meet.
pub const CREATE_LOCK: i64 = 0x6c65_6173_6573;

/// Creates the tables and the partitions' rows if they are missing, and
/// refuses a database whose partitions are not `settings.partitions`.
pub async fn create(client: &mut Client, settings: &Settings) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS partition_leases (
             partition INT PRIMARY KEY,
             owner TEXT NULL,
             epoch BIGINT NOT NULL DEFAULT 0,
             expires_at TIMESTAMPTZ NULL);
         CREATE TABLE IF NOT EXISTS partition_replicas (
             replica TEXT PRIMARY KEY,
             seen_at TIMESTAMPTZ NOT NULL);",
    )
    .await?;
    let wanted = i32::from(settings.partitions);
    let row = tx
        .query_one(
            "SELECT count(*)::INT, min(partition), max(partition) FROM partition_leases",
            &[],
        )
        .await?;
    let (count, min, max): (i32, Option<i32>, Option<i32>) = (row.get(0), row.get(1), row.get(2));
    if count == 0 {
        tx.execute(
            "INSERT INTO partition_leases (partition)
             SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
            &[&wanted],
        )
        .await?;
    } else if (count, min, max) != (wanted, Some(0), Some(wanted - 1)) {
        return Err(StoreError::Open(format!(
            "PARTITIONS={wanted}, but this database's partition_leases table holds {count} \
             partitions ({} to {}): PARTITIONS must be the same on every replica of a service \
             (to change it, stop every replica and drop the tables partition_leases and \
             partition_replicas)",
            min.unwrap_or_default(),
            max.unwrap_or_default()
        )));
    }
    tx.commit().await?;
    Ok(())
}

/// Marks `replica` live now, and forgets replicas not seen for ten
/// leases (a pod gone for good leaves its row behind).
pub async fn heartbeat(client: &Client, replica: &str, ttl_ms: i64) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO partition_replicas (replica, seen_at) VALUES ($1, now())
             ON CONFLICT (replica) DO UPDATE SET seen_at = now()",
            &[&replica],
        )
        .await?;
    client
        .execute(
            "DELETE FROM partition_replicas
             WHERE seen_at < now() - $1::BIGINT * 10 * interval '1 millisecond'",
            &[&ttl_ms],
        )
        .await?;
    Ok(())
}

/// `replica` leaves: no longer counted among the live ones.
pub async fn leave(client: &Client, replica: &str) -> Result<(), StoreError> {
    client
        .execute(
            "DELETE FROM partition_replicas WHERE replica = $1",
            &[&replica],
        )
        .await?;
    Ok(())
}

/// The replicas seen within the last lease, in byte order.
pub async fn live(client: &Client, ttl_ms: i64) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query(
            "SELECT replica FROM partition_replicas
             WHERE seen_at > now() - $1::BIGINT * interval '1 millisecond'",
            &[&ttl_ms],
        )
        .await?;
    let mut live: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    live.sort_unstable();
    Ok(live)
}

/// Extends the leases `replica` holds at the epochs in `held`; answers
/// those still its own. The rows are locked in partition order (as
/// [`check_fences`](super::check_fences) locks them), so a renewal and a
/// write never deadlock.
pub async fn renew(
    client: &Client,
    replica: &str,
    held: &BTreeMap<u16, i64>,
    ttl_ms: i64,
) -> Result<Vec<u16>, StoreError> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let partitions: Vec<i32> = held.keys().map(|&p| i32::from(p)).collect();
    let epochs: Vec<i64> = held.values().copied().collect();
    let rows = client
        .query(
            "WITH held AS (
                 SELECT * FROM unnest($2::INT[], $3::BIGINT[]) AS h(partition, epoch)
             ), mine AS (
                 SELECT l.partition FROM partition_leases l
                 JOIN held h ON h.partition = l.partition AND h.epoch = l.epoch
                 WHERE l.owner = $1
                 ORDER BY l.partition
                 FOR UPDATE OF l
             )
             UPDATE partition_leases l
             SET expires_at = now() + $4::BIGINT * interval '1 millisecond'
             FROM mine WHERE l.partition = mine.partition
             RETURNING l.partition",
            &[&replica, &partitions, &epochs, &ttl_ms],
        )
        .await?;
    Ok(rows.iter().map(|r| partition(r.get(0))).collect())
}

/// Takes up to `count` of the lowest partitions that are free (never
/// held, released, or their lease run out) for `replica`, each at its
/// next epoch, in one statement. A row a write is checking at that moment
/// is skipped (and one another replica is claiming), to be taken at a
/// later tick.
pub async fn claim(
    client: &Client,
    replica: &str,
    ttl_ms: i64,
    count: usize,
) -> Result<Vec<Fence>, StoreError> {
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "WITH free AS (
                 SELECT partition FROM partition_leases
                 WHERE owner IS NULL OR expires_at IS NULL OR expires_at < now()
                 ORDER BY partition
                 LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             UPDATE partition_leases l
             SET owner = $1, epoch = l.epoch + 1,
                 expires_at = now() + $2::BIGINT * interval '1 millisecond'
             FROM free WHERE l.partition = free.partition
             RETURNING l.partition, l.epoch",
            &[&replica, &ttl_ms, &count],
        )
        .await?;
    let mut claimed: Vec<Fence> = rows
        .iter()
        .map(|r| Fence {
            partition: partition(r.get(0)),
            epoch: r.get(1),
        })
        .collect();
    claimed.sort_unstable();
    Ok(claimed)
}

/// Gives up `replica`'s lease on `fence` (if it still holds it at that
/// epoch), so another may claim it at once. The epoch stays; the next
/// claim increments it.
pub async fn release(client: &Client, replica: &str, fence: Fence) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE partition_leases SET owner = NULL, expires_at = NULL
             WHERE partition = $1 AND owner = $2 AND epoch = $3",
            &[&i32::from(fence.partition), &replica, &fence.epoch],
        )
        .await?;
    Ok(())
}

/// A partition number as stored; the table only holds 0..PARTITIONS.
pub(super) fn partition(stored: i32) -> u16 {
    u16::try_from(stored).unwrap_or(u16::MAX)
}

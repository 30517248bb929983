//! The lease manager on the local PostgreSQL server, a database per test,
//! with short leases so the suite stays quick.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use refinery::Runner;
use tokio::sync::{mpsc, RwLock};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use crate::store::testdb::TestDb;
use crate::store::{Postgres, StoreError};

/// A store of its own, as each replica (a process) has.
async fn store(db: &TestDb) -> Postgres {
    Postgres::open(&db.url, &Runner::new(&[]), 1)
        .await
        .expect("the test database opens")
}

fn settings(partitions: u16, ttl_ms: u64) -> Settings {
    Settings {
        partitions,
        lease_ttl: Duration::from_millis(ttl_ms),
    }
}

/// A replica as its service sees it: the leases, and what the service
/// believes it holds from the changes it applied (the fences it writes
/// with). A `Release` waits for writes in flight before answering.
struct Replica {
    name: String,
    pg: Postgres,
    leases: Option<Leases>,
    /// What the service holds, by partition: the epoch to write with.
    believed: Arc<StdMutex<BTreeMap<u16, i64>>>,
    /// Every change, in order: (`+` acquired / `-` lost / `r` released, fence).
    log: Arc<StdMutex<Vec<(char, Fence)>>>,
    /// Writes hold it shared; a drain takes it exclusively.
    in_flight: Arc<RwLock<()>>,
    gauge: Gauge,
    frozen: Option<Frozen>,
    driver: JoinHandle<()>,
}

impl Replica {
    async fn start(db: &TestDb, name: &str, settings: Settings) -> Self {
        let pg = store(db).await;
        let gauge = Gauge::default();
        let (leases, changes) = Leases::start(&pg, name, settings, gauge.clone())
            .await
            .expect("the lease manager starts");
        let believed = Arc::new(StdMutex::new(BTreeMap::new()));
        let log = Arc::new(StdMutex::new(Vec::new()));
        let in_flight = Arc::new(RwLock::new(()));
        let driver = tokio::spawn(apply(
            changes,
            believed.clone(),
            log.clone(),
            in_flight.clone(),
        ));
        Self {
            name: name.into(),
            pg,
            leases: Some(leases),
            believed,
            log,
            in_flight,
            gauge,
            frozen: None,
            driver,
        }
    }

    fn leases(&self) -> &Leases {
        self.leases.as_ref().expect("running")
    }

    fn owned(&self) -> Vec<Fence> {
        self.leases().owned()
    }

    fn believed(&self) -> Vec<Fence> {
        let believed = self.believed.lock().expect("not poisoned");
        believed
            .iter()
            .map(|(&partition, &epoch)| Fence { partition, epoch })
            .collect()
    }

    fn log(&self) -> Vec<(char, Fence)> {
        self.log.lock().expect("not poisoned").clone()
    }

    async fn freeze(&mut self) {
        self.frozen = Some(self.leases().freeze().await);
    }

    fn thaw(&mut self) {
        self.frozen = None;
    }

    async fn shutdown(&mut self) {
        self.thaw();
        if let Some(leases) = self.leases.take() {
            leases.shutdown().await;
        }
    }

    /// A write of `partition` with `fence`, committed only if the fence
    /// holds: a row in `fenced_writes`.
    async fn write(&self, fence: Fence, hold: Duration) -> Result<(), StoreError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await?;
        check_fences(&tx, &self.name, &[fence]).await?;
        tokio::time::sleep(hold).await;
        tx.execute(
            "INSERT INTO fenced_writes (partition, epoch, writer) VALUES ($1, $2, $3)",
            &[&i32::from(fence.partition), &fence.epoch, &self.name],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The service's side of the changes, as a real one would apply them.
async fn apply(
    mut changes: mpsc::UnboundedReceiver<Change>,
    believed: Arc<StdMutex<BTreeMap<u16, i64>>>,
    log: Arc<StdMutex<Vec<(char, Fence)>>>,
    in_flight: Arc<RwLock<()>>,
) {
    while let Some(change) = changes.recv().await {
        let record = |kind, partition, epoch| {
            log.lock()
                .expect("not poisoned")
                .push((kind, Fence { partition, epoch }));
        };
        match change {
            Change::Acquired(fence) => {
                believed
                    .lock()
                    .expect("not poisoned")
                    .insert(fence.partition, fence.epoch);
                record('+', fence.partition, fence.epoch);
            }
            Change::Lost(partition) => {
                let epoch = believed.lock().expect("not poisoned").remove(&partition);
                record('-', partition, epoch.unwrap_or(-1));
            }
            Change::Release(partition, done) => {
                let epoch = believed.lock().expect("not poisoned").remove(&partition);
                // Drained: no write with the old fence is still running.
                drop(in_flight.write().await);
                record('r', partition, epoch.unwrap_or(-1));
                let _ = done.send(());
            }
        }
    }
}

/// Waits until `check` passes, or fails with its last answer at `within`.
async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(()) => return,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Each replica's leases (`owned()`, and what its service applied) are
/// its share (P/R, or one more), disjoint, and cover all `partitions`.
fn balanced(replicas: &[&Replica], partitions: u16) -> Result<(), String> {
    let count = replicas.len();
    let low = usize::from(partitions) / count;
    let high = low + usize::from(usize::from(partitions) % count != 0);
    let mut seen = BTreeSet::new();
    for r in replicas {
        let owned = r.owned();
        if owned != r.believed() {
            return Err(format!(
                "{}: owned {owned:?}, service has {:?}",
                r.name,
                r.believed()
            ));
        }
        if !(low..=high).contains(&owned.len()) {
            return Err(format!(
                "{} owns {} (want {low}..={high})",
                r.name,
                owned.len()
            ));
        }
        for fence in owned {
            if !seen.insert(fence.partition) {
                return Err(format!("partition {} owned twice", fence.partition));
            }
        }
    }
    if seen.len() != usize::from(partitions) {
        return Err(format!("{} of {partitions} partitions owned", seen.len()));
    }
    Ok(())
}

/// The lease rows: partition -> (owner, epoch).
async fn lease_rows(pg: &Postgres) -> BTreeMap<u16, (Option<String>, i64)> {
    let client = pg.client().await.expect("a connection");
    let rows = client
        .query("SELECT partition, owner, epoch FROM partition_leases", &[])
        .await
        .expect("lease rows");
    rows.iter()
        .map(|r| (table::partition(r.get(0)), (r.get(1), r.get(2))))
        .collect()
}

/// The database agrees with what each replica believes it holds.
async fn rows_match(pg: &Postgres, replicas: &[&Replica]) {
    let rows = lease_rows(pg).await;
    for r in replicas {
        for fence in r.owned() {
            assert_eq!(
                rows.get(&fence.partition),
                Some(&(Some(r.name.clone()), fence.epoch)),
                "{}'s lease on {fence:?} in the table",
                r.name
            );
        }
    }
}

async fn create_writes_table(pg: &Postgres) {
    let client = pg.client().await.expect("a connection");
    client
        .batch_execute(
            "CREATE TABLE fenced_writes (seq BIGSERIAL PRIMARY KEY, partition INT NOT NULL,
             epoch BIGINT NOT NULL, writer TEXT NOT NULL)",
        )
        .await
        .expect("the writes table");
}

const WITHIN: Duration = Duration::from_secs(10);

/// `replica-a`, `replica-b` and `replica-c` on `db`.
async fn three_replicas(db: &TestDb, s: Settings) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for name in ["replica-a", "replica-b", "replica-c"] {
        replicas.push(Replica::start(db, name, s).await);
    }
    replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_sixteen_partitions() {
    let db = TestDb::create("partitions_three");
    let s = settings(16, 1500);
    let mut replicas = three_replicas(&db, s).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    eventually(WITHIN, "three replicas balanced", || balanced(&all, 16)).await;
    rows_match(&replicas[0].pg, &all).await;
    for r in &replicas {
        assert_eq!(r.gauge.get(), r.owned().len() as i64, "the gauge follows");
    }
    for r in &mut replicas {
        r.shutdown().await;
    }
    let rows = lease_rows(&replicas[0].pg).await;
    assert!(
        rows.values().all(|(owner, _)| owner.is_none()),
        "all released: {rows:?}"
    );
}

/// The most partitions allowed: claimed over a few ticks, renewed in one
/// statement, shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_partitions_are_claimed_and_shared() {
    let db = TestDb::create("partitions_many");
    let s = settings(MAX_PARTITIONS, 1500);
    let mut a = Replica::start(&db, "replica-a", s).await;
    eventually(WITHIN, "one replica owns them all", || {
        balanced(&[&a], MAX_PARTITIONS)
    })
    .await;
    let mut b = Replica::start(&db, "replica-b", s).await;
    eventually(WITHIN, "two share them", || {
        balanced(&[&a, &b], MAX_PARTITIONS)
    })
    .await;
    rows_match(&a.pg, &[&a, &b]).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_replica_rebalances_and_a_graceful_leave_hands_over_at_once() {
    let db = TestDb::create("partitions_join_leave");
    let s = settings(16, 3000);
    let mut replicas = three_replicas(&db, s).await;
    let three: Vec<&Replica> = replicas.iter().collect();
    eventually(WITHIN, "three replicas balanced", || balanced(&three, 16)).await;

    replicas.push(Replica::start(&db, "replica-d", s).await);
    let four: Vec<&Replica> = replicas.iter().collect();
    eventually(WITHIN, "four replicas at 4 each", || balanced(&four, 16)).await;
    rows_match(&replicas[0].pg, &four).await;

    let mut leaving = replicas.remove(1);
    let theirs = leaving.owned();
    leaving.shutdown().await;
    let left = Instant::now();
    // Released, not left to expire: the rows are free (or already taken).
    let rows = lease_rows(&replicas[0].pg).await;
    for fence in &theirs {
        let (owner, _) = &rows[&fence.partition];
        assert_ne!(
            owner.as_deref(),
            Some("replica-b"),
            "partition {} released",
            fence.partition
        );
    }
    let log = leaving.log();
    for fence in &theirs {
        assert!(
            log.contains(&('r', *fence)),
            "{fence:?} handed over through the drain: {log:?}"
        );
    }
    let client = replicas[0].pg.client().await.expect("a connection");
    let row = client
        .query_opt(
            "SELECT 1 FROM partition_replicas WHERE replica = 'replica-b'",
            &[],
        )
        .await
        .expect("replica rows");
    assert!(row.is_none(), "its replica row is gone");
    drop(client);

    let rest: Vec<&Replica> = replicas.iter().collect();
    eventually(WITHIN, "the others take its partitions", || {
        balanced(&rest, 16)
    })
    .await;
    let took = left.elapsed();
    assert!(
        took < s.lease_ttl,
        "taken over in {took:?}: about a tick ({:?}), not the lease ({:?})",
        s.renew_every(),
        s.lease_ttl
    );
    for r in &mut replicas {
        r.shutdown().await;
    }
}

/// A replica that stands aside (cut off from the broker) hands every
/// partition over through the drain, as on SIGTERM, and counts as gone:
/// the others take its partitions at their next tick. Back in, it gets
/// its share again, at new epochs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_standing_aside_hands_over_and_comes_back_for_its_share() {
    let db = TestDb::create("partitions_aside");
    let s = settings(16, 3000);
    let mut replicas = three_replicas(&db, s).await;
    let three: Vec<&Replica> = replicas.iter().collect();
    eventually(WITHIN, "three replicas balanced", || balanced(&three, 16)).await;

    let theirs = replicas[2].owned();
    replicas[2].leases().stand_aside(true);
    let aside_at = Instant::now();
    let rest: Vec<&Replica> = replicas[..2].iter().collect();
    eventually(WITHIN, "the other two take every partition", || {
        balanced(&rest, 16)
    })
    .await;
    let took = aside_at.elapsed();
    assert!(
        took < s.lease_ttl,
        "taken over in {took:?}: about a tick, not the lease ({:?})",
        s.lease_ttl
    );
    let log = replicas[2].log();
    for fence in &theirs {
        assert!(
            log.contains(&('r', *fence)),
            "{fence:?} handed over through the drain: {log:?}"
        );
    }
    assert!(replicas[2].owned().is_empty() && replicas[2].believed().is_empty());
    rows_match(&replicas[0].pg, &rest).await;

    replicas[2].leases().stand_aside(false);
    eventually(WITHIN, "three replicas balanced again", || {
        balanced(&three, 16)
    })
    .await;
    let epochs: BTreeMap<u16, i64> = theirs.iter().map(|f| (f.partition, f.epoch)).collect();
    for fence in replicas[2].owned() {
        if let Some(old) = epochs.get(&fence.partition) {
            assert!(fence.epoch > *old, "claimed anew: {old} then {fence:?}");
        }
    }
    for r in &mut replicas {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_loses_its_partitions_and_its_writes_are_fenced() {
    let db = TestDb::create("partitions_frozen");
    let s = settings(16, 1200);
    let mut replicas = three_replicas(&db, s).await;
    create_writes_table(&replicas[0].pg).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    eventually(WITHIN, "three replicas balanced", || balanced(&all, 16)).await;

    let stale = replicas[0].believed();
    replicas[0]
        .write(stale[0], Duration::ZERO)
        .await
        .expect("the owner writes");
    replicas[0].freeze().await;
    let frozen_at = Instant::now();
    {
        let others: Vec<&Replica> = replicas[1..].iter().collect();
        eventually(
            WITHIN,
            "the others take the frozen replica's partitions",
            || balanced(&others, 16),
        )
        .await;
    }
    assert!(
        frozen_at.elapsed() + s.renew_every() >= s.lease_ttl,
        "taken only once the lease ran out ({:?} after the freeze)",
        frozen_at.elapsed()
    );
    // Still frozen, still believing: its writes are refused.
    for fence in &stale {
        match replicas[0].write(*fence, Duration::ZERO).await {
            Err(StoreError::Fenced(fenced)) => {
                assert_eq!(fenced.fence, *fence);
                let text = fenced.to_string();
                assert!(
                    text.contains("replica-a no longer holds partition"),
                    "{text}"
                );
            }
            other => panic!("a stale fence {fence:?} must be refused: {other:?}"),
        }
    }
    replicas[0].thaw();
    eventually(WITHIN, "the woken replica hears Lost", || {
        let log = replicas[0].log();
        let lost = stale.iter().filter(|f| log.contains(&('-', **f))).count();
        (lost == stale.len())
            .then_some(())
            .ok_or(format!("{lost} of {} lost: {log:?}", stale.len()))
    })
    .await;
    let all: Vec<&Replica> = replicas.iter().collect();
    eventually(WITHIN, "rebalanced with the woken replica", || {
        balanced(&all, 16)
    })
    .await;
    for fence in &stale {
        assert!(
            matches!(
                replicas[0].write(*fence, Duration::ZERO).await,
                Err(StoreError::Fenced(_))
            ),
            "an old epoch stays refused: {fence:?}"
        );
    }
    let fresh = replicas[0].believed()[0];
    replicas[0]
        .write(fresh, Duration::ZERO)
        .await
        .expect("a fence of the new ownership writes");
    for r in &mut replicas {
        r.shutdown().await;
    }
}

/// A database that stops answering (here: the lease table locked by
/// another session, so renewals hang) costs a replica every partition
/// once a whole lease has passed since its last renewal started; it
/// claims them again once the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_database_gives_its_partitions_up_after_the_lease() {
    let db = TestDb::create("partitions_cut_off");
    let s = settings(4, 900);
    let mut replica = Replica::start(&db, "replica-a", s).await;
    eventually(WITHIN, "all four owned", || balanced(&[&replica], 4)).await;
    let held = replica.owned();

    let mut admin = store(&db).await.client().await.expect("a connection");
    let lock = admin.transaction().await.expect("a transaction");
    lock.batch_execute("LOCK TABLE partition_leases IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("the lease table locked");
    let cut_at = Instant::now();
    eventually(WITHIN, "every partition lost", || {
        let log = replica.log();
        let lost = held.iter().filter(|f| log.contains(&('-', **f))).count();
        (lost == held.len() && replica.owned().is_empty() && replica.gauge.get() == 0)
            .then_some(())
            .ok_or(format!(
                "{lost} of {} lost; owned {:?}",
                held.len(),
                replica.owned()
            ))
    })
    .await;
    let took = cut_at.elapsed();
    assert!(
        took + s.renew_every() >= s.lease_ttl && took <= s.lease_ttl * 3,
        "given up about a lease after the last renewal, not {took:?}"
    );
    lock.rollback().await.expect("unlocked");
    eventually(WITHIN, "all four owned again", || balanced(&[&replica], 4)).await;
    for (old, new) in held.iter().zip(replica.owned()) {
        assert!(new.epoch > old.epoch, "claimed anew: {old:?} then {new:?}");
    }
    replica.shutdown().await;
}

#[tokio::test]
async fn another_partition_count_refuses_to_start() {
    let db = TestDb::create("partitions_count");
    let pg = store(&db).await;
    let (leases, changes) = Leases::start(&pg, "replica-a", settings(16, 1000), Gauge::default())
        .await
        .expect("starts");
    for other in [8, 32] {
        let error = Leases::start(&pg, "replica-b", settings(other, 1000), Gauge::default())
            .await
            .err()
            .expect("refused");
        let text = error.to_string();
        assert!(
            text.contains(&format!("PARTITIONS={other}")) && text.contains("holds 16 partitions"),
            "{text}"
        );
        assert!(text.contains("the same on every replica"), "{text}");
    }
    // A service no longer listening does not hold the shutdown up.
    drop(changes);
    let started = Instant::now();
    leases.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// The property fencing rests on: while a write that checked a fence is
/// open, its lease row cannot be claimed; once it commits, the claim
/// goes through and the old fence is refused.
#[tokio::test]
async fn a_claim_waits_for_a_write_that_checked_the_old_fence() {
    let db = TestDb::create("partitions_claim_waits");
    let pg = store(&db).await;
    let mut admin = pg.client().await.expect("a connection");
    table::create(&mut admin, &settings(2, 1000))
        .await
        .expect("tables");
    admin
        .batch_execute(
            "UPDATE partition_leases SET owner = 'a', epoch = 1,
                 expires_at = now() - interval '1 second' WHERE partition = 0;
             UPDATE partition_leases SET owner = 'c', epoch = 1,
                 expires_at = now() + interval '1 minute' WHERE partition = 1;
             CREATE TABLE fenced_writes (partition INT, epoch BIGINT, writer TEXT);",
        )
        .await
        .expect("a's lease has run out, c's has not");
    let old = Fence {
        partition: 0,
        epoch: 1,
    };
    let mut writer = pg.client().await.expect("a connection");
    let tx = writer.transaction().await.expect("a transaction");
    check_fences(&tx, "a", &[old])
        .await
        .expect("nobody claimed it yet: a may write");
    let claimer = pg.client().await.expect("a connection");
    assert_eq!(
        table::claim(&claimer, "b", 1000, 2).await.expect("claims"),
        vec![],
        "the row under a's check is not claimable until a's write ends"
    );
    tx.execute("INSERT INTO fenced_writes VALUES (0, 1, 'a')", &[])
        .await
        .expect("a writes");
    tx.commit().await.expect("a commits");
    let claimed = table::claim(&claimer, "b", 1000, 2).await.expect("claims");
    let new = Fence {
        partition: 0,
        epoch: 2,
    };
    assert_eq!(claimed, vec![new], "free now (and only that one)");
    let tx = writer.transaction().await.expect("a transaction");
    match check_fences(&tx, "a", &[old]).await {
        Err(StoreError::Fenced(fenced)) => {
            assert_eq!(
                (fenced.epoch, fenced.owner.as_deref()),
                (Some(2), Some("b"))
            );
            assert_eq!(
                fenced.to_string(),
                "fenced: a no longer holds partition 0 at epoch 1 (the lease is at epoch 2, \
                 held by b); nothing was written"
            );
        }
        other => panic!("the old fence must be refused: {other:?}"),
    }
    drop(tx);
    let tx = writer.transaction().await.expect("a transaction");
    check_fences(&tx, "b", &[new])
        .await
        .expect("b's fence holds");
    let missing = Fence {
        partition: 7,
        epoch: 1,
    };
    assert!(
        matches!(check_fences(&tx, "b", &[new, missing]).await, Err(StoreError::Fenced(f)) if f.fence == missing && f.epoch.is_none()),
        "a partition without a row is refused"
    );
    check_fences(&tx, "b", &[]).await.expect("nothing to check");
}

/// splitmix64: a seeded generator, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Writes committed and refused, over every writer.
#[derive(Default)]
struct Counts {
    committed: AtomicU64,
    refused: AtomicU64,
}

/// Writes as fast as it can with the fences its service believes it
/// holds, including while its manager is frozen (the worst case: a
/// service that keeps writing on a stale belief).
fn spawn_writer(replica: &Replica, seed: u64, counts: Arc<Counts>) -> JoinHandle<()> {
    let believed = replica.believed.clone();
    let in_flight = replica.in_flight.clone();
    let name = replica.name.clone();
    let pg = replica.pg.clone();
    tokio::spawn(async move {
        let mut rng = Rng(seed);
        loop {
            let guard = in_flight.read().await;
            let fence = {
                let believed = believed.lock().expect("not poisoned");
                let n = believed.len() as u64;
                believed
                    .iter()
                    .nth(rng.below(n) as usize)
                    .map(|(&partition, &epoch)| Fence { partition, epoch })
            };
            let Some(fence) = fence else {
                drop(guard);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            // Now and then a write takes its time between the check and
            // the commit: a claim or a newer write may come in between.
            let hold = if rng.below(10) == 0 {
                Duration::from_millis(20 + rng.below(60))
            } else {
                Duration::from_millis(rng.below(4))
            };
            let outcome = async {
                let mut client = pg.client().await?;
                let tx = client.transaction().await?;
                check_fences(&tx, &name, &[fence]).await?;
                tokio::time::sleep(hold).await;
                tx.execute(
                    "INSERT INTO fenced_writes (partition, epoch, writer) VALUES ($1, $2, $3)",
                    &[&i32::from(fence.partition), &fence.epoch, &name],
                )
                .await?;
                tx.commit().await?;
                Ok::<_, StoreError>(())
            }
            .await;
            drop(guard);
            match outcome {
                Ok(()) => {
                    counts.committed.fetch_add(1, Ordering::Relaxed);
                }
                Err(StoreError::Fenced(_)) => {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => panic!("{name}: a write failed otherwise: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_stay_ordered_through_random_freezes_joins_and_leaves() {
    let seed = std::env::var("PARTITIONS_RACE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let rounds: u32 = std::env::var("PARTITIONS_RACE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(80);
    eprintln!(
        "fencing race: seed {seed} (PARTITIONS_RACE_SEED={seed} replays it), {rounds} rounds"
    );
    let mut rng = Rng(seed);
    let db = TestDb::create("partitions_race");
    let s = settings(8, 600);
    let counts = Arc::new(Counts::default());
    create_writes_table(&store(&db).await).await;

    let mut running: Vec<(Replica, JoinHandle<()>)> = Vec::new();
    // What each replica that left was given: (name, its changes).
    let mut gone: Vec<(String, Vec<(char, Fence)>)> = Vec::new();
    let mut joined = 0;
    let mut actions = Vec::new();
    let mut join = |seed: u64| {
        joined += 1;
        let name = format!("replica-{joined:02}");
        let (db, counts) = (&db, counts.clone());
        async move {
            let replica = Replica::start(db, &name, s).await;
            let writer = spawn_writer(&replica, seed, counts);
            (replica, writer)
        }
    };
    for _ in 0..3 {
        let r = join(rng.next()).await;
        running.push(r);
    }
    for round in 0..rounds {
        let thawed: Vec<usize> = (0..running.len())
            .filter(|&i| running[i].0.frozen.is_none())
            .collect();
        let frozen: Vec<usize> = (0..running.len())
            .filter(|&i| running[i].0.frozen.is_some())
            .collect();
        let pick = |rng: &mut Rng, from: &[usize]| from[rng.below(from.len() as u64) as usize];
        match rng.below(6) {
            0 | 1 if thawed.len() >= 2 => {
                let i = pick(&mut rng, &thawed);
                actions.push(format!("{round}: freeze {}", running[i].0.name));
                running[i].0.freeze().await;
            }
            2 if !frozen.is_empty() => {
                let i = pick(&mut rng, &frozen);
                actions.push(format!("{round}: thaw {}", running[i].0.name));
                running[i].0.thaw();
            }
            3 if running.len() < 5 => {
                let r = join(rng.next()).await;
                actions.push(format!("{round}: join {}", r.0.name));
                running.push(r);
            }
            4 if thawed.len() >= 2 => {
                let i = pick(&mut rng, &thawed);
                let (mut replica, writer) = running.remove(i);
                actions.push(format!("{round}: leave {}", replica.name));
                replica.shutdown().await;
                stop_writer(writer).await;
                gone.push((replica.name.clone(), replica.log()));
            }
            5 if thawed.len() >= 2 => {
                // A crash: the manager and the writer stop where they are.
                let i = pick(&mut rng, &thawed);
                let (mut replica, writer) = running.remove(i);
                actions.push(format!("{round}: kill {}", replica.name));
                stop_writer(writer).await;
                drop(replica.leases.take());
                replica.driver.abort();
                gone.push((replica.name.clone(), replica.log()));
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(300))).await;
    }
    for (replica, _) in &mut running {
        replica.thaw();
    }
    {
        let live: Vec<&Replica> = running.iter().map(|(r, _)| r).collect();
        let context = format!("seed {seed}, actions {actions:?}");
        eventually(
            Duration::from_secs(15),
            &format!("balanced at the end ({context})"),
            || balanced(&live, 8),
        )
        .await;
        rows_match(&live[0].pg, &live).await;
    }
    let pg = running[0].0.pg.clone();
    for (mut replica, writer) in running {
        stop_writer(writer).await;
        replica.shutdown().await;
        gone.push((replica.name.clone(), replica.log()));
    }
    let committed = counts.committed.load(Ordering::Relaxed);
    let refused = counts.refused.load(Ordering::Relaxed);
    let context =
        format!("seed {seed}; {committed} committed, {refused} refused; actions {actions:?}");
    check_writes(&pg, &gone, &context).await;
    assert!(committed > 100, "writes happened: {context}");
    eprintln!("fencing race: {context}");
}

async fn stop_writer(writer: JoinHandle<()>) {
    writer.abort();
    let _ = writer.await;
}

/// The invariants over every committed write (in commit order: a write's
/// sequence number is drawn after its fence check, which holds the lease
/// row until the commit, and a new epoch's first check waits for it):
/// per partition the epochs never go down; one writer per (partition,
/// epoch), the replica that was given that fence; and no fence was ever
/// given to two replicas.
async fn check_writes(pg: &Postgres, replicas: &[(String, Vec<(char, Fence)>)], context: &str) {
    let mut given: BTreeMap<Fence, String> = BTreeMap::new();
    for (name, log) in replicas {
        for &(kind, fence) in log {
            if kind == '+' {
                if let Some(other) = given.insert(fence, name.clone()) {
                    panic!("{fence:?} given to {other} and {name}: {context}");
                }
            }
        }
    }
    let client = pg.client().await.expect("a connection");
    let rows = client
        .query(
            "SELECT partition, epoch, writer FROM fenced_writes ORDER BY seq",
            &[],
        )
        .await
        .expect("the writes");
    let mut last: BTreeMap<u16, (i64, String)> = BTreeMap::new();
    for row in &rows {
        let partition = table::partition(row.get(0));
        let (epoch, writer): (i64, String) = (row.get(1), row.get(2));
        let fence = Fence { partition, epoch };
        assert_eq!(
            given.get(&fence),
            Some(&writer),
            "a committed write by the replica given its fence {fence:?}: {context}"
        );
        if let Some((before, by)) = last.get(&partition) {
            assert!(
                epoch > *before || (epoch == *before && writer == *by),
                "partition {partition}: {writer} at epoch {epoch} after {by} at epoch {before}: {context}"
            );
        }
        last.insert(partition, (epoch, writer));
    }
}

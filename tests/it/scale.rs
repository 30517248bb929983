//! Several replicas (issue 15): fulfillment-service as several processes
//! on one PostgreSQL database, each fulfillment owned by the replica that
//! holds its partition's lease (`service_kit::partitions`).
//!
//! Invariants checked, whatever dies or stalls: the partitions are shared
//! out with none owned twice, every order ships, and every fulfillment
//! ships exactly once (one distinct SHIPPED-event id, [`EventLog`]).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use service_kit::partitions::partition_of;
use system_tests::{eventually, FulfillmentApi, Service, TcpProxy, TestDatabase, TestSystem};

use crate::durability::EventLog;

const PARTITIONS: u16 = 16;
/// Short leases, so a crash is taken over within seconds.
const LEASE_TTL_MS: &str = "2000";
/// Long enough for a slow machine; every wait ends as soon as it holds.
const DEADLINE: Duration = Duration::from_secs(60);

const ORDER_ENV: &[(&str, &str)] = &[
    ("INVENTORY_DELAY_MS", "10"),
    ("PAYMENT_DELAY_MS", "10"),
    ("POLL_INTERVAL_MS", "200"),
    ("QUERY_TIMEOUT_MS", "3000"),
];

/// A system with `replicas` fulfillment-service processes on one database.
/// Fields drop in order: the replicas stop before the system's vhost and
/// their database go.
struct Replicas {
    fulfillment: Vec<Service>,
    system: TestSystem,
    database: TestDatabase,
    step_delay_ms: &'static str,
}

impl Replicas {
    async fn start(label: &str, replicas: usize, step_delay_ms: &'static str) -> Result<Self> {
        let system = TestSystem::builder(label).logged().start().await?;
        let database = TestDatabase::create(&format!("{label}_fulfillment"))?;
        let mut this = Self {
            system,
            database,
            fulfillment: Vec::new(),
            step_delay_ms,
        };
        for n in 0..replicas {
            this.add_replica(&format!("{label}-{n}")).await?;
        }
        Ok(this)
    }

    async fn add_replica(&mut self, replica: &str) -> Result<()> {
        let env = [
            ("STORE_URL", self.database.url.as_str()),
            ("REPLICA_ID", replica),
            ("LEASE_TTL_MS", LEASE_TTL_MS),
            ("STEP_DELAY_MS", self.step_delay_ms),
            ("QUERY_TIMEOUT_MS", "3000"),
        ];
        let service = self
            .system
            .start_service("fulfillment-service", &env)
            .await
            .with_context(|| format!("fulfillment-service replica {replica}"))?;
        self.fulfillment.push(service);
        Ok(())
    }

    /// A replica that reaches the broker at `amqp_url` instead of the
    /// system's (through a [`TcpProxy`], say).
    async fn add_replica_on(&mut self, replica: &str, amqp_url: &str) -> Result<()> {
        let env = [
            ("STORE_URL", self.database.url.as_str()),
            ("REPLICA_ID", replica),
            ("LEASE_TTL_MS", LEASE_TTL_MS),
            ("STEP_DELAY_MS", self.step_delay_ms),
            ("QUERY_TIMEOUT_MS", "3000"),
            ("AMQP_URL", amqp_url),
        ];
        let service = self
            .system
            .start_service("fulfillment-service", &env)
            .await
            .with_context(|| format!("fulfillment-service replica {replica}"))?;
        self.fulfillment.push(service);
        Ok(())
    }

    fn api(&self, n: usize) -> FulfillmentApi {
        FulfillmentApi::of(&self.fulfillment[n])
    }

    /// The replicas still running.
    fn running(&self) -> Vec<&Service> {
        self.fulfillment
            .iter()
            .filter(|s| s.pid().is_some())
            .collect()
    }
}

/// The partitions `service` owns, from its `/readyz`.
async fn owned(service: &Service) -> Result<Vec<u16>> {
    let (_, body) = FulfillmentApi::of(service).readyz().await?.parts();
    let partitions = body["partitions"]
        .as_array()
        .with_context(|| format!("partitions in /readyz: {body}"))?;
    partitions
        .iter()
        .map(|p| {
            p.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .context("a partition number")
        })
        .collect()
}

/// Waits until `services` own every partition between them, none twice,
/// each `P / R` or one more.
async fn wait_balanced(services: &[&Service]) -> Result<Vec<Vec<u16>>> {
    let r = services.len() as u16;
    let (low, high) = (PARTITIONS / r, PARTITIONS.div_ceil(r));
    let last = std::sync::Mutex::new(Vec::new());
    let result = eventually(
        &format!("{r} replicas to own {low}-{high} partitions each"),
        DEADLINE,
        || async {
            let mut shares = Vec::new();
            for service in services {
                shares.push(owned(service).await?);
            }
            *last.lock().expect("lock") = shares.clone();
            let all: BTreeSet<u16> = shares.iter().flatten().copied().collect();
            let count: usize = shares.iter().map(Vec::len).sum();
            let balanced = all.len() == usize::from(PARTITIONS)
                && count == all.len()
                && shares
                    .iter()
                    .all(|s| (usize::from(low)..=usize::from(high)).contains(&s.len()));
            Ok(balanced.then_some(shares))
        },
    )
    .await;
    result.with_context(|| format!("last seen: {:?}", last.lock().expect("lock")))
}

/// Waits until every one of `count` fulfillments shipped, and checks that
/// each shipped exactly once.
async fn wait_each_shipped_once(events: &EventLog, count: usize) -> Result<()> {
    eventually(
        &format!("{count} fulfillments SHIPPED"),
        DEADLINE * 2,
        || async { Ok((events.shipped().len() >= count).then_some(())) },
    )
    .await?;
    let shipped = events.shipped();
    let twice: Vec<_> = shipped.iter().filter(|(_, ids)| ids.len() != 1).collect();
    ensure!(
        twice.is_empty(),
        "fulfillments shipped more than once: {twice:?}"
    );
    ensure!(
        shipped.len() == count,
        "{} shipped, not {count}",
        shipped.len()
    );
    Ok(())
}

/// Orders placed through order-service, `count` of them, one at a time.
async fn place_orders(system: &TestSystem, count: usize, into: &mut Vec<String>) -> Result<()> {
    for _ in 0..count {
        into.push(system.orders().place_demo().await?.workflow_id);
    }
    Ok(())
}

async fn orders_shipped(system: &TestSystem) -> Result<usize> {
    let body: Value = system
        .orders()
        .list("status=SHIPPED&limit=500")
        .await?
        .expect(200)?;
    Ok(body["orders"].as_array().map_or(0, Vec::len))
}

/// 300 orders while one replica of three is killed (`kill -9`) and one is
/// stopped (SIGTERM): the survivor takes every partition, every order
/// ships, every fulfillment ships once; a new replica gets its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_partitions_and_every_order_ships_once_through_kill_and_sigterm(
) -> Result<()> {
    let mut replicas = Replicas::start("scale-crash", 3, "30").await?;
    let events = EventLog::start(&replicas.system.amqp_url).await?;
    replicas
        .system
        .start_orders(ORDER_ENV)
        .await?
        .wait_ready()
        .await?;
    wait_balanced(&replicas.running()).await?;

    let mut orders = Vec::new();
    // The last of these are mid-way when the first replica dies.
    place_orders(&replicas.system, 100, &mut orders).await?;
    replicas.fulfillment[0].kill().await?;
    place_orders(&replicas.system, 100, &mut orders).await?;
    let stopped = replicas.fulfillment[1]
        .terminate(Duration::from_secs(30))
        .await?;
    ensure!(stopped.success(), "SIGTERM stops cleanly: {stopped:?}");
    place_orders(&replicas.system, 100, &mut orders).await?;
    wait_balanced(&replicas.running()).await?;

    wait_each_shipped_once(&events, orders.len()).await?;
    eventually("every order SHIPPED", DEADLINE, || async {
        Ok((orders_shipped(&replicas.system).await? == orders.len()).then_some(()))
    })
    .await?;

    replicas.add_replica("scale-crash-new").await?;
    wait_balanced(&replicas.running()).await?;
    Ok(())
}

/// A fulfillment owned by one replica is started, read, paused and resumed
/// through the others, and queried through order-service over the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_answers_for_fulfillments_another_owns() -> Result<()> {
    let mut replicas = Replicas::start("scale-any", 3, "60000").await?;
    replicas
        .system
        .start_orders(ORDER_ENV)
        .await?
        .wait_ready()
        .await?;
    let shares = wait_balanced(&replicas.running()).await?;

    for _ in 0..3 {
        let workflow = replicas.system.orders().place_demo().await?.workflow_id;
        let status: Value = eventually("the fulfillment to start", DEADLINE, || async {
            let status: Value = replicas
                .system
                .orders()
                .status(&workflow)
                .await?
                .expect(200)?;
            Ok(status["fulfillmentWorkflowId"]
                .as_str()
                .is_some()
                .then_some(status))
        })
        .await?;
        let id = status["fulfillmentWorkflowId"]
            .as_str()
            .context("fulfillment id")?
            .to_owned();
        let partition = partition_of(&id, PARTITIONS);
        let owner = shares
            .iter()
            .position(|s| s.contains(&partition))
            .context("an owner")?;
        let others: Vec<usize> = (0..3).filter(|n| *n != owner).collect();
        for n in 0..3 {
            let api = replicas.api(n);
            eventually(&format!("replica {n} to read {id}"), DEADLINE, || async {
                Ok(api.status_of(&id).await?.map(|_| ()))
            })
            .await?;
        }
        let (code, body) = replicas.api(others[0]).pause(&id).await?.parts();
        ensure!(
            code == 200 && body["status"] == "PAUSED",
            "paused through replica {} (owner {owner}): {code} {body}",
            others[0]
        );
        let (code, body) = replicas.api(others[1]).resume(&id).await?.parts();
        ensure!(
            code == 200 && body["status"] != "PAUSED",
            "resumed through replica {}: {code} {body}",
            others[1]
        );
        let (code, body) = replicas
            .system
            .orders()
            .fulfillment_status(&id)
            .await?
            .parts();
        ensure!(code == 200, "queried over the broker: {code} {body}");
    }

    // A start sent to a replica that does not own the new fulfillment.
    let order = format!("ORD-SCALE-{}", uuid::Uuid::new_v4().simple());
    let id = format!("fulfillment-{order}");
    let partition = partition_of(&id, PARTITIONS);
    let not_owner = shares
        .iter()
        .position(|s| !s.contains(&partition))
        .context("a replica that does not own it")?;
    let body = serde_json::json!({
        "orderId": order,
        "customerId": "customer-1",
        "items": [{"productId": "p-1", "productName": "Widget", "quantity": 1, "price": 1.0}],
        "shippingAddress": {"street": "1 Main St", "city": "Springfield", "state": "IL", "zipCode": "62701", "country": "USA"}
    });
    let (code, created) = replicas.api(not_owner).create(&body).await?.parts();
    ensure!(
        code == 201,
        "created through a replica that does not own it: {code} {created}"
    );
    let (code, again) = replicas.api(not_owner).create(&body).await?.parts();
    ensure!(
        code == 200,
        "the same start again is no creation: {code} {again}"
    );
    let (code, missing) = replicas
        .api(not_owner)
        .pause("fulfillment-nope")
        .await?
        .parts();
    ensure!(
        code == 404,
        "a signal for nothing is not found: {code} {missing}"
    );
    Ok(())
}

/// A replica stopped (SIGSTOP) past its lease loses its partitions to the
/// other; woken (SIGCONT), its stale timers' writes are refused by the
/// fence, nothing ships twice, and it gets its share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_is_fenced_and_rejoins() -> Result<()> {
    let mut replicas = Replicas::start("scale-pause", 2, "300").await?;
    let events = EventLog::start(&replicas.system.amqp_url).await?;
    replicas
        .system
        .start_orders(ORDER_ENV)
        .await?
        .wait_ready()
        .await?;
    wait_balanced(&replicas.running()).await?;

    let mut orders = Vec::new();
    place_orders(&replicas.system, 30, &mut orders).await?;
    events.wait_in_progress(10).await?;
    let pid = replicas.fulfillment[0].pid().context("running")?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    let survivor = [&replicas.fulfillment[1]];
    let taken_over = wait_balanced(&survivor).await;
    // Past the lease by a margin: the sleeper's timers are all due.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    taken_over.context("the other replica takes every partition while one sleeps")?;

    wait_each_shipped_once(&events, orders.len()).await?;
    wait_balanced(&replicas.running()).await?;
    let log = std::fs::read_to_string(replicas.system.log_path("fulfillment-service"))?;
    ensure!(
        log.contains("partition lost"),
        "the woken replica says it lost its partitions"
    );
    Ok(())
}

/// A replica cut off from the broker (its connection runs through a proxy
/// that goes down) cannot consume its partitions' queues: a lease later
/// it hands every partition over, the others take them and finish its
/// fulfillments, each once; with the broker back it gets its share again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_broker_hands_its_partitions_over_and_rejoins() -> Result<()> {
    let mut replicas = Replicas::start("scale-cut", 2, "100").await?;
    let (upstream, through) = broker_address(&replicas.system.amqp_url)?;
    let mut proxy = TcpProxy::start(upstream).await?;
    let proxied = replicas
        .system
        .amqp_url
        .replacen(&through, &proxy.listen.to_string(), 1);
    replicas.add_replica_on("scale-cut-2", &proxied).await?;
    let events = EventLog::start(&replicas.system.amqp_url).await?;
    replicas
        .system
        .start_orders(ORDER_ENV)
        .await?
        .wait_ready()
        .await?;
    wait_balanced(&replicas.running()).await?;

    let mut orders = Vec::new();
    place_orders(&replicas.system, 30, &mut orders).await?;
    proxy.take_down();
    let cut_at = std::time::Instant::now();
    place_orders(&replicas.system, 30, &mut orders).await?;
    let reachable = [&replicas.fulfillment[0], &replicas.fulfillment[1]];
    wait_balanced(&reachable).await?;
    let cut_off = owned(&replicas.fulfillment[2]).await?;
    ensure!(
        cut_off.is_empty(),
        "the cut-off replica holds nothing once the others own everything: {cut_off:?}"
    );
    let took = cut_at.elapsed();
    ensure!(
        took < Duration::from_secs(15),
        "partitions taken over {took:?} after the cut, not within 15 s"
    );

    wait_each_shipped_once(&events, orders.len()).await?;
    eventually("every order SHIPPED", DEADLINE, || async {
        Ok((orders_shipped(&replicas.system).await? == orders.len()).then_some(()))
    })
    .await?;

    proxy.bring_up().await?;
    wait_balanced(&replicas.running()).await?;
    let log = std::fs::read_to_string(replicas.system.log_path("fulfillment-service"))?;
    ensure!(
        log.contains("cut off from the broker for a whole lease"),
        "the cut-off replica says why it handed its partitions over"
    );
    Ok(())
}

/// The broker's `host:port` in `amqp_url`, resolved, and as written.
fn broker_address(amqp_url: &str) -> Result<(std::net::SocketAddr, String)> {
    let rest = amqp_url
        .split_once("://")
        .map_or(amqp_url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let authority = rest.split('/').next().unwrap_or(rest).to_owned();
    let address = std::net::ToSocketAddrs::to_socket_addrs(&authority)?
        .next()
        .with_context(|| format!("the broker's address in {amqp_url}"))?;
    Ok((address, authority))
}

//! Several replicas (issue 15): fulfillment-service and order-service each
//! as several processes on a PostgreSQL database of their own, each
//! workflow owned by the replica that holds its partition's lease
//! (`service_kit::partitions`).
//!
//! Invariants checked, whatever dies or stalls: the partitions are shared
//! out with none owned twice, every order ships and is charged once (one
//! `PaymentCharged` in its history), and every fulfillment ships exactly
//! once (one distinct SHIPPED-event id, [`EventLog`]).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use message_bus::{Bus, BusConfig, Route};
use serde_json::Value;
use service_kit::partitions::partition_of;
use shared_messages::messages::{OrderAction, OrderCommand};
use shared_messages::topology::{
    dead_letter_queue, partition_key, Topology, ORDER_FULFILLMENT_EVENTS_QUEUE,
    ORDER_PARTITIONS_EXCHANGE,
};
use shared_messages::{Envelope, Message};
use system_tests::{
    eventually, FulfillmentApi, OrdersApi, Service, TcpProxy, TestDatabase, TestSystem,
};

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

/// A system with `replicas` fulfillment-service processes on one database,
/// and order-service replicas on another ([`Replicas::add_order_replica`]).
/// Fields drop in order: the replicas stop before the system's vhost and
/// their databases go.
struct Replicas {
    fulfillment: Vec<Service>,
    orders: Vec<Service>,
    system: TestSystem,
    database: TestDatabase,
    orders_database: Option<TestDatabase>,
    label: String,
    step_delay_ms: &'static str,
}

impl Replicas {
    async fn start(label: &str, replicas: usize, step_delay_ms: &'static str) -> Result<Self> {
        let system = TestSystem::builder(label).logged().start().await?;
        let database = TestDatabase::create(&format!("{label}_fulfillment"))?;
        let mut this = Self {
            system,
            database,
            orders_database: None,
            label: label.to_owned(),
            fulfillment: Vec::new(),
            orders: Vec::new(),
            step_delay_ms,
        };
        for n in 0..replicas {
            this.add_replica(&format!("{label}-{n}")).await?;
        }
        Ok(this)
    }

    async fn add_replica(&mut self, replica: &str) -> Result<()> {
        self.add_replica_with(replica, &[]).await
    }

    /// A fulfillment-service replica with `env` on top of its settings
    /// (another `AMQP_URL`, say).
    async fn add_replica_with(&mut self, replica: &str, env: &[(&str, &str)]) -> Result<()> {
        let mut all = vec![
            ("STORE_URL", self.database.url.as_str()),
            ("REPLICA_ID", replica),
            ("LEASE_TTL_MS", LEASE_TTL_MS),
            ("STEP_DELAY_MS", self.step_delay_ms),
            ("QUERY_TIMEOUT_MS", "3000"),
        ];
        all.extend_from_slice(env);
        let env = all;
        let service = self
            .system
            .start_service("fulfillment-service", &env)
            .await
            .with_context(|| format!("fulfillment-service replica {replica}"))?;
        self.fulfillment.push(service);
        Ok(())
    }

    /// One more order-service replica, on the orders' database (made with
    /// the first), with `env` on top of the replica's settings.
    async fn add_order_replica(&mut self, replica: &str, env: &[(&str, &str)]) -> Result<()> {
        if self.orders_database.is_none() {
            self.orders_database = Some(TestDatabase::create(&format!("{}_orders", self.label))?);
        }
        let url = self
            .orders_database
            .as_ref()
            .map(|d| d.url.clone())
            .context("the orders' database")?;
        let mut all = vec![
            ("STORE_URL", url.as_str()),
            ("REPLICA_ID", replica),
            ("LEASE_TTL_MS", LEASE_TTL_MS),
        ];
        all.extend_from_slice(env);
        let service = self
            .system
            .start_service("order-service", &all)
            .await
            .with_context(|| format!("order-service replica {replica}"))?;
        service.wait_ready().await?;
        self.orders.push(service);
        Ok(())
    }

    fn orders_api(&self, n: usize) -> OrdersApi {
        OrdersApi::of(&self.orders[n])
    }

    /// The order-service replicas still running.
    fn running_orders(&self) -> Vec<&Service> {
        self.orders.iter().filter(|s| s.pid().is_some()).collect()
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

/// `count` orders placed one at a time, in turn through each of `through`.
async fn place_round_robin(
    through: &[&Service],
    count: usize,
    into: &mut Vec<String>,
) -> Result<()> {
    for n in 0..count {
        let api = OrdersApi::of(through[n % through.len()]);
        into.push(api.place_demo().await?.workflow_id);
    }
    Ok(())
}

async fn orders_shipped(api: &OrdersApi) -> Result<usize> {
    let body: Value = api.list("status=SHIPPED&limit=500").await?.expect(200)?;
    Ok(body["orders"].as_array().map_or(0, Vec::len))
}

/// Every one of `orders` was charged exactly once: one `PaymentCharged`
/// in its history.
async fn each_charged_once(api: &OrdersApi, orders: &[String]) -> Result<()> {
    for workflow_id in orders {
        let history = api.history_of(workflow_id).await?;
        let charges = history
            .events
            .iter()
            .filter(|e| e.kind == "PaymentCharged")
            .count();
        ensure!(
            charges == 1,
            "{workflow_id} charged {charges} times: {:?}",
            history.events.iter().map(|e| &e.kind).collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// Waits until the order-service replicas still running share the
/// partitions (as [`wait_balanced`]).
async fn wait_orders_balanced(replicas: &Replicas) -> Result<Vec<Vec<u16>>> {
    wait_balanced(&replicas.running_orders()).await
}

/// Three replicas of each service; 300 orders placed in turn through the
/// order-service replicas while one replica of each service is killed
/// (`kill -9`) and another stopped (SIGTERM): the survivors take every
/// partition, every order ships and is charged once, every fulfillment
/// ships once; a new replica of each gets its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_partitions_and_every_order_ships_once_through_kill_and_sigterm(
) -> Result<()> {
    let mut replicas = Replicas::start("scale-crash", 3, "30").await?;
    let events = EventLog::start(&replicas.system.amqp_url).await?;
    for n in 0..3 {
        replicas
            .add_order_replica(&format!("scale-crash-orders-{n}"), ORDER_ENV)
            .await?;
    }
    wait_balanced(&replicas.running()).await?;
    wait_orders_balanced(&replicas).await?;

    let mut orders = Vec::new();
    // The last of these are mid-way when the first replicas die.
    place_round_robin(&replicas.running_orders(), 100, &mut orders).await?;
    replicas.fulfillment[0].kill().await?;
    replicas.orders[0].kill().await?;
    place_round_robin(&replicas.running_orders(), 100, &mut orders).await?;
    for service in [&mut replicas.fulfillment[1], &mut replicas.orders[1]] {
        let stopped = service.terminate(Duration::from_secs(30)).await?;
        ensure!(stopped.success(), "SIGTERM stops cleanly: {stopped:?}");
    }
    place_round_robin(&replicas.running_orders(), 100, &mut orders).await?;
    wait_balanced(&replicas.running()).await?;
    wait_orders_balanced(&replicas).await?;

    wait_each_shipped_once(&events, orders.len()).await?;
    let api = replicas.orders_api(2);
    eventually("every order SHIPPED", DEADLINE, || async {
        Ok((orders_shipped(&api).await? == orders.len()).then_some(()))
    })
    .await?;
    each_charged_once(&api, &orders).await?;

    replicas.add_replica("scale-crash-new").await?;
    replicas
        .add_order_replica("scale-crash-orders-new", ORDER_ENV)
        .await?;
    wait_balanced(&replicas.running()).await?;
    wait_orders_balanced(&replicas).await?;
    Ok(())
}

/// Orders owned by one order-service replica are updated, waited for,
/// paused, resumed and cancelled through the others, which answer what
/// the owner decided (the same status and body as the owner itself); a
/// new order gets an id in a partition of the replica that took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_order_replica_answers_for_orders_another_owns() -> Result<()> {
    let mut replicas = Replicas::start("scale-orders-any", 1, "60000").await?;
    // Stock is checked after 4 s: time to change the order before its
    // fulfillment starts.
    let env = [
        ("INVENTORY_DELAY_MS", "4000"),
        ("PAYMENT_DELAY_MS", "10"),
        ("POLL_INTERVAL_MS", "200"),
        ("QUERY_TIMEOUT_MS", "3000"),
    ];
    for n in 0..3 {
        replicas
            .add_order_replica(&format!("scale-orders-any-{n}"), &env)
            .await?;
    }
    let shares = wait_orders_balanced(&replicas).await?;
    for (n, share) in shares.iter().enumerate() {
        let line = format!("order_service_partitions_owned {}", share.len());
        let metrics = replicas.orders_api(n).metrics().await?.text;
        ensure!(
            metrics.lines().any(|l| l == line),
            "replica {n}'s /metrics has {line:?}"
        );
    }
    let owner_of = |order_id: &str| {
        let partition = partition_of(order_id, PARTITIONS);
        shares.iter().position(|s| s.contains(&partition))
    };
    for n in 0..3 {
        let created = replicas.orders_api(n).place_demo().await?;
        ensure!(
            owner_of(&created.order_id) == Some(n),
            "an order created through replica {n} is its own: {}",
            created.order_id
        );
    }

    let created = replicas.orders_api(0).place_demo().await?;
    let wf = created.workflow_id.clone();
    let (a, b) = (replicas.orders_api(1), replicas.orders_api(2));

    let update = serde_json::json!({"customerName": "Grace Hopper"});
    let (code, updated) = a.update(&wf, &update).await?.parts();
    ensure!(
        code == 200 && updated["customerName"] == "Grace Hopper",
        "updated through a replica that does not own it: {code} {updated}"
    );

    let (code, waited) = b
        .get(&format!(
            "/orders/{wf}/status?waitFor=FULFILLMENT_IN_PROGRESS&timeoutMs=20000"
        ))
        .await?
        .parts();
    ensure!(
        code == 200 && waited["status"] == "FULFILLMENT_IN_PROGRESS",
        "waited for through a replica that does not own it: {code} {waited}"
    );

    let (code, paused) = a.pause(&wf).await?.parts();
    ensure!(
        code == 200 && paused["status"] == "PAUSED",
        "paused through a replica that does not own it: {code} {paused}"
    );
    let (code, resumed) = b.resume(&wf).await?.parts();
    ensure!(
        code == 200 && resumed["status"] != "PAUSED",
        "resumed through a replica that does not own it: {code} {resumed}"
    );

    // Refused now (fulfillment has started): the same answer everywhere.
    let through_owner = replicas.orders_api(0).update(&wf, &update).await?.parts();
    let through_other = a.update(&wf, &update).await?.parts();
    ensure!(
        through_owner.0 == 409 && through_other == through_owner,
        "the owner's refusal, word for word: {through_owner:?} / {through_other:?}"
    );

    let (code, cancelled) = b.cancel(&wf, Some("changed my mind")).await?.parts();
    ensure!(
        code == 200 && cancelled["status"] == "CANCELLED",
        "cancelled through a replica that does not own it: {code} {cancelled}"
    );
    let again_owner = replicas.orders_api(0).cancel(&wf, None).await?.parts();
    let again_other = a.cancel(&wf, None).await?.parts();
    ensure!(
        again_owner.0 == 409 && again_other == again_owner,
        "a second cancel refused alike: {again_owner:?} / {again_other:?}"
    );

    // An order that does not exist: not found through any replica.
    let missing = "ORD-0-NOSUCHORDER";
    let owner = owner_of(missing).context("an owner")?;
    let through_owner = replicas
        .orders_api(owner)
        .cancel(missing, None)
        .await?
        .parts();
    let through_other = replicas
        .orders_api((owner + 1) % 3)
        .cancel(missing, None)
        .await?
        .parts();
    ensure!(
        through_owner.0 == 404 && through_other == through_owner,
        "not found alike: {through_owner:?} / {through_other:?}"
    );

    // A command that reaches the queue of another partition goes on to the
    // order's owner, which answers it.
    let bus = Bus::new(BusConfig::new(
        &replicas.system.amqp_url,
        "scale-test",
        Topology::default(),
    ));
    bus.start();
    let right = partition_of(&created.order_id, PARTITIONS);
    let wrong = (right + 1) % PARTITIONS;
    let route = |p: u16| Route::new(ORDER_PARTITIONS_EXCHANGE, &partition_key(p), true);
    let command = Envelope::new(
        &created.order_id,
        Message::OrderCommand(OrderCommand {
            workflow_id: wf.clone(),
            action: OrderAction::WaitFor {
                wait_for: "CANCELLED".into(),
                timeout_ms: Some(0),
            },
            expires_at: None,
        }),
    );
    let answer = eventually(
        "the owner's answer to a misrouted command",
        DEADLINE,
        || async {
            Ok(bus
                .request(&route(wrong), &command, Duration::from_secs(5), false)
                .await
                .ok())
        },
    )
    .await?;
    ensure!(
        matches!(&answer.message, Message::OrderCommandReply(r) if r.status == 200 && r.body["status"] == "CANCELLED"),
        "the order's status from its owner: {:?}",
        answer.message
    );
    // Without reply_to nobody could be answered: dead-lettered with why.
    bus.publish(&route(right), &command).await?;
    let dlq = dead_letter_queue(ORDER_FULFILLMENT_EVENTS_QUEUE);
    let vhost = replicas.system.vhost();
    eventually(
        "the command without reply_to dead-lettered",
        DEADLINE,
        || async {
            let messages = vhost.peek(&dlq, 10).await?;
            Ok(messages
                .iter()
                .any(|m| {
                    m["properties"]["headers"]["x-dead-letter-reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("without reply_to"))
                })
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// With more order-service replicas than partitions, one holds none: an
/// order created through it is created by an owner, in the owner's
/// partition, and ships.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_replica_holding_no_partition_creates_through_an_owner() -> Result<()> {
    let mut replicas = Replicas::start("scale-orders-none", 1, "30").await?;
    let mut env = ORDER_ENV.to_vec();
    env.push(("PARTITIONS", "2"));
    for n in 0..3 {
        replicas
            .add_order_replica(&format!("scale-orders-none-{n}"), &env)
            .await?;
    }
    let shares = eventually(
        "two order-service replicas with a partition each, one with none",
        DEADLINE,
        || async {
            let mut shares = Vec::new();
            for service in replicas.running_orders() {
                shares.push(owned(service).await?);
            }
            let one_each = shares.iter().filter(|s| s.len() == 1).count() == 2;
            Ok((one_each && shares.iter().any(Vec::is_empty)).then_some(shares))
        },
    )
    .await?;
    let none = shares
        .iter()
        .position(Vec::is_empty)
        .context("a replica with none")?;
    let api = replicas.orders_api(none);
    let created = api.place_demo().await?;
    let partition = partition_of(&created.order_id, 2);
    ensure!(
        shares.iter().any(|s| s.contains(&partition)),
        "created in an owner's partition: {}",
        created.order_id
    );
    api.wait_status(&created.workflow_id, "SHIPPED", DEADLINE)
        .await?;
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

/// A replica of each service stopped (SIGSTOP) past its lease loses its
/// partitions to the other; woken (SIGCONT), its stale timers' writes are
/// refused by the fence, nothing ships or is charged twice, and it gets
/// its share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_is_fenced_and_rejoins() -> Result<()> {
    let mut replicas = Replicas::start("scale-pause", 2, "300").await?;
    let events = EventLog::start(&replicas.system.amqp_url).await?;
    // Payments take a while: some are due while their replica sleeps.
    let env = [
        ("INVENTORY_DELAY_MS", "10"),
        ("PAYMENT_DELAY_MS", "300"),
        ("POLL_INTERVAL_MS", "200"),
        ("QUERY_TIMEOUT_MS", "3000"),
    ];
    for n in 0..2 {
        replicas
            .add_order_replica(&format!("scale-pause-orders-{n}"), &env)
            .await?;
    }
    wait_balanced(&replicas.running()).await?;
    wait_orders_balanced(&replicas).await?;

    let mut orders = Vec::new();
    place_round_robin(&replicas.running_orders(), 30, &mut orders).await?;
    events.wait_in_progress(10).await?;
    let mut pids = Vec::new();
    for service in [&replicas.fulfillment[0], &replicas.orders[0]] {
        let pid = service.pid().context("running")?;
        pids.push(nix::unistd::Pid::from_raw(i32::try_from(pid)?));
    }
    for pid in &pids {
        nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGSTOP)?;
    }
    let taken_over = async {
        wait_balanced(&[&replicas.fulfillment[1]]).await?;
        wait_balanced(&[&replicas.orders[1]]).await
    }
    .await;
    // Past the lease by a margin: the sleepers' timers are all due.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for pid in &pids {
        nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGCONT)?;
    }
    taken_over.context("the other replicas take every partition while one of each sleeps")?;

    wait_each_shipped_once(&events, orders.len()).await?;
    let api = replicas.orders_api(1);
    eventually("every order SHIPPED", DEADLINE, || async {
        Ok((orders_shipped(&api).await? == orders.len()).then_some(()))
    })
    .await?;
    each_charged_once(&api, &orders).await?;
    wait_balanced(&replicas.running()).await?;
    wait_orders_balanced(&replicas).await?;
    for binary in ["fulfillment-service", "order-service"] {
        let log = std::fs::read_to_string(replicas.system.log_path(binary))?;
        ensure!(
            log.contains("partition lost"),
            "the woken {binary} replica says it lost its partitions"
        );
    }
    Ok(())
}

/// A replica cut off from the broker (its connection runs through a proxy
/// that goes down) cannot consume its partitions' queues: a lease later
/// it hands every partition over, the others take them and finish its
/// fulfillments, each once; with the broker back it gets its share again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_broker_hands_its_partitions_over_and_rejoins() -> Result<()> {
    let mut replicas = Replicas::start("scale-cut", 2, "100").await?;
    let (mut proxy, proxied) = proxied_broker(&replicas.system.amqp_url).await?;
    replicas
        .add_replica_with("scale-cut-2", &[("AMQP_URL", &proxied)])
        .await?;
    let events = EventLog::start(&replicas.system.amqp_url).await?;
    replicas
        .system
        .start_orders(ORDER_ENV)
        .await?
        .wait_ready()
        .await?;
    wait_balanced(&replicas.running()).await?;

    let mut orders = Vec::new();
    place_round_robin(&[replicas.system.order_service()], 60, &mut orders).await?;
    proxy.take_down();
    let reachable = [&replicas.fulfillment[0], &replicas.fulfillment[1]];
    wait_taken_from(&replicas.fulfillment[2], &reachable).await?;

    wait_each_shipped_once(&events, orders.len()).await?;
    eventually("every order SHIPPED", DEADLINE, || async {
        Ok((orders_shipped(&replicas.system.orders()).await? == orders.len()).then_some(()))
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

/// An order-service replica that loses the broker (its AMQP connection
/// runs through a proxy that goes down) hands its partitions over a lease
/// later; the others take them and finish its orders, each charged once,
/// its stored signals included; with the broker back it gets its share
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_replica_cut_off_from_the_broker_hands_its_partitions_over_and_rejoins(
) -> Result<()> {
    let mut replicas = Replicas::start("scale-orders-cut", 1, "100").await?;
    let (mut proxy, proxied) = proxied_broker(&replicas.system.amqp_url).await?;
    for n in 0..2 {
        replicas
            .add_order_replica(&format!("scale-orders-cut-{n}"), ORDER_ENV)
            .await?;
    }
    let mut env = ORDER_ENV.to_vec();
    env.push(("AMQP_URL", &proxied));
    replicas
        .add_order_replica("scale-orders-cut-2", &env)
        .await?;
    wait_orders_balanced(&replicas).await?;

    let mut orders = Vec::new();
    place_round_robin(&replicas.running_orders(), 60, &mut orders).await?;
    proxy.take_down();
    let reachable = [&replicas.orders[0], &replicas.orders[1]];
    wait_taken_from(&replicas.orders[2], &reachable).await?;

    let api = replicas.orders_api(0);
    eventually("every order SHIPPED", DEADLINE, || async {
        Ok((orders_shipped(&api).await? == orders.len()).then_some(()))
    })
    .await?;
    each_charged_once(&api, &orders).await?;

    proxy.bring_up().await?;
    wait_orders_balanced(&replicas).await?;
    let log = std::fs::read_to_string(replicas.system.log_path("order-service"))?;
    ensure!(
        log.contains("cut off from the broker for a whole lease"),
        "the cut-off replica says why it handed its partitions over"
    );
    Ok(())
}

/// A proxy to the broker of `amqp_url`, and that URL through the proxy
/// (for a replica whose connection a test takes down).
async fn proxied_broker(amqp_url: &str) -> Result<(TcpProxy, String)> {
    let (upstream, through) = broker_address(amqp_url)?;
    let proxy = TcpProxy::start(upstream).await?;
    let proxied = amqp_url.replacen(&through, &proxy.listen.to_string(), 1);
    Ok((proxy, proxied))
}

/// Waits until the `reachable` replicas own every partition between them,
/// balanced, and `cut_off` owns none.
async fn wait_taken_from(cut_off: &Service, reachable: &[&Service]) -> Result<()> {
    eventually(
        "the reachable replicas to own every partition",
        DEADLINE,
        || async {
            let mut all = BTreeSet::new();
            for service in reachable {
                all.extend(owned(service).await?);
            }
            Ok((all.len() == usize::from(PARTITIONS)).then_some(()))
        },
    )
    .await?;
    let left = owned(cut_off).await?;
    ensure!(
        left.is_empty(),
        "the cut-off replica holds nothing once the others own everything: {left:?}"
    );
    wait_balanced(reachable).await?;
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

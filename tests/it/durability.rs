//! Durability (issue 5): no order lost and no effect duplicated when a
//! service or the broker dies.
//!
//! Both binaries run as processes. Before they start, the test binds a
//! queue of its own to `fulfillment.events`, so every status event that is
//! published is counted: a fulfillment that shipped once has exactly one
//! distinct SHIPPED-event message id (a redelivery keeps its id; a second
//! SHIPPED transition would not). Fulfillments are counted from
//! fulfillment-service's store through its `/fulfillments` list.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures::FutureExt;
use message_bus::{Bus, BusConfig, Incoming, Outcome};
use serde_json::{json, Value};
use shared_messages::messages::{FulfillmentStatus, FulfillmentStatusView};
use shared_messages::topology::{
    self, QueueKind, QueueSpec, FULFILLMENT_EVENTS_ALL, FULFILLMENT_EVENTS_EXCHANGE,
};
use shared_messages::Message;
use system_tests::api::FulfillmentList;
use system_tests::{
    eventually, FulfillmentApi, Http, OrdersApi, PrivateBroker, Service, TestDatabase, TestSystem,
    TestVhost,
};
use uuid::Uuid;

/// Upper bound for a whole batch of orders to get somewhere, on a slow
/// machine busy with the other tests; every wait ends as soon as it holds.
const DEADLINE: Duration = Duration::from_secs(45);

/// Order steps in tens of milliseconds; reconciliation polls every 200 ms.
const ORDER_ENV: &[(&str, &str)] = &[
    ("INVENTORY_DELAY_MS", "20"),
    ("PAYMENT_DELAY_MS", "20"),
    ("POLL_INTERVAL_MS", "200"),
    ("QUERY_TIMEOUT_MS", "1000"),
];
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Fulfillment steps of a tenth of a second: a demo order's fulfillment
/// takes most of a second, so a batch placed one by one is still in flight
/// when a process dies, even on a machine busy with other tests.
const FULFILLMENT_ENV: &[(&str, &str)] = &[("STEP_DELAY_MS", "100"), ("QUERY_TIMEOUT_MS", "1000")];

const EVENTS_QUEUE: &str = "durability-test.fulfillment-events";

/// One fulfillment status event as the test's own queue received it.
struct Seen {
    fulfillment_id: String,
    status: FulfillmentStatus,
    message_id: Uuid,
}

/// Every fulfillment status event published on a broker.
pub(crate) struct EventLog {
    /// Kept so the consumer runs as long as the log.
    _bus: Bus,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl EventLog {
    /// Declares and binds the test's queue, and consumes it.
    pub(crate) async fn start(amqp_url: &str) -> Result<Self> {
        let topology = topology::fulfillment_events()
            .queue(QueueSpec {
                name: EVENTS_QUEUE.into(),
                kind: QueueKind::Quorum {
                    delivery_limit: None,
                },
                dead_letter_exchange: None,
                dead_letter_key: None,
                single_active_consumer: false,
            })
            .bind(
                EVENTS_QUEUE,
                FULFILLMENT_EVENTS_EXCHANGE,
                FULFILLMENT_EVENTS_ALL,
            );
        let bus = Bus::new(BusConfig::new(amqp_url, "durability-test", topology));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        bus.consume(
            EVENTS_QUEUE,
            Arc::new(move |incoming: Incoming| {
                if let Message::FulfillmentStatusChanged(event) = &incoming.envelope.message {
                    sink.lock().expect("event log lock").push(Seen {
                        fulfillment_id: incoming.envelope.entity_id.clone(),
                        status: event.fulfillment.status,
                        message_id: incoming.envelope.message_id,
                    });
                }
                async { Outcome::Ack }.boxed()
            }),
        );
        bus.start();
        ensure!(
            bus.wait_connected(Duration::from_secs(20)).await,
            "the test's event consumer cannot connect to RabbitMQ at {amqp_url}"
        );
        Ok(Self { _bus: bus, seen })
    }

    fn with<T>(&self, f: impl FnOnce(&[Seen]) -> T) -> T {
        f(&self.seen.lock().expect("event log lock"))
    }

    /// Distinct SHIPPED-event message ids per fulfillment.
    pub(crate) fn shipped(&self) -> HashMap<String, HashSet<Uuid>> {
        self.with(|seen| {
            let mut shipped: HashMap<String, HashSet<Uuid>> = HashMap::new();
            for s in seen
                .iter()
                .filter(|s| s.status == FulfillmentStatus::Shipped)
            {
                shipped
                    .entry(s.fulfillment_id.clone())
                    .or_default()
                    .insert(s.message_id);
            }
            shipped
        })
    }

    /// Fulfillments with events but no SHIPPED one yet: work in flight.
    pub(crate) fn in_progress(&self) -> usize {
        let shipped = self.shipped();
        self.with(|seen| {
            seen.iter()
                .map(|s| s.fulfillment_id.as_str())
                .filter(|id| !shipped.contains_key(*id))
                .collect::<HashSet<_>>()
                .len()
        })
    }

    /// Waits until at least `n` fulfillments are under way and unshipped.
    pub(crate) async fn wait_in_progress(&self, n: usize) -> Result<()> {
        eventually(
            &format!("{n} fulfillments in progress"),
            DEADLINE,
            || async { Ok((self.in_progress() >= n).then_some(())) },
        )
        .await
    }

    /// Waits until at least `n` fulfillments have shipped.
    pub(crate) async fn wait_shipped(&self, n: usize) -> Result<()> {
        eventually(&format!("{n} SHIPPED events"), DEADLINE, || async {
            Ok((self.shipped().len() >= n).then_some(()))
        })
        .await
    }
}

/// Both services on one broker, each with a store of its own (SQLite, or
/// the given STORE_URLs), and the event log.
pub(crate) struct System {
    pub(crate) orders: Service,
    pub(crate) fulfillment: Service,
    pub(crate) events: EventLog,
    pub(crate) http: Http,
    /// The directory the SQLite stores are in; the services are the fields
    /// above, which ha.rs reaches directly.
    _base: TestSystem,
}

impl System {
    pub(crate) async fn start(amqp_url: &str, store_urls: Option<(&str, &str)>) -> Result<Self> {
        let events = EventLog::start(amqp_url).await?;
        let mut base = TestSystem::builder("durability")
            .broker(amqp_url)
            .start()
            .await?;
        let mut order_env: Vec<(&str, &str)> = ORDER_ENV.to_vec();
        let mut fulfillment_env: Vec<(&str, &str)> = FULFILLMENT_ENV.to_vec();
        if let Some((orders, fulfillment)) = store_urls {
            order_env.push(("STORE_URL", orders));
            fulfillment_env.push(("STORE_URL", fulfillment));
        }
        let fulfillment = base
            .start_service("fulfillment-service", &fulfillment_env)
            .await?;
        let orders = base.start_service("order-service", &order_env).await?;
        fulfillment.wait_ready().await?;
        orders.wait_ready().await?;
        Ok(Self {
            orders,
            fulfillment,
            events,
            http: Http::new(),
            _base: base,
        })
    }

    pub(crate) fn orders_api(&self) -> OrdersApi {
        OrdersApi::of(&self.orders)
    }

    pub(crate) fn fulfillment_api(&self) -> FulfillmentApi {
        FulfillmentApi::of(&self.fulfillment)
    }

    /// Places the demo order; answers its workflow id.
    pub(crate) async fn create_demo(&self) -> Result<String> {
        Ok(self.orders_api().place_demo().await?.workflow_id)
    }

    pub(crate) async fn create_demos(&self, n: usize, into: &mut Vec<String>) -> Result<()> {
        for _ in 0..n {
            into.push(self.create_demo().await?);
        }
        Ok(())
    }

    pub(crate) async fn status(&self, workflow_id: &str) -> Result<Value> {
        self.orders_api().status(workflow_id).await?.expect(200)
    }

    /// Workflow ids of the orders order-service lists with `status`.
    pub(crate) async fn listed(&self, status: &str) -> Result<HashSet<String>> {
        let query = format!("status={status}&limit=100");
        let body: Value = self.orders_api().list(&query).await?.expect(200)?;
        Ok(body["orders"]
            .as_array()
            .context("orders in the list")?
            .iter()
            .filter_map(|o| o["orderId"].as_str())
            .map(|id| format!("order-workflow-{id}"))
            .collect())
    }

    /// Waits until every one of `workflows` is SHIPPED; fails early when
    /// one ended otherwise.
    pub(crate) async fn wait_all_shipped(&self, workflows: &[String]) -> Result<()> {
        let what = format!("all {} orders to be SHIPPED", workflows.len());
        let waiting = Mutex::new(Vec::new());
        let result = eventually(&what, DEADLINE, || async {
            for failed in ["CANCELLED", "FAILED"] {
                let ended = self.listed(failed).await?;
                if let Some(wf) = workflows.iter().find(|wf| ended.contains(*wf)) {
                    bail!("order {wf} ended {failed}: {}", self.status(wf).await?);
                }
            }
            let shipped = self.listed("SHIPPED").await?;
            let left: Vec<String> = workflows
                .iter()
                .filter(|wf| !shipped.contains(*wf))
                .cloned()
                .collect();
            let done = left.is_empty();
            *waiting.lock().expect("waiting lock") = left;
            Ok(done.then_some(()))
        })
        .await;
        if result.is_err() {
            let left = waiting.lock().expect("waiting lock").clone();
            let mut seen = Vec::new();
            for wf in left.iter().take(3) {
                seen.push(
                    self.status(wf)
                        .await
                        .map_or_else(|e| e.to_string(), |s| s.to_string()),
                );
            }
            return result.with_context(|| format!("{} not shipped, e.g.: {seen:?}", left.len()));
        }
        result
    }

    /// The proof that nothing was duplicated: each order has exactly one
    /// fulfillment in fulfillment-service's store, which is SHIPPED, and
    /// exactly one SHIPPED transition was published for it.
    pub(crate) async fn assert_each_shipped_exactly_once(
        &self,
        workflows: &[String],
    ) -> Result<()> {
        let order_ids: Vec<String> = workflows
            .iter()
            .map(|wf| wf.trim_start_matches("order-workflow-").to_owned())
            .collect();
        let stored: FulfillmentList = self
            .fulfillment_api()
            .list("limit=500")
            .await?
            .expect(200)?;
        let mut per_order: HashMap<&str, Vec<&FulfillmentStatusView>> = HashMap::new();
        for f in &stored.fulfillments {
            per_order.entry(f.order_id.as_str()).or_default().push(f);
        }
        for (order_id, wf) in order_ids.iter().zip(workflows) {
            let found = per_order.get(order_id.as_str()).map_or(0, Vec::len);
            ensure!(
                found == 1,
                "order {order_id} has exactly one fulfillment in the store, found {found}"
            );
            let fulfillment = per_order[order_id.as_str()][0];
            ensure!(
                fulfillment.status == FulfillmentStatus::Shipped,
                "fulfillment of {order_id} is stored SHIPPED: {fulfillment:?}"
            );
            let order = self.status(wf).await?;
            ensure!(
                order["fulfillmentWorkflowId"] == format!("fulfillment-{order_id}")
                    && order["trackingNumber"].as_str() == fulfillment.tracking_number.as_deref(),
                "order {order_id} names its one fulfillment and its tracking number: \
                 order {order}, fulfillment {fulfillment:?}"
            );
        }
        // Events may trail the stored status: wait for every SHIPPED one.
        let fulfillment_ids: Vec<String> = order_ids
            .iter()
            .map(|id| format!("fulfillment-{id}"))
            .collect();
        let shipped = eventually(
            "a SHIPPED event for every fulfillment",
            DEADLINE,
            || async {
                let shipped = self.events.shipped();
                Ok(fulfillment_ids
                    .iter()
                    .all(|id| shipped.contains_key(id))
                    .then_some(shipped))
            },
        )
        .await?;
        for id in &fulfillment_ids {
            let ids = &shipped[id];
            ensure!(
                ids.len() == 1,
                "{id} shipped exactly once: {} distinct SHIPPED events {ids:?}",
                ids.len()
            );
        }
        Ok(())
    }

    /// `kill -9`, start again with the same store, wait until ready.
    pub(crate) async fn crash_and_restart(service: &mut Service) -> Result<()> {
        service.kill().await?;
        service.restart().await?;
        service.wait_ready().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_orders_survive_kill_9_of_each_service_twice() -> Result<()> {
    let vhost = TestVhost::create("durability-kill").await?;
    let mut system = System::start(&vhost.amqp_url, None).await?;
    let mut workflows = Vec::new();

    // 1. fulfillment-service dies with fulfillments mid-way; orders placed
    //    while it is down wait in its signal queue.
    system.create_demos(20, &mut workflows).await?;
    system.events.wait_in_progress(5).await?;
    system.fulfillment.kill().await?;
    system.create_demos(10, &mut workflows).await?;
    system.fulfillment.restart().await?;
    system.fulfillment.wait_ready().await?;

    // 2. order-service dies with just-accepted orders in their first steps.
    system.events.wait_shipped(5).await?;
    system.create_demos(10, &mut workflows).await?;
    System::crash_and_restart(&mut system.orders).await?;

    // 3. fulfillment-service dies again, with later fulfillments mid-way.
    system.create_demos(5, &mut workflows).await?;
    system.events.wait_in_progress(3).await?;
    System::crash_and_restart(&mut system.fulfillment).await?;

    // 4. order-service dies right after accepting the last orders.
    system.create_demos(5, &mut workflows).await?;
    System::crash_and_restart(&mut system.orders).await?;

    assert_eq!(workflows.len(), 50, "fifty orders placed");
    system.wait_all_shipped(&workflows).await?;
    system.assert_each_shipped_exactly_once(&workflows).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_ship_when_rabbitmq_itself_restarts() -> Result<()> {
    // Never the shared broker: other tests use it at the same time.
    let broker = PrivateBroker::start().await?;
    let system = System::start(&broker.amqp_url, None).await?;
    let mut workflows = Vec::new();
    system.create_demos(20, &mut workflows).await?;
    system.events.wait_in_progress(3).await?;

    broker.stop_app().await?;
    let orders = system.orders_api();
    eventually(
        "order-service to report not-ready while RabbitMQ is stopped",
        DEADLINE,
        || async {
            let code = orders.readyz().await?.status;
            Ok((code == 503).then_some(()))
        },
    )
    .await?;
    // A new order is accepted while the broker is down: its hand-over
    // waits in the outbox, and it ships with the others.
    let (code, body) = orders.create_demo().await?.parts();
    assert_eq!(code, 201, "a new order while the broker is down: {body}");
    workflows.push(
        body["workflowId"]
            .as_str()
            .context("the new order's workflowId")?
            .to_owned(),
    );

    broker.start_app().await?;
    system.orders.wait_ready().await?;
    system.fulfillment.wait_ready().await?;
    system.wait_all_shipped(&workflows).await.with_context(|| {
        format!(
            "after the broker restart (its logs: {})",
            broker.log_dir().display()
        )
    })?;
    system.assert_each_shipped_exactly_once(&workflows).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_wait_out_a_long_fulfillment_outage_and_all_ship() -> Result<()> {
    let vhost = TestVhost::create("durability-outage").await?;
    let mut system = System::start(&vhost.amqp_url, None).await?;
    let mut workflows = Vec::new();
    system.create_demos(5, &mut workflows).await?;
    system.events.wait_in_progress(1).await?;
    let status = system
        .fulfillment
        .terminate(Duration::from_secs(10))
        .await?;
    assert!(
        status.success(),
        "fulfillment-service stops on SIGTERM: {status:?}"
    );

    system.create_demos(10, &mut workflows).await?;
    let waiting = &workflows[5..];
    eventually(
        "orders placed during the outage to be handed to fulfillment",
        DEADLINE,
        || async {
            for wf in waiting {
                if system.status(wf).await?["status"] != "FULFILLMENT_STARTED" {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    // The outage itself: ten reconciliation polls go unanswered.
    tokio::time::sleep(POLL_INTERVAL * 10).await;
    for wf in &workflows {
        let order = system.status(wf).await?;
        let status = order["status"].as_str().unwrap_or_default();
        assert!(
            !["CANCELLED", "FAILED"].contains(&status),
            "an order waiting through the outage is not given up: {order}"
        );
    }

    system.fulfillment.restart().await?;
    system.wait_all_shipped(&workflows).await?;
    system.assert_each_shipped_exactly_once(&workflows).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_order_service_still_lists_and_answers_for_finished_orders() -> Result<()> {
    let vhost = TestVhost::create("durability-history").await?;
    let mut system = System::start(&vhost.amqp_url, None).await?;
    let mut shipped = Vec::new();
    system.create_demos(4, &mut shipped).await?;
    let out_of_stock = json!({
        "customerId": "c-1",
        "customerEmail": "c@example.com",
        "customerName": "C",
        "items": [{"productId": "product-5", "productName": "P5", "quantity": 1, "price": 1.0}],
        "shippingAddress": {"street": "1 Main St", "city": "Town", "state": "ST",
                            "zipCode": "12345", "country": "US"},
        "paymentMethod": "credit_card"
    });
    let (code, body) = system.orders_api().create(&out_of_stock).await?.parts();
    assert_eq!(code, 201, "POST /orders: {body}");
    let failed = body["workflowId"]
        .as_str()
        .context("workflowId")?
        .to_owned();
    system.wait_all_shipped(&shipped).await?;
    eventually("the out-of-stock order to fail", DEADLINE, || async {
        Ok((system.status(&failed).await?["status"] == "FAILED").then_some(()))
    })
    .await?;
    let mut before = HashMap::new();
    for wf in shipped.iter().chain([&failed]) {
        before.insert(wf.clone(), system.status(wf).await?);
    }

    let status = system.orders.terminate(Duration::from_secs(10)).await?;
    assert!(
        status.success(),
        "order-service stops on SIGTERM: {status:?}"
    );
    system.orders.restart().await?;

    let (code, list) = system.orders_api().list("limit=100").await?.parts();
    assert_eq!(code, 200, "GET /orders after the restart: {list}");
    assert_eq!(
        list["total"], 5,
        "every order of the previous run is listed: {list}"
    );
    assert_eq!(
        system.listed("SHIPPED").await?,
        shipped.iter().cloned().collect::<HashSet<_>>(),
        "the shipped orders are listed as SHIPPED"
    );
    for (wf, old) in &before {
        let now = system.status(wf).await?;
        for field in [
            "status",
            "trackingNumber",
            "paymentId",
            "fulfillmentWorkflowId",
            "error",
            "createdAt",
            "updatedAt",
        ] {
            assert_eq!(
                now[field], old[field],
                "{wf}: {field} is what it was before the restart"
            );
        }
        let (code, progress) = system.orders_api().progress(wf).await?.parts();
        assert_eq!(code, 200, "progress of {wf} after the restart: {progress}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_ship_orders_across_kill_9() -> Result<()> {
    let vhost = TestVhost::create("durability-pg").await?;
    let orders_db = TestDatabase::create("orders")?;
    let fulfillment_db = TestDatabase::create("fulfillment")?;
    let mut system = System::start(
        &vhost.amqp_url,
        Some((orders_db.url.as_str(), fulfillment_db.url.as_str())),
    )
    .await?;
    let mut workflows = Vec::new();
    system.create_demos(1, &mut workflows).await?;
    system.wait_all_shipped(&workflows).await?;

    system.create_demos(9, &mut workflows).await?;
    system.events.wait_in_progress(2).await?;
    System::crash_and_restart(&mut system.fulfillment).await?;
    system.create_demos(5, &mut workflows).await?;
    System::crash_and_restart(&mut system.orders).await?;

    system.wait_all_shipped(&workflows).await?;
    system.assert_each_shipped_exactly_once(&workflows).await?;
    Ok(())
}

/// A SQLite store serves one process: a second fulfillment-service on the
/// same file stops at start-up and says why, and the first goes on.
#[tokio::test]
async fn a_second_process_on_the_same_sqlite_store_refuses_to_start() -> Result<()> {
    let vhost = TestVhost::create("durability-one-owner").await?;
    let dir = tempfile::tempdir()?;
    let first = Service::start("fulfillment-service", &vhost, dir.path(), &[]).await?;
    let log = dir.path().join("second.log");
    let second = Service::start_logged("fulfillment-service", &vhost, dir.path(), &[], &log).await;
    ensure!(
        second.is_err(),
        "a second fulfillment-service started on {}",
        dir.path().display()
    );
    let said = std::fs::read_to_string(&log)?;
    ensure!(
        said.contains("in use by another process"),
        "the second process says why it stopped; its log:\n{said}"
    );
    first.wait_ready().await?;
    Ok(())
}

//! The saga's invariants under chaos (issue 12): hundreds of orders while
//! either service is killed (`kill -9`) or stopped (SIGTERM) and restarted,
//! the broker closes every connection, and customers cancel, pause and
//! resume at random. Then, for every order, from the history routes:
//!
//! - at most one charge; a refund only if charged, at most once;
//! - shipped on one side means shipped on the other, and never refunded;
//! - a cancelled or failed order gave back what it took (every charge
//!   refunded, every reservation released);
//! - every order ends (shipped, cancelled or failed), and every
//!   dead-letter queue is empty.
//!
//! The run is random and bounded (about two minutes). Its seed is printed;
//! `CHAOS_SEED=<n>` repeats a run, `CHAOS_ORDERS=<n>` changes its size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use shared_messages::topology::{
    dead_letter_queue, FULFILLMENT_QUERIES_QUEUE, FULFILLMENT_SIGNALS_QUEUE,
    ORDER_FULFILLMENT_EVENTS_QUEUE,
};
use system_tests::{eventually, FulfillmentApi, OrdersApi, Reply, Service, TestVhost};
use tokio::sync::Mutex;

/// Orders placed during the run, unless `CHAOS_ORDERS` says otherwise.
const ORDERS: usize = 320;
/// How long faults are injected; orders are placed over the same span.
const CHAOS_SPAN: Duration = Duration::from_secs(75);
/// Customers cancel, pause and resume among this many latest orders.
const RECENT: usize = 6;
/// How long every order may take to end once the faults stop.
const SETTLE: Duration = Duration::from_secs(120);

const ORDER_ENV: &[(&str, &str)] = &[
    ("INVENTORY_DELAY_MS", "10"),
    ("PAYMENT_DELAY_MS", "10"),
    ("POLL_INTERVAL_MS", "300"),
    ("QUERY_TIMEOUT_MS", "1000"),
    ("PAYMENT_TRANSIENT_FAILURE_RATE", "0.1"),
    ("INVENTORY_TRANSIENT_FAILURE_RATE", "0.1"),
    ("PAYMENT_RETRY_INITIAL_INTERVAL_MS", "20"),
    ("PAYMENT_RETRY_MAXIMUM_INTERVAL_MS", "200"),
    ("PAYMENT_RETRY_MAXIMUM_ATTEMPTS", "10"),
    ("INVENTORY_RETRY_INITIAL_INTERVAL_MS", "20"),
    ("INVENTORY_RETRY_MAXIMUM_INTERVAL_MS", "200"),
    ("INVENTORY_RETRY_MAXIMUM_ATTEMPTS", "10"),
];
/// Steps of 100 ms: a fulfillment takes most of a second, so cancels and
/// pauses find it in every status.
const FULFILLMENT_ENV: &[(&str, &str)] = &[("STEP_DELAY_MS", "100"), ("QUERY_TIMEOUT_MS", "1000")];

/// The two services, shared between the tasks that use and break them,
/// and their clients (which follow each service across its restarts).
struct Cluster {
    order: Mutex<Service>,
    fulfillment: Mutex<Service>,
    orders_api: OrdersApi,
    fulfillment_api: FulfillmentApi,
}

impl Cluster {
    async fn order_get(&self, path: &str) -> Result<(u16, Value)> {
        Ok(self.orders_api.get(path).await?.parts())
    }

    /// Every order order-service knows, page by page.
    async fn all_orders(&self) -> Result<Vec<Value>> {
        let mut orders = Vec::new();
        loop {
            let (status, page) = self
                .order_get(&format!("/orders?limit=100&offset={}", orders.len()))
                .await?;
            ensure!(status == 200, "listing orders: {status} {page}");
            let batch = page["orders"].as_array().context("orders")?.clone();
            let total = page["total"].as_u64().context("total")? as usize;
            orders.extend(batch);
            if orders.len() >= total {
                return Ok(orders);
            }
        }
    }
}

fn order_body(rng: &mut StdRng, n: usize) -> Value {
    let roll: f64 = rng.random();
    // Mostly good orders; some that fail for stock or payment.
    let (product, payment) = if roll < 0.05 {
        ("product-5", "credit_card")
    } else if roll < 0.10 {
        ("product-1", "declined_card")
    } else {
        (
            ["product-1", "product-2", "product-3", "product-4"][rng.random_range(0..4)],
            "credit_card",
        )
    };
    json!({
        "customerId": format!("chaos-{n}"),
        "customerEmail": "chaos@example.com",
        "customerName": "Chaos Customer",
        "items": [{"productId": product, "productName": "Thing", "quantity": 1, "price": 10.0}],
        "shippingAddress": {"street": "1 Main St", "city": "Town", "state": "CA", "zipCode": "90210", "country": "USA"},
        "paymentMethod": payment
    })
}

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_invariants_hold_under_crashes_restarts_and_random_customers() -> Result<()> {
    let seed = seed();
    let orders_wanted: usize = std::env::var("CHAOS_ORDERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ORDERS);
    eprintln!("chaos: seed {seed} (CHAOS_SEED={seed} repeats this run), {orders_wanted} orders");

    let vhost = TestVhost::create("chaos").await?;
    let data = tempfile::tempdir()?;
    let fulfillment =
        Service::start("fulfillment-service", &vhost, data.path(), FULFILLMENT_ENV).await?;
    let order = Service::start("order-service", &vhost, data.path(), ORDER_ENV).await?;
    order.wait_ready().await?;
    fulfillment.wait_ready().await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let cluster = Arc::new(Cluster {
        orders_api: OrdersApi::with_client(order.endpoint(), http.clone()),
        fulfillment_api: FulfillmentApi::with_client(fulfillment.endpoint(), http),
        order: Mutex::new(order),
        fulfillment: Mutex::new(fulfillment),
    });
    let placed: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    // Customers: place orders at a steady pace, retrying while
    // order-service is down, and now and then cancel, pause or resume one.
    let customers = {
        let (cluster, placed, stop) = (cluster.clone(), placed.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(seed);
        tokio::spawn(async move {
            let pace = CHAOS_SPAN / orders_wanted as u32;
            let mut n = 0;
            // DELETE answers by status code (0: no answer).
            let mut cancels: HashMap<u16, usize> = HashMap::new();
            while n < orders_wanted {
                let body = order_body(&mut rng, n);
                // Down, restarting or refusing while the broker is away:
                // the customer tries again on the next turn.
                if let Ok((201 | 200, created)) =
                    cluster.orders_api.create(&body).await.map(Reply::parts)
                {
                    if let Some(wf) = created["workflowId"].as_str() {
                        placed.lock().await.push(wf.to_owned());
                    }
                    n += 1;
                }
                let roll: f64 = rng.random();
                // One of the last few orders: most of them are still in
                // flight, so cancels and pauses meet every status.
                let target = {
                    let placed = placed.lock().await;
                    let recent = placed.len().saturating_sub(RECENT);
                    (!placed.is_empty())
                        .then(|| placed[rng.random_range(recent..placed.len())].clone())
                };
                if let Some(wf) = target {
                    let orders = &cluster.orders_api;
                    let _ = if roll < 0.12 {
                        let answer = orders
                            .cancel(&wf, Some("chaos: customer changed their mind"))
                            .await
                            .map(Reply::parts);
                        let code = answer.as_ref().map(|(code, _)| *code).unwrap_or(0);
                        *cancels.entry(code).or_insert(0usize) += 1;
                        answer
                    } else if roll < 0.18 {
                        orders.pause(&wf).await.map(Reply::parts)
                    } else if roll < 0.26 {
                        orders.resume(&wf).await.map(Reply::parts)
                    } else {
                        Ok((0, Value::Null))
                    };
                }
                tokio::time::sleep(pace).await;
            }
            stop.store(true, Ordering::SeqCst);
            cancels
        })
    };

    // Faults: every few seconds, one of kill -9, SIGTERM (of either
    // service) or the broker closing every connection.
    let faults = {
        let (cluster, stop) = (cluster.clone(), stop.clone());
        let vhost_name = vhost.name.clone();
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
        tokio::spawn(async move {
            let mut log = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(rng.random_range(2000..5000))).await;
                let which = rng.random_range(0..5);
                let pause = Duration::from_millis(rng.random_range(0..1000));
                let outcome: Result<&str> = async {
                    match which {
                        0 | 1 => {
                            let service = if which == 0 {
                                &cluster.order
                            } else {
                                &cluster.fulfillment
                            };
                            let mut service = service.lock().await;
                            service.kill().await?;
                            tokio::time::sleep(pause).await;
                            service.restart().await?;
                            Ok(if which == 0 {
                                "kill -9 order-service"
                            } else {
                                "kill -9 fulfillment-service"
                            })
                        }
                        2 | 3 => {
                            let service = if which == 2 {
                                &cluster.order
                            } else {
                                &cluster.fulfillment
                            };
                            let mut service = service.lock().await;
                            // A clean stop; one that hangs fails the run.
                            service.terminate(Duration::from_secs(15)).await?;
                            tokio::time::sleep(pause).await;
                            service.restart().await?;
                            Ok(if which == 2 {
                                "SIGTERM order-service"
                            } else {
                                "SIGTERM fulfillment-service"
                            })
                        }
                        _ => {
                            close_connections(&vhost_name).await?;
                            Ok("close_all_connections")
                        }
                    }
                }
                .await;
                match outcome {
                    Ok(what) => log.push(what),
                    Err(e) => return Err(e.context(format!("after faults {log:?}"))),
                }
            }
            Ok(log)
        })
    };

    let cancels = customers.await?;
    eprintln!("chaos: cancels answered (status: count) {cancels:?}");
    let fault_log = faults.await??;
    eprintln!("chaos: faults injected: {fault_log:?}");
    ensure!(
        !fault_log.is_empty(),
        "no fault was injected: the run proved nothing"
    );

    cluster.order.lock().await.wait_ready().await?;
    cluster.fulfillment.lock().await.wait_ready().await?;

    // Every order ends. Paused fulfillments are resumed (a pause may still
    // have been in flight when the customers stopped).
    let settle_started = Instant::now();
    let orders = eventually("every order to end", SETTLE, || {
        let cluster = cluster.clone();
        async move {
            let orders = cluster.all_orders().await?;
            let open: Vec<&Value> = orders
                .iter()
                .filter(|o| !is_final(o["status"].as_str().unwrap_or_default()))
                .collect();
            if open.is_empty() {
                return Ok(Some(orders));
            }
            // Paused as fulfillment-service has it (the order's view may
            // lag behind): resume it there.
            for o in open.iter().take(50) {
                let Some(id) = o["fulfillmentWorkflowId"].as_str() else {
                    continue;
                };
                let (code, fulfillment) = cluster.fulfillment_api.status(id).await?.parts();
                if code == 200 && fulfillment["status"] == "PAUSED" {
                    let _ = cluster.fulfillment_api.resume(id).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(None)
        }
    })
    .await?;
    eprintln!(
        "chaos: {} orders ended {:?} after the faults stopped",
        orders.len(),
        settle_started.elapsed()
    );
    let placed = placed.lock().await.clone();
    ensure!(
        placed.len() >= orders_wanted,
        "only {} orders were placed",
        placed.len()
    );
    let known: std::collections::HashSet<&str> = orders
        .iter()
        .filter_map(|o| o["workflowId"].as_str())
        .collect();
    let lost: Vec<&String> = placed
        .iter()
        .filter(|wf| !known.contains(wf.as_str()))
        .collect();
    ensure!(lost.is_empty(), "accepted orders lost: {lost:?}");

    let mut by_status: HashMap<String, usize> = HashMap::new();
    for o in &orders {
        check_order(&cluster, o).await?;
        *by_status
            .entry(o["status"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    eprintln!("chaos: final statuses {by_status:?}");
    ensure!(
        by_status.get("SHIPPED").copied().unwrap_or(0) > 0,
        "no order shipped: the run proved nothing"
    );

    for queue in [
        FULFILLMENT_SIGNALS_QUEUE,
        FULFILLMENT_QUERIES_QUEUE,
        ORDER_FULFILLMENT_EVENTS_QUEUE,
    ] {
        let dlq = dead_letter_queue(queue);
        let dead = vhost.peek(&dlq, 10).await?;
        ensure!(
            dead.is_empty(),
            "{dlq} holds {} messages, e.g. {}",
            dead.len(),
            dead[0]
        );
    }
    Ok(())
}

fn is_final(status: &str) -> bool {
    matches!(status, "SHIPPED" | "CANCELLED" | "FAILED")
}

fn count(history: &Value, kind: &str) -> usize {
    history["events"]
        .as_array()
        .map(|events| events.iter().filter(|e| e["type"] == kind).count())
        .unwrap_or(0)
}

/// The invariants of one ended order, from both services' histories.
async fn check_order(cluster: &Cluster, order: &Value) -> Result<()> {
    let wf = order["workflowId"].as_str().context("workflowId")?;
    let order_id = order["orderId"].as_str().context("orderId")?;
    let status = order["status"].as_str().context("status")?;
    let (code, history) = cluster.orders_api.history(wf).await?.parts();
    ensure!(code == 200, "history of {wf}: {code} {history}");

    let charged = count(&history, "PaymentCharged");
    let refunded = count(&history, "PaymentRefunded");
    let reserved = count(&history, "StockReserved");
    let released = count(&history, "StockReleased");
    let fulfillment_id = format!("fulfillment-{order_id}");
    let (code, fulfillment) = cluster
        .fulfillment_api
        .status(&fulfillment_id)
        .await?
        .parts();
    let fulfillment_status = match code {
        200 => fulfillment["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        404 => "NONE".to_owned(),
        _ => bail!("fulfillment {fulfillment_id}: {code} {fulfillment}"),
    };
    let context = || {
        format!(
            "order {wf} ({status}, fulfillment {fulfillment_status}): charged {charged}, \
             refunded {refunded}, reserved {reserved}, released {released}; history {history}"
        )
    };

    ensure!(charged <= 1, "charged more than once: {}", context());
    ensure!(
        refunded <= charged,
        "refunded without a charge: {}",
        context()
    );
    ensure!(
        released <= reserved,
        "released more than reserved: {}",
        context()
    );
    ensure!(
        (status == "SHIPPED") == (fulfillment_status == "SHIPPED"),
        "one side shipped, the other did not: {}",
        context()
    );
    match status {
        "SHIPPED" => {
            ensure!(charged == 1, "shipped without a charge: {}", context());
            ensure!(refunded == 0, "shipped and refunded: {}", context());
            ensure!(released == 0, "shipped and released: {}", context());
        }
        "CANCELLED" | "FAILED" => {
            ensure!(
                refunded == charged,
                "ended without refunding its charge: {}",
                context()
            );
            ensure!(
                released == reserved,
                "ended without releasing its stock: {}",
                context()
            );
            ensure!(
                matches!(fulfillment_status.as_str(), "NONE" | "CANCELLED" | "FAILED"),
                "ended {status} while its fulfillment is still going: {}",
                context()
            );
        }
        other => bail!("order still {other}: {}", context()),
    }
    Ok(())
}

/// The broker closes every client connection of the vhost (the management
/// API's `close_all_connections`); none open yet is not an error here.
async fn close_connections(vhost: &str) -> Result<()> {
    let base = system_tests::management_base();
    let client = reqwest::Client::new();
    let listed: Vec<Value> = client
        .get(format!(
            "{base}/api/vhosts/{}/connections",
            system_tests::encode(vhost)
        ))
        .send()
        .await?
        .json()
        .await?;
    for c in listed {
        let name = c["name"].as_str().unwrap_or_default();
        client
            .delete(format!(
                "{base}/api/connections/{}",
                system_tests::encode(name)
            ))
            .header("X-Reason", "chaos: forced close")
            .send()
            .await?;
    }
    Ok(())
}

/// A store outage under load (issue 12): both services on PostgreSQL,
/// reached through a proxy that refuses every connection for 30 s while
/// orders are in flight and customers keep placing more. Every accepted
/// order ships, charged once, and nothing is dead-lettered: a store error
/// is transient, never poison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_delays_orders_and_strands_none() -> Result<()> {
    const BEFORE: usize = 40;
    const OUTAGE: Duration = Duration::from_secs(30);

    let vhost = TestVhost::create("store-outage").await?;
    let data = tempfile::tempdir()?;
    let order_db = system_tests::TestDatabase::create("outage_order")?;
    let fulfillment_db = system_tests::TestDatabase::create("outage_fulfillment")?;
    let upstream = postgres_addr()?;
    let mut proxy = system_tests::TcpProxy::start(upstream).await?;
    let through_proxy = |db: &system_tests::TestDatabase| {
        format!("postgres://postgres@{}/{}", proxy.listen, db.name)
    };
    let order_store = through_proxy(&order_db);
    let fulfillment_store = through_proxy(&fulfillment_db);
    let mut fulfillment_env = FULFILLMENT_ENV.to_vec();
    fulfillment_env.push(("STORE_URL", &fulfillment_store));
    let mut order_env = ORDER_ENV.to_vec();
    order_env.push(("STORE_URL", &order_store));
    let fulfillment =
        Service::start("fulfillment-service", &vhost, data.path(), &fulfillment_env).await?;
    let order = Service::start("order-service", &vhost, data.path(), &order_env).await?;
    order.wait_ready().await?;
    fulfillment.wait_ready().await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut rng = StdRng::seed_from_u64(seed());

    let place = |body: Value| {
        let request = http.post(order.url("/orders")).json(&body).send();
        async move {
            let response = request.await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let created: Value = response.json().await.ok()?;
            created["workflowId"].as_str().map(str::to_owned)
        }
    };
    let good = |rng: &mut StdRng, n: usize| {
        let mut body = order_body(rng, n);
        body["items"][0]["productId"] = json!(format!("product-{}", 1 + n % 4));
        body["paymentMethod"] = json!("credit_card");
        body
    };

    let mut placed = Vec::new();
    for n in 0..BEFORE {
        let body = good(&mut rng, n);
        placed.push(place(body).await.context("an order before the outage")?);
    }
    proxy.take_down();
    let outage_started = Instant::now();
    let mut n = BEFORE;
    while outage_started.elapsed() < OUTAGE {
        // Refused (503) while the store is away, or accepted if the
        // service still can: either way nothing accepted may be lost.
        if let Some(wf) = place(good(&mut rng, n)).await {
            placed.push(wf);
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    proxy.bring_up().await?;
    for _ in 0..10 {
        let body = good(&mut rng, n);
        n += 1;
        let wf = eventually(
            "an order accepted after the outage",
            Duration::from_secs(30),
            || {
                let attempt = place(body.clone());
                async move { Ok(attempt.await) }
            },
        )
        .await?;
        placed.push(wf);
    }

    for wf in &placed {
        let url = order.url(&format!("/orders/{wf}/status"));
        eventually(&format!("{wf} to ship"), SETTLE, || {
            let request = http.get(&url).send();
            async move {
                let body: Value = request.await?.json().await?;
                match body["status"].as_str() {
                    Some("SHIPPED") => Ok(Some(())),
                    Some(s @ ("CANCELLED" | "FAILED")) => bail!("{wf} ended {s}: {body}"),
                    _ => Ok(None),
                }
            }
        })
        .await?;
        let history: Value = http
            .get(order.url(&format!("/orders/{wf}/history")))
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            count(&history, "PaymentCharged") == 1 && count(&history, "PaymentRefunded") == 0,
            "{wf} shipped but was not charged exactly once: {history}"
        );
    }
    for queue in [
        FULFILLMENT_SIGNALS_QUEUE,
        FULFILLMENT_QUERIES_QUEUE,
        ORDER_FULFILLMENT_EVENTS_QUEUE,
    ] {
        let dlq = dead_letter_queue(queue);
        let dead = vhost.peek(&dlq, 10).await?;
        ensure!(
            dead.is_empty(),
            "{dlq} holds {} messages: {dead:?}",
            dead.len()
        );
    }
    Ok(())
}

/// The local PostgreSQL server's address, from the test harness's URL.
fn postgres_addr() -> Result<std::net::SocketAddr> {
    let base = system_tests::postgres::postgres_base();
    let host_port = base
        .rsplit('@')
        .next()
        .context("a postgres:// URL")?
        .trim_end_matches('/');
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("resolving {host_port}"))
}

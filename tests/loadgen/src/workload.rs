//! What the load generator asks of the services, over their HTTP APIs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;
use shared_messages::ids::fulfillment_workflow_id;
use system_tests::Http;

use crate::events::Completions;
use crate::stats::{Rate, Summary};

/// How long one order may take before it counts as lost.
const ORDER_DEADLINE: Duration = Duration::from_secs(120);

/// One created order.
#[derive(Debug, Clone)]
pub struct Order {
    pub workflow_id: String,
    pub fulfillment_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrdersResult {
    pub orders: usize,
    pub concurrency: usize,
    pub shipped: usize,
    pub not_shipped: usize,
    /// Orders shipped per second, first POST to last `SHIPPED` seen.
    pub throughput: Rate,
    /// `POST /orders/demo` answered.
    pub create: Summary,
    /// Created -> the fulfillment's `SHIPPED` event on the broker.
    pub created_to_fulfillment_shipped: Summary,
    /// Created -> the order's own status route says `SHIPPED`.
    pub created_to_order_shipped: Summary,
    /// `GET /orders/{id}/status` reads per shipped order, the last one
    /// included: load on order-service that is the tool's, not the flow's.
    pub status_reads_per_order: f64,
}

/// Places `count` demo orders through the order-service replicas
/// `order_urls` (one per worker, in turn), `concurrency` at a time, each waiting until
/// its status route says `SHIPPED`. Completion is learnt from the broker's
/// fulfillment events; the status route is then asked to wait for
/// `SHIPPED` (read again with backoff where it does not wait) until the
/// order itself shows it.
pub async fn orders(
    http: &Http,
    order_urls: &[String],
    completions: &Completions,
    count: usize,
    concurrency: usize,
    progress: &ProgressBar,
) -> Result<(OrdersResult, Vec<Order>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.min(count))
        .map(|worker| {
            let (http, url, completions, next, progress) = (
                http.clone(),
                // Each worker places its orders through one replica.
                order_urls[worker % order_urls.len()].clone(),
                completions.clone(),
                next.clone(),
                progress.clone(),
            );
            tokio::spawn(async move {
                let mut done = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    done.push(one_order(&http, &url, &completions).await);
                    progress.inc(1);
                }
                done
            })
        })
        .collect();
    let mut results = Vec::with_capacity(count);
    for worker in workers {
        results.extend(worker.await?);
    }
    let elapsed = start.elapsed();
    let mut create = Vec::new();
    let mut event = Vec::new();
    let mut shipped = Vec::new();
    let mut orders = Vec::new();
    let mut not_shipped = 0;
    let mut status_reads = 0u64;
    for result in results {
        match result {
            Ok(r) => {
                status_reads += u64::from(r.status_reads);
                create.push(r.create);
                event.push(r.event);
                shipped.push(r.shipped);
                orders.push(r.order);
            }
            Err(error) => {
                not_shipped += 1;
                progress.println(format!("order not shipped: {error:#}"));
            }
        }
    }
    Ok((
        OrdersResult {
            orders: count,
            concurrency,
            shipped: shipped.len(),
            not_shipped,
            throughput: Rate::of(shipped.len() as u64, elapsed),
            create: Summary::of(&create),
            created_to_fulfillment_shipped: Summary::of(&event),
            created_to_order_shipped: Summary::of(&shipped),
            status_reads_per_order: status_reads as f64 / shipped.len().max(1) as f64,
        },
        orders,
    ))
}

struct OneOrder {
    order: Order,
    create: Duration,
    event: Duration,
    shipped: Duration,
    status_reads: u32,
}

async fn one_order(http: &Http, url: &str, completions: &Completions) -> Result<OneOrder> {
    let start = Instant::now();
    let (code, body) = http.post(&format!("{url}/orders/demo"), None).await?;
    if code != 201 {
        bail!("POST /orders/demo: {code} {body}");
    }
    let create = start.elapsed();
    let order_id = body["orderId"].as_str().context("orderId")?.to_string();
    let workflow_id = body["workflowId"]
        .as_str()
        .context("workflowId")?
        .to_string();
    let fulfillment_id = fulfillment_workflow_id(&order_id);
    let (at, status) = tokio::time::timeout(ORDER_DEADLINE, completions.wait(&fulfillment_id))
        .await
        .with_context(|| {
            format!("{workflow_id}: no final fulfillment event in {ORDER_DEADLINE:?}")
        })?
        .context("event subscription ended")?;
    if status != "SHIPPED" {
        bail!("{fulfillment_id} ended {status}");
    }
    let event = at - start;
    // The order learns it from the same event; wait until it shows. The
    // status route waits for `SHIPPED` itself (`waitFor`); a service
    // without that answers at once, and is read again with backoff.
    let status_url = format!("{url}/orders/{workflow_id}/status?waitFor=SHIPPED&timeoutMs=10000");
    let mut pause = Duration::from_millis(1);
    let mut status_reads = 0;
    loop {
        status_reads += 1;
        let (code, body) = http.get(&status_url).await?;
        if code == 200 && body["status"] == "SHIPPED" {
            break;
        }
        if start.elapsed() > ORDER_DEADLINE {
            bail!(
                "{workflow_id} still {} after {ORDER_DEADLINE:?}",
                body["status"]
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    Ok(OneOrder {
        order: Order {
            workflow_id,
            fulfillment_id,
        },
        create,
        event,
        shipped: start.elapsed(),
        status_reads,
    })
}

/// Latencies of `requests` GETs, `concurrency` at a time, cycling over
/// `urls`; every answer must be 200.
pub async fn gets(
    http: &Http,
    urls: &[String],
    requests: usize,
    concurrency: usize,
    progress: &ProgressBar,
) -> Result<(Summary, Rate)> {
    if urls.is_empty() {
        bail!("nothing to request");
    }
    let urls = Arc::new(urls.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, urls, next, progress) =
                (http.clone(), urls.clone(), next.clone(), progress.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    let url = &urls[i % urls.len()];
                    let t = Instant::now();
                    let (code, body) = http.get(url).await?;
                    if code != 200 {
                        bail!("GET {url}: {code} {body}");
                    }
                    samples.push(t.elapsed());
                    progress.inc(1);
                }
                anyhow::Ok(samples)
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(requests);
    for worker in workers {
        samples.extend(worker.await??);
    }
    let rate = Rate::of(samples.len() as u64, start.elapsed());
    Ok((Summary::of(&samples), rate))
}

#[derive(Debug, Clone, Serialize)]
pub struct SignalResult {
    pub fulfillments: usize,
    /// `POST .../fulfillment/pause` answered 200.
    pub pause_answered: Summary,
    /// Pause sent -> a status query shows `PAUSED`.
    pub pause_to_paused_visible: Summary,
    /// Resume sent -> a status query shows it running again.
    pub resume_to_running_visible: Summary,
    pub skipped: usize,
}

/// For each order (whose fulfillment is running a long step), one at a
/// time: pause, query until `PAUSED`; resume, query until running.
pub async fn signals(
    http: &Http,
    order_url: &str,
    orders: &[Order],
    progress: &ProgressBar,
) -> Result<SignalResult> {
    let mut answered = Vec::new();
    let mut paused = Vec::new();
    let mut resumed = Vec::new();
    let mut skipped = 0;
    for order in orders {
        let query = format!(
            "{order_url}/orders/fulfillment/{}/status",
            order.fulfillment_id
        );
        let start = Instant::now();
        let (code, _) = http
            .post(
                &format!("{order_url}/orders/{}/fulfillment/pause", order.workflow_id),
                None,
            )
            .await?;
        if code != 200 {
            skipped += 1;
            progress.inc(1);
            continue;
        }
        answered.push(start.elapsed());
        paused.push(until_status(http, &query, start, |s| s == "PAUSED").await?);
        let start = Instant::now();
        let (code, body) = http
            .post(
                &format!(
                    "{order_url}/orders/{}/fulfillment/resume",
                    order.workflow_id
                ),
                None,
            )
            .await?;
        if code != 200 {
            bail!("resume {}: {code} {body}", order.workflow_id);
        }
        resumed.push(until_status(http, &query, start, |s| s != "PAUSED").await?);
        progress.inc(1);
    }
    Ok(SignalResult {
        fulfillments: orders.len(),
        pause_answered: Summary::of(&answered),
        pause_to_paused_visible: Summary::of(&paused),
        resume_to_running_visible: Summary::of(&resumed),
        skipped,
    })
}

/// Queries `url` back to back until its `status` satisfies `done`; the
/// time since `start`.
async fn until_status(
    http: &Http,
    url: &str,
    start: Instant,
    done: impl Fn(&str) -> bool,
) -> Result<Duration> {
    loop {
        let (code, body) = http.get(url).await?;
        if code == 200 && done(body["status"].as_str().unwrap_or_default()) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{url}: still {} after 10 s", body["status"]);
        }
    }
}

/// Creates `count` demo orders and waits until each one's fulfillment is
/// in `PICKING` (the services run long steps for this).
pub async fn running_orders(http: &Http, order_url: &str, count: usize) -> Result<Vec<Order>> {
    let mut orders = Vec::with_capacity(count);
    for _ in 0..count {
        let (code, body) = http.post(&format!("{order_url}/orders/demo"), None).await?;
        if code != 201 {
            bail!("POST /orders/demo: {code} {body}");
        }
        let order_id = body["orderId"].as_str().context("orderId")?;
        orders.push(Order {
            workflow_id: body["workflowId"]
                .as_str()
                .context("workflowId")?
                .to_string(),
            fulfillment_id: fulfillment_workflow_id(order_id),
        });
    }
    for order in &orders {
        let url = format!(
            "{order_url}/orders/fulfillment/{}/status",
            order.fulfillment_id
        );
        let start = Instant::now();
        loop {
            let (code, body) = http.get(&url).await?;
            let status = body["status"].as_str().unwrap_or_default();
            if code == 200 && status == "PICKING" {
                break;
            }
            if ["SHIPPED", "CANCELLED", "FAILED"].contains(&status) {
                bail!(
                    "{} is already {status}: its steps are too short to pause \
                     (run fulfillment-service with a long STEP_DELAY_MS)",
                    order.fulfillment_id
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{} not PICKING after 30 s ({code} {body})",
                    order.fulfillment_id
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(orders)
}

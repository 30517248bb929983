//! Broker high availability (issue 13), against the local three-node
//! RabbitMQ cluster (`scripts/rabbitmq-cluster.sh`, started here when it is
//! not running): a node dies and both services carry on (fulfillment's
//! query queue, exclusive to its connection, is declared again on the node
//! it reconnects to); a consumer the broker cancels consumes again; a
//! request pending when the connection drops fails at once.
//!
//! Tests that take nodes down or delete queues hold the cluster
//! exclusively, so they never overlap; each has a vhost of its own.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use message_bus::{Bus, BusConfig, BusError, Route};
use serde_json::Value;
use shared_messages::messages::{GetFulfillmentStatus, Message};
use shared_messages::topology::{
    self, QueueKind, QueueSpec, FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERIES_QUEUE,
    FULFILLMENT_QUERY_KEY,
};
use shared_messages::Envelope;
use system_tests::cluster::{Cluster, ClusterVhost, NODES};
use system_tests::{eventually, Http, Service, TestVhost};

use crate::durability::System;

/// What issue 13 allows from a node's death to the services serving again.
const RECOVERY: Duration = Duration::from_secs(10);

/// The first node the services' connections are on (they take the
/// addresses in turn, so all of them start on the same one).
async fn connected_node(vhost: &ClusterVhost) -> Result<u8> {
    eventually(
        "the services' connections to be listed",
        Duration::from_secs(20),
        || async { Ok(vhost.connection_nodes().await?.first().copied()) },
    )
    .await
}

async fn ready(http: &Http, service: &Service) -> Result<bool> {
    Ok(http.get(&service.url("/readyz")).await?.0 == 200)
}

/// `GET /orders/fulfillment/{id}/status` of the order `workflow`: answered
/// by fulfillment-service through the query queue.
async fn query_fulfillment(system: &System, workflow: &str) -> Result<(u16, Value)> {
    let order_id = workflow.trim_start_matches("order-workflow-");
    system
        .http
        .get(&system.orders.url(&format!(
            "/orders/fulfillment/fulfillment-{order_id}/status"
        )))
        .await
}

/// The query queue of the one fulfillment-service replica of the vhost
/// (`fulfillment.queries.<replica>`), once it is declared.
async fn replica_query_queue(vhost: &ClusterVhost) -> Result<String> {
    let prefix = format!("{FULFILLMENT_QUERIES_QUEUE}.");
    let dlq = topology::dead_letter_queue(FULFILLMENT_QUERIES_QUEUE);
    eventually(
        "fulfillment-service's query queue to be listed",
        Duration::from_secs(20),
        || async {
            let names: Vec<String> = vhost
                .queues()
                .await?
                .iter()
                .filter_map(|q| q["name"].as_str())
                .filter(|name| name.starts_with(&prefix) && *name != dlq)
                .map(str::to_owned)
                .collect();
            ensure!(
                names.len() <= 1,
                "one replica, several query queues: {names:?}"
            );
            Ok(names.into_iter().next())
        },
    )
    .await
}

/// Every queue of the vhost by name, once each reports `running` on a
/// whole cluster.
async fn running_queues(vhost: &ClusterVhost) -> Result<Option<BTreeSet<String>>> {
    let queues = vhost.queues().await?;
    let all_running = queues
        .iter()
        .all(|q| q["state"] == "running" && q["members"].as_array().map_or(3, Vec::len) == 3);
    Ok(all_running.then(|| {
        queues
            .iter()
            .filter_map(|q| q["name"].as_str().map(str::to_owned))
            .collect()
    }))
}

/// Kills the node the services are connected to and returns when both
/// are ready again and a query has been answered; the time that took.
async fn kill_and_recover(
    cluster: &Cluster,
    vhost: &ClusterVhost,
    system: &System,
    probe: &str,
) -> Result<(u8, Duration)> {
    let victim = connected_node(vhost).await?;
    cluster.kill(victim).await?;
    let killed = Instant::now();
    let http = &system.http;
    eventually("both services ready again", RECOVERY, || async {
        Ok(
            (ready(http, &system.orders).await? && ready(http, &system.fulfillment).await?)
                .then_some(()),
        )
    })
    .await
    .with_context(|| format!("after kill -9 of node ha{victim}"))?;
    let left = RECOVERY.saturating_sub(killed.elapsed());
    eventually("a fulfillment query to be answered", left, || async {
        let (code, _) = query_fulfillment(system, probe).await?;
        Ok((code == 200).then_some(()))
    })
    .await
    .with_context(|| format!("after kill -9 of node ha{victim}"))?;
    Ok((victim, killed.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_in_flight_all_ship_once_when_their_node_is_killed() -> Result<()> {
    let cluster = Cluster::ensure().await?;
    let _exclusive = cluster.exclusive().await?;
    cluster.wait_whole().await?;
    let vhost = ClusterVhost::create(&cluster, "ha-kill").await?;
    let system = System::start(&vhost.amqp_urls(&NODES), None).await?;
    let mut workflows = Vec::new();
    system.create_demos(20, &mut workflows).await?;
    system.events.wait_in_progress(3).await?;
    let queues_before =
        eventually("every queue running", RECOVERY, || running_queues(&vhost)).await?;

    let (victim, took) = kill_and_recover(&cluster, &vhost, &system, &workflows[0]).await?;
    ensure!(took <= RECOVERY, "recovered in {took:?}");
    // Orders are taken while the node is still down.
    system.create_demos(10, &mut workflows).await?;

    cluster.start_node(victim).await?;
    cluster.wait_whole().await?;
    system.wait_all_shipped(&workflows).await?;
    system.assert_each_shipped_exactly_once(&workflows).await?;
    let queues_after = eventually(
        "every queue running on the whole cluster",
        Duration::from_secs(30),
        || running_queues(&vhost),
    )
    .await?;
    let lost: Vec<_> = queues_before.difference(&queues_after).collect();
    ensure!(lost.is_empty(), "queues lost: {lost:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_consumed_again_and_readyz_says_not_ready_in_between() -> Result<()> {
    let cluster = Cluster::ensure().await?;
    let _exclusive = cluster.exclusive().await?;
    let vhost = ClusterVhost::create(&cluster, "ha-cancel").await?;
    let system = System::start(&vhost.amqp_urls(&[3, 2, 1]), None).await?;
    let mut workflows = Vec::new();
    system.create_demos(1, &mut workflows).await?;
    system.events.wait_shipped(1).await?;

    // Watch fulfillment-service's readiness from before the deletion on.
    let saw_not_ready = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (saw, stop) = (saw_not_ready.clone(), stop.clone());
        let url = system.fulfillment.url("/readyz");
        let http = Http::new();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if http.get(&url).await.is_ok_and(|(code, _)| code == 503) {
                    saw.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let queue = replica_query_queue(&vhost).await?;
    vhost.delete_queue(&queue).await?;
    let deleted = Instant::now();
    eventually(
        "a fulfillment query to be answered again",
        RECOVERY,
        || async {
            let (code, _) = query_fulfillment(&system, &workflows[0]).await?;
            Ok((code == 200).then_some(()))
        },
    )
    .await?;
    eventually("fulfillment-service ready again", RECOVERY, || async {
        Ok(ready(&system.http, &system.fulfillment)
            .await?
            .then_some(()))
    })
    .await?;
    ensure!(
        deleted.elapsed() <= RECOVERY,
        "consuming resumed after {:?}",
        deleted.elapsed()
    );
    stop.store(true, Ordering::SeqCst);
    watcher.await?;
    ensure!(
        saw_not_ready.load(Ordering::SeqCst),
        "/readyz answered 503 while the queue was not consumed"
    );
    let text = reqwest::get(system.fulfillment.url("/metrics"))
        .await?
        .text()
        .await?;
    ensure!(
        text.lines().any(|l| l.contains("consumer_restarts_total")
            && l.contains(&format!("queue=\"{queue}\""))
            && !l.ends_with(" 0")),
        "the restart is counted by queue in /metrics"
    );
    // Orders still flow.
    system.create_demos(3, &mut workflows).await?;
    system.wait_all_shipped(&workflows).await?;
    Ok(())
}

#[tokio::test]
async fn a_pending_request_fails_at_once_when_the_connection_drops() -> Result<()> {
    let vhost = TestVhost::create("ha-pending").await?;
    // A queue bound for queries that nobody consumes.
    let queue = "ha-test.queries";
    let bus = Bus::new(BusConfig::new(
        &vhost.amqp_url,
        "ha-test",
        topology::fulfillment_queries()
            .queue(QueueSpec {
                name: queue.into(),
                kind: QueueKind::Classic {
                    message_ttl_ms: None,
                },
                dead_letter_exchange: None,
                dead_letter_key: None,
                single_active_consumer: false,
            })
            .bind(queue, FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY),
    ));
    bus.start();
    ensure!(
        bus.wait_connected(Duration::from_secs(15)).await,
        "could not connect to RabbitMQ at {} (./scripts/test.sh starts it)",
        vhost.amqp_url
    );
    // Nobody consumes the query queue: the request would wait 30 s.
    let timeout = Duration::from_secs(30);
    let request = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let route = Route::new(FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY, true);
            let query = Envelope::new(
                "fulfillment-x",
                Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
            );
            let started = Instant::now();
            let result = bus.request(&route, &query, timeout, false).await;
            (result, started.elapsed())
        })
    };
    // The request is on its way before the connection goes.
    eventually(
        "the query to be queued",
        Duration::from_secs(15),
        || async {
            let info = vhost.queue_info(queue).await?;
            Ok((info["messages"].as_u64() == Some(1)).then_some(()))
        },
    )
    .await?;
    vhost.close_connections().await?;
    let (result, took) = request.await?;
    ensure!(
        matches!(result, Err(BusError::NotConnected)),
        "the pending request fails as not connected: {result:?}"
    );
    ensure!(
        took < timeout / 2,
        "it failed when the connection dropped, not at its timeout ({took:?})"
    );
    bus.shutdown().await;
    Ok(())
}

/// Not a check: measures, five times, how long orders stop flowing when the
/// node the services are connected to is killed, and prints the figures
/// for docs/durability.md:
///
/// ```text
/// cargo nextest run -p system-tests --run-ignored only -E 'test(/measure_node_kill/)' --no-capture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run by hand for docs/durability.md"]
async fn measure_node_kill_to_orders_flowing() -> Result<()> {
    let cluster = Cluster::ensure().await?;
    let _exclusive = cluster.exclusive().await?;
    cluster.wait_whole().await?;
    let vhost = ClusterVhost::create(&cluster, "ha-measure").await?;
    let system = System::start(&vhost.amqp_urls(&NODES), None).await?;
    let mut workflows = Vec::new();
    // The same order with no kill: how long placing and shipping takes.
    let mut baseline = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let workflow = system.create_demo().await?;
        system
            .wait_all_shipped(std::slice::from_ref(&workflow))
            .await?;
        baseline.push(started.elapsed());
        workflows.push(workflow);
    }
    let mut accepted = Vec::new();
    let mut shipped = Vec::new();
    for round in 1..=5 {
        let victim = connected_node(&vhost).await?;
        cluster.kill(victim).await?;
        let killed = Instant::now();
        // An order placed as soon as order-service takes one again...
        let workflow = eventually("an order to be accepted", RECOVERY, || async {
            let (code, body) = system
                .http
                .post(&system.orders.url("/orders/demo"), None)
                .await?;
            Ok((code == 201)
                .then(|| body["workflowId"].as_str().map(str::to_owned))
                .flatten())
        })
        .await?;
        let taken = killed.elapsed();
        // ...and shipped.
        system
            .wait_all_shipped(std::slice::from_ref(&workflow))
            .await?;
        let through = killed.elapsed();
        println!(
            "kill {round} (ha{victim}): order accepted after {taken:?}, shipped after {through:?}"
        );
        accepted.push(taken);
        shipped.push(through);
        workflows.push(workflow);
        cluster.start_node(victim).await?;
        cluster.wait_whole().await?;
    }
    system.wait_all_shipped(&workflows).await?;
    system.assert_each_shipped_exactly_once(&workflows).await?;
    for (what, mut times) in [
        ("no kill: new order shipped", baseline),
        ("kill -9 -> new order accepted", accepted),
        ("kill -9 -> new order shipped", shipped),
    ] {
        times.sort();
        println!(
            "{what}: p50 {:?}, max {:?}",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    Ok(())
}

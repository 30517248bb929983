//! What the bus gives a partitioned service, against the real broker:
//! consumers started and stopped while the bus runs (a partition's queue,
//! consumed while this replica owns the partition), messages forwarded
//! unchanged from the shared queue to a partition's queue, and partition
//! queues with a single active consumer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::FutureExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use message_bus::{
    Bus, BusConfig, Handler, Incoming, Outcome, Route, ENTITY_ID_HEADER, TRACEPARENT_HEADER,
};
use shared_messages::messages::*;
use shared_messages::topology::{self, *};
use shared_messages::Envelope;
use system_tests::{eventually, TestVhost};
use tokio::sync::mpsc;

use super::bus::{collecting, recv, DEADLINE};

const PARTITIONS: u16 = 2;

/// The shared topology with fulfillment's partition queues, as a replica
/// in partitioned mode declares it.
fn partitioned() -> Topology {
    topology::all().merge(topology::fulfillment_partitions(PARTITIONS))
}

fn partition_route(n: u16) -> Route {
    Route::new(FULFILLMENT_PARTITIONS_EXCHANGE, &partition_key(n), true)
}

fn signal_route() -> Route {
    Route::new(FULFILLMENT_SIGNALS_EXCHANGE, FULFILLMENT_SIGNAL_KEY, true)
}

fn pause(entity: &str) -> Envelope {
    Envelope::new(entity, Message::PauseFulfillment(PauseFulfillment {}))
}

fn config(vhost: &TestVhost, name: &str) -> BusConfig {
    let mut config = BusConfig::new(&vhost.amqp_url, name, partitioned());
    config.reconnect_max = Duration::from_millis(500);
    config
}

/// Starts `bus` and waits until it is connected and ready.
async fn started(bus: Bus, url: &str) -> Result<Bus> {
    bus.start();
    anyhow::ensure!(
        bus.wait_connected(DEADLINE).await,
        "could not connect to RabbitMQ at {url} (is it running? ./scripts/test.sh starts it)"
    );
    ready(&bus).await?;
    Ok(bus)
}

/// A replica's bus, connected, with no consumer yet.
async fn replica(vhost: &TestVhost, name: &str) -> Result<Bus> {
    started(Bus::new(config(vhost, name)), &vhost.amqp_url).await
}

async fn ready(bus: &Bus) -> Result<()> {
    eventually("the bus to be ready", DEADLINE, || async {
        Ok(bus.is_ready().then_some(()))
    })
    .await
}

/// The messages ready in `queue` (not counting those delivered and not
/// yet acked) and its consumers, as the broker counts them now: a passive
/// declare, since the management API's figures lag by seconds.
async fn queue_counts(vhost: &TestVhost, queue: &str) -> Result<(u32, u32)> {
    let connection = Connection::connect(&vhost.amqp_url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {}", vhost.amqp_url))?;
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .with_context(|| format!("queue {queue}"))?;
    let _ = connection.close(200, "counted".into()).await;
    Ok((declared.message_count(), declared.consumer_count()))
}

async fn publish_each(bus: &Bus, route: &Route, count: usize) -> Result<Vec<Envelope>> {
    let sent: Vec<Envelope> = (0..count)
        .map(|i| pause(&format!("fulfillment-{i}")))
        .collect();
    let batch: Vec<(Route, Envelope)> = sent.iter().map(|e| (route.clone(), e.clone())).collect();
    bus.publish_all(&batch).await?;
    Ok(sent)
}

#[tokio::test]
async fn a_consumer_started_after_start_receives_until_stopped() -> Result<()> {
    let vhost = TestVhost::create("dyn-start").await?;
    let bus = replica(&vhost, "replica-a").await?;
    let queue = fulfillment_partition_queue(0);
    let (handler, mut rx) = collecting();

    let handle = bus.consume_until(&queue, handler);
    assert_eq!(handle.queue(), queue);
    ready(&bus).await?;
    let sent = pause("fulfillment-1");
    bus.publish(&partition_route(0), &sent).await?;
    assert_eq!(recv(&mut rx).await.envelope, sent);

    handle.stop().await;
    assert!(bus.is_ready(), "{:?}", bus.not_ready_reason());
    assert_eq!(queue_counts(&vhost, &queue).await?, (0, 0));
    bus.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn readiness_counts_a_started_consumer_and_forgets_it_once_stopped() -> Result<()> {
    let vhost = TestVhost::create("dyn-ready").await?;
    let bus = replica(&vhost, "replica-a").await?;
    // A queue nobody declared: the consumer keeps trying, and the bus is
    // not ready while it does.
    let (handler, _rx) = collecting();
    let handle = bus.consume_until("no-such-queue", handler);
    let reason = eventually("the bus to name the idle consumer", DEADLINE, || async {
        Ok(bus.not_ready_reason())
    })
    .await?;
    assert_eq!(reason, "not consuming no-such-queue");

    handle.stop().await;
    assert!(bus.is_ready(), "{:?}", bus.not_ready_reason());
    bus.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn dropping_the_handle_stops_the_consumer() -> Result<()> {
    let vhost = TestVhost::create("dyn-drop").await?;
    let bus = replica(&vhost, "replica-a").await?;
    let queue = fulfillment_partition_queue(0);
    let (handler, _rx) = collecting();
    let handle = bus.consume_until(&queue, handler);
    eventually("one consumer on the queue", DEADLINE, || async {
        Ok((queue_counts(&vhost, &queue).await? == (0, 1)).then_some(()))
    })
    .await?;

    drop(handle);
    assert!(bus.is_ready(), "{:?}", bus.not_ready_reason());
    eventually("no consumer on the queue", DEADLINE, || async {
        Ok((queue_counts(&vhost, &queue).await? == (0, 0)).then_some(()))
    })
    .await?;
    bus.shutdown().await;
    Ok(())
}

/// How many deliveries the handler was called for and how many of those
/// calls finished.
#[derive(Default)]
struct Calls {
    started: AtomicUsize,
    finished: AtomicUsize,
}

/// A handler that takes `duration` per message, counting its calls.
fn slow(calls: Arc<Calls>, duration: Duration) -> Handler {
    Arc::new(move |_incoming: Incoming| {
        calls.started.fetch_add(1, Ordering::SeqCst);
        let calls = calls.clone();
        async move {
            tokio::time::sleep(duration).await;
            calls.finished.fetch_add(1, Ordering::SeqCst);
            Outcome::Ack
        }
        .boxed()
    })
}

#[tokio::test]
async fn stop_waits_for_the_handlers_in_flight_and_leaves_the_rest_queued() -> Result<()> {
    const PREFETCH: usize = 3;
    const SENT: usize = 10;
    let vhost = TestVhost::create("dyn-stop").await?;
    let mut config = config(&vhost, "replica-a");
    config.prefetch = PREFETCH as u16;
    let bus = started(Bus::new(config), &vhost.amqp_url).await?;
    let queue = fulfillment_partition_queue(0);
    publish_each(&bus, &partition_route(0), SENT).await?;

    let calls = Arc::new(Calls::default());
    let handle = bus.consume_until(&queue, slow(calls.clone(), Duration::from_secs(1)));
    eventually(
        "a prefetch's worth of handlers running",
        DEADLINE,
        || async { Ok((calls.started.load(Ordering::SeqCst) == PREFETCH).then_some(())) },
    )
    .await?;
    handle.stop().await;

    // Every handler called had finished when stop returned, and its
    // message was acked: the channel is closed, so anything unacked would
    // be ready again.
    assert_eq!(calls.started.load(Ordering::SeqCst), PREFETCH);
    assert_eq!(calls.finished.load(Ordering::SeqCst), PREFETCH);
    assert_eq!(
        queue_counts(&vhost, &queue).await?,
        ((SENT - PREFETCH) as u32, 0)
    );
    // And nothing more is delivered: the rest stays in the queue. (A wait
    // for something not to happen: one second is several round trips.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.started.load(Ordering::SeqCst), PREFETCH);
    assert_eq!(
        queue_counts(&vhost, &queue).await?,
        ((SENT - PREFETCH) as u32, 0)
    );
    // The management API agrees, once its figures catch up: seven
    // messages, none of them unacked (before the acks it counted ten).
    eventually(
        "the management API to count 7, none unacked",
        DEADLINE,
        || async {
            let info = vhost.queue_info(&queue).await?;
            let messages = info["messages"].as_u64();
            let unacked = info["messages_unacknowledged"].as_u64();
            Ok((messages == Some((SENT - PREFETCH) as u64) && unacked == Some(0)).then_some(()))
        },
    )
    .await?;
    bus.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_started_consumer_consumes_again_after_a_reconnect() -> Result<()> {
    let vhost = TestVhost::create("dyn-reconnect").await?;
    let bus = replica(&vhost, "replica-a").await?;
    let queue = fulfillment_partition_queue(1);
    let route = partition_route(1);
    let (handler, mut rx) = collecting();
    let handle = bus.consume_until(&queue, handler);
    ready(&bus).await?;
    let first = pause("fulfillment-1");
    bus.publish(&route, &first).await?;
    assert_eq!(recv(&mut rx).await.envelope, first);

    bus.force_reconnect().await;
    // Publishing fails until the bus has reconnected.
    let second = pause("fulfillment-2");
    eventually("a publish after the reconnect", DEADLINE, || async {
        Ok(bus.publish(&route, &second).await.ok())
    })
    .await?;
    assert_eq!(recv(&mut rx).await.envelope, second);
    // Started once on the new connection, not twice.
    eventually("one consumer on the queue", DEADLINE, || async {
        Ok((queue_counts(&vhost, &queue).await? == (0, 1)).then_some(()))
    })
    .await?;

    handle.stop().await;
    assert_eq!(queue_counts(&vhost, &queue).await?, (0, 0));
    bus.shutdown().await;
    Ok(())
}

/// A handler that reports each delivery on a channel and answers it (as
/// a partition's owner answers a signal sent as a request).
fn answering(bus: Bus) -> (Handler, mpsc::UnboundedReceiver<Incoming>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |incoming: Incoming| {
        let _ = tx.send(incoming.clone());
        let bus = bus.clone();
        async move {
            let Some(to) = incoming.reply_to else {
                return Outcome::DeadLetter("no reply_to".into());
            };
            let entity = incoming.envelope.entity_id;
            let answer = Envelope::new(
                entity.clone(),
                Message::QueryFailed(ReplyError::not_found(entity)),
            );
            match bus.reply(&to, &answer).await {
                Ok(()) => Outcome::Ack,
                Err(e) => Outcome::Retry(e.to_string()),
            }
        }
        .boxed()
    });
    (handler, rx)
}

/// The ingress: forwards each message to partition `n`, acking once the
/// broker has confirmed it.
fn forwarding(bus: Bus, n: u16) -> (Handler, mpsc::UnboundedReceiver<Incoming>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |incoming: Incoming| {
        let _ = tx.send(incoming.clone());
        let bus = bus.clone();
        async move {
            match bus.forward(&partition_route(n), &incoming).await {
                Ok(()) => Outcome::Ack,
                Err(e) => Outcome::Retry(e.to_string()),
            }
        }
        .boxed()
    });
    (handler, rx)
}

#[tokio::test]
async fn a_forwarded_request_is_answered_by_the_partition_owner() -> Result<()> {
    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let vhost = TestVhost::create("dyn-forward").await?;
    let requester = replica(&vhost, "requester").await?;
    // Three connections: the requester, the ingress that moves signals to
    // their partition, and the partition's owner that answers.
    let ingress = Bus::new(config(&vhost, "ingress"));
    let (handler, mut at_ingress) = forwarding(ingress.clone(), 1);
    ingress.consume(FULFILLMENT_SIGNALS_QUEUE, handler);
    let ingress = started(ingress, &vhost.amqp_url).await?;
    let owner = replica(&vhost, "owner").await?;
    let (handler, mut at_owner) = answering(owner.clone());
    let handle = owner.consume_until(&fulfillment_partition_queue(1), handler);
    ready(&owner).await?;

    let request = pause("fulfillment-42").traced(Some(TRACEPARENT.into()));
    let reply = requester
        .request(&signal_route(), &request, DEADLINE, true)
        .await?;
    match &reply.message {
        Message::QueryFailed(e) => assert_eq!(e.message, "fulfillment-42"),
        other => panic!("unexpected reply {other:?}"),
    }

    let (first, last) = (recv(&mut at_ingress).await, recv(&mut at_owner).await);
    assert_eq!(last.envelope, request);
    assert_eq!(last.reply_to, first.reply_to);
    assert!(last.reply_to.is_some());
    let (sent, forwarded) = (
        first.original.as_deref().expect("a delivery"),
        last.original.as_deref().expect("a delivery"),
    );
    assert_eq!(forwarded.body, sent.body);
    let (sent, forwarded) = (&sent.properties, &forwarded.properties);
    assert_eq!(forwarded.message_id(), sent.message_id());
    assert_eq!(forwarded.kind(), sent.kind());
    assert_eq!(forwarded.timestamp(), sent.timestamp());
    assert_eq!(forwarded.correlation_id(), sent.correlation_id());
    assert_eq!(
        forwarded.app_id().as_ref().map(|a| a.as_str()),
        Some("requester")
    );
    assert_eq!(forwarded.delivery_mode(), &Some(2));
    let headers = forwarded.headers().as_ref().expect("headers");
    let header = |name: &str| headers.inner().get(name).cloned();
    let sent_headers = sent.headers().as_ref().expect("headers");
    for name in [ENTITY_ID_HEADER, TRACEPARENT_HEADER] {
        assert!(header(name).is_some(), "{name} carried");
        assert_eq!(header(name).as_ref(), sent_headers.inner().get(name));
    }

    // Both queues are empty: each step acked.
    eventually("both queues drained", DEADLINE, || async {
        let signals = queue_counts(&vhost, FULFILLMENT_SIGNALS_QUEUE).await?;
        let partition = queue_counts(&vhost, &fulfillment_partition_queue(1)).await?;
        Ok((signals.0 == 0 && partition.0 == 0).then_some(()))
    })
    .await?;
    handle.stop().await;
    for bus in [requester, ingress, owner] {
        bus.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn one_replica_at_a_time_consumes_a_partition() -> Result<()> {
    let vhost = TestVhost::create("dyn-single-active").await?;
    let (a, b) = (
        replica(&vhost, "replica-a").await?,
        replica(&vhost, "replica-b").await?,
    );
    let queue = fulfillment_partition_queue(0);
    let route = partition_route(0);
    let (handler, mut at_a) = collecting();
    let handle_a = a.consume_until(&queue, handler);
    ready(&a).await?;
    let (handler, mut at_b) = collecting();
    let handle_b = b.consume_until(&queue, handler);
    ready(&b).await?;
    // Both subscribed (each bus is ready), but the broker counts only the
    // active consumer of a single-active-consumer queue.
    assert_eq!(queue_counts(&vhost, &queue).await?.1, 1);

    // The first subscribed is the active one: it gets everything.
    for sent in publish_each(&a, &route, 5).await? {
        assert_eq!(recv(&mut at_a).await.envelope, sent);
    }
    assert!(at_b.try_recv().is_err(), "the waiting consumer got nothing");

    // Once it stops, the other takes over.
    handle_a.stop().await;
    for sent in publish_each(&a, &route, 5).await? {
        assert_eq!(recv(&mut at_b).await.envelope, sent);
    }
    assert!(at_a.try_recv().is_err(), "nothing after stop");

    handle_b.stop().await;
    assert_eq!(queue_counts(&vhost, &queue).await?, (0, 0));
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn stop_gives_back_a_message_whose_handler_keeps_failing() -> Result<()> {
    let vhost = TestVhost::create("dyn-retrying").await?;
    let bus = replica(&vhost, "replica-a").await?;
    let queue = fulfillment_partition_queue(0);
    publish_each(&bus, &partition_route(0), 1).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let failing: Handler = {
        let calls = calls.clone();
        Arc::new(move |_incoming: Incoming| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Outcome::Retry("the store is down".into()) }.boxed()
        })
    };
    let handle = bus.consume_until(&queue, failing);
    eventually("the handler to be retried", DEADLINE, || async {
        Ok((calls.load(Ordering::SeqCst) >= 2).then_some(()))
    })
    .await?;
    assert!(
        !bus.is_ready(),
        "not ready while a delivery waits to be retried"
    );

    // The retry stops at once (no wait for the drain time) and the message
    // goes back to the queue for the next owner.
    let started = std::time::Instant::now();
    handle.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(queue_counts(&vhost, &queue).await?, (1, 0));
    assert!(bus.is_ready(), "{:?}", bus.not_ready_reason());
    bus.shutdown().await;
    Ok(())
}

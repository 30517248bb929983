//! The messaging layer against the real broker: confirms, consumers,
//! request/reply, dead-lettering and reconnection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::FutureExt;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use message_bus::{Bus, BusConfig, BusError, Handler, Incoming, Outcome, Route};
use shared_messages::messages::*;
use shared_messages::topology::{self, *};
use shared_messages::Envelope;
use system_tests::{eventually, TestVhost};
use tokio::sync::mpsc;

pub(crate) const DEADLINE: Duration = Duration::from_secs(15);

fn signal_route() -> Route {
    Route::new(FULFILLMENT_SIGNALS_EXCHANGE, FULFILLMENT_SIGNAL_KEY, true)
}

fn query_route() -> Route {
    Route::new(FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY, true)
}

fn pause(entity: &str) -> Envelope {
    Envelope::new(entity, Message::PauseFulfillment(PauseFulfillment {}))
}

/// A bus with the whole shared topology. A consumer of a replica's query
/// queue (`fulfillment.queries.<replica>`) declares that queue too: it is
/// exclusive to the connection that consumes it.
async fn connected_bus(vhost: &TestVhost, name: &str, consumers: &[(&str, Handler)]) -> Bus {
    let mut topology = topology::all();
    let replica_prefix = format!("{FULFILLMENT_QUERIES_QUEUE}.");
    for (queue, _) in consumers {
        if let Some(replica) = queue.strip_prefix(&replica_prefix) {
            topology = topology.merge(topology::fulfillment_query_replica(replica));
        }
    }
    connected_bus_with(vhost, name, topology, consumers).await
}

async fn connected_bus_with(
    vhost: &TestVhost,
    name: &str,
    topology: Topology,
    consumers: &[(&str, Handler)],
) -> Bus {
    let mut config = BusConfig::new(&vhost.amqp_url, name, topology);
    config.reconnect_max = Duration::from_millis(500);
    let bus = Bus::new(config);
    for (queue, handler) in consumers {
        bus.consume(queue, handler.clone());
    }
    bus.start();
    assert!(
        bus.wait_connected(DEADLINE).await,
        "could not connect to RabbitMQ at {} (is it running? ./scripts/test.sh starts it)",
        vhost.amqp_url
    );
    // Every consumer consuming: a replica's query queue exists only from
    // then on.
    eventually("the bus to be ready", DEADLINE, || async {
        Ok(bus.is_ready().then_some(()))
    })
    .await
    .expect("every consumer consumes");
    bus
}

/// A handler that forwards every delivery to a channel and acks.
pub(crate) fn collecting() -> (Handler, mpsc::UnboundedReceiver<Incoming>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |incoming| {
        let _ = tx.send(incoming);
        async { Outcome::Ack }.boxed()
    });
    (handler, rx)
}

pub(crate) async fn recv(rx: &mut mpsc::UnboundedReceiver<Incoming>) -> Incoming {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("a delivery within the deadline")
        .expect("the consumer is alive")
}

async fn queue_depth(vhost: &TestVhost, queue: &str) -> Result<Option<u64>> {
    let info = vhost.queue_info(queue).await?;
    Ok(info["messages"].as_u64())
}

#[tokio::test]
async fn confirmed_publishes_are_consumed_and_acked() -> Result<()> {
    let vhost = TestVhost::create("bus-publish").await?;
    let (handler, mut rx) = collecting();
    let bus = connected_bus(&vhost, "bus-test", &[(FULFILLMENT_SIGNALS_QUEUE, handler)]).await;

    let sent: Vec<Envelope> = (0..20)
        .map(|i| pause(&format!("fulfillment-{i}")))
        .collect();
    let batch: Vec<(Route, Envelope)> = sent.iter().map(|e| (signal_route(), e.clone())).collect();
    bus.publish_all(&batch).await?;

    let mut received = Vec::new();
    for _ in 0..sent.len() {
        received.push(recv(&mut rx).await.envelope);
    }
    received.sort_by_key(|e| e.message_id);
    let mut expected = sent.clone();
    expected.sort_by_key(|e| e.message_id);
    assert_eq!(received, expected);

    eventually("the queue to be empty (all acked)", DEADLINE, || async {
        let info = vhost.queue_info(FULFILLMENT_SIGNALS_QUEUE).await?;
        Ok((info["messages"].as_u64() == Some(0)).then_some(()))
    })
    .await?;
    bus.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_unroutable_mandatory_publish_is_an_error() -> Result<()> {
    let vhost = TestVhost::create("bus-unroutable").await?;
    let bus = connected_bus(&vhost, "bus-test", &[]).await;
    let route = Route::new(FULFILLMENT_SIGNALS_EXCHANGE, "nobody-bound-here", true);
    let result = bus.publish(&route, &pause("fulfillment-x")).await;
    assert!(
        matches!(result, Err(BusError::Unroutable { .. })),
        "{result:?}"
    );
    Ok(())
}

#[tokio::test]
async fn publishing_without_a_broker_fails_fast() -> Result<()> {
    let mut config = BusConfig::new(
        "amqp://guest:guest@127.0.0.1:1/%2f",
        "bus-test",
        topology::all(),
    );
    config.reconnect_max = Duration::from_millis(200);
    let bus = Bus::new(config);
    bus.start();
    let started = Instant::now();
    let result = bus.publish(&signal_route(), &pause("fulfillment-x")).await;
    assert!(matches!(result, Err(BusError::NotConnected)), "{result:?}");
    let result = bus
        .request(&query_route(), &pause("fulfillment-x"), DEADLINE, false)
        .await;
    assert!(matches!(result, Err(BusError::NotConnected)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!bus.is_connected());
    bus.shutdown().await;
    Ok(())
}

/// A responder that answers every query with a status reply naming the
/// entity it was asked about, after `delay`.
fn responder(bus: Bus, delay: Duration) -> Handler {
    Arc::new(move |incoming: Incoming| {
        let bus = bus.clone();
        async move {
            tokio::time::sleep(delay).await;
            let reply_to = incoming.reply_to.expect("queries carry reply_to");
            let answer = Envelope::new(
                incoming.envelope.entity_id.clone(),
                Message::QueryFailed(ReplyError::not_found(incoming.envelope.entity_id)),
            );
            match bus.reply(&reply_to, &answer).await {
                Ok(()) => Outcome::Ack,
                Err(e) => Outcome::Retry(e.to_string()),
            }
        }
        .boxed()
    })
}

fn answered_entity(reply: &Envelope) -> &str {
    match &reply.message {
        Message::QueryFailed(e) => &e.message,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[tokio::test]
async fn many_requests_in_flight_get_their_own_replies() -> Result<()> {
    let vhost = TestVhost::create("bus-rpc").await?;
    let server = connected_bus(&vhost, "bus-server", &[]).await;
    // The server bus answers on its own connection; register its consumer
    // on a second bus so the handler can hold the first.
    let handler = responder(server.clone(), Duration::ZERO);
    let answering = connected_bus(
        &vhost,
        "bus-answering",
        &[(&fulfillment_query_queue("answering"), handler)],
    )
    .await;
    let client = connected_bus(&vhost, "bus-client", &[]).await;

    let requests = (0..64).map(|i| {
        let client = client.clone();
        async move {
            let entity = format!("fulfillment-{i}");
            let query = Envelope::new(
                &entity,
                Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
            );
            let reply = client
                .request(&query_route(), &query, Duration::from_secs(10), false)
                .await?;
            Ok::<_, BusError>((entity, reply))
        }
    });
    for result in futures::future::join_all(requests).await {
        let (entity, reply) = result?;
        assert_eq!(answered_entity(&reply), entity);
    }
    answering.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_query_nobody_answers_times_out_within_its_bound() -> Result<()> {
    let vhost = TestVhost::create("bus-timeout").await?;
    // A queue bound for queries, with the replicas' TTL, never consumed.
    let queue = "bus-test.queries";
    let silent = connected_bus_with(
        &vhost,
        "bus-silent",
        topology::all()
            .queue(QueueSpec {
                name: queue.into(),
                kind: QueueKind::Classic {
                    message_ttl_ms: Some(QUERY_QUEUE_TTL_MS),
                },
                dead_letter_exchange: None,
                dead_letter_key: None,
                single_active_consumer: false,
            })
            .bind(queue, FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY),
        &[],
    )
    .await;
    let client = connected_bus(&vhost, "bus-client", &[]).await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let query = Envelope::new(
        "fulfillment-x",
        Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
    );
    let result = client.request(&query_route(), &query, timeout, false).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(BusError::Timeout(t)) if t == timeout),
        "{result:?}"
    );
    assert!(
        elapsed >= timeout,
        "returned before its timeout: {elapsed:?}"
    );
    assert!(
        elapsed < timeout * 5,
        "took far longer than its bound: {elapsed:?}"
    );
    // The expired query does not linger in the queue.
    eventually("the expired query to leave the queue", DEADLINE, || async {
        Ok((queue_depth(&vhost, queue).await? == Some(0)).then_some(()))
    })
    .await?;
    silent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_query_with_no_replica_bound_is_unroutable_at_once() -> Result<()> {
    let vhost = TestVhost::create("bus-no-replica").await?;
    let client = connected_bus(&vhost, "bus-client", &[]).await;
    let query = Envelope::new(
        "fulfillment-x",
        Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
    );
    let started = Instant::now();
    let result = client
        .request(&query_route(), &query, Duration::from_secs(10), false)
        .await;
    assert!(
        matches!(result, Err(BusError::Unroutable { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failed at once, not at its timeout: {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn with_two_replicas_each_answers_and_the_first_reply_is_kept() -> Result<()> {
    let vhost = TestVhost::create("bus-two-replicas").await?;
    let server = connected_bus(&vhost, "bus-server", &[]).await;
    let answered = Arc::new(AtomicUsize::new(0));
    let counting = |delay: Duration| -> Handler {
        let inner = responder(server.clone(), delay);
        let answered = answered.clone();
        Arc::new(move |incoming: Incoming| {
            answered.fetch_add(1, Ordering::SeqCst);
            inner(incoming)
        })
    };
    let _one = connected_bus(
        &vhost,
        "bus-replica-1",
        &[(&fulfillment_query_queue("one"), counting(Duration::ZERO))],
    )
    .await;
    let _two = connected_bus(
        &vhost,
        "bus-replica-2",
        &[(
            &fulfillment_query_queue("two"),
            counting(Duration::from_millis(50)),
        )],
    )
    .await;
    let client = connected_bus(&vhost, "bus-client", &[]).await;
    for i in 0..5 {
        let entity = format!("fulfillment-{i}");
        let query = Envelope::new(
            &entity,
            Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
        );
        let reply = client
            .request(&query_route(), &query, Duration::from_secs(10), false)
            .await?;
        // The second replica's late answer to the previous query never
        // answers this one.
        assert_eq!(answered_entity(&reply), entity);
    }
    eventually("both replicas to answer every query", DEADLINE, || async {
        Ok((answered.load(Ordering::SeqCst) == 10).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_late_reply_is_dropped_and_does_not_answer_the_next_request() -> Result<()> {
    let vhost = TestVhost::create("bus-late").await?;
    let server = connected_bus(&vhost, "bus-server", &[]).await;
    let handler = responder(server.clone(), Duration::from_millis(400));
    let _answering = connected_bus(
        &vhost,
        "bus-answering",
        &[(&fulfillment_query_queue("answering"), handler)],
    )
    .await;
    let client = connected_bus(&vhost, "bus-client", &[]).await;

    let first = Envelope::new(
        "fulfillment-first",
        Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
    );
    let result = client
        .request(&query_route(), &first, Duration::from_millis(100), false)
        .await;
    assert!(matches!(result, Err(BusError::Timeout(_))), "{result:?}");

    let second = Envelope::new(
        "fulfillment-second",
        Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
    );
    let reply = client
        .request(&query_route(), &second, Duration::from_secs(5), false)
        .await?;
    assert_eq!(answered_entity(&reply), "fulfillment-second");
    Ok(())
}

#[tokio::test]
async fn poison_messages_land_in_the_dead_letter_queue_with_their_reason() -> Result<()> {
    let vhost = TestVhost::create("bus-poison").await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let handler: Handler = Arc::new(move |incoming: Incoming| {
        seen.fetch_add(1, Ordering::SeqCst);
        let outcome = if incoming.envelope.entity_id == "fulfillment-unknown" {
            Outcome::DeadLetter("no fulfillment fulfillment-unknown".into())
        } else {
            Outcome::Ack
        };
        async move { outcome }.boxed()
    });
    let bus = connected_bus(&vhost, "bus-test", &[(FULFILLMENT_SIGNALS_QUEUE, handler)]).await;

    // Garbage that never reaches the handler, straight onto the queue.
    let connection = lapin::Connection::connect(&vhost.amqp_url, Default::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_publish(
            FULFILLMENT_SIGNALS_EXCHANGE.into(),
            FULFILLMENT_SIGNAL_KEY.into(),
            BasicPublishOptions::default(),
            b"{this is not json",
            BasicProperties::default(),
        )
        .await?;
    // A well-formed message the handler refuses.
    bus.publish(&signal_route(), &pause("fulfillment-unknown"))
        .await?;
    // And a good one after both: the consumer keeps working.
    bus.publish(&signal_route(), &pause("fulfillment-good"))
        .await?;

    let dlq = dead_letter_queue(FULFILLMENT_SIGNALS_QUEUE);
    let messages = eventually("two dead letters", DEADLINE, || async {
        let messages = vhost.peek(&dlq, 10).await?;
        Ok((messages.len() == 2).then_some(messages))
    })
    .await?;
    let reasons: Vec<String> = messages
        .iter()
        .map(|m| {
            m["properties"]["headers"]["x-dead-letter-reason"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("malformed envelope")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r == "no fulfillment fulfillment-unknown"),
        "{reasons:?}"
    );
    for m in &messages {
        assert_eq!(
            m["properties"]["headers"]["x-original-queue"],
            FULFILLMENT_SIGNALS_QUEUE
        );
    }
    // Both are counted, the undecodable one under its own type label.
    let dead_lettered = |message_type: &str| {
        message_bus::metrics::METRICS
            .dead_lettered
            .get_or_create(&message_bus::metrics::QueueTypeLabels {
                queue: FULFILLMENT_SIGNALS_QUEUE.into(),
                message_type: message_type.into(),
            })
            .get()
    };
    assert_eq!(dead_lettered(message_bus::metrics::UNDECODABLE), 1);
    assert_eq!(dead_lettered("PauseFulfillment"), 1);
    eventually(
        "the good message to be handled and the queue drained",
        DEADLINE,
        || async {
            let drained = queue_depth(&vhost, FULFILLMENT_SIGNALS_QUEUE).await? == Some(0);
            Ok((drained && calls.load(Ordering::SeqCst) == 2).then_some(()))
        },
    )
    .await?;
    bus.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_retried_delivery_is_retried_in_place_until_it_succeeds() -> Result<()> {
    let vhost = TestVhost::create("bus-retry").await?;
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |incoming: Incoming| {
        let attempt = seen.fetch_add(1, Ordering::SeqCst);
        let tx = tx.clone();
        async move {
            if attempt < 3 {
                Outcome::Retry("store busy".into())
            } else {
                let _ = tx.send(incoming);
                Outcome::Ack
            }
        }
        .boxed()
    });
    let bus = connected_bus(&vhost, "bus-test", &[(FULFILLMENT_SIGNALS_QUEUE, handler)]).await;
    let sent = pause("fulfillment-retry");
    bus.publish(&signal_route(), &sent).await?;
    eventually("the bus to report the retry", DEADLINE, || {
        let reason = bus.not_ready_reason();
        async move { Ok(reason.filter(|r| r.contains("retried"))) }
    })
    .await?;
    let delivered = recv(&mut rx).await;
    assert_eq!(delivered.envelope, sent);
    assert!(
        !delivered.redelivered,
        "retried in place: never requeued, so never counted toward the delivery limit"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    eventually("the bus to be ready again", DEADLINE, || {
        let ready = bus.is_ready();
        async move { Ok(ready.then_some(())) }
    })
    .await?;
    bus.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn publishing_and_consuming_resume_after_the_connection_is_closed() -> Result<()> {
    let vhost = TestVhost::create("bus-reconnect").await?;
    let (handler, mut rx) = collecting();
    let bus = connected_bus(&vhost, "bus-test", &[(FULFILLMENT_SIGNALS_QUEUE, handler)]).await;
    bus.publish(&signal_route(), &pause("fulfillment-before"))
        .await?;
    assert_eq!(recv(&mut rx).await.envelope.entity_id, "fulfillment-before");

    let mut state = bus.connection_state();
    let closed = vhost.close_connections().await?;
    assert!(closed >= 1, "the bus had a connection to close");
    eventually("the bus to notice the loss", DEADLINE, || {
        let down = !*state.borrow_and_update();
        async move { Ok(down.then_some(())) }
    })
    .await?;
    assert!(
        bus.wait_connected(DEADLINE).await,
        "the bus reconnects by itself"
    );

    let after = pause("fulfillment-after");
    bus.publish(&signal_route(), &after).await?;
    assert_eq!(recv(&mut rx).await.envelope, after);
    bus.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn topology_declaration_is_idempotent_across_services() -> Result<()> {
    let vhost = TestVhost::create("bus-topology").await?;
    // Both services' declarations, in either order, on the same vhost.
    let mut order = BusConfig::new(&vhost.amqp_url, "order-service", topology::order_service());
    order.reconnect_max = Duration::from_millis(200);
    let order = Bus::new(order);
    order.start();
    assert!(order.wait_connected(DEADLINE).await);
    let fulfillment = Bus::new(BusConfig::new(
        &vhost.amqp_url,
        "fulfillment-service",
        topology::fulfillment_service_replica("r1"),
    ));
    // Its consumer declares the replica's query queue.
    let (handler, _rx) = collecting();
    fulfillment.consume(&fulfillment_query_queue("r1"), handler);
    fulfillment.start();
    assert!(
        fulfillment.wait_connected(DEADLINE).await,
        "re-declaration with the same arguments succeeds"
    );
    for queue in &topology::all().queues {
        let info = vhost.queue_info(&queue.name).await?;
        assert_eq!(info["durable"], true, "{}", queue.name);
    }
    // The replica's query queue is its connection's own.
    let replica = eventually("the replica's query queue", DEADLINE, || async {
        let info = vhost.queue_info(&fulfillment_query_queue("r1")).await;
        Ok(info.ok())
    })
    .await?;
    assert_eq!(replica["durable"], false, "{replica}");
    assert_eq!(replica["exclusive"], true, "{replica}");
    assert_eq!(replica["arguments"]["x-message-ttl"], QUERY_QUEUE_TTL_MS);
    fulfillment.shutdown().await;
    order.shutdown().await;
    let signals = vhost.queue_info(FULFILLMENT_SIGNALS_QUEUE).await?;
    assert_eq!(signals["arguments"]["x-queue-type"], "quorum");
    assert_eq!(signals["arguments"]["x-delivery-limit"], DELIVERY_LIMIT);
    Ok(())
}

#[tokio::test]
async fn the_exported_definitions_load_and_agree_with_the_declarations() -> Result<()> {
    let vhost = TestVhost::create("bus-definitions").await?;
    let definitions = topology::definitions(&topology::all(), &vhost.name);
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/definitions/{}",
            system_tests::management_base(),
            system_tests::encode(&vhost.name)
        ))
        .json(&definitions)
        .send()
        .await?;
    assert!(
        response.status().is_success(),
        "import: {}",
        response.status()
    );
    // A queue declared with other arguments than the imported ones would
    // close the channel (PRECONDITION_FAILED) and the bus would not connect.
    let bus = connected_bus(&vhost, "bus-test", &[]).await;
    bus.publish(&signal_route(), &pause("fulfillment-x"))
        .await?;
    Ok(())
}

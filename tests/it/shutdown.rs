//! Graceful shutdown: on SIGTERM a service stops taking work, finishes and
//! acks what it holds, and exits; nothing sent to it is lost.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use futures::FutureExt;
use message_bus::{Bus, BusConfig, Incoming, Outcome, Route};
use serde_json::Value;
use shared_messages::messages::*;
use shared_messages::topology::{self, *};
use shared_messages::{ids, Envelope, Message};
use system_tests::*;

/// Within the 30 s that Kubernetes and compose give a pod to drain.
const GRACE: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(90);

/// A client on `vhost` that records which fulfillments have shipped.
async fn shipped_watcher(vhost: &TestVhost) -> Result<(Bus, Arc<Mutex<HashSet<String>>>)> {
    let bus = Bus::new(BusConfig::new(
        vhost.amqp_url.clone(),
        "shutdown-test",
        topology::order_service(),
    ));
    let shipped = Arc::new(Mutex::new(HashSet::new()));
    let sink = shipped.clone();
    // Consume our own copy of the events: a queue of the test's own bound
    // to the topic exchange, so order-service (when running) keeps its own.
    bus.consume(
        ORDER_FULFILLMENT_EVENTS_QUEUE,
        Arc::new(move |incoming: Incoming| {
            if let Message::FulfillmentStatusChanged(event) = &incoming.envelope.message {
                if event.fulfillment.status == FulfillmentStatus::Shipped {
                    sink.lock()
                        .expect("shipped set lock")
                        .insert(incoming.envelope.entity_id.clone());
                }
            }
            async { Outcome::Ack }.boxed()
        }),
    );
    bus.start();
    if !bus.wait_connected(Duration::from_secs(15)).await {
        bail!(
            "the test client cannot connect to RabbitMQ at {}",
            amqp_base()
        );
    }
    Ok((bus, shipped))
}

fn start_signal(order_id: &str) -> Envelope {
    let request = FulfillmentRequest {
        order_id: order_id.into(),
        customer_id: "c-1".into(),
        customer_name: None,
        customer_email: None,
        items: vec![OrderItem {
            product_id: "product-1".into(),
            product_name: "Widget".into(),
            quantity: 1,
            price: 1.0,
        }],
        shipping_address: Address {
            street: "1 Main St".into(),
            city: "Springfield".into(),
            state: "IL".into(),
            zip_code: "62701".into(),
            country: "USA".into(),
        },
    };
    Envelope::new(
        ids::fulfillment_workflow_id(order_id),
        Message::StartFulfillment(StartFulfillment { request }),
    )
}

async fn queue_is_empty(vhost: &TestVhost, queue: &str) -> Result<bool> {
    let info = vhost.queue_info(queue).await?;
    Ok(info["messages"].as_u64() == Some(0))
}

#[tokio::test]
async fn sigterm_of_fulfillment_service_loses_no_signal() -> Result<()> {
    let vhost = TestVhost::create("shutdown-fulfillment").await?;
    let dir = tempfile::tempdir()?;
    let (client, shipped) = shipped_watcher(&vhost).await?;
    let mut service = Service::start(
        "fulfillment-service",
        &vhost,
        dir.path(),
        &[("STEP_DELAY_MS", "5")],
    )
    .await?;
    service.wait_ready().await?;

    const COUNT: usize = 300;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let signals: Vec<(Route, Envelope)> = (0..COUNT)
        .map(|i| {
            let route = Route::new(FULFILLMENT_SIGNALS_EXCHANGE, FULFILLMENT_SIGNAL_KEY, true);
            (route, start_signal(&format!("ORD-{run}-{i}")))
        })
        .collect();
    client.publish_all(&signals).await?;

    // Stop it while it is in the middle of the work.
    eventually("some fulfillments to ship", DEADLINE, || {
        let n = shipped.lock().expect("lock").len();
        async move { Ok((n >= 10).then_some(())) }
    })
    .await?;
    let in_hand = shipped.lock().expect("lock").len();
    assert!(
        in_hand < COUNT,
        "the service finished before SIGTERM; nothing was tested"
    );
    let status = service.terminate(GRACE).await?;
    assert!(
        status.success(),
        "fulfillment-service exited with {status} on SIGTERM"
    );

    service.restart().await?;
    eventually(
        "every fulfillment to ship after the restart",
        DEADLINE,
        || {
            let n = shipped.lock().expect("lock").len();
            async move { Ok((n == COUNT).then_some(())) }
        },
    )
    .await?;
    for queue in [
        FULFILLMENT_SIGNALS_QUEUE.to_owned(),
        dead_letter_queue(FULFILLMENT_SIGNALS_QUEUE),
    ] {
        eventually(&format!("{queue} to be empty"), DEADLINE, || {
            let vhost = &vhost;
            let queue = queue.clone();
            async move { Ok(queue_is_empty(vhost, &queue).await?.then_some(())) }
        })
        .await?;
    }
    client.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn sigterm_of_order_service_loses_no_order() -> Result<()> {
    let vhost = TestVhost::create("shutdown-orders").await?;
    let dir = tempfile::tempdir()?;
    let fulfillment = Service::start(
        "fulfillment-service",
        &vhost,
        dir.path(),
        &[("STEP_DELAY_MS", "20")],
    )
    .await?;
    let mut orders = Service::start(
        "order-service",
        &vhost,
        dir.path(),
        &[
            ("INVENTORY_DELAY_MS", "50"),
            ("PAYMENT_DELAY_MS", "50"),
            ("POLL_INTERVAL_MS", "500"),
        ],
    )
    .await?;
    fulfillment.wait_ready().await?;
    orders.wait_ready().await?;
    let http = Http::new();

    let mut workflows = Vec::new();
    for _ in 0..20 {
        let (status, body) = http.post(&orders.url("/orders/demo"), None).await?;
        assert_eq!(status, 201, "{body}");
        workflows.push(body["workflowId"].as_str().unwrap_or_default().to_owned());
    }
    let status = orders.terminate(GRACE).await?;
    assert!(
        status.success(),
        "order-service exited with {status} on SIGTERM"
    );

    orders.restart().await?;
    for workflow in &workflows {
        let url = orders.url(&format!("/orders/{workflow}/status"));
        let body: Value = eventually(&format!("{workflow} to ship"), DEADLINE, || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let (_, body) = http.get(&url).await?;
                Ok((body["status"] == "SHIPPED").then_some(body))
            }
        })
        .await?;
        assert!(body["trackingNumber"].is_string(), "{body}");
    }
    Ok(())
}

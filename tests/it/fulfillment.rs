//! fulfillment-service as a real process against a real RabbitMQ, driven
//! over the bus (as order-service would) and over its HTTP API.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::FutureExt;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use message_bus::{Bus, BusConfig, Incoming, Outcome, Route};
use serde_json::json;
use shared_messages::messages::*;
use shared_messages::topology::{self, *};
use shared_messages::{ids, Envelope, Message};
use system_tests::*;
use uuid::Uuid;

/// Upper bound for anything that should happen within a few steps.
const DEADLINE: Duration = Duration::from_secs(15);
/// How long a reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// fulfillment-service on a vhost of its own and a client bus that sees
/// every event. Fields drop in order: the client bus closes before the
/// vhost goes.
struct Harness {
    bus: Bus,
    events: Arc<Mutex<Vec<Envelope>>>,
    system: TestSystem,
}

impl Harness {
    async fn start(label: &str, step_delay_ms: u64) -> Result<Self> {
        let mut system = TestSystem::builder(label).start().await?;
        // The client declares order-service's topology, so the events queue
        // exists (and collects) before the service publishes anything, and
        // binds the progress events too, so it sees every transition.
        let bus = Bus::new(BusConfig::new(
            system.amqp_url.clone(),
            "fulfillment-test",
            topology::order_service().bind(
                ORDER_FULFILLMENT_EVENTS_QUEUE,
                FULFILLMENT_EVENTS_EXCHANGE,
                FULFILLMENT_PROGRESS_ALL,
            ),
        ));
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        bus.consume(
            ORDER_FULFILLMENT_EVENTS_QUEUE,
            Arc::new(move |incoming: Incoming| {
                sink.lock().expect("events lock").push(incoming.envelope);
                async { Outcome::Ack }.boxed()
            }),
        );
        bus.start();
        if !bus.wait_connected(DEADLINE).await {
            bail!(
                "the test client cannot connect to RabbitMQ at {}",
                amqp_base()
            );
        }
        let delay = step_delay_ms.to_string();
        system
            .start_fulfillment(&[("STEP_DELAY_MS", delay.as_str())])
            .await?
            .wait_ready()
            .await?;
        Ok(Self {
            system,
            bus,
            events,
        })
    }

    fn fulfillment(&self) -> FulfillmentApi {
        self.system.fulfillment()
    }

    fn service(&mut self) -> &mut Service {
        self.system.fulfillment_service_mut()
    }

    fn vhost(&self) -> &TestVhost {
        self.system.vhost()
    }

    /// Sends a signal without waiting for an answer; returns its id.
    async fn signal(&self, id: &str, message: Message) -> Result<Uuid> {
        let envelope = Envelope::new(id, message);
        self.bus.publish(&signal_route(), &envelope).await?;
        Ok(envelope.message_id)
    }

    async fn signal_with_id(&self, id: &str, message_id: Uuid, message: Message) -> Result<()> {
        let envelope = Envelope::with_id(message_id, id, message);
        Ok(self.bus.publish(&signal_route(), &envelope).await?)
    }

    /// Sends a signal with reply-to and returns the answer.
    async fn signal_reply(&self, id: &str, message: Message) -> Result<SignalReply> {
        let envelope = Envelope::new(id, message);
        let reply = self
            .bus
            .request(&signal_route(), &envelope, REPLY_TIMEOUT, true)
            .await?;
        match reply.message {
            Message::SignalReply(r) => Ok(r),
            other => bail!("expected a SignalReply, got {other:?}"),
        }
    }

    async fn query(&self, id: &str, message: Message) -> Result<Message> {
        let envelope = Envelope::new(id, message);
        let route = Route::new(FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY, true);
        Ok(self
            .bus
            .request(&route, &envelope, REPLY_TIMEOUT, false)
            .await?
            .message)
    }

    async fn progress(&self, id: &str) -> Result<FulfillmentProgressView> {
        self.fulfillment()
            .progress(id)
            .await?
            .expect(200)
            .with_context(|| format!("progress of {id}"))
    }

    async fn status(&self, id: &str) -> Result<FulfillmentStatusView> {
        self.fulfillment()
            .status(id)
            .await?
            .expect(200)
            .with_context(|| format!("status of {id}"))
    }

    async fn wait_for(
        &self,
        id: &str,
        what: &str,
        check: impl Fn(&FulfillmentProgressView) -> bool,
    ) -> Result<FulfillmentProgressView> {
        eventually(&format!("{id}: {what}"), DEADLINE, || async {
            let p = self.progress(id).await?;
            Ok(check(&p).then_some(p))
        })
        .await
    }

    async fn wait_status(
        &self,
        id: &str,
        status: FulfillmentStatus,
    ) -> Result<FulfillmentProgressView> {
        self.wait_for(id, &format!("status {status}"), |p| p.status == status)
            .await
    }

    /// The events seen for `id`, each message id once, in arrival order.
    fn events_for(&self, id: &str) -> Vec<(Uuid, FulfillmentStatusChanged)> {
        let mut seen = HashSet::new();
        self.events
            .lock()
            .expect("events lock")
            .iter()
            .filter(|e| e.entity_id == id && seen.insert(e.message_id))
            .filter_map(|e| match &e.message {
                Message::FulfillmentStatusChanged(c) => Some((e.message_id, (**c).clone())),
                _ => None,
            })
            .collect()
    }

    fn raw_event_count(&self, id: &str) -> usize {
        self.events
            .lock()
            .expect("events lock")
            .iter()
            .filter(|e| e.entity_id == id)
            .count()
    }

    /// Waits until no progress change is seen for `window` and returns it.
    async fn assert_frozen(&self, id: &str, window: Duration) -> Result<FulfillmentProgressView> {
        let first = self.progress(id).await?;
        let start = Instant::now();
        while start.elapsed() < window {
            let now = self.progress(id).await?;
            assert_eq!(
                (
                    now.status,
                    now.current_step,
                    now.items_picked,
                    now.completed_steps.len()
                ),
                (
                    first.status,
                    first.current_step,
                    first.items_picked,
                    first.completed_steps.len()
                ),
                "progress of {id} moved while it should be frozen"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(first)
    }
}

fn signal_route() -> Route {
    Route::new(FULFILLMENT_SIGNALS_EXCHANGE, FULFILLMENT_SIGNAL_KEY, true)
}

fn address(street: &str) -> Address {
    Address {
        street: street.into(),
        city: "Springfield".into(),
        state: "IL".into(),
        zip_code: "62701".into(),
        country: "USA".into(),
    }
}

fn request(order_id: &str, items: usize) -> FulfillmentRequest {
    FulfillmentRequest {
        order_id: order_id.into(),
        customer_id: "customer-1".into(),
        customer_name: Some("Ada".into()),
        customer_email: Some("ada@example.com".into()),
        items: (1..=items)
            .map(|i| OrderItem {
                product_id: format!("product-{i}"),
                product_name: format!("Product {i}"),
                quantity: 1,
                price: 9.99,
            })
            .collect(),
        shipping_address: address("1 Main St"),
    }
}

fn start(order_id: &str, items: usize) -> Message {
    Message::StartFulfillment(StartFulfillment {
        request: request(order_id, items),
    })
}

fn unique_order() -> String {
    format!("ORD-{}", Uuid::new_v4().simple())
}

/// Completed steps are numbered 1..=n without gaps or repeats.
fn assert_steps_contiguous(p: &FulfillmentProgressView) {
    let numbers: Vec<u32> = p.completed_steps.iter().map(|s| s.step).collect();
    let expected: Vec<u32> = (1..=numbers.len() as u32).collect();
    assert_eq!(
        numbers, expected,
        "completed steps of {}",
        p.fulfillment_workflow_id
    );
}

#[tokio::test]
async fn happy_path_over_the_bus_ships_and_publishes_every_transition() -> Result<()> {
    let mut h = Harness::start("ful-happy", 20).await?;
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    h.signal(&id, start(&order, 2)).await?;

    let shipped = eventually("SHIPPED via a status query", DEADLINE, || async {
        match h
            .query(&id, Message::GetFulfillmentStatus(GetFulfillmentStatus {}))
            .await?
        {
            Message::FulfillmentStatusReply(v) => {
                Ok((v.status == FulfillmentStatus::Shipped).then_some(v))
            }
            other => bail!("unexpected reply {other:?}"),
        }
    })
    .await?;
    assert_eq!(shipped.order_id, order);
    assert!(
        shipped
            .tracking_number
            .as_deref()
            .is_some_and(|t| t.starts_with("TRK-")),
        "{shipped:?}"
    );
    assert!(shipped.shipping_carrier.is_some());
    assert!(shipped.estimated_delivery.is_some());

    let Message::FulfillmentProgressReply(progress) = h
        .query(
            &id,
            Message::GetFulfillmentProgress(GetFulfillmentProgress {}),
        )
        .await?
    else {
        bail!("expected a progress reply");
    };
    assert_eq!(
        (
            progress.percentage,
            progress.current_step,
            progress.total_steps
        ),
        (100, 6, 6)
    );
    assert_eq!((progress.items_picked, progress.total_items), (2, 2));
    assert_steps_contiguous(&progress);

    // Created, two items, quality check, packed, label, shipped.
    let events = eventually("seven events", DEADLINE, || async {
        let e = h.events_for(&id);
        Ok((e.len() >= 7).then_some(e))
    })
    .await?;
    use FulfillmentStatus as S;
    let statuses: Vec<S> = events.iter().map(|(_, e)| e.fulfillment.status).collect();
    assert_eq!(
        statuses,
        [
            S::Picking,
            S::Picking,
            S::Picking,
            S::Packing,
            S::ReadyToShip,
            S::ReadyToShip,
            S::Shipped
        ]
    );
    let percentages: Vec<u32> = events.iter().map(|(_, e)| e.progress.percentage).collect();
    assert_eq!(percentages, [0, 17, 33, 50, 67, 83, 100]);
    let picked: Vec<u32> = events
        .iter()
        .map(|(_, e)| e.progress.items_picked)
        .collect();
    assert_eq!(picked, [0, 1, 2, 2, 2, 2, 2]);
    assert_eq!(events[0].1.previous_status, None);
    for (seq, (message_id, _)) in events.iter().enumerate() {
        assert_eq!(
            *message_id,
            ids::effect_message_id(&id, &format!("status:{}", seq + 1)),
            "event ids are deterministic"
        );
    }

    // SIGTERM: a clean exit.
    let status = h.service().terminate(Duration::from_secs(10)).await?;
    assert!(status.success(), "exit status {status:?}");
    Ok(())
}

#[tokio::test]
async fn pause_freezes_progress_and_resume_continues_from_the_same_step() -> Result<()> {
    let h = Harness::start("ful-pause", 150).await?;
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    let (code, _) = h
        .fulfillment()
        .create(&serde_json::to_value(request(&order, 3))?)
        .await?
        .parts();
    assert_eq!(code, 201);
    h.wait_for(&id, "one item picked", |p| p.items_picked >= 1)
        .await?;

    let reply = h
        .signal_reply(&id, Message::PauseFulfillment(PauseFulfillment {}))
        .await?;
    assert!(reply.accepted, "{reply:?}");
    assert_eq!(reply.status, Some(FulfillmentStatus::Paused));
    let status = h.status(&id).await?;
    assert!(status.is_paused);

    // Four step durations without any movement.
    let frozen = h.assert_frozen(&id, Duration::from_millis(600)).await?;
    assert_eq!(frozen.status, FulfillmentStatus::Paused);

    // Pausing again is a no-op success.
    let again = h
        .signal_reply(&id, Message::PauseFulfillment(PauseFulfillment {}))
        .await?;
    assert!(again.accepted);
    assert_eq!(again.status, Some(FulfillmentStatus::Paused));

    let (code, body) = h.fulfillment().resume(&id).await?.parts();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["isPaused"], false);
    assert_ne!(body["status"], "PAUSED");
    let after = h.progress(&id).await?;
    assert!(
        after.completed_steps.len() >= frozen.completed_steps.len(),
        "nothing lost on resume"
    );

    let done = h.wait_status(&id, FulfillmentStatus::Shipped).await?;
    assert_eq!(done.completed_steps.len(), 7, "no step skipped or repeated");
    assert_steps_contiguous(&done);
    Ok(())
}

#[tokio::test]
async fn cancel_mid_picking_stops_the_fulfillment() -> Result<()> {
    let h = Harness::start("ful-cancel", 200).await?;
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    h.signal(&id, start(&order, 3)).await?;
    h.wait_for(&id, "one item picked", |p| p.items_picked >= 1)
        .await?;

    h.signal(
        &id,
        Message::CancelFulfillment(CancelFulfillment {
            reason: "customer changed their mind".into(),
        }),
    )
    .await?;
    let cancelled = h.wait_status(&id, FulfillmentStatus::Cancelled).await?;
    assert!(cancelled.items_picked < 3, "cancelled while picking");
    let status = h.status(&id).await?;
    assert_eq!(
        status.cancellation_reason.as_deref(),
        Some("customer changed their mind")
    );
    let frozen = h.assert_frozen(&id, Duration::from_millis(600)).await?;
    assert_eq!(frozen.items_picked, cancelled.items_picked);

    let (code, body) = h.fulfillment().resume(&id).await?.parts();
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"], "conflict");
    let last = eventually("the CANCELLED event", DEADLINE, || async {
        Ok(h.events_for(&id)
            .last()
            .filter(|(_, e)| e.fulfillment.status == FulfillmentStatus::Cancelled)
            .cloned())
    })
    .await?;
    assert_eq!(last.1.previous_status, Some(FulfillmentStatus::Picking));
    Ok(())
}

#[tokio::test]
async fn address_changes_are_accepted_before_the_label_and_rejected_after() -> Result<()> {
    let h = Harness::start("ful-address", 150).await?;
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    h.signal(&id, start(&order, 1)).await?;

    let reply = h
        .signal_reply(
            &id,
            Message::UpdateShippingAddress(UpdateShippingAddress {
                address: address("2 New Street"),
            }),
        )
        .await?;
    assert!(reply.accepted, "{reply:?}");
    assert_eq!(
        h.status(&id).await?.shipping_address,
        Some(address("2 New Street"))
    );

    eventually("the label to be printed", DEADLINE, || async {
        Ok(h.status(&id).await?.tracking_number)
    })
    .await?;
    let reply = h
        .signal_reply(
            &id,
            Message::UpdateShippingAddress(UpdateShippingAddress {
                address: address("3 Too Late Road"),
            }),
        )
        .await?;
    assert!(!reply.accepted);
    let error = reply.error.context("a rejection says why")?;
    assert_eq!(error.code, ReplyErrorCode::Conflict);
    assert!(error.message.contains("label"), "{}", error.message);

    // Over HTTP too, and an invalid address is a 400.
    let (code, body) = h
        .fulfillment()
        .shipping_address(&id, &serde_json::to_value(address("4 Road"))?)
        .await?
        .parts();
    assert_eq!(code, 409, "{body}");
    let (code, body) = h
        .fulfillment()
        .shipping_address(&id, &serde_json::to_value(address(" "))?)
        .await?
        .parts();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("street"),
        "{body}"
    );

    let done = h.wait_status(&id, FulfillmentStatus::Shipped).await?;
    assert_eq!(done.status, FulfillmentStatus::Shipped);
    assert_eq!(
        h.status(&id).await?.shipping_address,
        Some(address("2 New Street"))
    );
    Ok(())
}

#[tokio::test]
async fn a_repeated_message_id_changes_nothing() -> Result<()> {
    let h = Harness::start("ful-dupes", 100).await?;
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    // The same start twice, and a second start with a new id: one fulfillment.
    let start_id = Uuid::new_v4();
    h.signal_with_id(&id, start_id, start(&order, 3)).await?;
    h.signal_with_id(&id, start_id, start(&order, 3)).await?;
    h.signal(&id, start(&order, 3)).await?;

    let pause_id = Uuid::new_v4();
    h.signal_with_id(
        &id,
        pause_id,
        Message::PauseFulfillment(PauseFulfillment {}),
    )
    .await?;
    h.wait_status(&id, FulfillmentStatus::Paused).await?;
    let reply = h
        .signal_reply(&id, Message::ResumeFulfillment(ResumeFulfillment {}))
        .await?;
    assert!(reply.accepted);
    // The first pause again (a redelivery): recognised, not applied.
    h.signal_with_id(
        &id,
        pause_id,
        Message::PauseFulfillment(PauseFulfillment {}),
    )
    .await?;

    let done = h.wait_status(&id, FulfillmentStatus::Shipped).await?;
    assert_steps_contiguous(&done);
    let events = eventually("the SHIPPED event", DEADLINE, || async {
        let e = h.events_for(&id);
        Ok(e.last()
            .is_some_and(|(_, e)| e.fulfillment.status == FulfillmentStatus::Shipped)
            .then_some(e))
    })
    .await?;
    let created = events
        .iter()
        .filter(|(_, e)| e.previous_status.is_none())
        .count();
    let paused = events
        .iter()
        .filter(|(_, e)| e.fulfillment.status == FulfillmentStatus::Paused)
        .count();
    assert_eq!(created, 1, "created once");
    assert_eq!(paused, 1, "paused once");
    // created + 7 steps + pause + resume
    assert_eq!(events.len(), 10);
    assert_eq!(h.raw_event_count(&id), 10, "no event published twice");
    Ok(())
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_the_service_keeps_working() -> Result<()> {
    let h = Harness::start("ful-poison", 10).await?;
    let connection = lapin::Connection::connect(&h.system.amqp_url, Default::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_publish(
            FULFILLMENT_SIGNALS_EXCHANGE.into(),
            FULFILLMENT_SIGNAL_KEY.into(),
            BasicPublishOptions::default(),
            b"\xff\x00 garbage",
            BasicProperties::default(),
        )
        .await?;
    h.signal(
        "fulfillment-nobody",
        Message::PauseFulfillment(PauseFulfillment {}),
    )
    .await?;
    // An event does not belong on the signal queue.
    h.signal(
        "fulfillment-nobody",
        Message::QueryFailed(ReplyError::not_found("x")),
    )
    .await?;

    let dlq = dead_letter_queue(FULFILLMENT_SIGNALS_QUEUE);
    let messages = eventually("three dead letters", DEADLINE, || async {
        let messages = h.vhost().peek(&dlq, 10).await?;
        Ok((messages.len() == 3).then_some(messages))
    })
    .await?;
    let reasons: Vec<String> = messages
        .iter()
        .map(|m| {
            m["properties"]["headers"]["x-dead-letter-reason"]
                .as_str()
                .unwrap_or_default()
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
            .any(|r| r == "no fulfillment fulfillment-nobody"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("QueryFailed is not a fulfillment signal")),
        "{reasons:?}"
    );
    let _ = connection.close(200, "done".into()).await;

    // A query nobody waits for has no one to answer: dead-lettered too.
    let query = Envelope::new(
        "fulfillment-nobody",
        Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
    );
    h.bus
        .publish(
            &Route::new(FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY, true),
            &query,
        )
        .await?;
    let dead_queries = eventually("a dead-lettered query", DEADLINE, || async {
        let messages = h
            .vhost()
            .peek(&dead_letter_queue(FULFILLMENT_QUERIES_QUEUE), 10)
            .await?;
        Ok((messages.len() == 1).then_some(messages))
    })
    .await?;
    let reason = dead_queries[0]["properties"]["headers"]["x-dead-letter-reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("without reply_to"), "{reason}");

    // Still working.
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    h.signal(&id, start(&order, 1)).await?;
    h.wait_status(&id, FulfillmentStatus::Shipped).await?;
    Ok(())
}

#[tokio::test]
async fn unknown_ids_answer_not_found_over_the_bus() -> Result<()> {
    let h = Harness::start("ful-unknown", 10).await?;
    let reply = h
        .query(
            "fulfillment-missing",
            Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
        )
        .await?;
    let Message::QueryFailed(error) = reply else {
        bail!("expected QueryFailed, got {reply:?}");
    };
    assert_eq!(error.code, ReplyErrorCode::NotFound);
    let reply = h
        .query(
            "fulfillment-missing",
            Message::GetFulfillmentProgress(GetFulfillmentProgress {}),
        )
        .await?;
    assert!(matches!(
        reply,
        Message::QueryFailed(ReplyError {
            code: ReplyErrorCode::NotFound,
            ..
        })
    ));

    let reply = h
        .signal_reply(
            "fulfillment-missing",
            Message::ResumeFulfillment(ResumeFulfillment {}),
        )
        .await?;
    assert!(!reply.accepted);
    assert_eq!(reply.error.map(|e| e.code), Some(ReplyErrorCode::NotFound));
    // A signal with reply-to is answered, not dead-lettered. One without
    // reply-to, sent after it, is: once that one is in the dead-letter
    // queue, it is the only one there.
    h.signal(
        "fulfillment-marker",
        Message::ResumeFulfillment(ResumeFulfillment {}),
    )
    .await?;
    let dlq = dead_letter_queue(FULFILLMENT_SIGNALS_QUEUE);
    let dead = eventually(
        "the signal without reply-to dead-lettered",
        DEADLINE,
        || async {
            let messages = h.vhost().peek(&dlq, 10).await?;
            Ok((!messages.is_empty()).then_some(messages))
        },
    )
    .await?;
    let reasons: Vec<&str> = dead
        .iter()
        .map(|m| {
            m["properties"]["headers"]["x-dead-letter-reason"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        reasons,
        ["no fulfillment fulfillment-marker"],
        "only the signal without reply-to is dead-lettered"
    );
    // The management API agrees once its statistics catch up.
    h.vhost().wait_message_count(&dlq, 1, DEADLINE).await?;

    // A workflow created to wait answers its status, and starts on StartFulfillment.
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    let reply = h
        .signal_reply(
            &id,
            Message::StartFulfillmentWorkflow(StartFulfillmentWorkflow {
                order_id: order.clone(),
            }),
        )
        .await?;
    assert_eq!(reply.status, Some(FulfillmentStatus::Waiting));
    let reply = h
        .signal_reply(&id, Message::PauseFulfillment(PauseFulfillment {}))
        .await?;
    assert_eq!(reply.error.map(|e| e.code), Some(ReplyErrorCode::Conflict));
    h.signal(&id, start(&order, 1)).await?;
    h.wait_status(&id, FulfillmentStatus::Shipped).await?;
    Ok(())
}

#[tokio::test]
async fn http_answers_each_bad_input_with_a_json_error() -> Result<()> {
    let h = Harness::start("ful-http", 0).await?;
    let http = Http::new();
    let create = h.fulfillment().url("/fulfillments");
    let json_type = "application/json";

    let (code, body) = http
        .send_raw(
            reqwest::Method::POST,
            &create,
            json_type,
            b"{\"orderId\": ".to_vec(),
        )
        .await?;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("invalid_body")),
        "{body}"
    );

    let (code, body) = h
        .fulfillment()
        .create(&json!({"orderId": "ORD-x"}))
        .await?
        .parts();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("customerId"),
        "{body}"
    );

    let mut empty = serde_json::to_value(request("ORD-empty", 1))?;
    empty["items"] = json!([]);
    let (code, body) = h.fulfillment().create(&empty).await?.parts();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("items"),
        "{body}"
    );

    // Past the one body limit of both services (256 KiB).
    let big = vec![b' '; 1024 * 1024];
    let (code, body) = http
        .send_raw(reqwest::Method::POST, &create, json_type, big)
        .await?;
    assert_eq!(
        (code, body["error"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );

    let (code, body) = h.fulfillment().list("status=LOST").await?.parts();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("LOST"),
        "{body}"
    );

    for path in ["status", "progress"] {
        let (code, body) = h
            .fulfillment()
            .get(&format!("/fulfillments/fulfillment-nope/{path}"))
            .await?
            .parts();
        assert_eq!(
            (code, body["error"].as_str()),
            (404, Some("not_found")),
            "{body}"
        );
    }
    let (code, body) = h.fulfillment().pause("fulfillment-nope").await?.parts();
    assert_eq!(code, 404, "{body}");

    // A real one; with no step delay it ships at once.
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    let body = serde_json::to_value(request(&order, 2))?;
    let (code, created) = h.fulfillment().create(&body).await?.parts();
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["fulfillmentWorkflowId"], id.as_str());
    let (code, _) = h.fulfillment().create(&body).await?.parts();
    assert_eq!(code, 200, "the same order again is idempotent");
    h.wait_status(&id, FulfillmentStatus::Shipped).await?;

    let (code, body) = h.fulfillment().pause(&id).await?.parts();
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("shipped"),
        "{body}"
    );
    let (code, body) = h.fulfillment().cancel(&id, "late").await?.parts();
    assert_eq!(code, 409, "{body}");
    let (code, body) = http
        .send_raw(
            reqwest::Method::POST,
            &h.fulfillment().url(&format!("/fulfillments/{id}/cancel")),
            json_type,
            b"not json".to_vec(),
        )
        .await?;
    assert_eq!(code, 400, "{body}");

    let (code, list) = h
        .fulfillment()
        .list("status=SHIPPED&limit=10")
        .await?
        .parts();
    assert_eq!(code, 200);
    assert_eq!(
        list["fulfillments"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    let (code, body) = h.fulfillment().healthz().await?.parts();
    assert_eq!((code, body), (200, json!({"status": "ok"})));
    Ok(())
}

#[tokio::test]
async fn after_kill_9_fulfillments_continue_where_they_stopped() -> Result<()> {
    let mut h = Harness::start("ful-recover", 300).await?;
    let running = ids::fulfillment_workflow_id(&unique_order());
    let paused = ids::fulfillment_workflow_id(&unique_order());
    for id in [&running, &paused] {
        let order = ids::order_id_from_fulfillment_id(id).context("an order id")?;
        let (code, body) = h
            .fulfillment()
            .create(&serde_json::to_value(request(order, 3))?)
            .await?
            .parts();
        assert_eq!(code, 201, "{body}");
    }
    let (code, _) = h.fulfillment().pause(&paused).await?.parts();
    assert_eq!(code, 200);
    let before = h
        .wait_for(&running, "one item picked", |p| p.items_picked >= 1)
        .await?;
    let paused_before = h.progress(&paused).await?;

    h.service().kill().await?;
    h.service().restart().await?;
    h.service().wait_ready().await?;

    let after = h.progress(&running).await?;
    assert_ne!(
        after.status,
        FulfillmentStatus::Waiting,
        "never back to the start"
    );
    assert!(
        after.items_picked >= before.items_picked,
        "{after:?} vs {before:?}"
    );
    let done = h.wait_status(&running, FulfillmentStatus::Shipped).await?;
    assert_eq!(done.completed_steps.len(), 7);
    assert_steps_contiguous(&done);
    let shipped_events = h
        .events_for(&running)
        .iter()
        .filter(|(_, e)| e.fulfillment.status == FulfillmentStatus::Shipped)
        .count();
    assert!(shipped_events <= 1, "shipped once");

    let still = h.assert_frozen(&paused, Duration::from_millis(700)).await?;
    assert_eq!(still.status, FulfillmentStatus::Paused);
    assert_eq!(
        still.completed_steps.len(),
        paused_before.completed_steps.len()
    );
    let (code, _) = h.fulfillment().resume(&paused).await?.parts();
    assert_eq!(code, 200);
    h.wait_status(&paused, FulfillmentStatus::Shipped).await?;
    Ok(())
}

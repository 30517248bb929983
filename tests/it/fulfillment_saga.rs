//! fulfillment-service's side of the order saga, against the real broker
//! and binary: a cancel that overtakes its start, a cancel after shipping,
//! history written once per signal, rows that cannot be read, and signals
//! whose envelope and payload disagree.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::FutureExt;
use message_bus::{Bus, BusConfig, Incoming, Outcome, Route};
use serde_json::{json, Value};
use shared_messages::messages::*;
use shared_messages::topology::{self, *};
use shared_messages::{ids, Envelope, Message};
use system_tests::*;
use uuid::Uuid;

/// Upper bound for anything that should happen within a few steps.
const DEADLINE: Duration = Duration::from_secs(20);
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// fulfillment-service on its own vhost, and a client bus whose queue,
/// bound to `fulfillment.events` for status events, keeps every event.
/// Fields drop in order: the client bus closes before the vhost goes.
struct Saga {
    bus: Bus,
    events: Arc<Mutex<Vec<Envelope>>>,
    system: TestSystem,
}

impl Saga {
    async fn start(label: &str, env: &[(&str, &str)]) -> Result<Self> {
        let mut system = TestSystem::builder(label).start().await?;
        let bus = Bus::new(BusConfig::new(
            system.amqp_url.clone(),
            "fulfillment-saga-test",
            topology::order_service(),
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
        system.start_fulfillment(env).await?.wait_ready().await?;
        Ok(Self {
            bus,
            events,
            system,
        })
    }

    fn fulfillment(&self) -> FulfillmentApi {
        self.system.fulfillment()
    }

    fn service(&mut self) -> &mut Service {
        self.system.fulfillment_service_mut()
    }

    async fn publish(&self, id: &str, message_id: Uuid, message: Message) -> Result<()> {
        let envelope = Envelope::with_id(message_id, id, message);
        Ok(self.bus.publish(&signal_route(), &envelope).await?)
    }

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

    async fn get(&self, path: &str) -> Result<(u16, Value)> {
        Ok(self.fulfillment().get(path).await?.parts())
    }

    async fn progress(&self, id: &str) -> Result<Option<FulfillmentProgressView>> {
        self.fulfillment()
            .progress_of(id)
            .await
            .with_context(|| format!("progress of {id}"))
    }

    async fn wait_status(
        &self,
        id: &str,
        status: FulfillmentStatus,
    ) -> Result<FulfillmentProgressView> {
        eventually(&format!("{id} {status}"), DEADLINE, || async {
            Ok(self.progress(id).await?.filter(|p| p.status == status))
        })
        .await
    }

    /// The history entries' types, oldest first (empty while unknown).
    async fn history(&self, id: &str) -> Result<Vec<Value>> {
        let (code, body) = self.get(&format!("/fulfillments/{id}/history")).await?;
        match code {
            200 => Ok(body["events"].as_array().cloned().unwrap_or_default()),
            404 => Ok(Vec::new()),
            _ => bail!("history of {id}: {code} {body}"),
        }
    }

    async fn wait_history(&self, id: &str, kind: &str, count: usize) -> Result<Vec<Value>> {
        eventually(
            &format!("{count} {kind} in the history of {id}"),
            DEADLINE,
            || async {
                let events = self.history(id).await?;
                Ok((kinds_of(&events, kind) >= count).then_some(events))
            },
        )
        .await
    }

    /// Status events seen for `id` in `status`, every delivery counted.
    fn status_events(&self, id: &str, status: FulfillmentStatus) -> Vec<FulfillmentStatusView> {
        self.events
            .lock()
            .expect("events lock")
            .iter()
            .filter(|e| e.entity_id == id)
            .filter_map(|e| match &e.message {
                Message::FulfillmentStatusChanged(c) if c.fulfillment.status == status => {
                    Some(c.fulfillment.clone())
                }
                _ => None,
            })
            .collect()
    }

    async fn dead_letters(&self) -> Result<Vec<Value>> {
        self.system
            .vhost()
            .peek(&dead_letter_queue(FULFILLMENT_SIGNALS_QUEUE), 20)
            .await
    }
}

fn kinds_of(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["type"] == kind).count()
}

fn signal_route() -> Route {
    Route::new(FULFILLMENT_SIGNALS_EXCHANGE, FULFILLMENT_SIGNAL_KEY, true)
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
        shipping_address: Address {
            street: "1 Main St".into(),
            city: "Springfield".into(),
            state: "IL".into(),
            zip_code: "62701".into(),
            country: "USA".into(),
        },
    }
}

fn start(order_id: &str, items: usize) -> Message {
    Message::StartFulfillment(StartFulfillment {
        request: request(order_id, items),
    })
}

fn cancel(reason: &str) -> Message {
    Message::CancelFulfillment(CancelFulfillment {
        reason: reason.into(),
    })
}

fn unique_order() -> String {
    format!("ORD-{}", Uuid::new_v4().simple())
}

#[tokio::test]
async fn a_cancel_that_overtakes_its_start_wins() -> Result<()> {
    let saga = Saga::start("saga-tombstone", &[("STEP_DELAY_MS", "10")]).await?;
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    let cancel_id = Uuid::new_v4();
    saga.publish(&id, cancel_id, cancel("customer changed their mind"))
        .await?;
    let recorded = saga.wait_history(&id, "CancelFulfillment", 1).await?;
    assert_eq!(recorded[0]["messageId"], json!(cancel_id.to_string()));
    assert!(
        saga.progress(&id).await?.is_none(),
        "no fulfillment before its start"
    );

    saga.publish(&id, Uuid::new_v4(), start(&order, 3)).await?;
    let p = saga.wait_status(&id, FulfillmentStatus::Cancelled).await?;
    assert_eq!(p.items_picked, 0, "nothing picked");
    assert!(p.completed_steps.is_empty(), "{:?}", p.completed_steps);
    let cancelled = eventually("a CANCELLED status event", DEADLINE, || async {
        Ok(saga
            .status_events(&id, FulfillmentStatus::Cancelled)
            .first()
            .cloned())
    })
    .await?;
    assert_eq!(
        cancelled.cancellation_reason.as_deref(),
        Some("customer changed their mind")
    );
    assert!(
        saga.status_events(&id, FulfillmentStatus::Picking)
            .is_empty(),
        "it never started picking"
    );
    let history = saga.history(&id).await?;
    let kinds: Vec<&str> = history.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "CancelFulfillment",
            "StartFulfillment",
            "FulfillmentCreated",
            "TombstoneApplied",
            "StatusChanged"
        ]
    );

    // The start again (as a resend after NOT_FOUND would be): still cancelled.
    saga.publish(&id, Uuid::new_v4(), start(&order, 3)).await?;
    let again = saga
        .signal_reply(&id, Message::ResumeFulfillment(ResumeFulfillment {}))
        .await?;
    assert_eq!(again.status, Some(FulfillmentStatus::Cancelled));
    assert!(saga.dead_letters().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_cancel_after_shipping_is_answered_recorded_and_the_shipped_event_sent_again(
) -> Result<()> {
    let saga = Saga::start("saga-shipped", &[("STEP_DELAY_MS", "0")]).await?;
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    saga.publish(&id, Uuid::new_v4(), start(&order, 1)).await?;
    saga.wait_status(&id, FulfillmentStatus::Shipped).await?;
    eventually("the SHIPPED event", DEADLINE, || async {
        Ok((!saga
            .status_events(&id, FulfillmentStatus::Shipped)
            .is_empty())
        .then_some(()))
    })
    .await?;
    let before = saga.status_events(&id, FulfillmentStatus::Shipped).len();

    let reply = saga.signal_reply(&id, cancel("too late")).await?;
    assert!(!reply.accepted, "{reply:?}");
    assert_eq!(reply.status, Some(FulfillmentStatus::Shipped));
    let error = reply.error.expect("why");
    assert_eq!(error.code, ReplyErrorCode::Conflict);
    assert!(error.message.contains("shipped"), "{}", error.message);
    eventually("the SHIPPED event again", DEADLINE, || async {
        Ok((saga.status_events(&id, FulfillmentStatus::Shipped).len() > before).then_some(()))
    })
    .await?;
    let history = saga.wait_history(&id, "CancelRefused", 1).await?;
    let refused = history
        .iter()
        .find(|e| e["type"] == "CancelRefused")
        .expect("recorded");
    assert_eq!(refused["detail"]["requestedReason"], "too late");

    // Without a reply-to: acked, recorded, never dead-lettered.
    let quiet = Uuid::new_v4();
    saga.publish(&id, quiet, cancel("still too late")).await?;
    saga.wait_history(&id, "CancelRefused", 2).await?;
    // Its redelivery (the same message id) records nothing more.
    saga.publish(&id, quiet, cancel("still too late")).await?;
    let marker = saga.signal_reply(&id, cancel("a marker")).await?;
    assert!(!marker.accepted);
    let history = saga.wait_history(&id, "CancelRefused", 3).await?;
    assert_eq!(kinds_of(&history, "CancelRefused"), 3, "{history:?}");
    assert_eq!(
        saga.progress(&id).await?.map(|p| p.status),
        Some(FulfillmentStatus::Shipped)
    );
    assert!(saga.dead_letters().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_fulfillment_cancelled_directly_publishes_cancelled_with_its_reason() -> Result<()> {
    let saga = Saga::start("saga-direct", &[("STEP_DELAY_MS", "60000")]).await?;
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    saga.publish(&id, Uuid::new_v4(), start(&order, 2)).await?;
    saga.wait_status(&id, FulfillmentStatus::Picking).await?;
    let (code, body) = saga
        .fulfillment()
        .cancel(&id, "damaged in the warehouse")
        .await?
        .parts();
    assert_eq!(code, 200, "{body}");
    let event = eventually("a CANCELLED status event", DEADLINE, || async {
        Ok(saga
            .status_events(&id, FulfillmentStatus::Cancelled)
            .first()
            .cloned())
    })
    .await?;
    assert_eq!(
        event.cancellation_reason.as_deref(),
        Some("damaged in the warehouse")
    );
    Ok(())
}

#[tokio::test]
async fn a_redelivered_signal_adds_nothing_to_the_history_even_across_kill_9() -> Result<()> {
    let mut saga = Saga::start("saga-once", &[("STEP_DELAY_MS", "60000")]).await?;
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    let start_id = Uuid::new_v4();
    saga.publish(&id, start_id, start(&order, 2)).await?;
    saga.wait_status(&id, FulfillmentStatus::Picking).await?;
    let pause_id = Uuid::new_v4();
    saga.publish(
        &id,
        pause_id,
        Message::PauseFulfillment(PauseFulfillment {}),
    )
    .await?;
    saga.wait_status(&id, FulfillmentStatus::Paused).await?;
    let before = saga.history(&id).await?;

    // Both again, as a redelivery would bring them, across a kill -9;
    // then a resume, which the queue delivers after them.
    saga.service().kill().await?;
    saga.publish(&id, start_id, start(&order, 2)).await?;
    saga.publish(
        &id,
        pause_id,
        Message::PauseFulfillment(PauseFulfillment {}),
    )
    .await?;
    saga.publish(
        &id,
        Uuid::new_v4(),
        Message::ResumeFulfillment(ResumeFulfillment {}),
    )
    .await?;
    saga.service().restart().await?;
    let after = saga.wait_history(&id, "ResumeFulfillment", 1).await?;
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "what was recorded stays"
    );
    let added: Vec<&str> = after[before.len()..]
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(added, ["ResumeFulfillment", "StatusChanged"], "{after:?}");
    assert_eq!(kinds_of(&after, "StartFulfillment"), 1);
    assert_eq!(kinds_of(&after, "PauseFulfillment"), 1);
    let seqs: Vec<u64> = after.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let expected: Vec<u64> = (1..=after.len() as u64).collect();
    assert_eq!(seqs, expected, "numbered without gaps");
    Ok(())
}

#[tokio::test]
async fn each_step_is_in_the_history_once_across_kill_9() -> Result<()> {
    let mut saga = Saga::start("saga-steps", &[("STEP_DELAY_MS", "40")]).await?;
    let orders: Vec<String> = (0..4).map(|_| unique_order()).collect();
    for order in &orders {
        let id = ids::fulfillment_workflow_id(order);
        saga.publish(&id, Uuid::new_v4(), start(order, 4)).await?;
    }
    let first = ids::fulfillment_workflow_id(&orders[0]);
    eventually("two items picked", DEADLINE, || async {
        Ok(saga.progress(&first).await?.filter(|p| p.items_picked >= 2))
    })
    .await?;
    // In the middle of steps, with writes in flight.
    saga.service().kill().await?;
    saga.service().restart().await?;
    for order in &orders {
        let id = ids::fulfillment_workflow_id(order);
        saga.wait_status(&id, FulfillmentStatus::Shipped).await?;
        let history = saga.history(&id).await?;
        let steps: Vec<u64> = history
            .iter()
            .filter(|e| e["type"] == "StepCompleted")
            .filter_map(|e| e["detail"]["step"].as_u64())
            .collect();
        assert_eq!(steps, (1..=8).collect::<Vec<u64>>(), "{id}: {history:?}");
        assert_eq!(kinds_of(&history, "FulfillmentCreated"), 1, "{id}");
        let to: Vec<&str> = history
            .iter()
            .filter(|e| e["type"] == "StatusChanged")
            .filter_map(|e| e["detail"]["to"].as_str())
            .collect();
        assert_eq!(
            to,
            ["PICKING", "PACKING", "READY_TO_SHIP", "SHIPPED"],
            "{id}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_unreadable_row_is_quarantined_and_the_others_recover() -> Result<()> {
    let db = TestDatabase::create("saga_quarantine")?;
    let env = [("STEP_DELAY_MS", "200"), ("STORE_URL", db.url.as_str())];
    let mut saga = Saga::start("saga-quarantine", &env).await?;
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    saga.publish(&id, Uuid::new_v4(), start(&order, 10)).await?;
    saga.wait_status(&id, FulfillmentStatus::Picking).await?;
    saga.service().kill().await?;
    // A row an older or newer version might have written: not a fulfillment.
    db.execute(
        "INSERT INTO fulfillments (id, order_id, status, finished, state, created_at, updated_at)
         VALUES ('fulfillment-BROKEN', 'BROKEN', 'PICKING', false, '{\"id\": 42}', now(), now())",
    )?;
    saga.service().restart().await?;
    saga.service().wait_ready().await?;

    // On PostgreSQL the rows are recovered as the replica takes its
    // partitions, which may be after it is ready: read until it lists one.
    let body = eventually("the unreadable row quarantined", DEADLINE, || async {
        let (code, body) = saga.fulfillment().quarantine().await?.parts();
        if code != 200 {
            bail!("GET /quarantine answered {code}: {body}");
        }
        let listed = body["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty());
        Ok(listed.then_some(body))
    })
    .await?;
    let items = body["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["entityId"], "fulfillment-BROKEN");
    assert!(
        items[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    assert!(items[0]["quarantinedAt"].is_string(), "{body}");
    let metrics = reqwest::get(saga.fulfillment().url("/metrics"))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("fulfillment_service_quarantined_rows_total 1"),
        "{metrics}"
    );
    // The readable one carries on to the end.
    eventually(
        "the recovered fulfillment to ship",
        Duration::from_secs(60),
        || async {
            Ok(saga
                .progress(&id)
                .await?
                .filter(|p| p.status == FulfillmentStatus::Shipped))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_undecodable_outbox_row_is_quarantined_and_the_others_go_out() -> Result<()> {
    let db = TestDatabase::create("saga_outbox_quarantine")?;
    let env = [("STEP_DELAY_MS", "10"), ("STORE_URL", db.url.as_str())];
    let saga = Saga::start("saga-outbox-quarantine", &env).await?;
    // A row no version of the service can decode, ahead of every other.
    db.execute(
        "INSERT INTO outbox (exchange, routing_key, mandatory, envelope)
         VALUES ('fulfillment.events', 'fulfillment.status.picking', false,
                 convert_to('not json', 'UTF8'))",
    )?;
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    saga.publish(&id, Uuid::new_v4(), start(&order, 2)).await?;
    eventually(
        "every status event of the fulfillment to go out",
        DEADLINE,
        || async {
            Ok((!saga
                .status_events(&id, FulfillmentStatus::Shipped)
                .is_empty())
            .then_some(()))
        },
    )
    .await?;
    for status in [
        FulfillmentStatus::Picking,
        FulfillmentStatus::Packing,
        FulfillmentStatus::ReadyToShip,
    ] {
        assert!(
            !saga.status_events(&id, status).is_empty(),
            "{id}: no {status} event"
        );
    }

    let items = eventually("the bad row listed on /quarantine", DEADLINE, || async {
        let (code, body) = saga.fulfillment().quarantine().await?.parts();
        anyhow::ensure!(code == 200, "/quarantine: {code} {body}");
        let items = body["items"].as_array().cloned().unwrap_or_default();
        Ok((!items.is_empty()).then_some(items))
    })
    .await?;
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        items[0]["entityId"]
            .as_str()
            .is_some_and(|e| e.starts_with("outbox row ")),
        "{items:?}"
    );
    assert!(
        items[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not json")),
        "the stored body is kept with the reason: {items:?}"
    );
    let metrics = reqwest::get(saga.fulfillment().url("/metrics"))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("fulfillment_service_outbox_rows_quarantined_total 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_signal_whose_envelope_and_payload_disagree_is_dead_lettered() -> Result<()> {
    let saga = Saga::start("saga-mismatch", &[("STEP_DELAY_MS", "10")]).await?;
    let victim = unique_order();
    let victim_id = ids::fulfillment_workflow_id(&victim);
    // The envelope names one order's fulfillment, the payload another order.
    saga.publish(&victim_id, Uuid::new_v4(), start(&unique_order(), 1))
        .await?;
    let dead = eventually("a dead letter", DEADLINE, || async {
        let messages = saga.dead_letters().await?;
        Ok((!messages.is_empty()).then_some(messages))
    })
    .await?;
    let reason = dead[0]["properties"]["headers"]["x-dead-letter-reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("does not match") && reason.contains(&victim_id),
        "{reason}"
    );
    assert!(
        saga.progress(&victim_id).await?.is_none(),
        "nothing created"
    );
    // The real start still works.
    saga.publish(&victim_id, Uuid::new_v4(), start(&victim, 1))
        .await?;
    saga.wait_status(&victim_id, FulfillmentStatus::Shipped)
        .await?;
    Ok(())
}

/// The page's history timeline, rendered by headless Chromium (installed
/// by scripts/test.sh) for a fulfillment opened by the URL's fragment.
#[tokio::test]
async fn the_page_shows_an_opened_fulfillments_history_as_a_timeline() -> Result<()> {
    let saga = Saga::start("saga-page", &[("STEP_DELAY_MS", "0")]).await?;
    let order = unique_order();
    let id = ids::fulfillment_workflow_id(&order);
    saga.publish(&id, Uuid::new_v4(), start(&order, 1)).await?;
    saga.wait_status(&id, FulfillmentStatus::Shipped).await?;
    let url = format!("{}#{id}", saga.fulfillment().url("/"));
    let profile = tempfile::tempdir()?;
    let out = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "running chromium ({e}): install Debian's chromium package (./scripts/test.sh does)"
            )
        })?;
    anyhow::ensure!(out.status.success(), "chromium --dump-dom: {out:?}");
    let dom = String::from_utf8(out.stdout)?;
    let timeline = dom
        .split("<section id=\"history\"")
        .nth(1)
        .and_then(|rest| rest.split("</section>").next())
        .unwrap_or_default();
    assert!(timeline.contains(&format!("History of {id}")), "{dom}");
    let shown: Vec<&str> = timeline
        .split("<span class=\"t\">")
        .skip(1)
        .filter_map(|s| s.split('<').next())
        .collect();
    let stored: Vec<String> = saga
        .history(&id)
        .await?
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(shown, stored, "every entry, in order");
    Ok(())
}

#[tokio::test]
async fn made_up_http_methods_share_one_metric_label_value() -> Result<()> {
    let saga = Saga::start("saga-methods", &[]).await?;
    let client = reqwest::Client::new();
    for method in ["FROBNICATE", "X-ONE", "X-TWO"] {
        let response = client
            .request(
                reqwest::Method::from_bytes(method.as_bytes())?,
                saga.fulfillment().url("/fulfillments"),
            )
            .send()
            .await?;
        assert!(response.status().is_client_error(), "{method}");
    }
    let metrics = reqwest::get(saga.fulfillment().url("/metrics"))
        .await?
        .text()
        .await?;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("fulfillment_service_http_request_seconds_count"))
        .collect();
    assert!(
        series.iter().any(|l| l.contains("method=\"other\"")),
        "{series:?}"
    );
    for made_up in ["FROBNICATE", "X-ONE", "X-TWO"] {
        assert!(!metrics.contains(made_up), "{made_up} became a label value");
    }
    Ok(())
}

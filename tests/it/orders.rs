//! order-service end to end: both binaries as processes on one vhost,
//! driven over HTTP as the original demo's README does.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use system_tests::{eventually, Http, TestSystem};

/// Long enough for a slow CI machine; every wait ends as soon as it holds.
const DEADLINE: Duration = Duration::from_secs(15);

/// Order steps in tens of milliseconds; quick reconciliation polls.
const ORDER_ENV: &[(&str, &str)] = &[
    ("INVENTORY_DELAY_MS", "20"),
    ("PAYMENT_DELAY_MS", "20"),
    ("POLL_INTERVAL_MS", "200"),
    ("QUERY_TIMEOUT_MS", "1000"),
];

/// order-service with `extra` on top of [`ORDER_ENV`], and
/// fulfillment-service with `STEP_DELAY_MS = step_delay_ms` unless `None`.
async fn start(
    label: &str,
    extra: &[(&str, &str)],
    step_delay_ms: Option<u64>,
) -> Result<TestSystem> {
    let mut env: Vec<(&str, &str)> = ORDER_ENV.to_vec();
    env.extend_from_slice(extra);
    let mut system = TestSystem::builder(label).orders(&env).start().await?;
    if let Some(ms) = step_delay_ms {
        start_fulfillment(&mut system, ms).await?;
    }
    Ok(system)
}

async fn start_fulfillment(system: &mut TestSystem, step_delay_ms: u64) -> Result<()> {
    let delay = step_delay_ms.to_string();
    system
        .start_fulfillment(&[
            ("STEP_DELAY_MS", delay.as_str()),
            ("QUERY_TIMEOUT_MS", "1000"),
        ])
        .await?
        .wait_ready()
        .await
}

/// Places the demo order, as the original demo's README does; answers its
/// workflow id.
async fn create_demo(system: &TestSystem) -> Result<String> {
    let created = system.orders().place_demo().await?;
    ensure!(
        created.message == "Order created successfully",
        "{created:?}"
    );
    ensure!(
        created.workflow_id == format!("order-workflow-{}", created.order_id),
        "{created:?}"
    );
    Ok(created.workflow_id)
}

async fn create(system: &TestSystem, order: &Value) -> Result<String> {
    Ok(system.orders().place(order).await?.workflow_id)
}

async fn status(system: &TestSystem, workflow_id: &str) -> Result<Value> {
    system.orders().status(workflow_id).await?.expect(200)
}

async fn wait_status(system: &TestSystem, workflow_id: &str, want: &str) -> Result<Value> {
    system
        .orders()
        .wait_status(workflow_id, want, DEADLINE)
        .await
}

fn order_body(product: &str, payment_method: &str) -> Value {
    json!({
        "customerId": "cust-1",
        "customerEmail": "ann@example.com",
        "customerName": "Ann Example",
        "items": [{"productId": product, "productName": "Thing", "quantity": 1, "price": 12.5}],
        "shippingAddress": {"street": "1 Main St", "city": "Town", "state": "CA", "zipCode": "90210", "country": "USA"},
        "paymentMethod": payment_method
    })
}

#[tokio::test]
async fn original_walkthrough_pause_resume_readdress_and_ship() -> Result<()> {
    let system = start("orders-walkthrough", &[], Some(300)).await?;
    let wf = create_demo(&system).await?;

    let order = wait_status(&system, &wf, "FULFILLMENT_IN_PROGRESS").await?;
    let fid = order["fulfillmentWorkflowId"]
        .as_str()
        .context("fulfillment id")?
        .to_owned();
    assert_eq!(
        fid,
        format!(
            "fulfillment-{}",
            order["orderId"].as_str().unwrap_or_default()
        )
    );
    assert!(
        order["paymentId"]
            .as_str()
            .is_some_and(|p| p.starts_with("PAY-")),
        "{order}"
    );
    assert_eq!(
        order["reservationIds"].as_array().map(Vec::len),
        Some(2),
        "{order}"
    );

    let (code, body) = system.orders().progress(&wf).await?.parts();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["totalSteps"], 6);
    assert_eq!(body["steps"][0]["status"], "completed");
    assert!(body["steps"][0]["completedAt"].is_string(), "{body}");

    // pause: the fulfillment says PAUSED, through RabbitMQ
    let (code, body) = system.orders().pause(&wf).await?.parts();
    assert_eq!(code, 200, "pause: {body}");
    assert_eq!(body["status"], "PAUSED");
    assert_eq!(body["fulfillmentWorkflowId"], fid.as_str());
    let (code, view) = system.orders().fulfillment_status(&fid).await?.parts();
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["status"], "PAUSED");
    assert_eq!(view["isPaused"], true);

    // a new address while paused, before the label is printed
    let address = json!({"street": "456 New Street", "city": "New City", "state": "NC", "zipCode": "54321", "country": "USA"});
    let (code, body) = system
        .orders()
        .fulfillment_address(&fid, &address)
        .await?
        .parts();
    assert_eq!(code, 200, "address: {body}");

    let (code, body) = system.orders().resume(&wf).await?.parts();
    assert_eq!(code, 200, "resume: {body}");
    assert_ne!(body["status"], "PAUSED");

    let (code, progress) = system.orders().fulfillment_progress(&fid).await?.parts();
    assert_eq!(code, 200, "{progress}");
    assert_eq!(progress["totalItems"], 2);

    let shipped = wait_status(&system, &wf, "SHIPPED").await?;
    let tracking = shipped["trackingNumber"]
        .as_str()
        .context("tracking number")?;
    assert!(!tracking.is_empty());
    assert_eq!(shipped["fulfillmentStatus"], "SHIPPED");
    let (_, view) = system.orders().fulfillment_status(&fid).await?.parts();
    assert_eq!(view["trackingNumber"], tracking);
    assert_eq!(view["shippingAddress"]["street"], "456 New Street");

    let (_, body) = system.orders().progress(&wf).await?.parts();
    assert_eq!(body["percentage"], 100, "{body}");
    assert!(
        body["steps"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["status"] == "completed")),
        "{body}"
    );

    // after shipping: pause and cancel are refused
    let (code, _) = system.orders().pause(&wf).await?.parts();
    assert_eq!(code, 409);
    let (code, body) = system.orders().cancel(&wf, None).await?.parts();
    assert_eq!(code, 409, "{body}");

    // an unknown fulfillment answers 404 through the query
    let (code, body) = system
        .orders()
        .fulfillment_status("fulfillment-ORD-0-NOPE")
        .await?
        .parts();
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"], "not_found");

    // listing by status
    let (code, list) = system
        .orders()
        .list("status=SHIPPED&limit=20&offset=0")
        .await?
        .parts();
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["total"], 1);
    assert_eq!(list["orders"][0]["workflowId"], wf.as_str());
    Ok(())
}

#[tokio::test]
async fn order_progress_shows_each_item_picked_between_status_events() -> Result<()> {
    // Items picked are progress events, which order-service does not
    // subscribe to: its progress route asks fulfillment while it runs.
    let system = start("order-live-progress", &[], Some(500)).await?;
    let wf = create_demo(&system).await?;
    let progress = eventually("one of two items picked", DEADLINE, || async {
        let (code, body) = system.orders().progress(&wf).await?.parts();
        ensure!(code == 200, "progress of {wf}: {code} {body}");
        Ok((body["fulfillment"]["itemsPicked"] == 1).then_some(body))
    })
    .await?;
    assert_eq!(progress["fulfillment"]["status"], "PICKING", "{progress}");
    assert_eq!(progress["fulfillment"]["totalItems"], 2, "{progress}");
    // The order itself heard only the status event that started picking.
    let status = status(&system, &wf).await?;
    assert_eq!(status["fulfillmentStatus"], "PICKING", "{status}");
    wait_status(&system, &wf, "SHIPPED").await?;
    let (_, done) = system.orders().progress(&wf).await?.parts();
    assert_eq!(done["fulfillment"]["percentage"], 100, "{done}");
    Ok(())
}

#[tokio::test]
async fn a_status_request_waits_for_the_status_asked_for() -> Result<()> {
    let system = start("order-wait-status", &[], Some(300)).await?;
    let wf = create_demo(&system).await?;
    let orders = system.orders();
    let status = |query: &str| {
        let path = format!("/orders/{wf}/status?{query}");
        let orders = orders.clone();
        async move { Ok::<_, anyhow::Error>(orders.get(&path).await?.parts()) }
    };
    // A wait that runs out answers the order as it is.
    let (code, now) = status("waitFor=SHIPPED&timeoutMs=0").await?;
    assert_eq!(code, 200, "{now}");
    assert_ne!(
        now["status"], "SHIPPED",
        "six 300 ms steps are not over yet"
    );
    // One request that answers when the order ships.
    let (code, shipped) = status("waitFor=shipped&timeoutMs=30000").await?;
    assert_eq!(code, 200, "{shipped}");
    assert_eq!(shipped["status"], "SHIPPED", "{shipped}");
    assert_eq!(shipped["fulfillmentStatus"], "SHIPPED", "{shipped}");
    // A final order answers at once, whatever was asked for.
    let (code, done) = status("waitFor=PENDING&timeoutMs=30000").await?;
    assert_eq!((code, &done["status"]), (200, &json!("SHIPPED")), "{done}");
    for bad in [
        "waitFor=NOPE",
        "waitFor=SHIPPED&timeoutMs=30001",
        "waitFor=SHIPPED&timeoutMs=soon",
        "waitfor=SHIPPED",
    ] {
        let (code, body) = status(bad).await?;
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_parameter", "{bad}: {body}");
    }
    Ok(())
}

#[tokio::test]
async fn cancel_mid_fulfillment_reaches_both_services() -> Result<()> {
    let system = start("orders-cancel", &[], Some(300)).await?;
    let wf = create_demo(&system).await?;
    let order = wait_status(&system, &wf, "FULFILLMENT_IN_PROGRESS").await?;
    let fid = order["fulfillmentWorkflowId"]
        .as_str()
        .context("fulfillment id")?
        .to_owned();

    let (code, body) = system
        .orders()
        .cancel(&wf, Some("Customer requested cancellation"))
        .await?
        .parts();
    // The fulfillment decides: 200 once it has confirmed within
    // QUERY_TIMEOUT_MS, else 202 while the order is CANCELLING.
    match code {
        200 => assert_eq!(body["status"], "CANCELLED", "{body}"),
        202 => assert_eq!(body["status"], "CANCELLING", "{body}"),
        other => panic!("DELETE answered {other}: {body}"),
    }
    let order = wait_status(&system, &wf, "CANCELLED").await?;
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(
        order["cancellationReason"],
        "Customer requested cancellation"
    );
    let (_, progress) = system.orders().progress(&wf).await?.parts();
    let steps: Vec<&str> = progress["steps"]
        .as_array()
        .context("steps")?
        .iter()
        .filter(|s| s["kind"] == "compensation" && s["completedAt"].is_string())
        .filter_map(|s| s["name"].as_str())
        .collect();
    for name in ["Release inventory", "Refund payment", "Cancel fulfillment"] {
        assert!(steps.contains(&name), "{name} in {progress}");
    }

    let view = eventually("fulfillment to be cancelled", DEADLINE, || async {
        let (code, view) = system.orders().fulfillment_status(&fid).await?.parts();
        Ok((code == 200 && view["status"] == "CANCELLED").then_some(view))
    })
    .await?;
    assert_eq!(
        view["cancellationReason"],
        "Customer requested cancellation"
    );
    // the order hears of it too, and stays cancelled with its own reason
    eventually(
        "the order to see its fulfillment cancelled",
        DEADLINE,
        || async {
            let order = status(&system, &wf).await?;
            Ok((order["fulfillmentStatus"] == "CANCELLED").then_some(order))
        },
    )
    .await?;

    let (code, body) = system.orders().cancel(&wf, None).await?.parts();
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"], "conflict");
    Ok(())
}

#[tokio::test]
async fn declined_payment_and_stock_shortage_fail_with_the_reason() -> Result<()> {
    let system = start("orders-fail", &[], None).await?;
    let declined = create(&system, &order_body("product-1", "declined_card")).await?;
    let short = create(&system, &order_body("product-5", "credit_card")).await?;

    let order = wait_status(&system, &declined, "FAILED").await?;
    assert!(
        order["error"]
            .as_str()
            .is_some_and(|e| e.contains("declined")),
        "{order}"
    );
    assert!(order["fulfillmentWorkflowId"].is_null(), "{order}");
    let (_, progress) = system.orders().progress(&declined).await?.parts();
    assert!(
        progress["steps"].as_array().is_some_and(|s| s
            .iter()
            .any(|s| s["name"] == "Release inventory" && s["completedAt"].is_string())),
        "the reservation is released: {progress}"
    );

    let order = wait_status(&system, &short, "FAILED").await?;
    assert!(
        order["error"]
            .as_str()
            .is_some_and(|e| e.contains("product-5")),
        "{order}"
    );
    Ok(())
}

#[tokio::test]
async fn orders_placed_while_fulfillment_is_down_ship_when_it_returns() -> Result<()> {
    let mut system = start("orders-later", &[], None).await?;
    let mut workflows = Vec::new();
    for _ in 0..5 {
        workflows.push(create_demo(&system).await?);
    }
    for wf in &workflows {
        wait_status(&system, wf, "FULFILLMENT_STARTED").await?;
    }
    start_fulfillment(&mut system, 10).await?;
    for wf in &workflows {
        let order = wait_status(&system, wf, "SHIPPED").await?;
        assert!(order["trackingNumber"].is_string(), "{order}");
    }
    let (code, list) = system
        .orders()
        .list("status=SHIPPED&limit=2")
        .await?
        .parts();
    assert_eq!(code, 200);
    assert_eq!(list["total"], 5);
    assert_eq!(list["orders"].as_array().map(Vec::len), Some(2));
    Ok(())
}

#[tokio::test]
async fn a_query_answers_503_at_once_and_a_signal_504_when_fulfillment_is_down() -> Result<()> {
    let system = start("orders-timeout", &[("QUERY_TIMEOUT_MS", "400")], None).await?;
    // No replica's query queue is bound: the query is unroutable at once,
    // well before its 400 ms timeout.
    let started = Instant::now();
    let (code, body) = system
        .orders()
        .fulfillment_status("fulfillment-ORD-1-X")
        .await?
        .parts();
    assert_eq!(code, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(body["error"], "unavailable");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no queue is bound for fulfillment.queries/query")),
        "{body}"
    );

    let wf = create_demo(&system).await?;
    wait_status(&system, &wf, "FULFILLMENT_STARTED").await?;
    let (code, body) = system.orders().pause(&wf).await?.parts();
    assert_eq!(code, 504, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("stays queued")),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_json_errors() -> Result<()> {
    // A long inventory step keeps orders PENDING.
    let system = start("orders-errors", &[("INVENTORY_DELAY_MS", "60000")], None).await?;
    let http = Http::new();
    let orders = system.orders();

    let (code, body) = http
        .send_raw(
            reqwest::Method::POST,
            &orders.url("/orders"),
            "application/json",
            b"{not json".to_vec(),
        )
        .await?;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"], "invalid_body");

    let mut bad = order_body("product-1", "credit_card");
    bad["items"][0]["quantity"] = json!(0);
    let (code, body) = orders.create(&bad).await?.parts();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("items[0].quantity")),
        "{body}"
    );

    let mut bad = order_body("product-1", "credit_card");
    bad["customerEmail"] = json!("nobody");
    let (code, body) = orders.create(&bad).await?.parts();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("customerEmail")),
        "{body}"
    );

    let huge = vec![b' '; 1024 * 1024];
    let (code, body) = http
        .send_raw(
            reqwest::Method::POST,
            &orders.url("/orders"),
            "application/json",
            huge,
        )
        .await?;
    assert_eq!(code, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");

    let (code, body) = orders.status("order-workflow-ORD-0-NOPE").await?.parts();
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"], "not_found");

    let (code, body) = orders.list("status=LOST").await?.parts();
    assert_eq!(code, 400, "{body}");

    let wf = create_demo(&system).await?;
    let (code, body) = orders.pause(&wf).await?.parts();
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["message"],
        "fulfillment has not started yet; the order is in PENDING"
    );

    // contact details may change before fulfillment starts
    let (code, body) = orders
        .update(&wf, &json!({"customerEmail": "new@example.com"}))
        .await?
        .parts();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["customerEmail"], "new@example.com");

    let (code, body) = orders.get("/no/such/route").await?.parts();
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"], "not_found");

    // the service is still up after all that
    let (code, _) = orders.healthz().await?.parts();
    assert_eq!(code, 200);
    Ok(())
}

#[tokio::test]
async fn a_restarted_order_service_resumes_open_orders() -> Result<()> {
    let mut system = start("orders-restart", &[("PAYMENT_DELAY_MS", "1000")], Some(10)).await?;
    let mut workflows = Vec::new();
    for _ in 0..3 {
        workflows.push(create_demo(&system).await?);
    }
    wait_status(&system, &workflows[0], "PAYMENT_PROCESSING").await?;
    system.order_service_mut().kill().await?;
    system.order_service_mut().restart().await?;
    for wf in &workflows {
        wait_status(&system, wf, "SHIPPED").await?;
    }
    let status = system
        .order_service_mut()
        .terminate(Duration::from_secs(10))
        .await?;
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    Ok(())
}

#[tokio::test]
async fn orders_ship_after_the_broker_drops_every_connection() -> Result<()> {
    let system = start("orders-reconnect", &[], Some(20)).await?;
    let mut workflows = Vec::new();
    for _ in 0..5 {
        workflows.push(create_demo(&system).await?);
    }
    // Both services' connections, once the management API lists them.
    let closed = system.vhost().close_at_least(2).await?;
    assert!(closed >= 2, "both services were connected ({closed})");
    system.order_service().wait_ready().await?;
    for wf in &workflows {
        wait_status(&system, wf, "SHIPPED").await?;
    }
    Ok(())
}

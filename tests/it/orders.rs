//! order-service end to end: both binaries as processes on one vhost,
//! driven over HTTP as the original demo's README does.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use system_tests::{eventually, Http, Service, TestVhost};

/// Long enough for a slow CI machine; every wait ends as soon as it holds.
const DEADLINE: Duration = Duration::from_secs(15);

/// Order steps in tens of milliseconds; quick reconciliation polls.
const ORDER_ENV: &[(&str, &str)] = &[
    ("INVENTORY_DELAY_MS", "20"),
    ("PAYMENT_DELAY_MS", "20"),
    ("POLL_INTERVAL_MS", "200"),
    ("QUERY_TIMEOUT_MS", "1000"),
];

struct System {
    vhost: TestVhost,
    dir: tempfile::TempDir,
    orders: Service,
    fulfillment: Option<Service>,
    http: Http,
}

impl System {
    /// order-service with `extra` env, and fulfillment-service with
    /// `STEP_DELAY_MS = step_delay_ms` unless `None`.
    async fn start(
        label: &str,
        extra: &[(&str, &str)],
        step_delay_ms: Option<u64>,
    ) -> Result<Self> {
        let vhost = TestVhost::create(label).await?;
        let dir = tempfile::tempdir()?;
        let mut env: Vec<(&str, &str)> = ORDER_ENV.to_vec();
        env.extend_from_slice(extra);
        let orders = Service::start("order-service", &vhost, dir.path(), &env).await?;
        orders.wait_ready().await?;
        let mut system = Self {
            vhost,
            dir,
            orders,
            fulfillment: None,
            http: Http::new(),
        };
        if let Some(ms) = step_delay_ms {
            system.start_fulfillment(ms).await?;
        }
        Ok(system)
    }

    async fn start_fulfillment(&mut self, step_delay_ms: u64) -> Result<()> {
        let delay = step_delay_ms.to_string();
        let service = Service::start(
            "fulfillment-service",
            &self.vhost,
            self.dir.path(),
            &[
                ("STEP_DELAY_MS", delay.as_str()),
                ("QUERY_TIMEOUT_MS", "1000"),
            ],
        )
        .await?;
        service.wait_ready().await?;
        self.fulfillment = Some(service);
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        self.orders.url(path)
    }

    async fn create_demo(&self) -> Result<String> {
        let (code, body) = self.http.post(&self.url("/orders/demo"), None).await?;
        ensure!(code == 201, "POST /orders/demo: {code} {body}");
        ensure!(body["message"] == "Order created successfully", "{body}");
        let order_id = body["orderId"].as_str().context("orderId")?;
        ensure!(
            body["workflowId"] == format!("order-workflow-{order_id}"),
            "{body}"
        );
        Ok(body["workflowId"]
            .as_str()
            .context("workflowId")?
            .to_owned())
    }

    async fn create(&self, order: &Value) -> Result<String> {
        let (code, body) = self.http.post(&self.url("/orders"), Some(order)).await?;
        ensure!(code == 201, "POST /orders: {code} {body}");
        Ok(body["workflowId"]
            .as_str()
            .context("workflowId")?
            .to_owned())
    }

    async fn status(&self, workflow_id: &str) -> Result<Value> {
        let (code, body) = self
            .http
            .get(&self.url(&format!("/orders/{workflow_id}/status")))
            .await?;
        ensure!(code == 200, "status of {workflow_id}: {code} {body}");
        Ok(body)
    }

    /// Waits until the order's status is `want`; fails early on a final
    /// status that is not it.
    async fn wait_status(&self, workflow_id: &str, want: &str) -> Result<Value> {
        eventually(&format!("{workflow_id} to be {want}"), DEADLINE, || async {
            let body = self.status(workflow_id).await?;
            let status = body["status"].as_str().unwrap_or_default();
            if status == want {
                return Ok(Some(body));
            }
            if ["SHIPPED", "CANCELLED", "FAILED"].contains(&status) {
                anyhow::bail!("order ended {status} instead of {want}: {body}");
            }
            Ok(None)
        })
        .await
    }

    async fn fulfillment_status(&self, fulfillment_id: &str) -> Result<(u16, Value)> {
        self.http
            .get(&self.url(&format!("/orders/fulfillment/{fulfillment_id}/status")))
            .await
    }
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
    let system = System::start("orders-walkthrough", &[], Some(300)).await?;
    let wf = system.create_demo().await?;

    let order = system.wait_status(&wf, "FULFILLMENT_IN_PROGRESS").await?;
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

    let (code, body) = system
        .http
        .get(&system.url(&format!("/orders/{wf}/progress")))
        .await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["totalSteps"], 6);
    assert_eq!(body["steps"][0]["status"], "completed");
    assert!(body["steps"][0]["completedAt"].is_string(), "{body}");

    // pause: the fulfillment says PAUSED, through RabbitMQ
    let (code, body) = system
        .http
        .post(
            &system.url(&format!("/orders/{wf}/fulfillment/pause")),
            None,
        )
        .await?;
    assert_eq!(code, 200, "pause: {body}");
    assert_eq!(body["status"], "PAUSED");
    assert_eq!(body["fulfillmentWorkflowId"], fid.as_str());
    let (code, view) = system.fulfillment_status(&fid).await?;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["status"], "PAUSED");
    assert_eq!(view["isPaused"], true);

    // a new address while paused, before the label is printed
    let address = json!({"street": "456 New Street", "city": "New City", "state": "NC", "zipCode": "54321", "country": "USA"});
    let (code, body) = system
        .http
        .patch(
            &system.url(&format!("/orders/fulfillment/{fid}/shipping-address")),
            &address,
        )
        .await?;
    assert_eq!(code, 200, "address: {body}");

    let (code, body) = system
        .http
        .post(
            &system.url(&format!("/orders/{wf}/fulfillment/resume")),
            None,
        )
        .await?;
    assert_eq!(code, 200, "resume: {body}");
    assert_ne!(body["status"], "PAUSED");

    let (code, progress) = system
        .http
        .get(&system.url(&format!("/orders/fulfillment/{fid}/progress")))
        .await?;
    assert_eq!(code, 200, "{progress}");
    assert_eq!(progress["totalItems"], 2);

    let shipped = system.wait_status(&wf, "SHIPPED").await?;
    let tracking = shipped["trackingNumber"]
        .as_str()
        .context("tracking number")?;
    assert!(!tracking.is_empty());
    assert_eq!(shipped["fulfillmentStatus"], "SHIPPED");
    let (_, view) = system.fulfillment_status(&fid).await?;
    assert_eq!(view["trackingNumber"], tracking);
    assert_eq!(view["shippingAddress"]["street"], "456 New Street");

    let (_, body) = system
        .http
        .get(&system.url(&format!("/orders/{wf}/progress")))
        .await?;
    assert_eq!(body["percentage"], 100, "{body}");
    assert!(
        body["steps"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["status"] == "completed")),
        "{body}"
    );

    // after shipping: pause and cancel are refused
    let (code, _) = system
        .http
        .post(
            &system.url(&format!("/orders/{wf}/fulfillment/pause")),
            None,
        )
        .await?;
    assert_eq!(code, 409);
    let (code, body) = system
        .http
        .delete(&system.url(&format!("/orders/{wf}")), None)
        .await?;
    assert_eq!(code, 409, "{body}");

    // an unknown fulfillment answers 404 through the query
    let (code, body) = system.fulfillment_status("fulfillment-ORD-0-NOPE").await?;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"], "not_found");

    // listing by status
    let (code, list) = system
        .http
        .get(&system.url("/orders?status=SHIPPED&limit=20&offset=0"))
        .await?;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["total"], 1);
    assert_eq!(list["orders"][0]["workflowId"], wf.as_str());
    Ok(())
}

#[tokio::test]
async fn order_progress_shows_each_item_picked_between_status_events() -> Result<()> {
    // Items picked are progress events, which order-service does not
    // subscribe to: its progress route asks fulfillment while it runs.
    let system = System::start("order-live-progress", &[], Some(500)).await?;
    let wf = system.create_demo().await?;
    let progress = eventually("one of two items picked", DEADLINE, || async {
        let (code, body) = system
            .http
            .get(&system.url(&format!("/orders/{wf}/progress")))
            .await?;
        ensure!(code == 200, "progress of {wf}: {code} {body}");
        Ok((body["fulfillment"]["itemsPicked"] == 1).then_some(body))
    })
    .await?;
    assert_eq!(progress["fulfillment"]["status"], "PICKING", "{progress}");
    assert_eq!(progress["fulfillment"]["totalItems"], 2, "{progress}");
    // The order itself heard only the status event that started picking.
    let status = system.status(&wf).await?;
    assert_eq!(status["fulfillmentStatus"], "PICKING", "{status}");
    system.wait_status(&wf, "SHIPPED").await?;
    let (_, done) = system
        .http
        .get(&system.url(&format!("/orders/{wf}/progress")))
        .await?;
    assert_eq!(done["fulfillment"]["percentage"], 100, "{done}");
    Ok(())
}

#[tokio::test]
async fn a_status_request_waits_for_the_status_asked_for() -> Result<()> {
    let system = System::start("order-wait-status", &[], Some(300)).await?;
    let wf = system.create_demo().await?;
    let status = |query: &str| {
        let url = system.url(&format!("/orders/{wf}/status?{query}"));
        let http = &system.http;
        async move { http.get(&url).await }
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
    let system = System::start("orders-cancel", &[], Some(300)).await?;
    let wf = system.create_demo().await?;
    let order = system.wait_status(&wf, "FULFILLMENT_IN_PROGRESS").await?;
    let fid = order["fulfillmentWorkflowId"]
        .as_str()
        .context("fulfillment id")?
        .to_owned();

    let reason = json!({"reason": "Customer requested cancellation"});
    let (code, body) = system
        .http
        .delete(&system.url(&format!("/orders/{wf}")), Some(&reason))
        .await?;
    // The fulfillment decides: 200 once it has confirmed within
    // QUERY_TIMEOUT_MS, else 202 while the order is CANCELLING.
    match code {
        200 => assert_eq!(body["status"], "CANCELLED", "{body}"),
        202 => assert_eq!(body["status"], "CANCELLING", "{body}"),
        other => panic!("DELETE answered {other}: {body}"),
    }
    let order = system.wait_status(&wf, "CANCELLED").await?;
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(
        order["cancellationReason"],
        "Customer requested cancellation"
    );
    let (_, progress) = system
        .http
        .get(&system.url(&format!("/orders/{wf}/progress")))
        .await?;
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
        let (code, view) = system.fulfillment_status(&fid).await?;
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
            let order = system.status(&wf).await?;
            Ok((order["fulfillmentStatus"] == "CANCELLED").then_some(order))
        },
    )
    .await?;

    let (code, body) = system
        .http
        .delete(&system.url(&format!("/orders/{wf}")), None)
        .await?;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"], "conflict");
    Ok(())
}

#[tokio::test]
async fn declined_payment_and_stock_shortage_fail_with_the_reason() -> Result<()> {
    let system = System::start("orders-fail", &[], None).await?;
    let declined = system
        .create(&order_body("product-1", "declined_card"))
        .await?;
    let short = system
        .create(&order_body("product-5", "credit_card"))
        .await?;

    let order = system.wait_status(&declined, "FAILED").await?;
    assert!(
        order["error"]
            .as_str()
            .is_some_and(|e| e.contains("declined")),
        "{order}"
    );
    assert!(order["fulfillmentWorkflowId"].is_null(), "{order}");
    let (_, progress) = system
        .http
        .get(&system.url(&format!("/orders/{declined}/progress")))
        .await?;
    assert!(
        progress["steps"].as_array().is_some_and(|s| s
            .iter()
            .any(|s| s["name"] == "Release inventory" && s["completedAt"].is_string())),
        "the reservation is released: {progress}"
    );

    let order = system.wait_status(&short, "FAILED").await?;
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
    let mut system = System::start("orders-later", &[], None).await?;
    let mut workflows = Vec::new();
    for _ in 0..5 {
        workflows.push(system.create_demo().await?);
    }
    for wf in &workflows {
        system.wait_status(wf, "FULFILLMENT_STARTED").await?;
    }
    system.start_fulfillment(10).await?;
    for wf in &workflows {
        let order = system.wait_status(wf, "SHIPPED").await?;
        assert!(order["trackingNumber"].is_string(), "{order}");
    }
    let (code, list) = system
        .http
        .get(&system.url("/orders?status=SHIPPED&limit=2"))
        .await?;
    assert_eq!(code, 200);
    assert_eq!(list["total"], 5);
    assert_eq!(list["orders"].as_array().map(Vec::len), Some(2));
    Ok(())
}

#[tokio::test]
async fn a_query_answers_503_at_once_and_a_signal_504_when_fulfillment_is_down() -> Result<()> {
    let system = System::start("orders-timeout", &[("QUERY_TIMEOUT_MS", "400")], None).await?;
    // No replica's query queue is bound: the query is unroutable at once,
    // well before its 400 ms timeout.
    let started = Instant::now();
    let (code, body) = system.fulfillment_status("fulfillment-ORD-1-X").await?;
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

    let wf = system.create_demo().await?;
    system.wait_status(&wf, "FULFILLMENT_STARTED").await?;
    let (code, body) = system
        .http
        .post(
            &system.url(&format!("/orders/{wf}/fulfillment/pause")),
            None,
        )
        .await?;
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
    let system = System::start("orders-errors", &[("INVENTORY_DELAY_MS", "60000")], None).await?;
    let http = &system.http;

    let (code, body) = http
        .send_raw(
            reqwest::Method::POST,
            &system.url("/orders"),
            "application/json",
            b"{not json".to_vec(),
        )
        .await?;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"], "invalid_body");

    let mut bad = order_body("product-1", "credit_card");
    bad["items"][0]["quantity"] = json!(0);
    let (code, body) = http.post(&system.url("/orders"), Some(&bad)).await?;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("items[0].quantity")),
        "{body}"
    );

    let mut bad = order_body("product-1", "credit_card");
    bad["customerEmail"] = json!("nobody");
    let (code, body) = http.post(&system.url("/orders"), Some(&bad)).await?;
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
            &system.url("/orders"),
            "application/json",
            huge,
        )
        .await?;
    assert_eq!(code, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");

    let (code, body) = http
        .get(&system.url("/orders/order-workflow-ORD-0-NOPE/status"))
        .await?;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"], "not_found");

    let (code, body) = http.get(&system.url("/orders?status=LOST")).await?;
    assert_eq!(code, 400, "{body}");

    let wf = system.create_demo().await?;
    let (code, body) = http
        .post(
            &system.url(&format!("/orders/{wf}/fulfillment/pause")),
            None,
        )
        .await?;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["message"],
        "fulfillment has not started yet; the order is in PENDING"
    );

    // contact details may change before fulfillment starts
    let (code, body) = http
        .patch(
            &system.url(&format!("/orders/{wf}")),
            &json!({"customerEmail": "new@example.com"}),
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["customerEmail"], "new@example.com");

    let (code, body) = http.get(&system.url("/no/such/route")).await?;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"], "not_found");

    // the service is still up after all that
    let (code, _) = http.get(&system.url("/healthz")).await?;
    assert_eq!(code, 200);
    Ok(())
}

#[tokio::test]
async fn a_restarted_order_service_resumes_open_orders() -> Result<()> {
    let mut system =
        System::start("orders-restart", &[("PAYMENT_DELAY_MS", "1000")], Some(10)).await?;
    let mut workflows = Vec::new();
    for _ in 0..3 {
        workflows.push(system.create_demo().await?);
    }
    system
        .wait_status(&workflows[0], "PAYMENT_PROCESSING")
        .await?;
    system.orders.kill().await?;
    system.orders.restart().await?;
    for wf in &workflows {
        system.wait_status(wf, "SHIPPED").await?;
    }
    let status = system.orders.terminate(Duration::from_secs(10)).await?;
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    Ok(())
}

#[tokio::test]
async fn orders_ship_after_the_broker_drops_every_connection() -> Result<()> {
    let system = System::start("orders-reconnect", &[], Some(20)).await?;
    let mut workflows = Vec::new();
    for _ in 0..5 {
        workflows.push(system.create_demo().await?);
    }
    // Both services' connections, once the management API lists them.
    let closed = system.vhost.close_at_least(2).await?;
    assert!(closed >= 2, "both services were connected ({closed})");
    system.orders.wait_ready().await?;
    for wf in &workflows {
        system.wait_status(wf, "SHIPPED").await?;
    }
    Ok(())
}

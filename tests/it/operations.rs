//! Operations: one trace id across both services' logs, metrics that move,
//! readiness that follows the broker connection.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use system_tests::{eventually, Http, Service, TestVhost};

const DEADLINE: Duration = Duration::from_secs(20);

const ORDER_ENV: &[(&str, &str)] = &[
    ("INVENTORY_DELAY_MS", "20"),
    ("PAYMENT_DELAY_MS", "20"),
    ("POLL_INTERVAL_MS", "500"),
    ("QUERY_TIMEOUT_MS", "2000"),
];

/// Both services on one vhost, their logs captured as JSON.
struct System {
    vhost: TestVhost,
    _dir: tempfile::TempDir,
    orders: Service,
    fulfillment: Service,
    http: Http,
}

impl System {
    async fn start(label: &str, step_delay_ms: &str) -> Result<Self> {
        let vhost = TestVhost::create(label).await?;
        let dir = tempfile::tempdir()?;
        let json = [("LOG_FORMAT", "json"), ("RUST_LOG", "info")];
        let mut env = ORDER_ENV.to_vec();
        env.extend_from_slice(&json);
        let orders = Service::start_logged(
            "order-service",
            &vhost,
            dir.path(),
            &env,
            &dir.path().join("order-service.log"),
        )
        .await?;
        let fulfillment = Service::start_logged(
            "fulfillment-service",
            &vhost,
            dir.path(),
            &[
                ("STEP_DELAY_MS", step_delay_ms),
                ("LOG_FORMAT", "json"),
                ("RUST_LOG", "info"),
            ],
            &dir.path().join("fulfillment-service.log"),
        )
        .await?;
        orders.wait_ready().await?;
        fulfillment.wait_ready().await?;
        Ok(Self {
            vhost,
            _dir: dir,
            orders,
            fulfillment,
            http: Http::new(),
        })
    }

    /// Places the demo order (with `traceparent` when given); answers the
    /// workflow id and the `traceparent` the service answered with.
    async fn create_demo(&self, traceparent: Option<&str>) -> Result<(String, String)> {
        let mut request = reqwest::Client::new().post(self.orders.url("/orders/demo"));
        if let Some(tp) = traceparent {
            request = request.header("traceparent", tp);
        }
        let response = request.send().await?;
        ensure!(response.status() == 201, "POST /orders/demo: {response:?}");
        let answered = response
            .headers()
            .get("traceparent")
            .context("the response carries traceparent")?
            .to_str()?
            .to_owned();
        let body: Value = response.json().await?;
        let workflow_id = body["workflowId"].as_str().context("workflowId")?;
        Ok((workflow_id.to_owned(), answered))
    }

    async fn wait_shipped(&self, workflow_id: &str) -> Result<Value> {
        let url = self.orders.url(&format!("/orders/{workflow_id}/status"));
        eventually(&format!("{workflow_id} SHIPPED"), DEADLINE, || async {
            let (code, body) = self.http.get(&url).await?;
            ensure!(code == 200, "{code} {body}");
            Ok((body["status"] == "SHIPPED").then_some(body))
        })
        .await
    }
}

fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or_default()
}

/// The JSON log lines of `log` whose spans carry `trace_id`.
fn lines_with_trace(log: &str, trace_id: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|line| {
            line["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["trace_id"] == trace_id))
        })
        .collect()
}

fn messages(lines: &[Value]) -> HashSet<String> {
    lines
        .iter()
        .filter_map(|l| l["message"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn one_order_has_one_trace_id_in_both_services_logs() -> Result<()> {
    let system = System::start("ops-trace", "5").await?;
    // A caller's trace is continued...
    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (continued, answered) = system.create_demo(Some(theirs)).await?;
    ensure!(trace_id(&answered) == trace_id(theirs), "{answered}");
    // ...and without one, the order starts its own.
    let (fresh, minted) = system.create_demo(None).await?;
    ensure!(trace_id(&minted) != trace_id(theirs), "{minted}");
    system.wait_shipped(&continued).await?;
    system.wait_shipped(&fresh).await?;

    for (workflow_id, trace) in [(&continued, trace_id(theirs)), (&fresh, trace_id(&minted))] {
        let order_id = workflow_id.trim_start_matches("order-workflow-");
        let fulfillment_id = format!("fulfillment-{order_id}");
        // The last events may still be on their way to the log file.
        let (order_lines, fulfillment_lines) =
            eventually(&format!("{trace} in both logs"), DEADLINE, || async {
                let order_lines = lines_with_trace(&system.orders.log(), trace);
                let fulfillment_lines = lines_with_trace(&system.fulfillment.log(), trace);
                let shipped_in_orders = order_lines.iter().any(|l| l["to"] == "SHIPPED");
                let shipped_in_fulfillment =
                    fulfillment_lines.iter().any(|l| l["status"] == "SHIPPED");
                Ok((shipped_in_orders && shipped_in_fulfillment)
                    .then_some((order_lines, fulfillment_lines)))
            })
            .await
            .with_context(|| {
                format!(
                    "order-service log:\n{}\nfulfillment-service log:\n{}",
                    system.orders.log(),
                    system.fulfillment.log()
                )
            })?;
        let said = messages(&order_lines);
        for expected in ["order created", "order transition"] {
            ensure!(said.contains(expected), "{expected:?} not in {said:?}");
        }
        let said = messages(&fulfillment_lines);
        for expected in ["fulfillment created", "fulfillment transition"] {
            ensure!(said.contains(expected), "{expected:?} not in {said:?}");
        }
        // Every fulfillment line of this order names the order's trace,
        // and the ids are span fields.
        ensure!(
            fulfillment_lines.iter().all(|l| {
                let spans = l["spans"].as_array().cloned().unwrap_or_default();
                l["fulfillment_id"] == fulfillment_id.as_str()
                    || spans.iter().any(|s| {
                        s["fulfillment_id"] == fulfillment_id.as_str()
                            || s["entity_id"] == fulfillment_id.as_str()
                    })
            }),
            "a line of another fulfillment carries trace {trace}"
        );
        ensure!(
            fulfillment_lines
                .iter()
                .any(|l| l["spans"].as_array().is_some_and(|s| s
                    .iter()
                    .any(|s| s["name"] == "message" && s["message_type"] == "StartFulfillment"))),
            "fulfillment-service handled no StartFulfillment in trace {trace}"
        );
    }
    Ok(())
}

/// The sum of the samples of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn scrape(service: &Service) -> Result<String> {
    let response = reqwest::get(service.url("/metrics")).await?;
    ensure!(
        response.status() == 200,
        "{}: /metrics {response:?}",
        service.name
    );
    Ok(response.text().await?)
}

#[tokio::test]
async fn metrics_count_an_order_in_both_services() -> Result<()> {
    let system = System::start("ops-metrics", "5").await?;
    let (o0, f0) = (
        scrape(&system.orders).await?,
        scrape(&system.fulfillment).await?,
    );
    let (workflow_id, _) = system.create_demo(None).await?;
    let shipped = system.wait_shipped(&workflow_id).await?;
    let fulfillment_id = shipped["fulfillmentWorkflowId"]
        .as_str()
        .context("fulfillmentWorkflowId")?;
    // A query through RabbitMQ, for the latency histograms.
    let (code, body) = system
        .http
        .get(
            &system
                .orders
                .url(&format!("/orders/fulfillment/{fulfillment_id}/status")),
        )
        .await?;
    ensure!(code == 200, "{code} {body}");
    let (o1, f1) = (
        scrape(&system.orders).await?,
        scrape(&system.fulfillment).await?,
    );

    let moved = |before: &str, after: &str, name: &str, labels: &[(&str, &str)], by: f64| {
        let (b, a) = (sample(before, name, labels), sample(after, name, labels));
        ensure!(
            a - b >= by,
            "{name}{labels:?}: {b} -> {a}, expected +{by}\n{after}"
        );
        Ok(())
    };
    let o = |name: &str, labels: &[(&str, &str)], by: f64| moved(&o0, &o1, name, labels, by);
    let f = |name: &str, labels: &[(&str, &str)], by: f64| moved(&f0, &f1, name, labels, by);

    o(
        "order_service_http_request_seconds_count",
        &[
            ("method", "POST"),
            ("route", "/orders/demo"),
            ("status", "201"),
        ],
        1.0,
    )?;
    o(
        "order_service_http_request_seconds_count",
        &[("route", "/orders/{workflow_id}/status"), ("status", "200")],
        1.0,
    )?;
    o(
        "order_service_transitions_total",
        &[("from", "PENDING"), ("to", "INVENTORY_RESERVED")],
        1.0,
    )?;
    o("order_service_transitions_total", &[("to", "SHIPPED")], 1.0)?;
    o(
        "order_service_messages_published_total",
        &[("message_type", "StartFulfillment")],
        1.0,
    )?;
    o(
        "order_service_messages_consumed_total",
        &[
            ("queue", "order-service.fulfillment-events"),
            ("message_type", "FulfillmentStatusChanged"),
            ("outcome", "ack"),
        ],
        1.0,
    )?;
    o(
        "order_service_message_handling_seconds_count",
        &[("message_type", "FulfillmentStatusChanged")],
        1.0,
    )?;
    o(
        "order_service_request_seconds_count",
        &[("message_type", "GetFulfillmentStatus"), ("outcome", "ok")],
        1.0,
    )?;
    o(
        "order_service_store_write_seconds_count",
        &[("operation", "insert")],
        1.0,
    )?;
    o(
        "order_service_store_write_seconds_count",
        &[("operation", "save")],
        5.0,
    )?;
    o("order_service_orders", &[("status", "SHIPPED")], 1.0)?;

    f(
        "fulfillment_service_messages_consumed_total",
        &[
            ("queue", "fulfillment.signals"),
            ("message_type", "StartFulfillment"),
            ("outcome", "ack"),
        ],
        1.0,
    )?;
    f(
        "fulfillment_service_messages_consumed_total",
        &[
            ("queue", "fulfillment.queries"),
            ("message_type", "GetFulfillmentStatus"),
        ],
        1.0,
    )?;
    f(
        "fulfillment_service_message_handling_seconds_count",
        &[("message_type", "StartFulfillment")],
        1.0,
    )?;
    f(
        "fulfillment_service_messages_published_total",
        &[("message_type", "FulfillmentStatusChanged")],
        4.0,
    )?;
    f(
        "fulfillment_service_transitions_total",
        &[("to", "SHIPPED")],
        1.0,
    )?;
    f(
        "fulfillment_service_store_write_seconds_count",
        &[("operation", "save")],
        4.0,
    )?;
    f(
        "fulfillment_service_fulfillments",
        &[("status", "SHIPPED")],
        1.0,
    )?;

    for (text, prefix) in [(&o1, "order_service"), (&f1, "fulfillment_service")] {
        ensure!(
            sample(text, &format!("{prefix}_broker_connected"), &[]) == 1.0,
            "{text}"
        );
        ensure!(
            sample(text, &format!("{prefix}_store_up"), &[]) == 1.0,
            "{text}"
        );
        // The order is finished: its actors have stopped.
        ensure!(
            sample(text, &format!("{prefix}_actors"), &[]) == 0.0,
            "{text}"
        );
        ensure!(
            text.contains(&format!("# TYPE {prefix}_actors gauge")),
            "{text}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn readyz_is_503_while_the_broker_is_unreachable_and_200_after() -> Result<()> {
    let system = System::start("ops-ready", "5").await?;
    let services = [&system.orders, &system.fulfillment];
    // Revoked access keeps the services from reconnecting, so "not ready"
    // lasts until it is granted again (not only for the reconnect backoff).
    system.vhost.set_guest_access(false).await?;
    let closed = system.vhost.close_connections().await?;
    ensure!(closed >= 2, "closed {closed} connections");
    let http = &system.http;
    for service in services {
        eventually(
            &format!("{} /readyz 503", service.name),
            DEADLINE,
            || async {
                let (code, body) = http.get(&service.url("/readyz")).await?;
                Ok((code == 503 && body["broker"] == false).then_some(()))
            },
        )
        .await?;
        // Liveness never depends on the broker.
        let (code, _) = http.get(&service.url("/healthz")).await?;
        ensure!(code == 200, "{} /healthz {code}", service.name);
        let prefix = service.name.replace('-', "_");
        let text = scrape(service).await?;
        ensure!(
            sample(&text, &format!("{prefix}_broker_connected"), &[]) == 0.0,
            "{text}"
        );
    }
    // Still not ready a while later: nothing flaps back on its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for service in services {
        let (code, _) = http.get(&service.url("/readyz")).await?;
        ensure!(code == 503, "{} /readyz {code} while refused", service.name);
    }
    system.vhost.set_guest_access(true).await?;
    for service in services {
        service.wait_ready().await?;
        let prefix = service.name.replace('-', "_");
        let text = scrape(service).await?;
        ensure!(
            sample(&text, &format!("{prefix}_broker_connected"), &[]) == 1.0,
            "{text}"
        );
        ensure!(
            sample(&text, &format!("{prefix}_broker_connects_total"), &[]) >= 2.0,
            "{text}"
        );
    }
    // And the system works again.
    let (workflow_id, _) = system.create_demo(None).await?;
    system.wait_shipped(&workflow_id).await?;
    Ok(())
}

#[allow(dead_code)]
fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target")
}

//! Operations: one trace id across both services' logs and their spans
//! exported over OTLP, metrics that move,
//! readiness that follows the broker connection, OpenAPI documents that
//! cover every route, and each service's page rendered in headless Chromium
//! (screenshots in `target/ui/`).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use system_tests::tls::TestCa;
use system_tests::{eventually, Http, Service, TestSystem, TestVhost};

const DEADLINE: Duration = Duration::from_secs(20);

const ORDER_ENV: &[(&str, &str)] = &[
    ("INVENTORY_DELAY_MS", "20"),
    ("PAYMENT_DELAY_MS", "20"),
    ("POLL_INTERVAL_MS", "500"),
    ("QUERY_TIMEOUT_MS", "2000"),
];

/// Both services on one vhost, their logs captured as JSON.
async fn start(label: &str, step_delay_ms: &str) -> Result<TestSystem> {
    start_with(label, step_delay_ms, &[]).await
}

/// As [`start`], with `both` added to each service's settings.
async fn start_with(label: &str, step_delay_ms: &str, both: &[(&str, &str)]) -> Result<TestSystem> {
    let json = [("LOG_FORMAT", "json"), ("RUST_LOG", "info")];
    let mut env = ORDER_ENV.to_vec();
    env.extend_from_slice(&json);
    env.extend_from_slice(both);
    let mut fulfillment_env = vec![
        ("STEP_DELAY_MS", step_delay_ms),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "info"),
        ("REPLICA_ID", "ops-1"),
    ];
    fulfillment_env.extend_from_slice(both);
    TestSystem::builder(label)
        .logged()
        .orders(&env)
        .fulfillment(&fulfillment_env)
        .start()
        .await
}

/// Places the demo order (with `traceparent` when given); answers the
/// workflow id and the `traceparent` the service answered with.
async fn create_demo(system: &TestSystem, traceparent: Option<&str>) -> Result<(String, String)> {
    let mut request = reqwest::Client::new().post(system.orders().url("/orders/demo"));
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

async fn wait_shipped(system: &TestSystem, workflow_id: &str) -> Result<Value> {
    system
        .orders()
        .wait_status(workflow_id, "SHIPPED", DEADLINE)
        .await
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
    let system = start("ops-trace", "5").await?;
    // A caller's trace is continued...
    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (continued, answered) = create_demo(&system, Some(theirs)).await?;
    ensure!(trace_id(&answered) == trace_id(theirs), "{answered}");
    // ...and without one, the order starts its own.
    let (fresh, minted) = create_demo(&system, None).await?;
    ensure!(trace_id(&minted) != trace_id(theirs), "{minted}");
    wait_shipped(&system, &continued).await?;
    wait_shipped(&system, &fresh).await?;

    for (workflow_id, trace) in [(&continued, trace_id(theirs)), (&fresh, trace_id(&minted))] {
        let order_id = workflow_id.trim_start_matches("order-workflow-");
        let fulfillment_id = format!("fulfillment-{order_id}");
        // The last events may still be on their way to the log file.
        let (order_lines, fulfillment_lines) =
            eventually(&format!("{trace} in both logs"), DEADLINE, || async {
                let order_lines = lines_with_trace(&system.order_service().log(), trace);
                let fulfillment_lines =
                    lines_with_trace(&system.fulfillment_service().log(), trace);
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
                    system.order_service().log(),
                    system.fulfillment_service().log()
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

/// An OTLP/HTTP receiver on loopback: keeps every body POSTed to
/// `/v1/traces` and answers 200 with an empty (valid) response. Stops
/// accepting when dropped.
struct OtlpReceiver {
    endpoint: String,
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
}

impl OtlpReceiver {
    /// Over plain HTTP (`http://127.0.0.1:<port>`).
    fn start() -> Result<Self> {
        Self::listen(None)
    }

    /// Over TLS with `ca`'s server certificate (`https://localhost:<port>`).
    fn start_tls(ca: &TestCa) -> Result<Self> {
        let certs =
            CertificateDer::pem_file_iter(ca.server_cert())?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(ca.server_key())?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        Self::listen(Some(Arc::new(config)))
    }

    fn listen(tls: Option<Arc<rustls::ServerConfig>>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let endpoint = match tls {
            None => format!("http://{addr}"),
            Some(_) => format!("https://localhost:{}", addr.port()),
        };
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (bodies.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let kept = kept.clone();
                let tls = tls.clone();
                // Ends when the service closes the connection.
                std::thread::spawn(move || match tls {
                    None => Self::serve(stream, &kept),
                    Some(config) => {
                        let connection =
                            rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
                        Self::serve(rustls::StreamOwned::new(connection, stream), &kept)
                    }
                });
            }
        });
        Ok(Self {
            endpoint,
            addr,
            bodies,
            stop,
        })
    }

    /// HTTP/1.1 with keep-alive and `content-length` bodies, as the
    /// exporter sends them.
    fn serve(stream: impl Read + Write, bodies: &Mutex<Vec<Vec<u8>>>) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream);
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line)? == 0 {
                return Ok(());
            }
            let mut length = 0;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header)?;
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            if request_line.starts_with("POST /v1/traces ") {
                bodies
                    .lock()
                    .expect("no test thread panics holding it")
                    .push(body);
            }
            let writer = reader.get_mut();
            writer.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
            )?;
            writer.flush()?;
        }
    }

    /// Every span received so far, decoded.
    fn spans(&self) -> Result<Vec<ExportedSpan>> {
        let bodies = self
            .bodies
            .lock()
            .expect("no test thread panics holding it");
        let mut spans = Vec::new();
        for body in bodies.iter() {
            let request = ExportTraceServiceRequest::decode(body.as_slice())
                .context("a body that is not an OTLP trace export")?;
            for resource_spans in request.resource_spans {
                let service = resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.as_ref()?.value.as_ref())
                    .and_then(|v| match v {
                        any_value::Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                    spans.push(ExportedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                    });
                }
            }
        }
        Ok(spans)
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root.
    parent_span_id: String,
}

/// One trace's spans come from both services, with one root, every other
/// span's parent exported, and message spans under a sender in the other
/// service both ways.
fn linked(spans: &[ExportedSpan]) -> bool {
    let by_id: HashMap<&str, &ExportedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let roots = spans.iter().filter(|s| s.parent_span_id.is_empty()).count();
    let dangling = spans
        .iter()
        .any(|s| !s.parent_span_id.is_empty() && !by_id.contains_key(s.parent_span_id.as_str()));
    let crossing = |from: &str, to: &str| {
        spans.iter().any(|s| {
            s.service == to
                && s.name == "message"
                && by_id
                    .get(s.parent_span_id.as_str())
                    .is_some_and(|parent| parent.service == from)
        })
    };
    roots == 1
        && !dangling
        && crossing("order-service", "fulfillment-service")
        && crossing("fulfillment-service", "order-service")
}

/// A message's spans hang where it was sent and where it is handled:
/// order-service's `message` span of a fulfillment event has the
/// fulfillment span that published the event as its parent, and the
/// order's transition that handles the event has that `message` span as
/// its parent (not the request that created the order).
fn handled_under_messages(spans: &[ExportedSpan]) -> bool {
    let by_id: HashMap<&str, &ExportedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent = |s: &ExportedSpan| by_id.get(s.parent_span_id.as_str()).copied();
    let is = |s: &ExportedSpan, service: &str, name: &str| s.service == service && s.name == name;
    spans.iter().any(|s| {
        is(s, "order-service", "order_input")
            && parent(s).is_some_and(|message| {
                is(message, "order-service", "message")
                    && parent(message)
                        .is_some_and(|sent| is(sent, "fulfillment-service", "fulfillment_input"))
            })
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn with_an_otlp_endpoint_both_services_export_one_trace_per_order() -> Result<()> {
    let receiver = OtlpReceiver::start()?;
    let system = start_with(
        "ops-otlp",
        "5",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await?;
    let (workflow_id, answered) = create_demo(&system, None).await?;
    let trace = trace_id(&answered).to_owned();
    wait_shipped(&system, &workflow_id).await?;

    // Spans are exported as they end, in batches: wait until the order's
    // trace holds spans of both services, every span's parent among them
    // but for the one root, and, across RabbitMQ, consumers' message spans
    // under the spans that sent them, in the other service, and an
    // order's handling of a fulfillment event under its message span.
    let spans = eventually(
        &format!("both services' spans of trace {trace}, linked, handled under messages"),
        DEADLINE,
        || async {
            let spans: Vec<ExportedSpan> = receiver
                .spans()?
                .into_iter()
                .filter(|s| s.trace_id == trace)
                .collect();
            Ok((linked(&spans) && handled_under_messages(&spans)).then_some(spans))
        },
    )
    .await
    .with_context(|| format!("{:#?}", receiver.spans()))?;
    let root = spans
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .context("a root")?;
    ensure!(
        root.service == "order-service" && root.name == "http_request",
        "the trace starts at {root:?}"
    );
    // The logs name the same trace.
    let (order_lines, fulfillment_lines) = (
        lines_with_trace(&system.order_service().log(), &trace),
        lines_with_trace(&system.fulfillment_service().log(), &trace),
    );
    ensure!(
        !order_lines.is_empty() && !fulfillment_lines.is_empty(),
        "trace {trace} is not in both logs"
    );
    Ok(())
}

/// An `https://` endpoint: the exporter verifies the receiver's
/// certificate against the CA named by `SSL_CERT_FILE` (read by
/// rustls-native-certs in place of the system roots) and exports over TLS.
#[tokio::test]
async fn otlp_export_to_an_https_endpoint_verifies_the_collector_with_the_given_ca() -> Result<()> {
    let ca = TestCa::create()?;
    let receiver = OtlpReceiver::start_tls(&ca)?;
    let vhost = TestVhost::create("ops-otlp-tls").await?;
    let dir = tempfile::tempdir()?;
    let ca_file = ca.ca_cert().display().to_string();
    let orders = Service::start_logged(
        "order-service",
        &vhost,
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("SSL_CERT_FILE", &ca_file),
        ],
        &dir.path().join("order-service.log"),
    )
    .await?;
    orders.wait_ready().await?;
    let response = reqwest::Client::new()
        .post(orders.url("/orders/demo"))
        .send()
        .await?;
    ensure!(response.status() == 201, "POST /orders/demo: {response:?}");
    let answered = response
        .headers()
        .get("traceparent")
        .context("the response carries traceparent")?
        .to_str()?
        .to_owned();
    let trace = trace_id(&answered).to_owned();
    eventually(
        &format!("order-service's http_request span of trace {trace} over https"),
        DEADLINE,
        || async {
            Ok(receiver.spans()?.into_iter().find(|s| {
                s.trace_id == trace && s.service == "order-service" && s.name == "http_request"
            }))
        },
    )
    .await
    .with_context(|| orders.log())?;
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
    let system = start("ops-metrics", "5").await?;
    let (o0, f0) = (
        scrape(system.order_service()).await?,
        scrape(system.fulfillment_service()).await?,
    );
    let (workflow_id, _) = create_demo(&system, None).await?;
    let shipped = wait_shipped(&system, &workflow_id).await?;
    let fulfillment_id = shipped["fulfillmentWorkflowId"]
        .as_str()
        .context("fulfillmentWorkflowId")?;
    // A query through RabbitMQ, for the latency histograms.
    let (code, body) = system
        .orders()
        .fulfillment_status(fulfillment_id)
        .await?
        .parts();
    ensure!(code == 200, "{code} {body}");
    let (o1, f1) = (
        scrape(system.order_service()).await?,
        scrape(system.fulfillment_service()).await?,
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
    // One transaction per group commit: the new order's insert and its
    // transitions, in at least a few of them.
    o(
        "order_service_store_write_seconds_count",
        &[("operation", "save")],
        3.0,
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
            // The replica's own query queue (REPLICA_ID=ops-1).
            ("queue", "fulfillment.queries.ops-1"),
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
    let system = start("ops-ready", "5").await?;
    let services = [system.order_service(), system.fulfillment_service()];
    // Revoked access keeps the services from reconnecting, so "not ready"
    // lasts until it is granted again (not only for the reconnect backoff).
    system.vhost().set_guest_access(false).await?;
    let closed = system.vhost().close_at_least(2).await?;
    ensure!(closed >= 2, "closed {closed} connections");
    let http = Http::new();
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
    system.vhost().set_guest_access(true).await?;
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
    let (workflow_id, _) = create_demo(&system, None).await?;
    wait_shipped(&system, &workflow_id).await?;
    Ok(())
}

/// Every `$ref` in `doc` resolves, every schema's `required` names exist,
/// every operation answers something described, every `{param}` of a path
/// is declared. Answers the problems found.
fn check_openapi(doc: &Value) -> Vec<String> {
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    fn schemas<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(map) => {
                if map.contains_key("required") && map.contains_key("properties") {
                    out.push(v);
                }
                map.values().for_each(|v| schemas(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| schemas(v, out)),
            _ => {}
        }
    }
    let mut problems = Vec::new();
    if !doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")) {
        problems.push(format!("openapi is {}, not 3.x", doc["openapi"]));
    }
    for field in ["title", "version"] {
        if !doc["info"][field].is_string() {
            problems.push(format!("info.{field} missing"));
        }
    }
    let mut all = Vec::new();
    refs(doc, &mut all);
    for r in all {
        let target = r
            .strip_prefix("#/")
            .map(|p| p.split('/').fold(doc, |v, key| &v[key]));
        if !target.is_some_and(|t| t.is_object()) {
            problems.push(format!("$ref {r} does not resolve"));
        }
    }
    let mut with_required = Vec::new();
    schemas(doc, &mut with_required);
    for schema in with_required {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            if schema["properties"][name].is_null() {
                problems.push(format!("required {name} is not a property of {schema}"));
            }
        }
    }
    let Some(paths) = doc["paths"].as_object() else {
        problems.push("no paths".into());
        return problems;
    };
    for (path, item) in paths {
        for (method, op) in item.as_object().into_iter().flatten() {
            let responses = op["responses"].as_object();
            if responses.is_none_or(|r| r.is_empty()) {
                problems.push(format!("{method} {path} has no responses"));
            }
            for (code, response) in responses.into_iter().flatten() {
                if !response["description"].is_string() {
                    problems.push(format!("{method} {path} {code} has no description"));
                }
            }
            for param in path
                .split('{')
                .skip(1)
                .filter_map(|p| p.split_once('}').map(|(name, _)| name))
            {
                let declared = op["parameters"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["name"] == param && p["in"] == "path" && p["required"] == true)
                });
                if !declared {
                    problems.push(format!(
                        "{method} {path}: path parameter {param} undeclared"
                    ));
                }
            }
        }
    }
    problems
}

/// Every documented operation, sent to the live service with made-up ids:
/// each must reach a route (no "no route" 404, no 405). Answers the
/// `(method, path)` pairs documented.
async fn probe_documented(service: &Service, doc: &Value) -> Result<Vec<(String, String)>> {
    let client = reqwest::Client::new();
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for method in item.as_object().context("path item")?.keys() {
            let concrete: String = path
                .split('{')
                .enumerate()
                .map(|(i, part)| match (i, part.split_once('}')) {
                    (0, _) | (_, None) => part.to_owned(),
                    (_, Some((_, rest))) => format!("probe-unknown-id{rest}"),
                })
                .collect();
            let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())?;
            let mut request = client.request(m.clone(), service.url(&concrete));
            if m == reqwest::Method::POST || m == reqwest::Method::PATCH {
                request = request.json(&serde_json::json!({}));
            }
            let response = request.send().await?;
            let code = response.status().as_u16();
            let text = response.text().await?;
            ensure!(
                code != 405 && !(code == 404 && text.contains("no route for")),
                "{}: {method} {path} is documented but not served ({code} {text})",
                service.name
            );
            documented.push((method.clone(), path.clone()));
        }
    }
    Ok(documented)
}

#[tokio::test]
async fn openapi_documents_are_valid_and_cover_every_route_served() -> Result<()> {
    let system = start("ops-openapi", "5").await?;
    for service in [system.order_service(), system.fulfillment_service()] {
        let (code, doc) = Http::new().get(&service.url("/openapi.json")).await?;
        ensure!(code == 200, "{}: /openapi.json {code}", service.name);
        let problems = check_openapi(&doc);
        ensure!(problems.is_empty(), "{}: {problems:#?}", service.name);
        ensure!(doc["info"]["title"] == service.name, "{}", doc["info"]);
        let documented = probe_documented(service, &doc).await?;
        ensure!(documented.len() >= 13, "{documented:?}");
        // Every operation names its errors with the shared error body.
        for (method, path) in &documented {
            let op = &doc["paths"][path][method];
            let error_refs = op["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(code, _)| code.starts_with('4') || code.starts_with('5'))
                .all(|(_, r)| {
                    r["content"]["application/json"]["schema"]["$ref"]
                        .as_str()
                        .is_some_and(|s| s.ends_with("/ErrorBody") || s.ends_with("/Readiness"))
                });
            ensure!(
                error_refs,
                "{method} {path}: an error without its body schema"
            );
        }
        // The routes the server matched during all of the above (from its
        // own HTTP metrics) are all documented.
        let metrics = scrape(service).await?;
        let prefix = service.name.replace('-', "_");
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix(&format!("{prefix}_http_request_seconds_count{{"))
            else {
                continue;
            };
            let field = |name: &str| {
                rest.split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|v| v.split('"').next())
                    .unwrap_or_default()
                    .to_owned()
            };
            let (method, route) = (field("method").to_ascii_lowercase(), field("route"));
            if route == "unmatched" {
                continue;
            }
            ensure!(
                documented.contains(&(method.clone(), route.clone())),
                "{}: served {method} {route} is not documented",
                service.name
            );
        }
    }
    Ok(())
}

/// Headless Chromium, as the tests run it (root, no sandbox, nothing from
/// the network but the page).
fn chromium(args: &[String]) -> Result<std::process::Output> {
    let profile = tempfile::tempdir()?;
    let mut all: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    all.push(format!("--user-data-dir={}", profile.path().display()));
    all.extend_from_slice(args);
    std::process::Command::new("chromium")
        .args(&all)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running chromium: install Debian's chromium package (./scripts/test.sh does)")
}

/// The page after its scripts ran (and fetched the lists).
fn render(url: &str) -> Result<String> {
    let out = chromium(&[
        "--virtual-time-budget=5000".into(),
        "--dump-dom".into(),
        url.into(),
    ])?;
    ensure!(out.status.success(), "chromium --dump-dom: {out:?}");
    Ok(String::from_utf8(out.stdout)?)
}

/// The statuses the rendered page shows, by row id.
fn rows(dom: &str) -> Vec<(String, String)> {
    dom.split("<tr data-id=\"")
        .skip(1)
        .filter_map(|row| {
            let (id, rest) = row.split_once('"')?;
            let status = rest.split("data-status=\"").nth(1)?.split('"').next()?;
            let badge = rest.split("class=\"badge").nth(1)?.split('>').nth(1)?;
            let badge = badge.split('<').next()?;
            (badge == status).then(|| (id.to_owned(), status.to_owned()))
        })
        .collect()
}

fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ui")
}

/// Takes a screenshot and checks it is a PNG of the window's size with
/// more than a blank page in it.
fn screenshot(url: &str, file: &str) -> Result<PathBuf> {
    let dir = target_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(file);
    let _ = std::fs::remove_file(&path);
    let out = chromium(&[
        "--virtual-time-budget=5000".into(),
        "--window-size=1200,560".into(),
        format!("--screenshot={}", path.display()),
        url.into(),
    ])?;
    ensure!(out.status.success(), "chromium --screenshot: {out:?}");
    let png = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    let width = u32::from_be_bytes(png[16..20].try_into()?);
    let height = u32::from_be_bytes(png[20..24].try_into()?);
    ensure!((width, height) == (1200, 560), "{width}x{height}");
    // A blank page compresses to a few hundred bytes; text and bars do not.
    ensure!(
        png.len() > 10_000,
        "{} is only {} bytes",
        path.display(),
        png.len()
    );
    Ok(path)
}

#[tokio::test]
async fn each_service_page_lists_its_workflows_in_headless_chromium() -> Result<()> {
    let system = start("ops-ui", "5").await?;
    let mut placed = Vec::new();
    for _ in 0..3 {
        placed.push(create_demo(&system, None).await?.0);
    }
    // One that fails for stock, so the page shows more than one status.
    let failing = serde_json::json!({
        "customerId": "cust-ui", "customerEmail": "ui@example.com", "customerName": "Ui Example",
        "items": [{"productId": "product-5", "productName": "Sold out", "quantity": 1, "price": 5.0}],
        "shippingAddress": {"street": "1 Main St", "city": "Town", "state": "CA", "zipCode": "90210", "country": "USA"},
        "paymentMethod": "credit_card"
    });
    let (code, body) = system.orders().create(&failing).await?.parts();
    ensure!(code == 201, "{code} {body}");
    let failed = body["workflowId"]
        .as_str()
        .context("workflowId")?
        .to_owned();
    let mut expected = Vec::new();
    for workflow_id in &placed {
        wait_shipped(&system, workflow_id).await?;
        expected.push((
            workflow_id.trim_start_matches("order-workflow-").to_owned(),
            "SHIPPED",
        ));
    }
    let orders = system.orders();
    eventually("the product-5 order to fail", DEADLINE, || async {
        let (_, body) = orders.status(&failed).await?.parts();
        Ok((body["status"] == "FAILED").then_some(()))
    })
    .await?;
    expected.push((
        failed.trim_start_matches("order-workflow-").to_owned(),
        "FAILED",
    ));

    let (code, page) = system.orders().get("/").await?.parts();
    ensure!(
        code == 200 && page.is_null(),
        "GET / answers HTML, not JSON"
    );
    let dom = render(&system.orders().url("/"))?;
    let shown = rows(&dom);
    for (order_id, status) in &expected {
        ensure!(
            shown.contains(&(order_id.clone(), (*status).to_owned())),
            "order {order_id} {status} not on the page: {shown:?}\n{dom}"
        );
    }
    ensure!(
        dom.contains("100%"),
        "no full progress bar on the orders page"
    );

    let dom = render(&system.fulfillment().url("/"))?;
    ensure!(
        dom.contains("replica ops-1"),
        "the page names its replica (REPLICA_ID=ops-1)"
    );
    let (_, ready) = system.fulfillment().readyz().await?.parts();
    ensure!(
        ready["replica"] == "ops-1",
        "/readyz names its replica: {ready}"
    );
    let shown = rows(&dom);
    for workflow_id in &placed {
        let id = format!(
            "fulfillment-{}",
            workflow_id.trim_start_matches("order-workflow-")
        );
        ensure!(
            shown.contains(&(id.clone(), "SHIPPED".to_owned())),
            "{id} SHIPPED not on the page: {shown:?}\n{dom}"
        );
    }
    screenshot(&system.orders().url("/"), "ui-orders.png")?;
    screenshot(&system.fulfillment().url("/"), "ui-fulfillments.png")?;
    Ok(())
}

//! Security controls, end to end: both binaries with a token file, every
//! mutating route tried without a token, with a reader's and with an
//! operator's; cross-site writes; direct fulfillments that would take an
//! order's place.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use system_tests::{eventually, Service, TestSystem, TestVhost};

/// Long enough for a slow CI machine; every wait ends as soon as it holds.
const DEADLINE: Duration = Duration::from_secs(20);

const READER: &str = "reader-7c1d9e0f4b2a48d6a3e5f1c2b7d9e0a4";
const OPERATOR: &str = "operator-2f8e6d4c1b0a49e7b5c3d1f0e9a8b7c6";

/// Who calls: nobody, a reader, an operator.
#[derive(Clone, Copy, Debug)]
enum Caller {
    Anonymous,
    Reader,
    Operator,
}

impl Caller {
    fn token(self) -> Option<&'static str> {
        match self {
            Self::Anonymous => None,
            Self::Reader => Some(READER),
            Self::Operator => Some(OPERATOR),
        }
    }
}

/// An answer: status, `WWW-Authenticate`, JSON body (`Null` when not JSON).
struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    body: Value,
}

struct Client {
    http: reqwest::Client,
}

impl Client {
    fn new() -> Self {
        Self {
            http: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        caller: Caller,
        method: Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Answer> {
        let mut request = self.http.request(method, url);
        if let Some(token) = caller.token() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.with_context(|| url.to_owned())?;
        let status = response.status();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await?;
        Ok(Answer {
            status,
            challenge,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        })
    }
}

/// Both services on one vhost, each with the same token file.
struct ClosedSystem {
    system: TestSystem,
    /// The token file; removed when the test ends.
    _tokens: tempfile::TempDir,
    client: Client,
}

impl ClosedSystem {
    async fn start(label: &str, extra: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let tokens = dir.path().join("api-tokens");
        std::fs::write(
            &tokens,
            format!("# role token\nreader {READER}\n\noperator {OPERATOR} # on call\n"),
        )?;
        let tokens = tokens.display().to_string();
        let mut order_env = vec![
            ("API_TOKEN_FILE", tokens.as_str()),
            // Long enough to change an order's details before it is
            // handed over, short enough to reach fulfillment soon after.
            ("INVENTORY_DELAY_MS", "2500"),
            ("PAYMENT_DELAY_MS", "20"),
            ("POLL_INTERVAL_MS", "200"),
            ("QUERY_TIMEOUT_MS", "3000"),
        ];
        order_env.extend_from_slice(extra);
        let mut fulfillment_env = vec![
            ("API_TOKEN_FILE", tokens.as_str()),
            // Slow steps: pause, re-address and resume find it picking.
            ("STEP_DELAY_MS", "2000"),
            ("QUERY_TIMEOUT_MS", "3000"),
        ];
        fulfillment_env.extend_from_slice(extra);
        let system = TestSystem::builder(label)
            .fulfillment(&fulfillment_env)
            .orders(&order_env)
            .start()
            .await?;
        Ok(Self {
            system,
            _tokens: dir,
            client: Client::new(),
        })
    }

    fn orders(&self) -> &Service {
        self.system.order_service()
    }

    fn fulfillment(&self) -> &Service {
        self.system.fulfillment_service()
    }

    /// Waits until the order's status is one of `want`.
    async fn wait_order(&self, workflow_id: &str, want: &[&str]) -> Result<Value> {
        let url = self.orders().url(&format!("/orders/{workflow_id}/status"));
        eventually(&format!("{workflow_id} in {want:?}"), DEADLINE, || async {
            let answer = self
                .client
                .send(Caller::Reader, Method::GET, &url, None, &[])
                .await?;
            ensure!(answer.status == StatusCode::OK, "{}", answer.body);
            let status = answer.body["status"].as_str().unwrap_or_default();
            Ok(want.contains(&status).then_some(answer.body))
        })
        .await
    }
}

fn order_body() -> Value {
    json!({
        "customerId": "cust-1",
        "customerEmail": "ann@example.com",
        "customerName": "Ann Example",
        "items": [
            {"productId": "product-1", "productName": "Thing", "quantity": 1, "price": 12.5},
            {"productId": "product-2", "productName": "Other", "quantity": 1, "price": 2.5}
        ],
        "shippingAddress": address("1 Main St"),
        "paymentMethod": "credit_card"
    })
}

fn address(street: &str) -> Value {
    json!({"street": street, "city": "Town", "state": "CA", "zipCode": "90210", "country": "USA"})
}

fn direct_fulfillment(order_id: &str) -> Value {
    json!({
        "orderId": order_id,
        "customerId": "cust-2",
        "items": [{"productId": "product-3", "productName": "Part", "quantity": 2, "price": 4.0}],
        "shippingAddress": address("9 Side St")
    })
}

/// Tries `method url` without a token (401, `WWW-Authenticate: Bearer`),
/// as a reader (403 for a write, 2xx for a read) and as an operator (2xx);
/// returns the operator's answer.
async fn try_each_role(
    system: &ClosedSystem,
    method: Method,
    url: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let what = format!("{method} {url}");
    let write = method != Method::GET;
    let anonymous = system
        .client
        .send(Caller::Anonymous, method.clone(), url, body, &[])
        .await?;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{what}");
    assert!(
        anonymous
            .challenge
            .as_deref()
            .is_some_and(|c| c.starts_with("Bearer")),
        "{what}: {:?}",
        anonymous.challenge
    );
    assert_eq!(anonymous.body["error"], "unauthorized", "{what}");
    let wrong = system
        .client
        .send(
            Caller::Anonymous,
            method.clone(),
            url,
            body,
            &[(
                "authorization",
                "Bearer not-a-token-of-this-service-0000000000",
            )],
        )
        .await?;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{what}");
    let reader = system
        .client
        .send(Caller::Reader, method.clone(), url, body, &[])
        .await?;
    if write {
        assert_eq!(
            reader.status,
            StatusCode::FORBIDDEN,
            "{what}: {}",
            reader.body
        );
        assert_eq!(reader.body["error"], "forbidden", "{what}");
        assert!(
            reader.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("operator")),
            "{what}: {}",
            reader.body
        );
    } else {
        assert!(
            reader.status.is_success(),
            "{what}: {} {}",
            reader.status,
            reader.body
        );
    }
    let operator = system
        .client
        .send(Caller::Operator, method.clone(), url, body, &[])
        .await?;
    assert!(
        operator.status.is_success(),
        "{what} as operator: {} {}",
        operator.status,
        operator.body
    );
    Ok(operator.body)
}

#[tokio::test]
async fn every_route_needs_a_token_and_every_write_an_operator() -> Result<()> {
    let system = ClosedSystem::start("sec-roles", &[]).await?;
    let orders = |path: &str| system.orders().url(path);
    let fulfillments = |path: &str| system.fulfillment().url(path);

    // Open without a token: probes, metrics, the API description, the page.
    for service in [system.orders(), system.fulfillment()] {
        for path in ["/", "/healthz", "/readyz", "/metrics", "/openapi.json"] {
            let answer = system
                .client
                .send(
                    Caller::Anonymous,
                    Method::GET,
                    &service.url(path),
                    None,
                    &[],
                )
                .await?;
            assert!(answer.status.is_success(), "{path}: {}", answer.status);
        }
    }

    // order-service, in an order in which each write succeeds for an
    // operator.
    let created = try_each_role(
        &system,
        Method::POST,
        &orders("/orders"),
        Some(&order_body()),
    )
    .await?;
    let kept = created["workflowId"]
        .as_str()
        .context("workflowId")?
        .to_owned();
    let demo = try_each_role(&system, Method::POST, &orders("/orders/demo"), None).await?;
    let dropped = demo["workflowId"]
        .as_str()
        .context("workflowId")?
        .to_owned();
    try_each_role(
        &system,
        Method::PATCH,
        &orders(&format!("/orders/{kept}")),
        Some(&json!({"customerEmail": "ann.new@example.com"})),
    )
    .await?;
    try_each_role(
        &system,
        Method::DELETE,
        &orders(&format!("/orders/{dropped}")),
        Some(&json!({"reason": "changed my mind"})),
    )
    .await?;
    // In progress: fulfillment-service has the fulfillment and said so.
    let order = system
        .wait_order(&kept, &["FULFILLMENT_IN_PROGRESS"])
        .await?;
    let fid = order["fulfillmentWorkflowId"]
        .as_str()
        .context("fulfillmentWorkflowId")?
        .to_owned();
    try_each_role(
        &system,
        Method::POST,
        &orders(&format!("/orders/{kept}/fulfillment/pause")),
        None,
    )
    .await?;
    try_each_role(
        &system,
        Method::PATCH,
        &orders(&format!("/orders/fulfillment/{fid}/shipping-address")),
        Some(&address("2 New St")),
    )
    .await?;
    try_each_role(
        &system,
        Method::POST,
        &orders(&format!("/orders/{kept}/fulfillment/resume")),
        None,
    )
    .await?;

    // fulfillment-service's own routes.
    let direct = format!("DIRECT-{}", uuid::Uuid::new_v4().simple());
    let made = try_each_role(
        &system,
        Method::POST,
        &fulfillments("/fulfillments"),
        Some(&direct_fulfillment(&direct)),
    )
    .await?;
    let id = made["fulfillmentWorkflowId"]
        .as_str()
        .context("fulfillmentWorkflowId")?
        .to_owned();
    for (method, path, body) in [
        (Method::POST, "pause", None),
        (
            Method::PATCH,
            "shipping-address",
            Some(address("3 Other St")),
        ),
        (Method::POST, "resume", None),
        (Method::POST, "cancel", Some(json!({"reason": "test"}))),
    ] {
        try_each_role(
            &system,
            method,
            &fulfillments(&format!("/fulfillments/{id}/{path}")),
            body.as_ref(),
        )
        .await?;
    }

    // Reads: a reader suffices, nobody without a token.
    for url in [
        orders("/orders"),
        orders(&format!("/orders/{kept}/status")),
        orders(&format!("/orders/fulfillment/{fid}/status")),
        fulfillments("/fulfillments"),
        fulfillments(&format!("/fulfillments/{id}/progress")),
    ] {
        try_each_role(&system, Method::GET, &url, None).await?;
    }
    Ok(())
}

#[tokio::test]
async fn cross_site_writes_are_refused() -> Result<()> {
    let system = ClosedSystem::start(
        "sec-origin",
        &[("CORS_ALLOWED_ORIGINS", "https://ops.example.com")],
    )
    .await?;
    for service in [system.orders(), system.fulfillment()] {
        let own_origin = service.base_url();
        let (write, body) = if service.name == "order-service" {
            (service.url("/orders/demo"), None)
        } else {
            (
                service.url("/fulfillments"),
                Some(direct_fulfillment(&format!(
                    "DIRECT-{}",
                    uuid::Uuid::new_v4().simple()
                ))),
            )
        };
        // Another site's page, even with a valid token: refused, and
        // nothing happens.
        let refused = system
            .client
            .send(
                Caller::Operator,
                Method::POST,
                &write,
                body.as_ref(),
                &[("origin", "https://evil.example")],
            )
            .await?;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
        assert_eq!(refused.body["error"], "cross_origin", "{}", refused.body);

        // A form post (no preflight in a browser): not JSON, refused.
        let form = system
            .client
            .http
            .post(&write)
            .bearer_auth(OPERATOR)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("reason=x")
            .send()
            .await?;
        assert_eq!(form.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let form: Value = form.json().await?;
        assert_eq!(form["error"], "unsupported_media_type", "{form}");

        // The service's own page and the configured origin may write.
        for origin in [own_origin.as_str(), "https://ops.example.com"] {
            let body = body
                .as_ref()
                .map(|_| direct_fulfillment(&format!("DIRECT-{}", uuid::Uuid::new_v4().simple())));
            let allowed = system
                .client
                .send(
                    Caller::Operator,
                    Method::POST,
                    &write,
                    body.as_ref(),
                    &[("origin", origin)],
                )
                .await?;
            assert!(
                allowed.status.is_success(),
                "{origin}: {} {}",
                allowed.status,
                allowed.body
            );
        }

        // CORS: the configured origin is let in by the preflight, another
        // is not.
        for (origin, allowed) in [
            ("https://ops.example.com", true),
            ("https://evil.example", false),
        ] {
            let preflight = system
                .client
                .http
                .request(Method::OPTIONS, &write)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
                .send()
                .await?;
            let allow_origin = preflight
                .headers()
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            assert_eq!(
                allow_origin.as_deref() == Some(origin),
                allowed,
                "{origin}: {allow_origin:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_direct_fulfillment_cannot_take_an_orders_place() -> Result<()> {
    let system = ClosedSystem::start("sec-direct", &[]).await?;
    let created = system
        .client
        .send(
            Caller::Operator,
            Method::POST,
            &system.orders().url("/orders"),
            Some(&order_body()),
            &[],
        )
        .await?;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let order_id = created.body["orderId"]
        .as_str()
        .context("orderId")?
        .to_owned();
    let workflow_id = created.body["workflowId"]
        .as_str()
        .context("workflowId")?
        .to_owned();

    // Before the order's own start (its stock check takes 2.5 s), an
    // operator tries to start its fulfillment with other items to another
    // address: refused.
    let mut hijack = direct_fulfillment(&order_id);
    hijack["shippingAddress"] = address("66 Attacker Way");
    let refused = system
        .client
        .send(
            Caller::Operator,
            Method::POST,
            &system.fulfillment().url("/fulfillments"),
            Some(&hijack),
            &[],
        )
        .await?;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(
        refused.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("order-service")),
        "{}",
        refused.body
    );

    // The order's own start then creates its fulfillment with its own
    // address.
    let order = system
        .wait_order(
            &workflow_id,
            &["FULFILLMENT_STARTED", "FULFILLMENT_IN_PROGRESS"],
        )
        .await?;
    let fid = order["fulfillmentWorkflowId"].as_str().context("fid")?;
    // The order says started once its signal is sent; fulfillment-service
    // has it a moment later.
    let url = system
        .fulfillment()
        .url(&format!("/fulfillments/{fid}/status"));
    let status = eventually("the order's fulfillment to exist", DEADLINE, || async {
        let answer = system
            .client
            .send(Caller::Reader, Method::GET, &url, None, &[])
            .await?;
        Ok((answer.status == StatusCode::OK).then_some(answer))
    })
    .await?;
    assert_eq!(
        status.body["shippingAddress"]["street"], "1 Main St",
        "{}",
        status.body
    );
    Ok(())
}

/// A broker user of a test's own, made from one of
/// `deploy/rabbitmq/users.json`'s users with the same permissions on the
/// test's vhost; deleted when dropped (users are broker-wide).
struct BrokerUser {
    name: String,
    password: String,
}

impl BrokerUser {
    async fn from_definitions(service: &str, vhost: &TestVhost) -> Result<Self> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rabbitmq/users.json");
        let definitions: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let user = definitions["users"]
            .as_array()
            .and_then(|users| users.iter().find(|u| u["name"] == service))
            .with_context(|| format!("{path} has no user {service}"))?;
        ensure!(
            user["tags"].as_array().is_some_and(Vec::is_empty),
            "{service} must have no tags (no management or administrator access): {user}"
        );
        let permission = definitions["permissions"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["user"] == service))
            .with_context(|| format!("{path} has no permissions for {service}"))?;
        let name = format!("{service}-{}", uuid::Uuid::new_v4().simple());
        let password = uuid::Uuid::new_v4().simple().to_string();
        let base = system_tests::management_base();
        let client = reqwest::Client::new();
        let response = client
            .put(format!("{base}/api/users/{}", system_tests::encode(&name)))
            .json(&json!({"password": password, "tags": ""}))
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "creating user {name}: {}",
            response.status()
        );
        let user = Self { name, password };
        let response = client
            .put(format!(
                "{base}/api/permissions/{}/{}",
                system_tests::encode(&vhost.name),
                system_tests::encode(&user.name)
            ))
            .json(&json!({
                "configure": permission["configure"],
                "write": permission["write"],
                "read": permission["read"],
            }))
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "permissions of {}: {}",
            user.name,
            response.status()
        );
        Ok(user)
    }

    fn amqp_url(&self, vhost: &TestVhost) -> String {
        let base = system_tests::amqp_base();
        let host = base
            .rsplit('@')
            .next()
            .unwrap_or("127.0.0.1:5672")
            .to_owned();
        format!(
            "amqp://{}:{}@{host}/{}",
            self.name,
            self.password,
            system_tests::encode(&vhost.name)
        )
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let url = format!(
            "{}/api/users/{}",
            system_tests::management_base(),
            system_tests::encode(&self.name)
        );
        // A blocking client cannot run on an async runtime's thread.
        let _ = std::thread::spawn(move || {
            let _ = reqwest::blocking::Client::new().delete(url).send();
        })
        .join();
    }
}

#[tokio::test]
async fn each_service_runs_under_its_own_broker_user_and_no_further() -> Result<()> {
    use lapin::options::BasicConsumeOptions;
    use lapin::types::FieldTable;
    use lapin::{Connection, ConnectionProperties};
    use shared_messages::topology;

    let vhost = TestVhost::create("sec-broker").await?;
    // The topology as an operator loads it (definitions.json), by guest.
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/definitions/{}",
            system_tests::management_base(),
            system_tests::encode(&vhost.name)
        ))
        .json(&topology::definitions(&topology::all(), &vhost.name))
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "import: {}",
        response.status()
    );
    let order_user = BrokerUser::from_definitions("order-service", &vhost).await?;
    let fulfillment_user = BrokerUser::from_definitions("fulfillment-service", &vhost).await?;

    let dir = tempfile::tempdir()?;
    let order_url = order_user.amqp_url(&vhost);
    let fulfillment_url = fulfillment_user.amqp_url(&vhost);
    let orders = Service::start_on(
        "order-service",
        &order_url,
        dir.path(),
        &[
            ("AMQP_DECLARE_PEER_QUEUES", "false"),
            ("INVENTORY_DELAY_MS", "20"),
            ("PAYMENT_DELAY_MS", "20"),
            ("POLL_INTERVAL_MS", "200"),
            ("QUERY_TIMEOUT_MS", "3000"),
        ],
    )
    .await?;
    let fulfillment = Service::start_on(
        "fulfillment-service",
        &fulfillment_url,
        dir.path(),
        &[
            ("STEP_DELAY_MS", "10"),
            ("QUERY_TIMEOUT_MS", "3000"),
            ("REPLICA_ID", "sec-1"),
        ],
    )
    .await?;
    orders.wait_ready().await?;
    // Ready means consuming: its own query queue, declared under its user.
    fulfillment.wait_ready().await?;
    let replica_queue = topology::fulfillment_query_queue("sec-1");

    // An order ships: signals, queries with replies, events, all allowed.
    let http = system_tests::Http::new();
    let (code, body) = http
        .post(&orders.url("/orders"), Some(&order_body()))
        .await?;
    ensure!(code == 201, "POST /orders: {code} {body}");
    let workflow_id = body["workflowId"]
        .as_str()
        .context("workflowId")?
        .to_owned();
    eventually("the order to ship", DEADLINE, || async {
        let (code, body) = http
            .get(&orders.url(&format!("/orders/{workflow_id}/status")))
            .await?;
        ensure!(code == 200, "{body}");
        Ok((body["status"] == "SHIPPED").then_some(()))
    })
    .await?;
    // A query through order-service answers too (direct reply-to).
    let (code, body) = http
        .get(&orders.url(&format!(
            "/orders/fulfillment/{}/status",
            topology_free_fulfillment_id(&workflow_id)
        )))
        .await?;
    assert_eq!(code, 200, "{body}");

    // order-service's user cannot read fulfillment's signals or queries,
    // nor fulfillment-service's user order-service's events.
    for (user, queue) in [
        (&order_url, topology::FULFILLMENT_SIGNALS_QUEUE),
        (&order_url, replica_queue.as_str()),
        (&fulfillment_url, topology::ORDER_FULFILLMENT_EVENTS_QUEUE),
    ] {
        let connection = Connection::connect(user, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let refused = channel
            .basic_consume(
                queue.into(),
                "intruder".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .err()
            .with_context(|| format!("consuming {queue} was allowed"))?;
        assert!(
            refused.to_string().contains("ACCESS_REFUSED"),
            "{queue}: {refused}"
        );
        let _ = connection.close(200, "done".into()).await;
    }
    // Nor may order-service's user declare a query queue of its own and
    // take queries meant for fulfillment-service.
    let connection = Connection::connect(&order_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let refused = channel
        .queue_declare(
            topology::fulfillment_query_queue("intruder")
                .as_str()
                .into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .err()
        .context("order-service's user declared a query queue")?;
    assert!(refused.to_string().contains("ACCESS_REFUSED"), "{refused}");
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// `fulfillment-<orderId>` for `order-workflow-<orderId>`.
fn topology_free_fulfillment_id(workflow_id: &str) -> String {
    let order_id = shared_messages::ids::order_id_from_workflow_id(workflow_id).unwrap_or_default();
    shared_messages::ids::fulfillment_workflow_id(order_id)
}

#[tokio::test]
async fn without_a_token_file_the_api_is_open_and_says_so() -> Result<()> {
    let vhost = TestVhost::create("sec-open").await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("fulfillment.log");
    let service =
        Service::start_logged("fulfillment-service", &vhost, dir.path(), &[], &log).await?;
    let answer = Client::new()
        .send(
            Caller::Anonymous,
            Method::GET,
            &service.url("/fulfillments"),
            None,
            &[],
        )
        .await?;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    eventually("the open-API warning in the log", DEADLINE, || async {
        Ok(service
            .log()
            .contains("API_TOKEN_FILE is not set")
            .then_some(()))
    })
    .await?;
    Ok(())
}

/// Whether `openssl s_client` completes a verified TLS handshake with
/// `127.0.0.1:port` trusting only `ca`.
fn handshake_verifies(port: u16, ca: &std::path::Path) -> Result<bool> {
    let output = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-brief",
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(ca)
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .output()
        .context("running openssl s_client")?;
    Ok(output.status.success())
}

#[tokio::test]
async fn amqps_to_rabbitmq_verified_against_a_ca_of_the_tests_own() -> Result<()> {
    use system_tests::tls::TestCa;
    let ca = TestCa::create()?;
    let stranger = TestCa::create()?;
    let tls_port = system_tests::free_port();
    let broker = system_tests::PrivateBroker::start_with_config(&format!(
        "listeners.ssl.default = {tls_port}\n\
         ssl_options.cacertfile = {}\n\
         ssl_options.certfile = {}\n\
         ssl_options.keyfile = {}\n\
         ssl_options.verify = verify_none\n\
         ssl_options.fail_if_no_peer_cert = false\n",
        ca.ca_cert().display(),
        ca.server_cert().display(),
        ca.server_key().display(),
    ))
    .await?;
    eventually("the TLS listener", DEADLINE, || async {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .ok()
            .map(|_| ()))
    })
    .await?;
    // The broker's certificate verifies against the test's CA only.
    assert!(handshake_verifies(tls_port, &ca.ca_cert())?);
    assert!(!handshake_verifies(tls_port, &stranger.ca_cert())?);

    // A service given amqps:// and the CA (SSL_CERT_FILE: what rustls's
    // native roots read) connects, declares its topology and is ready.
    let dir = tempfile::tempdir()?;
    let url = format!("amqps://guest:guest@localhost:{tls_port}/%2f");
    let ca_file = ca.ca_cert().display().to_string();
    let service = Service::start_on(
        "fulfillment-service",
        &url,
        dir.path(),
        &[("SSL_CERT_FILE", ca_file.as_str())],
    )
    .await?;
    service.wait_ready().await?;
    drop(service);
    drop(broker);
    Ok(())
}

#[tokio::test]
async fn postgres_store_over_tls_verified_against_a_ca_of_the_tests_own() -> Result<()> {
    use system_tests::tls::TestCa;
    let ca = TestCa::create()?;
    let stranger = TestCa::create()?;
    let server = system_tests::PrivatePostgres::start_tls(&ca.server_cert(), &ca.server_key())?;
    let vhost = TestVhost::create("sec-pg-tls").await?;
    let dir = tempfile::tempdir()?;

    // verify-full against the test's CA: the server's certificate is for
    // localhost, so the service connects, migrates and stores.
    let store = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        server.url("localhost"),
        ca.ca_cert().display()
    );
    let service = Service::start(
        "fulfillment-service",
        &vhost,
        dir.path(),
        &[("STORE_URL", store.as_str())],
    )
    .await?;
    service.wait_ready().await?;
    let http = system_tests::Http::new();
    let order_id = format!("DIRECT-{}", uuid::Uuid::new_v4().simple());
    let (code, body) = http
        .post(
            &service.url("/fulfillments"),
            Some(&direct_fulfillment(&order_id)),
        )
        .await?;
    ensure!(
        code == 201 || code == 202,
        "POST /fulfillments: {code} {body}"
    );
    let fid = shared_messages::ids::fulfillment_workflow_id(&order_id);
    let (code, body) = http
        .get(&service.url(&format!("/fulfillments/{fid}/status")))
        .await?;
    ensure!(code == 200, "GET the stored fulfillment: {code} {body}");
    // order-service with `require` (encrypted, certificate not checked),
    // on a database of its own on the same server.
    psql(
        &format!("{}?sslmode=disable", server.url("127.0.0.1")),
        "CREATE DATABASE orders",
    )?;
    let store = format!(
        "postgres://postgres@127.0.0.1:{}/orders?sslmode=require",
        server.port
    );
    let orders = Service::start(
        "order-service",
        &vhost,
        dir.path(),
        &[("STORE_URL", store.as_str())],
    )
    .await?;
    orders.wait_ready().await?;
    let (code, body) = http.get(&orders.url("/orders")).await?;
    ensure!(code == 200, "GET /orders from the TLS store: {code} {body}");
    // The server itself says both services' sessions are encrypted.
    let tls_sessions = psql(
        &format!("{}?sslmode=disable", server.url("127.0.0.1")),
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s \
         JOIN pg_stat_activity a USING (pid) \
         WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()",
    )?;
    let (encrypted, all) = tls_sessions.trim().split_once('|').context("two counts")?;
    ensure!(
        encrypted == all && all != "0",
        "the services' sessions, encrypted|all: {tls_sessions}"
    );
    drop(service);
    drop(orders);

    // A CA that did not sign the server's certificate: the service does
    // not come up, and says why.
    let store = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        server.url("localhost"),
        stranger.ca_cert().display()
    );
    let refused = tokio::process::Command::new(system_tests::binary_path("fulfillment-service"))
        .env("AMQP_URL", &vhost.amqp_url)
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("STORE_URL", &store)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, refused)
        .await
        .context("fulfillment-service kept running with an untrusted PostgreSQL")??;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("UnknownIssuer") || said.to_lowercase().contains("certificate"),
        "the refusal names the certificate: {said}"
    );
    drop(server);
    Ok(())
}

/// One value from `sql` run by `psql` against `url`.
fn psql(url: &str, sql: &str) -> Result<String> {
    let output = std::process::Command::new("psql")
        .args([url, "-XAtc", sql])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running psql")?;
    ensure!(
        output.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

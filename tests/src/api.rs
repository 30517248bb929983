//! HTTP clients for the tests: [`OrdersApi`] and [`FulfillmentApi`] with a
//! method per route of each service, and [`Http`] for any URL.
//!
//! Every route method answers a [`Reply`]: the status code and the body,
//! so a test asserts the status it expects, or takes the typed body with
//! [`Reply::ok`] (any other status is an error naming status and body).
//! The clients follow their service across restarts (see [`Endpoint`]).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use shared_messages::history::History;
use shared_messages::messages::{FulfillmentProgressView, FulfillmentStatusView};

use crate::eventually;
use crate::service::{Endpoint, Service};

/// The statuses an order never leaves.
pub const FINAL_ORDER_STATUSES: [&str; 3] = ["SHIPPED", "CANCELLED", "FAILED"];

/// A service's answer: the status code and the body as JSON (`Null` when
/// the body is empty or not JSON; [`Reply::text`] keeps it as sent).
#[derive(Debug, Clone)]
pub struct Reply {
    /// What was asked (`GET /orders/...`), for error messages.
    pub request: String,
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Reply {
    async fn read(request: String, response: reqwest::Response) -> Result<Self> {
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok(Self {
            request,
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        })
    }

    /// The body as `T` when the status is 2xx; any other status is an
    /// error with the status and the body.
    pub fn ok<T: DeserializeOwned>(self) -> Result<T> {
        if !(200..300).contains(&self.status) {
            bail!("{} answered {}: {}", self.request, self.status, self.text);
        }
        Ok(serde_json::from_value(self.body)?)
    }

    /// The body as `T` when the status is `want`, else an error.
    pub fn expect<T: DeserializeOwned>(self, want: u16) -> Result<T> {
        if self.status != want {
            bail!(
                "{} answered {} instead of {want}: {}",
                self.request,
                self.status,
                self.text
            );
        }
        Ok(serde_json::from_value(self.body)?)
    }

    /// Status and JSON body, as [`Http`] answers them.
    pub fn parts(self) -> (u16, Value) {
        (self.status, self.body)
    }
}

/// The answer to `POST /orders` and `POST /orders/demo`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    pub order_id: String,
    pub workflow_id: String,
    pub message: String,
}

/// The answer to `GET /fulfillments`.
#[derive(Debug, Clone, Deserialize)]
pub struct FulfillmentList {
    pub fulfillments: Vec<FulfillmentStatusView>,
    pub limit: u32,
    pub offset: u32,
}

/// The routes both services have.
#[derive(Clone, Debug)]
struct Client {
    endpoint: Endpoint,
    http: reqwest::Client,
}

impl Client {
    fn url(&self, path: &str) -> String {
        self.endpoint.url(path)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply> {
        let what = format!("{method} {path}");
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| what.clone())?;
        Reply::read(what, response).await
    }

    async fn get(&self, path: &str) -> Result<Reply> {
        self.send(reqwest::Method::GET, path, None).await
    }
}

macro_rules! common_routes {
    () => {
        /// A client of the service behind `endpoint`.
        pub fn new(endpoint: Endpoint) -> Self {
            Self::with_client(endpoint, reqwest::Client::new())
        }

        /// As [`Self::new`], with a client of the caller's (timeouts,
        /// default headers).
        pub fn with_client(endpoint: Endpoint, http: reqwest::Client) -> Self {
            Self(Client { endpoint, http })
        }

        /// A client of `service`, following it across restarts.
        pub fn of(service: &Service) -> Self {
            Self::new(service.endpoint())
        }

        /// The full URL of `path` on the service as it runs now.
        pub fn url(&self, path: &str) -> String {
            self.0.url(path)
        }

        /// Any request to `path`, for what has no method of its own.
        pub async fn send(
            &self,
            method: reqwest::Method,
            path: &str,
            body: Option<&Value>,
        ) -> Result<Reply> {
            self.0.send(method, path, body).await
        }

        /// `GET path`.
        pub async fn get(&self, path: &str) -> Result<Reply> {
            self.0.get(path).await
        }

        /// `GET /healthz`: the process answers.
        pub async fn healthz(&self) -> Result<Reply> {
            self.0.get("/healthz").await
        }

        /// `GET /readyz`: broker connected, store open.
        pub async fn readyz(&self) -> Result<Reply> {
            self.0.get("/readyz").await
        }

        /// `GET /metrics`, the Prometheus text (in [`Reply::text`]).
        pub async fn metrics(&self) -> Result<Reply> {
            self.0.get("/metrics").await
        }

        /// `GET /openapi.json`.
        pub async fn openapi(&self) -> Result<Reply> {
            self.0.get("/openapi.json").await
        }

        /// `GET /quarantine`: stored rows that could not be read.
        pub async fn quarantine(&self) -> Result<Reply> {
            self.0.get("/quarantine").await
        }
    };
}

/// order-service's HTTP API.
#[derive(Clone, Debug)]
pub struct OrdersApi(Client);

impl OrdersApi {
    common_routes!();

    /// `POST /orders`.
    pub async fn create(&self, order: &Value) -> Result<Reply> {
        self.0
            .send(reqwest::Method::POST, "/orders", Some(order))
            .await
    }

    /// `POST /orders/demo`: the original demo's sample order.
    pub async fn create_demo(&self) -> Result<Reply> {
        self.0
            .send(reqwest::Method::POST, "/orders/demo", None)
            .await
    }

    /// `POST /orders/demo`, which must answer 201.
    pub async fn place_demo(&self) -> Result<Created> {
        self.create_demo().await?.expect(201)
    }

    /// `POST /orders` with `order`, which must answer 201.
    pub async fn place(&self, order: &Value) -> Result<Created> {
        self.create(order).await?.expect(201)
    }

    /// `GET /orders/{workflow_id}/status`.
    pub async fn status(&self, workflow_id: &str) -> Result<Reply> {
        self.0.get(&format!("/orders/{workflow_id}/status")).await
    }

    /// `GET /orders/{workflow_id}/progress`.
    pub async fn progress(&self, workflow_id: &str) -> Result<Reply> {
        self.0.get(&format!("/orders/{workflow_id}/progress")).await
    }

    /// `GET /orders/{workflow_id}/history`.
    pub async fn history(&self, workflow_id: &str) -> Result<Reply> {
        self.0.get(&format!("/orders/{workflow_id}/history")).await
    }

    /// `GET /orders/{workflow_id}/history`, which must answer 200.
    pub async fn history_of(&self, workflow_id: &str) -> Result<History> {
        self.history(workflow_id).await?.expect(200)
    }

    /// `GET /orders?{query}` (e.g. `status=SHIPPED&limit=100`; empty for
    /// the first page).
    pub async fn list(&self, query: &str) -> Result<Reply> {
        if query.is_empty() {
            self.0.get("/orders").await
        } else {
            self.0.get(&format!("/orders?{query}")).await
        }
    }

    /// `DELETE /orders/{workflow_id}`, with `{"reason": reason}` when
    /// given.
    pub async fn cancel(&self, workflow_id: &str, reason: Option<&str>) -> Result<Reply> {
        let body = reason.map(|reason| json!({ "reason": reason }));
        self.0
            .send(
                reqwest::Method::DELETE,
                &format!("/orders/{workflow_id}"),
                body.as_ref(),
            )
            .await
    }

    /// Waits until the order's status is `want` and answers its status
    /// view; when it times out after the order ended otherwise (`SHIPPED`,
    /// `CANCELLED`, `FAILED`), the error says so.
    pub async fn wait_status(
        &self,
        workflow_id: &str,
        want: &str,
        deadline: Duration,
    ) -> Result<Value> {
        self.wait_status_in(workflow_id, &[want], deadline).await
    }

    /// As [`OrdersApi::wait_status`], for any status of `want`.
    pub async fn wait_status_in(
        &self,
        workflow_id: &str,
        want: &[&str],
        deadline: Duration,
    ) -> Result<Value> {
        let what = format!("{workflow_id} to be {}", want.join(" or "));
        eventually(&what, deadline, || async {
            let body: Value = self.status(workflow_id).await?.expect(200)?;
            let status = body["status"].as_str().unwrap_or_default();
            if want.contains(&status) {
                return Ok(Some(body));
            }
            if FINAL_ORDER_STATUSES.contains(&status) {
                bail!(
                    "order ended {status} instead of {}: {body}",
                    want.join(" or ")
                );
            }
            Ok(None)
        })
        .await
    }

    /// `PATCH /orders/{workflow_id}` (a new shipping address).
    pub async fn update(&self, workflow_id: &str, body: &Value) -> Result<Reply> {
        self.0
            .send(
                reqwest::Method::PATCH,
                &format!("/orders/{workflow_id}"),
                Some(body),
            )
            .await
    }

    /// `POST /orders/{workflow_id}/fulfillment/pause`.
    pub async fn pause(&self, workflow_id: &str) -> Result<Reply> {
        self.0
            .send(
                reqwest::Method::POST,
                &format!("/orders/{workflow_id}/fulfillment/pause"),
                None,
            )
            .await
    }

    /// `POST /orders/{workflow_id}/fulfillment/resume`.
    pub async fn resume(&self, workflow_id: &str) -> Result<Reply> {
        self.0
            .send(
                reqwest::Method::POST,
                &format!("/orders/{workflow_id}/fulfillment/resume"),
                None,
            )
            .await
    }

    /// `GET /orders/fulfillment/{fulfillment_id}/status`, asked of
    /// fulfillment-service over the bus.
    pub async fn fulfillment_status(&self, fulfillment_id: &str) -> Result<Reply> {
        self.0
            .get(&format!("/orders/fulfillment/{fulfillment_id}/status"))
            .await
    }

    /// `GET /orders/fulfillment/{fulfillment_id}/progress`.
    pub async fn fulfillment_progress(&self, fulfillment_id: &str) -> Result<Reply> {
        self.0
            .get(&format!("/orders/fulfillment/{fulfillment_id}/progress"))
            .await
    }

    /// `PATCH /orders/fulfillment/{fulfillment_id}/shipping-address`.
    pub async fn fulfillment_address(&self, fulfillment_id: &str, body: &Value) -> Result<Reply> {
        self.0
            .send(
                reqwest::Method::PATCH,
                &format!("/orders/fulfillment/{fulfillment_id}/shipping-address"),
                Some(body),
            )
            .await
    }
}

/// fulfillment-service's HTTP API.
#[derive(Clone, Debug)]
pub struct FulfillmentApi(Client);

impl FulfillmentApi {
    common_routes!();

    /// `POST /fulfillments`: a fulfillment started directly.
    pub async fn create(&self, body: &Value) -> Result<Reply> {
        self.0
            .send(reqwest::Method::POST, "/fulfillments", Some(body))
            .await
    }

    /// `GET /fulfillments?{query}` (e.g. `limit=500`; empty for the first
    /// page).
    pub async fn list(&self, query: &str) -> Result<Reply> {
        if query.is_empty() {
            self.0.get("/fulfillments").await
        } else {
            self.0.get(&format!("/fulfillments?{query}")).await
        }
    }

    /// `GET /fulfillments/{id}/status`.
    pub async fn status(&self, id: &str) -> Result<Reply> {
        self.0.get(&format!("/fulfillments/{id}/status")).await
    }

    /// The fulfillment's status, `None` when the service has none by `id`.
    pub async fn status_of(&self, id: &str) -> Result<Option<FulfillmentStatusView>> {
        let reply = self.status(id).await?;
        if reply.status == 404 {
            return Ok(None);
        }
        reply.expect(200).map(Some)
    }

    /// `GET /fulfillments/{id}/progress`.
    pub async fn progress(&self, id: &str) -> Result<Reply> {
        self.0.get(&format!("/fulfillments/{id}/progress")).await
    }

    /// The fulfillment's progress, `None` when the service has none by
    /// `id`.
    pub async fn progress_of(&self, id: &str) -> Result<Option<FulfillmentProgressView>> {
        let reply = self.progress(id).await?;
        if reply.status == 404 {
            return Ok(None);
        }
        reply.expect(200).map(Some)
    }

    /// `GET /fulfillments/{id}/history`.
    pub async fn history(&self, id: &str) -> Result<Reply> {
        self.0.get(&format!("/fulfillments/{id}/history")).await
    }

    /// `POST /fulfillments/{id}/pause`.
    pub async fn pause(&self, id: &str) -> Result<Reply> {
        self.signal(id, "pause", None).await
    }

    /// `POST /fulfillments/{id}/resume`.
    pub async fn resume(&self, id: &str) -> Result<Reply> {
        self.signal(id, "resume", None).await
    }

    /// `POST /fulfillments/{id}/cancel` with `{"reason": reason}`.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Reply> {
        self.signal(id, "cancel", Some(&json!({ "reason": reason })))
            .await
    }

    /// `PATCH /fulfillments/{id}/shipping-address`.
    pub async fn shipping_address(&self, id: &str, body: &Value) -> Result<Reply> {
        self.0
            .send(
                reqwest::Method::PATCH,
                &format!("/fulfillments/{id}/shipping-address"),
                Some(body),
            )
            .await
    }

    async fn signal(&self, id: &str, signal: &str, body: Option<&Value>) -> Result<Reply> {
        self.0
            .send(
                reqwest::Method::POST,
                &format!("/fulfillments/{id}/{signal}"),
                body,
            )
            .await
    }
}

/// A small JSON-over-HTTP client for any URL: every call returns the
/// status and the parsed body (or `Value::Null` when the body is not JSON).
#[derive(Clone, Default)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Self {
        Self::default()
    }

    async fn finish(response: reqwest::Response) -> Result<(u16, Value)> {
        let request = response.url().to_string();
        Ok(Reply::read(request, response).await?.parts())
    }

    pub async fn get(&self, url: &str) -> Result<(u16, Value)> {
        Self::finish(self.client.get(url).send().await?).await
    }

    pub async fn post(&self, url: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let mut request = self.client.post(url);
        if let Some(body) = body {
            request = request.json(body);
        }
        Self::finish(request.send().await?).await
    }

    pub async fn patch(&self, url: &str, body: &Value) -> Result<(u16, Value)> {
        Self::finish(self.client.patch(url).json(body).send().await?).await
    }

    pub async fn delete(&self, url: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let mut request = self.client.delete(url);
        if let Some(body) = body {
            request = request.json(body);
        }
        Self::finish(request.send().await?).await
    }

    /// Sends raw bytes with a content type, for malformed-body tests.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Value)> {
        let response = self
            .client
            .request(method, url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        Self::finish(response).await
    }
}

//! The HTTP surface, compatible with the original demo's routes.
//!
//! One module per resource, each with `configure`: [`orders`] (the order
//! routes), [`fulfillment`] (fulfillment by its id, through RabbitMQ),
//! [`health`], [`meta`] (`/metrics`, `/openapi.json`), [`ui`] (`GET /`, the
//! page for people), [`observe`] (spans, trace context and HTTP metrics). Every error is JSON (see [`error`]), including malformed
//! bodies, bad path or query parameters and unknown routes.

pub mod error;
pub mod fulfillment;
pub mod health;
pub mod meta;
pub mod observe;
pub mod orders;
pub mod quarantine;
pub mod ui;
pub mod views;

use std::time::Duration;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::actor::Orders;
pub use error::ApiError;

/// Largest accepted request body. An order with the maximum 200 lines of
/// long names fits well inside.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What every handler can reach.
pub struct AppState {
    pub orders: Orders,
    pub query_timeout: Duration,
}

impl AppState {
    pub fn timeout_ms(&self) -> u128 {
        self.query_timeout.as_millis()
    }
}

/// Every route, with JSON error handlers for bodies, paths and queries.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            .error_handler(json_error),
    )
    .app_data(web::PayloadConfig::default().limit(MAX_BODY_BYTES))
    .app_data(web::PathConfig::default().error_handler(path_error))
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .configure(health::configure)
    .configure(meta::configure)
    .configure(ui::configure)
    .configure(quarantine::configure)
    // fulfillment routes first: `/orders/fulfillment/...` is not an order id
    .configure(fulfillment::configure)
    .configure(orders::configure)
    .default_service(web::to(not_found));
}

fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::TooLarge(MAX_BODY_BYTES)
        }
        JsonPayloadError::ContentType => ApiError::InvalidBody(
            "the body must be JSON with Content-Type: application/json".into(),
        ),
        JsonPayloadError::Deserialize(e) => {
            ApiError::InvalidBody(format!("invalid JSON body: {e}"))
        }
        other => ApiError::InvalidBody(format!("cannot read the body: {other}")),
    };
    api.into()
}

fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidParameter(format!("invalid path: {err}")).into()
}

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidParameter(format!("invalid query string: {err}")).into()
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({
        "error": "not_found",
        "message": format!("no route for {} {}", req.method(), req.path()),
    }))
}

/// A JSON body that may be absent (e.g. `DELETE` with an optional reason).
pub fn optional_json<T: serde::de::DeserializeOwned>(
    body: Result<web::Bytes, actix_web::Error>,
) -> Result<Option<T>, ApiError> {
    let body = body.map_err(|e| {
        if e.as_response_error().status_code() == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::InvalidBody(format!("cannot read the body: {e}"))
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| ApiError::InvalidBody(format!("invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_web::{test, App};
    use serde_json::Value;
    use shared_messages::bus::outbox::OutboxSignal;
    use shared_messages::bus::{Bus, BusConfig};

    use super::*;
    use crate::actor::Timings;
    use crate::config::StoreLocation;
    use crate::store::{SqliteStore, Store};

    /// The app over an in-memory store and a bus that never connects.
    fn state() -> web::Data<AppState> {
        let store =
            Arc::new(SqliteStore::open(&StoreLocation::SqliteMemory).expect("memory store"));
        let bus = Bus::new(BusConfig::new(
            "amqp://127.0.0.1:1/%2f",
            "order-service-test",
            shared_messages::topology::order_service(),
        ));
        let timings = Timings {
            inventory_delay: Duration::from_secs(60),
            payment_delay: Duration::from_secs(60),
            poll_interval: Duration::from_secs(60),
            query_timeout: Duration::from_millis(100),
            payment_decline_rate: 0.0,
            ..Timings::default()
        };
        let orders = Orders::new(
            actix::Arbiter::current(),
            store as Arc<dyn Store>,
            bus,
            OutboxSignal::new(),
            timings,
        )
        .expect("the store writer thread starts");
        web::Data::new(AppState {
            orders,
            query_timeout: Duration::from_millis(100),
        })
    }

    async fn call(req: test::TestRequest) -> (u16, Value) {
        let app = test::init_service(App::new().app_data(state()).configure(configure)).await;
        let res = test::call_service(&app, req.to_request()).await;
        let code = res.status().as_u16();
        let body = test::read_body(res).await;
        (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    #[actix_web::test]
    async fn malformed_and_oversized_bodies_answer_json() {
        let (code, body) = call(
            test::TestRequest::post()
                .uri("/orders")
                .insert_header(("content-type", "application/json"))
                .set_payload("{nope"),
        )
        .await;
        assert_eq!((code, body["error"].as_str()), (400, Some("invalid_body")));
        let (code, body) = call(
            test::TestRequest::post()
                .uri("/orders")
                .insert_header(("content-type", "application/json"))
                .set_payload(vec![b' '; MAX_BODY_BYTES + 1]),
        )
        .await;
        assert_eq!(
            (code, body["error"].as_str()),
            (413, Some("payload_too_large"))
        );
        let (code, body) = call(
            test::TestRequest::delete()
                .uri("/orders/order-workflow-ORD-1-X")
                .insert_header(("content-type", "application/json"))
                .set_payload("{\"reason\": 3}"),
        )
        .await;
        assert_eq!((code, body["error"].as_str()), (400, Some("invalid_body")));
    }

    #[actix_web::test]
    async fn unknown_orders_routes_and_statuses() {
        let (code, body) =
            call(test::TestRequest::get().uri("/orders/order-workflow-ORD-1-X/status")).await;
        assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
        let (code, _) = call(test::TestRequest::get().uri("/orders?status=LOST")).await;
        assert_eq!(code, 400);
        let (code, _) = call(test::TestRequest::get().uri("/orders?limit=0")).await;
        assert_eq!(code, 400);
        let (code, body) = call(test::TestRequest::get().uri("/orders?status=SHIPPED")).await;
        assert_eq!((code, body["total"].as_u64()), (200, Some(0)));
        let (code, body) = call(test::TestRequest::get().uri("/nowhere")).await;
        assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    }

    #[actix_web::test]
    async fn history_of_an_unknown_order_is_404_and_quarantine_lists_nothing() {
        let (code, body) =
            call(test::TestRequest::get().uri("/orders/order-workflow-ORD-1-X/history")).await;
        assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
        let (code, body) = call(test::TestRequest::get().uri("/quarantine")).await;
        assert_eq!(code, 200);
        assert_eq!(body["items"], serde_json::json!([]));
    }

    #[actix_web::test]
    async fn waits_on_unknown_or_finished_orders_leave_no_watcher() {
        let state = state();
        let app = test::init_service(App::new().app_data(state.clone()).configure(configure)).await;
        for _ in 0..3 {
            let req = test::TestRequest::get()
                .uri("/orders/order-workflow-ORD-1-X/status?waitFor=SHIPPED&timeoutMs=50")
                .to_request();
            let res = test::call_service(&app, req).await;
            assert_eq!(res.status().as_u16(), 404);
        }
        assert_eq!(state.orders.watched(), 0);
        // a finished order answers at once
        let (mut order, events) =
            crate::workflow::create("ORD-2", crate::validation::demo_order(), chrono::Utc::now());
        order.status = crate::workflow::OrderStatus::Cancelled;
        state
            .orders
            .store()
            .insert(&order, &events)
            .await
            .expect("insert");
        let req = test::TestRequest::get()
            .uri("/orders/ORD-2/status?waitFor=SHIPPED&timeoutMs=5000")
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(state.orders.watched(), 0);
        // an open order's wait that runs out removes its watcher
        let (open, events) =
            crate::workflow::create("ORD-3", crate::validation::demo_order(), chrono::Utc::now());
        state
            .orders
            .store()
            .insert(&open, &events)
            .await
            .expect("insert");
        let req = test::TestRequest::get()
            .uri("/orders/ORD-3/status?waitFor=SHIPPED&timeoutMs=50")
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(state.orders.watched(), 0);
        let req = test::TestRequest::get()
            .uri("/orders/ORD-2/history")
            .to_request();
        let body: Value = test::call_and_read_body_json(&app, req).await;
        assert_eq!(body["workflowId"], "order-workflow-ORD-2");
        assert_eq!(body["events"][0]["type"], "OrderCreated");
    }

    #[actix_web::test]
    async fn without_the_broker_writes_answer_503_and_readyz_says_why() {
        let (code, body) = call(test::TestRequest::post().uri("/orders/demo")).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (503, Some("broker_unavailable"))
        );
        let (code, body) =
            call(test::TestRequest::get().uri("/orders/fulfillment/fulfillment-ORD-1/status"))
                .await;
        assert_eq!(code, 503, "{body}");
        let (code, body) = call(test::TestRequest::get().uri("/readyz")).await;
        assert_eq!((code, body["broker"].as_bool()), (503, Some(false)));
        let (code, _) = call(test::TestRequest::get().uri("/healthz")).await;
        assert_eq!(code, 200);
        let app = test::init_service(App::new().app_data(state()).configure(configure)).await;
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
        let text = String::from_utf8(test::read_body(res).await.to_vec()).expect("utf-8");
        assert!(text.contains("order_service_broker_connected 0"), "{text}");
    }
}

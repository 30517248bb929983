//! The HTTP surface, compatible with the original demo's routes.
//!
//! One module per resource, each with `configure`: [`orders`] (the order
//! routes), [`fulfillment`] (fulfillment by its id, through RabbitMQ),
//! [`meta`] (the OpenAPI document). The operations routes (health,
//! metrics, `/openapi.json`, `/quarantine`, the page), the error
//! vocabulary, paging, the body limit and the request spans are the
//! kit's ([`service_kit::http`]); this module says what they read here
//! ([`AppState`] as a [`Surface`]). Every error is JSON, including
//! malformed bodies, bad path or query parameters and unknown routes.

pub mod error;
pub mod fulfillment;
pub mod meta;
pub mod orders;
pub mod owner;
pub mod views;

use std::time::Duration;

use actix_web::web;
use service_kit::http::ui::Page;
use service_kit::http::Surface;

use crate::actor::{Orders, Quarantined};
use crate::metrics::METRICS;
use crate::store::StoreError;
use crate::workflow::OrderStatus;

service_kit::http_spans!(HttpSpans);

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

/// The page for people: the orders, newest first.
static PAGE: Page = Page {
    title: "order-service",
    subtitle: "orders, newest first",
    columns: [
        "Order",
        "Status",
        "Step",
        "Progress",
        "Fulfillment",
        "Updated",
    ],
    one: "an order",
    list: "/orders",
    id: "orderId",
    progress_id: "workflowId",
    cells: r#"{
  step: (o, p) => (p && p.stepName) || o.currentStep,
  extra: (o) => o.fulfillmentStatus ? "fulfillment " + o.fulfillmentStatus + (o.trackingNumber ? " · " + o.trackingNumber : "") : (o.error || o.cancellationReason || ""),
}"#,
};

#[async_trait::async_trait(?Send)]
impl Surface for AppState {
    const PAGE: &'static Page = &PAGE;

    fn broker_not_ready(&self) -> Option<String> {
        self.orders.bus().not_ready_reason()
    }

    async fn store_answers(&self) -> bool {
        self.orders.store().ping().await.is_ok()
    }

    async fn scrape(&self) -> String {
        let store = self.orders.store();
        let counts = store.count_by_status().await.ok().map(|counts| {
            counts
                .into_iter()
                .map(|(status, n)| (status.as_str().to_owned(), n))
                .collect()
        });
        METRICS.read_store(
            OrderStatus::ALL.iter().map(|s| s.as_str()),
            counts,
            store.outbox_len().await.ok(),
        );
        METRICS.encode()
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        meta::document(env!("CARGO_PKG_VERSION"))
    }

    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.orders.quarantined().await
    }

    fn partitions(&self) -> Option<Vec<u16>> {
        self.orders.held().map(|held| held.owned())
    }
}

/// The service's own routes (the kit's [`service_kit::http::surface`]
/// adds the operations routes before them).
pub fn configure(cfg: &mut web::ServiceConfig) {
    // fulfillment routes first: `/orders/fulfillment/...` is not an order id
    cfg.configure(fulfillment::configure)
        .configure(orders::configure);
}

#[cfg(test)]
mod tests {
    use actix_web::test;
    use serde_json::Value;

    use super::*;
    use service_kit::http::MAX_BODY_BYTES;

    /// The app over an in-memory store and a bus that never connects.
    fn state() -> web::Data<AppState> {
        web::Data::new(AppState {
            orders: crate::actor::testing::orders(),
            query_timeout: Duration::from_millis(100),
        })
    }

    async fn call(req: test::TestRequest) -> (u16, Value) {
        let app = service_kit::http::test_service(state(), configure).await;
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
        assert_eq!((code, body["error"].as_str()), (400, Some("invalid_field")));
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
        let app = service_kit::http::test_service(state.clone(), configure).await;
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
    async fn without_the_broker_writes_are_accepted_queries_answer_503_and_readyz_says_why() {
        // The order is stored with what it sends; the outbox sends it once
        // RabbitMQ is back.
        let (code, body) = call(test::TestRequest::post().uri("/orders/demo")).await;
        assert_eq!(code, 201, "{body}");
        let (code, body) =
            call(test::TestRequest::get().uri("/orders/fulfillment/fulfillment-ORD-1/status"))
                .await;
        assert_eq!(code, 503, "{body}");
        let (code, body) = call(test::TestRequest::get().uri("/readyz")).await;
        assert_eq!((code, body["broker"].as_bool()), (503, Some(false)));
        let (code, _) = call(test::TestRequest::get().uri("/healthz")).await;
        assert_eq!(code, 200);
        let app = service_kit::http::test_service(state(), configure).await;
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
        let text = String::from_utf8(test::read_body(res).await.to_vec()).expect("utf-8");
        assert!(text.contains("order_service_broker_connected 0"), "{text}");
    }

    #[actix_web::test]
    async fn pause_and_resume_answer_what_the_order_decides() {
        let state = state();
        let app = service_kit::http::test_service(state.clone(), configure).await;
        let post = |uri: &str| test::TestRequest::post().uri(uri).to_request();
        // before the hand-over: nothing to pause or resume
        let (pending, events) =
            crate::workflow::create("ORD-4", crate::validation::demo_order(), chrono::Utc::now());
        state
            .orders
            .store()
            .insert(&pending, &events)
            .await
            .expect("insert");
        for action in ["pause", "resume"] {
            let res =
                test::call_service(&app, post(&format!("/orders/ORD-4/fulfillment/{action}")))
                    .await;
            assert_eq!(res.status().as_u16(), 409, "{action}");
            let body: Value = test::read_body_json(res).await;
            assert_eq!(
                body["message"],
                "fulfillment has not started yet; the order is in PENDING"
            );
        }
        // after it: forwarded to the fulfillment, so the broker is needed
        let (mut handed_over, events) =
            crate::workflow::create("ORD-5", crate::validation::demo_order(), chrono::Utc::now());
        handed_over.status = crate::workflow::OrderStatus::Shipped;
        handed_over.fulfillment_workflow_id = Some("fulfillment-ORD-5".into());
        state
            .orders
            .store()
            .insert(&handed_over, &events)
            .await
            .expect("insert");
        let res = test::call_service(&app, post("/orders/ORD-5/fulfillment/pause")).await;
        assert_eq!(res.status().as_u16(), 503);
        // no such order
        let res = test::call_service(&app, post("/orders/ORD-6/fulfillment/resume")).await;
        assert_eq!(res.status().as_u16(), 404);
    }

    #[actix_web::test]
    async fn every_documented_route_is_served() {
        let app = service_kit::http::test_service(state(), configure).await;
        let served = service_kit::http::routes::check_served(&app, &meta::document("test")).await;
        assert!(served.as_ref().is_ok_and(|n| *n >= 19), "{served:?}");
    }
}

//! The HTTP control surface (actix-web): [`fulfillments`] (the
//! fulfillment routes) and [`meta`] (the OpenAPI document). The operations
//! routes (health, metrics, `/openapi.json`, `/quarantine`, the page), the
//! error vocabulary, paging, the body limit and the request spans are the
//! kit's ([`service_kit::http`]); this module says what they read here
//! ([`AppState`] as a [`Surface`]).

mod fulfillments;
pub mod meta;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use message_bus::Bus;
use service_kit::http::ui::Page;
use service_kit::http::{ApiError, Surface};
use service_kit::partitions::Held;
use shared_messages::messages::{FulfillmentStatus, FulfillmentStatusView};

use crate::actor::Registry;
use crate::metrics::METRICS;
use crate::store::{Quarantined, StoreError};
use crate::workflow::Fulfillment;

service_kit::http_spans!(HttpSpans);

/// What handlers share.
pub struct AppState {
    pub registry: Registry,
    pub bus: Bus,
    /// The partitions this replica owns, when it is one of several
    /// replicas (PostgreSQL); a signal for a fulfillment it does not own
    /// goes to the owner through the broker.
    pub held: Option<Arc<Held>>,
    /// How long a signal sent to the owner waits for its answer.
    pub query_timeout: Duration,
}

impl AppState {
    async fn find(&self, id: &str) -> Result<Fulfillment, ApiError> {
        self.registry
            .load(id)
            .await
            .map_err(ApiError::store)?
            .ok_or_else(|| ApiError::NotFound(format!("no fulfillment {id}")))
    }

    async fn view(&self, id: &str) -> Result<FulfillmentStatusView, ApiError> {
        Ok(self.find(id).await?.status_view())
    }
}

/// The page for people: the fulfillments, newest first.
static PAGE: Page = Page {
    title: "fulfillment-service",
    subtitle: "fulfillments, newest first",
    columns: [
        "Fulfillment",
        "Status",
        "Step",
        "Progress",
        "Shipment",
        "Updated",
    ],
    one: "a fulfillment",
    list: "/fulfillments",
    id: "fulfillmentWorkflowId",
    progress_id: "fulfillmentWorkflowId",
    cells: r#"{
  step: (f, p) => p ? p.stepName + (p.totalItems ? " (" + p.itemsPicked + "/" + p.totalItems + " items)" : "") : f.currentStep,
  extra: (f) => f.trackingNumber ? f.trackingNumber + (f.shippingCarrier ? " · " + f.shippingCarrier : "") : (f.error || f.cancellationReason || ""),
}"#,
};

#[async_trait::async_trait(?Send)]
impl Surface for AppState {
    const PAGE: &'static Page = &PAGE;

    fn broker_not_ready(&self) -> Option<String> {
        self.bus.not_ready_reason()
    }

    async fn store_answers(&self) -> bool {
        self.registry.ping_store().await.is_ok()
    }

    async fn scrape(&self) -> String {
        let store = self.registry.store();
        METRICS.read_store(
            FulfillmentStatus::ALL.iter().map(|s| s.as_str()),
            store.count_by_status().await.ok(),
            store.outbox_len().await.ok(),
        );
        METRICS.encode()
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        meta::document(env!("CARGO_PKG_VERSION"))
    }

    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.registry.store().quarantined().await
    }

    fn partitions(&self) -> Option<Vec<u16>> {
        self.held.as_ref().map(|held| held.owned())
    }
}

/// The service's own routes (the kit's [`service_kit::http::surface`]
/// adds the operations routes before them).
pub fn configure(cfg: &mut web::ServiceConfig) {
    fulfillments::configure(cfg);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use actix_web::test;
    use message_bus::outbox::OutboxSignal;
    use message_bus::BusConfig;
    use serde_json::{json, Value};
    use shared_messages::topology::Topology;

    use super::*;
    use crate::actor::Deps;
    use crate::store::{Batched, SqliteStore, Store, Writer};
    use crate::workflow::Timing;

    /// Handlers over an in-memory store and a bus that never connects;
    /// steps take a minute, so nothing moves during a test.
    fn state() -> web::Data<AppState> {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(":memory:").expect("in-memory store"));
        let outbox = OutboxSignal::new();
        let deps = Deps {
            writer: Writer::start("store-writer", Batched(store.clone()), outbox.clone())
                .expect("writer thread"),
            store,
            outbox,
            timing: Timing {
                step_delay: Duration::from_secs(60),
            },
        };
        let registry = Registry::new(deps, actix::System::current().arbiter().clone());
        let bus = Bus::new(BusConfig::new(
            "amqp://127.0.0.1:1/%2f",
            "http-test",
            Topology::default(),
        ));
        web::Data::new(AppState {
            registry,
            bus,
            held: None,
            query_timeout: Duration::from_secs(1),
        })
    }

    fn order(order_id: &str) -> Value {
        json!({
            "orderId": order_id,
            "customerId": "c-1",
            "items": [{"productId": "p-1", "productName": "Widget", "quantity": 2, "price": 9.5}],
            "shippingAddress": {"street": "1 Main St", "city": "Springfield", "state": "IL",
                                "zipCode": "62701", "country": "USA"}
        })
    }

    macro_rules! call {
        ($app:expr, $req:expr) => {{
            let response = test::call_service(&$app, $req.to_request()).await;
            let status = response.status().as_u16();
            let body: Value = test::read_body_json(response).await;
            (status, body)
        }};
    }

    #[actix_web::test]
    async fn the_lifecycle_over_http() {
        let app = service_kit::http::test_service(state(), configure).await;
        let (code, body) = call!(
            app,
            test::TestRequest::post()
                .uri("/fulfillments")
                .set_json(order("ORD-1"))
        );
        assert_eq!(code, 201, "{body}");
        assert_eq!(body["fulfillmentWorkflowId"], "fulfillment-ORD-1");
        assert_eq!(body["status"], "PICKING");
        let (code, _) = call!(
            app,
            test::TestRequest::post()
                .uri("/fulfillments")
                .set_json(order("ORD-1"))
        );
        assert_eq!(code, 200, "idempotent");

        let (code, body) = call!(
            app,
            test::TestRequest::get().uri("/fulfillments/fulfillment-ORD-1/progress")
        );
        assert_eq!(code, 200);
        assert_eq!(
            (
                &body["currentStep"],
                &body["totalSteps"],
                &body["percentage"]
            ),
            (&json!(1), &json!(5), &json!(0))
        );

        for _ in 0..2 {
            let (code, body) = call!(
                app,
                test::TestRequest::post().uri("/fulfillments/fulfillment-ORD-1/pause")
            );
            assert_eq!((code, &body["status"]), (200, &json!("PAUSED")), "{body}");
        }
        let (code, body) = call!(
            app,
            test::TestRequest::post().uri("/fulfillments/fulfillment-ORD-1/resume")
        );
        assert_eq!((code, &body["status"]), (200, &json!("PICKING")), "{body}");

        let (code, body) = call!(
            app,
            test::TestRequest::patch()
                .uri("/fulfillments/fulfillment-ORD-1/shipping-address")
                .set_json(json!({"street": "2 New St", "city": "a", "state": "b", "zipCode": "c", "country": "d"}))
        );
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["shippingAddress"]["street"], "2 New St");

        let (code, body) = call!(
            app,
            test::TestRequest::post().uri("/fulfillments/fulfillment-ORD-1/cancel")
        );
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], "CANCELLED");
        assert_eq!(
            body["cancellationReason"],
            "cancelled through the fulfillment API"
        );
        let (code, body) = call!(
            app,
            test::TestRequest::post().uri("/fulfillments/fulfillment-ORD-1/pause")
        );
        assert_eq!((code, &body["error"]), (409, &json!("conflict")), "{body}");

        let (code, body) = call!(
            app,
            test::TestRequest::get().uri("/fulfillments?status=cancelled")
        );
        assert_eq!(code, 200);
        assert_eq!(
            body["fulfillments"].as_array().map(Vec::len),
            Some(1),
            "{body}"
        );
    }

    #[actix_web::test]
    async fn history_and_quarantine_over_http() {
        let data = state();
        let app = service_kit::http::test_service(data.clone(), configure).await;
        let (code, _) = call!(
            app,
            test::TestRequest::post()
                .uri("/fulfillments")
                .set_json(order("ORD-1"))
        );
        assert_eq!(code, 201);
        let (code, body) = call!(
            app,
            test::TestRequest::post()
                .uri("/fulfillments/fulfillment-ORD-1/cancel")
                .set_json(json!({"reason": "out of stock at the warehouse"}))
        );
        assert_eq!(
            (code, &body["status"]),
            (200, &json!("CANCELLED")),
            "{body}"
        );
        // Cancelled directly: its CANCELLED event, with the reason, is in the outbox.
        let pending = data
            .registry
            .store()
            .outbox()
            .pending(100)
            .await
            .expect("outbox");
        let cancelled = pending
            .iter()
            .find(|m| m.route.routing_key == "fulfillment.status.cancelled")
            .expect("a CANCELLED status event");
        let event: Value = serde_json::from_slice(&cancelled.envelope.to_json()).expect("json");
        assert_eq!(
            event["payload"]["fulfillment"]["cancellationReason"], "out of stock at the warehouse",
            "{event}"
        );

        let (code, body) = call!(
            app,
            test::TestRequest::get().uri("/fulfillments/fulfillment-ORD-1/history")
        );
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["workflowId"], "fulfillment-ORD-1");
        let kinds: Vec<&str> = body["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["type"].as_str())
            .collect();
        assert_eq!(
            kinds,
            [
                "StartFulfillment",
                "FulfillmentCreated",
                "StatusChanged",
                "CancelFulfillment",
                "StatusChanged"
            ],
            "{body}"
        );
        assert_eq!(
            body["events"][4]["detail"]["reason"],
            "out of stock at the warehouse"
        );
        let (code, body) = call!(
            app,
            test::TestRequest::get().uri("/fulfillments/fulfillment-nope/history")
        );
        assert_eq!((code, &body["error"]), (404, &json!("not_found")), "{body}");
        let (code, body) = call!(app, test::TestRequest::get().uri("/quarantine"));
        assert_eq!((code, body), (200, json!({"items": []})));
    }

    #[actix_web::test]
    async fn bad_input_answers_json_errors() {
        let app = service_kit::http::test_service(state(), configure).await;
        let cases = [
            (
                test::TestRequest::post()
                    .uri("/fulfillments")
                    .insert_header(("content-type", "application/json"))
                    .set_payload("{oops"),
                400,
                "invalid_body",
            ),
            (
                test::TestRequest::post()
                    .uri("/fulfillments")
                    .set_json(json!({"orderId": "x"})),
                400,
                "invalid_field",
            ),
            (
                test::TestRequest::post()
                    .uri("/fulfillments")
                    .set_json(json!({"orderId": 5})),
                400,
                "invalid_field",
            ),
            (
                test::TestRequest::post()
                    .uri("/fulfillments")
                    .insert_header(("content-type", "text/plain"))
                    .set_payload("hi"),
                415,
                "unsupported_media_type",
            ),
            (
                test::TestRequest::post()
                    .uri("/fulfillments")
                    .insert_header(("content-type", "application/json"))
                    .set_payload(vec![b' '; service_kit::http::MAX_BODY_BYTES + 1]),
                413,
                "payload_too_large",
            ),
            (
                test::TestRequest::get().uri("/fulfillments?status=LOST"),
                400,
                "invalid_parameter",
            ),
            (
                test::TestRequest::get().uri("/fulfillments?limit=-1"),
                400,
                "invalid_parameter",
            ),
            (
                test::TestRequest::get().uri("/fulfillments?limit=0"),
                400,
                "invalid_parameter",
            ),
            (
                test::TestRequest::get().uri("/fulfillments/nope/status"),
                404,
                "not_found",
            ),
            (
                test::TestRequest::post().uri("/fulfillments/nope/resume"),
                404,
                "not_found",
            ),
            (
                test::TestRequest::post()
                    .uri("/fulfillments/nope/cancel")
                    .insert_header(("content-type", "application/json"))
                    .set_payload("[1"),
                400,
                "invalid_field",
            ),
            (
                test::TestRequest::get().uri("/no/such/route"),
                404,
                "not_found",
            ),
            (test::TestRequest::get().uri("/readyz"), 503, "not_ready"),
        ];
        for (request, want_code, want_error) in cases {
            let (code, body) = call!(app, request);
            assert_eq!(
                (code, body["error"].as_str()),
                (want_code, Some(want_error)),
                "{body}"
            );
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
        }
        let mut empty = order("ORD-2");
        empty["items"] = json!([]);
        let (code, body) = call!(
            app,
            test::TestRequest::post()
                .uri("/fulfillments")
                .set_json(empty)
        );
        assert_eq!(code, 400);
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("items"),
            "{body}"
        );
        let (code, body) = call!(app, test::TestRequest::get().uri("/healthz"));
        assert_eq!((code, body), (200, json!({"status": "ok"})));
        let (code, body) = call!(app, test::TestRequest::get().uri("/openapi.json"));
        assert_eq!(code, 200);
        assert!(
            body["paths"]["/fulfillments/{id}/pause"]["post"].is_object(),
            "{body}"
        );
        let response =
            test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
        assert_eq!(response.status().as_u16(), 200);
        let text = String::from_utf8(test::read_body(response).await.to_vec()).expect("utf-8");
        assert!(
            text.contains("fulfillment_service_fulfillments{status=\"PICKING\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("fulfillment_service_broker_connected 0"),
            "{text}"
        );
    }

    #[actix_web::test]
    async fn every_documented_route_is_served() {
        let app = service_kit::http::test_service(state(), configure).await;
        let served = service_kit::http::routes::check_served(&app, &meta::document("test")).await;
        assert!(served.as_ref().is_ok_and(|n| *n >= 15), "{served:?}");
    }
}

//! `GET /`: a read-only page for people that lists the orders with their
//! status, step and progress, refreshing itself every 2 s from `GET /orders`
//! (and `GET /orders/{id}/progress` for open ones); a click on an order
//! opens its history as a timeline. Everything is inline:
//! no external assets, so it works without internet.

use actix_web::{web, HttpResponse};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(page));
}

const CONFIG: &str = r#"{
  list: "/orders?limit=100",
  key: "orders",
  id: "orderId",
  noun: "orders",
  progress: (o) => "/orders/" + encodeURIComponent(o.workflowId) + "/progress",
  history: (o) => "/orders/" + encodeURIComponent(o.workflowId) + "/history",
  step: (o, p) => (p && p.stepName) || o.currentStep,
  extra: (o) => o.fulfillmentStatus ? "fulfillment " + o.fulfillmentStatus + (o.trackingNumber ? " · " + o.trackingNumber : "") : (o.error || o.cancellationReason || ""),
}"#;

/// The page, with its settings filled in.
pub fn html() -> String {
    include_str!("ui.html")
        .replace("__TITLE__", "order-service")
        .replace("__SUBTITLE__", "orders, newest first")
        .replace(
            "__HEAD__",
            "<th>Order</th><th>Status</th><th>Step</th><th>Progress</th><th>Fulfillment</th><th>Updated</th>",
        )
        .replace("__CONFIG__", CONFIG)
}

/// The orders page (HTML, refreshes itself).
#[utoipa::path(get, path = "/", tag = "operations", operation_id = "page",
    responses((status = 200, description = "an HTML page listing the orders", content_type = "text/html", body = String)))]
pub(crate) async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(html())
}

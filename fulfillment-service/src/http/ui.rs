//! `GET /`: a read-only page for people that lists the fulfillments with
//! their status, step and progress, refreshing itself every 2 s from
//! `GET /fulfillments` (and `GET /fulfillments/{id}/progress` for open
//! ones); a click on a fulfillment shows its history as a timeline
//! (`GET /fulfillments/{id}/history`). Everything is inline:
//! no external assets, so it works without internet.

use actix_web::{web, HttpResponse};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(page));
}

const CONFIG: &str = r#"{
  list: "/fulfillments?limit=100",
  key: "fulfillments",
  id: "fulfillmentWorkflowId",
  noun: "fulfillments",
  progress: (f) => "/fulfillments/" + encodeURIComponent(f.fulfillmentWorkflowId) + "/progress",
  step: (f, p) => p ? p.stepName + (p.totalItems ? " (" + p.itemsPicked + "/" + p.totalItems + " items)" : "") : f.currentStep,
  extra: (f) => f.trackingNumber ? f.trackingNumber + (f.shippingCarrier ? " · " + f.shippingCarrier : "") : (f.error || f.cancellationReason || ""),
}"#;

/// The page, with its settings filled in.
pub fn html() -> String {
    include_str!("ui.html")
        .replace("__TITLE__", "fulfillment-service")
        .replace("__SUBTITLE__", "fulfillments, newest first")
        .replace(
            "__HEAD__",
            "<th>Fulfillment</th><th>Status</th><th>Step</th><th>Progress</th><th>Shipment</th><th>Updated</th>",
        )
        .replace("__CONFIG__", CONFIG)
}

/// The fulfillments page (HTML, refreshes itself).
#[utoipa::path(get, path = "/", tag = "operations", operation_id = "page",
    responses((status = 200, description = "an HTML page listing the fulfillments", content_type = "text/html", body = String)))]
pub(crate) async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(html())
}

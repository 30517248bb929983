//! `/metrics` (Prometheus text) and `/openapi.json`.

use actix_web::{web, HttpResponse};
use serde_json::json;
use shared_messages::messages::FulfillmentStatus;

use super::AppState;
use crate::metrics::{StatusLabels, METRICS};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi));
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let store = state.registry.store();
    // Read at scrape time: what the store holds now.
    let counts = store.count_by_status();
    METRICS.store_up.set(i64::from(counts.is_ok()));
    let counts = counts.unwrap_or_default();
    for status in FulfillmentStatus::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| s == status.as_str())
            .map_or(0, |(_, n)| *n);
        METRICS
            .fulfillments
            .get_or_create(&StatusLabels {
                status: status.as_str().into(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    if let Ok(n) = store.outbox_len() {
        METRICS
            .outbox_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(METRICS.encode())
}

async fn openapi() -> HttpResponse {
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"},
                     "example": "fulfillment-ORD-1"}]);
    let error = json!({"description": "error", "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}});
    let view = |what: &str| json!({"description": what, "content": {"application/json": {}}});
    let write = |summary: &str| {
        json!({"summary": summary, "parameters": id,
               "responses": {"200": view("status view after the change"), "404": error, "409": error}})
    };
    let doc = json!({
        "openapi": "3.0.3",
        "info": {"title": "fulfillment-service", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/fulfillments": {
                "post": {"summary": "create and start a fulfillment (FulfillmentRequest, camelCase)",
                         "requestBody": {"required": true, "content": {"application/json": {}}},
                         "responses": {"201": view("created"), "200": view("already exists"),
                                       "400": error, "413": error, "415": error}},
                "get": {"summary": "list fulfillments, newest first",
                        "parameters": [
                            {"name": "status", "in": "query", "schema": {"type": "string",
                             "enum": FulfillmentStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()}},
                            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                            {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
                        "responses": {"200": view("{fulfillments, limit, offset}"), "400": error}}
            },
            "/fulfillments/{id}/status": {"get": {"summary": "status view", "parameters": id,
                "responses": {"200": view("status"), "404": error}}},
            "/fulfillments/{id}/progress": {"get": {"summary": "progress view", "parameters": id,
                "responses": {"200": view("progress"), "404": error}}},
            "/fulfillments/{id}/pause": {"post": write("pause")},
            "/fulfillments/{id}/resume": {"post": write("resume")},
            "/fulfillments/{id}/cancel": {"post": write("cancel; body {\"reason\": \"...\"} optional")},
            "/fulfillments/{id}/shipping-address": {"patch": write("change the shipping address before the label is printed")},
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": view("ok")}}},
            "/readyz": {"get": {"summary": "readiness: broker connected and store open",
                                "responses": {"200": view("ready"), "503": error}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}}
        },
        "components": {"schemas": {"Error": {"type": "object", "required": ["error", "message"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}}}
    });
    HttpResponse::Ok().json(doc)
}

//! `/metrics` (Prometheus text) and `/openapi.json`.

use std::fmt::Write as _;

use actix_web::{web, HttpResponse};
use serde_json::json;
use shared_messages::messages::FulfillmentStatus;

use super::error::ApiError;
use super::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi));
}

async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.registry.store();
    let counts = store.count_by_status()?;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP fulfillments Stored fulfillments by status.");
    let _ = writeln!(out, "# TYPE fulfillments gauge");
    for status in FulfillmentStatus::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| s == status.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "fulfillments{{status=\"{status}\"}} {n}");
    }
    let gauges = [
        (
            "fulfillment_actors_running",
            "Fulfillment actors in memory.",
            state.registry.live() as u64,
        ),
        (
            "fulfillment_outbox_pending",
            "Events stored but not yet confirmed by the broker.",
            store.outbox_len()?,
        ),
        (
            "fulfillment_broker_connected",
            "1 while connected to RabbitMQ.",
            u64::from(state.bus.is_connected()),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out))
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

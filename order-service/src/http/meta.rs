//! `/metrics` (Prometheus text) and `/openapi.json` (every route).

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::AppState;
use crate::metrics::{StatusLabels, METRICS};
use crate::workflow::OrderStatus;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi));
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let store = state.orders.store();
    // Read at scrape time: what the store holds now.
    let counts = store.count_by_status();
    METRICS.store_up.set(i64::from(counts.is_ok()));
    let counts = counts.unwrap_or_default();
    for status in OrderStatus::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n);
        METRICS
            .orders
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
    HttpResponse::Ok().json(document())
}

fn op(summary: &str, responses: &[(&str, &str)]) -> Value {
    let mut r = serde_json::Map::new();
    for (code, what) in responses {
        r.insert((*code).into(), json!({"description": what}));
    }
    json!({"summary": summary, "responses": r})
}

fn with_body(mut operation: Value, schema: &str) -> Value {
    operation["requestBody"] = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    operation
}

/// The OpenAPI 3 document of every route.
pub fn document() -> Value {
    let errors = [
        ("400", "bad input"),
        ("404", "unknown order"),
        ("503", "RabbitMQ unavailable"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        errors
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect()
    };
    let address = json!({"type": "object", "required": ["street", "city", "state", "zipCode", "country"],
        "properties": {"street": {"type": "string"}, "city": {"type": "string"}, "state": {"type": "string"},
                       "zipCode": {"type": "string"}, "country": {"type": "string"}}});
    let statuses: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
    json!({
        "openapi": "3.0.3",
        "info": {"title": "order-service", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Orders as sagas; fulfillment is reached only through RabbitMQ."},
        "paths": {
            "/orders": {
                "post": with_body(op("Create an order", &with(&[("201", "created: {orderId, workflowId, message}")])), "CreateOrder"),
                "get": {"summary": "List orders, newest first",
                        "parameters": [
                            {"name": "status", "in": "query", "schema": {"type": "string", "enum": statuses}},
                            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                            {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}}],
                        "responses": {"200": {"description": "{orders, total, limit, offset}"}, "400": {"description": "unknown status or bad limit"}}}
            },
            "/orders/demo": {"post": op("Create the original demo's order", &[("201", "created"), ("503", "RabbitMQ unavailable")])},
            "/orders/{workflowId}/status": {"get": op("Order status", &with(&[("200", "status view")]))},
            "/orders/{workflowId}/progress": {"get": op("Order steps with timestamps", &with(&[("200", "progress view")]))},
            "/orders/{workflowId}/fulfillment/pause": {"post": op("Pause the order's fulfillment", &with(&[("200", "paused"), ("409", "not started yet or not pausable"), ("504", "fulfillment-service did not answer; the signal stays queued")]))},
            "/orders/{workflowId}/fulfillment/resume": {"post": op("Resume the order's fulfillment", &with(&[("200", "resumed"), ("409", "not paused or not started"), ("504", "fulfillment-service did not answer; the signal stays queued")]))},
            "/orders/{workflowId}": {
                "delete": with_body(op("Cancel the order (and its fulfillment), compensating", &with(&[("200", "cancelled"), ("409", "already shipped, cancelled or failed")])), "CancelOrder"),
                "patch": with_body(op("Change contact details or address before fulfillment starts", &with(&[("200", "status view"), ("409", "fulfillment has started")])), "UpdateOrder")
            },
            "/orders/fulfillment/{fulfillmentWorkflowId}/status": {"get": op("Fulfillment status, queried through RabbitMQ", &with(&[("200", "fulfillment status view"), ("504", "fulfillment-service did not answer in time")]))},
            "/orders/fulfillment/{fulfillmentWorkflowId}/progress": {"get": op("Fulfillment progress, queried through RabbitMQ", &with(&[("200", "fulfillment progress view"), ("504", "fulfillment-service did not answer in time")]))},
            "/orders/fulfillment/{fulfillmentWorkflowId}/shipping-address": {"patch": with_body(op("New shipping address for a fulfillment", &with(&[("200", "updated"), ("409", "label already printed"), ("504", "fulfillment-service did not answer; the signal stays queued")])), "Address")},
            "/healthz": {"get": op("Alive", &[("200", "ok")])},
            "/readyz": {"get": op("Broker connected and store open", &[("200", "ready"), ("503", "not ready")])},
            "/metrics": {"get": op("Prometheus metrics", &[("200", "text exposition format")])},
            "/openapi.json": {"get": op("This document", &[("200", "OpenAPI 3")])}
        },
        "components": {"schemas": {
            "Address": address,
            "CreateOrder": {"type": "object",
                "required": ["customerId", "customerEmail", "customerName", "items", "shippingAddress", "paymentMethod"],
                "properties": {
                    "customerId": {"type": "string"}, "customerEmail": {"type": "string", "format": "email"},
                    "customerName": {"type": "string"},
                    "items": {"type": "array", "minItems": 1, "items": {"type": "object",
                        "required": ["productId", "productName", "quantity", "price"],
                        "properties": {"productId": {"type": "string"}, "productName": {"type": "string"},
                                       "quantity": {"type": "integer", "minimum": 1}, "price": {"type": "number", "minimum": 0}}}},
                    "shippingAddress": {"$ref": "#/components/schemas/Address"},
                    "paymentMethod": {"type": "string", "description": "\"declined_card\" always declines"}}},
            "CancelOrder": {"type": "object", "properties": {"reason": {"type": "string"}}},
            "UpdateOrder": {"type": "object", "properties": {"customerEmail": {"type": "string"}, "customerName": {"type": "string"},
                "shippingAddress": {"$ref": "#/components/schemas/Address"}}},
            "Error": {"type": "object", "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}
        }}
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_names_every_route() {
        let doc = super::document();
        for path in [
            "/orders",
            "/orders/demo",
            "/orders/{workflowId}",
            "/orders/fulfillment/{fulfillmentWorkflowId}/shipping-address",
            "/metrics",
        ] {
            assert!(doc["paths"][path].is_object(), "{path}");
        }
    }
}

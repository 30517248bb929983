//! `/metrics` (Prometheus text) and `/openapi.json` (every route, generated
//! with utoipa from the handlers' `#[utoipa::path]` and the types'
//! `ToSchema`).

use actix_web::{web, HttpResponse};
use utoipa::OpenApi;

use super::{fulfillment, health, orders, quarantine, ui, AppState};
use crate::metrics::{StatusLabels, METRICS};
use crate::workflow::OrderStatus;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi));
}

/// Prometheus metrics in the OpenMetrics text format (names in the README).
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
pub(crate) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let store = state.orders.store();
    // Read at scrape time: what the store holds now.
    let counts = store.count_by_status().await;
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
    if let Ok(n) = store.outbox_len().await {
        METRICS
            .outbox_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(METRICS.encode())
}

/// OpenAPI 3.1 document of every route, generated from the handlers and
/// the types they take and answer.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi",
    responses((status = 200, description = "this document", content_type = "application/json", body = Object)))]
pub(crate) async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-service",
        description = "Orders as sagas: stock, payment, then fulfillment, reached only through RabbitMQ. Errors are `{error, message}` with a stable code."
    ),
    paths(
        orders::create, orders::create_demo, orders::list, orders::status, orders::progress,
        orders::pause, orders::resume, orders::cancel, orders::update, orders::history,
        quarantine::list,
        fulfillment::status, fulfillment::progress, fulfillment::shipping_address,
        health::healthz, health::readyz, metrics, openapi, ui::page,
    ),
    tags(
        (name = "orders", description = "orders and their fulfillment, by order"),
        (name = "fulfillment", description = "a fulfillment by its id, through RabbitMQ"),
        (name = "operations", description = "health, metrics, this document, the page for people"),
    )
)]
struct ApiDoc;

/// The OpenAPI document of every route.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    service_kit::openapi::document_refusals(&mut doc, "ErrorBody");
    doc
}

/// Every `(method, path)` the server routes, read from the `configure`
/// functions' source, so a route added there and not documented fails the
/// tests below. Paths are as actix writes them (`{workflow_id}`), which is
/// also how the document writes them.
#[cfg(test)]
pub(crate) fn routes_in_source() -> Vec<(String, String)> {
    let sources = [
        include_str!("orders.rs"),
        include_str!("fulfillment.rs"),
        include_str!("health.rs"),
        include_str!("meta.rs"),
        include_str!("ui.rs"),
        include_str!("quarantine.rs"),
    ];
    let mut routes = Vec::new();
    for source in sources {
        // Only the `configure` function registers routes.
        let Some(start) = source.find("pub fn configure(") else {
            continue;
        };
        let body = &source[start..];
        let mut rest = &body[..body.find("\n}\n").unwrap_or(body.len())];
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let Some(open) = rest.find('"') else { break };
            let after = &rest[open + 1..];
            let Some(close) = after.find('"') else { break };
            let path = &after[..close];
            let Some(web) = after.find("web::") else {
                break;
            };
            let method: String = after[web + 5..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            routes.push((method, path.to_owned()));
            rest = &after[close..];
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let doc = serde_json::to_value(document()).expect("serializes");
        let routes = routes_in_source();
        assert!(routes.len() >= 15, "{routes:?}");
        for (method, path) in &routes {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is served but not in /openapi.json"
            );
        }
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            for method in item.as_object().expect("path item").keys() {
                assert!(
                    routes.iter().any(|(m, p)| m == method && p == path),
                    "{method} {path} is documented but not served"
                );
            }
        }
    }
}

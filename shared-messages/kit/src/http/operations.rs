//! The operations routes both services serve alike: `/healthz` (alive;
//! never checks the broker), `/readyz` (broker and store, with why not),
//! `/metrics` (Prometheus text), `/openapi.json`, `/quarantine` (rows set
//! aside as unreadable) and `/` (the page for people). A service
//! implements [`Surface`] on its handler state and serves it with
//! [`crate::http::surface`].

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::ui::Page;
use crate::store::{Quarantined, StoreError};

/// What the operations routes ask of a service.
#[async_trait::async_trait(?Send)]
pub trait Surface: Send + Sync + 'static {
    /// Why the broker side is not ready (not connected, a consumer not
    /// consuming), or `None` when it is.
    fn broker_not_ready(&self) -> Option<String>;
    /// Whether the store answers now.
    async fn store_answers(&self) -> bool;
    /// Sets the gauges read at scrape time, and answers the registry as
    /// Prometheus text.
    async fn scrape(&self) -> String;
    /// The service's OpenAPI document (with [`document`]'s routes merged in).
    fn openapi(&self) -> utoipa::openapi::OpenApi;
    /// The page's settings.
    const PAGE: &'static Page;

    /// The rows set aside, oldest first.
    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError>;
    /// The partitions this replica owns, when it runs as one of several
    /// replicas (`None` on a store of its own, which owns everything).
    fn partitions(&self) -> Option<Vec<u16>> {
        None
    }
}

/// This replica's name (`REPLICA_ID`), shown on the page and in
/// `/readyz`; [`crate::serve::start`] adds it to every app.
#[derive(Debug, Clone)]
pub struct ReplicaId(pub String);

/// Every route of this module, as `(method, path)`, for the check that
/// each is documented ([`check_routes`]).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/quarantine"),
    ("get", "/"),
];

/// Registers the operations routes over the state `S` (a `web::Data<S>`
/// the service adds itself).
pub fn configure<S: Surface>(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz::<S>))
        .route("/metrics", web::get().to(metrics::<S>))
        .route("/openapi.json", web::get().to(openapi::<S>))
        .route("/quarantine", web::get().to(quarantine::<S>))
        .route("/", web::get().to(page::<S>));
}

/// `{"status": "ok"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Ready: `{"status": "ready", "broker": true, "store": true}`; not ready:
/// `{"error": "not_ready", "message": why, "broker", "store"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "ready")]
    pub status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "not_ready")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Connected to RabbitMQ, every consumer consuming.
    pub broker: bool,
    /// The store answers.
    pub store: bool,
    /// The partitions this replica owns now (only with several replicas on
    /// PostgreSQL); owning none is no reason to be unready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<u16>>,
    /// This replica's name (`REPLICA_ID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// `GET /quarantine`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantineView<T> {
    /// Each row set aside: which, why, when.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<T>,
}

/// Liveness: the process answers. Never checks the broker, so a RabbitMQ
/// outage does not restart the service.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz",
    responses((status = 200, description = "alive", body = Liveness)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Liveness { status: "ok" })
}

/// Readiness: connected to RabbitMQ with every consumer consuming, and
/// the store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz",
    responses(
        (status = 200, description = "ready", body = Readiness),
        (status = 503, description = "not ready, and why", body = Readiness),
    ))]
pub async fn readyz<S: Surface>(
    state: web::Data<S>,
    replica: Option<web::Data<ReplicaId>>,
) -> HttpResponse {
    readiness(
        state.broker_not_ready(),
        state.store_answers().await,
        state.partitions(),
        replica.map(|r| r.0.clone()),
    )
}

/// The `/readyz` answer for what was found.
pub fn readiness(
    broker_not_ready: Option<String>,
    store: bool,
    partitions: Option<Vec<u16>>,
    replica: Option<String>,
) -> HttpResponse {
    let broker = broker_not_ready.is_none();
    if broker && store {
        return HttpResponse::Ok().json(Readiness {
            status: Some("ready"),
            error: None,
            message: None,
            broker,
            store,
            partitions,
            replica,
        });
    }
    let mut missing = Vec::new();
    missing.extend(broker_not_ready);
    if !store {
        missing.push("the store does not answer".to_owned());
    }
    HttpResponse::ServiceUnavailable().json(Readiness {
        status: None,
        error: Some("not_ready"),
        message: Some(missing.join("; ")),
        broker,
        store,
        partitions,
        replica,
    })
}

/// Prometheus metrics in the OpenMetrics text format (names in the README).
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics<S: Surface>(state: web::Data<S>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.scrape().await)
}

/// OpenAPI 3.1 document of every route, generated from the handlers and
/// the types they take and answer.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi",
    responses((status = 200, description = "this document", content_type = "application/json", body = Object)))]
pub async fn openapi<S: Surface>(state: web::Data<S>) -> HttpResponse {
    HttpResponse::Ok().json(state.openapi())
}

/// Rows set aside because they cannot be read (stored workflows at
/// recovery, outbox rows by the relay), with why; an operator repairs or
/// removes them.
#[utoipa::path(get, path = "/quarantine", tag = "operations", operation_id = "quarantine",
    responses(
        (status = 200, description = "every quarantined row, oldest first", body = QuarantineView<Object>),
        (status = 503, description = "the store does not answer", body = ErrorBody),
    ))]
pub async fn quarantine<S: Surface>(state: web::Data<S>) -> Result<HttpResponse, ApiError> {
    let items = state.quarantined().await.map_err(ApiError::store)?;
    Ok(HttpResponse::Ok().json(QuarantineView { items }))
}

/// The page for people (HTML, refreshes itself).
#[utoipa::path(get, path = "/", tag = "operations", operation_id = "page",
    responses((status = 200, description = "an HTML page listing the workflows", content_type = "text/html", body = String)))]
pub async fn page<S: Surface>(replica: Option<web::Data<ReplicaId>>) -> HttpResponse {
    let replica = replica.map(|r| r.0.clone()).unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(S::PAGE.html(&replica))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(healthz, readyz, metrics, openapi, quarantine, page),
    components(schemas(ErrorBody)),
    tags((name = "operations", description = "health, metrics, quarantined rows, this document, the page for people"))
)]
struct OperationsDoc;

/// `doc` (a service's routes) as version `version`, with the operations
/// routes added and the access guard's refusals documented on every route
/// (see [`crate::openapi`]).
pub fn document(mut doc: utoipa::openapi::OpenApi, version: &str) -> utoipa::openapi::OpenApi {
    doc.info.version = version.into();
    doc.merge(<OperationsDoc as utoipa::OpenApi>::openapi());
    crate::openapi::document_refusals(&mut doc, "ErrorBody");
    doc
}

/// Checks that `doc` documents every route the `configure` functions in
/// `sources` (route modules registering by hand, `include_str!`) register,
/// plus [`ROUTES`], and no route more; answers how many there are. Routes
/// are read from the source, so a route added and not documented fails
/// the test. (A service's own routes need no such check: `routes!` serves
/// what their `#[utoipa::path]` documents.)
pub fn check_routes(doc: &utoipa::openapi::OpenApi, sources: &[&str]) -> Result<usize, String> {
    let doc = serde_json::to_value(doc).map_err(|e| e.to_string())?;
    let mut routes: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    routes.extend(sources.iter().flat_map(|s| routes_in_source(s)));
    for (method, path) in &routes {
        if !doc["paths"][path][method].is_object() {
            return Err(format!(
                "{method} {path} is served but not in /openapi.json"
            ));
        }
    }
    let paths = doc["paths"].as_object().ok_or("no paths")?;
    for (path, item) in paths {
        for method in item.as_object().ok_or("a path item")?.keys() {
            if !routes.iter().any(|(m, p)| m == method && p == path) {
                return Err(format!("{method} {path} is documented but not served"));
            }
        }
    }
    Ok(routes.len())
}

/// Every `(method, path)` the `configure` function in `source` routes.
/// Paths are as actix writes them (`{id}`), which is also how the document
/// writes them.
fn routes_in_source(source: &str) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    // Only the `configure` function registers routes.
    let Some(start) = source.find("pub fn configure") else {
        return routes;
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
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented() {
        let doc = document(utoipa::openapi::OpenApi::default(), "1");
        assert_eq!(check_routes(&doc, &[]), Ok(ROUTES.len()));
        let extra = "pub fn configure(cfg: &mut web::ServiceConfig) {\n    cfg.route(\"/x\", web::post().to(x));\n}\n";
        assert_eq!(
            check_routes(&doc, &[extra]),
            Err("post /x is served but not in /openapi.json".into())
        );
        assert_eq!(
            routes_in_source(include_str!("operations.rs")).len(),
            ROUTES.len(),
            "ROUTES lists what configure registers"
        );
    }

    #[test]
    fn not_ready_says_why() {
        let res = readiness(Some("not connected to RabbitMQ".into()), false, None, None);
        assert_eq!(res.status().as_u16(), 503);
        assert_eq!(readiness(None, true, None, None).status().as_u16(), 200);
    }
}

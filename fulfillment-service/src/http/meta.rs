//! The service's OpenAPI document served at `/openapi.json`: its title and
//! tags here, its routes from the handlers' `#[utoipa::path]` (each
//! resource's `Doc`) and the types' `ToSchema`, the operations routes
//! from the kit.

use service_kit::http::operations;
use utoipa::OpenApi;

use super::fulfillments;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fulfillment-service",
        description = "One workflow per fulfillment: wait, pick, quality check, pack, label, ship; pausable, resumable, cancellable, re-addressable. The same actors take signals and queries over RabbitMQ. Errors are `{error, message}` with a stable code."
    ),
    tags((name = "fulfillments", description = "fulfillments by id"))
)]
pub struct ApiDoc;

/// The whole document, as version `version`.
pub fn document(version: &str) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(fulfillments::Doc::openapi());
    operations::document(doc, version)
}

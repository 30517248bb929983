//! The service's OpenAPI document served at `/openapi.json`: its title and
//! tags here, its routes from the handlers' `#[utoipa::path]` (each
//! resource's `Doc`) and the types' `ToSchema`, the operations routes
//! from the kit.

use service_kit::http::operations;
use utoipa::OpenApi;

use super::{fulfillment, orders};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-service",
        description = "Orders as sagas: stock, payment, then fulfillment, reached only through RabbitMQ. Errors are `{error, message}` with a stable code."
    ),
    tags(
        (name = "orders", description = "orders and their fulfillment, by order"),
        (name = "fulfillment", description = "a fulfillment by its id, through RabbitMQ"),
    )
)]
pub struct ApiDoc;

/// The whole document, as version `version`.
pub fn document(version: &str) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(orders::Doc::openapi());
    doc.merge(fulfillment::Doc::openapi());
    operations::document(doc, version)
}

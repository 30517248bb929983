//! The OpenAPI document served at `/openapi.json`: every route, generated
//! with utoipa from the handlers' `#[utoipa::path]` and the types'
//! `ToSchema`, with the kit's operations routes merged in.

use utoipa::OpenApi;

use super::{fulfillment, orders};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-service",
        description = "Orders as sagas: stock, payment, then fulfillment, reached only through RabbitMQ. Errors are `{error, message}` with a stable code."
    ),
    paths(
        orders::create, orders::create_demo, orders::list, orders::status, orders::progress,
        orders::pause, orders::resume, orders::cancel, orders::update, orders::history,
        fulfillment::status, fulfillment::progress, fulfillment::shipping_address,
    ),
    tags(
        (name = "orders", description = "orders and their fulfillment, by order"),
        (name = "fulfillment", description = "a fulfillment by its id, through RabbitMQ"),
    )
)]
struct ApiDoc;

/// The OpenAPI document of every route.
pub fn document() -> utoipa::openapi::OpenApi {
    service_kit::http::operations::document(ApiDoc::openapi(), env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let sources = [include_str!("orders.rs"), include_str!("fulfillment.rs")];
        let routes = service_kit::http::operations::check_routes(&document(), &sources);
        assert!(routes.as_ref().is_ok_and(|n| *n >= 19), "{routes:?}");
    }
}

//! The OpenAPI document served at `/openapi.json`: every route, generated
//! with utoipa from the handlers' `#[utoipa::path]` and the types'
//! `ToSchema`, with the kit's operations routes merged in.

use utoipa::OpenApi;

use super::fulfillments;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fulfillment-service",
        description = "One workflow per fulfillment: wait, pick, quality check, pack, label, ship; pausable, resumable, cancellable, re-addressable. The same actors take signals and queries over RabbitMQ. Errors are `{error, message}` with a stable code."
    ),
    paths(
        fulfillments::create, fulfillments::list, fulfillments::status, fulfillments::progress,
        fulfillments::history, fulfillments::pause, fulfillments::resume, fulfillments::cancel,
        fulfillments::shipping_address,
    ),
    tags((name = "fulfillments", description = "fulfillments by id"))
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
        let routes = service_kit::http::operations::check_routes(
            &document(),
            &[include_str!("fulfillments.rs")],
        );
        assert!(routes.as_ref().is_ok_and(|n| *n >= 15), "{routes:?}");
    }
}

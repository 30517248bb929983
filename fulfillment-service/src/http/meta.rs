//! The service's part of the OpenAPI document served at `/openapi.json`:
//! its routes, generated with utoipa from the handlers' `#[utoipa::path]`
//! and the types' `ToSchema` (the kit adds the operations routes).

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
pub struct ApiDoc;

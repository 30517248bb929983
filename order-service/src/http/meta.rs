//! The service's part of the OpenAPI document served at `/openapi.json`:
//! its routes, generated with utoipa from the handlers' `#[utoipa::path]`
//! and the types' `ToSchema` (the kit adds the operations routes).

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
pub struct ApiDoc;

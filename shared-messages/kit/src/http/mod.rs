//! The HTTP surface both services share: the error vocabulary and bad-input
//! answers ([`error`]), paging ([`paging`]), the operations routes
//! ([`operations`]: health, metrics, OpenAPI, quarantine, the page), the
//! page itself ([`ui`]), the request spans and metrics ([`observe`]) and
//! the declaration of a service's own routes ([`routes`]).

pub mod error;
pub mod observe;
pub mod operations;
pub mod paging;
pub mod routes;
pub mod ui;

pub use error::{optional_json, ApiError, ErrorBody, OptionalJson, Valid, MAX_BODY_BYTES};
pub use operations::Surface;
pub use paging::Page;
pub use routes::Reply;

use actix_web::web;

/// A service's whole HTTP surface, to give [`crate::serve::start`] (or a
/// test's `App`): its handler state, the extractor settings that answer
/// bad input with JSON errors ([`error::extractors`]), the operations
/// routes over that state ([`operations::configure`]), then the service's
/// own `routes`.
pub fn surface<S: Surface>(
    state: web::Data<S>,
    routes: fn(&mut web::ServiceConfig),
) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
    move |cfg| {
        cfg.app_data(state.clone())
            .configure(error::extractors)
            .configure(operations::configure::<S>)
            .configure(routes);
    }
}

/// [`surface`] as a test's service (`actix_web::test::init_service`).
pub async fn test_service<S: Surface>(
    state: web::Data<S>,
    routes: fn(&mut web::ServiceConfig),
) -> impl actix_web::dev::Service<
    actix_http::Request,
    Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
    Error = actix_web::Error,
> {
    actix_web::test::init_service(actix_web::App::new().configure(surface(state, routes))).await
}

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

pub use error::{optional_json, ApiError, ErrorBody, OptionalJson, MAX_BODY_BYTES};
pub use operations::Surface;
pub use paging::Page;
pub use routes::Reply;

use actix_web::web;

/// What every service's HTTP surface registers before its own routes:
/// the extractor settings that answer bad input with JSON errors
/// ([`error::extractors`]) and the operations routes over the state `S`
/// ([`operations::configure`]).
pub fn configure<S: Surface>(cfg: &mut web::ServiceConfig) {
    cfg.configure(error::extractors)
        .configure(operations::configure::<S>);
}

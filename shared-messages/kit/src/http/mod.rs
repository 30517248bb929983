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

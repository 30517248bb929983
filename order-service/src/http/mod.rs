//! The HTTP surface, compatible with the original demo's routes.
//!
//! One module per resource, each with `configure`: [`orders`] (the order
//! routes), [`fulfillment`] (fulfillment by its id, through RabbitMQ),
//! [`health`]. Every error is JSON (see [`error`]), including malformed
//! bodies, bad path or query parameters and unknown routes.

pub mod error;
pub mod fulfillment;
pub mod health;
pub mod orders;
pub mod views;

use std::time::Duration;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::actor::Orders;
pub use error::ApiError;

/// Largest accepted request body. An order with the maximum 200 lines of
/// long names fits well inside.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What every handler can reach.
pub struct AppState {
    pub orders: Orders,
    pub query_timeout: Duration,
}

impl AppState {
    pub fn timeout_ms(&self) -> u128 {
        self.query_timeout.as_millis()
    }
}

/// Every route, with JSON error handlers for bodies, paths and queries.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            .error_handler(json_error),
    )
    .app_data(web::PayloadConfig::default().limit(MAX_BODY_BYTES))
    .app_data(web::PathConfig::default().error_handler(path_error))
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .configure(health::configure)
    // fulfillment routes first: `/orders/fulfillment/...` is not an order id
    .configure(fulfillment::configure)
    .configure(orders::configure)
    .default_service(web::to(not_found));
}

fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::TooLarge(MAX_BODY_BYTES)
        }
        JsonPayloadError::ContentType => ApiError::InvalidBody(
            "the body must be JSON with Content-Type: application/json".into(),
        ),
        JsonPayloadError::Deserialize(e) => {
            ApiError::InvalidBody(format!("invalid JSON body: {e}"))
        }
        other => ApiError::InvalidBody(format!("cannot read the body: {other}")),
    };
    api.into()
}

fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidParameter(format!("invalid path: {err}")).into()
}

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidParameter(format!("invalid query string: {err}")).into()
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({
        "error": "not_found",
        "message": format!("no route for {} {}", req.method(), req.path()),
    }))
}

/// A JSON body that may be absent (e.g. `DELETE` with an optional reason).
pub fn optional_json<T: serde::de::DeserializeOwned>(
    body: Result<web::Bytes, actix_web::Error>,
) -> Result<Option<T>, ApiError> {
    let body = body.map_err(|e| {
        if e.as_response_error().status_code() == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::InvalidBody(format!("cannot read the body: {e}"))
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| ApiError::InvalidBody(format!("invalid JSON body: {e}")))
}

//! The HTTP control surface (actix-web), one module per resource.

pub mod error;
mod fulfillments;
mod health;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::{web, HttpRequest};
use shared_messages::bus::Bus;
use shared_messages::messages::FulfillmentStatusView;

use crate::actor::Registry;
use crate::workflow::Fulfillment;
use error::ApiError;

/// The largest request body accepted. A fulfillment request with a few
/// hundred items fits easily; anything bigger is a mistake or an attack.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What handlers share.
pub struct AppState {
    pub registry: Registry,
    pub bus: Bus,
}

impl AppState {
    fn find(&self, id: &str) -> Result<Fulfillment, ApiError> {
        self.registry
            .load(id)?
            .ok_or_else(|| ApiError::NotFound(format!("no fulfillment {id}")))
    }

    fn view(&self, id: &str) -> Result<FulfillmentStatusView, ApiError> {
        Ok(self.find(id)?.status_view())
    }
}

/// Every route, plus extractor settings that turn bad input into JSON
/// errors.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(BODY_LIMIT)
            .error_handler(json_error),
    )
    .app_data(web::PayloadConfig::new(BODY_LIMIT))
    .app_data(web::PathConfig::default().error_handler(path_error))
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .configure(health::configure)
    .configure(fulfillments::configure)
    .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}; see the README for the API",
        req.method(),
        req.path()
    )))
}

fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    match err {
        JsonPayloadError::OverflowKnownLength { limit, .. }
        | JsonPayloadError::Overflow { limit } => ApiError::PayloadTooLarge { limit },
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            ApiError::InvalidInput(format!("the body does not fit: {e}"))
        }
        JsonPayloadError::Deserialize(e) => ApiError::InvalidBody(format!("malformed JSON: {e}")),
        other => ApiError::InvalidBody(other.to_string()),
    }
    .into()
}

fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidInput(format!("bad path: {err}")).into()
}

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidInput(format!("bad query string: {err}")).into()
}

//! `GET /quarantine`: stored fulfillments that could not be read at
//! recovery, and outbox rows whose message could not be decoded. They are
//! set aside, not resumed or sent, so one bad row never stops the service
//! or the outbox relay; an operator repairs or removes them.

use actix_web::{web, HttpResponse};

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::store::Quarantined;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/quarantine", web::get().to(list));
}

/// `GET /quarantine`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct QuarantineView {
    pub items: Vec<Quarantined>,
}

/// Rows set aside because they cannot be read (at recovery, or by the
/// outbox relay), with why.
#[utoipa::path(get, path = "/quarantine", tag = "operations",
    responses(
        (status = 200, description = "every quarantined row, oldest first", body = QuarantineView),
        (status = 503, description = "the store does not answer", body = ErrorBody),
    ))]
pub(crate) async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items = state.registry.store().quarantined().await?;
    Ok(HttpResponse::Ok().json(QuarantineView { items }))
}

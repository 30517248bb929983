//! `GET /quarantine`: stored orders recovery could not read, set aside so
//! that the rest recover (each is logged and counted in
//! `order_service_quarantined_rows_total`), and outbox rows that did not
//! decode, moved out of the outbox so the rest go out (each logged and
//! counted in `order_service_outbox_rows_quarantined_total`).

use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::actor::Quarantined;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/quarantine", web::get().to(list));
}

/// `GET /quarantine`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QuarantineView {
    pub items: Vec<Quarantined>,
}

/// Stored orders that could not be read at recovery, and outbox rows that
/// could not be decoded, with why.
#[utoipa::path(get, path = "/quarantine", tag = "operations",
    responses(
        (status = 200, description = "the quarantined rows", body = QuarantineView),
        (status = 503, description = "the store does not answer", body = ErrorBody),
    ))]
pub(crate) async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items = state.orders.quarantined().await?;
    Ok(HttpResponse::Ok().json(QuarantineView { items }))
}

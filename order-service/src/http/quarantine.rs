//! `GET /quarantine`: stored orders recovery could not read, set aside so
//! that the rest recover (each is logged and counted in
//! `order_service_quarantined_rows_total`).

use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::AppState;
use crate::actor::Quarantined;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/quarantine", web::get().to(list));
}

/// `GET /quarantine`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QuarantineView {
    pub items: Vec<Quarantined>,
}

/// Stored orders that could not be read at recovery, with why.
#[utoipa::path(get, path = "/quarantine", tag = "operations",
    responses((status = 200, description = "the quarantined rows", body = QuarantineView)))]
pub(crate) async fn list(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(QuarantineView {
        items: state.orders.quarantined(),
    })
}

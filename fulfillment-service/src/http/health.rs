//! `/healthz` (the process answers) and `/readyz` (broker and store).

use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// Never checks the broker: a liveness probe that does causes restart
/// storms when RabbitMQ blips.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.bus.is_connected() {
        return Err(ApiError::NotReady(
            "not connected to RabbitMQ; reconnecting (check AMQP_URL and the broker)".into(),
        ));
    }
    if let Err(error) = state.registry.ping_store() {
        return Err(ApiError::NotReady(format!(
            "the store does not answer: {error}"
        )));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "status": "ready",
        "broker": "connected",
        "store": "ok",
        "runningFulfillments": state.registry.live(),
    })))
}

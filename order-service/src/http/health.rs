//! `/healthz` (alive; never checks the broker) and `/readyz` (broker
//! connected and store answering).

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// `{"status": "ok"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Ready: `{"status": "ready", "broker": true, "store": true}`; not ready:
/// `{"error": "not_ready", "message": why, "broker", "store"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "ready")]
    pub status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "not_ready")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Connected to RabbitMQ.
    pub broker: bool,
    /// The order store answers.
    pub store: bool,
}

/// Liveness: the process answers. Never checks the broker, so a RabbitMQ
/// outage does not restart the service.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz",
    responses((status = 200, description = "alive", body = Liveness)))]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Liveness { status: "ok" })
}

/// Readiness: connected to RabbitMQ with every consumer consuming, and
/// the store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz",
    responses(
        (status = 200, description = "ready", body = Readiness),
        (status = 503, description = "not ready, and why", body = Readiness),
    ))]
pub(crate) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    // Connected, every consumer consuming, nothing waiting to be retried.
    let not_ready = state.orders.bus().not_ready_reason();
    let broker = not_ready.is_none();
    let store = state.orders.store().ping().await.is_ok();
    if broker && store {
        return HttpResponse::Ok().json(Readiness {
            status: Some("ready"),
            error: None,
            message: None,
            broker,
            store,
        });
    }
    let mut missing = Vec::new();
    if let Some(reason) = &not_ready {
        missing.push(reason.as_str());
    }
    if !store {
        missing.push("the order store does not answer");
    }
    HttpResponse::ServiceUnavailable().json(Readiness {
        status: None,
        error: Some("not_ready"),
        message: Some(missing.join("; ")),
        broker,
        store,
    })
}

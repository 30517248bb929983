//! `/healthz` (the process answers) and `/readyz` (broker and store).

use actix_web::{web, HttpResponse};

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

/// 200 with `{"status": "ready", "broker": true, "store": true}`, or 503
/// with `{"error": "not_ready", "message": why, "broker", "store"}`.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let broker = state.bus.is_connected();
    let store = state.registry.ping_store();
    if broker && store.is_ok() {
        return HttpResponse::Ok().json(serde_json::json!({
            "status": "ready",
            "broker": true,
            "store": true,
            "runningFulfillments": state.registry.live(),
        }));
    }
    let mut why = Vec::new();
    if !broker {
        why.push("not connected to RabbitMQ; reconnecting (check AMQP_URL and the broker)".into());
    }
    if let Err(error) = &store {
        why.push(format!("the store does not answer: {error}"));
    }
    HttpResponse::ServiceUnavailable().json(serde_json::json!({
        "error": "not_ready",
        "message": why.join("; "),
        "broker": broker,
        "store": store.is_ok(),
    }))
}

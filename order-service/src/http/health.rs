//! `/healthz` (alive; never checks the broker) and `/readyz` (broker
//! connected and store answering).

use actix_web::{web, HttpResponse};

use super::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let broker = state.orders.bus().is_connected();
    let store = state.orders.store().ping().is_ok();
    if broker && store {
        HttpResponse::Ok()
            .json(serde_json::json!({"status": "ready", "broker": true, "store": true}))
    } else {
        let mut missing = Vec::new();
        if !broker {
            missing.push("not connected to RabbitMQ");
        }
        if !store {
            missing.push("the order store does not answer");
        }
        HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "error": "not_ready",
            "message": missing.join("; "),
            "broker": broker,
            "store": store,
        }))
    }
}

//! `/orders/fulfillment/{fulfillmentWorkflowId}/...`: a fulfillment by its
//! id, queried and signalled through RabbitMQ (never over HTTP).

use actix_web::{web, HttpResponse};
use shared_messages::messages::{Address, UpdateShippingAddress};
use shared_messages::Message;

use super::{ApiError, AppState};
use crate::bus;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/orders/fulfillment/{fulfillment_id}/status",
        web::get().to(status),
    )
    .route(
        "/orders/fulfillment/{fulfillment_id}/progress",
        web::get().to(progress),
    )
    .route(
        "/orders/fulfillment/{fulfillment_id}/shipping-address",
        web::patch().to(shipping_address),
    );
}

fn answer(reply: Message) -> Result<HttpResponse, ApiError> {
    match reply {
        Message::FulfillmentStatusReply(view) => Ok(HttpResponse::Ok().json(view)),
        Message::FulfillmentProgressReply(view) => Ok(HttpResponse::Ok().json(view)),
        Message::QueryFailed(e) => Err(ApiError::from_reply(e)),
        other => Err(ApiError::BadReply(format!(
            "fulfillment-service answered {} to a query",
            other.type_name()
        ))),
    }
}

async fn status(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let reply = bus::query_status(state.orders.bus(), &path, state.query_timeout)
        .await
        .map_err(|e| ApiError::from_bus(e, state.timeout_ms(), false))?;
    answer(reply.message)
}

async fn progress(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let reply = bus::query_progress(state.orders.bus(), &path, state.query_timeout)
        .await
        .map_err(|e| ApiError::from_bus(e, state.timeout_ms(), false))?;
    answer(reply.message)
}

async fn shipping_address(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Address>,
) -> Result<HttpResponse, ApiError> {
    let address = body.into_inner();
    address.validate().map_err(ApiError::InvalidField)?;
    let fulfillment_id = path.into_inner();
    let reply = bus::signal_with_reply(
        state.orders.bus(),
        &fulfillment_id,
        Message::UpdateShippingAddress(UpdateShippingAddress { address }),
        state.query_timeout,
    )
    .await
    .map_err(|e| ApiError::from_bus(e, state.timeout_ms(), true))?;
    match reply.message {
        Message::SignalReply(r) if r.accepted => Ok(HttpResponse::Ok().json(serde_json::json!({
            "message": "Shipping address updated",
            "fulfillmentWorkflowId": fulfillment_id,
            "status": r.status,
        }))),
        Message::SignalReply(r) => Err(match r.error {
            Some(e) => ApiError::from_reply(e),
            None => ApiError::Conflict(format!(
                "fulfillment {fulfillment_id} refused the new address"
            )),
        }),
        other => answer(other),
    }
}

//! `/orders/fulfillment/{fulfillmentWorkflowId}/...`: a fulfillment by its
//! id, queried and signalled through RabbitMQ (never over HTTP).

use actix_web::{web, HttpResponse};
use message_bus::trace;
use shared_messages::messages::{
    Address, FulfillmentProgressView, FulfillmentStatusView, UpdateShippingAddress,
};
use shared_messages::messages::{GetFulfillmentProgress, GetFulfillmentStatus};
use shared_messages::Message;

use super::views::SignalView;
use super::{ApiError, AppState, ErrorBody};
use crate::bus;
use service_kit::http::error::{BadBody, NotFound, TooLarge};

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
        Message::QueryFailed(e) => Err(ApiError::from(e)),
        other => Err(ApiError::BadReply(format!(
            "fulfillment-service answered {} to a query",
            other.type_name()
        ))),
    }
}

/// The fulfillment's status, queried through RabbitMQ.
#[utoipa::path(get, path = "/orders/fulfillment/{fulfillment_id}/status", tag = "fulfillment", operation_id = "getFulfillmentStatus",
    params(("fulfillment_id" = String, Path, description = "`fulfillment-<orderId>`")),
    responses(
        (status = 200, description = "the fulfillment", body = FulfillmentStatusView),
        (status = 404, description = "fulfillment-service has no such fulfillment", body = ErrorBody),
        (status = 502, description = "fulfillment-service sent an unreadable reply", body = ErrorBody),
        (status = 503, description = "RabbitMQ unavailable", body = ErrorBody),
        (status = 504, description = "fulfillment-service did not answer in time", body = ErrorBody),
    ))]
pub(crate) async fn status(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let reply = bus::query(
        state.orders.bus(),
        &path,
        Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
        trace::current_child(),
        state.query_timeout,
    )
    .await
    .map_err(|e| super::error::from_bus(e, state.timeout_ms(), false))?;
    answer(reply.message)
}

/// The fulfillment's progress, queried through RabbitMQ.
#[utoipa::path(get, path = "/orders/fulfillment/{fulfillment_id}/progress", tag = "fulfillment", operation_id = "getFulfillmentProgress",
    params(("fulfillment_id" = String, Path, description = "`fulfillment-<orderId>`")),
    responses(
        (status = 200, description = "the fulfillment's progress", body = FulfillmentProgressView),
        (status = 404, description = "fulfillment-service has no such fulfillment", body = ErrorBody),
        (status = 502, description = "fulfillment-service sent an unreadable reply", body = ErrorBody),
        (status = 503, description = "RabbitMQ unavailable", body = ErrorBody),
        (status = 504, description = "fulfillment-service did not answer in time", body = ErrorBody),
    ))]
pub(crate) async fn progress(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let reply = bus::query(
        state.orders.bus(),
        &path,
        Message::GetFulfillmentProgress(GetFulfillmentProgress {}),
        trace::current_child(),
        state.query_timeout,
    )
    .await
    .map_err(|e| super::error::from_bus(e, state.timeout_ms(), false))?;
    answer(reply.message)
}

/// A new shipping address for the fulfillment (before its label is printed).
#[utoipa::path(patch, path = "/orders/fulfillment/{fulfillment_id}/shipping-address", tag = "fulfillment", operation_id = "updateFulfillmentShippingAddress",
    params(("fulfillment_id" = String, Path, description = "`fulfillment-<orderId>`")),
    request_body = Address,
    responses(
        (status = 200, description = "updated", body = SignalView),
        BadBody,
        NotFound,
        (status = 409, description = "the label is already printed", body = ErrorBody),
        TooLarge,
        (status = 503, description = "RabbitMQ unavailable", body = ErrorBody),
        (status = 504, description = "fulfillment-service did not answer in time; the signal stays queued", body = ErrorBody),
    ))]
pub(crate) async fn shipping_address(
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
    .map_err(|e| super::error::from_bus(e, state.timeout_ms(), true))?;
    match reply.message {
        Message::SignalReply(r) if r.accepted => Ok(HttpResponse::Ok().json(SignalView {
            message: "Shipping address updated".into(),
            fulfillment_workflow_id: fulfillment_id,
            status: r.status,
        })),
        Message::SignalReply(r) => Err(match r.error {
            Some(e) => ApiError::from(e),
            None => ApiError::Conflict(format!(
                "fulfillment {fulfillment_id} refused the new address"
            )),
        }),
        other => answer(other),
    }
}

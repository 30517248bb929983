//! `/orders/fulfillment/{fulfillmentWorkflowId}/...`: a fulfillment by its
//! id, queried and signalled through RabbitMQ (never over HTTP).

use actix_web::web::{Data, Path};
use actix_web::HttpResponse;
use message_bus::trace;
use shared_messages::messages::{
    Address, FulfillmentProgressView, FulfillmentStatusView, UpdateShippingAddress,
};
use shared_messages::messages::{GetFulfillmentProgress, GetFulfillmentStatus};
use shared_messages::Message;

use super::error::{Queried, Signalled};
use super::views::SignalView;
use super::AppState;
use crate::bus;
use service_kit::http::error::{BadBody, TooLarge};
use service_kit::http::{ApiError, Reply, Valid};

service_kit::routes!(status, progress, shipping_address);

/// The `{fulfillment_id}` of a fulfillment's routes, documented once for all of them
/// (`params(FulfillmentId)`); the handlers take it as `Path<String>`.
#[derive(utoipa::IntoParams)]
#[into_params(names("fulfillment_id"), parameter_in = Path)]
struct FulfillmentId(
    /// `fulfillment-<orderId>`
    #[allow(dead_code)]
    String,
);

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

/// Asks fulfillment-service `question` about the fulfillment `id` through
/// RabbitMQ, and answers its reply.
async fn query(state: &AppState, id: &str, question: Message) -> Reply {
    let reply = bus::query(
        state.orders.bus(),
        id,
        question,
        trace::current_child(),
        state.query_timeout,
    )
    .await
    .map_err(|e| super::error::from_bus(e, state.timeout_ms(), false))?;
    answer(reply.message)
}

/// The fulfillment's status, queried through RabbitMQ.
#[utoipa::path(get, path = "/orders/fulfillment/{fulfillment_id}/status", tag = "fulfillment", operation_id = "getFulfillmentStatus",
    params(FulfillmentId), responses((status = 200, description = "the fulfillment", body = FulfillmentStatusView), Queried))]
async fn status(state: Data<AppState>, path: Path<String>) -> Reply {
    query(
        &state,
        &path,
        Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
    )
    .await
}

/// The fulfillment's progress, queried through RabbitMQ.
#[utoipa::path(get, path = "/orders/fulfillment/{fulfillment_id}/progress", tag = "fulfillment", operation_id = "getFulfillmentProgress",
    params(FulfillmentId), responses((status = 200, description = "the fulfillment's progress", body = FulfillmentProgressView), Queried))]
async fn progress(state: Data<AppState>, path: Path<String>) -> Reply {
    query(
        &state,
        &path,
        Message::GetFulfillmentProgress(GetFulfillmentProgress {}),
    )
    .await
}

/// A new shipping address for the fulfillment (before its label is
/// printed). Refused once the label is printed.
#[utoipa::path(patch, path = "/orders/fulfillment/{fulfillment_id}/shipping-address", tag = "fulfillment", operation_id = "updateFulfillmentShippingAddress",
    params(FulfillmentId), request_body = Address,
    responses((status = 200, description = "updated", body = SignalView), BadBody, TooLarge, Signalled))]
async fn shipping_address(
    state: Data<AppState>,
    path: Path<String>,
    Valid(address): Valid<Address>,
) -> Reply {
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

//! `/fulfillments`: create, list, status, progress, history, pause, resume,
//! cancel, shipping address. Writes go to the fulfillment's actor directly (not
//! through the broker) and answer once the outcome is stored.

use actix_web::web::{Data, Path, Query};
use actix_web::HttpResponse;
use serde::Deserialize;
use shared_messages::history::History;
use shared_messages::ids;
use shared_messages::messages::{
    Address, FulfillmentProgressView, FulfillmentRequest, FulfillmentStatus, FulfillmentStatusView,
};

use super::AppState;
use crate::workflow::{Accepted, Input};
use service_kit::http::error::{
    BadBody, BadListQuery, BadReason, Lookup, NotFound, Refused, StoreDown, TooLarge,
};
use service_kit::http::paging::status_filter;
use service_kit::http::{ApiError, ErrorBody, OptionalJson, Page, Reply, Valid};

/// Said when a cancel gives no reason.
const DEFAULT_CANCEL_REASON: &str = "cancelled through the fulfillment API";

service_kit::routes! {
    create, list, status, progress, history, pause, resume, cancel, shipping_address
}

/// The `{id}` of a fulfillment's routes, documented once for all of them
/// (`params(Id)`); the handlers take it as `Path<String>`.
#[derive(utoipa::IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
struct Id(
    /// `fulfillment-<orderId>`
    #[allow(dead_code)]
    String,
);

/// Start a fulfillment (created if new; a repeat of the same order answers
/// the existing one with 200). Refused when it is not startable in its
/// current state, or when the order id is one order-service mints (its
/// fulfillment starts from order-service only).
#[utoipa::path(post, path = "/fulfillments", tag = "fulfillments", operation_id = "createFulfillment",
    request_body = FulfillmentRequest, responses(
        (status = 201, description = "created and started", body = FulfillmentStatusView),
        (status = 200, description = "it already existed; started if it was waiting", body = FulfillmentStatusView),
        Refused, BadBody, TooLarge, StoreDown))]
async fn create(state: Data<AppState>, Valid(request): Valid<FulfillmentRequest>) -> Reply {
    if ids::is_order_service_order_id(&request.order_id) {
        return Err(ApiError::Conflict(format!(
            "orderId {:?} is an order-service order id: its fulfillment is started by order-service only; use an order id of another shape for a direct fulfillment",
            request.order_id
        )));
    }
    let id = ids::fulfillment_workflow_id(&request.order_id);
    let accepted = apply(&state, &id, Input::Start(request)).await?;
    let view = state.view(&id).await?;
    Ok(if accepted.created {
        HttpResponse::Created().json(view)
    } else {
        HttpResponse::Ok().json(view)
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only fulfillments in this status (any case).
    #[param(value_type = Option<FulfillmentStatus>)]
    status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
    /// Fulfillments to skip (default 0).
    offset: Option<u32>,
}

/// `GET /fulfillments`: one page, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct FulfillmentListView {
    pub fulfillments: Vec<FulfillmentStatusView>,
    pub limit: u32,
    pub offset: u32,
}

/// List fulfillments, newest first, optionally of one status.
#[utoipa::path(get, path = "/fulfillments", tag = "fulfillments", operation_id = "listFulfillments", params(ListParams),
    responses((status = 200, description = "one page", body = FulfillmentListView), BadListQuery, StoreDown))]
async fn list(state: Data<AppState>, params: Query<ListParams>) -> Reply {
    let status = status_filter(
        params.status.as_deref(),
        &FulfillmentStatus::ALL,
        FulfillmentStatus::as_str,
    )?;
    let Page { limit, offset } = Page::new(params.limit, params.offset)?;
    let items: Vec<_> = state
        .registry
        .list(status, limit, offset)
        .await?
        .iter()
        .map(|f| f.status_view())
        .collect();
    Ok(HttpResponse::Ok().json(FulfillmentListView {
        fulfillments: items,
        limit,
        offset,
    }))
}

/// The fulfillment's status.
#[utoipa::path(get, path = "/fulfillments/{id}/status", tag = "fulfillments", operation_id = "getFulfillmentStatus",
    params(Id),
    responses((status = 200, description = "the fulfillment", body = FulfillmentStatusView), Lookup))]
async fn status(state: Data<AppState>, id: Path<String>) -> Reply {
    Ok(HttpResponse::Ok().json(state.view(&id).await?))
}

/// The fulfillment's progress: step, items picked, percentage, steps done.
#[utoipa::path(get, path = "/fulfillments/{id}/progress", tag = "fulfillments", operation_id = "getFulfillmentProgress",
    params(Id),
    responses((status = 200, description = "its progress", body = FulfillmentProgressView), Lookup))]
async fn progress(state: Data<AppState>, id: Path<String>) -> Reply {
    let f = state.find(&id).await?;
    Ok(HttpResponse::Ok().json(f.progress_view(chrono::Utc::now(), state.registry.timing())))
}

/// The fulfillment's history, oldest first: each signal received (by its
/// message type), its creation, each step completed, each status change,
/// refused cancels and an applied tombstone, with times and message ids.
#[utoipa::path(get, path = "/fulfillments/{id}/history", tag = "fulfillments", params(Id), responses(
    (status = 200, description = "its history", body = History),
    (status = 404, description = "no such fulfillment, and no cancel waiting for it", body = ErrorBody),
    StoreDown))]
async fn history(state: Data<AppState>, id: Path<String>) -> Reply {
    let events = state.registry.store().history(&id).await?;
    if events.is_empty() {
        // Nothing recorded: unknown, unless stored before history was kept.
        state.find(&id).await?;
    }
    Ok(HttpResponse::Ok().json(History {
        workflow_id: id.into_inner(),
        events,
    }))
}

/// Pause at once; a step in progress is interrupted and run again on
/// resume. Refused when it is not pausable in its current state.
#[utoipa::path(post, path = "/fulfillments/{id}/pause", tag = "fulfillments", operation_id = "pauseFulfillment", params(Id),
    responses((status = 200, description = "paused", body = FulfillmentStatusView), Refused, NotFound, StoreDown))]
async fn pause(state: Data<AppState>, id: Path<String>) -> Reply {
    signal_and_show(&state, &id, Input::Pause).await
}

/// Resume at the step that was paused. Refused when it is not paused.
#[utoipa::path(post, path = "/fulfillments/{id}/resume", tag = "fulfillments", operation_id = "resumeFulfillment", params(Id),
    responses((status = 200, description = "resumed", body = FulfillmentStatusView), Refused, NotFound, StoreDown))]
async fn resume(state: Data<AppState>, id: Path<String>) -> Reply {
    signal_and_show(&state, &id, Input::Resume).await
}

/// The optional body of a cancel.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

/// Cancel at once, with an optional reason. Refused when it has already
/// shipped, been cancelled or failed.
#[utoipa::path(post, path = "/fulfillments/{id}/cancel", tag = "fulfillments", operation_id = "cancelFulfillment", params(Id),
    request_body(content = Option<CancelBody>, description = "optional"),
    responses((status = 200, description = "cancelled", body = FulfillmentStatusView), Refused, BadReason, NotFound, TooLarge, StoreDown))]
async fn cancel(state: Data<AppState>, id: Path<String>, body: OptionalJson<CancelBody>) -> Reply {
    let reason = body.0.and_then(|b| b.reason);
    let reason = reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_CANCEL_REASON.into());
    signal_and_show(&state, &id, Input::Cancel { reason }).await
}

/// A new shipping address (until the label is printed). Refused once the
/// label is printed, or when it is finished.
#[utoipa::path(patch, path = "/fulfillments/{id}/shipping-address", tag = "fulfillments", operation_id = "updateFulfillmentShippingAddress",
    params(Id), request_body = Address,
    responses((status = 200, description = "updated", body = FulfillmentStatusView), Refused, BadBody, NotFound, TooLarge, StoreDown))]
async fn shipping_address(
    state: Data<AppState>,
    id: Path<String>,
    Valid(address): Valid<Address>,
) -> Reply {
    signal_and_show(&state, &id, Input::UpdateAddress(address)).await
}

async fn apply(state: &AppState, id: &str, input: Input) -> Result<Accepted, ApiError> {
    if let Some(held) = state.held.as_ref().filter(|held| !held.owns(id)) {
        return apply_at_owner(state, held.partition_of(id), id, input).await;
    }
    // A fulfillment created over HTTP starts (or continues) the request's trace.
    let traceparent = message_bus::trace::current().map(|t| t.traceparent());
    Ok(state
        .registry
        .signal(id, None, traceparent, input)
        .await??)
}

/// [`apply`] for a fulfillment another replica owns: the signal goes to
/// the owner through its partition queue. As over HTTP on the owner, a
/// signal for a fulfillment that does not exist is not found (sent through
/// the broker it would leave a tombstone), and a start says whether it
/// created the fulfillment.
async fn apply_at_owner(
    state: &AppState,
    partition: u16,
    id: &str,
    input: Input,
) -> Result<Accepted, ApiError> {
    let existed = state
        .registry
        .load(id)
        .await
        .map_err(ApiError::store)?
        .is_some();
    if !existed && !input.creates() {
        return Err(ApiError::NotFound(format!("no fulfillment {id}")));
    }
    let timeout = state.query_timeout;
    let reply = crate::bus::signal_owner(&state.bus, partition, id, input, timeout)
        .await
        .map_err(|e| ApiError::from_bus(e, "the fulfillment's owner", timeout.as_millis(), true))?;
    Ok(reply.map(|accepted| Accepted {
        created: !existed,
        ..accepted
    })?)
}

async fn signal_and_show(
    state: &AppState,
    id: &str,
    input: Input,
) -> Result<HttpResponse, ApiError> {
    apply(state, id, input).await?;
    Ok(HttpResponse::Ok().json(state.view(id).await?))
}

//! `/orders`: create, list, status, progress, cancel, update, and the
//! order's fulfillment pause and resume.

use std::time::Duration;

use actix_web::web::{Data, Json, Path, Query};
use actix_web::HttpResponse;
use message_bus::trace;
use serde::Deserialize;
use shared_messages::history::History;
use shared_messages::ids::order_id_from_workflow_id;
use shared_messages::messages::{FulfillmentProgressView, GetFulfillmentProgress, OrderAction};
use shared_messages::Message;

use super::error::Signalled;
use super::owner;
use super::views::{
    CancelledView, CreatedView, OrderListView, ProgressView, SignalView, StatusView,
};
use super::AppState;
use crate::actor::ApplyError;
use crate::bus;
use crate::validation::{demo_order, CreateOrder};
use crate::workflow::{
    Accepted, DetailsUpdate, Input, OrderDetails, OrderState, OrderStatus, Rejection,
};
use service_kit::http::error::{
    BadBody, BadListQuery, BadReason, Lookup, NotFound, Refused, StoreDown, TooLarge,
};
use service_kit::http::paging::status_filter;
use service_kit::http::{ApiError, ErrorBody, OptionalJson, Page, Reply};

/// How long the progress route waits for a live answer from fulfillment
/// before it shows the progress of the last event instead.
const LIVE_PROGRESS_TIMEOUT: Duration = Duration::from_millis(500);

service_kit::routes! {
    create, list, create_demo, status, progress, history, pause, resume, cancel, update
}

/// The `{workflow_id}` of an order's routes, documented once for all of them
/// (`params(WorkflowId)`); the handlers take it as `Path<String>`.
#[derive(utoipa::IntoParams)]
#[into_params(names("workflow_id"), parameter_in = Path)]
struct WorkflowId(
    /// `order-workflow-<orderId>` or the bare order id
    #[allow(dead_code)]
    String,
);

/// Accepts `order-workflow-<orderId>` (as the original) or a bare order id.
pub(super) fn order_id(workflow_id: &str) -> &str {
    order_id_from_workflow_id(workflow_id).unwrap_or(workflow_id)
}

async fn load(state: &AppState, workflow_id: &str) -> Result<OrderState, ApiError> {
    state
        .orders
        .store()
        .get(order_id(workflow_id))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::NotFound(format!("no order with workflow id {workflow_id}")))
}

/// For what waits on fulfillment-service's answer (pause, resume): the
/// broker must be there now. Writes need not: what they send to
/// fulfillment goes through the outbox, out once RabbitMQ is back.
fn require_broker(state: &AppState) -> Result<(), ApiError> {
    if state.orders.bus().is_connected() {
        Ok(())
    } else {
        Err(ApiError::BrokerUnavailable)
    }
}

async fn created(state: &AppState, details: OrderDetails) -> Result<HttpResponse, ApiError> {
    if let Some(reply) = owner::create_elsewhere(state, &details).await {
        return reply;
    }
    created_here(state, details).await
}

/// Creates the order on this replica (in a partition it holds).
pub(super) async fn created_here(
    state: &AppState,
    details: OrderDetails,
) -> Result<HttpResponse, ApiError> {
    // The order keeps the request's trace (new, or the caller's).
    let traceparent = message_bus::trace::current().map(|t| t.traceparent());
    let order = state
        .orders
        .create(details, traceparent)
        .await
        .map_err(ApiError::store)?;
    Ok(HttpResponse::Created().json(CreatedView {
        order_id: order.order_id,
        workflow_id: order.workflow_id,
        message: "Order created successfully".into(),
    }))
}

/// Create an order; its saga starts at once.
#[utoipa::path(post, path = "/orders", tag = "orders", operation_id = "createOrder", request_body = CreateOrder,
    responses((status = 201, description = "created; follow it by its workflowId", body = CreatedView), BadBody, TooLarge, StoreDown))]
async fn create(state: Data<AppState>, body: Json<CreateOrder>) -> Reply {
    let details = body
        .into_inner()
        .validate()
        .map_err(ApiError::InvalidField)?;
    created(&state, details).await
}

/// Create the original demo's order (two `product-1`, one `product-2`).
#[utoipa::path(post, path = "/orders/demo", tag = "orders", operation_id = "createDemoOrder",
    responses((status = 201, description = "created", body = CreatedView), StoreDown))]
async fn create_demo(state: Data<AppState>) -> Reply {
    created(&state, demo_order()).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only orders in this status (any case).
    #[param(value_type = Option<OrderStatus>)]
    status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
    /// Orders to skip (default 0).
    offset: Option<u32>,
}

/// An order status given as a query parameter (any case; empty is none).
fn parse_status(value: Option<&str>) -> Result<Option<OrderStatus>, ApiError> {
    status_filter(value, &OrderStatus::ALL, OrderStatus::as_str)
}

/// List orders, newest first, optionally of one status.
#[utoipa::path(get, path = "/orders", tag = "orders", operation_id = "listOrders", params(ListParams),
    responses((status = 200, description = "one page of orders", body = OrderListView), BadListQuery, StoreDown))]
async fn list(state: Data<AppState>, params: Query<ListParams>) -> Reply {
    let status = parse_status(params.status.as_deref())?;
    let Page { limit, offset } = Page::new(params.limit, params.offset)?;
    let page = state
        .orders
        .store()
        .list(status, limit, u64::from(offset))
        .await
        .map_err(ApiError::store)?;
    let orders: Vec<StatusView> = page.orders.iter().map(StatusView::from).collect();
    Ok(HttpResponse::Ok().json(OrderListView {
        orders,
        total: page.total,
        limit,
        offset,
    }))
}

/// `GET /orders/{id}/status` query: optionally wait for a status.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub(crate) struct StatusParams {
    /// Answer once the order has this status (any case) or a final one
    /// (`SHIPPED`, `CANCELLED`, `FAILED`), or when `timeoutMs` has passed,
    /// instead of at once: a client waits without polling.
    #[param(value_type = Option<OrderStatus>)]
    wait_for: Option<String>,
    /// How long to wait, 0 to 30000 ms (default 10000); only with `waitFor`.
    timeout_ms: Option<u64>,
}

/// The longest a status request may wait (`timeoutMs`).
const MAX_WAIT_MS: u64 = 30_000;
const DEFAULT_WAIT_MS: u64 = 10_000;

/// The order's status, including its fulfillment's; with `waitFor`, once
/// the order has that status (or a final one) or the wait is over.
#[utoipa::path(get, path = "/orders/{workflow_id}/status", tag = "orders", operation_id = "getOrderStatus",
    params(WorkflowId, StatusParams),
    responses(
        (status = 200, description = "the order (with `waitFor`: in that status, in a final one, or as it is when the wait ran out)", body = StatusView),
        (status = 400, description = "unknown `waitFor` status, or `timeoutMs` out of range", body = ErrorBody),
        Lookup,
    ))]
async fn status(state: Data<AppState>, path: Path<String>, params: Query<StatusParams>) -> Reply {
    let params = params.into_inner();
    let waits = parse_status(params.wait_for.as_deref()).is_ok_and(|s| s.is_some())
        && params.timeout_ms.unwrap_or(DEFAULT_WAIT_MS) <= MAX_WAIT_MS;
    if let Some(raw) = params.wait_for.clone().filter(|_| waits) {
        // A wait is woken by the order's changes, which its owner makes.
        let action = OrderAction::WaitFor {
            wait_for: raw,
            timeout_ms: params.timeout_ms,
        };
        let waits = Duration::from_millis(params.timeout_ms.unwrap_or(DEFAULT_WAIT_MS));
        if let Some(reply) = owner::elsewhere(&state, &path, action, waits).await {
            return reply;
        }
    }
    status_here(&state, &path, params.wait_for.as_deref(), params.timeout_ms).await
}

/// [`status`] answered by this replica.
pub(super) async fn status_here(
    state: &AppState,
    path: &str,
    wait_for: Option<&str>,
    timeout_ms: Option<u64>,
) -> Reply {
    let wait_for = parse_status(wait_for)?;
    let timeout_ms = timeout_ms.unwrap_or(DEFAULT_WAIT_MS);
    if timeout_ms > MAX_WAIT_MS {
        return Err(ApiError::InvalidParameter(format!(
            "timeoutMs must be from 0 to {MAX_WAIT_MS}"
        )));
    }
    let Some(wait_for) = wait_for else {
        let order = load(state, path).await?;
        return Ok(HttpResponse::Ok().json(StatusView::from(&order)));
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let order = wait_until(state, path, deadline, |o| o.status == wait_for).await?;
    Ok(HttpResponse::Ok().json(StatusView::from(&order)))
}

/// The order once `done(order)` holds, it is final, or `deadline` has
/// passed. An unknown or finished order registers no watcher, and every
/// watcher registered is dropped when the wait ends.
async fn wait_until(
    state: &AppState,
    workflow_id: &str,
    deadline: tokio::time::Instant,
    done: impl Fn(&OrderState) -> bool,
) -> Result<OrderState, ApiError> {
    let order = load(state, workflow_id).await?;
    if done(&order) || order.status.is_final() || tokio::time::Instant::now() >= deadline {
        return Ok(order);
    }
    let id = order_id(workflow_id);
    let result = loop {
        // Watch before reading, so a change between the two still wakes us.
        let changed = state.orders.watch(id);
        let order = match load(state, workflow_id).await {
            Ok(order) => order,
            Err(error) => break Err(error),
        };
        if done(&order) || order.status.is_final() || tokio::time::Instant::now() >= deadline {
            break Ok(order);
        }
        // Woken by a change of status, or the wait is over.
        let _ = tokio::time::timeout_at(deadline, changed).await;
    };
    state.orders.unwatch(id);
    result
}

/// Every input, decision and effect of the order, oldest first, each with
/// its time, type and message id (like Temporal's event history).
#[utoipa::path(get, path = "/orders/{workflow_id}/history", tag = "orders",
    params(WorkflowId),
    responses((status = 200, description = "the order's history", body = History), Lookup))]
async fn history(state: Data<AppState>, path: Path<String>) -> Reply {
    let order = load(&state, &path).await?;
    let events = state
        .orders
        .store()
        .history(&order.order_id)
        .await
        .map_err(ApiError::store)?;
    Ok(HttpResponse::Ok().json(History {
        workflow_id: order.workflow_id,
        events,
    }))
}

/// The order's steps with their timestamps, and its fulfillment's progress.
#[utoipa::path(get, path = "/orders/{workflow_id}/progress", tag = "orders", operation_id = "getOrderProgress",
    params(WorkflowId),
    responses((status = 200, description = "the order's progress", body = ProgressView), Lookup))]
async fn progress(state: Data<AppState>, path: Path<String>) -> Reply {
    let order = load(&state, &path).await?;
    let mut view = ProgressView::from(&order);
    if let Some(live) = live_fulfillment_progress(&state, &order).await {
        view.fulfillment = Some(live);
    }
    Ok(HttpResponse::Ok().json(view))
}

/// The progress of an order's running fulfillment, asked for now. Status
/// events bring each change of status; the steps in between (each item
/// picked, the label printed) are progress events order-service does not
/// subscribe to, so a reader gets them here. `None` when the order is not
/// waiting on its fulfillment or no answer comes quickly; the view then
/// shows the progress of the last event.
async fn live_fulfillment_progress(
    state: &AppState,
    order: &OrderState,
) -> Option<FulfillmentProgressView> {
    let fulfillment_id = order.fulfillment_workflow_id.as_deref()?;
    if !order.status.is_waiting_on_fulfillment() || !state.orders.bus().is_connected() {
        return None;
    }
    let reply = bus::query(
        state.orders.bus(),
        fulfillment_id,
        Message::GetFulfillmentProgress(GetFulfillmentProgress {}),
        trace::current_child(),
        state.query_timeout.min(LIVE_PROGRESS_TIMEOUT),
    )
    .await;
    match reply.map(|r| r.message) {
        Ok(Message::FulfillmentProgressReply(progress)) => Some(*progress),
        Ok(other) => {
            tracing::debug!(%fulfillment_id, reply = other.type_name(), "live progress: no progress reply");
            None
        }
        Err(error) => {
            tracing::debug!(%fulfillment_id, %error, "live progress: no answer");
            None
        }
    }
}

/// Pause the order's fulfillment; answers fulfillment's verdict. Refused
/// before fulfillment has started, or when it is not pausable now.
#[utoipa::path(post, path = "/orders/{workflow_id}/fulfillment/pause", tag = "orders", operation_id = "pauseOrderFulfillment",
    params(WorkflowId), responses((status = 200, description = "paused", body = SignalView), Signalled))]
async fn pause(state: Data<AppState>, path: Path<String>) -> Reply {
    if let Some(reply) =
        owner::elsewhere(&state, &path, OrderAction::PauseFulfillment, Duration::ZERO).await
    {
        return reply;
    }
    control(&state, &path, Input::PauseFulfillment, "Fulfillment paused").await
}

/// Resume the order's paused fulfillment, at the step that was paused.
/// Refused before fulfillment has started, or when it is not paused.
#[utoipa::path(post, path = "/orders/{workflow_id}/fulfillment/resume", tag = "orders", operation_id = "resumeOrderFulfillment",
    params(WorkflowId), responses((status = 200, description = "resumed", body = SignalView), Signalled))]
async fn resume(state: Data<AppState>, path: Path<String>) -> Reply {
    if let Some(reply) = owner::elsewhere(
        &state,
        &path,
        OrderAction::ResumeFulfillment,
        Duration::ZERO,
    )
    .await
    {
        return reply;
    }
    control(
        &state,
        &path,
        Input::ResumeFulfillment,
        "Fulfillment resumed",
    )
    .await
}

/// Gives pause or resume to the order; what it decides to forward goes to
/// its fulfillment, whose verdict is the answer.
pub(super) async fn control(
    state: &AppState,
    workflow_id: &str,
    input: Input,
    done: &str,
) -> Result<HttpResponse, ApiError> {
    let applied = state
        .orders
        .apply(order_id(workflow_id), input)
        .await
        .map_err(|e| apply_error(workflow_id, e))?;
    let Accepted::Forward {
        fulfillment_id,
        signal,
    } = applied.reply
    else {
        return Err(ApiError::internal(format!(
            "the order took {done:?} without forwarding it"
        )));
    };
    require_broker(state)?;
    let reply = bus::signal_with_reply(
        state.orders.bus(),
        &fulfillment_id,
        *signal,
        state.query_timeout,
    )
    .await
    .map_err(|e| super::error::from_bus(e, state.timeout_ms(), true))?;
    match reply.message {
        Message::SignalReply(r) if r.accepted => Ok(HttpResponse::Ok().json(SignalView {
            message: done.into(),
            fulfillment_workflow_id: fulfillment_id,
            status: r.status,
        })),
        Message::SignalReply(r) => Err(match r.error {
            // The order knows its fulfillment is coming; until fulfillment
            // has it, this is a state conflict, not a missing resource.
            Some(e) => ApiError::Conflict(e.message),
            None => ApiError::Conflict(format!("fulfillment {fulfillment_id} refused the signal")),
        }),
        Message::QueryFailed(e) => Err(ApiError::from(e)),
        other => Err(ApiError::BadReply(format!(
            "fulfillment-service answered {} to a signal",
            other.type_name()
        ))),
    }
}

/// The optional body of `DELETE /orders/{workflowId}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why; recorded as the cancellation reason.
    reason: Option<String>,
}

fn apply_error(workflow_id: &str, error: ApplyError) -> ApiError {
    match error {
        ApplyError::NotFound => {
            ApiError::NotFound(format!("no order with workflow id {workflow_id}"))
        }
        ApplyError::Rejected(Rejection::Invalid(m)) => ApiError::InvalidField(m),
        ApplyError::Rejected(r) => ApiError::Conflict(r.to_string()),
        ApplyError::Store(e) => ApiError::store(e),
        ApplyError::Unavailable => ApiError::Unavailable(ApplyError::Unavailable.to_string()),
    }
}

/// Cancel the order. Before the hand-over to fulfillment it is cancelled
/// at once (stock released, payment refunded). After it, the fulfillment
/// decides (it owns the goods): the order is `CANCELLING` until the
/// fulfillment confirms (then compensated and `CANCELLED`: 200) or answers
/// that it has shipped (the order ends `SHIPPED`, nothing refunded: 409).
/// The answer waits up to `QUERY_TIMEOUT_MS` for that outcome; 202 while
/// it is still pending (follow it on the status or history route).
/// Refused when it has shipped, or is already cancelled or failed.
#[utoipa::path(delete, path = "/orders/{workflow_id}", tag = "orders", operation_id = "cancelOrder", params(WorkflowId),
    request_body(content = Option<CancelBody>, description = "optional"), responses(
        (status = 200, description = "cancelled", body = CancelledView),
        (status = 202, description = "cancel requested, the fulfillment has not answered yet (`status` is `CANCELLING`)", body = CancelledView),
        (status = 503, description = "the order's actor is restarting, or the store does not answer", body = ErrorBody),
        Refused, BadReason, NotFound, TooLarge))]
async fn cancel(
    state: Data<AppState>,
    path: Path<String>,
    body: OptionalJson<CancelBody>,
) -> Reply {
    let reason = body.0.unwrap_or_default().reason;
    let action = OrderAction::Cancel {
        reason: reason.clone(),
    };
    // The owner may wait up to QUERY_TIMEOUT_MS for the fulfillment.
    if let Some(reply) = owner::elsewhere(&state, &path, action, state.query_timeout).await {
        return reply;
    }
    cancel_here(&state, &path, reason).await
}

/// [`cancel`] on this replica.
pub(super) async fn cancel_here(state: &AppState, path: &str, reason: Option<String>) -> Reply {
    let order = state
        .orders
        .apply(order_id(path), Input::Cancel { reason })
        .await
        .map_err(|e| apply_error(path, e))?
        .state;
    let order = if order.status == OrderStatus::Cancelling {
        let deadline = tokio::time::Instant::now() + state.query_timeout;
        wait_until(state, path, deadline, |o| {
            o.status != OrderStatus::Cancelling
        })
        .await?
    } else {
        order
    };
    let view = |message: &str, order: OrderState| CancelledView {
        message: message.into(),
        order_id: order.order_id,
        workflow_id: order.workflow_id,
        status: order.status,
        cancellation_reason: order.cancellation_reason,
    };
    match order.status {
        OrderStatus::Cancelled => Ok(HttpResponse::Ok().json(view("Order cancelled", order))),
        OrderStatus::Cancelling => Ok(HttpResponse::Accepted().json(view(
            "Cancel requested; waiting for the fulfillment to confirm (see the order's status or history)",
            order,
        ))),
        OrderStatus::Shipped => Err(ApiError::Conflict(order.cancel_refused.unwrap_or_else(
            || "the cancel was refused: the order has already shipped".into(),
        ))),
        other => Err(ApiError::Conflict(format!(
            "the order ended {other} while its cancel was pending: {}",
            order.error.as_deref().unwrap_or("no reason recorded")
        ))),
    }
}

/// Change the contact details or the address before fulfillment starts:
/// 400 when there is nothing to change or a field is wrong, refused once
/// fulfillment has started.
#[utoipa::path(patch, path = "/orders/{workflow_id}", tag = "orders", operation_id = "updateOrder", params(WorkflowId),
    request_body = DetailsUpdate,
    responses((status = 200, description = "the updated order", body = StatusView), BadBody, Refused, NotFound, TooLarge, StoreDown))]
async fn update(state: Data<AppState>, path: Path<String>, body: Json<DetailsUpdate>) -> Reply {
    let update = body.into_inner();
    if update == DetailsUpdate::default() {
        return Err(ApiError::InvalidField(
            "nothing to change: send customerEmail, customerName or shippingAddress".into(),
        ));
    }
    let action = OrderAction::Update {
        update: serde_json::to_value(&update)
            .map_err(|e| ApiError::internal(format!("an update as JSON: {e}")))?,
    };
    if let Some(reply) = owner::elsewhere(&state, &path, action, Duration::ZERO).await {
        return reply;
    }
    update_here(&state, &path, update).await
}

/// [`update`] on this replica.
pub(super) async fn update_here(state: &AppState, path: &str, update: DetailsUpdate) -> Reply {
    let order = state
        .orders
        .apply(order_id(path), Input::UpdateDetails(update))
        .await
        .map_err(|e| apply_error(path, e))?
        .state;
    Ok(HttpResponse::Ok().json(StatusView::from(&order)))
}

//! How failures of the order surface's own sources become the kit's
//! [`ApiError`] (one vocabulary for both services), and how the routes
//! that go through RabbitMQ document them.

use message_bus::BusError;
use service_kit::http::{ApiError, ErrorBody};

/// A bus failure while waiting for fulfillment-service; `signal` when
/// what was sent is a signal (it stays queued when no answer comes).
pub fn from_bus(error: BusError, timeout_ms: u128, signal: bool) -> ApiError {
    ApiError::from_bus(error, "fulfillment-service", timeout_ms, signal)
}

/// Documents, on a route that asks fulfillment-service through RabbitMQ
/// and answers its reply, how that can fail.
#[derive(utoipa::IntoResponses)]
pub enum Queried {
    #[response(
        status = 404,
        description = "fulfillment-service has no such fulfillment"
    )]
    NotFound(ErrorBody),
    #[response(
        status = 502,
        description = "fulfillment-service sent an unreadable reply"
    )]
    BadReply(ErrorBody),
    #[response(status = 503, description = "RabbitMQ unavailable")]
    BrokerDown(ErrorBody),
    #[response(
        status = 504,
        description = "fulfillment-service did not answer in time"
    )]
    Timeout(ErrorBody),
}

/// Documents, on a route that signals a fulfillment through RabbitMQ and
/// answers its verdict, how that can end other than with 200: refused in
/// its current state (the route's description says when), nothing of
/// that id, RabbitMQ down, no answer in time.
#[derive(utoipa::IntoResponses)]
pub enum Signalled {
    #[response(status = 409, description = "refused in its current state")]
    Refused(ErrorBody),
    #[response(status = 404, description = "nothing has this id")]
    NotFound(ErrorBody),
    #[response(status = 503, description = "RabbitMQ unavailable")]
    BrokerDown(ErrorBody),
    #[response(
        status = 504,
        description = "fulfillment-service did not answer in time; the signal stays queued"
    )]
    Timeout(ErrorBody),
}

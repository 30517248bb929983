//! How failures of the order surface's own sources become the kit's
//! [`ApiError`] (one vocabulary for both services).

use message_bus::BusError;
use service_kit::http::ApiError;

/// A bus failure while waiting for fulfillment-service; `signal` when
/// what was sent is a signal (it stays queued when no answer comes).
pub fn from_bus(error: BusError, timeout_ms: u128, signal: bool) -> ApiError {
    ApiError::from_bus(error, "fulfillment-service", timeout_ms, signal)
}

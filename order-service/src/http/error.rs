//! The one error type of the HTTP surface: a status per variant, a JSON body
//! `{"error": "<stable code>", "message": "..."}`, causes in the log only.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use shared_messages::bus::BusError;
use shared_messages::messages::{ReplyError, ReplyErrorCode};

use crate::store::StoreError;

/// Every error answer: a stable code and a message a person can act on.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `invalid_body`, `invalid_field`, `invalid_parameter`,
    /// `payload_too_large`, `not_found`, `conflict`, `broker_unavailable`,
    /// `fulfillment_timeout`, `bad_reply`, `unavailable`, `store_unavailable`,
    /// `internal`, `not_ready`.
    #[schema(example = "not_found")]
    pub error: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON or does not fit the expected shape.
    #[error("{0}")]
    InvalidBody(String),
    /// The body parsed, but a field is wrong.
    #[error("{0}")]
    InvalidField(String),
    /// A path or query parameter is wrong.
    #[error("{0}")]
    InvalidParameter(String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "RabbitMQ is not reachable right now; the service reconnects by itself, try again shortly"
    )]
    BrokerUnavailable,
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    BadReply(String),
    #[error("{0}")]
    Unavailable(String),
    /// The store failed; the cause goes to the log, never to the caller.
    #[error("the order store is not available; try again shortly")]
    Store(#[source] StoreError),
    /// The cause goes to the log, never to the caller.
    #[error("internal error; the service log has the details")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidBody(_) => "invalid_body",
            Self::InvalidField(_) => "invalid_field",
            Self::InvalidParameter(_) => "invalid_parameter",
            Self::TooLarge(_) => "payload_too_large",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::BrokerUnavailable => "broker_unavailable",
            Self::Timeout(_) => "fulfillment_timeout",
            Self::BadReply(_) => "bad_reply",
            Self::Unavailable(_) => "unavailable",
            Self::Store(_) => "store_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::Internal(error.to_string())
    }

    /// A bus failure while waiting for fulfillment. `what` says what was
    /// sent, for the timeout message.
    pub fn from_bus(error: BusError, timeout_ms: u128, signal: bool) -> Self {
        match error {
            BusError::NotConnected => Self::BrokerUnavailable,
            BusError::Timeout(_) if signal => Self::Timeout(format!(
                "fulfillment-service did not answer within {timeout_ms} ms; the signal stays queued and takes effect when fulfillment-service is back"
            )),
            BusError::Timeout(_) => Self::Timeout(format!(
                "fulfillment-service did not answer within {timeout_ms} ms; it may be down or overloaded"
            )),
            BusError::BadReply(e) => Self::BadReply(format!("fulfillment-service sent a reply that cannot be read: {e}")),
            other => Self::Unavailable(format!("could not reach fulfillment-service through RabbitMQ: {other}")),
        }
    }

    /// A refusal from fulfillment-service, with its reason.
    pub fn from_reply(error: ReplyError) -> Self {
        match error.code {
            ReplyErrorCode::NotFound => Self::NotFound(error.message),
            ReplyErrorCode::Conflict => Self::Conflict(error.message),
            ReplyErrorCode::Invalid => Self::InvalidField(error.message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidBody(_) | Self::InvalidField(_) | Self::InvalidParameter(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::BrokerUnavailable | Self::Unavailable(_) | Self::Store(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BadReply(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Internal(cause) => tracing::error!(%cause, "request failed"),
            Self::Store(source) => tracing::error!(error = %source, "store failure answered 503"),
            _ => {}
        }
        HttpResponse::build(self.status_code()).json(ErrorBody {
            error: self.code().into(),
            message: self.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_stay_out_of_the_body() {
        let e = ApiError::internal("disk I/O error at /secret/path");
        assert!(!e.to_string().contains("/secret/path"));
        assert_eq!(e.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn timeouts_say_who_did_not_answer() {
        let e = ApiError::from_bus(
            BusError::Timeout(std::time::Duration::from_millis(300)),
            300,
            true,
        );
        assert_eq!(e.status_code(), StatusCode::GATEWAY_TIMEOUT);
        assert!(e
            .to_string()
            .contains("fulfillment-service did not answer within 300 ms"));
        assert!(e.to_string().contains("stays queued"));
        assert_eq!(
            ApiError::from_bus(BusError::NotConnected, 1, false).status_code(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}

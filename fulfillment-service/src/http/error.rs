//! HTTP errors: a status per case and a small JSON body with a stable
//! `error` code and a `message` a person can act on.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use shared_messages::messages::{ReplyError, ReplyErrorCode};

use crate::store::StoreError;

/// Every error answer: a stable code and a message a person can act on.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `invalid_body`, `invalid_input`, `not_found`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `store_unavailable`,
    /// `not_ready`.
    #[schema(example = "not_found")]
    pub error: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body must be JSON: send Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the fulfillment store is not available; try again shortly")]
    Store(#[source] StoreError),
    #[error("{0}")]
    NotReady(String),
}

impl ApiError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidBody(_) => "invalid_body",
            Self::InvalidInput(_) => "invalid_input",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Store(_) => "store_unavailable",
            Self::NotReady(_) => "not_ready",
        }
    }
}

impl From<ReplyError> for ApiError {
    fn from(e: ReplyError) -> Self {
        match e.code {
            ReplyErrorCode::NotFound => Self::NotFound(e.message),
            ReplyErrorCode::Conflict => Self::Conflict(e.message),
            ReplyErrorCode::Invalid => Self::InvalidInput(e.message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidBody(_) | Self::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Store(_) | Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Store(source) = self {
            // The cause goes to the log, never into the body.
            tracing::error!(error = %source, "store failure answered 503");
        }
        HttpResponse::build(self.status_code()).json(ErrorBody {
            error: self.code().into(),
            message: self.to_string(),
        })
    }
}

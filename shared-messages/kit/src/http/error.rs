//! The one error vocabulary of both services' HTTP surfaces: a status per
//! kind of failure, the same in both, and a JSON body
//! `{"error": "<stable code>", "message": "..."}`; causes go to the log,
//! never into the body.
//!
//! Also the extractor settings that turn bad input into these errors
//! ([`extractors`]): malformed or oversized bodies, wrong path and query
//! parameters, unknown routes.

use actix_web::dev::Payload;
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use futures::future::LocalBoxFuture;
use message_bus::BusError;
use shared_messages::messages::{ReplyError, ReplyErrorCode, Validate};

/// Largest accepted request body, in both services: an order with the
/// maximum 200 lines of long names, or a fulfillment request with as many
/// items, fits well inside; anything bigger is a mistake or an attack.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Every error answer: a stable code and a message a person can act on.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `invalid_body`, `invalid_field`, `invalid_parameter`,
    /// `payload_too_large`, `unsupported_media_type`, `not_found`,
    /// `conflict`, `broker_unavailable`, `store_unavailable`, `unavailable`,
    /// `fulfillment_timeout`, `bad_reply`, `internal`, `not_ready` (and the
    /// access guard's `unauthorized`, `forbidden`, `cross_origin`).
    #[schema(example = "not_found")]
    pub error: String,
    pub message: String,
}

/// What a request can fail with, a variant per status and code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or cannot be read.
    #[error("{0}")]
    InvalidBody(String),
    /// 400: the body is JSON, but a field is missing, of the wrong type or
    /// out of range.
    #[error("{0}")]
    InvalidField(String),
    /// 400: a path or query parameter is wrong.
    #[error("{0}")]
    InvalidParameter(String),
    /// 413.
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// 415.
    #[error("the request body must be JSON: send Content-Type: application/json")]
    UnsupportedMediaType,
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: not possible in the current state, with why.
    #[error("{0}")]
    Conflict(String),
    /// 503: what was asked needs RabbitMQ now (a request with a reply).
    #[error(
        "RabbitMQ is not reachable right now; the service reconnects by itself, try again shortly"
    )]
    BrokerUnavailable,
    /// 503: the store does not answer; the cause goes to the log.
    #[error("the store is not available; try again shortly")]
    StoreUnavailable(String),
    /// 503: something else this request needs is not there now.
    #[error("{0}")]
    Unavailable(String),
    /// 504: the other service did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// 502: the other service answered something that cannot be read.
    #[error("{0}")]
    BadReply(String),
    /// 500: the cause goes to the log, never to the caller.
    #[error("internal error; the service log has the details")]
    Internal(String),
}

impl ApiError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidBody(_) => "invalid_body",
            Self::InvalidField(_) => "invalid_field",
            Self::InvalidParameter(_) => "invalid_parameter",
            Self::TooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::BrokerUnavailable => "broker_unavailable",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "fulfillment_timeout",
            Self::BadReply(_) => "bad_reply",
            Self::Internal(_) => "internal",
        }
    }

    /// A store failure: 503, the cause in the log.
    pub fn store(error: impl std::fmt::Display) -> Self {
        Self::StoreUnavailable(error.to_string())
    }

    /// A failure that is no one's input and no dependency's absence: 500,
    /// the cause in the log.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::Internal(error.to_string())
    }

    /// A failure reaching `peer` (the other service) through RabbitMQ with
    /// a request that waits `timeout_ms` for its answer; `signal` when
    /// what was sent is a signal, which stays queued when no answer comes.
    pub fn from_bus(error: BusError, peer: &str, timeout_ms: u128, signal: bool) -> Self {
        match error {
            BusError::NotConnected => Self::BrokerUnavailable,
            BusError::Timeout(_) if signal => Self::Timeout(format!(
                "{peer} did not answer within {timeout_ms} ms; the signal stays queued and takes effect when {peer} is back"
            )),
            BusError::Timeout(_) => Self::Timeout(format!(
                "{peer} did not answer within {timeout_ms} ms; it may be down or overloaded"
            )),
            BusError::BadReply(e) => {
                Self::BadReply(format!("{peer} sent a reply that cannot be read: {e}"))
            }
            other => Self::Unavailable(format!(
                "could not reach {peer} through RabbitMQ: {other}"
            )),
        }
    }

    /// A body that did not parse as the expected JSON: malformed JSON is
    /// `invalid_body`, JSON of the wrong shape `invalid_field`.
    pub fn from_json(error: &serde_json::Error) -> Self {
        if error.is_data() {
            Self::InvalidField(format!("the body does not fit: {error}"))
        } else {
            Self::InvalidBody(format!("invalid JSON body: {error}"))
        }
    }
}

/// A refusal from the other service (or from an actor), with its reason.
impl From<ReplyError> for ApiError {
    fn from(error: ReplyError) -> Self {
        match error.code {
            ReplyErrorCode::NotFound => Self::NotFound(error.message),
            ReplyErrorCode::Conflict => Self::Conflict(error.message),
            ReplyErrorCode::Invalid => Self::InvalidField(error.message),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidBody(_) | Self::InvalidField(_) | Self::InvalidParameter(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::BrokerUnavailable | Self::StoreUnavailable(_) | Self::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BadReply(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::StoreUnavailable(cause) => tracing::error!(%cause, "store failure answered 503"),
            Self::Internal(cause) => tracing::error!(%cause, "request failed"),
            _ => {}
        }
        HttpResponse::build(self.status_code()).json(ErrorBody {
            error: self.code().into(),
            message: self.to_string(),
        })
    }
}

/// The body limit and JSON error answers for bodies, paths and queries,
/// and a JSON 404 for unknown routes: call it in the service's `configure`.
pub fn extractors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            .error_handler(json_error),
    )
    .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
    .app_data(web::PathConfig::default().error_handler(path_error))
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .default_service(web::to(not_found));
}

fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    match &err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::TooLarge {
                limit: MAX_BODY_BYTES,
            }
        }
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        JsonPayloadError::Deserialize(e) => ApiError::from_json(e),
        other => ApiError::InvalidBody(format!("cannot read the body: {other}")),
    }
    .into()
}

fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidParameter(format!("invalid path: {err}")).into()
}

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidParameter(format!("invalid query string: {err}")).into()
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}; see /openapi.json for the API",
        req.method(),
        req.path()
    )))
}

/// A JSON body that may be absent (e.g. a cancel with an optional reason):
/// take the body as `Result<web::Bytes, actix_web::Error>` and pass it here.
pub fn optional_json<T: serde::de::DeserializeOwned>(
    body: Result<web::Bytes, actix_web::Error>,
) -> Result<Option<T>, ApiError> {
    let body = body.map_err(|e| {
        if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge {
                limit: MAX_BODY_BYTES,
            }
        } else {
            ApiError::InvalidBody(format!("cannot read the body: {e}"))
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| ApiError::from_json(&e))
}

/// A JSON body that may be absent, as an extractor (e.g. a cancel with an
/// optional reason): `None` when the body is empty or white space; a body
/// that does not parse or is too large answers like [`optional_json`].
pub struct OptionalJson<T>(pub Option<T>);

impl<T: serde::de::DeserializeOwned + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = web::Bytes::from_request(req, payload);
        Box::pin(async move { optional_json(body.await).map(OptionalJson) })
    }
}

/// A JSON body that must also be valid ([`Validate`]):
/// `Valid(address): Valid<Address>`. A body that does not parse answers as
/// with `web::Json`; one that parses but is not valid is 400
/// `invalid_field`, saying what is wrong.
pub struct Valid<T>(pub T);

impl<T: serde::de::DeserializeOwned + Validate + 'static> FromRequest for Valid<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = web::Json::<T>::from_request(req, payload);
        Box::pin(async move {
            let body = body.await?.into_inner();
            body.validate().map_err(ApiError::InvalidField)?;
            Ok(Valid(body))
        })
    }
}

/// A store failure: 503 `store_unavailable`, the cause in the log (one
/// vocabulary for both services).
impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        Self::store(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as web_test;
    use actix_web::App;

    #[test]
    fn causes_stay_out_of_the_body() {
        for e in [
            ApiError::internal("disk I/O error at /secret/path"),
            ApiError::store("connection to /secret/path refused"),
        ] {
            assert!(!e.to_string().contains("/secret/path"));
        }
        assert_eq!(
            ApiError::store("x").status_code(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn timeouts_say_who_did_not_answer() {
        let e = ApiError::from_bus(
            BusError::Timeout(std::time::Duration::from_millis(300)),
            "fulfillment-service",
            300,
            true,
        );
        assert_eq!(e.status_code(), StatusCode::GATEWAY_TIMEOUT);
        assert!(e
            .to_string()
            .contains("fulfillment-service did not answer within 300 ms"));
        assert!(e.to_string().contains("stays queued"));
        assert_eq!(
            ApiError::from_bus(BusError::NotConnected, "x", 1, false).status_code(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Reason {
        reason: Option<String>,
    }

    async fn echo(body: web::Json<Reason>) -> HttpResponse {
        HttpResponse::Ok().json(body.reason.clone())
    }

    #[actix_web::test]
    async fn bad_input_answers_one_json_vocabulary() {
        let app = web_test::init_service(
            App::new()
                .configure(extractors)
                .route("/echo/{n}", web::post().to(echo))
                .route("/valid", web::post().to(valid)),
        )
        .await;
        let cases = [
            (
                "/valid",
                "application/json",
                b"{\"reason\": \" \"}".to_vec(),
                400,
                "invalid_field",
            ),
            (
                "/valid",
                "application/json",
                b"{oops".to_vec(),
                400,
                "invalid_body",
            ),
            (
                "/echo/1",
                "application/json",
                b"{oops".to_vec(),
                400,
                "invalid_body",
            ),
            (
                "/echo/1",
                "application/json",
                b"{\"reason\": 3}".to_vec(),
                400,
                "invalid_field",
            ),
            (
                "/echo/1",
                "text/plain",
                b"hi".to_vec(),
                415,
                "unsupported_media_type",
            ),
            (
                "/echo/1",
                "application/json",
                vec![b' '; MAX_BODY_BYTES + 1],
                413,
                "payload_too_large",
            ),
            (
                "/nowhere",
                "application/json",
                b"{}".to_vec(),
                404,
                "not_found",
            ),
        ];
        for (uri, content_type, body, status, code) in cases {
            let res = web_test::call_service(
                &app,
                web_test::TestRequest::post()
                    .uri(uri)
                    .insert_header(("content-type", content_type))
                    .set_payload(body)
                    .to_request(),
            )
            .await;
            assert_eq!(res.status().as_u16(), status, "{uri} {content_type}");
            let body: serde_json::Value = web_test::read_body_json(res).await;
            assert_eq!(body["error"], code, "{body}");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let valid = web_test::TestRequest::post()
            .uri("/valid")
            .insert_header(("content-type", "application/json"))
            .set_payload(&b"{\"reason\": \"ok\"}"[..])
            .to_request();
        let res = web_test::call_service(&app, valid).await;
        assert_eq!(res.status().as_u16(), 200, "a valid body passes");
    }

    impl Validate for Reason {
        fn validate(&self) -> Result<(), String> {
            match &self.reason {
                Some(r) if r.trim().is_empty() => Err("reason must not be blank".into()),
                _ => Ok(()),
            }
        }
    }

    async fn valid(Valid(body): Valid<Reason>) -> HttpResponse {
        HttpResponse::Ok().json(body.reason)
    }

    #[test]
    fn an_absent_body_is_none_and_a_wrong_one_an_error() {
        let parse = |s: &'static str| optional_json::<Reason>(Ok(web::Bytes::from(s)));
        assert!(matches!(parse(" \n"), Ok(None)));
        assert!(matches!(parse("{\"reason\": \"x\"}"), Ok(Some(_))));
        assert_eq!(parse("{oops").err().map(|e| e.code()), Some("invalid_body"));
        // The wrong shape is seen before the missing end.
        assert_eq!(parse("[1").err().map(|e| e.code()), Some("invalid_field"));
        assert_eq!(
            parse("{\"reason\": 3}").err().map(|e| e.code()),
            Some("invalid_field")
        );
    }
}

/// Documents, on a route that reads or writes the store, its 503 when the
/// store does not answer: `responses((status = 200, ..), StoreDown)`.
#[derive(utoipa::IntoResponses)]
#[response(status = 503, description = "the store does not answer")]
pub struct StoreDown(pub ErrorBody);

/// Documents, on a route that takes a body, its 413 past
/// [`MAX_BODY_BYTES`] (the access guard documents the 415 of a body that
/// is not JSON).
#[derive(utoipa::IntoResponses)]
#[response(status = 413, description = "the body is larger than 256 KiB")]
pub struct TooLarge(pub ErrorBody);

/// Documents, on a route that takes a JSON body, its 400 when the body
/// does not parse or a field is wrong.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 400,
    description = "the body is not JSON, or a field is wrong"
)]
pub struct BadBody(pub ErrorBody);

/// Documents, on a list route, its 400 for a status filter or page it
/// cannot take.
#[derive(utoipa::IntoResponses)]
#[response(status = 400, description = "unknown status, or limit out of range")]
pub struct BadListQuery(pub ErrorBody);

/// Documents, on a cancel, its 400 when the optional body is not
/// `{reason}`.
#[derive(utoipa::IntoResponses)]
#[response(status = 400, description = "the body is not `{reason}`")]
pub struct BadReason(pub ErrorBody);

/// Documents, on a route that asks a workflow for something it may
/// refuse in its current state, its 409; the route's description says
/// when, the error's message why.
#[derive(utoipa::IntoResponses)]
#[response(status = 409, description = "refused in its current state")]
pub struct Refused(pub ErrorBody);

/// Documents, on a route whose path names one workflow, its 404 when there
/// is none of that id.
#[derive(utoipa::IntoResponses)]
#[response(status = 404, description = "nothing has this id")]
pub struct NotFound(pub ErrorBody);

/// Documents, on a route that reads one workflow by its id, its 404 when
/// there is none of that id and its 503 when the store does not answer
/// ([`NotFound`] and [`StoreDown`] together).
#[derive(utoipa::IntoResponses)]
pub enum Lookup {
    #[response(status = 404, description = "nothing has this id")]
    NotFound(ErrorBody),
    #[response(status = 503, description = "the store does not answer")]
    StoreDown(ErrorBody),
}

#[cfg(test)]
mod doc_tests {
    use super::*;
    use utoipa::OpenApi;

    #[utoipa::path(get, path = "/x", responses((status = 200, description = "ok", body = String), StoreDown))]
    #[allow(dead_code)]
    async fn x() {}

    #[utoipa::path(get, path = "/y", responses((status = 200, description = "ok", body = String), NotFound, StoreDown))]
    #[allow(dead_code)]
    async fn y() {}

    #[utoipa::path(get, path = "/y", responses((status = 200, description = "ok", body = String), Lookup))]
    #[allow(dead_code)]
    async fn y_grouped() {}

    #[derive(OpenApi)]
    #[openapi(paths(x))]
    struct Doc;

    #[test]
    fn mixed_responses_document_both() {
        let doc = serde_json::to_value(Doc::openapi()).expect("json");
        let responses = &doc["paths"]["/x"]["get"]["responses"];
        assert!(
            responses["200"].is_object() && responses["503"].is_object(),
            "{responses}"
        );
    }

    #[test]
    fn a_group_documents_what_its_parts_do() {
        #[derive(OpenApi)]
        #[openapi(paths(y))]
        struct Parts;
        #[derive(OpenApi)]
        #[openapi(paths(y_grouped))]
        struct Grouped;
        let responses = |doc: utoipa::openapi::OpenApi| {
            serde_json::to_value(doc).expect("json")["paths"]["/y"]["get"]["responses"].clone()
        };
        assert_eq!(responses(Grouped::openapi()), responses(Parts::openapi()));
    }
}

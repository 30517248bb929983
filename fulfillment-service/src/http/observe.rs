//! The middleware around every request: a `http_request` span carrying the
//! trace id (continued from the caller's `traceparent` header, else new;
//! the span's parent when spans are exported),
//! the trace made current for whatever the handler sends, the `traceparent`
//! answered in the response, and the request counted in
//! `fulfillment_service_http_request_seconds` by route pattern and status code.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use message_bus::trace;
use message_bus::TRACEPARENT_HEADER;
use tracing::Instrument;

use crate::metrics::{HttpLabels, METRICS};

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let method = req.method().to_string();
    let method_label = crate::metrics::method_label(&method);
    let span = tracing::info_span!(
        "http_request",
        %method,
        path = %req.path(),
        route = tracing::field::Empty,
        status = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let context = trace::start(
        &span,
        req.headers()
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok()),
    );
    req.extensions_mut().insert(context.clone());
    let started = Instant::now();
    let result = trace::scope(context.clone(), next.call(req))
        .instrument(span.clone())
        .await;
    let (route, status) = match &result {
        Ok(res) => (
            res.request().match_pattern(),
            res.response().status().as_u16(),
        ),
        Err(error) => (None, error.as_response_error().status_code().as_u16()),
    };
    let route = route.unwrap_or_else(|| "unmatched".into());
    span.record("route", route.as_str());
    span.record("status", status);
    METRICS
        .http_seconds
        .get_or_create(&HttpLabels {
            method: method_label,
            route,
            status,
        })
        .observe(started.elapsed().as_secs_f64());
    let mut res = result?;
    if let Ok(value) = HeaderValue::from_str(&context.traceparent()) {
        res.headers_mut()
            .insert(HeaderName::from_static(TRACEPARENT_HEADER), value);
    }
    Ok(res)
}

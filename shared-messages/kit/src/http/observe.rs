//! Every request's span and HTTP metrics, on `tracing-actix-web`.
//!
//! - The span: `http_request` with `method`, `path`, `route` (the
//!   pattern, or `unmatched`), `status` and `trace_id`, made by the
//!   [`TracingLogger`] with a service's [`crate::http_spans!`] builder
//!   (declared in the service's crate, so the span has the service's target
//!   and is exported with its other spans).
//! - The trace: continued from the caller's `traceparent` header when it
//!   is valid, else new ([`incoming_trace`], the one place that reads it);
//!   made current for whatever the handler sends ([`in_trace`]) and
//!   answered in the response's `traceparent`.
//! - The metrics: each request in `<service>_http_request_seconds` by
//!   method (the standard ones, else `other`), route pattern and status.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use message_bus::trace::{self, TraceContext};
use message_bus::TRACEPARENT_HEADER;

use crate::metrics::{HttpLabels, HTTP_SECONDS};

pub use tracing_actix_web::{RootSpanBuilder, TracingLogger};

/// Declares `$name`, the [`RootSpanBuilder`] of a service's request spans:
/// the span is made here, in the service's crate, so its target is the
/// service's (the span exporter takes the service's spans); everything
/// else is [`begin`] and [`end`].
#[macro_export]
macro_rules! http_spans {
    ($name:ident) => {
        /// The `http_request` span of every request (see
        /// `service_kit::http::observe`).
        pub struct $name;

        impl $crate::http::observe::RootSpanBuilder for $name {
            fn on_request_start(
                request: &::actix_web::dev::ServiceRequest,
            ) -> ::tracing::Span {
                let span = ::tracing::info_span!(
                    "http_request",
                    method = %request.method(),
                    path = %request.path(),
                    route = ::tracing::field::Empty,
                    status = ::tracing::field::Empty,
                    trace_id = ::tracing::field::Empty,
                );
                $crate::http::observe::begin(&span, request);
                span
            }

            fn on_request_end<B: ::actix_web::body::MessageBody>(
                span: ::tracing::Span,
                outcome: &::std::result::Result<
                    ::actix_web::dev::ServiceResponse<B>,
                    ::actix_web::Error,
                >,
            ) {
                $crate::http::observe::end(&span, outcome);
            }
        }
    };
}

/// The position of a request in its trace: the caller's `traceparent`
/// continued when valid, else a new trace; `trace_id` recorded on `span`.
/// The one place the incoming trace context is read.
pub fn incoming_trace(span: &tracing::Span, request: &ServiceRequest) -> TraceContext {
    trace::start(
        span,
        request
            .headers()
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok()),
    )
}

/// At the start of a request: its trace, kept with the request for
/// [`in_trace`].
pub fn begin(span: &tracing::Span, request: &ServiceRequest) {
    let context = incoming_trace(span, request);
    request.extensions_mut().insert(context);
}

/// At the end of a request: its route pattern and status on the span.
pub fn end<B>(span: &tracing::Span, outcome: &Result<ServiceResponse<B>, actix_web::Error>) {
    let (route, status) = route_and_status(outcome);
    span.record("route", route.as_str());
    span.record("status", status);
}

fn route_and_status<B>(outcome: &Result<ServiceResponse<B>, actix_web::Error>) -> (String, u16) {
    let (route, status) = match outcome {
        Ok(res) => (
            res.request().match_pattern(),
            res.response().status().as_u16(),
        ),
        Err(error) => (None, error.as_response_error().status_code().as_u16()),
    };
    (route.unwrap_or_else(|| "unmatched".into()), status)
}

/// The method as a metric label: the standard ones by name, anything
/// made up as `other`, so a client cannot create series without bound.
pub fn method_label(method: &Method) -> String {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    if KNOWN.contains(method) {
        method.as_str().to_owned()
    } else {
        "other".to_owned()
    }
}

/// The middleware inside the request's span: runs the handler with the
/// request's trace current, times it into the HTTP metrics and answers
/// the `traceparent`.
pub async fn in_trace(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let method = method_label(req.method());
    let context = req
        .extensions()
        .get::<TraceContext>()
        .cloned()
        .unwrap_or_else(TraceContext::new_root);
    let started = Instant::now();
    let result = trace::scope(context.clone(), next.call(req)).await;
    let (route, status) = route_and_status(&result);
    HTTP_SECONDS
        .get_or_create(&HttpLabels {
            method,
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as web_test;
    use actix_web::{web, App, HttpResponse};

    crate::http_spans!(TestSpans);

    #[test]
    fn made_up_methods_fold_into_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        for made_up in ["FOO", "BAR1", "PROPFIND", "get"] {
            let m = Method::from_bytes(made_up.as_bytes()).expect("a token");
            assert_eq!(method_label(&m), "other");
        }
    }

    #[actix_web::test]
    async fn a_callers_trace_is_continued_and_answered() {
        let app = web_test::init_service(
            App::new()
                .wrap(actix_web::middleware::from_fn(in_trace))
                .wrap(TracingLogger::<TestSpans>::new())
                .route(
                    "/t/{id}",
                    web::get().to(|| async {
                        // The handler runs in the request's trace.
                        HttpResponse::Ok().body(
                            trace::current()
                                .map(|t| t.traceparent())
                                .unwrap_or_default(),
                        )
                    }),
                ),
        )
        .await;
        let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let res = web_test::call_service(
            &app,
            web_test::TestRequest::get()
                .uri("/t/1")
                .insert_header((TRACEPARENT_HEADER, theirs))
                .to_request(),
        )
        .await;
        let answered = res
            .headers()
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .expect("a traceparent answered");
        let current = String::from_utf8(web_test::read_body(res).await.to_vec()).expect("utf-8");
        assert_eq!(
            trace::trace_id_of(Some(&answered)),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(current, answered);
        // Without one, a new trace.
        let res =
            web_test::call_service(&app, web_test::TestRequest::get().uri("/t/2").to_request())
                .await;
        let answered = res
            .headers()
            .get(TRACEPARENT_HEADER)
            .expect("a traceparent");
        assert_ne!(
            trace::trace_id_of(answered.to_str().ok()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("http_request_seconds", "t", HTTP_SECONDS.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(
                r#"http_request_seconds_count{method="GET",route="/t/{id}",status="200"} 2"#
            ),
            "{text}"
        );
    }
}

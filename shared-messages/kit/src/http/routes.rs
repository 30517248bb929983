//! A resource's routes, declared once: each handler's `#[utoipa::path]`
//! names its method and path, and [`routes!`](crate::routes) serves it
//! there and documents it, so what is served and what `/openapi.json`
//! says cannot drift apart.
//!
//! ```ignore
//! #[utoipa::path(get, path = "/things/{id}", responses(..))]
//! async fn thing(..) -> Reply { .. }
//!
//! service_kit::routes!(create, list, thing);   // `configure` and `Doc`
//! ```

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::Method;
use actix_web::{web, FromRequest, Handler, Responder};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::OpenApi;

use super::ApiError;

/// What a handler answers: a response, or an error of the one vocabulary.
pub type Reply = Result<actix_web::HttpResponse, ApiError>;

/// Declares the routes of the calling module, each handler named once:
/// `service_kit::routes!(create, list, status);` makes
///
/// - `pub fn configure(cfg)`, which serves every handler at the method and
///   path of its `#[utoipa::path]` (in the order listed: the first route
///   that matches a request takes it), and
/// - `pub struct Doc`, an `OpenApi` of exactly those routes, for the
///   service's document to merge in.
#[macro_export]
macro_rules! routes {
    ($($handler:ident),+ $(,)?) => {
        /// Serves this module's routes, each at the method and path its
        /// `#[utoipa::path]` documents.
        pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
            $({
                #[derive(utoipa::OpenApi)]
                #[openapi(paths($handler))]
                struct Documented;
                $crate::http::routes::serve(
                    cfg,
                    &<Documented as utoipa::OpenApi>::openapi(),
                    $handler,
                );
            })+
        }

        /// The OpenAPI document of this module's routes.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($handler),+))]
        pub struct Doc;
    };
}

/// Serves `handler` at every method and path `doc` (the document of that
/// one handler) names.
pub fn serve<F, Args>(cfg: &mut web::ServiceConfig, doc: &OpenApi, handler: F)
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    for (path, method) in operations(doc) {
        cfg.route(&path, web::method(method).to(handler.clone()));
    }
}

/// Every `(path, method)` documented in `doc`.
pub fn operations(doc: &OpenApi) -> Vec<(String, Method)> {
    doc.paths
        .paths
        .iter()
        .flat_map(|(path, item)| {
            methods(item)
                .into_iter()
                .map(move |method| (path.clone(), method))
        })
        .collect()
}

fn methods(item: &PathItem) -> Vec<Method> {
    let all: [(&Option<Operation>, Method); 8] = [
        (&item.get, Method::GET),
        (&item.post, Method::POST),
        (&item.put, Method::PUT),
        (&item.patch, Method::PATCH),
        (&item.delete, Method::DELETE),
        (&item.head, Method::HEAD),
        (&item.options, Method::OPTIONS),
        (&item.trace, Method::TRACE),
    ];
    all.into_iter()
        .filter(|(operation, _)| operation.is_some())
        .map(|(_, method)| method)
        .collect()
}

/// Sends every operation `doc` documents to `app` with made-up ids (and
/// an empty JSON object as the body of a write): each must reach a route,
/// not the "no route" 404 of the kit's [`extractors`](super::error::extractors)
/// nor a 405. Answers how many there are, or the first that is documented
/// but not served. For a service's tests.
pub async fn check_served<A, B>(app: &A, doc: &OpenApi) -> Result<usize, String>
where
    A: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    let operations = operations(doc);
    for (path, method) in &operations {
        let concrete: String = path
            .split('{')
            .enumerate()
            .map(|(i, part)| match (i, part.split_once('}')) {
                (0, _) | (_, None) => part.to_owned(),
                (_, Some((_, rest))) => format!("probe-unknown-id{rest}"),
            })
            .collect();
        let mut request = actix_web::test::TestRequest::default()
            .method(method.clone())
            .uri(&concrete);
        if *method == Method::POST || *method == Method::PATCH {
            request = request.set_json(serde_json::json!({}));
        }
        let response = actix_web::test::call_service(app, request.to_request()).await;
        let code = response.status().as_u16();
        let body = actix_web::test::read_body(response).await;
        let text = String::from_utf8_lossy(&body);
        if code == 405 || (code == 404 && text.contains("no route for")) {
            return Err(format!(
                "{method} {path} is documented but not served ({code} {text})"
            ));
        }
    }
    Ok(operations.len())
}

#[cfg(test)]
mod tests {
    use actix_web::{test, App};
    use utoipa::OpenApi as _;

    use crate::http::error::extractors;

    mod things {
        use super::super::Reply;
        use actix_web::HttpResponse;

        #[utoipa::path(get, path = "/things/{id}", params(("id" = String, Path)),
            responses((status = 200, description = "the thing")))]
        async fn thing() -> Reply {
            Ok(HttpResponse::Ok().finish())
        }

        #[utoipa::path(post, path = "/things", responses((status = 201, description = "created")))]
        async fn create() -> Reply {
            Ok(HttpResponse::Created().finish())
        }

        crate::routes!(thing, create);
    }

    #[actix_web::test]
    async fn each_handler_is_served_at_the_method_and_path_it_documents() {
        let app = test::init_service(
            App::new()
                .configure(extractors)
                .configure(things::configure),
        )
        .await;
        let code = |req: test::TestRequest| {
            let app = &app;
            async move {
                test::call_service(app, req.to_request())
                    .await
                    .status()
                    .as_u16()
            }
        };
        assert_eq!(code(test::TestRequest::get().uri("/things/7")).await, 200);
        assert_eq!(code(test::TestRequest::post().uri("/things")).await, 201);
        assert_eq!(code(test::TestRequest::post().uri("/things/7")).await, 404);
        assert_eq!(code(test::TestRequest::get().uri("/things")).await, 404);
        let doc = things::Doc::openapi();
        assert_eq!(super::check_served(&app, &doc).await, Ok(2));
        let unserved = test::init_service(App::new().configure(extractors)).await;
        assert!(super::check_served(&unserved, &doc).await.is_err());
    }
}

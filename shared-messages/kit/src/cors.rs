//! CORS: closed unless origins are configured (`CORS_ALLOWED_ORIGINS`).
//!
//! A page on a configured origin may call the API with a bearer token;
//! any other origin gets no CORS headers, so a browser keeps the answer
//! from it (and [`crate::access`] refuses its writes outright).

use actix_cors::Cors;
use actix_web::http::{header, Method};

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE_SECS: usize = 600;

/// The CORS middleware for `allowed` origins (`scheme://host[:port]`);
/// with none, no cross-origin page is let in.
pub fn cors(allowed: &[String]) -> Cors {
    let allowed: Vec<String> = allowed
        .iter()
        .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
        .filter(|o| !o.is_empty())
        .collect();
    Cors::default()
        .allowed_origin_fn(move |origin, _head| {
            origin
                .to_str()
                .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
        })
        .allowed_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
        ])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
        .max_age(PREFLIGHT_MAX_AGE_SECS)
        // A mismatch gets no CORS headers rather than a plain-text error:
        // the access guard answers it in JSON where it matters (writes).
        .block_on_origin_mismatch(false)
}

/// Parses `CORS_ALLOWED_ORIGINS`: comma-separated `scheme://host[:port]`.
pub fn parse_origins(value: &str) -> Result<Vec<String>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            let origin = o.trim_end_matches('/');
            match origin.split_once("://") {
                Some(("http" | "https", host)) if !host.is_empty() && !host.contains('/') => {
                    Ok(origin.to_ascii_lowercase())
                }
                _ => Err(format!(
                    "CORS_ALLOWED_ORIGINS: {o:?} is not an origin like https://ops.example.com"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;
    use actix_web::test as web_test;
    use actix_web::{web, App, HttpResponse};

    #[test]
    fn origins_are_checked() {
        assert_eq!(
            parse_origins(" https://ops.example.com/, http://localhost:8080 ,"),
            Ok(vec![
                "https://ops.example.com".to_string(),
                "http://localhost:8080".to_string()
            ])
        );
        assert!(parse_origins("*").is_err());
        assert!(parse_origins("https://x.example/path").is_err());
        assert_eq!(parse_origins(""), Ok(vec![]));
    }

    #[actix_web::test]
    async fn only_configured_origins_get_cors_headers() {
        let app = web_test::init_service(
            App::new()
                .wrap(cors(&["https://ops.example.com".into()]))
                .route("/orders", web::get().to(HttpResponse::Ok)),
        )
        .await;
        for (origin, allowed) in [
            ("https://ops.example.com", true),
            ("https://evil.example", false),
        ] {
            let response = web_test::call_service(
                &app,
                web_test::TestRequest::get()
                    .uri("/orders")
                    .insert_header((header::ORIGIN, origin))
                    .to_request(),
            )
            .await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
                allowed,
                "{origin}"
            );
        }
    }
}

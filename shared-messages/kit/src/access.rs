//! Who may call the HTTP surface, and from where.
//!
//! - [`Tokens`]: bearer tokens with their [`Role`], read from the file that
//!   `API_TOKEN_FILE` names, compared in constant time.
//! - [`Access`]: the policy, a pure function of the request's method, path
//!   and headers ([`Access::check`]), unit-tested without a server.
//! - [`Guard`]: the actix-web middleware both services wrap around their
//!   `App`; a refused request never reaches a handler.
//!
//! The policy: `GET`/`HEAD` need a `reader` or `operator` token, every other
//! method an `operator` token; the probes, the metrics, the OpenAPI
//! document and the page stay open. A state-changing request that a
//! browser sends from another origin is refused (unless that origin is
//! configured), and its body must be JSON. Without a token file the
//! surface is open, as in local development, and says so at start.

use std::future::{ready, Ready};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::{header, Method, StatusCode};
use actix_web::{Error, HttpResponse};
use futures::future::LocalBoxFuture;
use subtle::ConstantTimeEq;

/// Paths that answer `GET`/`HEAD` without a token: the probes, the
/// Prometheus scrape, the API description and the page (which then asks
/// for a token itself).
pub const OPEN_PATHS: &[&str] = &["/", "/healthz", "/readyz", "/metrics", "/openapi.json"];

/// Shortest token accepted: 128 bits as hex. A shorter one is a typo or a
/// password, not a generated secret.
pub const MIN_TOKEN_LEN: usize = 32;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads orders and fulfillments (`GET`, `HEAD`).
    Reader,
    /// Everything a reader does, and creates, pauses, resumes, cancels and
    /// re-addresses.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Operator => "operator",
        }
    }

    /// The role a request with `method` needs.
    pub fn needed_for(method: &Method) -> Self {
        if is_read(method) {
            Self::Reader
        } else {
            Self::Operator
        }
    }
}

/// Why a token file cannot be used. The service refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read API_TOKEN_FILE {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("API_TOKEN_FILE line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("API_TOKEN_FILE holds no token: every request would be refused")]
    Empty,
}

/// The tokens of one service, each with its role. Never printed.
pub struct Tokens {
    entries: Vec<(Vec<u8>, Role)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} entries)", self.entries.len())
    }
}

impl Tokens {
    /// Reads a token file: one `<role> <token>` per line (`reader` or
    /// `operator`), `#` comments and blank lines allowed.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut entries: Vec<(Vec<u8>, Role)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let bad = |problem: String| TokenFileError::Line { line, problem };
            let mut words = content.split_whitespace();
            let (Some(role), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad(
                    "expected `<role> <token>` (role reader or operator)".into()
                ));
            };
            let role = match role {
                "reader" => Role::Reader,
                "operator" => Role::Operator,
                other => {
                    return Err(bad(format!(
                        "unknown role {other:?}: use reader or operator"
                    )))
                }
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad(format!(
                    "the token is shorter than {MIN_TOKEN_LEN} characters; generate one with `openssl rand -hex 32`"
                )));
            }
            if entries
                .iter()
                .any(|(t, _)| t.as_slice() == token.as_bytes())
            {
                return Err(bad("the same token appears twice".into()));
            }
            entries.push((token.as_bytes().to_vec(), role));
        }
        if entries.is_empty() {
            return Err(TokenFileError::Empty);
        }
        Ok(Self { entries })
    }

    /// The role of `token`, if it is one of ours. Every entry is compared,
    /// each in constant time, so the answer's timing does not reveal how
    /// much of a guess was right.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let mut found = None;
        for (known, role) in &self.entries {
            if bool::from(known.as_slice().ct_eq(token.as_bytes())) {
                found = Some(*role);
            }
        }
        found
    }
}

/// Why a request is refused; each answers JSON like the services' other
/// errors (`{"error", "message"}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this route needs a bearer token: send `Authorization: Bearer <token>`")]
    MissingToken,
    #[error("the bearer token is not valid")]
    InvalidToken,
    #[error("{method} {path} needs the {needed} role; this token has {held}")]
    WrongRole {
        method: String,
        path: String,
        needed: &'static str,
        held: &'static str,
    },
    #[error("requests that change state are not accepted from origin {0}")]
    CrossOrigin(String),
    #[error("the request body must be JSON: send Content-Type: application/json")]
    NotJson,
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken | Self::InvalidToken => "unauthorized",
            Self::WrongRole { .. } => "forbidden",
            Self::CrossOrigin(_) => "cross_origin",
            Self::NotJson => "unsupported_media_type",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::WrongRole { .. } | Self::CrossOrigin(_) => StatusCode::FORBIDDEN,
            Self::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The JSON answer, with `WWW-Authenticate` on 401 (RFC 6750).
    pub fn response(&self, realm: &str) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status());
        match self {
            Self::MissingToken => {
                builder.insert_header((
                    header::WWW_AUTHENTICATE,
                    format!("Bearer realm=\"{realm}\""),
                ));
            }
            Self::InvalidToken => {
                builder.insert_header((
                    header::WWW_AUTHENTICATE,
                    format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
                ));
            }
            _ => {}
        }
        builder.json(serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
        }))
    }
}

/// The facts about a request the policy looks at.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: Option<&'a Method>,
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub has_body: bool,
}

impl<'a> RequestFacts<'a> {
    pub fn of(req: &'a ServiceRequest) -> Self {
        let headers = req.headers();
        let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let content_length = text(header::CONTENT_LENGTH)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Self {
            method: Some(req.method()),
            path: req.path(),
            host: text(header::HOST).or_else(|| req.uri().authority().map(|a| a.as_str())),
            origin: text(header::ORIGIN),
            authorization: text(header::AUTHORIZATION),
            content_type: text(header::CONTENT_TYPE),
            has_body: content_length > 0 || headers.contains_key(header::TRANSFER_ENCODING),
        }
    }
}

/// Reads do not change state; everything else does.
fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The access policy of one service.
#[derive(Debug)]
pub struct Access {
    /// `None`: the surface is open (no `API_TOKEN_FILE`).
    tokens: Option<Tokens>,
    /// Other origins whose pages may call this service
    /// (`CORS_ALLOWED_ORIGINS`), as `scheme://host[:port]`.
    allowed_origins: Vec<String>,
    /// Names the service in `WWW-Authenticate`.
    realm: String,
}

impl Access {
    pub fn new(realm: &str, tokens: Option<Tokens>, allowed_origins: Vec<String>) -> Self {
        Self {
            tokens,
            allowed_origins: allowed_origins
                .into_iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
            realm: realm.into(),
        }
    }

    /// The policy from a service's settings: the token file (if any) and
    /// the allowed origins. Without a token file it warns, loudly, that
    /// anyone who reaches the port may act.
    pub fn from_settings(
        realm: &str,
        token_file: Option<&Path>,
        allowed_origins: Vec<String>,
    ) -> Result<Self, TokenFileError> {
        let tokens = match token_file {
            Some(path) => {
                let tokens = Tokens::load(path)?;
                tracing::info!(
                    file = %path.display(),
                    tokens = tokens.entries.len(),
                    "HTTP API needs a bearer token (reader: GET, operator: all)"
                );
                Some(tokens)
            }
            None => {
                tracing::warn!(
                    "API_TOKEN_FILE is not set: the HTTP API is OPEN, anyone who reaches this port can read customers and change orders; set API_TOKEN_FILE outside local development"
                );
                None
            }
        };
        Ok(Self::new(realm, tokens, allowed_origins))
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_none()
    }

    pub fn allowed_origins(&self) -> &[String] {
        &self.allowed_origins
    }

    /// Allows the request (with the caller's role, `None` when the surface
    /// is open or the path needs none) or says why not.
    pub fn check(&self, facts: &RequestFacts<'_>) -> Result<Option<Role>, Refusal> {
        let read = facts.method.is_none_or(is_read);
        if !read {
            if let Some(origin) = facts.origin {
                if !self.origin_allowed(origin, facts.host) {
                    return Err(Refusal::CrossOrigin(origin.into()));
                }
            }
        }
        let role = self.role(facts, read)?;
        if !read && facts.has_body && !is_json(facts.content_type) {
            return Err(Refusal::NotJson);
        }
        Ok(role)
    }

    fn role(&self, facts: &RequestFacts<'_>, read: bool) -> Result<Option<Role>, Refusal> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        if read && OPEN_PATHS.contains(&facts.path) {
            return Ok(None);
        }
        let token = facts
            .authorization
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or(Refusal::MissingToken)?;
        let held = tokens.role_of(token).ok_or(Refusal::InvalidToken)?;
        let needed = if read { Role::Reader } else { Role::Operator };
        if held < needed {
            return Err(Refusal::WrongRole {
                method: facts.method.map(|m| m.to_string()).unwrap_or_default(),
                path: facts.path.into(),
                needed: needed.as_str(),
                held: held.as_str(),
            });
        }
        Ok(Some(held))
    }

    /// The service's own origin (the one its page was served from: same
    /// host and port as the request) or a configured one.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.allowed_origins.contains(&origin) {
            return true;
        }
        match (origin.split_once("://"), host) {
            (Some((scheme, authority)), Some(host)) => {
                matches!(scheme, "http" | "https") && authority.eq_ignore_ascii_case(host.trim())
            }
            _ => false,
        }
    }
}

/// `application/json`, or a `+json` type, with any parameters.
fn is_json(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else {
        return false;
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The middleware: `App::new().wrap(Guard::new(access))`. A refused request
/// is answered here and logged with why.
#[derive(Clone)]
pub struct Guard {
    access: Arc<Access>,
}

impl Guard {
    pub fn new(access: Arc<Access>) -> Self {
        Self { access }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Guard
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = GuardService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(GuardService {
            service: Rc::new(service),
            access: self.access.clone(),
        }))
    }
}

pub struct GuardService<S> {
    service: Rc<S>,
    access: Arc<Access>,
}

impl<S, B> Service<ServiceRequest> for GuardService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let verdict = self.access.check(&RequestFacts::of(&req));
        match verdict {
            Ok(_) => {
                let response = self.service.call(req);
                Box::pin(async move { response.await.map(ServiceResponse::map_into_left_body) })
            }
            Err(refusal) => {
                tracing::info!(
                    method = %req.method(),
                    path = req.path(),
                    refusal = refusal.code(),
                    reason = %refusal,
                    "request refused"
                );
                let response = refusal.response(&self.access.realm);
                Box::pin(ready(Ok(req.into_response(response).map_into_right_body())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READER: &str = "reader-0123456789abcdef0123456789abcdef";
    const OPERATOR: &str = "operator-0123456789abcdef0123456789abcdef";

    fn tokens() -> Tokens {
        Tokens::parse(&format!(
            "# tokens of the test\n\nreader {READER}\noperator {OPERATOR}  # the on-call\n"
        ))
        .expect("valid file")
    }

    fn closed() -> Access {
        Access::new(
            "test",
            Some(tokens()),
            vec!["https://ops.example.com/".into()],
        )
    }

    fn facts<'a>(method: &'a Method, path: &'a str, token: Option<&'a str>) -> RequestFacts<'a> {
        RequestFacts {
            method: Some(method),
            path,
            host: Some("orders.local:3232"),
            authorization: token,
            ..RequestFacts::default()
        }
    }

    #[test]
    fn the_file_gives_each_token_its_role() {
        let t = tokens();
        assert_eq!(t.role_of(READER), Some(Role::Reader));
        assert_eq!(t.role_of(OPERATOR), Some(Role::Operator));
        assert_eq!(t.role_of(&READER[..READER.len() - 1]), None);
        assert_eq!(t.role_of(""), None);
        assert!(!format!("{t:?}").contains(READER));
    }

    #[test]
    fn a_bad_file_says_which_line() {
        let long = "x".repeat(MIN_TOKEN_LEN);
        for (text, needle) in [
            (format!("admin {long}"), "line 1: unknown role"),
            ("\nreader".to_string(), "line 2: expected"),
            (format!("reader {long} extra"), "line 1: expected"),
            ("reader short".to_string(), "shorter than"),
            (format!("reader {long}\noperator {long}"), "twice"),
            ("# nothing\n\n".to_string(), "no token"),
        ] {
            let err = Tokens::parse(&text).expect_err(&text).to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn reads_need_a_reader_and_writes_an_operator() {
        let access = closed();
        let reader = format!("Bearer {READER}");
        let operator = format!("bearer {OPERATOR}");
        let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
        assert_eq!(
            access.check(&facts(&get, "/orders", None)),
            Err(Refusal::MissingToken)
        );
        assert_eq!(
            access.check(&facts(&get, "/orders", Some("Bearer nope"))),
            Err(Refusal::InvalidToken)
        );
        assert_eq!(
            access.check(&facts(&get, "/orders", Some(&format!("Basic {READER}")))),
            Err(Refusal::MissingToken)
        );
        assert_eq!(
            access.check(&facts(&get, "/orders", Some(&reader))),
            Ok(Some(Role::Reader))
        );
        assert_eq!(
            access.check(&facts(&get, "/orders", Some(&operator))),
            Ok(Some(Role::Operator))
        );
        for method in [&post, &delete] {
            let refused = access
                .check(&facts(method, "/orders/x", Some(&reader)))
                .expect_err("a reader cannot write");
            assert_eq!(refused.status(), StatusCode::FORBIDDEN);
            assert!(refused.to_string().contains("operator"), "{refused}");
            assert_eq!(
                access.check(&facts(method, "/orders/x", Some(&operator))),
                Ok(Some(Role::Operator))
            );
        }
    }

    #[test]
    fn probes_metrics_and_the_page_stay_open() {
        let access = closed();
        for path in OPEN_PATHS {
            assert_eq!(access.check(&facts(&Method::GET, path, None)), Ok(None));
        }
        assert_eq!(
            access.check(&facts(&Method::POST, "/healthz", None)),
            Err(Refusal::MissingToken)
        );
    }

    #[test]
    fn without_a_file_everything_is_open() {
        let access = Access::new("test", None, vec![]);
        assert!(access.is_open());
        assert_eq!(
            access.check(&facts(&Method::POST, "/orders", None)),
            Ok(None)
        );
    }

    #[test]
    fn writes_from_another_origin_are_refused() {
        let access = Access::new("test", None, vec!["https://ops.example.com/".into()]);
        let post = Method::POST;
        let with_origin = |origin| RequestFacts {
            origin: Some(origin),
            ..facts(&post, "/orders", None)
        };
        assert_eq!(
            access.check(&with_origin("https://evil.example")),
            Err(Refusal::CrossOrigin("https://evil.example".into()))
        );
        assert!(access.check(&with_origin("null")).is_err());
        assert!(access
            .check(&with_origin("http://orders.local:3232"))
            .is_ok());
        assert!(access
            .check(&with_origin("https://ops.example.com"))
            .is_ok());
        assert!(access
            .check(&with_origin("http://orders.local:3233"))
            .is_err());
        let get = Method::GET;
        let read = RequestFacts {
            origin: Some("https://evil.example"),
            ..facts(&get, "/orders", None)
        };
        assert!(access.check(&read).is_ok(), "CORS governs what reads see");
    }

    #[test]
    fn write_bodies_must_be_json() {
        let access = Access::new("test", None, vec![]);
        let post = Method::POST;
        let body = |content_type| RequestFacts {
            content_type,
            has_body: true,
            ..facts(&post, "/orders/x/cancel", None)
        };
        assert_eq!(access.check(&body(None)), Err(Refusal::NotJson));
        assert_eq!(
            access.check(&body(Some("text/plain"))),
            Err(Refusal::NotJson)
        );
        assert_eq!(
            access.check(&body(Some("application/x-www-form-urlencoded"))),
            Err(Refusal::NotJson)
        );
        assert!(access
            .check(&body(Some("application/json; charset=utf-8")))
            .is_ok());
        assert!(access
            .check(&body(Some("application/merge-patch+json")))
            .is_ok());
        assert!(access
            .check(&facts(&post, "/orders/x/cancel", None))
            .is_ok());
    }

    #[actix_web::test]
    async fn the_middleware_answers_json_with_www_authenticate() {
        use actix_web::{test, web, App};
        let app = test::init_service(
            App::new()
                .wrap(Guard::new(Arc::new(closed())))
                .route("/orders", web::get().to(HttpResponse::Ok))
                .route("/healthz", web::get().to(HttpResponse::Ok)),
        )
        .await;
        let response =
            test::call_service(&app, test::TestRequest::get().uri("/orders").to_request()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(body["error"], "unauthorized");
        let response = test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/orders")
                .insert_header((header::AUTHORIZATION, format!("Bearer {READER}")))
                .to_request(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let response =
            test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
}

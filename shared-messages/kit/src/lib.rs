//! The service kit: what order-service and fulfillment-service build their
//! HTTP surface, metrics, settings, shutdown and stores on, written once.
//!
//! | module | what |
//! |---|---|
//! | [`access`] | bearer tokens and roles, the cross-site guard, the middleware |
//! | [`actors`] | the actors of running workflows by id |
//! | [`cors`] | CORS, closed unless origins are configured |
//! | [`http`] | the error vocabulary, paging, health, metrics and OpenAPI routes, quarantine, the page, request spans, a service's own routes declared once |
//! | [`metrics`] | the metrics both services keep, under each one's prefix |
//! | [`partitions`] | several replicas on one PostgreSQL: each workflow's partition leased by one, writes fenced by its epoch |
//! | [`openapi`] | the guard's answers (401, 403, 415) in a service's OpenAPI document |
//! | [`postgres_tls`] | TLS to PostgreSQL by the connection string's `sslmode` |
//! | [`serve`] | the `HttpServer` wiring, and shutdown on SIGTERM or Ctrl-C |
//! | [`settings`] | secret settings read from files (`NAME_FILE`) |
//! | [`store`] | the store plumbing: SQLite and PostgreSQL connections, migrations, outbox, quarantine, history rows, group commit, the error type |
//! | [`workflow`] | the outcome of one input to a workflow, the one shape of both |
#![forbid(unsafe_code)]

pub mod access;
pub mod actors;
pub mod cors;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod partitions;
pub mod postgres_tls;
pub mod serve;
pub mod settings;
pub mod store;
pub mod workflow;

pub use access::{Access, Guard, Role, Tokens};

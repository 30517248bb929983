//! The contract between order-service and fulfillment-service, and the small
//! AMQP layer both stand on.
//!
//! This crate is the one place where the two services agree. Neither service
//! depends on the other; both depend on this.
//!
//! - [`envelope`]: the versioned JSON envelope every message travels in, and
//!   decoding that turns bad input into a typed [`envelope::DecodeError`].
//! - [`messages`]: every signal, query, reply and event, with the domain
//!   types they carry (addresses, items, statuses, progress).
//! - [`history`]: the shape of a workflow's history (`GET .../history`),
//!   the same on both services.
//! - [`topology`]: exchange, queue and routing-key names, and the
//!   declarative description each service declares at start-up.
//! - [`bus`]: the connection supervisor (connect, reconnect with backoff,
//!   re-declare, resume consuming), confirmed publishing, request/reply over
//!   direct reply-to, and consumers that ack, retry or dead-letter; their
//!   Prometheus metrics ([`bus::metrics`]).
//! - [`trace`]: W3C `traceparent`, carried so one order's spans in both
//!   services share one trace id; a service that exports its spans
//!   registers a link there (no OpenTelemetry dependency here).
//!
//! The wire format is documented for non-Rust clients in
//! `docs/message-contract.md`.
#![forbid(unsafe_code)]

pub mod bus;
pub mod envelope;
pub mod history;
pub mod ids;
pub mod messages;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod topology;
pub mod trace;

pub use envelope::{DecodeError, Envelope, READ_VERSIONS, SCHEMA_VERSION};
pub use messages::Message;

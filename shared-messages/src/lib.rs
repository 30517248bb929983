//! The contract between order-service and fulfillment-service.
//!
//! This crate is the one place where the two services agree. Neither service
//! depends on the other; both depend on this. It holds data and names only
//! (serde, serde_json, uuid, chrono), so a client in another team can depend
//! on it without the AMQP client; the bus that carries these messages is the
//! `message-bus` crate.
//!
//! - [`envelope`]: the versioned JSON envelope every message travels in, and
//!   decoding that turns bad input into a typed [`envelope::DecodeError`].
//! - [`messages`]: every signal, query, reply and event, with the domain
//!   types they carry (addresses, items, statuses, progress).
//! - [`history`]: the shape of a workflow's history (`GET .../history`),
//!   the same on both services.
//! - [`topology`]: exchange, queue and routing-key names, and the
//!   declarative description each service declares at start-up.
//! - [`ids`]: deterministic message and workflow ids.
//!
//! The wire format is documented for non-Rust clients in
//! `docs/message-contract.md`.
#![forbid(unsafe_code)]

pub mod envelope;
pub mod history;
pub mod ids;
pub mod messages;
pub mod topology;

pub use envelope::{DecodeError, Envelope, READ_VERSIONS, SCHEMA_VERSION};
pub use messages::Message;

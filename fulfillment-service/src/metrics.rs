//! Prometheus metrics, served at `/metrics` (see the README for the list).
//!
//! Everything is prefixed `fulfillment_service_`: the families both
//! services keep (HTTP, actors, transitions, store writes, fulfillments by
//! status, outbox, store up, quarantined rows) and the bus's, from
//! [`service_kit::metrics`].

use std::sync::LazyLock;

use service_kit::metrics::{Metrics, Nouns};

pub use service_kit::metrics::{StatusLabels, TransitionLabels};

/// What a fulfillment's metrics are called.
const NOUNS: Nouns = Nouns {
    one: "fulfillment",
    outbox: "Events",
    store_write: "a transition with its events",
};

pub static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| Metrics::new("fulfillment_service", NOUNS, |_| ()).0);

//! Prometheus metrics, served at `/metrics` (see the README for the list).
//!
//! Everything is prefixed `fulfillment_service_`: the families both
//! services keep (HTTP, actors, transitions, store writes, fulfillments by
//! status, outbox, store up, quarantined rows) and the bus's, from
//! [`service_kit::metrics`].

use std::sync::LazyLock;

use service_kit::metrics::{Metrics, Nouns};

pub use service_kit::metrics::{StatusLabels, TransitionLabels};

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let nouns = Nouns {
        one: "fulfillment",
        many: "fulfillments",
        outbox: "Events",
        store_write: "a transition with its events",
    };
    Metrics::new("fulfillment_service", nouns, |_| ()).0
});

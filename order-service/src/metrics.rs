//! Prometheus metrics, served at `/metrics` (see the README for the list).
//!
//! Everything is prefixed `order_service_`. The families both services
//! keep (HTTP, actors, transitions, store writes, orders by status, outbox,
//! store up, quarantined rows) and the bus's come from
//! [`service_kit::metrics`]; the overdue orders and the activities'
//! failures are the service's own.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use service_kit::metrics::{Common, Nouns};

pub use service_kit::metrics::{StatusLabels, TransitionLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActivityLabels {
    pub activity: String,
}

pub struct Metrics {
    base: service_kit::metrics::Metrics,
    /// The common `quarantined_rows` counter, by the name recovery uses.
    pub quarantined: Counter,
    pub overdue: Counter,
    pub activity_failures: Family<ActivityLabels, Counter>,
}

/// The common families (`METRICS.actors`, `METRICS.store_write(..)`, ...).
impl std::ops::Deref for Metrics {
    type Target = Common;
    fn deref(&self) -> &Common {
        &self.base
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let nouns = Nouns {
        one: "order",
        outbox: "Signals",
        store_write: "insert, save of a transition with its outbox",
    };
    let (base, (overdue, activity_failures)) = service_kit::metrics::Metrics::new(
        "order_service",
        nouns,
        |registry| {
            let overdue = Counter::default();
            registry.register(
                "overdue_orders",
                "Orders whose fulfillment did not finish within FULFILLMENT_DEADLINE_MS",
                overdue.clone(),
            );
            let failures = Family::<ActivityLabels, Counter>::default();
            registry.register(
                "activity_attempt_failures",
                "Failed attempts of the inventory and payment activities (each retried per its policy)",
                failures.clone(),
            );
            (overdue, failures)
        },
    );
    Metrics {
        quarantined: base.quarantined_rows.clone(),
        base,
        overdue,
        activity_failures,
    }
});

impl Metrics {
    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        self.base.encode()
    }
}

//! Prometheus metrics, served at `/metrics` (see the README for the list).
//!
//! Everything is prefixed `fulfillment_service_`. The bus's families (messages,
//! requests, broker connection) come from
//! [`shared_messages::bus::metrics`]; the rest are the service's own.
//! Counters and histograms are updated where things happen; gauges that
//! describe the store (fulfillments by status, outbox) are read at scrape time.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shared_messages::bus::metrics::latency_histogram;

/// HTTP methods kept as label values; any other becomes `other`, so
/// made-up methods cannot add series without bound.
const KNOWN_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// The `method` label of a request.
pub fn method_label(method: &str) -> String {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .map_or("other", |m| *m)
        .to_owned()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// One of the usual methods, or `other`.
    pub method: String,
    /// The route pattern (`/fulfillments/{id}`), or `unmatched`.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

pub struct Metrics {
    registry: Registry,
    pub http_seconds: Family<HttpLabels, Histogram, fn() -> Histogram>,
    pub actors: Family<StatusLabels, Gauge>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub store_write_seconds: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub fulfillments: Family<StatusLabels, Gauge>,
    pub outbox_pending: Gauge,
    pub store_up: Gauge,
    pub quarantined_rows: Counter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("fulfillment_service");
    shared_messages::bus::metrics::register(&mut registry);
    let m = Metrics {
        registry: Registry::default(),
        http_seconds: Family::new_with_constructor(latency_histogram),
        actors: Family::default(),
        transitions: Family::default(),
        store_write_seconds: Family::new_with_constructor(latency_histogram),
        fulfillments: Family::default(),
        outbox_pending: Gauge::default(),
        store_up: Gauge::default(),
        quarantined_rows: Counter::default(),
    };
    registry.register(
        "http_request_seconds",
        "HTTP requests by method, route pattern and status code, and how long they took",
        m.http_seconds.clone(),
    );
    registry.register(
        "actors",
        "Fulfillment actors alive, by the status of their fulfillment",
        m.actors.clone(),
    );
    registry.register(
        "transitions",
        "Fulfillment status transitions, by from and to status",
        m.transitions.clone(),
    );
    registry.register(
        "store_write_seconds",
        "Writes to the fulfillment store (a transition with its events), and how long they took",
        m.store_write_seconds.clone(),
    );
    registry.register(
        "fulfillments",
        "Fulfillments in the store, by status (read at scrape time)",
        m.fulfillments.clone(),
    );
    registry.register(
        "outbox_pending",
        "Events stored, not yet confirmed by RabbitMQ (read at scrape time)",
        m.outbox_pending.clone(),
    );
    registry.register(
        "store_up",
        "1 when the fulfillment store answers (read at scrape time)",
        m.store_up.clone(),
    );
    registry.register(
        "quarantined_rows",
        "Stored fulfillments that could not be read at recovery and were set aside (see /quarantine)",
        m.quarantined_rows.clone(),
    );
    Metrics { registry, ..m }
});

impl Metrics {
    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Times one store write.
    pub fn store_write_took(&self, operation: &str, started: Instant) {
        self.store_write_seconds
            .get_or_create(&OperationLabels {
                operation: operation.into(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// An actor of a fulfillment in `status` started (+1) or stopped (-1).
    pub fn actor(&self, status: &str, delta: i64) {
        self.actors
            .get_or_create(&StatusLabels {
                status: status.into(),
            })
            .inc_by(delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_fold_into_one_label_value() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("FROBNICATE"), "other");
        assert_eq!(method_label("get"), "other");
        assert_eq!(method_label("X-1"), method_label("X-2"));
    }
}

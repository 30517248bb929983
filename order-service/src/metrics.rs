//! Prometheus metrics, served at `/metrics` (see the README for the list).
//!
//! Everything is prefixed `order_service_`. The bus's families (messages,
//! requests, broker connection) come from
//! [`shared_messages::bus::metrics`]; the rest are the service's own.
//! Counters and histograms are updated where things happen; gauges that
//! describe the store (orders by status, outbox) are read at scrape time.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shared_messages::bus::metrics::latency_histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route pattern (`/orders/{workflow_id}/status`), or `unmatched`.
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
    pub orders: Family<StatusLabels, Gauge>,
    pub outbox_pending: Gauge,
    pub store_up: Gauge,
    pub overdue: Counter,
    pub quarantined: Counter,
    pub activity_failures: Family<ActivityLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActivityLabels {
    pub activity: String,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("order_service");
    shared_messages::bus::metrics::register(&mut registry);
    let m = Metrics {
        registry: Registry::default(),
        http_seconds: Family::new_with_constructor(latency_histogram),
        actors: Family::default(),
        transitions: Family::default(),
        store_write_seconds: Family::new_with_constructor(latency_histogram),
        orders: Family::default(),
        outbox_pending: Gauge::default(),
        store_up: Gauge::default(),
        overdue: Counter::default(),
        quarantined: Counter::default(),
        activity_failures: Family::default(),
    };
    registry.register(
        "http_request_seconds",
        "HTTP requests by method, route pattern and status code, and how long they took",
        m.http_seconds.clone(),
    );
    registry.register(
        "actors",
        "Order actors alive, by the status of their order",
        m.actors.clone(),
    );
    registry.register(
        "transitions",
        "Order status transitions, by from and to status",
        m.transitions.clone(),
    );
    registry.register(
        "store_write_seconds",
        "Writes to the order store (insert, save of a transition with its outbox), and how long they took",
        m.store_write_seconds.clone(),
    );
    registry.register(
        "orders",
        "Orders in the store, by status (read at scrape time)",
        m.orders.clone(),
    );
    registry.register(
        "outbox_pending",
        "Signals stored, not yet confirmed by RabbitMQ (read at scrape time)",
        m.outbox_pending.clone(),
    );
    registry.register(
        "store_up",
        "1 when the order store answers (read at scrape time)",
        m.store_up.clone(),
    );
    registry.register(
        "overdue_orders",
        "Orders whose fulfillment did not finish within FULFILLMENT_DEADLINE_MS",
        m.overdue.clone(),
    );
    registry.register(
        "quarantined_rows",
        "Stored orders that could not be read at recovery, set aside (GET /quarantine)",
        m.quarantined.clone(),
    );
    registry.register(
        "activity_attempt_failures",
        "Failed attempts of the inventory and payment activities (each retried per its policy)",
        m.activity_failures.clone(),
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

    /// An actor of an order in `status` started (+1) or stopped (-1).
    pub fn actor(&self, status: &str, delta: i64) {
        self.actors
            .get_or_create(&StatusLabels {
                status: status.into(),
            })
            .inc_by(delta);
    }
}

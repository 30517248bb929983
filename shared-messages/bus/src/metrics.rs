//! Prometheus metrics of the bus, shared by both services: messages
//! consumed (by queue, type and outcome), dead-lettered, published, how long
//! handlers and requests take, the broker connection, consumer restarts and
//! outbox rows that could not be published or decoded.
//!
//! The families are process-wide (one bus per process); a service adds
//! them to its registry with [`register`], under its own prefix, so
//! order-service exposes `order_service_messages_consumed_total` and
//! fulfillment-service `fulfillment_service_messages_consumed_total`.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumedLabels {
    pub queue: String,
    pub message_type: String,
    /// `ack`, `retry` or `dead_letter`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueTypeLabels {
    pub queue: String,
    pub message_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub exchange: String,
    pub routing_key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishedLabels {
    pub exchange: String,
    pub message_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub message_type: String,
    /// `ok`, `timeout`, `not_connected` or `error`.
    pub outcome: String,
}

/// Latency buckets from 0.5 ms to about 16 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The bus's metric families.
pub struct BusMetrics {
    pub consumed: Family<ConsumedLabels, Counter>,
    pub dead_lettered: Family<QueueTypeLabels, Counter>,
    pub handle_seconds: Family<QueueTypeLabels, Histogram, fn() -> Histogram>,
    pub published: Family<PublishedLabels, Counter>,
    pub request_seconds: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub connected: Gauge,
    pub connects: Counter,
    pub consumer_restarts: Family<QueueLabels, Counter>,
    pub outbox_failures: Family<RouteLabels, Counter>,
    pub outbox_held: Gauge,
    pub outbox_quarantined: Counter,
}

/// The process's bus metrics.
pub static METRICS: LazyLock<BusMetrics> = LazyLock::new(|| BusMetrics {
    consumed: Family::default(),
    dead_lettered: Family::default(),
    handle_seconds: Family::new_with_constructor(latency_histogram),
    published: Family::default(),
    request_seconds: Family::new_with_constructor(latency_histogram),
    connected: Gauge::default(),
    connects: Counter::default(),
    consumer_restarts: Family::default(),
    outbox_failures: Family::default(),
    outbox_held: Gauge::default(),
    outbox_quarantined: Counter::default(),
});

/// Adds the bus's families to `registry`.
pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    registry.register(
        "messages_consumed",
        "Messages taken from a queue and handled, by queue, message type and outcome (ack, retry, dead_letter)",
        m.consumed.clone(),
    );
    registry.register(
        "messages_dead_lettered",
        "Messages sent to a dead-letter queue, by queue and message type (`undecodable` for bodies that did not decode)",
        m.dead_lettered.clone(),
    );
    registry.register(
        "message_handling_seconds",
        "How long handling one consumed message took (a signal until its outcome is stored, a query until answered)",
        m.handle_seconds.clone(),
    );
    registry.register(
        "messages_published",
        "Messages published and confirmed by RabbitMQ (replies: sent), by exchange and message type",
        m.published.clone(),
    );
    registry.register(
        "request_seconds",
        "Round trip of a request sent over RabbitMQ (a signal awaiting its verdict, a query), by message type and outcome",
        m.request_seconds.clone(),
    );
    registry.register(
        "broker_connected",
        "1 while connected to RabbitMQ, else 0",
        m.connected.clone(),
    );
    registry.register(
        "broker_connects",
        "Connections to RabbitMQ established (the first and every reconnection)",
        m.connects.clone(),
    );
    registry.register(
        "consumer_restarts",
        "Consumers started again after the broker cancelled them, closed their channel or the connection was lost, by queue",
        m.consumer_restarts.clone(),
    );
    registry.register(
        "outbox_publish_failures",
        "Outbox rows the broker refused or could not route (kept and retried with backoff), by exchange and routing key",
        m.outbox_failures.clone(),
    );
    registry.register(
        "outbox_rows_held",
        "Outbox rows kept back after a failed publish, waiting for their next attempt",
        m.outbox_held.clone(),
    );
    registry.register(
        "outbox_rows_quarantined",
        "Outbox rows that could not be decoded, moved out of the outbox into the quarantine (listed on /quarantine)",
        m.outbox_quarantined.clone(),
    );
}

/// Counts a consumer started again.
pub(super) fn consumer_restarted(queue: &str) {
    METRICS
        .consumer_restarts
        .get_or_create(&QueueLabels {
            queue: queue.into(),
        })
        .inc();
}

/// The `message_type` label of a body that did not decode.
pub const UNDECODABLE: &str = "undecodable";

/// Counts a delivery dead-lettered before any handler ran, because its
/// body did not decode.
pub(super) fn undecodable(queue: &str) {
    let m = &*METRICS;
    m.consumed
        .get_or_create(&ConsumedLabels {
            queue: queue.into(),
            message_type: UNDECODABLE.into(),
            outcome: "dead_letter".into(),
        })
        .inc();
    m.dead_lettered
        .get_or_create(&QueueTypeLabels {
            queue: queue.into(),
            message_type: UNDECODABLE.into(),
        })
        .inc();
}

pub(super) fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ack => "ack",
        Outcome::Retry(_) => "retry",
        Outcome::DeadLetter(_) => "dead_letter",
    }
}

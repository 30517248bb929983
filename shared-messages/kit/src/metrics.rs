//! The metrics both services keep alike, registered under the service's
//! prefix by [`Common::register`]: HTTP requests, actors by status, status
//! transitions, store writes, workflows in the store by status, the outbox
//! backlog, whether the store answers, rows quarantined, partitions
//! owned; and the bus's families (messages, requests, broker connection)
//! from [`message_bus::metrics`]. Counters and histograms are updated
//! where things happen; the store's gauges are read at scrape time
//! ([`Common::read_store`]).

use std::sync::LazyLock;
use std::time::Instant;

use message_bus::metrics::latency_histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// One of the standard methods, or `other`.
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

pub type HttpSeconds = Family<HttpLabels, Histogram, fn() -> Histogram>;

/// The HTTP request histogram of this process (one service per process),
/// updated by [`crate::http::observe`] and registered by
/// [`Common::register`].
pub static HTTP_SECONDS: LazyLock<HttpSeconds> =
    LazyLock::new(|| Family::new_with_constructor(latency_histogram));

/// How a service names what it runs, for the metrics' help texts.
#[derive(Debug, Clone, Copy)]
pub struct Nouns {
    /// `order`; `<one>s` is the name of the by-status gauge.
    pub one: &'static str,
    /// What its outbox holds: `Signals`, `Events`.
    pub outbox: &'static str,
    /// What one store write is.
    pub store_write: &'static str,
}

/// The families both services keep.
pub struct Common {
    pub http_seconds: HttpSeconds,
    pub actors: Family<StatusLabels, Gauge>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub store_write_seconds: Family<OperationLabels, Histogram, fn() -> Histogram>,
    /// Workflows in the store by status (`<prefix>_<many>`).
    pub by_status: Family<StatusLabels, Gauge>,
    pub outbox_pending: Gauge,
    pub store_up: Gauge,
    pub quarantined_rows: Counter,
    /// Partitions whose lease this replica holds
    /// ([`crate::partitions::Leases::start`] keeps it).
    pub partitions_owned: Gauge,
}

impl Common {
    /// Registers the common families and the bus's in `registry` (made
    /// with the service's prefix).
    pub fn register(registry: &mut Registry, nouns: Nouns) -> Self {
        message_bus::metrics::register(registry);
        let m = Self {
            http_seconds: HTTP_SECONDS.clone(),
            actors: Family::default(),
            transitions: Family::default(),
            store_write_seconds: Family::new_with_constructor(latency_histogram),
            by_status: Family::default(),
            outbox_pending: Gauge::default(),
            store_up: Gauge::default(),
            quarantined_rows: Counter::default(),
            partitions_owned: Gauge::default(),
        };
        let Nouns {
            one,
            outbox,
            store_write,
        } = nouns;
        let many = format!("{one}s");
        let many = many.as_str();
        registry.register(
            "http_request_seconds",
            "HTTP requests by method, route pattern and status code, and how long they took",
            m.http_seconds.clone(),
        );
        registry.register(
            "actors",
            format!(
                "{} actors alive, by the status of their {one}",
                capital(one)
            ),
            m.actors.clone(),
        );
        registry.register(
            "transitions",
            format!("{} status transitions, by from and to status", capital(one)),
            m.transitions.clone(),
        );
        registry.register(
            "store_write_seconds",
            format!("Writes to the {one} store ({store_write}), and how long they took"),
            m.store_write_seconds.clone(),
        );
        registry.register(
            many,
            format!(
                "{} in the store, by status (read at scrape time)",
                capital(many)
            ),
            m.by_status.clone(),
        );
        registry.register(
            "outbox_pending",
            format!("{outbox} stored, not yet confirmed by RabbitMQ (read at scrape time)"),
            m.outbox_pending.clone(),
        );
        registry.register(
            "store_up",
            format!("1 when the {one} store answers (read at scrape time)"),
            m.store_up.clone(),
        );
        registry.register(
            "quarantined_rows",
            format!(
                "Stored {many} that could not be read at recovery, set aside (GET /quarantine)"
            ),
            m.quarantined_rows.clone(),
        );
        registry.register(
            "partitions_owned",
            format!("Partitions of the {many} whose lease this replica holds"),
            m.partitions_owned.clone(),
        );
        m
    }

    /// Records one store write that started at `started` (for writes
    /// that are awaited, where a closure cannot time them).
    pub fn store_write_took(&self, operation: &str, started: Instant) {
        self.store_write_seconds
            .get_or_create(&OperationLabels {
                operation: operation.into(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Times one store write.
    pub fn store_write<T>(&self, operation: &str, write: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = write();
        self.store_write_seconds
            .get_or_create(&OperationLabels {
                operation: operation.into(),
            })
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// An actor of a workflow in `status` started (+1) or stopped (-1).
    pub fn actor(&self, status: &str, delta: i64) {
        self.actors
            .get_or_create(&StatusLabels {
                status: status.into(),
            })
            .inc_by(delta);
    }

    /// A running workflow moved from status `from` to `to`: the transition
    /// is counted and its actor moves between the `actors` statuses.
    pub fn transition(&self, from: &str, to: &str) {
        self.transitions
            .get_or_create(&TransitionLabels {
                from: from.into(),
                to: to.into(),
            })
            .inc();
        self.actor(from, -1);
        self.actor(to, 1);
    }

    /// At scrape time: what the store holds now. `counts` is the number
    /// of workflows by status (`None` when the store did not answer: then
    /// `store_up` is 0 and every status 0), over every status in
    /// `statuses`; `outbox` the outbox backlog (kept as it was when the
    /// store did not answer).
    pub fn read_store<'a>(
        &self,
        statuses: impl IntoIterator<Item = &'a str>,
        counts: Option<Vec<(String, u64)>>,
        outbox: Option<u64>,
    ) {
        self.store_up.set(i64::from(counts.is_some()));
        let counts = counts.unwrap_or_default();
        for status in statuses {
            let n = counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            self.by_status
                .get_or_create(&StatusLabels {
                    status: status.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Some(n) = outbox {
            self.outbox_pending
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// A service's registry: the common families under its prefix, and any
/// it adds of its own (see [`Metrics::new`]).
pub struct Metrics {
    registry: Registry,
    common: Common,
}

/// The common families (`METRICS.actors`, `METRICS.store_write(..)`, ...).
impl std::ops::Deref for Metrics {
    type Target = Common;
    fn deref(&self) -> &Common {
        &self.common
    }
}

impl Metrics {
    /// The registry with `prefix` (`order_service`), the common families
    /// and the bus's, and whatever `own` registers; answers what `own`
    /// answers too.
    pub fn new<T>(prefix: &str, nouns: Nouns, own: impl FnOnce(&mut Registry) -> T) -> (Self, T) {
        let mut registry = Registry::with_prefix(prefix);
        let common = Common::register(&mut registry, nouns);
        let own = own(&mut registry);
        (Self { registry, common }, own)
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

fn capital(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

/// `registry` in the Prometheus/OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_families_carry_the_prefix_and_the_store_gauges() {
        let mut registry = Registry::with_prefix("thing_service");
        let m = Common::register(
            &mut registry,
            Nouns {
                one: "thing",
                outbox: "Events",
                store_write: "a transition",
            },
        );
        m.read_store(["NEW", "DONE"], Some(vec![("DONE".into(), 3)]), Some(2));
        m.actor("NEW", 1);
        let text = encode(&registry);
        for line in [
            "thing_service_things{status=\"DONE\"} 3",
            "thing_service_things{status=\"NEW\"} 0",
            "thing_service_outbox_pending 2",
            "thing_service_store_up 1",
            "thing_service_partitions_owned 0",
            "thing_service_actors{status=\"NEW\"} 1",
            "# HELP thing_service_actors Thing actors alive",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        m.read_store(["NEW"], None, None);
        assert!(encode(&registry).contains("thing_service_store_up 0"));
    }
}

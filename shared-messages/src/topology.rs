//! Every exchange, queue and binding, named in one place.
//!
//! Queues read `<consumer>.<what>` so the management console explains
//! itself. Each service declares, idempotently and at every (re)connect, the
//! topology it consumes from and the queues it sends signals to, so a signal
//! sent while the receiver has never run still waits in its queue. Both
//! services build their declarations from the same functions here, so the
//! arguments always agree (RabbitMQ refuses a re-declaration that differs).
//! The one exception is each fulfillment-service replica's query queue
//! ([`fulfillment_query_replica`]): exclusive to the replica's connection,
//! so only that replica declares it.
//!
//! | exchange (type) | routing key | queue | consumer |
//! |---|---|---|---|
//! | `fulfillment.signals` (direct) | `signal` | `fulfillment.signals` (quorum) | fulfillment-service |
//! | `fulfillment.queries` (direct) | `query` | `fulfillment.queries.<replica>` (classic, exclusive, expiring), one per replica | that fulfillment-service replica |
//! | `fulfillment.events` (topic) | `fulfillment.status.<status>` | `order-service.fulfillment-events` (quorum) | order-service |
//! | `fulfillment.events` (topic) | `fulfillment.progress.<status>` | none by default | whoever binds it |
//! | `fulfillment.dead-letter` (direct) | queue name (`fulfillment.queries` for every replica's query queue) | `fulfillment.signals.dlq`, `fulfillment.queries.dlq` | operators |
//! | `order-service.dead-letter` (direct) | queue name | `order-service.fulfillment-events.dlq` | operators |
//!
//! In partitioned mode (several replicas of a service, each workflow owned
//! by the replica that owns its partition) a service also declares its
//! partition queues, one per partition: quorum, single-active-consumer,
//! dead-lettering into the dead-letter queue of the queue they are fed
//! from. The replica that owns partition 0 moves each message from the
//! shared queue to its partition's queue; the owner of a partition consumes
//! that partition's queue. Only the consuming service declares them, and
//! they are never part of `definitions.json` ([`all`]): how many there are
//! is a setting of the service.
//!
//! | exchange (type) | routing key | queue | dead letters under |
//! |---|---|---|---|
//! | `fulfillment.partitions` (direct) | `<n>` ([`partition_key`]) | `fulfillment.signals.p<nn>` ([`fulfillment_partition_queue`]) | `fulfillment.signals` |
//! | `order-service.partitions` (direct) | `<n>` | `order-service.partition.p<nn>` ([`order_partition_queue`]) | `order-service.fulfillment-events` |

use crate::messages::FulfillmentStatus;

pub const FULFILLMENT_SIGNALS_EXCHANGE: &str = "fulfillment.signals";
pub const FULFILLMENT_SIGNALS_QUEUE: &str = "fulfillment.signals";
pub const FULFILLMENT_SIGNAL_KEY: &str = "signal";

pub const FULFILLMENT_QUERIES_EXCHANGE: &str = "fulfillment.queries";
/// What every replica's query queue is named after
/// ([`fulfillment_query_queue`]), and the key their dead letters go under,
/// into `fulfillment.queries.dlq`.
pub const FULFILLMENT_QUERIES_QUEUE: &str = "fulfillment.queries";
pub const FULFILLMENT_QUERY_KEY: &str = "query";

pub const FULFILLMENT_EVENTS_EXCHANGE: &str = "fulfillment.events";
/// Binding key that matches every fulfillment status event (a change of
/// status), the ones order-service acts on.
pub const FULFILLMENT_EVENTS_ALL: &str = "fulfillment.status.#";
/// Binding key that matches every progress event: a step done or an
/// address changed without a change of status. Nothing binds it by
/// default; a dashboard that wants every step binds it (or `fulfillment.#`).
pub const FULFILLMENT_PROGRESS_ALL: &str = "fulfillment.progress.#";

pub const FULFILLMENT_DEAD_LETTER_EXCHANGE: &str = "fulfillment.dead-letter";

pub const ORDER_FULFILLMENT_EVENTS_QUEUE: &str = "order-service.fulfillment-events";
pub const ORDER_DEAD_LETTER_EXCHANGE: &str = "order-service.dead-letter";

/// Where fulfillment-service's ingress sends each signal on to its
/// partition's queue ([`fulfillment_partitions`]).
pub const FULFILLMENT_PARTITIONS_EXCHANGE: &str = "fulfillment.partitions";
/// Where order-service's ingress sends each message on to its partition's
/// queue ([`order_partitions`]).
pub const ORDER_PARTITIONS_EXCHANGE: &str = "order-service.partitions";
/// What order-service's partition queues are named after
/// ([`order_partition_queue`]).
pub const ORDER_PARTITION_QUEUE: &str = "order-service.partition";

/// How often a quorum queue redelivers a message whose handler keeps
/// failing before RabbitMQ dead-letters it. RabbitMQ 3.10 has no default
/// limit, so without this a poison message would loop forever.
pub const DELIVERY_LIMIT: i32 = 20;

/// How long a query waits in its queue: the services' default query timeout
/// (`QUERY_TIMEOUT_MS`), after which nobody waits for the answer.
/// Requesters also set a per-message expiration equal to their own timeout.
pub const QUERY_QUEUE_TTL_MS: i32 = 5_000;

/// The query queue of the fulfillment-service replica `replica`, e.g.
/// `fulfillment.queries.fulfillment-7c9d-1`.
pub fn fulfillment_query_queue(replica: &str) -> String {
    format!("{FULFILLMENT_QUERIES_QUEUE}.{replica}")
}

/// The routing key a status event is published with, e.g.
/// `fulfillment.status.ready_to_ship`.
pub fn fulfillment_event_key(status: FulfillmentStatus) -> String {
    format!(
        "fulfillment.status.{}",
        status.as_str().to_ascii_lowercase()
    )
}

/// The routing key a progress event (a transition within one status) is
/// published with, e.g. `fulfillment.progress.picking`.
pub fn fulfillment_progress_key(status: FulfillmentStatus) -> String {
    format!(
        "fulfillment.progress.{}",
        status.as_str().to_ascii_lowercase()
    )
}

/// The queue that holds what was dead-lettered from `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    Direct,
    Topic,
}

impl ExchangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Topic => "topic",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// Replicated, durable; for signals, events and dead letters.
    Quorum { delivery_limit: Option<i32> },
    /// Durable definition, transient messages that expire; lives on one
    /// node, so it is unavailable while that node is down.
    Classic { message_ttl_ms: Option<i32> },
    /// Classic, not durable, exclusive to the connection that declares it:
    /// deleted with that connection and declared again, on whichever node
    /// the next connection is on, when the consumer reconnects. For
    /// requests that expire (queries): what nobody waits for any more is
    /// dropped, never dead-lettered. Never part of `definitions.json`.
    Exclusive { message_ttl_ms: i32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub kind: QueueKind,
    /// Where RabbitMQ itself dead-letters (delivery limit reached, rejected
    /// without requeue). The consumer uses the same exchange when it
    /// dead-letters a message with a reason.
    pub dead_letter_exchange: Option<String>,
    /// The routing key dead letters go under, when not the queue's own
    /// name: every replica's query queue shares `fulfillment.queries.dlq`.
    pub dead_letter_key: Option<String>,
    /// At most one consumer gets deliveries at a time
    /// (`x-single-active-consumer`); the others wait, and the broker hands
    /// the queue to one of them when the active one goes. A partition
    /// queue's guard against two replicas handling one partition at once.
    pub single_active_consumer: bool,
}

/// The value of one `x-` queue argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueArgument {
    Text(String),
    Int(i32),
    Bool(bool),
}

impl QueueSpec {
    /// The `x-` arguments RabbitMQ gets for this queue; the one source for
    /// both the declarations at start-up and `definitions.json`.
    pub fn arguments(&self) -> Vec<(&'static str, QueueArgument)> {
        let mut args = Vec::new();
        match self.kind {
            QueueKind::Quorum { delivery_limit } => {
                args.push(("x-queue-type", QueueArgument::Text("quorum".into())));
                if let Some(limit) = delivery_limit {
                    args.push(("x-delivery-limit", QueueArgument::Int(limit)));
                }
            }
            QueueKind::Exclusive { message_ttl_ms } => {
                args.push(("x-queue-type", QueueArgument::Text("classic".into())));
                args.push(("x-message-ttl", QueueArgument::Int(message_ttl_ms)));
            }
            QueueKind::Classic { message_ttl_ms } => {
                args.push(("x-queue-type", QueueArgument::Text("classic".into())));
                if let Some(ttl) = message_ttl_ms {
                    args.push(("x-message-ttl", QueueArgument::Int(ttl)));
                }
            }
        }
        // Expired queries are not worth keeping: only quorum signal and
        // event queues let RabbitMQ dead-letter by itself. Consumers still
        // dead-letter undecodable queries explicitly, with a reason.
        if let (Some(dlx), QueueKind::Quorum { .. }) = (&self.dead_letter_exchange, self.kind) {
            args.push(("x-dead-letter-exchange", QueueArgument::Text(dlx.clone())));
            args.push((
                "x-dead-letter-routing-key",
                QueueArgument::Text(self.dead_letter_routing_key().to_owned()),
            ));
        }
        // Last, and only when set, so that every other queue's arguments
        // (and `definitions.json`) stay as they were.
        if self.single_active_consumer {
            args.push(("x-single-active-consumer", QueueArgument::Bool(true)));
        }
        args
    }

    /// The routing key this queue's dead letters go under.
    pub fn dead_letter_routing_key(&self) -> &str {
        self.dead_letter_key.as_deref().unwrap_or(&self.name)
    }

    /// Owned by the declaring connection (see [`QueueKind::Exclusive`]).
    pub fn is_exclusive(&self) -> bool {
        matches!(self.kind, QueueKind::Exclusive { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingSpec {
    pub queue: String,
    pub exchange: String,
    pub routing_key: String,
}

/// A set of declarations, applied in order: exchanges, queues, bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<BindingSpec>,
}

impl Topology {
    pub fn exchange(mut self, name: &str, kind: ExchangeType) -> Self {
        let spec = ExchangeSpec {
            name: name.into(),
            kind,
        };
        if !self.exchanges.contains(&spec) {
            self.exchanges.push(spec);
        }
        self
    }

    pub fn queue(mut self, spec: QueueSpec) -> Self {
        if !self.queues.contains(&spec) {
            self.queues.push(spec);
        }
        self
    }

    pub fn bind(mut self, queue: &str, exchange: &str, routing_key: &str) -> Self {
        let spec = BindingSpec {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        };
        if !self.bindings.contains(&spec) {
            self.bindings.push(spec);
        }
        self
    }

    /// Everything in `self` and `other`, without repeats.
    pub fn merge(mut self, other: Topology) -> Self {
        for e in other.exchanges {
            self = self.exchange(&e.name, e.kind);
        }
        for q in other.queues {
            self = self.queue(q);
        }
        for b in other.bindings {
            self = self.bind(&b.queue, &b.exchange, &b.routing_key);
        }
        self
    }

    pub fn find_queue(&self, name: &str) -> Option<&QueueSpec> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// A consumed queue with its dead-letter exchange and `<queue>.dlq`,
    /// bound under the queue's name.
    pub fn consumed_queue(self, name: &str, kind: QueueKind, dead_letter_exchange: &str) -> Self {
        let dlq = dead_letter_queue(name);
        self.exchange(dead_letter_exchange, ExchangeType::Direct)
            .queue(dead_letter_queue_spec(&dlq))
            .bind(&dlq, dead_letter_exchange, name)
            .queue(QueueSpec {
                name: name.into(),
                kind,
                dead_letter_exchange: Some(dead_letter_exchange.into()),
                dead_letter_key: None,
                single_active_consumer: false,
            })
    }
}

/// Signals to fulfillment: declared by fulfillment-service, which consumes
/// them, and by every sender, so signals wait even before it first runs.
pub fn fulfillment_signals() -> Topology {
    Topology::default()
        .exchange(FULFILLMENT_SIGNALS_EXCHANGE, ExchangeType::Direct)
        .consumed_queue(
            FULFILLMENT_SIGNALS_QUEUE,
            QueueKind::Quorum {
                delivery_limit: Some(DELIVERY_LIMIT),
            },
            FULFILLMENT_DEAD_LETTER_EXCHANGE,
        )
        .bind(
            FULFILLMENT_SIGNALS_QUEUE,
            FULFILLMENT_SIGNALS_EXCHANGE,
            FULFILLMENT_SIGNAL_KEY,
        )
}

/// Queries to fulfillment, as every sender and `definitions.json` know
/// them: the exchange, and the dead-letter queue every replica's query
/// queue shares. The queues that take queries are the replicas' own
/// ([`fulfillment_query_replica`]); with none bound, a (mandatory) query is
/// unroutable at once.
pub fn fulfillment_queries() -> Topology {
    let dlq = dead_letter_queue(FULFILLMENT_QUERIES_QUEUE);
    Topology::default()
        .exchange(FULFILLMENT_QUERIES_EXCHANGE, ExchangeType::Direct)
        .exchange(FULFILLMENT_DEAD_LETTER_EXCHANGE, ExchangeType::Direct)
        .queue(dead_letter_queue_spec(&dlq))
        .bind(
            &dlq,
            FULFILLMENT_DEAD_LETTER_EXCHANGE,
            FULFILLMENT_QUERIES_QUEUE,
        )
}

/// The query queue of one fulfillment-service replica
/// ([`fulfillment_query_queue`]): classic and exclusive, so it dies with
/// the replica's connection and is declared again on whichever node the
/// replica reconnects to; its messages expire with the query timeout.
/// Classic rather than quorum because a quorum queue commits every query
/// through its Raft log before delivering it, which doubled a query's
/// latency (docs/durability.md). Every replica binds the `query` key, so
/// with several replicas each answers every query and the requester keeps
/// the first reply.
pub fn fulfillment_query_replica(replica: &str) -> Topology {
    let queue = fulfillment_query_queue(replica);
    fulfillment_queries()
        .queue(QueueSpec {
            name: queue.clone(),
            kind: QueueKind::Exclusive {
                message_ttl_ms: QUERY_QUEUE_TTL_MS,
            },
            dead_letter_exchange: Some(FULFILLMENT_DEAD_LETTER_EXCHANGE.into()),
            dead_letter_key: Some(FULFILLMENT_QUERIES_QUEUE.into()),
            single_active_consumer: false,
        })
        .bind(&queue, FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY)
}

/// The exchange fulfillment status events are published to.
pub fn fulfillment_events() -> Topology {
    Topology::default().exchange(FULFILLMENT_EVENTS_EXCHANGE, ExchangeType::Topic)
}

/// What every fulfillment-service replica declares in common: everything
/// but its own query queue.
pub fn fulfillment_service() -> Topology {
    fulfillment_signals()
        .merge(fulfillment_queries())
        .merge(fulfillment_events())
}

/// What the fulfillment-service replica `replica` declares: the common
/// topology and its own query queue.
pub fn fulfillment_service_replica(replica: &str) -> Topology {
    fulfillment_service().merge(fulfillment_query_replica(replica))
}

/// What order-service declares: its own subscription to fulfillment events,
/// the fulfillment queues it sends signals to and the query exchange.
pub fn order_service() -> Topology {
    fulfillment_events()
        .consumed_queue(
            ORDER_FULFILLMENT_EVENTS_QUEUE,
            QueueKind::Quorum {
                delivery_limit: Some(DELIVERY_LIMIT),
            },
            ORDER_DEAD_LETTER_EXCHANGE,
        )
        .bind(
            ORDER_FULFILLMENT_EVENTS_QUEUE,
            FULFILLMENT_EVENTS_EXCHANGE,
            FULFILLMENT_EVENTS_ALL,
        )
        .merge(fulfillment_signals())
        .merge(fulfillment_queries())
}

/// What order-service declares when the broker's definitions are loaded
/// beforehand and its user may touch nothing of fulfillment-service's
/// (`AMQP_DECLARE_PEER_QUEUES=false`): its own subscription only. Declaring
/// fulfillment's queues and bindings needs read permission on names that
/// are also fulfillment's queues, which least privilege forbids.
pub fn order_service_own() -> Topology {
    Topology::default()
        .consumed_queue(
            ORDER_FULFILLMENT_EVENTS_QUEUE,
            QueueKind::Quorum {
                delivery_limit: Some(DELIVERY_LIMIT),
            },
            ORDER_DEAD_LETTER_EXCHANGE,
        )
        .bind(
            ORDER_FULFILLMENT_EVENTS_QUEUE,
            FULFILLMENT_EVENTS_EXCHANGE,
            FULFILLMENT_EVENTS_ALL,
        )
}

/// The routing key of partition `n` on a partitions exchange: the number
/// itself, e.g. `7`.
pub fn partition_key(n: u16) -> String {
    n.to_string()
}

/// The queue of fulfillment-service's partition `n`, e.g.
/// `fulfillment.signals.p07`: two digits at least, so that the management
/// console lists up to 100 partitions in order.
pub fn fulfillment_partition_queue(n: u16) -> String {
    format!("{FULFILLMENT_SIGNALS_QUEUE}.p{n:02}")
}

/// The queue of order-service's partition `n`, e.g.
/// `order-service.partition.p07` (padded as
/// [`fulfillment_partition_queue`]).
pub fn order_partition_queue(n: u16) -> String {
    format!("{ORDER_PARTITION_QUEUE}.p{n:02}")
}

/// fulfillment-service's partition queues `0..partitions`
/// ([`fulfillment_partition_queue`]), each bound to
/// [`FULFILLMENT_PARTITIONS_EXCHANGE`] under [`partition_key`]. Their dead
/// letters join those of `fulfillment.signals`, whose messages they carry,
/// in `fulfillment.signals.dlq`.
pub fn fulfillment_partitions(partitions: u16) -> Topology {
    partitioned(
        Partitions {
            exchange: FULFILLMENT_PARTITIONS_EXCHANGE,
            queue: fulfillment_partition_queue,
            dead_letter_exchange: FULFILLMENT_DEAD_LETTER_EXCHANGE,
            dead_letter_key: FULFILLMENT_SIGNALS_QUEUE,
        },
        partitions,
    )
}

/// order-service's partition queues `0..partitions`
/// ([`order_partition_queue`]), each bound to [`ORDER_PARTITIONS_EXCHANGE`]
/// under [`partition_key`]; their dead letters go to
/// `order-service.fulfillment-events.dlq`.
pub fn order_partitions(partitions: u16) -> Topology {
    partitioned(
        Partitions {
            exchange: ORDER_PARTITIONS_EXCHANGE,
            queue: order_partition_queue,
            dead_letter_exchange: ORDER_DEAD_LETTER_EXCHANGE,
            dead_letter_key: ORDER_FULFILLMENT_EVENTS_QUEUE,
        },
        partitions,
    )
}

/// One service's set of partition queues.
struct Partitions {
    /// The direct exchange the ingress forwards to.
    exchange: &'static str,
    /// The name of partition `n`'s queue.
    queue: fn(u16) -> String,
    dead_letter_exchange: &'static str,
    /// The key (and so the dead-letter queue) the partitions share with
    /// the queue they are fed from.
    dead_letter_key: &'static str,
}

/// The exchange, the shared dead-letter queue (declared exactly as by
/// [`Topology::consumed_queue`], so the declarations agree) and one
/// quorum, single-active-consumer queue per partition. Single active
/// consumer keeps a partition with one handler even while two replicas
/// both believe they own it (a lease just moved): the second waits until
/// the first stops consuming.
fn partitioned(set: Partitions, partitions: u16) -> Topology {
    let dlq = dead_letter_queue(set.dead_letter_key);
    let mut topology = Topology::default()
        .exchange(set.exchange, ExchangeType::Direct)
        .exchange(set.dead_letter_exchange, ExchangeType::Direct)
        .queue(dead_letter_queue_spec(&dlq))
        .bind(&dlq, set.dead_letter_exchange, set.dead_letter_key);
    for n in 0..partitions {
        let queue = (set.queue)(n);
        topology = topology
            .queue(QueueSpec {
                name: queue.clone(),
                kind: QueueKind::Quorum {
                    delivery_limit: Some(DELIVERY_LIMIT),
                },
                dead_letter_exchange: Some(set.dead_letter_exchange.into()),
                dead_letter_key: Some(set.dead_letter_key.into()),
                single_active_consumer: true,
            })
            .bind(&queue, set.exchange, &partition_key(n));
    }
    topology
}

/// A dead-letter queue: quorum, kept until an operator looks.
fn dead_letter_queue_spec(name: &str) -> QueueSpec {
    QueueSpec {
        name: name.into(),
        kind: QueueKind::Quorum {
            delivery_limit: None,
        },
        dead_letter_exchange: None,
        dead_letter_key: None,
        single_active_consumer: false,
    }
}

/// Everything, as an operator would load it into a fresh broker.
pub fn all() -> Topology {
    fulfillment_service().merge(order_service())
}

/// `topology` in RabbitMQ's definitions format (what the management API's
/// `/api/definitions` and `load_definitions` take), for vhost `vhost`.
/// `deploy/rabbitmq/definitions.json` is `definitions(&all(), "/")`; a test
/// keeps the file and the code from drifting apart. Exclusive queues and
/// their bindings are left out: they belong to a connection.
pub fn definitions(topology: &Topology, vhost: &str) -> serde_json::Value {
    use serde_json::json;
    let exclusive = |name: &str| {
        topology
            .find_queue(name)
            .is_some_and(QueueSpec::is_exclusive)
    };
    let exchanges: Vec<_> = topology
        .exchanges
        .iter()
        .map(|e| {
            json!({
                "name": e.name, "vhost": vhost, "type": e.kind.as_str(),
                "durable": true, "auto_delete": false, "internal": false, "arguments": {}
            })
        })
        .collect();
    let queues: Vec<_> = topology
        .queues
        .iter()
        .filter(|q| !q.is_exclusive())
        .map(|q| {
            let arguments: serde_json::Map<String, serde_json::Value> = q
                .arguments()
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        QueueArgument::Text(t) => json!(t),
                        QueueArgument::Int(n) => json!(n),
                        QueueArgument::Bool(b) => json!(b),
                    };
                    (k.to_owned(), v)
                })
                .collect();
            json!({
                "name": q.name, "vhost": vhost, "durable": true,
                "auto_delete": false, "arguments": arguments
            })
        })
        .collect();
    let bindings: Vec<_> = topology
        .bindings
        .iter()
        .filter(|b| !exclusive(&b.queue))
        .map(|b| {
            json!({
                "source": b.exchange, "vhost": vhost, "destination": b.queue,
                "destination_type": "queue", "routing_key": b.routing_key, "arguments": {}
            })
        })
        .collect();
    json!({ "exchanges": exchanges, "queues": queues, "bindings": bindings })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `deploy/rabbitmq/definitions.json` is generated from this module;
    /// run with `BLESS=1` to rewrite it after a topology change.
    #[test]
    fn deploy_definitions_match_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/rabbitmq/definitions.json");
        let expected = definitions(&all(), "/");
        let pretty = serde_json::to_string_pretty(&expected).expect("json") + "\n";
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&path, &pretty).expect("write definitions.json");
        }
        let on_disk =
            std::fs::read_to_string(&path).expect("deploy/rabbitmq/definitions.json exists");
        let on_disk: serde_json::Value = serde_json::from_str(&on_disk).expect("valid JSON");
        assert_eq!(
            on_disk, expected,
            "deploy/rabbitmq/definitions.json is out of date: run `BLESS=1 cargo test -p shared-messages`"
        );
    }

    #[test]
    fn event_keys_match_the_subscription() {
        assert_eq!(
            fulfillment_event_key(FulfillmentStatus::ReadyToShip),
            "fulfillment.status.ready_to_ship"
        );
        assert_eq!(
            fulfillment_progress_key(FulfillmentStatus::Picking),
            "fulfillment.progress.picking"
        );
        // order-service's binding takes status events, not progress events.
        let matches = |key: &str| key.starts_with(FULFILLMENT_EVENTS_ALL.trim_end_matches('#'));
        assert!(matches(&fulfillment_event_key(FulfillmentStatus::Shipped)));
        assert!(!matches(&fulfillment_progress_key(
            FulfillmentStatus::Shipped
        )));
    }

    #[test]
    fn every_consumed_queue_has_a_bound_dead_letter_queue() {
        let t = all().merge(fulfillment_service_replica("r1"));
        for q in t.queues.iter().filter(|q| q.dead_letter_exchange.is_some()) {
            let dlx = q.dead_letter_exchange.as_deref().expect("filtered");
            let key = q.dead_letter_routing_key();
            let dlq = dead_letter_queue(key);
            assert!(t.find_queue(&dlq).is_some(), "{dlq} declared");
            assert!(t
                .bindings
                .iter()
                .any(|b| b.queue == dlq && b.exchange == dlx && b.routing_key == key));
        }
    }

    #[test]
    fn each_replica_has_its_own_exclusive_query_queue_bound_to_the_query_key() {
        let (one, two) = (fulfillment_query_queue("r1"), fulfillment_query_queue("r2"));
        assert_eq!(one, "fulfillment.queries.r1");
        let both = fulfillment_service_replica("r1").merge(fulfillment_service_replica("r2"));
        for queue in [&one, &two] {
            let spec = both.find_queue(queue).expect("declared");
            assert!(spec.is_exclusive());
            assert!(spec
                .arguments()
                .contains(&("x-message-ttl", QueueArgument::Int(QUERY_QUEUE_TTL_MS))));
            assert_eq!(spec.dead_letter_routing_key(), FULFILLMENT_QUERIES_QUEUE);
            assert!(both.bindings.contains(&BindingSpec {
                queue: queue.to_string(),
                exchange: FULFILLMENT_QUERIES_EXCHANGE.into(),
                routing_key: FULFILLMENT_QUERY_KEY.into(),
            }));
        }
        // Nobody else declares or binds a replica's queue, and the broker's
        // definitions have none.
        assert!(!all().queues.iter().any(QueueSpec::is_exclusive));
        let defs = definitions(&fulfillment_service_replica("r1"), "/");
        assert!(!defs.to_string().contains(&one));
    }

    #[test]
    fn shared_declarations_agree_between_services() {
        let f = fulfillment_service();
        let o = order_service();
        for q in &o.queues {
            if let Some(same) = f.find_queue(&q.name) {
                assert_eq!(same, q);
            }
        }
        // merge is idempotent
        assert_eq!(all(), all().merge(all()));
    }

    #[test]
    fn partition_queues_and_keys_are_named_by_number() {
        assert_eq!(partition_key(0), "0");
        assert_eq!(partition_key(15), "15");
        assert_eq!(fulfillment_partition_queue(0), "fulfillment.signals.p00");
        assert_eq!(fulfillment_partition_queue(7), "fulfillment.signals.p07");
        assert_eq!(fulfillment_partition_queue(123), "fulfillment.signals.p123");
        assert_eq!(order_partition_queue(15), "order-service.partition.p15");
    }

    #[test]
    fn each_fulfillment_partition_is_a_single_active_consumer_quorum_queue() {
        let t = fulfillment_partitions(16);
        assert_eq!(
            t.queues.iter().filter(|q| q.single_active_consumer).count(),
            16
        );
        assert!(t.exchanges.contains(&ExchangeSpec {
            name: FULFILLMENT_PARTITIONS_EXCHANGE.into(),
            kind: ExchangeType::Direct,
        }));
        for n in 0..16 {
            let queue = fulfillment_partition_queue(n);
            let spec = t.find_queue(&queue).expect("declared");
            assert_eq!(
                spec.arguments(),
                vec![
                    ("x-queue-type", QueueArgument::Text("quorum".into())),
                    ("x-delivery-limit", QueueArgument::Int(DELIVERY_LIMIT)),
                    (
                        "x-dead-letter-exchange",
                        QueueArgument::Text(FULFILLMENT_DEAD_LETTER_EXCHANGE.into())
                    ),
                    (
                        "x-dead-letter-routing-key",
                        QueueArgument::Text(FULFILLMENT_SIGNALS_QUEUE.into())
                    ),
                    ("x-single-active-consumer", QueueArgument::Bool(true)),
                ]
            );
            let bound: Vec<_> = t.bindings.iter().filter(|b| b.queue == queue).collect();
            assert_eq!(
                bound,
                vec![&BindingSpec {
                    queue: queue.clone(),
                    exchange: FULFILLMENT_PARTITIONS_EXCHANGE.into(),
                    routing_key: partition_key(n),
                }]
            );
        }
        assert!(t.find_queue(&fulfillment_partition_queue(16)).is_none());
    }

    #[test]
    fn order_partitions_dead_letter_with_the_fulfillment_events() {
        let t = order_partitions(4);
        let spec = t.find_queue(&order_partition_queue(3)).expect("declared");
        assert!(spec.single_active_consumer);
        assert_eq!(
            spec.dead_letter_exchange.as_deref(),
            Some(ORDER_DEAD_LETTER_EXCHANGE)
        );
        assert_eq!(
            spec.dead_letter_routing_key(),
            ORDER_FULFILLMENT_EVENTS_QUEUE
        );
        assert!(t.bindings.contains(&BindingSpec {
            queue: order_partition_queue(3),
            exchange: ORDER_PARTITIONS_EXCHANGE.into(),
            routing_key: "3".into(),
        }));
        assert_eq!(t.queues.len(), 4 + 1, "four partitions and the shared dlq");
    }

    #[test]
    fn partition_queues_share_the_dead_letter_queue_of_their_source() {
        let with_partitions = all()
            .merge(fulfillment_partitions(16))
            .merge(order_partitions(16));
        // The shared dead-letter queues are declared exactly as before (a
        // different declaration would be refused by the broker).
        for dlq in [
            dead_letter_queue(FULFILLMENT_SIGNALS_QUEUE),
            dead_letter_queue(ORDER_FULFILLMENT_EVENTS_QUEUE),
        ] {
            let ours = with_partitions.find_queue(&dlq).expect("declared");
            assert_eq!(Some(ours), all().find_queue(&dlq));
        }
        assert_eq!(with_partitions.queues.len(), all().queues.len() + 32);
        for q in with_partitions
            .queues
            .iter()
            .filter(|q| q.dead_letter_exchange.is_some())
        {
            let dlx = q.dead_letter_exchange.as_deref().expect("filtered");
            let key = q.dead_letter_routing_key();
            let dlq = dead_letter_queue(key);
            assert!(with_partitions.find_queue(&dlq).is_some(), "{dlq} declared");
            assert!(with_partitions
                .bindings
                .iter()
                .any(|b| b.queue == dlq && b.exchange == dlx && b.routing_key == key));
        }
    }

    #[test]
    fn the_broker_definitions_have_no_partitions() {
        assert!(!all().queues.iter().any(|q| q.single_active_consumer));
        let defs = definitions(&all(), "/").to_string();
        assert!(!defs.contains("partition"));
        assert!(!defs.contains("x-single-active-consumer"));
        // A partition queue written out carries the argument as a boolean.
        let defs = definitions(&fulfillment_partitions(1), "/");
        let queue = defs["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .find(|q| q["name"] == "fulfillment.signals.p00")
            .expect("partition 0");
        assert_eq!(queue["arguments"]["x-single-active-consumer"], true);
    }

    #[test]
    fn every_binding_refers_to_declared_names() {
        let t = all();
        for b in &t.bindings {
            assert!(t.find_queue(&b.queue).is_some(), "{}", b.queue);
            assert!(
                t.exchanges.iter().any(|e| e.name == b.exchange),
                "{}",
                b.exchange
            );
        }
    }
}

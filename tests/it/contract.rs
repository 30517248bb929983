//! `docs/asyncapi.yaml` against the code: a test fails when they drift.
//!
//! - exchanges (name, type), queues (name, `x-` arguments, bindings) and the
//!   routing keys of signals, queries, status and progress events and dead
//!   letters, against `shared_messages::topology`;
//! - header names against `message_bus`;
//! - message type names and schema versions against
//!   `shared_messages::envelope` (every type and every version it reads has a
//!   message, and no message names one it does not), and every example
//!   decodes with the Rust types (and, at the version this build writes,
//!   round-trips exactly).
//!
//! The document's validity as AsyncAPI is checked by the AsyncAPI parser in
//! `scripts/test.sh`; the Python client in `tests/python` uses it against a
//! running fulfillment-service.

use std::collections::{BTreeMap, BTreeSet};

use message_bus::{
    DEAD_LETTER_REASON_HEADER, ENTITY_ID_HEADER, ORIGINAL_QUEUE_HEADER, TRACEPARENT_HEADER,
};
use serde_json::{json, Value};
use shared_messages::envelope::read_versions;
use shared_messages::messages::FulfillmentStatus;
use shared_messages::topology::{self, QueueArgument};
use shared_messages::{Envelope, Message, SCHEMA_VERSION};

fn document() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/asyncapi.yaml");
    let text = std::fs::read_to_string(&path).expect("docs/asyncapi.yaml exists");
    serde_yaml::from_str(&text).expect("docs/asyncapi.yaml is YAML")
}

fn channels(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["channels"].as_object().expect("channels")
}

fn channel<'a>(doc: &'a Value, id: &str) -> &'a Value {
    channels(doc)
        .get(id)
        .unwrap_or_else(|| panic!("channel {id} in docs/asyncapi.yaml"))
}

/// (queue name, arguments, bindings as (exchange, routing key)) of every
/// queue channel.
fn documented_queues(doc: &Value) -> BTreeMap<String, (Value, BTreeSet<(String, String)>)> {
    channels(doc)
        .values()
        .filter(|c| c["bindings"]["amqp"]["is"] == "queue")
        .map(|c| {
            let name = c["bindings"]["amqp"]["queue"]["name"]
                .as_str()
                .expect("a queue channel names its queue");
            assert_eq!(c["address"], name, "a queue channel's address is the queue");
            let bindings = c["x-rabbitmq"]["bindings"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: x-rabbitmq.bindings"))
                .iter()
                .map(|b| {
                    (
                        b["exchange"].as_str().expect("exchange").to_owned(),
                        b["routingKey"].as_str().expect("routingKey").to_owned(),
                    )
                })
                .collect();
            (
                name.to_owned(),
                (c["x-rabbitmq"]["arguments"].clone(), bindings),
            )
        })
        .collect()
}

#[test]
fn asyncapi_queues_and_exchanges_match_the_topology() {
    let doc = document();
    // Every shared queue, and a replica's query queue under the document's
    // name for it (`fulfillment.queries.{replica}`).
    let code = topology::all().merge(topology::fulfillment_query_replica("{replica}"));

    let expected: BTreeMap<String, (Value, BTreeSet<(String, String)>)> = code
        .queues
        .iter()
        .map(|q| {
            let arguments: serde_json::Map<String, Value> = q
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
            let bindings = code
                .bindings
                .iter()
                .filter(|b| b.queue == q.name)
                .map(|b| (b.exchange.clone(), b.routing_key.clone()))
                .collect();
            (q.name.clone(), (Value::Object(arguments), bindings))
        })
        .collect();
    for q in &code.queues {
        let amqp = &channels(&doc)
            .values()
            .find(|c| c["bindings"]["amqp"]["queue"]["name"] == q.name.as_str())
            .unwrap_or_else(|| panic!("{} has a channel", q.name))["bindings"]["amqp"]["queue"];
        assert_eq!(amqp["durable"], !q.is_exclusive(), "{}", q.name);
        assert_eq!(amqp["exclusive"], q.is_exclusive(), "{}", q.name);
    }
    assert_eq!(
        documented_queues(&doc),
        expected,
        "queues (names, x- arguments, bindings) in docs/asyncapi.yaml differ from shared_messages::topology"
    );

    let documented_exchanges: BTreeSet<(String, String)> = channels(&doc)
        .values()
        .filter(|c| c["bindings"]["amqp"]["is"] == "routingKey")
        .map(|c| &c["bindings"]["amqp"]["exchange"])
        .filter(|e| e["name"] != "")
        .map(|e| {
            assert_eq!(e["durable"], true, "{e}");
            assert_eq!(e["autoDelete"], false, "{e}");
            (
                e["name"].as_str().expect("name").to_owned(),
                e["type"].as_str().expect("type").to_owned(),
            )
        })
        .collect();
    // order-service's internal channel between its replicas: the exchange
    // of its partition queues is documented, the queues (`PARTITIONS` of
    // them, its own) are not.
    let internal = topology::order_partitions(1);
    let code_exchanges: BTreeSet<(String, String)> = code
        .exchanges
        .iter()
        .chain(
            internal
                .exchanges
                .iter()
                .filter(|e| e.name == topology::ORDER_PARTITIONS_EXCHANGE),
        )
        .map(|e| (e.name.clone(), e.kind.as_str().to_owned()))
        .collect();
    assert_eq!(documented_exchanges, code_exchanges, "exchanges");
}

/// The exchange and the routing key (the address, its parameter filled
/// with `value`) a routing-key channel publishes with.
fn route(doc: &Value, id: &str, value: Option<&str>) -> (String, String) {
    let c = channel(doc, id);
    assert_eq!(c["bindings"]["amqp"]["is"], "routingKey", "{id}");
    let exchange = c["bindings"]["amqp"]["exchange"]["name"]
        .as_str()
        .expect("exchange name")
        .to_owned();
    let address = c["address"].as_str().expect("an address").to_owned();
    let key = match value {
        Some(v) => {
            let (start, rest) = address.split_once('{').expect("a parameter");
            let (_, end) = rest.split_once('}').expect("a closed parameter");
            format!("{start}{v}{end}")
        }
        None => address,
    };
    (exchange, key)
}

fn parameter_enum(doc: &Value, id: &str, name: &str) -> BTreeSet<String> {
    let mut p = &channel(doc, id)["parameters"][name];
    if let Some(reference) = p["$ref"].as_str() {
        let key = reference.rsplit('/').next().expect("a name");
        p = &doc["components"]["parameters"][key];
    }
    p["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{id}: parameter {name} lists its values"))
        .iter()
        .map(|v| v.as_str().expect("text").to_owned())
        .collect()
}

#[test]
fn asyncapi_routing_keys_match_the_topology() {
    use topology::*;
    let doc = document();
    let owned = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        route(&doc, "fulfillmentSignals", None),
        owned(FULFILLMENT_SIGNALS_EXCHANGE, FULFILLMENT_SIGNAL_KEY)
    );
    assert_eq!(
        route(&doc, "fulfillmentQueries", None),
        owned(FULFILLMENT_QUERIES_EXCHANGE, FULFILLMENT_QUERY_KEY)
    );

    assert_eq!(
        route(&doc, "orderPartitions", Some("3")),
        owned(ORDER_PARTITIONS_EXCHANGE, &partition_key(3))
    );

    let statuses: BTreeSet<String> = FulfillmentStatus::ALL
        .iter()
        .map(|s| s.as_str().to_ascii_lowercase())
        .collect();
    for id in ["fulfillmentStatusEvents", "fulfillmentProgressEvents"] {
        assert_eq!(parameter_enum(&doc, id, "status"), statuses, "{id}");
    }
    for status in FulfillmentStatus::ALL {
        let lower = status.as_str().to_ascii_lowercase();
        assert_eq!(
            route(&doc, "fulfillmentStatusEvents", Some(&lower)),
            (
                FULFILLMENT_EVENTS_EXCHANGE.to_owned(),
                fulfillment_event_key(status)
            )
        );
        assert_eq!(
            route(&doc, "fulfillmentProgressEvents", Some(&lower)),
            (
                FULFILLMENT_EVENTS_EXCHANGE.to_owned(),
                fulfillment_progress_key(status)
            )
        );
    }

    // Dead letters: routed by the original queue's name (a replica's query
    // queue: by `fulfillment.queries`), into `<key>.dlq`.
    let code = all().merge(fulfillment_query_replica("{replica}"));
    for (id, exchange) in [
        ("fulfillmentDeadLetters", FULFILLMENT_DEAD_LETTER_EXCHANGE),
        ("orderServiceDeadLetters", ORDER_DEAD_LETTER_EXCHANGE),
    ] {
        let dead_lettered: BTreeSet<String> = code
            .queues
            .iter()
            .filter(|q| q.dead_letter_exchange.as_deref() == Some(exchange))
            .map(|q| q.dead_letter_routing_key().to_owned())
            .collect();
        assert_eq!(parameter_enum(&doc, id, "queue"), dead_lettered, "{id}");
        for queue in &dead_lettered {
            assert_eq!(
                route(&doc, id, Some(queue)),
                (exchange.to_owned(), queue.clone())
            );
            let dlq = dead_letter_queue(queue);
            assert!(
                channels(&doc)
                    .values()
                    .any(|c| c["bindings"]["amqp"]["queue"]["name"] == dlq.as_str()),
                "{dlq} has a channel"
            );
        }
    }
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["components"]["schemas"][name]
}

#[test]
fn asyncapi_headers_match_the_bus() {
    let doc = document();
    let dead_letter = schema(&doc, "DeadLetterHeaders");
    for header in [DEAD_LETTER_REASON_HEADER, ORIGINAL_QUEUE_HEADER] {
        assert!(
            dead_letter["properties"].get(header).is_some(),
            "DeadLetterHeaders has {header}"
        );
        assert!(dead_letter["required"]
            .as_array()
            .expect("required")
            .contains(&json!(header)));
    }
    for headers in [
        "SignalHeaders",
        "QueryHeaders",
        "ReplyHeaders",
        "EventHeaders",
    ] {
        let properties = &schema(&doc, headers)["properties"];
        for header in [ENTITY_ID_HEADER, TRACEPARENT_HEADER] {
            assert!(properties.get(header).is_some(), "{headers} has {header}");
        }
        for property in ["message_id", "type", "content_type", "app_id"] {
            assert!(
                properties.get(property).is_some(),
                "{headers} has {property}"
            );
        }
    }
    for headers in ["QueryHeaders", "ReplyHeaders"] {
        assert!(schema(&doc, headers)["properties"]
            .get("correlation_id")
            .is_some());
    }
    assert!(schema(&doc, "QueryHeaders")["properties"]
        .get("reply_to")
        .is_some());
}

/// (messageType, schemaVersion) a message's payload schema fixes.
fn type_and_version(id: &str, message: &Value) -> (String, u32) {
    let fixed = message["payload"]["allOf"]
        .as_array()
        .unwrap_or_else(|| panic!("{id}: payload is allOf [Envelope, fields]"))
        .iter()
        .find(|s| s["properties"]["messageType"]["const"].is_string())
        .unwrap_or_else(|| panic!("{id}: messageType is a const"));
    let name = fixed["properties"]["messageType"]["const"]
        .as_str()
        .expect("text")
        .to_owned();
    let version = fixed["properties"]["schemaVersion"]["const"]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or_else(|| panic!("{id}: schemaVersion is a const"));
    assert_eq!(message["name"], name.as_str(), "{id}: name is the type");
    assert_eq!(
        message["bindings"]["amqp"]["messageType"],
        name.as_str(),
        "{id}: the AMQP type property is the type"
    );
    (name, version)
}

#[test]
fn asyncapi_messages_match_the_types_versions_and_decoder() {
    let doc = document();
    let messages = doc["components"]["messages"]
        .as_object()
        .expect("components.messages");
    let mut documented = BTreeSet::new();
    for (id, message) in messages {
        if id == "DeadLetter" {
            continue;
        }
        let (name, version) = type_and_version(id, message);
        let examples = message["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("{id} has examples"));
        assert!(!examples.is_empty(), "{id} has an example");
        for example in examples {
            let body = serde_json::to_vec(&example["payload"]).expect("json");
            let envelope = Envelope::from_json(&body)
                .unwrap_or_else(|e| panic!("{id}: example does not decode: {e}"));
            assert_eq!(envelope.message_type(), name, "{id}");
            assert_eq!(example["payload"]["schemaVersion"], version, "{id}");
            if version == SCHEMA_VERSION {
                let written: Value = serde_json::from_slice(&envelope.to_json()).expect("json");
                assert_eq!(written, example["payload"], "{id}: example round-trips");
            }
        }
        assert!(documented.insert((name, version)), "{id} is a repeat");
    }
    let read: BTreeSet<(String, u32)> = Message::TYPE_NAMES
        .iter()
        .flat_map(|name| {
            read_versions(name)
                .iter()
                .map(move |v| ((*name).to_owned(), *v))
        })
        .collect();
    assert_eq!(
        documented, read,
        "every (type, version) this build reads has a message in docs/asyncapi.yaml, and no other"
    );
}

#[test]
fn every_documented_message_is_on_a_channel() {
    let doc = document();
    let on_channels: BTreeSet<String> = channels(&doc)
        .values()
        .flat_map(|c| c["messages"].as_object().into_iter().flatten())
        .map(|(_, m)| {
            m["$ref"]
                .as_str()
                .expect("a reference")
                .rsplit('/')
                .next()
                .expect("a name")
                .to_owned()
        })
        .collect();
    let components: BTreeSet<String> = doc["components"]["messages"]
        .as_object()
        .expect("messages")
        .keys()
        .cloned()
        .collect();
    assert_eq!(on_channels, components);
}

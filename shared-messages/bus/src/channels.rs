//! What the connection's users share: the channels of one live connection
//! (the supervisor in `session.rs` opens them; consumers and requests use
//! them), and the topology declared on a channel.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};
use shared_messages::topology::{ExchangeType, QueueArgument, QueueSpec, Topology};

/// The channels of one live connection.
pub(super) struct Session {
    pub(super) connection: Connection,
    /// Confirm mode; signals, events, dead letters and replies.
    pub(super) publisher: Channel,
    /// Requests and their direct reply-to consumer (must be one channel);
    /// confirm mode.
    pub(super) rpc: Channel,
}

/// Declares `topology` on `channel`: every exchange, every shared queue
/// and, of the exclusive queues, only `own` (the one the caller consumes),
/// with the bindings of what it declared. An exclusive queue still held by
/// a connection the broker has not yet noticed is gone (RESOURCE_LOCKED)
/// then fails only its own consumer, which tries again, and never the
/// connection or the other consumers.
pub(super) async fn declare_topology(
    channel: &Channel,
    topology: &Topology,
    own: Option<&str>,
) -> Result<(), lapin::Error> {
    let declared = |queue: &QueueSpec| !queue.is_exclusive() || own == Some(queue.name.as_str());
    for exchange in &topology.exchanges {
        let kind = match exchange.kind {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Topic => ExchangeKind::Topic,
        };
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    for queue in topology.queues.iter().filter(|q| declared(q)) {
        channel
            .queue_declare(
                queue.name.as_str().into(),
                QueueDeclareOptions {
                    // An exclusive queue lives as long as its connection.
                    durable: !queue.is_exclusive(),
                    exclusive: queue.is_exclusive(),
                    ..Default::default()
                },
                queue_arguments(queue),
            )
            .await?;
    }
    let bound = topology
        .bindings
        .iter()
        .filter(|b| topology.find_queue(&b.queue).is_none_or(declared));
    for binding in bound {
        channel
            .queue_bind(
                binding.queue.as_str().into(),
                binding.exchange.as_str().into(),
                binding.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// The `x-` arguments of a queue, as lapin wants them.
fn queue_arguments(queue: &QueueSpec) -> FieldTable {
    let mut args = FieldTable::default();
    for (name, value) in queue.arguments() {
        let value = match value {
            QueueArgument::Text(text) => AMQPValue::LongString(text.as_str().into()),
            QueueArgument::Int(n) => AMQPValue::LongInt(n),
            QueueArgument::Bool(b) => AMQPValue::Boolean(b),
        };
        args.insert(name.into(), value);
    }
    args
}

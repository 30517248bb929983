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

/// Declares every exchange, queue and binding of `topology` (durable).
pub(super) async fn declare_topology(
    channel: &Channel,
    topology: &Topology,
) -> Result<(), lapin::Error> {
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
    for queue in &topology.queues {
        channel
            .queue_declare(
                queue.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                queue_arguments(queue),
            )
            .await?;
    }
    for binding in &topology.bindings {
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
        };
        args.insert(name.into(), value);
    }
    args
}

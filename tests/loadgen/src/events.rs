//! Learning that an order is done from the broker, not by polling: a queue
//! of the load generator's own, bound to the fulfillment events of final
//! statuses, tells each waiting order when its fulfillment has finished.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use shared_messages::topology::FULFILLMENT_EVENTS_EXCHANGE;
use shared_messages::Envelope;
use tokio::sync::oneshot;

/// A final fulfillment event: when it arrived, and the status.
pub type Finished = (Instant, String);

enum Slot {
    Waiting(oneshot::Sender<Finished>),
    Arrived(Finished),
}

#[derive(Clone)]
pub struct Completions {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    _connection: Arc<Connection>,
}

impl Completions {
    /// Subscribes on the services' vhost to `SHIPPED`, `CANCELLED` and
    /// `FAILED` events.
    pub async fn subscribe(amqp_url: &str) -> Result<Self> {
        let connection = Connection::connect(
            amqp_url,
            ConnectionProperties::default().with_connection_name("loadgen-events".into()),
        )
        .await
        .context("connecting to the services' vhost")?;
        let channel = connection.create_channel().await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        for status in ["shipped", "cancelled", "failed"] {
            channel
                .queue_bind(
                    queue.name().clone(),
                    FULFILLMENT_EVENTS_EXCHANGE.into(),
                    format!("fulfillment.status.{status}").into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .context("binding to fulfillment.events (is fulfillment-service running?)")?;
        }
        let mut deliveries = channel
            .basic_consume(
                queue.name().clone(),
                "loadgen-events".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let slots: Arc<Mutex<HashMap<String, Slot>>> = Arc::default();
        let routes = slots.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = deliveries.next().await {
                let at = Instant::now();
                let Ok(envelope) = Envelope::from_json(&delivery.data) else {
                    continue;
                };
                let status = delivery
                    .routing_key
                    .as_str()
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                let mut slots = routes.lock().expect("not poisoned");
                match slots.remove(&envelope.entity_id) {
                    Some(Slot::Waiting(tx)) => {
                        let _ = tx.send((at, status));
                    }
                    Some(arrived @ Slot::Arrived(_)) => {
                        slots.insert(envelope.entity_id, arrived);
                    }
                    None => {
                        slots.insert(envelope.entity_id, Slot::Arrived((at, status)));
                    }
                }
            }
        });
        Ok(Self {
            slots,
            _connection: Arc::new(connection),
        })
    }

    /// Resolves when the fulfillment `id` has finished (at once if it
    /// already has).
    pub fn wait(&self, id: &str) -> oneshot::Receiver<Finished> {
        let (tx, rx) = oneshot::channel();
        let mut slots = self.slots.lock().expect("not poisoned");
        match slots.remove(id) {
            Some(Slot::Arrived(finished)) => {
                let _ = tx.send(finished);
            }
            _ => {
                slots.insert(id.to_string(), Slot::Waiting(tx));
            }
        }
        rx
    }
}

//! The broker's floor: what RabbitMQ alone does on this machine, measured
//! with raw lapin in the same run, on its own vhost, so every figure of the
//! services can be read as a multiple of it.
//!
//! - request/reply over direct reply-to, the way the services' queries go:
//!   a responder consuming a classic queue with manual acks, replying on
//!   the default exchange; a requester on one channel with `no_ack` on
//!   `amq.rabbitmq.reply-to`;
//! - persistent, mandatory publishes to a quorum queue (the kind that
//!   carries signals and events) with confirms pipelined in a window, and a
//!   consumer acking every message with prefetch 256, as the services do.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::stats::{Rate, Summary};

const RPC_QUEUE: &str = "loadgen.floor.rpc";
const CONFIRM_QUEUE: &str = "loadgen.floor.confirms";
const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Unconfirmed publishes in flight at once.
const CONFIRM_WINDOW: usize = 512;
/// The services' default prefetch (`message_bus::DEFAULT_PREFETCH`).
const PREFETCH: u16 = 256;

#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Sequential round trips.
    pub rpc_c1: Summary,
    /// Round trips from 64 concurrent requesters.
    pub rpc_c64: Summary,
    pub rpc_c64_rate: Rate,
    /// Persistent publishes to a quorum queue until all are confirmed.
    pub confirmed_publish: Rate,
    /// The same messages until all are consumed and acked.
    pub publish_consume: Rate,
    /// One persistent publish to a quorum queue, awaiting its confirm
    /// before the next: the latency of one durable hop.
    pub confirm_one_at_a_time: Summary,
    /// RabbitMQ's CPU per message when confirms are awaited one by one.
    pub broker_cpu_us_per_message_one_at_a_time: f64,
    pub message_bytes: usize,
    /// RabbitMQ's CPU time per message during the publish/consume floor
    /// (0 when the broker does not run on this machine).
    pub broker_cpu_us_per_message: f64,
}

/// About the size of a service's query or signal envelope.
fn payload() -> Vec<u8> {
    let body = serde_json::json!({
        "messageType": "GetFulfillmentStatus", "schemaVersion": 1,
        "messageId": uuid::Uuid::new_v4(), "entityId": "fulfillment-ORD-1764112000000-ABCDEFGHI",
        "sentAt": chrono::Utc::now(), "payload": {}
    });
    serde_json::to_vec(&body).expect("JSON values serialize")
}

pub async fn measure(
    amqp_url: &str,
    rpc_requests: usize,
    messages: usize,
    progress: &indicatif::ProgressBar,
) -> Result<Floor> {
    let server = connect(amqp_url, "loadgen-floor-responder").await?;
    let client = connect(amqp_url, "loadgen-floor-requester").await?;
    let responder = start_responder(&server).await?;
    let requester = Requester::start(&client).await?;
    let body = payload();

    progress.set_message("floor: request/reply, concurrency 1");
    for _ in 0..rpc_requests / 10 {
        requester.call(&body).await?; // warm-up
    }
    let mut c1 = Vec::with_capacity(rpc_requests);
    for _ in 0..rpc_requests {
        let start = Instant::now();
        requester.call(&body).await?;
        c1.push(start.elapsed());
    }

    progress.set_message("floor: request/reply, concurrency 64");
    let per_task = (rpc_requests * 4).div_ceil(64);
    let start = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let requester = requester.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    requester.call(&body).await?;
                    samples.push(t.elapsed());
                }
                anyhow::Ok(samples)
            })
        })
        .collect();
    let mut c64 = Vec::new();
    for task in tasks {
        c64.extend(task.await??);
    }
    let c64_rate = Rate::of(c64.len() as u64, start.elapsed());
    responder.abort();

    progress.set_message("floor: confirmed publish + consume");
    let meter = crate::procs::CpuMeter::start(&[("rabbitmq", crate::procs::rabbitmq())]);
    let (confirmed_publish, publish_consume) = publish_consume(&server, messages, &body).await?;
    let broker_cpu_us_per_message = meter
        .stop()
        .seconds
        .get("rabbitmq")
        .map_or(0.0, |s| 1e6 * s / messages as f64);
    progress.set_message("floor: confirmed publish, one at a time");
    let sequential = (messages / 20).max(100);
    let meter = crate::procs::CpuMeter::start(&[("rabbitmq", crate::procs::rabbitmq())]);
    let one_at_a_time = confirm_one_at_a_time(&server, sequential, &body).await?;
    let broker_cpu_us_per_message_one_at_a_time = meter
        .stop()
        .seconds
        .get("rabbitmq")
        .map_or(0.0, |s| 1e6 * s / sequential as f64);
    let _ = server.close(200, "done".into()).await;
    let _ = client.close(200, "done".into()).await;
    Ok(Floor {
        confirm_one_at_a_time: Summary::of(&one_at_a_time),
        broker_cpu_us_per_message_one_at_a_time,
        rpc_c1: Summary::of(&c1),
        rpc_c64: Summary::of(&c64),
        rpc_c64_rate: c64_rate,
        confirmed_publish,
        publish_consume,
        message_bytes: body.len(),
        broker_cpu_us_per_message,
    })
}

async fn connect(url: &str, name: &str) -> Result<Connection> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
    .with_context(|| format!("connecting {name} to RabbitMQ"))
}

/// Answers every request on `RPC_QUEUE` with its own body.
async fn start_responder(connection: &Connection) -> Result<tokio::task::JoinHandle<()>> {
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            RPC_QUEUE.into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            RPC_QUEUE.into(),
            "responder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let (Some(reply_to), Some(correlation_id)) = (
                delivery.properties.reply_to().clone(),
                delivery.properties.correlation_id().clone(),
            ) else {
                continue;
            };
            let _ = channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &delivery.data,
                    BasicProperties::default().with_correlation_id(correlation_id),
                )
                .await;
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    }))
}

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

/// Direct reply-to requests: one channel publishes and consumes replies.
#[derive(Clone)]
struct Requester {
    channel: Channel,
    waiting: Waiting,
}

impl Requester {
    async fn start(connection: &Connection) -> Result<Self> {
        let channel = connection.create_channel().await?;
        let mut replies = channel
            .basic_consume(
                REPLY_TO.into(),
                "requester".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let waiting: Waiting = Arc::default();
        let routes = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                if let Some(id) = delivery.properties.correlation_id() {
                    let slot = routes.lock().expect("not poisoned").remove(id.as_str());
                    if let Some(slot) = slot {
                        let _ = slot.send(());
                    }
                }
            }
        });
        Ok(Self { channel, waiting })
    }

    async fn call(&self, body: &[u8]) -> Result<()> {
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .expect("not poisoned")
            .insert(id.clone(), tx);
        self.channel
            .basic_publish(
                "".into(),
                RPC_QUEUE.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_correlation_id(id.as_str().into())
                    .with_reply_to(REPLY_TO.into())
                    .with_expiration("5000".into()),
            )
            .await?;
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(())) => Ok(()),
            _ => {
                self.waiting.lock().expect("not poisoned").remove(&id);
                bail!("no reply from the floor responder within 5 s")
            }
        }
    }
}

/// Publishes `count` persistent messages with a window of unconfirmed ones
/// while a consumer on another channel acks them one by one.
async fn publish_consume(
    connection: &Connection,
    count: usize,
    body: &[u8],
) -> Result<(Rate, Rate)> {
    let declare = connection.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    declare
        .queue_declare(
            CONFIRM_QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;

    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut deliveries = consumer_channel
        .basic_consume(
            CONFIRM_QUEUE.into(),
            "floor-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumed = tokio::spawn(async move {
        let mut n = 0;
        while n < count {
            match deliveries.next().await {
                Some(Ok(delivery)) => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    n += 1;
                }
                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                None => bail!("floor consumer ended after {n} messages"),
            }
        }
        Ok(Instant::now())
    });

    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let start = Instant::now();
    let mut window = VecDeque::with_capacity(CONFIRM_WINDOW);
    for _ in 0..count {
        if window.len() == CONFIRM_WINDOW {
            check(window.pop_front().expect("window is full"))
                .await
                .context("floor publish")?;
        }
        let confirm = publisher
            .basic_publish(
                "".into(),
                CONFIRM_QUEUE.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await?;
        window.push_back(confirm);
    }
    for confirm in window {
        check(confirm).await.context("floor publish")?;
    }
    let published = start.elapsed();
    let consumed_at = tokio::time::timeout(Duration::from_secs(120), consumed)
        .await
        .context("floor consumer did not finish in 120 s")???;
    let _ = declare
        .queue_delete(CONFIRM_QUEUE.into(), Default::default())
        .await;
    Ok((
        Rate::of(count as u64, published),
        Rate::of(count as u64, consumed_at - start),
    ))
}

/// Publishes `count` persistent messages to a quorum queue, each confirm
/// awaited before the next publish; the time of each.
async fn confirm_one_at_a_time(
    connection: &Connection,
    count: usize,
    body: &[u8],
) -> Result<Vec<Duration>> {
    let channel = connection.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let queue = "loadgen.floor.sequential";
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        check(confirm).await.context("floor publish")?;
        samples.push(start.elapsed());
    }
    let _ = channel.queue_delete(queue.into(), Default::default()).await;
    Ok(samples)
}

async fn check(confirm: lapin::PublisherConfirm) -> Result<()> {
    let confirmation = confirm.await?;
    if confirmation.is_nack() {
        bail!("the broker nacked a publish");
    }
    if confirmation.take_message().is_some() {
        bail!("a mandatory publish was returned");
    }
    Ok(())
}

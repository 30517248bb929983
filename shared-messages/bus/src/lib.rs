//! The AMQP layer both services use, on lapin and tokio: the bus that
//! carries the contract of [`shared_messages`] between them.
//!
//! One [`Bus`] per process owns one connection and keeps it alive: a
//! supervisor task connects (retrying with exponential backoff), declares the
//! topology, starts the registered consumers, watches for the connection to
//! fail, and then does it all again. Callers never restart anything; while
//! the connection is down, [`Bus::publish`] and [`Bus::request`] fail fast
//! with [`BusError::NotConnected`] so an HTTP handler can answer 503.
//!
//! - Publishing ([`Bus::publish`]) waits for the broker's confirm: a nack,
//!   an unroutable mandatory message or a lost connection is an error the
//!   caller sees, never "delivered".
//! - Requests ([`Bus::request`]) go over direct reply-to with a timeout; a
//!   reply that arrives after its timeout is dropped.
//! - `AMQP_URL` may list several nodes of a cluster ([`addresses`]);
//!   connecting and reconnecting go through them in turn, so a surviving
//!   node is used within a second of losing one.
//! - Consumers ([`Bus::consume`]) ack after their handler succeeds, retry
//!   the handler in place with capped exponential backoff on
//!   [`Outcome::Retry`] (never requeueing, so a transient failure never
//!   counts toward a delivery limit), and dead-letter with the reason in the
//!   `x-dead-letter-reason` header on [`Outcome::DeadLetter`] or when the
//!   body does not decode (`consumer.rs`). Each delivery is handled in
//!   a `message` span (`message_id`, `message_type`, `entity_id`,
//!   `trace_id`) and counted in [`metrics`]. Every consumer is supervised:
//!   cancelled by the broker or its channel closed, it declares its queue
//!   again and consumes again; [`Bus::is_ready`] is true only while every
//!   consumer consumes and no delivery waits to be retried.
//! - Consumers can also come and go while the bus runs
//!   ([`Bus::consume_until`], `dynamic.rs`): a partition's queue consumed
//!   for as long as this replica owns the partition; the
//!   [`ConsumerHandle`] stops it, its handlers' deliveries settled.
//! - [`Bus::forward`] passes a delivery on unchanged (body, properties,
//!   reply-to) to another exchange, confirmed: how one replica moves a
//!   message from a shared queue to its partition's queue.
//! - Requests pending when the connection drops fail at once with
//!   [`BusError::NotConnected`] instead of waiting out their timeout.
//! - The transactional outbox: the services store their transitions with
//!   the messages they cause (many per transaction, by the service kit's
//!   group commit), and [`outbox::relay`] publishes what is stored.
//! - [`trace`]: W3C `traceparent`, carried so one order's spans in both
//!   services share one trace id; `telemetry` (feature `telemetry`)
//!   sets up logging and OTLP span export for a service.
#![forbid(unsafe_code)]

pub mod addresses;
pub mod backoff;
mod channels;
mod consumer;
mod dynamic;
pub mod metrics;
pub mod outbox;
mod rpc;
mod session;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod trace;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use shared_messages::envelope::{DecodeError, Envelope};
use shared_messages::topology::Topology;

use channels::Session;
pub use consumer::{Incoming, OriginalMessage, Outcome, ReplyTo, RETRY_MAX, RETRY_MIN};
pub use dynamic::ConsumerHandle;

/// Header carrying why a message was dead-lettered.
pub const DEAD_LETTER_REASON_HEADER: &str = "x-dead-letter-reason";
/// Header carrying the queue a dead-lettered message was consumed from.
pub const ORIGINAL_QUEUE_HEADER: &str = "x-original-queue";
/// Header carrying the entity id, so the console shows whom a message is for.
pub const ENTITY_ID_HEADER: &str = "entity-id";
/// W3C trace context, carried across the broker (see [`trace`]).
pub use trace::TRACEPARENT_HEADER;

/// Settings for one [`Bus`].
#[derive(Clone)]
pub struct BusConfig {
    /// One AMQP URL, or a comma-separated list of a cluster's nodes (same
    /// vhost and credentials; see [`addresses`]).
    pub url: String,
    /// Shown in the management console's connection list, e.g.
    /// `order-service@host-1`.
    pub connection_name: String,
    /// Written as the AMQP `app_id` of everything published.
    pub app_id: String,
    /// Unacked deliveries per consumer.
    pub prefetch: u16,
    pub topology: Topology,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl std::fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL holds the password: never print it.
        f.debug_struct("BusConfig")
            .field("connection_name", &self.connection_name)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

impl BusConfig {
    pub fn new(url: impl Into<String>, app_id: &str, topology: Topology) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        Self {
            url: url.into(),
            connection_name: format!("{app_id}@{host}"),
            app_id: app_id.into(),
            prefetch: DEFAULT_PREFETCH,
            topology,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// Enough unacked deliveries to keep many actors busy at once, few enough
/// that a crash redelivers a bounded batch.
pub const DEFAULT_PREFETCH: u16 = 256;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("not connected to RabbitMQ")]
    NotConnected,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// The channel was not in confirm mode for this publish (it was being
    /// reset): the message may or may not have arrived, so it counts as
    /// not delivered.
    #[error("the broker did not confirm the message")]
    NotConfirmed,
    #[error("no queue is bound for {exchange}/{routing_key}")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("the reply could not be decoded: {0}")]
    BadReply(#[from] DecodeError),
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub exchange: String,
    pub routing_key: String,
    /// Fail when no queue is bound. Right for signals (someone must get
    /// them), wrong for events (nobody listening is fine).
    pub mandatory: bool,
}

impl Route {
    pub fn new(exchange: &str, routing_key: &str, mandatory: bool) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory,
        }
    }

    /// Publishes `body` with `properties` here on `channel` (`mandatory`
    /// as the route says); the answer is the broker's confirm to await.
    async fn publish_on(
        &self,
        channel: &lapin::Channel,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<lapin::PublisherConfirm, lapin::Error> {
        channel
            .basic_publish(
                self.exchange.as_str().into(),
                self.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: self.mandatory,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
    }
}

/// A handler for one consumed queue. It is called in delivery order (so
/// work it starts synchronously, such as sending to an actor's mailbox,
/// keeps that order); the futures it returns run concurrently up to the
/// prefetch limit.
pub type Handler = Arc<dyn Fn(Incoming) -> BoxFuture<'static, Outcome> + Send + Sync>;

#[derive(Clone)]
struct ConsumerSpec {
    /// Tells this consumer from another of the same queue (readiness and
    /// restarts are counted per consumer).
    id: u64,
    queue: String,
    handler: Handler,
    /// For a consumer started by [`Bus::consume_until`]: true once its
    /// handle stops it.
    release: Option<watch::Receiver<bool>>,
}

type Pending = Mutex<HashMap<String, oneshot::Sender<Result<Envelope, DecodeError>>>>;

struct Inner {
    config: BusConfig,
    consumers: Mutex<Vec<ConsumerSpec>>,
    /// Consumers started by [`Bus::consume_until`] and not stopped.
    dynamic: Mutex<dynamic::Registry>,
    next_consumer_id: AtomicU64,
    /// Per consumer (its queue and id): consuming now.
    consuming: Mutex<BTreeMap<(String, u64), bool>>,
    /// Consumers that consumed at least once, so later starts count as
    /// restarts.
    consumed_before: Mutex<HashSet<u64>>,
    /// Deliveries waiting for their handler to be retried.
    retrying: AtomicUsize,
    session: RwLock<Option<Arc<Session>>>,
    connected: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    pending: Pending,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A self-healing connection to RabbitMQ. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl Bus {
    pub fn new(config: BusConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                consumers: Mutex::new(Vec::new()),
                dynamic: Mutex::new(dynamic::Registry::default()),
                next_consumer_id: AtomicU64::new(0),
                consuming: Mutex::new(BTreeMap::new()),
                consumed_before: Mutex::new(HashSet::new()),
                retrying: AtomicUsize::new(0),
                session: RwLock::new(None),
                connected: watch::channel(false).0,
                shutdown: watch::channel(false).0,
                pending: Mutex::new(HashMap::new()),
                supervisor: Mutex::new(None),
            }),
        }
    }

    /// Registers a consumer; it starts on every (re)connect after
    /// [`Bus::start`]. The handler runs inside a `message` span and its
    /// outcome and duration are counted (see [`metrics`]).
    pub fn consume(&self, queue: &str, handler: Handler) {
        let spec = self.inner.consumer_spec(queue, handler);
        self.inner.register_consumer(&spec);
        self.inner
            .consumers
            .lock()
            .expect("consumer list lock is never poisoned")
            .push(spec);
    }

    /// Starts consuming `queue` now (at once if connected, else on
    /// connecting), and again after every reconnect, until the handle's
    /// [`ConsumerHandle::stop`]. Callable at any time, before or after
    /// [`Bus::start`]; the handler is wrapped as in [`Bus::consume`]. While
    /// registered, the consumer counts for [`Bus::is_ready`]; once stopped,
    /// no longer. `queue` belongs in [`BusConfig::topology`]: it is
    /// declared with it, and dead letters go where its spec says.
    pub fn consume_until(&self, queue: &str, handler: Handler) -> ConsumerHandle {
        let spec = self.inner.consumer_spec(queue, handler);
        dynamic::register(&self.inner, spec)
    }

    /// Starts the supervisor on the current tokio runtime. Returns at once;
    /// use [`Bus::wait_connected`] to wait for the first connection.
    pub fn start(&self) {
        let inner = self.inner.clone();
        let handle = tokio::spawn(session::supervise(inner));
        *self
            .inner
            .supervisor
            .lock()
            .expect("supervisor lock is never poisoned") = Some(handle);
    }

    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Ready for work: connected, every registered consumer consuming, and
    /// no delivery waiting to be retried. What `/readyz` reports.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why [`Bus::is_ready`] is false, in words for `/readyz`; `None` when
    /// ready.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.is_connected() {
            return Some("not connected to RabbitMQ".into());
        }
        let mut idle: Vec<String> = self
            .inner
            .consuming
            .lock()
            .expect("consumer state lock is never poisoned")
            .iter()
            .filter(|(_, consuming)| !**consuming)
            .map(|((queue, _), _)| queue.clone())
            .collect();
        idle.dedup();
        if !idle.is_empty() {
            return Some(format!("not consuming {}", idle.join(", ")));
        }
        let retrying = self.inner.retrying.load(Ordering::SeqCst);
        if retrying > 0 {
            return Some(format!(
                "{retrying} message(s) waiting to be retried after a failure"
            ));
        }
        None
    }

    /// A receiver that sees every change of the connection state.
    pub fn connection_state(&self) -> watch::Receiver<bool> {
        self.inner.connected.subscribe()
    }

    /// Waits until connected; false if `timeout` passes first.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Closes the current connection as if the network had dropped it; the
    /// supervisor reconnects. For tests and operators' drills.
    pub async fn force_reconnect(&self) {
        if let Some(session) = self.session() {
            let _ = session
                .connection
                .close(320, "forced reconnect".into())
                .await;
        }
    }

    /// Stops consuming, lets in-flight handlers finish and settle their
    /// deliveries, then closes the connection.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let handle = self
            .inner
            .supervisor
            .lock()
            .expect("supervisor lock is never poisoned")
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    fn session(&self) -> Option<Arc<Session>> {
        self.inner
            .session
            .read()
            .expect("session lock is never poisoned")
            .clone()
    }

    fn properties(&self, envelope: &Envelope, persistent: bool) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            ENTITY_ID_HEADER.into(),
            AMQPValue::LongString(envelope.entity_id.as_str().into()),
        );
        trace::inject(envelope.traceparent.as_deref(), &mut headers);
        BasicProperties::default()
            .with_message_id(envelope.message_id.to_string().into())
            .with_type(envelope.message_type().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(if persistent { 2 } else { 1 })
            .with_timestamp(envelope.sent_at.timestamp().max(0) as u64)
            .with_app_id(self.inner.config.app_id.as_str().into())
            .with_headers(headers)
    }

    /// Publishes a persistent message and waits for the broker's confirm.
    pub async fn publish(&self, route: &Route, envelope: &Envelope) -> Result<(), BusError> {
        self.publish_all(std::slice::from_ref(&(route.clone(), envelope.clone())))
            .await
    }

    /// Publishes many persistent messages, pipelining the confirms: all are
    /// sent, then all confirms are awaited. Fails if any one fails.
    pub async fn publish_all(&self, messages: &[(Route, Envelope)]) -> Result<(), BusError> {
        self.publish_each(messages).await.into_iter().collect()
    }

    /// Publishes many persistent messages, pipelining the confirms, and
    /// tells the outcome of each, in order: one refused or unroutable
    /// message does not fail the others.
    pub async fn publish_each(&self, messages: &[(Route, Envelope)]) -> Vec<Result<(), BusError>> {
        let Some(session) = self.session() else {
            return messages
                .iter()
                .map(|_| Err(BusError::NotConnected))
                .collect();
        };
        let mut confirms = Vec::with_capacity(messages.len());
        for (route, envelope) in messages {
            let confirm = route
                .publish_on(
                    &session.publisher,
                    &envelope.to_json(),
                    self.properties(envelope, true),
                )
                .await;
            confirms.push((route, envelope, confirm));
        }
        let mut results = Vec::with_capacity(messages.len());
        for (route, envelope, confirm) in confirms {
            let result = match confirm {
                Ok(confirm) => confirmed(route, envelope, confirm.await),
                Err(error) => Err(BusError::Amqp(error)),
            };
            results.push(result);
        }
        results
    }

    /// Publishes a consumed message again, unchanged, to `route`, and waits
    /// for the broker's confirm: the same body, message id, type,
    /// timestamp, app id and headers (entity id, `traceparent`), and the
    /// same `reply_to` and `correlation_id`, so the final consumer answers
    /// a request straight to its requester (a direct reply-to address
    /// works from any connection). Persistent whatever it was. The headers
    /// the broker wrote about the message's stay in the queue it came from
    /// (`x-delivery-count`, `x-death`, ...) are left out: the next queue
    /// counts afresh. A handler that acks after this succeeded and retries
    /// when it failed moves each message exactly once (at least once, by
    /// the handlers' idempotence, when the connection drops in between).
    pub async fn forward(&self, route: &Route, incoming: &Incoming) -> Result<(), BusError> {
        let session = self.session().ok_or(BusError::NotConnected)?;
        let (body, properties) = match &incoming.original {
            Some(original) => (
                std::borrow::Cow::Borrowed(original.body.as_slice()),
                forwarded_properties(&original.properties, &self.inner.config.app_id),
            ),
            // Made by hand: as published, with its reply address.
            None => {
                let mut properties = self.properties(&incoming.envelope, true);
                if let Some(to) = &incoming.reply_to {
                    properties = properties
                        .with_reply_to(to.queue.as_str().into())
                        .with_correlation_id(to.correlation_id.as_str().into());
                }
                (
                    std::borrow::Cow::Owned(incoming.envelope.to_json()),
                    properties,
                )
            }
        };
        let confirm = route
            .publish_on(&session.publisher, &body, properties)
            .await?;
        confirmed(route, &incoming.envelope, confirm.await)
    }

    /// Sends `envelope` and waits up to `timeout` for the reply. Queries are
    /// transient and expire with the timeout; signals (`persistent`) stay
    /// queued when nobody answers in time, and run when the receiver returns.
    pub async fn request(
        &self,
        route: &Route,
        envelope: &Envelope,
        timeout: Duration,
        persistent: bool,
    ) -> Result<Envelope, BusError> {
        let started = Instant::now();
        let result = match self.session() {
            Some(session) => {
                rpc::request(self, &session, route, envelope, timeout, persistent).await
            }
            None => Err(BusError::NotConnected),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(BusError::Timeout(_)) => "timeout",
            Err(BusError::NotConnected) => "not_connected",
            Err(_) => "error",
        };
        metrics::METRICS
            .request_seconds
            .get_or_create(&metrics::RequestLabels {
                message_type: envelope.message_type().into(),
                outcome: outcome.into(),
            })
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Answers a request. Replies are not confirmed: a requester that has
    /// gone away has nothing to receive them.
    pub async fn reply(&self, to: &ReplyTo, envelope: &Envelope) -> Result<(), BusError> {
        let session = self.session().ok_or(BusError::NotConnected)?;
        let properties = self
            .properties(envelope, false)
            .with_correlation_id(to.correlation_id.as_str().into());
        session
            .publisher
            .basic_publish(
                "".into(),
                to.queue.as_str().into(),
                BasicPublishOptions::default(),
                &envelope.to_json(),
                properties,
            )
            .await?;
        metrics::METRICS
            .published
            .get_or_create(&metrics::PublishedLabels {
                exchange: String::new(),
                message_type: envelope.message_type().into(),
            })
            .inc();
        Ok(())
    }
}

/// A delivery's properties as [`Bus::forward`] sends them on: persistent,
/// without the broker's notes about the queue it came from, and with
/// `app_id` (ours) only when the sender set none.
fn forwarded_properties(original: &BasicProperties, app_id: &str) -> BasicProperties {
    let mut properties = original.clone().with_delivery_mode(2);
    if let Some(headers) = original.headers() {
        let kept = headers
            .inner()
            .iter()
            .filter(|(name, _)| !is_broker_history(name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect::<BTreeMap<_, _>>();
        properties = properties.with_headers(FieldTable::from(kept));
    }
    if original.app_id().is_none() {
        properties = properties.with_app_id(app_id.into());
    }
    properties
}

/// A header the broker writes about a message's stay in one queue: its
/// deliveries there (quorum queues) and its dead-lettering history.
fn is_broker_history(header: &str) -> bool {
    header == "x-delivery-count"
        || header == "x-death"
        || header.starts_with("x-first-death-")
        || header.starts_with("x-last-death-")
}

/// The outcome of one publish's confirm, counted when delivered.
fn confirmed(
    route: &Route,
    envelope: &Envelope,
    confirmation: Result<lapin::Confirmation, lapin::Error>,
) -> Result<(), BusError> {
    let confirmation = confirmation?;
    if confirmation.is_nack() {
        return Err(BusError::Nacked);
    }
    if !confirmation.is_ack() {
        return Err(BusError::NotConfirmed);
    }
    if confirmation.take_message().is_some() {
        return Err(BusError::Unroutable {
            exchange: route.exchange.clone(),
            routing_key: route.routing_key.clone(),
        });
    }
    metrics::METRICS
        .published
        .get_or_create(&metrics::PublishedLabels {
            exchange: route.exchange.clone(),
            message_type: envelope.message_type().into(),
        })
        .inc();
    Ok(())
}

/// Wraps a consumer's handler: a `message` span around all it does, and
/// its outcome and duration in [`metrics`]. The handler is still called
/// synchronously, so delivery order is kept.
fn observed(queue: &str, handler: Handler) -> Handler {
    let queue: Arc<str> = queue.into();
    Arc::new(move |mut incoming: Incoming| {
        let envelope = &incoming.envelope;
        let message_type = envelope.message_type();
        let span = tracing::info_span!(
            "message",
            queue = %queue,
            message_type,
            message_id = %envelope.message_id,
            entity_id = %envelope.entity_id,
            trace_id = tracing::field::Empty,
            redelivered = incoming.redelivered,
        );
        // The handler continues from here: the sender's position, or this
        // span's own when spans are exported (see `trace::follow`). It is
        // the current trace while the handler runs, so that what the
        // message causes is parented under it (`trace::follow_cause`).
        let traceparent = incoming
            .traceparent
            .as_deref()
            .or(envelope.traceparent.as_deref());
        incoming.traceparent = trace::follow(&span, traceparent);
        let position = incoming
            .traceparent
            .as_deref()
            .and_then(trace::TraceContext::parse);
        let started = Instant::now();
        let work = span.in_scope(|| trace::sync_scope(position.clone(), || handler(incoming)));
        let queue = queue.clone();
        async move {
            let outcome = match position {
                Some(position) => trace::scope(position, work).await,
                None => work.await,
            };
            let m = &*metrics::METRICS;
            let by_type = metrics::QueueTypeLabels {
                queue: queue.to_string(),
                message_type: message_type.into(),
            };
            m.handle_seconds
                .get_or_create(&by_type)
                .observe(started.elapsed().as_secs_f64());
            m.consumed
                .get_or_create(&metrics::ConsumedLabels {
                    queue: queue.to_string(),
                    message_type: message_type.into(),
                    outcome: metrics::outcome_label(&outcome).into(),
                })
                .inc();
            if matches!(outcome, Outcome::DeadLetter(_)) {
                m.dead_lettered.get_or_create(&by_type).inc();
            }
            tracing::debug!(
                outcome = metrics::outcome_label(&outcome),
                "message handled"
            );
            outcome
        }
        .instrument(span)
        .boxed()
    })
}

impl Inner {
    fn set_session(&self, session: Option<Arc<Session>>) {
        let connected = session.is_some();
        metrics::METRICS.connected.set(i64::from(connected));
        if connected {
            metrics::METRICS.connects.inc();
        }
        *self
            .session
            .write()
            .expect("session lock is never poisoned") = session;
        self.connected.send_replace(connected);
        if !connected {
            // Replies to these would come on the lost connection: fail the
            // requests now rather than at their timeout.
            self.pending
                .lock()
                .expect("pending lock is never poisoned")
                .clear();
            for consuming in self
                .consuming
                .lock()
                .expect("consumer state lock is never poisoned")
                .values_mut()
            {
                *consuming = false;
            }
        }
    }

    /// A new consumer of `queue`, its handler observed (see [`observed`]).
    fn consumer_spec(&self, queue: &str, handler: Handler) -> ConsumerSpec {
        ConsumerSpec {
            id: self.next_consumer_id.fetch_add(1, Ordering::Relaxed),
            queue: queue.into(),
            handler: observed(queue, handler),
            release: None,
        }
    }

    /// Counts `spec` for readiness, not consuming yet.
    fn register_consumer(&self, spec: &ConsumerSpec) {
        self.consuming
            .lock()
            .expect("consumer state lock is never poisoned")
            .insert((spec.queue.clone(), spec.id), false);
    }

    /// Readiness no longer counts a stopped consumer; what its ending task
    /// still reports is ignored.
    fn forget_consumer(&self, id: u64, queue: &str) {
        self.consuming
            .lock()
            .expect("consumer state lock is never poisoned")
            .remove(&(queue.to_owned(), id));
        self.consumed_before
            .lock()
            .expect("consumer state lock is never poisoned")
            .remove(&id);
    }

    /// Records whether the consumer `spec` consumes now (if still
    /// registered). Every start after its first (after a cancel, a closed
    /// channel or a reconnect) counts as a restart of its queue.
    fn set_consuming(&self, spec: &ConsumerSpec, consuming: bool) {
        {
            let mut states = self
                .consuming
                .lock()
                .expect("consumer state lock is never poisoned");
            match states.get_mut(&(spec.queue.clone(), spec.id)) {
                Some(state) => *state = consuming,
                None => return,
            }
        }
        if consuming {
            let first = self
                .consumed_before
                .lock()
                .expect("consumer state lock is never poisoned")
                .insert(spec.id);
            if !first {
                metrics::consumer_restarted(&spec.queue);
            }
        }
    }

    fn consumers(&self) -> Vec<ConsumerSpec> {
        self.consumers
            .lock()
            .expect("consumer list lock is never poisoned")
            .clone()
    }
}

/// Resolves once shutdown has been asked for.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent_properties() -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            ENTITY_ID_HEADER.into(),
            AMQPValue::LongString("fulfillment-1".into()),
        );
        headers.insert(
            TRACEPARENT_HEADER.into(),
            AMQPValue::LongString("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        );
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        headers.insert(
            "x-first-death-queue".into(),
            AMQPValue::LongString("fulfillment.signals".into()),
        );
        BasicProperties::default()
            .with_message_id("m-1".into())
            .with_type("PauseFulfillment".into())
            .with_timestamp(1_700_000_000)
            .with_app_id("order-service".into())
            .with_delivery_mode(1)
            .with_reply_to("amq.rabbitmq.reply-to.g2dkABk".into())
            .with_correlation_id("c-1".into())
            .with_headers(headers)
    }

    #[test]
    fn a_forwarded_message_keeps_its_properties_and_is_persistent() {
        let original = sent_properties();
        let forwarded = forwarded_properties(&original, "fulfillment-service");
        assert_eq!(forwarded.delivery_mode(), &Some(2));
        assert_eq!(forwarded.message_id(), original.message_id());
        assert_eq!(forwarded.kind(), original.kind());
        assert_eq!(forwarded.timestamp(), original.timestamp());
        assert_eq!(forwarded.app_id(), original.app_id());
        assert_eq!(forwarded.reply_to(), original.reply_to());
        assert_eq!(forwarded.correlation_id(), original.correlation_id());
        let headers = forwarded.headers().as_ref().expect("headers kept");
        assert!(headers.contains_key(ENTITY_ID_HEADER));
        assert!(headers.contains_key(TRACEPARENT_HEADER));
    }

    #[test]
    fn the_broker_notes_about_the_previous_queue_are_left_behind() {
        let forwarded = forwarded_properties(&sent_properties(), "fulfillment-service");
        let headers = forwarded.headers().as_ref().expect("headers kept");
        for note in ["x-delivery-count", "x-death", "x-first-death-queue"] {
            assert!(!headers.contains_key(note), "{note} dropped");
        }
        assert_eq!(headers.inner().len(), 2);
    }

    #[test]
    fn a_message_without_app_id_is_forwarded_under_ours() {
        let original = BasicProperties::default();
        let forwarded = forwarded_properties(&original, "fulfillment-service");
        assert_eq!(
            forwarded.app_id().as_ref().map(|a| a.as_str()),
            Some("fulfillment-service")
        );
        assert!(forwarded.headers().is_none());
    }
}

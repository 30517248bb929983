//! Consuming one queue: decode, hand to the handler, settle.
//!
//! Settling follows the handler's [`Outcome`]:
//! - `Ack`: the handler has stored what the message led to; ack.
//! - `Retry`: a passing failure (the store fails or is busy): the handler
//!   is called again, in place, after a capped exponential backoff
//!   ([`RETRY_MIN`] to [`RETRY_MAX`]), for as long as it takes. The message
//!   is never requeued for it, so a transient failure never counts toward a
//!   quorum queue's delivery limit; while any delivery waits to be retried
//!   the bus reports itself not ready ([`super::Bus::is_ready`]). Only when
//!   the consumer stops (shutdown, or its handle stops it) is a delivery
//!   still failing requeued.
//! - `DeadLetter`: the message can never succeed (unknown entity, wrong
//!   payload); republish it to the queue's dead-letter exchange with the
//!   reason in `x-dead-letter-reason`, then ack. If that republish fails the
//!   message is rejected without requeue, and RabbitMQ dead-letters it.
//!
//! A consumer started by [`super::Bus::consume_until`] is also stopped by
//! its handle ([`StopSignals`]): it cancels, lets the handlers already
//! called finish and settles their deliveries (for at most `DRAIN`), and
//! closes its channel, so what the broker had sent it but no handler had
//! seen goes back to the queue.
//!
//! Each consumer is supervised ([`supervise`]): when the broker cancels it
//! (its queue was deleted, or its node went away), closes its channel, or
//! the stream ends for any other reason, it declares the topology again and
//! consumes again, with backoff, counting the restart by queue and logging
//! why. A passive declare every `QUEUE_CHECK` (2 s) notices a queue that
//! is gone even when the broker's cancel does not arrive. A lost connection
//! ends every consumer; the session starts them again on the next
//! connection.
//!
//! Undecodable bodies never reach the handler: they are dead-lettered with
//! the decode error as the reason.
//!
//! Acks are coalesced: handlers finish in any order, and once every delivery
//! up to a tag is settled, one `basic.ack` with `multiple` covers all the
//! acked ones (see [`AckWindow`]). Each ack frame costs a hand-off to lapin's
//! I/O thread and, on a quorum queue, a Raft command in the broker; under
//! load most of them go. An ack is never delayed for a handler still
//! running: only completions already in hand are combined.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::channels::{declare_topology, Session};
use super::{ConsumerSpec, Inner, DEAD_LETTER_REASON_HEADER, ORIGINAL_QUEUE_HEADER};
use shared_messages::envelope::Envelope;

/// First pause before a handler that asked to retry is called again; it
/// doubles on each further failure, so a failing dependency is not
/// hammered in a tight loop.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between two calls of a handler that keeps failing: a
/// store back after an outage is used again within this long.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// First pause before a stopped consumer consumes again (doubling up to
/// [`RESTART_MAX`]): a queue being deleted and declared again by an operator
/// is given a moment rather than raced, and `/readyz` shows the gap.
const RESTART_MIN: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(5);

/// How often a consumer checks that its queue still exists. The broker
/// cancels the consumers of a deleted queue, but that notice was seen to go
/// missing for a quorum queue deleted through another node of a cluster;
/// this bounds how long such a consumer waits on a queue that is gone.
const QUEUE_CHECK: Duration = Duration::from_secs(2);

/// How long a consumer whose stream ended (cancelled by the broker) or
/// that its handle stopped lets its handlers finish before it gives up on
/// them; their deliveries go back to the queue when the channel closes.
pub(super) const DRAIN: Duration = Duration::from_secs(5);

/// Most finished deliveries held back behind one still running before they
/// are acked one by one (they hold prefetch slots while held).
const HOLD_MAX: usize = 64;

/// Where to send the answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub queue: String,
    pub correlation_id: String,
}

/// A decoded delivery, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub envelope: Envelope,
    /// Set when the sender waits for an answer.
    pub reply_to: Option<ReplyTo>,
    /// The broker has delivered this message before (a previous consumer
    /// died or did not ack): the handler's idempotence matters here.
    pub redelivered: bool,
    pub traceparent: Option<String>,
    /// The message as it arrived, for [`super::Bus::forward`] to pass on
    /// unchanged. Always set on a delivery; `None` in an `Incoming` made by
    /// hand (a test), which is then forwarded as published from its
    /// envelope.
    pub original: Option<Arc<OriginalMessage>>,
}

/// A delivery's body and AMQP properties as the broker handed them over.
#[derive(Clone)]
pub struct OriginalMessage {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl std::fmt::Debug for OriginalMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body is the envelope, already shown beside this.
        f.debug_struct("OriginalMessage")
            .field("body_len", &self.body.len())
            .field("properties", &self.properties)
            .finish()
    }
}

/// What to do with a delivery once its handler is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    Retry(String),
    DeadLetter(String),
}

/// Why a consumer stopped consuming.
#[derive(Debug)]
pub(super) enum Stopped {
    /// Shutdown was asked for.
    Shutdown,
    /// Its handle stopped it ([`super::ConsumerHandle::stop`]).
    Released,
    /// The broker cancelled the consumer or the delivery stream ended.
    Cancelled,
    /// The channel failed (closed by the broker, or the connection went).
    Failed(lapin::Error),
}

/// What ends a consumer for good: the bus shutting down, or, for a
/// consumer started by [`super::Bus::consume_until`], its handle stopping
/// it.
#[derive(Clone)]
pub(super) struct StopSignals {
    shutdown: watch::Receiver<bool>,
    release: Option<watch::Receiver<bool>>,
}

impl StopSignals {
    pub(super) fn new(shutdown: watch::Receiver<bool>, spec: &ConsumerSpec) -> Self {
        Self {
            shutdown,
            release: spec.release.clone(),
        }
    }

    /// Whether either has been asked for already.
    fn asked(&self) -> Option<Stopped> {
        if *self.shutdown.borrow() {
            Some(Stopped::Shutdown)
        } else if self.release.as_ref().is_some_and(|r| *r.borrow()) {
            Some(Stopped::Released)
        } else {
            None
        }
    }

    /// Resolves once either is asked for, telling which. A handle dropped
    /// without a word counts as asking.
    async fn wait(&mut self) -> Stopped {
        let Self { shutdown, release } = self;
        let released = async {
            match release {
                Some(release) => {
                    let _ = release.wait_for(|r| *r).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = super::stopping(shutdown) => Stopped::Shutdown,
            _ = released => Stopped::Released,
        }
    }
}

/// Consumes `spec.queue` on `session` until `stop` says so or until the
/// session's connection is gone, consuming again whenever the consumer
/// stops otherwise.
pub(super) async fn supervise(
    inner: Arc<Inner>,
    session: Arc<Session>,
    spec: ConsumerSpec,
    mut stop: StopSignals,
) {
    let queue = spec.queue.as_str();
    let mut backoff = Backoff::new(RESTART_MIN, RESTART_MAX);
    loop {
        if stop.asked().is_some() {
            return;
        }
        let stopped = match session.connection.create_channel().await {
            Ok(channel) => {
                let stopped = consume(&inner, &channel, &spec, &mut stop).await;
                inner.set_consuming(&spec, false);
                if channel.status().connected() {
                    // Deliveries the handler never saw go back to the
                    // queue now.
                    let _ = channel.close(200, "consumer stopped".into()).await;
                }
                stopped
            }
            Err(error) => Stopped::Failed(error),
        };
        match &stopped {
            Stopped::Shutdown => return,
            Stopped::Released => {
                tracing::info!(%queue, "stopped consuming");
                return;
            }
            Stopped::Cancelled => {
                tracing::warn!(%queue, reason = "cancelled by the broker", "consumer stopped; consuming again");
            }
            Stopped::Failed(error) => {
                tracing::warn!(%queue, reason = %error, "consumer stopped; consuming again");
            }
        }
        if !session.connection.status().connected() {
            // The session notices and starts every consumer on the next
            // connection.
            return;
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait() => return,
        }
        if matches!(stopped, Stopped::Cancelled) {
            // It had been consuming: a later stop starts the schedule over.
            backoff.reset();
        }
    }
}

async fn consume(
    inner: &Arc<Inner>,
    channel: &Channel,
    spec: &ConsumerSpec,
    stop: &mut StopSignals,
) -> Stopped {
    match consume_inner(inner, channel, spec, stop).await {
        Ok(stopped) => stopped,
        Err(error) => Stopped::Failed(error),
    }
}

async fn consume_inner(
    inner: &Arc<Inner>,
    channel: &Channel,
    spec: &ConsumerSpec,
    stop: &mut StopSignals,
) -> Result<Stopped, lapin::Error> {
    // The queue may have been deleted (and the consumer cancelled with
    // it): declare everything again first. Declaring is idempotent.
    declare_topology(channel, &inner.config.topology, Some(&spec.queue)).await?;
    channel
        .basic_qos(inner.config.prefetch, BasicQosOptions::default())
        .await?;
    if let Some(stopped) = stop.asked() {
        // Stopped while declaring: never start.
        return Ok(stopped);
    }
    let tag = format!("{}/{}", inner.config.connection_name, spec.queue);
    let mut deliveries = channel
        .basic_consume(
            spec.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    inner.set_consuming(spec, true);
    tracing::info!(queue = %spec.queue, "consuming");
    // Where dead letters go: the queue's dead-letter exchange, under the
    // queue's name or the key it shares with others (a replica's queue).
    let dead_letter = inner.config.topology.find_queue(&spec.queue).and_then(|q| {
        let exchange = q.dead_letter_exchange.clone()?;
        Some((exchange, q.dead_letter_routing_key().to_owned()))
    });

    let mut in_flight = FuturesUnordered::new();
    let mut acks = AckWindow::default();
    let dlx = dead_letter.as_ref().map(|(e, k)| (e.as_str(), k.as_str()));
    let queue = spec.queue.as_str();
    let mut check = tokio::time::interval(QUEUE_CHECK);
    check.tick().await;
    let stopped = loop {
        tokio::select! {
            why = stop.wait() => break why,
            _ = check.tick() => {
                // A passive declare fails (and closes this channel) once
                // the queue is gone, even if the broker's cancel never came.
                let passive = QueueDeclareOptions { passive: true, ..Default::default() };
                if let Err(error) = channel
                    .queue_declare(spec.queue.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    inner.set_consuming(spec, false);
                    return Err(error);
                }
            }
            Some((delivery, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                settle(inner, channel, queue, dlx, delivery, outcome, &mut acks).await;
                // Whatever else has finished meanwhile goes in the same ack.
                while let Some(Some((delivery, outcome))) = in_flight.next().now_or_never() {
                    settle(inner, channel, queue, dlx, delivery, outcome, &mut acks).await;
                }
                send_acks(queue, &mut acks).await;
            }
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => {
                    acks.received(delivery.delivery_tag);
                    let work = start(inner, spec, delivery, stop.clone());
                    in_flight.push(work);
                }
                Some(Err(error)) => {
                    inner.set_consuming(spec, false);
                    return Err(error);
                }
                None => break Stopped::Cancelled,
            },
        }
    };
    inner.set_consuming(spec, false);
    // Take no more; finish and settle what is in hand (at shutdown, all of
    // it; otherwise for a while: what is left goes back to the queue with
    // the channel).
    if matches!(stopped, Stopped::Shutdown | Stopped::Released) {
        let _ = channel
            .basic_cancel(tag.as_str().into(), Default::default())
            .await;
    }
    let drain = async {
        while let Some((delivery, outcome)) = in_flight.next().await {
            settle(inner, channel, queue, dlx, delivery, outcome, &mut acks).await;
            send_acks(queue, &mut acks).await;
        }
    };
    if matches!(stopped, Stopped::Shutdown) {
        drain.await;
    } else if tokio::time::timeout(DRAIN, drain).await.is_err() {
        tracing::warn!(%queue, "handlers still running after the consumer stopped; their messages go back to the queue");
    }
    send_acks(queue, &mut acks).await;
    Ok(stopped)
}

/// Sends the acks that `acks` allows now.
async fn send_acks(queue: &str, acks: &mut AckWindow<Acker>) {
    for (acker, multiple) in acks.take() {
        if let Err(error) = acker.ack(BasicAckOptions { multiple }).await {
            // Unacked deliveries go back to the queue when the channel
            // closes, and the handlers' idempotence makes that harmless.
            tracing::warn!(%queue, %error, "could not ack deliveries");
        }
    }
}

/// Which finished deliveries of one channel can be acked, and how: every
/// delivery tag up to the oldest one still being handled is settled, so
/// one ack with `multiple` covers the acked ones among them (those settled
/// otherwise, by nack or reject, are no longer outstanding and are not
/// touched by it).
#[derive(Debug)]
pub(crate) struct AckWindow<A> {
    /// Received, handler not finished.
    running: BTreeSet<u64>,
    /// Handler said ack; not acked yet.
    done: BTreeMap<u64, A>,
}

impl<A> Default for AckWindow<A> {
    fn default() -> Self {
        Self {
            running: BTreeSet::new(),
            done: BTreeMap::new(),
        }
    }
}

impl<A> AckWindow<A> {
    pub(crate) fn received(&mut self, tag: u64) {
        self.running.insert(tag);
    }

    /// Settled by the caller itself (nack, reject, or its own ack).
    pub(crate) fn settled(&mut self, tag: u64) {
        self.running.remove(&tag);
    }

    /// To be acked; `acker` acks `tag` (and, with `multiple`, all before).
    pub(crate) fn done(&mut self, tag: u64, acker: A) {
        self.running.remove(&tag);
        self.done.insert(tag, acker);
    }

    /// The acks to send now, each with its `multiple` flag.
    pub(crate) fn take(&mut self) -> Vec<(A, bool)> {
        let mut out = Vec::new();
        let ready = match self.running.first() {
            Some(&oldest) => {
                let held = self.done.split_off(&oldest);
                std::mem::replace(&mut self.done, held)
            }
            None => std::mem::take(&mut self.done),
        };
        let count = ready.len();
        if let Some((_, last)) = ready.into_iter().next_back() {
            out.push((last, count > 1));
        }
        if self.done.len() > HOLD_MAX {
            out.extend(
                std::mem::take(&mut self.done)
                    .into_values()
                    .map(|a| (a, false)),
            );
        }
        out
    }
}

/// Decodes and calls the handler synchronously (so delivery order is kept
/// for whatever the handler does before its first await), returning the
/// future that finishes the work, retrying the handler in place while it
/// asks to.
fn start(
    inner: &Arc<Inner>,
    spec: &ConsumerSpec,
    delivery: Delivery,
    mut stop: StopSignals,
) -> futures::future::BoxFuture<'static, (Delivery, Outcome)> {
    match decode(&delivery) {
        Ok(incoming) => {
            let work = (spec.handler)(incoming.clone());
            let handler = spec.handler.clone();
            let inner = inner.clone();
            let queue = spec.queue.clone();
            Box::pin(async move {
                let mut outcome = work.await;
                let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
                let mut _retrying = None;
                while let Outcome::Retry(reason) = &outcome {
                    if stop.asked().is_some() {
                        // Requeued for whoever consumes next.
                        break;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(%queue, %reason, retry_in = ?delay, "handler failed; retrying in place");
                    // Not ready while any delivery waits on a failing
                    // dependency; ready again when the last one succeeds.
                    _retrying.get_or_insert_with(|| Retrying::new(&inner));
                    // Paused here, in this delivery's own future, so the
                    // consumer goes on with the others meanwhile.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait() => break,
                    }
                    outcome = handler(incoming.clone()).await;
                }
                (delivery, outcome)
            })
        }
        Err(reason) => {
            super::metrics::undecodable(&spec.queue);
            Box::pin(async move { (delivery, Outcome::DeadLetter(reason)) })
        }
    }
}

/// Counts one delivery waiting to be retried, for as long as it lives.
struct Retrying(Arc<Inner>);

impl Retrying {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.retrying.fetch_add(1, Ordering::SeqCst);
        Self(inner.clone())
    }
}

impl Drop for Retrying {
    fn drop(&mut self) {
        self.0.retrying.fetch_sub(1, Ordering::SeqCst);
    }
}

fn decode(delivery: &Delivery) -> Result<Incoming, String> {
    let envelope = Envelope::from_json(&delivery.data).map_err(|e| e.to_string())?;
    let properties = &delivery.properties;
    let reply_to = match (properties.reply_to(), properties.correlation_id()) {
        (Some(queue), Some(correlation_id)) => Some(ReplyTo {
            queue: queue.to_string(),
            correlation_id: correlation_id.to_string(),
        }),
        _ => None,
    };
    let traceparent = properties
        .headers()
        .as_ref()
        .and_then(crate::trace::extract);
    Ok(Incoming {
        envelope,
        reply_to,
        redelivered: delivery.redelivered,
        traceparent,
        original: Some(Arc::new(OriginalMessage {
            body: delivery.data.clone(),
            properties: delivery.properties.clone(),
        })),
    })
}

/// Settles a delivery whose handler is done; an ack is left to `acks`.
async fn settle(
    inner: &Arc<Inner>,
    channel: &Channel,
    queue: &str,
    dead_letter_to: Option<(&str, &str)>,
    delivery: Delivery,
    outcome: Outcome,
    acks: &mut AckWindow<Acker>,
) {
    let tag = delivery.delivery_tag;
    let result = match outcome {
        Outcome::Ack => {
            acks.done(tag, delivery.acker);
            return;
        }
        Outcome::Retry(reason) => {
            // Only when stopping: otherwise the handler is retried in place.
            tracing::warn!(%queue, %reason, "handler still failing when the consumer stopped; message requeued");
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
        Outcome::DeadLetter(reason) => {
            tracing::warn!(%queue, %reason, message_type = ?delivery.properties.kind(), "message dead-lettered");
            dead_letter(inner, channel, queue, dead_letter_to, &delivery, &reason).await
        }
    };
    acks.settled(tag);
    if let Err(error) = result {
        // The delivery stays unacked; the broker redelivers it on another
        // connection.
        tracing::warn!(%queue, %error, "could not settle a delivery");
    }
}

async fn dead_letter(
    inner: &Arc<Inner>,
    _channel: &Channel,
    queue: &str,
    dead_letter: Option<(&str, &str)>,
    delivery: &Delivery,
    reason: &str,
) -> Result<bool, lapin::Error> {
    let reject = || delivery.acker.reject(BasicRejectOptions { requeue: false });
    let Some((exchange, routing_key)) = dead_letter else {
        return reject().await;
    };
    let Some(session) = inner
        .session
        .read()
        .expect("session lock is never poisoned")
        .clone()
    else {
        return reject().await;
    };
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        DEAD_LETTER_REASON_HEADER.into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        ORIGINAL_QUEUE_HEADER.into(),
        AMQPValue::LongString(queue.into()),
    );
    let properties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let published = session
        .publisher
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &delivery.data,
            properties,
        )
        .await;
    let confirmed = match published {
        Ok(confirm) => match confirm.await {
            Ok(c) => c.is_ack() && c.take_message().is_none(),
            Err(_) => false,
        },
        Err(_) => false,
    };
    if confirmed {
        delivery.acker.ack(BasicAckOptions::default()).await
    } else {
        reject().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tags: std::ops::RangeInclusive<u64>) -> AckWindow<u64> {
        let mut w = AckWindow::default();
        for tag in tags {
            w.received(tag);
        }
        w
    }

    #[test]
    fn in_order_completions_are_acked_together() {
        let mut w = window(1..=3);
        for tag in 1..=3 {
            w.done(tag, tag);
        }
        assert_eq!(w.take(), vec![(3, true)]);
        assert!(w.take().is_empty());
    }

    #[test]
    fn a_single_completion_is_acked_alone() {
        let mut w = window(1..=1);
        w.done(1, 1);
        assert_eq!(w.take(), vec![(1, false)]);
    }

    #[test]
    fn nothing_is_acked_past_a_running_handler() {
        let mut w = window(1..=4);
        w.done(1, 1);
        w.done(3, 3);
        w.done(4, 4);
        assert_eq!(w.take(), vec![(1, false)]);
        w.done(2, 2);
        assert_eq!(w.take(), vec![(4, true)]);
    }

    #[test]
    fn deliveries_settled_otherwise_do_not_block() {
        let mut w = window(1..=3);
        w.settled(1);
        w.done(2, 2);
        w.done(3, 3);
        assert_eq!(w.take(), vec![(3, true)]);
    }

    #[test]
    fn too_many_held_back_are_acked_one_by_one() {
        let mut w = window(1..=(HOLD_MAX as u64 + 2));
        for tag in 2..=(HOLD_MAX as u64 + 2) {
            w.done(tag, tag);
        }
        let acks = w.take();
        assert_eq!(acks.len(), HOLD_MAX + 1);
        assert!(acks.iter().all(|(_, multiple)| !multiple));
        w.done(1, 1);
        assert_eq!(w.take(), vec![(1, false)]);
    }
}

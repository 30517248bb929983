//! One connection's lifetime: connect, declare, consume, notice the loss.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::task::JoinSet;

use super::addresses::{host_of, Addresses};
use super::backoff::Backoff;
use super::channels::{declare_topology, Session};
use super::consumer::StopSignals;
use super::dynamic::{Run, Start};
use super::{consumer, rpc, ConsumerSpec, Inner};

/// How long one attempt to connect and declare may take before it is
/// abandoned and retried (a half-open TCP connection would otherwise hang).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until shutdown: connect, serve, and on any loss start over, on the
/// next address of the list (see [`Addresses`]). A failed attempt moves on
/// to the next address at once; only a whole round of failures backs off.
pub(super) async fn supervise(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut addresses = Addresses::parse(&inner.config.url);
    let mut backoff = Backoff::new(inner.config.reconnect_min, inner.config.reconnect_max);
    let mut failures_in_round = 0;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let url = addresses.next_url().to_owned();
        let host = host_of(&url).to_owned();
        let attempt = tokio::select! {
            attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect(&inner, &url)) => attempt,
            _ = super::stopping(&mut shutdown) => break,
        };
        let failed = match attempt {
            Ok(Ok(session)) => {
                backoff.reset();
                failures_in_round = 0;
                tracing::info!(%host, "connected to RabbitMQ");
                let stopped = serve(&inner, session).await;
                if stopped {
                    break;
                }
                false
            }
            Ok(Err(error)) => {
                tracing::warn!(%host, %error, "cannot reach RabbitMQ");
                true
            }
            Err(_) => {
                tracing::warn!(%host, timeout = ?CONNECT_TIMEOUT, "RabbitMQ did not answer");
                true
            }
        };
        if failed {
            failures_in_round += 1;
            if failures_in_round < addresses.len() {
                // Another address is left in this round: try it now.
                continue;
            }
            failures_in_round = 0;
        }
        let delay = backoff.next_delay();
        tracing::debug!(retry_in = ?delay, "reconnecting to RabbitMQ");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = super::stopping(&mut shutdown) => break,
        }
    }
    inner.set_session(None);
}

async fn connect(inner: &Arc<Inner>, url: &str) -> Result<Arc<Session>, lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(inner.config.connection_name.as_str().into());
    let connection = Connection::connect(url, properties).await?;
    let declare = connection.create_channel().await?;
    declare_topology(&declare, &inner.config.topology, None).await?;
    let _ = declare.close(200, "declared".into()).await;

    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let rpc = connection.create_channel().await?;
    // Signals sent as requests are confirmed like any other publish.
    rpc.confirm_select(ConfirmSelectOptions::default()).await?;
    let replies = rpc
        .basic_consume(
            rpc::DIRECT_REPLY_TO.into(),
            format!("{}.replies", inner.config.connection_name).into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let session = Arc::new(Session {
        connection,
        publisher,
        rpc,
    });
    tokio::spawn(rpc::route_replies(inner.clone(), replies));
    Ok(session)
}

/// Serves one session until it is lost (false) or shutdown is asked (true):
/// runs the consumers registered before start, and those of
/// [`super::Bus::consume_until`] not stopped, including the ones
/// registered while it serves.
async fn serve(inner: &Arc<Inner>, session: Arc<Session>) -> bool {
    let mut shutdown = inner.shutdown.subscribe();
    let mut events = session.connection.events_listener();
    let mut consumers = JoinSet::new();
    let spawn = {
        let (inner, session, shutdown) = (inner.clone(), session.clone(), shutdown.clone());
        move |consumers: &mut JoinSet<()>, spec: ConsumerSpec, run: Option<Run>| {
            let stop = StopSignals::new(shutdown.clone(), &spec);
            let supervised = consumer::supervise(inner.clone(), session.clone(), spec, stop);
            consumers.spawn(async move {
                // Counted as running until it ends or is aborted.
                let _run = run;
                supervised.await;
            });
        }
    };
    inner.set_session(Some(session.clone()));
    for spec in inner.consumers() {
        spawn(&mut consumers, spec, None);
    }
    let (started, mut added) = inner
        .dynamic
        .lock()
        .expect("dynamic consumer lock is never poisoned")
        .serve();
    for Start { spec, run } in started {
        spawn(&mut consumers, spec, Some(run));
    }

    // A connection can die without an event reaching us (e.g. an I/O error
    // while nothing is sent); the status check covers that.
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let stopped = loop {
        tokio::select! {
            _ = super::stopping(&mut shutdown) => break true,
            Some(Start { spec, run }) = added.recv() => spawn(&mut consumers, spec, Some(run)),
            // A stopped consumer's task is gone; its entry goes too, so
            // partitions moving back and forth do not pile them up.
            Some(_) = consumers.join_next(), if !consumers.is_empty() => {}
            event = events.next() => match event {
                Some(lapin::Event::Error(error)) => {
                    tracing::warn!(%error, "RabbitMQ connection lost");
                    break false;
                }
                Some(_) => {}
                None => break false,
            },
            _ = check.tick() => {
                if !session.connection.status().connected() {
                    tracing::warn!("RabbitMQ connection closed");
                    break false;
                }
            }
        }
    };
    // Consumers registered from now on start on the next connection.
    inner
        .dynamic
        .lock()
        .expect("dynamic consumer lock is never poisoned")
        .unserve();
    // Publishing stops at once; consumers settle what they hold (on a lost
    // connection their acks fail and the broker redelivers, which the
    // handlers' idempotence makes harmless).
    inner.set_session(None);
    if stopped {
        while consumers.join_next().await.is_some() {}
        let _ = session.connection.close(200, "shutting down".into()).await;
    } else {
        consumers.abort_all();
        while consumers.join_next().await.is_some() {}
    }
    stopped
}

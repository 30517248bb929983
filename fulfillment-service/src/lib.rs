//! fulfillment-service: one actix actor per fulfillment, driven by signals
//! and queries over RabbitMQ and by its own HTTP control surface.
//!
//! A fulfillment waits for its start, picks each item, runs a quality
//! check, packs, prints the shipping label and ships; it can be paused,
//! resumed, cancelled and re-addressed while it runs. Every transition is
//! stored with its `FulfillmentStatusChanged` event in one transaction
//! before the message that caused it is acked; the outbox relay publishes
//! the events. On start, every unfinished fulfillment resumes where it
//! stopped.
//!
//! Modules:
//! - [`workflow`]: the pure state machine `(state, input) -> decision`.
//! - [`actor`]: the per-fulfillment actor (timers, persistence) and the
//!   [`actor::Registry`] that finds, spawns and recovers actors.
//! - [`bus`]: the signal and query consumers on the shared AMQP layer.
//! - [`store`]: the [`store::Store`] trait and its SQLite and PostgreSQL
//!   implementations, including the outbox.
//! - [`http`]: the HTTP API, one module per resource, and its errors.
//! - [`config`], [`telemetry`]: settings from the environment, logging,
//!   OTLP span export when configured.
//! - [`metrics`]: Prometheus metrics at `/metrics`.
//!
//! What both services share (the HTTP wiring and shutdown, the errors,
//! health, metrics and the page) is in `service_kit`.
#![forbid(unsafe_code)]

pub mod actor;
pub mod bus;
pub mod config;
pub mod http;
pub mod metrics;
pub mod store;
pub use message_bus::telemetry;
pub mod workflow;

use actix_web::web;
use anyhow::Context as _;
use message_bus::outbox::{relay, OutboxSignal};
use service_kit::partitions::{Held, Leases, Owner};
use service_kit::serve::{self, Running};
use service_kit::settings::redact;
use shared_messages::topology;
use std::sync::Arc;

use crate::actor::{Deps, Registry};
use crate::config::Config;
use crate::workflow::Timing;

/// Builds the service (HTTP server, bus consumers, outbox relay, actors)
/// for [`serve::run`]: opens the store, recovers unfinished fulfillments,
/// connects the bus and binds the HTTP listener. Runs inside the actix
/// system.
pub async fn build(config: Config) -> anyhow::Result<Running> {
    let common = &config.common;
    let (opened, shared) = store::open_shared(&common.store_url)
        .await
        .with_context(|| format!("opening the store at {}", redact(&common.store_url)))?;
    let outbox = OutboxSignal::new();
    let writer = store::Writer::start(
        "store-writer",
        store::Batched(opened.store.clone()),
        outbox.clone(),
    )
    .context("starting the store writer")?;
    let deps = Deps {
        writer,
        store: opened.store,
        outbox: outbox.clone(),
        timing: Timing {
            step_delay: config.step_delay,
        },
    };
    let registry = Registry::new(deps, actix::System::current().arbiter().clone());
    let partitions = shared.as_ref().map(|_| config.partitions.partitions);
    if shared.is_none() {
        // A store of its own: every fulfillment is this replica's.
        let recovered = registry
            .recover()
            .await
            .context("loading unfinished fulfillments")?;
        tracing::info!(
            recovered = recovered.resumed,
            quarantined = recovered.quarantined,
            "unfinished fulfillments resumed"
        );
    }

    let bus = bus::connect(
        &common.amqp_url,
        &common.replica_id,
        registry.clone(),
        partitions,
    );
    bus.start();
    tokio::spawn(relay(bus.clone(), opened.outbox, outbox));
    let (held, leases) = match shared {
        Some(pg) => {
            let (held, leases) = own_partitions(&config, &pg, &bus, &registry).await?;
            (Some(held), Some(leases))
        }
        None => (None, None),
    };

    let state = web::Data::new(http::AppState {
        registry,
        bus: bus.clone(),
        held,
        query_timeout: common.query_timeout,
    });
    let listening = serve::start::<http::HttpSpans, _>(
        env!("CARGO_PKG_NAME"),
        common,
        service_kit::http::surface(state, http::configure),
    )?;
    tracing::info!(
        http = %common.http_addr,
        port = listening.port,
        amqp = %redact(&common.amqp_url),
        store = %redact(&common.store_url),
        replica = %common.replica_id,
        "fulfillment-service started"
    );
    Ok(listening.running(bus, leases))
}

/// One of several replicas on a shared PostgreSQL: fences this replica's
/// writes by the partitions it holds, takes its share of the partition
/// leases, and consumes the partitions it gets (recovering their
/// fulfillments) until it hands them over.
async fn own_partitions(
    config: &Config,
    pg: &store::Postgres,
    bus: &message_bus::Bus,
    registry: &Registry,
) -> anyhow::Result<(Arc<Held>, Leases)> {
    let held = Held::new(
        config.common.replica_id.as_str(),
        config.partitions.partitions,
    );
    let owner = Owner {
        bus: bus.clone(),
        held: held.clone(),
        partition_queue: topology::fulfillment_partition_queue,
        handler: bus::signal_handler(bus, registry),
        ingress: vec![topology::FULFILLMENT_SIGNALS_QUEUE.into()],
        partitions_exchange: topology::FULFILLMENT_PARTITIONS_EXCHANGE.into(),
        key: service_kit::partitions::entity_key,
        workflows: Arc::new(registry.clone()),
    };
    let leases = owner
        .start(
            pg,
            config.partitions,
            metrics::METRICS.partitions_owned.clone(),
        )
        .await
        .context("taking a share of the partition leases")?;
    Ok((held, leases))
}

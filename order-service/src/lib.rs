//! order-service: one actor per order, a saga from stock to shipment.
//!
//! Each order reserves stock, takes payment, hands itself to
//! fulfillment-service with one signal-with-start, then follows the
//! fulfillment (status events at once, queries as reconciliation) until it
//! ships, or is cancelled or fails with its compensation done. The two
//! services talk only through RabbitMQ.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | settings from the environment |
//! | [`workflow`] | the pure saga: `decide(state, input, context) -> Decision` |
//! | [`inventory`], [`payment`] | the simulated stock and payment services |
//! | [`ids`] | new order ids |
//! | [`validation`] | request bodies, the demo order |
//! | [`actor`] | one actix actor per open order, and the registry |
//! | [`bus`] | the fulfillment-events consumer, queries and signals |
//! | [`store`] | orders and the outbox, in SQLite or PostgreSQL |
//! | [`http`] | the REST API, compatible with the original demo |
//! | [`telemetry`] | logging (spans carry `trace_id`), OTLP span export when configured |
//! | [`metrics`] | Prometheus metrics at `/metrics` |
//!
//! What both services share (the HTTP wiring and shutdown, the errors,
//! health, metrics and the page) is in `service_kit`.
//!
//! Start-up ([`build`]): open the store (migrations), respawn
//! every unfinished order's actor at its step, register the consumer,
//! start the bus and the outbox relay, bind HTTP.
//!
//! On PostgreSQL the service runs as any number of replicas
//! (docs/scaling.md): each takes a share of the partition leases
//! (`PARTITIONS`, `LEASE_TTL_MS`), resumes the orders of the partitions it
//! gets and consumes their queues (fulfillment events, and the commands
//! other replicas send for their orders: [`http::owner`]); its writes are
//! fenced by the leases it holds.
#![forbid(unsafe_code)]

pub mod actor;
pub mod bus;
pub mod config;
pub mod http;
pub mod ids;
pub mod inventory;
pub mod metrics;
pub mod payment;
pub mod store;
pub use message_bus::telemetry;
pub mod validation;
pub mod workflow;

use std::sync::Arc;

use actix_web::web;
use anyhow::Context;
use message_bus::outbox::{relay, OutboxSignal};
use message_bus::{Bus, BusConfig};
use service_kit::partitions::{Held, Leases, Owner};
use service_kit::serve::{self, Running};
use shared_messages::topology;

use crate::actor::{Orders, Timings};
use crate::config::Config;

/// Builds the service (HTTP server, bus, actors) for [`serve::run`]:
/// opens the store, recovers, connects the bus and binds the HTTP port
/// (port 0: one the OS picks). Runs inside the actix system.
pub async fn build(config: Config) -> anyhow::Result<Running> {
    let (opened, shared) = store::open_shared(&config.store)
        .await
        .context("opening the order store")?;
    let mut declared = if config.declare_peer_queues {
        topology::order_service()
    } else {
        topology::order_service_own()
    };
    if shared.is_some() {
        // One of several replicas: each order is consumed from its
        // partition's queue by the replica holding the partition.
        declared = declared.merge(topology::order_partitions(config.partitions.partitions));
    }
    let bus = Bus::new(BusConfig::new(
        config.common.amqp_url.clone(),
        "order-service",
        declared,
    ));
    let outbox = OutboxSignal::new();
    let orders = Orders::new(
        actix::Arbiter::current(),
        opened.store,
        bus.clone(),
        outbox.clone(),
        Timings {
            inventory_delay: config.inventory_delay,
            payment_delay: config.payment_delay,
            poll_interval: config.poll_interval,
            query_timeout: config.common.query_timeout,
            payment_decline_rate: config.payment_decline_rate,
            fulfillment_deadline: config.fulfillment_deadline,
            inventory_retry: config.inventory_retry,
            payment_retry: config.payment_retry,
            inventory_transient_failure_rate: config.inventory_transient_failure_rate,
            payment_transient_failure_rate: config.payment_transient_failure_rate,
        },
    )
    .context("starting the store writer")?;
    let held = shared.as_ref().map(|_| {
        Held::new(
            config.common.replica_id.as_str(),
            config.partitions.partitions,
        )
    });
    match &held {
        Some(held) => orders.partitioned(held.clone()),
        None => {
            // A store of its own: every order is this replica's.
            let recovered = orders
                .recover()
                .await
                .context("loading unfinished orders")?;
            tracing::info!(recovered, "unfinished orders resumed");
            bus.consume(
                topology::ORDER_FULFILLMENT_EVENTS_QUEUE,
                bus::event_handler(orders.clone()),
            );
        }
    }
    bus.start();
    tokio::spawn(relay(bus.clone(), opened.outbox, outbox));

    let state = web::Data::new(http::AppState {
        orders: orders.clone(),
        query_timeout: config.common.query_timeout,
    });
    let leases = match (shared, held) {
        (Some(pg), Some(held)) => {
            Some(own_partitions(&config, &pg, &bus, &orders, held, state.clone()).await?)
        }
        _ => None,
    };
    let listening = serve::start::<http::HttpSpans, _>(
        env!("CARGO_PKG_NAME"),
        &config.common,
        service_kit::http::surface(state, http::configure),
    )?;
    tracing::info!(
        addr = %config.common.http_addr,
        port = listening.port,
        replica = %config.common.replica_id,
        "order-service listening"
    );
    Ok(listening.running(bus, leases))
}

/// One of several replicas on a shared PostgreSQL: fences this replica's
/// writes by the partitions it holds, takes its share of the partition
/// leases, and consumes the partitions it gets (fulfillment events and the
/// other replicas' commands; their orders recovered) until it hands them
/// over. The holder of partition 0 also moves `order-service.fulfillment-events`
/// into the partition queues, by the order each event is for.
async fn own_partitions(
    config: &Config,
    pg: &store::Postgres,
    bus: &Bus,
    orders: &Orders,
    held: Arc<Held>,
    state: web::Data<http::AppState>,
) -> anyhow::Result<Leases> {
    let commands = http::owner::command_handler(state, actix::Arbiter::current());
    let owner = Owner {
        bus: bus.clone(),
        held,
        partition_queue: topology::order_partition_queue,
        handler: bus::partition_handler(orders.clone(), commands),
        ingress: vec![topology::ORDER_FULFILLMENT_EVENTS_QUEUE.into()],
        partitions_exchange: topology::ORDER_PARTITIONS_EXCHANGE.into(),
        key: bus::order_key,
        workflows: Arc::new(orders.clone()),
    };
    owner
        .start(
            pg,
            config.partitions,
            metrics::METRICS.partitions_owned.clone(),
        )
        .await
        .context("taking a share of the partition leases")
}

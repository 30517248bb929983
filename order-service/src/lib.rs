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

use actix_web::web;
use anyhow::Context;
use message_bus::outbox::{relay, OutboxSignal};
use message_bus::{Bus, BusConfig};
use service_kit::serve::{self, Listening, Running};
use shared_messages::topology;

use crate::actor::{Orders, Timings};
use crate::config::Config;

/// Builds the service (HTTP server, bus, actors) for [`serve::run`]:
/// opens the store, recovers, connects the bus and binds the HTTP port
/// (port 0: one the OS picks). Runs inside the actix system.
pub async fn build(config: Config) -> anyhow::Result<Running> {
    let opened = store::open(&config.store)
        .await
        .context("opening the order store")?;
    let bus = Bus::new(BusConfig::new(
        config.common.amqp_url.clone(),
        "order-service",
        if config.declare_peer_queues {
            topology::order_service()
        } else {
            topology::order_service_own()
        },
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
    let recovered = orders
        .recover()
        .await
        .context("loading unfinished orders")?;
    tracing::info!(recovered, "unfinished orders resumed");

    bus.consume(
        topology::ORDER_FULFILLMENT_EVENTS_QUEUE,
        bus::event_handler(orders.clone()),
    );
    bus.start();
    tokio::spawn(relay(bus.clone(), opened.outbox, outbox));

    let state = web::Data::new(http::AppState {
        orders: orders.clone(),
        query_timeout: config.common.query_timeout,
    });
    let Listening { port, server } =
        serve::start::<http::HttpSpans, _>(env!("CARGO_PKG_NAME"), &config.common, move |cfg| {
            cfg.app_data(state.clone()).configure(http::configure);
        })?;
    tracing::info!(addr = %config.common.http_addr, port, "order-service listening");
    Ok(Running {
        port,
        server,
        bus,
        leases: None,
    })
}

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
//! | [`workflow`] | the pure saga: `(state, input) -> (state, effects)` |
//! | [`inventory`], [`payment`] | the simulated stock and payment services |
//! | [`validation`] | order ids, request bodies, the demo order |
//! | [`actor`] | one actix actor per open order, and the registry |
//! | [`bus`] | the fulfillment-events consumer, queries and signals |
//! | [`store`] | orders and the outbox, in SQLite or PostgreSQL |
//! | [`http`] | the REST API, compatible with the original demo |
//! | [`telemetry`] | logging (spans carry `trace_id`), OTLP span export when configured |
//! | [`metrics`] | Prometheus metrics at `/metrics` |
//!
//! Start-up ([`Application::build`]): open the store (migrations), respawn
//! every unfinished order's actor at its step, register the consumer,
//! start the bus and the outbox relay, bind HTTP.
#![forbid(unsafe_code)]

pub mod actor;
pub mod bus;
pub mod config;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod payment;
pub mod store;
pub use shared_messages::telemetry;
pub mod validation;
pub mod workflow;

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use shared_messages::bus::outbox::{relay, OutboxSignal};
use shared_messages::bus::{Bus, BusConfig};
use shared_messages::topology;

use crate::actor::{Orders, Timings};
use crate::config::Config;

/// How long shutdown waits for in-flight deliveries to settle and the
/// connection to close. Anything unacked is redelivered after exit, and
/// its effects are idempotent, so waiting longer buys nothing.
const BUS_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The running service: HTTP server, bus, actors.
pub struct Application {
    port: u16,
    server: Server,
    bus: Bus,
    orders: Orders,
}

impl Application {
    /// Builds everything and binds the HTTP port (use port 0 in tests).
    /// Must run inside the actix system (`#[actix_web::main]`).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let opened = store::open(&config.store)
            .await
            .context("opening the order store")?;
        let bus = Bus::new(BusConfig::new(
            config.amqp_url.clone(),
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
                query_timeout: config.query_timeout,
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

        let listener = TcpListener::bind(&config.http_addr)
            .with_context(|| format!("binding HTTP to {}", config.http_addr))?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(http::AppState {
            orders: orders.clone(),
            query_timeout: config.query_timeout,
        });
        let access = std::sync::Arc::new(
            service_kit::Access::from_settings(
                env!("CARGO_PKG_NAME"),
                config.api_token_file.as_deref(),
                config.cors_allowed_origins.clone(),
            )
            .context("reading API_TOKEN_FILE")?,
        );
        let server = HttpServer::new(move || {
            App::new()
                // Innermost first: access is checked after CORS has
                // answered any preflight, inside the request's span.
                .wrap(service_kit::Guard::new(access.clone()))
                .wrap(service_kit::cors::cors(access.allowed_origins()))
                .wrap(actix_web::middleware::from_fn(http::observe::observe))
                .app_data(state.clone())
                .configure(http::configure)
        })
        .listen(listener)?
        // SIGTERM and SIGINT stop the server gracefully (actix default).
        .shutdown_timeout(10)
        .run();
        tracing::info!(addr = %config.http_addr, port, "order-service listening");
        Ok(Self {
            port,
            server,
            bus,
            orders,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn orders(&self) -> &Orders {
        &self.orders
    }

    /// Serves until SIGTERM or SIGINT, then stops taking requests, lets the
    /// consumer settle what is in hand and closes the broker connection.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await.context("HTTP server")?;
        tracing::info!("HTTP stopped; closing the broker connection");
        if tokio::time::timeout(BUS_SHUTDOWN_GRACE, self.bus.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?BUS_SHUTDOWN_GRACE, "broker connection did not close in time; exiting anyway");
        }
        Ok(())
    }
}

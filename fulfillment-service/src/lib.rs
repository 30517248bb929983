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
#![forbid(unsafe_code)]

pub mod actor;
pub mod bus;
pub mod config;
pub mod http;
pub mod metrics;
pub mod store;
pub use shared_messages::telemetry;
pub mod workflow;

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use shared_messages::bus::outbox::{relay, OutboxSignal};
use shared_messages::bus::Bus;

use crate::actor::{Deps, Registry};
use crate::config::Config;
use crate::workflow::Timing;

/// HTTP worker threads. The actors run on the main arbiter; the workers
/// only parse requests and wait for answers, so a few suffice.
const HTTP_WORKERS: usize = 2;

/// The running service: HTTP server, bus consumers, outbox relay, actors.
pub struct Application {
    port: u16,
    server: Server,
    bus: Bus,
}

impl Application {
    /// Opens the store, recovers unfinished fulfillments, connects the bus
    /// and binds the HTTP listener. Call inside the actix system.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let opened = store::open(&config.store_url)
            .with_context(|| format!("opening the store at {}", config.store_url_redacted()))?;
        let outbox = OutboxSignal::new();
        let writer = store::Writer::start(
            "store-writer",
            store::Batched(opened.store.clone()),
            outbox.clone(),
        )
        .context("starting the store writer thread")?;
        let deps = Deps {
            writer,
            store: opened.store,
            outbox: outbox.clone(),
            timing: Timing {
                step_delay: config.step_delay,
            },
        };
        let registry = Registry::new(deps, actix::System::current().arbiter().clone());
        let recovered = registry
            .recover()
            .context("loading unfinished fulfillments")?;
        tracing::info!(
            recovered = recovered.resumed,
            quarantined = recovered.quarantined,
            "unfinished fulfillments resumed"
        );

        let bus = bus::connect(&config.amqp_url, &config.replica_id, registry.clone());
        bus.start();
        tokio::spawn(relay(bus.clone(), opened.outbox, outbox));

        let listener = TcpListener::bind(&config.http_addr)
            .with_context(|| format!("binding HTTP_ADDR {}", config.http_addr))?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(http::AppState {
            registry,
            bus: bus.clone(),
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
        .workers(HTTP_WORKERS)
        .disable_signals()
        .listen(listener)?
        .run();
        tracing::info!(
            http = %config.http_addr,
            port,
            amqp = %config.amqp_url_redacted(),
            store = %config.store_url_redacted(),
            replica = %config.replica_id,
            "fulfillment-service started"
        );
        Ok(Self { port, server, bus })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or SIGINT, then stops taking HTTP requests,
    /// lets the consumers finish and ack what they hold, and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        tokio::select! {
            result = &mut server => {
                result.context("HTTP server task")??;
            }
            _ = shutdown_signal() => {
                tracing::info!("shutting down");
                handle.stop(true).await;
                let _ = server.await;
            }
        }
        self.bus.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

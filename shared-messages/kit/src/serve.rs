//! How both services serve HTTP and stop: one `HttpServer` wiring (access
//! guard, CORS, request spans and metrics, the routes) and one shutdown.
//!
//! Shutdown: SIGTERM or Ctrl-C (SIGINT) stops the HTTP server gracefully
//! (no new connections; requests in hand get up to
//! [`HTTP_SHUTDOWN_GRACE`]), then the bus (consumers settle what they hold,
//! the connection closes) within [`BUS_SHUTDOWN_GRACE`]. Both fit inside
//! the 30 s that Kubernetes and compose give a pod to drain.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use message_bus::Bus;

use crate::http::observe::{in_trace, RootSpanBuilder, TracingLogger};
use crate::partitions::Leases;
use crate::settings::Common;
use crate::{Access, Guard};

/// HTTP worker threads. The actors run on the main arbiter; the workers
/// only parse requests and wait for answers, so a few suffice.
pub const HTTP_WORKERS: usize = 2;

/// How long requests in hand may take to finish once a stop is asked for.
pub const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long shutdown waits for in-flight deliveries to settle and the
/// broker connection to close. Anything unacked is redelivered after
/// exit, and its effects are idempotent, so waiting longer buys nothing.
pub const BUS_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A bound, running HTTP server.
pub struct Listening {
    /// The port bound (the one asked for, or the one given for port 0).
    pub port: u16,
    pub server: Server,
}

impl Listening {
    /// The built service: this server, with its `bus` and its partition
    /// `leases` (when it runs as one of several replicas).
    pub fn running(self, bus: Bus, leases: Option<Leases>) -> Running {
        Running {
            port: self.port,
            server: self.server,
            bus,
            leases,
        }
    }
}

/// Binds `HTTP_ADDR` and serves the routes `configure` registers,
/// inside the access guard, CORS and the request spans (`Spans`, declared
/// with [`crate::http_spans!`]) and metrics. Signals are left to
/// [`run_until_stopped`]. Call inside the actix system.
/// `name` is the service's, the realm of its bearer tokens.
pub fn start<Spans, F>(name: &str, settings: &Common, configure: F) -> anyhow::Result<Listening>
where
    Spans: RootSpanBuilder + 'static,
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let listener = TcpListener::bind(&settings.http_addr)
        .with_context(|| format!("binding HTTP_ADDR {}", settings.http_addr))?;
    let port = listener.local_addr()?.port();
    let access = Arc::new(
        Access::from_settings(
            name,
            settings.api_token_file.as_deref(),
            settings.cors_allowed_origins.clone(),
        )
        .context("reading API_TOKEN_FILE")?,
    );
    let replica = web::Data::new(crate::http::operations::ReplicaId(
        settings.replica_id.clone(),
    ));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(replica.clone())
            // Innermost first: access is checked after CORS has answered
            // any preflight, inside the request's trace and span.
            .wrap(Guard::new(access.clone()))
            .wrap(crate::cors::cors(access.allowed_origins()))
            .wrap(actix_web::middleware::from_fn(in_trace))
            .wrap(TracingLogger::<Spans>::new())
            .configure(configure.clone())
    })
    .workers(HTTP_WORKERS)
    .disable_signals()
    .shutdown_timeout(HTTP_SHUTDOWN_GRACE.as_secs())
    .listen(listener)?
    .run();
    Ok(Listening { port, server })
}

/// Serves until SIGTERM or SIGINT (or until the server fails), then stops
/// taking requests, lets those in hand finish within
/// [`HTTP_SHUTDOWN_GRACE`], and shuts `bus` down within
/// [`BUS_SHUTDOWN_GRACE`].
pub async fn run_until_stopped(
    server: Server,
    bus: &Bus,
    leases: Option<Leases>,
) -> anyhow::Result<()> {
    if let Some(leases) = &leases {
        // Cut off from the broker, this replica cannot do its partitions'
        // work: after a lease it hands them to those that can.
        leases.follow_broker(bus.clone());
    }
    let handle = server.handle();
    let mut server = tokio::spawn(server);
    tokio::select! {
        result = &mut server => {
            result.context("HTTP server task")?.context("HTTP server")?;
        }
        () = shutdown_signal() => {
            tracing::info!("stop asked for: no new requests; finishing those in hand");
            handle.stop(true).await;
            let _ = server.await;
        }
    }
    if let Some(leases) = leases {
        // Every partition drained and released now, so the other replicas
        // take them over at their next tick instead of after the lease.
        tracing::info!("HTTP stopped; handing the partitions over");
        leases.shutdown().await;
    }
    tracing::info!("closing the broker connection");
    if tokio::time::timeout(BUS_SHUTDOWN_GRACE, bus.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?BUS_SHUTDOWN_GRACE, "broker connection did not close in time; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(())
}

/// A built service: its HTTP server, bound to `port`, its bus, and its
/// partition leases when it runs as one of several replicas.
pub struct Running {
    pub port: u16,
    pub server: Server,
    pub bus: Bus,
    pub leases: Option<Leases>,
}

/// The whole of a service's `main` after reading its settings: logging,
/// then `build(config)`, its port announced on stdout ([`announce`]),
/// served until SIGTERM or SIGINT ([`run_until_stopped`]). `name` is the
/// package name, `target` the crate's (`env!("CARGO_CRATE_NAME")`).
pub async fn run<C, B>(
    config: C,
    name: &'static str,
    target: &'static str,
    build: impl FnOnce(C) -> B,
) -> anyhow::Result<()>
where
    C: std::fmt::Debug + AsRef<Common>,
    B: Future<Output = anyhow::Result<Running>>,
{
    let common = config.as_ref().clone();
    main(&common, target, async move {
        tracing::info!(?config, "starting {name}");
        let running = build(config).await?;
        announce(name, running.port);
        run_until_stopped(running.server, &running.bus, running.leases).await
    })
    .await
}

/// A service's whole binary: `service_kit::main!(order_service);` in its
/// `src/main.rs` reads the library's `config::Config::from_env()`, then
/// [`run`]s the library's `build` under the actix system (actors need it),
/// named after the package. Start-up errors end the process with the
/// error on stderr and a non-zero exit.
#[macro_export]
macro_rules! main {
    ($service:ident) => {
        #[actix_web::main]
        async fn main() -> anyhow::Result<()> {
            let config = $service::config::Config::from_env().map_err(anyhow::Error::msg)?;
            $crate::serve::run(
                config,
                env!("CARGO_PKG_NAME"),
                env!("CARGO_CRATE_NAME"),
                $service::build,
            )
            .await
        }
    };
}

/// The bound port on stdout, one line (`<name> listening on port N`):
/// with `HTTP_ADDR=127.0.0.1:0` the OS picks a free port, and whoever
/// started the process reads it here (logs go to stderr). A closed stdout
/// is no reason to stop.
pub fn announce(name: &str, port: u16) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{name} listening on port {port}");
}

/// A service's `main` after reading its settings: logging (and span
/// export when configured) for the crate `target`
/// (`env!("CARGO_CRATE_NAME")`), then `service` (build and run until
/// stopped), then the last spans out. Logs go to stderr, so a test harness
/// that ignores it stays quiet.
pub async fn main(
    settings: &Common,
    target: &'static str,
    service: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let telemetry = message_bus::telemetry::init(
        &settings.log_filter,
        settings.log_format,
        settings.exported_as(),
        target,
        std::io::stderr,
    )?;
    let result = service.await;
    // Stopped (SIGTERM, SIGINT) or failed: the last spans go out first.
    telemetry.shutdown();
    result
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
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
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

//! The services under load: started here on a vhost of their own, or
//! already running elsewhere.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use std::time::Duration;

use system_tests::{binary_path, eventually, Service, TestSystem};

use crate::args::Args;

/// Every simulated delay 0, so the figures are the system's own.
const ORDER_ENV: &[(&str, &str)] = &[
    ("INVENTORY_DELAY_MS", "0"),
    ("PAYMENT_DELAY_MS", "0"),
    ("QUERY_TIMEOUT_MS", "5000"),
];
const FULFILLMENT_ENV: &[(&str, &str)] = &[("STEP_DELAY_MS", "0"), ("QUERY_TIMEOUT_MS", "5000")];

pub enum System {
    /// Started here, on a vhost of their own; with `--replicas`, the
    /// replicas of each service beyond the first.
    Managed(Box<TestSystem>, Replicas),
    External {
        order_url: String,
        fulfillment_url: String,
        amqp_url: String,
        vhost: String,
    },
}

/// The replicas beyond the first of each service (`--replicas`).
#[derive(Default)]
pub struct Replicas {
    fulfillment: Vec<Service>,
    orders: Vec<Service>,
}

impl System {
    pub async fn start(args: &Args) -> Result<Self> {
        if let (Some(order_url), Some(fulfillment_url)) = (&args.order_url, &args.fulfillment_url) {
            return Ok(Self::External {
                order_url: order_url.clone(),
                fulfillment_url: fulfillment_url.clone(),
                amqp_url: args.amqp_url.clone(),
                vhost: args.vhost.clone(),
            });
        }
        // fulfillment first: it declares the events exchange we subscribe to.
        let mut builder = TestSystem::builder("loadgen")
            .fulfillment(FULFILLMENT_ENV)
            .orders(ORDER_ENV);
        if args.postgres {
            builder = builder.postgres();
        }
        let mut system = builder.start().await?;
        let mut replicas = Replicas::default();
        if args.replicas > 1 {
            replicas.fulfillment = more_replicas(
                &mut system,
                "fulfillment-service",
                FULFILLMENT_ENV,
                args.replicas,
            )
            .await?;
            replicas.orders =
                more_replicas(&mut system, "order-service", ORDER_ENV, args.replicas).await?;
        }
        let this = Self::Managed(Box::new(system), replicas);
        this.wait_balanced().await?;
        Ok(this)
    }

    /// The first order-service's URL (queries, signals).
    pub fn order_url(&self) -> String {
        match self {
            Self::Managed(m, _) => m.order_service().base_url(),
            Self::External { order_url, .. } => order_url.clone(),
        }
    }

    /// Every order-service replica's URL: orders are placed through all
    /// of them in turn.
    pub fn order_urls(&self) -> Vec<String> {
        match self {
            Self::Managed(m, replicas) => std::iter::once(m.order_service())
                .chain(replicas.orders.iter())
                .map(Service::base_url)
                .collect(),
            Self::External { order_url, .. } => vec![order_url.clone()],
        }
    }

    pub fn fulfillment_url(&self) -> String {
        match self {
            Self::Managed(m, _) => m.fulfillment_service().base_url(),
            Self::External {
                fulfillment_url, ..
            } => fulfillment_url.clone(),
        }
    }

    pub fn amqp_url(&self) -> String {
        match self {
            Self::Managed(m, _) => m.amqp_url.clone(),
            Self::External { amqp_url, .. } => amqp_url.clone(),
        }
    }

    pub fn vhost(&self) -> String {
        match self {
            Self::Managed(m, _) => m.vhost().name.clone(),
            Self::External { vhost, .. } => vhost.clone(),
        }
    }

    /// The services' processes by name, when they run on this machine
    /// (started here, or found by their `HTTP_ADDR`): `order-service`,
    /// `fulfillment-service`, and `order-service#2`,
    /// `fulfillment-service#2` and on for further replicas.
    pub fn processes(&self) -> Vec<(String, Option<u32>)> {
        match self {
            Self::Managed(m, replicas) => {
                let mut all = vec![
                    ("order-service".to_owned(), m.order_service().pid()),
                    (
                        "fulfillment-service".to_owned(),
                        m.fulfillment_service().pid(),
                    ),
                ];
                for (n, replica) in replicas.orders.iter().enumerate() {
                    all.push((format!("order-service#{}", n + 2), replica.pid()));
                }
                for (n, replica) in replicas.fulfillment.iter().enumerate() {
                    all.push((format!("fulfillment-service#{}", n + 2), replica.pid()));
                }
                all
            }
            Self::External {
                order_url,
                fulfillment_url,
                ..
            } => {
                let addr = |url: &str| url.trim_start_matches("http://").to_string();
                vec![
                    (
                        "order-service".to_owned(),
                        crate::procs::by_http_addr(&addr(order_url)),
                    ),
                    (
                        "fulfillment-service".to_owned(),
                        crate::procs::by_http_addr(&addr(fulfillment_url)),
                    ),
                ]
            }
        }
    }

    /// The fulfillment-service replicas started here, the first one first
    /// (none for services running elsewhere).
    pub fn fulfillment_replicas(&self) -> Vec<&Service> {
        match self {
            Self::Managed(m, replicas) => std::iter::once(m.fulfillment_service())
                .chain(replicas.fulfillment.iter())
                .collect(),
            Self::External { .. } => Vec::new(),
        }
    }

    /// [`System::fulfillment_replicas`], to stop and start them.
    pub fn fulfillment_replicas_mut(&mut self) -> Vec<&mut Service> {
        match self {
            Self::Managed(m, replicas) => std::iter::once(m.fulfillment_service_mut())
                .chain(replicas.fulfillment.iter_mut())
                .collect(),
            Self::External { .. } => Vec::new(),
        }
    }

    /// Waits until the replicas of each service started here share its
    /// partitions evenly (at once with one replica each).
    pub async fn wait_balanced(&self) -> Result<()> {
        let Self::Managed(m, replicas) = self else {
            return Ok(());
        };
        if !replicas.fulfillment.is_empty() {
            balanced(&self.fulfillment_replicas()).await?;
        }
        if !replicas.orders.is_empty() {
            let orders: Vec<&Service> = std::iter::once(m.order_service())
                .chain(replicas.orders.iter())
                .collect();
            balanced(&orders).await?;
        }
        Ok(())
    }

    /// Stops services started here (`kill -9`: nothing of theirs is kept).
    pub async fn stop(self) -> Result<()> {
        if let Self::Managed(mut m, mut replicas) = self {
            for replica in replicas.fulfillment.iter_mut().chain(&mut replicas.orders) {
                replica.kill().await?;
            }
            m.order_service_mut().kill().await?;
            m.fulfillment_service_mut().kill().await?;
        }
        Ok(())
    }

    /// Restarts fulfillment-service with every step taking `ms`, so
    /// fulfillments stay in a step long enough to be paused. Only for
    /// services started here.
    pub async fn set_step_delay(&mut self, ms: u64) -> Result<bool> {
        let Self::Managed(m, replicas) = self else {
            return Ok(false);
        };
        for service in
            std::iter::once(m.fulfillment_service_mut()).chain(replicas.fulfillment.iter_mut())
        {
            service.env.retain(|(k, _)| k != "STEP_DELAY_MS");
            service.env.push(("STEP_DELAY_MS".into(), ms.to_string()));
            service.restart().await?;
            service.wait_ready().await?;
        }
        self.wait_balanced().await?;
        Ok(true)
    }
}

/// Starts replicas 2 to `replicas` of `binary` beside the first, on its
/// database, each with a `REPLICA_ID` of its own.
async fn more_replicas(
    system: &mut TestSystem,
    binary: &'static str,
    env: &[(&str, &str)],
    replicas: usize,
) -> Result<Vec<Service>> {
    let store = system
        .database(binary)
        .with_context(|| format!("{binary}'s database"))?
        .url
        .clone();
    let mut started = Vec::new();
    for n in 2..=replicas {
        let replica = format!("loadgen-{binary}-{n}");
        let mut all = env.to_vec();
        all.extend([
            ("STORE_URL", store.as_str()),
            ("REPLICA_ID", replica.as_str()),
        ]);
        let service = system.start_service(binary, &all).await?;
        service.wait_ready().await?;
        started.push(service);
    }
    Ok(started)
}

/// Waits until the replicas `all` of one service own every partition
/// between them, none twice, each its share (`/readyz` lists them), so
/// the run does not measure a rebalance.
async fn balanced(all: &[&Service]) -> Result<()> {
    let http = system_tests::Http::new();
    eventually(
        "the replicas to share the partitions",
        Duration::from_secs(90),
        || async {
            let mut shares = Vec::new();
            for service in all {
                let (_, body) = http.get(&service.url("/readyz")).await?;
                shares.push(body["partitions"].as_array().map_or(0, Vec::len));
            }
            let total: usize = shares.iter().sum();
            let (low, high) = (total / all.len(), total.div_ceil(all.len()));
            let even = shares.iter().all(|n| (low..=high).contains(n));
            Ok((total > 0 && even && shares.iter().all(|n| *n > 0)).then_some(()))
        },
    )
    .await
}

/// Where reports go: `target/loadgen/` beside the binaries.
pub fn report_dir() -> PathBuf {
    let profile_dir = binary_path("loadgen");
    profile_dir
        .parent()
        .and_then(|p| p.parent())
        .map(|target| target.join("loadgen"))
        .unwrap_or_else(|| PathBuf::from("loadgen"))
}

/// When run through `cargo run`, builds both services in the same profile
/// as this binary, so the figures are never those of stale binaries.
pub fn build_services() -> Result<()> {
    let Ok(cargo) = std::env::var("CARGO") else {
        return Ok(());
    };
    let profile = binary_path("loadgen")
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut command = std::process::Command::new(cargo);
    command.args(["build", "-p", "order-service", "-p", "fulfillment-service"]);
    // `cargo run` describes this package in the environment; build scripts
    // that watch those variables (ring's) would rebuild on every run.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "OUT_DIR",
            ]
            .contains(&key.as_ref())
        {
            command.env_remove(key.as_ref());
        }
    }
    match profile.as_str() {
        "release" => {
            command.arg("--release");
        }
        "debug" => {}
        other => {
            command.args(["--profile", other]);
        }
    }
    eprintln!("building the services ({profile}) ...");
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the services failed");
    }
    Ok(())
}

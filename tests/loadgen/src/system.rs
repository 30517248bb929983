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
    /// fulfillment-service replicas beyond the first.
    Managed(Box<TestSystem>, Vec<Service>),
    External {
        order_url: String,
        fulfillment_url: String,
        amqp_url: String,
        vhost: String,
    },
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
        let mut replicas = Vec::new();
        if args.replicas > 1 {
            let store = system
                .database("fulfillment-service")
                .context("fulfillment-service's database")?
                .url
                .clone();
            for n in 2..=args.replicas {
                let replica = format!("loadgen-fulfillment-{n}");
                let mut env = FULFILLMENT_ENV.to_vec();
                env.extend([
                    ("STORE_URL", store.as_str()),
                    ("REPLICA_ID", replica.as_str()),
                ]);
                let service = system.start_service("fulfillment-service", &env).await?;
                service.wait_ready().await?;
                replicas.push(service);
            }
            let mut all: Vec<&Service> = vec![system.fulfillment_service()];
            all.extend(replicas.iter());
            balanced(&all).await?;
        }
        Ok(Self::Managed(Box::new(system), replicas))
    }

    pub fn order_url(&self) -> String {
        match self {
            Self::Managed(m, _) => m.order_service().base_url(),
            Self::External { order_url, .. } => order_url.clone(),
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
    /// `fulfillment-service`, and `fulfillment-service#2` and on for
    /// further replicas.
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
                for (n, replica) in replicas.iter().enumerate() {
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
                .chain(replicas.iter())
                .collect(),
            Self::External { .. } => Vec::new(),
        }
    }

    /// [`System::fulfillment_replicas`], to stop and start them.
    pub fn fulfillment_replicas_mut(&mut self) -> Vec<&mut Service> {
        match self {
            Self::Managed(m, replicas) => std::iter::once(m.fulfillment_service_mut())
                .chain(replicas.iter_mut())
                .collect(),
            Self::External { .. } => Vec::new(),
        }
    }

    /// Waits until the replicas started here share the partitions evenly.
    pub async fn wait_balanced(&self) -> Result<()> {
        balanced(&self.fulfillment_replicas()).await
    }

    /// Stops services started here (`kill -9`: nothing of theirs is kept).
    pub async fn stop(self) -> Result<()> {
        if let Self::Managed(mut m, mut replicas) = self {
            for replica in &mut replicas {
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
        for service in std::iter::once(m.fulfillment_service_mut()).chain(replicas.iter_mut()) {
            service.env.retain(|(k, _)| k != "STEP_DELAY_MS");
            service.env.push(("STEP_DELAY_MS".into(), ms.to_string()));
            service.restart().await?;
            service.wait_ready().await?;
        }
        if !replicas.is_empty() {
            let mut all: Vec<&Service> = vec![m.fulfillment_service()];
            all.extend(replicas.iter());
            balanced(&all).await?;
        }
        Ok(true)
    }
}

/// Waits until the fulfillment-service replicas `all` own every partition
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

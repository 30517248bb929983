//! The services under load: started here on a vhost of their own, or
//! already running elsewhere.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use system_tests::{binary_path, TestSystem};

use crate::args::Args;

/// Every simulated delay 0, so the figures are the system's own.
const ORDER_ENV: &[(&str, &str)] = &[
    ("INVENTORY_DELAY_MS", "0"),
    ("PAYMENT_DELAY_MS", "0"),
    ("QUERY_TIMEOUT_MS", "5000"),
];
const FULFILLMENT_ENV: &[(&str, &str)] = &[("STEP_DELAY_MS", "0"), ("QUERY_TIMEOUT_MS", "5000")];

pub enum System {
    /// Started here, on a vhost of their own.
    Managed(Box<TestSystem>),
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
        let system = TestSystem::builder("loadgen")
            .fulfillment(FULFILLMENT_ENV)
            .orders(ORDER_ENV)
            .start()
            .await?;
        Ok(Self::Managed(Box::new(system)))
    }

    pub fn order_url(&self) -> String {
        match self {
            Self::Managed(m) => m.order_service().base_url(),
            Self::External { order_url, .. } => order_url.clone(),
        }
    }

    pub fn fulfillment_url(&self) -> String {
        match self {
            Self::Managed(m) => m.fulfillment_service().base_url(),
            Self::External {
                fulfillment_url, ..
            } => fulfillment_url.clone(),
        }
    }

    pub fn amqp_url(&self) -> String {
        match self {
            Self::Managed(m) => m.amqp_url.clone(),
            Self::External { amqp_url, .. } => amqp_url.clone(),
        }
    }

    pub fn vhost(&self) -> String {
        match self {
            Self::Managed(m) => m.vhost().name.clone(),
            Self::External { vhost, .. } => vhost.clone(),
        }
    }

    /// The process ids of order-service and fulfillment-service, when
    /// they run on this machine (started here, or found by their
    /// `HTTP_ADDR`).
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        match self {
            Self::Managed(m) => (m.order_service().pid(), m.fulfillment_service().pid()),
            Self::External {
                order_url,
                fulfillment_url,
                ..
            } => {
                let addr = |url: &str| url.trim_start_matches("http://").to_string();
                (
                    crate::procs::by_http_addr(&addr(order_url)),
                    crate::procs::by_http_addr(&addr(fulfillment_url)),
                )
            }
        }
    }

    /// Stops services started here (`kill -9`: nothing of theirs is kept).
    pub async fn stop(self) -> Result<()> {
        if let Self::Managed(mut m) = self {
            m.order_service_mut().kill().await?;
            m.fulfillment_service_mut().kill().await?;
        }
        Ok(())
    }

    /// Restarts fulfillment-service with every step taking `ms`, so
    /// fulfillments stay in a step long enough to be paused. Only for
    /// services started here.
    pub async fn set_step_delay(&mut self, ms: u64) -> Result<bool> {
        let Self::Managed(m) = self else {
            return Ok(false);
        };
        let service = m.fulfillment_service_mut();
        service.env.retain(|(k, _)| k != "STEP_DELAY_MS");
        service.env.push(("STEP_DELAY_MS".into(), ms.to_string()));
        service.restart().await?;
        service.wait_ready().await?;
        Ok(true)
    }
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

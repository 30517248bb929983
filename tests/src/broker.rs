//! A RabbitMQ node of a test's own, for tests that stop the broker.
//!
//! The shared broker on 5672 serves every other test running in parallel,
//! so a test that restarts RabbitMQ starts a private node instead: its own
//! node name, AMQP and distribution ports, config file, plugin list (none:
//! no management listener to clash with the shared one) and data
//! directory, all in a temporary directory. It runs as the same user as the
//! shared node, so `rabbitmqctl` finds the same Erlang cookie. The node is
//! stopped (and, failing that, killed) when the value is dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{eventually, free_port};

/// How long a node may take to boot, or to start its app again.
const STARTUP: Duration = Duration::from_secs(60);

/// A private RabbitMQ node, stopped on drop.
pub struct PrivateBroker {
    /// `rabbit-test-<id>@localhost`, for `rabbitmqctl -n`.
    pub node: String,
    pub amqp_port: u16,
    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`: the default vhost.
    pub amqp_url: String,
    dir: tempfile::TempDir,
}

impl PrivateBroker {
    /// Boots a node and waits until it accepts AMQP connections.
    pub async fn start() -> Result<Self> {
        Self::start_with_config("").await
    }

    /// As [`PrivateBroker::start`], with `extra` lines in its
    /// `rabbitmq.conf` (e.g. a TLS listener).
    pub async fn start_with_config(extra: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        // The Debian package runs the node as the `rabbitmq` user (its
        // wrapper switches users when started as root), which must write
        // its data and logs here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let node = format!("rabbit-test-{id}@localhost");
        let amqp_port = free_port();
        let dist_port = free_port();
        // A config file of its own, so the machine's (which names the
        // shared node's listener) is not read. The AMQP listener comes from
        // RABBITMQ_NODE_IP_ADDRESS/PORT alone: naming it in the file too
        // makes two listeners on one port, and start_app then fails.
        let config = dir.path().join("rabbitmq.conf");
        std::fs::write(&config, format!("log.console = false\n{extra}"))?;
        let plugins = dir.path().join("enabled_plugins");
        std::fs::write(&plugins, "[].\n")?;
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
            .env("RABBITMQ_PID_FILE", dir.path().join("pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running rabbitmq-server: is RabbitMQ installed? (scripts/rabbitmq.sh)")?;
        if !status.success() {
            bail!("rabbitmq-server -detached for {node} failed: {status}");
        }
        let broker = Self {
            amqp_url: format!("amqp://guest:guest@127.0.0.1:{amqp_port}/%2f"),
            node,
            amqp_port,
            dir,
        };
        broker.await_app().await?;
        Ok(broker)
    }

    fn ctl(&self, args: &[&str]) -> Result<Output> {
        Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("rabbitmqctl {args:?} on {}", self.node))
    }

    /// Runs `rabbitmqctl` off the async runtime's threads.
    async fn ctl_ok(&self, args: &'static [&'static str]) -> Result<()> {
        let node = self.node.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("rabbitmqctl")
                .arg("-n")
                .arg(&node)
                .args(args)
                .stdin(Stdio::null())
                .output()
        })
        .await?
        .with_context(|| format!("rabbitmqctl {args:?} on {}", self.node))?;
        if !output.status.success() {
            bail!(
                "rabbitmqctl {args:?} on {}: {}",
                self.node,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Waits until the node's app runs and its AMQP port accepts.
    async fn await_app(&self) -> Result<()> {
        let port = self.amqp_port;
        eventually(
            &format!("RabbitMQ node {} to accept AMQP", self.node),
            STARTUP,
            || async move {
                if self
                    .ctl_ok(&["await_startup", "--timeout", "5"])
                    .await
                    .is_err()
                {
                    return Ok(None);
                }
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ()))
            },
        )
        .await
        .with_context(|| format!("logs in {}", self.log_dir().display()))
    }

    /// `rabbitmqctl stop_app`: every connection drops, the node stays.
    pub async fn stop_app(&self) -> Result<()> {
        self.ctl_ok(&["stop_app"]).await
    }

    /// `rabbitmqctl start_app`, then waits until AMQP accepts again.
    pub async fn start_app(&self) -> Result<()> {
        self.ctl_ok(&["start_app"]).await?;
        self.await_app().await
    }

    /// Where the node writes its logs, for a failing test to point at.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let stopped = self.ctl(&["stop"]).is_ok_and(|o| o.status.success());
        if !stopped {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pid")) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
        }
    }
}

//! Test harness for the system tests in `it/` and for the load generator.
//!
//! Everything here talks to real things: a RabbitMQ broker (each test gets
//! its own vhost, so tests run in parallel and beside a running system) and
//! the real service binaries started as processes on free ports.
//!
//! - [`TestVhost`]: a fresh vhost, deleted when dropped.
//! - [`Service`]: one service binary running against a vhost, killed when
//!   dropped.
//! - [`eventually`]: wait until a condition holds, or fail at a deadline.
//! - [`PrivateBroker`]: a RabbitMQ node of a test's own, to stop and start.
//! - [`TestDatabase`]: a fresh PostgreSQL database, dropped when dropped.
//! - [`TcpProxy`]: a TCP proxy a test takes down to cut a server off.
//! - [`cluster`]: the local three-node RabbitMQ cluster, for the
//!   high-availability tests.
//! - [`tls::TestCa`]: a CA of a test's own, for TLS to local servers.

pub mod broker;
pub mod cluster;
pub mod management;
pub mod postgres;
pub mod proxy;
mod sql;
pub mod tls;

pub use broker::PrivateBroker;
pub use postgres::{PrivatePostgres, TestDatabase};
pub use proxy::TcpProxy;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The broker's AMQP address without a vhost.
pub fn amqp_base() -> String {
    std::env::var("TEST_AMQP_BASE").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

/// The management API (the `rabbitmq_management` plugin).
pub fn management_base() -> String {
    std::env::var("TEST_RABBITMQ_MANAGEMENT")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into())
}

/// Percent-encodes a vhost name for an AMQP URL or a management path.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A vhost of its own for one test, removed on drop.
pub struct TestVhost {
    pub name: String,
    pub amqp_url: String,
}

impl TestVhost {
    pub async fn create(label: &str) -> Result<Self> {
        let name = format!("test-{label}-{}", uuid::Uuid::new_v4().simple());
        let client = reqwest::Client::new();
        let base = management_base();
        let vhost_url = format!("{base}/api/vhosts/{}", encode(&name));
        let response = client
            .put(&vhost_url)
            .json(&serde_json::json!({}))
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the RabbitMQ management API at {base}: is RabbitMQ running \
                     with the management plugin? (`./scripts/test.sh` starts it)"
                )
            })?;
        if !response.status().is_success() {
            bail!("creating vhost {name}: {}", response.status());
        }
        let response = client
            .put(format!("{base}/api/permissions/{}/guest", encode(&name)))
            .json(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("granting guest on {name}: {}", response.status());
        }
        let amqp_url = format!("{}/{}", amqp_base(), encode(&name));
        Ok(Self { name, amqp_url })
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/{path}", management_base()).replace("{vhost}", &encode(&self.name))
    }

    /// Messages in a queue, read through the management API without
    /// removing them. Each item has `payload`, `properties` (with `headers`).
    pub async fn peek(&self, queue: &str, count: usize) -> Result<Vec<Value>> {
        let url = self.api(&format!("queues/{{vhost}}/{}/get", encode(queue)));
        let response = reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({
                "count": count, "ackmode": "reject_requeue_true",
                "encoding": "auto", "truncate": 100000
            }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("reading {queue}: {}", response.status());
        }
        Ok(response.json().await?)
    }

    /// The management API's view of a queue (`messages`, `consumers`, ...).
    pub async fn queue_info(&self, queue: &str) -> Result<Value> {
        let url = self.api(&format!("queues/{{vhost}}/{}", encode(queue)));
        let response = reqwest::Client::new().get(url).send().await?;
        if !response.status().is_success() {
            bail!("queue {queue}: {}", response.status());
        }
        Ok(response.json().await?)
    }

    /// Grants (`true`) or revokes (`false`) the `guest` user's access to
    /// this vhost: revoked, a client that reconnects is refused until it
    /// is granted again.
    pub async fn set_guest_access(&self, allowed: bool) -> Result<()> {
        let url = self.api("permissions/{vhost}/guest");
        let client = reqwest::Client::new();
        let response = if allowed {
            client
                .put(&url)
                .json(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}))
                .send()
                .await?
        } else {
            client.delete(&url).send().await?
        };
        if !response.status().is_success() {
            bail!(
                "setting guest access on {}: {}",
                self.name,
                response.status()
            );
        }
        Ok(())
    }

    /// Closes every client connection on this vhost, as a network fault
    /// would. Waits (up to 15 s) until the management API lists at least
    /// one, since it learns of new connections with a delay.
    pub async fn close_connections(&self) -> Result<usize> {
        self.close_at_least(1).await
    }

    /// As [`TestVhost::close_connections`], once the management API lists
    /// at least `expected` connections (one per service running here).
    pub async fn close_at_least(&self, expected: usize) -> Result<usize> {
        let client = reqwest::Client::new();
        let url = self.api("vhosts/{vhost}/connections");
        let connections: Vec<Value> = eventually(
            &format!("{expected} connections to close"),
            Duration::from_secs(15),
            || {
                let request = client.get(&url).send();
                async move {
                    let listed: Vec<Value> = request.await?.json().await?;
                    Ok((listed.len() >= expected).then_some(listed))
                }
            },
        )
        .await?;
        for c in &connections {
            let name = c["name"].as_str().unwrap_or_default();
            client
                .delete(format!(
                    "{}/api/connections/{}",
                    management_base(),
                    encode(name)
                ))
                .header("X-Reason", "test: forced close")
                .send()
                .await?;
        }
        Ok(connections.len())
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let url = format!("{}/api/vhosts/{}", management_base(), encode(&self.name));
        // A blocking client cannot run on an async runtime's thread.
        let _ = std::thread::spawn(move || {
            let _ = reqwest::blocking::Client::new().delete(url).send();
        })
        .join();
    }
}

/// Waits until `check` returns `Some`, polling every 20 ms; fails with
/// `what` and the last observation at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > deadline {
            match last_error {
                Some(e) => {
                    bail!("timed out after {deadline:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {deadline:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS always has a free loopback port")
}

/// Where cargo put the workspace's binaries: beside the running binary, in
/// `target/<profile>/`. A test binary runs from `target/<profile>/deps/`,
/// a `--bin` such as the load generator from `target/<profile>/` itself.
pub fn binary_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running binary knows its path");
    let mut dir = exe
        .parent()
        .expect("binaries live in target/<profile> or target/<profile>/deps");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("deps/ is inside target/<profile>");
    }
    dir.join(name)
}

/// A service binary running as a child process.
pub struct Service {
    pub name: &'static str,
    pub base_url: String,
    pub http_addr: String,
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended), when captured.
    pub log_file: Option<PathBuf>,
    child: Option<tokio::process::Child>,
}

impl Service {
    /// Starts `binary` (`order-service` or `fulfillment-service`) on a free
    /// port against `vhost`, with a store in `data_dir`, plus `env`; waits
    /// until `/healthz` answers.
    pub async fn start(
        binary: &'static str,
        vhost: &TestVhost,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_on(binary, &vhost.amqp_url, data_dir, env).await
    }

    /// As [`Service::start`], against any broker URL (e.g. a
    /// [`PrivateBroker`]'s).
    pub async fn start_on(
        binary: &'static str,
        amqp_url: &str,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let http_addr = format!("127.0.0.1:{}", free_port());
        let store = format!(
            "sqlite://{}",
            data_dir.join(format!("{binary}.db")).display()
        );
        let mut all_env: Vec<(String, String)> = vec![
            ("AMQP_URL".into(), amqp_url.to_owned()),
            ("HTTP_ADDR".into(), http_addr.clone()),
            ("STORE_URL".into(), store),
            (
                "RUST_LOG".into(),
                std::env::var("TEST_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ];
        for (k, v) in env {
            all_env.retain(|(key, _)| key != k);
            all_env.push(((*k).into(), (*v).into()));
        }
        let mut service = Self {
            name: binary,
            base_url: format!("http://{http_addr}"),
            http_addr,
            env: all_env,
            log_file: None,
            child: None,
        };
        service.spawn().await?;
        Ok(service)
    }

    /// As [`Service::start`], with stdout and stderr appended to `log_file`
    /// (read it with [`Service::log`]).
    pub async fn start_logged(
        binary: &'static str,
        vhost: &TestVhost,
        data_dir: &Path,
        env: &[(&str, &str)],
        log_file: &Path,
    ) -> Result<Self> {
        let http_addr = format!("127.0.0.1:{}", free_port());
        let mut service = Self {
            name: binary,
            base_url: format!("http://{http_addr}"),
            http_addr: http_addr.clone(),
            env: Vec::new(),
            log_file: Some(log_file.to_owned()),
            child: None,
        };
        let store = format!(
            "sqlite://{}",
            data_dir.join(format!("{binary}.db")).display()
        );
        service.env = vec![
            ("AMQP_URL".into(), vhost.amqp_url.clone()),
            ("HTTP_ADDR".into(), http_addr),
            ("STORE_URL".into(), store),
            ("RUST_LOG".into(), "info".into()),
        ];
        for (k, v) in env {
            service.env.retain(|(key, _)| key != k);
            service.env.push(((*k).into(), (*v).into()));
        }
        service.spawn().await?;
        Ok(service)
    }

    /// What the service has written to its log file so far (empty when
    /// not captured).
    pub fn log(&self) -> String {
        self.log_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    async fn spawn(&mut self) -> Result<()> {
        let path = binary_path(self.name);
        if !path.exists() {
            bail!(
                "{} not found: build the binaries first (`cargo build --workspace --bins`)",
                path.display()
            );
        }
        let mut command = tokio::process::Command::new(&path);
        if let Some(log) = &self.log_file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening {}", log.display()))?;
            command.stdout(file.try_clone()?).stderr(file);
        }
        let child = command
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        self.child = Some(child);
        self.wait_ok("/healthz").await
    }

    /// Waits until `/readyz` says ready (broker connected, store open).
    pub async fn wait_ready(&self) -> Result<()> {
        self.wait_ok("/readyz").await
    }

    /// Waits (up to 20 s) until `path` answers 2xx.
    async fn wait_ok(&self, path: &str) -> Result<()> {
        let url = self.url(path);
        let client = reqwest::Client::new();
        eventually(
            &format!("{} {path}", self.name),
            Duration::from_secs(20),
            || {
                let request = client.get(&url).send();
                async move {
                    Ok(request
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ()))
                }
            },
        )
        .await
    }

    /// `kill -9`: no chance to finish anything.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// SIGTERM, then wait for the process to exit by itself.
    pub async fn terminate(&mut self, grace: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        let pid = child.id().context("already exited")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                child.kill().await?;
                bail!("{} did not exit within {grace:?} of SIGTERM", self.name)
            }
        }
    }

    /// Starts the same binary again with the same settings and port.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        self.spawn().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

/// A small JSON-over-HTTP client for tests: every call returns the status
/// and the parsed body (or `Value::Null` when the body is not JSON).
#[derive(Clone, Default)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Self {
        Self::default()
    }

    async fn finish(response: reqwest::Response) -> Result<(u16, Value)> {
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub async fn get(&self, url: &str) -> Result<(u16, Value)> {
        Self::finish(self.client.get(url).send().await?).await
    }

    pub async fn post(&self, url: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let mut request = self.client.post(url);
        if let Some(body) = body {
            request = request.json(body);
        }
        Self::finish(request.send().await?).await
    }

    pub async fn patch(&self, url: &str, body: &Value) -> Result<(u16, Value)> {
        Self::finish(self.client.patch(url).json(body).send().await?).await
    }

    pub async fn delete(&self, url: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let mut request = self.client.delete(url);
        if let Some(body) = body {
            request = request.json(body);
        }
        Self::finish(request.send().await?).await
    }

    /// Sends raw bytes with a content type, for malformed-body tests.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Value)> {
        let response = self
            .client
            .request(method, url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        Self::finish(response).await
    }
}

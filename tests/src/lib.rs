//! Test harness for the system tests in `it/` and for the load generator.
//!
//! Everything here talks to real things: a RabbitMQ broker (each test gets
//! its own vhost, so tests run in parallel and beside a running system) and
//! the real service binaries started as processes on ports the OS picks.
//!
//! - [`TestSystem`]: a vhost, the services a test asks for (with their
//!   settings, SQLite or PostgreSQL stores) and typed clients, in one call.
//! - [`OrdersApi`], [`FulfillmentApi`]: a method per route of each
//!   service, answering the status and the body ([`Reply`]); [`Http`] for
//!   any URL.
//! - [`TestVhost`]: a fresh vhost, deleted when dropped.
//! - [`Service`]: one service binary running against a vhost on a port of
//!   its choosing (which it prints), killed when dropped.
//! - [`eventually`]: wait until a condition holds, or fail at a deadline.
//! - [`PrivateBroker`]: a RabbitMQ node of a test's own, to stop and start.
//! - [`TestDatabase`]: a fresh PostgreSQL database, dropped when dropped.
//! - [`TcpProxy`]: a TCP proxy a test takes down to cut a server off.
//! - [`cluster`]: the local three-node RabbitMQ cluster, for the
//!   high-availability tests.
//! - [`tls::TestCa`]: a CA of a test's own, for TLS to local servers.

pub mod api;
pub mod broker;
pub mod cluster;
pub mod management;
pub mod postgres;
pub mod proxy;
pub mod service;
mod sql;
pub mod system;
pub mod tls;

pub use api::{Created, FulfillmentApi, Http, OrdersApi, Reply};
pub use broker::PrivateBroker;
pub use postgres::{PrivatePostgres, TestDatabase};
pub use proxy::TcpProxy;
pub use service::{binary_path, Endpoint, Service};
pub use system::{SystemBuilder, TestSystem};

use std::future::Future;
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

    /// The management API's count of messages in `queue`: `None` while it
    /// does not know it yet (its statistics arrive some seconds after the
    /// queue is declared, and lag behind it after).
    pub async fn message_count(&self, queue: &str) -> Result<Option<u64>> {
        Ok(self.queue_info(queue).await?["messages"].as_u64())
    }

    /// Waits until the management API counts exactly `n` messages in
    /// `queue`. A count it does not know yet is not taken for any number.
    pub async fn wait_message_count(&self, queue: &str, n: u64, deadline: Duration) -> Result<()> {
        let last = std::sync::Mutex::new(None);
        eventually(
            &format!("the management API to count {n} messages in {queue}"),
            deadline,
            || async {
                let count = self.message_count(queue).await?;
                *last.lock().expect("last count lock") = count;
                Ok((count == Some(n)).then_some(()))
            },
        )
        .await
        .with_context(|| {
            let last = *last.lock().expect("last count lock");
            format!("last count read: {last:?}")
        })
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

/// Where [`free_port`] looks first: above every port this machine's fixed
/// servers use (PostgreSQL 5432, RabbitMQ 5672/15672/25672, the local
/// cluster's 570x/1570x/2570x) and below the kernel's ephemeral range.
const OWN_PORTS_FROM: u16 = 27000;

/// A free TCP port, for a server that must be told its port in its
/// configuration (a RabbitMQ node, a PostgreSQL cluster); the services take
/// port 0 instead (see [`Service`]).
///
/// The port is free when picked and bound by the server later. It is
/// picked below the kernel's ephemeral range (`ip_local_port_range`), which
/// no bind to port 0 and no outgoing connection draws from, so in between
/// only another `free_port` pick of the same port could take it.
pub fn free_port() -> u16 {
    use rand::Rng;
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_from > OWN_PORTS_FROM {
        let mut rng = rand::rng();
        for _ in 0..100 {
            let port = rng.random_range(OWN_PORTS_FROM..ephemeral_from);
            if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS always has a free loopback port")
}

//! The local three-node RabbitMQ cluster, for the high-availability tests.
//!
//! `scripts/rabbitmq-cluster.sh` runs it beside the machine's broker: node
//! `ha<i>@localhost` (i = 1..3) takes AMQP on `570<i>` and its management
//! API on `1570<i>`. [`Cluster::ensure`] starts it through the script when
//! it is not running. Tests that kill nodes hold [`Cluster::exclusive`], so
//! two of them never take nodes down at once (nextest runs each test in a
//! process of its own, hence a file lock). Each test makes its own vhost on
//! the cluster ([`ClusterVhost`]), removed on drop.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{encode, eventually};

/// The cluster's node numbers.
pub const NODES: [u8; 3] = [1, 2, 3];

/// How long the cluster may take to start or to become whole again.
const STARTUP: Duration = Duration::from_secs(90);

pub fn node_name(node: u8) -> String {
    format!("ha{node}@localhost")
}

pub fn amqp_port(node: u8) -> u16 {
    5700 + u16::from(node)
}

fn management_url(node: u8) -> String {
    format!("http://guest:guest@127.0.0.1:{}", 15700 + u16::from(node))
}

/// The node number of a node name such as `ha2@localhost`.
pub fn node_number(name: &str) -> Option<u8> {
    let n = name.strip_prefix("ha")?.split('@').next()?.parse().ok()?;
    NODES.contains(&n).then_some(n)
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster.sh")
}

/// Runs the cluster script off the async runtime's threads.
async fn run_script(args: Vec<String>) -> Result<()> {
    let shown = args.join(" ");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(script())
            .args(&args)
            .stdin(Stdio::null())
            .output()
    })
    .await?
    .with_context(|| format!("running scripts/rabbitmq-cluster.sh {shown}"))?;
    if !output.status.success() {
        bail!(
            "scripts/rabbitmq-cluster.sh {shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The three-node cluster.
pub struct Cluster {
    http: reqwest::Client,
}

/// Held while a test takes nodes down; released on drop.
pub struct Exclusive {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Cluster {
    /// The cluster with all three nodes running, started through the
    /// script when it is not; fails with a message saying how otherwise.
    pub async fn ensure() -> Result<Self> {
        let cluster = Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        if cluster.running_nodes().await.map(|n| n.len()).unwrap_or(0) < NODES.len() {
            run_script(vec!["start".into()]).await.context(
                "cannot start the three-node RabbitMQ cluster the HA tests need \
                 (scripts/rabbitmq-cluster.sh start; it needs rabbitmq-server and root)",
            )?;
        }
        cluster.wait_whole().await?;
        Ok(cluster)
    }

    /// Waits for (and holds) the right to take nodes down.
    pub async fn exclusive(&self) -> Result<Exclusive> {
        let path = std::env::temp_dir().join("rabbitmq-cluster-tests.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let file = tokio::task::spawn_blocking(move || {
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e)
        })
        .await?
        .context("locking the cluster for this test")?;
        Ok(Exclusive { _lock: file })
    }

    /// A management API base URL of a node that answers now.
    pub async fn live_management(&self) -> Result<String> {
        for node in NODES {
            let base = management_url(node);
            let answered = self
                .http
                .get(format!("{base}/api/overview"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if answered {
                return Ok(base);
            }
        }
        bail!("no node of the RabbitMQ cluster answers on its management API (15701-15703)")
    }

    /// Names of the nodes the cluster lists as running.
    pub async fn running_nodes(&self) -> Result<Vec<String>> {
        let base = self.live_management().await?;
        let nodes: Vec<Value> = self
            .http
            .get(format!("{base}/api/nodes"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(nodes
            .iter()
            .filter(|n| n["running"] == true)
            .filter_map(|n| n["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// Waits until all three nodes run and accept AMQP.
    pub async fn wait_whole(&self) -> Result<()> {
        eventually("all three cluster nodes running", STARTUP, || async {
            let running = self.running_nodes().await?;
            for node in NODES {
                if !running.contains(&node_name(node)) {
                    return Ok(None);
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", amqp_port(node)))
                    .await
                    .is_err()
                {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await
    }

    /// `kill -9` of one node.
    pub async fn kill(&self, node: u8) -> Result<()> {
        run_script(vec!["kill".into(), node.to_string()]).await
    }

    /// Starts a killed node again; it rejoins by itself.
    pub async fn start_node(&self, node: u8) -> Result<()> {
        run_script(vec!["start-node".into(), node.to_string()]).await
    }
}

/// A vhost of its own on the cluster, removed on drop.
pub struct ClusterVhost {
    pub name: String,
    http: reqwest::Client,
}

impl ClusterVhost {
    pub async fn create(cluster: &Cluster, label: &str) -> Result<Self> {
        let name = format!("test-{label}-{}", uuid::Uuid::new_v4().simple());
        let base = cluster.live_management().await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        http.put(format!("{base}/api/vhosts/{}", encode(&name)))
            .json(&serde_json::json!({}))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("creating vhost {name} on the cluster"))?;
        http.put(format!("{base}/api/permissions/{}/guest", encode(&name)))
            .json(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("granting guest on {name}"))?;
        Ok(Self { name, http })
    }

    /// `AMQP_URL` for a service: the nodes' addresses in this order.
    pub fn amqp_urls(&self, nodes: &[u8]) -> String {
        nodes
            .iter()
            .map(|n| {
                format!(
                    "amqp://guest:guest@127.0.0.1:{}/{}",
                    amqp_port(*n),
                    encode(&self.name)
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A GET on the management API of whichever node answers.
    async fn get(&self, path: &str) -> Result<Value> {
        let mut last = None;
        for node in NODES {
            let url = format!("{}/api/{path}", management_url(node));
            match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(r.json().await?),
                Ok(r) => last = Some(anyhow::anyhow!("GET {path}: {}", r.status())),
                Err(e) => last = Some(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("GET {path}: no node answered")))
    }

    /// The nodes this vhost's client connections are on (by number).
    pub async fn connection_nodes(&self) -> Result<Vec<u8>> {
        let connections = self
            .get(&format!("vhosts/{}/connections", encode(&self.name)))
            .await?;
        Ok(connections
            .as_array()
            .context("a list of connections")?
            .iter()
            .filter_map(|c| c["node"].as_str().and_then(node_number))
            .collect())
    }

    /// Every queue of this vhost: name, type, members, state.
    pub async fn queues(&self) -> Result<Vec<Value>> {
        let queues = self.get(&format!("queues/{}", encode(&self.name))).await?;
        Ok(queues.as_array().context("a list of queues")?.clone())
    }

    /// Deletes a queue (the broker cancels its consumers), through
    /// `rabbitmqctl`: unlike the management API it also deletes a queue
    /// exclusive to a connection, as an operator can.
    pub async fn delete_queue(&self, queue: &str) -> Result<()> {
        run_script(vec![
            "delete-queue".into(),
            self.name.clone(),
            queue.to_owned(),
        ])
        .await
    }
}

impl Drop for ClusterVhost {
    fn drop(&mut self) {
        let name = encode(&self.name);
        // A blocking client cannot run on an async runtime's thread.
        let _ = std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build();
            let Ok(client) = client else { return };
            for node in NODES {
                let url = format!("{}/api/vhosts/{name}", management_url(node));
                if client
                    .delete(url)
                    .send()
                    .is_ok_and(|r| r.status().is_success())
                {
                    return;
                }
            }
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_map_to_numbers() {
        assert_eq!(node_number("ha2@localhost"), Some(2));
        assert_eq!(node_number("rabbit@vm"), None);
        assert_eq!(node_number("ha9@localhost"), None);
        assert_eq!(amqp_port(3), 5703);
    }
}

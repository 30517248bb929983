//! A service binary run as a child process on a port the OS picks.
//!
//! Each service is started with `HTTP_ADDR=127.0.0.1:0`: it binds a port of
//! its own choosing and prints `<name> listening on port <port>` on stdout,
//! which [`Service`] reads. No port is picked here and bound later, so
//! parallel tests cannot race for one. A restarted service binds a new
//! port; every [`Endpoint`] handed out (and every client built on one)
//! follows it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use std::io::Write;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{eventually, TestVhost};

/// How long a service may take from start to printing its port: recovery
/// of every unfinished workflow runs before the listener binds.
const LISTEN_DEADLINE: Duration = Duration::from_secs(30);

/// How long a service may take from binding to answering `/healthz`.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(20);

/// What a service's HTTP address is while it does not run: connecting to
/// port 0 is refused at once, so a request made in between fails as it
/// would against a stopped service, and never reaches another test's
/// process that took the old port.
const DOWN: &str = "http://127.0.0.1:0";

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

/// A running service's base URL (`http://127.0.0.1:<port>`), shared with
/// the [`Service`]: it follows the service across restarts.
#[derive(Clone, Debug)]
pub struct Endpoint(Arc<RwLock<String>>);

impl Endpoint {
    /// An endpoint that stays at `base_url` (a service not started here).
    pub fn fixed(base_url: &str) -> Self {
        Self(Arc::new(RwLock::new(base_url.trim_end_matches('/').into())))
    }

    pub fn base_url(&self) -> String {
        self.0.read().expect("endpoint lock").clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    fn set(&self, base_url: String) {
        *self.0.write().expect("endpoint lock") = base_url;
    }
}

/// A service binary running as a child process.
pub struct Service {
    pub name: &'static str,
    /// Its settings; change them before [`Service::restart`] to restart
    /// it with others.
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended), when captured.
    pub log_file: Option<PathBuf>,
    endpoint: Endpoint,
    child: Option<tokio::process::Child>,
}

impl Service {
    /// Starts `binary` (`order-service` or `fulfillment-service`) against
    /// `vhost`, with a store in `data_dir`, plus `env`; waits until
    /// `/healthz` answers.
    pub async fn start(
        binary: &'static str,
        vhost: &TestVhost,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_on(binary, &vhost.amqp_url, data_dir, env).await
    }

    /// As [`Service::start`], against any broker URL (e.g. a
    /// [`crate::PrivateBroker`]'s).
    pub async fn start_on(
        binary: &'static str,
        amqp_url: &str,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let log = std::env::var("TEST_SERVICE_LOG").unwrap_or_else(|_| "warn".into());
        let mut service = Self::new(binary, amqp_url, data_dir, &log, env, None);
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
        Self::start_logged_on(binary, &vhost.amqp_url, data_dir, env, log_file).await
    }

    /// As [`Service::start_logged`], against any broker URL.
    pub async fn start_logged_on(
        binary: &'static str,
        amqp_url: &str,
        data_dir: &Path,
        env: &[(&str, &str)],
        log_file: &Path,
    ) -> Result<Self> {
        let mut service = Self::new(
            binary,
            amqp_url,
            data_dir,
            "info",
            env,
            Some(log_file.to_owned()),
        );
        service.spawn().await?;
        Ok(service)
    }

    /// Settings for `binary`: the broker, an ephemeral port on loopback, a
    /// SQLite store in `data_dir` and `log` as `RUST_LOG`, each replaced by
    /// `env` where it names them too.
    fn new(
        binary: &'static str,
        amqp_url: &str,
        data_dir: &Path,
        log: &str,
        env: &[(&str, &str)],
        log_file: Option<PathBuf>,
    ) -> Self {
        let store = format!(
            "sqlite://{}",
            data_dir.join(format!("{binary}.db")).display()
        );
        let mut all_env: Vec<(String, String)> = vec![
            ("AMQP_URL".into(), amqp_url.to_owned()),
            ("HTTP_ADDR".into(), "127.0.0.1:0".into()),
            ("STORE_URL".into(), store),
            ("RUST_LOG".into(), log.to_owned()),
        ];
        for (k, v) in env {
            all_env.retain(|(key, _)| key != k);
            all_env.push(((*k).into(), (*v).into()));
        }
        Self {
            name: binary,
            env: all_env,
            log_file,
            endpoint: Endpoint::fixed(DOWN),
            child: None,
        }
    }

    /// What the service has written to its log file so far (empty when
    /// not captured).
    pub fn log(&self) -> String {
        self.log_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// `http://127.0.0.1:<port>` of the running process (a new port after
    /// each restart).
    pub fn base_url(&self) -> String {
        self.endpoint.base_url()
    }

    /// `127.0.0.1:<port>` of the running process.
    pub fn http_addr(&self) -> String {
        self.base_url().trim_start_matches("http://").to_owned()
    }

    /// The base URL as a handle that follows restarts, for clients that
    /// outlive a borrow of the service.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    pub fn url(&self, path: &str) -> String {
        self.endpoint.url(path)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    async fn spawn(&mut self) -> Result<()> {
        self.launch(LISTEN_DEADLINE).await?;
        self.wait_ok("/healthz").await
    }

    /// Starts the process and waits (up to `deadline`) until it says which
    /// port it bound, without waiting for it to answer; fails when it exits
    /// first.
    pub async fn launch(&mut self, deadline: Duration) -> Result<()> {
        let path = binary_path(self.name);
        if !path.exists() {
            bail!(
                "{} not found: build the binaries first (`cargo build --workspace --bins`)",
                path.display()
            );
        }
        let mut command = tokio::process::Command::new(&path);
        let log = match &self.log_file {
            Some(log) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .with_context(|| format!("opening {}", log.display()))?;
                command.stderr(file.try_clone()?);
                Some(file)
            }
            None => None,
        };
        let mut child = command
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(read_stdout(self.name, stdout, port_tx, log));
        self.child = Some(child);
        let port = match tokio::time::timeout(deadline, port_rx).await {
            Ok(Ok(port)) => port,
            Ok(Err(_)) => {
                // Its stdout closed: it is exiting, or has.
                let exited = match self.child.as_mut() {
                    Some(child) => tokio::time::timeout(Duration::from_secs(2), child.wait())
                        .await
                        .ok()
                        .and_then(Result::ok),
                    None => None,
                };
                let status = exited.map_or_else(|| "its stdout closed".into(), |s| s.to_string());
                bail!(
                    "{} exited before it listened ({status}){}",
                    self.name,
                    self.log_tail()
                )
            }
            Err(_) => bail!(
                "{} did not say which port it listens on within {deadline:?} (a binary \
                 older than that line? `cargo build --workspace --bins`){}",
                self.name,
                self.log_tail()
            ),
        };
        self.endpoint.set(format!("http://127.0.0.1:{port}"));
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        if log.is_empty() {
            return String::new();
        }
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("; its log ends:\n{}", tail.join("\n"))
    }

    /// Waits until `/readyz` says ready (broker connected, store open).
    pub async fn wait_ready(&self) -> Result<()> {
        self.wait_ok("/readyz").await
    }

    /// Waits until `path` answers 2xx.
    async fn wait_ok(&self, path: &str) -> Result<()> {
        let endpoint = self.endpoint.clone();
        let client = reqwest::Client::new();
        eventually(&format!("{} {path}", self.name), HEALTHY_DEADLINE, || {
            let request = client.get(endpoint.url(path)).send();
            async move {
                Ok(request
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await
    }

    /// `kill -9`: no chance to finish anything.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            self.endpoint.set(DOWN.into());
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
        let exited = tokio::time::timeout(grace, child.wait()).await;
        self.endpoint.set(DOWN.into());
        match exited {
            Ok(status) => Ok(status?),
            Err(_) => {
                child.kill().await?;
                bail!("{} did not exit within {grace:?} of SIGTERM", self.name)
            }
        }
    }

    /// Starts the same binary again with the same settings (and store),
    /// on a new port: [`Service::url`] and every [`Endpoint`] follow it.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        self.spawn().await
    }
}

/// Reads a service's stdout: sends the port of its `listening on port`
/// line, and appends every line to its log file when it has one.
async fn read_stdout(
    name: &'static str,
    stdout: tokio::process::ChildStdout,
    port: tokio::sync::oneshot::Sender<u16>,
    mut log: Option<std::fs::File>,
) {
    let prefix = format!("{name} listening on port ");
    let mut port = Some(port);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(found) = line
            .strip_prefix(&prefix)
            .and_then(|p| p.trim().parse().ok())
        {
            if let Some(port) = port.take() {
                let _ = port.send(found);
            }
        }
        if let Some(file) = log.as_mut() {
            // A line at a time, appended: small enough to write in place.
            let _ = writeln!(file, "{line}");
        }
    }
}

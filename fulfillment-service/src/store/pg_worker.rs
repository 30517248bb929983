//! A PostgreSQL connection owned by a thread of its own.
//!
//! The `postgres` crate is synchronous on the outside but drives a tokio
//! runtime of its own inside; calling it from a thread that already runs
//! tokio (every actix actor, HTTP worker and the outbox relay here) panics.
//! So one plain thread owns the [`postgres::Client`] and runs the jobs sent
//! to it one at a time; a caller blocks on the answer exactly as it would
//! on SQLite. A broken connection is dropped and opened again for the next
//! job, so the store comes back by itself after PostgreSQL restarts.
//!
//! No call waits forever: connecting, every statement and a silent peer
//! are bounded ([`config`]); settings given in `STORE_URL` win.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use postgres::{Client, Config};
use service_kit::postgres_tls::{self, MakeRustlsConnect};

/// A connection attempt to an unreachable host fails after this, instead
/// of the kernel's TCP timeout (minutes), so `/readyz` and retries move on.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The server ends a statement running longer than this: every statement
/// here is a key lookup or a small batch, so a longer one is stuck.
const STATEMENT_TIMEOUT_MS: u64 = 15_000;
/// TCP keepalive: a peer that went silent (a dead host, a dropped route)
/// is noticed after about idle + interval x retries = 25 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
/// Data sent and not acknowledged for this long fails the connection
/// (what keepalive cannot see while a write is outstanding).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(25);

/// The client settings for `url`: its own, plus the bounds above where
/// it sets none.
pub fn config(url: &str) -> Result<Config, postgres::Error> {
    let mut config: Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(TCP_USER_TIMEOUT);
    let options = config.get_options().unwrap_or_default().to_owned();
    if !options.contains("statement_timeout") {
        let bounded = format!("{options} -c statement_timeout={STATEMENT_TIMEOUT_MS}");
        config.options(bounded.trim());
    }
    Ok(config)
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The worker thread has stopped (it cannot, short of a bug).
#[derive(Debug, Clone, Copy)]
pub struct WorkerGone;

/// The worker's connection, opened again when it breaks.
pub struct Connection {
    /// The connection string with an `sslmode` the `postgres` crate
    /// understands; TLS as the original asked is in `tls`.
    url: String,
    tls: MakeRustlsConnect,
    client: Option<Client>,
}

impl Connection {
    fn client(&mut self) -> Result<&mut Client, postgres::Error> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.client = Some(config(&self.url)?.connect(self.tls.clone())?);
        }
        Ok(self.client.as_mut().expect("connected just above"))
    }
}

/// Hands jobs to the connection's thread. The thread ends when this is
/// dropped.
pub struct Worker {
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    /// Starts the thread; it connects on its first job. TLS settings the
    /// URL gets wrong (an unknown `sslmode`, an unreadable `sslrootcert`)
    /// fail here, at start.
    pub fn start(url: &str, name: &str) -> Result<Self, std::io::Error> {
        let (url, mode, tls) = postgres_tls::connector(url, &|name| std::env::var(name).ok())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        tracing::info!(sslmode = mode.name(), "PostgreSQL store");
        let (jobs, queue) = mpsc::channel::<Job>();
        let mut connection = Connection {
            url,
            tls,
            client: None,
        };
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for job in queue {
                    // A job that panics must not take the store down with
                    // it; its caller sees the worker's answer channel close.
                    if catch_unwind(AssertUnwindSafe(|| job(&mut connection))).is_err() {
                        connection.client = None;
                    }
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the connection's thread and waits for its result.
    pub fn call<T, E>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<postgres::Error> + From<WorkerGone> + Send + 'static,
    {
        let (answer, result) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |connection| {
            let outcome = match connection.client() {
                Ok(client) => f(client),
                Err(error) => Err(error.into()),
            };
            let _ = answer.send(outcome);
        });
        self.jobs.send(job).map_err(|_| WorkerGone)?;
        result.recv().map_err(|_| WorkerGone)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_is_bounded_unless_the_url_says_otherwise() {
        let c = config("postgres://u@localhost/db").expect("parses");
        assert_eq!(c.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(c.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert_eq!(c.get_options(), Some("-c statement_timeout=15000"));
        let c = config(
            "postgres://u@localhost/db?connect_timeout=2&options=-c%20statement_timeout%3D1000",
        )
        .expect("parses");
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(c.get_options(), Some("-c statement_timeout=1000"));
        assert!(config("not a url").is_err());
    }
}

//! A PostgreSQL connection owned by a thread of its own.
//!
//! The `postgres` crate is synchronous on the outside but drives a tokio
//! runtime of its own inside; calling it from a thread that already runs
//! tokio (every actix actor, HTTP worker and the outbox relay here) panics.
//! So one plain thread owns the [`postgres::Client`] and runs the jobs sent
//! to it one at a time; a caller blocks on the answer exactly as it would
//! on SQLite. A broken connection is dropped and opened again for the next
//! job, so the store comes back by itself after PostgreSQL restarts.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use postgres::Client;
use service_kit::postgres_tls::{self, MakeRustlsConnect};

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

/// Longest wait for a connection to open: a PostgreSQL that does not
/// answer fails the call (retried by the caller) instead of hanging it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalives find a peer that vanished (a failed-over host) on an
/// idle connection within about a minute.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Longest a statement may run; every statement here is a short indexed
/// read or write, so anything near this is a stuck server.
const STATEMENT_TIMEOUT_MS: u64 = 15_000;

impl Connection {
    fn client(&mut self) -> Result<&mut Client, postgres::Error> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.client = Some(connect(&self.url, self.tls.clone())?);
        }
        Ok(self.client.as_mut().expect("connected just above"))
    }
}

/// Opens a connection with the timeouts above (a URL's own
/// `connect_timeout` or keepalive settings are replaced).
fn connect(url: &str, tls: MakeRustlsConnect) -> Result<Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    let mut client = config.connect(tls)?;
    client.batch_execute(&format!(
        "SET statement_timeout = {STATEMENT_TIMEOUT_MS}; SET idle_in_transaction_session_timeout = {}",
        STATEMENT_TIMEOUT_MS * 2
    ))?;
    Ok(client)
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

//! The PostgreSQL pool both services' shared store runs on.
//!
//! deadpool-postgres over tokio-postgres: every call is async, so no actor
//! or HTTP thread waits on the server, and a connection that broke (the
//! server restarted, a failover) is dropped at its next checkout and a new
//! one opened, so the store comes back by itself. TLS follows the
//! connection string's `sslmode` ([`crate::postgres_tls`]).
//!
//! A transaction's statements go out as one [`pipeline`]: prepared once
//! per connection ([`prepared`], deadpool's statement cache), then all
//! sent before the first answer is read, so a group commit of many
//! writes takes a few round trips (`BEGIN`, the pipeline, `COMMIT`)
//! instead of two for every statement. The stores write each table of a
//! transaction with one statement over arrays (`unnest`), so a pipeline
//! holds a handful of statements whatever the batch's size. While a
//! transaction waits for the client, it holds its row locks and its
//! connection.
//!
//! The outbox relay has connections of its own ([`Postgres::relay_client`])
//! whose commits do not wait for their WAL flush (`synchronous_commit`
//! off). Its writes are the claim of rows it is about to publish and the
//! delete of rows the broker confirmed, each a statement on its own.
//! PostgreSQL may lose such a commit in a crash of its own (never part of
//! one), and losing it only sends rows again: a lost claim lets another
//! replica's relay send them too, a lost delete sends them once more. The
//! messages keep their ids, which receivers deduplicate; a row may go out
//! twice in any case, after a crash between publish and delete. The rows
//! themselves are written by the workflows' transactions, which wait for
//! their flush as always.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

pub use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::future::BoxFuture;
use refinery::Runner;

use super::{migrate, outbox, StoreError};
use crate::postgres_tls;

/// Longest wait for a connection to open: a PostgreSQL that does not
/// answer fails the call (retried by the caller) instead of hanging it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalives find a peer that vanished (a failed-over host) on an
/// idle connection within about a minute.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Longest a statement may run; every statement here is a short indexed
/// read or write, so anything near this is a stuck server.
const STATEMENT_TIMEOUT_MS: u64 = 15_000;
/// Connections per process: the group commit holds one, reads (HTTP,
/// recovery) share the rest.
const POOL_SIZE: usize = 8;
/// The relay's connections: one reads and claims, one clears.
const RELAY_POOL_SIZE: usize = 2;
/// Longest a call waits for a free connection before failing.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);

/// An open PostgreSQL store: a pool of connections; cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    /// The outbox relay's connections: commits that do not wait for the
    /// WAL flush (see the module's notes).
    relay_pool: Pool,
    /// Marks this process's outbox claims, and the rows it writes
    /// (`outbox.writer` on each of its connections); its relay reads its
    /// own rows without claiming them again.
    pub(crate) owner: String,
    /// When the relay last swept the outbox for rows nobody holds.
    last_sweep: Arc<Mutex<Option<Instant>>>,
    /// What every write of workflow state must pass, once set (the
    /// partition leases of [`crate::partitions`]); shared by all clones.
    guard: Arc<OnceLock<Arc<dyn WriteGuard>>>,
}

/// A check every write of workflow state runs inside its transaction
/// before it commits ([`Postgres::check_writes`]): with several replicas,
/// that this replica still owns the workflows it writes.
pub trait WriteGuard: Send + Sync + 'static {
    /// Refuses the write of `entity_ids` in `tx` with an error, or lets it
    /// commit.
    fn check<'a>(
        &'a self,
        tx: &'a Transaction<'_>,
        entity_ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

impl Postgres {
    /// Connects to `url` and brings the schema up to date with
    /// `migrations`, holding the advisory lock `lock` so that replicas
    /// starting together migrate one at a time. TLS settings the URL gets
    /// wrong (an unknown `sslmode`, an unreadable `sslrootcert`) and a
    /// server that does not answer fail here, at start.
    pub async fn open(url: &str, migrations: &Runner, lock: i64) -> Result<Self, StoreError> {
        let (url, mode, tls) = postgres_tls::connector(url, &|name| std::env::var(name).ok())
            .map_err(|e| StoreError::Open(e.to_string()))?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Open(format!("the PostgreSQL URL: {e}")))?;
        let options = format!(
            "{} -c statement_timeout={STATEMENT_TIMEOUT_MS} -c idle_in_transaction_session_timeout={}",
            config.get_options().unwrap_or_default(),
            STATEMENT_TIMEOUT_MS * 2
        );
        let owner = uuid::Uuid::new_v4().to_string();
        let relay_options = format!("{options} -c synchronous_commit=off");
        // The rows this process's transactions add to the outbox are born
        // claimed by it (`outbox::INSERT_POSTGRES`).
        let options = format!("{options} -c {}={owner}", outbox::WRITER_SETTING);
        config
            .options(options.trim())
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        let mut relay_config = config.clone();
        relay_config.options(relay_options.trim());
        let pool = pool_of(config, tls.clone(), POOL_SIZE)?;
        let relay_pool = pool_of(relay_config, tls, RELAY_POOL_SIZE)?;
        tracing::info!(sslmode = mode.name(), "PostgreSQL store");
        let store = Self {
            pool,
            relay_pool,
            owner,
            last_sweep: Arc::default(),
            guard: Arc::new(OnceLock::new()),
        };
        let mut client = store.client().await?;
        if let Err(error) = migrate::postgres(&mut client, migrations, lock).await {
            // The session may still hold the migration lock: end it.
            drop(Object::take(client));
            return Err(error);
        }
        Ok(store)
    }

    /// Makes every later write of workflow state pass `guard` (once per
    /// store: a second guard is refused).
    pub fn guard_writes(&self, guard: Arc<dyn WriteGuard>) -> Result<(), StoreError> {
        self.guard
            .set(guard)
            .map_err(|_| StoreError::Open("the store's writes are guarded already".into()))
    }

    /// Runs the write guard, if any, for a write of `entity_ids` in `tx`;
    /// a service's store calls it in each transaction that writes
    /// workflow state, before committing.
    pub async fn check_writes(
        &self,
        tx: &Transaction<'_>,
        entity_ids: &[&str],
    ) -> Result<(), StoreError> {
        match self.guard.get() {
            Some(guard) => guard.check(tx, entity_ids).await,
            None => Ok(()),
        }
    }

    /// A connection from the pool, given back when dropped.
    pub async fn client(&self) -> Result<Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// A connection of the outbox relay's: its commits do not wait for
    /// the WAL flush. Only for writes that cost a resend if lost.
    pub(crate) async fn relay_client(&self) -> Result<Object, StoreError> {
        Ok(self.relay_pool.get().await?)
    }

    /// Is it time for the relay to sweep the outbox for rows nobody holds
    /// ([`outbox::SWEEP_EVERY`])? Counts the sweep as done when it is.
    pub(crate) fn sweep_due(&self) -> bool {
        let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let due = last.is_none_or(|at| now.duration_since(at) >= outbox::SWEEP_EVERY);
        if due {
            *last = Some(now);
        }
        due
    }

    /// Makes the next sweep due at once: the last one found a full batch.
    pub(crate) fn sweep_again(&self) {
        *self.last_sweep.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A pool of at most `size` connections to `config`.
fn pool_of(
    config: tokio_postgres::Config,
    tls: postgres_tls::MakeRustlsConnect,
    size: usize,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CHECKOUT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Open(format!("the PostgreSQL pool: {e}")))
}

/// One statement of a [`pipeline`]: a future that sends its statement
/// when first polled (tokio-postgres queues a query with a prepared
/// statement on its first poll, without waiting for earlier answers) and
/// ends with the server's answer.
pub type Statement<'a> = BoxFuture<'a, Result<(), StoreError>>;

/// Runs `statements` on one connection as a pipeline: sends each, in
/// order, before reading any answer, then reads the answers in order
/// (the server answers in the order it was asked). The first error is
/// the answer; inside a transaction the statements after a failed one
/// fail too, and the transaction is rolled back when dropped. Every
/// statement must already be prepared (see [`prepared`]): one that
/// prepares first waits for that answer before it is sent.
pub async fn pipeline(statements: Vec<Statement<'_>>) -> Result<(), StoreError> {
    let mut each: Vec<_> = statements
        .into_iter()
        .map(futures::future::maybe_done)
        .collect();
    // The first poll of each sends it.
    futures::future::poll_fn(|cx| {
        for statement in &mut each {
            let _ = Pin::new(statement).poll(cx);
        }
        Poll::Ready(())
    })
    .await;
    for mut statement in each {
        (&mut statement).await;
        Pin::new(&mut statement)
            .take_output()
            .unwrap_or_else(|| Err(StoreError::unavailable("a statement's answer was lost")))?;
    }
    Ok(())
}

/// The prepared `statement` run with `params` in `tx`, as one statement
/// of a [`pipeline`].
pub fn execute<'a, 'b: 'a>(
    tx: &'a tokio_postgres::Transaction<'b>,
    statement: &'a tokio_postgres::Statement,
    params: Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)>,
) -> Statement<'a> {
    Box::pin(async move {
        tx.execute(statement, &params).await?;
        Ok(())
    })
}

/// `queries` prepared on the transaction's connection: from deadpool's
/// statement cache once each has been prepared there, else all prepared
/// in one round trip.
pub async fn prepared<const N: usize>(
    tx: &Transaction<'_>,
    queries: [&str; N],
) -> Result<[tokio_postgres::Statement; N], StoreError> {
    let statements =
        futures::future::try_join_all(queries.map(|query| tx.prepare_cached(query))).await?;
    statements
        .try_into()
        .map_err(|_| StoreError::unavailable("a prepared statement is missing"))
}

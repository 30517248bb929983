//! [`TestSystem`]: what a system test runs against, started in one call.
//!
//! A vhost of its own (or a given broker), fulfillment-service and
//! order-service with the settings the test asks for, their stores in a
//! temporary directory (or PostgreSQL databases of their own), and typed
//! clients for both.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use system_tests::TestSystem;
//! let system = TestSystem::builder("example")
//!     .fulfillment(&[("STEP_DELAY_MS", "20")])
//!     .orders(&[("PAYMENT_DELAY_MS", "20")])
//!     .start()
//!     .await?;
//! let created = system.orders().place_demo().await?;
//! let reply = system.orders().status(&created.workflow_id).await?;
//! assert_eq!(reply.status, 200);
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::api::{FulfillmentApi, OrdersApi};
use crate::{Service, TestDatabase, TestVhost};

/// What to start; [`SystemBuilder::start`] starts it.
pub struct SystemBuilder {
    label: String,
    amqp_url: Option<String>,
    orders: Option<Vec<(String, String)>>,
    fulfillment: Option<Vec<(String, String)>>,
    postgres: bool,
    logged: bool,
}

impl SystemBuilder {
    /// Starts order-service with `env` (on top of the harness's settings:
    /// broker, port, store, log level).
    pub fn orders(mut self, env: &[(&str, &str)]) -> Self {
        self.orders = Some(owned(env));
        self
    }

    /// Starts fulfillment-service with `env`; it starts before
    /// order-service, since it declares the queues its signals wait in.
    pub fn fulfillment(mut self, env: &[(&str, &str)]) -> Self {
        self.fulfillment = Some(owned(env));
        self
    }

    /// Runs on `amqp_url` (e.g. a [`crate::PrivateBroker`]'s or a cluster
    /// vhost's) instead of a vhost of the system's own.
    pub fn broker(mut self, amqp_url: &str) -> Self {
        self.amqp_url = Some(amqp_url.to_owned());
        self
    }

    /// Stores both services' state in PostgreSQL databases of their own
    /// (created here, dropped with the system) instead of SQLite.
    pub fn postgres(mut self) -> Self {
        self.postgres = true;
        self
    }

    /// Captures each service's stdout and stderr in `<name>.log` in the
    /// data directory ([`Service::log`]), at `RUST_LOG=info` unless the
    /// service's settings say otherwise.
    pub fn logged(mut self) -> Self {
        self.logged = true;
        self
    }

    pub async fn start(self) -> Result<TestSystem> {
        let (vhost, amqp_url) = match self.amqp_url {
            Some(url) => (None, url),
            None => {
                let vhost = TestVhost::create(&self.label).await?;
                let url = vhost.amqp_url.clone();
                (Some(vhost), url)
            }
        };
        let dir = tempfile::tempdir()?;
        let mut system = TestSystem {
            orders: None,
            fulfillment: None,
            databases: Vec::new(),
            amqp_url,
            logged: self.logged,
            postgres: self.postgres,
            label: self.label,
            vhost,
            dir,
        };
        if let Some(env) = &self.fulfillment {
            system.start_fulfillment(&borrowed(env)).await?;
        }
        if let Some(env) = &self.orders {
            system.start_orders(&borrowed(env)).await?;
        }
        for service in [&system.fulfillment, &system.orders].into_iter().flatten() {
            service.wait_ready().await?;
        }
        Ok(system)
    }
}

/// Both services (or one) on a broker, with typed clients. Fields drop in
/// order: the services stop before their databases, vhost and directory
/// go.
pub struct TestSystem {
    orders: Option<Service>,
    fulfillment: Option<Service>,
    databases: Vec<(&'static str, TestDatabase)>,
    /// The vhost made for this system (`None` on a given broker).
    pub vhost: Option<TestVhost>,
    /// The broker URL both services use.
    pub amqp_url: String,
    label: String,
    logged: bool,
    postgres: bool,
    dir: tempfile::TempDir,
}

impl TestSystem {
    /// What to start, on a vhost named after `label`.
    pub fn builder(label: &str) -> SystemBuilder {
        SystemBuilder {
            label: label.to_owned(),
            amqp_url: None,
            orders: None,
            fulfillment: None,
            postgres: false,
            logged: false,
        }
    }

    /// order-service's API (it must have been started).
    pub fn orders(&self) -> OrdersApi {
        OrdersApi::of(self.order_service())
    }

    /// fulfillment-service's API (it must have been started).
    pub fn fulfillment(&self) -> FulfillmentApi {
        FulfillmentApi::of(self.fulfillment_service())
    }

    pub fn order_service(&self) -> &Service {
        self.orders
            .as_ref()
            .expect("the test started order-service")
    }

    pub fn order_service_mut(&mut self) -> &mut Service {
        self.orders
            .as_mut()
            .expect("the test started order-service")
    }

    pub fn fulfillment_service(&self) -> &Service {
        self.fulfillment
            .as_ref()
            .expect("the test started fulfillment-service")
    }

    pub fn fulfillment_service_mut(&mut self) -> &mut Service {
        self.fulfillment
            .as_mut()
            .expect("the test started fulfillment-service")
    }

    /// The vhost made for this system.
    pub fn vhost(&self) -> &TestVhost {
        self.vhost
            .as_ref()
            .expect("the system runs on a vhost of its own")
    }

    /// `binary`'s database, when the system is [`SystemBuilder::postgres`].
    pub fn database(&self, binary: &str) -> Option<&TestDatabase> {
        self.databases
            .iter()
            .find(|(name, _)| *name == binary)
            .map(|(_, database)| database)
    }

    /// The directory the services' stores and logs are in.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where `binary`'s log is, when the system is [`SystemBuilder::logged`].
    pub fn log_path(&self, binary: &str) -> PathBuf {
        self.dir.path().join(format!("{binary}.log"))
    }

    /// Starts fulfillment-service with `env`, without waiting for
    /// `/readyz`.
    pub async fn start_fulfillment(&mut self, env: &[(&str, &str)]) -> Result<&mut Service> {
        let service = self.start_service("fulfillment-service", env).await?;
        Ok(self.fulfillment.insert(service))
    }

    /// Starts order-service with `env`, without waiting for `/readyz`.
    pub async fn start_orders(&mut self, env: &[(&str, &str)]) -> Result<&mut Service> {
        let service = self.start_service("order-service", env).await?;
        Ok(self.orders.insert(service))
    }

    /// Starts `binary` with `env` and this system's broker, directory and
    /// stores, and hands it to the caller, who keeps it where the test needs
    /// it; waits for `/healthz`, not `/readyz`.
    pub async fn start_service(
        &mut self,
        binary: &'static str,
        env: &[(&str, &str)],
    ) -> Result<Service> {
        let mut env = env.to_vec();
        let store;
        if self.postgres && !env.iter().any(|(k, _)| *k == "STORE_URL") {
            let database = TestDatabase::create(&format!("{}_{binary}", self.label))
                .with_context(|| format!("a database for {binary}"))?;
            store = database.url.clone();
            self.databases.push((binary, database));
            env.push(("STORE_URL", store.as_str()));
        }
        if self.logged {
            let log = self.log_path(binary);
            Service::start_logged_on(binary, &self.amqp_url, self.dir.path(), &env, &log).await
        } else {
            Service::start_on(binary, &self.amqp_url, self.dir.path(), &env).await
        }
    }
}

fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

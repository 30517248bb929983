//! Typed settings from the environment, with the names, services and
//! defaults listed under "Configuration" in the repository's README.md.

use std::path::PathBuf;
use std::time::Duration;

use crate::workflow::RetryPolicy;

/// Where orders are stored.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file; its directory is created when missing.
    SqliteFile(PathBuf),
    /// A throwaway in-memory SQLite database (`sqlite::memory:`), for tests.
    SqliteMemory,
    /// A PostgreSQL database (`postgres://user:password@host/db`); may hold
    /// a password, so it prints redacted.
    Postgres(String),
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SqliteFile(path) => f.debug_tuple("SqliteFile").field(path).finish(),
            Self::SqliteMemory => f.write_str("SqliteMemory"),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&redact(url)).finish(),
        }
    }
}

impl StoreLocation {
    pub fn parse(url: &str) -> Result<Self, String> {
        if url == "sqlite::memory:" || url == "sqlite://:memory:" {
            return Ok(Self::SqliteMemory);
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err("STORE_URL names no file: use sqlite://./data/orders.db".into());
            }
            return Ok(Self::SqliteFile(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err("STORE_URL must start with sqlite:// or postgres://".into())
    }
}

pub use service_kit::settings::{redact, LogFormat, DEFAULT_AMQP_URL};
use service_kit::settings::{Common, Defaults};

#[derive(Clone)]
pub struct Config {
    /// Broker, store URL, HTTP, query timeout, logging, access.
    pub common: Common,
    /// Where orders are stored (from `STORE_URL`).
    pub store: StoreLocation,
    pub inventory_delay: Duration,
    pub payment_delay: Duration,
    pub poll_interval: Duration,
    pub payment_decline_rate: f64,
    /// `FULFILLMENT_DEADLINE_MS` (15 minutes): an order whose fulfillment
    /// has not finished this long after the hand-over is marked overdue.
    pub fulfillment_deadline: Duration,
    /// `INVENTORY_RETRY_*`: the inventory activity's retry policy.
    pub inventory_retry: RetryPolicy,
    /// `PAYMENT_RETRY_*`: the payment activity's retry policy.
    pub payment_retry: RetryPolicy,
    /// `INVENTORY_TRANSIENT_FAILURE_RATE` (0): simulated transient failures.
    pub inventory_transient_failure_rate: f64,
    /// `PAYMENT_TRANSIENT_FAILURE_RATE` (0): simulated transient failures.
    pub payment_transient_failure_rate: f64,
    /// `AMQP_DECLARE_PEER_QUEUES` (default true): also declare
    /// fulfillment-service's queues, so signals wait even before it first
    /// runs. `false` where the broker's definitions are loaded beforehand
    /// and order-service's broker user may not touch those queues.
    pub declare_peer_queues: bool,
    /// `PARTITIONS` and `LEASE_TTL_MS`: how the orders are shared among
    /// the replicas on one PostgreSQL database (unused on SQLite).
    pub partitions: service_kit::partitions::Settings,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("partitions", &self.partitions)
            .field("store", &self.store)
            .field("inventory_delay", &self.inventory_delay)
            .field("payment_delay", &self.payment_delay)
            .field("poll_interval", &self.poll_interval)
            .field("payment_decline_rate", &self.payment_decline_rate)
            .field("fulfillment_deadline", &self.fulfillment_deadline)
            .field("inventory_retry", &self.inventory_retry)
            .field("payment_retry", &self.payment_retry)
            .field(
                "inventory_transient_failure_rate",
                &self.inventory_transient_failure_rate,
            )
            .field(
                "payment_transient_failure_rate",
                &self.payment_transient_failure_rate,
            )
            .field("declare_peer_queues", &self.declare_peer_queues)
            .finish()
    }
}

/// Fifteen minutes: far longer than a fulfillment takes with the default
/// step delays, short enough that a stuck order is seen the same shift.
pub const DEFAULT_FULFILLMENT_DEADLINE_MS: u64 = 15 * 60 * 1000;

impl Config {
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests need not touch the process
    /// environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |name: &str, default: &str| lookup(name).unwrap_or_else(|| default.into());
        let millis = |name: &str, default: u64| {
            service_kit::settings::millis(&lookup, name, default).map_err(|e| e.to_string())
        };
        let fraction = |name: &str| -> Result<f64, String> {
            match lookup(name) {
                None => Ok(0.0),
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(format!("{name} must be a number from 0 to 1, got {v:?}")),
                },
            }
        };
        let rate = fraction("PAYMENT_DECLINE_RATE")?;
        let policy = |prefix: &str| -> Result<RetryPolicy, String> {
            let default = RetryPolicy::default();
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            let initial_interval = millis(
                &format!("{prefix}_INITIAL_INTERVAL_MS"),
                ms(default.initial_interval),
            )?;
            let maximum_interval = millis(
                &format!("{prefix}_MAXIMUM_INTERVAL_MS"),
                ms(default.maximum_interval),
            )?;
            let name = format!("{prefix}_BACKOFF_COEFFICIENT");
            let backoff_coefficient = match lookup(&name) {
                None => default.backoff_coefficient,
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(c) if c.is_finite() && c >= 1.0 => c,
                    _ => return Err(format!("{name} must be a number of at least 1, got {v:?}")),
                },
            };
            let name = format!("{prefix}_MAXIMUM_ATTEMPTS");
            let maximum_attempts = match lookup(&name) {
                None => default.maximum_attempts,
                Some(v) => v.trim().parse::<u32>().map_err(|_| {
                    format!("{name} must be a whole number (0 for no limit), got {v:?}")
                })?,
            };
            if maximum_interval < initial_interval {
                return Err(format!(
                    "{prefix}_MAXIMUM_INTERVAL_MS must not be less than {prefix}_INITIAL_INTERVAL_MS"
                ));
            }
            Ok(RetryPolicy {
                initial_interval,
                backoff_coefficient,
                maximum_interval,
                maximum_attempts,
            })
        };
        let poll_interval = millis("POLL_INTERVAL_MS", 5000)?;
        if poll_interval.is_zero() {
            return Err("POLL_INTERVAL_MS must be at least 1".into());
        }
        let common = Common::from_lookup(
            &lookup,
            Defaults {
                service: env!("CARGO_PKG_NAME"),
                http_addr: "0.0.0.0:3232",
                store_url: "sqlite://./data/orders.db",
            },
        )
        .map_err(|e| e.to_string())?;
        let partitions =
            service_kit::partitions::Settings::from_lookup(&lookup).map_err(|e| e.to_string())?;
        Ok(Self {
            partitions,
            store: StoreLocation::parse(&common.store_url)?,
            common,
            inventory_delay: millis("INVENTORY_DELAY_MS", 1000)?,
            payment_delay: millis("PAYMENT_DELAY_MS", 1000)?,
            poll_interval,
            payment_decline_rate: rate,
            fulfillment_deadline: millis(
                "FULFILLMENT_DEADLINE_MS",
                DEFAULT_FULFILLMENT_DEADLINE_MS,
            )?,
            inventory_retry: policy("INVENTORY_RETRY")?,
            payment_retry: policy("PAYMENT_RETRY")?,
            inventory_transient_failure_rate: fraction("INVENTORY_TRANSIENT_FAILURE_RATE")?,
            payment_transient_failure_rate: fraction("PAYMENT_TRANSIENT_FAILURE_RATE")?,
            declare_peer_queues: match get("AMQP_DECLARE_PEER_QUEUES", "true")
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                other => {
                    return Err(format!(
                        "AMQP_DECLARE_PEER_QUEUES must be true or false, got {other:?}"
                    ))
                }
            },
        })
    }
}

impl AsRef<service_kit::settings::Common> for Config {
    fn as_ref(&self) -> &service_kit::settings::Common {
        &self.common
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = config(&[]).expect("defaults are valid");
        assert_eq!(c.common.http_addr, "0.0.0.0:3232");
        assert_eq!(c.common.amqp_url, DEFAULT_AMQP_URL);
        assert_eq!(
            c.store,
            StoreLocation::SqliteFile("./data/orders.db".into())
        );
        assert_eq!(c.poll_interval, Duration::from_secs(5));
        assert_eq!(c.payment_delay, Duration::from_secs(1));
        assert_eq!(c.payment_decline_rate, 0.0);
        assert_eq!(c.common.exported_as(), None);
        assert_eq!(c.fulfillment_deadline, Duration::from_secs(900));
        assert_eq!(c.payment_retry, RetryPolicy::default());
        assert_eq!(c.inventory_transient_failure_rate, 0.0);
    }

    #[test]
    fn retry_policies_come_from_their_prefix() {
        let c = config(&[
            ("PAYMENT_RETRY_INITIAL_INTERVAL_MS", "10"),
            ("PAYMENT_RETRY_BACKOFF_COEFFICIENT", "1.5"),
            ("PAYMENT_RETRY_MAXIMUM_INTERVAL_MS", "100"),
            ("PAYMENT_RETRY_MAXIMUM_ATTEMPTS", "0"),
            ("INVENTORY_TRANSIENT_FAILURE_RATE", "0.3"),
        ])
        .expect("valid");
        assert_eq!(
            c.payment_retry,
            RetryPolicy {
                initial_interval: Duration::from_millis(10),
                backoff_coefficient: 1.5,
                maximum_interval: Duration::from_millis(100),
                maximum_attempts: 0,
            }
        );
        assert_eq!(c.inventory_retry, RetryPolicy::default());
        assert_eq!(c.inventory_transient_failure_rate, 0.3);
        for bad in [
            ("INVENTORY_RETRY_BACKOFF_COEFFICIENT", "0.5"),
            ("INVENTORY_RETRY_MAXIMUM_ATTEMPTS", "-1"),
            ("INVENTORY_RETRY_MAXIMUM_INTERVAL_MS", "1"),
            ("PAYMENT_TRANSIENT_FAILURE_RATE", "1.5"),
        ] {
            let error = config(&[bad]).expect_err("rejected");
            assert!(error.contains(bad.0.trim_end_matches("_MS")), "{error}");
        }
    }

    #[test]
    fn spans_are_exported_when_an_otlp_endpoint_is_set() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]).expect("valid");
        assert_eq!(c.common.exported_as(), Some("order-service"));
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SERVICE_NAME", "orders-eu"),
        ])
        .expect("valid");
        assert_eq!(c.common.exported_as(), Some("orders-eu"));
        assert_eq!(
            config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])
                .expect("valid")
                .common
                .exported_as(),
            None
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert!(config(&[("PAYMENT_DELAY_MS", "soon")])
            .expect_err("bad")
            .contains("PAYMENT_DELAY_MS"));
        assert!(config(&[("PAYMENT_DECLINE_RATE", "2")]).is_err());
        assert!(config(&[("STORE_URL", "mysql://x")]).is_err());
    }

    #[test]
    fn the_password_never_prints() {
        let c = config(&[
            ("AMQP_URL", "amqp://user:s3cret@host:5672/%2f"),
            ("STORE_URL", "postgres://app:pg-s3cret@db:5432/orders"),
        ])
        .expect("valid");
        let printed = format!("{c:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("user:***@host"), "{printed}");
        assert_eq!(
            redact("amqp://u:s3cret@h1:5701/v,amqp://u:s3cret@h2:5702/v"),
            "amqp://u:***@h1:5701/v,amqp://u:***@h2:5702/v"
        );
        assert!(printed.contains("app:***@db:5432/orders"), "{printed}");
    }

    #[test]
    fn access_settings() {
        let c = config(&[]).expect("defaults are valid");
        assert_eq!(c.common.api_token_file, None);
        assert!(c.common.cors_allowed_origins.is_empty());
        assert!(c.declare_peer_queues);
        let c = config(&[
            ("API_TOKEN_FILE", "/run/secrets/api/tokens"),
            ("CORS_ALLOWED_ORIGINS", "https://ops.example.com/"),
            ("AMQP_DECLARE_PEER_QUEUES", "false"),
        ])
        .expect("valid");
        assert_eq!(
            c.common.api_token_file,
            Some(PathBuf::from("/run/secrets/api/tokens"))
        );
        assert_eq!(
            c.common.cors_allowed_origins,
            vec!["https://ops.example.com"]
        );
        assert!(!c.declare_peer_queues);
        assert!(config(&[("CORS_ALLOWED_ORIGINS", "*")]).is_err());
        assert!(config(&[("AMQP_DECLARE_PEER_QUEUES", "maybe")]).is_err());
        assert!(config(&[("AMQP_URL", "amqp://x"), ("AMQP_URL_FILE", "/x")]).is_err());
    }

    #[test]
    fn a_postgres_url_selects_postgres() {
        let c = config(&[("STORE_URL", "postgresql://db/orders")]).expect("valid");
        assert_eq!(
            c.store,
            StoreLocation::Postgres("postgresql://db/orders".into())
        );
    }
}

//! Typed settings from the environment (names and defaults as under
//! "Configuration" in the repository's README.md): the
//! common ones ([`service_kit::settings::Common`]) and the step delay.

use std::time::Duration;

use service_kit::settings::{self, Common, Defaults};
pub use service_kit::settings::{redact, LogFormat, SettingError as ConfigError};

/// Local defaults: the demo's port, a file store.
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:3233";
pub const DEFAULT_STORE_URL: &str = "sqlite://./data/fulfillment.db";
/// Seconds per step by default, so a person can pause and resume by hand.
pub const DEFAULT_STEP_DELAY_MS: u64 = 3_000;

#[derive(Clone, Debug)]
pub struct Config {
    /// Broker, store, HTTP, query timeout, logging, access.
    pub common: Common,
    /// `STEP_DELAY_MS`: how long each step takes.
    pub step_delay: Duration,
    /// `PARTITIONS`, `LEASE_TTL_MS`: how fulfillments are shared among
    /// replicas on PostgreSQL (unused on SQLite, which has one replica).
    pub partitions: service_kit::partitions::Settings,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `get`, so tests need not touch the process
    /// environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Defaults {
            service: env!("CARGO_PKG_NAME"),
            http_addr: DEFAULT_HTTP_ADDR,
            store_url: DEFAULT_STORE_URL,
        };
        Ok(Self {
            common: Common::from_lookup(&get, defaults)?,
            step_delay: settings::millis(&get, "STEP_DELAY_MS", DEFAULT_STEP_DELAY_MS)?,
            partitions: service_kit::partitions::Settings::from_lookup(&get)?,
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

    #[test]
    fn the_replica_is_named_by_replica_id_or_host_and_process() {
        let pid = std::process::id();
        let c = Config::from_lookup(|n| (n == "HOSTNAME").then(|| "fulfillment-7c9d".into()))
            .expect("defaults");
        assert_eq!(c.common.replica_id, format!("fulfillment-7c9d-{pid}"));
        let c = Config::from_lookup(|_| None).expect("defaults");
        assert!(
            c.common.replica_id.ends_with(&format!("-{pid}")),
            "{}",
            c.common.replica_id
        );
        let c =
            Config::from_lookup(|n| (n == "REPLICA_ID").then(|| " eu-1 ".into())).expect("valid");
        assert_eq!(c.common.replica_id, "eu-1");
        for bad in ["two words", &"x".repeat(201)] {
            let err = Config::from_lookup(|n| (n == "REPLICA_ID").then(|| bad.to_owned()))
                .expect_err("not a queue name part");
            assert!(err.to_string().contains("REPLICA_ID"), "{err}");
        }
    }

    #[test]
    fn a_missing_secret_file_is_named() {
        let err = Config::from_lookup(|n| (n == "STORE_URL_FILE").then(|| "/nonexistent".into()))
            .expect_err("missing file");
        assert!(err.to_string().contains("STORE_URL_FILE"), "{err}");
    }

    #[test]
    fn defaults_apply_and_the_password_never_prints() {
        let config = Config::from_lookup(|_| None).expect("defaults");
        assert_eq!(config.common.http_addr, "0.0.0.0:3233");
        assert_eq!(config.step_delay, Duration::from_secs(3));
        let printed = format!("{config:?}");
        assert!(!printed.contains("guest:guest"), "{printed}");
        assert!(printed.contains("guest:***@127.0.0.1"), "{printed}");
        let pg = Config::from_lookup(|n| {
            (n == "STORE_URL").then(|| "postgres://app:pg-s3cret@db/fulfillment".into())
        })
        .expect("a postgres store");
        let printed = format!("{pg:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        let cluster = redact("amqp://app:s3cret@rabbit-0:5672/v,amqp://app:s3cret@rabbit-1:5672/v");
        assert_eq!(
            cluster,
            "amqp://app:***@rabbit-0:5672/v,amqp://app:***@rabbit-1:5672/v"
        );
        assert_eq!(config.common.exported_as(), None);
    }

    #[test]
    fn spans_are_exported_when_an_otlp_endpoint_is_set() {
        let endpoint =
            |n: &str| (n == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4318".into());
        let config = Config::from_lookup(endpoint).expect("valid");
        assert_eq!(config.common.exported_as(), Some("fulfillment-service"));
        let named = Config::from_lookup(|n| match n {
            "OTEL_SERVICE_NAME" => Some("fulfillment-eu".into()),
            other => endpoint(other),
        })
        .expect("valid");
        assert_eq!(named.common.exported_as(), Some("fulfillment-eu"));
    }

    #[test]
    fn bad_numbers_are_named() {
        let err = Config::from_lookup(|n| (n == "STEP_DELAY_MS").then(|| "soon".into()))
            .expect_err("not a number");
        assert!(err.to_string().contains("STEP_DELAY_MS"), "{err}");
        let zero = Config::from_lookup(|n| (n == "STEP_DELAY_MS").then(|| "0".into()))
            .expect("zero is allowed");
        assert_eq!(zero.step_delay, Duration::ZERO);
    }
}

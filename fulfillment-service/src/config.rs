//! Typed settings from the environment (names as in DESIGN.md).

use std::time::Duration;

/// Local defaults: a broker on loopback, the demo's port, a file store.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:3233";
pub const DEFAULT_STORE_URL: &str = "sqlite://./data/fulfillment.db";
/// Seconds per step by default, so a person can pause and resume by hand.
pub const DEFAULT_STEP_DELAY_MS: u64 = 3_000;
pub const DEFAULT_QUERY_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone)]
pub struct Config {
    /// Holds the broker password: never printed (see `Debug`).
    pub amqp_url: String,
    pub http_addr: String,
    pub store_url: String,
    pub step_delay: Duration,
    pub query_timeout: Duration,
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?} is not valid: {reason}")]
pub struct ConfigError {
    name: &'static str,
    value: String,
    reason: String,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `get`, so tests need not touch the process
    /// environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = |name: &str, default: &str| get(name).unwrap_or_else(|| default.to_owned());
        let millis = |name: &'static str, default: u64| -> Result<Duration, ConfigError> {
            match get(name) {
                None => Ok(Duration::from_millis(default)),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Duration::from_millis)
                    .map_err(|e| ConfigError {
                        name,
                        value: v,
                        reason: format!("{e}; expected a whole number of milliseconds"),
                    }),
            }
        };
        let log_format = match get("LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("") | Some("pretty") | Some("text") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError {
                    name: "LOG_FORMAT",
                    value: other.to_owned(),
                    reason: "expected json or pretty".into(),
                })
            }
        };
        Ok(Self {
            amqp_url: text("AMQP_URL", DEFAULT_AMQP_URL),
            http_addr: text("HTTP_ADDR", DEFAULT_HTTP_ADDR),
            store_url: text("STORE_URL", DEFAULT_STORE_URL),
            step_delay: millis("STEP_DELAY_MS", DEFAULT_STEP_DELAY_MS)?,
            query_timeout: millis("QUERY_TIMEOUT_MS", DEFAULT_QUERY_TIMEOUT_MS)?,
            log_format,
        })
    }

    /// The broker URL with the password replaced, for logs.
    pub fn amqp_url_redacted(&self) -> String {
        redact(&self.amqp_url)
    }

    /// The store URL with any password replaced, for logs.
    pub fn store_url_redacted(&self) -> String {
        redact(&self.store_url)
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("amqp_url", &self.amqp_url_redacted())
            .field("http_addr", &self.http_addr)
            .field("store_url", &self.store_url_redacted())
            .field("step_delay", &self.step_delay)
            .field("query_timeout", &self.query_timeout)
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// `amqp://user:secret@host` -> `amqp://user:***@host`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_the_password_never_prints() {
        let config = Config::from_lookup(|_| None).expect("defaults");
        assert_eq!(config.http_addr, "0.0.0.0:3233");
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

//! Typed settings from the environment (names as in DESIGN.md).

use std::path::PathBuf;
use std::time::Duration;

/// Local defaults: a broker on loopback, the demo's port, a file store.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:3233";
pub const DEFAULT_STORE_URL: &str = "sqlite://./data/fulfillment.db";
/// Seconds per step by default, so a person can pause and resume by hand.
pub const DEFAULT_STEP_DELAY_MS: u64 = 3_000;
pub const DEFAULT_QUERY_TIMEOUT_MS: u64 = 5_000;
/// Longest `REPLICA_ID`: the queue name it goes into may have 255 bytes.
const MAX_REPLICA_ID_LEN: usize = 200;

pub use shared_messages::telemetry::LogFormat;

#[derive(Clone)]
pub struct Config {
    /// Holds the broker password: never printed (see `Debug`).
    pub amqp_url: String,
    pub http_addr: String,
    pub store_url: String,
    pub step_delay: Duration,
    pub query_timeout: Duration,
    pub log_format: LogFormat,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: when set, spans are exported there
    /// over OTLP/HTTP (the exporter reads it, and the other standard
    /// `OTEL_EXPORTER_OTLP_*` and `OTEL_BSP_*` variables, itself).
    pub otlp_endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`: the name exported spans carry.
    pub service_name: String,
    /// `API_TOKEN_FILE`: bearer tokens with their roles; `None` runs the
    /// HTTP API open (local development).
    pub api_token_file: Option<PathBuf>,
    /// `CORS_ALLOWED_ORIGINS`: other origins whose pages may call the API.
    pub cors_allowed_origins: Vec<String>,
    /// `REPLICA_ID`: this replica's name, unique among the replicas on one
    /// broker; its query queue is `fulfillment.queries.<REPLICA_ID>`. By
    /// default the host name and the process id (`<host>-<pid>`), so
    /// processes on one host never share a name.
    pub replica_id: String,
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
        // Secrets may come from files (`AMQP_URL_FILE`, `STORE_URL_FILE`).
        let secret = |name: &'static str, default: &str| {
            service_kit::settings::value_or_file(&get, name)
                .map(|v| v.unwrap_or_else(|| default.to_owned()))
                .map_err(|reason| ConfigError {
                    name,
                    value: String::new(),
                    reason,
                })
        };
        let cors_allowed_origins =
            service_kit::cors::parse_origins(&get("CORS_ALLOWED_ORIGINS").unwrap_or_default())
                .map_err(|reason| ConfigError {
                    name: "CORS_ALLOWED_ORIGINS",
                    value: get("CORS_ALLOWED_ORIGINS").unwrap_or_default(),
                    reason,
                })?;
        let replica_id = match get("REPLICA_ID").map(|v| v.trim().to_owned()) {
            Some(id) if !id.is_empty() => {
                if id.len() > MAX_REPLICA_ID_LEN || id.chars().any(|c| !c.is_ascii_graphic()) {
                    return Err(ConfigError {
                        name: "REPLICA_ID",
                        value: id,
                        reason: format!(
                            "expected at most {MAX_REPLICA_ID_LEN} printable ASCII characters without spaces"
                        ),
                    });
                }
                id
            }
            _ => default_replica_id(&get),
        };
        Ok(Self {
            amqp_url: secret("AMQP_URL", DEFAULT_AMQP_URL)?,
            http_addr: text("HTTP_ADDR", DEFAULT_HTTP_ADDR),
            store_url: secret("STORE_URL", DEFAULT_STORE_URL)?,
            step_delay: millis("STEP_DELAY_MS", DEFAULT_STEP_DELAY_MS)?,
            query_timeout: millis("QUERY_TIMEOUT_MS", DEFAULT_QUERY_TIMEOUT_MS)?,
            log_format,
            otlp_endpoint: get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()),
            service_name: get("OTEL_SERVICE_NAME")
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| env!("CARGO_PKG_NAME").into()),
            api_token_file: get("API_TOKEN_FILE")
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            cors_allowed_origins,
            replica_id,
        })
    }

    /// The name spans are exported under, when they are exported.
    pub fn exported_as(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_ref()
            .map(|_| self.service_name.as_str())
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
            .field("otlp_endpoint", &self.otlp_endpoint.as_deref().map(redact))
            .field("service_name", &self.service_name)
            .field("api_token_file", &self.api_token_file)
            .field("cors_allowed_origins", &self.cors_allowed_origins)
            .field("replica_id", &self.replica_id)
            .finish()
    }
}

/// `<host>-<pid>`: the host name from `HOSTNAME` (a pod's name on
/// Kubernetes) or the kernel, so it is unique on one host as well.
fn default_replica_id(get: &impl Fn(&str) -> Option<String>) -> String {
    let host = get("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "local".into());
    format!("{host}-{}", std::process::id())
}

/// `amqp://user:secret@host` -> `amqp://user:***@host`.
pub fn redact(url: &str) -> String {
    // AMQP_URL may list several nodes: each one's password goes.
    if url.contains(',') {
        return url.split(',').map(redact).collect::<Vec<_>>().join(",");
    }
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
    fn access_settings() {
        let c = Config::from_lookup(|_| None).expect("defaults");
        assert_eq!(c.api_token_file, None);
        assert!(c.cors_allowed_origins.is_empty());
        let c = Config::from_lookup(|n| match n {
            "API_TOKEN_FILE" => Some("/run/secrets/api/tokens".into()),
            "CORS_ALLOWED_ORIGINS" => Some("https://ops.example.com".into()),
            _ => None,
        })
        .expect("valid");
        assert_eq!(
            c.api_token_file,
            Some(PathBuf::from("/run/secrets/api/tokens"))
        );
        assert_eq!(c.cors_allowed_origins, vec!["https://ops.example.com"]);
        let err = Config::from_lookup(|n| (n == "STORE_URL_FILE").then(|| "/nonexistent".into()))
            .expect_err("missing file");
        assert!(err.to_string().contains("STORE_URL_FILE"), "{err}");
    }
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
        let cluster = redact("amqp://app:s3cret@rabbit-0:5672/v,amqp://app:s3cret@rabbit-1:5672/v");
        assert_eq!(
            cluster,
            "amqp://app:***@rabbit-0:5672/v,amqp://app:***@rabbit-1:5672/v"
        );
        assert_eq!(config.exported_as(), None);
    }

    #[test]
    fn spans_are_exported_when_an_otlp_endpoint_is_set() {
        let endpoint =
            |n: &str| (n == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4318".into());
        let config = Config::from_lookup(endpoint).expect("valid");
        assert_eq!(config.exported_as(), Some("fulfillment-service"));
        let named = Config::from_lookup(|n| match n {
            "OTEL_SERVICE_NAME" => Some("fulfillment-eu".into()),
            other => endpoint(other),
        })
        .expect("valid");
        assert_eq!(named.exported_as(), Some("fulfillment-eu"));
    }

    #[test]
    fn the_replica_is_named_by_replica_id_or_host_and_process() {
        let pid = std::process::id();
        let c = Config::from_lookup(|n| (n == "HOSTNAME").then(|| "fulfillment-7c9d".into()))
            .expect("defaults");
        assert_eq!(c.replica_id, format!("fulfillment-7c9d-{pid}"));
        let c = Config::from_lookup(|_| None).expect("defaults");
        assert!(
            c.replica_id.ends_with(&format!("-{pid}")),
            "{}",
            c.replica_id
        );
        let c =
            Config::from_lookup(|n| (n == "REPLICA_ID").then(|| " eu-1 ".into())).expect("valid");
        assert_eq!(c.replica_id, "eu-1");
        for bad in ["two words", &"x".repeat(201)] {
            let err = Config::from_lookup(|n| (n == "REPLICA_ID").then(|| bad.to_owned()))
                .expect_err("not a queue name part");
            assert!(err.to_string().contains("REPLICA_ID"), "{err}");
        }
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

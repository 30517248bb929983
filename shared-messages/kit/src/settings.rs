//! The settings both services read alike ([`Common`]: broker, store, HTTP,
//! query timeout, logging, span export, access), and helpers: secrets from
//! files, durations in milliseconds, URLs with the password redacted.
//!
//! Kubernetes and compose mount secrets as files; an environment variable
//! shows up in `ps e`, crash dumps and `kubectl describe`. Each secret
//! setting `NAME` may therefore be given as `NAME_FILE`, a path whose
//! content (trimmed) is the value.

use std::path::PathBuf;
use std::time::Duration;

pub use message_bus::telemetry::LogFormat;

/// A setting that is not valid, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is not valid: {reason}")]
pub struct SettingError {
    pub name: String,
    /// Empty for secrets.
    pub value: String,
    pub reason: String,
}

impl SettingError {
    fn new(name: &str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// The local broker (RabbitMQ's default user on loopback).
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// How long a request to the other service waits for its answer.
pub const DEFAULT_QUERY_TIMEOUT_MS: u64 = 5_000;

/// What differs between the services' defaults.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// The name spans are exported under unless `OTEL_SERVICE_NAME` says.
    pub service: &'static str,
    pub http_addr: &'static str,
    pub store_url: &'static str,
}

/// The settings every service has.
#[derive(Clone)]
pub struct Common {
    /// `AMQP_URL` (or `AMQP_URL_FILE`): holds the broker password, never
    /// printed (see `Debug`).
    pub amqp_url: String,
    /// `STORE_URL` (or `STORE_URL_FILE`): may hold a password.
    pub store_url: String,
    /// `HTTP_ADDR`.
    pub http_addr: String,
    /// `QUERY_TIMEOUT_MS` (5000, at least 1): how long a request to the
    /// other service waits for its answer.
    pub query_timeout: Duration,
    /// `RUST_LOG` (`info`).
    pub log_filter: String,
    /// `LOG_FORMAT`: `pretty` (or `text`, the default) or `json`.
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
    /// `REPLICA_ID`: this replica's name, unique among the replicas of a
    /// service on one broker (fulfillment-service's query queue is
    /// `fulfillment.queries.<REPLICA_ID>`). By default the host name and
    /// the process id (`<host>-<pid>`), so processes on one host never
    /// share a name.
    pub replica_id: String,
}

/// Longest `REPLICA_ID`: the queue name it goes into may have 255 bytes.
const MAX_REPLICA_ID_LEN: usize = 200;

impl Common {
    /// Reads the common settings through `lookup` (the environment, or a
    /// map in tests).
    pub fn from_lookup(
        lookup: &impl Fn(&str) -> Option<String>,
        defaults: Defaults,
    ) -> Result<Self, SettingError> {
        let secret = |name: &str, default: &str| {
            value_or_file(lookup, name)
                .map(|v| v.unwrap_or_else(|| default.to_owned()))
                .map_err(|reason| SettingError::new(name, "", reason))
        };
        let trimmed = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let log_format = match lookup("LOG_FORMAT").map(|v| v.trim().to_ascii_lowercase()) {
            None => LogFormat::Pretty,
            Some(v) => match v.as_str() {
                "" | "pretty" | "text" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                _ => {
                    return Err(SettingError::new(
                        "LOG_FORMAT",
                        &v,
                        "expected json or pretty",
                    ))
                }
            },
        };
        let query_timeout = millis(lookup, "QUERY_TIMEOUT_MS", DEFAULT_QUERY_TIMEOUT_MS)?;
        if query_timeout.is_zero() {
            return Err(SettingError::new(
                "QUERY_TIMEOUT_MS",
                "0",
                "must be at least 1",
            ));
        }
        let origins = lookup("CORS_ALLOWED_ORIGINS").unwrap_or_default();
        let cors_allowed_origins = crate::cors::parse_origins(&origins)
            .map_err(|reason| SettingError::new("CORS_ALLOWED_ORIGINS", &origins, reason))?;
        let replica_id = match trimmed("REPLICA_ID") {
            Some(id) if id.len() > MAX_REPLICA_ID_LEN || id.chars().any(|c| !c.is_ascii_graphic()) => {
                return Err(SettingError::new(
                    "REPLICA_ID",
                    &id,
                    format!("expected at most {MAX_REPLICA_ID_LEN} printable ASCII characters without spaces"),
                ))
            }
            Some(id) => id,
            None => default_replica_id(lookup),
        };
        Ok(Self {
            amqp_url: secret("AMQP_URL", DEFAULT_AMQP_URL)?,
            store_url: secret("STORE_URL", defaults.store_url)?,
            http_addr: lookup("HTTP_ADDR").unwrap_or_else(|| defaults.http_addr.into()),
            query_timeout,
            log_filter: lookup("RUST_LOG").unwrap_or_else(|| "info".into()),
            log_format,
            otlp_endpoint: trimmed("OTEL_EXPORTER_OTLP_ENDPOINT"),
            service_name: trimmed("OTEL_SERVICE_NAME").unwrap_or_else(|| defaults.service.into()),
            api_token_file: trimmed("API_TOKEN_FILE").map(PathBuf::from),
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
}

impl std::fmt::Debug for Common {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Common")
            .field("amqp_url", &redact(&self.amqp_url))
            .field("store_url", &redact(&self.store_url))
            .field("http_addr", &self.http_addr)
            .field("query_timeout", &self.query_timeout)
            .field("log_filter", &self.log_filter)
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
fn default_replica_id(lookup: &impl Fn(&str) -> Option<String>) -> String {
    let host = lookup("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "local".into());
    format!("{host}-{}", std::process::id())
}

/// The setting `name`, a whole number of milliseconds, or `default`.
pub fn millis(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
) -> Result<Duration, SettingError> {
    match lookup(name) {
        None => Ok(Duration::from_millis(default)),
        Some(v) => v.trim().parse().map(Duration::from_millis).map_err(|e| {
            SettingError::new(
                name,
                &v,
                format!("{e}; expected a whole number of milliseconds"),
            )
        }),
    }
}

/// `amqp://user:secret@host` -> `amqp://user:***@host`; each node of a
/// comma-separated list.
pub fn redact(url: &str) -> String {
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

/// The value of `name`, or the content of the file `name_FILE` names.
/// Setting both is an error (which one would win is a guess). `lookup`
/// reads the environment (a map in tests).
pub fn value_or_file(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<String>, String> {
    let file_var = format!("{name}_FILE");
    match (lookup(name), lookup(&file_var)) {
        (Some(_), Some(_)) => Err(format!("set {name} or {file_var}, not both")),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => {
            let path = path.trim();
            let content = std::fs::read_to_string(path)
                .map_err(|e| format!("{file_var}: cannot read {path}: {e}"))?;
            let value = content.trim();
            if value.is_empty() {
                return Err(format!("{file_var}: {path} is empty"));
            }
            Ok(Some(value.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).into(), v.clone())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_file_gives_the_value_trimmed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("amqp-url");
        std::fs::write(&path, "amqp://u:p@mq/%2f\n").expect("write");
        let env = lookup(&[("AMQP_URL_FILE", path.display().to_string())]);
        assert_eq!(
            value_or_file(&env, "AMQP_URL"),
            Ok(Some("amqp://u:p@mq/%2f".into()))
        );
        let env = lookup(&[("AMQP_URL", "amqp://direct".into())]);
        assert_eq!(
            value_or_file(&env, "AMQP_URL"),
            Ok(Some("amqp://direct".into()))
        );
        assert_eq!(value_or_file(&lookup(&[]), "AMQP_URL"), Ok(None));
    }

    const DEFAULTS: Defaults = Defaults {
        service: "t-service",
        http_addr: "0.0.0.0:1",
        store_url: "sqlite://./data/t.db",
    };

    #[test]
    fn common_defaults_and_the_password_never_prints() {
        let c = Common::from_lookup(&lookup(&[]), DEFAULTS).expect("defaults");
        assert_eq!(
            (
                c.http_addr.as_str(),
                c.amqp_url.as_str(),
                c.store_url.as_str()
            ),
            ("0.0.0.0:1", DEFAULT_AMQP_URL, "sqlite://./data/t.db")
        );
        assert_eq!(c.query_timeout, Duration::from_secs(5));
        assert_eq!(c.exported_as(), None);
        let c = Common::from_lookup(
            &lookup(&[
                (
                    "AMQP_URL",
                    "amqp://u:s3cret@h1:5701/v,amqp://u:s3cret@h2:5702/v".into(),
                ),
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "http://collector:4318".into(),
                ),
                ("LOG_FORMAT", "JSON".into()),
            ]),
            DEFAULTS,
        )
        .expect("valid");
        let printed = format!("{c:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("amqp://u:***@h1:5701/v,amqp://u:***@h2:5702/v"));
        assert_eq!(c.exported_as(), Some("t-service"));
        assert_eq!(c.log_format, LogFormat::Json);
        for (name, value) in [
            ("QUERY_TIMEOUT_MS", "0"),
            ("QUERY_TIMEOUT_MS", "soon"),
            ("LOG_FORMAT", "xml"),
            ("CORS_ALLOWED_ORIGINS", "*"),
        ] {
            let error = Common::from_lookup(&lookup(&[(name, value.into())]), DEFAULTS)
                .expect_err("rejected");
            assert_eq!(error.name, name);
        }
    }

    #[test]
    fn both_or_a_missing_file_is_an_error() {
        let env = lookup(&[
            ("AMQP_URL", "amqp://x".into()),
            ("AMQP_URL_FILE", "/x".into()),
        ]);
        assert!(value_or_file(&env, "AMQP_URL")
            .expect_err("both")
            .contains("not both"));
        let env = lookup(&[("STORE_URL_FILE", "/nonexistent/secret".into())]);
        assert!(value_or_file(&env, "STORE_URL")
            .expect_err("missing")
            .contains("STORE_URL_FILE"));
    }
}

//! `PARTITIONS` and `LEASE_TTL_MS`.

use std::time::Duration;

use crate::settings::{millis, SettingError};

/// Partitions when `PARTITIONS` is not set: more than the replicas a
/// service will run, few enough that a replica's share moves quickly.
pub const DEFAULT_PARTITIONS: u16 = 16;
/// The most `PARTITIONS` may be: every replica renews each of its leases
/// every tick, in one statement.
pub const MAX_PARTITIONS: u16 = 1024;
/// `LEASE_TTL_MS` when not set: after a crash, the survivors take the
/// partitions within this (plus a tick), well inside the 15 s promised.
pub const DEFAULT_LEASE_TTL_MS: u64 = 10_000;
/// The shortest lease: a tick of a third of it must still leave room for
/// a round trip to the database.
pub const MIN_LEASE_TTL_MS: u64 = 300;
/// The longest lease: a crashed replica's partitions wait this long.
pub const MAX_LEASE_TTL_MS: u64 = 600_000;

/// How a service partitions its workflows among its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `PARTITIONS` (16, 1..=1024): the same on every replica of a service,
    /// and never changed while one runs ([`partition_of`](super::partition_of)
    /// depends on it).
    pub partitions: u16,
    /// `LEASE_TTL_MS` (10000, 300..=600000): how long a lease lasts
    /// without renewal; renewed every third of it.
    pub lease_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            partitions: DEFAULT_PARTITIONS,
            lease_ttl: Duration::from_millis(DEFAULT_LEASE_TTL_MS),
        }
    }
}

impl Settings {
    /// Reads `PARTITIONS` and `LEASE_TTL_MS` through `lookup` (the
    /// environment, or a map in tests).
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        let partitions = match lookup("PARTITIONS") {
            None => DEFAULT_PARTITIONS,
            Some(value) => value
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|n| (1..=MAX_PARTITIONS).contains(n))
                .ok_or_else(|| SettingError {
                    name: "PARTITIONS".into(),
                    value: value.clone(),
                    reason: format!(
                        "expected a whole number from 1 to {MAX_PARTITIONS}, the same on every replica"
                    ),
                })?,
        };
        let lease_ttl = millis(lookup, "LEASE_TTL_MS", DEFAULT_LEASE_TTL_MS)?;
        let ttl_ms = lease_ttl.as_millis();
        if !(u128::from(MIN_LEASE_TTL_MS)..=u128::from(MAX_LEASE_TTL_MS)).contains(&ttl_ms) {
            return Err(SettingError {
                name: "LEASE_TTL_MS".into(),
                value: ttl_ms.to_string(),
                reason: format!(
                    "expected from {MIN_LEASE_TTL_MS} to {MAX_LEASE_TTL_MS} milliseconds"
                ),
            });
        }
        Ok(Self {
            partitions,
            lease_ttl,
        })
    }

    /// How often leases are renewed (and replicas heartbeat, and balance
    /// is looked at): a third of the lease, so two renewals may fail
    /// before one runs out.
    pub fn renew_every(&self) -> Duration {
        self.lease_ttl / 3
    }

    /// The lease in whole milliseconds, as the SQL takes it.
    pub(crate) fn ttl_ms(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<Settings, SettingError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(&|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_and_values() {
        let s = read(&[]).expect("defaults");
        assert_eq!(s, Settings::default());
        assert_eq!((s.partitions, s.lease_ttl), (16, Duration::from_secs(10)));
        assert_eq!(s.renew_every(), Duration::from_secs(10) / 3);
        let s = read(&[("PARTITIONS", " 1024 "), ("LEASE_TTL_MS", "300")]).expect("valid");
        assert_eq!(
            (s.partitions, s.lease_ttl),
            (1024, Duration::from_millis(300))
        );
        assert_eq!(read(&[("PARTITIONS", "1")]).expect("one").partitions, 1);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("PARTITIONS", "0"),
            ("PARTITIONS", "1025"),
            ("PARTITIONS", "-1"),
            ("PARTITIONS", "many"),
            ("LEASE_TTL_MS", "299"),
            ("LEASE_TTL_MS", "600001"),
            ("LEASE_TTL_MS", "10s"),
        ] {
            let error = read(&[(name, value)]).expect_err(value);
            assert_eq!(error.name, name, "{error}");
            assert!(error.to_string().starts_with(name), "{error}");
        }
    }
}

//! PostgreSQL databases of a test's own, on the local server.
//!
//! `scripts/postgres.sh` makes sure the server runs (127.0.0.1:5432, the
//! `postgres` user trusted on loopback). Each [`TestDatabase`] is a fresh
//! database, dropped (with any connection still open) on drop. Created with
//! `psql`, which comes with the server, so tests need no client library.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The server, without a database name (`TEST_POSTGRES_URL` overrides).
pub fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn admin(sql: &str) -> Result<()> {
    let url = format!("{}/postgres", postgres_base());
    let output = Command::new("psql")
        .args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .stdin(Stdio::null())
        .output()
        .context("running psql: is PostgreSQL installed? (scripts/postgres.sh)")?;
    if !output.status.success() {
        bail!(
            "psql {sql:?} against {url}: {} (is PostgreSQL running? scripts/postgres.sh)",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A fresh database, dropped on drop.
pub struct TestDatabase {
    pub name: String,
    /// `postgres://.../<name>`, for `STORE_URL`.
    pub url: String,
}

impl TestDatabase {
    pub fn create(label: &str) -> Result<Self> {
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("test_{label}_{}", uuid::Uuid::new_v4().simple());
        admin(&format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            url: format!("{}/{name}", postgres_base()),
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

//! Statements run on a [`TestDatabase`], for tests that set a store up by
//! hand (e.g. a row the service cannot read). Run with `psql`, like the
//! database's creation.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::TestDatabase;

impl TestDatabase {
    /// Runs `sql` on this database.
    pub fn execute(&self, sql: &str) -> Result<()> {
        let output = Command::new("psql")
            .args([self.url.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
            .stdin(Stdio::null())
            .output()
            .context("running psql: is PostgreSQL installed? (scripts/postgres.sh)")?;
        if !output.status.success() {
            bail!(
                "psql {sql:?} on {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

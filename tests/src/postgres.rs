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

/// A PostgreSQL server of a test's own: a fresh cluster (`initdb`) in a
/// temporary directory, on a free port of 127.0.0.1, with TLS on and the
/// given server certificate; stopped and removed on drop. Run as the
/// `postgres` OS user when the test runs as root (the server refuses
/// root). Every local TCP connection is trusted; the database `postgres`
/// and the user `postgres` exist.
pub struct PrivatePostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
}

impl PrivatePostgres {
    /// Starts a server with `ssl = on`, presenting `cert` and `key` (PEM).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Result<Self> {
        let bin = postgres_bin()?;
        let dir = tempfile::tempdir()?;
        let port = crate::free_port();
        let server = Self { port, dir, bin };
        std::fs::copy(cert, server.path("server.pem"))?;
        std::fs::copy(key, server.path("server.key"))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |m| std::fs::Permissions::from_mode(m);
            std::fs::set_permissions(server.dir.path(), mode(0o700))?;
            std::fs::set_permissions(server.path("server.key"), mode(0o600))?;
        }
        if as_root() {
            server.run("chown", &["-R", "postgres:postgres", &server.display("")])?;
        }
        server.run_pg(
            "initdb",
            &[
                "-D",
                &server.display("data"),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{dir}'\n\
             ssl = on\nssl_cert_file = '{dir}/server.pem'\nssl_key_file = '{dir}/server.key'\n\
             fsync = off\nmax_connections = 20\nshared_buffers = 16MB\n",
            dir = server.display(""),
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(server.path("data/postgresql.conf"))?;
        std::io::Write::write_all(&mut file, conf.as_bytes())?;
        server.run_pg(
            "pg_ctl",
            &[
                "-D",
                &server.display("data"),
                "-l",
                &server.display("server.log"),
                "-w",
                "-t",
                "20",
                "start",
            ],
        )?;
        Ok(server)
    }

    /// `postgres://postgres@<host>:<port>/postgres`, for `STORE_URL`
    /// (append `?sslmode=…`).
    pub fn url(&self, host: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres", self.port)
    }

    /// The server's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn display(&self, name: &str) -> String {
        if name.is_empty() {
            self.dir.path().display().to_string()
        } else {
            self.path(name).display().to_string()
        }
    }

    /// Runs a PostgreSQL program, as the `postgres` user when root.
    fn run_pg(&self, program: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(program).display().to_string();
        if as_root() {
            let mut all = vec!["-u", "postgres", "--", program.as_str()];
            all.extend_from_slice(args);
            self.run("runuser", &all)
        } else {
            self.run(&program, args)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let output = Command::new(program)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} {args:?}: {}{} {}",
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim(),
                self.log()
            );
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.display("data");
        let _ = self.run_pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

fn as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Where the server's programs are: `TEST_POSTGRES_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn postgres_bin() -> Result<std::path::PathBuf> {
    if let Ok(bin) = std::env::var("TEST_POSTGRES_BIN") {
        return Ok(bin.into());
    }
    let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: is PostgreSQL installed? (scripts/postgres.sh)")?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no /usr/lib/postgresql/<version>/bin/initdb (scripts/postgres.sh)")
}

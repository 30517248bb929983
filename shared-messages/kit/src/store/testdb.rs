//! Test databases on the local PostgreSQL server, one per test, for the
//! tests of stores built on this kit (feature `test-support`, and the
//! kit's own tests). `TEST_POSTGRES_URL` names the server (default
//! `postgres://postgres@127.0.0.1:5432`); `scripts/postgres.sh` starts one.

use ::postgres::{Client, NoTls};

use super::schema::Schema;
use super::Postgres;

/// The server tests use, without a database name.
pub fn server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Runs `sql` on the server's database `db`, on a thread of its own (the
/// blocking client cannot run on an async runtime's thread).
pub fn admin(sql: String, db: &str) -> Result<(), String> {
    let url = format!("{}/{db}", server());
    std::thread::spawn(move || {
        let mut client = Client::connect(&url, NoTls).map_err(|e| {
            format!("cannot reach PostgreSQL at {url} ({e}): run scripts/postgres.sh")
        })?;
        client
            .batch_execute(&sql)
            .map_err(|e| format!("{sql}: {e}"))
    })
    .join()
    .map_err(|_| "the admin thread panicked".to_owned())?
}

/// The longest label a database name holds: `test_`, the label, `_` and
/// 32 hex digits in PostgreSQL's 63 bytes.
const LABEL_CHARS: usize = 63 - 5 - 1 - 32;

/// A fresh database, dropped with this value.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Creates `test_<label>_<random>` (the label cut to fit PostgreSQL's
    /// 63 bytes); panics when the server cannot be reached (a test that
    /// needs PostgreSQL fails and says why).
    pub fn create(label: &str) -> Self {
        let label: String = label.chars().take(LABEL_CHARS).collect();
        let name = format!("test_{label}_{}", uuid::Uuid::new_v4().simple());
        if let Err(e) = admin(format!("CREATE DATABASE {name}"), "postgres") {
            panic!("creating a test database: {e}");
        }
        let url = format!("{}/{name}", server());
        Self { name, url }
    }

    /// A fresh database (as [`create`](Self::create)) with `schema`
    /// migrated in, and the store on it; keep the database alive as long
    /// as the store.
    pub async fn open(label: &str, schema: &Schema) -> (Self, Postgres) {
        let db = Self::create(label);
        let store = schema
            .open_postgres(&db.url)
            .await
            .unwrap_or_else(|e| panic!("opening the test database {}: {e}", db.name));
        (db, store)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = admin(
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            "postgres",
        );
    }
}

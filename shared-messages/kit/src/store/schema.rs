//! A service's schema: its migrations for each backend (embedded from the
//! service's `migrations/sqlite` and `migrations/postgres` by
//! [`embed_schema!`](crate::embed_schema)), and the name PostgreSQL
//! migrations lock under. Opening a store is the same for every service:
//! connect, then migrate ([`Schema::open_sqlite`], [`Schema::open_postgres`]).

use std::path::Path;

use refinery::Runner;

use super::{Postgres, Sqlite, StoreError};

/// What a service's tables are made of.
pub struct Schema {
    /// Names the schema; its bytes are the advisory lock PostgreSQL
    /// migrations hold (at most 8 bytes).
    pub name: &'static str,
    /// The SQLite migrations (`migrations/sqlite`).
    pub sqlite: fn() -> Runner,
    /// The PostgreSQL migrations (`migrations/postgres`).
    pub postgres: fn() -> Runner,
}

impl Schema {
    /// Opens the SQLite database at `path` (`:memory:` for one in memory),
    /// creating it, and brings it up to date.
    pub fn open_sqlite(&self, path: &Path) -> Result<Sqlite, StoreError> {
        Sqlite::open(path, &(self.sqlite)())
    }

    /// Connects to the PostgreSQL database at `url` and brings it up to
    /// date; replicas that start together migrate one at a time.
    pub async fn open_postgres(&self, url: &str) -> Result<Postgres, StoreError> {
        Postgres::open(url, &(self.postgres)(), self.lock()).await
    }

    /// The advisory lock serialising migrations: the name's bytes read as
    /// one number (`"orders"` is `0x6f72_6465_7273`), so each schema has
    /// its own and it stays the same from one release to the next.
    pub const fn lock(&self) -> i64 {
        let bytes = self.name.as_bytes();
        assert!(bytes.len() <= 8, "a schema name is at most 8 bytes");
        let mut key = 0i64;
        let mut i = 0;
        while i < bytes.len() {
            key = (key << 8) | bytes[i] as i64;
            i += 1;
        }
        key
    }
}

/// One PostgreSQL migration of both services (their `V4` and `V3`, a
/// Rust migration each that returns this), for the workflow table `table`
/// (`orders`, `fulfillments`) and the outbox:
///
/// - room on each page of `table` (`fillfactor` 70), so that a rewrite
///   of a row that changes no indexed column stays on its page without
///   touching the indexes (a HOT update); and lz4 for its `state`, which
///   PostgreSQL compresses once a row passes about 2 KB (an order's is
///   about 2.7 KB of JSON), several times faster than the default pglz (a
///   server built without lz4 keeps pglz);
/// - the outbox's claims on indexes: the relay reads the rows its process
///   holds by `(claimed_by, seq)`, and sweeps those nobody holds by
///   `claimed_until`, which is `-infinity` for a row without a claim.
///   Between two passes of autovacuum the outbox is mostly deleted rows,
///   so both reads walk an index, never the table
///   ([`outbox`](super::outbox)).
pub fn outbox_claims_and_room_for(table: &str) -> String {
    format!(
        "ALTER TABLE {table} SET (fillfactor = 70);
         DO $$
         BEGIN
             ALTER TABLE {table} ALTER COLUMN state SET COMPRESSION lz4;
         EXCEPTION WHEN OTHERS THEN
             RAISE NOTICE '{table}.state keeps the default compression: %', SQLERRM;
         END
         $$;
         UPDATE outbox SET claimed_until = '-infinity' WHERE claimed_until IS NULL;
         ALTER TABLE outbox ALTER COLUMN claimed_until SET DEFAULT '-infinity';
         ALTER TABLE outbox ALTER COLUMN claimed_until SET NOT NULL;
         CREATE INDEX outbox_claimed_by ON outbox (claimed_by, seq);
         CREATE INDEX outbox_claimed_until ON outbox (claimed_until);"
    )
}

/// The outbox table as each service's first migration (`V1`) created it
/// on PostgreSQL, appended to that migration's own tables. Refinery keeps
/// the checksum of every migration it applied and refuses a database
/// whose migrations have changed since, so this renders the bytes each
/// service's migration was released with: `pad` is the width its column
/// names were aligned to (0: one space after each name).
pub fn first_outbox_postgres(pad: usize) -> String {
    first_outbox(
        &[
            ("seq", "BIGSERIAL PRIMARY KEY"),
            ("exchange", "TEXT NOT NULL"),
            ("routing_key", "TEXT NOT NULL"),
            ("mandatory", "BOOLEAN NOT NULL"),
            ("envelope", "BYTEA NOT NULL"),
            ("created_at", "TIMESTAMPTZ NOT NULL DEFAULT now()"),
            ("claimed_by", "TEXT"),
            ("claimed_until", "TIMESTAMPTZ"),
        ],
        pad,
    )
}

/// The outbox table of each service's first migration on SQLite, as
/// [`first_outbox_postgres`]; `created_at` says whether the table had
/// that column from the start (fulfillment-service's gained it later).
pub fn first_outbox_sqlite(pad: usize, created_at: bool) -> String {
    let columns = [
        ("seq", "INTEGER PRIMARY KEY AUTOINCREMENT"),
        ("exchange", "TEXT NOT NULL"),
        ("routing_key", "TEXT NOT NULL"),
        ("mandatory", "INTEGER NOT NULL"),
        ("envelope", "BLOB NOT NULL"),
        ("created_at", "TEXT NOT NULL"),
    ];
    let kept = if created_at { 6 } else { 5 };
    first_outbox(&columns[..kept], pad)
}

/// `CREATE TABLE outbox` with one column a line, as the first migrations
/// laid it out.
fn first_outbox(columns: &[(&str, &str)], pad: usize) -> String {
    let lines: Vec<String> = columns
        .iter()
        .map(|(name, kind)| format!("        {name:<pad$} {kind}"))
        .collect();
    format!("    CREATE TABLE outbox (\n{}\n    );\n", lines.join(",\n"))
}

/// Embeds the calling crate's `migrations/sqlite` and
/// `migrations/postgres` and names them `SCHEMA`, a
/// [`Schema`](crate::store::schema::Schema) called `$name`:
/// `service_kit::embed_schema!("orders");`. The crate depends on
/// `refinery`, whose macro reads the files at build time. Its tests check
/// the migrations against `migrations/released.lock`
/// ([`migrations_are_as_released`](crate::store::testing::migrations_are_as_released)).
#[macro_export]
macro_rules! embed_schema {
    ($name:literal) => {
        mod embedded_migrations {
            pub mod sqlite {
                refinery::embed_migrations!("migrations/sqlite");
            }
            pub mod postgres {
                refinery::embed_migrations!("migrations/postgres");
            }
        }

        /// The schema, from `migrations/`.
        const SCHEMA: $crate::store::schema::Schema = $crate::store::schema::Schema {
            name: $name,
            sqlite: embedded_migrations::sqlite::migrations::runner,
            postgres: embedded_migrations::postgres::migrations::runner,
        };

        /// The migrations embedded are the ones released, by checksum
        /// (`migrations/released.lock`).
        #[cfg(test)]
        #[test]
        fn migrations_are_as_released() {
            $crate::store::testing::migrations_are_as_released(
                &SCHEMA,
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/migrations/released.lock"
                )),
            );
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &'static str) -> Schema {
        Schema {
            name,
            sqlite: || Runner::new(&[]),
            postgres: || Runner::new(&[]),
        }
    }

    /// The locks the services held before the key came from the name.
    #[test]
    fn the_lock_is_the_name_read_as_a_number() {
        assert_eq!(named("orders").lock(), 0x6f72_6465_7273);
        assert_eq!(named("fulfill").lock(), 0x66_756c_6669_6c6c);
    }
}

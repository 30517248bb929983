//! Schema migrations by refinery, on SQLite and PostgreSQL.
//!
//! Each service keeps one folder of migrations per backend
//! (`migrations/sqlite`, `migrations/postgres`: `V<n>__<name>.sql`, or
//! `V<n>__<name>.rs` returning SQL the kit writes for both services, as
//! [`outbox_claims_and_room_for`](super::schema::outbox_claims_and_room_for);
//! append, never edit) and embeds them with `refinery::embed_migrations!`;
//! refinery records what ran in `refinery_schema_history`.
//!
//! Databases migrated before refinery recorded their versions elsewhere:
//! a `schema_migrations (version, ..)` table, or SQLite's
//! `PRAGMA user_version` (the number of migrations run). Such a database is
//! taken over: the versions it records are entered in refinery's table as
//! applied (with the checksums of today's files, which hold the same SQL),
//! and only later versions run.

use chrono::{SecondsFormat, Utc};
use refinery::{Migration, Runner};
use rusqlite::{Connection, OptionalExtension};

use super::StoreError;

/// refinery's own record of applied migrations (its default name).
const HISTORY: &str = "refinery_schema_history";

fn failed(error: refinery::Error) -> StoreError {
    StoreError::Open(format!("migrating the schema: {error}"))
}

/// The statements that record `versions` as applied, for a database
/// migrated before refinery.
fn takeover_sql(migrations: &Runner, versions: &[i64]) -> Result<Vec<String>, StoreError> {
    let applied_on = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut sql = vec![format!(
        "CREATE TABLE {HISTORY} (version INT4 PRIMARY KEY, name VARCHAR(255),
             applied_on VARCHAR(255), checksum VARCHAR(255))"
    )];
    for version in versions {
        let migration: &Migration = migrations
            .get_migrations()
            .iter()
            .find(|m| i64::from(m.version()) == *version)
            .ok_or_else(|| {
                StoreError::Open(format!(
                    "the database records schema version {version}, which this build does not know"
                ))
            })?;
        sql.push(format!(
            "INSERT INTO {HISTORY} (version, name, applied_on, checksum) VALUES ({}, '{}', '{applied_on}', '{}')",
            migration.version(),
            migration.name().replace('\'', "''"),
            migration.checksum()
        ));
    }
    Ok(sql)
}

/// Brings a SQLite database up to date.
pub fn sqlite(conn: &mut Connection, migrations: &Runner) -> Result<(), StoreError> {
    let has = |conn: &Connection, table: &str| -> Result<bool, rusqlite::Error> {
        conn.query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |_| Ok(()),
        )
        .optional()
        .map(|found| found.is_some())
    };
    if !has(conn, HISTORY)? {
        let versions: Vec<i64> = if has(conn, "schema_migrations")? {
            let mut stmt =
                conn.prepare("SELECT version FROM schema_migrations ORDER BY version")?;
            let versions = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            versions
        } else {
            let done: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            (1..=done).collect()
        };
        if !versions.is_empty() {
            let tx = conn.transaction()?;
            for statement in takeover_sql(migrations, &versions)? {
                tx.execute_batch(&statement)?;
            }
            tx.commit()?;
            tracing::info!(?versions, "store schema history taken over by refinery");
        }
    }
    let report = migrations.run(conn).map_err(failed)?;
    for migration in report.applied_migrations() {
        tracing::info!(
            version = migration.version(),
            name = migration.name(),
            "store schema migrated"
        );
    }
    Ok(())
}

/// Brings a PostgreSQL database up to date, holding the advisory lock
/// `lock` (replicas starting together migrate one at a time).
pub async fn postgres(
    client: &mut tokio_postgres::Client,
    migrations: &Runner,
    lock: i64,
) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&lock])
        .await?;
    let result = postgres_locked(client, migrations).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&lock])
        .await?;
    result
}

async fn postgres_locked(
    client: &mut tokio_postgres::Client,
    migrations: &Runner,
) -> Result<(), StoreError> {
    let row = client
        .query_one(
            &format!(
                "SELECT to_regclass('{HISTORY}') IS NOT NULL, to_regclass('schema_migrations') IS NOT NULL"
            ),
            &[],
        )
        .await?;
    let (has_history, has_legacy): (bool, bool) = (row.get(0), row.get(1));
    if !has_history && has_legacy {
        let versions: Vec<i64> = client
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let tx = client.transaction().await?;
        for statement in takeover_sql(migrations, &versions)? {
            tx.batch_execute(&statement).await?;
        }
        tx.commit().await?;
        tracing::info!(?versions, "store schema history taken over by refinery");
    }
    let report = migrations.run_async(client).await.map_err(failed)?;
    for migration in report.applied_migrations() {
        tracing::info!(
            version = migration.version(),
            name = migration.name(),
            "store schema migrated"
        );
    }
    Ok(())
}

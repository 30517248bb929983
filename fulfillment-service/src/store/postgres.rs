//! The PostgreSQL store, for state that several replicas share.
//!
//! The same tables and the same promises as [`super::sqlite`]: a
//! fulfillment's state and the events it causes are written in one
//! transaction. Calls are async, on the service kit's connection pool
//! ([`Postgres`], the store itself, opened by
//! [`SCHEMA`](super::SCHEMA)`.open_postgres`); the outbox (claims, leases,
//! quarantine) is the kit's. Schema: `migrations/postgres`.

use async_trait::async_trait;
use service_kit::store::entities::Entities;
use service_kit::store::postgres::{pipeline, prepared, Statement};
use service_kit::store::{history, outbox, Postgres};
use shared_messages::messages::FulfillmentStatus;

use chrono::{DateTime, Utc};
use shared_messages::history::HistoryEvent;

use super::{Store, StoreError, Unfinished, Write};
use crate::workflow::{Entry, Fulfillment, Tombstone};

fn parse(id: &str, json: &str) -> Result<Fulfillment, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

fn time(id: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt {
            id: id.to_owned(),
            reason: format!("time {text:?}: {e}"),
        })
}

/// A fulfillment's row, inserted or updated.
const UPSERT: &str =
    "INSERT INTO fulfillments (id, order_id, status, finished, state, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6::text::timestamptz, $7::text::timestamptz)
     ON CONFLICT (id) DO UPDATE SET status = excluded.status,
         finished = excluded.finished, state = excluded.state,
         updated_at = excluded.updated_at";
/// One history entry, numbered after the last of its fulfillment.
const APPEND_HISTORY: &str = "INSERT INTO history (workflow_id, seq, kind, at, message_id, detail)
     VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM history WHERE workflow_id = $1),
             $2, $3, $4, $5)";
const CLEAR_TOMBSTONE: &str = "DELETE FROM tombstones WHERE id = $1";

/// Appends history entries of `id`, numbered after its last one, as
/// statements of the caller's pipeline (`append`: [`APPEND_HISTORY`]).
fn append_history<'a>(
    into: &mut Vec<Statement<'a>>,
    tx: &'a tokio_postgres::Transaction<'_>,
    append: &'a tokio_postgres::Statement,
    id: &'a str,
    entries: &'a [Entry],
) {
    for e in entries {
        into.push(Box::pin(async move {
            let c = history::columns(&e.at, e.message_id, &e.detail);
            tx.execute(append, &[&id, &e.kind, &c.at, &c.message_id, &c.detail])
                .await?;
            Ok(())
        }));
    }
}

fn states(rows: Vec<tokio_postgres::Row>) -> Vec<Fulfillment> {
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: &str = r.get(0);
        match parse(id, r.get(1)) {
            Ok(state) => out.push(state),
            // One bad row must not hide every other (see /quarantine).
            Err(error) => {
                tracing::warn!(fulfillment_id = %id, %error, "unreadable row left out of a list");
            }
        }
    }
    out
}

#[async_trait]
impl Store for Postgres {
    async fn load(&self, id: &str) -> Result<Option<Fulfillment>, StoreError> {
        self.read_state("fulfillments", id, parse).await
    }

    async fn save_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let [upsert, insert_outbox, append, clear_tombstone] = prepared(
            &tx,
            [
                UPSERT,
                outbox::INSERT_POSTGRES,
                APPEND_HISTORY,
                CLEAR_TOMBSTONE,
            ],
        )
        .await?;
        // Every statement of the batch in one pipeline (sent together,
        // answered in order), not one round trip each.
        let mut statements: Vec<Statement<'_>> = Vec::new();
        for Write {
            state,
            events,
            history,
            clears_tombstone,
        } in writes
        {
            let json = serde_json::to_string(state).map_err(|e| StoreError::Corrupt {
                id: state.id.clone(),
                reason: e.to_string(),
            })?;
            let (tx, upsert) = (&*tx, &upsert);
            statements.push(Box::pin(async move {
                tx.execute(
                    upsert,
                    &[
                        &state.id,
                        &state.order_id,
                        &state.status.as_str(),
                        &state.status.is_final(),
                        &json,
                        &state.created_at.to_rfc3339(),
                        &state.updated_at.to_rfc3339(),
                    ],
                )
                .await?;
                Ok(())
            }));
            outbox::insert_pipelined(&mut statements, tx, &insert_outbox, events);
            append_history(&mut statements, tx, &append, &state.id, history);
            if *clears_tombstone {
                let clear_tombstone = &clear_tombstone;
                statements.push(Box::pin(async move {
                    tx.execute(clear_tombstone, &[&state.id]).await?;
                    Ok(())
                }));
            }
        }
        // With several replicas: only the owner of these fulfillments
        // commits (checked beside the pipeline).
        let ids: Vec<&str> = writes.iter().map(|w| w.state.id.as_str()).collect();
        futures::try_join!(pipeline(statements), self.check_writes(&tx, &ids))?;
        tx.commit().await?;
        Ok(())
    }

    async fn unfinished(&self) -> Result<Unfinished, StoreError> {
        self.read_unfinished("fulfillments", parse).await
    }

    async fn put_tombstone(
        &self,
        tombstone: &Tombstone,
        history: &[Entry],
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let added = tx
            .execute(
                "INSERT INTO tombstones (id, reason, message_id, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO NOTHING",
                &[
                    &tombstone.id,
                    &tombstone.reason,
                    &tombstone.message_id.to_string(),
                    &tombstone.at.to_rfc3339(),
                ],
            )
            .await?
            == 1;
        if added {
            let [append] = prepared(&tx, [APPEND_HISTORY]).await?;
            let mut statements = Vec::new();
            append_history(&mut statements, &tx, &append, &tombstone.id, history);
            pipeline(statements).await?;
        }
        self.check_writes(&tx, &[tombstone.id.as_str()]).await?;
        tx.commit().await?;
        Ok(added)
    }

    async fn tombstone(&self, id: &str) -> Result<Option<Tombstone>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT reason, message_id, created_at FROM tombstones WHERE id = $1",
                &[&id],
            )
            .await?;
        row.map(|r| {
            Ok(Tombstone {
                id: id.to_owned(),
                reason: r.get(0),
                message_id: r
                    .get::<_, &str>(1)
                    .parse()
                    .map_err(|e| StoreError::Corrupt {
                        id: id.to_owned(),
                        reason: format!("tombstone message id: {e}"),
                    })?,
                at: time(id, r.get(2))?,
            })
        })
        .transpose()
    }

    async fn history(&self, id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        let client = self.client().await?;
        history::read_postgres(&**client, "history", "workflow_id", id).await
    }

    async fn list(
        &self,
        status: Option<FulfillmentStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Fulfillment>, StoreError> {
        let status = status.map(|s| s.as_str().to_owned());
        let (limit, offset) = (i64::from(limit), i64::from(offset));
        let client = self.client().await?;
        Ok(states(
            client
                .query(
                    "SELECT id, state FROM fulfillments WHERE ($1::text IS NULL OR status = $1)
                     ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
                    &[&status, &limit, &offset],
                )
                .await?,
        ))
    }

    async fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.count_statuses("fulfillments").await
    }
}

#[cfg(test)]
use service_kit::store::testdb;

#[cfg(test)]
mod tests {
    use super::testdb::TestDb;
    use super::*;
    use crate::store::tests::{self, now, request};
    use crate::store::{OnDatabase, SCHEMA};
    use crate::workflow::{create, Input};

    #[tokio::test]
    async fn state_and_events_are_stored_together_and_survive_reopen() {
        let db = TestDb::create("fulfillment_store");
        {
            let store = SCHEMA.open_postgres(&db.url).await.expect("open");
            tests::save_three_transitions(&store).await;
        }
        let store = SCHEMA
            .open_postgres(&db.url)
            .await
            .expect("reopen migrates idempotently");
        let pending = tests::reads_back_three_transitions(&store).await;
        let other = SCHEMA.open_postgres(&db.url).await.expect("second replica");
        service_kit::store::testing::another_replica_takes_no_claimed_rows(&other).await;
        tests::removes_what_was_sent(&store, &pending).await;
    }

    service_kit::store_checks!(
        |name| TestDb::open(name, &SCHEMA) => tests:
        history_tombstones_and_quarantine,
        creating_twice_stores_one_row,
    );

    #[tokio::test]
    async fn an_undecodable_outbox_row_is_quarantined_and_the_rest_go_out() {
        let (db, store) = TestDb::open("fulfillment_outbox_quarantine", &SCHEMA).await;
        service_kit::store::testing::store_undecodable_outbox_row_postgres(&db)
            .expect("a garbage row");
        tests::an_undecodable_outbox_row_is_quarantined(&store).await;
    }

    /// A database the previous migration runner made (its
    /// `schema_migrations` table) is taken over: it opens and keeps its
    /// fulfillments.
    #[tokio::test]
    async fn a_database_of_the_previous_migration_runner_is_taken_over() {
        let db = TestDb::create("fulfillment_takeover");
        let d = create("f-1", &Input::Start(request(1)), now());
        let state = d.state.expect("created");
        super::testdb::admin(
            format!(
                "{}{}
                CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
                INSERT INTO schema_migrations (version) VALUES (1), (2);
                INSERT INTO fulfillments (id, order_id, status, finished, state, created_at, updated_at)
                VALUES ('f-1', 'ORD-1', '{}', false, '{}', '{}', '{}');",
                include_str!("../../migrations/postgres/V1__fulfillments_outbox.sql"),
                include_str!("../../migrations/postgres/V2__history_tombstones_quarantine.sql"),
                state.status.as_str(),
                serde_json::to_string(&state).expect("json"),
                state.created_at.to_rfc3339(),
                state.updated_at.to_rfc3339(),
            ),
            &db.name,
        )
        .expect("the old schema");
        let store = SCHEMA.open_postgres(&db.url).await.expect("taken over");
        assert_eq!(store.load("f-1").await.expect("load"), Some(state.clone()));
        store
            .save(&state, &d.messages)
            .await
            .expect("a save with events");
        assert_eq!(
            store.outbox_len().await.expect("count"),
            d.messages.len() as u64
        );
    }
}

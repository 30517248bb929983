//! The PostgreSQL store, for state that several replicas share.
//!
//! The same tables and the same promises as [`super::sqlite`]: a
//! fulfillment's state and the events it causes are written in one
//! transaction. Calls are async, on the service kit's connection pool
//! ([`Postgres`], the store itself, opened by
//! [`SCHEMA`](super::SCHEMA)`.open_postgres`); the outbox (claims, leases,
//! quarantine) is the kit's. Schema: `migrations/postgres`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use service_kit::store::entities::{Entities, StateRow, StateRows};
use service_kit::store::postgres::{execute, pipeline, prepared, Statement};
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

/// The fulfillments' rows of a transaction, one array per column and one
/// row per fulfillment, inserted or updated.
const UPSERT: &str =
    "INSERT INTO fulfillments (id, order_id, status, finished, state, created_at, updated_at)
     SELECT u.id, u.order_id, u.status, u.finished, u.state,
            (u.created_at)::timestamptz, (u.updated_at)::timestamptz
     FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[])
         AS u(id, order_id, status, finished, state, created_at, updated_at)
     ON CONFLICT (id) DO UPDATE SET status = excluded.status,
         finished = excluded.finished, state = excluded.state,
         updated_at = excluded.updated_at";
/// The history entries of a transaction, one array per column: each
/// fulfillment's entries numbered after its last stored one, in the order
/// of the arrays.
const APPEND_HISTORY: &str = "INSERT INTO history (workflow_id, seq, kind, at, message_id, detail)
     SELECT u.workflow_id,
            COALESCE((SELECT MAX(h.seq) FROM history h WHERE h.workflow_id = u.workflow_id), 0)
                + row_number() OVER (PARTITION BY u.workflow_id ORDER BY u.n),
            u.kind, u.at, u.message_id, u.detail
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY
         AS u(workflow_id, kind, at, message_id, detail, n)";
const CLEAR_TOMBSTONES: &str = "DELETE FROM tombstones WHERE id = ANY($1)";
const INSERT_TOMBSTONE: &str =
    "INSERT INTO tombstones (id, reason, message_id, created_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT (id) DO NOTHING";

/// Appends `entries` (each with its fulfillment's id), numbered after the
/// last of their fulfillment in the order given, as one statement of the
/// caller's pipeline (`append`: [`APPEND_HISTORY`]); none when there are
/// no entries.
fn append_history<'a>(
    into: &mut Vec<Statement<'a>>,
    tx: &'a tokio_postgres::Transaction<'_>,
    append: &'a tokio_postgres::Statement,
    entries: impl IntoIterator<Item = (&'a str, &'a Entry)>,
) {
    let (mut ids, mut kinds, mut ats, mut message_ids, mut details) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, e) in entries {
        let c = history::columns(&e.at, e.message_id, &e.detail);
        ids.push(id);
        kinds.push(e.kind);
        ats.push(c.at);
        message_ids.push(c.message_id);
        details.push(c.detail);
    }
    if ids.is_empty() {
        return;
    }
    into.push(Box::pin(async move {
        execute(tx, append, vec![&ids, &kinds, &ats, &message_ids, &details]).await
    }));
}

/// The last state of each fulfillment `writes` write, by id: each write
/// carries the whole state, and one statement may write a row only once.
/// In id order, so that transactions lock rows in one order.
fn last_states(writes: &[Write]) -> BTreeMap<&str, &Fulfillment> {
    writes
        .iter()
        .map(|w| (w.state.id.as_str(), &w.state))
        .collect()
}

/// The rows of `states` as the arrays [`UPSERT`] takes: the kit's, and
/// each fulfillment's order id.
struct Rows<'a> {
    rows: StateRows<'a>,
    order_ids: Vec<&'a str>,
}

impl<'a> Rows<'a> {
    fn of(states: &BTreeMap<&'a str, &'a Fulfillment>) -> Result<Self, StoreError> {
        let mut rows = StateRows::with_capacity(states.len());
        let mut order_ids = Vec::with_capacity(states.len());
        for (id, state) in states {
            let json = serde_json::to_string(state).map_err(|e| StoreError::Corrupt {
                id: state.id.clone(),
                reason: e.to_string(),
            })?;
            rows.push(StateRow {
                id,
                status: state.status.as_str(),
                finished: state.status.is_final(),
                state: json,
                created_at: &state.created_at,
                updated_at: &state.updated_at,
            });
            order_ids.push(state.order_id.as_str());
        }
        Ok(Self { rows, order_ids })
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
        let states = last_states(writes);
        let rows = Rows::of(&states)?;
        let mut cleared: Vec<&str> = writes
            .iter()
            .filter(|w| w.clears_tombstone)
            .map(|w| w.state.id.as_str())
            .collect();
        cleared.sort_unstable();
        cleared.dedup();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let [upsert, insert_outbox, append, clear_tombstones] = prepared(
            &tx,
            [
                UPSERT,
                outbox::INSERT_POSTGRES,
                APPEND_HISTORY,
                CLEAR_TOMBSTONES,
            ],
        )
        .await?;
        // One statement per table, whatever the batch's size, all in one
        // pipeline (sent together, answered in order).
        let mut statements: Vec<Statement<'_>> = Vec::new();
        let (t, upsert, order_ids, rows) = (&*tx, &upsert, &rows.order_ids, &rows.rows);
        statements.push(execute(
            t,
            upsert,
            vec![
                &rows.ids,
                order_ids,
                &rows.statuses,
                &rows.finished,
                &rows.states,
                &rows.created,
                &rows.updated,
            ],
        ));
        outbox::insert_pipelined(
            &mut statements,
            t,
            &insert_outbox,
            writes.iter().flat_map(|w| &w.events),
        );
        append_history(
            &mut statements,
            t,
            &append,
            writes
                .iter()
                .flat_map(|w| w.history.iter().map(|e| (w.state.id.as_str(), e))),
        );
        if !cleared.is_empty() {
            let (clear_tombstones, cleared) = (&clear_tombstones, &cleared);
            statements.push(execute(t, clear_tombstones, vec![cleared]));
        }
        // With several replicas: only the owner of these fulfillments
        // commits (checked beside the pipeline).
        futures::try_join!(pipeline(statements), self.check_writes(&tx, &rows.ids))?;
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
        let [insert, append] = prepared(&tx, [INSERT_TOMBSTONE, APPEND_HISTORY]).await?;
        let message_id = tombstone.message_id.to_string();
        let at = tombstone.at.to_rfc3339();
        let ids = [tombstone.id.as_str()];
        // The guard's check goes out beside the insert.
        let (added, ()) = futures::try_join!(
            async {
                Ok::<_, StoreError>(
                    tx.execute(
                        &insert,
                        &[&tombstone.id, &tombstone.reason, &message_id, &at],
                    )
                    .await?
                        == 1,
                )
            },
            self.check_writes(&tx, &ids)
        )?;
        if added {
            let mut statements = Vec::new();
            append_history(
                &mut statements,
                &tx,
                &append,
                history.iter().map(|e| (tombstone.id.as_str(), e)),
            );
            pipeline(statements).await?;
        }
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
        // The rows were born claimed by the process that wrote them; its
        // claims lapse as that process's do when it dies.
        super::testdb::admin(
            "UPDATE outbox SET claimed_until = now() - interval '1 second'".into(),
            &db.name,
        )
        .expect("claims lapsed");
        let store = SCHEMA
            .open_postgres(&db.url)
            .await
            .expect("reopen migrates idempotently");
        let pending = tests::reads_back_three_transitions(&store).await;
        service_kit::store::testing::has_outbox_claims_and_room_for(&store, "fulfillments").await;
        let other = SCHEMA.open_postgres(&db.url).await.expect("second replica");
        service_kit::store::testing::another_replica_takes_no_claimed_rows(&other).await;
        tests::removes_what_was_sent(&store, &pending).await;
    }

    service_kit::store_checks!(
        |name| TestDb::open(name, &SCHEMA) => tests:
        history_tombstones_and_quarantine,
        creating_twice_stores_one_row,
        one_batch_with_two_writes_of_a_fulfillment,
        a_batch_of_many_fulfillments_is_stored_whole,
        random_batches_store_what_writes_one_at_a_time_would,
        an_undecodable_outbox_row_is_quarantined,
    );

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
                "{}
                CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
                INSERT INTO schema_migrations (version) VALUES (1), (2);
                INSERT INTO fulfillments (id, order_id, status, finished, state, created_at, updated_at)
                VALUES ('f-1', 'ORD-1', '{}', false, '{}', '{}', '{}');",
                service_kit::store::testing::migrations_up_to(SCHEMA.postgres, 2),
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

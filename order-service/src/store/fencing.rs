//! Every write transaction of the PostgreSQL store checks the fences of
//! the orders it writes (`Postgres::check_writes`), so a replica that no
//! longer owns an order writes nothing of it: here with a guard that
//! refuses one order, the way the partition leases refuse the orders of a
//! partition another replica holds.

use std::sync::Arc;

use chrono::Utc;
use futures::future::{BoxFuture, FutureExt};
use service_kit::partitions::{Fence, Fenced};
use service_kit::store::testdb::TestDb;
use service_kit::store::WriteGuard;

use super::{Store, StoreError, Write, SCHEMA};
use crate::validation::demo_order;
use crate::workflow::{OrderState, OrderStatus};

/// Refuses every write that names `refused`.
struct Refuse(&'static str);

impl WriteGuard for Refuse {
    fn check<'a>(
        &'a self,
        _tx: &'a service_kit::store::postgres::Transaction<'_>,
        entity_ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let refused = entity_ids.contains(&self.0);
        async move {
            if refused {
                return Err(StoreError::Fenced(Fenced {
                    replica: "replica-a".into(),
                    fence: Fence {
                        partition: 3,
                        epoch: 1,
                    },
                    epoch: Some(2),
                    owner: Some("replica-b".into()),
                }));
            }
            Ok(())
        }
        .boxed()
    }
}

fn write(state: &OrderState, insert: bool) -> Write {
    Write {
        state: state.clone(),
        insert,
        outbox: Vec::new(),
        events: Vec::new(),
    }
}

#[tokio::test]
async fn a_write_of_an_order_this_replica_does_not_own_is_refused_and_leaves_nothing() {
    let (_db, s) = TestDb::open("orders_fenced", &SCHEMA).await;
    s.guard_writes(Arc::new(Refuse("ORD-2"))).expect("guard");
    let mine = OrderState::new("ORD-1", demo_order(), Utc::now());
    let theirs = OrderState::new("ORD-2", demo_order(), Utc::now());

    s.insert(&mine, &[]).await.expect("an order of its own");
    assert!(matches!(
        s.insert(&theirs, &[]).await,
        Err(StoreError::Fenced(_))
    ));
    assert_eq!(s.get("ORD-2").await.expect("get"), None, "nothing inserted");

    let mut moved = mine.clone();
    moved.status = OrderStatus::InventoryReserved;
    assert!(
        matches!(
            s.save_all(&[write(&moved, false), write(&theirs, true)])
                .await,
            Err(StoreError::Fenced(_))
        ),
        "one refused order refuses the whole transaction"
    );
    assert_eq!(
        s.get("ORD-1").await.expect("get").map(|o| o.status),
        Some(OrderStatus::Pending),
        "rolled back"
    );
    s.save_all(&[write(&moved, false)])
        .await
        .expect("its own alone");
    let mut stored = s.get("ORD-1").await.expect("get").expect("stored");
    assert_eq!(stored.status, OrderStatus::InventoryReserved);

    stored.order_id = "ORD-2".into();
    assert!(matches!(
        s.save(&stored, &[], &[]).await,
        Err(StoreError::Fenced(_))
    ));
}

//! The orders over an in-memory store and a bus that never connects, with
//! activities a minute long, so nothing moves during a unit test.

use std::sync::Arc;
use std::time::Duration;

use message_bus::outbox::OutboxSignal;
use message_bus::{Bus, BusConfig};

use super::{Orders, Timings};
use crate::config::StoreLocation;
use crate::store::{SqliteStore, Store};

pub(crate) fn orders() -> Orders {
    let store = Arc::new(SqliteStore::open(&StoreLocation::SqliteMemory).expect("memory store"));
    let bus = Bus::new(BusConfig::new(
        "amqp://127.0.0.1:1/%2f",
        "order-service-test",
        shared_messages::topology::order_service(),
    ));
    let timings = Timings {
        inventory_delay: Duration::from_secs(60),
        payment_delay: Duration::from_secs(60),
        poll_interval: Duration::from_secs(60),
        query_timeout: Duration::from_millis(100),
        payment_decline_rate: 0.0,
        ..Timings::default()
    };
    Orders::new(
        actix::Arbiter::current(),
        store as Arc<dyn Store>,
        bus,
        OutboxSignal::new(),
        timings,
    )
    .expect("the store writer starts")
}

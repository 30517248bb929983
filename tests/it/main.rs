//! System and integration tests: the real broker, the real binaries.
//!
//! Every test makes its own vhost, so the suite runs in parallel and beside
//! a running system. Run with `./scripts/test.sh`, which starts RabbitMQ
//! first when it is not running.

mod bus;
mod bus_partitions;
mod chaos;
mod contract;
mod durability;
mod fulfillment;
mod fulfillment_saga;
mod ha;
mod harness;
mod operations;
mod orders;
mod saga;
mod scale;
mod security;
mod shutdown;

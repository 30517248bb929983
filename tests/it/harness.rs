//! The harness itself: services on ports the OS picks, clients that follow
//! a restarted service, PostgreSQL stores on request.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use shared_messages::messages::FulfillmentStatus;
use system_tests::{eventually, TestSystem, TestVhost};

fn direct_fulfillment(order_id: &str) -> serde_json::Value {
    json!({
        "orderId": order_id,
        "customerId": "cust-1",
        "items": [{"productId": "product-1", "productName": "Thing", "quantity": 1, "price": 1.0}],
        "shippingAddress": {"street": "1 Main St", "city": "Town", "state": "CA", "zipCode": "90210", "country": "USA"}
    })
}

#[tokio::test]
async fn a_client_follows_its_service_across_a_restart() -> Result<()> {
    let mut system = TestSystem::builder("harness-restart")
        .fulfillment(&[("STEP_DELAY_MS", "60000")])
        .start()
        .await?;
    let api = system.fulfillment();
    let order = format!("ORD-{}", uuid::Uuid::new_v4().simple());
    let created = api.create(&direct_fulfillment(&order)).await?;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["fulfillmentWorkflowId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let service = system.fulfillment_service_mut();
    service.kill().await?;
    assert!(
        api.healthz().await.is_err(),
        "a killed service answers nothing"
    );
    service.restart().await?;
    service.wait_ready().await?;

    // The client made before the restart reaches the new process, which
    // recovered the fulfillment from its store.
    assert_eq!(api.healthz().await?.status, 200);
    let status = api.status_of(&id).await?;
    assert!(
        status.is_some_and(|s| s.status != FulfillmentStatus::Shipped),
        "the fulfillment is back, still in its first step"
    );
    Ok(())
}

#[tokio::test]
async fn a_postgres_system_stores_in_databases_of_its_own() -> Result<()> {
    let system = TestSystem::builder("harness-pg")
        .postgres()
        .fulfillment(&[("STEP_DELAY_MS", "0")])
        .start()
        .await?;
    let store = system
        .fulfillment_service()
        .env
        .iter()
        .find(|(k, _)| k == "STORE_URL")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(store.starts_with("postgres://"), "{store}");
    let order = format!("ORD-{}", uuid::Uuid::new_v4().simple());
    let created = system
        .fulfillment()
        .create(&direct_fulfillment(&order))
        .await?;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = format!("fulfillment-{order}");
    let database = system
        .database("fulfillment-service")
        .context("fulfillment-service's database")?;
    database.execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM fulfillments WHERE id = '{id}') \
         THEN RAISE EXCEPTION 'no row for {id}'; END IF; END $$"
    ))?;
    Ok(())
}

#[tokio::test]
async fn a_system_on_a_given_broker_runs_there_and_makes_no_vhost() -> Result<()> {
    let vhost = TestVhost::create("harness-broker").await?;
    let system = TestSystem::builder("harness-broker")
        .broker(&vhost.amqp_url)
        .fulfillment(&[])
        .start()
        .await?;
    assert!(system.vhost.is_none());
    assert_eq!(system.fulfillment().readyz().await?.status, 200);
    // It consumes its queues on the given vhost (the management API's
    // consumer count lags: read until it agrees).
    eventually(
        "fulfillment-service consuming on the given vhost",
        Duration::from_secs(15),
        || async {
            let signals = vhost
                .queue_info(shared_messages::topology::FULFILLMENT_SIGNALS_QUEUE)
                .await?;
            Ok((signals["consumers"].as_u64() >= Some(1)).then_some(()))
        },
    )
    .await?;
    Ok(())
}

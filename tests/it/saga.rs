//! The order saga across both services, with faults made on purpose:
//! cancel races, a cancel on the fulfillment's side, transient failures,
//! a lost start. Each test checks both sides and the order's history.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use shared_messages::topology::{
    FULFILLMENT_EVENTS_EXCHANGE, FULFILLMENT_SIGNALS_QUEUE, ORDER_FULFILLMENT_EVENTS_QUEUE,
};
use system_tests::api::FINAL_ORDER_STATUSES;
use system_tests::{eventually, management, TestSystem};

/// Long enough for a slow CI machine; every wait ends as soon as it holds.
const DEADLINE: Duration = Duration::from_secs(20);

/// Both services on a vhost of their own; `order_env` on top of quick
/// activities, `step_delay_ms` for the fulfillment steps.
async fn start(label: &str, order_env: &[(&str, &str)], step_delay_ms: u64) -> Result<TestSystem> {
    let delay = step_delay_ms.to_string();
    let mut env = vec![
        ("INVENTORY_DELAY_MS", "20"),
        ("PAYMENT_DELAY_MS", "20"),
        ("POLL_INTERVAL_MS", "300"),
        ("QUERY_TIMEOUT_MS", "2000"),
    ];
    env.extend_from_slice(order_env);
    TestSystem::builder(label)
        .fulfillment(&[
            ("STEP_DELAY_MS", delay.as_str()),
            ("QUERY_TIMEOUT_MS", "1000"),
        ])
        .orders(&env)
        .start()
        .await
}

/// Places the demo order; answers its workflow id.
async fn create(saga: &TestSystem) -> Result<String> {
    Ok(saga.orders().place_demo().await?.workflow_id)
}

async fn status(saga: &TestSystem, wf: &str) -> Result<Value> {
    saga.orders().status(wf).await?.expect(200)
}

/// Waits until the order is in one of `want`.
async fn wait_for(saga: &TestSystem, wf: &str, want: &[&str]) -> Result<Value> {
    saga.orders().wait_status_in(wf, want, DEADLINE).await
}

async fn wait_final(saga: &TestSystem, wf: &str) -> Result<Value> {
    wait_for(saga, wf, &FINAL_ORDER_STATUSES).await
}

async fn history(saga: &TestSystem, wf: &str) -> Result<Vec<Value>> {
    let body: Value = saga.orders().history(wf).await?.expect(200)?;
    ensure!(body["workflowId"] == wf, "{body}");
    Ok(body["events"].as_array().context("events")?.clone())
}

/// The fulfillment as fulfillment-service has it (`None` when it has none
/// by that id).
async fn fulfillment(saga: &TestSystem, id: &str) -> Result<Option<Value>> {
    let (code, body) = saga.fulfillment().status(id).await?.parts();
    match code {
        200 => Ok(Some(body)),
        404 => Ok(None),
        _ => anyhow::bail!("fulfillment {id}: {code} {body}"),
    }
}

fn count(history: &[Value], kind: &str) -> usize {
    history.iter().filter(|e| e["type"] == kind).count()
}

/// What must hold for every final order, read from its status, its
/// history and its fulfillment: at most one charge; a refund only if
/// charged and only if the goods did not ship; shipped means the order is
/// SHIPPED; a cancelled order's fulfillment (if any) is cancelled.
async fn check_consistent(saga: &TestSystem, wf: &str) -> Result<Value> {
    let order = wait_final(saga, wf).await?;
    let history = history(saga, wf).await?;
    let seqs: Vec<u64> = history.iter().filter_map(|e| e["seq"].as_u64()).collect();
    ensure!(
        seqs == (1..=history.len() as u64).collect::<Vec<_>>(),
        "history of {wf} numbered 1..n: {seqs:?}"
    );
    let charged = count(&history, "PaymentCharged");
    let refunded = count(&history, "PaymentRefunded");
    ensure!(charged <= 1, "{wf} charged {charged} times");
    ensure!(refunded <= charged, "{wf} refunded without a charge");
    let status = order["status"].as_str().unwrap_or_default();
    let fulfillment = match order["fulfillmentWorkflowId"].as_str() {
        Some(id) => fulfillment(saga, id).await?,
        None => None,
    };
    let fulfillment_status = fulfillment
        .as_ref()
        .and_then(|f| f["status"].as_str())
        .map(str::to_owned);
    match status {
        "SHIPPED" => {
            ensure!(refunded == 0, "{wf} shipped and refunded");
            ensure!(
                fulfillment_status.as_deref() == Some("SHIPPED"),
                "{wf} SHIPPED, its fulfillment {fulfillment_status:?}"
            );
        }
        "CANCELLED" => {
            ensure!(
                refunded == charged,
                "{wf} cancelled: charged {charged}, refunded {refunded}: {history:?}"
            );
            ensure!(
                matches!(fulfillment_status.as_deref(), None | Some("CANCELLED")),
                "{wf} CANCELLED, its fulfillment {fulfillment_status:?}"
            );
        }
        _ => {}
    }
    Ok(order)
}

#[tokio::test]
async fn a_cancel_after_the_goods_shipped_is_refused_and_nothing_is_refunded() -> Result<()> {
    // Polls far apart: the order learns of SHIPPED only when it asks.
    let saga = start("saga-race", &[("POLL_INTERVAL_MS", "120000")], 100).await?;
    let wf = create(&saga).await?;
    let order = wait_for(&saga, &wf, &["FULFILLMENT_IN_PROGRESS"]).await?;
    let fid = order["fulfillmentWorkflowId"]
        .as_str()
        .context("fulfillment id")?
        .to_owned();
    // The SHIPPED event will not reach the order.
    let removed = management::unbind(
        saga.vhost(),
        FULFILLMENT_EVENTS_EXCHANGE,
        ORDER_FULFILLMENT_EVENTS_QUEUE,
    )
    .await?;
    ensure!(removed >= 1, "the events binding was there");
    eventually("the fulfillment to ship", DEADLINE, || async {
        Ok(fulfillment(&saga, &fid)
            .await?
            .filter(|f| f["status"] == "SHIPPED"))
    })
    .await?;
    let before = status(&saga, &wf).await?;
    assert_eq!(before["status"], "FULFILLMENT_IN_PROGRESS", "{before}");

    let (code, body) = saga.orders().cancel(&wf, Some("too late")).await?.parts();
    assert_eq!(code, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("shipped")),
        "{body}"
    );
    let order = check_consistent(&saga, &wf).await?;
    assert_eq!(order["status"], "SHIPPED", "{order}");
    assert!(order["cancelRefused"].is_string(), "{order}");
    assert!(order["trackingNumber"].is_string(), "{order}");
    let history = history(&saga, &wf).await?;
    assert_eq!(count(&history, "PaymentRefunded"), 0, "{history:?}");
    assert_eq!(count(&history, "StockReleased"), 0, "{history:?}");
    assert_eq!(count(&history, "CancelRequested"), 1, "{history:?}");
    assert_eq!(count(&history, "CancelRefused"), 1, "{history:?}");
    Ok(())
}

#[tokio::test]
async fn a_cancel_in_each_status_ends_the_same_on_both_sides() -> Result<()> {
    // Activities slow enough to catch each status.
    let saga = start(
        "saga-cancel-each",
        &[("INVENTORY_DELAY_MS", "400"), ("PAYMENT_DELAY_MS", "400")],
        200,
    )
    .await?;
    for at in [
        "PENDING",
        "PAYMENT_PROCESSING",
        "FULFILLMENT_STARTED",
        "FULFILLMENT_IN_PROGRESS",
    ] {
        let wf = create(&saga).await?;
        let reached = wait_for(&saga, &wf, &[at, "FULFILLMENT_IN_PROGRESS", "SHIPPED"]).await?;
        let (code, body) = saga
            .orders()
            .cancel(&wf, Some(&format!("cancelled at {at}")))
            .await?
            .parts();
        let order = check_consistent(&saga, &wf).await?;
        let history = history(&saga, &wf).await?;
        match order["status"].as_str() {
            Some("CANCELLED") => {
                assert!([200, 202].contains(&code), "{at}: {code} {body}");
                assert_eq!(
                    order["cancellationReason"],
                    format!("cancelled at {at}"),
                    "{order}"
                );
                assert_eq!(count(&history, "CancelRequested"), 1, "{at}: {history:?}");
                let handed_over = reached["fulfillmentWorkflowId"].is_string();
                if handed_over {
                    // compensated only after the fulfillment confirmed
                    let confirmed = history
                        .iter()
                        .position(|e| e["type"] == "FulfillmentCancelled")
                        .context("FulfillmentCancelled in the history")?;
                    let refunded = history
                        .iter()
                        .position(|e| e["type"] == "PaymentRefunded")
                        .context("PaymentRefunded in the history")?;
                    assert!(confirmed < refunded, "{at}: {history:?}");
                }
            }
            // the goods left before the cancel was asked or decided
            Some("SHIPPED") => assert_eq!(code, 409, "{at}: {body}"),
            other => panic!("{at}: the order ended {other:?}: {order}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_fulfillment_cancelled_on_its_side_cancels_and_refunds_the_order_once() -> Result<()> {
    let saga = start("saga-direct", &[], 300).await?;
    let wf = create(&saga).await?;
    let order = wait_for(&saga, &wf, &["FULFILLMENT_IN_PROGRESS"]).await?;
    let fid = order["fulfillmentWorkflowId"]
        .as_str()
        .context("fulfillment id")?
        .to_owned();
    let (code, body) = saga
        .fulfillment()
        .cancel(&fid, "warehouse flooded")
        .await?
        .parts();
    assert!((200..300).contains(&code), "{code} {body}");
    let order = check_consistent(&saga, &wf).await?;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(order["cancellationReason"], "warehouse flooded", "{order}");
    let history = history(&saga, &wf).await?;
    assert_eq!(count(&history, "PaymentRefunded"), 1, "{history:?}");
    assert_eq!(count(&history, "StockReleased"), 1, "{history:?}");
    assert_eq!(count(&history, "CancelRequested"), 0, "{history:?}");
    Ok(())
}

#[tokio::test]
async fn transient_failures_are_retried_and_every_order_ships() -> Result<()> {
    let saga = start(
        "saga-retry",
        &[
            ("INVENTORY_TRANSIENT_FAILURE_RATE", "0.3"),
            ("PAYMENT_TRANSIENT_FAILURE_RATE", "0.3"),
            ("INVENTORY_RETRY_INITIAL_INTERVAL_MS", "10"),
            ("INVENTORY_RETRY_MAXIMUM_INTERVAL_MS", "50"),
            ("INVENTORY_RETRY_MAXIMUM_ATTEMPTS", "0"),
            ("PAYMENT_RETRY_INITIAL_INTERVAL_MS", "10"),
            ("PAYMENT_RETRY_MAXIMUM_INTERVAL_MS", "50"),
            ("PAYMENT_RETRY_MAXIMUM_ATTEMPTS", "0"),
        ],
        0,
    )
    .await?;
    let mut orders = Vec::new();
    for _ in 0..20 {
        orders.push(create(&saga).await?);
    }
    let mut failed_attempts = 0;
    for wf in &orders {
        let order = check_consistent(&saga, wf).await?;
        assert_eq!(order["status"], "SHIPPED", "{order}");
        let history = history(&saga, wf).await?;
        assert_eq!(count(&history, "PaymentCharged"), 1, "{history:?}");
        for attempt in history
            .iter()
            .filter(|e| e["type"] == "ActivityAttemptFailed")
        {
            assert!(attempt["detail"]["attempt"].as_u64().is_some(), "{attempt}");
            assert!(attempt["detail"]["error"].is_string(), "{attempt}");
            failed_attempts += 1;
        }
    }
    // 40 activities at a 30 % failure rate: none failing is a 1e-6 chance.
    assert!(failed_attempts > 0, "no failed attempt in any history");
    Ok(())
}

#[tokio::test]
async fn a_lost_start_is_sent_again_when_the_poll_finds_no_fulfillment() -> Result<()> {
    let mut saga = start("saga-lost-start", &[], 0).await?;
    saga.fulfillment_service_mut().kill().await?;
    let wf = create(&saga).await?;
    wait_for(&saga, &wf, &["FULFILLMENT_STARTED"]).await?;
    // The start waits in the queue; lose it.
    eventually("the start to wait in its queue", DEADLINE, || async {
        let waiting = saga.vhost().peek(FULFILLMENT_SIGNALS_QUEUE, 10).await?;
        Ok((!waiting.is_empty()).then_some(()))
    })
    .await?;
    management::purge(saga.vhost(), FULFILLMENT_SIGNALS_QUEUE).await?;
    eventually("the queue to be empty", DEADLINE, || async {
        let waiting = saga.vhost().peek(FULFILLMENT_SIGNALS_QUEUE, 10).await?;
        Ok(waiting.is_empty().then_some(()))
    })
    .await?;
    saga.fulfillment_service_mut().restart().await?;
    saga.fulfillment_service().wait_ready().await?;

    let order = check_consistent(&saga, &wf).await?;
    assert_eq!(order["status"], "SHIPPED", "{order}");
    let history = history(&saga, &wf).await?;
    let requests: Vec<&Value> = history
        .iter()
        .filter(|e| e["type"] == "FulfillmentRequested")
        .collect();
    assert!(requests.len() >= 2, "{history:?}");
    assert!(
        requests
            .iter()
            .all(|r| r["messageId"] == requests[0]["messageId"]),
        "the start is sent again with the same message id: {requests:?}"
    );
    assert_eq!(requests[1]["detail"]["resent"], true, "{requests:?}");
    Ok(())
}

#[tokio::test]
async fn histories_stay_exactly_once_across_kill_9_of_order_service() -> Result<()> {
    let mut saga = start(
        "saga-kill9",
        &[("INVENTORY_DELAY_MS", "50"), ("PAYMENT_DELAY_MS", "50")],
        30,
    )
    .await?;
    let mut orders = Vec::new();
    for round in 0..3u64 {
        for _ in 0..5 {
            orders.push(create(&saga).await?);
        }
        // somewhere in the middle of their sagas
        tokio::time::sleep(Duration::from_millis(40 + round * 70)).await;
        saga.order_service_mut().kill().await?;
        saga.order_service_mut().restart().await?;
        saga.order_service().wait_ready().await?;
    }
    for wf in &orders {
        let order = check_consistent(&saga, wf).await?;
        assert_eq!(order["status"], "SHIPPED", "{order}");
        let history = history(&saga, wf).await?;
        assert_eq!(count(&history, "OrderCreated"), 1, "{history:?}");
        assert_eq!(count(&history, "StockReserved"), 1, "{history:?}");
        assert_eq!(count(&history, "PaymentCharged"), 1, "{history:?}");
        // the status changes form one chain: none twice, none missing
        let mut at = "PENDING";
        for change in history.iter().filter(|e| e["type"] == "StatusChanged") {
            assert_eq!(change["detail"]["from"], at, "{history:?}");
            at = change["detail"]["to"].as_str().context("to")?;
        }
        assert_eq!(at, "SHIPPED", "{history:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_pending_retry_survives_a_restart() -> Result<()> {
    // Every payment attempt fails until the service comes back without
    // the failures; attempts are 300 ms apart.
    let mut saga = start(
        "saga-retry-restart",
        &[
            ("PAYMENT_TRANSIENT_FAILURE_RATE", "1"),
            ("PAYMENT_RETRY_INITIAL_INTERVAL_MS", "300"),
            ("PAYMENT_RETRY_BACKOFF_COEFFICIENT", "1"),
            ("PAYMENT_RETRY_MAXIMUM_ATTEMPTS", "0"),
        ],
        0,
    )
    .await?;
    let wf = create(&saga).await?;
    let failures = eventually("two failed payment attempts", DEADLINE, || async {
        let history = history(&saga, &wf).await?;
        Ok((count(&history, "ActivityAttemptFailed") >= 2).then_some(history))
    })
    .await?;
    let last = failures
        .iter()
        .rev()
        .find(|e| e["type"] == "ActivityAttemptFailed")
        .context("a failed attempt")?;
    assert_eq!(last["detail"]["activity"], "payment", "{last}");
    assert!(last["detail"]["nextAttemptAt"].is_string(), "{last}");
    let before = status(&saga, &wf).await?;
    assert_eq!(before["status"], "PAYMENT_PROCESSING", "{before}");

    saga.order_service_mut().kill().await?;
    saga.order_service_mut()
        .env
        .retain(|(k, _)| k != "PAYMENT_TRANSIENT_FAILURE_RATE");
    saga.order_service_mut().restart().await?;
    saga.order_service().wait_ready().await?;

    let order = check_consistent(&saga, &wf).await?;
    assert_eq!(order["status"], "SHIPPED", "{order}");
    let history = history(&saga, &wf).await?;
    let attempts: Vec<u64> = history
        .iter()
        .filter(|e| e["type"] == "ActivityAttemptFailed")
        .filter_map(|e| e["detail"]["attempt"].as_u64())
        .collect();
    let expected: Vec<u64> = (1..=attempts.len() as u64).collect();
    assert_eq!(attempts, expected, "attempts count on across the restart");
    assert_eq!(count(&history, "PaymentCharged"), 1, "{history:?}");
    Ok(())
}

#[tokio::test]
async fn an_order_past_its_fulfillment_deadline_is_marked_overdue() -> Result<()> {
    let mut saga = start("saga-deadline", &[("FULFILLMENT_DEADLINE_MS", "300")], 0).await?;
    saga.fulfillment_service_mut().kill().await?;
    let wf = create(&saga).await?;
    let order = eventually("the order to be overdue", DEADLINE, || async {
        let order = status(&saga, &wf).await?;
        Ok((order["overdue"] == true).then_some(order))
    })
    .await?;
    assert_eq!(order["status"], "FULFILLMENT_STARTED", "{order}");
    let history = history(&saga, &wf).await?;
    assert_eq!(count(&history, "FulfillmentOverdue"), 1, "{history:?}");
    let text = reqwest::get(saga.orders().url("/metrics"))
        .await?
        .text()
        .await?;
    assert!(
        text.lines()
            .any(|l| l.starts_with("order_service_overdue_orders_total ") && !l.ends_with(" 0")),
        "the overdue counter moved"
    );
    // the order still follows its fulfillment and ships when it returns
    saga.fulfillment_service_mut().restart().await?;
    saga.fulfillment_service().wait_ready().await?;
    let order = check_consistent(&saga, &wf).await?;
    assert_eq!(order["status"], "SHIPPED", "{order}");
    Ok(())
}

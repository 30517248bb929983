//! The saga's own steps up to the hand-over: the stock check, the payment,
//! their transient failures, and the automatic steps between them.

use chrono::{DateTime, Utc};

use super::{
    fail, nothing, start_signal, Decision, Draft, Effect, OrderState, OrderStatus, PendingRetry,
    RetryPolicy, StepStatus, Timer, STEP_CONFIRM, STEP_PAYMENT, STEP_RESERVE,
    STEP_START_FULFILLMENT,
};

/// The stock check answered: reservation ids, or why not.
pub(super) fn stock_checked(
    state: &OrderState,
    result: Result<Vec<String>, String>,
    now: DateTime<Utc>,
) -> Decision {
    if state.status != OrderStatus::Pending {
        return nothing();
    }
    let mut d = Draft::from(state);
    let next = &mut d.next;
    next.retry = None;
    match result {
        Ok(reservations) => {
            next.emit(
                "StockReserved",
                None,
                serde_json::json!({ "reservationIds": reservations }),
                now,
            );
            next.reservation_ids = reservations;
            next.reservation_held = true;
            next.status = OrderStatus::InventoryReserved;
            next.record(STEP_RESERVE, StepStatus::Completed, None, now);
            d.effects.push(Effect::Advance);
        }
        Err(reason) => {
            next.emit(
                "StockUnavailable",
                None,
                serde_json::json!({ "reason": reason }),
                now,
            );
            next.record(STEP_RESERVE, StepStatus::Failed, Some(reason.clone()), now);
            fail(next, reason, now);
        }
    }
    d.finish(state, now)
}

/// The payment answered: its id, or why it was declined.
pub(super) fn payment_processed(
    state: &OrderState,
    result: Result<String, String>,
    now: DateTime<Utc>,
) -> Decision {
    if state.status != OrderStatus::PaymentProcessing {
        return nothing();
    }
    let mut d = Draft::from(state);
    let next = &mut d.next;
    next.retry = None;
    match result {
        Ok(payment_id) => {
            next.emit(
                "PaymentCharged",
                None,
                serde_json::json!({
                    "paymentId": payment_id,
                    "amount": state.details.total_amount(),
                }),
                now,
            );
            next.payment_id = Some(payment_id);
            next.payment_captured = true;
            next.status = OrderStatus::PaymentConfirmed;
            next.record(STEP_PAYMENT, StepStatus::Completed, None, now);
            d.effects.push(Effect::Advance);
        }
        Err(reason) => {
            next.emit(
                "PaymentDeclined",
                None,
                serde_json::json!({ "reason": reason }),
                now,
            );
            next.record(STEP_PAYMENT, StepStatus::Failed, Some(reason.clone()), now);
            fail(next, reason, now);
        }
    }
    d.finish(state, now)
}

/// An activity failed in a way that may pass: tried again as `policy`
/// says (the retry is stored, so a restart keeps it), until its attempts
/// run out and the order fails.
pub(super) fn failed(
    state: &OrderState,
    activity: Timer,
    error: &str,
    policy: RetryPolicy,
    now: DateTime<Utc>,
) -> Decision {
    if state.status != activity.status() {
        return nothing();
    }
    let mut d = Draft::from(state);
    let failed = state
        .retry
        .as_ref()
        .filter(|r| r.activity == activity)
        .map_or(0, |r| r.attempt)
        + 1;
    let retry = policy.allows_retry_after(failed);
    let due_at = now
        + chrono::Duration::from_std(policy.delay_after(failed))
            .unwrap_or_else(|_| chrono::Duration::seconds(30));
    d.next.emit(
        "ActivityAttemptFailed",
        None,
        serde_json::json!({
            "activity": activity.activity_name(),
            "attempt": failed,
            "error": error,
            "retry": retry,
            "nextAttemptAt": retry.then_some(due_at),
        }),
        now,
    );
    if retry {
        d.next.retry = Some(PendingRetry {
            activity,
            attempt: failed,
            due_at,
        });
        d.effects.push(Effect::Schedule(activity));
    } else {
        d.next.retry = None;
        let reason = format!(
            "{} failed after {failed} attempts: {error}",
            activity.activity_name()
        );
        d.next.record(
            activity.step(),
            StepStatus::Failed,
            Some(reason.clone()),
            now,
        );
        fail(&mut d.next, reason, now);
    }
    d.finish(state, now)
}

/// The next automatic step: on to the payment, confirm, then hand over to
/// fulfillment with one signal-with-start.
pub(super) fn advance(state: &OrderState, now: DateTime<Utc>) -> Decision {
    let mut d = Draft::from(state);
    match state.status {
        OrderStatus::InventoryReserved => {
            d.next.status = OrderStatus::PaymentProcessing;
            d.effects.push(Effect::Schedule(Timer::ChargePayment));
        }
        OrderStatus::PaymentConfirmed => {
            d.next.status = OrderStatus::Confirmed;
            d.next
                .record(STEP_CONFIRM, StepStatus::Completed, None, now);
            d.effects.push(Effect::Advance);
        }
        OrderStatus::Confirmed => {
            let (fulfillment_id, envelope) = start_signal(state);
            d.next.emit(
                "FulfillmentRequested",
                Some(envelope.message_id),
                serde_json::json!({ "fulfillmentWorkflowId": fulfillment_id }),
                now,
            );
            d.next.fulfillment_workflow_id = Some(fulfillment_id);
            d.next.status = OrderStatus::FulfillmentStarted;
            d.next
                .record(STEP_START_FULFILLMENT, StepStatus::Completed, None, now);
            d.send(envelope);
            d.effects.push(Effect::StartPolling);
        }
        _ => return nothing(),
    }
    d.finish(state, now)
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn decline_fails_and_releases_the_reservation() {
        let s = new_order();
        let s = step(
            &s,
            Input::InventoryChecked(Ok(vec!["RES-ORD-1-product-1".into()])),
        )
        .state;
        let s = step(&s, Input::Advance).state;
        let t = step(&s, Input::PaymentProcessed(Err("card declined".into())));
        assert_eq!(t.state.status, OrderStatus::Failed);
        assert_eq!(t.state.error.as_deref(), Some("card declined"));
        assert!(!t.state.reservation_held);
        assert!(t.state.step_done(STEP_RELEASE).is_some());
        assert!(
            t.state.step_done(STEP_REFUND).is_none(),
            "nothing was charged"
        );
        assert!(t.effects.is_empty());
    }

    #[test]
    fn shortage_fails_without_compensation() {
        let s = new_order();
        let t = step(
            &s,
            Input::InventoryChecked(Err("insufficient stock for product-5".into())),
        );
        assert_eq!(t.state.status, OrderStatus::Failed);
        assert_eq!(
            t.state.error.as_deref(),
            Some("insufficient stock for product-5")
        );
        assert!(t.state.step_done(STEP_RELEASE).is_none());
    }

    #[test]
    fn a_policy_backs_off_to_its_cap() {
        let p = policy(3);
        let ms = |n| p.delay_after(n).as_millis();
        assert_eq!((ms(1), ms(2), ms(3), ms(9)), (100, 200, 300, 300));
        assert!(p.allows_retry_after(2));
        assert!(!p.allows_retry_after(3));
        assert!(policy(0).allows_retry_after(1_000_000));
    }

    #[test]
    fn transient_failures_retry_then_succeed_or_give_up() {
        let s = new_order();
        let failed = |s: &OrderState| {
            step(
                s,
                Input::ActivityFailed {
                    activity: Timer::CheckStock,
                    error: "503".into(),
                    policy: policy(3),
                },
            )
        };
        let t = failed(&s);
        assert_eq!(t.state.status, OrderStatus::Pending);
        assert_eq!(t.effects, vec![Effect::Schedule(Timer::CheckStock)]);
        let retry = t.state.retry.clone().expect("a pending retry");
        assert_eq!(retry.attempt, 1);
        assert_eq!(
            retry.due_at,
            t0() + Duration::seconds(1) + Duration::milliseconds(100)
        );
        assert_eq!(kinds(&t), vec!["ActivityAttemptFailed"]);
        assert_eq!(t.events[0].detail["attempt"], 1);
        // the pending retry is stored: a restart re-arms it
        assert_eq!(resume(&t.state), vec![Effect::Schedule(Timer::CheckStock)]);
        let t2 = failed(&t.state);
        assert_eq!(t2.state.retry.as_ref().map(|r| r.attempt), Some(2));
        // success clears it
        let ok = step(&t2.state, Input::InventoryChecked(Ok(vec!["R".into()])));
        assert_eq!(ok.state.retry, None);
        assert_eq!(ok.state.status, OrderStatus::InventoryReserved);
        // the third failure is the last
        let t3 = failed(&t2.state);
        assert_eq!(t3.state.status, OrderStatus::Failed);
        assert!(t3
            .state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("after 3 attempts")));
        // a failure of another activity than the running one: nothing
        let other = step(
            &s,
            Input::ActivityFailed {
                activity: Timer::ChargePayment,
                error: "x".into(),
                policy: policy(3),
            },
        );
        assert!(!other.changed);
    }

    #[test]
    fn a_decline_is_final_even_with_retries_left() {
        let s = step(&new_order(), Input::InventoryChecked(Ok(vec!["R".into()]))).state;
        let s = step(&s, Input::Advance).state;
        let s = step(
            &s,
            Input::ActivityFailed {
                activity: Timer::ChargePayment,
                error: "timeout".into(),
                policy: policy(5),
            },
        )
        .state;
        let t = step(&s, Input::PaymentProcessed(Err("card declined".into())));
        assert_eq!(t.state.status, OrderStatus::Failed);
        assert_eq!(t.state.retry, None);
        assert_eq!(
            kinds(&t),
            vec!["PaymentDeclined", "StockReleased", "StatusChanged"]
        );
    }

    #[test]
    fn an_advance_in_any_other_status_changes_nothing() {
        for s in [new_order(), started()] {
            let t = step(&s, Input::Advance);
            assert!(!t.changed && t.effects.is_empty() && t.messages.is_empty());
        }
    }
}

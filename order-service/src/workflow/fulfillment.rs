//! What the order hears from its fulfillment: status events and poll
//! answers (applied alike, never backwards), and a poll that finds no
//! fulfillment (its start was lost: sent again).

use chrono::{DateTime, Utc};
use shared_messages::messages::{
    FulfillmentProgressView, FulfillmentStatus, FulfillmentStatusView,
};
use uuid::Uuid;

use super::{
    cancel_signal, compensate, fail, nothing, start_signal, Decision, Draft, OrderState,
    OrderStatus, StepStatus, START_RESEND_INTERVAL_SECS, STEP_FULFILLMENT, STEP_SHIP,
};

/// Fulfillment reported its state: an event (with its message id) or the
/// answer to a poll (none).
pub(super) fn reported(
    state: &OrderState,
    message_id: Option<Uuid>,
    view: &FulfillmentStatusView,
    progress: Option<Box<FulfillmentProgressView>>,
    now: DateTime<Utc>,
) -> Decision {
    if message_id.is_some_and(|id| state.processed_messages.contains(&id)) {
        return nothing();
    }
    if state.fulfillment_workflow_id.as_deref() != Some(view.fulfillment_workflow_id.as_str()) {
        // Not handed over yet, or another fulfillment.
        return nothing();
    }
    let mut d = Draft::from(state);
    if state.status == OrderStatus::Cancelled {
        // The order is over, but its fulfillment may still be winding
        // down: keep the order's view of it current, nothing else.
        if is_stale(state, view) {
            return nothing();
        }
        if let Some(id) = message_id {
            d.next.remember(id);
        }
        d.next.fulfillment_status = Some(view.status);
        d.next.fulfillment_updated_at = Some(view.updated_at);
        if let Some(progress) = progress {
            d.next.fulfillment_progress = Some(*progress);
        }
        return d.finish(state, now);
    }
    if !state.status.is_waiting_on_fulfillment() {
        // Shipped and failed orders take nothing more.
        return nothing();
    }
    let next = &mut d.next;
    if let Some(id) = message_id {
        next.remember(id);
    }
    if is_stale(state, view) {
        return d.finish(state, now);
    }
    if state.fulfillment_status != Some(view.status) {
        next.emit(
            "FulfillmentStatusReported",
            message_id,
            serde_json::json!({
                "fulfillmentStatus": view.status,
                "via": if message_id.is_some() { "event" } else { "poll" },
            }),
            now,
        );
    }
    next.fulfillment_status = Some(view.status);
    next.fulfillment_updated_at = Some(view.updated_at);
    if let Some(progress) = progress {
        next.fulfillment_progress = Some(*progress);
    }
    if view.tracking_number.is_some() {
        next.tracking_number = view.tracking_number.clone();
    }
    let cancelling = state.status == OrderStatus::Cancelling;
    match view.status {
        FulfillmentStatus::Waiting => {}
        FulfillmentStatus::Picking
        | FulfillmentStatus::Packing
        | FulfillmentStatus::ReadyToShip
        | FulfillmentStatus::Paused => {
            if next.status == OrderStatus::FulfillmentStarted {
                next.status = OrderStatus::FulfillmentInProgress;
                next.record(STEP_FULFILLMENT, StepStatus::Completed, None, now);
            }
        }
        FulfillmentStatus::Shipped => {
            if next.step_done(STEP_FULFILLMENT).is_none() {
                next.record(STEP_FULFILLMENT, StepStatus::Completed, None, now);
            }
            if cancelling {
                // The goods left: the cancel lost, nothing is undone.
                let refusal = format!(
                    "the cancel was refused: fulfillment {} has already shipped{}",
                    view.fulfillment_workflow_id,
                    view.tracking_number
                        .as_deref()
                        .map(|t| format!(" (tracking number {t})"))
                        .unwrap_or_default()
                );
                next.emit(
                    "CancelRefused",
                    message_id,
                    serde_json::json!({
                        "reason": refusal,
                        "requestedReason": state.cancellation_reason,
                    }),
                    now,
                );
                next.cancel_refused = Some(refusal);
                next.cancellation_reason = None;
            }
            next.status = OrderStatus::Shipped;
            next.record(STEP_SHIP, StepStatus::Completed, None, now);
        }
        FulfillmentStatus::Cancelled => {
            // Our own request confirmed (keep its reason), or a cancel
            // made on the fulfillment's side (take its).
            let reason = if cancelling {
                state.cancellation_reason.clone()
            } else {
                None
            }
            .or_else(|| view.cancellation_reason.clone())
            .unwrap_or_else(|| "fulfillment was cancelled".into());
            next.emit(
                "FulfillmentCancelled",
                message_id,
                serde_json::json!({ "reason": view.cancellation_reason }),
                now,
            );
            compensate(next, now);
            next.status = OrderStatus::Cancelled;
            next.cancellation_reason = Some(reason);
        }
        FulfillmentStatus::Failed => {
            let reason = view
                .error
                .clone()
                .unwrap_or_else(|| "fulfillment failed".into());
            next.record(
                STEP_FULFILLMENT,
                StepStatus::Failed,
                Some(reason.clone()),
                now,
            );
            fail(next, format!("fulfillment failed: {reason}"), now);
        }
    }
    d.finish(state, now)
}

/// A poll found no such fulfillment: its start was lost, so it is sent
/// again (the same message id), at most once per
/// [`START_RESEND_INTERVAL_SECS`]; a cancelling order asks its cancel
/// again after it.
pub(super) fn not_found(state: &OrderState, now: DateTime<Utc>) -> Decision {
    if !state.status.is_waiting_on_fulfillment() {
        return nothing();
    }
    if state
        .start_resent_at
        .is_some_and(|at| now - at < chrono::Duration::seconds(START_RESEND_INTERVAL_SECS))
    {
        return nothing();
    }
    let mut d = Draft::from(state);
    d.next.start_resent_at = Some(now);
    let (fulfillment_id, envelope) = start_signal(state);
    d.next.emit(
        "FulfillmentRequested",
        Some(envelope.message_id),
        serde_json::json!({
            "fulfillmentWorkflowId": fulfillment_id,
            "resent": true,
            "why": "the fulfillment was not found",
        }),
        now,
    );
    d.send(envelope);
    if state.status == OrderStatus::Cancelling {
        // The cancel may have been refused for want of a fulfillment: ask
        // again, after the start.
        let reason = state
            .cancellation_reason
            .clone()
            .unwrap_or_else(|| "Cancelled on request".into());
        d.send(cancel_signal(&fulfillment_id, state, &reason));
    }
    d.finish(state, now)
}

/// Rank of a fulfillment status along its forward path; a report never
/// moves the order's view backwards.
fn rank(status: FulfillmentStatus) -> u8 {
    match status {
        FulfillmentStatus::Waiting => 0,
        FulfillmentStatus::Picking | FulfillmentStatus::Paused => 1,
        FulfillmentStatus::Packing => 2,
        FulfillmentStatus::ReadyToShip => 3,
        FulfillmentStatus::Shipped | FulfillmentStatus::Cancelled | FulfillmentStatus::Failed => 4,
    }
}

/// A report older than what is known, or one that would move a final
/// fulfillment backwards, changes nothing. A final status (shipped,
/// cancelled, failed) always applies over a non-final one: a fulfillment
/// never leaves it, so it is the truth even when an event of a step that
/// was in flight carries a later time.
fn is_stale(state: &OrderState, view: &FulfillmentStatusView) -> bool {
    if let Some(known) = state.fulfillment_status {
        if known.is_final() {
            return true;
        }
        if view.status.is_final() {
            return false;
        }
        if let Some(at) = state.fulfillment_updated_at {
            if view.updated_at < at {
                return true;
            }
            if view.updated_at == at && rank(view.status) < rank(known) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use shared_messages::ids::effect_message_id;
    use shared_messages::messages::FulfillmentStatus;
    use uuid::Uuid;

    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn happy_path_ships_with_tracking_number() {
        let s = started();
        let (_, e) = event(FulfillmentStatus::Picking, 10);
        let t = step(&s, e);
        assert_eq!(t.state.status, OrderStatus::FulfillmentInProgress);
        let (_, e) = event(FulfillmentStatus::Shipped, 20);
        let t = step(&t.state, e);
        assert_eq!(t.state.status, OrderStatus::Shipped);
        assert_eq!(t.state.tracking_number.as_deref(), Some("TRK123"));
        assert_eq!(resume(&t.state), vec![]);
        for name in MAIN_STEPS {
            assert!(t.state.step_done(name).is_some(), "{name} recorded");
        }
    }

    #[test]
    fn waiting_keeps_the_order_started() {
        let s = started();
        let (_, e) = event(FulfillmentStatus::Waiting, 5);
        let t = step(&s, e);
        assert_eq!(t.state.status, OrderStatus::FulfillmentStarted);
    }

    #[test]
    fn out_of_order_and_duplicate_events_never_move_backwards() {
        let s = started();
        let (_, shipped) = event(FulfillmentStatus::Shipped, 20);
        let t = step(&s, shipped.clone());
        let shipped_state = t.state;
        // an older PICKING after SHIPPED changes nothing (the order is final)
        let (_, picking) = event(FulfillmentStatus::Picking, 10);
        let t = step(&shipped_state, picking);
        assert!(!t.changed);
        assert_eq!(t.state.status, OrderStatus::Shipped);

        // while in progress: a stale event is ignored
        let (_, packing) = event(FulfillmentStatus::Packing, 15);
        let in_progress = step(&s, packing).state;
        let (_, old) = event(FulfillmentStatus::Picking, 12);
        let t = step(&in_progress, old);
        assert_eq!(t.state.fulfillment_status, Some(FulfillmentStatus::Packing));

        // the same event twice: the second changes nothing
        let (id, e) = event(FulfillmentStatus::ReadyToShip, 16);
        let once = step(&in_progress, e.clone()).state;
        assert!(once.processed_messages.contains(&id));
        let twice = step(&once, e);
        assert!(!twice.changed);
    }

    #[test]
    fn processed_ids_are_bounded() {
        let mut s = started();
        for i in 0..(AppliedMessages::KEPT as i64 + 10) {
            let (_, e) = event(FulfillmentStatus::Picking, 10 + i);
            s = step(&s, e).state;
        }
        assert_eq!(s.processed_messages.len(), AppliedMessages::KEPT);
    }

    #[test]
    fn paused_then_resumed_fulfillment_is_followed() {
        let s = started();
        let s = step(&s, event(FulfillmentStatus::Picking, 10).1).state;
        let s = step(&s, event(FulfillmentStatus::Paused, 11).1).state;
        assert_eq!(s.fulfillment_status, Some(FulfillmentStatus::Paused));
        let s = step(&s, event(FulfillmentStatus::Picking, 12).1).state;
        assert_eq!(s.fulfillment_status, Some(FulfillmentStatus::Picking));
        assert_eq!(s.status, OrderStatus::FulfillmentInProgress);
    }

    #[test]
    fn poll_answers_apply_like_events() {
        let s = started();
        let t = step(
            &s,
            Input::Fulfillment {
                message_id: None,
                view: view(FulfillmentStatus::Shipped, 30),
                progress: None,
            },
        );
        assert_eq!(t.state.status, OrderStatus::Shipped);
        assert!(t.state.processed_messages.is_empty());
    }

    #[test]
    fn a_confirmed_cancel_compensates_once_with_the_requested_reason() {
        let s = started();
        let s = step(&s, event(FulfillmentStatus::Picking, 10).1).state;
        let cancelling = cancel(&s, "changed my mind").state;
        let (id, confirmed) = event(FulfillmentStatus::Cancelled, 20);
        let t = step(&cancelling, confirmed.clone());
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert_eq!(
            t.state.cancellation_reason.as_deref(),
            Some("changed my mind")
        );
        assert!(!t.state.payment_captured && !t.state.reservation_held);
        let k = kinds(&t);
        assert_eq!(k.iter().filter(|k| **k == "PaymentRefunded").count(), 1);
        assert_eq!(k.iter().filter(|k| **k == "StockReleased").count(), 1);
        assert_eq!(k.last(), Some(&"StatusChanged"));
        assert!(t.effects.is_empty());
        // the same event again, or a poll saying the same: nothing
        let again = step(&t.state, confirmed);
        assert!(!again.changed && again.events.is_empty());
        assert!(t.state.processed_messages.contains(&id));
        let polled = step(
            &t.state,
            Input::Fulfillment {
                message_id: None,
                view: view(FulfillmentStatus::Cancelled, 20),
                progress: None,
            },
        );
        assert!(!polled.changed && polled.events.is_empty());
        // an older report after it: nothing
        let late = step(&t.state, event(FulfillmentStatus::Picking, 15).1);
        assert!(!late.changed);
    }

    #[test]
    fn shipped_while_cancelling_ends_shipped_and_refunds_nothing() {
        let s = started();
        let cancelling = cancel(&s, "too late").state;
        let t = step(&cancelling, event(FulfillmentStatus::Shipped, 30).1);
        assert_eq!(t.state.status, OrderStatus::Shipped);
        assert!(t.state.payment_captured, "nothing refunded");
        assert!(t.state.reservation_held);
        assert_eq!(t.state.cancellation_reason, None);
        assert!(t
            .state
            .cancel_refused
            .as_deref()
            .is_some_and(|r| r.contains("shipped")));
        let k = kinds(&t);
        assert!(k.contains(&"CancelRefused"));
        assert!(!k.contains(&"PaymentRefunded"));
        assert_eq!(t.state.tracking_number.as_deref(), Some("TRK123"));
        // a cancelled report arriving after (out of order) changes nothing
        let late = step(&t.state, event(FulfillmentStatus::Cancelled, 40).1);
        assert!(!late.changed);
        // progress reports while cancelling keep it cancelling
        let t = step(&cancelling, event(FulfillmentStatus::Packing, 20).1);
        assert_eq!(t.state.status, OrderStatus::Cancelling);
        assert!(t.state.payment_captured);
        assert_eq!(t.state.fulfillment_status, Some(FulfillmentStatus::Packing));
    }

    #[test]
    fn a_final_report_applies_over_a_later_step_event() {
        let s = started();
        let cancelling = cancel(&s, "r").state;
        // a step that was in flight reports with a later time...
        let late_step = step(&cancelling, event(FulfillmentStatus::ReadyToShip, 30).1).state;
        // ...but the fulfillment is cancelled: the poll says so, and wins
        let t = step(
            &late_step,
            Input::Fulfillment {
                message_id: None,
                view: view(FulfillmentStatus::Cancelled, 20),
                progress: None,
            },
        );
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert!(!t.state.payment_captured);
    }

    #[test]
    fn a_failed_fulfillment_while_cancelling_fails_and_compensates() {
        let cancelling = cancel(&started(), "r").state;
        let t = step(&cancelling, event(FulfillmentStatus::Failed, 9).1);
        assert_eq!(t.state.status, OrderStatus::Failed);
        assert!(!t.state.payment_captured);
    }

    #[test]
    fn a_cancelled_order_still_records_its_fulfillment_winding_down() {
        let s = started();
        let s = step(&s, event(FulfillmentStatus::Picking, 10).1).state;
        let cancelled = step(
            &cancel(&s, "changed my mind").state,
            event(FulfillmentStatus::Cancelled, 20).1,
        )
        .state;
        let steps = cancelled.history.len();
        let t = step(&cancelled, event(FulfillmentStatus::Cancelled, 25).1);
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert_eq!(t.state.history.len(), steps, "no second compensation");
        assert!(t.effects.is_empty());
        assert!(t.events.is_empty());
    }

    #[test]
    fn not_found_resends_the_start_with_the_same_id() {
        let s = started();
        let t = step(&s, Input::FulfillmentNotFound);
        let ids: Vec<Uuid> = signals(&t).iter().map(|env| env.message_id).collect();
        assert_eq!(
            ids,
            vec![effect_message_id(
                "order-workflow-ORD-1",
                "start-fulfillment"
            )]
        );
        assert_eq!(kinds(&t), vec!["FulfillmentRequested"]);
        assert_eq!(t.state.status, OrderStatus::FulfillmentStarted);
        // not again at every poll: once per START_RESEND_INTERVAL_SECS
        let soon = decide_at(
            &t.state,
            Input::FulfillmentNotFound,
            t0() + Duration::seconds(30),
        );
        assert_eq!(soon.reply, Ok(Accepted::Applied));
        assert!(!soon.changed && soon.messages.is_empty());
        let later = decide_at(
            &t.state,
            Input::FulfillmentNotFound,
            t0() + Duration::seconds(1 + START_RESEND_INTERVAL_SECS),
        );
        assert_eq!(kinds(&later), vec!["FulfillmentRequested"]);
        // while cancelling, the cancel follows the start
        let c = cancel(&s, "r").state;
        let t = step(&c, Input::FulfillmentNotFound);
        let types: Vec<&str> = signals(&t).iter().map(|env| env.message_type()).collect();
        assert_eq!(types, vec!["StartFulfillment", "CancelFulfillment"]);
        // before the hand-over or once final: nothing
        assert!(!step(&new_order(), Input::FulfillmentNotFound).changed);
        let shipped = step(&s, event(FulfillmentStatus::Shipped, 9).1).state;
        assert!(!step(&shipped, Input::FulfillmentNotFound).changed);
    }

    #[test]
    fn fulfillment_cancelled_on_its_side_cancels_and_compensates() {
        let s = started();
        let t = step(&s, event(FulfillmentStatus::Cancelled, 9).1);
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert_eq!(
            t.state.cancellation_reason.as_deref(),
            Some("warehouse closed")
        );
        assert!(t.state.step_done(STEP_REFUND).is_some());
        assert!(t.state.step_done(STEP_RELEASE).is_some());
        assert!(
            t.messages.is_empty() && t.effects.is_empty(),
            "no cancel signal back to a cancelled fulfillment"
        );
    }

    #[test]
    fn fulfillment_failure_fails_the_order() {
        let s = started();
        let t = step(&s, event(FulfillmentStatus::Failed, 9).1);
        assert_eq!(t.state.status, OrderStatus::Failed);
        assert!(t
            .state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("label printer")));
    }

    #[test]
    fn events_for_another_fulfillment_or_before_handover_are_ignored() {
        let s = new_order();
        let t = step(&s, event(FulfillmentStatus::Shipped, 9).1);
        assert!(!t.changed);
    }
}

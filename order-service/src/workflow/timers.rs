//! The order's own deadline: a fulfillment not finished within
//! `FULFILLMENT_DEADLINE_MS` of the hand-over makes the order overdue.
//! (The activities' timers bring their results in [`super::activities`].)

use chrono::{DateTime, Utc};

use super::{nothing, Decision, Draft, OrderState};

/// `FULFILLMENT_DEADLINE_MS` has passed since the hand-over: the order is
/// marked overdue, once.
pub(super) fn deadline_passed(state: &OrderState, now: DateTime<Utc>) -> Decision {
    if !state.status.is_waiting_on_fulfillment() || state.overdue {
        return nothing();
    }
    let mut d = Draft::from(state);
    d.next.overdue = true;
    d.next.emit(
        "FulfillmentOverdue",
        None,
        serde_json::json!({
            "fulfillmentWorkflowId": state.fulfillment_workflow_id,
            "fulfillmentStatus": state.fulfillment_status,
        }),
        now,
    );
    d.finish(state, now)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn the_deadline_marks_an_order_overdue_once() {
        let s = started();
        let t = step(&s, Input::DeadlinePassed);
        assert!(t.state.overdue);
        assert_eq!(t.state.status, OrderStatus::FulfillmentStarted);
        assert_eq!(kinds(&t), vec!["FulfillmentOverdue"]);
        assert!(!step(&t.state, Input::DeadlinePassed).changed);
        assert!(!step(&new_order(), Input::DeadlinePassed).changed);
    }
}

//! What a person asks of an order over HTTP: cancel it, change its
//! details, pause or resume its fulfillment.

use chrono::{DateTime, Utc};
use shared_messages::messages::Validate;
use shared_messages::Message;

use super::{
    cancel_signal, compensate, nothing, rejected, Accepted, Decision, DetailsUpdate, Draft, Effect,
    OrderState, OrderStatus, Rejection, StepStatus, MAX_FIELD, STEP_CANCEL_FULFILLMENT,
};

/// Cancel the order. Before the hand-over it is compensated and
/// cancelled at once; after it the fulfillment owns the goods, so it is
/// asked, and nothing is undone until it confirms (`CANCELLING`).
pub(super) fn cancel(state: &OrderState, reason: Option<String>, now: DateTime<Utc>) -> Decision {
    if state.status.is_final() {
        return rejected(Rejection::AlreadyFinal(state.status));
    }
    if state.status == OrderStatus::Cancelling {
        // Asked already; the fulfillment's answer decides.
        return nothing();
    }
    let reason = reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "Cancelled on request".into());
    let mut d = Draft::from(state);
    match (
        state.status.is_waiting_on_fulfillment(),
        &state.fulfillment_workflow_id,
    ) {
        (true, Some(fulfillment_id)) => {
            let envelope = cancel_signal(fulfillment_id, state, &reason);
            d.next.emit(
                "CancelRequested",
                Some(envelope.message_id),
                serde_json::json!({
                    "reason": reason,
                    "fulfillmentWorkflowId": fulfillment_id,
                }),
                now,
            );
            d.send(envelope);
            d.effects.push(Effect::PollNow);
            d.next
                .record(STEP_CANCEL_FULFILLMENT, StepStatus::Completed, None, now);
            d.next.status = OrderStatus::Cancelling;
            d.next.cancellation_reason = Some(reason);
        }
        _ => {
            d.next.emit(
                "CancelRequested",
                None,
                serde_json::json!({ "reason": reason }),
                now,
            );
            d.next.retry = None;
            compensate(&mut d.next, now);
            d.next.status = OrderStatus::Cancelled;
            d.next.cancellation_reason = Some(reason);
        }
    }
    d.finish(state, now)
}

/// A plausible email address: one `@`, something before it, a dotted
/// domain after it, no spaces, at most [`MAX_FIELD`] bytes.
pub fn check_email(value: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "customerEmail is not a valid email address: {value:?}"
        ))
    };
    if value.len() > MAX_FIELD || value.chars().any(char::is_whitespace) {
        return bad();
    }
    let Some((local, domain)) = value.split_once('@') else {
        return bad();
    };
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return bad();
    }
    Ok(())
}

/// Change the contact details or the address, only before the hand-over.
pub(super) fn update_details(
    state: &OrderState,
    update: DetailsUpdate,
    now: DateTime<Utc>,
) -> Decision {
    if state.status.is_final()
        || state.status.is_waiting_on_fulfillment()
        || state.fulfillment_workflow_id.is_some()
    {
        return rejected(Rejection::FulfillmentStarted(state.status));
    }
    let mut d = Draft::from(state);
    let mut changed_fields = Vec::new();
    if let Some(email) = update.customer_email {
        if let Err(why) = check_email(&email) {
            return rejected(Rejection::Invalid(why));
        }
        d.next.details.customer_email = email;
        changed_fields.push("customerEmail");
    }
    if let Some(name) = update.customer_name {
        if name.trim().is_empty() {
            return rejected(Rejection::Invalid("customerName must not be empty".into()));
        }
        d.next.details.customer_name = name;
        changed_fields.push("customerName");
    }
    if let Some(address) = update.shipping_address {
        if let Err(why) = address.validate() {
            return rejected(Rejection::Invalid(why));
        }
        d.next.details.shipping_address = address;
        changed_fields.push("shippingAddress");
    }
    if d.next.details != state.details {
        d.next.emit(
            "DetailsUpdated",
            None,
            serde_json::json!({ "fields": changed_fields }),
            now,
        );
    }
    d.finish(state, now)
}

/// Pause or resume: the fulfillment decides, so once the order has handed
/// over the signal is forwarded to it; before that there is nothing to
/// pause or resume.
pub(super) fn forward(state: &OrderState, signal: Message) -> Decision {
    match &state.fulfillment_workflow_id {
        Some(fulfillment_id) => Decision::unchanged(Ok(Accepted::Forward {
            fulfillment_id: fulfillment_id.clone(),
            signal: Box::new(signal),
        })),
        None => rejected(Rejection::FulfillmentNotStarted(state.status)),
    }
}

#[cfg(test)]
mod tests {
    use shared_messages::ids::effect_message_id;
    use shared_messages::messages::FulfillmentStatus;
    use shared_messages::Message;

    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn cancel_before_fulfillment_compensates_without_signal() {
        let s = new_order();
        let s = step(&s, Input::InventoryChecked(Ok(vec!["R".into()]))).state;
        let s = step(&s, Input::Advance).state;
        let s = step(&s, Input::PaymentProcessed(Ok("PAY-ORD-1".into()))).state;
        let t = step(&s, Input::Cancel { reason: None });
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert_eq!(
            t.state.cancellation_reason.as_deref(),
            Some("Cancelled on request")
        );
        assert!(t.state.step_done(STEP_REFUND).is_some());
        assert!(t.state.step_done(STEP_RELEASE).is_some());
        assert!(t.effects.is_empty() && t.messages.is_empty());
        // a late timer result changes nothing
        let late = step(&t.state, Input::Advance);
        assert!(!late.changed);
    }

    #[test]
    fn cancel_during_fulfillment_asks_and_undoes_nothing_yet() {
        let s = started();
        let t = cancel(&s, "Customer requested cancellation");
        assert_eq!(t.state.status, OrderStatus::Cancelling);
        assert!(
            t.state.payment_captured,
            "no refund before the fulfillment confirms"
        );
        assert!(t.state.reservation_held);
        let Some((route, env)) = t.messages.first() else {
            panic!("expected a signal, got {:?}", t.messages);
        };
        assert_eq!(t.effects, vec![Effect::PollNow]);
        assert_eq!(route, &fulfillment_signal_route());
        assert_eq!(
            env.message_id,
            effect_message_id("order-workflow-ORD-1", "cancel-fulfillment")
        );
        assert!(
            matches!(&env.message, Message::CancelFulfillment(c) if c.reason == "Customer requested cancellation")
        );
        assert_eq!(kinds(&t), vec!["CancelRequested", "StatusChanged"]);
        assert_eq!(t.events[0].message_id, Some(env.message_id));
        assert_eq!(resume(&t.state), vec![Effect::StartPolling]);
        // asked again: nothing new
        let again = cancel(&t.state, "twice");
        assert!(!again.changed);
        assert!(again.events.is_empty());
        // details cannot change while cancelling
        assert!(reply(
            &t.state,
            Input::UpdateDetails(DetailsUpdate {
                customer_name: Some("B".into()),
                ..Default::default()
            }),
        )
        .is_err());
    }

    #[test]
    fn each_status_answers_cancel_as_the_goods_allow() {
        // before the hand-over: compensated at once
        let pending = new_order();
        let t = cancel(&pending, "r");
        assert_eq!(t.state.status, OrderStatus::Cancelled);
        assert!(t.effects.is_empty() && t.messages.is_empty());
        assert_eq!(kinds(&t), vec!["CancelRequested", "StatusChanged"]);
        let reserved = step(&pending, Input::InventoryChecked(Ok(vec!["R".into()]))).state;
        let processing = step(&reserved, Input::Advance).state;
        let confirmed_payment =
            step(&processing, Input::PaymentProcessed(Ok("PAY-ORD-1".into()))).state;
        let confirmed = step(&confirmed_payment, Input::Advance).state;
        assert_eq!(confirmed.status, OrderStatus::Confirmed);
        for (s, refunds) in [
            (&reserved, false),
            (&processing, false),
            (&confirmed_payment, true),
            (&confirmed, true),
        ] {
            let t = cancel(s, "r");
            assert_eq!(t.state.status, OrderStatus::Cancelled, "{}", s.status);
            assert!(!t.state.reservation_held && !t.state.payment_captured);
            assert_eq!(
                kinds(&t).contains(&"PaymentRefunded"),
                refunds,
                "{}",
                s.status
            );
            assert!(kinds(&t).contains(&"StockReleased"));
            assert!(t.messages.is_empty(), "nothing to ask: no fulfillment yet");
        }
        // after it: a request
        let started = started();
        let in_progress = step(&started, event(FulfillmentStatus::Picking, 10).1).state;
        for s in [&started, &in_progress] {
            let t = cancel(s, "r");
            assert_eq!(t.state.status, OrderStatus::Cancelling, "{}", s.status);
            assert!(t.state.payment_captured);
        }
        // final: refused
        let shipped = step(&started, event(FulfillmentStatus::Shipped, 9).1).state;
        let cancelled = cancel(&pending, "r").state;
        let failed = step(&pending, Input::InventoryChecked(Err("x".into()))).state;
        for s in [&shipped, &cancelled, &failed] {
            let t = decide_at(s, Input::Cancel { reason: None }, t0());
            assert_eq!(t.reply, Err(Rejection::AlreadyFinal(s.status)));
            assert!(
                !t.changed && t.events.is_empty(),
                "a refusal changes nothing"
            );
        }
    }

    #[test]
    fn cancel_is_refused_once_final() {
        let s = started();
        let shipped = step(&s, event(FulfillmentStatus::Shipped, 9).1).state;
        assert_eq!(
            reply(&shipped, Input::Cancel { reason: None }),
            Err(Rejection::AlreadyFinal(OrderStatus::Shipped))
        );
        let failed = step(&new_order(), Input::InventoryChecked(Err("x".into()))).state;
        assert!(reply(&failed, Input::Cancel { reason: None }).is_err());
    }

    #[test]
    fn details_change_only_before_fulfillment() {
        let s = new_order();
        let update = DetailsUpdate {
            customer_email: Some("b@example.com".into()),
            ..Default::default()
        };
        let t = step(&s, Input::UpdateDetails(update.clone()));
        assert_eq!(t.state.details.customer_email, "b@example.com");
        let bad = DetailsUpdate {
            customer_email: Some("nope".into()),
            ..Default::default()
        };
        assert!(matches!(
            reply(&s, Input::UpdateDetails(bad)),
            Err(Rejection::Invalid(_))
        ));
        let s = started();
        assert_eq!(
            reply(&s, Input::UpdateDetails(update)),
            Err(Rejection::FulfillmentStarted(
                OrderStatus::FulfillmentStarted
            ))
        );
    }

    #[test]
    fn pause_and_resume_before_the_hand_over_are_refused() {
        let pending = new_order();
        let confirmed = {
            let s = step(&pending, Input::InventoryChecked(Ok(vec!["R".into()]))).state;
            let s = step(&s, Input::Advance).state;
            let s = step(&s, Input::PaymentProcessed(Ok("P".into()))).state;
            step(&s, Input::Advance).state
        };
        let cancelled = cancel(&pending, "r").state;
        for s in [&pending, &confirmed, &cancelled] {
            for input in [Input::PauseFulfillment, Input::ResumeFulfillment] {
                let t = decide_at(s, input, t0());
                assert_eq!(
                    t.reply,
                    Err(Rejection::FulfillmentNotStarted(s.status)),
                    "{}",
                    s.status
                );
                assert!(!t.changed && t.events.is_empty() && t.messages.is_empty());
            }
        }
        assert_eq!(
            Rejection::FulfillmentNotStarted(OrderStatus::Pending).to_string(),
            "fulfillment has not started yet; the order is in PENDING"
        );
    }

    #[test]
    fn pause_and_resume_after_the_hand_over_go_to_the_fulfillment() {
        let s = started();
        let shipped = step(&s, event(FulfillmentStatus::Shipped, 9).1).state;
        // a final order still forwards: its fulfillment says why not
        for s in [&s, &shipped] {
            for (input, message_type) in [
                (Input::PauseFulfillment, "PauseFulfillment"),
                (Input::ResumeFulfillment, "ResumeFulfillment"),
            ] {
                let t = decide_at(s, input, t0());
                let Ok(Accepted::Forward {
                    fulfillment_id,
                    signal,
                }) = &t.reply
                else {
                    panic!("forwarded, not {:?}", t.reply);
                };
                assert_eq!(fulfillment_id, "fulfillment-ORD-1");
                assert_eq!(signal.type_name(), message_type);
                assert!(!t.changed && t.events.is_empty() && t.messages.is_empty());
            }
        }
    }

    #[test]
    fn emails() {
        for ok in ["a@b.co", "first.last+tag@example.org"] {
            assert!(check_email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a", "@b.co", "a@b", "a@@b.co", "a b@c.de", "a@.co", "a@co.",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
        assert!(check_email(&format!("a@{}.co", "b".repeat(MAX_FIELD))).is_err());
    }
}

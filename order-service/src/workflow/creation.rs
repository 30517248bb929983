//! A new order.

use chrono::{DateTime, Utc};
use shared_messages::history::HistoryEvent;

use super::{OrderDetails, OrderState};

/// A new order and its first history entry (`OrderCreated`).
pub fn create(
    order_id: &str,
    details: OrderDetails,
    now: DateTime<Utc>,
) -> (OrderState, Vec<HistoryEvent>) {
    let mut state = OrderState::new(order_id, details, now);
    let detail = serde_json::json!({
        "orderId": order_id,
        "customerId": state.details.customer_id,
        "items": state.details.items.len(),
        "totalAmount": state.details.total_amount(),
    });
    state.emit("OrderCreated", None, detail, now);
    let events = std::mem::take(&mut state.recorded);
    (state, events)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn history_is_numbered_and_only_what_changed_adds_to_it() {
        let (s, created) = create("ORD-1", details(), t0());
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].kind, "OrderCreated");
        assert_eq!((created[0].seq, s.history_seq), (1, 1));
        let t = step(&s, Input::InventoryChecked(Ok(vec!["R".into()])));
        let seqs: Vec<u64> = t.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 3]);
        assert_eq!(kinds(&t), vec!["StockReserved", "StatusChanged"]);
        // the same input again changes nothing and adds nothing
        let again = step(&t.state, Input::InventoryChecked(Ok(vec!["R".into()])));
        assert!(!again.changed && again.events.is_empty());
        // the entries never travel inside the stored state
        let json = serde_json::to_value(&t.state).expect("json");
        assert_eq!(json["historySeq"], 3);
        assert!(json.get("recorded").is_none());
    }
}

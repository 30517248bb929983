//! A workflow's history, as both services show it on their `.../history`
//! routes: every input, decision and effect in the order it happened, like
//! Temporal's event history.
//!
//! Each service appends entries in the same transaction as the state they
//! belong to, so an entry exists exactly when its transition was stored: a
//! redelivered message that changes nothing adds nothing, and a crash never
//! leaves an effect without its entry (or the reverse).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One entry of a workflow's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct HistoryEvent {
    /// 1, 2, 3, ... within the workflow: the order entries were stored in.
    pub seq: u64,
    /// What happened, in Temporal's manner: `OrderCreated`,
    /// `PaymentCharged`, `CancelRequested`, `StatusChanged`, the name of a
    /// signal received, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// When it was stored.
    pub at: DateTime<Utc>,
    /// The message that caused it (an input) or that it sent (an effect);
    /// null for what neither received nor sent a message.
    pub message_id: Option<Uuid>,
    /// Details that differ by type (amounts, ids, statuses, reasons).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub detail: serde_json::Value,
}

/// The answer of a `GET .../history` route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub workflow_id: String,
    pub events: Vec<HistoryEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_as_camel_case_with_a_type_field() {
        let event = HistoryEvent {
            seq: 1,
            kind: "OrderCreated".into(),
            at: DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
                .expect("a valid time")
                .with_timezone(&Utc),
            message_id: None,
            detail: serde_json::json!({"total": 139.97}),
        };
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["type"], "OrderCreated");
        assert_eq!(json["messageId"], serde_json::Value::Null);
        assert_eq!(json["detail"]["total"], 139.97);
        let back: HistoryEvent = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, event);
    }
}

//! Identifiers shared by both services.
//!
//! Ids are derived, not invented, wherever a resend must be recognised: the
//! fulfillment of an order is always `fulfillment-<orderId>`, and a message
//! sent as the effect of a step has a UUID derived from the entity and the
//! step, so a replay after a crash carries the same id and is ignored by the
//! receiver.

use uuid::Uuid;

/// Namespace for deterministic message ids (UUID v5).
const MESSAGE_NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_0e5a_3b7d_4c1e_9a40_51b2_7d8e_c3f1);

/// `order-workflow-<orderId>`
pub fn order_workflow_id(order_id: &str) -> String {
    format!("order-workflow-{order_id}")
}

/// `fulfillment-<orderId>`: one order never gets a second fulfillment.
pub fn fulfillment_workflow_id(order_id: &str) -> String {
    format!("fulfillment-{order_id}")
}

/// The order id inside an `order-workflow-<orderId>` id.
pub fn order_id_from_workflow_id(workflow_id: &str) -> Option<&str> {
    workflow_id
        .strip_prefix("order-workflow-")
        .filter(|id| !id.is_empty())
}

/// The order id inside a `fulfillment-<orderId>` id.
pub fn order_id_from_fulfillment_id(fulfillment_id: &str) -> Option<&str> {
    fulfillment_id
        .strip_prefix("fulfillment-")
        .filter(|id| !id.is_empty())
}

/// Whether `order_id` has the shape order-service mints
/// (`ORD-<epoch millis>-<9 uppercase alphanumerics>`). Such an order's
/// fulfillment is created by order-service's start signal only, never on
/// fulfillment-service's own HTTP route, so nobody can start it first with
/// other items or another address.
pub fn is_order_service_order_id(order_id: &str) -> bool {
    let Some(rest) = order_id.strip_prefix("ORD-") else {
        return false;
    };
    let Some((millis, suffix)) = rest.split_once('-') else {
        return false;
    };
    !millis.is_empty()
        && millis.bytes().all(|b| b.is_ascii_digit())
        && suffix.len() == 9
        && suffix
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// A message id that is the same every time the same entity takes the same
/// step, e.g. `effect_message_id("fulfillment-ORD-1", "status:3:PACKING")`.
pub fn effect_message_id(entity_id: &str, step: &str) -> Uuid {
    Uuid::new_v5(&MESSAGE_NAMESPACE, format!("{entity_id}/{step}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_derive_from_the_order_id() {
        assert_eq!(order_workflow_id("ORD-1"), "order-workflow-ORD-1");
        assert_eq!(fulfillment_workflow_id("ORD-1"), "fulfillment-ORD-1");
        assert_eq!(
            order_id_from_workflow_id("order-workflow-ORD-1"),
            Some("ORD-1")
        );
        assert_eq!(
            order_id_from_fulfillment_id("fulfillment-ORD-1"),
            Some("ORD-1")
        );
        assert_eq!(order_id_from_workflow_id("order-workflow-"), None);
        assert_eq!(order_id_from_fulfillment_id("ORD-1"), None);
    }

    #[test]
    fn order_service_ids_are_recognised() {
        assert!(is_order_service_order_id("ORD-1764316800000-A1B2C3D4E"));
        for other in [
            "ORD-1764316800000-a1b2c3d4e",
            "ORD-1764316800000-A1B2C3D4",
            "ORD-x-A1B2C3D4E",
            "ORD--A1B2C3D4E",
            "ORD-3f2a9c0d8e7b4a1f9c2d3e4f5a6b7c8d",
            "MANUAL-1",
        ] {
            assert!(!is_order_service_order_id(other), "{other}");
        }
    }

    #[test]
    fn effect_ids_are_deterministic_and_distinct() {
        let a = effect_message_id("fulfillment-ORD-1", "start");
        assert_eq!(a, effect_message_id("fulfillment-ORD-1", "start"));
        assert_ne!(a, effect_message_id("fulfillment-ORD-2", "start"));
        assert_ne!(a, effect_message_id("fulfillment-ORD-1", "cancel"));
    }
}

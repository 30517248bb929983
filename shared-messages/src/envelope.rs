//! The versioned JSON envelope.
//!
//! ```json
//! {
//!   "messageType": "PauseFulfillment",
//!   "schemaVersion": 1,
//!   "messageId": "6f1c1a8e-...",
//!   "entityId": "fulfillment-ORD-1703123456789-ABC123DEF",
//!   "sentAt": "2026-11-25T10:00:00Z",
//!   "payload": {}
//! }
//! ```
//!
//! Decoding happens in two steps so that every failure is named: first the
//! envelope itself (malformed JSON or missing fields), then the type and
//! version (unknown type, unsupported version), then the payload against the
//! type's schema.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::messages::{Message, UpdateShippingAddressV2};

/// The schema version this build writes, for every type. A message with a
/// version this build does not read (see [`READ_VERSIONS`]) is rejected
/// rather than guessed at.
pub const SCHEMA_VERSION: u32 = 1;

/// The schema versions this build reads, by message type; a type not listed
/// is read at [`SCHEMA_VERSION`] only. A new version of a type is read here
/// (beside the old one) one release before any sender writes it, so that
/// old and new senders can run side by side during a rolling deploy
/// (`docs/message-contract.md`, Versioning).
pub const READ_VERSIONS: &[(&str, &[u32])] = &[("UpdateShippingAddress", &[1, 2])];

/// The schema versions of `message_type` this build reads.
pub fn read_versions(message_type: &str) -> &'static [u32] {
    READ_VERSIONS
        .iter()
        .find(|(name, _)| *name == message_type)
        .map_or(&[SCHEMA_VERSION], |(_, versions)| versions)
}

/// One message with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub message_id: Uuid,
    /// The workflow the message is about (a fulfillment or order workflow id).
    pub entity_id: String,
    pub sent_at: DateTime<Utc>,
    pub message: Message,
    /// W3C trace context of the order this message belongs to (see
    /// `message_bus::trace`). Written to the wire so that it survives a
    /// service's outbox; also sent as the AMQP `traceparent` header.
    pub traceparent: Option<String>,
}

/// Why bytes could not be turned into an [`Envelope`].
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Malformed(String),
    UnknownType(String),
    UnsupportedVersion {
        message_type: String,
        version: u32,
    },
    InvalidPayload {
        message_type: String,
        reason: String,
    },
}

// Written out rather than derived, so the contract depends on serde, uuid
// and chrono alone.
impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(reason) => write!(f, "malformed envelope: {reason}"),
            Self::UnknownType(message_type) => write!(f, "unknown message type {message_type:?}"),
            Self::UnsupportedVersion {
                message_type,
                version,
            } => write!(
                f,
                "unsupported schema version {version} for {message_type} (this build reads {:?})",
                read_versions(message_type)
            ),
            Self::InvalidPayload {
                message_type,
                reason,
            } => write!(f, "invalid payload for {message_type}: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The envelope as it is read from the wire: the payload stays raw text
/// until the type and version say how to read it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireIn<'a> {
    message_type: String,
    schema_version: u32,
    message_id: Uuid,
    entity_id: String,
    sent_at: DateTime<Utc>,
    #[serde(default, borrow)]
    payload: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    traceparent: Option<String>,
}

/// The envelope as it is written: borrowed, serialized straight to bytes.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireOut<'a> {
    message_type: &'static str,
    schema_version: u32,
    message_id: Uuid,
    entity_id: &'a str,
    sent_at: DateTime<Utc>,
    payload: Payload<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
}

/// Serializes a message's payload alone (its variant's content).
struct Payload<'a>(&'a Message);

/// One arm per message type, for both directions, from one list.
macro_rules! payload_codec {
    ($($variant:ident),* $(,)?) => {
        impl Serialize for Payload<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self.0 {
                    $(Message::$variant(p) => p.serialize(s),)*
                }
            }
        }

        /// The message of type `message_type` read from `payload`; `None`
        /// for a type this build does not know.
        fn decode_payload(
            message_type: &str,
            payload: &str,
        ) -> Option<Result<Message, serde_json::Error>> {
            match message_type {
                $(stringify!($variant) => Some(serde_json::from_str(payload).map(Message::$variant)),)*
                _ => None,
            }
        }
    };
}

payload_codec!(
    StartFulfillmentWorkflow,
    StartFulfillment,
    PauseFulfillment,
    ResumeFulfillment,
    CancelFulfillment,
    UpdateShippingAddress,
    GetFulfillmentStatus,
    GetFulfillmentProgress,
    FulfillmentStatusChanged,
    SignalReply,
    FulfillmentStatusReply,
    FulfillmentProgressReply,
    QueryFailed,
    OrderCommand,
    OrderCommandReply,
);

/// A message of a version other than [`SCHEMA_VERSION`] that
/// [`READ_VERSIONS`] lists, read into the type this build works with.
fn decode_later_version(
    message_type: &str,
    version: u32,
    payload: &str,
) -> Option<Result<Message, serde_json::Error>> {
    match (message_type, version) {
        ("UpdateShippingAddress", 2) => Some(
            serde_json::from_str::<UpdateShippingAddressV2>(payload)
                .map(|v2| Message::UpdateShippingAddress(v2.into())),
        ),
        _ => None,
    }
}

impl Envelope {
    /// A new message with a random id, sent now.
    pub fn new(entity_id: impl Into<String>, message: Message) -> Self {
        Self::with_id(Uuid::new_v4(), entity_id, message)
    }

    /// A new message with a chosen id: use a deterministic id (see
    /// [`crate::ids`]) when a resend must be recognised as the same message.
    pub fn with_id(message_id: Uuid, entity_id: impl Into<String>, message: Message) -> Self {
        Self {
            message_id,
            entity_id: entity_id.into(),
            sent_at: Utc::now(),
            message,
            traceparent: None,
        }
    }

    /// The same message, carrying `traceparent` (when there is one).
    pub fn traced(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    /// The message type as written in `messageType` and the AMQP `type`.
    pub fn message_type(&self) -> &'static str {
        self.message.type_name()
    }

    pub fn to_json(&self) -> Vec<u8> {
        let wire = WireOut {
            message_type: self.message_type(),
            schema_version: SCHEMA_VERSION,
            message_id: self.message_id,
            entity_id: &self.entity_id,
            sent_at: self.sent_at,
            payload: Payload(&self.message),
            traceparent: self.traceparent.as_deref(),
        };
        serde_json::to_vec(&wire).expect("envelopes always serialize to JSON")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: WireIn =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !Message::TYPE_NAMES.contains(&wire.message_type.as_str()) {
            return Err(DecodeError::UnknownType(wire.message_type));
        }
        if !read_versions(&wire.message_type).contains(&wire.schema_version) {
            return Err(DecodeError::UnsupportedVersion {
                message_type: wire.message_type,
                version: wire.schema_version,
            });
        }
        let payload = wire.payload.map_or("{}", |raw| raw.get());
        let decoded = if wire.schema_version == SCHEMA_VERSION {
            decode_payload(&wire.message_type, payload)
        } else {
            decode_later_version(&wire.message_type, wire.schema_version, payload)
        };
        let message = decoded
            .ok_or_else(|| DecodeError::UnknownType(wire.message_type.clone()))?
            .map_err(|e| DecodeError::InvalidPayload {
                message_type: wire.message_type.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            message_id: wire.message_id,
            entity_id: wire.entity_id,
            sent_at: wire.sent_at,
            message,
            traceparent: wire.traceparent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;

    fn sample_messages() -> Vec<Message> {
        let address = Address {
            street: "1 Main St".into(),
            city: "Springfield".into(),
            state: "IL".into(),
            zip_code: "62701".into(),
            country: "USA".into(),
        };
        vec![
            Message::StartFulfillmentWorkflow(StartFulfillmentWorkflow {
                order_id: "ORD-1".into(),
            }),
            Message::StartFulfillment(StartFulfillment {
                request: FulfillmentRequest {
                    order_id: "ORD-1".into(),
                    customer_id: "c-1".into(),
                    customer_name: Some("Ada".into()),
                    customer_email: Some("ada@example.com".into()),
                    items: vec![OrderItem {
                        product_id: "product-1".into(),
                        product_name: "Widget".into(),
                        quantity: 2,
                        price: 29.99,
                    }],
                    shipping_address: address.clone(),
                },
            }),
            Message::PauseFulfillment(PauseFulfillment {}),
            Message::ResumeFulfillment(ResumeFulfillment {}),
            Message::CancelFulfillment(CancelFulfillment {
                reason: "customer asked".into(),
            }),
            Message::UpdateShippingAddress(UpdateShippingAddress { address }),
            Message::GetFulfillmentStatus(GetFulfillmentStatus {}),
            Message::GetFulfillmentProgress(GetFulfillmentProgress {}),
            Message::SignalReply(SignalReply::rejected(
                ReplyError::conflict("already shipped"),
                Some(FulfillmentStatus::Shipped),
            )),
            Message::QueryFailed(ReplyError::not_found("no such fulfillment")),
            Message::OrderCommand(OrderCommand {
                workflow_id: "order-workflow-ORD-1".into(),
                action: OrderAction::WaitFor {
                    wait_for: "SHIPPED".into(),
                    timeout_ms: Some(5000),
                },
                expires_at: Some("2026-11-25T10:00:10Z".parse().expect("a time")),
            }),
            Message::OrderCommand(OrderCommand {
                workflow_id: "ORD-1".into(),
                action: OrderAction::PauseFulfillment,
                expires_at: None,
            }),
            Message::OrderCommandReply(OrderCommandReply {
                status: 409,
                body: serde_json::json!({"error": "conflict", "message": "already shipped"}),
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in sample_messages() {
            let envelope = Envelope::new("fulfillment-ORD-1", message);
            let decoded = Envelope::from_json(&envelope.to_json()).expect("decodes");
            assert_eq!(decoded, envelope);
        }
    }

    #[test]
    fn wire_format_is_camel_case_with_type_and_version() {
        let envelope = Envelope::new(
            "fulfillment-ORD-1",
            Message::CancelFulfillment(CancelFulfillment {
                reason: "why".into(),
            }),
        );
        let json: serde_json::Value = serde_json::from_slice(&envelope.to_json()).expect("json");
        assert_eq!(json["messageType"], "CancelFulfillment");
        assert_eq!(json["schemaVersion"], 1);
        assert_eq!(json["entityId"], "fulfillment-ORD-1");
        assert_eq!(json["payload"]["reason"], "why");
        assert!(json["messageId"].is_string());
        assert!(json["sentAt"].is_string());
    }

    #[test]
    fn malformed_json_is_a_typed_error() {
        assert!(matches!(
            Envelope::from_json(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::from_json(br#"{"messageType":"PauseFulfillment"}"#),
            Err(DecodeError::Malformed(_))
        ));
    }

    fn raw(message_type: &str, version: u32, payload: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "messageType": message_type,
            "schemaVersion": version,
            "messageId": Uuid::new_v4(),
            "entityId": "fulfillment-x",
            "sentAt": "2026-01-01T00:00:00Z",
            "payload": payload,
        }))
        .expect("json")
    }

    #[test]
    fn unknown_type_is_rejected_by_name() {
        assert_eq!(
            Envelope::from_json(&raw("ExplodeFulfillment", 1, serde_json::json!({}))),
            Err(DecodeError::UnknownType("ExplodeFulfillment".into()))
        );
    }

    #[test]
    fn other_versions_are_rejected() {
        assert_eq!(
            Envelope::from_json(&raw("PauseFulfillment", 2, serde_json::json!({}))),
            Err(DecodeError::UnsupportedVersion {
                message_type: "PauseFulfillment".into(),
                version: 2
            })
        );
    }

    #[test]
    fn both_versions_of_update_shipping_address_are_read_as_one_type() {
        let address = serde_json::json!({"street": "456 New Street", "city": "New City",
            "state": "NC", "zipCode": "54321", "country": "USA"});
        let v1 = Envelope::from_json(&raw(
            "UpdateShippingAddress",
            1,
            serde_json::json!({"address": address}),
        ))
        .expect("version 1 is read");
        let v2 = Envelope::from_json(&raw(
            "UpdateShippingAddress",
            2,
            serde_json::json!({"shippingAddress": address}),
        ))
        .expect("version 2 is read");
        assert_eq!(v1.message, v2.message);
        // Each version has its own shape: a v1 body under version 2 is invalid.
        let err = Envelope::from_json(&raw(
            "UpdateShippingAddress",
            2,
            serde_json::json!({"address": address}),
        ))
        .expect_err("version 2 names it shippingAddress");
        assert!(matches!(err, DecodeError::InvalidPayload { .. }), "{err:?}");
        // What this build writes is still version 1, for readers not yet upgraded.
        let json: serde_json::Value = serde_json::from_slice(&v2.to_json()).expect("json");
        assert_eq!(json["schemaVersion"], 1);
        assert_eq!(json["payload"]["address"], address);
        assert_eq!(
            Envelope::from_json(&raw("UpdateShippingAddress", 3, address)),
            Err(DecodeError::UnsupportedVersion {
                message_type: "UpdateShippingAddress".into(),
                version: 3
            })
        );
    }

    #[test]
    fn payload_that_does_not_fit_its_type_is_rejected() {
        let err = Envelope::from_json(&raw(
            "CancelFulfillment",
            1,
            serde_json::json!({"reason": 42}),
        ))
        .expect_err("a number is not a reason");
        assert!(matches!(err, DecodeError::InvalidPayload { .. }), "{err:?}");
    }

    #[test]
    fn type_names_cover_every_variant() {
        for message in sample_messages() {
            assert!(Message::TYPE_NAMES.contains(&message.type_name()));
        }
    }
}

/// Every example in `docs/message-contract.md` decodes, and every message
/// type has one, so the page cannot drift from the code.
#[cfg(test)]
mod contract_document {
    use super::*;

    #[test]
    fn every_example_decodes_and_every_type_is_shown() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/message-contract.md");
        let doc = std::fs::read_to_string(path).expect("docs/message-contract.md exists");
        let mut shown = Vec::new();
        for block in doc.split("```json").skip(1) {
            let json = block.split("```").next().expect("a closed block");
            let envelope = Envelope::from_json(json.as_bytes())
                .unwrap_or_else(|e| panic!("example does not decode: {e}\n{json}"));
            let example: serde_json::Value = serde_json::from_str(json).expect("json");
            // An example of an older or newer version than this build
            // writes decodes; only the current one round-trips.
            if example["schemaVersion"] == SCHEMA_VERSION {
                assert_eq!(
                    serde_json::from_slice::<serde_json::Value>(&envelope.to_json()).expect("json"),
                    example,
                    "example does not round-trip exactly"
                );
            }
            shown.push(envelope.message_type());
        }
        for name in Message::TYPE_NAMES {
            assert!(shown.contains(name), "{name} has no example");
        }
    }
}

//! Every message that crosses the broker, and the domain types they carry.
//!
//! Naming follows intent: commands are imperative (`PauseFulfillment`),
//! queries ask (`GetFulfillmentStatus`), events are past tense
//! (`FulfillmentStatusChanged`). JSON is camelCase, statuses are
//! SCREAMING_SNAKE_CASE, as in the original demo.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A postal address.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    // Documented as validated: each field has a character other than space.
    #[cfg_attr(feature = "openapi", schema(pattern = r"\S"))]
    pub street: String,
    #[cfg_attr(feature = "openapi", schema(pattern = r"\S"))]
    pub city: String,
    #[cfg_attr(feature = "openapi", schema(pattern = r"\S"))]
    pub state: String,
    #[cfg_attr(feature = "openapi", schema(pattern = r"\S"))]
    pub zip_code: String,
    #[cfg_attr(feature = "openapi", schema(pattern = r"\S"))]
    pub country: String,
}

/// A message whose fields must also hold more than their types say (a
/// field not empty, a list not empty).
pub trait Validate {
    /// What is wrong, if anything, as a message a person can act on.
    fn validate(&self) -> Result<(), String>;
}

impl Validate for Address {
    fn validate(&self) -> Result<(), String> {
        let fields = [
            ("street", &self.street),
            ("city", &self.city),
            ("state", &self.state),
            ("zipCode", &self.zip_code),
            ("country", &self.country),
        ];
        let empty: Vec<&str> = fields
            .iter()
            .filter(|(_, v)| v.trim().is_empty())
            .map(|(k, _)| *k)
            .collect();
        if empty.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "address fields must not be empty: {}",
                empty.join(", ")
            ))
        }
    }
}

/// One line of an order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    pub product_id: String,
    pub product_name: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub quantity: u32,
    pub price: f64,
}

/// What a fulfillment needs to know about the order it ships.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FulfillmentRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = r"\S"))]
    pub order_id: String,
    pub customer_id: String,
    #[serde(default)]
    pub customer_name: Option<String>,
    #[serde(default)]
    pub customer_email: Option<String>,
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub items: Vec<OrderItem>,
    pub shipping_address: Address,
}

impl Validate for FulfillmentRequest {
    fn validate(&self) -> Result<(), String> {
        if self.order_id.trim().is_empty() {
            return Err("orderId must not be empty".into());
        }
        if self.items.is_empty() {
            return Err("items must contain at least one item".into());
        }
        if let Some(item) = self.items.iter().find(|i| i.quantity == 0) {
            return Err(format!(
                "quantity of {} must be at least 1",
                item.product_id
            ));
        }
        self.shipping_address.validate()
    }
}

/// The states of a fulfillment workflow.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FulfillmentStatus {
    Waiting,
    Picking,
    Packing,
    ReadyToShip,
    Shipped,
    Paused,
    Cancelled,
    Failed,
}

impl FulfillmentStatus {
    pub const ALL: [FulfillmentStatus; 8] = [
        Self::Waiting,
        Self::Picking,
        Self::Packing,
        Self::ReadyToShip,
        Self::Shipped,
        Self::Paused,
        Self::Cancelled,
        Self::Failed,
    ];

    /// Shipped, cancelled and failed fulfillments never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Shipped | Self::Cancelled | Self::Failed)
    }

    /// The wire name, e.g. `READY_TO_SHIP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "WAITING",
            Self::Picking => "PICKING",
            Self::Packing => "PACKING",
            Self::ReadyToShip => "READY_TO_SHIP",
            Self::Shipped => "SHIPPED",
            Self::Paused => "PAUSED",
            Self::Cancelled => "CANCELLED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for FulfillmentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step that has been completed, with when.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedStep {
    pub step: u32,
    pub name: String,
    pub completed_at: DateTime<Utc>,
}

/// The answer to `GetFulfillmentStatus`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FulfillmentStatusView {
    pub fulfillment_workflow_id: String,
    pub order_id: String,
    pub status: FulfillmentStatus,
    /// The name of the step in hand, e.g. `Picking items`.
    pub current_step: String,
    pub tracking_number: Option<String>,
    pub shipping_carrier: Option<String>,
    pub estimated_delivery: Option<DateTime<Utc>>,
    pub is_paused: bool,
    pub shipping_address: Option<Address>,
    pub cancellation_reason: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The answer to `GetFulfillmentProgress`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FulfillmentProgressView {
    pub fulfillment_workflow_id: String,
    pub order_id: String,
    pub status: FulfillmentStatus,
    /// 1-based number of the step in hand (equals `totalSteps` when done).
    pub current_step: u32,
    pub step_name: String,
    pub total_steps: u32,
    /// Whole percent of steps completed, 0 to 100.
    pub percentage: u32,
    pub items_picked: u32,
    pub total_items: u32,
    pub estimated_completion: Option<DateTime<Utc>>,
    pub completed_steps: Vec<CompletedStep>,
}

// ----- signals to fulfillment -----

/// Create a fulfillment workflow that waits for `StartFulfillment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartFulfillmentWorkflow {
    pub order_id: String,
}

/// Start fulfilling an order; creates the workflow first when it does not
/// exist yet (signal-with-start), so a sender needs one message, never two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartFulfillment {
    #[serde(flatten)]
    pub request: FulfillmentRequest,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PauseFulfillment {}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResumeFulfillment {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelFulfillment {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateShippingAddress {
    pub address: Address,
}

/// `UpdateShippingAddress` as schema version 2 writes it: the address is
/// named `shippingAddress`, as in `StartFulfillment` and every view (a
/// rename, so a new version). Read beside version 1 during a rolling
/// deploy (see `docs/message-contract.md`, Versioning); decoded into
/// [`UpdateShippingAddress`], so a handler sees one type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateShippingAddressV2 {
    pub shipping_address: Address,
}

impl From<UpdateShippingAddressV2> for UpdateShippingAddress {
    fn from(v2: UpdateShippingAddressV2) -> Self {
        Self {
            address: v2.shipping_address,
        }
    }
}

// ----- queries to fulfillment -----

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetFulfillmentStatus {}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetFulfillmentProgress {}

// ----- events -----

/// Published on every transition of a fulfillment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FulfillmentStatusChanged {
    pub previous_status: Option<FulfillmentStatus>,
    pub fulfillment: FulfillmentStatusView,
    pub progress: FulfillmentProgressView,
}

// ----- order-service's own: a request for the replica that owns an order -----

/// A request an order-service replica got over HTTP for an order another
/// replica owns, sent to the owner on `order-service.partitions` under the
/// order's partition (order-service's internal channel; nothing else sends
/// it). The owner handles it as it would the HTTP request and answers an
/// [`OrderCommandReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCommand {
    /// The order as the request named it (`order-workflow-<orderId>` or
    /// the order id); for a creation, an id in the partition it is sent to.
    pub workflow_id: String,
    pub action: OrderAction,
    /// When the sender stops waiting for the answer (a creation, a
    /// `waitFor`): an owner that takes the command later drops it
    /// unanswered, so a creation nobody waits for is never made. Absent
    /// for changes, which run whenever an owner takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// What an [`OrderCommand`] asks, one per HTTP route that acts on an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum OrderAction {
    /// `POST /orders` or `POST /orders/demo`, with the order's details as
    /// validated by the replica that took the request; the owner gives the
    /// order an id in one of its partitions.
    Create { details: serde_json::Value },
    /// `DELETE /orders/{workflowId}`.
    Cancel { reason: Option<String> },
    /// `PATCH /orders/{workflowId}` with this body.
    Update { update: serde_json::Value },
    /// `POST /orders/{workflowId}/fulfillment/pause`.
    PauseFulfillment,
    /// `POST /orders/{workflowId}/fulfillment/resume`.
    ResumeFulfillment,
    /// `GET /orders/{workflowId}/status?waitFor=..&timeoutMs=..`.
    WaitFor {
        wait_for: String,
        timeout_ms: Option<u64>,
    },
}

/// The owner's answer to an [`OrderCommand`]: the HTTP status and JSON
/// body the request gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCommandReply {
    pub status: u16,
    pub body: serde_json::Value,
}

// ----- replies -----

/// Why a request was refused; `code` is stable, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplyError {
    pub code: ReplyErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplyErrorCode {
    /// No workflow with that id.
    NotFound,
    /// Not allowed in the workflow's current state.
    Conflict,
    /// The request itself is wrong.
    Invalid,
}

impl ReplyError {
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: ReplyErrorCode::NotFound,
            message: message.into(),
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            code: ReplyErrorCode::Conflict,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: ReplyErrorCode::Invalid,
            message: message.into(),
        }
    }
}

/// The answer to a signal sent with `reply_to`: accepted, or rejected with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalReply {
    pub accepted: bool,
    /// The workflow's status after the signal (when the workflow exists).
    pub status: Option<FulfillmentStatus>,
    pub error: Option<ReplyError>,
}

impl SignalReply {
    pub fn accepted(status: FulfillmentStatus) -> Self {
        Self {
            accepted: true,
            status: Some(status),
            error: None,
        }
    }
    pub fn rejected(error: ReplyError, status: Option<FulfillmentStatus>) -> Self {
        Self {
            accepted: false,
            status,
            error: Some(error),
        }
    }
}

/// Every message type. The variant name is the `messageType` on the wire
/// and the AMQP `type` property.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "messageType", content = "payload")]
pub enum Message {
    // signals
    StartFulfillmentWorkflow(StartFulfillmentWorkflow),
    StartFulfillment(StartFulfillment),
    PauseFulfillment(PauseFulfillment),
    ResumeFulfillment(ResumeFulfillment),
    CancelFulfillment(CancelFulfillment),
    UpdateShippingAddress(UpdateShippingAddress),
    // queries
    GetFulfillmentStatus(GetFulfillmentStatus),
    GetFulfillmentProgress(GetFulfillmentProgress),
    // events
    FulfillmentStatusChanged(Box<FulfillmentStatusChanged>),
    // replies
    SignalReply(SignalReply),
    FulfillmentStatusReply(Box<FulfillmentStatusView>),
    FulfillmentProgressReply(Box<FulfillmentProgressView>),
    QueryFailed(ReplyError),
    // order-service's own
    OrderCommand(OrderCommand),
    OrderCommandReply(OrderCommandReply),
}

impl Message {
    /// Every `messageType` this build understands.
    pub const TYPE_NAMES: &'static [&'static str] = &[
        "StartFulfillmentWorkflow",
        "StartFulfillment",
        "PauseFulfillment",
        "ResumeFulfillment",
        "CancelFulfillment",
        "UpdateShippingAddress",
        "GetFulfillmentStatus",
        "GetFulfillmentProgress",
        "FulfillmentStatusChanged",
        "SignalReply",
        "FulfillmentStatusReply",
        "FulfillmentProgressReply",
        "QueryFailed",
        "OrderCommand",
        "OrderCommandReply",
    ];

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::StartFulfillmentWorkflow(_) => "StartFulfillmentWorkflow",
            Self::StartFulfillment(_) => "StartFulfillment",
            Self::PauseFulfillment(_) => "PauseFulfillment",
            Self::ResumeFulfillment(_) => "ResumeFulfillment",
            Self::CancelFulfillment(_) => "CancelFulfillment",
            Self::UpdateShippingAddress(_) => "UpdateShippingAddress",
            Self::GetFulfillmentStatus(_) => "GetFulfillmentStatus",
            Self::GetFulfillmentProgress(_) => "GetFulfillmentProgress",
            Self::FulfillmentStatusChanged(_) => "FulfillmentStatusChanged",
            Self::SignalReply(_) => "SignalReply",
            Self::FulfillmentStatusReply(_) => "FulfillmentStatusReply",
            Self::FulfillmentProgressReply(_) => "FulfillmentProgressReply",
            Self::QueryFailed(_) => "QueryFailed",
            Self::OrderCommand(_) => "OrderCommand",
            Self::OrderCommandReply(_) => "OrderCommandReply",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_use_the_original_names() {
        let json = serde_json::to_string(&FulfillmentStatus::ReadyToShip).expect("json");
        assert_eq!(json, "\"READY_TO_SHIP\"");
        for s in FulfillmentStatus::ALL {
            assert_eq!(FulfillmentStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).expect("json"), format!("\"{s}\""));
        }
    }

    #[test]
    fn address_validation_names_the_empty_fields() {
        let address = Address {
            street: "".into(),
            city: "x".into(),
            state: " ".into(),
            zip_code: "1".into(),
            country: "y".into(),
        };
        assert_eq!(
            address.validate(),
            Err("address fields must not be empty: street, state".into())
        );
    }
}

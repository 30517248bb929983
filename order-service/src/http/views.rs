//! The JSON shapes of orders as the HTTP routes answer them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared_messages::messages::{Address, FulfillmentProgressView, FulfillmentStatus, OrderItem};
use utoipa::ToSchema;

use crate::workflow::{
    OrderState, OrderStatus, StepStatus, MAIN_STEPS, STEP_CANCEL_FULFILLMENT, STEP_REFUND,
    STEP_RELEASE,
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub order_id: String,
    pub workflow_id: String,
    pub status: OrderStatus,
    #[schema(value_type = String)]
    pub current_step: &'static str,
    pub payment_id: Option<String>,
    pub reservation_ids: Vec<String>,
    pub tracking_number: Option<String>,
    pub fulfillment_workflow_id: Option<String>,
    pub fulfillment_status: Option<FulfillmentStatus>,
    pub cancellation_reason: Option<String>,
    /// Why a cancel was refused (the fulfillment had already shipped).
    pub cancel_refused: Option<String>,
    /// The fulfillment has not finished within `FULFILLMENT_DEADLINE_MS`.
    pub overdue: bool,
    pub error: Option<String>,
    pub customer_id: String,
    pub customer_email: String,
    pub customer_name: String,
    pub items: Vec<OrderItem>,
    pub shipping_address: Address,
    pub payment_method: String,
    pub total_amount: f64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&OrderState> for StatusView {
    fn from(s: &OrderState) -> Self {
        Self {
            order_id: s.order_id.clone(),
            workflow_id: s.workflow_id.clone(),
            status: s.status,
            current_step: s.status.step_name(),
            payment_id: s.payment_id.clone(),
            reservation_ids: s.reservation_ids.clone(),
            tracking_number: s.tracking_number.clone(),
            fulfillment_workflow_id: s.fulfillment_workflow_id.clone(),
            fulfillment_status: s.fulfillment_status,
            cancellation_reason: s.cancellation_reason.clone(),
            cancel_refused: s.cancel_refused.clone(),
            overdue: s.overdue,
            error: s.error.clone(),
            customer_id: s.details.customer_id.clone(),
            customer_email: s.details.customer_email.clone(),
            customer_name: s.details.customer_name.clone(),
            items: s.details.items.clone(),
            shipping_address: s.details.shipping_address.clone(),
            payment_method: s.details.payment_method.clone(),
            total_amount: s.details.total_amount(),
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub name: String,
    /// `completed`, `failed`, `in_progress`, `pending` or `skipped`.
    #[schema(value_type = String)]
    pub status: &'static str,
    /// `saga` for the forward steps, `compensation` for undoing ones.
    #[schema(value_type = String)]
    pub kind: &'static str,
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressView {
    pub order_id: String,
    pub workflow_id: String,
    pub status: OrderStatus,
    /// 1-based number of the step in hand (equals `totalSteps` when shipped).
    pub current_step: u32,
    #[schema(value_type = String)]
    pub step_name: &'static str,
    pub total_steps: u32,
    pub percentage: u32,
    pub steps: Vec<StepView>,
    /// The fulfillment's progress: asked for live while the fulfillment
    /// runs, else as of its last status event.
    pub fulfillment: Option<FulfillmentProgressView>,
}

impl From<&OrderState> for ProgressView {
    fn from(s: &OrderState) -> Self {
        let total = MAIN_STEPS.len() as u32;
        let mut steps = Vec::new();
        let mut completed = 0u32;
        let mut next_marked = false;
        for name in MAIN_STEPS {
            let view = match s.history.iter().find(|r| r.name == name) {
                Some(r) => {
                    if r.status == StepStatus::Completed {
                        completed += 1;
                    }
                    StepView {
                        name: name.into(),
                        status: if r.status == StepStatus::Completed {
                            "completed"
                        } else {
                            "failed"
                        },
                        kind: "saga",
                        completed_at: Some(r.at),
                        detail: r.detail.clone(),
                    }
                }
                None => {
                    let status = if s.status.is_final() {
                        "skipped"
                    } else if !next_marked {
                        next_marked = true;
                        "in_progress"
                    } else {
                        "pending"
                    };
                    StepView {
                        name: name.into(),
                        status,
                        kind: "saga",
                        completed_at: None,
                        detail: None,
                    }
                }
            };
            steps.push(view);
        }
        for r in s.history.iter().filter(|r| {
            [STEP_RELEASE, STEP_REFUND, STEP_CANCEL_FULFILLMENT].contains(&r.name.as_str())
        }) {
            steps.push(StepView {
                name: r.name.clone(),
                status: "completed",
                kind: "compensation",
                completed_at: Some(r.at),
                detail: r.detail.clone(),
            });
        }
        let current = if s.status.is_final() {
            completed.max(1)
        } else {
            (completed + 1).min(total)
        };
        Self {
            order_id: s.order_id.clone(),
            workflow_id: s.workflow_id.clone(),
            status: s.status,
            current_step: current,
            step_name: s.status.step_name(),
            total_steps: total,
            percentage: completed * 100 / total,
            steps,
            fulfillment: s.fulfillment_progress.clone(),
        }
    }
}

/// `201` of `POST /orders` and `POST /orders/demo`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedView {
    #[schema(example = "ORD-1703123456789-ABC123DEF")]
    pub order_id: String,
    #[schema(example = "order-workflow-ORD-1703123456789-ABC123DEF")]
    pub workflow_id: String,
    pub message: String,
}

/// `GET /orders`: one page, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderListView {
    pub orders: Vec<StatusView>,
    /// Orders matching the filter, on all pages.
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
}

/// The fulfillment's verdict on a pause, resume or new address.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalView {
    pub message: String,
    pub fulfillment_workflow_id: String,
    /// The fulfillment's status after the signal.
    pub status: Option<FulfillmentStatus>,
}

/// `DELETE /orders/{workflowId}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelledView {
    pub message: String,
    pub order_id: String,
    pub workflow_id: String,
    pub status: OrderStatus,
    pub cancellation_reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::demo_order;
    use crate::workflow::{decide, Context, Input};

    #[test]
    fn progress_counts_completed_steps() {
        let s = OrderState::new("ORD-1", demo_order(), Utc::now());
        let p = ProgressView::from(&s);
        assert_eq!((p.current_step, p.percentage, p.total_steps), (1, 0, 6));
        assert_eq!(p.steps[0].status, "in_progress");
        assert_eq!(p.steps[1].status, "pending");
        let s = decide(
            &s,
            Input::InventoryChecked(Ok(vec!["R".into()])),
            Context::at(Utc::now()),
        )
        .state
        .expect("reserved");
        let p = ProgressView::from(&s);
        assert_eq!((p.current_step, p.percentage), (2, 16));
        assert!(p.steps[0].completed_at.is_some());
        let s = decide(&s, Input::Cancel { reason: None }, Context::at(Utc::now()))
            .state
            .expect("cancelled");
        let p = ProgressView::from(&s);
        assert_eq!(p.steps[1].status, "skipped");
        assert!(p
            .steps
            .iter()
            .any(|st| st.name == STEP_RELEASE && st.kind == "compensation"));
    }
}

//! The fulfillment workflow as a pure state machine:
//! `decide(state, input, context) -> Decision` (the state to store, the
//! messages to publish, the effects, the history entries, the reply), with
//! no broker, no store and no clock of its own (the context brings `now`),
//! so unit tests drive every path without sleeping.
//!
//! Steps: one per order line picked, then a quality check, packing, the
//! shipping label and shipping, so `totalSteps = items + 4`. The step in
//! hand is `Fulfillment::step` (0-based; equals `totalSteps` once shipped).
//! The status follows from the step: picking and the quality check run as
//! `PICKING`, packing as `PACKING`, the label and the hand-over to the
//! carrier as `READY_TO_SHIP`; when the last step completes the fulfillment
//! is `SHIPPED`. A step is complete only when its `StepDone` is applied, so
//! a step interrupted by a pause or a crash runs again from its start.
//!
//! Cancel is decided here too. A cancel for a fulfillment that does not
//! exist yet leaves a [`Tombstone`] ([`absent`]); the start that comes later
//! creates the fulfillment already `CANCELLED` ([`create_after`]). A cancel
//! of a shipped (or failed) fulfillment is refused but recorded, and its
//! current status event goes out again, so a waiting order learns at once;
//! a cancel of a cancelled one is an idempotent success that does the same.
//!
//! Every decision also lists its history entries ([`Entry`]): the signal
//! received, the creation, each step completed, each status change, a
//! refused cancel, an applied tombstone. They are stored in the same
//! transaction as the state, so a redelivered signal (recognised by its
//! message id) adds none. Whether a signal's envelope and payload agree is
//! [`check_entity`]; how its delivery is then settled (ack, reply,
//! dead-letter, retry) is [`crate::bus::settle`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use message_bus::Route;
use serde::{Deserialize, Serialize};
use service_kit::workflow::AppliedMessages;
use shared_messages::messages::{
    Address, CompletedStep, FulfillmentProgressView, FulfillmentRequest, FulfillmentStatus,
    FulfillmentStatusChanged, FulfillmentStatusView, ReplyError, Validate,
};
use shared_messages::topology::{
    fulfillment_event_key, fulfillment_progress_key, FULFILLMENT_EVENTS_EXCHANGE,
};
use shared_messages::{ids, Envelope, Message};
use uuid::Uuid;

/// Steps after picking: quality check, pack, label, ship.
const STEPS_AFTER_PICKING: u32 = 4;

/// Carriers a label may be printed for; chosen from the fulfillment id.
const CARRIERS: [&str; 4] = ["UPS", "FedEx", "DHL", "USPS"];

/// Days from label to the estimated delivery.
const DELIVERY_DAYS: i64 = 3;

/// History entry types besides the signals (named by their message type).
pub const FULFILLMENT_CREATED: &str = "FulfillmentCreated";
pub const STATUS_CHANGED: &str = "StatusChanged";
pub const STEP_COMPLETED: &str = "StepCompleted";
pub const CANCEL_REFUSED: &str = "CancelRefused";
pub const TOMBSTONE_APPLIED: &str = "TombstoneApplied";

/// One history entry as decided; the store numbers it (`seq`) when it
/// writes it with the state.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub kind: &'static str,
    pub at: DateTime<Utc>,
    /// The message that caused it, or the event it sent.
    pub message_id: Option<Uuid>,
    pub detail: serde_json::Value,
}

impl Entry {
    fn new(
        kind: &'static str,
        at: DateTime<Utc>,
        message_id: Option<Uuid>,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            kind,
            at,
            message_id,
            detail,
        }
    }
}

/// A cancel that arrived before its fulfillment existed: the start that
/// comes later creates the fulfillment already cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tombstone {
    pub id: String,
    pub reason: String,
    /// The cancel's message id.
    pub message_id: Uuid,
    pub at: DateTime<Utc>,
}

/// The stored state of one fulfillment. What is unset is left out of the
/// stored JSON, and read back as unset (as is a `null` of an older row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fulfillment {
    pub id: String,
    pub order_id: String,
    pub status: FulfillmentStatus,
    /// The order details; `None` while a workflow created by
    /// `StartFulfillmentWorkflow` waits for its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<FulfillmentRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<Address>,
    /// 0-based index of the step in hand; `total_steps()` once shipped.
    pub step: u32,
    /// The status to return to on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_from: Option<FulfillmentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping_carrier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_delivery: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub completed_steps: Vec<CompletedStep>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Number of transitions so far; names each event deterministically.
    pub seq: u64,
    /// The last signals applied, by id.
    pub processed: AppliedMessages,
    /// W3C trace context of the signal that created it (the order's
    /// trace); every event it publishes carries a child of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// What can happen to a fulfillment.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Create it and wait (`StartFulfillmentWorkflow`).
    Create {
        order_id: String,
    },
    /// Start it, creating it first when it does not exist.
    Start(FulfillmentRequest),
    Pause,
    Resume,
    Cancel {
        reason: String,
    },
    UpdateAddress(Address),
    /// The timer of step `step` has run out.
    StepDone {
        step: u32,
    },
}

impl Input {
    /// Inputs that may create a fulfillment that does not exist yet.
    pub fn creates(&self) -> bool {
        matches!(self, Input::Create { .. } | Input::Start(_))
    }

    /// The message type of the signal this input stands for (its history
    /// entry's type); `None` for the step timer.
    pub fn signal_name(&self) -> Option<&'static str> {
        Some(match self {
            Input::Create { .. } => "StartFulfillmentWorkflow",
            Input::Start(_) => "StartFulfillment",
            Input::Pause => "PauseFulfillment",
            Input::Resume => "ResumeFulfillment",
            Input::Cancel { .. } => "CancelFulfillment",
            Input::UpdateAddress(_) => "UpdateShippingAddress",
            Input::StepDone { .. } => return None,
        })
    }

    /// What the history keeps of the signal.
    fn detail(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Input::Create { order_id } => json!({ "orderId": order_id }),
            Input::Start(request) => json!({
                "orderId": request.order_id,
                "items": request.items.len(),
            }),
            Input::Cancel { reason } => json!({ "reason": reason }),
            Input::UpdateAddress(address) => json!({ "address": address }),
            Input::Pause | Input::Resume | Input::StepDone { .. } => json!({}),
        }
    }

    /// The history entry of this signal received, if it is one.
    fn received(&self, message_id: Option<Uuid>, now: DateTime<Utc>) -> Option<Entry> {
        self.signal_name()
            .map(|name| Entry::new(name, now, message_id, self.detail()))
    }
}

/// How a signal was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub status: FulfillmentStatus,
    /// This input created the fulfillment.
    pub created: bool,
}

pub type Reply = Result<Accepted, ReplyError>;

/// What the store does with a decision besides its state, messages and
/// history. (The step timer follows the stored state: the actor arms it
/// while steps run.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The fulfillment's tombstone was applied: remove it in the same write.
    ClearTombstone,
}

/// The outcome of one input, in the one shape of both services'
/// workflows: the state to store (`None` when nothing changed), the events
/// for the outbox, what the write does besides (`Effect`), the history
/// entries and the answer to the signal's sender.
pub type Decision = service_kit::workflow::Decision<Fulfillment, Effect, Entry, Reply>;

/// What fulfillment's decisions add to the common shape.
pub trait DecisionExt {
    /// Keeps `traceparent` with a fulfillment that has none yet (the one
    /// it is created with sticks), and stamps every event with a child of
    /// the fulfillment's trace.
    fn traced(self, traceparent: Option<&str>) -> Self;
    /// Whether storing it removes the fulfillment's tombstone.
    fn clears_tombstone(&self) -> bool;
}

impl DecisionExt for Decision {
    fn traced(mut self, traceparent: Option<&str>) -> Self {
        if let Some(state) = self.state.as_mut() {
            if state.traceparent.is_none() {
                state.traceparent = traceparent.map(str::to_owned);
            }
            for (_, event) in &mut self.messages {
                event.traceparent = message_bus::trace::child_of(state.traceparent.as_deref());
            }
        }
        self
    }

    fn clears_tombstone(&self) -> bool {
        self.effects.contains(&Effect::ClearTombstone)
    }
}

/// What a decision is made with besides the state and the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The signal's message id (none for the step timer and HTTP).
    pub message_id: Option<Uuid>,
    pub now: DateTime<Utc>,
    pub timing: Timing,
}

/// Settings the views depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub step_delay: Duration,
}

/// A new fulfillment from `input` (which must be a creating input).
pub fn create(id: &str, input: &Input, ctx: Context) -> Decision {
    create_after(id, input, ctx, None)
}

/// A new fulfillment from `input`; with a `tombstone` (a cancel that came
/// first) it is created already `CANCELLED`, nothing picked, and its
/// `CANCELLED` status event carries the cancel's reason.
pub fn create_after(
    id: &str,
    input: &Input,
    ctx: Context,
    tombstone: Option<&Tombstone>,
) -> Decision {
    let Context {
        message_id,
        now,
        timing,
    } = ctx;
    let (order_id, request) = match input {
        Input::Create { order_id } => {
            if order_id.trim().is_empty() {
                return Decision::unchanged(Err(ReplyError::invalid("orderId must not be empty")));
            }
            (order_id.clone(), None)
        }
        Input::Start(request) => {
            if let Err(why) = request.validate() {
                return Decision::unchanged(Err(ReplyError::invalid(why)));
            }
            (request.order_id.clone(), Some(request.clone()))
        }
        _ => {
            return Decision::unchanged(Err(ReplyError::not_found(format!("no fulfillment {id}"))))
        }
    };
    let status = if tombstone.is_some() {
        FulfillmentStatus::Cancelled
    } else if request.is_some() {
        FulfillmentStatus::Picking
    } else {
        FulfillmentStatus::Waiting
    };
    let mut state = Fulfillment {
        id: id.to_owned(),
        order_id,
        status,
        shipping_address: request.as_ref().map(|r| r.shipping_address.clone()),
        request,
        step: 0,
        paused_from: None,
        tracking_number: None,
        shipping_carrier: None,
        estimated_delivery: None,
        cancellation_reason: tombstone.map(|t| t.reason.clone()),
        error: None,
        completed_steps: Vec::new(),
        created_at: now,
        updated_at: now,
        seq: 0,
        processed: AppliedMessages::default(),
        traceparent: None,
    };
    let mut history: Vec<Entry> = input.received(message_id, now).into_iter().collect();
    history.push(Entry::new(
        FULFILLMENT_CREATED,
        now,
        message_id,
        serde_json::json!({ "orderId": state.order_id }),
    ));
    if let Some(t) = tombstone {
        state.remember(Some(t.message_id));
        history.push(Entry::new(
            TOMBSTONE_APPLIED,
            now,
            Some(t.message_id),
            serde_json::json!({ "reason": t.reason, "cancelledAt": t.at }),
        ));
    }
    state.remember(message_id);
    let mut decision = transition(state, None, now, timing, true, history);
    if tombstone.is_some() {
        decision.effects.push(Effect::ClearTombstone);
    }
    decision
}

/// A signal for a fulfillment that does not exist. A cancel sent over the
/// bus (it has a message id) leaves a tombstone, answered as accepted with
/// `CANCELLED`; anything else is not found. (Creating inputs go to
/// [`create_after`] instead.)
pub fn absent(
    id: &str,
    input: &Input,
    ctx: Context,
) -> Result<(Tombstone, Vec<Entry>, Reply), Reply> {
    let now = ctx.now;
    match (input, ctx.message_id) {
        (Input::Cancel { reason }, Some(message_id)) => {
            let tombstone = Tombstone {
                id: id.to_owned(),
                reason: reason.clone(),
                message_id,
                at: now,
            };
            let mut entry = input
                .received(Some(message_id), now)
                .expect("a cancel is a signal");
            entry.detail["beforeStart"] = serde_json::Value::Bool(true);
            let reply = Ok(Accepted {
                status: FulfillmentStatus::Cancelled,
                created: false,
            });
            Ok((tombstone, vec![entry], reply))
        }
        _ => Err(Err(ReplyError::not_found(format!("no fulfillment {id}")))),
    }
}

/// Applies `input` to `state`.
pub fn decide(state: &Fulfillment, input: Input, ctx: Context) -> Decision {
    use FulfillmentStatus as S;
    let input = &input;
    let Context {
        message_id,
        now,
        timing,
    } = ctx;
    if let Some(id) = message_id {
        if state.processed.contains(&id) {
            // A redelivery: answered as the first time, nothing stored.
            let refused = matches!(input, Input::Cancel { .. })
                && matches!(state.status, S::Shipped | S::Failed);
            return Decision::unchanged(if refused {
                Err(state.not_now("cancelled"))
            } else {
                Ok(state.accepted())
            });
        }
    }
    let status = state.status;
    let mut next = state.clone();
    let mut history: Vec<Entry> = input.received(message_id, now).into_iter().collect();
    match input {
        Input::Create { .. } => return state.noop(input, message_id, now),
        Input::Start(request) => {
            if status != S::Waiting {
                // Signal-with-start for a running one: already started.
                return state.noop(input, message_id, now);
            }
            if let Err(why) = request.validate() {
                return Decision::unchanged(Err(ReplyError::invalid(why)));
            }
            next.order_id = request.order_id.clone();
            // An address changed while waiting wins over the order's.
            let address = state
                .shipping_address
                .clone()
                .unwrap_or_else(|| request.shipping_address.clone());
            let mut request = request.clone();
            request.shipping_address = address.clone();
            next.shipping_address = Some(address);
            next.request = Some(request);
            next.status = S::Picking;
        }
        Input::Pause => match status {
            S::Paused => return state.noop(input, message_id, now),
            s if is_active(s) => {
                next.paused_from = Some(s);
                next.status = S::Paused;
            }
            _ => return Decision::unchanged(Err(state.not_now("paused"))),
        },
        Input::Resume => match status {
            S::Paused => {
                next.status = state.paused_from.unwrap_or_else(|| state.status_of_step());
                next.paused_from = None;
            }
            s if is_active(s) => return state.noop(input, message_id, now),
            _ => return Decision::unchanged(Err(state.not_now("resumed"))),
        },
        Input::Cancel { reason } => match status {
            S::Cancelled => {
                // Idempotent: remembered, and the CANCELLED event again.
                next.remember(message_id);
                return state.again(next, history, Ok(state.accepted()), now, timing);
            }
            s if s.is_final() => {
                let refusal = state.not_now("cancelled");
                history.push(Entry::new(
                    CANCEL_REFUSED,
                    now,
                    message_id,
                    serde_json::json!({
                        "reason": refusal.message,
                        "requestedReason": reason,
                        "status": s,
                    }),
                ));
                next.remember(message_id);
                return state.again(next, history, Err(refusal), now, timing);
            }
            _ => {
                next.status = S::Cancelled;
                next.paused_from = None;
                next.cancellation_reason = Some(reason.clone());
            }
        },
        Input::UpdateAddress(address) => {
            if let Err(why) = address.validate() {
                return Decision::unchanged(Err(ReplyError::invalid(why)));
            }
            if status.is_final() {
                return Decision::unchanged(Err(state.not_now("re-addressed")));
            }
            if let Some(tracking) = &state.tracking_number {
                return Decision::unchanged(Err(ReplyError::conflict(format!(
                    "the shipping label for {} is already printed (tracking number {tracking}); \
                     the address can no longer change",
                    state.id
                ))));
            }
            if state.shipping_address.as_ref() == Some(address) {
                return state.noop(input, message_id, now);
            }
            next.shipping_address = Some(address.clone());
            if let Some(request) = next.request.as_mut() {
                request.shipping_address = address.clone();
            }
        }
        Input::StepDone { step } => {
            if !is_active(status) || *step != state.step {
                // A timer that outlived a pause or cancel: nothing to do.
                return Decision::unchanged(Ok(state.accepted()));
            }
            next.complete_step(now);
            if let Some(done) = next.completed_steps.last() {
                history.push(Entry::new(
                    STEP_COMPLETED,
                    now,
                    None,
                    serde_json::json!({ "step": done.step, "name": done.name }),
                ));
            }
        }
    }
    next.remember(message_id);
    next.updated_at = now;
    transition(next, Some(status), now, timing, false, history)
}

/// Bumps the transition counter and writes the event for `state`: a
/// status event when the status changed (or the fulfillment is new), a
/// progress event otherwise.
fn transition(
    mut state: Fulfillment,
    previous: Option<FulfillmentStatus>,
    now: DateTime<Utc>,
    timing: Timing,
    created: bool,
    mut history: Vec<Entry>,
) -> Decision {
    state.seq += 1;
    let event = FulfillmentStatusChanged {
        previous_status: previous,
        fulfillment: state.status_view(),
        progress: state.progress_view(now, timing),
    };
    let message_id = ids::effect_message_id(&state.id, &format!("status:{}", state.seq));
    let mut envelope = Envelope::with_id(
        message_id,
        state.id.clone(),
        Message::FulfillmentStatusChanged(Box::new(event)),
    );
    envelope.sent_at = now;
    // A new status is a status event (what order-service binds); a step
    // within the same status is a progress event.
    let key = if previous == Some(state.status) {
        fulfillment_progress_key(state.status)
    } else {
        fulfillment_event_key(state.status)
    };
    let route = Route::new(FULFILLMENT_EVENTS_EXCHANGE, &key, false);
    if previous != Some(state.status) {
        history.push(Entry::new(
            STATUS_CHANGED,
            now,
            Some(message_id),
            serde_json::json!({
                "from": previous,
                "to": state.status,
                "reason": (state.status == FulfillmentStatus::Cancelled)
                    .then(|| state.cancellation_reason.clone())
                    .flatten(),
            }),
        ));
    } else if let Some(last) = history.last_mut() {
        // A step within the same status: its progress event.
        if last.kind == STEP_COMPLETED {
            last.message_id = Some(message_id);
        }
    }
    let reply = Ok(Accepted {
        status: state.status,
        created,
    });
    Decision {
        state: Some(state),
        messages: vec![(route, envelope)],
        effects: Vec::new(),
        history,
        reply,
    }
}

/// A status in which steps run.
fn is_active(status: FulfillmentStatus) -> bool {
    matches!(
        status,
        FulfillmentStatus::Picking | FulfillmentStatus::Packing | FulfillmentStatus::ReadyToShip
    )
}

impl Fulfillment {
    pub fn total_items(&self) -> u32 {
        self.request
            .as_ref()
            .map_or(0, |r| u32::try_from(r.items.len()).unwrap_or(u32::MAX))
    }

    pub fn total_steps(&self) -> u32 {
        self.total_items().saturating_add(STEPS_AFTER_PICKING)
    }

    /// Steps are running (the actor keeps a timer for `step`).
    pub fn is_running(&self) -> bool {
        is_active(self.status)
    }

    pub fn items_picked(&self) -> u32 {
        self.step.min(self.total_items())
    }

    /// The status a fulfillment has while working on its current step.
    fn status_of_step(&self) -> FulfillmentStatus {
        let n = self.total_items();
        match self.step {
            s if s <= n => FulfillmentStatus::Picking,
            s if s == n + 1 => FulfillmentStatus::Packing,
            s if s < self.total_steps() => FulfillmentStatus::ReadyToShip,
            _ => FulfillmentStatus::Shipped,
        }
    }

    /// The name of step `step` (0-based).
    pub fn step_name(&self, step: u32) -> String {
        let n = self.total_items();
        if step < n {
            let product = self
                .request
                .as_ref()
                .and_then(|r| r.items.get(step as usize))
                .map_or("item", |i| i.product_name.as_str());
            return format!("Picking item {} of {n}: {product}", step + 1);
        }
        match step - n {
            0 => "Quality check".into(),
            1 => "Packing".into(),
            2 => "Printing shipping label".into(),
            _ => "Shipping".into(),
        }
    }

    /// What the fulfillment is doing now, in words.
    pub fn current_step_name(&self) -> String {
        match self.status {
            FulfillmentStatus::Waiting => "Waiting for start".into(),
            FulfillmentStatus::Shipped => "Shipped".into(),
            FulfillmentStatus::Cancelled => "Cancelled".into(),
            FulfillmentStatus::Failed => "Failed".into(),
            FulfillmentStatus::Paused => format!("Paused at: {}", self.step_name(self.step)),
            _ => self.step_name(self.step),
        }
    }

    fn complete_step(&mut self, now: DateTime<Utc>) {
        let done = self.step;
        let n = self.total_items();
        if done == n + 2 {
            self.print_label(now);
        }
        self.completed_steps.push(CompletedStep {
            step: done + 1,
            name: self.step_name(done),
            completed_at: now,
        });
        self.step = done + 1;
        self.status = self.status_of_step();
    }

    fn print_label(&mut self, now: DateTime<Utc>) {
        let hash = ids::effect_message_id(&self.id, "label")
            .simple()
            .to_string();
        let tracking = format!("TRK-{}", hash[..12].to_ascii_uppercase());
        let carrier = CARRIERS[usize::from(hash.as_bytes()[12]) % CARRIERS.len()];
        self.tracking_number = Some(tracking);
        self.shipping_carrier = Some(carrier.into());
        self.estimated_delivery = Some(now + chrono::Duration::days(DELIVERY_DAYS));
    }

    fn remember(&mut self, message_id: Option<Uuid>) {
        if let Some(id) = message_id {
            self.processed.remember(id);
        }
    }

    fn accepted(&self) -> Accepted {
        Accepted {
            status: self.status,
            created: false,
        }
    }

    /// An accepted signal that changes nothing but is remembered, so its
    /// redelivery after a later change is still recognised.
    fn noop(&self, input: &Input, message_id: Option<Uuid>, now: DateTime<Utc>) -> Decision {
        match message_id {
            Some(_) if !self.status.is_final() => {
                let mut next = self.clone();
                next.remember(message_id);
                next.updated_at = now;
                Decision {
                    state: Some(next),
                    messages: Vec::new(),
                    effects: Vec::new(),
                    history: input.received(message_id, now).into_iter().collect(),
                    reply: Ok(self.accepted()),
                }
            }
            _ => Decision::unchanged(Ok(self.accepted())),
        }
    }

    /// `next` (this state, with the signal remembered) stored with
    /// `history`, and the current status event published again under its
    /// original message id, so a subscriber that missed it learns it now
    /// and one that saw it recognises it.
    fn again(
        &self,
        next: Fulfillment,
        history: Vec<Entry>,
        reply: Reply,
        now: DateTime<Utc>,
        timing: Timing,
    ) -> Decision {
        let event = FulfillmentStatusChanged {
            previous_status: None,
            fulfillment: self.status_view(),
            progress: self.progress_view(now, timing),
        };
        let message_id = ids::effect_message_id(&self.id, &format!("status:{}", self.seq));
        let mut envelope = Envelope::with_id(
            message_id,
            self.id.clone(),
            Message::FulfillmentStatusChanged(Box::new(event)),
        );
        envelope.sent_at = now;
        let route = Route::new(
            FULFILLMENT_EVENTS_EXCHANGE,
            &fulfillment_event_key(self.status),
            false,
        );
        Decision {
            state: Some(next),
            messages: vec![(route, envelope)],
            effects: Vec::new(),
            history,
            reply,
        }
    }

    fn not_now(&self, what: &str) -> ReplyError {
        let why = match self.status {
            FulfillmentStatus::Waiting => "it has not started yet".to_owned(),
            FulfillmentStatus::Shipped => "it has already shipped".to_owned(),
            FulfillmentStatus::Cancelled => format!(
                "it was cancelled ({})",
                self.cancellation_reason
                    .as_deref()
                    .unwrap_or("no reason given")
            ),
            FulfillmentStatus::Failed => "it has failed".to_owned(),
            other => format!("it is {other}"),
        };
        ReplyError::conflict(format!("fulfillment {} cannot be {what}: {why}", self.id))
    }

    pub fn status_view(&self) -> FulfillmentStatusView {
        FulfillmentStatusView {
            fulfillment_workflow_id: self.id.clone(),
            order_id: self.order_id.clone(),
            status: self.status,
            current_step: self.current_step_name(),
            tracking_number: self.tracking_number.clone(),
            shipping_carrier: self.shipping_carrier.clone(),
            estimated_delivery: self.estimated_delivery,
            is_paused: self.status == FulfillmentStatus::Paused,
            shipping_address: self.shipping_address.clone(),
            cancellation_reason: self.cancellation_reason.clone(),
            error: self.error.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// Progress as of `now` (which only moves the estimated completion).
    pub fn progress_view(&self, now: DateTime<Utc>, timing: Timing) -> FulfillmentProgressView {
        let total = self.total_steps();
        let done = self.step.min(total);
        let percentage = if self.status == FulfillmentStatus::Shipped {
            100
        } else {
            // Rounded to the nearest whole percent.
            (done * 100 + total / 2) / total.max(1)
        };
        let current_step = match self.status {
            FulfillmentStatus::Waiting => 0,
            _ => (done + 1).min(total),
        };
        let estimated_completion = if self.is_running() {
            let remaining = u64::from(total - done);
            let millis = u64::try_from(timing.step_delay.as_millis()).unwrap_or(u64::MAX);
            let ms = i64::try_from(remaining.saturating_mul(millis)).unwrap_or(i64::MAX);
            Some(now + chrono::Duration::milliseconds(ms))
        } else if self.status == FulfillmentStatus::Shipped {
            self.completed_steps.last().map(|s| s.completed_at)
        } else {
            None
        };
        FulfillmentProgressView {
            fulfillment_workflow_id: self.id.clone(),
            order_id: self.order_id.clone(),
            status: self.status,
            current_step,
            step_name: self.current_step_name(),
            total_steps: total,
            percentage,
            items_picked: self.items_picked(),
            total_items: self.total_items(),
            estimated_completion,
            completed_steps: self.completed_steps.clone(),
        }
    }
}

/// A signal's envelope names the fulfillment it is for; a payload that
/// names an order must name that fulfillment's order. A mismatch is never
/// applied (it would start one order's fulfillment with another's goods).
pub fn check_entity(entity_id: &str, input: &Input) -> Result<(), String> {
    let order_id = match input {
        Input::Create { order_id } => order_id,
        Input::Start(request) => &request.order_id,
        _ => return Ok(()),
    };
    let expected = ids::fulfillment_workflow_id(order_id);
    if expected == entity_id {
        Ok(())
    } else {
        Err(format!(
            "entity id {entity_id:?} does not match the payload's orderId {order_id:?} \
             (its fulfillment is {expected:?})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_messages::messages::{OrderItem, ReplyErrorCode};
    use FulfillmentStatus as S;

    const TIMING: Timing = Timing {
        step_delay: Duration::from_millis(1000),
    };

    fn ctx(message_id: Option<Uuid>) -> Context {
        Context {
            message_id,
            now: now(),
            timing: TIMING,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("valid time")
            .with_timezone(&Utc)
    }

    fn address(street: &str) -> Address {
        Address {
            street: street.into(),
            city: "Springfield".into(),
            state: "IL".into(),
            zip_code: "62701".into(),
            country: "USA".into(),
        }
    }

    fn request(items: usize) -> FulfillmentRequest {
        FulfillmentRequest {
            order_id: "ORD-1".into(),
            customer_id: "c-1".into(),
            customer_name: None,
            customer_email: None,
            items: (0..items)
                .map(|i| OrderItem {
                    product_id: format!("product-{i}"),
                    product_name: format!("Thing {i}"),
                    quantity: 1,
                    price: 1.0,
                })
                .collect(),
            shipping_address: address("1 Main St"),
        }
    }

    fn started(items: usize) -> Fulfillment {
        let d = create(
            "fulfillment-ORD-1",
            &Input::Start(request(items)),
            ctx(None),
        );
        assert_eq!(
            d.reply,
            Ok(Accepted {
                status: S::Picking,
                created: true
            })
        );
        d.state.expect("created")
    }

    /// Applies an input that must be accepted and change the state.
    fn apply(state: &Fulfillment, input: Input) -> Fulfillment {
        let d = decide(state, input.clone(), ctx(Some(Uuid::new_v4())));
        assert!(
            d.reply.is_ok(),
            "{input:?} on {:?}: {:?}",
            state.status,
            d.reply
        );
        d.state.expect("changed")
    }

    fn step(state: &Fulfillment) -> Fulfillment {
        apply(state, Input::StepDone { step: state.step })
    }

    fn progress(state: &Fulfillment) -> (S, u32, u32, u32, u32) {
        let p = state.progress_view(now(), TIMING);
        (
            p.status,
            p.current_step,
            p.percentage,
            p.items_picked,
            p.total_items,
        )
    }

    fn rejected(state: &Fulfillment, input: Input) -> ReplyError {
        let d = decide(state, input, ctx(Some(Uuid::new_v4())));
        assert_eq!(d.state, None, "a rejection changes nothing");
        assert!(d.messages.is_empty());
        d.reply.expect_err("rejected")
    }

    /// A stored fulfillment leaves out what is unset, and reads back the
    /// same; so does a row that stored those fields as `null`.
    #[test]
    fn what_is_unset_is_left_out_of_the_stored_state() {
        let f = started(1);
        let json = serde_json::to_value(&f).expect("json");
        for unset in [
            "trackingNumber",
            "cancellationReason",
            "error",
            "pausedFrom",
        ] {
            assert!(json.get(unset).is_none(), "{unset} in {json}");
        }
        let back: Fulfillment = serde_json::from_value(json.clone()).expect("reads back");
        assert_eq!(back, f);
        let mut with_nulls = json;
        with_nulls["trackingNumber"] = serde_json::Value::Null;
        with_nulls["error"] = serde_json::Value::Null;
        let older: Fulfillment = serde_json::from_value(with_nulls).expect("an older row");
        assert_eq!(older, f);
    }

    #[test]
    fn happy_path_step_by_step_with_exact_progress() {
        let mut f = started(2);
        assert_eq!(f.total_steps(), 6);
        let expected = [
            (S::Picking, 1, 0, 0, 2),
            (S::Picking, 2, 17, 1, 2),
            (S::Picking, 3, 33, 2, 2), // quality check
            (S::Packing, 4, 50, 2, 2),
            (S::ReadyToShip, 5, 67, 2, 2), // label
            (S::ReadyToShip, 6, 83, 2, 2), // ship
            (S::Shipped, 6, 100, 2, 2),
        ];
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(progress(&f), *want, "after {i} steps");
            assert_eq!(f.completed_steps.len(), i);
            if i == 4 {
                assert!(f.tracking_number.is_none(), "label not printed yet");
            }
            if f.status != S::Shipped {
                f = step(&f);
            }
        }
        let tracking = f.tracking_number.clone().expect("label printed");
        assert!(
            tracking.starts_with("TRK-") && tracking.len() == 16,
            "{tracking}"
        );
        assert!(f.shipping_carrier.is_some());
        assert!(f.estimated_delivery.is_some());
        assert_eq!(f.completed_steps[0].name, "Picking item 1 of 2: Thing 0");
        assert_eq!(f.completed_steps[5].step, 6);
        assert_eq!(f.seq, 7, "one transition per step plus the start");
    }

    #[test]
    fn every_transition_has_one_event_with_a_deterministic_id() {
        let f = started(1);
        let d = decide(&f, Input::StepDone { step: 0 }, ctx(None));
        assert_eq!(d.messages.len(), 1);
        let (route, envelope) = &d.messages[0];
        // An item picked is progress within PICKING, not a new status.
        assert_eq!(route.routing_key, "fulfillment.progress.picking");
        assert_eq!(
            envelope.message_id,
            ids::effect_message_id("fulfillment-ORD-1", "status:2")
        );
        let Message::FulfillmentStatusChanged(event) = &envelope.message else {
            panic!("an event")
        };
        assert_eq!(event.previous_status, Some(S::Picking));
        assert_eq!(event.progress.items_picked, 1);
    }

    #[test]
    fn status_changes_are_status_events_and_steps_within_a_status_progress_events() {
        let created = create("fulfillment-ORD-1", &Input::Start(request(2)), ctx(None));
        let mut keys = vec![created.messages[0].0.routing_key.clone()];
        let mut f = created.state.expect("created");
        while f.status != S::Shipped {
            let d = decide(&f, Input::StepDone { step: f.step }, ctx(None));
            keys.extend(d.messages.iter().map(|(r, _)| r.routing_key.clone()));
            f = d.state.expect("a step moves on");
        }
        assert_eq!(
            keys,
            [
                "fulfillment.status.picking",
                "fulfillment.progress.picking",
                "fulfillment.progress.picking",
                "fulfillment.status.packing",
                "fulfillment.status.ready_to_ship",
                "fulfillment.progress.ready_to_ship",
                "fulfillment.status.shipped",
            ]
        );
        let f = started(1);
        let paused = decide(&f, Input::Pause, ctx(None));
        assert_eq!(
            paused.messages[0].0.routing_key,
            "fulfillment.status.paused"
        );
        let moved = decide(
            &f,
            Input::UpdateAddress(address("9 Elsewhere Road")),
            ctx(None),
        );
        assert_eq!(
            moved.messages[0].0.routing_key,
            "fulfillment.progress.picking"
        );
    }

    #[test]
    fn create_waiting_then_start() {
        let d = create(
            "fulfillment-ORD-1",
            &Input::Create {
                order_id: "ORD-1".into(),
            },
            ctx(None),
        );
        let f = d.state.expect("created");
        assert_eq!(f.status, S::Waiting);
        assert_eq!(progress(&f), (S::Waiting, 0, 0, 0, 0));
        assert_eq!(rejected(&f, Input::Pause).code, ReplyErrorCode::Conflict);
        let f = apply(&f, Input::Start(request(3)));
        assert_eq!(progress(&f), (S::Picking, 1, 0, 0, 3));
        // a second start is a no-op
        let d = decide(&f, Input::Start(request(3)), ctx(None));
        assert_eq!(d.state, None);
        assert_eq!(d.reply.map(|a| a.status), Ok(S::Picking));
    }

    #[test]
    fn invalid_start_is_rejected_as_invalid() {
        let d = create("fulfillment-ORD-1", &Input::Start(request(0)), ctx(None));
        assert_eq!(d.state, None);
        assert_eq!(d.reply.expect_err("no items").code, ReplyErrorCode::Invalid);
    }

    #[test]
    fn pause_and_resume_return_to_the_paused_step() {
        let mut f = started(2);
        for _ in 0..3 {
            f = step(&f); // two picks and the quality check
        }
        assert_eq!(f.status, S::Packing);
        let paused = apply(&f, Input::Pause);
        assert_eq!(paused.status, S::Paused);
        assert_eq!(progress(&paused), (S::Paused, 4, 50, 2, 2));
        // a timer that fires late does not advance a paused fulfillment
        let d = decide(&paused, Input::StepDone { step: 3 }, ctx(None));
        assert_eq!(d.state, None);
        // pausing again is a no-op success
        let d = decide(&paused, Input::Pause, ctx(None));
        assert_eq!(d.state, None);
        assert_eq!(d.reply.map(|a| a.status), Ok(S::Paused));
        let resumed = apply(&paused, Input::Resume);
        assert_eq!(resumed.status, S::Packing, "back to the paused status");
        assert_eq!(resumed.step, 3, "and to the paused step");
        // resuming a running one is a no-op success
        let d = decide(&resumed, Input::Resume, ctx(None));
        assert_eq!(d.state, None);
        assert_eq!(d.reply.map(|a| a.status), Ok(S::Packing));
        let packed = step(&resumed);
        assert_eq!(packed.status, S::ReadyToShip);
    }

    #[test]
    fn pause_while_picking_resumes_picking_the_same_item() {
        let f = step(&started(3));
        let resumed = apply(&apply(&f, Input::Pause), Input::Resume);
        assert_eq!(progress(&resumed), (S::Picking, 2, 14, 1, 3));
    }

    #[test]
    fn cancel_mid_picking() {
        let f = step(&started(3));
        let cancelled = apply(
            &f,
            Input::Cancel {
                reason: "customer asked".into(),
            },
        );
        assert_eq!(cancelled.status, S::Cancelled);
        assert_eq!(
            cancelled.cancellation_reason.as_deref(),
            Some("customer asked")
        );
        assert_eq!(cancelled.items_picked(), 1);
        let d = decide(&cancelled, Input::StepDone { step: 1 }, ctx(None));
        assert_eq!(d.state, None, "a stale timer changes nothing");
        // cancelling again is an idempotent success that says so again
        let d = decide(&cancelled, Input::Cancel { reason: "x".into() }, ctx(None));
        assert_eq!(d.reply.map(|a| a.status), Ok(S::Cancelled));
        assert_eq!(d.messages.len(), 1);
        assert_eq!(d.messages[0].0.routing_key, "fulfillment.status.cancelled");
        assert_eq!(d.state.map(|s| s.status), Some(S::Cancelled));
    }

    #[test]
    fn cancel_from_paused_and_waiting() {
        let paused = apply(&started(1), Input::Pause);
        let c = apply(&paused, Input::Cancel { reason: "r".into() });
        assert_eq!(c.status, S::Cancelled);
        let waiting = create(
            "f",
            &Input::Create {
                order_id: "o".into(),
            },
            ctx(None),
        )
        .state
        .expect("created");
        assert_eq!(
            apply(&waiting, Input::Cancel { reason: "r".into() }).status,
            S::Cancelled
        );
    }

    #[test]
    fn address_changes_until_the_label_is_printed() {
        let mut f = started(1);
        f = apply(&f, Input::UpdateAddress(address("2 New St")));
        assert_eq!(f.shipping_address, Some(address("2 New St")));
        for _ in 0..3 {
            f = step(&f); // pick, check, pack
        }
        assert_eq!(f.status, S::ReadyToShip);
        f = apply(&f, Input::UpdateAddress(address("3 Late St")));
        f = step(&f); // label
        let err = rejected(&f, Input::UpdateAddress(address("4 Too Late St")));
        assert_eq!(err.code, ReplyErrorCode::Conflict);
        assert!(err.message.contains("label"), "{}", err.message);
        assert_eq!(f.shipping_address, Some(address("3 Late St")));
        let err = rejected(&f, Input::UpdateAddress(address("")));
        assert_eq!(err.code, ReplyErrorCode::Invalid);
    }

    #[test]
    fn duplicate_message_ids_change_nothing() {
        let f = started(2);
        let id = Uuid::new_v4();
        let paused = decide(&f, Input::Pause, ctx(Some(id)))
            .state
            .expect("paused");
        let resumed = apply(&paused, Input::Resume);
        let d = decide(&resumed, Input::Pause, ctx(Some(id)));
        assert_eq!(d.state, None, "the repeated pause is recognised");
        assert!(d.messages.is_empty());
        assert_eq!(d.reply.map(|a| a.status), Ok(S::Picking));
    }

    #[test]
    fn remembered_ids_are_bounded() {
        let mut f = started(1);
        for _ in 0..(AppliedMessages::KEPT + 10) {
            f = apply(&f, Input::Pause);
            f = apply(&f, Input::Resume);
        }
        assert_eq!(f.processed.len(), AppliedMessages::KEPT);
    }

    #[test]
    fn final_states_reject_changes() {
        let mut f = started(1);
        while f.status != S::Shipped {
            f = step(&f);
        }
        for input in [
            Input::Pause,
            Input::Resume,
            Input::UpdateAddress(address("x")),
        ] {
            let err = rejected(&f, input);
            assert_eq!(err.code, ReplyErrorCode::Conflict);
            assert!(err.message.contains("shipped"), "{}", err.message);
        }
        // a repeated start stays an idempotent success
        let d = decide(&f, Input::Start(request(1)), ctx(Some(Uuid::new_v4())));
        assert_eq!(d.state, None);
        assert_eq!(d.reply.map(|a| a.status), Ok(S::Shipped));
        let cancelled = apply(&started(1), Input::Cancel { reason: "r".into() });
        assert_eq!(
            rejected(&cancelled, Input::Resume).code,
            ReplyErrorCode::Conflict
        );
    }

    #[test]
    fn state_round_trips_through_json() {
        let f = step(&started(2));
        let json = serde_json::to_string(&f).expect("json");
        let back: Fulfillment = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, f);
    }

    fn kinds(history: &[Entry]) -> Vec<&'static str> {
        history.iter().map(|e| e.kind).collect()
    }

    fn shipped(items: usize) -> Fulfillment {
        let mut f = started(items);
        while f.status != S::Shipped {
            f = step(&f);
        }
        f
    }

    #[test]
    fn a_cancel_before_the_start_leaves_a_tombstone_and_the_start_creates_it_cancelled() {
        let cancel = Input::Cancel {
            reason: "customer changed their mind".into(),
        };
        let cancel_id = Uuid::new_v4();
        let (tombstone, history, reply) =
            absent("fulfillment-ORD-1", &cancel, ctx(Some(cancel_id))).expect("a tombstone");
        assert_eq!(tombstone.message_id, cancel_id);
        assert_eq!(tombstone.reason, "customer changed their mind");
        assert_eq!(kinds(&history), ["CancelFulfillment"]);
        assert_eq!(reply.map(|a| a.status), Ok(S::Cancelled));

        let start_id = Uuid::new_v4();
        let d = create_after(
            "fulfillment-ORD-1",
            &Input::Start(request(2)),
            ctx(Some(start_id)),
            Some(&tombstone),
        );
        assert_eq!(
            d.reply,
            Ok(Accepted {
                status: S::Cancelled,
                created: true
            })
        );
        assert!(d.clears_tombstone());
        let f = d.state.clone().expect("created");
        assert_eq!(f.status, S::Cancelled);
        assert_eq!(f.items_picked(), 0, "nothing picked");
        assert!(f.completed_steps.is_empty());
        assert_eq!(
            kinds(&d.history),
            [
                "StartFulfillment",
                "FulfillmentCreated",
                "TombstoneApplied",
                "StatusChanged"
            ]
        );
        assert_eq!(d.history[2].message_id, Some(cancel_id));
        let (route, envelope) = &d.messages[0];
        assert_eq!(route.routing_key, "fulfillment.status.cancelled");
        let Message::FulfillmentStatusChanged(event) = &envelope.message else {
            panic!("a status event")
        };
        assert_eq!(
            event.fulfillment.cancellation_reason.as_deref(),
            Some("customer changed their mind")
        );
        // The cancel, redelivered after the start, changes nothing.
        let again = decide(&f, cancel, ctx(Some(cancel_id)));
        assert_eq!(again.state, None);
        assert!(again.history.is_empty());
        // A waiting workflow created after the cancel is cancelled too.
        let d = create_after(
            "fulfillment-ORD-1",
            &Input::Create {
                order_id: "ORD-1".into(),
            },
            ctx(None),
            Some(&tombstone),
        );
        assert_eq!(d.state.map(|s| s.status), Some(S::Cancelled));
    }

    #[test]
    fn only_a_cancel_with_a_message_id_leaves_a_tombstone() {
        let not_found = |input: Input, id: Option<Uuid>| {
            let refused = absent("f", &input, ctx(id)).expect_err("not found");
            assert_eq!(
                refused.expect_err("rejected").code,
                ReplyErrorCode::NotFound
            );
        };
        not_found(Input::Pause, Some(Uuid::new_v4()));
        not_found(Input::Resume, Some(Uuid::new_v4()));
        not_found(Input::UpdateAddress(address("x")), Some(Uuid::new_v4()));
        // Over HTTP (no message id) there is nothing to remember it by.
        not_found(Input::Cancel { reason: "r".into() }, None);
    }

    #[test]
    fn a_cancel_of_a_shipped_fulfillment_is_refused_recorded_and_its_event_sent_again() {
        let f = shipped(1);
        let id = Uuid::new_v4();
        let d = decide(
            &f,
            Input::Cancel {
                reason: "too late".into(),
            },
            ctx(Some(id)),
        );
        let err = d.reply.clone().expect_err("refused");
        assert_eq!(err.code, ReplyErrorCode::Conflict);
        assert!(err.message.contains("shipped"), "{}", err.message);
        let stored = d.state.clone().expect("the cancel is remembered");
        assert_eq!(stored.status, S::Shipped);
        assert!(stored.processed.contains(&id));
        assert_eq!(kinds(&d.history), ["CancelFulfillment", "CancelRefused"]);
        assert_eq!(d.history[1].detail["requestedReason"], "too late");
        assert_eq!(d.messages.len(), 1);
        let (route, envelope) = &d.messages[0];
        assert_eq!(route.routing_key, "fulfillment.status.shipped");
        assert_eq!(
            envelope.message_id,
            ids::effect_message_id(&f.id, &format!("status:{}", f.seq)),
            "the SHIPPED event again, under its own id"
        );
        // Redelivered: the same answer, nothing stored, nothing recorded.
        let again = decide(
            &stored,
            Input::Cancel {
                reason: "too late".into(),
            },
            ctx(Some(id)),
        );
        assert_eq!(again.state, None);
        assert!(again.messages.is_empty() && again.history.is_empty());
        assert_eq!(
            again.reply.expect_err("still refused").code,
            ReplyErrorCode::Conflict
        );
    }

    #[test]
    fn a_second_cancel_of_a_cancelled_one_succeeds_and_sends_cancelled_again_once() {
        let cancelled = apply(
            &started(1),
            Input::Cancel {
                reason: "first".into(),
            },
        );
        let id = Uuid::new_v4();
        let cancel = Input::Cancel {
            reason: "second".into(),
        };
        let d = decide(&cancelled, cancel.clone(), ctx(Some(id)));
        assert_eq!(d.reply.map(|a| a.status), Ok(S::Cancelled));
        assert_eq!(d.messages[0].0.routing_key, "fulfillment.status.cancelled");
        assert_eq!(kinds(&d.history), ["CancelFulfillment"]);
        let stored = d.state.expect("remembered");
        assert_eq!(stored.cancellation_reason.as_deref(), Some("first"));
        let again = decide(&stored, cancel, ctx(Some(id)));
        assert_eq!(again.state, None, "no second entry for the same message");
        assert_eq!(again.reply.map(|a| a.status), Ok(S::Cancelled));
    }

    #[test]
    fn history_records_signals_steps_and_status_changes() {
        let d = create("fulfillment-ORD-1", &Input::Start(request(1)), ctx(None));
        let mut all = d.history.clone();
        let mut f = d.state.expect("created");
        let pause_id = Uuid::new_v4();
        let paused = decide(&f, Input::Pause, ctx(Some(pause_id)));
        all.extend(paused.history.clone());
        f = paused.state.expect("paused");
        f = {
            let d = decide(&f, Input::Resume, ctx(None));
            all.extend(d.history.clone());
            d.state.expect("resumed")
        };
        while f.status != S::Shipped {
            let d = decide(&f, Input::StepDone { step: f.step }, ctx(None));
            all.extend(d.history.clone());
            f = d.state.expect("a step");
        }
        assert_eq!(
            kinds(&all),
            [
                "StartFulfillment",
                "FulfillmentCreated",
                "StatusChanged", // -> PICKING
                "PauseFulfillment",
                "StatusChanged", // -> PAUSED
                "ResumeFulfillment",
                "StatusChanged", // -> PICKING
                "StepCompleted", // pick (within PICKING)
                "StepCompleted", // quality check
                "StatusChanged", // -> PACKING
                "StepCompleted", // pack
                "StatusChanged", // -> READY_TO_SHIP
                "StepCompleted", // label
                "StepCompleted", // ship
                "StatusChanged", // -> SHIPPED
            ]
        );
        assert_eq!(all[3].message_id, Some(pause_id));
        assert_eq!(all[14].detail["to"], "SHIPPED");
        assert!(all[7].message_id.is_some(), "a step names its event");
        // A no-op signal is still a signal received; its redelivery is not.
        let resumed = apply(&started(1), Input::Pause);
        let id = Uuid::new_v4();
        let d = decide(&resumed, Input::Pause, ctx(Some(id)));
        assert_eq!(kinds(&d.history), ["PauseFulfillment"]);
        let again = decide(&d.state.expect("noted"), Input::Pause, ctx(Some(id)));
        assert!(again.state.is_none() && again.history.is_empty());
    }

    #[test]
    fn an_envelope_naming_another_fulfillment_than_its_payload_is_refused() {
        assert_eq!(
            check_entity("fulfillment-ORD-1", &Input::Start(request(1))),
            Ok(())
        );
        let err =
            check_entity("fulfillment-ORD-2", &Input::Start(request(1))).expect_err("mismatch");
        assert!(
            err.contains("fulfillment-ORD-2") && err.contains("ORD-1"),
            "{err}"
        );
        let create = Input::Create {
            order_id: "ORD-9".into(),
        };
        assert!(check_entity("fulfillment-ORD-1", &create).is_err());
        assert_eq!(check_entity("fulfillment-ORD-9", &create), Ok(()));
        // Signals without an order id are checked by the fulfillment they name.
        assert_eq!(check_entity("anything", &Input::Pause), Ok(()));
    }
}

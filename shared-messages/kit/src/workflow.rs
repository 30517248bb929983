//! The one shape of both services' workflows: a pure
//! `decide(state, input, context) -> Decision`, whose [`Decision`] the
//! actor stores (state, outbox messages and history in one transaction)
//! before it acts on its effects and answers.

use message_bus::Route;
use shared_messages::Envelope;

/// The outcome of one input to a workflow in `State`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<State, Effect, History, Reply> {
    /// The state to store; `None` when the input changed nothing.
    pub state: Option<State>,
    /// Messages stored in the outbox with the state.
    pub messages: Vec<(Route, Envelope)>,
    /// What is done besides storing the state (in the same write, or by
    /// the actor once it is stored).
    pub effects: Vec<Effect>,
    /// History entries, stored with the state.
    pub history: Vec<History>,
    /// The answer to whoever sent the input.
    pub reply: Reply,
}

impl<State, Effect, History, Reply> Decision<State, Effect, History, Reply> {
    /// Nothing changes, nothing to do: the input is answered with `reply`.
    pub fn unchanged(reply: Reply) -> Self {
        Self {
            state: None,
            messages: Vec::new(),
            effects: Vec::new(),
            history: Vec::new(),
            reply,
        }
    }
}

/// The ids of the last [`AppliedMessages::KEPT`] messages a workflow
/// applied, oldest first, kept in its state so that a redelivered message
/// is recognised and applied once. A broker redelivers within seconds of
/// a failure, so the last 64 cover every realistic redelivery while
/// keeping the stored state small. Stored as a JSON array of ids.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AppliedMessages(std::collections::VecDeque<uuid::Uuid>);

impl AppliedMessages {
    /// How many ids are kept.
    pub const KEPT: usize = 64;

    /// Whether the message `id` was applied (among the last kept).
    pub fn contains(&self, id: &uuid::Uuid) -> bool {
        self.0.contains(id)
    }

    /// Records `id` as applied, forgetting the oldest past [`Self::KEPT`].
    pub fn remember(&mut self, id: uuid::Uuid) {
        self.0.push_back(id);
        while self.0.len() > Self::KEPT {
            self.0.pop_front();
        }
    }

    /// How many ids are kept now.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last [`AppliedMessages::KEPT`] ids are kept, the oldest
    /// forgotten first; stored as a plain array, as before it had a type.
    #[test]
    fn applied_messages_keep_the_newest_and_store_as_an_array() {
        let mut applied = AppliedMessages::default();
        let ids: Vec<uuid::Uuid> = (0..AppliedMessages::KEPT + 3)
            .map(|_| uuid::Uuid::new_v4())
            .collect();
        for id in &ids {
            applied.remember(*id);
        }
        assert_eq!(applied.len(), AppliedMessages::KEPT);
        assert!(ids[..3].iter().all(|id| !applied.contains(id)));
        assert!(ids[3..].iter().all(|id| applied.contains(id)));
        let json = serde_json::to_value(&applied).expect("json");
        assert_eq!(json.as_array().map(Vec::len), Some(AppliedMessages::KEPT));
        assert_eq!(json[0], ids[3].to_string());
        let back: AppliedMessages = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, applied);
    }
}

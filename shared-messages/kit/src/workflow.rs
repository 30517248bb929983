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

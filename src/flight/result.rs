//! What a flight delivers to its waiters: the first good answer, shared, or why
//! there was none.

use crate::health::UpstreamIdx;
use crate::wire::answer::AnswerLayout;
use crate::wire::build::Ede;
use std::sync::Arc;

/// A good upstream answer as shared with every waiter of a flight.
#[derive(Debug)]
pub struct Answer {
    /// The reply as received (our upstream ID, the upstream's question case).
    pub wire: Vec<u8>,
    /// Where to patch it.
    pub layout: AnswerLayout,
    /// The upstream that gave it (an index of the flight's upstream set).
    pub from: UpstreamIdx,
}

/// What a flight delivers to its waiters.
#[derive(Debug, Clone)]
pub enum FlightResult {
    /// The first good answer.
    Answer(Arc<Answer>),
    /// No upstream gave a good answer (or the leader went away): why, for the
    /// Extended DNS Error of the SERVFAIL.
    Failed(Ede),
}

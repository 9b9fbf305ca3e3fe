//! One flight as a state machine, in the shape of quinn-proto's `Connection`:
//! events in ([`FlightMachine::handle_sent`], [`FlightMachine::handle_reply`],
//! [`FlightMachine::handle_failure`], [`FlightMachine::handle_timeout`]), what to do out
//! ([`FlightMachine::poll_action`]: send to an upstream, ask one again over TCP, wait
//! until an instant, done). Every call takes `now`; nothing here reads a clock or
//! does I/O. The shard's driver (`shard/flight_run.rs`) sends, sleeps and records.
//!
//! What the machine owns, beyond the plan and the answers of [`FlightState`]:
//! - each query's deadline (`upstream_timeout` from when it left, clamped by
//!   [`crate::health::after`]), and when each upstream was asked;
//! - the truncated-to-TCP decision: a UDP answer with TC=1 is not a result; the
//!   query is asked again over TCP, once, within its own deadline;
//! - the budget's decisions: which purpose a query beyond the first is charged
//!   as (a completion by demand charges every query as completion), which sends
//!   are background work, and whether a refused or deferred completion leaves the
//!   answer incomplete. The driver's [`Spender`] holds the buckets and counts.
//!
//! Invariants: a query is heard once (a result for an upstream not out is
//! ignored); no query outlives its deadline ([`FlightMachine::handle_timeout`]); the
//! wake-up [`FlightMachine::poll_action`] gives is never later than the nearest deadline.

use super::state::{Finished, FlightState, Heard, Next};
use crate::health::{after, FailKind, UpstreamIdx};
use crate::tiers::{Purpose, Spend};
use crate::upstream::Exchange;
use smallvec::SmallVec;
use std::time::{Duration, Instant};

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send the query to `up`, then call [`FlightMachine::handle_sent`] (and
    /// [`FlightMachine::handle_failure`] if the send failed at once). `background`: no
    /// client waits for it (completion, prefetch), so it may not take the last
    /// places of the upstream's pending table.
    Send { up: UpstreamIdx, background: bool },
    /// `up` answered with TC=1 over UDP: ask it again over TCP, giving up at
    /// `deadline`; its result comes like any other.
    RetryOverTcp { up: UpstreamIdx, deadline: Instant },
    /// Nothing to do before this instant, unless a result comes.
    Wait(Instant),
    /// The flight is over: [`FlightMachine::finish`].
    Done,
}

/// The amplification budget as the machine asks it. The driver's implementation
/// holds the shard's buckets and counts each decision.
pub(crate) trait Spender {
    /// May a latency query (the active tier's second, a hedge) of `purpose` go?
    fn spend_latency(&mut self, purpose: Purpose, now: Instant) -> bool;
    /// May a completion query go to `up`? `asked_again`: the name is known to be
    /// asked again while its entry is fresh.
    fn spend_completion(&mut self, up: UpstreamIdx, asked_again: bool, now: Instant) -> Spend;
}

/// A query sent and not heard from yet.
#[derive(Debug, Clone, Copy)]
struct Query {
    up: UpstreamIdx,
    deadline: Instant,
    /// Asked again over TCP after a truncated answer.
    over_tcp: bool,
}

/// What the flight did, for the driver's debug line (see [`FlightMachine::account`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct Account {
    /// Each upstream asked, and when (after the flight's start).
    pub(crate) asked: SmallVec<[(UpstreamIdx, Duration); 8]>,
    /// Queries the budget did not let go, with their purpose.
    pub(crate) refused: SmallVec<[(UpstreamIdx, Purpose); 4]>,
    /// Upstreams asked again over TCP.
    pub(crate) over_tcp: SmallVec<[UpstreamIdx; 2]>,
}

/// What [`FlightMachine::finish`] leaves.
#[derive(Debug)]
pub(crate) struct Concluded {
    /// The plan's stats and the merge.
    pub(crate) finished: Finished,
    /// The answer lacks upstreams' addresses because completion was deferred,
    /// refused or stopped, and a merge could add them: mark the entry incomplete.
    pub(crate) incomplete: bool,
    /// Upstreams (bits by index) whose good answers the flight holds.
    pub(crate) answered: u16,
}

/// One flight: the plan, its queries' deadlines and the budget's decisions.
pub(crate) struct FlightMachine {
    state: FlightState,
    started: Instant,
    out: SmallVec<[Query; 4]>,
    /// Sends the plan asked for, not handed to the driver yet.
    due: SmallVec<[(UpstreamIdx, bool); 4]>,
    /// Truncated answers to ask again over TCP.
    retries: SmallVec<[UpstreamIdx; 2]>,
    account: Account,
    /// The name is known to be asked again (waiters, a prefetch, a hit on its
    /// entry while fresh): it earns its completion.
    asked_again: bool,
    /// A completion by demand: every query is charged as completion.
    on_demand: bool,
    /// No client waits for any of its queries (a prefetch, a completion).
    background: bool,
    /// A completion query was deferred or refused, or collecting was stopped.
    short: bool,
}

impl FlightMachine {
    /// A flight on `state` started at `now`; `background` when no client waits.
    pub(crate) fn new(state: FlightState, background: bool, now: Instant) -> Self {
        Self {
            state,
            started: now,
            out: SmallVec::new(),
            due: SmallVec::new(),
            retries: SmallVec::new(),
            account: Account::default(),
            asked_again: false,
            on_demand: false,
            background,
            short: false,
        }
    }

    /// Makes this a completion by demand of a cached answer (see
    /// [`FlightState::complete_base`]): every query is charged as completion.
    pub(crate) fn complete_base(
        &mut self,
        base: Vec<u8>,
        at: Instant,
        answered: u16,
        origins: Vec<(crate::cache::SourceId, u32)>,
    ) {
        self.state.complete_base(base, at, answered, origins);
        self.on_demand = true;
        self.asked_again = true;
        self.background = true;
    }

    /// Whether this is a completion by demand.
    pub(crate) fn on_demand(&self) -> bool {
        self.on_demand
    }

    /// Marks the name as one that will be asked again.
    pub(crate) fn set_asked_again(&mut self, asked_again: bool) {
        self.asked_again = asked_again;
    }

    /// What to do at `now`. Queries beyond the first are asked of `spender`.
    pub(crate) fn poll_action(&mut self, now: Instant, spender: &mut impl Spender) -> Action {
        if let Some(up) = self.retries.pop() {
            if let Some(q) = self.out.iter().find(|q| q.up == up) {
                return Action::RetryOverTcp {
                    up,
                    deadline: q.deadline,
                };
            }
        }
        if self.due.is_empty() {
            match self.plan(now, spender) {
                Next::Send(_) => {}
                Next::Wait(at) => {
                    let at = self.out.iter().map(|q| q.deadline).fold(at, Instant::min);
                    return Action::Wait(at);
                }
                Next::Done => return Action::Done,
            }
        }
        if self.due.is_empty() {
            // A send list with nothing in it: ask the plan again next time.
            return Action::Wait(now);
        }
        let (up, background) = self.due.remove(0);
        Action::Send { up, background }
    }

    /// Whether the flight has nothing left to do at `now`. Sends the plan says
    /// are due are kept for the next [`Self::poll_action`], not lost.
    pub(crate) fn is_done(&mut self, now: Instant, spender: &mut impl Spender) -> bool {
        if !self.due.is_empty() || !self.retries.is_empty() {
            return false;
        }
        matches!(self.plan(now, spender), Next::Done)
    }

    /// Asks the plan what is due, the budget deciding each query beyond the
    /// first; queues what it sends.
    fn plan(&mut self, now: Instant, spender: &mut impl Spender) -> Next {
        let (asked_again, on_demand) = (self.asked_again, self.on_demand);
        let short = &mut self.short;
        let refused = &mut self.account.refused;
        let mut completing: SmallVec<[UpstreamIdx; 4]> = SmallVec::new();
        let allow = |up: UpstreamIdx, purpose: Purpose| {
            let purpose = if on_demand {
                Purpose::Completion
            } else {
                purpose
            };
            let ok = match purpose {
                Purpose::First => return true,
                Purpose::Active | Purpose::Hedge => spender.spend_latency(purpose, now),
                Purpose::Completion => {
                    completing.push(up);
                    let spend = spender.spend_completion(up, asked_again, now);
                    *short |= spend != Spend::Allowed;
                    spend == Spend::Allowed
                }
            };
            if !ok {
                refused.push((up, purpose));
            }
            ok
        };
        let next = self.state.next(now, allow);
        if let Next::Send(list) = &next {
            for &up in list {
                let background = self.background || completing.contains(&up);
                self.due.push((up, background));
            }
        }
        next
    }

    /// The query to `up` left at `now`; it times out `timeout` later.
    pub(crate) fn handle_sent(&mut self, up: UpstreamIdx, timeout: Duration, now: Instant) {
        self.account
            .asked
            .push((up, now.saturating_duration_since(self.started)));
        self.out.push(Query {
            up,
            deadline: after(now, timeout),
            over_tcp: false,
        });
    }

    /// `up` replied. None when no query to it is out (heard already, or never
    /// sent), or when the reply is a truncated UDP answer: then the query is
    /// asked again over TCP (see [`Action::RetryOverTcp`]) within its deadline.
    pub(crate) fn handle_reply(
        &mut self,
        up: UpstreamIdx,
        reply: Exchange,
        now: Instant,
    ) -> Option<Heard> {
        let i = self.out.iter().position(|q| q.up == up)?;
        if reply.truncated() {
            if !self.out[i].over_tcp {
                self.out[i].over_tcp = true;
                self.retries.push(up);
                self.account.over_tcp.push(up);
            }
            return None;
        }
        self.out.swap_remove(i);
        Some(self.state.on_report(up, Ok(reply), now))
    }

    /// The query to `up` failed. None when no query to it is out.
    pub(crate) fn handle_failure(
        &mut self,
        up: UpstreamIdx,
        kind: FailKind,
        now: Instant,
    ) -> Option<Heard> {
        let i = self.out.iter().position(|q| q.up == up)?;
        self.out.swap_remove(i);
        Some(self.state.on_report(up, Err(kind), now))
    }

    /// Times out one query past its deadline at `now`, if any: call until None.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Option<(UpstreamIdx, Heard)> {
        let i = self.out.iter().position(|q| q.deadline <= now)?;
        let up = self.out.swap_remove(i).up;
        Some((up, self.state.on_report(up, Err(FailKind::Timeout), now)))
    }

    /// No more queries: the flight's answer stays as it is (incomplete if a
    /// merge could have grown it).
    pub(crate) fn stop_collecting(&mut self) {
        self.short = true;
        self.due.clear();
        self.state.stop_collecting();
    }

    /// The upstreams asked and not heard from, with how long they were waited for
    /// at `now` (a lower bound on their RTT, for health).
    pub(crate) fn abandoned(
        &self,
        now: Instant,
    ) -> impl Iterator<Item = (UpstreamIdx, Duration)> + '_ {
        self.state.unanswered().filter_map(move |up| {
            let asked = self.account.asked.iter().find(|(u, _)| *u == up)?.1;
            Some((up, now.saturating_duration_since(self.started + asked)))
        })
    }

    /// Why the flight has no answer, for the SERVFAIL's Extended DNS Error.
    pub(crate) fn failure(&self) -> crate::wire::build::Ede {
        self.state.failure()
    }

    /// What the flight did so far.
    pub(crate) fn account(&self) -> &Account {
        &self.account
    }

    /// When the flight started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Ends the flight: nothing more is heard; the merge and what to record.
    pub(crate) fn finish(self) -> Concluded {
        let incomplete = self.short && self.state.can_grow() && !self.on_demand;
        let answered = self.state.answered();
        Concluded {
            finished: self.state.finish(),
            incomplete,
            answered,
        }
    }
}

#[cfg(test)]
mod tests;

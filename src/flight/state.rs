//! One flight's answers: the tier plan and what came back, without sockets or a
//! clock (every call takes `now`): results in ([`FlightState::on_report`]), what
//! the plan sends next ([`FlightState::next`]), and at the end the merge
//! ([`FlightState::finish`]). The flight machine ([`super::FlightMachine`]) wraps
//! it with the queries' deadlines, the TCP retry and the budget's decisions.
//!
//! A good answer is NOERROR or NXDOMAIN that can be patched and cached
//! ([`classify`]); the first one goes to the clients, the rest are kept for the
//! merge, which a completion by demand starts from the cached answer
//! ([`FlightState::complete_base`]). Every reply takes the one path through
//! `on_report`, so a merged record passed every check the first answer passed.

use super::Answer;
use crate::cache::SourceId;
use crate::health::{FailKind, UpstreamIdx};
use crate::tiers::{merge_agreed, Action, Merged, Outcome, Plan, PlanStats, Purpose, SendList};
use crate::upstream::Exchange;
use crate::wire::answer::AnswerLayout;
use crate::wire::build::Ede;
use crate::wire::reader::Header;
use crate::wire::{rcode, rtype};
use smallvec::SmallVec;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Extended DNS Error that says why a flight failed.
fn failure_ede(worst: Option<FailKind>) -> Ede {
    match worst {
        Some(FailKind::ServFail) => Ede::UPSTREAM_SERVFAIL,
        Some(FailKind::Refused) => Ede::UPSTREAM_REFUSED,
        // A certificate that did not verify: nothing was sent, as a network error.
        Some(FailKind::Network | FailKind::TlsCertificate) => Ede::NETWORK_ERROR,
        Some(FailKind::Timeout) | None => Ede::NO_REACHABLE_AUTHORITY,
        Some(FailKind::Overload) => Ede::LOCAL_OVERLOAD,
        Some(_) => Ede::UPSTREAM_ERROR,
    }
}

/// How telling a failure is, for the EDE: an upstream's own error beats a network
/// error, which beats a timeout, which beats our own overload.
fn telling(kind: FailKind) -> u8 {
    match kind {
        FailKind::Overload => 0,
        FailKind::Timeout => 1,
        FailKind::Network => 2,
        _ => 3,
    }
}

/// How an upstream reply counts for the tiers: NOERROR and NXDOMAIN are good (if
/// they can be patched and cached, and no extended rcode says otherwise), every
/// other rcode is a failure of its kind.
pub(crate) fn classify(reply: &[u8]) -> Result<AnswerLayout, FailKind> {
    let header = Header::parse(reply).map_err(|_| FailKind::Malformed)?;
    match u16::from(header.rcode()) {
        rcode::NOERROR | rcode::NXDOMAIN => {
            let layout = AnswerLayout::parse(reply).map_err(|_| FailKind::Malformed)?;
            // The OPT record's extended rcode (RFC 6891 6.1.3) makes it an error,
            // whatever the header's low four bits say (BADVERS reads as NOERROR).
            match layout.rcode() {
                rcode::NOERROR | rcode::NXDOMAIN => Ok(layout),
                _ => Err(FailKind::OtherRcode),
            }
        }
        rcode::FORMERR => Err(FailKind::FormErr),
        rcode::SERVFAIL => Err(FailKind::ServFail),
        rcode::NOTIMP => Err(FailKind::NotImp),
        rcode::REFUSED => Err(FailKind::Refused),
        _ => Err(FailKind::OtherRcode),
    }
}

/// What one upstream result meant, for the driver to record (health, counters).
#[derive(Debug, Clone)]
pub(crate) enum Heard {
    /// A good answer after this round trip; the flight's first good one if
    /// `first` is set (then it is what the clients get).
    Good {
        rtt: Duration,
        first: Option<Arc<Answer>>,
    },
    /// A failure that says something about the upstream.
    Failed(FailKind),
    /// Our own bound refused the query: nothing about the upstream.
    Overload,
}

/// What a finished flight leaves behind.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The plan's own account (stagger reason, first good, peak in flight).
    pub(crate) stats: PlanStats,
    /// The merged answer, if more than one good answer came and they merge, with
    /// the time the first arrived (the merge ages from then).
    pub(crate) merged: Option<(Merged, Instant)>,
    /// Where each record of the merged answer came from, in message order
    /// (empty without a merge): its provenance in the cache.
    pub(crate) came: Vec<Came>,
}

/// Per record in message order, its source and arrival (ms after the entry's
/// creation), as the cache keeps them (`cache::provenance::expand`).
pub(crate) type Origins = Vec<(SourceId, u32)>;

/// Where one record of a merged answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Came {
    /// The cached answer a completion merged into: its own provenance, kept
    /// (source, ms after the entry's creation).
    Cached(SourceId, u32),
    /// This upstream's answer, arrived then.
    Upstream(UpstreamIdx, Instant),
}

/// Whether upstream `up` is among `answered` (bits by index; an index past 16 is
/// never recorded as heard).
pub(crate) fn heard(answered: u16, up: UpstreamIdx) -> bool {
    1u16.checked_shl(u32::try_from(up.get()).unwrap_or(u32::MAX))
        .is_some_and(|bit| answered & bit != 0)
}

/// Whether merging more answers into this first one could add anything: only a
/// NOERROR answer with records of an A or AAAA question, unsigned and whole, can
/// grow (see the `tiers` merge). For any other, background completion stops at once.
pub(crate) fn merge_can_grow(layout: &AnswerLayout, qtype: u16) -> bool {
    matches!(qtype, rtype::A | rtype::AAAA)
        && layout.rcode() == rcode::NOERROR
        && layout.has_qtype_answer()
        && !layout.signed()
        && !layout.truncated()
}

/// One flight's state: the plan and what came back. No I/O, no clock.
pub(crate) struct FlightState {
    plan: Plan,
    /// The question's type: whether a merge can add to the first answer.
    qtype: u16,
    first: Option<Arc<Answer>>,
    /// When the first good answer arrived: the merge is aged from then.
    first_at: Instant,
    /// The good answers after the first, for the merge, with who gave each and
    /// when. They passed the same checks as the first (the link's ID, question
    /// and 0x20 case, [`classify`]): every reply takes the one path through
    /// [`Self::on_report`].
    others: Vec<(Vec<u8>, UpstreamIdx, Instant)>,
    /// `merge_min_agree` of the flight's route.
    min_agree: usize,
    /// The most telling failure so far (see [`telling`]).
    worst: Option<FailKind>,
    /// Upstreams (bits by index, the first 16) that gave a good answer.
    answered: u16,
    /// For a completion by demand: the cached answer it completes (merged
    /// first, its chain the one kept), when that was stored, and its records'
    /// provenance.
    base: Option<(Vec<u8>, Instant, Origins)>,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Send one query to each, then ask again.
    Send(SendList),
    /// Wait for a result, but not past this instant; then ask again.
    Wait(Instant),
    /// The flight is over: [`FlightState::finish`].
    Done,
}

impl FlightState {
    pub(crate) fn new(plan: Plan, qtype: u16, min_agree: usize, now: Instant) -> Self {
        Self {
            plan,
            qtype,
            first: None,
            first_at: now,
            others: Vec::new(),
            min_agree,
            worst: None,
            answered: 0,
            base: None,
        }
    }

    /// Makes this the completion of a cached answer: `base` (stored at `at`,
    /// holding the answers of the upstreams in `answered`, its records from
    /// `origins`) is merged first.
    pub(crate) fn complete_base(
        &mut self,
        base: Vec<u8>,
        at: Instant,
        answered: u16,
        origins: Origins,
    ) {
        self.base = Some((base, at, origins));
        self.answered = answered;
    }

    /// Upstreams (bits by index) whose good answers the flight holds.
    pub(crate) fn answered(&self) -> u16 {
        self.answered
    }

    /// Whether the flight's first good answer is one a merge could grow.
    pub(crate) fn can_grow(&self) -> bool {
        self.first
            .as_ref()
            .is_some_and(|a| merge_can_grow(&a.layout, self.qtype))
    }

    /// What to do at `now`; every query beyond the first is asked of `allow` (the
    /// amplification budget) with its purpose.
    pub(crate) fn next(
        &mut self,
        now: Instant,
        allow: impl FnMut(UpstreamIdx, Purpose) -> bool,
    ) -> Next {
        match self.plan.next_within(now, allow) {
            Action::Send(list) => Next::Send(list),
            Action::Wait(at) => Next::Wait(at),
            Action::Done => Next::Done,
        }
    }

    /// Takes one upstream's result at `now`.
    pub(crate) fn on_report(
        &mut self,
        up: UpstreamIdx,
        res: Result<Exchange, FailKind>,
        now: Instant,
    ) -> Heard {
        match res.and_then(|ex| classify(&ex.reply).map(|layout| (ex, layout))) {
            Ok((ex, layout)) => {
                if self.first.is_none() && !merge_can_grow(&layout, self.qtype) {
                    self.plan.stop_collecting();
                }
                self.plan.on_result(up, Outcome::Good, now);
                if let Some(bit) = 1u16.checked_shl(u32::try_from(up.get()).unwrap_or(u32::MAX)) {
                    self.answered |= bit;
                }
                if self.first.is_some() {
                    self.others.push((ex.reply, up, now));
                    return Heard::Good {
                        rtt: ex.rtt,
                        first: None,
                    };
                }
                let answer = Arc::new(Answer {
                    wire: ex.reply,
                    layout,
                    from: up,
                });
                self.first = Some(Arc::clone(&answer));
                self.first_at = now;
                Heard::Good {
                    rtt: ex.rtt,
                    first: Some(answer),
                }
            }
            Err(kind) => {
                self.plan.on_result(up, Outcome::Failed(kind), now);
                if self.worst.is_none_or(|w| telling(kind) >= telling(w)) {
                    self.worst = Some(kind);
                }
                if kind == FailKind::Overload {
                    Heard::Overload
                } else {
                    Heard::Failed(kind)
                }
            }
        }
    }

    /// No more queries: a good answer ends the flight (see [`Plan::stop_collecting`]).
    pub(crate) fn stop_collecting(&mut self) {
        self.plan.stop_collecting();
    }

    /// The upstreams asked and not heard from.
    pub(crate) fn unanswered(&self) -> impl Iterator<Item = UpstreamIdx> + '_ {
        self.plan.in_flight_upstreams()
    }

    /// Why the flight has no answer, for the SERVFAIL's Extended DNS Error.
    pub(crate) fn failure(&self) -> Ede {
        failure_ede(self.worst)
    }

    /// Ends the flight: its plan's stats, and the merge of its good answers
    /// with each merged record's provenance.
    pub(crate) fn finish(self) -> Finished {
        let stats = *self.plan.stats();
        let mut came = Vec::new();
        let merged = self.first.as_ref().and_then(|first| {
            let mut all: SmallVec<[&[u8]; 8]> = SmallVec::new();
            // Who gave each of `all`: None for the cached answer.
            let mut from: SmallVec<[Option<(UpstreamIdx, Instant)>; 8]> = SmallVec::new();
            // A completion merges into the cached answer, and ages from it.
            let at = match &self.base {
                Some((base, at, _)) => {
                    all.push(base);
                    from.push(None);
                    *at
                }
                None if self.others.is_empty() => return None,
                None => self.first_at,
            };
            all.push(&first.wire);
            from.push(Some((first.from, self.first_at)));
            for (wire, up, when) in &self.others {
                all.push(wire);
                from.push(Some((*up, *when)));
            }
            let merged = merge_agreed(&all, self.min_agree)?;
            let cached = self.base.as_ref().map_or(&[][..], |(_, _, o)| o.as_slice());
            came = merged
                .origins
                .iter()
                .map(
                    |&(answer, record)| match from.get(answer).copied().flatten() {
                        Some((up, when)) => Came::Upstream(up, when),
                        None => cached
                            .get(record)
                            .map_or(Came::Cached(SourceId::UNKNOWN, 0), |&(s, ms)| {
                                Came::Cached(s, ms)
                            }),
                    },
                )
                .collect();
            Some((merged, at))
        });
        Finished {
            stats,
            merged,
            came,
        }
    }
}

#[cfg(test)]
mod tests;

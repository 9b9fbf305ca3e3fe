//! [`Plan`]: the state machine of one flight (see the module docs of [`super`] for
//! the algorithm).
//!
//! Invariants, each with a test below:
//! - each upstream is launched at most once per plan (duplicates in the order are
//!   dropped at construction, results for upstreams not in flight are ignored);
//! - staggered: before the stagger starts at most `active_tier_size` queries are in
//!   flight; batches are `batch_size` large and `stagger_delay` apart;
//! - the plan is `Done` no later than `total_collect_timeout` after its start, and
//!   never asks to wake later than that;
//! - after `Done` it stays `Done` and sends nothing.
//!
//! Allocation: none for up to 8 candidate upstreams and send batches of up to 4.

use super::{Outcome, Purpose, StrategyKind, TierParams, UpstreamIdx};
#[cfg(test)]
use crate::health::MAX_TIMER;
use crate::health::{after, HealthTracker};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use smallvec::SmallVec;
use std::time::{Duration, Instant};

/// The upstreams to send one query each to, in this order.
pub type SendList = SmallVec<[UpstreamIdx; 4]>;

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send one query to each of these upstreams now, then call [`Plan::next`] again.
    Send(SendList),
    /// Nothing to send: sleep until this instant, or until a result arrives (feed it
    /// with [`Plan::on_result`]), then call [`Plan::next`] again.
    Wait(Instant),
    /// The flight is over: stop, and hand the good answers to [`super::merge`](mod@super::merge).
    Done,
}

/// Why the staggered tier was launched (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaggerReason {
    /// A good answer arrived and `complete` asked for background completion.
    Answered = 0,
    /// The fallback (hedge) timeout passed with the active tier still out.
    Timeout = 1,
    /// Every active-tier query failed.
    ActiveFailed = 2,
}

impl StaggerReason {
    /// Every reason, in the order of the metric array.
    pub const ALL: [Self; 3] = [Self::Answered, Self::Timeout, Self::ActiveFailed];

    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Timeout => "timeout",
            Self::ActiveFailed => "active_failed",
        }
    }
}

/// What happened in one flight, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Why the staggered tier started; `None` if it never launched anything (also
    /// for the other strategies).
    pub stagger_reason: Option<StaggerReason>,
    /// The upstream of the first good answer, and whether it was in the first send
    /// of the flight (the active tier; every upstream for `parallel`; the first one
    /// for `sequential`/`random`).
    pub first_good: Option<(UpstreamIdx, bool)>,
    /// Queries launched.
    pub launched: usize,
    /// Most queries in flight at once.
    pub peak_in_flight: usize,
    /// Good results received.
    pub good: usize,
    /// Failed results received.
    pub failed: usize,
    /// Queries whose turn came but the budget refused.
    pub skipped: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Pending,
    InFlight,
    Good,
    Failed,
    /// Its turn came, but the budget refused it: never sent; counts as failed for
    /// moving the tiers on.
    Skipped,
}

impl Slot {
    fn failed(self) -> bool {
        matches!(self, Self::Failed | Self::Skipped)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    up: UpstreamIdx,
    slot: Slot,
    /// Per-attempt timeout (sequential and random only).
    attempt: Duration,
}

/// The schedule of one flight over its ordered upstreams. One per flight; see the
/// module docs of [`super`] for the driver loop.
#[derive(Debug, Clone)]
pub struct Plan {
    kind: StrategyKind,
    complete: bool,
    batch_size: usize,
    stagger_delay: Duration,
    /// How many entries the first send launches.
    first_send: usize,
    hedge_at: Instant,
    deadline: Instant,
    entries: SmallVec<[Entry; 8]>,
    /// Index of the first entry not launched yet.
    next_idx: usize,
    in_flight: usize,
    /// Staggered: when the next batch is due, once the stagger has started.
    next_batch_at: Option<Instant>,
    /// Sequential/random: when the current attempt times out.
    attempt_deadline: Option<Instant>,
    done: bool,
    stats: PlanStats,
}

impl Plan {
    /// A plan for one flight starting at `now`.
    ///
    /// `order`: the candidate upstreams, already ordered by
    /// [`HealthTracker::order`]; duplicates are dropped. `health` resolves the
    /// adaptive timeouts (`fallback_timeout = "auto"` over the active tier, the
    /// per-attempt timeout of sequential/random). `seed` shuffles `random`.
    pub fn new(
        kind: StrategyKind,
        params: &TierParams,
        order: &[UpstreamIdx],
        health: &HealthTracker,
        now: Instant,
        seed: u64,
    ) -> Self {
        let mut plan = Self::with_hedge(kind, params, order, Duration::ZERO, now, seed);
        let active = plan.first_send;
        let mut active_ups: SmallVec<[UpstreamIdx; 8]> = SmallVec::new();
        active_ups.extend(plan.entries.iter().take(active).map(|e| e.up));
        plan.hedge_at = after(now, params.hedge_after(&active_ups, health));
        for e in &mut plan.entries {
            e.attempt = params.attempt_timeout_for(e.up, health);
        }
        plan
    }

    /// A plan with the hedge delay given directly (fallback timeout already
    /// resolved) and `params.attempt_timeout` for every attempt.
    pub fn with_hedge(
        kind: StrategyKind,
        params: &TierParams,
        order: &[UpstreamIdx],
        hedge_after: Duration,
        now: Instant,
        seed: u64,
    ) -> Self {
        let mut entries: SmallVec<[Entry; 8]> = SmallVec::new();
        for &up in order {
            if !entries.iter().any(|e| e.up == up) {
                entries.push(Entry {
                    up,
                    slot: Slot::Pending,
                    attempt: params.attempt_timeout,
                });
            }
        }
        if kind == StrategyKind::Random {
            entries.shuffle(&mut SmallRng::seed_from_u64(seed));
        }
        let first_send = kind.first_send(entries.len(), params.active_tier_size);
        Self {
            kind,
            complete: params.complete,
            batch_size: params.batch_size.max(1),
            stagger_delay: params.stagger_delay,
            first_send,
            hedge_at: after(now, hedge_after),
            deadline: after(now, params.total_collect_timeout),
            entries,
            next_idx: 0,
            in_flight: 0,
            next_batch_at: None,
            attempt_deadline: None,
            done: false,
            stats: PlanStats::default(),
        }
    }

    /// What to do at `now`. After [`Action::Send`], call again (it then says how
    /// long to wait); after [`Action::Done`], it stays `Done`.
    pub fn next(&mut self, now: Instant) -> Action {
        self.next_within(now, |_, _| true)
    }

    /// [`Plan::next`], with every query beyond the first asked of `allow` (the
    /// amplification budget) with its [`Purpose`]. A refused one is never sent and
    /// counts as failed for moving the tiers on (see [`PlanStats::skipped`]).
    pub fn next_within(
        &mut self,
        now: Instant,
        mut allow: impl FnMut(UpstreamIdx, Purpose) -> bool,
    ) -> Action {
        loop {
            if self.done || self.is_finished(now) {
                self.done = true;
                return Action::Done;
            }
            let count = self.due_now(now);
            if count == 0 {
                return Action::Wait(self.wake_at());
            }
            let sent = self.launch(count, now, &mut allow);
            if !sent.is_empty() {
                return Action::Send(sent);
            }
            // All refused: the tiers moved on; see what is due now.
        }
    }

    /// Feeds the result of the query to `up`. Results for upstreams that are not in
    /// flight in this plan (unknown, never sent, or already answered) are ignored.
    pub fn on_result(&mut self, up: UpstreamIdx, outcome: Outcome, now: Instant) {
        let Some(pos) = self
            .entries
            .iter()
            .position(|e| e.up == up && e.slot == Slot::InFlight)
        else {
            return;
        };
        self.in_flight -= 1;
        let from_first_send = pos < self.first_send;
        match outcome {
            Outcome::Good => {
                self.entries[pos].slot = Slot::Good;
                self.stats.good += 1;
                if self.stats.first_good.is_none() {
                    self.stats.first_good = Some((up, from_first_send));
                }
                if self.complete {
                    self.start_stagger(StaggerReason::Answered, now);
                }
            }
            Outcome::Failed(_) => {
                self.entries[pos].slot = Slot::Failed;
                self.stats.failed += 1;
                let active_all_failed = self.entries[..self.first_send]
                    .iter()
                    .all(|e| e.slot.failed());
                if active_all_failed {
                    self.start_stagger(StaggerReason::ActiveFailed, now);
                }
            }
        }
    }

    /// Ends background completion: from now on the plan behaves as with
    /// `complete = false`, so a good answer (already received, or the next) ends it
    /// and nothing more is sent. For a first answer that no merge could add to
    /// (NXDOMAIN, NODATA, another type, a signed answer): asking every remaining
    /// upstream would buy nothing. Call it before reporting that answer.
    pub fn stop_collecting(&mut self) {
        self.complete = false;
    }

    /// What happened so far.
    pub fn stats(&self) -> &PlanStats {
        &self.stats
    }

    /// The upstreams whose queries were launched and have not finished.
    pub fn in_flight_upstreams(&self) -> impl Iterator<Item = UpstreamIdx> + '_ {
        self.entries
            .iter()
            .filter(|e| e.slot == Slot::InFlight)
            .map(|e| e.up)
    }

    /// Queries launched and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The instant by which the plan is `Done` at the latest.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The strategy this plan follows.
    pub fn kind(&self) -> StrategyKind {
        self.kind
    }

    fn all_launched(&self) -> bool {
        self.next_idx >= self.entries.len()
    }

    fn is_finished(&self, now: Instant) -> bool {
        if now >= self.deadline {
            return true;
        }
        if self.stats.good > 0 && (!self.complete || self.kind.is_serial()) {
            return true;
        }
        self.all_launched() && self.in_flight == 0
    }

    /// Starts the staggered tier at `now` if it has not started and has anything left.
    fn start_stagger(&mut self, reason: StaggerReason, now: Instant) {
        if self.kind != StrategyKind::Staggered
            || self.next_batch_at.is_some()
            || self.all_launched()
            || self.next_idx == 0
        {
            return;
        }
        self.next_batch_at = Some(now);
        self.stats.stagger_reason = Some(reason);
    }

    /// How many entries to launch at `now`.
    fn due_now(&mut self, now: Instant) -> usize {
        let left = self.entries.len() - self.next_idx.min(self.entries.len());
        if left == 0 {
            return 0;
        }
        if self.next_idx == 0 {
            return self.first_send;
        }
        match self.kind {
            StrategyKind::Staggered => {
                if self.next_batch_at.is_none() && now >= self.hedge_at {
                    self.start_stagger(StaggerReason::Timeout, now);
                }
                let Some(at) = self.next_batch_at else {
                    return 0;
                };
                let nothing_pending = self.in_flight == 0 && self.stats.good == 0;
                if now >= at || nothing_pending {
                    self.batch_size.min(left)
                } else {
                    0
                }
            }
            StrategyKind::Parallel => 0,
            StrategyKind::Sequential | StrategyKind::Random => {
                let current_failed = self
                    .entries
                    .get(self.next_idx - 1)
                    .is_some_and(|e| e.slot.failed());
                let timed_out = self.attempt_deadline.is_some_and(|at| now >= at);
                usize::from(current_failed || timed_out)
            }
        }
    }

    /// Why the entry at `pos` is sent now.
    fn purpose(&self, pos: usize) -> Purpose {
        if pos == 0 {
            Purpose::First
        } else if pos < self.first_send {
            Purpose::Active
        } else if self.stats.good > 0 {
            Purpose::Completion
        } else {
            Purpose::Hedge
        }
    }

    fn launch(
        &mut self,
        count: usize,
        now: Instant,
        allow: &mut impl FnMut(UpstreamIdx, Purpose) -> bool,
    ) -> SendList {
        let mut out = SendList::new();
        let end = (self.next_idx + count).min(self.entries.len());
        for pos in self.next_idx..end {
            let purpose = self.purpose(pos);
            let e = &mut self.entries[pos];
            if !allow(e.up, purpose) {
                e.slot = Slot::Skipped;
                self.stats.skipped += 1;
                continue;
            }
            e.slot = Slot::InFlight;
            out.push(e.up);
            if self.kind.is_serial() {
                self.attempt_deadline = Some(after(now, e.attempt));
            }
        }
        self.next_idx = end;
        self.in_flight += out.len();
        self.stats.launched += out.len();
        self.stats.peak_in_flight = self.stats.peak_in_flight.max(self.in_flight);
        if self.next_batch_at.is_some() {
            self.next_batch_at = Some(after(now, self.stagger_delay));
        }
        out
    }

    /// The next instant something is due, never later than the deadline.
    fn wake_at(&self) -> Instant {
        let timer = if self.all_launched() {
            None
        } else {
            match self.kind {
                StrategyKind::Staggered => Some(self.next_batch_at.unwrap_or(self.hedge_at)),
                StrategyKind::Parallel => None,
                StrategyKind::Sequential | StrategyKind::Random => self.attempt_deadline,
            }
        };
        timer.map_or(self.deadline, |t| t.min(self.deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthParams;
    use crate::health::{upstream, upstreams};
    use crate::tiers::{FailKind, FallbackTimeout};

    const MS: Duration = Duration::from_millis(1);
    const FAIL: Outcome = Outcome::Failed(FailKind::ServFail);

    fn params() -> TierParams {
        TierParams::default()
    }

    fn staggered(p: &TierParams, order: &[UpstreamIdx], t0: Instant) -> Plan {
        Plan::with_hedge(
            StrategyKind::Staggered,
            p,
            order,
            Duration::from_millis(300),
            t0,
            0,
        )
    }

    fn sends(ups: &[UpstreamIdx]) -> Action {
        Action::Send(ups.iter().copied().collect())
    }

    /// Drives the plan at `now` until it waits or is done; returns everything sent.
    fn pump(plan: &mut Plan, now: Instant) -> (Vec<UpstreamIdx>, Action) {
        let mut sent = Vec::new();
        loop {
            match plan.next(now) {
                Action::Send(ups) => sent.extend(ups),
                other => return (sent, other),
            }
        }
    }

    #[test]
    fn absurd_durations_do_not_overflow() {
        let t0 = Instant::now();
        let p = TierParams {
            total_collect_timeout: Duration::MAX,
            stagger_delay: Duration::MAX,
            attempt_timeout: Duration::MAX,
            ..params()
        };
        let mut plan = Plan::with_hedge(
            StrategyKind::Staggered,
            &p,
            &upstreams([0, 1, 2]),
            Duration::MAX,
            t0,
            0,
        );
        assert_eq!(plan.next(t0), sends(&upstreams([0, 1])));
        assert_eq!(plan.next(t0), Action::Wait(t0 + MAX_TIMER));
        assert_eq!(plan.deadline(), t0 + MAX_TIMER);
        let mut plan = Plan::with_hedge(
            StrategyKind::Sequential,
            &p,
            &upstreams([0, 1]),
            Duration::MAX,
            t0,
            0,
        );
        assert_eq!(plan.next(t0), sends(&[upstream(0)]));
        assert_eq!(plan.next(t0), Action::Wait(t0 + MAX_TIMER));
    }

    #[test]
    fn zero_upstreams_is_done_at_once() {
        let t0 = Instant::now();
        for kind in [
            StrategyKind::Staggered,
            StrategyKind::Parallel,
            StrategyKind::Sequential,
            StrategyKind::Random,
        ] {
            let mut plan = Plan::with_hedge(kind, &params(), &[], 300 * MS, t0, 1);
            assert_eq!(plan.next(t0), Action::Done, "{kind:?}");
        }
    }

    #[test]
    fn active_tier_first_then_hedge_at_fallback_timeout() {
        let t0 = Instant::now();
        let mut plan = staggered(&params(), &upstreams([4, 3, 2, 1, 0]), t0);
        assert_eq!(plan.next(t0), sends(&upstreams([4, 3])));
        assert_eq!(plan.next(t0), Action::Wait(t0 + 300 * MS));
        // Nothing more before the hedge timer, however often we are woken.
        assert_eq!(plan.next(t0 + 299 * MS), Action::Wait(t0 + 300 * MS));
        assert_eq!(plan.in_flight(), 2);
        // Hedge: first batch at 300ms, the next 50ms later.
        assert_eq!(plan.next(t0 + 300 * MS), sends(&upstreams([2, 1])));
        assert_eq!(plan.next(t0 + 300 * MS), Action::Wait(t0 + 350 * MS));
        assert_eq!(plan.next(t0 + 349 * MS), Action::Wait(t0 + 350 * MS));
        assert_eq!(plan.next(t0 + 350 * MS), sends(&[upstream(0)]));
        assert_eq!(plan.stats().stagger_reason, Some(StaggerReason::Timeout));
        assert_eq!(plan.stats().peak_in_flight, 5);
        // Nothing left to launch: wait for results until the deadline.
        assert_eq!(plan.next(t0 + 350 * MS), Action::Wait(t0 + 3000 * MS));
    }

    #[test]
    fn all_active_failed_starts_stagger_at_once() {
        let t0 = Instant::now();
        let mut plan = staggered(&params(), &upstreams([0, 1, 2, 3]), t0);
        assert_eq!(plan.next(t0), sends(&upstreams([0, 1])));
        plan.on_result(upstream(0), FAIL, t0 + 5 * MS);
        // One active query still out: keep waiting for the hedge timer.
        assert_eq!(plan.next(t0 + 5 * MS), Action::Wait(t0 + 300 * MS));
        plan.on_result(upstream(1), Outcome::Failed(FailKind::Refused), t0 + 7 * MS);
        assert_eq!(plan.next(t0 + 7 * MS), sends(&upstreams([2, 3])));
        assert_eq!(
            plan.stats().stagger_reason,
            Some(StaggerReason::ActiveFailed)
        );
    }

    #[test]
    fn first_good_answer_starts_background_completion_when_complete() {
        let t0 = Instant::now();
        let mut plan = staggered(&params(), &upstreams([0, 1, 2, 3, 4]), t0);
        assert_eq!(plan.next(t0), sends(&upstreams([0, 1])));
        plan.on_result(upstream(1), Outcome::Good, t0 + 10 * MS);
        assert_eq!(plan.stats().first_good, Some((upstream(1), true)));
        assert_eq!(plan.next(t0 + 10 * MS), sends(&upstreams([2, 3])));
        assert_eq!(plan.next(t0 + 10 * MS), Action::Wait(t0 + 60 * MS));
        assert_eq!(plan.next(t0 + 60 * MS), sends(&[upstream(4)]));
        assert_eq!(plan.stats().stagger_reason, Some(StaggerReason::Answered));
        for (up, at) in [(0, 61), (2, 62), (3, 63)] {
            plan.on_result(upstream(up), Outcome::Good, t0 + at * MS);
            assert_eq!(plan.next(t0 + at * MS), Action::Wait(t0 + 3000 * MS));
        }
        plan.on_result(upstream(4), FAIL, t0 + 70 * MS);
        assert_eq!(plan.next(t0 + 70 * MS), Action::Done);
        let s = plan.stats();
        assert_eq!((s.launched, s.good, s.failed), (5, 4, 1));
    }

    #[test]
    fn batches_are_stagger_delay_apart_even_when_the_driver_is_late() {
        let t0 = Instant::now();
        let p = TierParams {
            active_tier_size: 1,
            batch_size: 1,
            ..params()
        };
        let mut plan = staggered(&p, &upstreams([0, 1, 2, 3]), t0);
        assert_eq!(plan.next(t0), sends(&[upstream(0)]));
        assert_eq!(plan.next(t0 + 320 * MS), sends(&[upstream(1)]));
        // The next batch is 50ms after the late one, not a burst to catch up.
        assert_eq!(plan.next(t0 + 320 * MS), Action::Wait(t0 + 370 * MS));
        assert_eq!(plan.next(t0 + 370 * MS), sends(&[upstream(2)]));
        assert_eq!(plan.next(t0 + 420 * MS), sends(&[upstream(3)]));
    }

    #[test]
    fn stagger_goes_on_at_once_when_everything_sent_has_failed() {
        let t0 = Instant::now();
        let p = TierParams {
            active_tier_size: 1,
            batch_size: 1,
            ..params()
        };
        let mut plan = staggered(&p, &upstreams([0, 1, 2]), t0);
        assert_eq!(plan.next(t0), sends(&[upstream(0)]));
        plan.on_result(upstream(0), FAIL, t0 + MS);
        assert_eq!(plan.next(t0 + MS), sends(&[upstream(1)]));
        plan.on_result(upstream(1), FAIL, t0 + 2 * MS);
        // Nothing pending and nothing good: do not wait out the 50ms pacing.
        assert_eq!(plan.next(t0 + 2 * MS), sends(&[upstream(2)]));
        plan.on_result(upstream(2), FAIL, t0 + 3 * MS);
        assert_eq!(plan.next(t0 + 3 * MS), Action::Done);
        assert_eq!(plan.stats().good, 0);
        assert_eq!(plan.stats().failed, 3);
    }

    #[test]
    fn the_budget_is_asked_for_every_query_but_the_first_with_its_purpose() {
        let t0 = Instant::now();
        let mut asked = Vec::new();
        let mut p = staggered(&params(), &upstreams([0, 1, 2, 3, 4]), t0);
        // The second active query refused: only the first goes.
        let mut refuse_active = |up, why| {
            asked.push((up, why));
            why != Purpose::Active
        };
        assert_eq!(p.next_within(t0, &mut refuse_active), sends(&[upstream(0)]));
        assert_eq!(
            asked,
            [
                (upstream(0), Purpose::First),
                (upstream(1), Purpose::Active)
            ]
        );
        // The hedge at 300 ms is asked for as a hedge and goes.
        asked.clear();
        let mut all = |up, why| {
            asked.push((up, why));
            true
        };
        assert_eq!(
            p.next_within(t0 + 300 * MS, &mut all),
            sends(&upstreams([2, 3]))
        );
        assert_eq!(
            asked,
            [(upstream(2), Purpose::Hedge), (upstream(3), Purpose::Hedge)]
        );
        // After the first good answer the rest is completion; refused, the plan ends
        // once what is in flight is done.
        p.on_result(upstream(2), Outcome::Good, t0 + 320 * MS);
        let mut no_completion = |_, why| why != Purpose::Completion;
        assert!(matches!(
            p.next_within(t0 + 350 * MS, &mut no_completion),
            Action::Wait(_)
        ));
        p.on_result(upstream(0), FAIL, t0 + 360 * MS);
        p.on_result(upstream(3), FAIL, t0 + 370 * MS);
        assert_eq!(
            p.next_within(t0 + 400 * MS, &mut no_completion),
            Action::Done
        );
        assert_eq!(p.stats().skipped, 2, "the active second and the completion");
        assert_eq!(p.stats().launched, 3);
        assert_eq!(p.stats().peak_in_flight, 3);
    }

    #[test]
    fn an_active_tier_that_failed_beside_a_refused_query_starts_the_hedges_at_once() {
        let t0 = Instant::now();
        let mut p = staggered(&params(), &upstreams([0, 1, 2, 3]), t0);
        let mut refuse_active = |_, why| why != Purpose::Active;
        assert_eq!(p.next_within(t0, &mut refuse_active), sends(&[upstream(0)]));
        p.on_result(upstream(0), FAIL, t0 + 10 * MS);
        assert_eq!(
            p.next_within(t0 + 10 * MS, &mut refuse_active),
            sends(&upstreams([2, 3]))
        );
        assert_eq!(p.stats().stagger_reason, Some(StaggerReason::ActiveFailed));
    }

    #[test]
    fn stop_collecting_before_the_first_answer_ends_the_plan_with_it() {
        let t0 = Instant::now();
        let mut p = staggered(&params(), &upstreams([0, 1, 2, 3, 4]), t0);
        assert_eq!(p.next(t0), sends(&upstreams([0, 1])));
        p.stop_collecting();
        p.on_result(upstream(0), Outcome::Good, t0 + 20 * MS);
        assert_eq!(p.next(t0 + 20 * MS), Action::Done, "no stagger, no wait");
        assert_eq!(p.stats().stagger_reason, None);
        assert_eq!(p.stats().launched, 2);
    }

    #[test]
    fn not_complete_is_plain_hedging() {
        let t0 = Instant::now();
        let p = TierParams {
            complete: false,
            ..params()
        };
        // Good answer before the hedge: nothing more is ever sent.
        let mut plan = staggered(&p, &upstreams([0, 1, 2, 3]), t0);
        assert_eq!(plan.next(t0), sends(&upstreams([0, 1])));
        plan.on_result(upstream(0), Outcome::Good, t0 + 10 * MS);
        assert_eq!(plan.next(t0 + 10 * MS), Action::Done);
        assert_eq!(plan.next(t0 + 400 * MS), Action::Done);
        assert_eq!(plan.stats().launched, 2);
        assert_eq!(plan.stats().stagger_reason, None);
        // Slow active tier: the hedge still fires; then the first good ends it.
        let mut plan = staggered(&p, &upstreams([0, 1, 2, 3, 4]), t0);
        assert_eq!(plan.next(t0), sends(&upstreams([0, 1])));
        assert_eq!(plan.next(t0 + 300 * MS), sends(&upstreams([2, 3])));
        plan.on_result(upstream(3), Outcome::Good, t0 + 320 * MS);
        assert_eq!(plan.stats().first_good, Some((upstream(3), false)));
        assert_eq!(plan.next(t0 + 350 * MS), Action::Done);
        assert_eq!(plan.stats().launched, 4);
    }

    #[test]
    fn total_collect_timeout_bounds_the_flight() {
        let t0 = Instant::now();
        let p = TierParams {
            stagger_delay: Duration::from_secs(2),
            ..params()
        };
        let mut plan = staggered(&p, &upstreams([0, 1, 2, 3, 4, 5]), t0);
        let (_, _) = pump(&mut plan, t0);
        plan.on_result(upstream(0), Outcome::Good, t0 + 10 * MS);
        let (sent, wait) = pump(&mut plan, t0 + 10 * MS);
        assert_eq!(sent, vec![2, 3]);
        assert_eq!(wait, Action::Wait(t0 + 2010 * MS));
        let (sent, wait) = pump(&mut plan, t0 + 2010 * MS);
        assert_eq!(sent, vec![4, 5]);
        // The next wake-up is the deadline, never later.
        assert_eq!(wait, Action::Wait(t0 + 3000 * MS));
        assert_eq!(plan.next(t0 + 3000 * MS), Action::Done);
        // Late results change nothing.
        plan.on_result(upstream(4), Outcome::Good, t0 + 3001 * MS);
        assert_eq!(plan.next(t0 + 3001 * MS), Action::Done);
    }

    #[test]
    fn each_upstream_at_most_once_and_stray_results_ignored() {
        let t0 = Instant::now();
        let mut plan = staggered(&params(), &upstreams([2, 2, 0, 1, 0, 3]), t0);
        let mut all = Vec::new();
        let mut now = t0;
        // Results for unknown, unsent and repeated upstreams are ignored.
        plan.on_result(upstream(9), Outcome::Good, now);
        plan.on_result(upstream(3), Outcome::Good, now);
        for _ in 0..20 {
            let (sent, action) = pump(&mut plan, now);
            all.extend(sent.iter().copied());
            for &up in &sent {
                plan.on_result(up, FAIL, now);
                plan.on_result(up, Outcome::Good, now);
            }
            if action == Action::Done {
                break;
            }
            now += 10 * MS;
        }
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3]);
        assert_eq!(
            plan.stats().good,
            0,
            "a second result for one query is dropped"
        );
        assert_eq!(plan.next(now), Action::Done);
    }

    #[test]
    fn fewer_upstreams_than_the_active_tier() {
        let t0 = Instant::now();
        let p = TierParams {
            active_tier_size: 3,
            ..params()
        };
        let mut plan = staggered(&p, &[upstream(7)], t0);
        assert_eq!(plan.next(t0), sends(&[upstream(7)]));
        assert_eq!(plan.next(t0), Action::Wait(t0 + 3000 * MS));
        plan.on_result(upstream(7), FAIL, t0 + MS);
        assert_eq!(plan.next(t0 + MS), Action::Done);
        assert_eq!(plan.stats().stagger_reason, None);
    }

    #[test]
    fn parallel_sends_all_and_completes_or_stops() {
        let t0 = Instant::now();
        let mut plan = Plan::with_hedge(
            StrategyKind::Parallel,
            &params(),
            &upstreams([0, 1, 2]),
            300 * MS,
            t0,
            0,
        );
        assert_eq!(plan.next(t0), sends(&upstreams([0, 1, 2])));
        assert_eq!(plan.next(t0), Action::Wait(t0 + 3000 * MS));
        plan.on_result(upstream(2), Outcome::Good, t0 + MS);
        assert_eq!(plan.stats().first_good, Some((upstream(2), true)));
        assert_eq!(plan.next(t0 + MS), Action::Wait(t0 + 3000 * MS));
        plan.on_result(upstream(0), Outcome::Good, t0 + 2 * MS);
        plan.on_result(upstream(1), FAIL, t0 + 3 * MS);
        assert_eq!(plan.next(t0 + 3 * MS), Action::Done);
        assert_eq!(plan.stats().stagger_reason, None);

        let p = TierParams {
            complete: false,
            ..params()
        };
        let mut plan = Plan::with_hedge(
            StrategyKind::Parallel,
            &p,
            &upstreams([0, 1, 2]),
            300 * MS,
            t0,
            0,
        );
        assert_eq!(plan.next(t0), sends(&upstreams([0, 1, 2])));
        plan.on_result(upstream(1), Outcome::Good, t0 + MS);
        assert_eq!(plan.next(t0 + MS), Action::Done);
    }

    #[test]
    fn sequential_moves_on_on_failure_or_attempt_timeout() {
        let t0 = Instant::now();
        let p = TierParams {
            attempt_timeout: 100 * MS,
            ..params()
        };
        let mut plan = Plan::with_hedge(
            StrategyKind::Sequential,
            &p,
            &upstreams([5, 6, 7, 8]),
            Duration::ZERO,
            t0,
            0,
        );
        assert_eq!(plan.next(t0), sends(&[upstream(5)]));
        assert_eq!(plan.next(t0), Action::Wait(t0 + 100 * MS));
        plan.on_result(upstream(5), FAIL, t0 + 20 * MS);
        assert_eq!(plan.next(t0 + 20 * MS), sends(&[upstream(6)]));
        assert_eq!(plan.next(t0 + 20 * MS), Action::Wait(t0 + 120 * MS));
        assert_eq!(plan.next(t0 + 120 * MS), sends(&[upstream(7)]));
        assert_eq!(plan.in_flight(), 2, "the slow one stays in flight");
        // The earlier, slow upstream answers and is accepted: done, no merge.
        plan.on_result(upstream(6), Outcome::Good, t0 + 130 * MS);
        assert_eq!(plan.stats().first_good, Some((upstream(6), false)));
        assert_eq!(plan.next(t0 + 130 * MS), Action::Done);
        assert_eq!(plan.stats().launched, 3);
        assert_eq!(plan.stats().stagger_reason, None);
    }

    #[test]
    fn sequential_all_failed_is_done() {
        let t0 = Instant::now();
        let mut plan = Plan::with_hedge(
            StrategyKind::Sequential,
            &params(),
            &upstreams([0, 1]),
            Duration::ZERO,
            t0,
            0,
        );
        assert_eq!(plan.next(t0), sends(&[upstream(0)]));
        plan.on_result(upstream(0), FAIL, t0 + MS);
        assert_eq!(plan.next(t0 + MS), sends(&[upstream(1)]));
        plan.on_result(upstream(1), FAIL, t0 + 2 * MS);
        assert_eq!(plan.next(t0 + 2 * MS), Action::Done);
    }

    #[test]
    fn sequential_attempt_timeout_adapts_to_health() {
        let t0 = Instant::now();
        let mut health = HealthTracker::new(HealthParams::default(), &[0, 0, 0]);
        // srtt 40ms, rttvar 20ms: RTO 120ms.
        health.record_success(upstream(0), 40 * MS);
        let mut plan = Plan::new(
            StrategyKind::Sequential,
            &params(),
            &upstreams([0, 1, 2]),
            &health,
            t0,
            0,
        );
        assert_eq!(plan.next(t0), sends(&[upstream(0)]));
        assert_eq!(plan.next(t0), Action::Wait(t0 + 120 * MS));
        assert_eq!(plan.next(t0 + 120 * MS), sends(&[upstream(1)]));
        // No samples for 1: the configured attempt timeout (1s).
        assert_eq!(plan.next(t0 + 120 * MS), Action::Wait(t0 + 1120 * MS));
    }

    #[test]
    fn random_is_a_seeded_permutation_sent_one_at_a_time() {
        let t0 = Instant::now();
        let order: Vec<UpstreamIdx> = UpstreamIdx::all(8).collect();
        let run = |seed: u64| {
            let mut plan = Plan::with_hedge(
                StrategyKind::Random,
                &params(),
                &order,
                Duration::ZERO,
                t0,
                seed,
            );
            let mut seen = Vec::new();
            let mut now = t0;
            while let Action::Send(ups) = plan.next(now) {
                assert_eq!(ups.len(), 1);
                assert_eq!(plan.in_flight(), 1);
                seen.push(ups[0]);
                plan.on_result(ups[0], FAIL, now);
                now += MS;
            }
            seen
        };
        let a = run(1);
        assert_eq!(a, run(1), "same seed, same order");
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, order);
        assert!(
            (2..20).any(|s| run(s) != a),
            "different seeds give different orders"
        );
    }

    #[test]
    fn auto_fallback_resolved_from_health_in_new() {
        let t0 = Instant::now();
        let mut health = HealthTracker::new(HealthParams::default(), &[0, 0, 0]);
        for _ in 0..10 {
            health.record_success(upstream(0), 80 * MS);
            health.record_success(upstream(1), 40 * MS);
        }
        let p = TierParams {
            fallback_timeout: FallbackTimeout::Auto,
            ..params()
        };
        let mut plan = Plan::new(
            StrategyKind::Staggered,
            &p,
            &upstreams([0, 1, 2]),
            &health,
            t0,
            0,
        );
        assert_eq!(plan.next(t0), sends(&upstreams([0, 1])));
        assert_eq!(plan.next(t0), Action::Wait(t0 + 80 * MS));
        assert_eq!(plan.next(t0 + 80 * MS), sends(&[upstream(2)]));
    }

    /// A simulated fleet: every upstream answers (good or failed) after a fixed
    /// latency; the driver loop runs on a stepped clock. Checks the invariants on
    /// every step for many parameter combinations.
    #[test]
    fn invariants_hold_over_simulated_flights() {
        let t0 = Instant::now();
        let kinds = [
            StrategyKind::Staggered,
            StrategyKind::Parallel,
            StrategyKind::Sequential,
            StrategyKind::Random,
        ];
        let mut flights = 0;
        for kind in kinds {
            for n in 0..7usize {
                for active in 1..4 {
                    for complete in [false, true] {
                        for seed in 0..6u64 {
                            let p = TierParams {
                                active_tier_size: active,
                                batch_size: 1 + (seed as usize % 3),
                                complete,
                                ..params()
                            };
                            simulate(kind, &p, n, seed, t0);
                            flights += 1;
                        }
                    }
                }
            }
        }
        assert!(flights > 500);
    }

    fn simulate(kind: StrategyKind, p: &TierParams, n: usize, seed: u64, t0: Instant) {
        // Latency and outcome per upstream, from the seed.
        let lat =
            |up: usize| Duration::from_millis(((up as u64 * 7919 + seed * 104_729) % 700) + 1);
        let good = |up: usize| (up as u64 + seed) % 3 != 0;
        let order: Vec<UpstreamIdx> = UpstreamIdx::all(n).collect();
        let mut plan = Plan::with_hedge(kind, p, &order, 300 * MS, t0, seed);
        let mut sent_at: Vec<Option<Instant>> = vec![None; n];
        let mut delivered = vec![false; n];
        let mut now = t0;
        let mut first_good: Option<Instant> = None;
        loop {
            let action = plan.next(now);
            match action {
                Action::Send(ups) => {
                    assert!(!ups.is_empty());
                    for up in ups {
                        assert!(sent_at[up.get()].is_none(), "{kind:?}: {up} sent twice");
                        sent_at[up.get()] = Some(now);
                    }
                    if kind == StrategyKind::Staggered && plan.stats().stagger_reason.is_none() {
                        assert!(plan.in_flight() <= p.active_tier_size);
                    }
                    if let Some(at) = first_good {
                        assert!(
                            p.complete && !kind.is_serial(),
                            "{kind:?} sent after first good"
                        );
                        assert!(now >= at);
                    }
                    continue;
                }
                Action::Done => break,
                Action::Wait(at) => {
                    assert!(at > now, "{kind:?}: wait must move time forward");
                    assert!(at <= plan.deadline());
                    // Next event: the earliest pending result or the wake time.
                    let next_result = (0..n)
                        .filter(|&u| !delivered[u])
                        .filter_map(|u| sent_at[u].map(|s| (s + lat(u), u)))
                        .min();
                    match next_result {
                        Some((t, u)) if t <= at => {
                            now = t;
                            delivered[u] = true;
                            let outcome = if good(u) { Outcome::Good } else { FAIL };
                            if outcome == Outcome::Good && first_good.is_none() {
                                first_good = Some(now);
                            }
                            plan.on_result(upstream(u), outcome, now);
                        }
                        _ => now = at,
                    }
                }
            }
        }
        assert!(now <= plan.deadline(), "{kind:?}: ran past the deadline");
        assert_eq!(plan.next(now + Duration::from_secs(10)), Action::Done);
        let s = plan.stats();
        assert_eq!(s.launched, sent_at.iter().flatten().count());
        assert!(s.peak_in_flight <= s.launched);
        if s.good == 0 && now < plan.deadline() {
            assert_eq!(
                s.launched, n,
                "{kind:?}: gave up before trying every upstream"
            );
        }
    }
}

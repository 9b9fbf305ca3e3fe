//! The driver of one flight: runs its [`FlightMachine`] (the pure machine in
//! `flight/machine.rs`: plan, deadlines, the TCP retry decision, the budget's
//! decisions, the merge; no sockets, no clock) on the shard's upstream links. It
//! does what the machine asks (one `send` per query from the flight's own task, a
//! TCP retry in a task of its own), sleeps until the machine's wake-up or a result
//! in its [`Mailbox`], reads the clock and passes it in, and records health and
//! counters. The flight runs in two phases:
//! 1. [`FlightRun::until_first`]: until the first good answer (returned at once, for
//!    the clients and the cache) or the plan gives up.
//! 2. [`FlightRun::complete`]: spawned, nobody waits for it. Collects until the
//!    plan is done (never past `total_collect_timeout`), merges, and rewrites the
//!    cache entry only if no newer flight wrote it meanwhile; a completion the
//!    budget defers leaves the entry marked incomplete, for a hit to complete
//!    ([`FlightRun::start_completion`]). A flight with nothing left to do after its
//!    first answer is concluded at once instead ([`FlightRun::settled`]): no task.
//!
//! At debug level each finished flight logs one line ([`log_flight`]): the name,
//! who was asked when, who answered first, what the merge added, what the budget
//! refused.

use super::upstreams::UpstreamSet;
use super::{BackgroundSlot, Shard};
use crate::cache::{CompletionBase, Key};
use crate::flight::state::{heard, FlightState, Heard};
use crate::flight::{Action, Answer, Concluded, FlightMachine, FlightResult, Spender};
use crate::health::{CircuitState, FailKind, HealthTracker, UpstreamIdx};
use crate::io::Backend;
use crate::metrics::{DropReason, ShardStats, UpstreamEvent};
use crate::tiers::{Plan, Purpose, Spend, StrategyKind};
use crate::upstream::{Mailbox, Question, Report, Sent, Waiter};
use crate::wire::build::{write_upstream_query, MAX_UPSTREAM_QUERY_LEN};
use crate::wire::reader::QueryView;
use smallvec::SmallVec;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

mod in_flight;
mod log;
mod store;
use in_flight::Counted;
pub(super) use in_flight::InFlight;
use log::log_flight;

/// One flight in progress on a shard: the machine, and the I/O around it.
pub(super) struct FlightRun<B: Backend> {
    shard: Rc<Shard<B>>,
    /// The upstream set current when the flight started, kept to its end.
    set: Rc<UpstreamSet<B>>,
    flight: FlightMachine,
    query: Rc<[u8]>,
    question: Question,
    key: Key,
    version: u64,
    /// Where the upstream links post this flight's results.
    mailbox: Rc<Mailbox>,
    /// What keeps each query still out waiting: its pending entry, or its TCP
    /// retry's task (removed, or stopped, when dropped).
    holds: SmallVec<[(UpstreamIdx, Hold); 4]>,
}

/// The shard's amplification budget as the machine asks it: the buckets, the
/// headroom health shows, and the counters of each decision.
struct ShardSpender<'a, B: Backend> {
    shard: &'a Shard<B>,
    /// The flight's upstream indices are the shard's (no reload since it began).
    current: bool,
}

impl<B: Backend> Spender for ShardSpender<'_, B> {
    fn spend_latency(&mut self, purpose: Purpose, now: Instant) -> bool {
        let ok = self.shard.budget.borrow_mut().try_spend(purpose, now);
        if let Some(i) = Purpose::CHARGED.iter().position(|p| *p == purpose) {
            let tiers = &self.shard.stats.tiers;
            ShardStats::bump(if ok {
                &tiers.extra_queries[i]
            } else {
                &tiers.budget_refused[i]
            });
        }
        ok
    }

    fn spend_completion(&mut self, up: UpstreamIdx, asked_again: bool, now: Instant) -> Spend {
        let mut budget = self.shard.budget.borrow_mut();
        // Headroom: no completion load on an upstream that is failing.
        let strained = budget.params().enabled && self.current && {
            let h = self.shard.health.borrow();
            h.state(up) != CircuitState::Closed || h.consecutive_failures(up) > 0
        };
        let spend = if strained {
            Spend::Refused
        } else {
            budget.try_complete(up, asked_again, now)
        };
        let tiers = &self.shard.stats.tiers;
        let i = Purpose::CHARGED
            .iter()
            .position(|p| *p == Purpose::Completion)
            .unwrap_or(0);
        match spend {
            Spend::Allowed => ShardStats::bump(&tiers.extra_queries[i]),
            Spend::Refused => ShardStats::bump(&tiers.budget_refused[i]),
            Spend::Deferred => ShardStats::bump(&tiers.completion_deferred),
        }
        spend
    }
}

impl<B: Backend> FlightRun<B> {
    /// Plans the flight for `q` on its route (forward zone), in health order.
    pub(super) fn start(
        shard: Rc<Shard<B>>,
        q: &QueryView<'_>,
        key: Key,
        now: Instant,
        background: bool,
    ) -> Self {
        let version = shard.shared.cache.next_version();
        Self::planned(shard, q, key, now, background, version, None)
    }

    /// A completion by demand of the cached answer `base`: asks, all at once, the
    /// upstreams of the name's route whose addresses it lacks, and merges what
    /// they give into it under its own version (a newer write wins). None when
    /// no upstream is left to ask.
    pub(super) fn start_completion(
        shard: Rc<Shard<B>>,
        q: &QueryView<'_>,
        key: Key,
        now: Instant,
        base: CompletionBase,
    ) -> Option<Self> {
        let version = base.version;
        let left = {
            let set = shard.upstreams.borrow();
            let route = set.zones.route(q.qname_lower());
            route.upstreams.iter().any(|up| !heard(base.answered, *up))
        };
        if !left {
            return None;
        }
        let mut run = Self::planned(shard, q, key, now, true, version, Some(base.answered));
        run.flight
            .complete_base(base.wire, base.inserted, base.answered, base.origins);
        Some(run)
    }

    /// The flight's plan on its route, in health order: the route's strategy,
    /// or, for a completion (`skip`: the upstreams already heard), every
    /// upstream not heard at once.
    fn planned(
        shard: Rc<Shard<B>>,
        q: &QueryView<'_>,
        key: Key,
        now: Instant,
        background: bool,
        version: u64,
        skip: Option<u16>,
    ) -> Self {
        let set = Rc::clone(&shard.upstreams.borrow());
        let route = set.zones.route(q.qname_lower());
        let mut order: SmallVec<[UpstreamIdx; 8]> = SmallVec::new();
        let min_agree = route.tiers.merge_min_agree;
        let plan = {
            let mut health = shard.health.borrow_mut();
            let elsewhere = |up: UpstreamIdx| {
                set.board
                    .get(up)
                    .map(|b| b.elsewhere(now))
                    .unwrap_or_default()
            };
            health.order_shared(&route.upstreams, now, &mut order, elsewhere);
            let strategy = match skip {
                Some(answered) => {
                    order.retain(|up| !heard(answered, *up));
                    StrategyKind::Parallel
                }
                None => route.strategy,
            };
            Plan::new(strategy, &route.tiers, &order, &health, now, rand::random())
        };
        let mut buf = [0u8; MAX_UPSTREAM_QUERY_LEN];
        let len = write_upstream_query(&mut buf, 0, q);
        let state = FlightState::new(plan, q.qtype, min_agree, now);
        Self {
            flight: FlightMachine::new(state, background, now),
            query: buf[..len].into(),
            question: Question::new(q.qname_lower(), q.qtype, q.qclass),
            key,
            version,
            mailbox: Mailbox::new(),
            holds: SmallVec::new(),
            set,
            shard,
        }
    }

    /// The cache version this flight writes with.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// Caches the flight's first good answer, every record of it from the
    /// upstream that gave it (its provenance, `cache::provenance`).
    pub(super) fn store_first(&self, answer: &Answer) {
        let cache = &self.shard.shared.cache;
        store::store_first(cache, &self.set.labels, &self.key, self.version, answer);
    }

    /// Marks the name as one that will be asked again (see [`crate::tiers::Budget`]).
    pub(super) fn set_asked_again(&mut self, asked_again: bool) {
        self.flight.set_asked_again(asked_again);
    }

    /// What the machine asks at `now`, the shard's budget deciding.
    fn poll(&mut self, now: Instant) -> Action {
        let current = self.is_current();
        let mut spender = ShardSpender {
            shard: &self.shard,
            current,
        };
        self.flight.poll_action(now, &mut spender)
    }

    fn launch(&mut self, up: UpstreamIdx, background: bool) {
        // The round trip is timed from here, not from the start of the step.
        let now = Instant::now();
        let Some(link) = self.set.links.get(up).cloned() else {
            // Not a configured upstream: the plan hears it failed.
            self.flight.handle_sent(up, Duration::ZERO, now);
            self.flight.handle_failure(up, FailKind::Network, now);
            return;
        };
        self.record(up, UpstreamEvent::Query);
        let waiter = Waiter {
            mailbox: Rc::clone(&self.mailbox),
            up,
            sent_at: now,
        };
        match link.send(&self.query, &self.question, background, waiter) {
            Ok(sent) => {
                self.flight.handle_sent(up, link.timeout, now);
                let count = self.set.in_flight.hold(up);
                self.holds.push((
                    up,
                    Hold::Sent {
                        _entry: sent,
                        _count: count,
                    },
                ));
            }
            // Failed at once (no room, or the socket refused it): no answer comes.
            Err(kind) => {
                self.flight.handle_sent(up, link.timeout, now);
                let heard = self.flight.handle_failure(up, kind, now);
                self.heard(up, heard, now);
            }
        }
    }

    /// Feeds one result to the machine, then records what it meant. Returns the
    /// answer when it is the flight's first good one.
    fn on_report(&mut self, (up, res): Report, now: Instant) -> Option<Arc<Answer>> {
        let heard = match res {
            Ok(ex) => {
                let over_tcp = ex.over_tcp;
                let heard = self.flight.handle_reply(up, ex, now)?;
                if over_tcp {
                    self.record(up, UpstreamEvent::TcpRetry);
                }
                heard
            }
            Err(kind) => self.flight.handle_failure(up, kind, now)?,
        };
        self.heard(up, Some(heard), now)
    }

    /// Records what one query's end meant (health, counters) and lets go of what
    /// kept it waiting. Returns the flight's first good answer if this is it.
    fn heard(
        &mut self,
        up: UpstreamIdx,
        heard: Option<Heard>,
        now: Instant,
    ) -> Option<Arc<Answer>> {
        let heard = heard?;
        self.holds.retain(|(u, _)| *u != up);
        match heard {
            Heard::Good { rtt, first } => {
                if self.is_current() {
                    self.update_health(up, |h| h.record_success(up, rtt), "answered");
                    self.publish_rtt(up, now);
                }
                self.record(up, UpstreamEvent::Answer(rtt));
                first
            }
            Heard::Overload => {
                // Our own bound, not the upstream's fault: no health, no error.
                self.shard.stats.dropped(DropReason::UpstreamOverload);
                None
            }
            Heard::Failed(kind) => {
                if self.is_current() {
                    self.update_health(up, |h| h.record_failure(up, kind, now), kind.as_str());
                }
                self.record(
                    up,
                    if kind == FailKind::Timeout {
                        UpstreamEvent::Timeout
                    } else {
                        UpstreamEvent::Error
                    },
                );
                None
            }
        }
    }
    /// Whether this flight's upstream indices still mean what the shard's health
    /// and counters mean by them (no reload since the flight started).
    fn is_current(&self) -> bool {
        self.shard.upstreams.borrow().generation == self.set.generation
    }

    /// Applies a health update and logs a change of the upstream's circuit state:
    /// rare, and what an operator wants to see in the log.
    fn update_health(&self, up: UpstreamIdx, f: impl FnOnce(&mut HealthTracker), why: &str) {
        let mut health = self.shard.health.borrow_mut();
        let before = health.state(up);
        f(&mut health);
        let after = health.state(up);
        if before != after {
            // Tell the other shards: one store, on a change only.
            if let Some(slot) = self.set.board.get(up) {
                match after {
                    CircuitState::Open => {
                        let backoff = health.backoff(up).unwrap_or_default();
                        slot.mark_open(Instant::now() + backoff);
                    }
                    CircuitState::Closed => slot.mark_closed(),
                    _ => {}
                }
            }
            let upstream = self.set.labels.get(up).map_or("?", String::as_str);
            if after == CircuitState::Closed {
                tracing::info!(
                    shard = self.shard.index,
                    upstream,
                    from = before.as_str(),
                    to = after.as_str(),
                    last = why,
                    "upstream circuit changed"
                );
            } else {
                tracing::warn!(
                    shard = self.shard.index,
                    upstream,
                    from = before.as_str(),
                    to = after.as_str(),
                    last = why,
                    "upstream circuit changed"
                );
            }
        }
    }

    /// Shares this shard's smoothed RTT of `up` with the others, now and then (see
    /// [`crate::health::PUBLISH_EVERY`]).
    fn publish_rtt(&self, up: UpstreamIdx, now: Instant) {
        let srtt = self.shard.health.borrow_mut().srtt_to_publish(up, now);
        if let (Some(srtt), Some(slot)) = (srtt, self.set.board.get(up)) {
            slot.publish_srtt(srtt);
        }
    }

    fn record(&self, up: UpstreamIdx, event: UpstreamEvent) {
        if self.is_current() {
            self.shard.stats.upstream(up, event);
        }
    }

    /// Asks `up` again over TCP, by `deadline`; the result comes through the
    /// mailbox like any other.
    fn retry_over_tcp(&mut self, up: UpstreamIdx, deadline: Instant) {
        let Some(link) = self.set.links.get(up).cloned() else {
            return;
        };
        let (query, question) = (Rc::clone(&self.query), self.question.clone());
        let mailbox = Rc::clone(&self.mailbox);
        let task = tokio::task::spawn_local(async move {
            let res = link.tcp_retry(&query, &question, deadline).await;
            mailbox.push((up, res));
        });
        self.holds.retain(|(u, _)| *u != up);
        let count = self.set.in_flight.hold(up);
        self.holds.push((
            up,
            Hold::Task {
                task,
                _count: count,
            },
        ));
    }

    /// Takes the results that came, and the timeouts that fell due, by `now`.
    /// Returns the flight's first good answer if one of them is it.
    fn take_news(&mut self, now: Instant) -> Option<Arc<Answer>> {
        let mut first = None;
        while let Some(report) = self.mailbox.pop() {
            first = first.or(self.on_report(report, now));
        }
        while let Some((up, heard)) = self.flight.handle_timeout(now) {
            first = first.or(self.heard(up, Some(heard), now));
        }
        first
    }

    /// Drives the flight one step: does what the machine asks until it waits or
    /// is done. Returns false once it is done. The clock is read here, at the
    /// edge, and passed in.
    async fn step(&mut self) -> (bool, Option<Arc<Answer>>) {
        let now = Instant::now();
        if let Some(answer) = self.take_news(now) {
            return (true, Some(answer));
        }
        loop {
            match self.poll(now) {
                Action::Send { up, background } => self.launch(up, background),
                Action::RetryOverTcp { up, deadline } => self.retry_over_tcp(up, deadline),
                Action::Wait(at) => {
                    let report = tokio::select! {
                        r = self.mailbox.recv() => Some(r),
                        _ = tokio::time::sleep_until(at.into()) => None,
                    };
                    let now = Instant::now();
                    let answer = report.and_then(|r| self.on_report(r, now));
                    return (true, answer.or_else(|| self.take_news(now)));
                }
                Action::Done => return (false, None),
            }
        }
    }

    /// Whether the flight has nothing left to do now (after its first answer or
    /// its failure). A settled flight is [`conclude`](Self::conclude)d at once,
    /// with no task of its own. Queries the plan says are due are not sent here
    /// but kept by the machine for [`complete`](Self::complete), so the client's
    /// reply leaves first.
    pub(super) fn settled(&mut self) -> bool {
        let now = Instant::now();
        self.take_news(now);
        let current = self.is_current();
        let mut spender = ShardSpender {
            shard: &self.shard,
            current,
        };
        self.flight.is_done(now, &mut spender)
    }

    /// Runs until the first good answer, or until the plan gives up.
    pub(super) async fn until_first(&mut self) -> FlightResult {
        loop {
            match self.step().await {
                (_, Some(answer)) => return FlightResult::Answer(answer),
                (true, None) => {}
                (false, None) => return FlightResult::Failed(self.flight.failure()),
            }
        }
    }

    /// Background completion: collect until the plan is done, merge, and write the
    /// merged answer if this flight's version is still the newest for the key.
    /// `_slot` is held while it runs; without one (the shard has `max_background`
    /// running) the caller has stopped the collecting: the flight keeps its first
    /// answer.
    pub(super) async fn complete(mut self, _slot: Option<BackgroundSlot<B>>) {
        while self.step().await.0 {}
        self.conclude();
    }

    /// No more queries: a good answer ends the flight (stored incomplete, for a
    /// later hit to complete).
    pub(super) fn stop_collecting(&mut self) {
        self.flight.stop_collecting();
    }

    /// No more collecting: counts what the flight did, and writes the merge; an
    /// answer that lacks upstreams' addresses because completion was deferred or
    /// refused is marked incomplete in the cache.
    pub(super) fn conclude(mut self) {
        // Results already in count; what is still out is abandoned, and the time
        // waited tells health something about the silent upstreams.
        let now = Instant::now();
        while let Some(report) = self.mailbox.pop() {
            self.on_report(report, now);
        }
        if self.is_current() {
            let mut health = self.shard.health.borrow_mut();
            for (up, waited) in self.flight.abandoned(now) {
                health.record_abandoned(up, waited);
            }
        }
        // Their pending entries go (a late reply is counted as late), and any TCP
        // retry stops.
        self.holds.clear();
        let on_demand = self.flight.on_demand();
        let started = self.flight.started();
        let account =
            tracing::enabled!(tracing::Level::DEBUG).then(|| self.flight.account().clone());
        let Concluded {
            finished,
            incomplete,
            answered,
        } = self.flight.finish();
        let tiers = &self.shard.stats.tiers;
        if let Some(account) = account {
            log_flight(
                &self.question,
                &self.set.labels,
                started,
                now,
                &account,
                &finished,
            );
        }
        let stats = finished.stats;
        store::store_merged(
            &self.shard.shared.cache,
            &self.shard.stats.tiers,
            &self.set.labels,
            &self.key,
            self.version,
            finished.merged,
            &finished.came,
        );
        if incomplete {
            self.shard
                .shared
                .cache
                .mark_incomplete(&self.key.key_ref(), self.version, answered);
        }
        if on_demand {
            return;
        }
        if let Some(reason) = stats.stagger_reason {
            ShardStats::bump(&tiers.stagger[reason as usize]);
        }
        match stats.first_good {
            Some((_, true)) => ShardStats::bump(&tiers.answered_active),
            Some((_, false)) => ShardStats::bump(&tiers.answered_stagger),
            None => ShardStats::bump(&tiers.failed_flights),
        }
        tiers.peak_in_flight.record(stats.peak_in_flight as f64);
        tiers
            .background
            .record(now.saturating_duration_since(started).as_secs_f64());
    }
}

/// What keeps one query waiting, counted in flight while it does.
enum Hold {
    /// Its pending entry on a UDP socket, or the task of its encrypted exchange
    /// (removed, or stopped, when this is dropped).
    Sent { _entry: Sent, _count: Counted },
    /// The task asking it over TCP after a truncated answer (stopped when this is
    /// dropped).
    Task {
        task: JoinHandle<()>,
        _count: Counted,
    },
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Self::Task { task, .. } = self {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests;

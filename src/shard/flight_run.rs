//! The driver of one flight: runs its [`FlightState`] (the pure machine in
//! `flight/state.rs`: plan, results, merge; no sockets, no clock) on the shard's
//! upstream links. It sends from its own task (one `send` per query), keeps each
//! query's deadline, sleeps until the state's wake-up, a deadline or a result in
//! its [`Mailbox`], reads the clock and passes it in, records health and counters,
//! and splits the flight in two phases:
//! 1. [`FlightRun::until_first`]: until the first good answer (returned at once, for
//!    the clients and the cache) or the plan gives up.
//! 2. [`FlightRun::complete`]: spawned, nobody waits for it. Collects until the
//!    plan is done (never past `total_collect_timeout`), merges, and rewrites the
//!    cache entry only if no newer flight wrote it meanwhile; a completion the
//!    budget defers leaves the entry marked incomplete, for a hit to complete
//!    ([`FlightRun::start_completion`]). A flight with nothing left to do after its
//!    first answer is concluded at once instead ([`FlightRun::settled`]): no task.

use super::upstreams::UpstreamSet;
use super::{BackgroundSlot, Shard};
use crate::cache::{CompletionBase, Key};
use crate::flight::state::{heard, Finished, FlightState, Heard, Next};
use crate::flight::{Answer, FlightResult};
use crate::health::{after, CircuitState, FailKind, HealthTracker, UpstreamIdx};
use crate::io::Backend;
use crate::metrics::{DropReason, ShardStats, UpstreamEvent};
use crate::tiers::{Merged, Plan, Purpose, SendList, Spend, StrategyKind};
use crate::upstream::{Mailbox, Question, Report, Sent, Waiter};
use crate::wire::build::{write_upstream_query, MAX_UPSTREAM_QUERY_LEN};
use crate::wire::reader::QueryView;
use smallvec::SmallVec;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinHandle;

/// One flight in progress on a shard: the state, and the I/O around it.
pub(super) struct FlightRun<B: Backend> {
    shard: Rc<Shard<B>>,
    /// The upstream set current when the flight started, kept to its end.
    set: Rc<UpstreamSet<B>>,
    state: FlightState,
    query: Rc<[u8]>,
    question: Question,
    key: Key,
    version: u64,
    started: Instant,
    /// Where the upstream links post this flight's results.
    mailbox: Rc<Mailbox>,
    /// The queries sent and not heard from yet.
    out: SmallVec<[Outstanding; 4]>,
    /// When each upstream was asked.
    sent_at: SmallVec<[(UpstreamIdx, Instant); 8]>,
    /// The name is known to be asked again (waiters, a prefetch, a hit on its
    /// entry while fresh): it earns its completion (see [`crate::tiers::Budget`]).
    asked_again: bool,
    /// A completion query was deferred or refused: the entry is stored
    /// incomplete, for a later hit to complete.
    short: bool,
    /// A completion by demand of a cached answer, not a client's flight: every
    /// query is a completion query, and its tier counters are not a flight's.
    on_demand: bool,
    /// No client waits for any of its queries (a prefetch): they leave the last
    /// slots of the upstream pending tables to queries that have one.
    background: bool,
    /// Upstreams of the send being launched that are background work (completion).
    completing: SmallVec<[UpstreamIdx; 4]>,
    /// Queries the plan said were due when [`Self::settled`] looked, to be sent
    /// first thing in [`Self::complete`].
    due: Option<SendList>,
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
        run.state
            .complete_base(base.wire, base.inserted, base.answered);
        run.asked_again = true;
        run.on_demand = true;
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
        Self {
            state: FlightState::new(plan, q.qtype, min_agree, now),
            query: buf[..len].into(),
            question: Question::new(q.qname_lower(), q.qtype, q.qclass),
            key,
            version,
            started: now,
            mailbox: Mailbox::new(),
            out: SmallVec::new(),
            sent_at: SmallVec::new(),
            asked_again: false,
            short: false,
            on_demand: false,
            background,
            completing: SmallVec::new(),
            due: None,
            set,
            shard,
        }
    }

    /// The cache version this flight writes with.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// Marks the name as one that will be asked again (see [`crate::tiers::Budget`]).
    pub(super) fn set_asked_again(&mut self, asked_again: bool) {
        self.asked_again = asked_again;
    }

    fn launch(&mut self, up: UpstreamIdx) {
        // The round trip is timed from here, not from the start of the step.
        let now = Instant::now();
        let Some(link) = self.set.links.get(up) else {
            // Not a configured upstream: the plan hears it failed.
            self.state.on_report(up, Err(FailKind::Network), now);
            return;
        };
        self.record(up, UpstreamEvent::Query);
        self.sent_at.push((up, now));
        let background = self.background || self.completing.contains(&up);
        let waiter = Waiter {
            mailbox: Rc::clone(&self.mailbox),
            up,
            sent_at: now,
        };
        match link.send(&self.query, &self.question, background, waiter) {
            Ok(sent) => self.out.push(Outstanding {
                up,
                deadline: after(now, link.timeout),
                hold: Hold::Sent { _entry: sent },
            }),
            // Failed at once (no room, or the socket refused it): no answer comes.
            Err(kind) => {
                self.out.push(Outstanding {
                    up,
                    deadline: now,
                    hold: Hold::Nothing,
                });
                self.on_report((up, Err(kind)), now);
            }
        }
    }

    /// Feeds one result to the state, then records what it meant. Returns the
    /// answer when it is the flight's first good one. A truncated UDP answer is not
    /// a result yet: the query is asked again over TCP, within its deadline.
    fn on_report(&mut self, (up, res): Report, now: Instant) -> Option<Arc<Answer>> {
        // Only queries still out are heard (a result is posted once per query).
        let i = self.out.iter().position(|o| o.up == up)?;
        if let Ok(ex) = &res {
            if ex.truncated() {
                self.retry_over_tcp(i);
                return None;
            }
        }
        self.out.swap_remove(i);
        if res.as_ref().is_ok_and(|ex| ex.over_tcp) {
            self.record(up, UpstreamEvent::TcpRetry);
        }
        match self.state.on_report(up, res, now) {
            Heard::Good { rtt, first } => {
                if self.is_current() {
                    self.update_health(up, |h| h.record_success(up, rtt, now), "answered");
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

    /// Asks query `i` of [`Self::out`] again over TCP, by its deadline; the result
    /// comes through the mailbox like any other.
    fn retry_over_tcp(&mut self, i: usize) {
        let o = &mut self.out[i];
        let Some(link) = self.set.links.get(o.up).cloned() else {
            return;
        };
        let (query, question) = (Rc::clone(&self.query), self.question.clone());
        let (mailbox, up, deadline) = (Rc::clone(&self.mailbox), o.up, o.deadline);
        o.hold = Hold::Task(tokio::task::spawn_local(async move {
            let res = link.tcp_retry(&query, &question, deadline).await;
            mailbox.push((up, res));
        }));
    }

    /// Times out the queries past their deadline at `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(o) = self.out.iter().find(|o| o.deadline <= now) {
            let up = o.up;
            self.on_report((up, Err(FailKind::Timeout)), now);
        }
    }

    /// Takes the results that came, and the timeouts that fell due, by `now`.
    /// Returns the flight's first good answer if one of them is it.
    fn take_news(&mut self, now: Instant) -> Option<Arc<Answer>> {
        let mut first = None;
        while let Some(report) = self.mailbox.pop() {
            first = first.or(self.on_report(report, now));
        }
        self.expire(now);
        first
    }

    /// What the plan does at `now`, every query beyond a flight's first paid from
    /// the shard's amplification budget: latency queries from the bucket misses
    /// refill, completion queries by demand and from their upstream's share of
    /// `upstream_completion_qps`, and only to an upstream with headroom.
    fn next(&mut self, now: Instant) -> Next {
        let (budget, tiers) = (&self.shard.budget, &self.shard.stats.tiers);
        let health = &self.shard.health;
        let (asked_again, on_demand) = (self.asked_again, self.on_demand);
        let current = self.is_current();
        let completing = &mut self.completing;
        let short = &mut self.short;
        completing.clear();
        let allow = |up: UpstreamIdx, purpose: Purpose| {
            let purpose = if on_demand {
                Purpose::Completion
            } else {
                purpose
            };
            let Some(i) = Purpose::CHARGED.iter().position(|p| *p == purpose) else {
                return true;
            };
            if purpose != Purpose::Completion {
                let ok = budget.borrow_mut().try_spend(purpose, now);
                ShardStats::bump(if ok {
                    &tiers.extra_queries[i]
                } else {
                    &tiers.budget_refused[i]
                });
                return ok;
            }
            completing.push(up);
            let mut budget = budget.borrow_mut();
            // Headroom: no completion load on an upstream that is failing.
            let strained = budget.params().enabled && current && {
                let h = health.borrow();
                h.state(up) != CircuitState::Closed || h.consecutive_failures(up) > 0
            };
            let spend = if strained {
                Spend::Refused
            } else {
                budget.try_complete(up, asked_again, now)
            };
            match spend {
                Spend::Allowed => ShardStats::bump(&tiers.extra_queries[i]),
                Spend::Refused => ShardStats::bump(&tiers.budget_refused[i]),
                Spend::Deferred => ShardStats::bump(&tiers.completion_deferred),
            }
            *short |= spend != Spend::Allowed;
            spend == Spend::Allowed
        };
        self.state.next(now, allow)
    }

    /// Drives the flight one step. Returns false once it is done. The clock is
    /// read here, at the edge, and passed in.
    async fn step(&mut self) -> (bool, Option<Arc<Answer>>) {
        if let Some(list) = self.due.take() {
            for up in list {
                self.launch(up);
            }
            return (true, None);
        }
        let now = Instant::now();
        if let Some(answer) = self.take_news(now) {
            return (true, Some(answer));
        }
        match self.next(now) {
            Next::Send(list) => {
                for up in list {
                    self.launch(up);
                }
                (true, None)
            }
            Next::Wait(at) => {
                // The plan's own wake-up, or the first query deadline.
                let at = self.out.iter().map(|o| o.deadline).fold(at, Instant::min);
                let report = tokio::select! {
                    r = self.mailbox.recv() => Some(r),
                    _ = tokio::time::sleep_until(at.into()) => None,
                };
                let now = Instant::now();
                let answer = report.and_then(|r| self.on_report(r, now));
                (true, answer.or_else(|| self.take_news(now)))
            }
            Next::Done => (false, None),
        }
    }

    /// Whether the flight has nothing left to do now (after its first answer or
    /// its failure). A settled flight is [`conclude`](Self::conclude)d at once,
    /// with no task of its own. Queries the plan says are due are not sent here
    /// but kept for [`complete`](Self::complete), so the client's reply leaves
    /// first.
    pub(super) fn settled(&mut self) -> bool {
        let now = Instant::now();
        self.take_news(now);
        match self.next(now) {
            Next::Send(list) => {
                self.due = Some(list);
                false
            }
            Next::Wait(_) => false,
            Next::Done => true,
        }
    }

    /// Runs until the first good answer, or until the plan gives up.
    pub(super) async fn until_first(&mut self) -> FlightResult {
        loop {
            match self.step().await {
                (_, Some(answer)) => return FlightResult::Answer(answer),
                (true, None) => {}
                (false, None) => return FlightResult::Failed(self.state.failure()),
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
        self.short = true;
        self.state.stop_collecting();
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
            for up in self.state.unanswered() {
                if let Some(&(_, at)) = self.sent_at.iter().find(|(u, _)| *u == up) {
                    health.record_abandoned(up, now.saturating_duration_since(at));
                }
            }
        }
        // Their pending entries go (a late reply is counted as late), and any TCP
        // retry stops.
        self.out.clear();
        let incomplete = self.short && self.state.can_grow() && !self.on_demand;
        let answered = self.state.answered();
        let Finished { stats, merged } = self.state.finish();
        let tiers = &self.shard.stats.tiers;
        store(&self.shard, &self.key, self.version, merged);
        if incomplete {
            self.shard
                .shared
                .cache
                .mark_incomplete(&self.key.key_ref(), self.version, answered);
        }
        if self.on_demand {
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
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// Writes a flight's merged answer, if it has one, under its version.
fn store<B: Backend>(shard: &Shard<B>, key: &Key, version: u64, merged: Option<(Merged, Instant)>) {
    let tiers = &shard.stats.tiers;
    let Some((merged, first_at)) = merged else {
        return;
    };
    // Stored as of the first answer's arrival, so its TTLs age from then, not
    // from the end of the collection.
    let outcome = shard
        .shared
        .cache
        .insert(&key.key_ref(), &merged.wire, first_at, version);
    if outcome.stored() {
        ShardStats::bump(&tiers.merges);
        let added = tiers.merged_addresses.get() + merged.extra_addresses as u64;
        tiers.merged_addresses.set(added);
    } else {
        ShardStats::bump(&tiers.merge_rejected);
    }
}

/// A query of the flight not heard from yet: its upstream, when it times out, and
/// what keeps it waiting.
struct Outstanding {
    up: UpstreamIdx,
    deadline: Instant,
    hold: Hold,
}

enum Hold {
    /// Its pending entry on a UDP socket, or the task of its encrypted exchange
    /// (removed, or stopped, when this is dropped).
    Sent { _entry: Sent },
    /// The task asking it over TCP after a truncated answer (stopped when this is
    /// dropped).
    Task(JoinHandle<()>),
    /// Failed at once; its result is being reported.
    Nothing,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Self::Task(task) = self {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests;

//! The I/O driver of one flight: runs a [`Plan`] on the shard's upstream links.
//!
//! The plan (pure logic in [`crate::tiers`]) says which upstreams to ask and when to
//! wake up; this driver sends, feeds every result back, records health and
//! counters, and splits the flight in two phases:
//!
//! 1. [`FlightRun::until_first`]: until the first good answer (returned at once, for
//!    the clients and the cache) or the plan gives up.
//! 2. [`FlightRun::complete`]: spawned, nobody waits for it. Keeps collecting until
//!    the plan is done (never past `total_collect_timeout`), merges the good answers
//!    and rewrites the cache entry only if no newer flight wrote it meanwhile.

use crate::cache::KeyRef;
use crate::health::{CircuitState, HealthTracker};
use crate::metrics::{Drop, ShardStats, UpstreamEvent};
use crate::shard::io::Backend;
use crate::shard::upstreams::UpstreamSet;
use crate::shard::Shard;
use crate::tiers::merge;
use crate::tiers::{Action, FailKind, Outcome, Plan, StaggerReason, UpstreamIdx};
use crate::upstream::{Exchange, QuestionHash};
use crate::wire::answer::AnswerLayout;
use crate::wire::build::{write_upstream_query, Ede, MAX_UPSTREAM_QUERY_LEN};
use crate::wire::reader::{Header, QueryView};
use smallvec::SmallVec;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A good upstream answer as shared with every waiter of a flight.
#[derive(Debug)]
pub struct Answer {
    /// The reply as received (our upstream ID, the upstream's question case).
    pub wire: Vec<u8>,
    /// Where to patch it.
    pub layout: AnswerLayout,
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

type Report = (UpstreamIdx, Result<Exchange, FailKind>);

/// One flight in progress.
pub(crate) struct FlightRun<B: Backend> {
    shard: Rc<Shard<B>>,
    /// The upstream set current when the flight started, kept to its end.
    set: Rc<UpstreamSet<B>>,
    plan: Plan,
    query: Rc<[u8]>,
    question: QuestionHash,
    qname_lower: Box<[u8]>,
    qtype: u16,
    qclass: u16,
    dnssec_ok: bool,
    checking_disabled: bool,
    version: u64,
    started: Instant,
    tx: mpsc::UnboundedSender<Report>,
    rx: mpsc::UnboundedReceiver<Report>,
    tasks: SmallVec<[JoinHandle<()>; 8]>,
    first: Option<Arc<Answer>>,
    /// When the first good answer arrived: the merge is aged from then.
    first_at: Instant,
    others: Vec<Vec<u8>>,
    /// The most telling failure so far: an upstream's error rcode beats a timeout.
    worst: Option<FailKind>,
}

/// The Extended DNS Error that says why a flight failed.
fn failure_ede(worst: Option<FailKind>) -> Ede {
    match worst {
        Some(FailKind::ServFail) => Ede::UPSTREAM_SERVFAIL,
        Some(FailKind::Refused) => Ede::UPSTREAM_REFUSED,
        Some(FailKind::Network) => Ede::NETWORK_ERROR,
        Some(FailKind::Timeout) | None => Ede::NO_REACHABLE_AUTHORITY,
        Some(FailKind::Overload) => Ede::LOCAL_OVERLOAD,
        Some(_) => Ede::UPSTREAM_ERROR,
    }
}

/// How an upstream reply counts for the tiers.
fn classify(reply: &[u8]) -> Result<AnswerLayout, FailKind> {
    let header = Header::parse(reply).map_err(|_| FailKind::Malformed)?;
    match header.rcode() {
        0 | 3 => AnswerLayout::parse(reply).map_err(|_| FailKind::Malformed),
        1 => Err(FailKind::FormErr),
        2 => Err(FailKind::ServFail),
        4 => Err(FailKind::NotImp),
        5 => Err(FailKind::Refused),
        _ => Err(FailKind::OtherRcode),
    }
}

impl<B: Backend> FlightRun<B> {
    /// Plans the flight for `q` on its route (forward zone), in health order.
    pub(crate) fn start(shard: Rc<Shard<B>>, q: &QueryView<'_>, now: Instant) -> Self {
        let set = Rc::clone(&shard.upstreams.borrow());
        let route = set.zones.route(q.qname_lower());
        let mut order: SmallVec<[UpstreamIdx; 8]> = SmallVec::new();
        let plan = {
            let mut health = shard.health.borrow_mut();
            health.order(&route.upstreams, now, &mut order);
            Plan::new(
                route.strategy,
                &route.tiers,
                &order,
                &health,
                now,
                rand::random(),
            )
        };
        let mut buf = [0u8; MAX_UPSTREAM_QUERY_LEN];
        let len = write_upstream_query(&mut buf, 0, q);
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            plan,
            query: buf[..len].into(),
            question: QuestionHash::new(q.qname_lower(), q.qtype, q.qclass),
            qname_lower: q.qname_lower().into(),
            qtype: q.qtype,
            qclass: q.qclass,
            dnssec_ok: q.dnssec_ok(),
            checking_disabled: q.header.cd(),
            version: shard.shared.cache.next_version(),
            started: now,
            tx,
            rx,
            tasks: SmallVec::new(),
            first: None,
            first_at: now,
            others: Vec::new(),
            worst: None,
            set,
            shard,
        }
    }

    /// The cache version this flight writes with.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    fn key(&self) -> KeyRef<'_> {
        KeyRef {
            qname_lower: &self.qname_lower,
            qtype: self.qtype,
            qclass: self.qclass,
            dnssec_ok: self.dnssec_ok,
            checking_disabled: self.checking_disabled,
        }
    }

    fn launch(&mut self, up: UpstreamIdx) {
        let Some(link) = self.set.links.get(up).cloned() else {
            // Not a configured upstream: the plan hears it failed.
            self.plan
                .on_result(up, Outcome::Failed(FailKind::Network), Instant::now());
            return;
        };
        self.record(up, UpstreamEvent::Query);
        let shard = Rc::clone(&self.shard);
        let query = Rc::clone(&self.query);
        let question = self.question;
        let tx = self.tx.clone();
        self.tasks.push(tokio::task::spawn_local(async move {
            let res = link.exchange(&query, question, &shard.pool).await;
            let _ = tx.send((up, res));
        }));
    }

    /// Feeds one result to health, counters and the plan. Returns the answer when it
    /// is the flight's first good one.
    fn on_report(&mut self, (up, res): Report) -> Option<Arc<Answer>> {
        let now = Instant::now();
        if res.as_ref().is_ok_and(|ex| ex.over_tcp) {
            self.record(up, UpstreamEvent::TcpRetry);
        }
        let verdict = res.and_then(|ex| classify(&ex.reply).map(|layout| (ex, layout)));
        match verdict {
            Ok((ex, layout)) => {
                if self.is_current() {
                    self.update_health(up, |h| h.record_success(up, ex.rtt, now), "answered");
                }
                self.record(up, UpstreamEvent::Answer(ex.rtt));
                self.plan.on_result(up, Outcome::Good, now);
                if self.first.is_none() {
                    let answer = Arc::new(Answer {
                        wire: ex.reply,
                        layout,
                    });
                    self.first = Some(Arc::clone(&answer));
                    self.first_at = now;
                    return Some(answer);
                }
                self.others.push(ex.reply);
                None
            }
            Err(FailKind::Overload) => {
                // Our own bound, not the upstream's fault: no health, no error.
                self.shard.stats.dropped(Drop::UpstreamOverload);
                self.plan
                    .on_result(up, Outcome::Failed(FailKind::Overload), now);
                self.worst.get_or_insert(FailKind::Overload);
                None
            }
            Err(kind) => {
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
                self.plan.on_result(up, Outcome::Failed(kind), now);
                let rank = |k: FailKind| match k {
                    FailKind::Overload => 0,
                    FailKind::Timeout => 1,
                    FailKind::Network => 2,
                    _ => 3,
                };
                if self.worst.is_none_or(|w| rank(kind) >= rank(w)) {
                    self.worst = Some(kind);
                }
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

    fn record(&self, up: UpstreamIdx, event: UpstreamEvent) {
        if self.is_current() {
            self.shard.stats.upstream(up, event);
        }
    }

    /// Drives the plan one step. Returns false once it is done.
    async fn step(&mut self) -> (bool, Option<Arc<Answer>>) {
        match self.plan.next(Instant::now()) {
            Action::Send(list) => {
                for up in list {
                    self.launch(up);
                }
                (true, None)
            }
            Action::Wait(at) => {
                let report = tokio::select! {
                    r = self.rx.recv() => r,
                    _ = tokio::time::sleep_until(at.into()) => None,
                };
                (true, report.and_then(|r| self.on_report(r)))
            }
            Action::Done => (false, None),
        }
    }

    /// Runs until the first good answer, or until the plan gives up.
    pub(crate) async fn until_first(&mut self) -> FlightResult {
        loop {
            match self.step().await {
                (_, Some(answer)) => return FlightResult::Answer(answer),
                (true, None) => {}
                (false, None) => return FlightResult::Failed(failure_ede(self.worst)),
            }
        }
    }

    /// Background completion: collect until the plan is done, merge, and write the
    /// merged answer if this flight's version is still the newest for the key.
    pub(crate) async fn complete(mut self) {
        while self.step().await.0 {}
        for t in &self.tasks {
            t.abort();
        }
        let tiers = &self.shard.stats.tiers;
        let stats = self.plan.stats();
        if let Some(reason) = stats.stagger_reason {
            let i = match reason {
                StaggerReason::Answered => 0,
                StaggerReason::Timeout => 1,
                StaggerReason::ActiveFailed => 2,
            };
            ShardStats::bump(&tiers.stagger[i]);
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
        let Some(first) = self.first.as_ref() else {
            return;
        };
        if self.others.is_empty() {
            return;
        }
        let mut all: SmallVec<[&[u8]; 8]> = SmallVec::new();
        all.push(&first.wire);
        all.extend(self.others.iter().map(Vec::as_slice));
        let Some(merged) = merge(&all) else {
            return;
        };
        let outcome = self
            .shard
            .shared
            .cache
            // Stored as of the first answer's arrival, so its TTLs age from then,
            // not from the end of the collection.
            .insert(&self.key(), &merged.wire, self.first_at, self.version);
        if outcome.stored() {
            ShardStats::bump(&tiers.merges);
            let added = tiers.merged_addresses.get() + merged.extra_addresses as u64;
            tiers.merged_addresses.set(added);
        } else {
            ShardStats::bump(&tiers.merge_rejected);
        }
    }
}

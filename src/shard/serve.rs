//! Answering one client query, the same for every transport (UDP, TCP, DoT, DoH)
//! and for both backends.
//!
//! [`Shard::first_pass`] is the synchronous part: read the query, apply the protocol
//! checks (FORMERR, NOTIMP, BADVERS, drops), answer what is local (zone transfers
//! refused, ANY with RFC 8482's HINFO), and answer a cache hit straight into a
//! pooled buffer. What it cannot answer is a miss for [`Shard::resolve`], which joins
//! or leads the flight for the key and answers from its result, from a stale entry,
//! or with SERVFAIL and an Extended DNS Error.

use super::flight_run::FlightRun;
use super::{Admitted, Shard};
use crate::cache::{KeyRef, Lookup};
use crate::flight::{wait, FlightLeader, FlightResult, Join, Waited};
use crate::io::buffers::BUF_CAPACITY;
use crate::io::Backend;
use crate::metrics::{CacheResult, DropReason, ShardStats};
use crate::transport::Transport;
use crate::wire::answer::{write_reply, TtlPatch, REPLY_HEADROOM};
use crate::wire::build::{any_reply, error_reply, reject_reply, Ede, ErrorRcode};
use crate::wire::reader::{Discard, QueryView, Reject};
use crate::wire::{rcode, rtype, ReplyTarget, PLAIN_UDP_MAX};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Questions answered locally, never forwarded: zone transfers (a forwarder holds no
/// zones: REFUSED, as Unbound does), the obsolete mailbox meta types (NOTIMP), and
/// meta types that cannot stand in a question (FORMERR, RFC 6891 6.1.1, RFC 8945).
fn refusal(q: &QueryView<'_>) -> Option<(ErrorRcode, Option<Ede>)> {
    match q.qtype {
        rtype::IXFR | rtype::AXFR => Some((ErrorRcode::Refused, Some(Ede::NOT_SUPPORTED))),
        rtype::MAILB | rtype::MAILA => Some((ErrorRcode::NotImp, None)),
        rtype::OPT | rtype::TKEY | rtype::TSIG => Some((ErrorRcode::FormErr, None)),
        _ => None,
    }
}

/// What waiters get when their leader goes away without a result.
const ABANDONED: FlightResult = FlightResult::Failed(Ede::NO_REACHABLE_AUTHORITY);

/// The result of the synchronous first pass. Every variant hands the output buffer
/// back.
pub(crate) enum First {
    /// Send this reply.
    Reply(Vec<u8>),
    /// Send nothing.
    Drop(Vec<u8>),
    /// Not in the cache: resolve.
    Miss(Vec<u8>),
}

/// What a reply to this client may weigh, and what it must echo.
pub(super) fn target_of<'a>(
    q: &'a QueryView<'_>,
    transport: Transport,
    max_udp: usize,
) -> ReplyTarget<'a> {
    let mut target = q.reply_target(transport.is_stream());
    if transport == Transport::Udp {
        target.max_size = target.max_size.min(max_udp.max(PLAIN_UDP_MAX));
    }
    target
}

/// Rcode of a reply we produced (header low bits; BADVERS is only ever ours).
fn reply_rcode(reply: &[u8]) -> u16 {
    reply.get(3).map_or(0, |b| u16::from(b & 0x0F))
}

/// Makes `out` a zeroed buffer of `len` bytes to write a reply into.
fn sized(mut out: Vec<u8>, len: usize) -> Vec<u8> {
    out.clear();
    out.resize(len, 0);
    out
}

impl<B: Backend> Shard<B> {
    fn max_udp(&self) -> usize {
        (self.shared.config.server.max_udp_size as usize).min(BUF_CAPACITY)
    }

    /// Reads the query and answers everything that needs no upstream.
    pub(crate) fn first_pass(
        self: &Rc<Self>,
        packet: &[u8],
        transport: Transport,
        out: Vec<u8>,
        start: Instant,
    ) -> First {
        let q = match QueryView::parse(packet) {
            Ok(q) => q,
            Err(reject) => return self.reject(packet, reject, transport, out),
        };
        if let Some((rcode, ede)) = refusal(&q) {
            let reply = error_reply(&q, rcode, ede);
            self.stats.answered(transport, rcode.code());
            self.pool.put(out);
            return First::Reply(reply);
        }
        let target = target_of(&q, transport, self.max_udp());
        if q.qtype == rtype::ANY {
            // RFC 8482: a minimal local answer, never forwarded nor cached.
            let reply = any_reply(&q, target.max_size);
            self.stats.answered(transport, rcode::NOERROR);
            self.pool.put(out);
            return First::Reply(reply);
        }
        // The cache sizes `out` under its lock to what this reply can need (the
        // stored answer plus headroom, at most the client's limit): no 64 KiB to
        // clear per TCP hit, nor 4 KiB per UDP hit.
        let mut out = out;
        match self
            .shared
            .cache
            .lookup_into(&KeyRef::from_query(&q), start, &target, &mut out)
        {
            Lookup::Hit {
                prefetch, complete, ..
            } => {
                self.stats.cache(CacheResult::Hit);
                self.stats.answered(transport, reply_rcode(&out));
                self.stats.latency_hit.record(start.elapsed().as_secs_f64());
                if prefetch {
                    self.start_prefetch(packet);
                } else if complete {
                    self.start_completion(packet);
                }
                First::Reply(out)
            }
            Lookup::Miss => First::Miss(out),
        }
    }

    fn reject(&self, packet: &[u8], reject: Reject, transport: Transport, out: Vec<u8>) -> First {
        match reject {
            Reject::Drop(Discard::Short) => {
                self.stats.dropped(DropReason::Short);
                First::Drop(out)
            }
            Reject::Drop(Discard::Response) => {
                self.stats.dropped(DropReason::Response);
                First::Drop(out)
            }
            _ => match reject_reply(packet, reject) {
                Some(reply) => {
                    self.stats.answered(transport, reply_rcode_ext(reject));
                    self.pool.put(out);
                    First::Reply(reply)
                }
                None => First::Drop(out),
            },
        }
    }

    /// Resolves a miss: join or lead the flight, answer from its result. None means
    /// send nothing (dropped and counted).
    ///
    /// A flight belongs to no client: whatever happens to the client, the flight
    /// runs to its end, its waiters on every shard get the answer, and it is
    /// cached. UDP, TCP and DoT queries run in tasks nothing cancels, so their
    /// flights run inline; a DoH request, whose future a reset stream drops,
    /// starts its flight in a task of its own (holding a clone of `admitted`)
    /// and waits for it like any waiter.
    pub(crate) async fn resolve(
        self: &Rc<Self>,
        packet: &[u8],
        transport: Transport,
        start: Instant,
        admitted: &Admitted<B>,
    ) -> Option<Vec<u8>> {
        let Ok(q) = QueryView::parse(packet) else {
            return None;
        };
        let (reply, result) = self
            .resolve_view(packet, &q, transport, start, admitted)
            .await?;
        self.stats.cache(result);
        self.stats.answered(transport, reply_rcode(&reply));
        self.stats
            .latency_miss
            .record(start.elapsed().as_secs_f64());
        Some(reply)
    }

    async fn resolve_view(
        self: &Rc<Self>,
        packet: &[u8],
        q: &QueryView<'_>,
        transport: Transport,
        start: Instant,
        admitted: &Admitted<B>,
    ) -> Option<(Vec<u8>, CacheResult)> {
        let target = target_of(q, transport, self.max_udp());
        let key = KeyRef::from_query(q);
        // Every client miss refills the amplification budget a little.
        self.budget.borrow_mut().on_miss();
        let result = match self.shared.flights.join(&key, ABANDONED) {
            Join::Waiter(rx) => {
                ShardStats::bump(&self.stats.tiers.coalesced);
                self.wait_flight(rx).await
            }
            // UDP, TCP and DoT queries are resolved in tasks of their own that
            // nothing cancels (a closed connection only loses the reply): the
            // flight can run in this one, a spawn per miss saved. A DoH request
            // runs inside hyper's service future, which a reset stream drops.
            Join::Leader(leader) if transport != Transport::Doh => {
                self.lead(q, start, Some(leader), true).await
            }
            Join::Leader(leader) => {
                let rx = self.lead_detached(packet, start, leader, admitted.clone());
                self.wait_flight(rx).await
            }
            Join::Full => return self.flight_full(q, &target, transport),
        };
        match result {
            FlightResult::Answer(answer) => {
                let mut out = sized(self.pool.get(), out_len(transport, answer.wire.len()));
                if let Some(len) = write_reply(
                    &mut out,
                    &answer.wire,
                    &answer.layout,
                    &target,
                    TtlPatch::Age(0),
                ) {
                    out.truncate(len);
                    return Some((out, CacheResult::Miss));
                }
                self.pool.put(out);
                let reply = error_reply(q, ErrorRcode::ServFail, Some(Ede::OTHER));
                Some((reply, CacheResult::Miss))
            }
            FlightResult::Failed(ede) => Some(self.failure_reply(q, &target, ede)),
        }
    }

    /// Waits for a flight's result, at most [`Self::flight_wait_bound`].
    async fn wait_flight(&self, rx: oneshot::Receiver<FlightResult>) -> FlightResult {
        match wait(rx, self.flight_wait_bound()).await {
            Waited::Done(result) => result,
            Waited::Abandoned => ABANDONED,
            Waited::TimedOut => {
                self.stats.dropped(DropReason::FlightWait);
                ABANDONED
            }
        }
    }

    /// Starts the flight this query leads in a task of its own, which holds the
    /// query's admission until the flight's first answer (or failure): the client
    /// may go away meanwhile, the flight and its place in `max_client_in_flight`
    /// stay. The result comes on the returned channel.
    fn lead_detached(
        self: &Rc<Self>,
        packet: &[u8],
        start: Instant,
        leader: FlightLeader<FlightResult>,
        admitted: Admitted<B>,
    ) -> oneshot::Receiver<FlightResult> {
        let (tx, rx) = oneshot::channel();
        let shard = Rc::clone(self);
        let query: Box<[u8]> = packet.into();
        tokio::task::spawn_local(async move {
            let _admitted = admitted;
            // It parsed before it got here; a failure would only drop the leader,
            // which ends the flight for its waiters.
            if let Ok(q) = QueryView::parse(&query) {
                let result = shard.lead(&q, start, Some(leader), true).await;
                let _ = tx.send(result);
            }
        });
        rx
    }

    /// How long a query waits on a flight before it gives up on it: the longest
    /// a flight can take to its first answer or failure (the whole collection
    /// window of the slowest route, then one more upstream timeout), so only a
    /// flight that overran its own plan is left. The query then gets what a
    /// failed flight gives (stale, else SERVFAIL), counted as
    /// `reason="flight_wait"`.
    fn flight_wait_bound(&self) -> Duration {
        let config = &self.upstreams.borrow().config;
        let collect = config
            .zones
            .iter()
            .filter_map(|z| z.tiers.as_ref())
            .map(|t| t.total_collect_timeout)
            .fold(config.tiers.total_collect_timeout, Duration::max);
        collect.saturating_add(config.limits.upstream_timeout)
    }

    /// The flight for this key already has `flight_max_waiters` waiters: this query
    /// starts no flight of its own (a herd of them would hit the upstreams at once).
    /// A stale answer if there is one; else, over UDP, no answer (counted,
    /// `reason="flight_full"`: the client's retry finds the answer cached), and over
    /// a stream (TCP, DoT, DoH) a SERVFAIL saying the resolver is overloaded.
    fn flight_full(
        &self,
        q: &QueryView<'_>,
        target: &ReplyTarget<'_>,
        transport: Transport,
    ) -> Option<(Vec<u8>, CacheResult)> {
        ShardStats::bump(&self.stats.tiers.uncoalesced);
        if let Some(stale) = self.stale_reply(q, target) {
            return Some((stale, CacheResult::Stale));
        }
        self.stats.dropped(DropReason::FlightFull);
        match transport {
            Transport::Udp => None,
            Transport::Tcp | Transport::Dot | Transport::Doh => Some((
                error_reply(q, ErrorRcode::ServFail, Some(Ede::LOCAL_OVERLOAD)),
                CacheResult::Miss,
            )),
        }
    }

    /// A stale answer for `q`, if the cache holds one it may serve (RFC 8767).
    fn stale_reply(&self, q: &QueryView<'_>, target: &ReplyTarget<'_>) -> Option<Vec<u8>> {
        let mut out = self.pool.get();
        match self.shared.cache.lookup_stale_into(
            &KeyRef::from_query(q),
            Instant::now(),
            target,
            &mut out,
        ) {
            Some(_) => Some(out),
            None => {
                self.pool.put(out);
                None
            }
        }
    }

    /// Nothing good from any upstream: a stale answer if allowed, else SERVFAIL with
    /// an Extended DNS Error.
    fn failure_reply(
        &self,
        q: &QueryView<'_>,
        target: &ReplyTarget<'_>,
        ede: Ede,
    ) -> (Vec<u8>, CacheResult) {
        if let Some(stale) = self.stale_reply(q, target) {
            return (stale, CacheResult::Stale);
        }
        (
            error_reply(q, ErrorRcode::ServFail, Some(ede)),
            CacheResult::Miss,
        )
    }

    /// SERVFAIL (EDE "resolver overloaded") for a TCP miss past
    /// `max_client_in_flight`: a TCP client would otherwise wait out its timeout.
    pub(crate) fn overload_reply(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let q = QueryView::parse(packet).ok()?;
        self.stats.answered(transport, ErrorRcode::ServFail.code());
        Some(error_reply(
            &q,
            ErrorRcode::ServFail,
            Some(Ede::LOCAL_OVERLOAD),
        ))
    }

    /// Runs a flight until its first answer: caches it, ends the flight for its
    /// waiters, and leaves the background completion running on its own. A failure
    /// is held in the cache only for client flights (`hold_failure`): a failed
    /// prefetch must not replace an answer that is still fresh.
    async fn lead(
        self: &Rc<Self>,
        q: &QueryView<'_>,
        start: Instant,
        leader: Option<FlightLeader<FlightResult>>,
        hold_failure: bool,
    ) -> FlightResult {
        let key = KeyRef::from_query(q);
        // A flight nobody waits for (a prefetch) is background work from the start.
        let mut run = FlightRun::start(Rc::clone(self), q, key.to_key(), start, !hold_failure);
        let result = run.until_first().await;
        match &result {
            FlightResult::Answer(answer) => {
                run.store_first(answer);
            }
            // Hold the failure briefly (RFC 9520) so a dead upstream set is not
            // hammered; the cache keeps a stale-servable answer over it. Our own
            // overload says nothing about the name: not held.
            FlightResult::Failed(ede) if hold_failure && *ede != Ede::LOCAL_OVERLOAD => {
                let servfail = error_reply(q, ErrorRcode::ServFail, Some(*ede));
                self.shared
                    .cache
                    .insert(&key, &servfail, Instant::now(), run.version());
            }
            FlightResult::Failed(_) => {}
        }
        let waiters = leader.map_or(0, |leader| leader.finish(result.clone()));
        // A name with waiters, or a popular one being refreshed, will be asked
        // again: its completion ranks higher in the budget.
        run.set_asked_again(waiters > 0 || !hold_failure);
        // Collecting after the first answer is background work, bounded per shard;
        // past the bound the flight keeps its first answer and stops.
        let slot = self.background_slot();
        if slot.is_none() {
            run.stop_collecting();
        }
        if run.settled() {
            run.conclude();
        } else {
            tokio::task::spawn_local(run.complete(slot));
        }
        result
    }

    /// Refreshes a popular entry near expiry in the background, through the same
    /// flight table and tiers; nobody waits for it. Skipped when a flight for the key
    /// is already running.
    fn start_prefetch(self: &Rc<Self>, packet: &[u8]) {
        let Some(slot) = self.background_slot() else {
            return;
        };
        let shard = Rc::clone(self);
        let packet = packet.to_vec();
        tokio::task::spawn_local(async move {
            let _slot = slot;
            let Ok(q) = QueryView::parse(&packet) else {
                return;
            };
            let joined = shard
                .shared
                .flights
                .join(&KeyRef::from_query(&q), ABANDONED);
            if let Join::Leader(leader) = joined {
                shard.stats.cache(CacheResult::Prefetch);
                shard.lead(&q, Instant::now(), Some(leader), false).await;
            }
        });
    }
}

impl<B: Backend> Shard<B> {
    /// Completes a cached answer that lacks some upstreams' addresses, now that
    /// its name is asked again while fresh (the demand the amplification budget
    /// waits for): the upstreams not heard are asked at once, in the background,
    /// and what they give is merged into the entry. Skipped when background work
    /// is at its bound.
    fn start_completion(self: &Rc<Self>, packet: &[u8]) {
        let Some(slot) = self.background_slot() else {
            return;
        };
        let Ok(q) = QueryView::parse(packet) else {
            return;
        };
        let key = KeyRef::from_query(&q);
        let now = Instant::now();
        let Some(base) = self.shared.cache.completion_base(&key, now) else {
            return;
        };
        let Some(run) = FlightRun::start_completion(Rc::clone(self), &q, key.to_key(), now, base)
        else {
            return;
        };
        ShardStats::bump(&self.stats.tiers.demand_completions);
        tokio::task::spawn_local(run.complete(Some(slot)));
    }
}

fn out_len(transport: Transport, answer_len: usize) -> usize {
    match transport {
        Transport::Udp => BUF_CAPACITY,
        // Room for an OPT record the client needs and the answer lacks.
        Transport::Tcp | Transport::Dot | Transport::Doh => {
            (answer_len + REPLY_HEADROOM).max(PLAIN_UDP_MAX)
        }
    }
}

fn reply_rcode_ext(reject: Reject) -> u16 {
    match reject {
        Reject::FormErr => rcode::FORMERR,
        Reject::NotImp => rcode::NOTIMP,
        Reject::BadVers => rcode::BADVERS,
        Reject::Drop(_) => rcode::NOERROR,
    }
}

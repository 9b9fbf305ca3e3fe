//! Upstream health: RTT estimates, circuit breakers, and the tier order they give.
//!
//! This module owns, per upstream: a smoothed RTT with its variance and a ring of
//! recent samples (module `rtt`), a recent-failure rate, and a circuit breaker
//! (module `circuit`). From these [`HealthTracker::order`] ranks the candidates of a
//! flight, as the tier algorithm's step 1 asks (`docs/ARCHITECTURE.md`, "The tier engine"):
//!
//! 1. circuit state: closed and degraded first, then half-open; open circuits are
//!    skipped, except that one probe per backoff interval is granted (the circuit
//!    becomes half-open). If that leaves nobody, every open candidate is returned
//!    anyway (last resort: an attempt beats a certain SERVFAIL);
//! 2. score, lower is better: SRTT + `failure_penalty` x recent failure rate, where
//!    the failure rate is an EWMA (gain `ewma_alpha`) of 1 per failure and 0 per
//!    success. An upstream without RTT samples of this shard's own takes the SRTT
//!    another shard published ([`CircuitBoard`]), and without that scores SRTT = 0:
//!    optimistic, so a new upstream gets tried (as hickory's `DecayingSrtt` starts
//!    tiny);
//! 3. configured priority (lower first), then index: deterministic ties.
//!
//! Invariants: nothing here reads a clock or does I/O (time is passed in); methods
//! never panic, an out-of-range upstream index is ignored; `order` allocates nothing
//! for up to 8 candidates. One tracker per shard thread, mutated with `&mut self`:
//! no shared write per packet.
//!
//! Defaults ([`HealthParams`], config section `[health]`): `ewma_alpha` 0.2,
//! `degraded_after` 3, `open_after` 5, `backoff_initial` 10s doubling up to
//! `backoff_max` 5min, `close_after` 2, `failure_penalty` 500ms (one failure among
//! successes adds 100ms to the score, decaying by 0.8 with each success).

mod board;
mod circuit;
mod fail;
mod idx;
mod rtt;
pub mod state_file;
pub mod view;

pub use board::{BoardSlot, CircuitBoard};
pub use fail::FailKind;
pub use rtt::RTT_SAMPLES;

use circuit::Circuit;
use rtt::{quantile_micros, RttEstimator};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::time::{Duration, Instant};

#[cfg(test)]
pub(crate) use idx::{upstream, upstreams};
pub use idx::{PerUpstream, UpstreamIdx};

/// A shard publishes an upstream's smoothed RTT to the board at most this often.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// What the other shards know of an upstream (from the [`CircuitBoard`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Elsewhere {
    /// Its circuit is open on another shard.
    pub dead: bool,
    /// The smoothed RTT another shard published, in microseconds.
    pub srtt_micros: Option<f64>,
}

/// Longest timer set from a configured duration: absurd values are clamped to this,
/// so that `Instant` arithmetic cannot overflow.
pub(crate) const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

/// `now + d`, with `d` clamped to [`MAX_TIMER`].
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(MAX_TIMER)).unwrap_or(now)
}

/// How one candidate ranks (see the module docs), lower first.
struct RankKey {
    dead: bool,
    group: u8,
    score: f64,
    priority: i32,
}

/// The `[health]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthParams {
    /// Gain of the RTT and failure-rate EWMAs. Default 0.2.
    pub ewma_alpha: f64,
    /// Consecutive failures after which a circuit is degraded. Default 3.
    pub degraded_after: u32,
    /// Consecutive failures after which a circuit opens. Default 5.
    pub open_after: u32,
    /// First backoff of an open circuit before a probe. Default 10s.
    #[serde(with = "crate::duration")]
    pub backoff_initial: Duration,
    /// Largest backoff; it doubles on each failed probe up to this. Default 5min.
    #[serde(with = "crate::duration")]
    pub backoff_max: Duration,
    /// Successes in half-open that close the circuit. Default 2.
    pub close_after: u32,
    /// Score added by a failure rate of 1 (all recent queries failed). Default 500ms.
    #[serde(with = "crate::duration")]
    pub failure_penalty: Duration,
}

impl Default for HealthParams {
    fn default() -> Self {
        Self {
            ewma_alpha: 0.2,
            degraded_after: 3,
            open_after: 5,
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            close_after: 2,
            failure_penalty: Duration::from_millis(500),
        }
    }
}

impl HealthParams {
    /// Checks the section; the error names the bad key.
    pub fn validate(&self) -> Result<(), HealthParamsError> {
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return Err(HealthParamsError::EwmaAlpha(self.ewma_alpha));
        }
        if self.degraded_after == 0 {
            return Err(HealthParamsError::DegradedAfter);
        }
        if self.open_after < self.degraded_after {
            return Err(HealthParamsError::OpenAfter);
        }
        if self.close_after == 0 {
            return Err(HealthParamsError::CloseAfter);
        }
        if self.backoff_initial.is_zero() {
            return Err(HealthParamsError::BackoffInitial);
        }
        if self.backoff_max < self.backoff_initial {
            return Err(HealthParamsError::BackoffMax);
        }
        Ok(())
    }
}

/// A [`HealthParams`] value out of range; the message names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HealthParamsError {
    /// `health.ewma_alpha` outside (0, 1].
    #[error("health.ewma_alpha must be in (0, 1], got {0}")]
    EwmaAlpha(f64),
    /// `health.degraded_after` is zero.
    #[error("health.degraded_after must be >= 1")]
    DegradedAfter,
    /// `health.open_after` below `health.degraded_after`.
    #[error("health.open_after must be >= health.degraded_after")]
    OpenAfter,
    /// `health.close_after` is zero.
    #[error("health.close_after must be >= 1")]
    CloseAfter,
    /// `health.backoff_initial` is zero.
    #[error("health.backoff_initial must be > 0")]
    BackoffInitial,
    /// `health.backoff_max` below `health.backoff_initial`.
    #[error("health.backoff_max must be >= health.backoff_initial")]
    BackoffMax,
}

/// Circuit breaker state of one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Healthy.
    Closed,
    /// Some consecutive failures; still used, ranked by its worse score.
    Degraded,
    /// Too many consecutive failures: skipped until the backoff passes.
    Open,
    /// Probing after a backoff: one query at a time, ranked after closed ones.
    HalfOpen,
}

impl CircuitState {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Degraded => "degraded",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// Numeric value for a gauge: 0 closed, 1 degraded, 2 half-open, 3 open.
    pub fn as_gauge(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Degraded => 1,
            Self::HalfOpen => 2,
            Self::Open => 3,
        }
    }
}

#[derive(Debug, Clone)]
struct Upstream {
    priority: i32,
    rtt: RttEstimator,
    /// EWMA of 1 per failure, 0 per success.
    fail_rate: f64,
    circuit: Circuit,
    /// When this shard last published the SRTT to the board.
    published_at: Option<Instant>,
    /// The last failure's kind and time (for the admin endpoint's view).
    last_failure: Option<(FailKind, Instant)>,
}

impl Upstream {
    fn new(params: &HealthParams, priority: i32) -> Self {
        Self {
            priority,
            rtt: RttEstimator::default(),
            fail_rate: 0.0,
            circuit: Circuit::new(params),
            published_at: None,
            last_failure: None,
        }
    }
}

/// Health of every configured upstream, as seen by one shard.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    params: HealthParams,
    ups: PerUpstream<Upstream>,
}

impl HealthTracker {
    /// A tracker for `priorities.len()` upstreams (lower priority = preferred), all
    /// healthy and without samples.
    pub fn new(params: HealthParams, priorities: &[i32]) -> Self {
        let ups = priorities
            .iter()
            .map(|&p| Upstream::new(&params, p))
            .collect();
        Self { params, ups }
    }

    /// Number of upstreams tracked.
    pub fn len(&self) -> usize {
        self.ups.len()
    }

    /// Whether no upstream is tracked.
    pub fn is_empty(&self) -> bool {
        self.ups.is_empty()
    }

    /// The parameters in force.
    pub fn params(&self) -> &HealthParams {
        &self.params
    }

    /// Records a good answer from `up` after `rtt`.
    pub fn record_success(&mut self, up: UpstreamIdx, rtt: Duration) {
        let alpha = self.params.ewma_alpha;
        let Some(u) = self.ups.get_mut(up) else {
            return;
        };
        u.rtt.record(rtt, alpha);
        u.fail_rate *= 1.0 - alpha;
        u.circuit.on_success(&self.params);
    }

    /// A query a flight stopped waiting for after `waited` (it had its answer, or
    /// its time was up). Nothing is learned if the upstream was still within its
    /// retransmission timeout. Past it, `waited` is a lower bound on this round trip:
    /// it goes into the RTT estimate and counts as a soft failure in the score, so
    /// an upstream that black-holes queries loses its place even when no query of
    /// it ever times out (`complete = false`, `sequential`, `random`). The circuit is
    /// not touched: only real failures trip it.
    pub fn record_abandoned(&mut self, up: UpstreamIdx, waited: Duration) {
        let alpha = self.params.ewma_alpha;
        let Some(u) = self.ups.get_mut(up) else {
            return;
        };
        if u.rtt.rto().is_some_and(|rto| waited < rto) {
            return;
        }
        u.rtt.record(waited, alpha);
        u.fail_rate = u.fail_rate * (1.0 - alpha) + alpha;
    }

    /// Records a failed query to `up`.
    pub fn record_failure(&mut self, up: UpstreamIdx, kind: FailKind, now: Instant) {
        let alpha = self.params.ewma_alpha;
        let Some(u) = self.ups.get_mut(up) else {
            return;
        };
        u.fail_rate = u.fail_rate * (1.0 - alpha) + alpha;
        u.circuit.on_failure(kind, &self.params, now);
        u.last_failure = Some((kind, now));
    }

    /// Writes into `out` (cleared first) the usable `candidates` in tier order (see
    /// the module docs). Open circuits whose backoff has passed are granted their
    /// probe here, so call it once per flight with the order actually used.
    /// Out-of-range and repeated candidates are dropped.
    pub fn order(
        &mut self,
        candidates: &[UpstreamIdx],
        now: Instant,
        out: &mut SmallVec<[UpstreamIdx; 8]>,
    ) {
        self.order_shared(candidates, now, out, |_| Elsewhere::default());
    }

    /// [`Self::order`], with what the other shards know ([`CircuitBoard`]): an
    /// upstream `dead` elsewhere (its circuit open on another shard) goes after
    /// every other, whatever its local state says; one this shard has no RTT
    /// sample of is scored with the SRTT another shard published.
    pub fn order_shared(
        &mut self,
        candidates: &[UpstreamIdx],
        now: Instant,
        out: &mut SmallVec<[UpstreamIdx; 8]>,
        elsewhere: impl Fn(UpstreamIdx) -> Elsewhere,
    ) {
        out.clear();
        let mut any_valid = false;
        for &c in candidates {
            if out.contains(&c) {
                continue;
            }
            let Some(u) = self.ups.get_mut(c) else {
                continue;
            };
            any_valid = true;
            if u.circuit.admit(now) {
                out.push(c);
            }
        }
        if out.is_empty() && any_valid {
            // Last resort: every candidate is open. Try them rather than fail.
            for &c in candidates {
                if c.get() < self.ups.len() && !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        // Each candidate's key once (the board is read once per candidate).
        let mut keyed: SmallVec<[(RankKey, UpstreamIdx); 8]> = out
            .iter()
            .filter_map(|&i| Some((self.rank_key(i, elsewhere(i))?, i)))
            .collect();
        keyed.sort_unstable_by(|(ka, a), (kb, b)| {
            ka.dead
                .cmp(&kb.dead)
                .then(ka.group.cmp(&kb.group))
                .then(ka.score.total_cmp(&kb.score))
                .then(ka.priority.cmp(&kb.priority))
                .then(a.cmp(b))
        });
        out.clear();
        out.extend(keyed.into_iter().map(|(_, i)| i));
    }

    fn rank_key(&self, i: UpstreamIdx, elsewhere: Elsewhere) -> Option<RankKey> {
        let u = self.ups.get(i)?;
        let group = match u.circuit.state() {
            CircuitState::Closed | CircuitState::Degraded => 0u8,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        };
        Some(RankKey {
            dead: elsewhere.dead,
            group,
            score: self.score_micros(u, elsewhere.srtt_micros),
            priority: u.priority,
        })
    }

    /// SRTT (this shard's, else `shared`, else 0) plus the failure penalty.
    fn score_micros(&self, u: &Upstream, shared: Option<f64>) -> f64 {
        let penalty = self.params.failure_penalty.as_micros() as f64;
        u.rtt.srtt_micros().or(shared).unwrap_or(0.0) + penalty * u.fail_rate
    }

    /// The SRTT of `up` to publish to the board at `now`, if this shard has one and
    /// has not published it within [`PUBLISH_EVERY`].
    pub fn srtt_to_publish(&mut self, up: UpstreamIdx, now: Instant) -> Option<f64> {
        let u = self.ups.get_mut(up)?;
        let srtt = u.rtt.srtt_micros()?;
        if u.published_at
            .is_some_and(|at| now.saturating_duration_since(at) < PUBLISH_EVERY)
        {
            return None;
        }
        u.published_at = Some(now);
        Some(srtt)
    }

    /// The health score of `up` (SRTT + failure penalty; lower is better).
    pub fn score(&self, up: UpstreamIdx) -> Option<Duration> {
        let u = self.ups.get(up)?;
        let us = self.score_micros(u, None).clamp(0.0, 3.6e9);
        Some(Duration::from_micros(us.round() as u64))
    }

    /// Circuit state of `up` (`Closed` for an unknown index).
    pub fn state(&self, up: UpstreamIdx) -> CircuitState {
        self.ups
            .get(up)
            .map_or(CircuitState::Closed, |u| u.circuit.state())
    }

    /// Consecutive circuit-tripping failures of `up`.
    pub fn consecutive_failures(&self, up: UpstreamIdx) -> u32 {
        self.ups
            .get(up)
            .map_or(0, |u| u.circuit.consecutive_failures())
    }

    /// Current backoff interval of `up`'s circuit.
    pub fn backoff(&self, up: UpstreamIdx) -> Option<Duration> {
        self.ups.get(up).map(|u| u.circuit.backoff())
    }

    /// Smoothed RTT of `up`, if it has answered.
    pub fn ewma_rtt(&self, up: UpstreamIdx) -> Option<Duration> {
        self.ups.get(up)?.rtt.srtt()
    }

    /// Retransmission-style timeout of `up`: SRTT + 4 RTTVAR (RFC 6298), unclamped.
    pub fn rto(&self, up: UpstreamIdx) -> Option<Duration> {
        self.ups.get(up)?.rtt.rto()
    }

    /// Nearest-rank `q`-quantile of the recent RTT samples (the last
    /// [`RTT_SAMPLES`] per upstream) of `ups` together; `None` without samples.
    pub fn rtt_quantile(&self, ups: &[UpstreamIdx], q: f64) -> Option<Duration> {
        let mut all: SmallVec<[u32; 2 * RTT_SAMPLES]> = SmallVec::new();
        for (i, u) in self.ups.enumerate() {
            if ups.contains(&i) {
                all.extend_from_slice(u.rtt.samples());
            }
        }
        quantile_micros(&mut all, q).map(|us| Duration::from_micros(u64::from(us)))
    }

    /// A tracker for a reloaded config with `priorities.len()` upstreams and new
    /// `params`, keeping the health of the upstreams that stay: `map` lists
    /// `(old index, new index)` pairs; out-of-range pairs are ignored.
    pub fn carry_over(
        &self,
        params: HealthParams,
        priorities: &[i32],
        map: &[(UpstreamIdx, UpstreamIdx)],
    ) -> Self {
        let mut next = Self::new(params, priorities);
        for &(old, new) in map {
            if let (Some(from), Some(to)) = (self.ups.get(old), next.ups.get_mut(new)) {
                let priority = to.priority;
                *to = from.clone();
                to.priority = priority;
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{upstream, upstreams};
    use std::net::SocketAddr;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn tracker(n: usize) -> HealthTracker {
        HealthTracker::new(HealthParams::default(), &vec![0; n])
    }

    fn order(h: &mut HealthTracker, cands: &[UpstreamIdx], now: Instant) -> Vec<UpstreamIdx> {
        let mut out = SmallVec::new();
        h.order(cands, now, &mut out);
        out.to_vec()
    }

    fn fail(h: &mut HealthTracker, up: UpstreamIdx, times: usize, now: Instant) {
        for _ in 0..times {
            h.record_failure(up, FailKind::Timeout, now);
        }
    }

    #[test]
    fn params_defaults_toml_and_validation() {
        let p = HealthParams::default();
        assert_eq!(p.validate(), Ok(()));
        assert_eq!((p.degraded_after, p.open_after, p.close_after), (3, 5, 2));
        let parsed: HealthParams =
            toml::from_str("backoff_initial = \"1s\"\nopen_after = 7").unwrap();
        assert_eq!(parsed.backoff_initial, SEC);
        assert_eq!(parsed.open_after, 7);
        assert_eq!(parsed.ewma_alpha, 0.2);
        let back: HealthParams = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(toml::from_str::<HealthParams>("alpha = 0.3").is_err());
        let bad = HealthParams {
            ewma_alpha: 0.0,
            ..p.clone()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("health.ewma_alpha"));
        let bad = HealthParams {
            open_after: 2,
            ..p.clone()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("health.open_after"));
        let bad = HealthParams {
            backoff_max: MS,
            ..p
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("health.backoff_max"));
    }

    #[test]
    fn circuit_goes_degraded_then_open_and_a_success_resets() {
        let t0 = Instant::now();
        let mut h = tracker(2);
        fail(&mut h, upstream(0), 2, t0);
        assert_eq!(h.state(upstream(0)), CircuitState::Closed);
        fail(&mut h, upstream(0), 1, t0);
        assert_eq!(h.state(upstream(0)), CircuitState::Degraded);
        h.record_success(upstream(0), 10 * MS);
        assert_eq!(h.state(upstream(0)), CircuitState::Closed);
        assert_eq!(h.consecutive_failures(upstream(0)), 0);
        fail(&mut h, upstream(0), 4, t0);
        assert_eq!(h.state(upstream(0)), CircuitState::Degraded);
        fail(&mut h, upstream(0), 1, t0);
        assert_eq!(h.state(upstream(0)), CircuitState::Open);
        assert_eq!(CircuitState::Open.as_str(), "open");
    }

    #[test]
    fn an_upstream_this_shard_never_heard_is_ranked_by_the_rtt_another_published() {
        let t0 = Instant::now();
        let mut h = tracker(3);
        // This shard knows only upstream 2: 20 ms.
        for _ in 0..5 {
            h.record_success(upstream(2), 20 * MS);
        }
        let board = CircuitBoard::new();
        let slots: Vec<BoardSlot> = (1..=3u16)
            .map(|p| board.slot(SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        let order_now = |h: &mut HealthTracker| {
            let mut out = SmallVec::new();
            h.order_shared(&upstreams([0, 1, 2]), t0, &mut out, |up| {
                slots[up.get()].elsewhere(t0)
            });
            out.to_vec()
        };
        assert_eq!(
            order_now(&mut h),
            [0, 1, 2],
            "unknown ones first (optimistic)"
        );
        // Another shard found upstream 0 slow (300 ms) and upstream 1 fast (5 ms).
        slots[0].publish_srtt(300_000.0);
        slots[1].publish_srtt(5_000.0);
        assert_eq!(
            order_now(&mut h),
            [1, 2, 0],
            "what the others learned counts"
        );
        // Once this shard has its own samples, they rule.
        for _ in 0..5 {
            h.record_success(upstream(0), 2 * MS);
        }
        assert_eq!(order_now(&mut h), [0, 1, 2]);
    }

    #[test]
    fn a_shard_publishes_an_rtt_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut h = tracker(2);
        assert_eq!(
            h.srtt_to_publish(upstream(0), t0),
            None,
            "nothing to publish yet"
        );
        h.record_success(upstream(0), 10 * MS);
        let first = h
            .srtt_to_publish(upstream(0), t0)
            .expect("the first sample goes out");
        assert!((first - 10_000.0).abs() < 1.0);
        h.record_success(upstream(0), 30 * MS);
        assert_eq!(h.srtt_to_publish(upstream(0), t0 + PUBLISH_EVERY / 2), None);
        assert!(h.srtt_to_publish(upstream(0), t0 + PUBLISH_EVERY).is_some());
        assert_eq!(
            h.srtt_to_publish(upstream(9), t0),
            None,
            "an unknown index is ignored"
        );
    }

    #[test]
    fn an_upstream_dead_on_another_shard_goes_last_here() {
        let t0 = Instant::now();
        let mut h = tracker(3);
        for _ in 0..5 {
            h.record_success(upstream(0), 5 * MS);
            h.record_success(upstream(1), 10 * MS);
            h.record_success(upstream(2), 20 * MS);
        }
        let board = CircuitBoard::new();
        let slots: Vec<BoardSlot> = (1..=3u16)
            .map(|p| board.slot(SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        let order_now = |h: &mut HealthTracker, now| {
            let mut out = SmallVec::new();
            h.order_shared(&upstreams([0, 1, 2]), now, &mut out, |up| {
                slots[up.get()].elsewhere(now)
            });
            out.to_vec()
        };
        assert_eq!(order_now(&mut h, t0), [0, 1, 2]);
        // Another shard opened upstream 0's circuit for 10 s.
        slots[0].mark_open(t0 + 10 * SEC);
        assert_eq!(order_now(&mut h, t0), [1, 2, 0], "known dead: last");
        assert_eq!(
            order_now(&mut h, t0 + 11 * SEC),
            [0, 1, 2],
            "the mark expires"
        );
        slots[0].mark_open(t0 + 10 * SEC);
        slots[0].mark_closed();
        assert_eq!(order_now(&mut h, t0), [0, 1, 2], "closed again");
    }

    #[test]
    fn a_black_holed_upstream_loses_its_place_without_a_single_timeout() {
        let t0 = Instant::now();
        let mut h = tracker(2);
        // Both answer in 10 ms; then upstream 0 goes silent, and each flight stops
        // waiting for it when upstream 1 answers, 20 ms in.
        for _ in 0..10 {
            h.record_success(upstream(0), 10 * MS);
            h.record_success(upstream(1), 12 * MS);
        }
        assert_eq!(order(&mut h, &upstreams([0, 1]), t0), [0, 1]);
        let before = h.score(upstream(0)).unwrap();
        for _ in 0..20 {
            h.record_abandoned(upstream(0), 20 * MS);
            h.record_success(upstream(1), 12 * MS);
        }
        assert!(h.score(upstream(0)).unwrap() > before);
        assert_eq!(
            order(&mut h, &upstreams([0, 1]), t0),
            [1, 0],
            "the silent one goes last"
        );
        assert_eq!(
            h.state(upstream(0)),
            CircuitState::Closed,
            "no real failure: circuit closed"
        );
        // Stopping to wait within the retransmission timeout teaches nothing.
        let mut h = tracker(1);
        for _ in 0..10 {
            h.record_success(upstream(0), 10 * MS);
        }
        let score = h.score(upstream(0));
        h.record_abandoned(upstream(0), MS);
        assert_eq!(h.score(upstream(0)), score);
    }

    #[test]
    fn servfail_does_not_trip_the_circuit_but_worsens_the_score() {
        let t0 = Instant::now();
        let mut h = tracker(2);
        for _ in 0..10 {
            h.record_failure(upstream(0), FailKind::ServFail, t0);
        }
        assert_eq!(h.state(upstream(0)), CircuitState::Closed);
        assert!(h.score(upstream(0)) > h.score(upstream(1)));
        assert_eq!(order(&mut h, &upstreams([0, 1]), t0), vec![1, 0]);
    }

    #[test]
    fn open_is_skipped_until_backoff_then_one_probe() {
        let t0 = Instant::now();
        let mut h = tracker(3);
        fail(&mut h, upstream(1), 5, t0);
        assert_eq!(
            order(&mut h, &upstreams([0, 1, 2]), t0 + 9 * SEC),
            vec![0, 2]
        );
        // Backoff passed: exactly one probe is granted, ranked after closed ones.
        assert_eq!(
            order(&mut h, &upstreams([1, 0, 2]), t0 + 10 * SEC),
            vec![0, 2, 1]
        );
        assert_eq!(h.state(upstream(1)), CircuitState::HalfOpen);
        assert_eq!(
            order(&mut h, &upstreams([0, 1, 2]), t0 + 10 * SEC),
            vec![0, 2]
        );
        assert_eq!(
            order(&mut h, &upstreams([0, 1, 2]), t0 + 15 * SEC),
            vec![0, 2]
        );
        // The probe succeeded: the slot frees, one more query, then closed.
        h.record_success(upstream(1), 5 * MS);
        assert_eq!(h.state(upstream(1)), CircuitState::HalfOpen);
        assert_eq!(
            order(&mut h, &upstreams([0, 1, 2]), t0 + 15 * SEC),
            vec![0, 2, 1]
        );
        assert_eq!(
            order(&mut h, &upstreams([0, 1, 2]), t0 + 15 * SEC),
            vec![0, 2]
        );
        h.record_success(upstream(1), 5 * MS);
        assert_eq!(h.state(upstream(1)), CircuitState::Closed);
        assert_eq!(h.backoff(upstream(1)), Some(10 * SEC));
        // Closed again: back in the first group, ranked by score (unknown RTT = 0).
        assert_eq!(
            order(&mut h, &upstreams([1, 0, 2]), t0 + 16 * SEC),
            vec![0, 2, 1]
        );
    }

    #[test]
    fn failed_probe_doubles_backoff_up_to_max() {
        let t0 = Instant::now();
        let params = HealthParams {
            backoff_max: 35 * SEC,
            ..HealthParams::default()
        };
        let mut h = HealthTracker::new(params, &[0, 0]);
        fail(&mut h, upstream(0), 5, t0);
        let mut now = t0;
        for expected in [20, 35, 35] {
            now += h.backoff(upstream(0)).unwrap();
            assert!(
                order(&mut h, &upstreams([0, 1]), now).contains(&upstream(0)),
                "probe due"
            );
            fail(&mut h, upstream(0), 1, now);
            assert_eq!(h.state(upstream(0)), CircuitState::Open);
            assert_eq!(h.backoff(upstream(0)), Some(expected * SEC));
            let before = now + h.backoff(upstream(0)).unwrap() - MS;
            assert_eq!(order(&mut h, &upstreams([0, 1]), before), vec![1]);
        }
    }

    #[test]
    fn absurd_backoff_does_not_overflow() {
        let t0 = Instant::now();
        let params = HealthParams {
            backoff_initial: Duration::MAX,
            backoff_max: Duration::MAX,
            ..HealthParams::default()
        };
        let mut h = HealthTracker::new(params, &[0, 0]);
        fail(&mut h, upstream(0), 5, t0);
        assert_eq!(order(&mut h, &upstreams([0, 1]), t0 + SEC), vec![1]);
    }

    #[test]
    fn lost_probe_result_frees_the_slot_after_one_backoff() {
        let t0 = Instant::now();
        let mut h = tracker(2);
        fail(&mut h, upstream(0), 5, t0);
        assert_eq!(order(&mut h, &upstreams([0, 1]), t0 + 10 * SEC), vec![1, 0]);
        assert_eq!(order(&mut h, &upstreams([0, 1]), t0 + 19 * SEC), vec![1]);
        assert_eq!(order(&mut h, &upstreams([0, 1]), t0 + 20 * SEC), vec![1, 0]);
        assert_eq!(h.state(upstream(0)), CircuitState::HalfOpen);
    }

    #[test]
    fn all_open_is_a_last_resort_not_an_empty_order() {
        let t0 = Instant::now();
        let mut h = tracker(2);
        fail(&mut h, upstream(0), 5, t0);
        fail(&mut h, upstream(1), 6, t0);
        let got = order(&mut h, &upstreams([0, 1]), t0 + SEC);
        assert_eq!(got.len(), 2);
        assert_eq!(
            h.state(upstream(0)),
            CircuitState::Open,
            "no probe slot taken"
        );
        assert!(order(&mut h, &[], t0).is_empty());
        assert!(order(&mut h, &[upstream(7)], t0).is_empty());
    }

    #[test]
    fn order_by_score_then_priority_then_index() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(HealthParams::default(), &[5, 1, 1, 0, 0]);
        // No samples anywhere: priority, then index.
        assert_eq!(
            order(&mut h, &upstreams([0, 1, 2, 3, 4]), t0),
            vec![3, 4, 1, 2, 0]
        );
        h.record_success(upstream(3), 30 * MS);
        h.record_success(upstream(4), 20 * MS);
        h.record_success(upstream(1), 10 * MS);
        h.record_success(upstream(2), 10 * MS);
        // 0 is unknown: optimistic, first. Then by SRTT; 1 and 2 tie on everything
        // but index.
        assert_eq!(
            order(&mut h, &upstreams([4, 3, 2, 1, 0]), t0),
            vec![0, 1, 2, 4, 3]
        );
        // A failure penalises: 10ms + 0.2 x 500ms = 110ms puts 1 last.
        h.record_failure(upstream(1), FailKind::Timeout, t0);
        assert_eq!(h.score(upstream(1)), Some(110 * MS));
        assert_eq!(
            order(&mut h, &upstreams([0, 1, 2, 3, 4]), t0),
            vec![0, 2, 4, 3, 1]
        );
        // Repeated and unknown candidates are dropped.
        assert_eq!(order(&mut h, &upstreams([2, 2, 99]), t0), vec![2]);
    }

    #[test]
    fn degraded_ranks_with_closed_by_score() {
        let t0 = Instant::now();
        let mut h = tracker(2);
        h.record_success(upstream(0), 10 * MS);
        h.record_success(upstream(1), 900 * MS);
        fail(&mut h, upstream(0), 3, t0);
        assert_eq!(h.state(upstream(0)), CircuitState::Degraded);
        // 10ms x 0.8^0 + 500ms x (1 - 0.8^3) = 10 + 244 = 254ms < 900ms.
        assert_eq!(order(&mut h, &upstreams([1, 0]), t0), vec![0, 1]);
    }

    #[test]
    fn ewma_rtt_math() {
        let mut h = tracker(1);
        assert_eq!(h.ewma_rtt(upstream(0)), None);
        h.record_success(upstream(0), 100 * MS);
        h.record_success(upstream(0), 200 * MS);
        // 0.8 x 100 + 0.2 x 200 = 120
        assert_eq!(h.ewma_rtt(upstream(0)), Some(120 * MS));
        h.record_success(upstream(0), 20 * MS);
        // 0.8 x 120 + 0.2 x 20 = 100
        assert_eq!(h.ewma_rtt(upstream(0)), Some(100 * MS));
        assert_eq!(h.ewma_rtt(upstream(5)), None);
    }

    #[test]
    fn quantile_over_several_upstreams() {
        let mut h = tracker(3);
        for ms in 1..=10 {
            h.record_success(upstream(0), ms * MS);
            h.record_success(upstream(1), (ms + 10) * MS);
            h.record_success(upstream(2), SEC);
        }
        assert_eq!(h.rtt_quantile(&upstreams([0, 1]), 0.5), Some(10 * MS));
        assert_eq!(h.rtt_quantile(&upstreams([0, 1]), 0.95), Some(19 * MS));
        assert_eq!(h.rtt_quantile(&upstreams([0, 1, 2]), 1.0), Some(SEC));
        assert_eq!(h.rtt_quantile(&[], 0.5), None);
        assert_eq!(h.rtt_quantile(&[upstream(42)], 0.5), None);
    }

    #[test]
    fn carry_over_keeps_staying_upstreams() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(HealthParams::default(), &[0, 0, 0]);
        h.record_success(upstream(0), 40 * MS);
        fail(&mut h, upstream(2), 5, t0);
        // Old 2 -> new 0, old 0 -> new 1, a new upstream at 2; old 1 is removed.
        let n = h.carry_over(
            HealthParams::default(),
            &[3, 4, 5],
            &[
                (upstream(2), upstream(0)),
                (upstream(0), upstream(1)),
                (upstream(9), upstream(2)),
            ],
        );
        assert_eq!(n.len(), 3);
        assert_eq!(n.state(upstream(0)), CircuitState::Open);
        assert_eq!(n.ewma_rtt(upstream(1)), Some(40 * MS));
        assert_eq!(n.ewma_rtt(upstream(2)), None);
        assert_eq!(n.state(upstream(2)), CircuitState::Closed);
        // Priorities come from the new config.
        let prios: Vec<i32> = n.ups.iter().map(|u| u.priority).collect();
        assert_eq!(prios, vec![3, 4, 5]);
    }

    #[test]
    fn out_of_range_indices_are_ignored() {
        let t0 = Instant::now();
        let mut h = tracker(1);
        h.record_success(upstream(3), MS);
        h.record_failure(upstream(3), FailKind::Network, t0);
        assert_eq!(h.state(upstream(3)), CircuitState::Closed);
        assert_eq!(h.score(upstream(3)), None);
        assert_eq!(h.rto(upstream(3)), None);
    }
}

//! The amplification budget: how many upstream queries beyond the first of a miss
//! a shard may send, and to whom.
//!
//! By default a miss asks every upstream (the active tier, a hedge when it is late,
//! background completion). At the edge that trade must be bounded, or a flood of
//! never-seen names multiplies into an upstream outage. Two parts, one per reason
//! to send more:
//!
//! - **Latency (the active tier's second query, hedges).** The model is Envoy's
//!   retry budget and gRPC's retry throttling: a token bucket that client misses
//!   refill. Every client miss adds `ratio` tokens; time adds `min_per_second`;
//!   the bucket holds at most `max(min_per_second, 10)`. Hedges that protect a
//!   waiting client (the active tier is late or failed) may empty it; the second
//!   query of the active tier keeps a quarter in reserve for them. Under a
//!   sustained flood, upstream queries per client miss stay at or below
//!   `1 + ratio + min_per_second / misses per second` (1.30 at 10 000 misses a
//!   second per shard with the defaults, 1.26 at 40 000).
//! - **Completion, by demand.** More addresses for the cache pay off per answer,
//!   not per miss: a name asked again while its entry is fresh earns its
//!   completion, once per TTL (the cache flags the entry, see
//!   [`crate::cache`]). A name nobody is known to ask again completes only from
//!   the spare of the bucket above (above three quarters of it: always at low
//!   load, never under a flood); otherwise it is [`Spend::Deferred`] until a hit
//!   shows demand, so the one-off names of a flood cost nothing here. A flight
//!   with waiters, or a prefetch, is asked again by definition and completes at
//!   once. What completion may send is bounded by what the upstreams
//!   can take: `upstream_completion_qps` per upstream for the whole process (this
//!   shard's share of it, a token bucket per upstream), and only to an upstream
//!   whose health shows headroom (circuit closed, no failure since its last
//!   success: the caller checks that).
//!
//! With `enabled = false` nothing is bounded or deferred: every flight sends what
//! its plan says, completing at its first answer (the seed's behaviour). One
//! budget per shard: no shared write per query. Time is passed in, as everywhere
//! in the tier engine.

use crate::health::UpstreamIdx;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Config section `[budget]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetParams {
    /// Off: every flight sends what its plan says.
    pub enabled: bool,
    /// Extra upstream queries allowed per client miss.
    pub ratio: f64,
    /// Extra upstream queries per second and shard allowed whatever the misses.
    pub min_per_second: f64,
    /// Completion queries per second one upstream may receive from this
    /// process (all shards together; each shard takes its share). 0: no
    /// completion at all.
    pub upstream_completion_qps: f64,
}

impl Default for BudgetParams {
    fn default() -> Self {
        Self {
            enabled: true,
            ratio: 0.25,
            min_per_second: 500.0,
            upstream_completion_qps: 500.0,
        }
    }
}

/// A [`BudgetParams`] value out of range; the message names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetParamsError {
    /// `budget.ratio` negative or not a number.
    #[error("budget.ratio must be >= 0, got {0}")]
    Ratio(f64),
    /// `budget.min_per_second` negative or not a number.
    #[error("budget.min_per_second must be >= 0, got {0}")]
    MinPerSecond(f64),
    /// `budget.upstream_completion_qps` negative or not a number.
    #[error("budget.upstream_completion_qps must be >= 0, got {0}")]
    UpstreamCompletionQps(f64),
}

impl BudgetParams {
    /// Checks the values a loader should refuse.
    pub fn validate(&self) -> Result<(), BudgetParamsError> {
        if !(self.ratio >= 0.0 && self.ratio.is_finite()) {
            return Err(BudgetParamsError::Ratio(self.ratio));
        }
        if !(self.min_per_second >= 0.0 && self.min_per_second.is_finite()) {
            return Err(BudgetParamsError::MinPerSecond(self.min_per_second));
        }
        let q = self.upstream_completion_qps;
        if !(q >= 0.0 && q.is_finite()) {
            return Err(BudgetParamsError::UpstreamCompletionQps(q));
        }
        Ok(())
    }
}

/// Why a flight sends a query, as the budget ranks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The first query of the flight: never charged.
    First,
    /// Another query of the first send (the active tier; every upstream for
    /// `parallel`).
    Active,
    /// The active tier is late or failed (or the next attempt of `sequential`):
    /// latency for a waiting client.
    Hedge,
    /// More addresses for the cache after the first good answer.
    Completion,
}

impl Purpose {
    /// Every purpose that is charged, in the order of the metric arrays.
    pub const CHARGED: [Self; 3] = [Self::Active, Self::Hedge, Self::Completion];

    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Active => "active",
            Self::Hedge => "hedge",
            Self::Completion => "completion",
        }
    }
}

/// What the budget says about one completion query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Send it.
    Allowed,
    /// The upstream has no room for it now (its share of `upstream_completion_qps`).
    Refused,
    /// Nobody is known to ask the name again: not now. If it is asked again
    /// while fresh, its entry earns the completion then.
    Deferred,
}

/// One upstream's completion bucket: tokens, and when they were counted.
#[derive(Debug, Clone, Copy)]
struct UpstreamBucket {
    tokens: f64,
    last: Instant,
}

/// One shard's budget.
#[derive(Debug, Clone)]
pub struct Budget {
    params: BudgetParams,
    tokens: f64,
    cap: f64,
    last: Instant,
    /// Shards sharing `upstream_completion_qps`.
    shards: usize,
    /// Per upstream, by index; grown on first use, full.
    upstreams: Vec<UpstreamBucket>,
}

impl Budget {
    /// A full budget at `now`, for one shard of one.
    pub fn new(params: BudgetParams, now: Instant) -> Self {
        let cap = params.min_per_second.max(10.0);
        Self {
            params,
            tokens: cap,
            cap,
            last: now,
            shards: 1,
            upstreams: Vec::new(),
        }
    }

    /// The same budget for one of `shards` shards: each takes its share of
    /// `upstream_completion_qps`.
    pub fn for_shards(mut self, shards: usize) -> Self {
        self.shards = shards.max(1);
        self
    }

    /// Shards sharing the per-upstream rate.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// A client miss: refills `ratio`.
    pub fn on_miss(&mut self) {
        self.tokens = (self.tokens + self.params.ratio).min(self.cap);
    }

    /// Whether a latency query (`Active`, `Hedge`) may go at `now`; spends a token
    /// if so. `First` is never charged. A completion is asked of
    /// [`Self::try_complete`]; asked here, it may take the bucket down to half.
    pub fn try_spend(&mut self, purpose: Purpose, now: Instant) -> bool {
        if !self.params.enabled || purpose == Purpose::First {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.params.min_per_second).min(self.cap);
        let floor = self.cap
            * match purpose {
                Purpose::First | Purpose::Hedge => 0.0,
                Purpose::Active => 0.25,
                Purpose::Completion => 0.5,
            };
        if self.tokens - 1.0 >= floor {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a completion query to upstream `up` may go at `now`. `demand`: the
    /// name is known to be asked again (waiters, a prefetch, or a hit on its
    /// entry while fresh): it spends from `up`'s share of
    /// `upstream_completion_qps`. Without demand the query also needs the spare
    /// of the bucket misses refill (above three quarters: at low load every name
    /// completes at once, under load only names asked again do), else it is
    /// [`Spend::Deferred`].
    pub fn try_complete(&mut self, up: UpstreamIdx, demand: bool, now: Instant) -> Spend {
        if !self.params.enabled {
            return Spend::Allowed;
        }
        // Without demand, only from the spare of the bucket misses refill (it
        // stays above three quarters at low load, never under a flood) and only
        // if the upstream has room too.
        if !demand && !self.has_spare(now) {
            return Spend::Deferred;
        }
        let spend = self.take_upstream(up, now);
        if !demand {
            if spend == Spend::Allowed {
                self.tokens -= 1.0;
                return Spend::Allowed;
            }
            return Spend::Deferred;
        }
        spend
    }

    /// Refills the miss bucket to `now`; whether it holds a token above three
    /// quarters of its size.
    fn has_spare(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.params.min_per_second).min(self.cap);
        self.tokens - 1.0 >= 0.75 * self.cap
    }

    /// Takes one token of `up`'s share of `upstream_completion_qps`, if it has one.
    fn take_upstream(&mut self, up: UpstreamIdx, now: Instant) -> Spend {
        let up = up.get();
        let rate = self.params.upstream_completion_qps / self.shards as f64;
        // One second of the rate, and at least one query.
        let cap = rate.max(1.0);
        if self.upstreams.len() <= up {
            self.upstreams.resize(
                up + 1,
                UpstreamBucket {
                    tokens: cap,
                    last: now,
                },
            );
        }
        let b = &mut self.upstreams[up];
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = b.last.max(now);
        b.tokens = (b.tokens + dt * rate).min(cap);
        if rate > 0.0 && b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Spend::Allowed
        } else {
            Spend::Refused
        }
    }

    /// The parameters it runs with.
    pub fn params(&self) -> &BudgetParams {
        &self.params
    }

    /// Tokens left (for tests and gauges).
    pub fn tokens(&self) -> f64 {
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::upstream;
    use std::time::Duration;

    fn budget(ratio: f64, min_per_second: f64, t0: Instant) -> Budget {
        Budget::new(
            BudgetParams {
                enabled: true,
                ratio,
                min_per_second,
                ..BudgetParams::default()
            },
            t0,
        )
    }

    #[test]
    fn at_low_load_nothing_is_refused() {
        let t0 = Instant::now();
        let mut b = budget(0.3, 50.0, t0);
        // Ten misses a second, each a full five-upstream flight of a name asked
        // again: a second active query and three completions each.
        for i in 0..100u32 {
            let now = t0 + Duration::from_millis(100) * i;
            b.on_miss();
            assert!(b.try_spend(Purpose::Active, now));
            for up in 2..5 {
                assert_eq!(
                    b.try_complete(upstream(up), true, now),
                    Spend::Allowed,
                    "miss {i}"
                );
            }
        }
    }

    #[test]
    fn under_a_flood_extra_queries_stay_at_the_ratio_and_go_to_hedges_first() {
        let t0 = Instant::now();
        let mut b = budget(0.3, 50.0, t0);
        let (mut misses, mut extra, mut hedges, mut completions) = (0u32, 0u32, 0u32, 0u32);
        // 40 000 misses a second of never-seen names for 2 s; every flight wants
        // its second active query and completion; one in ten also a hedge.
        for i in 0..80_000u32 {
            let now = t0 + Duration::from_micros(25) * i;
            b.on_miss();
            misses += 1;
            if i % 10 == 0 && b.try_spend(Purpose::Hedge, now) {
                extra += 1;
                hedges += 1;
            }
            if b.try_spend(Purpose::Active, now) {
                extra += 1;
            }
            for up in 2..5 {
                // Nobody asks these names again: completion waits its turn.
                if b.try_complete(upstream(up), false, now) == Spend::Allowed {
                    extra += 1;
                    completions += 1;
                }
            }
        }
        let per_miss = 1.0 + f64::from(extra) / f64::from(misses);
        assert!(per_miss <= 1.3 + 0.01, "{per_miss}");
        assert!(per_miss > 1.25, "the budget is used: {per_miss}");
        assert!(hedges >= 7_900, "hedges come first: {hedges} of 8000");
        assert!(completions < 200, "one-off names wait: {completions}");
    }

    /// At low load a name nobody asked again completes at once; once misses
    /// drain the bucket below three quarters it is deferred, while a name asked
    /// again still completes from its upstream's share.
    #[test]
    fn one_off_names_complete_from_the_spare_only() {
        let t0 = Instant::now();
        let mut b = budget(0.0, 40.0, t0);
        assert_eq!(b.try_complete(upstream(0), false, t0), Spend::Allowed);
        while b.try_spend(Purpose::Active, t0) {}
        assert_eq!(b.try_complete(upstream(0), false, t0), Spend::Deferred);
        assert_eq!(b.try_complete(upstream(0), true, t0), Spend::Allowed);
        // Time refills the spare.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(b.try_complete(upstream(1), false, later), Spend::Allowed);
    }

    /// Completion of names asked again is bounded per upstream by its share of
    /// `upstream_completion_qps`, whatever the miss rate: on a stepped clock, 1000
    /// requests a second for 3 s to one upstream with 400/s for 2 shards pass
    /// about 200 a second (plus the first second's full bucket), and another
    /// upstream has a bucket of its own.
    #[test]
    fn completion_is_bounded_per_upstream_by_its_share_of_the_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(
            BudgetParams {
                upstream_completion_qps: 400.0,
                ..BudgetParams::default()
            },
            t0,
        )
        .for_shards(2);
        let mut allowed = 0;
        for i in 0..3000u32 {
            let now = t0 + Duration::from_millis(1) * i;
            match b.try_complete(upstream(0), true, now) {
                Spend::Allowed => allowed += 1,
                Spend::Refused => {}
                Spend::Deferred => panic!("demand given"),
            }
        }
        // 200 in the bucket at the start, 200 a second for 3 s.
        assert!((790..=810).contains(&allowed), "{allowed}");
        assert_eq!(b.try_complete(upstream(1), true, t0), Spend::Allowed);
        assert_eq!(b.try_complete(upstream(0), false, t0), Spend::Deferred);
        // A rate of 0: no completion.
        let mut none = Budget::new(
            BudgetParams {
                upstream_completion_qps: 0.0,
                ..BudgetParams::default()
            },
            t0,
        );
        assert_eq!(none.try_complete(upstream(0), true, t0), Spend::Refused);
    }

    #[test]
    fn the_active_tier_keeps_a_reserve_for_hedges() {
        let t0 = Instant::now();
        let mut b = budget(0.0, 40.0, t0);
        while b.try_spend(Purpose::Active, t0) {}
        assert!(b.tokens() < 0.25 * 40.0 + 1.0);
        assert!(b.try_spend(Purpose::Hedge, t0), "hedges use the reserve");
        // Time refills it.
        assert!(b.try_spend(Purpose::Active, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn disabled_or_first_is_never_refused_and_bad_values_are_named() {
        let t0 = Instant::now();
        let mut b = Budget::new(
            BudgetParams {
                enabled: false,
                ..BudgetParams::default()
            },
            t0,
        );
        for _ in 0..1000 {
            assert!(b.try_spend(Purpose::Active, t0));
            assert_eq!(b.try_complete(upstream(3), false, t0), Spend::Allowed);
        }
        let mut b = budget(0.0, 0.0, t0);
        for _ in 0..1000 {
            assert!(b.try_spend(Purpose::First, t0));
        }
        for (bad, key) in [
            (
                BudgetParams {
                    ratio: -1.0,
                    ..BudgetParams::default()
                },
                "budget.ratio",
            ),
            (
                BudgetParams {
                    upstream_completion_qps: f64::NAN,
                    ..BudgetParams::default()
                },
                "budget.upstream_completion_qps",
            ),
        ] {
            assert!(bad.validate().unwrap_err().to_string().contains(key));
        }
        assert!(BudgetParams::default().validate().is_ok());
    }
}

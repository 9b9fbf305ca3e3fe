//! The amplification budget: how many upstream queries beyond the first of a miss
//! a shard may send.
//!
//! By default a miss asks every upstream (the active tier, a hedge when it is late,
//! background completion). At the edge that trade must be bounded, or a flood of
//! never-seen names multiplies into an upstream outage. The model is Envoy's retry
//! budget and gRPC's retry throttling: a token bucket that client misses refill.
//!
//! - Every client miss adds `ratio` tokens; time adds `min_per_second` (the small
//!   allowance that keeps the tiers whole at low load). The bucket holds at most
//!   `max(min_per_second, 10)` tokens: enough for a few full flights after a quiet
//!   spell, never a stock a flood could spend at once.
//! - Every upstream query beyond the first of a flight spends one token, if the
//!   bucket stays above the floor of its [`Purpose`]: hedges that protect latency
//!   (the active tier is late or failed) may empty it; the second query of the
//!   active tier keeps a quarter in reserve for them; background completion keeps
//!   half, and three quarters for a name nobody is known to ask again (merging a
//!   name asked once buys nothing).
//!
//! So under a sustained flood, upstream queries per client miss stay at or below
//! `1 + ratio + min_per_second / misses per second` (1.30 at 10 000 misses a second
//! per shard with the defaults, 1.26 at 40 000), and the hedges are what the extra
//! goes to. At low load (below about 130 misses a second per shard with five
//! upstreams) the bucket stays full and nothing is refused. One budget per shard:
//! no shared write per query.
//! Time is passed in, as everywhere in the tier engine.

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
}

impl Default for BudgetParams {
    fn default() -> Self {
        Self {
            enabled: true,
            ratio: 0.25,
            min_per_second: 500.0,
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

/// One shard's budget.
#[derive(Debug, Clone)]
pub struct Budget {
    params: BudgetParams,
    tokens: f64,
    cap: f64,
    last: Instant,
}

impl Budget {
    /// A full budget at `now`.
    pub fn new(params: BudgetParams, now: Instant) -> Self {
        let cap = params.min_per_second.max(10.0);
        Self {
            params,
            tokens: cap,
            cap,
            last: now,
        }
    }

    /// A client miss: refills `ratio`.
    pub fn on_miss(&mut self) {
        self.tokens = (self.tokens + self.params.ratio).min(self.cap);
    }

    /// Whether a query for `purpose` may go at `now`; spends a token if so.
    /// `asked_again`: the name is known to be asked again (it had waiters, or it is
    /// a prefetch refresh), which ranks its completion higher.
    pub fn try_spend(&mut self, purpose: Purpose, asked_again: bool, now: Instant) -> bool {
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
                Purpose::Completion if asked_again => 0.5,
                Purpose::Completion => 0.75,
            };
        if self.tokens - 1.0 >= floor {
            self.tokens -= 1.0;
            true
        } else {
            false
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
    use std::time::Duration;

    fn budget(ratio: f64, min_per_second: f64, t0: Instant) -> Budget {
        Budget::new(
            BudgetParams {
                enabled: true,
                ratio,
                min_per_second,
            },
            t0,
        )
    }

    #[test]
    fn at_low_load_nothing_is_refused() {
        let t0 = Instant::now();
        let mut b = budget(0.3, 50.0, t0);
        // Ten misses a second, each a full five-upstream flight: four extras each.
        for i in 0..100u32 {
            let now = t0 + Duration::from_millis(100) * i;
            b.on_miss();
            assert!(b.try_spend(Purpose::Active, false, now));
            assert!(b.try_spend(Purpose::Completion, false, now), "miss {i}");
            assert!(b.try_spend(Purpose::Completion, false, now));
            assert!(b.try_spend(Purpose::Completion, false, now));
        }
    }

    #[test]
    fn under_a_flood_extra_queries_stay_at_the_ratio_and_go_to_hedges_first() {
        let t0 = Instant::now();
        let mut b = budget(0.3, 50.0, t0);
        let (mut misses, mut extra, mut hedges, mut completions) = (0u32, 0u32, 0u32, 0u32);
        // 40 000 misses a second for 2 s; every flight wants its second active query
        // and completion; one in ten also a hedge.
        for i in 0..80_000u32 {
            let now = t0 + Duration::from_micros(25) * i;
            b.on_miss();
            misses += 1;
            if i % 10 == 0 && b.try_spend(Purpose::Hedge, false, now) {
                extra += 1;
                hedges += 1;
            }
            if b.try_spend(Purpose::Active, false, now) {
                extra += 1;
            }
            for _ in 0..3 {
                if b.try_spend(Purpose::Completion, false, now) {
                    extra += 1;
                    completions += 1;
                }
            }
        }
        let per_miss = 1.0 + f64::from(extra) / f64::from(misses);
        assert!(per_miss <= 1.3 + 0.01, "{per_miss}");
        assert!(per_miss > 1.25, "the budget is used: {per_miss}");
        assert!(hedges >= 7_900, "hedges come first: {hedges} of 8000");
        assert!(
            completions < 200,
            "completion waits its turn: {completions}"
        );
    }

    #[test]
    fn completion_goes_first_to_names_asked_again() {
        let t0 = Instant::now();
        let mut b = budget(0.0, 40.0, t0);
        // Drain to just above half: a repeated name's completion still goes, a
        // one-off's does not.
        while b.tokens() > 0.75 * 40.0 + 0.5 {
            assert!(b.try_spend(Purpose::Completion, false, t0));
        }
        assert!(!b.try_spend(Purpose::Completion, false, t0));
        assert!(b.try_spend(Purpose::Completion, true, t0));
        while b.try_spend(Purpose::Completion, true, t0) {}
        assert!(b.tokens() < 0.5 * 40.0 + 1.0);
        assert!(b.try_spend(Purpose::Active, false, t0));
        while b.try_spend(Purpose::Active, false, t0) {}
        assert!(
            b.try_spend(Purpose::Hedge, false, t0),
            "hedges use the reserve"
        );
        // Time refills it.
        assert!(b.try_spend(Purpose::Completion, false, t0 + Duration::from_secs(1)));
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
            assert!(b.try_spend(Purpose::Completion, false, t0));
        }
        let mut b = budget(0.0, 0.0, t0);
        for _ in 0..1000 {
            assert!(b.try_spend(Purpose::First, false, t0));
        }
        let bad = BudgetParams {
            ratio: -1.0,
            ..BudgetParams::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("budget.ratio"));
        assert!(BudgetParams::default().validate().is_ok());
    }
}

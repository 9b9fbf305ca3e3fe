//! The staggered tier engine: which upstreams one flight asks, and when.
//!
//! This module owns the scheduling decisions of one flight (one cache miss being
//! resolved upstream) and the merge of its good answers. It is pure logic, in the
//! manner of `quinn-proto`: no sockets, no clocks, no runtime. Every call takes `now`;
//! the engine answers with what to send and when to wake up. The I/O driver (one per
//! flight, on the leading shard) is a trivial loop:
//!
//! ```text
//! let mut plan = Plan::new(kind, &params, &order, &health, now, seed);
//! loop {
//!     match plan.next_within(now, |up, purpose| budget allows it) {
//!         Action::Send(ups) => send one query to each of `ups`, then ask again,
//!         Action::Wait(at)  => sleep until `at` or until a result arrives;
//!                              on a result: plan.on_result(up, outcome, now),
//!         Action::Done      => stop; hand the good answers to merge(),
//!     }
//! }
//! ```
//!
//! The flight machine (`flight::FlightMachine`) is that driver, without I/O; it
//! enforces a hard per-query timeout of its own and reports it as
//! [`Outcome::Failed`]`(`[`FailKind::Timeout`]`)`; it delivers the first good answer
//! to the waiting clients at once, independently of the plan.
//!
//! # The staggered algorithm
//!
//! Parameters ([`TierParams`], config section `[tiers]`, per forward zone too):
//! `active_tier_size` (2), `fallback_timeout` (300ms or `"auto"`), `batch_size` (2),
//! `stagger_delay` (50ms), `total_collect_timeout` (3s), `complete` (true).
//!
//! 1. The caller orders the candidate upstreams by health
//!    ([`crate::health::HealthTracker::order`]): usable circuits first, then EWMA RTT
//!    plus a failure penalty, then configured priority. Duplicates are dropped; each
//!    upstream is asked at most once per flight.
//! 2. **Active tier**: the first `active_tier_size` upstreams are sent at once, at the
//!    flight's start. Until the stagger starts, nothing else is in flight.
//! 3. **Stagger start**, at the earliest of
//!    - a first good answer (only when `complete`: the stagger is then background
//!      completion, collecting more addresses for the cache),
//!    - `hedge_after` elapsed since the start (a *hedged request*: the active tier is
//!      late, ask more servers without cancelling it),
//!    - every active-tier query has failed (fail fast: never wait out a timer for
//!      upstreams that have already answered badly).
//!
//!    The reason is kept in [`PlanStats::stagger_reason`] (a metric label).
//! 4. **Staggered tier**: the rest of the order, in batches of `batch_size`, one batch
//!    every `stagger_delay` (the first at the stagger start). Pacing keeps the upstream
//!    load smooth. One exception: when nothing is in flight and nothing good has
//!    arrived yet, the next batch goes at once, since a waiting client gains nothing
//!    from pacing against upstreams that have all already failed.
//! 5. **End**: with `complete = false`, the first good answer ends the plan at once
//!    and nothing more is sent (plain hedging). Otherwise the plan ends when every
//!    upstream has been launched and every launched query has finished, or at
//!    `total_collect_timeout` after the start, whichever is first: never later. Without
//!    any good answer it ends as soon as every upstream has failed.
//!
//! `fallback_timeout = "auto"` resolves `hedge_after` per flight as the
//! `auto_quantile` (p95) of the active tier's recent RTT samples, clamped to
//! `[auto_min, auto_max]`; without samples it uses 300ms, clamped the same way.
//! A hedge at a high quantile fires only for the few percent of queries that are
//! really late, which bounds the extra load to about that share ("The Tail at Scale",
//! Dean and Barroso, CACM 2013, section "Hedged requests").
//!
//! # Other strategies
//!
//! - `parallel`: every upstream at once; ends at the first good answer unless
//!   `complete`, then as staggered step 5.
//! - `sequential`: one upstream at a time in health order. The next is sent when the
//!   current one fails or its attempt timeout passes (the earlier one may still answer
//!   and is accepted). The attempt timeout adapts per upstream like a TCP RTO
//!   (RFC 6298: SRTT + 4 RTTVAR), clamped to `[auto_min, attempt_timeout]`;
//!   `attempt_timeout` itself for an upstream without samples. Ends at the first good
//!   answer (no background completion), when all failed, or at `total_collect_timeout`.
//! - `random`: sequential over a random permutation (from the flight's seed).
//!
//! # Prior art
//!
//! - RFC 8305 (Happy Eyeballs v2): staggered connection attempts, a short fixed delay
//!   between attempts, and moving on at once when an attempt fails.
//! - Dean and Barroso, "The Tail at Scale" (2013): hedged requests after a high
//!   percentile of expected latency.
//! - RFC 6298: retransmission timeout from smoothed RTT and its variance.
//! - What counts as good (NOERROR or NXDOMAIN with the matching question) and as a
//!   failure (SERVFAIL, REFUSED, FORMERR, NOTIMP, malformed, timeout) is `flight::classify`'s;
//!   the SERVFAIL answer when nothing is good carries an Extended DNS Error (RFC 8914)
//!   built from [`FailKind`], and serve-stale (RFC 8767) is the caller's business.
//!
//! # Merge
//!
//! [`merge`](mod@merge) builds the background-completion answer: the union of A/AAAA records of
//! the first answer's final owner name; see its docs for the exact rules.

mod budget;
mod merge;
mod params;
mod plan;
mod strategy;

use crate::health::{FailKind, UpstreamIdx};
pub use budget::{Budget, BudgetParams, BudgetParamsError, Purpose, Spend};
pub use merge::{
    merge, merge_agreed, Merged, MAX_CANDIDATES, MAX_CHAIN, MAX_MERGED_ADDRESSES, MERGE_TTL_FLOOR,
};
pub use params::{FallbackTimeout, TierParams, TierParamsError, MAX_MERGE_MIN_AGREE};
pub use plan::{Action, Plan, PlanStats, SendList, StaggerReason};
pub use strategy::StrategyKind;

/// What became of one query to one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// NOERROR or NXDOMAIN with the matching question.
    Good,
    /// Anything that moves the tiers on.
    Failed(FailKind),
}

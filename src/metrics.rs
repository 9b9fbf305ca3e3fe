//! Metric names, labels, and the flush of shard-local counters into `metrics`.
//!
//! Shards count into plain `Cell`s of their own ([`ShardStats`]): no shared atomic
//! per packet. Every `flush_interval` each shard adds its deltas to the registry,
//! which the Prometheus exporter serves (default `127.0.0.1:9153/metrics`). Latency
//! samples are buffered locally (bounded) and recorded into histograms at flush.
//!
//! Names are prefixed `tierdns_`; [`describe`](mod@describe) documents each for Prometheus.

mod describe;
mod labels;

pub use describe::describe;
pub use labels::{CacheResult, DropReason, RcodeLabel, TcpClose};

use crate::health::{PerUpstream, UpstreamIdx};
use crate::policy::{AccessAction, RateLimitAction, StreamLimit};
use crate::tiers::{Purpose, StaggerReason};
use crate::transport::Transport;
use std::cell::{Cell, RefCell};

/// Bound on buffered latency samples per histogram between flushes (512 KiB): at
/// most this many per flush interval are recorded exactly; past it, new samples
/// replace buffered ones (quantiles stay representative, `_count` undercounts; the
/// counters, not the histograms, are the exact rates).
const MAX_SAMPLES: usize = 65_536;

/// A bounded local sample buffer for one histogram.
#[derive(Debug, Default)]
pub(crate) struct Samples(RefCell<Vec<f64>>);

impl Samples {
    /// Adds a sample; past the bound the sample replaces a slot (keeps the buffer
    /// bounded while staying representative enough for quantiles).
    pub(crate) fn record(&self, value: f64) {
        let mut v = self.0.borrow_mut();
        if v.len() < MAX_SAMPLES {
            v.push(value);
        } else {
            let slot = (value.to_bits() as usize) % MAX_SAMPLES;
            v[slot] = value;
        }
    }

    fn drain_into(&self, h: &metrics::Histogram) {
        let mut v = self.0.borrow_mut();
        for s in v.drain(..) {
            h.record(s);
        }
    }
}

/// Per-upstream counters of one shard.
#[derive(Debug, Default)]
pub(crate) struct UpstreamStats {
    queries: Cell<u64>,
    answers: Cell<u64>,
    errors: Cell<u64>,
    timeouts: Cell<u64>,
    tcp_retries: Cell<u64>,
    rtt: Samples,
}

/// Something that happened with one upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum UpstreamEvent {
    /// A query was sent.
    Query,
    /// A good answer came back after this round trip.
    Answer(std::time::Duration),
    /// A bad answer or a network error.
    Error,
    /// No answer in time.
    Timeout,
    /// A truncated answer was retried over TCP.
    TcpRetry,
}

/// Counters of the tier engine, one shard's worth.
#[derive(Debug, Default)]
pub(crate) struct TierStats {
    /// First good answer came from the active tier / from the stagger.
    pub(crate) answered_active: Cell<u64>,
    pub(crate) answered_stagger: Cell<u64>,
    /// Stagger launches, by [`StaggerReason`].
    pub(crate) stagger: [Cell<u64>; StaggerReason::ALL.len()],
    pub(crate) coalesced: Cell<u64>,
    pub(crate) uncoalesced: Cell<u64>,
    pub(crate) merges: Cell<u64>,
    pub(crate) merged_addresses: Cell<u64>,
    pub(crate) merge_rejected: Cell<u64>,
    pub(crate) failed_flights: Cell<u64>,
    /// Upstream queries beyond a flight's first, sent / refused by the budget, by
    /// purpose (`Purpose::CHARGED` order: active, hedge, completion).
    pub(crate) extra_queries: [Cell<u64>; 3],
    /// Background work shed at `limits.max_background`.
    pub(crate) background_shed: Cell<u64>,
    pub(crate) budget_refused: [Cell<u64>; 3],
    /// Completion queries not sent because nobody was known to ask the name
    /// again yet (the entry earns them on a hit while fresh).
    pub(crate) completion_deferred: Cell<u64>,
    /// Completions started by demand (a hit on an incomplete fresh entry).
    pub(crate) demand_completions: Cell<u64>,
    pub(crate) peak_in_flight: Samples,
    pub(crate) background: Samples,
}

/// Everything one shard counts between flushes.
#[derive(Debug)]
pub(crate) struct ShardStats {
    pub(crate) queries: [[Cell<u64>; RcodeLabel::ALL.len()]; Transport::ALL.len()],
    pub(crate) cache: [Cell<u64>; CacheResult::ALL.len()],
    pub(crate) drops: [Cell<u64>; DropReason::ALL.len()],
    pub(crate) latency_hit: Samples,
    pub(crate) latency_miss: Samples,
    upstreams: RefCell<PerUpstream<UpstreamStats>>,
    pub(crate) tiers: TierStats,
    pub(crate) tcp_connections: Cell<u64>,
    /// TCP client connections closed by tierdns, by [`TcpClose`].
    tcp_closed: [Cell<u64>; TcpClose::ALL.len()],
    /// Clients outside `access.allow`, by transport and action.
    access_denied: [[Cell<u64>; 2]; Transport::ALL.len()],
    /// UDP queries over the rate limit, by action (truncate, drop).
    ratelimited: [Cell<u64>; 2],
    /// Stream clients over a stream rate, by [`StreamLimit`] and transport.
    stream_limited: [[Cell<u64>; Transport::ALL.len()]; StreamLimit::ALL.len()],
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

impl ShardStats {
    pub(crate) fn new(upstreams: usize) -> Self {
        Self {
            queries: Default::default(),
            cache: Default::default(),
            drops: Default::default(),
            latency_hit: Samples::default(),
            latency_miss: Samples::default(),
            upstreams: RefCell::new((0..upstreams).map(|_| UpstreamStats::default()).collect()),
            tiers: TierStats::default(),
            tcp_connections: Cell::new(0),
            tcp_closed: Default::default(),
            access_denied: Default::default(),
            ratelimited: Default::default(),
            stream_limited: Default::default(),
        }
    }

    /// Counts a stream connection or query over its prefix's stream rate.
    pub(crate) fn stream_limited(&self, limit: StreamLimit, transport: Transport) {
        bump(&self.stream_limited[limit as usize][transport as usize]);
    }

    /// Counts a TCP client connection tierdns closed.
    pub(crate) fn tcp_closed(&self, reason: TcpClose) {
        bump(&self.tcp_closed[reason as usize]);
    }

    /// Counts a UDP query over its prefix's rate.
    pub(crate) fn ratelimited(&self, action: RateLimitAction) {
        bump(&self.ratelimited[action as usize]);
    }

    /// Counts a query (or, for `drop` over TCP, a connection) denied by `[access]`.
    pub(crate) fn access_denied(&self, transport: Transport, action: AccessAction) {
        bump(&self.access_denied[transport as usize][action as usize]);
    }

    pub(crate) fn answered(&self, transport: Transport, rcode: u16) {
        bump(&self.queries[transport as usize][RcodeLabel::of(rcode) as usize]);
    }

    pub(crate) fn cache(&self, result: CacheResult) {
        bump(&self.cache[result as usize]);
    }

    pub(crate) fn dropped(&self, reason: DropReason) {
        let i = DropReason::ALL
            .iter()
            .position(|d| *d == reason)
            .unwrap_or(0);
        bump(&self.drops[i]);
    }

    /// Counts an upstream event; out-of-range indices are ignored.
    pub(crate) fn upstream(&self, index: UpstreamIdx, event: UpstreamEvent) {
        let ups = self.upstreams.borrow();
        let Some(u) = ups.get(index) else { return };
        match event {
            UpstreamEvent::Query => bump(&u.queries),
            UpstreamEvent::Answer(rtt) => {
                bump(&u.answers);
                u.rtt.record(rtt.as_secs_f64());
            }
            UpstreamEvent::Error => bump(&u.errors),
            UpstreamEvent::Timeout => bump(&u.timeouts),
            UpstreamEvent::TcpRetry => bump(&u.tcp_retries),
        }
    }

    /// After a reload: flushes what the old upstream list counted under its labels,
    /// then counts afresh for `upstreams` upstreams.
    pub(crate) fn reset_upstreams(&self, old_labels: &PerUpstream<String>, upstreams: usize) {
        self.flush(old_labels);
        *self.upstreams.borrow_mut() = (0..upstreams).map(|_| UpstreamStats::default()).collect();
    }

    pub(crate) fn bump(c: &Cell<u64>) {
        bump(c);
    }

    /// Adds this shard's counts to the registry and zeroes them.
    pub(crate) fn flush(&self, upstream_labels: &PerUpstream<String>) {
        use metrics::{counter, histogram};
        for (t, transport) in Transport::ALL.into_iter().enumerate() {
            for rcode in RcodeLabel::ALL {
                let n = self.queries[t][rcode as usize].take();
                if n > 0 {
                    counter!("tierdns_queries_total", "transport" => transport.as_str(), "rcode" => rcode.as_str())
                        .increment(n);
                }
            }
        }
        for result in CacheResult::ALL {
            let n = self.cache[result as usize].take();
            if n > 0 {
                counter!("tierdns_cache_total", "result" => result.as_str()).increment(n);
            }
        }
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            let n = self.drops[i].take();
            if n > 0 {
                counter!("tierdns_drops_total", "reason" => reason.as_str()).increment(n);
            }
        }
        self.latency_hit
            .drain_into(&histogram!("tierdns_client_latency_seconds", "path" => "hit"));
        self.latency_miss
            .drain_into(&histogram!("tierdns_client_latency_seconds", "path" => "miss"));
        for (u, label) in self.upstreams.borrow().iter().zip(upstream_labels) {
            let l = label.clone();
            let pairs = [
                ("tierdns_upstream_queries_total", u.queries.take()),
                ("tierdns_upstream_answers_total", u.answers.take()),
                ("tierdns_upstream_errors_total", u.errors.take()),
                ("tierdns_upstream_timeouts_total", u.timeouts.take()),
                ("tierdns_upstream_tcp_retries_total", u.tcp_retries.take()),
            ];
            for (name, n) in pairs {
                if n > 0 {
                    counter!(name, "upstream" => l.clone()).increment(n);
                }
            }
            u.rtt
                .drain_into(&histogram!("tierdns_upstream_rtt_seconds", "upstream" => l));
        }
        let t = &self.tiers;
        let tier_counts = [
            (
                "tierdns_tier_answered_total",
                "tier",
                "active",
                &t.answered_active,
            ),
            (
                "tierdns_tier_answered_total",
                "tier",
                "stagger",
                &t.answered_stagger,
            ),
            (
                "tierdns_flight_waiters_total",
                "kind",
                "coalesced",
                &t.coalesced,
            ),
            (
                "tierdns_flight_waiters_total",
                "kind",
                "over_bound",
                &t.uncoalesced,
            ),
            (
                "tierdns_background_merges_total",
                "result",
                "merged",
                &t.merges,
            ),
            (
                "tierdns_background_merges_total",
                "result",
                "superseded",
                &t.merge_rejected,
            ),
            ("tierdns_flights_failed_total", "", "", &t.failed_flights),
            (
                "tierdns_budget_deferred_total",
                "purpose",
                "completion",
                &t.completion_deferred,
            ),
            (
                "tierdns_completions_on_demand_total",
                "",
                "",
                &t.demand_completions,
            ),
            ("tierdns_background_shed_total", "", "", &t.background_shed),
        ];
        for reason in StaggerReason::ALL {
            let n = t.stagger[reason as usize].take();
            if n > 0 {
                counter!("tierdns_stagger_launches_total", "reason" => reason.as_str())
                    .increment(n);
            }
        }
        for (i, purpose) in Purpose::CHARGED.iter().enumerate() {
            let sent = t.extra_queries[i].take();
            if sent > 0 {
                counter!("tierdns_upstream_extra_queries_total", "purpose" => purpose.as_str())
                    .increment(sent);
            }
            let refused = t.budget_refused[i].take();
            if refused > 0 {
                counter!("tierdns_budget_refused_total", "purpose" => purpose.as_str())
                    .increment(refused);
            }
        }
        for (name, key, value, cell) in tier_counts {
            let n = cell.take();
            if n == 0 {
                continue;
            }
            if key.is_empty() {
                counter!(name).increment(n);
            } else {
                counter!(name, key => value).increment(n);
            }
        }
        let n = t.merged_addresses.take();
        if n > 0 {
            counter!("tierdns_merged_addresses_total").increment(n);
        }
        t.peak_in_flight
            .drain_into(&histogram!("tierdns_flight_peak_in_flight"));
        t.background
            .drain_into(&histogram!("tierdns_background_duration_seconds"));
        let n = self.tcp_connections.take();
        if n > 0 {
            counter!("tierdns_tcp_connections_total").increment(n);
        }
        for reason in TcpClose::ALL {
            let n = self.tcp_closed[reason as usize].take();
            if n > 0 {
                counter!("tierdns_tcp_closed_total", "reason" => reason.as_str()).increment(n);
            }
        }
        for transport in Transport::ALL {
            for action in AccessAction::ALL {
                let n = self.access_denied[transport as usize][action as usize].take();
                if n > 0 {
                    counter!("tierdns_access_denied_total", "action" => action.as_str(), "transport" => transport.as_str())
                        .increment(n);
                }
            }
        }
        for action in [RateLimitAction::Truncate, RateLimitAction::Drop] {
            let n = self.ratelimited[action as usize].take();
            if n > 0 {
                counter!("tierdns_ratelimited_total", "action" => action.as_str()).increment(n);
            }
        }
        for limit in StreamLimit::ALL {
            for transport in Transport::ALL {
                let n = self.stream_limited[limit as usize][transport as usize].take();
                if n > 0 {
                    counter!("tierdns_stream_limited_total", "limit" => limit.as_str(), "transport" => transport.as_str())
                        .increment(n);
                }
            }
        }
    }
}

/// Buckets of every latency histogram, in seconds: 50 µs to 5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Buckets of the peak-in-flight histogram (queries per flight).
pub const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_stay_bounded() {
        let s = Samples::default();
        for i in 0..(MAX_SAMPLES * 3) {
            s.record(i as f64);
        }
        assert_eq!(s.0.borrow().len(), MAX_SAMPLES);
    }

    #[test]
    fn rcodes_map_to_labels() {
        assert_eq!(RcodeLabel::of(0).as_str(), "noerror");
        assert_eq!(RcodeLabel::of(3).as_str(), "nxdomain");
        assert_eq!(RcodeLabel::of(16).as_str(), "badvers");
        assert_eq!(RcodeLabel::of(9).as_str(), "other");
        for (i, label) in RcodeLabel::ALL.into_iter().enumerate() {
            assert_eq!(label as usize, i, "ALL is in array order");
        }
        for (i, result) in CacheResult::ALL.into_iter().enumerate() {
            assert_eq!(result as usize, i, "ALL is in array order");
        }
        for (i, reason) in StaggerReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "ALL is in array order");
        }
        for (i, action) in AccessAction::ALL.into_iter().enumerate() {
            assert_eq!(action as usize, i, "ALL is in array order");
        }
    }
}

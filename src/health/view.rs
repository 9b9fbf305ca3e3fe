//! Each shard's view of its upstreams' health, for the admin endpoint's
//! `/upstreams`: a shard publishes a snapshot at every stats flush
//! (`metrics.flush_interval`, 1 s by default), one lock and one small copy per
//! flush, never per query; a reader takes a copy of every shard's last one and
//! merges them ([`merge`]). Bounded: one snapshot per shard (at most
//! [`MAX_SHARDS`]), one row per upstream of its set.

use super::{CircuitState, FailKind, HealthTracker, UpstreamIdx};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most shards whose snapshots are kept.
pub const MAX_SHARDS: usize = 1024;

/// One upstream as one shard sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamView {
    /// Its label (as in the metrics).
    pub upstream: String,
    /// Its address, as configured.
    pub address: String,
    /// This shard's smoothed RTT, if it has samples.
    pub srtt: Option<Duration>,
    /// The health score the tier order ranks by (SRTT + failure penalty).
    pub score: Option<Duration>,
    /// The circuit's state.
    pub circuit: CircuitState,
    /// Consecutive circuit-tripping failures.
    pub consecutive_failures: u32,
    /// Queries to it this shard has out now.
    pub in_flight: u32,
    /// The last failure's kind and when it was.
    pub last_failure: Option<(FailKind, Instant)>,
}

/// One shard's snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardView {
    /// The shard's index.
    pub shard: usize,
    /// When it was taken.
    pub taken: Instant,
    /// Its upstreams, in its set's order.
    pub upstreams: Vec<UpstreamView>,
}

impl HealthTracker {
    /// `up`'s health for a [`UpstreamView`], without its names and in-flight
    /// count (the shard adds those). None for an unknown index.
    pub fn view(&self, up: UpstreamIdx, upstream: String, address: String) -> Option<UpstreamView> {
        let u = self.ups.get(up)?;
        Some(UpstreamView {
            upstream,
            address,
            srtt: u.rtt.srtt(),
            score: self.score(up),
            circuit: u.circuit.state(),
            consecutive_failures: u.circuit.consecutive_failures(),
            in_flight: 0,
            last_failure: u.last_failure,
        })
    }
}

/// The last snapshot of every shard.
#[derive(Debug, Default)]
pub struct HealthViews {
    shards: Mutex<Vec<Option<ShardView>>>,
}

impl HealthViews {
    /// Keeps `view` as its shard's latest (a shard index past [`MAX_SHARDS`] is
    /// ignored).
    pub fn publish(&self, view: ShardView) {
        if view.shard >= MAX_SHARDS {
            return;
        }
        let mut shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        if shards.len() <= view.shard {
            shards.resize(view.shard + 1, None);
        }
        let i = view.shard;
        shards[i] = Some(view);
    }

    /// A copy of every shard's latest snapshot, by shard index.
    pub fn all(&self) -> Vec<ShardView> {
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        shards.iter().flatten().cloned().collect()
    }
}

/// The order of circuit states from best to worst, for the merged view.
fn badness(state: CircuitState) -> u8 {
    state.as_gauge()
}

/// Every upstream over all shards (matched by label and address, in the order
/// first seen): SRTT and score averaged over the shards that have one, the
/// worst circuit state, consecutive failures the most of any shard, queries in
/// flight summed, the latest failure.
pub fn merge(shards: &[ShardView]) -> Vec<UpstreamView> {
    let mut out: Vec<(UpstreamView, [u32; 2], [Duration; 2])> = Vec::new();
    for v in shards.iter().flat_map(|s| &s.upstreams) {
        let i = match out
            .iter()
            .position(|(m, _, _)| m.upstream == v.upstream && m.address == v.address)
        {
            Some(i) => i,
            None => {
                let empty = UpstreamView {
                    srtt: None,
                    score: None,
                    circuit: CircuitState::Closed,
                    consecutive_failures: 0,
                    in_flight: 0,
                    last_failure: None,
                    ..v.clone()
                };
                out.push((empty, [0; 2], [Duration::ZERO; 2]));
                out.len() - 1
            }
        };
        let (m, counts, sums) = &mut out[i];
        for (k, d) in [v.srtt, v.score].into_iter().enumerate() {
            if let Some(d) = d {
                counts[k] += 1;
                sums[k] = sums[k].saturating_add(d);
            }
        }
        if badness(v.circuit) > badness(m.circuit) {
            m.circuit = v.circuit;
        }
        m.consecutive_failures = m.consecutive_failures.max(v.consecutive_failures);
        m.in_flight = m.in_flight.saturating_add(v.in_flight);
        if v.last_failure
            .is_some_and(|(_, at)| m.last_failure.is_none_or(|(_, t)| at > t))
        {
            m.last_failure = v.last_failure;
        }
    }
    out.into_iter()
        .map(|(mut m, counts, sums)| {
            m.srtt = (counts[0] > 0).then(|| sums[0] / counts[0]);
            m.score = (counts[1] > 0).then(|| sums[1] / counts[1]);
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        name: &str,
        srtt_ms: Option<u64>,
        circuit: CircuitState,
        in_flight: u32,
    ) -> UpstreamView {
        UpstreamView {
            upstream: name.into(),
            address: format!("127.0.0.1:{}", name.len()),
            srtt: srtt_ms.map(Duration::from_millis),
            score: srtt_ms.map(Duration::from_millis),
            circuit,
            consecutive_failures: u32::from(circuit != CircuitState::Closed),
            in_flight,
            last_failure: None,
        }
    }

    #[test]
    fn each_shard_keeps_its_latest_and_the_merge_sums_or_averages() {
        let views = HealthViews::default();
        let now = Instant::now();
        let shard = |shard, upstreams| ShardView {
            shard,
            taken: now,
            upstreams,
        };
        views.publish(shard(1, vec![row("a", Some(30), CircuitState::Open, 2)]));
        views.publish(shard(0, vec![row("a", Some(10), CircuitState::Closed, 1)]));
        views.publish(shard(
            0,
            vec![
                row("a", Some(20), CircuitState::Closed, 1),
                row("bb", None, CircuitState::Closed, 0),
            ],
        ));
        views.publish(shard(MAX_SHARDS, vec![]));
        let all = views.all();
        assert_eq!(all.iter().map(|s| s.shard).collect::<Vec<_>>(), [0, 1]);
        let merged = merge(&all);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].srtt, Some(Duration::from_millis(25)), "averaged");
        assert_eq!(merged[0].circuit, CircuitState::Open, "the worst");
        assert_eq!(merged[0].in_flight, 3, "summed");
        assert_eq!((merged[1].upstream.as_str(), merged[1].srtt), ("bb", None));
    }

    #[test]
    fn a_tracker_s_view_names_its_last_failure() {
        let mut h = HealthTracker::new(super::super::HealthParams::default(), &[0]);
        let up = UpstreamIdx::new(0);
        let now = Instant::now();
        h.record_success(up, Duration::from_millis(12));
        h.record_failure(up, FailKind::Timeout, now);
        let v = h.view(up, "u".into(), "127.0.0.1:53".into()).unwrap();
        assert_eq!(v.last_failure, Some((FailKind::Timeout, now)));
        assert!(v.srtt.is_some() && v.score.is_some());
        assert!(h
            .view(UpstreamIdx::new(1), String::new(), String::new())
            .is_none());
    }
}

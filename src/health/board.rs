//! Health shared by every shard: a dead upstream is found once, not once per
//! shard, and an upstream's round trip is known to a shard that has not asked it
//! yet.
//!
//! Each shard keeps its own [`super::HealthTracker`] (EWMA RTT, score, circuit),
//! written without locks on every result. Two things are published here, never
//! per packet:
//! - a change of a circuit to open or back to closed, one atomic store per change
//!   (rare): the moment until which the upstream is known dead. Every shard reads
//!   it when it orders the upstreams of a flight (one atomic load per candidate)
//!   and puts an upstream another shard found dead after the others, so its first
//!   queries go to the living; the shard that opened the circuit keeps probing it
//!   on its backoff, and its closing clears the mark for all;
//! - the smoothed RTT, stored by a shard at most once per
//!   [`PUBLISH_EVERY`](super::PUBLISH_EVERY) per upstream: a shard with no sample
//!   of its own ranks the upstream by it instead of optimistically first.
//!
//! Beside them, each shard's whole view at its stats flush, for the admin
//! endpoint only ([`super::view::HealthViews`]): nothing on a query's path reads it.
//!
//! Upstreams are named by address, so a reload that keeps an upstream keeps its
//! mark. The board holds an entry per address in use; entries of addresses no
//! set uses any more are pruned when a new one is added.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The shared board.
#[derive(Debug)]
pub struct CircuitBoard {
    epoch: Instant,
    slots: Mutex<HashMap<SocketAddr, Arc<Mark>>>,
    views: super::view::HealthViews,
}

/// What the board knows of one upstream.
#[derive(Debug, Default)]
struct Mark {
    /// Nanoseconds after the epoch until which the upstream is known dead; 0: not.
    open_until: AtomicU64,
    /// The last smoothed RTT a shard published, in microseconds, as `f64` bits;
    /// 0: none yet.
    srtt_micros: AtomicU64,
}

/// One upstream's mark on the board, held by each shard's upstream set.
#[derive(Debug, Clone)]
pub struct BoardSlot {
    epoch: Instant,
    mark: Arc<Mark>,
}

impl Default for CircuitBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl CircuitBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            slots: Mutex::new(HashMap::new()),
            views: super::view::HealthViews::default(),
        }
    }

    /// Each shard's last published view of its upstreams (the admin endpoint).
    pub fn views(&self) -> &super::view::HealthViews {
        &self.views
    }

    /// The mark of the upstream at `addr` (made on first use). Called when an
    /// upstream set is built, never per query.
    pub fn slot(&self, addr: SocketAddr) -> BoardSlot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.contains_key(&addr) {
            // Addresses no upstream set holds any more.
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let mark = Arc::clone(slots.entry(addr).or_default());
        BoardSlot {
            epoch: self.epoch,
            mark,
        }
    }

    /// Each upstream's published smoothed RTT (microseconds, if any) and whether
    /// its circuit is open at `now`, for the state file.
    pub fn snapshot(&self, now: Instant) -> Vec<(SocketAddr, Option<f64>, bool)> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = slots
            .iter()
            .map(|(addr, mark)| {
                let slot = BoardSlot {
                    epoch: self.epoch,
                    mark: Arc::clone(mark),
                };
                (*addr, slot.srtt_micros(), slot.is_open(now))
            })
            .collect();
        all.sort_by_key(|(addr, _, _)| *addr);
        all
    }

    /// Addresses on the board (for tests).
    pub fn len(&self) -> usize {
        self.slots.lock().map_or(0, |s| s.len())
    }

    /// True when no address is on the board.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BoardSlot {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A shard opened the upstream's circuit: it is dead until `until`.
    pub fn mark_open(&self, until: Instant) {
        self.mark
            .open_until
            .store(self.nanos(until).max(1), Ordering::Relaxed);
    }

    /// A shard closed the upstream's circuit again.
    pub fn mark_closed(&self) {
        self.mark.open_until.store(0, Ordering::Relaxed);
    }

    /// Whether some shard knows the upstream dead at `now`.
    pub fn is_open(&self, now: Instant) -> bool {
        self.mark.open_until.load(Ordering::Relaxed) > self.nanos(now)
    }

    /// A shard's smoothed RTT of the upstream, in microseconds (ignored unless
    /// finite and positive).
    pub fn publish_srtt(&self, micros: f64) {
        if micros.is_finite() && micros > 0.0 {
            self.mark
                .srtt_micros
                .store(micros.to_bits(), Ordering::Relaxed);
        }
    }

    /// The smoothed RTT last published by any shard.
    pub fn srtt_micros(&self) -> Option<f64> {
        match self.mark.srtt_micros.load(Ordering::Relaxed) {
            0 => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    /// What this board says of the upstream at `now`, for the tier order.
    pub fn elsewhere(&self, now: Instant) -> super::Elsewhere {
        super::Elsewhere {
            dead: self.is_open(now),
            srtt_micros: self.srtt_micros(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_mark_is_seen_by_every_holder_until_it_expires_or_is_cleared() {
        let board = CircuitBoard::new();
        let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let (a, b) = (board.slot(addr), board.slot(addr));
        let now = Instant::now();
        assert!(!b.is_open(now));
        a.mark_open(now + Duration::from_secs(10));
        assert!(b.is_open(now), "the other shard sees it");
        assert!(
            !b.is_open(now + Duration::from_secs(11)),
            "until the backoff ends"
        );
        a.mark_closed();
        assert!(!b.is_open(now));
    }

    #[test]
    fn a_published_rtt_is_seen_by_every_holder_and_nonsense_is_ignored() {
        let board = CircuitBoard::new();
        let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let (a, b) = (board.slot(addr), board.slot(addr));
        assert_eq!(b.srtt_micros(), None);
        a.publish_srtt(1500.0);
        assert_eq!(b.srtt_micros(), Some(1500.0));
        for nonsense in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
            a.publish_srtt(nonsense);
        }
        assert_eq!(b.srtt_micros(), Some(1500.0), "the last good one stays");
        let seen = b.elsewhere(Instant::now());
        assert!(!seen.dead);
        assert_eq!(seen.srtt_micros, Some(1500.0));
    }

    #[test]
    fn addresses_nobody_holds_are_pruned() {
        let board = CircuitBoard::new();
        let held = board.slot("127.0.0.1:1".parse().unwrap());
        drop(board.slot("127.0.0.1:2".parse().unwrap()));
        assert_eq!(board.len(), 2);
        let _new = board.slot("127.0.0.1:3".parse().unwrap());
        assert_eq!(board.len(), 2, "the one nobody holds went");
        held.mark_closed();
    }
}

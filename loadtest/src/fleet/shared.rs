//! The state every server thread of a fleet shares (specs, run-time states,
//! counters, records) and what an upstream does with one query.

use super::addrs::addresses_for;
use super::record::{Outcome, Record};
use super::spec::UpstreamSpec;
use crate::dns::{self, AnswerSpec};
use rand::rngs::SmallRng;
use rand::Rng;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most query records kept per fleet.
pub const MAX_RECORDS: usize = 4_000_000;

/// An upstream's state, switchable at run time (outage scenarios).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// As its spec says.
    Up = 0,
    /// Drops every query.
    Down = 1,
    /// Answers every query SERVFAIL.
    ServFail = 2,
}

/// (generation, index) of a record.
pub(super) type RecordId = (u64, usize);

pub(super) struct Shared {
    start: Instant,
    pub(super) specs: Vec<UpstreamSpec>,
    pub(super) states: Vec<AtomicU8>,
    /// (generation, records): a reset bumps the generation, so answers to queries
    /// from before it do not touch the new records.
    pub(super) records: Mutex<(u64, Vec<Record>)>,
    pub(super) queries: Vec<AtomicU64>,
    pub(super) in_flight: AtomicU64,
    pub(super) peak: AtomicU64,
}

impl Shared {
    /// Every upstream up, no record, counters at zero; the clock starts now.
    pub(super) fn new(specs: Vec<UpstreamSpec>) -> Self {
        let n = specs.len();
        Self {
            start: Instant::now(),
            states: (0..n).map(|_| AtomicU8::new(State::Up as u8)).collect(),
            queries: (0..n).map(|_| AtomicU64::new(0)).collect(),
            specs,
            records: Mutex::new((0, Vec::new())),
            in_flight: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records an arrival; returns the record's handle (index usize::MAX past the cap).
    fn arrive(&self, upstream: usize, tcp: bool, name: u64, qtype: u16) -> RecordId {
        self.queries[upstream].fetch_add(1, Ordering::Relaxed);
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
        let mut guard = self.records.lock().expect("records lock");
        let (generation, r) = &mut *guard;
        if r.len() >= MAX_RECORDS {
            return (*generation, usize::MAX);
        }
        r.push(Record {
            upstream: upstream as u16,
            tcp,
            name,
            qtype,
            arrived_ns: self.now_ns(),
            answered_ns: 0,
            delay_ns: 0,
            outcome: Outcome::Pending,
        });
        (*generation, r.len() - 1)
    }

    fn set_delay(&self, (generation, idx): RecordId, delay: Duration) {
        let mut guard = self.records.lock().expect("records lock");
        if guard.0 == generation {
            if let Some(rec) = guard.1.get_mut(idx) {
                rec.delay_ns = delay.as_nanos() as u64;
            }
        }
    }

    pub(super) fn done(&self, (generation, idx): RecordId, outcome: Outcome) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = self.now_ns();
        let mut guard = self.records.lock().expect("records lock");
        if guard.0 != generation {
            return;
        }
        if let Some(rec) = guard.1.get_mut(idx) {
            rec.outcome = outcome;
            if outcome != Outcome::Dropped {
                rec.answered_ns = now;
            }
        }
    }

    /// Decides what upstream `i` does with a query: (outcome, delay).
    fn decide(&self, i: usize, tcp: bool, rng: &mut SmallRng) -> (Outcome, Duration) {
        let s = &self.specs[i];
        let delay = s.latency.sample(rng)
            + if s.jitter.is_zero() {
                Duration::ZERO
            } else {
                s.jitter.mul_f64(rng.random())
            };
        let state = self.states[i].load(Ordering::Relaxed);
        if state == State::Down as u8 {
            return (Outcome::Dropped, delay);
        }
        if state == State::ServFail as u8 {
            return (Outcome::ServFail, delay);
        }
        let x: f64 = rng.random();
        let outcome = if x < s.loss {
            Outcome::Dropped
        } else if x < s.loss + s.servfail {
            Outcome::ServFail
        } else if x < s.loss + s.servfail + s.refused {
            Outcome::Refused
        } else if !tcp && rng.random::<f64>() < s.truncate {
            Outcome::Truncated
        } else {
            Outcome::Answered
        };
        (outcome, delay)
    }

    /// Handles one query: Some((answer, delay, record index)) or None (dropped /
    /// not a query).
    pub(super) fn handle(
        &self,
        i: usize,
        tcp: bool,
        query: &[u8],
        rng: &mut SmallRng,
        name_buf: &mut String,
    ) -> Option<(Vec<u8>, Duration, RecordId, Outcome)> {
        let q = dns::parse_query(query).ok()?;
        dns::read_name(query, dns::HEADER_LEN, name_buf).ok()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name_buf.hash(&mut h);
        let hash = h.finish();
        let idx = self.arrive(i, tcp, hash, q.qtype);
        let (outcome, delay) = self.decide(i, tcp, rng);
        self.set_delay(idx, delay);
        if outcome == Outcome::Dropped {
            self.done(idx, Outcome::Dropped);
            return None;
        }
        let addrs = addresses_for(i, hash, self.specs[i].addrs);
        let spec = AnswerSpec {
            rcode: match outcome {
                Outcome::ServFail => dns::SERVFAIL,
                Outcome::Refused => dns::REFUSED,
                _ => dns::NOERROR,
            },
            truncated: outcome == Outcome::Truncated,
            ttl: self.specs[i].ttl,
            addresses: &addrs,
        };
        let mut out = Vec::with_capacity(256);
        dns::build_answer(&mut out, query, &q, &spec);
        Some((out, delay, idx, outcome))
    }
}

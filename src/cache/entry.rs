//! [`Entry`]: one cached answer, and the cache's clock.
//!
//! An entry holds its wire bytes once (the question name lowercased, which is also
//! the key's name), the [`AnswerLayout`] recorded at insert, and a few small fields.
//! Times are nanoseconds relative to the cache's epoch, so an entry carries one
//! `i64` instead of an `Instant`; times before the epoch are negative, so any
//! `Instant` a caller passes works.

use std::time::Instant;

use super::key::{hash_parts, KeyRef, KEY_MASK};
use super::provenance::SourceId;
use crate::wire::answer::AnswerLayout;
use crate::wire::HEADER_LEN;

/// Entry flag: the CLOCK reference bit, set by hits, cleared by the sweeping hand.
pub(super) const REFERENCED: u8 = 1 << 2;
/// Entry flag: a prefetch was already requested for this entry.
pub(super) const PREFETCHED: u8 = 1 << 3;
/// Entry flag: the entry is a held SERVFAIL (never served stale, never prefetched).
pub(super) const SERVFAIL: u8 = 1 << 4;
/// Entry flag: the answer lacks addresses some upstreams of its route could add
/// (its flight deferred or was refused its completion).
pub(super) const INCOMPLETE: u8 = 1 << 5;
/// Entry flag: a completion was already requested for this entry.
pub(super) const COMPLETING: u8 = 1 << 6;

pub(super) const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The cache's time base.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds from the epoch to `t`, negative before it, saturating.
    pub(super) fn nanos(&self, t: Instant) -> i64 {
        if t >= self.epoch {
            i64::try_from((t - self.epoch).as_nanos()).unwrap_or(i64::MAX)
        } else {
            i64::try_from((self.epoch - t).as_nanos()).map_or(i64::MIN, |n| -n)
        }
    }
}

/// One cached answer.
#[derive(Debug)]
pub(super) struct Entry {
    /// The answer as stored: question name lowercased, TTLs clamped to `ttl`.
    pub(super) wire: Box<[u8]>,
    pub(super) layout: AnswerLayout,
    /// Insert time, nanoseconds from the cache epoch.
    pub(super) inserted: i64,
    /// Flight version that wrote this entry.
    pub(super) version: u64,
    /// Lifetime in seconds from `inserted`.
    pub(super) ttl: u32,
    /// Hits since insert, saturating.
    pub(super) hits: u16,
    /// Key flags (DO, CD) and entry flags (REFERENCED, PREFETCHED, SERVFAIL,
    /// INCOMPLETE, COMPLETING).
    pub(super) flags: u8,
    /// Upstreams (by index, the first 16) whose addresses the answer holds, for
    /// an INCOMPLETE entry: its completion asks the others.
    pub(super) answered: u16,
    /// Who gave the answer, when one upstream gave every record (see
    /// [`super::provenance`]; a merged entry's runs are in the partition's side
    /// table). One byte the entry's padding had anyway; no hit reads it.
    pub(super) source: SourceId,
}

impl Entry {
    /// The stored question name (lowercase).
    fn qname(&self) -> &[u8] {
        let end = self.layout.question_end().saturating_sub(4);
        self.wire.get(HEADER_LEN..end).unwrap_or(&[])
    }

    /// Stored QTYPE and QCLASS.
    fn qtype_qclass(&self) -> (u16, u16) {
        let end = self.layout.question_end();
        match self.wire.get(end.saturating_sub(4)..end) {
            Some(&[a, b, c, d]) => (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])),
            _ => (0, 0),
        }
    }

    /// Whether this entry answers `key`.
    pub(super) fn matches(&self, key: &KeyRef<'_>) -> bool {
        self.flags & KEY_MASK == key.flags()
            && self.qtype_qclass() == (key.qtype, key.qclass)
            && self.qname() == key.qname_lower
    }

    /// The key hash, recomputed from the stored question (equal to the inserting
    /// key's hash, which matched the question).
    pub(super) fn hash(&self) -> u64 {
        let (qtype, qclass) = self.qtype_qclass();
        hash_parts(self.qname(), qtype, qclass, self.flags)
    }

    /// Nanoseconds since insert, 0 if `now` is earlier.
    pub(super) fn age(&self, now: i64) -> u64 {
        u64::try_from(now.saturating_sub(self.inserted)).unwrap_or(0)
    }

    /// Lifetime in nanoseconds.
    pub(super) fn ttl_nanos(&self) -> u64 {
        u64::from(self.ttl) * NANOS_PER_SEC
    }

    /// Bytes charged against the memory bound.
    pub(super) fn cost(&self) -> usize {
        entry_cost(self.wire.len(), &self.layout)
    }
}

/// Fixed bytes charged per entry beyond its wire bytes: its slot in the partition's
/// slab, the hash-table index and control byte (with slack for the load factor),
/// and an allowance for the allocator's per-block overhead of the wire bytes.
pub const ENTRY_OVERHEAD: usize = size_of::<Option<Entry>>() + 8 + 16;

/// Bytes charged for an entry of `wire_len` bytes with `layout`.
pub(super) fn entry_cost(wire_len: usize, layout: &AnswerLayout) -> usize {
    wire_len + layout.heap_bytes() + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn clock_handles_instants_before_the_epoch() {
        let before = Instant::now();
        let clock = Clock::new();
        let b = clock.nanos(before);
        assert!(b <= 0);
        let later = clock.nanos(before + Duration::from_secs(10));
        assert_eq!(later - b, 10_000_000_000);
    }

    #[test]
    fn entry_stays_small() {
        // wire + <= 128 bytes of overhead per entry is the target
        assert!(
            size_of::<Option<Entry>>() <= 96,
            "{}",
            size_of::<Option<Entry>>()
        );
        const { assert!(ENTRY_OVERHEAD <= 128) };
    }
}

//! Completion by demand, the cache's part: an entry whose flight deferred its
//! completion is marked incomplete with the upstreams heard
//! ([`PacketCache::mark_incomplete`]); a hit on it while fresh says so once
//! (`Lookup::Hit { complete: true }`), and the completion starts from a copy of
//! it ([`PacketCache::completion_base`]) and writes its merge under the entry's
//! version, so any newer write wins.

use super::entry::INCOMPLETE;
use super::provenance::expand;
use super::{KeyRef, PacketCache, SourceId};
use std::time::Instant;

/// An incomplete entry as its completion starts from it
/// ([`PacketCache::completion_base`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionBase {
    /// The stored answer (question name lowercased, TTLs as stored).
    pub wire: Vec<u8>,
    /// When it was stored: a merged answer is stored as of then, so its TTLs
    /// keep ageing from the first answer.
    pub inserted: Instant,
    /// The flight version that wrote it: the merge overwrites only that.
    pub version: u64,
    /// Upstreams (bits by index) whose addresses it holds.
    pub answered: u16,
    /// Per record in message order, who gave it and when (ms after `inserted`):
    /// the merge carries these over (see [`super::provenance`]).
    pub origins: Vec<(SourceId, u32)>,
}

impl PacketCache {
    /// Marks the entry of `key` written by flight `version` as lacking addresses
    /// that upstreams other than those in `answered` (bits by upstream index)
    /// could add: a later hit may then ask for its completion. Nothing if the
    /// entry is gone or was written by another flight.
    pub fn mark_incomplete(&self, key: &KeyRef<'_>, version: u64, answered: u16) {
        let hash = key.hash();
        let mut guard = self.partition(hash);
        let part = &mut *guard;
        let Some(slot) = part.find(hash, key) else {
            return;
        };
        if let Some(entry) = part.entry_mut(slot).filter(|e| e.version == version) {
            entry.flags |= INCOMPLETE;
            entry.answered = answered;
        }
    }

    /// What a completion of `key`'s entry starts from: a copy of the stored
    /// answer, when it was stored, its version, and the upstreams already in it.
    /// None if the entry is gone, expired, or complete. Allocates the copy.
    pub fn completion_base(&self, key: &KeyRef<'_>, now: Instant) -> Option<CompletionBase> {
        let hash = key.hash();
        let now_nanos = self.clock.nanos(now);
        let mut guard = self.partition(hash);
        let part = &mut *guard;
        let slot = part.find(hash, key)?;
        let entry = part.entry(slot)?;
        if entry.flags & INCOMPLETE == 0 || entry.age(now_nanos) >= entry.ttl_nanos() {
            return None;
        }
        let age = entry.age(now_nanos);
        let records = entry.layout.ttl_offsets().len();
        Some(CompletionBase {
            wire: entry.wire.to_vec(),
            inserted: now.checked_sub(std::time::Duration::from_nanos(age))?,
            version: entry.version,
            answered: entry.answered,
            origins: expand(entry.source, part.trace(slot), records),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CacheConfig, Lookup};
    use super::*;
    use crate::wire::answer::tests::{a, response};
    use crate::wire::ReplyTarget;
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;
    use std::time::Duration;

    const NAME: &[u8] = b"\x03www\x07example\x00";

    fn key() -> KeyRef<'static> {
        KeyRef {
            qname_lower: NAME,
            qtype: 1,
            qclass: 1,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    /// An answer for the key, TTL 60.
    fn answer() -> Vec<u8> {
        response(
            "www.example.",
            RecordType::A,
            ResponseCode::NoError,
            vec![a("www.example.", 60, 1)],
            vec![],
            None,
        )
    }

    fn cache(complete_min_hits: u32) -> PacketCache {
        PacketCache::new(CacheConfig {
            max_bytes: 1 << 20,
            partitions: 4,
            complete_min_hits,
            ..CacheConfig::default()
        })
    }

    /// Whether a hit at `now` asks for the entry's completion.
    fn hit_completes(c: &PacketCache, now: Instant) -> Option<bool> {
        let target = ReplyTarget {
            id: 1,
            flags: 0x0100,
            qname: NAME,
            edns: None,
            max_size: 512,
        };
        let mut buf = [0u8; 1024];
        match c.lookup(&key(), now, &target, &mut buf) {
            Lookup::Hit { complete, .. } => Some(complete),
            Lookup::Miss => None,
        }
    }

    /// An entry marked incomplete asks for its completion once, on its first hit
    /// while fresh (complete_min_hits 1), and hands out a copy of itself aged from
    /// its insert; a mark from another flight's version, or an entry past its TTL,
    /// gives nothing; a replacing insert starts a complete entry.
    #[test]
    fn an_incomplete_entry_asks_once_and_only_for_its_own_version() {
        let c = cache(1);
        let t0 = Instant::now();
        let answer = answer();
        c.insert(&key(), &answer, t0, 5);
        c.mark_incomplete(&key(), 4, 0b1);
        assert_eq!(hit_completes(&c, t0), Some(false), "another flight's mark");
        assert!(c.completion_base(&key(), t0).is_none());
        c.mark_incomplete(&key(), 5, 0b101);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(hit_completes(&c, later), Some(true), "the first hit asks");
        assert_eq!(hit_completes(&c, later), Some(false), "once per entry");
        let base = c.completion_base(&key(), later).expect("a base");
        assert_eq!((base.version, base.answered), (5, 0b101));
        assert_eq!(base.inserted, t0, "aged from its insert");
        assert_eq!(base.wire.len(), answer.len());
        assert!(c
            .completion_base(&key(), t0 + Duration::from_secs(61))
            .is_none());
        // A merge under the same version replaces it: a complete entry.
        c.insert(&key(), &answer, t0, 5);
        assert_eq!(hit_completes(&c, later), Some(false));
        assert!(c.completion_base(&key(), later).is_none());
    }

    /// With `complete_min_hits = 2` the second hit asks, not the first.
    #[test]
    fn complete_min_hits_counts_the_hits() {
        let c = cache(2);
        let t0 = Instant::now();
        let answer = answer();
        c.insert(&key(), &answer, t0, 1);
        c.mark_incomplete(&key(), 1, 0b1);
        assert_eq!(hit_completes(&c, t0), Some(false));
        assert_eq!(hit_completes(&c, t0), Some(true));
    }
}

//! A look at one entry from outside the query path (the admin endpoint's
//! `/cache`): [`PacketCache::inspect`] copies what the entry holds under its
//! partition lock, for as long as a hit's copy takes, and changes nothing a hit
//! would (no hit counted, no reference bit, no prefetch or completion asked).
//! What it copies is read and formatted by the caller, outside the lock.

use super::entry::{INCOMPLETE, NANOS_PER_SEC, SERVFAIL};
use super::provenance::{expand, SourceId};
use super::{KeyRef, PacketCache};
use crate::wire::rcode;
use std::time::{Duration, Instant};

/// What an entry is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// An answer with records of the question's type, within its TTL.
    Fresh,
    /// NXDOMAIN or NODATA (RFC 2308), within its TTL.
    Negative,
    /// A SERVFAIL held briefly (RFC 9520), within its TTL.
    HeldFailure,
    /// Past its TTL, still served when every upstream fails (RFC 8767).
    Stale,
    /// Past its TTL and what serve-stale allows: left for eviction.
    Expired,
}

impl EntryState {
    /// The name the admin endpoint shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Negative => "negative",
            Self::HeldFailure => "held_failure",
            Self::Stale => "stale",
            Self::Expired => "expired",
        }
    }
}

/// A copy of one entry (see [`PacketCache::inspect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// The answer as stored (question name lowercased, TTLs as stored).
    pub wire: Vec<u8>,
    /// What it is now.
    pub state: EntryState,
    /// Lifetime in seconds from its creation.
    pub ttl: u32,
    /// Whole seconds of it left (0 once past it).
    pub ttl_left: u32,
    /// When it was created: its first answer's arrival.
    pub created: Instant,
    /// The flight version that wrote it.
    pub version: u64,
    /// Hits since it was written (saturating at 65535).
    pub hits: u16,
    /// It lacks addresses some upstreams could add (a completion is due on a hit).
    pub incomplete: bool,
    /// Per record in message order (every record but OPT): the upstream that
    /// gave it (its label; None if unknown) and its arrival after `created`.
    pub records: Vec<(Option<String>, Duration)>,
}

impl PacketCache {
    /// The id of the upstream labelled `label` in the cache's provenance (see
    /// [`super::provenance`]).
    pub fn source_id(&self, label: &str) -> SourceId {
        self.sources.id(label)
    }

    /// The label a [`SourceId`] names.
    pub fn source_label(&self, id: SourceId) -> Option<String> {
        self.sources.label(id)
    }

    /// A copy of `key`'s entry at `now`, whatever its state, without touching
    /// what hits count or set. None if there is none.
    pub fn inspect(&self, key: &KeyRef<'_>, now: Instant) -> Option<Inspected> {
        let hash = key.hash();
        let now_nanos = self.clock.nanos(now);
        let stale = self.stale_nanos();
        let (wire, layout, origins, age, ttl, version, hits, flags) = {
            let part = self.partition(hash);
            let slot = part.find(hash, key)?;
            let entry = part.entry(slot)?;
            let records = entry.layout.ttl_offsets().len();
            let origins = expand(entry.source, part.trace(slot), records);
            (
                entry.wire.to_vec(),
                entry.layout.clone(),
                origins,
                entry.age(now_nanos),
                entry.ttl,
                entry.version,
                entry.hits,
                entry.flags,
            )
        };
        let ttl_nanos = u64::from(ttl) * NANOS_PER_SEC;
        let negative = layout.rcode() == rcode::NXDOMAIN
            || (layout.rcode() == rcode::NOERROR && !layout.has_qtype_answer());
        let state = if age < ttl_nanos {
            if flags & SERVFAIL != 0 {
                EntryState::HeldFailure
            } else if negative {
                EntryState::Negative
            } else {
                EntryState::Fresh
            }
        } else if self.cfg.serve_stale && flags & SERVFAIL == 0 && age - ttl_nanos < stale {
            EntryState::Stale
        } else {
            EntryState::Expired
        };
        let left = ttl_nanos.saturating_sub(age) / NANOS_PER_SEC;
        let records = origins
            .into_iter()
            .map(|(source, after_ms)| {
                let label = (source != SourceId::UNKNOWN)
                    .then(|| self.sources.label(source))
                    .flatten();
                (label, Duration::from_millis(u64::from(after_ms)))
            })
            .collect();
        Some(Inspected {
            wire,
            state,
            ttl,
            ttl_left: u32::try_from(left).unwrap_or(u32::MAX),
            created: now.checked_sub(Duration::from_nanos(age)).unwrap_or(now),
            version,
            hits,
            incomplete: flags & INCOMPLETE != 0,
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::provenance::{Run, TRACE_OVERHEAD};
    use super::super::{CacheConfig, Origins, ENTRY_OVERHEAD};
    use super::*;
    use crate::wire::answer::tests::{a, response, soa};
    use crate::wire::ReplyTarget;
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;

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

    /// An answer for the key with `n` addresses, TTL 60.
    fn answer(n: u8) -> Vec<u8> {
        response(
            "www.example.",
            RecordType::A,
            ResponseCode::NoError,
            (1..=n).map(|i| a("www.example.", 60, i)).collect(),
            vec![],
            None,
        )
    }

    fn cache() -> PacketCache {
        PacketCache::new(CacheConfig {
            max_bytes: 1 << 20,
            partitions: 1,
            ..CacheConfig::default()
        })
    }

    fn labels(i: &Inspected) -> Vec<(Option<&str>, u64)> {
        i.records
            .iter()
            .map(|(l, at)| (l.as_deref(), at.as_millis() as u64))
            .collect()
    }

    /// The first answer's records all name its upstream at the entry's creation;
    /// a merge under the same version names each record's own; the byte count
    /// grows by the runs' cost only, and a new flight's answer resets it all.
    #[test]
    fn records_remember_their_upstream_until_the_entry_is_replaced() {
        let c = cache();
        let t0 = Instant::now();
        let (ns1, ns2) = (c.source_id("ns1"), c.source_id("ns2"));
        c.insert_traced(&key(), &answer(2), t0, 1, Origins::One(ns1));
        let one = c.inspect(&key(), t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(labels(&one), [(Some("ns1"), 0), (Some("ns1"), 0)]);
        assert_eq!(
            (one.state, one.ttl_left, one.version),
            (EntryState::Fresh, 55, 1)
        );
        assert_eq!(one.created, t0);
        let plain = c.bytes();
        assert_eq!(
            plain,
            answer(2).len() + ENTRY_OVERHEAD,
            "one source: no extra byte"
        );

        let runs = [
            Run {
                after_ms: 0,
                records: 2,
                source: ns1,
            },
            Run {
                after_ms: 40,
                records: 1,
                source: ns2,
            },
        ];
        c.insert_traced(&key(), &answer(3), t0, 1, Origins::Runs(&runs));
        let merged = c.inspect(&key(), t0).unwrap();
        assert_eq!(
            labels(&merged),
            [(Some("ns1"), 0), (Some("ns1"), 0), (Some("ns2"), 40)]
        );
        assert_eq!(
            c.bytes(),
            answer(3).len() + ENTRY_OVERHEAD + TRACE_OVERHEAD + 2 * size_of::<Run>(),
            "a merged entry pays for its runs"
        );

        // A newer flight's answer replaces the entry and its provenance.
        c.insert_traced(&key(), &answer(1), t0, 2, Origins::One(ns2));
        let fresh = c.inspect(&key(), t0).unwrap();
        assert_eq!(labels(&fresh), [(Some("ns2"), 0)]);
        assert_eq!(c.bytes(), answer(1).len() + ENTRY_OVERHEAD, "the runs went");
        // Without provenance: unknown.
        c.insert(&key(), &answer(1), t0, 3);
        assert_eq!(labels(&c.inspect(&key(), t0).unwrap()), [(None, 0)]);
    }

    /// Looking does not count as a hit, and the states follow the TTL.
    #[test]
    fn inspecting_changes_nothing_a_hit_would() {
        let c = cache();
        let t0 = Instant::now();
        c.insert(&key(), &answer(1), t0, 1);
        assert!(c.inspect(&key(), t0).is_some());
        assert_eq!(c.stats().hits, 0);
        let target = ReplyTarget {
            id: 1,
            flags: 0x0100,
            qname: NAME,
            edns: None,
            max_size: 512,
        };
        let mut buf = [0u8; 1024];
        c.lookup(&key(), t0, &target, &mut buf);
        assert_eq!(c.inspect(&key(), t0).unwrap().hits, 1);
        let later = c.inspect(&key(), t0 + Duration::from_secs(61)).unwrap();
        assert_eq!((later.state, later.ttl_left), (EntryState::Stale, 0));
        let gone = c.inspect(&key(), t0 + Duration::from_secs(4 * 86_400));
        assert_eq!(gone.unwrap().state, EntryState::Expired);

        let nx = response(
            "www.example.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
            vec![soa("example.", 900, 300)],
            None,
        );
        c.insert(&key(), &nx, t0, 2);
        assert_eq!(c.inspect(&key(), t0).unwrap().state, EntryState::Negative);
        let sf = response(
            "www.example.",
            RecordType::A,
            ResponseCode::ServFail,
            vec![],
            vec![],
            None,
        );
        let c = cache();
        c.insert(&key(), &sf, t0, 1);
        assert_eq!(
            c.inspect(&key(), t0).unwrap().state,
            EntryState::HeldFailure
        );
    }
}

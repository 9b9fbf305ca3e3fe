//! The shared, partitioned packet cache.
//!
//! [`PacketCache`] is shared by every shard thread (`Send + Sync`, `&self`
//! everywhere). It owns the stored answers and their TTL policy ([`ttl`]); it does
//! not talk to upstreams: the caller looks up, and on a miss (or a prefetch signal)
//! runs a flight and inserts what came back.
//!
//! - **Partitions.** The key hash ([`KeyRef::hash`], ahash with per-process random
//!   keys) picks one of `partitions` (a power of two) partitions, each behind its own
//!   `std::sync::Mutex`, held only for a table probe and a copy of at most 64 KiB: no
//!   await, no syscall, no allocation on a hit. Counters are plain integers inside
//!   the partition, so a hit writes no shared atomic beyond its partition lock.
//! - **Hits.** A fresh hit copies the stored wire bytes into the caller's buffer
//!   and patches them for the client ([`write_reply`]): ID, question-name case,
//!   TTLs aged by the whole seconds since insert. An entry past its TTL is a miss
//!   for [`PacketCache::lookup`] but stays for [`PacketCache::lookup_stale`] until
//!   `max_stale` past expiry (RFC 8767), answering with `stale_answer_ttl`.
//! - **Prefetch.** A hit on an entry with at least `prefetch_min_hits` hits inside
//!   the last `prefetch_window` of its TTL returns `prefetch: true`, once per entry
//!   (a replacing insert starts a new entry with the flag clear).
//! - **Versions.** [`PacketCache::next_version`] numbers flights; an insert older
//!   than the stored entry's version is ignored ([`InsertOutcome::Superseded`]), the
//!   same version may overwrite (a flight's background merge replaces its own first
//!   answer). Eviction forgets versions: an old flight may refill an evicted key.
//! - **Memory.** `max_bytes` is split evenly across partitions; an entry costs its
//!   wire bytes plus [`ENTRY_OVERHEAD`]. An insert evicts (CLOCK with a reference
//!   bit, dead entries first as the hand meets them; see [`partition`]) until it
//!   fits, so [`PacketCache::bytes`] never exceeds `max_bytes`.

mod completion;
mod config;
mod entry;
mod inspect;
mod key;
mod partition;
pub mod provenance;
mod ttl;

pub use completion::CompletionBase;
pub use config::{CacheConfig, CacheConfigError};
pub use entry::ENTRY_OVERHEAD;
pub use inspect::{EntryState, Inspected};
pub use key::{Key, KeyRef};
pub use provenance::{Origins, SourceId};

use std::ops::AddAssign;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::wire::answer::{write_reply, AnswerLayout, TtlPatch};
use crate::wire::{ReplyTarget, WireError, HEADER_LEN};
use entry::{
    Clock, Entry, COMPLETING, INCOMPLETE, NANOS_PER_SEC, PREFETCHED, REFERENCED, SERVFAIL,
};
use partition::Partition;
use ttl::Kind;

/// Result of [`PacketCache::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A fresh entry was written into `dst`.
    Hit {
        /// Reply length in `dst`.
        len: usize,
        /// The entry is popular and near expiry: refresh it in the background.
        /// True at most once per entry.
        prefetch: bool,
        /// The entry lacks some upstreams' addresses and is asked again while
        /// fresh (`complete_min_hits`): ask the others in the background
        /// ([`PacketCache::completion_base`]). True at most once per entry.
        complete: bool,
    },
    /// No fresh entry (absent, expired, or `dst` too small).
    Miss,
}

impl Lookup {
    /// Metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Hit { prefetch: true, .. } => "prefetch",
            Self::Hit { .. } => "hit",
            Self::Miss => "miss",
        }
    }
}

/// Why an answer was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unstorable {
    /// The answer could not be walked.
    Malformed(WireError),
    /// Its question is not the key's (name, type or class), or the key's name is not
    /// lowercase.
    Mismatch,
    /// Not a cacheable answer: see the [`ttl`] policy (rcode, shape, TC, TTL 0
    /// without serve-stale, not a QUERY response).
    NotCacheable,
    /// Larger than a partition's whole share of `max_bytes`.
    TooLarge,
}

/// Result of [`PacketCache::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored under a key that had no entry.
    Inserted,
    /// Replaced an entry of the same or an older version.
    Replaced,
    /// Ignored: the stored entry has a newer version.
    Superseded,
    /// Ignored: a SERVFAIL does not displace an answer that can still be served
    /// stale (RFC 8767 wins over RFC 9520 failure caching).
    KeptStale,
    /// Not stored.
    Rejected(Unstorable),
}

impl InsertOutcome {
    /// Metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Inserted => "inserted",
            Self::Replaced => "replaced",
            Self::Superseded => "superseded",
            Self::KeptStale => "kept_stale",
            Self::Rejected(Unstorable::Malformed(_)) => "malformed",
            Self::Rejected(Unstorable::Mismatch) => "mismatch",
            Self::Rejected(Unstorable::NotCacheable) => "not_cacheable",
            Self::Rejected(Unstorable::TooLarge) => "too_large",
        }
    }

    /// Whether the answer is now in the cache.
    pub fn stored(&self) -> bool {
        matches!(self, Self::Inserted | Self::Replaced)
    }
}

/// Plain counters, summed over partitions by [`PacketCache::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Fresh hits.
    pub hits: u64,
    /// Lookups without a fresh entry.
    pub misses: u64,
    /// Stale answers served by `lookup_stale`.
    pub stale: u64,
    /// Hits that asked for a prefetch.
    pub prefetches: u64,
    /// Inserts under a new key.
    pub inserts: u64,
    /// Inserts that replaced an entry.
    pub replaced: u64,
    /// Inserts ignored by the version guard.
    pub superseded: u64,
    /// Inserts rejected.
    pub rejected: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Of those, entries already past their stale deadline.
    pub expired_evictions: u64,
    /// Hits that could not be written (`dst` too small, or a name mismatch).
    pub write_errors: u64,
}

impl AddAssign for CacheStats {
    fn add_assign(&mut self, o: Self) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.stale += o.stale;
        self.prefetches += o.prefetches;
        self.inserts += o.inserts;
        self.replaced += o.replaced;
        self.superseded += o.superseded;
        self.rejected += o.rejected;
        self.evictions += o.evictions;
        self.expired_evictions += o.expired_evictions;
        self.write_errors += o.write_errors;
    }
}

/// A partition on its own cache lines, so neighbouring locks do not false-share.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Slot(Mutex<Partition>);

/// The shared packet cache. See the module docs.
#[derive(Debug)]
pub struct PacketCache {
    partitions: Box<[Slot]>,
    /// Byte share of each partition.
    share: usize,
    cfg: CacheConfig,
    clock: Clock,
    version: AtomicU64,
    sources: provenance::Sources,
}

impl PacketCache {
    /// An empty cache. `cfg.partitions` is rounded up to a power of two (at least 1);
    /// see [`CacheConfig::validate`] for the checks a loader should make.
    pub fn new(cfg: CacheConfig) -> Self {
        let n = cfg
            .partitions
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(1 << 16);
        let partitions = (0..n).map(|_| Slot::default()).collect();
        Self {
            partitions,
            share: cfg.max_bytes / n,
            cfg,
            clock: Clock::new(),
            version: AtomicU64::new(0),
            sources: provenance::Sources::default(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    fn partition(&self, hash: u64) -> MutexGuard<'_, Partition> {
        // High bits: hashbrown uses the low bits (bucket) and the top 7 (tag).
        let i = (hash >> 40) as usize & (self.partitions.len() - 1);
        self.partitions[i]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn stale_nanos(&self) -> u64 {
        if self.cfg.serve_stale {
            u64::try_from(self.cfg.max_stale.as_nanos()).unwrap_or(u64::MAX)
        } else {
            0
        }
    }

    /// Fresh hit: copies the stored answer under the partition lock into `dst` and
    /// patches it for `target` (TTLs aged by whole seconds since insert). Counts the
    /// hit or miss. Allocates nothing. `dst` needs the stored answer's length plus
    /// [`REPLY_HEADROOM`](crate::wire::answer::REPLY_HEADROOM) (or `target.max_size`
    /// plus that, which also always suffices); a `dst` too small is a miss.
    pub fn lookup(
        &self,
        key: &KeyRef<'_>,
        now: Instant,
        target: &ReplyTarget<'_>,
        dst: &mut [u8],
    ) -> Lookup {
        self.lookup_in(key, now, target, dst)
    }

    /// [`lookup`](Self::lookup) into a buffer sized under the lock to what this
    /// reply can need: the stored answer plus
    /// [`REPLY_HEADROOM`](crate::wire::answer::REPLY_HEADROOM), at most
    /// `target.max_size` (a reply never exceeds it). Only those bytes are cleared,
    /// so a TCP hit (`max_size` 65535) costs what a UDP one does; a buffer with that
    /// capacity already (a pooled one, for any answer up to 4 KiB) is not
    /// reallocated. On a hit `dst` is the reply.
    pub fn lookup_into(
        &self,
        key: &KeyRef<'_>,
        now: Instant,
        target: &ReplyTarget<'_>,
        dst: &mut Vec<u8>,
    ) -> Lookup {
        let hit = self.lookup_in(key, now, target, dst);
        if let Lookup::Hit { len, .. } = hit {
            dst.truncate(len);
        }
        hit
    }

    fn lookup_in<D: ReplyBuf + ?Sized>(
        &self,
        key: &KeyRef<'_>,
        now: Instant,
        target: &ReplyTarget<'_>,
        dst: &mut D,
    ) -> Lookup {
        let hash = key.hash();
        let now = self.clock.nanos(now);
        let mut guard = self.partition(hash);
        let part = &mut *guard;
        let Some(slot) = part.find(hash, key) else {
            part.stats.misses += 1;
            return Lookup::Miss;
        };
        let Some(entry) = part.entry_mut(slot) else {
            part.stats.misses += 1;
            return Lookup::Miss;
        };
        let age = entry.age(now);
        let ttl = entry.ttl_nanos();
        if age >= ttl {
            part.stats.misses += 1;
            return Lookup::Miss;
        }
        let age_secs = u32::try_from(age / NANOS_PER_SEC).unwrap_or(u32::MAX);
        let Some(len) = write_reply(
            dst.room(entry.wire.len(), target.max_size),
            &entry.wire,
            &entry.layout,
            target,
            TtlPatch::Age(age_secs),
        ) else {
            part.stats.write_errors += 1;
            part.stats.misses += 1;
            return Lookup::Miss;
        };
        entry.hits = entry.hits.saturating_add(1);
        entry.flags |= REFERENCED;
        let window = (ttl as f64 * f64::from(self.cfg.prefetch_window)) as u64;
        let prefetch = self.cfg.prefetch
            && entry.flags & (PREFETCHED | SERVFAIL) == 0
            && u32::from(entry.hits) >= self.cfg.prefetch_min_hits
            && ttl - age <= window;
        if prefetch {
            entry.flags |= PREFETCHED;
        }
        // A refresh brings every upstream's addresses anyway; an entry with less
        // than a second left is not worth completing.
        let complete = !prefetch
            && entry.flags & (INCOMPLETE | COMPLETING) == INCOMPLETE
            && u32::from(entry.hits) >= self.cfg.complete_min_hits
            && ttl - age >= NANOS_PER_SEC;
        if complete {
            entry.flags |= COMPLETING;
        }
        if prefetch {
            part.stats.prefetches += 1;
        }
        part.stats.hits += 1;
        Lookup::Hit {
            len,
            prefetch,
            complete,
        }
    }

    /// Serve-stale path, for when every upstream failed: an entry expired less than
    /// `max_stale` ago is written with every TTL set to `stale_answer_ttl`
    /// (RFC 8767). An entry that is still fresh (refilled meanwhile) is written as a
    /// normal hit. `None` when serve-stale is off, nothing usable is stored, the
    /// entry is a held SERVFAIL, or `dst` is too small.
    pub fn lookup_stale(
        &self,
        key: &KeyRef<'_>,
        now: Instant,
        target: &ReplyTarget<'_>,
        dst: &mut [u8],
    ) -> Option<usize> {
        self.lookup_stale_in(key, now, target, dst)
    }

    /// [`lookup_stale`](Self::lookup_stale) into a buffer sized as
    /// [`lookup_into`](Self::lookup_into) does; on success `dst` is the reply.
    pub fn lookup_stale_into(
        &self,
        key: &KeyRef<'_>,
        now: Instant,
        target: &ReplyTarget<'_>,
        dst: &mut Vec<u8>,
    ) -> Option<usize> {
        let len = self.lookup_stale_in(key, now, target, dst)?;
        dst.truncate(len);
        Some(len)
    }

    fn lookup_stale_in<D: ReplyBuf + ?Sized>(
        &self,
        key: &KeyRef<'_>,
        now: Instant,
        target: &ReplyTarget<'_>,
        dst: &mut D,
    ) -> Option<usize> {
        if !self.cfg.serve_stale {
            return None;
        }
        let hash = key.hash();
        let now = self.clock.nanos(now);
        let stale = self.stale_nanos();
        let mut guard = self.partition(hash);
        let part = &mut *guard;
        let slot = part.find(hash, key)?;
        let entry = part.entry_mut(slot)?;
        if entry.flags & SERVFAIL != 0 {
            return None;
        }
        let age = entry.age(now);
        let ttl = entry.ttl_nanos();
        let (patch, fresh) = if age < ttl {
            let secs = u32::try_from(age / NANOS_PER_SEC).unwrap_or(u32::MAX);
            (TtlPatch::Age(secs), true)
        } else if age - ttl < stale {
            (TtlPatch::Set(self.cfg.stale_answer_ttl), false)
        } else {
            return None;
        };
        let Some(len) = write_reply(
            dst.room(entry.wire.len(), target.max_size),
            &entry.wire,
            &entry.layout,
            target,
            patch,
        ) else {
            part.stats.write_errors += 1;
            return None;
        };
        entry.flags |= REFERENCED;
        if fresh {
            part.stats.hits += 1;
        } else {
            part.stats.stale += 1;
        }
        Some(len)
    }

    /// A version for a new flight: strictly increasing across the process, from 1.
    pub fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Stores an upstream answer for `key`: NOERROR with the question's type,
    /// NXDOMAIN/NODATA negatively per RFC 2308, SERVFAIL briefly per RFC 9520 (see
    /// the [`ttl`] policy for the rest). The answer's question must be the key's.
    /// Ignored ([`InsertOutcome::Superseded`]) when the entry holds a newer version
    /// than `version`; the same version overwrites. Allocates the entry. Its
    /// provenance is unknown: see [`Self::insert_traced`].
    pub fn insert(&self, key: &KeyRef<'_>, answer: &[u8], now: Instant, v: u64) -> InsertOutcome {
        self.insert_traced(key, answer, now, v, Origins::One(SourceId::UNKNOWN))
    }

    /// [`Self::insert`], with where the answer's records came from (see
    /// [`provenance`]); a replaced entry's provenance goes with it.
    pub fn insert_traced(
        &self,
        key: &KeyRef<'_>,
        answer: &[u8],
        now: Instant,
        version: u64,
        origins: Origins<'_>,
    ) -> InsertOutcome {
        let hash = key.hash();
        let (source, trace) = origins.compact();
        let prepared = self.prepare(key, answer);
        let now = self.clock.nanos(now);
        let mut guard = self.partition(hash);
        let part = &mut *guard;
        let entry = match prepared {
            Ok(entry) => Entry {
                inserted: now,
                version,
                source,
                ..entry
            },
            Err(reject) => {
                part.stats.rejected += 1;
                return InsertOutcome::Rejected(reject);
            }
        };
        let mut outcome = InsertOutcome::Inserted;
        let stale = self.stale_nanos();
        if let Some(slot) = part.find(hash, key) {
            if part.entry(slot).is_some_and(|old| old.version > version) {
                part.stats.superseded += 1;
                return InsertOutcome::Superseded;
            }
            let servable = |old: &Entry| {
                self.cfg.serve_stale
                    && old.flags & SERVFAIL == 0
                    && old.age(now).saturating_sub(old.ttl_nanos()) < stale
            };
            if entry.flags & SERVFAIL != 0 && part.entry(slot).is_some_and(servable) {
                part.stats.superseded += 1;
                return InsertOutcome::KeptStale;
            }
            part.remove(slot);
            outcome = InsertOutcome::Replaced;
        }
        part.add(hash, entry, trace, self.share, |e: &Entry| {
            e.age(now).saturating_sub(e.ttl_nanos()) >= stale
        });
        match outcome {
            InsertOutcome::Replaced => part.stats.replaced += 1,
            _ => part.stats.inserts += 1,
        }
        outcome
    }

    /// Checks and copies an answer into an entry (outside the lock; `inserted` and
    /// `version` are filled in by the caller).
    fn prepare(&self, key: &KeyRef<'_>, answer: &[u8]) -> Result<Entry, Unstorable> {
        let layout = AnswerLayout::parse(answer).map_err(Unstorable::Malformed)?;
        // QR=1 and OPCODE=QUERY.
        if !layout.is_response() || answer.get(2).is_none_or(|b| b & 0x78 != 0) {
            return Err(Unstorable::NotCacheable);
        }
        let policy = ttl::policy(&layout, &self.cfg).ok_or(Unstorable::NotCacheable)?;
        if policy.ttl == 0 && !self.cfg.serve_stale {
            return Err(Unstorable::NotCacheable);
        }
        let cost = entry::entry_cost(answer.len(), &layout);
        if cost > self.share {
            return Err(Unstorable::TooLarge);
        }
        let mut wire: Box<[u8]> = answer.into();
        let qend = layout.question_end();
        let name = wire
            .get_mut(HEADER_LEN..qend.saturating_sub(4))
            .ok_or(Unstorable::Mismatch)?;
        name.make_ascii_lowercase();
        layout.clamp_ttls(&mut wire, policy.lo, policy.ttl);
        let mut flags = key.flags();
        if policy.kind == Kind::ServFail {
            flags |= SERVFAIL;
        }
        let entry = Entry {
            wire,
            layout,
            inserted: 0,
            version: 0,
            ttl: policy.ttl,
            hits: 0,
            flags,
            answered: 0,
            source: SourceId::UNKNOWN,
        };
        if !entry.matches(key) {
            return Err(Unstorable::Mismatch);
        }
        Ok(entry)
    }

    /// Number of entries (locks every partition in turn: not for the hot path).
    pub fn len(&self) -> usize {
        self.partitions
            .iter()
            .map(|p| p.0.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged against `max_bytes` (wire bytes plus [`ENTRY_OVERHEAD`] per
    /// entry).
    pub fn bytes(&self) -> usize {
        self.partitions
            .iter()
            .map(|p| p.0.lock().unwrap_or_else(PoisonError::into_inner).bytes())
            .sum()
    }

    /// Counters summed over partitions.
    pub fn stats(&self) -> CacheStats {
        let mut total = CacheStats::default();
        for p in self.partitions.iter() {
            total += p.0.lock().unwrap_or_else(PoisonError::into_inner).stats;
        }
        total
    }
}

/// Where a hit is written: a slice as the caller sized it, or a `Vec` sized under
/// the partition lock to what the reply can need.
trait ReplyBuf {
    /// The bytes to write a reply to a stored answer of `stored` bytes into.
    fn room(&mut self, stored: usize, max_size: usize) -> &mut [u8];
}

impl ReplyBuf for [u8] {
    fn room(&mut self, _stored: usize, _max_size: usize) -> &mut [u8] {
        self
    }
}

impl ReplyBuf for Vec<u8> {
    fn room(&mut self, stored: usize, max_size: usize) -> &mut [u8] {
        // write_reply never needs more than the stored answer plus its headroom,
        // nor more than the client's limit (past it, it truncates first).
        let need = stored
            .saturating_add(crate::wire::answer::REPLY_HEADROOM)
            .min(max_size);
        self.clear();
        self.resize(need, 0);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::answer::tests::{a, response, soa};
    use crate::wire::answer::REPLY_HEADROOM;
    use crate::wire::Edns;
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RecordType;
    use std::time::Duration;

    /// Wire form of a dotted name, as given (case kept).
    fn wire_name(dotted: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in dotted.trim_end_matches('.').split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    fn key(lower: &[u8]) -> KeyRef<'_> {
        KeyRef {
            qname_lower: lower,
            qtype: 1,
            qclass: 1,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    fn target(qname: &[u8]) -> ReplyTarget<'_> {
        ReplyTarget {
            id: 7,
            flags: 0x0100,
            qname,
            edns: Some(Edns {
                udp_size: 1232,
                dnssec_ok: false,
                version: 0,
            }),
            max_size: 1232,
        }
    }

    fn a_answer(name: &str, ttl: u32) -> Vec<u8> {
        response(
            name,
            RecordType::A,
            ResponseCode::NoError,
            vec![a(name, ttl, 1)],
            vec![],
            None,
        )
    }

    fn cfg() -> CacheConfig {
        CacheConfig {
            max_bytes: 1 << 20,
            partitions: 16,
            ..CacheConfig::default()
        }
    }

    /// Looks `name` up at `now` and returns the decoded reply, if a hit.
    fn get(c: &PacketCache, name: &str, now: Instant) -> Option<(Message, bool)> {
        let lower = wire_name(&name.to_ascii_lowercase());
        let client = wire_name(name);
        let mut buf = [0u8; 2048];
        match c.lookup(&key(&lower), now, &target(&client), &mut buf) {
            Lookup::Hit { len, prefetch, .. } => {
                Some((Message::from_vec(&buf[..len]).unwrap(), prefetch))
            }
            Lookup::Miss => None,
        }
    }

    fn put(
        c: &PacketCache,
        name: &str,
        answer: &[u8],
        now: Instant,
        version: u64,
    ) -> InsertOutcome {
        let lower = wire_name(&name.to_ascii_lowercase());
        c.insert(&key(&lower), answer, now, version)
    }

    #[test]
    fn ttls_age_by_whole_seconds_and_expire() {
        let c = PacketCache::new(cfg());
        let t0 = Instant::now();
        assert_eq!(
            put(
                &c,
                "www.example.com",
                &a_answer("www.example.com.", 300),
                t0,
                1
            ),
            InsertOutcome::Inserted
        );
        let (m, _) = get(&c, "www.example.com", t0).unwrap();
        assert_eq!(m.answers[0].ttl, 300);
        assert_eq!(m.metadata.id, 7);
        let (m, _) = get(&c, "www.example.com", t0 + Duration::from_millis(100_900)).unwrap();
        assert_eq!(m.answers[0].ttl, 200);
        assert!(get(&c, "www.example.com", t0 + Duration::from_millis(299_999)).is_some());
        assert!(get(&c, "www.example.com", t0 + Duration::from_secs(300)).is_none());
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.inserts), (3, 1, 1));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn stored_ttls_are_clamped() {
        let c = PacketCache::new(CacheConfig {
            min_ttl: 30,
            max_ttl: 60,
            ..cfg()
        });
        let t0 = Instant::now();
        put(&c, "long.example", &a_answer("long.example.", 3600), t0, 1);
        put(&c, "short.example", &a_answer("short.example.", 5), t0, 1);
        assert_eq!(get(&c, "long.example", t0).unwrap().0.answers[0].ttl, 60);
        assert!(get(&c, "long.example", t0 + Duration::from_secs(60)).is_none());
        assert_eq!(get(&c, "short.example", t0).unwrap().0.answers[0].ttl, 30);
        assert_eq!(
            get(&c, "short.example", t0 + Duration::from_secs(20))
                .unwrap()
                .0
                .answers[0]
                .ttl,
            10
        );
    }

    #[test]
    fn negative_ttl_from_soa() {
        let c = PacketCache::new(cfg());
        let t0 = Instant::now();
        let nx = response(
            "nx.example.com.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
            vec![soa("example.com.", 900, 300)],
            None,
        );
        assert_eq!(
            put(&c, "nx.example.com", &nx, t0, 1),
            InsertOutcome::Inserted
        );
        let (m, _) = get(&c, "NX.example.com", t0 + Duration::from_secs(100)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // SOA shown with the negative TTL, aged
        assert_eq!(m.authorities[0].ttl, 200);
        assert!(get(&c, "nx.example.com", t0 + Duration::from_secs(300)).is_none());
        // no SOA: not cached
        let bare = response(
            "nx2.example.com.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
            vec![],
            None,
        );
        assert_eq!(
            put(&c, "nx2.example.com", &bare, t0, 1),
            InsertOutcome::Rejected(Unstorable::NotCacheable)
        );
    }

    #[test]
    fn servfail_never_displaces_a_stale_servable_answer() {
        let c = PacketCache::new(cfg());
        let t0 = Instant::now();
        let ok = response(
            "st.example.",
            RecordType::A,
            ResponseCode::NoError,
            vec![a("st.example.", 10, 1)],
            vec![],
            None,
        );
        let sf = response(
            "st.example.",
            RecordType::A,
            ResponseCode::ServFail,
            vec![],
            vec![],
            None,
        );
        assert_eq!(put(&c, "st.example", &ok, t0, 1), InsertOutcome::Inserted);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            put(&c, "st.example", &sf, later, 2),
            InsertOutcome::KeptStale
        );
        let lower = wire_name("st.example");
        let mut buf = [0u8; 512];
        assert!(c
            .lookup_stale(&key(&lower), later, &target(&lower), &mut buf)
            .is_some());
        // Once the old answer is past serving stale, the SERVFAIL is held.
        let much_later = t0 + Duration::from_secs(3 * 86_400);
        assert_eq!(
            put(&c, "st.example", &sf, much_later, 3),
            InsertOutcome::Replaced
        );
    }

    #[test]
    fn servfail_is_held_briefly_and_never_served_stale() {
        let c = PacketCache::new(CacheConfig {
            servfail_ttl: 5,
            ..cfg()
        });
        let t0 = Instant::now();
        let sf = response(
            "sf.example.",
            RecordType::A,
            ResponseCode::ServFail,
            vec![],
            vec![],
            None,
        );
        assert_eq!(put(&c, "sf.example", &sf, t0, 1), InsertOutcome::Inserted);
        let (m, prefetch) = get(&c, "sf.example", t0 + Duration::from_secs(4)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(!prefetch);
        assert!(get(&c, "sf.example", t0 + Duration::from_secs(5)).is_none());
        let lower = wire_name("sf.example");
        let mut buf = [0u8; 512];
        assert_eq!(
            c.lookup_stale(
                &key(&lower),
                t0 + Duration::from_secs(6),
                &target(&lower),
                &mut buf
            ),
            None
        );
    }

    #[test]
    fn stale_window() {
        let c = PacketCache::new(CacheConfig {
            max_stale: Duration::from_secs(3600),
            ..cfg()
        });
        let t0 = Instant::now();
        put(&c, "s.example", &a_answer("s.example.", 60), t0, 1);
        let lower = wire_name("s.example");
        let client = wire_name("S.Example");
        let mut buf = [0u8; 512];
        let stale = |at: u64, buf: &mut [u8]| {
            c.lookup_stale(
                &key(&lower),
                t0 + Duration::from_secs(at),
                &target(&client),
                buf,
            )
        };
        // still fresh: aged normally
        let n = stale(10, &mut buf).unwrap();
        assert_eq!(Message::from_vec(&buf[..n]).unwrap().answers[0].ttl, 50);
        assert!(get(&c, "s.example", t0 + Duration::from_secs(61)).is_none());
        let n = stale(61, &mut buf).unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.answers[0].ttl, 30);
        assert_eq!(&buf[12..12 + client.len()], &client[..]);
        assert!(stale(60 + 3599, &mut buf).is_some());
        assert!(stale(60 + 3600, &mut buf).is_none());
        assert_eq!(c.stats().stale, 2);

        let off = PacketCache::new(CacheConfig {
            serve_stale: false,
            ..cfg()
        });
        put(&off, "s.example", &a_answer("s.example.", 60), t0, 1);
        let mut buf = [0u8; 512];
        assert!(off
            .lookup_stale(
                &key(&lower),
                t0 + Duration::from_secs(61),
                &target(&client),
                &mut buf
            )
            .is_none());
    }

    #[test]
    fn version_guard() {
        let c = PacketCache::new(cfg());
        let t0 = Instant::now();
        let v1 = c.next_version();
        let v2 = c.next_version();
        assert!(v2 > v1);
        assert_eq!(
            put(&c, "v.example", &a_answer("v.example.", 100), t0, v2),
            InsertOutcome::Inserted
        );
        // an older flight never overwrites
        assert_eq!(
            put(&c, "v.example", &a_answer("v.example.", 200), t0, v1),
            InsertOutcome::Superseded
        );
        assert_eq!(get(&c, "v.example", t0).unwrap().0.answers[0].ttl, 100);
        // the same flight may (its background merge)
        assert_eq!(
            put(&c, "v.example", &a_answer("v.example.", 300), t0, v2),
            InsertOutcome::Replaced
        );
        assert_eq!(get(&c, "v.example", t0).unwrap().0.answers[0].ttl, 300);
        let s = c.stats();
        assert_eq!((s.inserts, s.replaced, s.superseded), (1, 1, 1));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn key_includes_do_cd_and_qclass() {
        let c = PacketCache::new(cfg());
        let t0 = Instant::now();
        let lower = wire_name("k.example");
        let k = key(&lower);
        assert!(c.insert(&k, &a_answer("k.example.", 60), t0, 1).stored());
        let mut buf = [0u8; 512];
        let t = target(&lower);
        assert!(matches!(c.lookup(&k, t0, &t, &mut buf), Lookup::Hit { .. }));
        for other in [
            KeyRef {
                dnssec_ok: true,
                ..k
            },
            KeyRef {
                checking_disabled: true,
                ..k
            },
            KeyRef { qclass: 3, ..k },
            KeyRef { qtype: 28, ..k },
        ] {
            assert_eq!(
                c.lookup(&other, t0, &t, &mut buf),
                Lookup::Miss,
                "{other:?}"
            );
            // the stored answer's question is IN/A: another key cannot store it
            if other.qclass != 1 || other.qtype != 1 {
                assert_eq!(
                    c.insert(&other, &a_answer("k.example.", 60), t0, 1),
                    InsertOutcome::Rejected(Unstorable::Mismatch)
                );
            }
        }
        // DO and CD variants are separate entries
        assert!(c
            .insert(
                &KeyRef {
                    dnssec_ok: true,
                    ..k
                },
                &a_answer("k.example.", 90),
                t0,
                1
            )
            .stored());
        assert_eq!(c.len(), 2);
        // wrong name, non-lowercase key: mismatch
        let upper = wire_name("K.example");
        assert_eq!(
            c.insert(&key(&upper), &a_answer("k.example.", 60), t0, 1),
            InsertOutcome::Rejected(Unstorable::Mismatch)
        );
        assert_eq!(
            put(&c, "other.example", &a_answer("k.example.", 60), t0, 1),
            InsertOutcome::Rejected(Unstorable::Mismatch)
        );
    }

    #[test]
    fn case_insensitive_hit_with_client_case() {
        let c = PacketCache::new(cfg());
        let t0 = Instant::now();
        // the upstream answered with 0x20-randomized case
        put(
            &c,
            "www.example.com",
            &a_answer("wWW.exAMple.Com.", 60),
            t0,
            1,
        );
        let client = wire_name("WwW.ExAmPlE.cOm");
        let lower = wire_name("www.example.com");
        let mut buf = [0u8; 512];
        let Lookup::Hit { len, .. } = c.lookup(&key(&lower), t0, &target(&client), &mut buf) else {
            panic!("miss");
        };
        assert_eq!(&buf[12..12 + client.len()], &client[..]);
        let m = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(m.answers[0].name.to_ascii(), "WwW.ExAmPlE.cOm.");
    }

    #[test]
    fn rejects_uncacheable_and_oversized() {
        let c = PacketCache::new(CacheConfig {
            max_bytes: 16 * 1024,
            partitions: 16,
            ..CacheConfig::default()
        });
        let t0 = Instant::now();
        let mut query = a_answer("q.example.", 60);
        query[2] &= 0x7F; // QR=0
        assert_eq!(
            put(&c, "q.example", &query, t0, 1),
            InsertOutcome::Rejected(Unstorable::NotCacheable)
        );
        let refused = response(
            "q.example.",
            RecordType::A,
            ResponseCode::Refused,
            vec![],
            vec![],
            None,
        );
        assert_eq!(
            put(&c, "q.example", &refused, t0, 1).as_str(),
            "not_cacheable"
        );
        assert_eq!(
            put(&c, "q.example", b"\x00\x01", t0, 1),
            InsertOutcome::Rejected(Unstorable::Malformed(WireError::Truncated))
        );
        let big: Vec<_> = (0..100).map(|i| a("q.example.", 60, i)).collect();
        let big = response(
            "q.example.",
            RecordType::A,
            ResponseCode::NoError,
            big,
            vec![],
            None,
        );
        assert_eq!(
            put(&c, "q.example", &big, t0, 1),
            InsertOutcome::Rejected(Unstorable::TooLarge)
        );
        assert_eq!(c.stats().rejected, 4);
        assert!(c.is_empty());
    }

    #[test]
    fn small_dst_is_a_miss() {
        let c = PacketCache::new(cfg());
        let t0 = Instant::now();
        let answer = a_answer("d.example.", 60);
        put(&c, "d.example", &answer, t0, 1);
        let lower = wire_name("d.example");
        let mut small = [0u8; 20];
        assert_eq!(
            c.lookup(&key(&lower), t0, &target(&lower), &mut small),
            Lookup::Miss
        );
        assert_eq!(c.stats().write_errors, 1);
        let mut exact = vec![0u8; answer.len() + REPLY_HEADROOM];
        assert!(matches!(
            c.lookup(&key(&lower), t0, &target(&lower), &mut exact),
            Lookup::Hit { .. }
        ));
    }

    #[test]
    fn prefetch_fires_once_per_entry() {
        let c = PacketCache::new(CacheConfig {
            prefetch_min_hits: 2,
            prefetch_window: 0.1,
            ..cfg()
        });
        let t0 = Instant::now();
        put(&c, "p.example", &a_answer("p.example.", 100), t0, 1);
        let at = |s: u64| get(&c, "p.example", t0 + Duration::from_secs(s)).unwrap().1;
        assert!(!at(1)); // 1 hit, not in window
        assert!(!at(2)); // popular, not in window
        assert!(at(91)); // popular and in the last 10%
        assert!(!at(92)); // already asked
        assert!(!at(99));
        // the refresh starts a new entry generation with the full TTL
        let t1 = t0 + Duration::from_secs(95);
        put(&c, "p.example", &a_answer("p.example.", 100), t1, 2);
        let at = |s: u64| get(&c, "p.example", t1 + Duration::from_secs(s)).unwrap().1;
        assert!(!at(1));
        assert_eq!(
            get(&c, "p.example", t1 + Duration::from_secs(1))
                .unwrap()
                .0
                .answers[0]
                .ttl,
            99
        );
        assert!(at(95));
        assert!(!at(96));
        assert_eq!(c.stats().prefetches, 2);
        // an unpopular entry never asks
        put(&c, "u.example", &a_answer("u.example.", 100), t0, 1);
        assert!(
            !get(&c, "u.example", t0 + Duration::from_secs(95))
                .unwrap()
                .1
        );
    }

    #[test]
    fn flood_stays_bounded_and_popular_names_survive() {
        let max_bytes = 1 << 20;
        let c = PacketCache::new(CacheConfig {
            max_bytes,
            partitions: 16,
            ..CacheConfig::default()
        });
        let t0 = Instant::now();
        let popular: Vec<String> = (0..32).map(|i| format!("popular{i}.example")).collect();
        for name in &popular {
            assert!(put(&c, name, &a_answer(&format!("{name}."), 3600), t0, 1).stored());
        }
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for batch in 0..100 {
            for i in 0..1000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let name = format!("r{seed:016x}.flood.example");
                let outcome = put(&c, &name, &a_answer(&format!("{name}."), 3600), t0, 1);
                assert!(outcome.stored(), "{outcome:?}");
                if i % 100 == 0 {
                    for name in &popular {
                        assert!(
                            get(&c, name, t0).is_some(),
                            "{name} evicted in batch {batch}"
                        );
                    }
                }
            }
            assert!(c.bytes() <= max_bytes, "{} > {max_bytes}", c.bytes());
        }
        let s = c.stats();
        assert!(s.evictions > 90_000, "{s:?}");
        assert!(c.len() < 10_000);
        for name in &popular {
            assert!(get(&c, name, t0).is_some(), "{name} did not survive");
        }
    }

    #[test]
    fn dead_entries_are_evicted_first() {
        // one partition, room for a handful of entries
        let answer = a_answer("d0.example.", 10);
        let cost = entry::entry_cost(answer.len(), &AnswerLayout::parse(&answer).unwrap());
        let c = PacketCache::new(CacheConfig {
            max_bytes: cost * 4,
            partitions: 1,
            max_stale: Duration::from_secs(10),
            ..CacheConfig::default()
        });
        let t0 = Instant::now();
        put(&c, "d0.example", &a_answer("d0.example.", 10), t0, 1);
        for i in 1..4 {
            let name = format!("d{i}.example");
            put(&c, &name, &a_answer(&format!("{name}."), 3600), t0, 1);
        }
        // every entry is referenced; d0 then dies (TTL 10 + stale 10)
        for i in 0..4 {
            assert!(get(&c, &format!("d{i}.example"), t0).is_some());
        }
        let t1 = t0 + Duration::from_secs(30);
        // a dead entry gets no second chance, even referenced
        put(&c, "n1.example", &a_answer("n1.example.", 3600), t1, 1);
        let s = c.stats();
        assert_eq!((s.evictions, s.expired_evictions), (1, 1));
        let lower = wire_name("d0.example");
        let mut buf = [0u8; 512];
        assert!(c
            .lookup_stale(&key(&lower), t1, &target(&lower), &mut buf)
            .is_none());
        // the next insert sweeps past the referenced live entries (clearing their
        // bits) and takes the one that was never hit
        put(&c, "n2.example", &a_answer("n2.example.", 3600), t1, 1);
        assert_eq!(c.stats().evictions, 2);
        for i in 1..4 {
            assert!(
                get(&c, &format!("d{i}.example"), t1).is_some(),
                "d{i} evicted"
            );
        }
        assert!(
            get(&c, "n1.example", t1).is_none(),
            "unreferenced entry kept"
        );
        assert!(get(&c, "n2.example", t1).is_some());
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PacketCache>();
        let c = std::sync::Arc::new(PacketCache::new(cfg()));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let name = format!("t{t}-{i}.example");
                        put(
                            &c,
                            &name,
                            &a_answer(&format!("{name}."), 60),
                            t0,
                            c.next_version(),
                        );
                        assert!(get(&c, &name, t0).is_some());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(c.len(), 2000);
        assert_eq!(c.stats().hits, 2000);
    }
}

//! Rate limiting per client prefix (`[ratelimit]`), one table for the whole process.
//!
//! The kernel spreads one client's UDP queries over every shard (SO_REUSEPORT hashes
//! the source port too), so a bucket per shard would let a client through at `qps`
//! times the shard count. [`RateLimiter`] is therefore shared by all shards, like the
//! cache and the flight table: partitioned by the hash of the client prefix (ahash
//! with random per-process keys: a client cannot aim at one partition), each
//! partition behind its own `Mutex`, held for one table probe and a few arithmetic
//! operations: never across an await or a syscall.
//!
//! - **Prefix.** Clients are grouped by prefix ([`ClientPrefix`]): `ipv4_prefix` bits
//!   (default /24) of an IPv4 address, `ipv6_prefix` bits (default /56, a typical
//!   customer site) of an IPv6 one; an IPv4-mapped IPv6 client counts as IPv4.
//! - **Token bucket.** Each prefix holds up to `burst` tokens, refilled at `qps` per
//!   second; a query takes one or is limited. A prefix seen for the first time starts
//!   full. Time is passed in ([`RateLimiter::check`] takes `now`), so tests step a
//!   clock; a `now` older than the bucket's last one (another shard's, taken a little
//!   earlier) refills nothing.
//! - **Bound.** At most `max_tracked` prefixes: `max_tracked / partitions` per
//!   partition. Each partition keeps its prefixes in least-recently-seen order (an
//!   intrusive list over a slab); a new prefix at the bound evicts the least recently
//!   seen one of its partition, counted ([`RateLimiter::evictions`]). The prefix most
//!   likely evicted is one idle long enough to have refilled, which loses nothing.
//! - **Reload.** The parameters ([`RateLimit`]) are passed to every check, so a
//!   reload applies at once; a smaller bound shrinks a partition at its next insert.
//!
//! - **Reservation.** A stream query is not refused: [`RateLimiter::reserve`] takes
//!   its token ahead of the refill (the bucket goes below zero) and says how long
//!   to wait for it, up to a bound; the debt makes the next reservation wait longer,
//!   so a prefix gets its `qps` however many connections it opens.
//!
//! `qps` and `burst` limit UDP (the shard decides): a truncated reply sends a real
//! client to TCP, which a spoofed source cannot complete. The section's stream keys
//! (`stream_qps`, `new_connections_per_second`, `new_tls_sessions_per_second`) are
//! limits of their own on the same prefixes, each with its own table
//! (`stream_rates`).
//!
//! Memory: a tracked prefix costs about 64 bytes (slot and index), so the default
//! bound of 65536 prefixes is about 4 MiB. Slots and index grow with the number of
//! prefixes seen, up to the bound, and are then reused: no allocation at steady state.

use super::access::{client_v4, mask128, mask32};
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// What a client over its rate gets (UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitAction {
    /// An empty reply with TC=1 and the question: a real client retries over TCP,
    /// which is not limited.
    #[default]
    Truncate = 0,
    /// No answer.
    Drop = 1,
}

impl RateLimitAction {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncate => "truncate",
            Self::Drop => "drop",
        }
    }
}

/// `[ratelimit]`, as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Queries per second per client prefix, sustained; 0 turns limiting off
    /// (the default).
    pub qps: u32,
    /// Queries a prefix may send at once after being quiet (the bucket size);
    /// 0 means the same as `qps`.
    pub burst: u32,
    /// Bits of an IPv4 client address that make its prefix. Default 24.
    pub ipv4_prefix: u8,
    /// Bits of an IPv6 client address that make its prefix. Default 56.
    pub ipv6_prefix: u8,
    /// What a client over its rate gets. Default `truncate`.
    pub action: RateLimitAction,
    /// Bound on the prefixes tracked at once (the least recently seen is evicted
    /// past it). Default 65536.
    pub max_tracked: usize,
    /// Queries per second per client prefix over TCP, DoT and DoH together,
    /// sustained; a stream over it is slowed down, not failed
    /// (`stream_rates`). 0 turns it off (the default).
    pub stream_qps: u32,
    /// Stream queries a prefix may send at once after being quiet; 0 means the
    /// same as `stream_qps`.
    pub stream_burst: u32,
    /// New stream connections (TCP, DoT, DoH) per second per client prefix; past
    /// it a connection is closed at accept. The bucket holds one second's worth.
    /// 0 turns it off (the default).
    pub new_connections_per_second: u32,
    /// New TLS sessions (DoT, DoH: a handshake started) per second per client
    /// prefix; past it a connection is closed at accept, before the handshake.
    /// The bucket holds one second's worth. 0 turns it off (the default).
    pub new_tls_sessions_per_second: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            qps: 0,
            burst: 0,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            action: RateLimitAction::Truncate,
            max_tracked: 65_536,
            stream_qps: 0,
            stream_burst: 0,
            new_connections_per_second: 0,
            new_tls_sessions_per_second: 0,
        }
    }
}

/// Largest `qps` and `burst`.
const MAX_RATE: u32 = 1_000_000;
/// Largest `max_tracked` (about 1 GiB of table).
const MAX_TRACKED: usize = 1 << 24;

/// A `[ratelimit]` value out of range; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitConfigError {
    /// `qps` or `burst` too large.
    #[error("ratelimit.{0} must be at most {MAX_RATE}, got {1}")]
    Rate(&'static str, u32),
    /// A prefix length longer than the address.
    #[error("ratelimit.{0} must be at most {1}, got {2}")]
    Prefix(&'static str, u8, u8),
    /// `max_tracked` out of range.
    #[error("ratelimit.max_tracked must be from {PARTITIONS} (one per partition) to {MAX_TRACKED}, got {0}")]
    MaxTracked(usize),
}

impl RateLimitConfig {
    /// Checks the values a loader should refuse.
    pub fn validate(&self) -> Result<(), RateLimitConfigError> {
        for (key, v) in [
            ("qps", self.qps),
            ("burst", self.burst),
            ("stream_qps", self.stream_qps),
            ("stream_burst", self.stream_burst),
            (
                "new_connections_per_second",
                self.new_connections_per_second,
            ),
            (
                "new_tls_sessions_per_second",
                self.new_tls_sessions_per_second,
            ),
        ] {
            if v > MAX_RATE {
                return Err(RateLimitConfigError::Rate(key, v));
            }
        }
        if self.ipv4_prefix > 32 {
            return Err(RateLimitConfigError::Prefix(
                "ipv4_prefix",
                32,
                self.ipv4_prefix,
            ));
        }
        if self.ipv6_prefix > 128 {
            return Err(RateLimitConfigError::Prefix(
                "ipv6_prefix",
                128,
                self.ipv6_prefix,
            ));
        }
        if !(PARTITIONS..=MAX_TRACKED).contains(&self.max_tracked) {
            return Err(RateLimitConfigError::MaxTracked(self.max_tracked));
        }
        Ok(())
    }
}

/// The parameters of one check, from a validated [`RateLimitConfig`]. `Copy`: the
/// shard passes its own to the shared table with every check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens per second.
    pub qps: f64,
    /// Bucket size, at least 1.
    pub burst: f64,
    /// Bits of an IPv4 client address that make its prefix (at most 32).
    pub ipv4_prefix: u8,
    /// Bits of an IPv6 client address that make its prefix (at most 128).
    pub ipv6_prefix: u8,
    /// What a limited client gets.
    pub action: RateLimitAction,
    /// Bound on tracked prefixes, all partitions together.
    pub max_tracked: usize,
}

impl RateLimit {
    /// The limit a section asks for; None when limiting is off (`qps = 0`).
    pub fn new(config: &RateLimitConfig) -> Option<Self> {
        Self::with_rate(config, config.qps, config.burst)
    }

    /// A limit of `rate` per second and a bucket of `burst` (0: `rate`) on the
    /// section's prefixes and bound; None when `rate` is 0.
    pub fn with_rate(config: &RateLimitConfig, rate: u32, burst: u32) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        let burst = if burst == 0 { rate } else { burst };
        Some(Self {
            qps: f64::from(rate),
            burst: f64::from(burst.max(1)),
            ipv4_prefix: config.ipv4_prefix.min(32),
            ipv6_prefix: config.ipv6_prefix.min(128),
            action: config.action,
            max_tracked: config.max_tracked.max(1),
        })
    }
}

/// A client's prefix: the address with the bits past the prefix cleared, and its
/// family (an IPv4 prefix never equals an IPv6 one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientPrefix {
    bits: u128,
    v4: bool,
}

impl ClientPrefix {
    /// The prefix `client` belongs to under `limit`.
    pub fn of(client: IpAddr, limit: &RateLimit) -> Self {
        match (client_v4(client), client) {
            (Some(v4), _) => Self {
                bits: u128::from(u32::from(v4) & mask32(limit.ipv4_prefix)),
                v4: true,
            },
            (None, IpAddr::V6(v6)) => Self {
                bits: u128::from(v6) & mask128(limit.ipv6_prefix),
                v4: false,
            },
            // client_v4 is Some for every IPv4 address.
            (None, IpAddr::V4(v4)) => Self {
                bits: u128::from(u32::from(v4)),
                v4: true,
            },
        }
    }
}

/// What the table says about one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the rate.
    Pass,
    /// Over it: apply this action.
    Limit(RateLimitAction),
}

/// What the table says about one stream query ([`RateLimiter::reserve`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reservation {
    /// A token was there: go on.
    Now,
    /// The token is taken ahead of its refill: go on after this long.
    After(std::time::Duration),
    /// The prefix owes more than the longest wait allowed: nothing taken.
    Over,
}

/// Partitions of the shared table (a power of two). Enough that 2 to 64 shards
/// rarely meet on one lock; each is a few cache lines when empty.
pub const PARTITIONS: usize = 64;

/// No slot (list ends).
const NIL: u32 = u32::MAX;

/// One tracked prefix: its bucket and its place in the recency list.
#[derive(Debug, Clone, Copy)]
struct Slot {
    prefix: ClientPrefix,
    hash: u64,
    tokens: f64,
    seen: Instant,
    /// Toward the most recently seen.
    newer: u32,
    /// Toward the least recently seen.
    older: u32,
}

/// One partition: a slab of slots, an index by prefix, and the recency list.
#[derive(Debug)]
struct Partition {
    index: HashTable<u32>,
    slots: Vec<Slot>,
    newest: u32,
    oldest: u32,
    evictions: u64,
}

impl Default for Partition {
    fn default() -> Self {
        Self {
            index: HashTable::new(),
            slots: Vec::new(),
            newest: NIL,
            oldest: NIL,
            evictions: 0,
        }
    }
}

impl Partition {
    /// Takes a token for `prefix`, tracking it if new (evicting at `cap`): now
    /// (`Some(0.0)`), or, when the bucket is empty, ahead of its refill if that
    /// comes within `wait_up_to` seconds (`Some(wait)`: the bucket goes below
    /// zero); else None, nothing taken.
    fn take(
        &mut self,
        prefix: ClientPrefix,
        hash: u64,
        (limit, cap): (&RateLimit, usize),
        now: Instant,
        wait_up_to: f64,
    ) -> Option<f64> {
        let slots = &self.slots;
        let found = self
            .index
            .find(hash, |&i| {
                slots.get(i as usize).is_some_and(|s| s.prefix == prefix)
            })
            .copied();
        if let Some(i) = found {
            self.unlink(i);
            self.push_newest(i);
            let Some(slot) = self.slots.get_mut(i as usize) else {
                return Some(0.0);
            };
            let elapsed = now.saturating_duration_since(slot.seen).as_secs_f64();
            slot.tokens = (slot.tokens + elapsed * limit.qps).min(limit.burst);
            slot.seen = slot.seen.max(now);
            if slot.tokens >= 1.0 {
                slot.tokens -= 1.0;
                return Some(0.0);
            }
            // Until the bucket is back at zero once this token is taken.
            let wait = (1.0 - slot.tokens) / limit.qps;
            if wait <= wait_up_to {
                slot.tokens -= 1.0;
                return Some(wait);
            }
            return None;
        }
        while self.slots.len() >= cap.max(1) && self.oldest != NIL {
            self.remove(self.oldest);
            self.evictions += 1;
        }
        let Ok(i) = u32::try_from(self.slots.len()) else {
            return Some(0.0);
        };
        self.slots.push(Slot {
            prefix,
            hash,
            // A new prefix starts with a full bucket, less this query.
            tokens: limit.burst - 1.0,
            seen: now,
            newer: NIL,
            older: NIL,
        });
        let slots = &self.slots;
        self.index
            .insert_unique(hash, i, |&j| slots.get(j as usize).map_or(0, |s| s.hash));
        self.push_newest(i);
        Some(0.0)
    }

    /// Takes slot `i` out of the recency list.
    fn unlink(&mut self, i: u32) {
        let Some(&Slot { newer, older, .. }) = self.slots.get(i as usize) else {
            return;
        };
        match self.slots.get_mut(newer as usize) {
            Some(n) => n.older = older,
            None => self.newest = older,
        }
        match self.slots.get_mut(older as usize) {
            Some(o) => o.newer = newer,
            None => self.oldest = newer,
        }
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.newer = NIL;
            s.older = NIL;
        }
    }

    /// Puts slot `i` (unlinked) at the newest end.
    fn push_newest(&mut self, i: u32) {
        let old_newest = self.newest;
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.older = old_newest;
            s.newer = NIL;
        }
        match self.slots.get_mut(old_newest as usize) {
            Some(n) => n.newer = i,
            None => self.oldest = i,
        }
        self.newest = i;
    }

    /// Forgets slot `i`: out of the list and the index; the last slot moves into
    /// its place so the slab stays dense.
    fn remove(&mut self, i: u32) {
        let Some(hash) = self.slots.get(i as usize).map(|s| s.hash) else {
            return;
        };
        self.unlink(i);
        if let Ok(entry) = self.index.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        let Some(last) = self.slots.len().checked_sub(1) else {
            return;
        };
        let last = last as u32;
        if last != i {
            // Relink the last slot under its new index.
            let moved = self.slots[last as usize];
            if let Some(n) = self.slots.get_mut(moved.newer as usize) {
                n.older = i;
            }
            if let Some(o) = self.slots.get_mut(moved.older as usize) {
                o.newer = i;
            }
            if self.newest == last {
                self.newest = i;
            }
            if self.oldest == last {
                self.oldest = i;
            }
            if let Some(slot) = self.index.find_mut(moved.hash, |&j| j == last) {
                *slot = i;
            }
        }
        self.slots.swap_remove(i as usize);
    }
}

/// The shared table of client prefixes and their buckets.
#[derive(Debug)]
pub struct RateLimiter {
    partitions: Box<[Mutex<Partition>]>,
    hasher: ahash::RandomState,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// Locks a partition; a poisoned lock (a panic elsewhere while held) is still usable:
/// the worst it holds is a bucket half updated.
fn lock(m: &Mutex<Partition>) -> MutexGuard<'_, Partition> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RateLimiter {
    /// An empty table of [`PARTITIONS`] partitions; nothing is allocated for
    /// prefixes until limiting is on and clients come.
    pub fn new() -> Self {
        Self::with_partitions(PARTITIONS)
    }

    /// An empty table of `partitions` partitions (rounded up to a power of two).
    pub fn with_partitions(partitions: usize) -> Self {
        let n = partitions.max(1).next_power_of_two();
        Self {
            partitions: (0..n).map(|_| Mutex::new(Partition::default())).collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// One query from `client` at `now`: within the rate, or the action for it.
    pub fn check(&self, limit: &RateLimit, client: IpAddr, now: Instant) -> RateVerdict {
        match self.take(limit, client, now, 0.0) {
            Some(_) => RateVerdict::Pass,
            None => RateVerdict::Limit(limit.action),
        }
    }

    /// One stream query from `client` at `now`: a token now, or one taken ahead
    /// of its refill and the wait until it is there (at most `max_wait`), or
    /// [`Reservation::Over`] when the prefix owes more than that. Reservations are
    /// served in the order they are made: a prefix's waits grow with its debt,
    /// and its rate stays `qps` however many connections it spreads over.
    pub fn reserve(
        &self,
        limit: &RateLimit,
        client: IpAddr,
        now: Instant,
        max_wait: std::time::Duration,
    ) -> Reservation {
        match self.take(limit, client, now, max_wait.as_secs_f64()) {
            Some(wait) if wait > 0.0 => {
                Reservation::After(std::time::Duration::from_secs_f64(wait))
            }
            Some(_) => Reservation::Now,
            None => Reservation::Over,
        }
    }

    fn take(&self, limit: &RateLimit, client: IpAddr, now: Instant, wait: f64) -> Option<f64> {
        let prefix = ClientPrefix::of(client, limit);
        let hash = self.hasher.hash_one(prefix);
        let n = self.partitions.len();
        let cap = (limit.max_tracked / n).max(1);
        let Some(partition) = self.partitions.get((hash as usize) & (n - 1)) else {
            return Some(0.0);
        };
        lock(partition).take(prefix, hash, (limit, cap), now, wait)
    }

    /// Prefixes tracked now (all partitions).
    pub fn tracked(&self) -> usize {
        self.partitions.iter().map(|p| lock(p).slots.len()).sum()
    }

    /// Prefixes evicted at the bound since startup (all partitions).
    pub fn evictions(&self) -> u64 {
        self.partitions.iter().map(|p| lock(p).evictions).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(qps: u32, burst: u32, max_tracked: usize) -> RateLimit {
        RateLimit::new(&RateLimitConfig {
            qps,
            burst,
            max_tracked,
            ..RateLimitConfig::default()
        })
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// How many of `n` queries at `now` pass.
    fn passes(t: &RateLimiter, l: &RateLimit, client: &str, n: usize, now: Instant) -> usize {
        (0..n)
            .filter(|_| t.check(l, ip(client), now) == RateVerdict::Pass)
            .count()
    }

    #[test]
    fn burst_then_refill_at_qps_with_a_stepped_clock() {
        let t = RateLimiter::new();
        let l = limit(10, 5, 1024);
        let t0 = Instant::now();
        assert_eq!(passes(&t, &l, "192.0.2.1", 20, t0), 5, "the burst");
        assert_eq!(
            t.check(&l, ip("192.0.2.1"), t0),
            RateVerdict::Limit(RateLimitAction::Truncate)
        );
        // 100 ms at 10 qps: one token.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(passes(&t, &l, "192.0.2.1", 5, t1), 1);
        // 350 ms more: three and a half tokens, three whole.
        let t2 = t1 + Duration::from_millis(350);
        assert_eq!(passes(&t, &l, "192.0.2.1", 5, t2), 3);
        // The half token is kept: 50 ms more completes it.
        let t3 = t2 + Duration::from_millis(50);
        assert_eq!(passes(&t, &l, "192.0.2.1", 5, t3), 1);
        // A long pause refills to the burst, no more.
        let t4 = t3 + Duration::from_secs(3600);
        assert_eq!(passes(&t, &l, "192.0.2.1", 50, t4), 5);
        // A clock behind the bucket's (another shard's now) refills nothing.
        assert_eq!(passes(&t, &l, "192.0.2.1", 5, t3), 0);
    }

    #[test]
    fn burst_zero_means_qps() {
        let t = RateLimiter::new();
        let l = limit(7, 0, 1024);
        assert_eq!(l.burst, 7.0);
        assert_eq!(passes(&t, &l, "192.0.2.1", 20, Instant::now()), 7);
        assert_eq!(
            RateLimit::new(&RateLimitConfig::default()),
            None,
            "qps 0: off"
        );
    }

    #[test]
    fn clients_share_the_bucket_of_their_prefix() {
        let t = RateLimiter::new();
        let l = limit(1, 4, 1024);
        let now = Instant::now();
        // 192.0.2.0/24 is one prefix (ipv4_prefix 24)...
        assert_eq!(passes(&t, &l, "192.0.2.1", 2, now), 2);
        assert_eq!(passes(&t, &l, "192.0.2.200", 5, now), 2);
        // ...and the v4-mapped form of one of its addresses is in it too.
        assert_eq!(passes(&t, &l, "::ffff:192.0.2.9", 1, now), 0);
        // Another /24 has its own bucket.
        assert_eq!(passes(&t, &l, "192.0.3.1", 5, now), 4);
        // IPv6: /56 by default.
        assert_eq!(passes(&t, &l, "2001:db8:0:ff::1", 3, now), 3);
        assert_eq!(passes(&t, &l, "2001:db8:0:1::2", 3, now), 1);
        assert_eq!(passes(&t, &l, "2001:db8:0:100::1", 5, now), 4);
        assert_eq!(t.tracked(), 4);
    }

    #[test]
    fn prefixes_are_the_configured_bits() {
        let mut l = limit(1, 1, 1024);
        l.ipv4_prefix = 32;
        l.ipv6_prefix = 128;
        assert_ne!(
            ClientPrefix::of(ip("192.0.2.1"), &l),
            ClientPrefix::of(ip("192.0.2.2"), &l)
        );
        l.ipv4_prefix = 0;
        l.ipv6_prefix = 0;
        assert_eq!(
            ClientPrefix::of(ip("192.0.2.1"), &l),
            ClientPrefix::of(ip("203.0.113.7"), &l)
        );
        assert_ne!(
            ClientPrefix::of(ip("0.0.0.0"), &l),
            ClientPrefix::of(ip("::"), &l),
            "the families never share a bucket"
        );
    }

    #[test]
    fn at_the_bound_the_least_recently_seen_prefix_is_evicted_and_counted() {
        let t = RateLimiter::with_partitions(1);
        let l = limit(1, 2, 3);
        let now = Instant::now();
        for c in ["10.0.1.1", "10.0.2.1", "10.0.3.1"] {
            assert_eq!(passes(&t, &l, c, 2, now), 2, "{c}");
        }
        assert_eq!((t.tracked(), t.evictions()), (3, 0));
        // 10.0.1.0/24 is seen again: now 10.0.2.0/24 is the least recent.
        assert_eq!(passes(&t, &l, "10.0.1.1", 1, now), 0);
        assert_eq!(passes(&t, &l, "10.0.4.1", 1, now), 1);
        assert_eq!((t.tracked(), t.evictions()), (3, 1));
        // The evicted prefix comes back with a full bucket (and evicts 10.0.3.0/24).
        assert_eq!(passes(&t, &l, "10.0.2.1", 3, now), 2);
        assert_eq!((t.tracked(), t.evictions()), (3, 2));
        // Those still tracked kept their (empty) buckets.
        assert_eq!(passes(&t, &l, "10.0.1.1", 1, now), 0);
        assert_eq!(passes(&t, &l, "10.0.4.1", 2, now), 1);
        // A flood of new prefixes never grows the table past the bound.
        for i in 0..10_000u32 {
            let a = std::net::Ipv4Addr::from(0x0B00_0000 + (i << 8));
            t.check(&l, IpAddr::V4(a), now);
        }
        assert_eq!(t.tracked(), 3);
        assert_eq!(t.evictions(), 2 + 10_000);
    }

    #[test]
    fn a_smaller_bound_after_a_reload_shrinks_the_table() {
        let t = RateLimiter::with_partitions(1);
        let now = Instant::now();
        let big = limit(1, 1, 100);
        for i in 0..100u32 {
            t.check(&big, IpAddr::V4(std::net::Ipv4Addr::from(i << 8)), now);
        }
        assert_eq!(t.tracked(), 100);
        let small = limit(1, 1, 10);
        t.check(&small, ip("203.0.113.1"), now);
        assert_eq!(t.tracked(), 10);
        // The most recent survived; the oldest went.
        assert_eq!(
            passes(&t, &small, "0.0.99.1", 1, now),
            0,
            "still tracked, empty"
        );
        assert_eq!(passes(&t, &small, "0.0.0.1", 1, now), 1, "evicted, fresh");
    }

    #[test]
    fn the_recency_list_stays_consistent_under_churn() {
        let t = RateLimiter::with_partitions(1);
        let l = limit(1000, 3, 16);
        let mut now = Instant::now();
        for round in 0..2000u32 {
            let client = IpAddr::V4(std::net::Ipv4Addr::from((round * 7919 % 40) << 8));
            t.check(&l, client, now);
            now += Duration::from_millis(1);
            let p = lock(&t.partitions[0]);
            // Walk oldest to newest: every slot once, links agree, index agrees.
            let mut seen = 0;
            let mut i = p.oldest;
            let mut prev = NIL;
            while i != NIL {
                let s = p.slots[i as usize];
                assert_eq!(s.older, prev);
                assert!(p.index.find(s.hash, |&j| j == i).is_some());
                prev = i;
                i = s.newer;
                seen += 1;
                assert!(seen <= p.slots.len());
            }
            assert_eq!(prev, p.newest);
            assert_eq!(seen, p.slots.len());
            assert_eq!(p.index.len(), p.slots.len());
            assert!(p.slots.len() <= 16);
        }
    }

    #[test]
    fn validation_names_the_key() {
        let bad = |c: RateLimitConfig| c.validate().unwrap_err().to_string();
        let d = RateLimitConfig::default();
        assert_eq!(d.validate(), Ok(()));
        let e = bad(RateLimitConfig {
            ipv4_prefix: 33,
            ..d.clone()
        });
        assert!(e.contains("ratelimit.ipv4_prefix"), "{e}");
        let e = bad(RateLimitConfig {
            ipv6_prefix: 129,
            ..d.clone()
        });
        assert!(e.contains("ratelimit.ipv6_prefix"), "{e}");
        let e = bad(RateLimitConfig {
            max_tracked: 10,
            ..d.clone()
        });
        assert!(e.contains("ratelimit.max_tracked"), "{e}");
        let e = bad(RateLimitConfig {
            burst: MAX_RATE + 1,
            ..d.clone()
        });
        assert!(e.contains("ratelimit.burst"), "{e}");
        let e = bad(RateLimitConfig {
            new_tls_sessions_per_second: MAX_RATE + 1,
            ..d
        });
        assert!(e.contains("ratelimit.new_tls_sessions_per_second"), "{e}");
    }
}

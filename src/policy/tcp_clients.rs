//! Open stream connections (TCP, DoT, DoH) per client prefix
//! (`limits.tcp_connections_per_client`), one table for the whole process.
//!
//! Clients are counted by the rate limiter's prefixes (`ratelimit.ipv4_prefix`,
//! `ratelimit.ipv6_prefix`: /24 and /56 by default), not by full address: one IPv6
//! /64 holds more addresses than there are ports, and a cap per address would let
//! it open thousands. The prefix lengths are read at start (a reload does not
//! change them).
//!
//! The kernel spreads one client's connections over every shard (SO_REUSEPORT), so
//! a cap counted per shard would let a client hold the cap times the shard count.
//! [`TcpClients`] is therefore shared, like the rate limiter: partitioned by the hash
//! of the address (ahash with random per-process keys), each partition a
//! `Mutex<HashMap<IpAddr, u32>>` held for one probe and one add: never across an
//! await or a syscall, and only at accept and at close, never per query.
//!
//! - **Cap.** [`TcpClients::acquire`] gives a [`ClientSlot`] unless the address has
//!   `cap` connections open already. The slot gives its count back when dropped
//!   (however the connection ends), and an address whose count drops to zero leaves
//!   the table: only addresses with an open connection are tracked.
//! - **Bound.** So the table never holds more addresses than there are open
//!   connections; on top of that it refuses a new address past `max_entries`, which
//!   the server sets to what its shards can hold open (connections closed for a
//!   newer one included while they drain).
//! - An IPv4-mapped IPv6 client counts as its IPv4 address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Open connections per client address, shared by all shards.
#[derive(Debug)]
pub struct TcpClients {
    parts: Box<[Mutex<HashMap<IpAddr, u32>>]>,
    /// Bits of an IPv4 and of an IPv6 address that make a client's prefix.
    prefix: (u8, u8),
    hasher: ahash::RandomState,
    /// Addresses in the table, all partitions.
    entries: AtomicUsize,
    max_entries: usize,
}

/// One open connection counted against its client address; counted down when
/// dropped.
#[derive(Debug)]
pub struct ClientSlot {
    table: Option<Arc<TcpClients>>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some(table) = &self.table {
            table.release(self.client);
        }
    }
}

impl TcpClients {
    /// A table of `partitions` (rounded up to a power of two) that tracks at most
    /// `max_entries` prefixes, a client's prefix being the first `prefix.0` bits
    /// of an IPv4 address or `prefix.1` of an IPv6 one.
    pub fn new(partitions: usize, max_entries: usize, prefix: (u8, u8)) -> Self {
        let n = partitions.max(1).next_power_of_two();
        Self {
            parts: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            prefix: (prefix.0.min(32), prefix.1.min(128)),
            hasher: ahash::RandomState::new(),
            entries: AtomicUsize::new(0),
            max_entries,
        }
    }

    fn part(&self, client: &IpAddr) -> MutexGuard<'_, HashMap<IpAddr, u32>> {
        let i = self.hasher.hash_one(client) as usize & (self.parts.len() - 1);
        // A panic under the lock cannot leave a count half-written: the map is
        // still consistent.
        self.parts[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more connection from `client`, unless it has `cap` open
    /// already or the table is full. `cap` 0: no cap, nothing tracked.
    pub fn acquire(self: &Arc<Self>, client: IpAddr, cap: usize) -> Option<ClientSlot> {
        let client = self.prefix_of(client);
        if cap == 0 {
            return Some(ClientSlot {
                table: None,
                client,
            });
        }
        let mut part = self.part(&client);
        match part.get_mut(&client) {
            Some(n) if *n as usize >= cap => return None,
            Some(n) => *n += 1,
            None => {
                // Reserve the entry first, so racing shards cannot pass the bound.
                if self.entries.fetch_add(1, Ordering::Relaxed) >= self.max_entries {
                    self.entries.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                part.insert(client, 1);
            }
        }
        drop(part);
        Some(ClientSlot {
            table: Some(Arc::clone(self)),
            client,
        })
    }

    fn release(&self, client: IpAddr) {
        let mut part = self.part(&client);
        let Some(n) = part.get_mut(&client) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            part.remove(&client);
            drop(part);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The prefix `client` is counted under, as an address with the other bits
    /// cleared (an IPv4-mapped IPv6 address is its IPv4 address).
    fn prefix_of(&self, client: IpAddr) -> IpAddr {
        match client.to_canonical() {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix.0))
                    .unwrap_or(0);
                IpAddr::from((u32::from(v4) & mask).to_be_bytes())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix.1))
                    .unwrap_or(0);
                IpAddr::from((u128::from(v6) & mask).to_be_bytes())
            }
        }
    }

    /// Connections open from `client`'s prefix.
    pub fn open(&self, client: IpAddr) -> u32 {
        let client = self.prefix_of(client);
        self.part(&client).get(&client).copied().unwrap_or(0)
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_up_to_the_cap_and_down_to_removal() {
        let t = Arc::new(TcpClients::new(4, 100, (32, 128)));
        let a = ip("192.0.2.1");
        let slots: Vec<_> = (0..3)
            .map(|_| t.acquire(a, 3).expect("under the cap"))
            .collect();
        assert_eq!(t.open(a), 3);
        assert!(t.acquire(a, 3).is_none(), "past the cap");
        assert_eq!(t.open(a), 3, "a refusal takes nothing");
        // Another address has a cap of its own.
        let b = t.acquire(ip("192.0.2.2"), 3).expect("another address");
        assert_eq!(t.tracked(), 2);
        drop(slots);
        assert_eq!(t.open(a), 0);
        assert_eq!(t.tracked(), 1, "removed at zero");
        drop(b);
        assert_eq!(t.tracked(), 0);
        assert!(t.parts.iter().all(|p| p.lock().unwrap().is_empty()));
        // Free again.
        assert!(t.acquire(a, 3).is_some());
    }

    #[test]
    fn mapped_v6_counts_as_v4() {
        let t = Arc::new(TcpClients::new(1, 100, (32, 128)));
        let _s = t.acquire(ip("::ffff:192.0.2.7"), 1).unwrap();
        assert!(t.acquire(ip("192.0.2.7"), 1).is_none());
        assert_eq!(t.open(ip("192.0.2.7")), 1);
    }

    #[test]
    fn new_addresses_stop_at_the_bound() {
        let t = Arc::new(TcpClients::new(8, 10, (32, 128)));
        let held: Vec<_> = (0..10u8)
            .map(|i| t.acquire(IpAddr::from([10, 0, 0, i]), 2).unwrap())
            .collect();
        assert!(t.acquire(ip("10.0.1.1"), 2).is_none(), "table full");
        assert_eq!(t.tracked(), 10);
        // A tracked address may still open up to its cap.
        assert!(t.acquire(IpAddr::from([10, 0, 0, 3]), 2).is_some());
        drop(held);
        assert_eq!(t.tracked(), 0);
        assert!(t.acquire(ip("10.0.1.1"), 2).is_some());
    }

    /// One IPv6 /64 (or /56) is one client, as is one IPv4 /24: its addresses
    /// share the cap.
    #[test]
    fn clients_are_counted_by_prefix() {
        let t = Arc::new(TcpClients::new(4, 100, (24, 56)));
        let held: Vec<_> = (1..=3u16)
            .map(|i| {
                let a = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0x1, 0, 0, 0, i);
                t.acquire(IpAddr::V6(a), 3).expect("under the cap")
            })
            .collect();
        assert!(
            t.acquire(ip("2001:db8:0:ff::9"), 3).is_none(),
            "same /56, past the cap"
        );
        assert!(t.acquire(ip("2001:db8:1::1"), 3).is_some(), "another /56");
        let v4: Vec<_> = (1..=2u8)
            .map(|i| t.acquire(IpAddr::from([198, 51, 100, i]), 2).unwrap())
            .collect();
        assert!(t.acquire(ip("198.51.100.200"), 2).is_none(), "same /24");
        assert!(t.acquire(ip("::ffff:198.51.100.7"), 2).is_none(), "mapped");
        assert_eq!(t.open(ip("198.51.100.99")), 2);
        assert!(t.acquire(ip("198.51.101.1"), 2).is_some(), "another /24");
        drop((held, v4));
    }

    #[test]
    fn cap_zero_tracks_nothing() {
        let t = Arc::new(TcpClients::new(1, 1, (32, 128)));
        let slots: Vec<_> = (0..50).map(|_| t.acquire(ip("::1"), 0).unwrap()).collect();
        assert_eq!(t.tracked(), 0);
        drop(slots);
        assert_eq!(t.tracked(), 0);
    }
}

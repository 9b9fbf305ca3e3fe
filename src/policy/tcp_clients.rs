//! Open TCP connections per client address (`limits.tcp_connections_per_client`),
//! one table for the whole process.
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
    /// `max_entries` addresses.
    pub fn new(partitions: usize, max_entries: usize) -> Self {
        let n = partitions.max(1).next_power_of_two();
        Self {
            parts: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
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
        let client = client.to_canonical();
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

    /// Connections open from `client`.
    pub fn open(&self, client: IpAddr) -> u32 {
        let client = client.to_canonical();
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
        let t = Arc::new(TcpClients::new(4, 100));
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
        let t = Arc::new(TcpClients::new(1, 100));
        let _s = t.acquire(ip("::ffff:192.0.2.7"), 1).unwrap();
        assert!(t.acquire(ip("192.0.2.7"), 1).is_none());
        assert_eq!(t.open(ip("192.0.2.7")), 1);
    }

    #[test]
    fn new_addresses_stop_at_the_bound() {
        let t = Arc::new(TcpClients::new(8, 10));
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

    #[test]
    fn cap_zero_tracks_nothing() {
        let t = Arc::new(TcpClients::new(1, 1));
        let slots: Vec<_> = (0..50).map(|_| t.acquire(ip("::1"), 0).unwrap()).collect();
        assert_eq!(t.tracked(), 0);
        drop(slots);
        assert_eq!(t.tracked(), 0);
    }
}

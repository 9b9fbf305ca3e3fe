//! Singleflight: at most one upstream flight per cache key across all shards, what
//! a flight delivers ([`FlightResult`]), and the flight itself as a state machine
//! ([`FlightMachine`]: events in, actions out, no clock, no I/O; its answers and
//! merge in [`state`]).
//!
//! The first query that misses the cache for a key becomes the flight's leader and
//! runs the tiers on its own shard; queries for the same key that arrive meanwhile,
//! on any shard, join as waiters and get the leader's result through a oneshot
//! channel, then patch it with their own ID and question case on their own shard.
//!
//! Invariants:
//! - The table is partitioned by the cache key's hash ([`KeyRef::hash`], random
//!   per process: a client cannot pick colliding names); a partition lock is held
//!   only to insert, join or remove, never across an await.
//! - A flight ends exactly once: [`FlightLeader::finish`] or, if the leader is
//!   dropped without finishing (task cancelled, shutdown), its `Drop` ends the flight
//!   with the failure result, so no waiter waits forever.
//! - A waiter waits at most a bound of its own ([`wait`]): a flight that overran
//!   everything its plan allows cannot hold a client forever.
//! - Waiters per flight are bounded by `max_waiters`. A query past the bound gets
//!   [`Join::Full`]: the caller resolves it on its own, without coalescing. Nobody is
//!   refused because a name is popular, and no flight grows without bound.

mod machine;
mod result;
pub mod state;

pub(crate) use machine::{Account, Action, Concluded, FlightMachine, Spender};
pub use result::{Answer, FlightResult};

use crate::cache::{Key, KeyRef};
use hashbrown::HashTable;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// What a waiter got from its flight.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited<R> {
    /// The flight's result.
    Done(R),
    /// The flight ended without sending it (its leader went away).
    Abandoned,
    /// Nothing within the waiter's bound.
    TimedOut,
}

/// Waits for a flight's result, at most `bound`.
pub async fn wait<R>(rx: oneshot::Receiver<R>, bound: Duration) -> Waited<R> {
    match tokio::time::timeout(bound, rx).await {
        Ok(Ok(result)) => Waited::Done(result),
        Ok(Err(_)) => Waited::Abandoned,
        Err(_) => Waited::TimedOut,
    }
}

struct Flight<R> {
    key: Key,
    /// The key's hash, kept so the table can grow without rehashing names.
    hash: u64,
    waiters: Vec<oneshot::Sender<R>>,
    serial: u64,
}

type Partition<R> = Mutex<HashTable<Flight<R>>>;

/// The shared table of flights in progress. `R` is what a flight delivers.
pub struct FlightTable<R> {
    partitions: Box<[Partition<R>]>,
    max_waiters: usize,
    serial: std::sync::atomic::AtomicU64,
}

/// The outcome of joining.
pub enum Join<R: Clone> {
    /// No flight for this key was in progress: this caller runs it.
    Leader(FlightLeader<R>),
    /// A flight is in progress: its result arrives here.
    Waiter(oneshot::Receiver<R>),
    /// A flight is in progress with `max_waiters` waiters: resolve alone.
    Full,
}

/// The right and duty to end one flight.
pub struct FlightLeader<R: Clone> {
    table: Arc<FlightTable<R>>,
    key: Key,
    serial: u64,
    failure: Option<R>,
}

impl<R: Clone> FlightTable<R> {
    /// A table with `partitions` partitions (rounded up to a power of two).
    pub fn new(partitions: usize, max_waiters: usize) -> Self {
        let n = partitions.max(1).next_power_of_two();
        Self {
            partitions: (0..n).map(|_| Mutex::new(HashTable::new())).collect(),
            max_waiters,
            serial: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn partition(&self, hash: u64) -> &Partition<R> {
        // The low bits pick the partition; hashbrown uses the high ones inside it.
        &self.partitions[(hash as usize) & (self.partitions.len() - 1)]
    }

    /// Joins the flight for `key` or starts it. `failure` is what waiters get if the
    /// leader is dropped without finishing. Only a new leader copies the key.
    pub fn join(self: &Arc<Self>, key: &KeyRef<'_>, failure: R) -> Join<R> {
        let hash = key.hash();
        let mut part = lock(self.partition(hash));
        if let Some(flight) = part.find_mut(hash, |f| f.key.key_ref() == *key) {
            if flight.waiters.len() >= self.max_waiters {
                return Join::Full;
            }
            let (tx, rx) = oneshot::channel();
            flight.waiters.push(tx);
            return Join::Waiter(rx);
        }
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = key.to_key();
        part.insert_unique(
            hash,
            Flight {
                key: key.clone(),
                hash,
                waiters: Vec::new(),
                serial,
            },
            |f| f.hash,
        );
        drop(part);
        Join::Leader(FlightLeader {
            table: Arc::clone(self),
            key,
            serial,
            failure: Some(failure),
        })
    }

    /// Flights in progress (all partitions; for metrics and tests).
    pub fn len(&self) -> usize {
        self.partitions.iter().map(|p| lock(p).len()).sum()
    }

    /// True when no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn end(&self, key: &Key, serial: u64, result: &R) -> usize {
        let key = key.key_ref();
        let hash = key.hash();
        let flight = {
            let mut part = lock(self.partition(hash));
            part.find_entry(hash, |f| f.key.key_ref() == key && f.serial == serial)
                .ok()
                .map(|entry| entry.remove().0)
        };
        let Some(flight) = flight else { return 0 };
        let mut delivered = 0;
        for tx in flight.waiters {
            if tx.send(result.clone()).is_ok() {
                delivered += 1;
            }
        }
        delivered
    }
}

impl<R: Clone> FlightLeader<R> {
    /// Ends the flight: every waiter gets `result`. Returns how many were waiting.
    pub fn finish(mut self, result: R) -> usize {
        self.failure = None;
        self.table.end(&self.key, self.serial, &result)
    }
}

impl<R: Clone> Drop for FlightLeader<R> {
    fn drop(&mut self) {
        if let Some(failure) = self.failure.take() {
            self.table.end(&self.key, self.serial, &failure);
        }
    }
}

/// Locks a partition; a poisoned lock (a panic elsewhere while held) is still usable
/// because every critical section leaves the map consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<R: Clone> std::fmt::Debug for FlightTable<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightTable")
            .field("partitions", &self.partitions.len())
            .field("max_waiters", &self.max_waiters)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            qname_lower: name.as_bytes().into(),
            qtype: 1,
            qclass: 1,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    #[test]
    fn one_leader_many_waiters_all_answered() {
        let table = Arc::new(FlightTable::<u32>::new(8, 100));
        let Join::Leader(leader) = table.join(&key("a").key_ref(), 0) else {
            panic!("first must lead")
        };
        let mut rxs = Vec::new();
        for _ in 0..10 {
            match table.join(&key("a").key_ref(), 0) {
                Join::Waiter(rx) => rxs.push(rx),
                _ => panic!("must wait"),
            }
        }
        assert!(matches!(
            table.join(&key("b").key_ref(), 0),
            Join::Leader(_)
        ));
        assert_eq!(leader.finish(42), 10);
        for mut rx in rxs {
            assert_eq!(rx.try_recv().unwrap(), 42);
        }
        assert!(table.is_empty());
        assert!(matches!(
            table.join(&key("a").key_ref(), 0),
            Join::Leader(_)
        ));
    }

    /// The waiter's own bound, on tokio's paused clock: a flight that never ends
    /// releases its waiter at the bound, not before; one that ends in time
    /// delivers; a dropped leader is told apart from a timeout.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_waits_at_most_its_bound() {
        let table = Arc::new(FlightTable::<u32>::new(4, 10));
        let _stuck = table.join(&key("stuck").key_ref(), 0);
        let Join::Waiter(rx) = table.join(&key("stuck").key_ref(), 0) else {
            panic!("must wait")
        };
        let bound = Duration::from_secs(5);
        let t0 = tokio::time::Instant::now();
        assert_eq!(wait(rx, bound).await, Waited::TimedOut);
        assert_eq!(t0.elapsed(), bound, "released at the bound, not before");

        let Join::Leader(leader) = table.join(&key("quick").key_ref(), 0) else {
            panic!("must lead")
        };
        let Join::Waiter(rx) = table.join(&key("quick").key_ref(), 0) else {
            panic!("must wait")
        };
        let waiter = tokio::spawn(wait(rx, bound));
        tokio::time::sleep(Duration::from_secs(1)).await;
        leader.finish(9);
        assert_eq!(waiter.await.unwrap(), Waited::Done(9));

        let leader = table.join(&key("gone").key_ref(), 0);
        let Join::Waiter(rx) = table.join(&key("gone").key_ref(), 0) else {
            panic!("must wait")
        };
        drop(leader);
        // The table hands the failure result to waiters of a dropped leader.
        assert_eq!(wait(rx, bound).await, Waited::Done(0));
        let (tx, rx) = oneshot::channel::<u32>();
        drop(tx);
        assert_eq!(wait(rx, bound).await, Waited::Abandoned);
    }

    #[test]
    fn waiters_are_bounded() {
        let table = Arc::new(FlightTable::<u32>::new(1, 2));
        let _leader = table.join(&key("a").key_ref(), 0);
        assert!(matches!(
            table.join(&key("a").key_ref(), 0),
            Join::Waiter(_)
        ));
        assert!(matches!(
            table.join(&key("a").key_ref(), 0),
            Join::Waiter(_)
        ));
        assert!(matches!(table.join(&key("a").key_ref(), 0), Join::Full));
    }

    #[test]
    fn dropped_leader_fails_its_waiters() {
        let table = Arc::new(FlightTable::<u32>::new(4, 10));
        let leader = table.join(&key("a").key_ref(), 7);
        let Join::Waiter(mut rx) = table.join(&key("a").key_ref(), 7) else {
            panic!()
        };
        drop(leader);
        assert_eq!(rx.try_recv().unwrap(), 7);
        assert!(table.is_empty());
    }

    #[test]
    fn keys_differ_by_type_class_and_bits() {
        let table = Arc::new(FlightTable::<u32>::new(4, 10));
        let base = key("a");
        let _l = table.join(&base.key_ref(), 0);
        let variants = [
            Key {
                qtype: 28,
                ..base.clone()
            },
            Key {
                qclass: 3,
                ..base.clone()
            },
            Key {
                dnssec_ok: true,
                ..base.clone()
            },
            Key {
                checking_disabled: true,
                ..base.clone()
            },
        ];
        for v in variants {
            assert!(matches!(table.join(&v.key_ref(), 0), Join::Leader(_)));
        }
    }

    #[test]
    fn concurrent_joins_from_threads_make_one_leader() {
        let table = Arc::new(FlightTable::<u32>::new(16, 1000));
        let leaders = std::sync::atomic::AtomicUsize::new(0);
        let held = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..25 {
                        if let Join::Leader(l) = table.join(&key("hot").key_ref(), 0) {
                            leaders.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            held.lock().unwrap().push(l);
                        }
                    }
                });
            }
        });
        assert_eq!(leaders.into_inner(), 1);
    }
}

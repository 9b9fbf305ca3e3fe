//! [`Partition`]: one locked shard of the cache, a slab of entries indexed by a hash
//! table, evicted with CLOCK.
//!
//! Layout: `slots` is a slab (`Vec<Option<Entry>>`, freed slots reused through
//! `free`); `table` maps the 64-bit key hash to a slot index (4 bytes + 1 control
//! byte per entry). The key bytes live only in the entry's wire question.
//!
//! Eviction is CLOCK (second chance): a hit sets the entry's reference bit; when an
//! insert would exceed the partition's byte share, the hand sweeps the slab,
//! clearing set bits and evicting the first entry whose bit is clear. Entries past
//! their stale deadline are evicted as soon as the hand meets them, whatever their
//! bit. A flood of one-hit names therefore only ever evicts one-hit names (and
//! popular entries not hit during a whole revolution of the hand), and a full
//! sweep is bounded by two revolutions.
//!
//! A merged entry's provenance ([`super::provenance`]) sits in `traced`, a side
//! table by slot that the hit path never looks at; it goes with its entry.
//!
//! Invariants: `bytes` is the sum of `cost()` over live entries plus the cost of
//! their traces, and never exceeds the share after an insert; `len` counts live entries; every live slot has exactly one
//! table index and every table index points at a live slot.

use hashbrown::HashTable;

use super::entry::{Entry, REFERENCED};
use super::key::KeyRef;
use super::provenance::{trace_cost, Run};
use super::CacheStats;

/// One partition of the cache, always used behind its mutex.
#[derive(Debug, Default)]
pub(super) struct Partition {
    table: HashTable<u32>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// The runs of merged entries, by slot.
    traced: hashbrown::HashMap<u32, Box<[Run]>>,
    hand: usize,
    bytes: usize,
    len: usize,
    pub(super) stats: CacheStats,
}

impl Partition {
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The slot of the entry for `key`, if any.
    pub(super) fn find(&self, hash: u64, key: &KeyRef<'_>) -> Option<usize> {
        let slots = &self.slots;
        self.table
            .find(hash, |&i| {
                slots
                    .get(i as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|e| e.matches(key))
            })
            .map(|&i| i as usize)
    }

    pub(super) fn entry_mut(&mut self, slot: usize) -> Option<&mut Entry> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    pub(super) fn entry(&self, slot: usize) -> Option<&Entry> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// The runs of the entry in `slot`, if it is a merged one.
    pub(super) fn trace(&self, slot: usize) -> Option<&[Run]> {
        let slot = u32::try_from(slot).ok()?;
        self.traced.get(&slot).map(|runs| &runs[..])
    }

    /// Removes the entry in `slot` and returns it.
    pub(super) fn remove(&mut self, slot: usize) -> Option<Entry> {
        let entry = self.slots.get_mut(slot)?.take()?;
        if let Ok(found) = self.table.find_entry(entry.hash(), |&i| i as usize == slot) {
            found.remove();
        }
        self.bytes -= entry.cost();
        // `slot` came from a u32 index.
        if let Some(runs) = self.traced.remove(&(slot as u32)) {
            self.bytes -= trace_cost(&runs);
        }
        self.len -= 1;
        self.free.push(slot as u32);
        Some(entry)
    }

    /// Evicts one entry by CLOCK; `dead` says which entries are past their stale
    /// deadline. Returns false only when the partition is empty.
    pub(super) fn evict_one(&mut self, dead: impl Fn(&Entry) -> bool) -> bool {
        let n = self.slots.len();
        if self.len == 0 || n == 0 {
            return false;
        }
        for _ in 0..=2 * n {
            if self.hand >= n {
                self.hand = 0;
            }
            let slot = self.hand;
            self.hand += 1;
            let Some(entry) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let is_dead = dead(entry);
            if is_dead || entry.flags & REFERENCED == 0 {
                self.remove(slot);
                self.stats.evictions += 1;
                if is_dead {
                    self.stats.expired_evictions += 1;
                }
                return true;
            }
            entry.flags &= !REFERENCED;
        }
        false
    }

    /// Adds `entry` (whose key is not present; its cost fits `share`) with the
    /// runs of a merged one, evicting until it fits.
    pub(super) fn add(
        &mut self,
        hash: u64,
        entry: Entry,
        trace: Option<Box<[Run]>>,
        share: usize,
        dead: impl Fn(&Entry) -> bool,
    ) {
        let cost = entry.cost() + trace.as_deref().map_or(0, trace_cost);
        while self.bytes + cost > share {
            if !self.evict_one(&dead) {
                break;
            }
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    *s = Some(entry);
                }
                slot
            }
            None => {
                // Grow by at most 1/8 (at least 16 slots) to bound the slack that
                // is not charged to any entry.
                if self.slots.len() == self.slots.capacity() {
                    self.slots.reserve_exact((self.slots.len() / 8).max(16));
                }
                self.slots.push(Some(entry));
                // Slab indices fit u32: a partition cannot hold 4 billion entries of
                // at least ENTRY_OVERHEAD bytes each in a usize byte share that
                // matters; saturate defensively.
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        if let Some(runs) = trace {
            self.traced.insert(slot, runs);
        }
        let slots = &self.slots;
        self.table.insert_unique(hash, slot, |&i| {
            slots
                .get(i as usize)
                .and_then(Option::as_ref)
                .map_or(0, Entry::hash)
        });
        self.bytes += cost;
        self.len += 1;
    }
}

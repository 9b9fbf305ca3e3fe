//! The open stream client connections (TCP, DoT, DoH) of one shard, with what each is doing, so a
//! full shard can close the idlest one for a new client (RFC 7766 section 6.2.3)
//! instead of refusing every newcomer.
//!
//! Each connection is registered at accept ([`Registry::insert`]) with a handle to
//! close it, and marks every query it reads ([`Registry::begin`]) and answers
//! ([`Registry::end`]): its last activity, and how many of its queries are being
//! answered. [`Registry::evict_idlest`] picks, among connections with no query in
//! flight, the one idle the longest; only when every connection has work in flight
//! does it take the one whose last activity is oldest (a client that stopped
//! reading its answers looks like that). The victim leaves the registry at once,
//! so the shard's bound counts it free while its task drains.
//!
//! Each connection also counts the bytes of its replies queued and not yet
//! written ([`Registry::queue`]), so a process past `limits.stream_reply_bytes`
//! can close the connections holding the most ([`Registry::take_heaviest`]).
//!
//! A slab indexed by [`ConnId`]: O(1) per query, a scan of at most
//! `tcp_connections` entries per eviction (only at the bound). A generation in the
//! id makes a stale id (a connection already evicted) a no-op. Time is passed in.

use std::time::Instant;

/// What the registry holds for each connection: a way to close it.
pub(crate) trait Close {
    /// Closes the connection: what it is waiting on (a read, a write, a
    /// handshake) ends at once.
    fn close(&self);
}

/// A registered connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnId {
    index: usize,
    gen: u64,
}

#[derive(Debug)]
struct Entry<H> {
    gen: u64,
    last: Instant,
    busy: u32,
    /// A query was read on it: a connection that has sent none is evicted first.
    queried: bool,
    /// Bytes of its replies queued and not yet written.
    queued: usize,
    handle: H,
}

/// One shard's open connections (single-threaded: the shard owns it).
#[derive(Debug)]
pub(crate) struct Registry<H> {
    slots: Vec<Option<Entry<H>>>,
    free: Vec<usize>,
    live: usize,
    next_gen: u64,
}

impl<H> Default for Registry<H> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_gen: 0,
        }
    }
}

impl<H> Registry<H> {
    /// Registers a connection accepted at `now`.
    pub(crate) fn insert(&mut self, now: Instant, handle: H) -> ConnId {
        self.next_gen += 1;
        let entry = Entry {
            gen: self.next_gen,
            last: now,
            busy: 0,
            queried: false,
            queued: 0,
            handle,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        };
        self.live += 1;
        ConnId {
            index,
            gen: self.next_gen,
        }
    }

    fn entry(&mut self, id: ConnId) -> Option<&mut Entry<H>> {
        self.slots
            .get_mut(id.index)?
            .as_mut()
            .filter(|e| e.gen == id.gen)
    }

    /// Removes a connection; None if it was gone already (evicted).
    pub(crate) fn remove(&mut self, id: ConnId) -> Option<H> {
        self.entry(id)?;
        let entry = self.slots[id.index].take()?;
        self.free.push(id.index);
        self.live -= 1;
        Some(entry.handle)
    }

    /// A query read on `id` at `now`.
    pub(crate) fn begin(&mut self, id: ConnId, now: Instant) {
        if let Some(e) = self.entry(id) {
            e.queried = true;
            e.busy = e.busy.saturating_add(1);
            e.last = now;
        }
    }

    /// A query of `id` answered (or dropped) at `now`.
    pub(crate) fn end(&mut self, id: ConnId, now: Instant) {
        if let Some(e) = self.entry(id) {
            e.busy = e.busy.saturating_sub(1);
            e.last = now;
        }
    }

    /// `bytes` of a reply of `id` queued for writing.
    pub(crate) fn queue(&mut self, id: ConnId, bytes: usize) {
        if let Some(e) = self.entry(id) {
            e.queued = e.queued.saturating_add(bytes);
        }
    }

    /// `bytes` queued on `id` written (or dropped).
    pub(crate) fn unqueue(&mut self, id: ConnId, bytes: usize) {
        if let Some(e) = self.entry(id) {
            e.queued = e.queued.saturating_sub(bytes);
        }
    }

    /// Removes and returns the connection holding the most queued reply bytes,
    /// with that count, if it holds more than `floor`.
    pub(crate) fn take_heaviest(&mut self, floor: usize) -> Option<(H, usize)> {
        let (index, queued) = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i, e.queued)))
            .max_by_key(|(_, queued)| *queued)?;
        if queued <= floor {
            return None;
        }
        let gen = self.slots[index].as_ref()?.gen;
        Some((self.remove(ConnId { index, gen })?, queued))
    }

    /// Connections registered.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Removes and returns the connection to close for a new one: one that has not
    /// sent a query yet (a TLS handshake unfinished, or a client that only
    /// connected), oldest first; else the idlest with no query in flight; else the
    /// one with the oldest activity.
    pub(crate) fn evict_idlest(&mut self) -> Option<H> {
        let (index, _) = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i, (e.queried, e.busy > 0, e.last))))
            .min_by_key(|(_, key)| *key)?;
        let gen = self.slots[index].as_ref()?.gen;
        self.remove(ConnId { index, gen })
    }
}

/// One shard's stream client connections (TCP, DoT, DoH): how many tasks run (those
/// closed for a newer connection and still draining included: the shutdown waits
/// for them) and the [`Registry`] of the open ones.
#[derive(Default)]
pub(crate) struct StreamConns {
    running: std::cell::Cell<usize>,
    registry: std::cell::RefCell<Registry<std::rc::Rc<dyn Close>>>,
}

impl StreamConns {
    /// Connection tasks running.
    pub(crate) fn running(&self) -> usize {
        self.running.get()
    }

    /// A connection's task starts; `handle` closes it when the shard needs its
    /// place.
    pub(crate) fn started(&self, handle: std::rc::Rc<dyn Close>) -> ConnId {
        self.running.set(self.running.get() + 1);
        self.registry.borrow_mut().insert(Instant::now(), handle)
    }

    /// Its task ends (its entry is gone already if it was closed for a newer one).
    pub(crate) fn ended(&self, id: ConnId) {
        let handle = self.registry.borrow_mut().remove(id);
        drop(handle);
        self.running.set(self.running.get().saturating_sub(1));
    }

    /// The registry, for one step (never held across an await).
    pub(crate) fn registry(&self) -> std::cell::RefMut<'_, Registry<std::rc::Rc<dyn Close>>> {
        self.registry.borrow_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_connection_that_never_sent_a_query_goes_first() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        let served = r.insert(t0, "served");
        r.begin(served, at(t0, 1));
        r.end(served, at(t0, 2));
        // Newer, but silent (a handshake that never finishes, a bare connect).
        let silent = r.insert(at(t0, 50), "silent");
        let busy = r.insert(at(t0, 60), "busy");
        r.begin(busy, at(t0, 61));
        assert_eq!(r.evict_idlest(), Some("silent"));
        assert_eq!(r.evict_idlest(), Some("served"));
        assert_eq!(r.evict_idlest(), Some("busy"));
        let _ = silent;
    }

    #[test]
    fn picks_the_idlest() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        let a = r.insert(t0, "a");
        let b = r.insert(at(t0, 1), "b");
        let c = r.insert(at(t0, 2), "c");
        // a answers a query late: b is now the idlest.
        r.begin(a, at(t0, 10));
        r.end(a, at(t0, 11));
        assert_eq!(r.evict_idlest(), Some("b"));
        assert_eq!(r.len(), 2);
        assert_eq!(r.evict_idlest(), Some("c"));
        assert_eq!(r.evict_idlest(), Some("a"));
        assert_eq!(r.evict_idlest(), None);
        // Evicted ids are stale: no effect, nothing removed twice.
        assert_eq!(r.remove(b), None);
        r.begin(c, at(t0, 20));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn never_one_with_work_in_flight_while_an_idle_one_exists() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        let busy = r.insert(t0, "busy");
        r.begin(busy, t0); // oldest activity, but a query is being answered
        let _idle = r.insert(at(t0, 50), "idle");
        assert_eq!(r.evict_idlest(), Some("idle"));
        // Only busy ones left: the one with the oldest activity goes.
        let newer = r.insert(at(t0, 60), "newer");
        r.begin(newer, at(t0, 60));
        assert_eq!(r.evict_idlest(), Some("busy"));
        // Answered: idle again, and evictable first.
        r.end(newer, at(t0, 70));
        let other = r.insert(at(t0, 80), "other");
        r.begin(other, at(t0, 80));
        assert_eq!(r.evict_idlest(), Some("newer"));
    }

    #[test]
    fn the_heaviest_holder_of_queued_replies_goes_while_above_the_floor() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        let a = r.insert(t0, "a");
        let b = r.insert(t0, "b");
        let c = r.insert(t0, "c");
        r.queue(a, 3000);
        r.queue(b, 9000);
        r.queue(c, 500);
        r.unqueue(b, 1000);
        assert_eq!(r.take_heaviest(1000), Some(("b", 8000)));
        assert_eq!(r.take_heaviest(1000), Some(("a", 3000)));
        assert_eq!(
            r.take_heaviest(1000),
            None,
            "c holds no more than the floor"
        );
        assert_eq!(r.len(), 1);
        // A removed connection's bytes are no one's: stale ids change nothing.
        r.queue(b, 1 << 20);
        r.unqueue(a, 1);
        assert_eq!(r.take_heaviest(0), Some(("c", 500)));
        assert_eq!(r.take_heaviest(0), None);
    }

    #[test]
    fn slots_are_reused_and_stay_bounded() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        let mut ids: Vec<_> = (0..4).map(|i| r.insert(at(t0, i), i)).collect();
        for round in 0..1000u64 {
            // At the bound: evict one, admit one; or a connection ends by itself.
            if round % 2 == 0 {
                assert!(r.evict_idlest().is_some());
            } else {
                let id = ids.remove(0);
                r.remove(id);
            }
            ids.push(r.insert(at(t0, 10 + round), 0));
            ids.retain(|id| r.slots[id.index].as_ref().is_some_and(|e| e.gen == id.gen));
            assert_eq!(r.len(), 4);
        }
        assert!(r.slots.len() <= 5, "{} slots", r.slots.len());
        for id in ids {
            assert!(r.remove(id).is_some());
        }
        assert_eq!(r.len(), 0);
    }

    struct Flag(std::cell::Cell<bool>);

    impl Close for Flag {
        fn close(&self) {
            self.0.set(true);
        }
    }

    #[test]
    fn a_connection_runs_from_started_to_ended_even_after_its_entry_was_evicted() {
        let conns = StreamConns::default();
        let flags = [0, 1].map(|_| std::rc::Rc::new(Flag(std::cell::Cell::new(false))));
        let ids = flags.clone().map(|f| conns.started(f));
        assert_eq!((conns.running(), conns.registry().len()), (2, 2));
        // Evicted for a newer one: out of the registry, still running (draining).
        let victim = conns.registry().evict_idlest().expect("one to evict");
        victim.close();
        assert_eq!(flags.iter().filter(|f| f.0.get()).count(), 1);
        assert_eq!((conns.running(), conns.registry().len()), (2, 1));
        for id in ids {
            conns.ended(id);
        }
        assert_eq!((conns.running(), conns.registry().len()), (0, 0));
        // An end seen twice never takes the count below zero.
        conns.ended(ids[0]);
        assert_eq!(conns.running(), 0);
    }
}

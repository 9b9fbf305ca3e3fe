//! The table of queries waiting for their replies on one upstream socket (UDP,
//! [`super::udp`]) or connection (DoT), and the question a reply must repeat.
//!
//! [`PendingTable`] is the one table both use: it draws each query's ID from the
//! CSPRNG, unique in the table, in at most [`MAX_ID_TRIES`] draws (a table with no
//! free ID found within them refuses the query: bounded work, never a loop until
//! one is free); keeps the [`Question`] the reply must repeat, compared byte for
//! byte on the lowercased name (not a hash a forger could aim at); and bounds
//! itself: `max` entries, of which background work (completion, prefetch) may fill
//! three quarters ([`room`]), so that it never takes the last places from queries a
//! client waits for. Each registration has a serial, so a query that stops
//! waiting never removes a later one that drew the same ID. What waits on an entry
//! is the transport's: a UDP query's flight mailbox and 0x20 rule, a DoT query's
//! oneshot.
//!
//! [`CaseMask`] and [`CaseRule`] are DNS 0x20's: which letters went out upper
//! case, and how strictly a reply must repeat them.

use crate::wire::name::{read_name_lower, MAX_NAME_LEN};
use crate::wire::HEADER_LEN;
use hashbrown::HashMap;
use rand::Rng;
use std::rc::Rc;

/// The question a reply must repeat: the lowercased wire name, type and class,
/// compared byte for byte (not a hash a forger could aim at). Shared by every
/// query of a flight; cloning is a reference count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Question {
    qname_lower: Rc<[u8]>,
    qtype: u16,
    qclass: u16,
}

/// Which bytes of a query's name are upper case (bit i for byte i of the wire
/// name, length bytes included, up to 256): what DNS 0x20 asks a reply to repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CaseMask([u64; 4]);

impl CaseMask {
    /// The mask of the uncompressed name at `HEADER_LEN` in `msg`; None if it is
    /// not there whole (a compression pointer, or cut short).
    pub(crate) fn of_question(msg: &[u8]) -> Option<Self> {
        let mut mask = [0u64; 4];
        let mut pos = HEADER_LEN;
        loop {
            let len = usize::from(*msg.get(pos)?);
            if len == 0 {
                return Some(Self(mask));
            }
            if len > 63 || pos + 1 + len - HEADER_LEN >= 255 {
                return None;
            }
            for (i, b) in msg.get(pos + 1..pos + 1 + len)?.iter().enumerate() {
                if b.is_ascii_uppercase() {
                    let bit = pos + 1 + i - HEADER_LEN;
                    mask[bit / 64] |= 1 << (bit % 64);
                }
            }
            pos += 1 + len;
        }
    }

    /// Gives each letter of the question name in `msg` (uncompressed, at
    /// `HEADER_LEN`) a random case; returns the mask a reply must repeat, or None
    /// (nothing changed) if the name is not there whole.
    pub(crate) fn randomize(msg: &mut [u8]) -> Option<Self> {
        Self::of_question(msg)?;
        let mut rng = rand::rng();
        let mut pos = HEADER_LEN;
        while let Some(&len) = msg.get(pos) {
            if len == 0 {
                break;
            }
            let end = pos + 1 + usize::from(len);
            for b in &mut msg[pos + 1..end] {
                if b.is_ascii_alphabetic() {
                    *b = if rng.random::<bool>() {
                        b.to_ascii_uppercase()
                    } else {
                        b.to_ascii_lowercase()
                    };
                }
            }
            pos = end;
        }
        Self::of_question(msg)
    }

    /// Whether no letter is upper case (a reply in lower case repeats it).
    pub(crate) fn is_lower(&self) -> bool {
        self.0 == [0; 4]
    }
}

/// The letter-case check of one pending query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaseRule {
    /// Sent without 0x20: any case is accepted.
    Any,
    /// Sent with 0x20: the reply must repeat this case, else it is dropped.
    Exact(CaseMask),
    /// A probe of an upstream in 0x20 fallback: sent in this case, the reply is
    /// accepted in any case, and whether it repeats the case is the verdict.
    Probe(CaseMask),
}

/// The question section of a message, read once onto the stack: its lowercased
/// name, type and class.
pub(super) struct WireQuestion {
    name: [u8; MAX_NAME_LEN],
    len: usize,
    qtype: u16,
    qclass: u16,
}

impl WireQuestion {
    /// The question of `msg`; None when it has no readable one.
    pub(super) fn read(msg: &[u8]) -> Option<Self> {
        let mut name = [0u8; MAX_NAME_LEN];
        let (len, end) = read_name_lower(msg, HEADER_LEN, &mut name).ok()?;
        let fixed = msg.get(end..end + 4)?;
        Some(Self {
            name,
            len,
            qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
            qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
        })
    }

    /// As a [`Question`] (the fuzzer's table).
    #[cfg(fuzzing)]
    pub(super) fn to_question(&self) -> Question {
        Question::new(&self.name[..self.len], self.qtype, self.qclass)
    }

    pub(super) fn is(&self, question: &Question) -> bool {
        self.name[..self.len] == *question.qname_lower
            && self.qtype == question.qtype
            && self.qclass == question.qclass
    }
}

impl Question {
    /// From a lowercased wire name, qtype and qclass.
    pub(crate) fn new(qname_lower: &[u8], qtype: u16, qclass: u16) -> Self {
        Self {
            qname_lower: qname_lower.into(),
            qtype,
            qclass,
        }
    }

    /// The lowercased wire name.
    pub(crate) fn qname_lower(&self) -> &[u8] {
        &self.qname_lower
    }

    /// The question's type.
    pub(crate) fn qtype(&self) -> u16 {
        self.qtype
    }

    /// Whether `msg` asks this question; None when it has no readable question.
    pub(crate) fn matches(&self, msg: &[u8]) -> Option<bool> {
        WireQuestion::read(msg).map(|q| q.is(self))
    }
}

/// Draws of a random ID before a table gives up on a query. With at most 60000 of
/// the 65536 IDs in use (`limits.max_upstream_pending`'s validated bound), all 256
/// draws miss with a chance under 1e-11; the cap only bounds the work.
pub(super) const MAX_ID_TRIES: usize = 256;

/// How many entries a table of `max` may hold when one more registers: all of it
/// for a query a client waits for, three quarters for background work (completion,
/// prefetch), so that background work never takes the last places. The one rule
/// for the UDP and DoT tables and the DoH connection's streams.
pub(crate) fn room(max: usize, background: bool) -> usize {
    if background {
        (max - max / 4).max(1)
    } else {
        max
    }
}

/// Why a table refused a query: both are our own overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// At its bound ([`room`]).
    Full,
    /// No free ID within [`MAX_ID_TRIES`] draws.
    NoFreeId,
}

/// One pending query: the question its reply must repeat, the serial of its
/// registration, and what waits for it.
pub(super) struct Pending<T> {
    pub(super) question: Question,
    serial: u64,
    pub(super) waiter: T,
}

/// The pending queries of one socket or connection, keyed by message ID.
pub(super) struct PendingTable<T> {
    map: HashMap<u16, Pending<T>>,
    max: usize,
    serial: u64,
}

impl<T> PendingTable<T> {
    /// An empty table of at most `max` entries (at least one).
    pub(super) fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            map: HashMap::with_capacity(max.min(1024)),
            max,
            serial: 0,
        }
    }

    /// Whether a query (`background` or not) would find no room.
    pub(super) fn is_full(&self, background: bool) -> bool {
        self.map.len() >= room(self.max, background)
    }

    /// Reserves a fresh random ID (from the CSPRNG) for a query asking `question`;
    /// returns it with the registration's serial.
    pub(super) fn register(
        &mut self,
        question: Question,
        background: bool,
        waiter: T,
    ) -> Result<(u16, u64), Refused> {
        let mut rng = rand::rng();
        self.register_drawing(|| rng.random(), question, background, waiter)
    }

    /// [`Self::register`] with the IDs drawn by `draw`.
    fn register_drawing(
        &mut self,
        mut draw: impl FnMut() -> u16,
        question: Question,
        background: bool,
        waiter: T,
    ) -> Result<(u16, u64), Refused> {
        if self.is_full(background) {
            return Err(Refused::Full);
        }
        let id = (0..MAX_ID_TRIES)
            .map(|_| draw())
            .find(|id| !self.map.contains_key(id))
            .ok_or(Refused::NoFreeId)?;
        self.serial += 1;
        let serial = self.serial;
        self.map.insert(
            id,
            Pending {
                question,
                serial,
                waiter,
            },
        );
        Ok((id, serial))
    }

    /// Removes the registration `serial` of `id` if it is still there (its reply
    /// may have taken it, and a later query the ID since).
    pub(super) fn remove(&mut self, id: u16, serial: u64) -> Option<Pending<T>> {
        if self.map.get(&id)?.serial != serial {
            return None;
        }
        self.map.remove(&id)
    }

    /// Takes the entry of `id`, whichever registration it is.
    pub(super) fn take(&mut self, id: u16) -> Option<Pending<T>> {
        self.map.remove(&id)
    }

    /// The entry of `id`, if its question is `question` (what a reply under that
    /// ID must repeat).
    pub(super) fn asked(&mut self, id: u16, question: &WireQuestion) -> Option<&mut Pending<T>> {
        self.map.get_mut(&id).filter(|p| question.is(&p.question))
    }

    /// Drops every entry (their waiters see the end).
    pub(super) fn clear(&mut self) {
        self.map.clear();
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Puts an entry under `id` directly (tests, the fuzzer: a known ID).
    #[cfg(any(test, fuzzing))]
    pub(super) fn insert_at(&mut self, id: u16, serial: u64, question: Question, waiter: T) {
        self.map.insert(
            id,
            Pending {
                question,
                serial,
                waiter,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Question {
        Question::new(b"\x01a\x00", 1, 1)
    }

    #[test]
    fn background_work_gets_three_quarters_and_never_the_last_place() {
        for (max, background) in [(1, 1), (2, 2), (3, 3), (4, 3), (8, 6), (4096, 3072)] {
            assert_eq!(room(max, true), background, "max {max}");
            assert_eq!(room(max, false), max);
        }
        let mut t = PendingTable::new(4);
        for _ in 0..3 {
            t.register(q(), true, ()).unwrap();
        }
        assert_eq!(t.register(q(), true, ()), Err(Refused::Full));
        assert!(t.is_full(true) && !t.is_full(false));
        t.register(q(), false, ())
            .expect("a client's query still goes");
        assert_eq!(t.register(q(), false, ()), Err(Refused::Full));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_table_with_no_free_id_within_the_tries_refuses_and_stops_drawing() {
        let mut t = PendingTable::new(8);
        t.insert_at(7, 1, q(), ());
        let mut draws = 0;
        let refused = t.register_drawing(
            || {
                draws += 1;
                7
            },
            q(),
            false,
            (),
        );
        assert_eq!(refused, Err(Refused::NoFreeId));
        assert_eq!(draws, MAX_ID_TRIES, "bounded, not a loop until one is free");
        assert_eq!(t.len(), 1, "nothing registered");
        // One free ID among the draws is found.
        let mut next = [7u16, 7, 9].into_iter();
        let (id, _) = t
            .register_drawing(|| next.next().unwrap_or(7), q(), false, ())
            .unwrap();
        assert_eq!(id, 9);
    }

    #[test]
    fn a_table_as_large_as_the_id_space_fills_up_to_it_and_no_further() {
        // Bigger than the 65536 IDs: the bound is then the IDs, and the draws find
        // the last free ones or give up, never loop.
        let mut t = PendingTable::new(70_000);
        let mut refused = None;
        for _ in 0..70_000 {
            if let Err(why) = t.register(q(), false, ()) {
                refused = Some(why);
                break;
            }
        }
        assert_eq!(refused, Some(Refused::NoFreeId));
        assert!(t.len() > 60_000 && t.len() <= 65_536, "{}", t.len());
    }

    #[test]
    fn a_removal_takes_only_its_own_registration() {
        let mut t = PendingTable::new(4);
        let (id, serial) = t.register(q(), false, "first").unwrap();
        assert_eq!(t.take(id).map(|p| p.waiter), Some("first"));
        t.insert_at(id, serial + 1, q(), "later");
        assert!(
            t.remove(id, serial).is_none(),
            "a later query's entry stays"
        );
        assert_eq!(t.remove(id, serial + 1).map(|p| p.waiter), Some("later"));
        assert!(t.is_empty());
        t.register(q(), false, "again").unwrap();
        t.clear();
        assert!(t.is_empty());
    }

    #[test]
    fn an_entry_is_found_only_under_its_id_and_question() {
        let mut t = PendingTable::new(4);
        let (id, _) = t.register(q(), false, ()).unwrap();
        let mut msg = vec![0u8; 12];
        msg.extend_from_slice(b"\x01A\x00\x00\x01\x00\x01");
        let asked = WireQuestion::read(&msg).unwrap();
        assert!(
            t.asked(id, &asked).is_some(),
            "any case: the name is lowercased"
        );
        assert!(t.asked(id.wrapping_add(1), &asked).is_none());
        msg[13] = b'b';
        let other = WireQuestion::read(&msg).unwrap();
        assert!(t.asked(id, &other).is_none());
    }
}

//! The pending queries of one upstream socket, and the rules a reply must meet to
//! be handed to one: a response (QR=1), the ID of a pending query, and that
//! query's question, compared byte for byte, in the letter case sent when the
//! query went out with DNS 0x20. Anything else is refused with the reason
//! (mismatch, late, case mismatch, malformed), which the receive loop counts. What
//! the replies tell about the upstream's handling of case ([`CaseSeen`]) goes to the
//! link's 0x20 guard (see [`super::case`]).
//!
//! Bounds: `max` entries, of which background work may fill three quarters; the
//! last [`RECENTLY_ABANDONED`] queries that stopped waiting are remembered to tell a
//! late reply from a forged one.

use super::case::CaseSeen;
use super::mailbox::{Exchange, Mailbox};
use crate::health::UpstreamIdx;
use crate::wire::name::{read_name_lower, MAX_NAME_LEN};
use crate::wire::reader::Header;
use crate::wire::HEADER_LEN;
use hashbrown::HashMap;
use rand::Rng;
use std::rc::Rc;
use std::time::Instant;

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
struct WireQuestion {
    name: [u8; MAX_NAME_LEN],
    len: usize,
    qtype: u16,
    qclass: u16,
}

impl WireQuestion {
    /// The question of `msg`; None when it has no readable one.
    fn read(msg: &[u8]) -> Option<Self> {
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

    fn is(&self, question: &Question) -> bool {
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

pub(super) struct Pending {
    /// With DNS 0x20: the letter case the reply's question must repeat.
    pub(super) case: CaseRule,
    /// A reply with its ID and question came in another case than sent (dropped):
    /// if no reply in the right case follows, the query says [`CaseSeen::Folded`].
    pub(super) folded: bool,
    /// Distinguishes this registration from a later one that reuses the ID.
    pub(super) serial: u64,
    pub(super) question: Question,
    pub(super) waiter: Waiter,
}

/// Who waits for a pending query's reply: the flight's mailbox, under the
/// upstream's index, and when the query left (the round trip is timed from it).
pub(crate) struct Waiter {
    pub(crate) mailbox: Rc<Mailbox>,
    pub(crate) up: UpstreamIdx,
    pub(crate) sent_at: Instant,
}

/// Why the pending table refused a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dispatch {
    /// No query waits for this ID and question: spoofed, or very late.
    Mismatch,
    /// The ID and question of a query that stopped waiting a short while ago (the
    /// slower upstream of a flight that already had its answer): late, not forged.
    Late,
    /// The ID and question of a pending query sent with DNS 0x20, in another
    /// letter case than it was sent: dropped (the query keeps waiting).
    CaseMismatch,
    Malformed,
}

/// Queries that stopped waiting, remembered to tell a late reply from a forged one.
pub(super) const RECENTLY_ABANDONED: usize = 64;

/// The pending queries of one socket, keyed by message ID.
pub(super) struct PendingTable {
    pub(super) map: HashMap<u16, Pending>,
    pub(super) max: usize,
    pub(super) serial: u64,
    /// The last [`RECENTLY_ABANDONED`] IDs and questions whose waiter gave up, in a
    /// ring; `abandoned_next` is where the next goes.
    pub(super) abandoned: [Option<(u16, Question)>; RECENTLY_ABANDONED],
    pub(super) abandoned_next: usize,
}

impl PendingTable {
    /// Reserves a fresh random ID for `waiter`'s query; None at the bound.
    pub(super) fn register(
        &mut self,
        question: Question,
        background: bool,
        case: CaseRule,
        waiter: Waiter,
    ) -> Option<(u16, u64)> {
        if self.map.len() >= self.bound(background) {
            return None;
        }
        let mut rng = rand::rng();
        let id = loop {
            let id: u16 = rng.random();
            if !self.map.contains_key(&id) {
                break id;
            }
        };
        self.serial += 1;
        let serial = self.serial;
        self.map.insert(
            id,
            Pending {
                case,
                folded: false,
                serial,
                question,
                waiter,
            },
        );
        Some((id, serial))
    }

    pub(super) fn new(max: usize) -> Self {
        Self {
            map: HashMap::with_capacity(max.min(1024)),
            max,
            serial: 0,
            abandoned: std::array::from_fn(|_| None),
            abandoned_next: 0,
        }
    }

    /// Whether a query (`background` or not) would find no room.
    pub(super) fn is_full(&self, background: bool) -> bool {
        self.map.len() >= self.bound(background)
    }

    /// How many entries a query may find in the table and still register: all of
    /// it for a query a client waits for, three quarters for background work
    /// (completion, prefetch), so background work never takes the last slots.
    fn bound(&self, background: bool) -> usize {
        if background {
            self.max - self.max / 4
        } else {
            self.max
        }
    }

    /// Removes the registration `serial` of `id`, if it is still there (the reply
    /// may have removed it, and a later query may have taken the ID since), and
    /// remembers it as abandoned. Returns [`CaseSeen::Folded`] for a query that
    /// only ever got replies in another case than sent.
    pub(super) fn abandon(&mut self, id: u16, serial: u64) -> Option<CaseSeen> {
        if self.map.get(&id).is_none_or(|p| p.serial != serial) {
            return None;
        }
        let p = self.map.remove(&id)?;
        self.abandoned[self.abandoned_next] = Some((id, p.question));
        self.abandoned_next = (self.abandoned_next + 1) % RECENTLY_ABANDONED;
        p.folded.then_some(CaseSeen::Folded)
    }

    /// Posts a copy of a reply, received at `now`, to its waiter's mailbox, or says
    /// why it was refused. An accepted reply to a query sent with 0x20 also says
    /// whether the upstream repeated the case (none for a name drawn all lower
    /// case, which any upstream repeats).
    pub(super) fn dispatch(
        &mut self,
        reply: &[u8],
        now: Instant,
    ) -> Result<Option<CaseSeen>, Dispatch> {
        let verdict = match Header::parse(reply) {
            Ok(h) if h.qr() => match WireQuestion::read(reply) {
                None => Err(Dispatch::Malformed),
                Some(q) => match self.map.get_mut(&h.id) {
                    Some(p) if q.is(&p.question) => match p.case {
                        CaseRule::Exact(sent) if CaseMask::of_question(reply) != Some(sent) => {
                            p.folded = true;
                            Err(Dispatch::CaseMismatch)
                        }
                        CaseRule::Exact(sent) => {
                            Ok((h.id, (!sent.is_lower()).then_some(CaseSeen::Kept)))
                        }
                        CaseRule::Probe(sent) if CaseMask::of_question(reply) != Some(sent) => {
                            Ok((h.id, Some(CaseSeen::Folded)))
                        }
                        CaseRule::Probe(sent) => {
                            Ok((h.id, (!sent.is_lower()).then_some(CaseSeen::Kept)))
                        }
                        CaseRule::Any => Ok((h.id, None)),
                    },
                    _ if self
                        .abandoned
                        .iter()
                        .flatten()
                        .any(|(id, a)| *id == h.id && q.is(a)) =>
                    {
                        Err(Dispatch::Late)
                    }
                    _ => Err(Dispatch::Mismatch),
                },
            },
            _ => Err(Dispatch::Malformed),
        };
        let (id, seen) = verdict?;
        if let Some(p) = self.map.remove(&id) {
            let Waiter {
                mailbox,
                up,
                sent_at,
            } = p.waiter;
            mailbox.push((
                up,
                Ok(Exchange {
                    reply: reply.to_vec(),
                    rtt: now.saturating_duration_since(sent_at),
                    over_tcp: false,
                }),
            ));
        }
        Ok(seen)
    }
}

/// The reply path for the fuzzer: a pending table holding two queries, the
/// question of `reply` under its own ID (when it has a readable one) and `a.` A IN
/// under the ID after it, gets `reply` as if from the upstream socket. Returns the
/// reply if the table handed it to a waiter. Checks its own rules: nothing is
/// handed over unless it is a response with a pending ID and that query's question.
#[cfg(fuzzing)]
pub(crate) fn fuzz_dispatch(reply: &[u8]) -> Option<Vec<u8>> {
    let mut table = PendingTable::new(8);
    let id = u16::from_be_bytes([*reply.first()?, *reply.get(1)?]);
    let own = WireQuestion::read(reply).map(|q| Question::new(&q.name[..q.len], q.qtype, q.qclass));
    let mailbox = Mailbox::new();
    for (i, question) in [own, Some(Question::new(b"\x01a\x00", 1, 1))]
        .into_iter()
        .enumerate()
    {
        let Some(question) = question else { continue };
        table.map.insert(
            id.wrapping_add(i as u16),
            Pending {
                case: CaseRule::Any,
                folded: false,
                serial: i as u64,
                question,
                waiter: Waiter {
                    mailbox: Rc::clone(&mailbox),
                    up: UpstreamIdx::new(i),
                    sent_at: Instant::now(),
                },
            },
        );
    }
    let before = table.map.len();
    let accepted = table.dispatch(reply, Instant::now()).is_ok();
    let header = Header::parse(reply).ok();
    if accepted {
        let h = header.expect("only a readable header is accepted");
        assert!(h.qr(), "only responses are accepted");
        assert_eq!(table.map.len(), before - 1, "exactly one waiter served");
    } else {
        assert_eq!(table.map.len(), before, "a refused reply serves nobody");
    }
    let (_, result) = mailbox.pop()?;
    assert!(mailbox.pop().is_none(), "one reply serves one waiter");
    result.ok().map(|ex| ex.reply)
}

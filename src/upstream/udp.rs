//! One connected UDP socket of an upstream link: its pending queries (a
//! [`PendingTable`] with the UDP rules on top) and its receive loop.
//!
//! A reply is handed over only if it is a response (QR=1) with the ID of a pending
//! query and that query's question, in the letter case sent when the query went
//! out with DNS 0x20. Anything else is refused with the reason (mismatch, late,
//! case mismatch, malformed), which the receive loop counts. What the replies tell
//! about the upstream's handling of case ([`CaseSeen`]) goes to the link's 0x20
//! guard (see [`super::case`]).
//!
//! Bounds: the table's (`max` entries, background work three quarters of them);
//! the last [`RECENTLY_ABANDONED`] queries that stopped waiting are remembered to
//! tell a late reply from a forged one. The receive loop takes every queued reply
//! with one `recvmmsg` (up to [`BATCH`]) into the shard's buffers and yields to the
//! shard's other tasks every [`BATCHES_PER_TURN`] full batches.

use super::case::{CaseSeen, CaseWatch};
use super::mailbox::{Exchange, Mailbox};
use super::pending::{CaseMask, CaseRule, PendingTable, Question, Refused, WireQuestion};
use crate::health::UpstreamIdx;
use crate::io::buffers::BUF_CAPACITY;
use crate::io::mmsg::{short_is_drained, RecvBatch, BATCH, BATCHES_PER_TURN};
use crate::metrics::{DropReason, ShardStats};
use crate::wire::reader::Header;
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::task::JoinHandle;

/// What waits on a UDP query: its 0x20 rule and the flight.
pub(super) struct UdpWait {
    /// With DNS 0x20: the letter case the reply's question must repeat.
    case: CaseRule,
    /// A reply with its ID and question came in another case than sent (dropped):
    /// if no reply in the right case follows, the query says [`CaseSeen::Folded`].
    folded: bool,
    waiter: Waiter,
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

/// The pending queries of one UDP socket.
pub(super) struct UdpTable {
    table: PendingTable<UdpWait>,
    /// The last [`RECENTLY_ABANDONED`] IDs and questions whose waiter gave up, in a
    /// ring; `abandoned_next` is where the next goes.
    abandoned: [Option<(u16, Question)>; RECENTLY_ABANDONED],
    abandoned_next: usize,
}

impl UdpTable {
    pub(super) fn new(max: usize) -> Self {
        Self {
            table: PendingTable::new(max),
            abandoned: std::array::from_fn(|_| None),
            abandoned_next: 0,
        }
    }

    /// Reserves a fresh random ID for `waiter`'s query.
    pub(super) fn register(
        &mut self,
        question: Question,
        background: bool,
        case: CaseRule,
        waiter: Waiter,
    ) -> Result<(u16, u64), Refused> {
        let wait = UdpWait {
            case,
            folded: false,
            waiter,
        };
        self.table.register(question, background, wait)
    }

    /// Whether a query (`background` or not) would find no room.
    pub(super) fn is_full(&self, background: bool) -> bool {
        self.table.is_full(background)
    }

    /// Removes the registration `serial` of `id`, if it is still there (the reply
    /// may have removed it, and a later query may have taken the ID since), and
    /// remembers it as abandoned. Returns [`CaseSeen::Folded`] for a query that
    /// only ever got replies in another case than sent.
    pub(super) fn abandon(&mut self, id: u16, serial: u64) -> Option<CaseSeen> {
        let p = self.table.remove(id, serial)?;
        let folded = p.waiter.folded;
        self.abandoned[self.abandoned_next] = Some((id, p.question));
        self.abandoned_next = (self.abandoned_next + 1) % RECENTLY_ABANDONED;
        folded.then_some(CaseSeen::Folded)
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
        let h = Header::parse(reply)
            .ok()
            .filter(Header::qr)
            .ok_or(Dispatch::Malformed)?;
        let q = WireQuestion::read(reply).ok_or(Dispatch::Malformed)?;
        let Some(p) = self.table.asked(h.id, &q) else {
            let late = self
                .abandoned
                .iter()
                .flatten()
                .any(|(id, a)| *id == h.id && q.is(a));
            return Err(if late {
                Dispatch::Late
            } else {
                Dispatch::Mismatch
            });
        };
        let seen = match p.waiter.case {
            CaseRule::Exact(sent) if CaseMask::of_question(reply) != Some(sent) => {
                p.waiter.folded = true;
                return Err(Dispatch::CaseMismatch);
            }
            CaseRule::Probe(sent) if CaseMask::of_question(reply) != Some(sent) => {
                Some(CaseSeen::Folded)
            }
            CaseRule::Exact(sent) | CaseRule::Probe(sent) => {
                (!sent.is_lower()).then_some(CaseSeen::Kept)
            }
            CaseRule::Any => None,
        };
        if let Some(p) = self.table.take(h.id) {
            let Waiter {
                mailbox,
                up,
                sent_at,
            } = p.waiter.waiter;
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

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

/// One connected UDP socket of a link, its pending table and receive loop. It stays
/// open while the link or a query waiting on it ([`super::Sent`]) holds it; when the last
/// goes, its receive loop is stopped and the socket closed.
pub(super) struct UdpSlot {
    pub(super) sock: Rc<tokio::net::UdpSocket>,
    pub(super) pending: Rc<RefCell<UdpTable>>,
    /// The link's 0x20 guard, told what the replies say about letter case.
    pub(super) case: Option<Rc<CaseWatch>>,
    receiver: JoinHandle<()>,
    /// When to replace it.
    pub(super) renew_at: Instant,
}

impl UdpSlot {
    /// Opens a socket with a random source port, connected to `addr`, and starts its
    /// receive loop on the current shard runtime.
    pub(super) fn open(
        addr: SocketAddr,
        max_pending: usize,
        renew_at: Instant,
        stats: &Rc<ShardStats>,
        case: Option<&Rc<CaseWatch>>,
    ) -> io::Result<Rc<Self>> {
        let sock = Rc::new(tokio::net::UdpSocket::from_std(connected_udp(addr)?)?);
        let pending = Rc::new(RefCell::new(UdpTable::new(max_pending)));
        let case = case.map(Rc::clone);
        let receiver = tokio::task::spawn_local(receive_loop(
            Rc::clone(&sock),
            Rc::clone(&pending),
            Rc::clone(stats),
            case.clone(),
        ));
        Ok(Rc::new(Self {
            sock,
            pending,
            case,
            receiver,
            renew_at,
        }))
    }
}

impl Drop for UdpSlot {
    /// Nobody can wait on this socket any more: its receive loop ends (it holds no
    /// kernel operation in flight, only readiness), and the socket closes with it.
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// A send error that says our side has no room (socket or device queue full), not
/// that the upstream is unreachable.
pub(super) fn local_congestion(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}

/// A std UDP socket bound to a random port and connected to `addr`.
pub(super) fn connected_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    sock.set_nonblocking(true)?;
    let any: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    sock.bind(&any.into())?;
    sock.connect(&addr.into())?;
    let _ = sock.set_recv_buffer_size(1 << 20);
    // Room for a burst of queries (a full buffer fails them as our overload).
    let _ = sock.set_send_buffer_size(1 << 20);
    Ok(sock.into())
}

thread_local! {
    /// Per shard thread: the buffers every upstream socket of the shard receives
    /// into, one `recvmmsg` at a time (a receive is synchronous: it never holds
    /// them across an await).
    static RECEIVE: RefCell<RecvBatch> = RefCell::new(RecvBatch::with_buffers(BUF_CAPACITY));
}

/// Takes the replies of one upstream socket as they come, a batch per `recvmmsg`,
/// and hands each to the pending table. Runs until its socket's slot is dropped.
async fn receive_loop(
    sock: Rc<tokio::net::UdpSocket>,
    pending: Rc<RefCell<UdpTable>>,
    stats: Rc<ShardStats>,
    case: Option<Rc<CaseWatch>>,
) {
    let fd = sock.as_raw_fd();
    let mut full_batches = 0;
    loop {
        if let Err(e) = sock.readable().await {
            tracing::error!(error = %e, "upstream socket: waiting to read failed");
            return;
        }
        let taken = RECEIVE.with(|batch| {
            let mut batch = batch.borrow_mut();
            let mut short = None;
            let n = match sock.try_io(Interest::READABLE, || {
                short_is_drained(batch.recv(fd), &mut short)
            }) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => short.unwrap_or(0),
                // ICMP port unreachable surfaces as ECONNREFUSED on a connected
                // socket: the waiting queries time out; keep receiving.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(BATCH),
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            let mut table = pending.borrow_mut();
            for i in 0..n {
                let verdict = match batch.bytes(i) {
                    Ok(reply) => table.dispatch(reply, now),
                    Err(_) => Err(Dispatch::Malformed),
                };
                match verdict {
                    Ok(Some(seen)) => {
                        if let Some(case) = &case {
                            case.saw(seen, now);
                        }
                    }
                    Ok(None) => {}
                    Err(why) => stats.dropped(match why {
                        Dispatch::Mismatch => DropReason::UpstreamMismatch,
                        Dispatch::Late => DropReason::UpstreamLate,
                        Dispatch::CaseMismatch => DropReason::UpstreamCaseMismatch,
                        Dispatch::Malformed => DropReason::UpstreamMalformed,
                    }),
                }
            }
            Ok(n)
        });
        match taken {
            // A short batch took all there was (and cleared the readiness).
            Ok(n) if n < BATCH => full_batches = 0,
            Ok(_) => {
                // Still coming: let the shard's other tasks run now and then.
                full_batches += 1;
                if full_batches == BATCHES_PER_TURN {
                    full_batches = 0;
                    tokio::task::yield_now().await;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "upstream receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The reply path for the fuzzer: a pending table holding two queries, the
/// question of `reply` under its own ID (when it has a readable one) and `a.` A IN
/// under the ID after it, gets `reply` as if from the upstream socket. Returns the
/// reply if the table handed it to a waiter. Checks its own rules: nothing is
/// handed over unless it is a response with a pending ID and that query's question.
#[cfg(fuzzing)]
pub(crate) fn fuzz_dispatch(reply: &[u8]) -> Option<Vec<u8>> {
    let mut table = UdpTable::new(8);
    let id = u16::from_be_bytes([*reply.first()?, *reply.get(1)?]);
    let own = WireQuestion::read(reply).map(|q| q.to_question());
    let mailbox = Mailbox::new();
    for (i, question) in [own, Some(Question::new(b"\x01a\x00", 1, 1))]
        .into_iter()
        .enumerate()
    {
        let Some(question) = question else { continue };
        let wait = UdpWait {
            case: CaseRule::Any,
            folded: false,
            waiter: Waiter {
                mailbox: Rc::clone(&mailbox),
                up: UpstreamIdx::new(i),
                sent_at: Instant::now(),
            },
        };
        table
            .table
            .insert_at(id.wrapping_add(i as u16), i as u64, question, wait);
    }
    let before = table.table.len();
    let accepted = table.dispatch(reply, Instant::now()).is_ok();
    let header = Header::parse(reply).ok();
    if accepted {
        let h = header.expect("only a readable header is accepted");
        assert!(h.qr(), "only responses are accepted");
        assert_eq!(table.table.len(), before - 1, "exactly one waiter served");
    } else {
        assert_eq!(table.table.len(), before, "a refused reply serves nobody");
    }
    let (_, result) = mailbox.pop()?;
    assert!(mailbox.pop().is_none(), "one reply serves one waiter");
    result.ok().map(|ex| ex.reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::tests::example;

    fn table() -> RefCell<UdpTable> {
        RefCell::new(UdpTable::new(4))
    }

    /// A waiter with a mailbox of its own, as upstream 0.
    fn waiter() -> (Waiter, Rc<Mailbox>) {
        let mailbox = Mailbox::new();
        let w = Waiter {
            mailbox: Rc::clone(&mailbox),
            up: UpstreamIdx::new(0),
            sent_at: Instant::now(),
        };
        (w, mailbox)
    }

    #[test]
    fn a_finished_query_never_removes_a_later_one_with_the_same_id() {
        let t = table();
        let q = Question::new(b"\x01a\x00", 1, 1);
        let (id, serial) = t
            .borrow_mut()
            .register(q.clone(), false, CaseRule::Any, waiter().0)
            .unwrap();
        // The reply came and took the entry; a new query drew the same ID.
        let wait = t.borrow_mut().table.take(id).unwrap().waiter;
        t.borrow_mut().table.insert_at(id, serial + 1, q, wait);
        t.borrow_mut().abandon(id, serial);
        assert_eq!(t.borrow().len(), 1, "the later query is still pending");
        t.borrow_mut().abandon(id, serial + 1);
        assert!(t.borrow().len() == 0);
    }

    #[test]
    fn with_0x20_a_reply_must_repeat_the_letter_case_sent() {
        let mut query = vec![0u8; 12];
        query.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
        let lower = query.clone();
        // Random case, same name: with 10 letters, all lower in 1 of 1024 draws.
        let mut sent = query.clone();
        let mut case = CaseMask::randomize(&mut sent).unwrap();
        for _ in 0..20 {
            if sent != lower {
                break;
            }
            sent = query.clone();
            case = CaseMask::randomize(&mut sent).unwrap();
        }
        assert_ne!(sent, lower, "some letter changed case");
        assert!(sent[13..24].eq_ignore_ascii_case(&lower[13..24]));
        assert_eq!(CaseMask::of_question(&sent), Some(case));
        let t = table();
        let q = Question::new(b"\x07example\x03com\x00", 1, 1);
        let (w, mailbox) = waiter();
        let (id, _) = t
            .borrow_mut()
            .register(q, false, CaseRule::Exact(case), w)
            .unwrap();
        let reply = |name: &[u8]| {
            let mut r = name.to_vec();
            r[..2].copy_from_slice(&id.to_be_bytes());
            r[2] = 0x80;
            r[5] = 1;
            r
        };
        let now = Instant::now();
        assert_eq!(
            t.borrow_mut().dispatch(&reply(&lower), now),
            Err(Dispatch::CaseMismatch)
        );
        assert_eq!(t.borrow().len(), 1, "the query keeps waiting");
        assert!(mailbox.pop().is_none());
        assert!(t.borrow_mut().dispatch(&reply(&sent), now).is_ok());
        let (_, got) = mailbox.pop().expect("posted to the waiter");
        assert_eq!(got.unwrap().reply, reply(&sent));
        // A compressed or cut name has no mask.
        assert_eq!(CaseMask::of_question(&[0u8; 12]), None);
    }

    #[test]
    fn replies_tell_whether_the_upstream_keeps_the_case() {
        let q = Question::new(b"\x07example\x03com\x00", 1, 1);
        let sent = example(b"ExAmple", b"cOm");
        let mask = CaseMask::of_question(&sent).unwrap();
        let as_reply = |mut m: Vec<u8>, id: u16| {
            m[..2].copy_from_slice(&id.to_be_bytes());
            m[2] = 0x80;
            m[5] = 1;
            m
        };
        let folded = || example(b"example", b"com");
        let now = Instant::now();
        let t = table();
        // In the case sent: accepted, and the upstream keeps case.
        let (id, _) = t
            .borrow_mut()
            .register(q.clone(), false, CaseRule::Exact(mask), waiter().0)
            .unwrap();
        let verdict = t.borrow_mut().dispatch(&as_reply(sent.clone(), id), now);
        assert_eq!(verdict, Ok(Some(CaseSeen::Kept)));
        // Folded, then the query gives up: a fold.
        let (id, serial) = t
            .borrow_mut()
            .register(q.clone(), false, CaseRule::Exact(mask), waiter().0)
            .unwrap();
        let verdict = t.borrow_mut().dispatch(&as_reply(folded(), id), now);
        assert_eq!(verdict, Err(Dispatch::CaseMismatch));
        assert_eq!(t.borrow_mut().abandon(id, serial), Some(CaseSeen::Folded));
        // Folded (a forger that guessed the ID), then the upstream's own reply in
        // the right case: kept, and its end says nothing more.
        let (id, serial) = t
            .borrow_mut()
            .register(q.clone(), false, CaseRule::Exact(mask), waiter().0)
            .unwrap();
        let forged = t.borrow_mut().dispatch(&as_reply(folded(), id), now);
        assert_eq!(forged, Err(Dispatch::CaseMismatch));
        let real = t.borrow_mut().dispatch(&as_reply(sent.clone(), id), now);
        assert_eq!(real, Ok(Some(CaseSeen::Kept)));
        assert_eq!(t.borrow_mut().abandon(id, serial), None);
        // A query that got no reply at all says nothing.
        let (id, serial) = t
            .borrow_mut()
            .register(q.clone(), false, CaseRule::Exact(mask), waiter().0)
            .unwrap();
        assert_eq!(t.borrow_mut().abandon(id, serial), None);
        // A probe takes a reply in any case, and says which.
        let (w, mailbox) = waiter();
        let (id, _) = t
            .borrow_mut()
            .register(q.clone(), false, CaseRule::Probe(mask), w)
            .unwrap();
        let verdict = t.borrow_mut().dispatch(&as_reply(folded(), id), now);
        assert_eq!(verdict, Ok(Some(CaseSeen::Folded)));
        assert!(mailbox.pop().is_some(), "the probe's client has its answer");
        let (id, _) = t
            .borrow_mut()
            .register(q.clone(), false, CaseRule::Probe(mask), waiter().0)
            .unwrap();
        let verdict = t.borrow_mut().dispatch(&as_reply(sent.clone(), id), now);
        assert_eq!(verdict, Ok(Some(CaseSeen::Kept)));
        // A name drawn all lower case proves nothing; without 0x20 nothing either.
        let lower = CaseMask::of_question(&folded()).unwrap();
        assert!(lower.is_lower() && !mask.is_lower());
        for rule in [
            CaseRule::Exact(lower),
            CaseRule::Probe(lower),
            CaseRule::Any,
        ] {
            let (id, _) = t
                .borrow_mut()
                .register(q.clone(), false, rule, waiter().0)
                .unwrap();
            let verdict = t.borrow_mut().dispatch(&as_reply(folded(), id), now);
            assert_eq!(verdict, Ok(None), "{rule:?}");
        }
    }

    #[test]
    fn background_queries_leave_the_last_quarter_to_clients() {
        let t = table();
        let q = Question::new(b"\x01a\x00", 1, 1);
        let register = |background| {
            t.borrow_mut()
                .register(q.clone(), background, CaseRule::Any, waiter().0)
                .is_ok()
        };
        for _ in 0..3 {
            assert!(register(true));
        }
        assert!(!register(true), "background stops at 3 of 4");
        assert!(t.borrow().is_full(true) && !t.borrow().is_full(false));
        assert!(register(false), "a client's query still goes");
        assert!(!register(false));
        assert!(t.borrow().is_full(false));
    }

    #[test]
    fn the_table_is_bounded_and_replies_must_match_id_and_question() {
        let t = table();
        let q = Question::new(b"\x01a\x00", 1, 1);
        let (w, mailbox) = waiter();
        let mut ids = vec![
            t.borrow_mut()
                .register(q.clone(), false, CaseRule::Any, w)
                .unwrap()
                .0,
        ];
        for _ in 1..4 {
            let (id, _) = t
                .borrow_mut()
                .register(q.clone(), false, CaseRule::Any, waiter().0)
                .unwrap();
            ids.push(id);
        }
        assert!(
            t.borrow_mut()
                .register(q.clone(), false, CaseRule::Any, waiter().0)
                .is_err(),
            "full at its bound"
        );
        // A reply for the first ID but another question is refused.
        let mut reply = vec![0u8; 12];
        reply[..2].copy_from_slice(&ids[0].to_be_bytes());
        reply[2] = 0x80;
        reply[5] = 1;
        reply.extend_from_slice(b"\x01b\x00\x00\x01\x00\x01");
        let now = Instant::now();
        assert_eq!(
            t.borrow_mut().dispatch(&reply, now),
            Err(Dispatch::Mismatch)
        );
        assert!(mailbox.pop().is_none());
        reply[13] = b'a';
        assert!(t.borrow_mut().dispatch(&reply, now).is_ok());
        assert_eq!(t.borrow().len(), 3);
        assert!(mailbox.pop().is_some(), "the first query's waiter has it");
    }

    /// A reply (QR=1) with this ID to the question `a.` A IN.
    fn reply_for(id: u16) -> Vec<u8> {
        let mut reply = vec![0u8; 12];
        reply[..2].copy_from_slice(&id.to_be_bytes());
        reply[2] = 0x80;
        reply[5] = 1;
        reply.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
        reply
    }

    #[test]
    fn a_reply_after_its_query_gave_up_is_late_not_a_mismatch() {
        let t = table();
        let q = Question::new(b"\x01a\x00", 1, 1);
        let (id, serial) = t
            .borrow_mut()
            .register(q.clone(), false, CaseRule::Any, waiter().0)
            .unwrap();
        t.borrow_mut().abandon(id, serial);
        assert!(t.borrow().len() == 0, "the entry went with its waiter");
        let now = Instant::now();
        assert_eq!(
            t.borrow_mut().dispatch(&reply_for(id), now),
            Err(Dispatch::Late)
        );
        // An ID nobody ever used is still a mismatch.
        assert_eq!(
            t.borrow_mut().dispatch(&reply_for(id.wrapping_add(1)), now),
            Err(Dispatch::Mismatch)
        );
        // The memory is bounded: after RECENTLY_ABANDONED more, the first is gone.
        for _ in 0..RECENTLY_ABANDONED {
            let (other, serial) = t
                .borrow_mut()
                .register(q.clone(), false, CaseRule::Any, waiter().0)
                .unwrap();
            t.borrow_mut().abandon(other, serial);
        }
        let late_again = t.borrow_mut().dispatch(&reply_for(id), now);
        let forgotten = t
            .borrow()
            .abandoned
            .iter()
            .all(|a| a.as_ref().is_none_or(|(i, _)| *i != id));
        if forgotten {
            assert_eq!(late_again, Err(Dispatch::Mismatch));
        }
        assert_eq!(t.borrow().abandoned.len(), RECENTLY_ABANDONED);
    }
}

//! One shard's connections to one upstream: a pool of connected UDP sockets, each
//! with its table of pending queries, and reused TCP connections for truncated
//! answers; or, for an encrypted upstream, its DoT or DoH link ([`encrypted`]),
//! which every query takes instead (never UDP or plain TCP).
//!
//! The exchange is cheap by construction: [`UpstreamLink::send`] registers the
//! query and sends it with one `send` from the flight's own task, and the socket's
//! receive loop takes every queued reply with one `recvmmsg` (up to
//! [`crate::io::mmsg::BATCH`]), checks each against the pending table, and
//! posts it to the [`Mailbox`] of the flight that asked. No task, channel or timer
//! per upstream query: the flight keeps the deadline of each query it sent and
//! times them out itself. Both backends do this through tokio's reactor (which the
//! io_uring shards also run). A send the socket has no room for fails the query as
//! our own overload (`FailKind::Overload`), never as the upstream's failure.
//!
//! Acceptance rules (anti-spoofing): a reply counts only if it arrives on the
//! connected socket (the kernel filters the peer address), carries the ID of a
//! pending query (IDs drawn from a CSPRNG, unique per socket) and repeats that
//! query's question, in the letter case sent with DNS 0x20 (on by default, with
//! an automatic per-link fallback for upstreams that fold the case: [`case`]).
//! Anything else is dropped and counted.
//!
//! Bounds: at most `max_upstream_pending` queries wait per link (spread over its
//! sockets); a query past the bound fails at once (the tiers move on). A pending
//! entry is removed when its reply comes or when the flight stops waiting
//! ([`Sent`] is dropped: a timeout, or the flight ended).

mod case;
pub(crate) mod encrypted;
mod mailbox;
mod pending;

pub(crate) use mailbox::{Exchange, Mailbox, Report};
#[cfg(fuzzing)]
pub(crate) use pending::fuzz_dispatch;
pub(crate) use pending::{CaseMask, Question, Waiter};

use case::{CaseGuard, CaseSeen, CaseUse};

use crate::config::{Limits, UpstreamConfig};
use crate::health::FailKind;
use crate::io::buffers::BUF_CAPACITY;
use crate::io::frame::{framed, read_frame};
use crate::io::mmsg::{short_is_drained, RecvBatch, BATCH, BATCHES_PER_TURN};
use crate::io::{Backend, Closing, TcpIo};
use crate::metrics::{DropReason, ShardStats};
use crate::wire::build::MAX_UPSTREAM_QUERY_LEN;
use crate::wire::reader::Header;
use crate::wire::HEADER_LEN;
use pending::{CaseRule, Dispatch, PendingTable};
use rand::Rng;
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::task::JoinHandle;

/// One shard's link to one upstream.
pub(crate) struct UpstreamLink<B: Backend> {
    pub(crate) addr: SocketAddr,
    /// DNS 0x20 on its UDP queries (`case_randomization`).
    pub(crate) randomize_case: bool,
    /// With `randomize_case`: whether the next query gets it (the fallback).
    case: Option<Rc<CaseWatch>>,
    /// The pool of connected UDP sockets, each with its pending table; a query
    /// goes out on one chosen at random (spoofing entropy: the source port).
    sockets: RefCell<Vec<Rc<UdpSlot>>>,
    /// Pending queries per socket (`max_upstream_pending` spread over the pool).
    max_pending: usize,
    /// A socket is replaced once this old (at its next use).
    lifetime: Duration,
    stats: Rc<ShardStats>,
    idle_tcp: RefCell<Vec<Rc<Closing<B::Stream>>>>,
    max_idle_tcp: usize,
    /// Upstream TCP connections in use now, and their bound.
    tcp_busy: Cell<usize>,
    max_tcp: usize,
    /// How long a query waits for its answer (`upstream_timeout`).
    pub(crate) timeout: Duration,
    /// DoT or DoH (`tls://`, `https://`): every query goes there, never over UDP
    /// or plain TCP (the UDP pool is then empty).
    encrypted: Option<Rc<encrypted::EncryptedLink>>,
}

/// One connected UDP socket of a link, its pending table and receive loop. It stays
/// open while the link or a query waiting on it ([`Sent`]) holds it; when the last
/// goes, its receive loop is stopped and the socket closed.
struct UdpSlot {
    sock: Rc<tokio::net::UdpSocket>,
    pending: Rc<RefCell<PendingTable>>,
    /// The link's 0x20 guard, told what the replies say about letter case.
    case: Option<Rc<CaseWatch>>,
    receiver: JoinHandle<()>,
    /// When to replace it.
    renew_at: Instant,
}

impl UdpSlot {
    /// Opens a socket with a random source port, connected to `addr`, and starts its
    /// receive loop on the current shard runtime.
    fn open(
        addr: SocketAddr,
        max_pending: usize,
        renew_at: Instant,
        stats: &Rc<ShardStats>,
        case: Option<&Rc<CaseWatch>>,
    ) -> io::Result<Rc<Self>> {
        let sock = Rc::new(tokio::net::UdpSocket::from_std(connected_udp(addr)?)?);
        let pending = Rc::new(RefCell::new(PendingTable::new(max_pending)));
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

/// A query in flight: dropping it stops the waiting. On a UDP socket, the pending
/// entry goes, and is remembered as abandoned so that its late reply is told apart
/// from a forged one (the socket is held open meanwhile); on an encrypted link, the
/// task asking it is stopped.
pub(crate) struct Sent(SentOn);

enum SentOn {
    Udp {
        slot: Rc<UdpSlot>,
        id: u16,
        serial: u64,
    },
    Encrypted(JoinHandle<()>),
}

impl Drop for Sent {
    fn drop(&mut self) {
        match &self.0 {
            SentOn::Udp { slot, id, serial } => {
                let seen = slot.pending.borrow_mut().abandon(*id, *serial);
                if let (Some(seen), Some(case)) = (seen, &slot.case) {
                    case.saw(seen, Instant::now());
                }
            }
            SentOn::Encrypted(task) => task.abort(),
        }
    }
}

/// A send error that says our side has no room (socket or device queue full), not
/// that the upstream is unreachable.
fn local_congestion(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}

/// A std UDP socket bound to a random port and connected to `addr`.
fn connected_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
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

impl<B: Backend> UpstreamLink<B> {
    /// Opens the pool of UDP sockets (`limits.upstream_sockets`), each with its
    /// receive loop on the current shard runtime. Their renewal times are spread
    /// over one lifetime, so the pool turns over a socket at a time. An encrypted
    /// upstream gets its link over `tls` ([`encrypted::prepare`]) instead.
    pub(crate) fn open(
        upstream: &UpstreamConfig,
        tls: Option<&encrypted::TlsTarget>,
        limits: &Limits,
        stats: Rc<ShardStats>,
    ) -> io::Result<Rc<Self>> {
        let addr = upstream.address;
        let encrypted = match (tls, upstream.transport.is_encrypted()) {
            (Some(target), true) => Some(Rc::new(encrypted::EncryptedLink::with_target(
                upstream,
                target.clone(),
                limits,
                &stats,
            )?)),
            (None, false) => None,
            _ => {
                return Err(io::Error::other(format!(
                    "upstream {}: TLS setup does not match its transport",
                    upstream.label()
                )))
            }
        };
        // An encrypted upstream gets no UDP socket: nothing can leave in the clear.
        let n = if encrypted.is_some() {
            0
        } else {
            limits.upstream_sockets.max(1)
        };
        let max_pending = limits.max_upstream_pending.div_ceil(n.max(1)).max(1);
        let lifetime = limits.upstream_socket_lifetime;
        let now = Instant::now();
        let mut rng = rand::rng();
        let case = (upstream.case_randomization && n > 0).then(|| {
            Rc::new(CaseWatch {
                guard: RefCell::new(CaseGuard::new(limits.upstream_timeout)),
                addr,
                label: RefCell::new(upstream.label()),
            })
        });
        let sockets = (0..n)
            .map(|_| {
                let spread = lifetime.mul_f64(rng.random_range(0.5..=1.0));
                UdpSlot::open(addr, max_pending, now + spread, &stats, case.as_ref())
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Rc::new(Self {
            addr,
            randomize_case: upstream.case_randomization,
            case,
            sockets: RefCell::new(sockets),
            max_pending,
            lifetime,
            stats,
            idle_tcp: RefCell::new(Vec::new()),
            max_idle_tcp: limits.upstream_tcp_idle,
            tcp_busy: Cell::new(0),
            max_tcp: limits.upstream_tcp_max,
            timeout: limits.upstream_timeout,
            encrypted,
        }))
    }

    /// Whether this link is the transport `upstream` asks for (a reload keeps it
    /// only then: a plain link never serves an encrypted upstream, nor the reverse).
    pub(crate) fn serves(&self, upstream: &UpstreamConfig) -> bool {
        self.addr == upstream.address
            && self.randomize_case == upstream.case_randomization
            && match &self.encrypted {
                Some(enc) => enc.serves(upstream),
                None => !upstream.transport.is_encrypted(),
            }
    }

    /// A socket of the pool at random, renewed first if its time has come (a
    /// socket that cannot be opened leaves the old one in place). None for a link
    /// without UDP sockets (an encrypted one).
    fn pick(&self, now: Instant) -> Option<Rc<UdpSlot>> {
        let mut sockets = self.sockets.borrow_mut();
        if sockets.is_empty() {
            return None;
        }
        let i = rand::rng().random_range(0..sockets.len());
        if sockets[i].renew_at <= now {
            match UdpSlot::open(
                self.addr,
                self.max_pending,
                now + self.lifetime,
                &self.stats,
                self.case.as_ref(),
            ) {
                // The old one lives on while its queries wait, then is released.
                Ok(fresh) => sockets[i] = fresh,
                Err(e) => {
                    tracing::debug!(error = %e, upstream = %self.addr, "renewing an upstream socket")
                }
            }
        }
        Some(Rc::clone(&sockets[i]))
    }

    /// A reload kept this link for an upstream now labelled `label` (logs and
    /// the 0x20 fallback counter).
    pub(crate) fn relabel(&self, label: String) {
        if let Some(case) = &self.case {
            *case.label.borrow_mut() = label;
        }
    }

    /// Whether queries leave with DNS 0x20 now (configured, and not in fallback).
    #[cfg(test)]
    pub(crate) fn case_on(&self) -> bool {
        self.case.as_ref().is_some_and(|c| c.guard.borrow().is_on())
    }

    /// The local ports of the pool's sockets (for tests and logs).
    #[cfg(test)]
    pub(crate) fn local_ports(&self) -> Vec<u16> {
        self.sockets
            .borrow()
            .iter()
            .filter_map(|s| s.sock.local_addr().ok().map(|a| a.port()))
            .collect()
    }

    /// Sends `query` (any ID; it is replaced) over UDP, now, on a socket of the
    /// pool; its reply will be posted to `waiter`'s mailbox. The query waits until
    /// the returned [`Sent`] is dropped. `background`: no client waits for it (see
    /// `PendingTable::bound`). Fails at once with `Overload` when the pending
    /// tables are full, `Network` when the socket refuses it.
    pub(crate) fn send(
        &self,
        query: &[u8],
        question: &Question,
        background: bool,
        waiter: Waiter,
    ) -> Result<Sent, FailKind> {
        if let Some(enc) = &self.encrypted {
            // A task of its own (connections, TLS and HTTP/2 are awaited); its
            // result goes to the mailbox like a UDP reply.
            let (enc, query, question) = (Rc::clone(enc), query.to_vec(), question.clone());
            return Ok(Sent(SentOn::Encrypted(tokio::task::spawn_local(
                async move {
                    let res = enc.exchange(&query, &question, background).await;
                    waiter.mailbox.push((waiter.up, res));
                },
            ))));
        }
        let mut buf = [0u8; MAX_UPSTREAM_QUERY_LEN];
        let Some(msg) = buf.get_mut(..query.len()) else {
            return Err(FailKind::Malformed);
        };
        msg.copy_from_slice(query);
        if msg.len() < HEADER_LEN {
            return Err(FailKind::Malformed);
        }
        let case = match self.case.as_ref().map(|c| c.next_query(waiter.sent_at)) {
            None | Some(CaseUse::Plain) => CaseRule::Any,
            Some(CaseUse::Strict) => {
                CaseMask::randomize(msg).map_or(CaseRule::Any, CaseRule::Exact)
            }
            Some(CaseUse::Probe) => CaseMask::randomize(msg).map_or(CaseRule::Any, CaseRule::Probe),
        };
        // A random socket; a second one if the first has no room.
        let mut slot = self.pick(waiter.sent_at).ok_or(FailKind::Network)?;
        if slot.pending.borrow().is_full(background) {
            slot = self.pick(waiter.sent_at).ok_or(FailKind::Network)?;
        }
        let (id, serial) = slot
            .pending
            .borrow_mut()
            .register(question.clone(), background, case, waiter)
            .ok_or(FailKind::Overload)?;
        let sock = Rc::clone(&slot.sock);
        let sent = Sent(SentOn::Udp { slot, id, serial });
        msg[..2].copy_from_slice(&id.to_be_bytes());
        // A connected datagram socket with room in its buffer: the send does not
        // wait. A full buffer is our own bound, not the upstream's failure (it
        // must not open a healthy upstream's circuit): the tiers move on.
        match socket2::SockRef::from(&*sock).send(msg) {
            Ok(_) => Ok(sent),
            Err(e) if local_congestion(&e) => Err(FailKind::Overload),
            Err(_) => Err(FailKind::Network),
        }
    }

    /// One query, start to end: sent over UDP, its reply awaited (at most
    /// `upstream_timeout`), and asked again over TCP on TC=1. For callers that
    /// have no flight of their own to wait in (tests, tools); flights use
    /// [`send`](Self::send) and time out their queries themselves.
    #[cfg(test)]
    pub(crate) async fn exchange(
        &self,
        query: &[u8],
        question: &Question,
        background: bool,
    ) -> Result<Exchange, FailKind> {
        let start = Instant::now();
        let mailbox = Mailbox::new();
        let waiter = Waiter {
            mailbox: Rc::clone(&mailbox),
            up: crate::health::UpstreamIdx::new(0),
            sent_at: start,
        };
        let _sent = self.send(query, question, background, waiter)?;
        let (_, res) = tokio::time::timeout(self.timeout, mailbox.recv())
            .await
            .map_err(|_| FailKind::Timeout)?;
        let ex = res?;
        if !ex.truncated() {
            return Ok(ex);
        }
        self.tcp_retry(query, question, crate::health::after(start, self.timeout))
            .await
    }

    /// Asks `query` again over TCP after a truncated UDP answer, by `deadline` (one
    /// attempt, one deadline: the retry gets what is left of it).
    pub(crate) async fn tcp_retry(
        &self,
        query: &[u8],
        question: &Question,
        deadline: Instant,
    ) -> Result<Exchange, FailKind> {
        if self.encrypted.is_some() {
            // Never in the clear (the encrypted link refuses truncated replies, so
            // this is only a guard).
            return Err(FailKind::Malformed);
        }
        let start = Instant::now();
        let reply = tokio::time::timeout_at(deadline.into(), self.tcp_exchange(query, question))
            .await
            .map_err(|_| FailKind::Timeout)??;
        Ok(Exchange {
            reply,
            rtt: start.elapsed(),
            over_tcp: true,
        })
    }
    /// One query over TCP (RFC 7766), on an idle connection when there is one.
    /// A reused connection may have been closed by the upstream meanwhile: then the
    /// query is sent once more on a fresh connection.
    async fn tcp_exchange(&self, query: &[u8], question: &Question) -> Result<Vec<u8>, FailKind> {
        let id: u16 = rand::rng().random();
        let mut frame = framed(query).ok_or(FailKind::Malformed)?;
        frame
            .get_mut(2..4)
            .ok_or(FailKind::Malformed)?
            .copy_from_slice(&id.to_be_bytes());
        let reused = self.idle_tcp.borrow_mut().pop();
        // Bound on connections in use at once; idle ones count while reused.
        if reused.is_none() && self.tcp_busy.get() >= self.max_tcp {
            return Err(FailKind::Overload);
        }
        self.tcp_busy.set(self.tcp_busy.get() + 1);
        let _busy = TcpInUse(&self.tcp_busy);
        if let Some(stream) = reused {
            if let Ok(reply) = tcp_round(&**stream, frame.clone(), id, question).await {
                self.keep_idle(stream);
                return Ok(reply);
            }
        }
        let stream = Rc::new(Closing(
            B::connect(self.addr).await.map_err(|_| FailKind::Network)?,
        ));
        let reply = tcp_round(&**stream, frame, id, question).await?;
        self.keep_idle(stream);
        Ok(reply)
    }

    fn keep_idle(&self, stream: Rc<Closing<B::Stream>>) {
        let mut idle = self.idle_tcp.borrow_mut();
        if idle.len() < self.max_idle_tcp {
            idle.push(stream);
        }
    }
}

/// Writes one framed query and reads its reply, checking ID and question.
async fn tcp_round<S: TcpIo>(
    stream: &S,
    frame: Vec<u8>,
    id: u16,
    question: &Question,
) -> Result<Vec<u8>, FailKind> {
    let (res, _) = stream.write_all(frame).await;
    res.map_err(|_| FailKind::Network)?;
    let reply = read_frame(stream).await.map_err(|_| FailKind::Network)?;
    let header = Header::parse(&reply).map_err(|_| FailKind::Malformed)?;
    if !header.qr() || header.id != id || question.matches(&reply) != Some(true) {
        return Err(FailKind::Malformed);
    }
    Ok(reply)
}

/// The 0x20 guard of one link ([`case`]), shared by its sockets, with what its
/// changes are reported under.
struct CaseWatch {
    guard: RefCell<CaseGuard>,
    addr: SocketAddr,
    label: RefCell<String>,
}

impl CaseWatch {
    fn next_query(&self, now: Instant) -> CaseUse {
        self.guard.borrow_mut().next_query(now)
    }

    fn saw(&self, seen: CaseSeen, now: Instant) {
        let change = self.guard.borrow_mut().saw(seen, now);
        if let Some(change) = change {
            case::report(change, self.addr, &self.label.borrow());
        }
    }
}

/// Counts one use while alive.
struct TcpInUse<'a>(&'a Cell<usize>);

impl Drop for TcpInUse<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
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
    pending: Rc<RefCell<PendingTable>>,
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

#[cfg(test)]
mod tests {
    use super::pending::{Pending, RECENTLY_ABANDONED};
    use super::*;
    use crate::health::UpstreamIdx;

    fn table() -> RefCell<PendingTable> {
        RefCell::new(PendingTable::new(4))
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
        t.borrow_mut().map.remove(&id);
        t.borrow_mut().map.insert(
            id,
            Pending {
                case: CaseRule::Any,
                folded: false,
                serial: serial + 1,
                question: q,
                waiter: waiter().0,
            },
        );
        t.borrow_mut().abandon(id, serial);
        assert!(
            t.borrow().map.contains_key(&id),
            "the later query is still pending"
        );
        t.borrow_mut().abandon(id, serial + 1);
        assert!(t.borrow().map.is_empty());
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
        assert_eq!(t.borrow().map.len(), 1, "the query keeps waiting");
        assert!(mailbox.pop().is_none());
        assert!(t.borrow_mut().dispatch(&reply(&sent), now).is_ok());
        let (_, got) = mailbox.pop().expect("posted to the waiter");
        assert_eq!(got.unwrap().reply, reply(&sent));
        // A compressed or cut name has no mask.
        assert_eq!(CaseMask::of_question(&[0u8; 12]), None);
    }

    /// `example.com.` A IN in wire form under a 12-byte header, with the name's
    /// letters in this case (`b"Example"`, `b"COM"`).
    fn example(label1: &[u8], label2: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; 12];
        m.push(7);
        m.extend_from_slice(label1);
        m.push(3);
        m.extend_from_slice(label2);
        m.extend_from_slice(b"\x00\x00\x01\x00\x01");
        m
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
                .is_some()
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
                .is_none(),
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
        assert_eq!(t.borrow().map.len(), 3);
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
        assert!(t.borrow().map.is_empty(), "the entry went with its waiter");
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

    /// A UDP responder on loopback that answers every query with its question
    /// (QR set) and records the source port it came from.
    fn responder() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u16>>>) {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let addr = sock.local_addr().unwrap();
        let ports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&ports);
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                seen.lock().unwrap().push(from.port());
                buf[2] |= 0x80;
                let _ = sock.send_to(&buf[..n], from);
            }
        });
        (addr, ports)
    }

    /// A UDP responder on loopback that answers every query with its question in
    /// lower case (QR set), as some upstreams do; counts the queries that came
    /// with a capital letter.
    fn folding_responder() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let addr = sock.local_addr().unwrap();
        let capitals = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = std::sync::Arc::clone(&capitals);
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if buf[12..n].iter().any(u8::is_ascii_uppercase) {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                buf[2] |= 0x80;
                buf[12..n].make_ascii_lowercase();
                let _ = sock.send_to(&buf[..n], from);
            }
        });
        (addr, capitals)
    }

    #[test]
    fn a_link_to_an_upstream_that_folds_the_case_falls_back_and_is_answered_from() {
        use std::sync::atomic::Ordering;
        let (addr, capitals) = folding_responder();
        crate::test_support::local(async {
            let limits = Limits {
                upstream_timeout: Duration::from_millis(100),
                upstream_sockets: 2,
                ..Limits::default()
            };
            let stats = Rc::new(ShardStats::new(1));
            let upstream = UpstreamConfig::plain(addr);
            let link =
                UpstreamLink::<crate::io::Epoll>::open(&upstream, None, &limits, Rc::clone(&stats))
                    .unwrap();
            assert!(link.case_on(), "on by default");
            let query = example(b"example", b"com");
            let q = Question::new(b"\x07example\x03com\x00", 1, 1);
            // Each query with a capital drawn gets its reply dropped and times out
            // (a draw in all lower case, 1 in 1024, is answered and proves nothing).
            let mut timed_out = 0;
            for _ in 0..20 {
                if !link.case_on() {
                    break;
                }
                if let Err(FailKind::Timeout) = link.exchange(&query, &q, false).await {
                    timed_out += 1;
                }
            }
            assert!(!link.case_on(), "fell back");
            assert_eq!(
                timed_out,
                case::FOLDS_TO_FALL_BACK,
                "after three folds in a row"
            );
            // The only drops here: the replies in another case (upstream_case_mismatch).
            let drops: u64 = stats.drops.iter().map(Cell::get).sum();
            assert!(drops >= 3, "the folded replies counted: {drops}");
            // Now asked without 0x20, and answered.
            let before = capitals.load(Ordering::SeqCst);
            for _ in 0..5 {
                let ex = link.exchange(&query, &q, false).await.expect("answered");
                assert!(ex.reply[12..].eq_ignore_ascii_case(&query[12..]));
            }
            assert_eq!(capitals.load(Ordering::SeqCst), before, "no capital sent");
        });
    }

    /// A UDP responder on loopback that waits for `n` queries, then answers them
    /// all at once (QR set), in reverse order.
    fn burst_responder(n: usize) -> SocketAddr {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while got.len() < n {
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    return;
                };
                buf[2] |= 0x80;
                got.push((buf[..len].to_vec(), from));
            }
            for (reply, to) in got.iter().rev() {
                sock.send_to(reply, to).unwrap();
            }
        });
        addr
    }

    #[test]
    fn a_full_send_buffer_is_our_congestion_not_the_upstreams_failure() {
        assert!(local_congestion(&io::ErrorKind::WouldBlock.into()));
        assert!(local_congestion(&io::Error::from_raw_os_error(
            libc::ENOBUFS
        )));
        for upstreams in [libc::ECONNREFUSED, libc::ENETUNREACH, libc::EHOSTUNREACH] {
            assert!(!local_congestion(&io::Error::from_raw_os_error(upstreams)));
        }
    }

    #[test]
    fn a_burst_of_replies_past_a_receive_batch_reaches_every_waiter_once() {
        const N: usize = 3 * BATCH + 5;
        let addr = burst_responder(N);
        crate::test_support::local(async {
            // One socket: every reply queues on it, and a receive takes a batch.
            let limits = Limits {
                upstream_sockets: 1,
                ..Limits::default()
            };
            let stats = Rc::new(ShardStats::new(1));
            let upstream = UpstreamConfig::plain(addr);
            let link =
                UpstreamLink::<crate::io::Epoll>::open(&upstream, None, &limits, stats).unwrap();
            let mut query = vec![0u8; 12];
            query[5] = 1;
            query.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
            let q = Question::new(b"\x01a\x00", 1, 1);
            let mailbox = Mailbox::new();
            let sent: Vec<Sent> = (0..N)
                .map(|up| {
                    let waiter = Waiter {
                        mailbox: Rc::clone(&mailbox),
                        up: UpstreamIdx::new(up),
                        sent_at: Instant::now(),
                    };
                    link.send(&query, &q, false, waiter).unwrap()
                })
                .collect();
            let mut heard = vec![0u32; N];
            for _ in 0..N {
                let (up, res) = tokio::time::timeout(Duration::from_secs(5), mailbox.recv())
                    .await
                    .expect("every reply arrives");
                // The question as sent (0x20: in some letter case).
                assert!(res.unwrap().reply[12..].eq_ignore_ascii_case(&query[12..]));
                heard[up.get()] += 1;
            }
            assert!(heard.iter().all(|&h| h == 1), "each waiter once: {heard:?}");
            assert!(mailbox.pop().is_none());
            drop(sent);
        });
    }

    #[test]
    fn queries_leave_from_a_pool_of_ports_that_is_renewed() {
        let (addr, ports) = responder();
        crate::test_support::local(async {
            let limits = Limits {
                upstream_socket_lifetime: Duration::from_millis(200),
                ..Limits::default()
            };
            let stats = Rc::new(ShardStats::new(1));
            let upstream = UpstreamConfig::plain(addr);
            let link =
                UpstreamLink::<crate::io::Epoll>::open(&upstream, None, &limits, stats).unwrap();
            let first = link.local_ports();
            assert_eq!(first.len(), 16);
            let mut query = vec![0u8; 12];
            query[5] = 1;
            query.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
            let q = Question::new(b"\x01a\x00", 1, 1);
            for _ in 0..64 {
                let ex = link.exchange(&query, &q, false).await.unwrap();
                assert!(ex.reply[12..].eq_ignore_ascii_case(&query[12..]));
            }
            let used: std::collections::HashSet<u16> =
                ports.lock().unwrap().iter().copied().collect();
            assert!(used.len() >= 8, "64 queries over {} ports", used.len());
            assert!(used.iter().all(|p| first.contains(p)));
            // Past their lifetime the sockets are replaced as they are used.
            tokio::time::sleep(Duration::from_millis(250)).await;
            for _ in 0..64 {
                link.exchange(&query, &q, false).await.unwrap();
            }
            assert!(
                link.case_on(),
                "an upstream that repeats the case keeps 0x20"
            );
            let renewed = link.local_ports();
            assert!(
                renewed.iter().filter(|p| !first.contains(p)).count() >= 8,
                "most sockets renewed: {first:?} -> {renewed:?}"
            );
        });
    }
}

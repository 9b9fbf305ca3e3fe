//! One shard's connections to one upstream ([`UpstreamLink`], an enum of its
//! transports): a pool of connected UDP sockets ([`udp`]), each with its table of
//! pending queries ([`pending::PendingTable`], the one DoT connections use too), and
//! reused TCP connections for truncated answers; or, for an encrypted upstream, its
//! DoT or DoH link ([`encrypted`]), which every query takes instead (never UDP or
//! plain TCP).
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
mod udp;

pub(crate) use mailbox::{Exchange, Mailbox, Report};
pub(crate) use pending::{CaseMask, Question};
#[cfg(fuzzing)]
pub(crate) use udp::fuzz_dispatch;
pub(crate) use udp::Waiter;

use case::{CaseGuard, CaseUse, CaseWatch};

use crate::config::{Limits, UpstreamConfig};
use crate::health::FailKind;
use crate::io::frame::{framed, read_frame};
use crate::io::{Backend, Closing, TcpIo};
use crate::metrics::ShardStats;
use crate::wire::build::MAX_UPSTREAM_QUERY_LEN;
use crate::wire::reader::Header;
use crate::wire::HEADER_LEN;
use pending::CaseRule;
use rand::Rng;
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use udp::{local_congestion, UdpSlot};

/// One shard's link to one upstream.
pub(crate) struct UpstreamLink<B: Backend> {
    pub(crate) addr: SocketAddr,
    /// DNS 0x20 on its UDP queries (`case_randomization`).
    pub(crate) randomize_case: bool,
    /// How long a query waits for its answer (`upstream_timeout`).
    pub(crate) timeout: Duration,
    via: Via<B>,
}

/// How a link's queries travel.
enum Via<B: Backend> {
    /// UDP from a pool of sockets, TCP for truncated answers.
    Plain(PlainLink<B>),
    /// DoT or DoH (`tls://`, `https://`): every query, never UDP or plain TCP.
    Encrypted(Rc<encrypted::EncryptedLink>),
}

/// A plain upstream's sockets and connections.
struct PlainLink<B: Backend> {
    addr: SocketAddr,
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

impl<B: Backend> UpstreamLink<B> {
    /// Opens the pool of UDP sockets (`limits.upstream_sockets`), each with its
    /// receive loop on the current shard runtime. Their renewal times are spread
    /// over one lifetime, so the pool turns over a socket at a time. An encrypted
    /// upstream gets its link over `tls` ([`encrypted::prepare`]) instead, and no
    /// UDP socket: nothing can leave in the clear.
    pub(crate) fn open(
        upstream: &UpstreamConfig,
        tls: Option<&encrypted::TlsTarget>,
        limits: &Limits,
        stats: Rc<ShardStats>,
    ) -> io::Result<Rc<Self>> {
        let via = match (tls, upstream.transport.is_encrypted()) {
            (Some(target), true) => Via::Encrypted(Rc::new(encrypted::EncryptedLink::with_target(
                upstream,
                target.clone(),
                limits,
                &stats,
            )?)),
            (None, false) => Via::Plain(PlainLink::open(upstream, limits, stats)?),
            _ => {
                return Err(io::Error::other(format!(
                    "upstream {}: TLS setup does not match its transport",
                    upstream.label()
                )))
            }
        };
        Ok(Rc::new(Self {
            addr: upstream.address,
            randomize_case: upstream.case_randomization,
            timeout: limits.upstream_timeout,
            via,
        }))
    }

    /// Whether this link is the transport `upstream` asks for (a reload keeps it
    /// only then: a plain link never serves an encrypted upstream, nor the reverse).
    pub(crate) fn serves(&self, upstream: &UpstreamConfig) -> bool {
        self.addr == upstream.address
            && self.randomize_case == upstream.case_randomization
            && match &self.via {
                Via::Encrypted(enc) => enc.serves(upstream),
                Via::Plain(_) => !upstream.transport.is_encrypted(),
            }
    }

    /// A reload kept this link for an upstream now labelled `label` (logs and
    /// the 0x20 fallback counter).
    pub(crate) fn relabel(&self, label: String) {
        if let Via::Plain(PlainLink {
            case: Some(case), ..
        }) = &self.via
        {
            *case.label.borrow_mut() = label;
        }
    }

    /// Whether queries leave with DNS 0x20 now (configured, and not in fallback).
    #[cfg(test)]
    pub(crate) fn case_on(&self) -> bool {
        matches!(&self.via, Via::Plain(PlainLink { case: Some(c), .. }) if c.guard.borrow().is_on())
    }

    /// The local ports of the pool's sockets (for tests and logs).
    #[cfg(test)]
    pub(crate) fn local_ports(&self) -> Vec<u16> {
        let Via::Plain(plain) = &self.via else {
            return Vec::new();
        };
        plain
            .sockets
            .borrow()
            .iter()
            .filter_map(|s| s.sock.local_addr().ok().map(|a| a.port()))
            .collect()
    }

    /// Sends `query` (any ID; it is replaced), now: over UDP on a socket of the
    /// pool, or on the encrypted link; its reply will be posted to `waiter`'s
    /// mailbox. The query waits until the returned [`Sent`] is dropped.
    /// `background`: no client waits for it (see [`pending::room`]). Fails at once
    /// with `Overload` when the pending tables are full, `Network` when the socket
    /// refuses it.
    pub(crate) fn send(
        &self,
        query: &[u8],
        question: &Question,
        background: bool,
        waiter: Waiter,
    ) -> Result<Sent, FailKind> {
        match &self.via {
            Via::Plain(plain) => plain.send(query, question, background, waiter),
            Via::Encrypted(enc) => {
                // A task of its own (connections, TLS and HTTP/2 are awaited); its
                // result goes to the mailbox like a UDP reply.
                let (enc, query, question) = (Rc::clone(enc), query.to_vec(), question.clone());
                Ok(Sent(SentOn::Encrypted(tokio::task::spawn_local(
                    async move {
                        let res = enc.exchange(&query, &question, background).await;
                        waiter.mailbox.push((waiter.up, res));
                    },
                ))))
            }
        }
    }

    /// One query, start to end: sent, its reply awaited (at most
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
        let Via::Plain(plain) = &self.via else {
            // Never in the clear (the encrypted link refuses truncated replies, so
            // this is only a guard).
            return Err(FailKind::Malformed);
        };
        let start = Instant::now();
        let reply = tokio::time::timeout_at(deadline.into(), plain.tcp_exchange(query, question))
            .await
            .map_err(|_| FailKind::Timeout)??;
        Ok(Exchange {
            reply,
            rtt: start.elapsed(),
            over_tcp: true,
        })
    }
}

impl<B: Backend> PlainLink<B> {
    fn open(upstream: &UpstreamConfig, limits: &Limits, stats: Rc<ShardStats>) -> io::Result<Self> {
        let addr = upstream.address;
        let n = limits.upstream_sockets.max(1);
        let max_pending = limits.max_upstream_pending.div_ceil(n).max(1);
        let lifetime = limits.upstream_socket_lifetime;
        let now = Instant::now();
        let mut rng = rand::rng();
        let case = upstream.case_randomization.then(|| {
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
        Ok(Self {
            addr,
            case,
            sockets: RefCell::new(sockets),
            max_pending,
            lifetime,
            stats,
            idle_tcp: RefCell::new(Vec::new()),
            max_idle_tcp: limits.upstream_tcp_idle,
            tcp_busy: Cell::new(0),
            max_tcp: limits.upstream_tcp_max,
        })
    }

    /// A socket of the pool at random, renewed first if its time has come (a
    /// socket that cannot be opened leaves the old one in place).
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

    /// [`UpstreamLink::send`] over UDP.
    fn send(
        &self,
        query: &[u8],
        question: &Question,
        background: bool,
        waiter: Waiter,
    ) -> Result<Sent, FailKind> {
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
            .map_err(|_| FailKind::Overload)?;
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

/// Counts one use while alive.
struct TcpInUse<'a>(&'a Cell<usize>);

impl Drop for TcpInUse<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::UpstreamIdx;

    /// `example.com.` A IN in wire form under a 12-byte header, with the name's
    /// letters in this case (`b"Example"`, `b"COM"`).
    pub(super) fn example(label1: &[u8], label2: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; 12];
        m.push(7);
        m.extend_from_slice(label1);
        m.push(3);
        m.extend_from_slice(label2);
        m.extend_from_slice(b"\x00\x00\x01\x00\x01");
        m
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
        const N: usize = 3 * crate::io::mmsg::BATCH + 5;
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

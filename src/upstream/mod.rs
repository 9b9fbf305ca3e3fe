//! One shard's connections to one upstream: a connected UDP socket with its table of
//! pending queries, and reused TCP connections for truncated answers; or, for an
//! encrypted upstream, its DoT or DoH link ([`encrypted`]), which every query takes
//! instead (never UDP or plain TCP).
//!
//! Acceptance rules (anti-spoofing): a reply counts only if it arrives on the
//! connected socket (the kernel filters the peer address), carries the ID of a
//! pending query (IDs drawn from a CSPRNG, unique per socket) and repeats that
//! query's question. Anything else is dropped and counted.
//!
//! Bounds: at most `max_upstream_pending` queries wait per socket; a query past the
//! bound fails at once (the tiers move on). Every query has a hard timeout; its
//! pending entry is removed on timeout or when the caller stops waiting.

pub(crate) mod encrypted;
mod pending;

#[cfg(fuzzing)]
pub(crate) use pending::fuzz_dispatch;
pub(crate) use pending::{CaseMask, Question};

use crate::config::{Limits, UpstreamConfig};
use crate::health::FailKind;
use crate::io::buffers::BufferPool;
use crate::io::frame::{framed, read_frame};
use crate::io::{Backend, Closing, TcpIo, UdpIo};
use crate::metrics::{DropReason, ShardStats};
use crate::wire::reader::Header;
use crate::wire::HEADER_LEN;
use pending::{Dispatch, PendingGuard, PendingTable};
use rand::Rng;
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A successful exchange.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// The reply, as received (our ID, the upstream's case).
    pub(crate) reply: Vec<u8>,
    /// Round-trip time of the attempt that produced it.
    pub(crate) rtt: Duration,
    /// It came over TCP after a truncated UDP answer.
    pub(crate) over_tcp: bool,
}

/// One shard's link to one upstream.
pub(crate) struct UpstreamLink<B: Backend> {
    pub(crate) addr: SocketAddr,
    /// DNS 0x20 on its UDP queries (`case_randomization`).
    pub(crate) randomize_case: bool,
    /// The pool of connected UDP sockets, each with its pending table; a query
    /// goes out on one chosen at random (spoofing entropy: the source port).
    sockets: RefCell<Vec<Rc<UdpSlot<B>>>>,
    /// Pending queries per socket (`max_upstream_pending` spread over the pool).
    max_pending: usize,
    /// A socket is replaced once this old (at its next use).
    lifetime: Duration,
    pool: Rc<BufferPool>,
    stats: Rc<ShardStats>,
    idle_tcp: RefCell<Vec<Rc<Closing<B::Stream>>>>,
    max_idle_tcp: usize,
    /// Upstream TCP connections in use now, and their bound.
    tcp_busy: Cell<usize>,
    max_tcp: usize,
    timeout: Duration,
    /// DoT or DoH (`tls://`, `https://`): every query goes there, never over UDP
    /// or plain TCP (the UDP pool is then empty).
    encrypted: Option<encrypted::EncryptedLink>,
}

/// One connected UDP socket of a link, its pending table and receive loop. It stays
/// open while the link or a query waiting on it holds it; when the last goes, it is
/// released and its receive loop ends.
struct UdpSlot<B: Backend> {
    udp: Rc<B::Udp>,
    pending: Rc<RefCell<PendingTable>>,
    /// A duplicate of the socket, to release it at the end.
    closer: socket2::Socket,
    /// When to replace it.
    renew_at: Instant,
}

impl<B: Backend> UdpSlot<B> {
    /// Opens a socket with a random source port, connected to `addr`, and starts its
    /// receive loop on the current shard runtime.
    fn open(
        addr: SocketAddr,
        max_pending: usize,
        renew_at: Instant,
        pool: &Rc<BufferPool>,
        stats: &Rc<ShardStats>,
    ) -> io::Result<Rc<Self>> {
        let std_udp = connected_udp(addr)?;
        let closer = socket2::Socket::from(std_udp.try_clone()?);
        let udp = Rc::new(B::udp(std_udp)?);
        let pending = Rc::new(RefCell::new(PendingTable::new(max_pending)));
        tokio::task::spawn_local(receive_loop::<B>(
            Rc::clone(&udp),
            Rc::clone(&pending),
            Rc::clone(pool),
            Rc::clone(stats),
        ));
        Ok(Rc::new(Self {
            udp,
            pending,
            closer,
            renew_at,
        }))
    }
}

impl<B: Backend> Drop for UdpSlot<B> {
    /// Its receive loop is blocked in a receive that only the upstream could
    /// complete; an empty datagram from a private peer completes it, and the loop
    /// sees it is alone and ends.
    fn drop(&mut self) {
        if let Err(e) = crate::io::release_udp(&self.closer, 1) {
            tracing::debug!(error = %e, "releasing an upstream socket");
        }
    }
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
    Ok(sock.into())
}

impl<B: Backend> UpstreamLink<B> {
    /// Opens the UDP socket and starts its receive loop on the current shard runtime.
    /// Opens the pool of UDP sockets (`limits.upstream_sockets`), each with its
    /// receive loop on the current shard runtime. Their renewal times are spread
    /// over one lifetime, so the pool turns over a socket at a time.
    pub(crate) fn open(
        upstream: &UpstreamConfig,
        limits: &Limits,
        pool: Rc<BufferPool>,
        stats: Rc<ShardStats>,
    ) -> io::Result<Rc<Self>> {
        let addr = upstream.address;
        let encrypted = encrypted::EncryptedLink::open(upstream, limits, &stats)?;
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
        let sockets = (0..n)
            .map(|_| {
                let spread = lifetime.mul_f64(rng.random_range(0.5..=1.0));
                UdpSlot::open(addr, max_pending, now + spread, &pool, &stats)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Rc::new(Self {
            addr,
            randomize_case: upstream.case_randomization,
            sockets: RefCell::new(sockets),
            max_pending,
            lifetime,
            pool,
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
    /// socket that cannot be opened leaves the old one in place).
    fn pick(&self, now: Instant) -> Rc<UdpSlot<B>> {
        let mut sockets = self.sockets.borrow_mut();
        let i = rand::rng().random_range(0..sockets.len());
        if sockets[i].renew_at <= now {
            match UdpSlot::open(
                self.addr,
                self.max_pending,
                now + self.lifetime,
                &self.pool,
                &self.stats,
            ) {
                // The old one lives on while its queries wait, then is released.
                Ok(fresh) => sockets[i] = fresh,
                Err(e) => {
                    tracing::debug!(error = %e, upstream = %self.addr, "renewing an upstream socket")
                }
            }
        }
        Rc::clone(&sockets[i])
    }

    /// The local ports of the pool's sockets (for tests and logs).
    #[cfg(test)]
    pub(crate) fn local_ports(&self) -> Vec<u16> {
        self.sockets
            .borrow()
            .iter()
            .filter_map(|s| s.closer.local_addr().ok()?.as_socket().map(|a| a.port()))
            .collect()
    }

    /// Sends `query` (any ID; it is replaced) over UDP and waits for the matching
    /// reply; on TC=1 retries the same question over TCP. `buf` is a pooled buffer
    /// given back through `pool`. `background`: no client waits for it (see
    /// `PendingTable::bound`).
    pub(crate) async fn exchange(
        &self,
        query: &[u8],
        question: &Question,
        pool: &BufferPool,
        background: bool,
    ) -> Result<Exchange, FailKind> {
        if let Some(enc) = &self.encrypted {
            return enc.exchange(query, question).await;
        }
        let start = Instant::now();
        // A random socket; a second one if the first has no room.
        let mut buf = pool.get();
        buf.extend_from_slice(query);
        if buf.len() < HEADER_LEN {
            pool.put(buf);
            return Err(FailKind::Malformed);
        }
        let case = if self.randomize_case {
            CaseMask::randomize(&mut buf)
        } else {
            None
        };
        let mut slot = self.pick(start);
        let mut registered = slot
            .pending
            .borrow_mut()
            .register(question.clone(), background, case);
        if registered.is_none() {
            slot = self.pick(start);
            registered = slot
                .pending
                .borrow_mut()
                .register(question.clone(), background, case);
        }
        let Some((id, serial, rx)) = registered else {
            pool.put(buf);
            return Err(FailKind::Overload);
        };
        let _guard = PendingGuard {
            table: &slot.pending,
            id,
            serial,
        };
        buf[..2].copy_from_slice(&id.to_be_bytes());
        let (res, buf) = slot.udp.send(buf).await;
        pool.put(buf);
        if res.is_err() {
            return Err(FailKind::Network);
        }
        let reply = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(FailKind::Network),
            Err(_) => return Err(FailKind::Timeout),
        };
        let truncated = Header::parse(&reply).map(|h| h.tc()).unwrap_or(false);
        if !truncated {
            return Ok(Exchange {
                reply,
                rtt: start.elapsed(),
                over_tcp: false,
            });
        }
        pool.put(reply);
        // One attempt, one deadline: the TCP retry gets what is left of it.
        let left = self.timeout.saturating_sub(start.elapsed());
        let tcp_start = Instant::now();
        let reply = tokio::time::timeout(left, self.tcp_exchange(query, question))
            .await
            .map_err(|_| FailKind::Timeout)??;
        Ok(Exchange {
            reply,
            rtt: tcp_start.elapsed(),
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
        let _busy = Busy(&self.tcp_busy);
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
struct Busy<'a>(&'a Cell<usize>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

async fn receive_loop<B: Backend>(
    udp: Rc<B::Udp>,
    pending: Rc<RefCell<PendingTable>>,
    pool: Rc<BufferPool>,
    stats: Rc<ShardStats>,
) {
    loop {
        let (res, buf) = udp.recv(pool.get()).await;
        if Rc::strong_count(&pending) == 1 {
            // The link is gone.
            pool.put(buf);
            return;
        }
        match res {
            Ok(_) => {
                let refused = pending.borrow_mut().dispatch(buf);
                if let Err((why, buf)) = refused {
                    pool.put(buf);
                    stats.dropped(match why {
                        Dispatch::Mismatch => DropReason::UpstreamMismatch,
                        Dispatch::Late => DropReason::UpstreamLate,
                        Dispatch::CaseMismatch => DropReason::UpstreamCaseMismatch,
                        Dispatch::Malformed => DropReason::UpstreamMalformed,
                    });
                }
            }
            Err(e) => {
                pool.put(buf);
                // ICMP port unreachable surfaces as ECONNREFUSED on a connected
                // socket: the waiting queries time out; keep receiving.
                if e.kind() != io::ErrorKind::ConnectionRefused {
                    tracing::debug!(error = %e, "upstream receive error");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pending::{Pending, RECENTLY_ABANDONED};
    use super::*;
    use tokio::sync::oneshot;

    fn table() -> RefCell<PendingTable> {
        RefCell::new(PendingTable::new(4))
    }

    #[test]
    fn a_finished_query_never_removes_a_later_one_with_the_same_id() {
        let t = table();
        let q = Question::new(b"\x01a\x00", 1, 1);
        let (id, serial, _rx) = t.borrow_mut().register(q.clone(), false, None).unwrap();
        // The reply came and took the entry; a new query drew the same ID.
        t.borrow_mut().map.remove(&id);
        let (tx, _rx2) = oneshot::channel();
        t.borrow_mut().map.insert(
            id,
            Pending {
                case: None,
                serial: serial + 1,
                question: q,
                tx,
            },
        );
        drop(PendingGuard {
            table: &t,
            id,
            serial,
        });
        assert!(
            t.borrow().map.contains_key(&id),
            "the later query is still pending"
        );
        drop(PendingGuard {
            table: &t,
            id,
            serial: serial + 1,
        });
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
        let (id, _, _rx) = t.borrow_mut().register(q, false, Some(case)).unwrap();
        let reply = |name: &[u8]| {
            let mut r = name.to_vec();
            r[..2].copy_from_slice(&id.to_be_bytes());
            r[2] = 0x80;
            r[5] = 1;
            r
        };
        assert!(matches!(
            t.borrow_mut().dispatch(reply(&lower)),
            Err((Dispatch::CaseMismatch, _))
        ));
        assert_eq!(t.borrow().map.len(), 1, "the query keeps waiting");
        assert!(t.borrow_mut().dispatch(reply(&sent)).is_ok());
        // A compressed or cut name has no mask.
        assert_eq!(CaseMask::of_question(&[0u8; 12]), None);
    }

    #[test]
    fn background_queries_leave_the_last_quarter_to_clients() {
        let t = table();
        let q = Question::new(b"\x01a\x00", 1, 1);
        for _ in 0..3 {
            assert!(t.borrow_mut().register(q.clone(), true, None).is_some());
        }
        assert!(
            t.borrow_mut().register(q.clone(), true, None).is_none(),
            "background stops at 3 of 4"
        );
        assert!(
            t.borrow_mut().register(q.clone(), false, None).is_some(),
            "a client's query still goes"
        );
        assert!(t.borrow_mut().register(q.clone(), false, None).is_none());
    }

    #[test]
    fn the_table_is_bounded_and_replies_must_match_id_and_question() {
        let t = table();
        let q = Question::new(b"\x01a\x00", 1, 1);
        let ids: Vec<u16> = (0..4)
            .map(|_| t.borrow_mut().register(q.clone(), false, None).unwrap().0)
            .collect();
        assert!(
            t.borrow_mut().register(q.clone(), false, None).is_none(),
            "full at its bound"
        );
        // A reply for the first ID but another question is refused.
        let mut reply = vec![0u8; 12];
        reply[..2].copy_from_slice(&ids[0].to_be_bytes());
        reply[2] = 0x80;
        reply[5] = 1;
        reply.extend_from_slice(b"\x01b\x00\x00\x01\x00\x01");
        assert!(matches!(
            t.borrow_mut().dispatch(reply.clone()),
            Err((Dispatch::Mismatch, _))
        ));
        reply[13] = b'a';
        assert!(t.borrow_mut().dispatch(reply).is_ok());
        assert_eq!(t.borrow().map.len(), 3);
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
        let (id, serial, _rx) = t.borrow_mut().register(q.clone(), false, None).unwrap();
        drop(PendingGuard {
            table: &t,
            id,
            serial,
        });
        assert!(t.borrow().map.is_empty(), "the entry went with its waiter");
        assert!(matches!(
            t.borrow_mut().dispatch(reply_for(id)),
            Err((Dispatch::Late, _))
        ));
        // An ID nobody ever used is still a mismatch.
        assert!(matches!(
            t.borrow_mut().dispatch(reply_for(id.wrapping_add(1))),
            Err((Dispatch::Mismatch, _))
        ));
        // The memory is bounded: after RECENTLY_ABANDONED more, the first is gone.
        for _ in 0..RECENTLY_ABANDONED {
            let (other, serial, _rx) = t.borrow_mut().register(q.clone(), false, None).unwrap();
            t.borrow_mut().abandon(other, serial);
        }
        let late_again = t.borrow_mut().dispatch(reply_for(id));
        let forgotten = t
            .borrow()
            .abandoned
            .iter()
            .all(|a| a.as_ref().is_none_or(|(i, _)| *i != id));
        if forgotten {
            assert!(matches!(late_again, Err((Dispatch::Mismatch, _))));
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

    #[test]
    fn queries_leave_from_a_pool_of_ports_that_is_renewed() {
        let (addr, ports) = responder();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let limits = Limits {
                upstream_socket_lifetime: Duration::from_millis(200),
                ..Limits::default()
            };
            let pool = Rc::new(BufferPool::new(64, 0));
            let stats = Rc::new(ShardStats::new(1));
            let upstream = UpstreamConfig::plain(addr);
            let link =
                UpstreamLink::<crate::io::Epoll>::open(&upstream, &limits, Rc::clone(&pool), stats)
                    .unwrap();
            let first = link.local_ports();
            assert_eq!(first.len(), 16);
            let mut query = vec![0u8; 12];
            query[5] = 1;
            query.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
            let q = Question::new(b"\x01a\x00", 1, 1);
            for _ in 0..64 {
                let ex = link.exchange(&query, &q, &pool, false).await.unwrap();
                assert_eq!(&ex.reply[12..], &query[12..]);
            }
            let used: std::collections::HashSet<u16> =
                ports.lock().unwrap().iter().copied().collect();
            assert!(used.len() >= 8, "64 queries over {} ports", used.len());
            assert!(used.iter().all(|p| first.contains(p)));
            // Past their lifetime the sockets are replaced as they are used.
            tokio::time::sleep(Duration::from_millis(250)).await;
            for _ in 0..64 {
                link.exchange(&query, &q, &pool, false).await.unwrap();
            }
            let renewed = link.local_ports();
            assert!(
                renewed.iter().filter(|p| !first.contains(p)).count() >= 8,
                "most sockets renewed: {first:?} -> {renewed:?}"
            );
        });
    }
}

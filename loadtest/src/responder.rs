//! A minimal DNS responder for measuring generators: one UDP socket, `recvmmsg`,
//! the same answer for every query (the question echoed, one A record), `sendmmsg`.
//! It does the least work a server can, so a generator's cost is what differs, and
//! it is the floor peers.sh sets servers beside. [`Io::Uring`] serves the same
//! answers through one io_uring instead ([`crate::uring`]).

use crate::dns::{self, AnswerSpec};
use crate::mmsg::{self, RecvBatch, SendBatch};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The address in every answer (TEST-NET-1, documentation only).
pub const ANSWER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

/// How the responder does its I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Io {
    /// `poll`, then `recvmmsg`/`sendmmsg` in batches of [`mmsg::BATCH`].
    Mmsg,
    /// One io_uring: multishot `recvmsg` into provided buffers, a `SendMsg` per
    /// reply, one `io_uring_enter` per turn ([`crate::uring`]).
    Uring,
}

/// Serves with `io` on the calling thread (see [`serve`] and [`crate::uring`]). For
/// [`Io::Uring`], an `Unsupported` error says what the kernel refused.
pub fn serve_with(
    io: Io,
    sock: &UdpSocket,
    duration: Duration,
    stop: &AtomicBool,
) -> io::Result<u64> {
    match io {
        Io::Mmsg => serve(sock, duration, stop),
        Io::Uring => crate::uring::serve(sock, duration, stop),
    }
}

/// Binds the responder's socket (loopback only).
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    crate::generator::check_loopback(addr)?;
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Answers on `sock` until `duration` passes or `stop` is set; returns the number
/// of queries answered.
pub fn serve(sock: &UdpSocket, duration: Duration, stop: &AtomicBool) -> io::Result<u64> {
    let fd = sock.as_raw_fd();
    sock.set_nonblocking(true)?;
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    let addrs = [ANSWER];
    let spec = AnswerSpec {
        rcode: dns::NOERROR,
        truncated: false,
        ttl: 300,
        addresses: &addrs,
    };
    let end = Instant::now() + duration;
    let mut answered = 0u64;
    let mut ready = [false];
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        let wait = end
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        if mmsg::poll_readable(&[fd], &mut ready, wait)? == 0 {
            continue;
        }
        loop {
            let n = rx.recv(fd)?;
            for i in 0..n {
                let q = rx.datagram(i);
                let (Ok(question), Some(peer)) = (dns::parse_query(q), rx.peer(i)) else {
                    continue;
                };
                dns::build_answer(tx.next_buffer(), q, &question, &spec);
                tx.commit(Some(peer));
            }
            if !tx.is_empty() {
                answered += tx.flush(fd)? as u64;
            }
            if n < mmsg::BATCH {
                break;
            }
        }
    }
    Ok(answered)
}

/// A responder on a thread of its own, for tests: its address and a stop switch.
pub struct Background {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<io::Result<u64>>>,
}

impl Background {
    /// Starts a `recvmmsg` responder on an ephemeral loopback port, for at most
    /// `limit`.
    pub fn start(limit: Duration) -> io::Result<Self> {
        Self::start_with(Io::Mmsg, limit)
    }

    /// Starts a responder doing `io` on an ephemeral loopback port, for at most
    /// `limit`. Returns once it is ready to answer; for [`Io::Uring`], an
    /// `Unsupported` error if the kernel refused the ring.
    pub fn start_with(io: Io, limit: Duration) -> io::Result<Self> {
        let sock = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        // The ring is built on the thread that serves with it (SINGLE_ISSUER).
        let thread = std::thread::spawn(move || match io {
            Io::Mmsg => {
                let _ = ready_tx.send(Ok(()));
                serve(&sock, limit, &s2)
            }
            Io::Uring => match crate::uring::prepare(&sock) {
                Ok(ring) => {
                    let _ = ready_tx.send(Ok(()));
                    ring.serve(&sock, limit, &s2)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    Ok(0)
                }
            },
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(io::Error::other("responder thread did not start")),
        }
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops it; the number of queries it answered.
    pub fn stop(mut self) -> io::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| io::Error::other("responder thread panicked"))?
    }
}

//! Moving bytes: the socket layer, the only code that differs between the io
//! backends, and the buffers and batches beneath it. Nothing here knows DNS: a
//! datagram is bytes and an address, a TCP message a length-prefixed frame.
//!
//! - [`Backend`] with its socket traits [`UdpIo`] and [`TcpIo`]; the two
//!   implementations, io_uring through tokio-uring ([`uring`]) and epoll through
//!   tokio ([`epoll`]).
//! - [`buffers`]: each shard's pool of fixed-capacity buffers.
//! - [`udp`]: what a client UDP loop asks of the code that answers
//!   ([`udp::DatagramService`]), and the loop of one receive per datagram.
//! - [`mmsg`]: the epoll loop, `recvmmsg`/`sendmmsg` batches.
//! - [`ring`]: the io_uring loop, a multishot receive into a provided buffer ring
//!   ([`bufring`]) and batched sends; [`msghdr`] fills the kernel's message headers
//!   for both; [`pktinfo`] the address a client asked, for wildcard sockets.
//! - [`frame`]: TCP framing (RFC 1035 4.2.2).
//!
//! Both backends move owned `Vec<u8>` buffers into each operation and hand them back
//! (the completion model io_uring needs; epoll just borrows them). A received
//! datagram or read fills the buffer from index 0 and sets its length; a send sends
//! the buffer's whole length. Sockets are built with socket2 by the shard and handed
//! over with [`Backend::udp`] / [`Backend::listener`]; everything above this module is
//! shared by both backends.

pub(crate) mod buffers;
mod epoll;
pub(crate) mod frame;
// The modules with `unsafe`: batched socket calls, the io_uring buffer ring and
// message headers, memory shared with the kernel. Each block says why it is sound.
#[allow(unsafe_code)]
mod bufring;
#[allow(unsafe_code)]
pub(crate) mod mmsg;
#[allow(unsafe_code)]
mod msghdr;
#[allow(unsafe_code)]
pub(crate) mod pktinfo;
pub(crate) mod queue;
#[allow(unsafe_code)]
pub(crate) mod ring;
pub(crate) mod udp;
mod uring;

pub(crate) use epoll::Epoll;
pub(crate) use uring::Uring;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The longest client UDP datagram served; a longer one is dropped and counted
/// (`oversize`). Real queries are a few hundred bytes at most.
pub(crate) const MAX_QUERY: usize = 2048;

/// A buffer handed back with the result of the operation that used it.
pub(crate) type BufResult<T> = (io::Result<T>, Vec<u8>);

/// A UDP socket on one backend.
pub(crate) trait UdpIo: 'static {
    /// Receives one datagram into `buf` (cleared first).
    fn recv_from(&self, buf: Vec<u8>) -> impl Future<Output = BufResult<(usize, SocketAddr)>>;
    /// Sends `buf` to `to.peer`, from `to.local` if given.
    fn send_to(&self, buf: Vec<u8>, to: udp::ReplyTo) -> impl Future<Output = BufResult<usize>>;
    /// Sends `buf` to `to.peer` (from `to.local` if given) now if the socket can
    /// take it (WouldBlock if not). A UDP send rarely waits; sending it with one
    /// syscall spares io_uring a submission and a completion round trip through the
    /// runtime per reply.
    fn try_send_to(&self, buf: &[u8], to: udp::ReplyTo) -> io::Result<usize>;
    /// The socket's descriptor, for a ring of its own (see `ring`).
    fn raw_fd(&self) -> std::os::fd::RawFd;
}

/// A TCP stream on one backend; reads and writes may run from two tasks at once.
pub(crate) trait TcpIo: 'static {
    /// Reads what is available into `buf` starting at its current length (appends).
    fn read(&self, buf: Vec<u8>) -> impl Future<Output = BufResult<usize>>;
    /// Writes the whole buffer.
    fn write_all(&self, buf: Vec<u8>) -> impl Future<Output = BufResult<()>>;
    /// Shuts both directions down: pending reads and writes complete at once.
    fn shutdown(&self);
    /// Shuts the sending side down: the peer reads what was written, then EOF.
    fn shutdown_write(&self);
}

/// A stream that is shut down when dropped. io_uring keeps the socket open while
/// an operation on it is in flight, and a read abandoned by a timeout stays in
/// flight until the peer sends or closes; shutting down completes it, so the
/// socket really closes when tierdns is done with it.
pub(crate) struct Closing<S: TcpIo>(pub(crate) S);

impl<S: TcpIo> Drop for Closing<S> {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl<S: TcpIo> std::ops::Deref for Closing<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.0
    }
}

/// One io backend: how sockets become async.
pub(crate) trait Backend: 'static {
    /// UDP socket type.
    type Udp: UdpIo;
    /// TCP stream type.
    type Stream: TcpIo;
    /// TCP listener type.
    type Listener: 'static;
    /// Name for logs and metrics.
    const NAME: &'static str;
    /// Whether several receive loops on one socket run in parallel. With io_uring
    /// each loop keeps its own receive in flight, so a burst is taken without a
    /// round trip per datagram; with epoll every waiting loop is woken by each
    /// datagram and all but one find nothing, so one loop per socket is best.
    const PARALLEL_RECEIVES: bool;
    /// The socket as a tokio socket with readiness, where the backend has one: the
    /// epoll backend serves clients in `recvmmsg` batches through it ([`mmsg`]).
    fn readiness(sock: &Self::Udp) -> Option<&tokio::net::UdpSocket>;
    /// Adopts a bound (and maybe connected) non-blocking std UDP socket.
    fn udp(socket: std::net::UdpSocket) -> io::Result<Self::Udp>;
    /// Adopts a listening non-blocking std TCP listener.
    fn listener(listener: std::net::TcpListener) -> io::Result<Self::Listener>;
    /// Accepts one connection.
    fn accept(
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>>;
    /// Connects to `addr`.
    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>>;
}

/// A client UDP socket taken out of service ([`release_udp`]): connected to a
/// private peer, so the kernel hands it no more client datagrams, and that peer,
/// which alone can still reach it.
pub(crate) struct Released {
    peer: std::net::UdpSocket,
    target: SocketAddr,
}

impl Released {
    /// Sends `n` end markers from the peer: each ends one receive loop on the
    /// socket once it has read everything queued before it, and completes a
    /// receive abandoned in flight (io_uring offers no cancellation through
    /// tokio-uring, and shutdown(2) does not complete a pending UDP receive).
    pub(crate) fn mark(&self, marker: &udp::EndMarker, n: usize) -> io::Result<()> {
        for _ in 0..n {
            self.peer.send_to(marker.bytes(), self.target)?;
        }
        Ok(())
    }
}

/// Takes a client UDP socket out of service while its receive loops still run:
/// connecting it to a private peer stops the kernel from handing it new client
/// datagrams (SO_REUSEPORT steers them to the group's other sockets, those of a
/// new process during a restart, or refuses them when there are none). Datagrams
/// already queued stay queued (connect(2) does not filter the receive queue) and
/// are read and answered; the replies still reach their clients (a destination
/// given per send overrides the connected one). Then `markers` end markers from
/// the peer follow them in the queue: a loop that reads one has read everything
/// queued before it.
pub(crate) fn release_udp(
    sock: &socket2::Socket,
    marker: &udp::EndMarker,
    markers: usize,
) -> io::Result<Released> {
    use std::net::IpAddr;
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an inet socket"))?;
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let peer = std::net::UdpSocket::bind((ip, 0))?;
    sock.connect(&peer.local_addr()?.into())?;
    let released = Released {
        peer,
        target: SocketAddr::new(ip, local.port()),
    };
    released.mark(marker, markers)?;
    Ok(released)
}

/// The peer's address from the raw `sockaddr` the kernel wrote.
pub(crate) fn peer_of(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddrV4::new(Ipv4Addr::from(ip), port).into())
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope).into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_v4(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&ip);
        b.resize(16, 0);
        b
    }

    fn reuse_port_udp(addr: SocketAddr) -> socket2::Socket {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        s
    }

    fn recv(s: &socket2::Socket) -> io::Result<(Vec<u8>, SocketAddr)> {
        let s = std::net::UdpSocket::from(s.try_clone()?);
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok((buf[..n].to_vec(), from))
    }

    /// What the restart relies on, checked against the kernel: connect(2) leaves
    /// the queue alone, the marker comes after it, new datagrams go to the
    /// group's other socket, and replies still reach clients.
    #[test]
    fn a_released_socket_keeps_its_queue_takes_nothing_new_and_still_replies() {
        let old = reuse_port_udp("127.0.0.1:0".parse().unwrap());
        let addr = old.local_addr().unwrap().as_socket().unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..3u8 {
            client.send_to(&[i], addr).unwrap();
        }
        let new = reuse_port_udp(addr);
        let marker = udp::EndMarker::random();
        let released = release_udp(&old, &marker, 1).unwrap();
        // After the release: from many source ports, so that the group's hash
        // would have picked the old socket for some of them.
        let clients: Vec<_> = (0..16)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for c in &clients {
            c.send_to(b"new", addr).unwrap();
        }
        for i in 0..3u8 {
            let (bytes, from) = recv(&old).unwrap();
            assert_eq!((bytes, from), (vec![i], client.local_addr().unwrap()));
        }
        let (bytes, _) = recv(&old).unwrap();
        assert!(marker.is(&bytes), "the marker, right after what was queued");
        old.set_nonblocking(true).unwrap();
        assert_eq!(
            recv(&old).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "no new client datagram reached the released socket"
        );
        for _ in &clients {
            assert_eq!(
                recv(&new).unwrap().0,
                b"new",
                "the new socket took them all"
            );
        }
        // A reply from the released socket still reaches its client.
        old.send_to(b"reply", &client.local_addr().unwrap().into())
            .unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut got = [0u8; 8];
        let (n, from) = client.recv_from(&mut got).unwrap();
        assert_eq!((&got[..n], from), (&b"reply"[..], addr));
        // Later markers come from the same peer, so they still arrive.
        released.mark(&marker, 1).unwrap();
        old.set_nonblocking(false).unwrap();
        assert!(marker.is(&recv(&old).unwrap().0));
    }

    #[test]
    fn peer_addresses_from_raw_sockaddrs() {
        assert_eq!(
            peer_of(&raw_v4([127, 0, 0, 9], 5300)),
            Some(SocketAddr::from(([127, 0, 0, 9], 5300)))
        );
        let mut v6 = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        v6.extend_from_slice(&53u16.to_be_bytes());
        v6.extend_from_slice(&7u32.to_be_bytes());
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&3u32.to_ne_bytes());
        assert_eq!(
            peer_of(&v6),
            Some(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 53, 7, 3).into())
        );
        // Cut short, or a family that is neither: no address.
        assert_eq!(peer_of(&v6[..20]), None);
        assert_eq!(peer_of(&[]), None);
        assert_eq!(peer_of(&[0xff, 0xff, 0, 53, 1, 2, 3, 4]), None);
    }
}

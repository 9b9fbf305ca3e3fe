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
//!   for both.
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
    /// Sends `buf` to `addr`.
    fn send_to(&self, buf: Vec<u8>, addr: SocketAddr) -> impl Future<Output = BufResult<usize>>;
    /// Sends `buf` to `addr` now if the socket can take it (WouldBlock if not).
    /// A UDP send rarely waits; sending it with one syscall spares io_uring a
    /// submission and a completion round trip through the runtime per reply.
    fn try_send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize>;
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

/// Takes a UDP socket out of service while `receives` abandoned receives on it are
/// still in flight. Connecting it to a private peer stops the kernel from handing it client
/// datagrams (SO_REUSEPORT sends them to the other sockets, or refuses them), and
/// one empty datagram per receive from that peer completes the receives, which
/// releases the socket. io_uring offers no cancellation through tokio-uring, and
/// shutdown(2) does not complete a pending UDP receive.
pub(crate) fn release_udp(sock: &socket2::Socket, receives: usize) -> io::Result<()> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    let target = SocketAddr::new(ip, local.port());
    for _ in 0..receives {
        peer.send_to(&[], target)?;
    }
    Ok(())
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
